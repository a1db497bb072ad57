"""The training loop shared by every method: cached features in, a val-selected checkpoint out."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_file, write_text_atomic
from core.backbone import Backbone, build_backbone
from core.checkpoint import load_checkpoint, save_checkpoint
from core.data import KarpathyDataset, load_karpathy
from core.feature_cache import CachedFeatures, compute_feature_cache
from core.model import DuetModel
from core.progress import progress
from training import schedules
from training.config import TrainConfig
from training.evaluate import evaluate_model, tune_fusion
from training.features import SplitFeatures, split_features
from training.losses import JointLossWeights, d2s_loss, info_nce, joint_loss, sparsity_loss

_logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RESULTS_FILE = "results.json"
METRICS_LOG = "metrics.jsonl"

# Which parameter groups each method trains (DuetModel.trainable_groups names).
TRAINABLE: dict[str, tuple[str, ...]] = {
    "align": ("projections", "temperature"),
    "dense": ("projections", "temperature"),
    "skd": ("projections", "sparse_head", "temperature"),
    "no_kd": ("projections", "sparse_head", "temperature"),
    "frozen_final": ("sparse_head", "temperature"),
    "d2s": ("sparse_head",),
}


class RunDirectoryError(ValueError):
    """The run directory holds another run and neither resume nor overwrite was asked for."""


@dataclass
class Workspace:
    backbone: Backbone
    dataset: KarpathyDataset
    cache: CachedFeatures


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    return name


def prepare_workspace(config: TrainConfig) -> Workspace:
    dataset = load_karpathy(config.data.dataset_dir, image_root=config.data.image_root)
    backbone = build_backbone(config.model.backbone).to(resolve_device(config.device))
    splits = sorted({config.data.train_split, config.data.val_split, config.data.test_split})
    cache = compute_feature_cache(backbone, dataset, splits=splits, cache_root=config.data.cache_root,
                                  skip_corrupt=config.data.skip_corrupt)
    return Workspace(backbone=backbone.to("cpu"), dataset=dataset, cache=cache)


def term_ids_for(config: TrainConfig, backbone: Backbone, train: SplitFeatures) -> torch.Tensor:
    """Output terms of the sparse head: all content tokens, or those seen in the training captions."""
    content = torch.from_numpy(backbone.vocabulary.content_ids())
    if config.model.sparse_head.vocabulary == "full":
        return content
    seen: set[int] = set()
    for start in range(0, len(train.caption_tokens), 4096):
        seen.update(backbone.tokenizer(train.caption_tokens[start:start + 4096]).unique().tolist())
    keep = torch.tensor(sorted(seen - backbone.vocabulary.special_ids), dtype=torch.long)
    return keep


def build_model(config: TrainConfig, backbone: Backbone, term_ids: torch.Tensor) -> DuetModel:
    # The checkpoint's default fusion is the integrated score the model was trained with.
    model_config = config.model.model_copy(update={"fusion_dense_weight": config.loss.w_dense,
                                                   "fusion_sparse_weight": config.loss.w_sparse})
    model = DuetModel(model_config, image_projection=backbone.image_projection,
                      text_projection=backbone.text_projection, token_embedding=backbone.token_embedding,
                      term_ids=term_ids)
    if config.init_checkpoint is not None:
        base = load_checkpoint(config.init_checkpoint, expected_fingerprint=backbone.fingerprint).model
        with torch.no_grad():  # the dense base: projections and temperature; the sparse head starts fresh
            model.image_proj.weight.copy_(base.image_proj.weight)
            model.text_proj.weight.copy_(base.text_proj.weight)
            model.temperature.copy_(base.temperature)
    return model


def set_trainable(model: DuetModel, method: str) -> list[torch.nn.Parameter]:
    groups = model.trainable_groups()
    for params in groups.values():
        for p in params:
            p.requires_grad_(False)
    chosen = [p for name in TRAINABLE[method] for p in groups[name]]
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def optimizer_groups(model: DuetModel, method: str, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the sparse head at the base LR, projections + temperature at LR * projection_lr_scale."""
    set_trainable(model, method)
    groups = model.trainable_groups()
    scale = config.optim.projection_lr_scale
    out = []
    for name, lr_scale in (("sparse_head", 1.0), ("projections", scale), ("temperature", scale)):
        params = [p for p in groups[name] if p.requires_grad]
        if params:
            out.append({"params": params, "lr_scale": lr_scale, "name": name})
    return out


def step_losses(model: DuetModel, image_features: torch.Tensor, text_features: torch.Tensor, config: TrainConfig,
                *, reg_step: int, reg_warmup_steps: int, d2s_temperature: float) -> dict[str, torch.Tensor]:
    """All named losses of one batch; ``loss`` is what gets back-propagated."""
    method, lc = config.method, config.loss
    temperature = model.clamp_temperature()
    if method in ("align", "dense"):
        dense_i2t = model.embed_image(image_features) @ model.embed_text(text_features).T / temperature
        out = {"dense_loss": info_nce(dense_i2t)}
        out["loss"] = out["dense_loss"]
        return out
    images, texts = model.encode_image(image_features), model.encode_text(text_features)
    sparse_i2t = images.sparse @ texts.sparse.T  # (B, B)
    if method == "d2s":
        out = d2s_loss((images.dense @ texts.dense.T / d2s_temperature).detach(), sparse_i2t)
    else:
        weights = JointLossWeights(w_dense=lc.w_dense, w_sparse=lc.w_sparse, lambda_dense=lc.lambda_dense,
                                   lambda_sparse=lc.lambda_sparse, distill=method != "no_kd",
                                   teacher_grad=lc.teacher_grad, t2i_teacher=lc.t2i_teacher)
        out = joint_loss(images.dense @ texts.dense.T / temperature, sparse_i2t, weights)
    out.update(sparsity_loss(texts.sparse, images.sparse, kind=lc.regularizer,
                             eta_text=schedules.quadratic_warmup(lc.eta_text, reg_step, reg_warmup_steps),
                             eta_image=schedules.quadratic_warmup(lc.eta_image, reg_step, reg_warmup_steps)))
    out["loss"] = out["relevance"] + out["regularizer"]
    return out


def _lr_factor(config: TrainConfig, step: int, total: int) -> float:
    warmup = int(config.optim.warmup_ratio * total)
    if config.optim.schedule == "linear":
        return schedules.linear_warmup_decay(step, warmup, total)
    if config.optim.schedule == "cosine":
        return schedules.cosine_decay(step, warmup, total)
    return min(1.0, (step + 1) / max(1, warmup)) if warmup else 1.0


def _selection_value(metrics: dict[str, Any], leg: str) -> float:
    return float(metrics[leg]["t2i"]["R@1"])


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    with atomic_file(run_dir / STATE_FILE) as handle:
        torch.save(state, handle)


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          workspace: Workspace | None = None, max_epochs_this_call: int | None = None) -> dict[str, Any]:
    """Train ``config.method``; write run_dir/{best/, state.pt, metrics.jsonl, results.json}; return results.

    ``max_epochs_this_call`` stops after that many epochs without finishing (used to test resuming).
    """
    run = Path(run_dir)
    if run.exists() and any(run.iterdir()) and not (resume or overwrite):
        raise RunDirectoryError(f"run directory {run} is not empty: pass --resume to continue or --overwrite")
    if overwrite and not resume:
        for name in (STATE_FILE, RESULTS_FILE, METRICS_LOG):
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "config.json", config.model_dump_json(indent=2))
    device = resolve_device(config.device)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    ws = workspace or prepare_workspace(config)
    train_split = split_features(ws.dataset, ws.cache, config.data.train_split)
    val_split = split_features(ws.dataset, ws.cache, config.data.val_split)
    model = build_model(config, ws.backbone, term_ids_for(config, ws.backbone, train_split)).to(device)
    groups = optimizer_groups(model, config.method, config)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    d2s_temperature = config.loss.d2s_teacher_temperature or float(model.temperature.detach())

    batch = min(config.optim.batch_size, train_split.num_pairs)
    steps_per_epoch = train_split.num_pairs // batch
    total_steps = steps_per_epoch * config.optim.epochs
    reg_warmup_steps = int(config.loss.reg_warmup_ratio * total_steps)
    # Official quirk: the regulariser also stepped on each validation forward (eval batches of 32).
    val_reg_steps = math.ceil(val_split.num_pairs / 32) + math.ceil(len(val_split.image_ids) / 32)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "reg_step": 0, "best": -1.0, "best_epoch": 0,
                             "bad_epochs": 0, "epoch_seconds": []}
    if resume and (run / STATE_FILE).is_file():
        saved = torch.load(run / STATE_FILE, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["loop"]
        torch.set_rng_state(saved["torch_rng"])
        _logger.info("resumed %s at epoch %d (best val %.2f)", run, state["epoch"], state["best"])

    image_features = train_split.image_features.to(device)
    text_features = train_split.text_features.to(device)
    caption_image = train_split.caption_image.to(device)
    use_amp = config.amp and device == "cuda"
    leg = config.selection_metric
    epochs_this_call = 0
    while state["epoch"] < config.optim.epochs and state["bad_epochs"] < config.patience:
        if max_epochs_this_call is not None and epochs_this_call >= max_epochs_this_call:
            return {"interrupted": True, "epoch": state["epoch"]}
        model.train()
        started = time.perf_counter()
        order = torch.randperm(train_split.num_pairs, device=device)
        sums: dict[str, float] = {}
        bar = progress(range(steps_per_epoch), total=steps_per_epoch,
                       desc=f"{config.method} epoch {state['epoch'] + 1}/{config.optim.epochs}", unit="step")
        for b in bar:
            idx = order[b * batch:(b + 1) * batch]
            factor = _lr_factor(config, state["step"], total_steps)
            for group in optimizer.param_groups:
                group["lr"] = config.optim.lr * group["lr_scale"] * factor
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                losses = step_losses(model, image_features[caption_image[idx]], text_features[idx], config,
                                     reg_step=state["reg_step"], reg_warmup_steps=reg_warmup_steps,
                                     d2s_temperature=d2s_temperature)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
            optimizer.step()
            state["step"] += 1
            state["reg_step"] += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        if config.loss.reg_counts_validation_batches:
            state["reg_step"] += val_reg_steps
        seconds = time.perf_counter() - started
        state["epoch_seconds"].append(seconds)
        state["epoch"] += 1
        val = evaluate_model(model, val_split, device=device)
        value = _selection_value(val, leg)
        improved = value > state["best"]
        if improved:
            state.update(best=value, best_epoch=state["epoch"], bad_epochs=0)
            save_checkpoint(run / "best", model.cpu(), backbone_fingerprint=ws.backbone.fingerprint,
                            metadata={"method": config.method, "epoch": state["epoch"], "val_selection": value})
            model.to(device)
        else:
            state["bad_epochs"] += 1
        record = {"epoch": state["epoch"], "seconds": round(seconds, 2),
                  "temperature": float(model.temperature.detach()),
                  "train": {k: v / max(1, steps_per_epoch) for k, v in sums.items()},
                  "val": {k: val[k] for k in ("dense", "sparse", "integrated", "sparsity")},
                  "selection": value, "improved": improved}
        with (run / METRICS_LOG).open("a") as log:
            log.write(json.dumps(record) + "\n")
        _logger.info("epoch %d: %.1fs, val %s t2i R@1 %.2f (best %.2f @ %d), active terms q/d %.0f/%.0f",
                     state["epoch"], seconds, leg, value, state["best"], state["best_epoch"],
                     val["sparsity"]["active_terms_query"], val["sparsity"]["active_terms_doc"])
        _save_state(run, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loop": state,
                          "torch_rng": torch.get_rng_state()})
        epochs_this_call += 1
    return finish(config, run, ws, state)


def finish(config: TrainConfig, run: Path, ws: Workspace, state: dict[str, Any]) -> dict[str, Any]:
    """Select the fusion weights on val, evaluate the val-selected checkpoint on val and test, write results.json.

    The integrated leg is reported twice: with the training teacher's weights and with val-selected weights
    (the latter become the checkpoint's default fusion for serving).
    """
    best = load_checkpoint(run / "best", expected_fingerprint=ws.backbone.fingerprint)
    val_split = split_features(ws.dataset, ws.cache, config.data.val_split)
    test_split = split_features(ws.dataset, ws.cache, config.data.test_split)
    teacher = {"val": evaluate_model(best.model, val_split), "test": evaluate_model(best.model, test_split)}
    fusion = tune_fusion(best.model, val_split)
    tuned_config = best.model.config.model_copy(update={"fusion_dense_weight": fusion["w_dense"],
                                                        "fusion_sparse_weight": fusion["w_sparse"]})
    best.model.config = tuned_config
    content_hash = save_checkpoint(run / "best", best.model, backbone_fingerprint=ws.backbone.fingerprint,
                                   metadata={**best.metadata, "fusion_selected_on": config.data.val_split})
    results: dict[str, Any] = {
        "method": config.method,
        "checkpoint": str(run / "best"),
        "content_hash": content_hash,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(sum(state["epoch_seconds"]), 2),
        "epoch_seconds": [round(s, 2) for s in state["epoch_seconds"]],
        "temperature": float(best.model.temperature.detach()),
        "fusion": {"teacher": {"w_dense": config.loss.w_dense, "w_sparse": config.loss.w_sparse},
                   "val_selected": {"w_dense": fusion["w_dense"], "w_sparse": fusion["w_sparse"]},
                   "val_sweep": fusion["sweep"]},
        "config": config.model_dump(mode="json"),
    }
    for split_name, split in (("val", val_split), ("test", test_split)):
        metrics = evaluate_model(best.model, split)
        metrics["integrated_teacher_weights"] = teacher[split_name]["integrated"]
        results[split_name] = metrics
    write_text_atomic(run / RESULTS_FILE, json.dumps(results, indent=2))
    return results
