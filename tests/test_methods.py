"""The training method registry: lookups, what each method trains and which losses it builds, the CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from core.config import ModelConfig
from core.model import DuetModel
from training.cli import build_parser
from training.config import build_config
from training.methods import METHODS, method
from training.presets import PRESETS, STANDALONE_PRESETS
from training.report import method_run
from training.trainer import StepPlan, set_trainable, step_losses

ALIASES = [(alias, m.name) for m in METHODS.values() for alias in m.aliases]
TOOLS = ["cache", "evaluate", "speed", "probe", "report"]


def _model() -> DuetModel:
    return DuetModel(ModelConfig(), image_projection=torch.randn(8, 12), text_projection=torch.randn(8, 6),
                     token_embedding=torch.randn(40, 6), term_ids=torch.arange(3, 40))


def test_the_registry_holds_the_known_methods_under_one_spelling_each() -> None:
    assert list(METHODS) == ["align", "dense", "d2s", "no_kd", "frozen_final", "skd"]
    assert dict(ALIASES) == {"no-kd": "no_kd", "frozen": "frozen_final", "frozen-final": "frozen_final"}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resolves_by_its_name(name: str) -> None:
    assert method(name) is METHODS[name]
    assert method(name).name == name


@pytest.mark.parametrize(("alias", "name"), ALIASES)
def test_older_spellings_resolve_to_the_method(alias: str, name: str) -> None:
    assert method(alias) is METHODS[name]
    # read from a config file or --set, an older spelling is stored under the method's name
    assert build_config(PRESETS["skd"], overrides=[f"method={alias}"]).method == name


def test_an_unknown_method_is_a_clear_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown training method 'nokd'") as error:
        method("nokd")
    for name in METHODS:
        assert name in str(error.value)
    with pytest.raises(ValidationError, match="unknown training method"):
        build_config(PRESETS["skd"], overrides=["method=nokd"])


@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_parts_are_what_set_trainable_leaves_unfrozen(name: str) -> None:
    model = _model()
    groups = model.trainable_groups()
    chosen = set_trainable(model, name)
    expected = {id(p) for part in METHODS[name].trainable for p in groups[part]}
    assert {id(p) for p in chosen} == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected


_REGULARIZER = {"text_reg", "image_reg", "regularizer"}
# The losses step_losses reports per method (no grounding losses: their weights are 0 here).
EXPECTED_LOSSES = {
    "align": {"dense_loss", "loss"},
    "dense": {"dense_loss", "loss"},
    "d2s": {"distill_sparse_loss", "relevance", *_REGULARIZER, "loss"},
    "no_kd": {"dense_loss", "sparse_loss", "integrated_loss", "relevance", *_REGULARIZER, "loss"},
    "frozen_final": {"dense_loss", "sparse_loss", "integrated_loss", "distill_dense_loss", "distill_sparse_loss",
                     "relevance", *_REGULARIZER, "loss"},
    "skd": {"dense_loss", "sparse_loss", "integrated_loss", "distill_dense_loss", "distill_sparse_loss",
            "relevance", *_REGULARIZER, "loss"},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_step_losses_compose_the_method_losses(name: str) -> None:
    config = build_config(PRESETS[name], overrides=["init_checkpoint=base"])
    torch.manual_seed(0)
    losses = step_losses(_model(), torch.randn(4, 12), torch.randn(4, 6), config,
                         StepPlan(reg_step=0, reg_warmup_steps=1, d2s_temperature=0.05))
    assert set(losses) == EXPECTED_LOSSES[name]
    assert config.selection_metric == METHODS[name].selection_leg


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_preset_trains_that_method(name: str) -> None:
    preset = METHODS[name].preset
    assert preset is not None and PRESETS[preset]["method"] == name
    assert ("init_checkpoint" in PRESETS[preset]) == METHODS[name].from_lit_base


def test_every_preset_names_a_method_by_its_one_spelling() -> None:
    assert {p["method"] for p in PRESETS.values()} <= set(METHODS)
    assert set(PRESETS) == {m.preset for m in METHODS.values()} | set(STANDALONE_PRESETS)


def _listed_commands(help_text: str) -> list[str]:
    """The commands of the help's command list (indented four spaces, then the name)."""
    return re.findall(r"^ {4}(\S+)", help_text, flags=re.MULTILINE)


def test_the_cli_help_lists_exactly_the_registry_methods() -> None:
    help_text = build_parser().format_help()
    commands = _listed_commands(help_text)
    assert commands == [*METHODS, *STANDALONE_PRESETS, *TOOLS]
    usage = help_text.split("\n\n")[0]
    for alias, _ in ALIASES:
        assert alias not in commands and f",{alias}," not in usage


@pytest.mark.parametrize(("command", "name"), [*[(n, n) for n in METHODS], *ALIASES])
def test_the_cli_runs_the_method_preset_by_name_or_older_spelling(command: str, name: str) -> None:
    args = build_parser().parse_args([command, "--run-dir", "run"])
    assert args.train_base is PRESETS[METHODS[name].preset]


def test_the_report_reads_a_run_directory_under_an_older_spelling(tmp_path: Path) -> None:
    runs = tmp_path
    (runs / "no-kd").mkdir()
    (runs / "no-kd" / "results.json").write_text("{}")
    assert method_run(runs, METHODS["no_kd"]) == runs / "no-kd"
    assert method_run(runs, METHODS["skd"]) == runs / "skd"
