from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.model import DuetModel
from training.config import build_config
from training.presets import PRESETS
from training.trainer import optimizer_groups


def _model() -> DuetModel:
    return DuetModel(ModelConfig(), image_projection=torch.randn(8, 12), text_projection=torch.randn(8, 6),
                     token_embedding=torch.randn(40, 6), term_ids=torch.arange(3, 40))


@pytest.mark.parametrize(("method", "expected"), [
    ("skd", {"sparse_head": 1.0, "projections": 0.1, "temperature": 0.1}),
    ("no_kd", {"sparse_head": 1.0, "projections": 0.1, "temperature": 0.1}),
    ("dense", {"projections": 0.1, "temperature": 0.1}),
    ("frozen_final", {"sparse_head": 1.0, "temperature": 0.1}),
    ("d2s", {"sparse_head": 1.0}),
])
def test_groups_follow_the_method(method: str, expected: dict[str, float]) -> None:
    config = build_config(PRESETS["skd"], overrides=[f"method={method}", "optim.projection_lr_scale=0.1"])
    model = _model()
    groups = optimizer_groups(model, method, config)
    assert {g["name"]: g["lr_scale"] for g in groups} == expected
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
