from __future__ import annotations

from pathlib import Path

import pytest
import torch

import core.checkpoint as checkpoint_module
from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.config import ModelConfig
from core.model import DuetModel


def _model(seed: int = 0) -> DuetModel:
    g = torch.Generator().manual_seed(seed)
    return DuetModel(ModelConfig(), image_projection=torch.randn(8, 12, generator=g),
                     text_projection=torch.randn(8, 6, generator=g), token_embedding=torch.randn(40, 6, generator=g),
                     term_ids=torch.arange(3, 40))


def test_round_trip(tmp_path: Path) -> None:
    model = _model()
    digest = save_checkpoint(tmp_path / "ck", model, backbone_fingerprint="abc", metadata={"epoch": 3})
    loaded = load_checkpoint(tmp_path / "ck", expected_fingerprint="abc")
    assert loaded.content_hash == digest and loaded.metadata == {"epoch": 3}
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    features = torch.randn(4, 12)
    assert torch.equal(model.encode_image(features).sparse, loaded.model.encode_image(features).sparse)
    assert loaded.model.config == model.config


def test_other_base_model_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _model(), backbone_fingerprint="abc")
    with pytest.raises(CheckpointError, match="base model abc"):
        load_checkpoint(tmp_path / "ck", expected_fingerprint="def")


def test_corrupt_weights_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _model(), backbone_fingerprint="abc")
    weights = tmp_path / "ck" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a Duet checkpoint"):
        load_checkpoint(tmp_path)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _model(0)
    save_checkpoint(tmp_path / "ck", first, backbone_fingerprint="abc")

    def crash(state, path):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", _model(1), backbone_fingerprint="abc")
    loaded = load_checkpoint(tmp_path / "ck")
    assert torch.equal(loaded.model.image_proj.weight, first.image_proj.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind
