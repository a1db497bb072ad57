"""Speed measurements (a benchmark, not a timed test): tower forward vs feature caching throughput, and the cost
of an SKD step relative to a dense-only step on cached features."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import torch

from core.data import karpathy_inputs
from core.feature_cache import compute_features
from core.sparse_head import OwnTerms
from training.config import TrainConfig
from training.features import split_features
from training.trainer import (
    StepPlan,
    Workspace,
    build_model,
    set_trainable,
    step_losses,
    term_ids_for,
    training_texts,
)


def tower_throughput(ws: Workspace, *, images: int, batch_size: int = 64) -> dict[str, float]:
    """Images/s of the raw image tower on preprocessed tensors vs the full cache path (decode + forward + write)."""
    records = ws.dataset.split("test")[:images]
    pixels = torch.stack([ws.backbone.preprocess(_load(ws, r)) for r in records[:batch_size]])
    ws.backbone.image_features(pixels[:8])  # warm-up
    started = time.perf_counter()
    done = 0
    while done < images:
        ws.backbone.image_features(pixels)
        done += pixels.shape[0]
    raw = done / (time.perf_counter() - started)
    subset = dataclasses.replace(ws.dataset, name="speed-probe",
                                 images=tuple(dataclasses.replace(r, captions=()) for r in records))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        compute_features(ws.backbone, karpathy_inputs(subset, ["test"]), cache_root=tmp, image_batch_size=batch_size)
        cached = len(records) / (time.perf_counter() - started)
    return {"raw_tower_images_per_s": raw, "cache_images_per_s": cached, "cache_over_raw": cached / raw}


def _load(ws: Workspace, record: Any) -> Any:
    from PIL import Image

    with Image.open(ws.dataset.image_path(record)) as image:
        return image.convert("RGB")


def step_seconds(config: TrainConfig, ws: Workspace, *, steps: int) -> float:
    """Mean seconds of one optimiser step (forward, backward, update) of ``config.method`` on cached features."""
    train = split_features(ws.dataset, ws.cache, config.data.train_split, tokenizer=ws.backbone.tokenizer)
    term_ids, term_idf = term_ids_for(config, ws.backbone, train)
    model = build_model(config, ws.backbone, term_ids, term_idf)
    params = set_trainable(model, config.method)
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr)
    batch = config.optim.batch_size
    head = config.model.sparse_head
    texts = training_texts(model, train, term_idf,
                           with_bow=config.loss.bow_weight > 0 or config.loss.word_loss_weight > 0)
    bow = texts.bow
    timings = []
    for step in range(steps + 2):
        idx = torch.randint(0, train.num_pairs, (batch,))
        rows = train.caption_image[idx]
        # the step after annealing: the image budget in force, captions masked as the config says at its end
        plan = StepPlan(reg_step=step, reg_warmup_steps=10, d2s_temperature=0.05, image_keep=head.image_terms or 0,
                        mask_texts=head.expansion == "always")
        started = time.perf_counter()
        losses = step_losses(model, train.image_features[rows], train.text_features[idx], config, plan,
                             text_columns=texts.caption_columns[idx],
                             bow=None if bow is None else OwnTerms(bow.columns[rows], bow.weights[rows]),
                             same_image=rows[:, None] == rows[None, :])
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if step >= 2:  # the first steps pay one-off allocation costs
            timings.append(time.perf_counter() - started)
    return sum(timings) / len(timings)
