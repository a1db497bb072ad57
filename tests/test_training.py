"""Training smoke runs on the generated dataset with the tiny random backbone, through the real CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from core.checkpoint import load_checkpoint
from core.data import load_karpathy
from core.words import content_words
from tests.conftest import TINY_MODEL, host_read_back_operators
from training import schedules, trainer
from training.cli import main
from training.config import TrainConfig, build_config
from training.presets import PRESETS
from training.trainer import train


def _common(dataset: Path, cache: Path) -> list[str]:
    return ["--data", str(dataset), "--set", f"data.cache_root={cache}",
            "--set", "model.backbone.kind=open_clip", "--set", f"model.backbone.model_name={TINY_MODEL}",
            "--set", "model.backbone.embed_dim=32", "--set", "optim.batch_size=32", "--set", "optim.epochs=3",
            "--set", "eval_batch_size=64"]


def _tiny_config(preset: str, work: Path, cache: Path, dataset: Path) -> TrainConfig:
    """``preset`` from the LiT base in ``work``, with the tiny sizes of ``_common``."""
    overrides = [arg for arg in _common(dataset, cache)[2:] if arg != "--set"]
    return build_config({**PRESETS[preset], "init_checkpoint": str(work / "align" / "best")},
                        overrides=[f"data.dataset_dir={dataset}", *overrides])


@pytest.fixture(scope="module")
def lit_base(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("train")
    cache = work / "cache"
    code = main(["align", "--run-dir", str(work / "align"), *_common(synthetic_dataset, cache)])
    assert code == 0
    return work, cache


def test_align_writes_a_val_selected_checkpoint_and_results(lit_base: tuple[Path, Path]) -> None:
    work, _ = lit_base
    results = json.loads((work / "align" / "results.json").read_text())
    assert results["method"] == "align"
    for split in ("val", "test"):
        for leg in ("dense", "sparse", "integrated"):
            for direction in ("t2i", "i2t"):
                assert set(results[split][leg][direction]) == {"R@1", "R@5", "R@10", "RSUM"}
    log = [json.loads(line) for line in (work / "align" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == results["epochs_run"]
    assert log[-1]["train"]["dense_loss"] < log[0]["train"]["dense_loss"]  # it learns
    best = max(log, key=lambda r: r["selection"])
    assert results["best_epoch"] == best["epoch"]
    assert load_checkpoint(work / "align" / "best").metadata["epoch"] == best["epoch"]


@pytest.mark.parametrize("method", ["skd", "dense", "d2s", "no_kd", "frozen_final"])
def test_every_method_trains_from_the_lit_base(method: str, lit_base: tuple[Path, Path],
                                               synthetic_dataset: Path) -> None:
    work, cache = lit_base
    run = work / method
    code = main([method, "--run-dir", str(run), *_common(synthetic_dataset, cache),
                 "--set", f"init_checkpoint={work / 'align' / 'best'}",
                 "--set", "model.sparse_head.vocabulary=train_captions"])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    base = load_checkpoint(work / "align" / "best").model
    trained = load_checkpoint(run / "best").model
    projections_moved = not (trained.image_proj.weight.equal(base.image_proj.weight))
    assert projections_moved == (method in ("skd", "dense", "no_kd"))
    assert results["test"]["sparsity"]["active_terms_query"] > 0
    # the serving default fusion is the val-selected one, stored in the checkpoint
    chosen = results["fusion"]["val_selected"]
    assert trained.config.fusion_sparse_weight == chosen["w_sparse"]
    best_on_val = max(p["integrated"]["t2i"]["R@1"] for p in results["fusion"]["val_sweep"])
    assert results["val"]["integrated"]["t2i"]["R@1"] == best_on_val


def test_resume_continues_an_interrupted_run(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                             tmp_path: Path) -> None:
    work, cache = lit_base
    overrides = [f"data.dataset_dir={synthetic_dataset}", f"data.cache_root={cache}",
                 "model.backbone.kind=open_clip", f"model.backbone.model_name={TINY_MODEL}",
                 "optim.batch_size=32", "optim.epochs=3", f"init_checkpoint={work / 'align' / 'best'}",
                 "model.sparse_head.vocabulary=train_captions", "patience=10"]
    config = build_config(PRESETS["skd"], overrides=overrides)
    partial = train(config, tmp_path / "run", max_epochs_this_call=1)
    assert partial == {"interrupted": True, "epoch": 1}
    assert not (tmp_path / "run" / "results.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        train(config, tmp_path / "run")
    results = train(config, tmp_path / "run", resume=True)
    assert results["epochs_run"] == 3
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]


def test_log_explains_the_selection_value_and_early_stopping(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A real align run whose per-epoch validation reads a scripted (R@1, GP@10): under the floor, then best at
    epoch 2, then two epochs without improvement stop it at 4 of 5."""
    _, cache = lit_base
    script = [(5.0, 0.30), (10.0, 0.50), (8.0, 0.60), (9.0, 0.45)]
    real = trainer.evaluate_model

    def scripted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        metrics = real(*args, **kwargs)
        if script and kwargs.get("grounding") is not None:  # the epochs' validations come first, then finish()'s
            recall, gp10 = script.pop(0)
            metrics["dense"]["t2i"]["R@1"] = recall
            metrics["readability"]["GP@10"] = gp10
        return metrics

    monkeypatch.setattr(trainer, "evaluate_model", scripted)
    config = build_config(PRESETS["align"], overrides=[
        f"data.dataset_dir={synthetic_dataset}", f"data.cache_root={cache}", "model.backbone.kind=open_clip",
        f"model.backbone.model_name={TINY_MODEL}", "model.backbone.embed_dim=32", "optim.batch_size=32",
        "optim.epochs=5", "patience=2", "selection_gp10_floor=0.4", "eval_batch_size=64"])
    caplog.set_level(logging.INFO, logger="training.trainer")
    results = train(config, tmp_path / "run")
    assert not script and results["epochs_run"] == 4 and results["best_epoch"] == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "training.trainer"]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 4
    # a negative value says it is the floor's penalty, a positive one which metric it is
    assert "selection -70.00 (GP@10 0.300 under the floor 0.40: 100*GP@10-100; best -70.00 @ epoch 1)" in epochs[0]
    assert "selection 10.00 (val dense t2i R@1, GP@10 0.500 meets the floor 0.40; best 10.00 @ epoch 2)" in epochs[1]
    stops = [line for line in lines if line.startswith("early stopping")]
    assert stops == ["early stopping at epoch 4/5: the selection value (val dense t2i R@1 at val GP@10 >= 0.40, "
                     "else 100*GP@10-100) did not improve for 2 epochs; best 10.00 at epoch 2"]


def test_without_a_floor_the_selection_value_is_named_as_the_recall() -> None:
    metrics = {"sparse": {"t2i": {"R@1": 12.0}}, "readability": {"GP@10": 0.1}}
    assert trainer.selection_explained(metrics, "sparse", None) == "val sparse t2i R@1"
    assert trainer.selection_criterion("sparse", None) == "val sparse t2i R@1"


def test_missing_dataset_is_a_clear_cli_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = main(["align", "--run-dir", str(tmp_path / "r"), "--data", str(tmp_path / "no-such-data")])
    assert code == 2
    assert "no-such-data" in caplog.text


def test_checkpoint_of_another_base_model_is_refused(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                                     tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    work, cache = lit_base
    code = main(["skd", "--run-dir", str(tmp_path / "r"), *_common(synthetic_dataset, cache),
                 "--set", "model.backbone.init_seed=7", "--set", f"init_checkpoint={work / 'align' / 'best'}"])
    assert code == 2
    assert "trained on base model" in caplog.text


def test_unknown_model_name_is_a_clear_cli_error(tmp_path: Path, synthetic_dataset: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    code = main(["align", "--run-dir", str(tmp_path / "r"), "--data", str(synthetic_dataset),
                 "--set", "model.backbone.kind=open_clip", "--set", "model.backbone.model_name=ViT-Nope"])
    assert code == 2
    assert "ViT-Nope" in caplog.text


_CONTENT = ["model.sparse_head.vocabulary=content"]
_OWN = [*_CONTENT, "model.sparse_head.expansion=always"]
GROUNDING_OPTIONS: dict[str, list[str]] = {
    "d2s": [*_CONTENT, "model.sparse_head.expansion=d2s"],
    "always": [*_OWN, "model.sparse_head.max_text_terms=3"],
    "inference_free": [*_OWN, "model.sparse_head.query_encoder=inference_free"],
    "bow": [*_OWN, "loss.bow_weight=1.0", "selection_gp10_floor=0.2", "fusion_metric=rsum"],
    "word_loss": [*_OWN, "loss.word_loss_weight=1.0", "model.sparse_head.own_text_activation=softplus"],
    "image_budget": [*_OWN, "model.sparse_head.image_terms=4", "loss.image_topk_start=12",
                     "loss.regularizer=flops", "loss.image_reg_threshold=2"],
    "features_input": [*_OWN, "model.sparse_head.head_input=features"],
    "words": ["model.sparse_head.vocabulary=words", "model.sparse_head.expansion=always",
              "model.sparse_head.query_encoder=inference_free", "loss.bow_weight=1.0", "loss.word_loss_weight=1.0",
              "model.sparse_head.inflections=merge", "loss.hub_weight=0.1", "loss.hub_max_share=0.9",
              "model.sparse_head.image_term_max_share=0.5"],
}


@pytest.mark.parametrize("option", GROUNDING_OPTIONS)
def test_each_grounding_option_trains_end_to_end(option: str, lit_base: tuple[Path, Path],
                                                 synthetic_dataset: Path) -> None:
    work, cache = lit_base
    run = work / f"grounded_{option}"
    sets = [arg for kv in GROUNDING_OPTIONS[option] for arg in ("--set", kv)]
    code = main(["skd", "--run-dir", str(run), *_common(synthetic_dataset, cache),
                 "--set", f"init_checkpoint={work / 'align' / 'best'}", *sets])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    test = results["test"]
    assert 0.0 <= test["readability"]["GP@10"] <= 1.0
    assert set(test["readability_floor"]) == {"GP@5", "GP@10", "GP@20"}
    assert 0.0 <= test["readability"]["piece_rate@10"] <= 1.0 and 0.0 <= test["readability"]["query_piece_rate"] <= 1
    model = load_checkpoint(run / "best").model
    vocabulary = model.sparse_head.term_ids
    assert vocabulary.numel() < 30  # the synthetic captions' content pieces only
    if option == "always":
        assert test["sparsity"]["max_terms_query"] <= 3
    if option == "image_budget":
        assert test["sparsity"]["max_terms_doc"] <= 4
    if option == "inference_free":
        assert hasattr(model.sparse_head, "query_weight")
    if option == "words":  # the head's terms are the training captions' whole words, carried by the checkpoint
        words = model.sparse_head.words
        assert words is not None and vocabulary.tolist() == list(range(1, len(words) + 1))
        train_words = {w for r in load_karpathy(synthetic_dataset).split("train") for c in r.captions
                       for w in content_words(c.text)}
        assert set(words.words) == train_words
        assert test["readability"]["GP@10"] > 0
        assert test["readability"]["piece_rate@10"] == test["readability"]["query_piece_rate"] == 0.0
        records = [json.loads(line)["train"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all("hub_loss" in record and record["hub_terms"] >= 0 for record in records)
        # the hub floors, recalibrated each epoch, travel with the checkpoint
        assert model.sparse_head.image_term_floor is not None
        assert model.sparse_head.image_term_floor.shape == (len(words),)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if option == "bow":
        assert all(record["train"]["bow_loss"] > 0 for record in log)
        # the fusion weight maximises RSUM of both directions on val
        rsum = [p["integrated"]["t2i"]["RSUM"] + p["integrated"]["i2t"]["RSUM"] for p in results["fusion"]["val_sweep"]]
        val = results["val"]["integrated"]
        assert results["fusion"]["selected_by"] == "rsum"
        assert val["t2i"]["RSUM"] + val["i2t"]["RSUM"] == pytest.approx(max(rsum))
    if option == "word_loss":
        assert all(record["train"]["word_loss"] > 0 for record in log)


def test_speed_measures_every_step_against_the_dense_step(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                                          tmp_path: Path) -> None:
    work, cache = lit_base
    output = tmp_path / "speed.json"
    code = main(["speed", *_common(synthetic_dataset, cache), "--images", "4", "--steps", "1", "--epoch-pairs", "64",
                 "--init-checkpoint", str(work / "align" / "best"), "--output", str(output)])
    assert code == 0
    speed = json.loads(output.read_text())
    steps = speed["step_seconds"]
    assert set(steps) == {"dense", "skd", "grounded", "grounded_head_on_dense"}
    assert all(seconds > 0 for seconds in steps.values())
    assert speed["over_dense_step"]["grounded"] == pytest.approx(steps["grounded"] / steps["dense"])
    assert speed["throughput"]["cache_images_per_s"] > 0
    assert all(figures["epoch_seconds"] > 0 and figures["epoch_pairs"] == 64 for figures in speed["methods"].values())


def test_kernels_per_step_are_counted_by_the_profiler_and_a_cpu_step_launches_none(
        lit_base: tuple[Path, Path], synthetic_dataset: Path) -> None:
    from training.speed import StepRunner

    work, cache = lit_base
    config = _tiny_config("grounded", work, cache, synthetic_dataset)
    runner = StepRunner(config, trainer.prepare_workspace(config))
    assert runner.device_kernels(steps=1) == 0.0  # the count is of CUDA kernels: a GPU run reports them


@pytest.mark.parametrize("preset", ["grounded", "skd"])
def test_a_compiled_step_is_one_graph_with_the_eager_steps_losses_and_gradients(
        preset: str, lit_base: tuple[Path, Path], synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an accelerator's operators (the caption scores over the whole vocabulary, the activation at every
    logit), no operator of the step takes its output's shape from the data (a GPU never waits for the host),
    torch.compile takes the whole step as one graph (fullgraph) and it computes what the eager step does."""
    import torch

    from core import sparse_head
    from training.speed import StepRunner

    work, cache = lit_base
    config = _tiny_config(preset, work, cache, synthetic_dataset)
    runner = StepRunner(config, trainer.prepare_workspace(config))
    runner.model.eval()  # dropout draws differ between eager and compiled code; the rest of the step is the same
    monkeypatch.setattr(sparse_head, "data_sized_ops_pay", lambda _tensor: False)
    args, kwargs = runner.inputs(3)
    model, image_features, text_features, _, plan = args

    def loss(images: torch.Tensor, texts: torch.Tensor, columns: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        return trainer.step_losses(model, images, texts, config, plan, text_columns=columns, bow=kwargs["bow"],
                                   same_image=same)["loss"]

    assert not host_read_back_operators(loss, image_features, text_features, kwargs["text_columns"],
                                        kwargs["same_image"])
    params = [p for p in runner.model.parameters() if p.requires_grad]
    results = []
    for losses_of in (trainer.step_losses, torch.compile(trainer.step_losses, fullgraph=True)):
        losses = losses_of(*args, **kwargs)
        grads = torch.autograd.grad(losses["loss"], params, allow_unused=True)  # e.g. an inference-free text input
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert eager.keys() == compiled.keys() and "regularizer" in eager
    if preset == "grounded":
        assert {"bow_loss", "word_loss"} <= eager.keys()
    assert all(compiled[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-6) for k in eager)
    for c, e in zip(compiled_grads, eager_grads, strict=True):
        assert (c is None) == (e is None) and (e is None or torch.allclose(c, e, rtol=1e-3, atol=1e-6))
    assert sum(e is not None for e in eager_grads) >= 3


def test_a_compiled_run_trains_through_the_annealed_budget_without_recompiling_each_step(
        lit_base: tuple[Path, Path], synthetic_dataset: Path) -> None:
    """compile_step=default through the real CLI: the image budget anneals and the regulariser's step grows every
    step, yet the step compiles a bounded number of times, and the run learns."""
    import torch
    from torch._dynamo.utils import counters

    work, cache = lit_base
    counters.clear()
    run = work / "grounded_compiled"
    code = main(["grounded", "--run-dir", str(run), *_common(synthetic_dataset, cache),
                 "--set", f"init_checkpoint={work / 'align' / 'best'}", "--set", "compile_step=default",
                 "--set", "model.sparse_head.image_terms=4", "--set", "loss.image_topk_start=9"])
    assert code == 0
    steps = torch.load(run / trainer.STATE_FILE, weights_only=False)["loop"]["step"]
    budgets = {schedules.annealed_top_k(s, steps, start=9, budget=4, anneal_ratio=0.5) for s in range(steps)}
    assert len(budgets) == 6 and steps >= 15  # the budget took six sizes (of the vocabulary's 10 terms)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(record["train"]["loss"] == record["train"]["loss"] for record in log)  # not NaN
    assert log[-1]["train"]["relevance"] < log[0]["train"]["relevance"]
    assert 0 < counters["stats"]["unique_graphs"] <= 12, counters["stats"]


def _recording_autocast(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each step of the runs that follow ran under a CPU bf16 autocast."""
    import torch

    under_bf16: list[bool] = []
    step_losses = trainer.step_losses

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        under_bf16.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return step_losses(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_losses", recording)
    return under_bf16


def test_cpu_amp_runs_every_step_under_bf16_autocast(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)  # a CPU without them emulates bf16: slower, the same
    work, cache = lit_base
    under_bf16 = _recording_autocast(monkeypatch)
    command = ["grounded", *_common(synthetic_dataset, cache), "--set", f"init_checkpoint={work / 'align' / 'best'}"]
    assert main([*command, "--run-dir", str(tmp_path / "fp32")]) == 0
    assert under_bf16 and not any(under_bf16)  # the default: float32 on a CPU
    under_bf16.clear()
    assert main([*command, "--run-dir", str(tmp_path / "bf16"), "--set", "cpu_amp=true"]) == 0
    assert under_bf16 and all(under_bf16)
    log = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["train"]["relevance"] < log[0]["train"]["relevance"]


def test_cpu_amp_is_refused_on_a_cpu_without_bf16_instructions(lit_base: tuple[Path, Path], synthetic_dataset: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                ) -> None:
    work, cache = lit_base
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    command = ["grounded", *_common(synthetic_dataset, cache), "--set", f"init_checkpoint={work / 'align' / 'best'}"]
    assert main([*command, "--run-dir", str(tmp_path / "refused"), "--set", "cpu_amp=true"]) == 2
    assert "bf16 instructions" in caplog.text
    assert not (tmp_path / "refused").exists()  # refused before anything is written
