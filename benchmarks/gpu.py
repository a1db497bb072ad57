"""Encoding and training at the hardware's speed: the towers' own rates against the pipeline's, and the training
steps, on whatever device there is (``python -m benchmarks gpu``).

The run generates its own data on the machine (no download): JPEG files photo-sized like Flickr's (500x375) and
small (64 px), with generated captions, in Karpathy format. It measures, with the device and the versions:
  towers     images/s and texts/s of each open_clip model with random weights (bf16 autocast on CUDA), on batches
             already on the device;
  pipeline   the feature cache end to end, from JPEG files to stored features (core/image_pipeline.py), for each
             image size, and captions from text to stored features, against the tower;
  dense leg  the service's exact dense leg over a 1M x 256 matrix on the device (indexer/device_dense.py), top 10,
             one query at a time, unfiltered and under a 10% filter;
  training   a real ``align`` run of one epoch on the generated data (set-up before the first epoch, the epoch,
             the final evaluation), then steps of dense, skd and grounded on its cached features, and an epoch of
             MSCOCO's size (566,747 pairs) for each, eager and with the step compiled (``--compile``);
  launch     a ``grounded`` process of one epoch on the cached data: seconds from its launch to its first epoch,
             phase by phase, and after its last epoch; then (with ``--compile``) the same process with the step
             compiled, whose epoch pays the compilation and, while the image budget anneals, a CUDA graph for each
             budget size it takes.
Every clock waits for the device (core/device_clock.py). On a CPU it runs the same code with tiny sizes. report.json
is written after each section, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.machine import machine
from benchmarks.stats import percentiles
from core.backbone import Backbone, build_backbone
from core.config import BackboneConfig
from core.data import MSCOCO_TRAIN_PAIRS, karpathy_inputs, load_karpathy
from core.device_clock import device_seconds
from core.feature_cache import compute_features
from core.image_pipeline import image_batch_size, text_batch_size
from indexer.device_dense import DeviceDenseLeg, DeviceMatrix
from indexer.query import Query

_logger = logging.getLogger(__name__)

WORDS = {"colour": ["red", "blue", "green", "yellow", "black", "white", "brown", "orange"],
         "thing": ["dog", "man", "woman", "child", "bicycle", "car", "boat", "bird", "horse", "ball"],
         "action": ["running", "standing", "jumping", "sitting", "playing", "walking", "waiting"],
         "place": ["on the beach", "in a park", "on the street", "near the water", "in the snow", "on grass"]}


class GpuOptions(BaseModel):
    """``gpu``: tower, pipeline and training speed on the machine's device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Field(Path("docs/benchmarks/gpu"), description="where report.json and README.md are written")
    work: Path = Field(Path("artifacts/gpu"), description="where the generated data, caches and runs go")
    device: str = Field("auto", description="torch device: auto (cuda where there is one), cpu or cuda")
    towers: list[str] = Field(["ViT-B-32", "ViT-B-16", "ViT-L-14"],
                              description="open_clip models whose raw tower rates are measured (random weights)")
    model: str = Field("ViT-B-32", description="the open_clip model of the pipeline and training sections")
    photos: int = Field(8192, ge=3, description="photo-sized JPEGs (500x375) generated")
    small: int = Field(16384, ge=3, description="small JPEGs (64 px) generated")
    tower_seconds: float = Field(3.0, gt=0, description="about how long each tower rate is measured")
    steps: int = Field(30, ge=1, description="timed training steps per method")
    epoch_pairs: int = Field(MSCOCO_TRAIN_PAIRS, ge=1, description="pairs of the timed epoch (MSCOCO's by default)")
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        "reduce-overhead", description="also time dense, skd and grounded with the training step compiled this way "
        "(the trainer's compile_step; reduce-overhead replays CUDA graphs on a GPU); off: eager steps only")
    dense_rows: int = Field(1_000_000, ge=10, description="rows of the dense leg's matrix")
    dense_queries: int = Field(200, ge=1, description="queries timed on the dense leg")


# ----- data -----
def _picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Photo-like content (smooth colour fields, edges and grain), so a JPEG of it costs what a photo's does."""
    x, y = np.meshgrid(np.linspace(0, 1, width, dtype=np.float32), np.linspace(0, 1, height, dtype=np.float32))
    blocks = rng.random((6, 8, 3), dtype=np.float32)
    field = np.kron(blocks, np.ones((height // 6 + 1, width // 8 + 1, 1), np.float32))[:height, :width]
    pixels = 255 * (0.35 * x[..., None] + 0.25 * y[..., None] + 0.3 * field)
    pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _caption(rng: np.random.Generator) -> str:
    pick = {kind: words[int(rng.integers(len(words)))] for kind, words in WORDS.items()}
    return f"a {pick['colour']} {pick['thing']} {pick['action']} {pick['place']}"


def generate_dataset(root: Path, count: int, size: tuple[int, int], *, seed: int) -> Path:
    """``count`` JPEGs of ``size`` with 5 generated captions each, in Karpathy format (a tenth each in val and
    test); generated once per size and count, written in parallel."""
    done = root / "dataset_generated.json"
    if done.is_file():
        return root
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    held_out = max(1, count // 10)
    splits = ["val"] * held_out + ["test"] * held_out + ["train"] * (count - 2 * held_out)

    def write(n: int) -> None:
        _picture(np.random.default_rng([seed, n]), *size).save(images / f"{n:06d}.jpg", quality=90)

    with ThreadPoolExecutor() as pool:
        list(pool.map(write, range(count)))
    entries = [{"filename": f"{n:06d}.jpg", "imgid": n, "split": splits[n],
                "sentences": [{"raw": _caption(rng), "sentid": 5 * n + k, "imgid": n} for k in range(5)]}
               for n in range(count)]
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dataset": f"generated-{size[0]}x{size[1]}", "images": entries}))
    tmp.replace(done)
    return root


# ----- towers -----
def open_clip_backbone(name: str, device: str) -> Backbone:
    return build_backbone(BackboneConfig(kind="open_clip", model_name=name)).to(device)


def _rate(run: Any, items: int, device: str, seconds: float) -> float:
    """Items/s of ``run`` (one batch of ``items``) repeated for about ``seconds`` after a warm-up call."""
    run()
    started = device_seconds(device)
    done, elapsed = 0, 0.0
    while elapsed < seconds or done == 0:
        run()
        done += items
        elapsed = device_seconds(device) - started
    return done / elapsed


def tower_rates(name: str, device: str, seconds: float, captions: list[str]) -> dict[str, Any]:
    backbone = open_clip_backbone(name, device)
    size = backbone.clip.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    pixels = torch.randn(image_batch_size(device), 3, height, width, device=device)
    batch = text_batch_size(device)
    tokens = backbone.tokenizer((captions * (batch // max(1, len(captions)) + 1))[:batch]).to(device)
    rates = {"model": name, "image_size": [height, width],
             "images_per_s": _rate(lambda: backbone.image_features(pixels), pixels.shape[0], device, seconds),
             "texts_per_s": _rate(lambda: backbone.text_features(tokens), tokens.shape[0], device, seconds)}
    return rates


# ----- pipeline -----
def pipeline_rates(backbone: Backbone, dataset_dir: Path, cache_root: Path, device: str) -> dict[str, Any]:
    """The feature cache from scratch: images (JPEG files to stored features), then captions."""
    dataset = load_karpathy(dataset_dir)
    inputs = karpathy_inputs(dataset, ["train", "val", "test"])
    shutil.rmtree(cache_root, ignore_errors=True)
    images_done: list[float] = []

    def after_shard(kind: str, _index: int) -> None:
        if kind == "images":
            images_done.append(device_seconds(device))

    started = device_seconds(device)
    compute_features(backbone, inputs, cache_root=cache_root, after_shard=after_shard)
    finished = device_seconds(device)
    image_seconds = images_done[-1] - started
    return {"images": len(inputs.images), "captions": len(inputs.texts),
            "images_per_s": len(inputs.images) / image_seconds,
            "captions_per_s": len(inputs.texts) / (finished - images_done[-1])}


# ----- training -----
def training_figures(options: GpuOptions, dataset_dir: Path, cache_root: Path, device: str) -> dict[str, Any]:
    """``python -m training speed`` on the generated data (benchmarks never import training): a real one-epoch
    align run, then every method's step and an epoch of ``epoch_pairs`` pairs."""
    output = options.work / "training-speed.json"
    runs = options.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    command = [sys.executable, "-m", "training", "--log-level", "WARNING", "speed", "--data", str(dataset_dir),
               "--set", f"data.cache_root={cache_root}", "--set", "model.backbone.kind=open_clip",
               "--set", f"model.backbone.model_name={options.model}", "--set", f"device={device}",
               "--images", "0", "--steps", str(options.steps), "--epoch-pairs", str(options.epoch_pairs),
               "--align-run", str(runs / "align"), "--compile", options.compile, "--output", str(output)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    figures: dict[str, Any] = json.loads(output.read_text())
    figures["command"] = " ".join(command[1:])
    return figures


def launch_figures(options: GpuOptions, dataset_dir: Path, cache_root: Path, device: str, *,
                   compile_step: str = "off") -> dict[str, Any]:
    """A ``python -m training grounded`` process of one epoch on the already cached data, as a user launches it
    (from the align run's checkpoint, as the preset starts), its step compiled as ``compile_step`` says: seconds
    from its launch to its first epoch (phase by phase, from its results.json), the epoch, and after its last one."""
    run = options.work / "runs" / ("launch" if compile_step == "off" else "launch-compiled")
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "training", "--log-level", "WARNING", "grounded", "--data", str(dataset_dir),
               "--set", f"data.cache_root={cache_root}", "--set", "model.backbone.kind=open_clip",
               "--set", f"model.backbone.model_name={options.model}", "--set", f"device={device}",
               "--set", "optim.epochs=1", "--set", f"init_checkpoint={options.work / 'runs' / 'align' / 'best'}",
               "--set", f"compile_step={compile_step}", "--run-dir", str(run)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((run / "results.json").read_text())
    return {"command": " ".join(command[1:]), "wall_seconds": time.perf_counter() - started,
            "setup": results["setup"], "epoch_seconds": results["epoch_seconds"][0],
            "finish_seconds": results["finish_seconds"]}


# ----- the exact dense leg on the device -----
def dense_leg(rows: int, queries: int, device: str, *, dim: int = 256, k: int = 10,
              filtered_share: float = 0.1) -> dict[str, Any]:
    """The service's exact dense leg (indexer/device_dense.py) over ``rows`` random unit vectors (float32, as
    stored): one query at a time, copied to the device and its top k back, unfiltered and under a filter keeping
    ``filtered_share`` of the rows."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    matrix = DeviceMatrix(vectors, device)
    del vectors
    asked = [Query(v / np.linalg.norm(v), np.zeros(0, np.int32), np.zeros(0, np.float32))
             for v in rng.standard_normal((queries, dim), dtype=np.float32)]
    figures: dict[str, Any] = {"rows": rows, "dim": dim, "dtype": "float32", "k": k, "filtered_share": filtered_share}
    for name, allowed in (("ms", None), ("filtered_ms", rng.random(rows) < filtered_share)):
        leg = DeviceDenseLeg(matrix, allowed)
        spent = []
        for n in range(queries + 3):
            started = device_seconds(device)
            leg.search_batch([asked[n % queries]], k)  # its answer comes back to the host: the device has finished
            if n >= 3:  # the first calls choose kernels
                spent.append((device_seconds(device) - started) * 1000)
        figures[name] = percentiles(spent)
    return figures


def run_gpu(options: GpuOptions, save: Callable[[dict[str, Any]], None] = lambda _report: None) -> dict[str, Any]:
    """Every section in turn; ``save`` gets the report after each, so a run cut short keeps what it measured."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    report: dict[str, Any] = {"machine": machine(), "device": device, "options": options.model_dump(mode="json"),
                              "versions": versions()}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(device)
    data = options.work / "data"
    photos = generate_dataset(data / f"photos-{options.photos}", options.photos, (500, 375), seed=1)
    small = generate_dataset(data / f"small-{options.small}", options.small, (64, 64), seed=2)
    captions = [s["raw"] for e in json.loads((small / "dataset_generated.json").read_text())["images"][:64]
                for s in e["sentences"]]
    report["towers"] = []
    for name in options.towers:
        report["towers"].append(tower_rates(name, device, options.tower_seconds, captions))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the next tower gets the memory this one held
    _logger.info("towers: %s", report["towers"])
    save(report)
    backbone = open_clip_backbone(options.model, device)
    report["pipeline"] = {name: pipeline_rates(backbone, folder, options.work / "cache" / name, device)
                          for name, folder in (("photos_500x375", photos), ("small_64px", small))}
    _logger.info("pipeline: %s", report["pipeline"])
    save(report)
    del backbone
    # before training: the compiled steps' compilation is the longest, least predictable part of a GPU run
    report["dense_leg"] = dense_leg(options.dense_rows, options.dense_queries, device)
    _logger.info("dense leg: %s", report["dense_leg"])
    save(report)
    report["training"] = training_figures(options, small, options.work / "cache" / "small_64px", device)
    _logger.info("training: %s", report["training"])
    save(report)
    report["launch"] = launch_figures(options, small, options.work / "cache" / "small_64px", device)
    _logger.info("launch: %s", report["launch"])
    if options.compile != "off":  # last: whether a compiled run pays over a real epoch, annealing included
        save(report)
        report["compiled_launch"] = launch_figures(options, small, options.work / "cache" / "small_64px", device,
                                                   compile_step=options.compile)
        _logger.info("compiled launch: %s", report["compiled_launch"])
    return report


def versions() -> dict[str, str]:
    import open_clip
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "open_clip": open_clip.__version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def render(report: dict[str, Any]) -> str:
    model = report["options"]["model"]
    tower = next((t for t in report["towers"] if t["model"] == model), None)
    device = report.get("gpu") or f"CPU: {report['machine'].get('cpu', '')}, {report['machine'].get('cpus')} cores"
    lines = [f"# Encoding and training speed on {device}", "",
             f"Generated by `{report.get('command', 'python -m benchmarks gpu')}`; every number is in `report.json`. "
             f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", "",
             "## Towers (random weights, batches already on the device)", "",
             "| model | image size | images/s | texts/s |", "| --- | --- | --- | --- |"]
    for t in report["towers"]:
        lines.append(f"| {t['model']} | {t['image_size'][0]}x{t['image_size'][1]} | {t['images_per_s']:,.0f} | "
                     f"{t['texts_per_s']:,.0f} |")
    lines += ["", f"## Pipeline ({model}): files to stored features", "",
              "| images | count | images/s | / tower | captions/s | / tower |", "| --- | --- | --- | --- | --- | --- |"]
    for name, p in report["pipeline"].items():
        over_images = f"{p['images_per_s'] / tower['images_per_s']:.2f}x" if tower else ""
        over_texts = f"{p['captions_per_s'] / tower['texts_per_s']:.2f}x" if tower else ""
        lines.append(f"| {name} | {p['images']:,} | {p['images_per_s']:,.0f} | {over_images} | "
                     f"{p['captions_per_s']:,.0f} | {over_texts} |")
    training = report["training"]
    run = training["align_run"]
    lines += ["", f"## Training ({model} features of the small images)", "",
              f"- A real `align` run of one epoch: {run['setup_seconds']:.1f} s of set-up before the first epoch "
              f"(features cached, process started), {run['epoch_seconds']:.1f} s for the epoch, "
              f"{run['after_last_epoch_seconds']:.1f} s after it (validation, fusion tuning, final evaluation, "
              "checkpoint).", "",
              "| method | batch | step ms | / dense step | kernels per step | epoch of "
              f"{report['options']['epoch_pairs']:,} pairs (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, m in training["methods"].items():
        over = training["over_dense_step"].get(name, 1.0)
        kernels = f"{m['kernels_per_step']:,.0f}" if "kernels_per_step" in m else "- (GPU only)"
        lines.append(f"| {name} | {m['batch_size']} | {1000 * m['step_seconds']:.2f} | {over:.2f}x | {kernels} | "
                     f"{m['epoch_seconds']:.2f} |")
    if "compiled" in training:
        compiled = training["compiled"]
        lines += ["", f"Steps compiled (`compile_step={compiled['mode']}`; the first two steps compile):", "",
                  "| method | first two steps (s) | step ms | / compiled dense step | / eager step | "
                  "kernels per step | epoch (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name in ("dense", "skd", "grounded"):
            m = training["methods"].get(name, {}).get("compiled", {})
            if "step_seconds" not in m:
                error = " ".join(str(m.get("error", "not measured")).split()).replace("|", "/")
                lines.append(f"| {name} | failed: {error} | | | | | |")
                continue
            step = m["step_seconds"]
            kernels = f"{m['kernels_per_step']:,.0f}" if "kernels_per_step" in m else "- (GPU only)"
            lines.append(f"| {name} | {m['first_steps_seconds']:.1f} | {1000 * step:.2f} | "
                         f"{compiled['over_dense_step'].get(name, 1.0):.2f}x | "
                         f"{compiled['over_eager_step'][name]:.2f}x | {kernels} | {m['epoch_seconds']:.2f} |")
    launch = report["launch"]
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in launch["setup"]["phases"].items())
    lines += ["", f"A `grounded` process of one epoch on the cached data (`python {launch['command']}`): its first "
              f"epoch starts {launch['setup']['seconds_from_launch']:.1f} s after launch (imports and arguments "
              f"{launch['setup']['before_training_seconds']:.1f} s, {phases}); the epoch "
              f"{launch['epoch_seconds']:.1f} s; {launch['finish_seconds']:.1f} s after it (fusion tuning, final "
              f"evaluation, checkpoint); {launch['wall_seconds']:.1f} s in all."]
    if "compiled_launch" in report:
        compiled_run = report["compiled_launch"]
        lines += ["", f"The same process with the step compiled (`compile_step="
                  f"{report['options']['compile']}`): its epoch {compiled_run['epoch_seconds']:.1f} s against "
                  f"{launch['epoch_seconds']:.1f} s eager, compilation included, and while the image budget anneals "
                  "each budget size it takes (a CUDA graph each with `reduce-overhead`); its first epoch starts "
                  f"{compiled_run['setup']['seconds_from_launch']:.1f} s after launch; "
                  f"{compiled_run['wall_seconds']:.1f} s in all."]
    leg = report["dense_leg"]
    lines += ["", "## Exact dense top 10 on the device", "",
              f"The service's device leg (indexer/device_dense.py) over {leg['rows']:,} x {leg['dim']} {leg['dtype']}, "
              f"one query at a time, its top {leg['k']} back on the host: p50 {leg['ms']['p50']:.3f} ms, p95 "
              f"{leg['ms']['p95']:.3f} ms; under a filter keeping {leg['filtered_share']:.0%} of the rows p50 "
              f"{leg['filtered_ms']['p50']:.3f} ms, p95 {leg['filtered_ms']['p95']:.3f} ms.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.gpu``: the same command without the other benchmarks' imports (a GPU machine may
    lack faiss, pyserini and Java)."""
    import argparse

    from core.atomic import write_text_atomic
    from core.cli_args import ModelArgs
    from core.progress import setup_logging

    arguments = ModelArgs(GpuOptions)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    arguments.add_to(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    options = arguments.build(parser.parse_args(argv))
    setup_logging("INFO")
    command = "python -m benchmarks.gpu " + " ".join(argv)

    def save(report: dict[str, Any]) -> None:
        write_text_atomic(options.out / "report.json", json.dumps({**report, "command": command}, indent=2))

    report = run_gpu(options, save)
    report["command"] = command
    save(report)
    write_text_atomic(options.out / "README.md", render(report))
    _logger.info("wrote %s (report.json, README.md)", options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
