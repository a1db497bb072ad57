"""``python -m benchmarks gpu`` with tiny sizes on the CPU: every section measured on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.cli import build_parser
from benchmarks.gpu import main
from tests.conftest import TINY_MODEL


def test_the_gpu_benchmark_measures_every_section_on_a_cpu(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    code = main(["--towers", TINY_MODEL, "--model", TINY_MODEL, "--photos", "10", "--small", "20",
                 "--tower-seconds", "0.1", "--steps", "2", "--epoch-pairs", "2500", "--dense-rows", "3000",
                 "--dense-queries", "4", "--compile", "default", "--work", str(work), "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and report["versions"]["torch"]
    [tower] = report["towers"]
    assert tower["images_per_s"] > 0 and tower["texts_per_s"] > 0
    photos = sorted((work / "data" / "photos-10" / "images").glob("*.jpg"))
    assert len(photos) == 10
    with Image.open(photos[0]) as image:
        assert image.size == (500, 375) and image.format == "JPEG"
    for name, count in (("photos_500x375", 10), ("small_64px", 20)):
        pipeline = report["pipeline"][name]
        assert pipeline["images"] == count and pipeline["captions"] == 5 * count
        assert pipeline["images_per_s"] > 0 and pipeline["captions_per_s"] > 0
    training = report["training"]
    assert {"align", "dense", "skd", "grounded"} <= set(training["methods"])
    for figures in training["methods"].values():
        assert figures["step_seconds"] > 0 and figures["epoch_seconds"] > 0
        assert figures["epoch_steps"] == -(-2500 // figures["batch_size"])
    compiled = training["compiled"]
    assert compiled["mode"] == "default" and set(compiled["step_seconds"]) == {"dense", "skd", "grounded"}
    for name, step in compiled["step_seconds"].items():
        figures = training["methods"][name]["compiled"]
        assert step == figures["step_seconds"] > 0 and figures["first_steps_seconds"] > 0
        assert compiled["over_eager_step"][name] == step / training["methods"][name]["step_seconds"]
    run = training["align_run"]
    assert run["setup_seconds"] > 0 and run["epoch_seconds"] >= 0 and run["after_last_epoch_seconds"] > 0
    assert (work / "runs" / "align" / "best").is_dir()
    launch = report["launch"]  # its own process, so its launch is known (Linux)
    assert 0 < launch["setup"]["before_training_seconds"] < launch["setup"]["seconds_from_launch"]
    assert launch["setup"]["seconds_from_launch"] < launch["wall_seconds"] and launch["finish_seconds"] > 0
    assert {"backbone and feature cache", "splits and caption terms"} <= set(launch["setup"]["phases"])
    compiled_run = report["compiled_launch"]  # the same process, its step compiled: a real epoch's cost
    assert "compile_step=default" in compiled_run["command"] and "compile_step=off" in launch["command"]
    assert compiled_run["epoch_seconds"] > 0 and compiled_run["setup"]["seconds_from_launch"] > 0
    assert report["dense_leg"]["rows"] == 3000 and report["dense_leg"]["ms"]["p50"] > 0
    assert report["dense_leg"]["filtered_ms"]["p50"] > 0
    page = (out / "README.md").read_text()
    for section in ("## Towers", "## Pipeline", "## Training", "Steps compiled (`compile_step=default`",
                    "The same process with the step compiled (`compile_step=default`)", "## Exact dense top 10"):
        assert section in page
    assert build_parser().parse_args(["gpu", "--photos", "3"]).command == "gpu"


def test_a_run_cut_short_keeps_the_sections_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.gpu as gpu

    def cut(*_args: object) -> None:
        raise KeyboardInterrupt  # a timeout's signal, in the training section

    monkeypatch.setattr(gpu, "training_figures", cut)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main(["--towers", TINY_MODEL, "--model", TINY_MODEL, "--photos", "3", "--small", "3", "--tower-seconds",
              "0.05", "--dense-rows", "100", "--dense-queries", "2", "--work", str(tmp_path / "work"),
              "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert {"towers", "pipeline", "dense_leg"} <= set(report) and "training" not in report
    assert report["command"].startswith("python -m benchmarks.gpu") and report["dense_leg"]["ms"]["p50"] > 0
