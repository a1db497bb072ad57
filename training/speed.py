"""Speed measurements (a benchmark, not a timed test): tower forward vs feature caching throughput, the cost of a
sparse method's step relative to a dense-only step on cached features, an epoch of a given size, and a real one-epoch
``align`` run's set-up, epoch and final evaluation. Every clock waits for the device (core/device_clock.py)."""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.data import karpathy_inputs
from core.device_clock import device_seconds, synchronize
from core.feature_cache import compute_features
from core.image_pipeline import image_batch_size
from training.config import TrainConfig
from training.features import in_term_space, split_features
from training.trainer import (
    StepPlan,
    Workspace,
    build_model,
    build_optimizer,
    optimizer_groups,
    resolve_device,
    step_autocast,
    step_function,
    term_ids_for,
    term_space_for,
    train,
    training_texts,
)

_logger = logging.getLogger(__name__)


def tower_throughput(ws: Workspace, *, images: int, device: str = "cpu",
                     batch_size: int | None = None) -> dict[str, float]:
    """Images/s of the raw image tower on preprocessed tensors already on ``device`` vs the full cache path (read,
    decode, forward, write), both on ``device``; the clocks wait for the device."""
    batch_size = batch_size or image_batch_size(device)
    backbone = ws.backbone.to(device)
    try:
        records = ws.dataset.split("test")[:images]
        pixels = torch.stack([backbone.preprocess(_load(ws, r)) for r in records[:batch_size]]).to(device)
        backbone.image_features(pixels)  # warm-up: kernels chosen, memory allocated
        started = device_seconds(device)
        done = 0
        while done < images:
            backbone.image_features(pixels)
            done += pixels.shape[0]
        raw = done / (device_seconds(device) - started)
        subset = dataclasses.replace(ws.dataset, name="speed-probe",
                                     images=tuple(dataclasses.replace(r, captions=()) for r in records))
        with tempfile.TemporaryDirectory() as tmp:
            started = device_seconds(device)
            compute_features(backbone, karpathy_inputs(subset, ["test"]), cache_root=tmp, image_batch_size=batch_size)
            cached = len(records) / (device_seconds(device) - started)
    finally:
        ws.backbone.to("cpu")
    return {"raw_tower_images_per_s": raw, "cache_images_per_s": cached, "cache_over_raw": cached / raw}


def _load(ws: Workspace, record: Any) -> Any:
    from PIL import Image

    with Image.open(ws.dataset.image_path(record)) as image:
        return image.convert("RGB")


class StepRunner:
    """Optimiser steps (forward, backward, update) of one config's method on cached features, on the config's
    device with the features resident there, as the trainer runs them; every clock waits for the device."""

    def __init__(self, config: TrainConfig, ws: Workspace) -> None:
        self.config, self.device = config, resolve_device(config.device)
        train = split_features(ws.dataset, ws.cache, config.data.train_split, tokenizer=ws.backbone.tokenizer)
        terms = term_space_for(config, ws.backbone, train)
        train = in_term_space(train, terms)
        term_ids, term_idf = term_ids_for(config, terms, train)
        self.model = build_model(config, ws.backbone, terms, term_ids, term_idf).to(self.device)
        self.optimizer = build_optimizer(config, optimizer_groups(self.model, config.method, config), self.device)
        self.losses_of = step_function(config)
        self.autocast = step_autocast(config, self.device)
        texts = training_texts(self.model, train, term_idf,
                               with_bow=config.loss.needs_caption_words)
        device = self.device
        self.image_features, self.text_features = train.image_features.to(device), train.text_features.to(device)
        self.caption_image, self.columns = train.caption_image.to(device), texts.caption_columns.to(device)
        self.bow = None if texts.bow is None else texts.bow.to(device)
        self.pairs = train.num_pairs

    def inputs(self, step: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of ``step_losses`` for step ``step``: a random batch of the cached pairs."""
        config, device = self.config, self.device
        head = config.model.sparse_head
        idx = torch.randint(0, self.pairs, (config.optim.batch_size,), device=device)
        rows = self.caption_image[idx]
        # the step after annealing: the image budget in force, captions masked as the config says at its end
        plan = StepPlan(reg_step=step, reg_warmup_steps=10, d2s_temperature=0.05, image_keep=head.image_terms or 0,
                        mask_texts=head.expansion == "always")
        bow = None if self.bow is None else self.bow.rows(rows)
        return ((self.model, self.image_features[rows], self.text_features[idx], config, plan),
                {"text_columns": self.columns[idx], "bow": bow, "same_image": rows[:, None] == rows[None, :]})

    def step(self, step: int) -> None:
        args, kwargs = self.inputs(step)
        with self.autocast:
            losses = self.losses_of(*args, **kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()

    def warm_up(self) -> float:
        """Two steps that pay the one-off costs (allocation; with a compiled step, its compilation, the second time
        with the plan's changing integers symbolic); their wall seconds."""
        started = device_seconds(self.device)
        for warm in range(2):
            self.step(warm)
        return device_seconds(self.device) - started

    def seconds(self, steps: int) -> float:
        """Wall seconds of ``steps`` steps in a row, after the two of ``warm_up``."""
        self.warm_up()
        started = device_seconds(self.device)
        for step in range(steps):
            self.step(2 + step)
        return device_seconds(self.device) - started

    def device_kernels(self, steps: int = 2) -> float:
        """CUDA kernels (and device copies and fills) launched per step, counted by torch.profiler. A step of small
        tensors on a GPU waits on the host launching its kernels rather than on the kernels, so this count, not the
        FLOPs, sets a sparse step's cost against a dense one there."""
        from torch.profiler import ProfilerActivity, profile

        self.step(0)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.startswith("cuda") else [])
        with profile(activities=activities) as profiler:
            for step in range(steps):
                self.step(1 + step)
            synchronize(self.device)
        on_device = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        return sum(e.count for e in on_device) / steps


def method_figures(runner: StepRunner, *, steps: int, epoch_pairs: int = 0) -> dict[str, float]:
    """A method's mean step time, and the time of an epoch of ``epoch_pairs`` pairs (whole batches in a row) when
    it is not 0; on a GPU also the kernels a step launches; with a compiled step, also its first two steps' time
    (the compilation)."""
    batch = runner.config.optim.batch_size
    figures: dict[str, float] = {"batch_size": batch}
    if runner.config.compile_step != "off":
        figures["first_steps_seconds"] = runner.warm_up()
    figures["step_seconds"] = runner.seconds(steps) / steps
    if runner.device.startswith("cuda"):
        try:
            figures["kernels_per_step"] = runner.device_kernels()
        except Exception as error:  # a profiler without CUPTI must not cost the timings beside it
            _logger.warning("kernels per step not counted: %s", error)
    if epoch_pairs > 0:
        epoch_steps = math.ceil(epoch_pairs / batch)
        figures.update(epoch_pairs=epoch_pairs, epoch_steps=epoch_steps, epoch_seconds=runner.seconds(epoch_steps))
    return figures


def align_run(config: TrainConfig, ws: Workspace, run_dir: Path) -> dict[str, float]:
    """A real one-epoch run of ``config`` (the LiT base, ``align``): set-up before its first epoch (the features
    cached, the process warm), the epoch, and what follows it (validation, fusion tuning, final evaluation,
    checkpoint). Its best checkpoint is the base the other methods start from."""
    config = config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": 1})})
    started = time.perf_counter()
    train(config, run_dir / "setup", workspace=ws, max_epochs_this_call=0, overwrite=True)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    results = train(config, run_dir, workspace=ws, overwrite=True)
    total = time.perf_counter() - started
    epoch = float(sum(results["epoch_seconds"]))
    return {"setup_seconds": setup, "epoch_seconds": epoch, "after_last_epoch_seconds": total - setup - epoch}
