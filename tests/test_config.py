from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import build_config, parse_override
from training.presets import PRESETS


def test_overrides_are_typed() -> None:
    assert parse_override("optim.lr=5e-4") == ("optim.lr", 5e-4)
    assert parse_override("loss.teacher_grad=through") == ("loss.teacher_grad", "through")
    config = build_config(PRESETS["skd"], overrides=["optim.lr=5e-4", "loss.teacher_grad=through"])
    assert config.optim.lr == 5e-4 and config.loss.teacher_grad == "through"


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="lr_typo"):
        build_config(PRESETS["skd"], overrides=["optim.lr_typo=1"])


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValidationError, match="teacher_grad"):
        build_config(PRESETS["skd"], overrides=["loss.teacher_grad=sometimes"])
    with pytest.raises(ValidationError, match="init_checkpoint"):
        build_config(PRESETS["skd"], overrides=["init_checkpoint=null"])


def test_config_file_merges_and_malformed_file_is_named(tmp_path: Path) -> None:
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"optim": {"epochs": 3}}))
    config = build_config(PRESETS["skd"], config_file=str(good))
    assert config.optim.epochs == 3 and config.optim.lr == PRESETS["skd"]["optim"]["lr"]
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        build_config(PRESETS["skd"], config_file=str(bad))
