"""The training loop shared by every method: cached features in, a val-selected checkpoint out."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_file, write_text_atomic
from core.backbone import Backbone
from core.backbone_facts import BACKBONE_FACTS_DIR, load_backbone
from core.checkpoint import load_checkpoint, save_checkpoint
from core.data import KarpathyDataset, karpathy_inputs, load_karpathy
from core.device_clock import SetupClock, device_seconds, seconds_since_launch
from core.feature_cache import CachedFeatures, compute_features
from core.model import DuetModel
from core.progress import progress
from core.readability import GroundingReference, whole_word_mask
from core.sparse_head import OwnTerms
from core.terms import TermSpace
from core.vocab import caption_vocabulary, document_frequency
from core.words import WordVocabulary
from training import schedules
from training.config import LossConfig, TrainConfig
from training.evaluate import evaluate_model, tune_fusion
from training.features import SplitFeatures, in_term_space, split_features
from training.hub_floor import calibrate_hub_floor
from training.losses import (
    JointLossWeights,
    bow_grounding_loss,
    d2s_loss,
    hub_loss,
    info_nce,
    joint_loss,
    sparsity_loss,
    word_loss,
)
from training.methods import method

_logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RESULTS_FILE = "results.json"
METRICS_LOG = "metrics.jsonl"


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
    backbone = load_backbone(config.model.backbone, facts_root=Path(config.data.cache_root) / BACKBONE_FACTS_DIR)
    backbone.to(resolve_device(config.device))
    splits = sorted({config.data.train_split, config.data.val_split, config.data.test_split})
    cache = compute_features(backbone, karpathy_inputs(dataset, splits), cache_root=config.data.cache_root,
                             skip_corrupt=config.data.skip_corrupt)
    return Workspace(backbone=backbone.to("cpu"), dataset=dataset, cache=cache)


def term_space_for(config: TrainConfig, backbone: Backbone, train: SplitFeatures) -> TermSpace:
    """The sparse head's terms: the tokenizer's pieces, or the whole words of the training captions."""
    head = config.model.sparse_head
    words = None
    if head.vocabulary == "words":
        words = WordVocabulary.from_captions(train.caption_texts, min_df=head.min_df,
                                             inflections=head.inflections == "merge")
    return backbone.term_space(words)


def term_ids_for(config: TrainConfig, terms: TermSpace, train: SplitFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """Output terms of the sparse head and their IDF over the training captions (``train`` in ``terms``' space).

    'full': every non-special token; 'train_captions': tokens of the training captions; 'content': their content
    pieces (core/vocab.py); 'words': every word of the word vocabulary (built with its own ``min_df``). Both
    caption piece vocabularies keep pieces in at least ``min_df`` captions.
    """
    head = config.model.sparse_head
    vocabulary = terms.vocabulary
    assert train.caption_terms is not None  # the training split is always tokenised
    df = document_frequency(train.caption_terms, len(vocabulary))
    if head.vocabulary in ("full", "words"):
        term_ids = vocabulary.content_ids()
    else:
        term_ids = caption_vocabulary(vocabulary, df, min_df=head.min_df, content_only=head.vocabulary == "content")
    if term_ids.size == 0:
        raise ValueError(f"the sparse head vocabulary {head.vocabulary!r} (min_df {head.min_df}) is empty")
    idf = np.log((1 + train.num_pairs) / (1 + df[term_ids]))
    return torch.from_numpy(term_ids), torch.from_numpy(idf).float()


def build_model(config: TrainConfig, backbone: Backbone, terms: TermSpace, term_ids: torch.Tensor,
                term_idf: torch.Tensor | None = None) -> DuetModel:
    # The checkpoint's default fusion is the integrated score the model was trained with.
    model_config = config.model.model_copy(update={"fusion_dense_weight": config.loss.w_dense,
                                                   "fusion_sparse_weight": config.loss.w_sparse})
    model = DuetModel(model_config, image_projection=backbone.image_projection,
                      text_projection=backbone.text_projection,
                      token_embedding=terms.embedding(backbone.token_embedding), term_ids=term_ids,
                      term_idf=term_idf, words=terms.words)
    if config.init_checkpoint is not None:
        base = load_checkpoint(config.init_checkpoint, expected_fingerprint=backbone.fingerprint).model
        with torch.no_grad():  # the dense base: projections and temperature; the sparse head starts fresh
            model.image_proj.weight.copy_(base.image_proj.weight)
            model.text_proj.weight.copy_(base.text_proj.weight)
            model.temperature.copy_(base.temperature)
    return model


def grounding_reference(terms: TermSpace, train: SplitFeatures) -> GroundingReference:
    """Readability is measured against the content terms of the training captions (``train`` in ``terms``' space):
    their content pieces, or their words; the piece rate against their whole words."""
    assert train.caption_terms is not None
    return GroundingReference(terms.vocabulary.content_mask(), train.caption_terms,
                              whole_word_mask(terms.vocabulary, train.caption_texts))


@dataclass(frozen=True)
class TrainingTexts:
    """Per-caption head columns (texts scored on their own terms) and per-image bag-of-words targets."""

    caption_columns: torch.Tensor  # (N_txt, L) head columns, -1 pads
    bow: OwnTerms | None  # per image row: IDF-weighted words of all its captions, unit L2 norm


def training_texts(model: DuetModel, split: SplitFeatures, term_idf: torch.Tensor, *, with_bow: bool) -> TrainingTexts:
    assert split.caption_terms is not None
    chunks = [model.text_columns(split.caption_terms[i:i + 4096]).cpu() for i in range(0, split.num_pairs, 4096)]
    width = max((c.shape[1] for c in chunks), default=1)
    columns = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=-1) for c in chunks]) \
        if chunks else torch.zeros(0, 1, dtype=torch.long)
    if not with_bow:
        return TrainingTexts(columns, None)
    num_images, num_terms = len(split.image_ids), model.sparse_head.num_terms
    counts = torch.zeros(num_images, num_terms + 1)  # the extra column collects the pads
    safe = torch.where(columns < 0, num_terms, columns)
    counts.index_put_((split.caption_image[:, None].expand_as(safe).reshape(-1), safe.reshape(-1)),
                      torch.ones(safe.numel()), accumulate=True)
    captions_per_image = torch.bincount(split.caption_image, minlength=num_images).clamp_min(1)[:, None]
    weights = counts[:, :num_terms] / captions_per_image * term_idf[None, :]  # caption share x IDF
    weights = torch.nn.functional.normalize(weights, dim=1)
    length = max(1, int((weights > 0).sum(dim=1).max()))
    values, bow_columns = weights.topk(length, dim=1)
    bow_columns = torch.where(values > 0, bow_columns, torch.full_like(bow_columns, -1))
    return TrainingTexts(columns, OwnTerms(bow_columns, values))


def set_trainable(model: DuetModel, name: str) -> list[torch.nn.Parameter]:
    """Freeze every parameter group but the ones the method ``name`` trains; return those parameters."""
    groups = model.trainable_groups()
    for params in groups.values():
        for p in params:
            p.requires_grad_(False)
    chosen = [p for part in method(name).trainable for p in groups[part]]
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def optimizer_groups(model: DuetModel, name: str, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the sparse head at the base LR, projections + temperature at LR * projection_lr_scale."""
    set_trainable(model, name)
    groups = model.trainable_groups()
    scale = config.optim.projection_lr_scale
    out = []
    for name, lr_scale in (("sparse_head", 1.0), ("projections", scale), ("temperature", scale)):
        params = [p for p in groups[name] if p.requires_grad]
        if params:
            out.append({"params": params, "lr_scale": lr_scale, "name": name})
    return out


def build_optimizer(config: TrainConfig, groups: list[dict[str, Any]], device: str) -> torch.optim.AdamW:
    """AdamW over ``groups`` (optimizer_groups). On CUDA its fused form updates every tensor in one kernel, not a
    dozen kernels per tensor: a step of small tensors there waits on launching kernels, not on running them."""
    return torch.optim.AdamW(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                             fused=True if device.startswith("cuda") else None)


@dataclass(frozen=True)
class StepPlan:
    """What the schedules say for one optimiser step."""

    reg_step: int
    reg_warmup_steps: int
    d2s_temperature: float
    image_keep: int = 0  # image top-k this step (0: keep every term)
    mask_texts: bool = False  # score captions on their own terms this step
    sparse_share: float = 1.0  # share of w_sparse in the integrated score this step (its warm-up)


def step_losses(model: DuetModel, image_features: torch.Tensor, text_features: torch.Tensor, config: TrainConfig,
                plan: StepPlan, *, text_columns: torch.Tensor | None = None, bow: OwnTerms | None = None,
                same_image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All named losses of one batch; ``loss`` is what gets back-propagated.

    text_columns: each caption's own head columns (needed when ``plan.mask_texts``); bow and same_image: the
    batch images' bag-of-words targets and which rows show the same image (the grounding loss).
    """
    spec, lc = config.training_method, config.loss
    temperature = model.clamp_temperature()
    if spec.relevance == "dense":  # no sparse head in the step
        dense_i2t = model.embed_image(image_features) @ model.embed_text(text_features).T / temperature
        out = {"dense_loss": info_nce(dense_i2t)}
        out["loss"] = out["dense_loss"]
        return out
    images, image_logits = model.encode_image_with_logits(image_features, keep=plan.image_keep)
    text_dense = model.embed_text(text_features)
    if plan.mask_texts:
        if text_columns is None:
            raise ValueError("masked captions need their own columns")
        own = model.own_text_terms(text_features, text_columns, dense=text_dense)
        sparse_i2t = own.scores(images.sparse)  # (B, B): zero outside each caption's own columns
        text_sparse: torch.Tensor | OwnTerms = own  # compact: the regulariser needs no (B, num_terms) copy
    else:
        text_sparse = model.sparse_head.expanded_text(text_dense, text_features)
        sparse_i2t = images.sparse @ text_sparse.T  # (B, B)
    if spec.relevance == "d2s":
        out = d2s_loss((images.dense @ text_dense.T / plan.d2s_temperature).detach(), sparse_i2t)
    else:
        weights = JointLossWeights(w_dense=lc.w_dense, w_sparse=lc.w_sparse * plan.sparse_share,
                                   lambda_dense=lc.lambda_dense,
                                   lambda_sparse=lc.lambda_sparse, distill=spec.self_distill,
                                   teacher_grad=lc.teacher_grad, t2i_teacher=lc.t2i_teacher)
        out = joint_loss(images.dense @ text_dense.T / temperature, sparse_i2t, weights)
    out.update(sparsity_loss(text_sparse, images.sparse, kind=lc.regularizer,
                             eta_text=schedules.quadratic_warmup(lc.eta_text, plan.reg_step, plan.reg_warmup_steps),
                             eta_image=schedules.quadratic_warmup(lc.eta_image, plan.reg_step, plan.reg_warmup_steps),
                             image_threshold=lc.image_reg_threshold))
    out["loss"] = out["relevance"] + out["regularizer"]
    for name, (weight, value) in _grounding_losses(model, images.sparse, image_logits, lc, bow, same_image).items():
        out.update(value)
        out["loss"] = out["loss"] + weight * value[name]
    return out


StepLosses = Callable[..., dict[str, torch.Tensor]]


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions oneDNN uses (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def step_autocast(config: TrainConfig, device: str) -> torch.autocast:
    """A step's bf16 autocast: on CUDA with ``amp``, on a CPU with ``cpu_amp`` (refused where the CPU lacks bf16
    instructions: emulated, it would be slower than float32). Re-entrant: one serves every step of a run."""
    if device == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=config.amp)
    if config.cpu_amp and not cpu_has_bf16():
        raise ValueError("cpu_amp=true needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); this one has "
                         "neither: leave cpu_amp off")
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=config.cpu_amp)


def step_function(config: TrainConfig) -> StepLosses:
    """``step_losses`` as the run computes it: compiled when ``config.compile_step`` asks (torch.compile traces the
    backward too). The plan's integers that change between steps (the regulariser's step, the image budget while it
    anneals) turn symbolic at their first change, so a run compiles twice, not at every step; its floats never
    recompile. Each call starts from empty compile caches: a new model would otherwise count against the limit of
    recompilations per function and fall back to eager steps."""
    if config.compile_step == "off":
        return step_losses
    torch.compiler.reset()
    compiled = torch.compile(step_losses, mode=None if config.compile_step == "default" else config.compile_step)

    def compiled_step(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: the last step's outputs are no longer read
        return compiled(*args, **kwargs)

    return compiled_step


def _grounding_losses(model: DuetModel, image_sparse: torch.Tensor, image_logits: torch.Tensor, lc: LossConfig,
                      bow: OwnTerms | None, same_image: torch.Tensor | None,
                      ) -> dict[str, tuple[float, dict[str, torch.Tensor]]]:
    """The losses on the image terms beside relevance, by name: (weight, the loss's named values)."""
    out: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
    if lc.needs_caption_words and (bow is None or same_image is None):
        raise ValueError("the grounding losses (and the hub loss on non-caption words) need the batch's "
                         "bag-of-words targets: set a grounding loss, or loss.hub_scope=all")
    if lc.hub_weight > 0:
        spared = None
        if lc.hub_scope == "non_caption":  # the only use of a (batch x vocabulary) copy of the caption words
            assert bow is not None
            spared = bow.to_dense(model.sparse_head.num_terms) > 0
        out["hub_loss"] = lc.hub_weight, hub_loss(image_sparse, lc.hub_max_share, spared)
    if lc.bow_weight > 0:
        assert bow is not None and same_image is not None
        out["bow_loss"] = lc.bow_weight, bow_grounding_loss(bow.scores(image_sparse), same_image)
    if lc.word_loss_weight > 0:
        assert bow is not None
        out["word_loss"] = lc.word_loss_weight, word_loss(image_logits, bow, kind=lc.word_loss)
    return out


def _lr_factor(config: TrainConfig, step: int, total: int) -> float:
    warmup = int(config.optim.warmup_ratio * total)
    if config.optim.schedule == "linear":
        return schedules.linear_warmup_decay(step, warmup, total)
    if config.optim.schedule == "cosine":
        return schedules.cosine_decay(step, warmup, total)
    return min(1.0, (step + 1) / max(1, warmup)) if warmup else 1.0


def selection_value(metrics: dict[str, Any], leg: str, gp10_floor: float | None) -> float:
    """Val t2i R@1 of the selection leg; with a readability floor, an epoch under it scores 100 * GP@10 - 100
    (always below any R@1), so the floor is met first and R@1 decides among epochs that meet it."""
    recall = float(metrics[leg]["t2i"]["R@1"])
    if gp10_floor is None:
        return recall
    gp10 = float(metrics["readability"]["GP@10"])
    return recall if gp10 >= gp10_floor else 100.0 * gp10 - 100.0


def selection_criterion(leg: str, gp10_floor: float | None) -> str:
    """What the selection value measures, in words for the logs."""
    metric = f"val {leg} t2i R@1"
    if gp10_floor is None:
        return metric
    return f"{metric} at val GP@10 >= {gp10_floor:.2f}, else 100*GP@10-100"


def selection_explained(metrics: dict[str, Any], leg: str, gp10_floor: float | None) -> str:
    """Which branch of ``selection_value`` gave this epoch's value, so a negative value in the log is understood."""
    if gp10_floor is None:
        return selection_criterion(leg, None)
    gp10 = float(metrics["readability"]["GP@10"])
    if gp10 >= gp10_floor:
        return f"val {leg} t2i R@1, GP@10 {gp10:.3f} meets the floor {gp10_floor:.2f}"
    return f"GP@10 {gp10:.3f} under the floor {gp10_floor:.2f}: 100*GP@10-100"


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    with atomic_file(run_dir / STATE_FILE) as handle:
        torch.save(state, handle)


def _open_run_dir(run: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    """The run directory, refused when it holds another run (unless resumed or overwritten), with config.json."""
    if run.exists() and any(run.iterdir()) and not (resume or overwrite):
        raise RunDirectoryError(f"run directory {run} is not empty: pass --resume to continue or --overwrite")
    if overwrite and not resume:
        for name in (STATE_FILE, RESULTS_FILE, METRICS_LOG):
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "config.json", config.model_dump_json(indent=2))
    return run


def _restored_loop(run: Path, model: DuetModel, optimizer: torch.optim.Optimizer,
                   device: str) -> dict[str, Any] | None:
    """Model, optimizer and RNG from the last finished epoch's state; the loop counters, or None when none saved."""
    if not (run / STATE_FILE).is_file():
        return None
    saved = torch.load(run / STATE_FILE, map_location=device, weights_only=False)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    state: dict[str, Any] = saved["loop"]
    _logger.info("resumed %s at epoch %d (best selection value %.2f @ epoch %d)", run, state["epoch"], state["best"],
                 state["best_epoch"])
    return state


def _close_epoch(config: TrainConfig, run: Path, ws: Workspace, model: DuetModel, state: dict[str, Any], *,
                 val_split: SplitFeatures, grounding: GroundingReference, device: str, seconds: float,
                 train_means: dict[str, float], train_images: torch.Tensor) -> None:
    """Recalibrate the hub floors (when the head has them), validate, keep the checkpoint when the selection value
    improved (else count a bad epoch), log the epoch."""
    max_share = config.model.sparse_head.image_term_max_share
    if max_share is not None:
        train_means = {**train_means, **calibrate_hub_floor(model, train_images, max_share)}
    leg = config.selection_metric
    val = evaluate_model(model, val_split, device=device, grounding=grounding)
    value = selection_value(val, leg, config.selection_gp10_floor)
    improved = value > state["best"]
    if improved:
        state.update(best=value, best_epoch=state["epoch"], bad_epochs=0)
        save_checkpoint(run / "best", model.cpu(), backbone_fingerprint=ws.backbone.fingerprint,
                        metadata={"method": config.preset or config.method, "epoch": state["epoch"],
                                  "val_selection": value})
        model.to(device)
    else:
        state["bad_epochs"] += 1
    record = {"epoch": state["epoch"], "seconds": round(seconds, 2), "temperature": float(model.temperature.detach()),
              "train": train_means,
              "val": {k: val[k] for k in ("dense", "sparse", "integrated", "sparsity", "readability")},
              "selection": value, "improved": improved}
    with (run / METRICS_LOG).open("a") as log:
        log.write(json.dumps(record) + "\n")
    _logger.info("epoch %d: %.1fs, val %s t2i R@1 %.2f, selection %.2f (%s; best %.2f @ epoch %d), active "
                 "terms q/d %.0f/%.0f, FLOPs %.2f, GP@10 %.3f", state["epoch"], seconds, leg,
                 val[leg]["t2i"]["R@1"], value, selection_explained(val, leg, config.selection_gp10_floor),
                 state["best"], state["best_epoch"], val["sparsity"]["active_terms_query"],
                 val["sparsity"]["active_terms_doc"], val["sparsity"]["flops"], val["readability"]["GP@10"])


def _setup_figures(clock: SetupClock, launched: float | None) -> dict[str, Any]:
    """Where the time before the first epoch went, logged and returned (results.json keeps it); ``launched``:
    seconds from the process's launch to the start of training, when training has the process to itself."""
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in clock.phases.items())
    spent = sum(clock.phases.values())
    if launched is not None:
        _logger.info("set-up: the first epoch starts %.1f s after launch (imports and arguments %.1f s, %s)",
                     launched + spent, launched, phases)
    else:
        _logger.info("set-up: %.1f s before the first epoch (%s)", spent, phases)
    return {"seconds_from_launch": None if launched is None else round(launched + spent, 3),
            "before_training_seconds": None if launched is None else round(launched, 3),
            "phases": {name: round(seconds, 3) for name, seconds in clock.phases.items()}}


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          workspace: Workspace | None = None, max_epochs_this_call: int | None = None) -> dict[str, Any]:
    """Train ``config.method``; write run_dir/{best/, state.pt, metrics.jsonl, results.json}; return results.

    ``max_epochs_this_call`` stops after that many epochs without finishing (used to test resuming).
    """
    launched = seconds_since_launch()
    clock = SetupClock()
    device = resolve_device(config.device)
    autocast = step_autocast(config, device)  # refused before anything is written
    run = _open_run_dir(Path(run_dir), config, resume=resume, overwrite=overwrite)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    ws = workspace or prepare_workspace(config)
    clock.lap("backbone and feature cache")
    tokenizer = ws.backbone.tokenizer
    train_split = split_features(ws.dataset, ws.cache, config.data.train_split, tokenizer=tokenizer)
    val_split = split_features(ws.dataset, ws.cache, config.data.val_split, tokenizer=tokenizer)
    terms = term_space_for(config, ws.backbone, train_split)
    train_split, val_split = in_term_space(train_split, terms), in_term_space(val_split, terms)
    clock.lap("splits and caption terms")
    term_ids, term_idf = term_ids_for(config, terms, train_split)
    model = build_model(config, ws.backbone, terms, term_ids, term_idf).to(device)
    grounding = grounding_reference(terms, train_split)
    head = config.model.sparse_head
    sparse_method = config.training_method.sparse
    grounding_losses = config.loss.needs_caption_words
    texts = training_texts(model, train_split, term_idf, with_bow=grounding_losses) \
        if sparse_method and (head.expansion != "off" or grounding_losses) else None
    clock.lap("vocabulary, model and training texts")
    groups = optimizer_groups(model, config.method, config)
    params = [p for g in groups for p in g["params"]]
    optimizer = build_optimizer(config, groups, device)  # its first parameter group imports torch._dynamo (~1 s)
    losses_of = step_function(config)  # compiled at the first step
    clock.lap("optimiser and step function")
    d2s_temperature = config.loss.d2s_teacher_temperature or float(model.temperature.detach())

    batch = min(config.optim.batch_size, train_split.num_pairs)
    steps_per_epoch = train_split.num_pairs // batch
    total_steps = steps_per_epoch * config.optim.epochs
    reg_warmup_steps = int(config.loss.reg_warmup_ratio * total_steps)
    # Official quirk: the regulariser also stepped on each validation forward (eval batches of 32).
    val_reg_steps = math.ceil(val_split.num_pairs / 32) + math.ceil(len(val_split.image_ids) / 32)

    state = _restored_loop(run, model, optimizer, device) if resume else None
    if state is None:
        state = {"epoch": 0, "step": 0, "reg_step": 0, "best": -1000.0, "best_epoch": 0, "bad_epochs": 0,
                 "epoch_seconds": []}

    image_features = train_split.image_features.to(device)
    text_features = train_split.text_features.to(device)
    caption_image = train_split.caption_image.to(device)
    caption_columns = texts.caption_columns.to(device) if texts is not None else None
    bow = texts.bow.to(device) if texts is not None and texts.bow is not None else None
    clock.lap("state and features to the device")
    setup = _setup_figures(clock, launched if workspace is None else None)
    epochs_this_call = 0
    while state["epoch"] < config.optim.epochs and state["bad_epochs"] < config.patience:
        if max_epochs_this_call is not None and epochs_this_call >= max_epochs_this_call:
            return {"interrupted": True, "epoch": state["epoch"]}
        model.train()
        started = device_seconds(device)
        order = torch.randperm(train_split.num_pairs, device=device)
        mask_probability = schedules.text_mask_probability(head.expansion, state["epoch"], config.optim.epochs)
        sums: dict[str, torch.Tensor] = {}
        name = config.preset or config.method  # a preset's run is named as the command that started it
        bar = progress(range(steps_per_epoch), total=steps_per_epoch,
                       desc=f"{name} epoch {state['epoch'] + 1}/{config.optim.epochs}", unit="step")
        for b in bar:
            idx = order[b * batch:(b + 1) * batch]
            factor = _lr_factor(config, state["step"], total_steps)
            for group in optimizer.param_groups:
                group["lr"] = config.optim.lr * group["lr_scale"] * factor
            # one draw per batch decides whether its captions are masked (D2S); none is made when the answer is fixed
            mask = mask_probability >= 1.0 or (0.0 < mask_probability and float(torch.rand(())) < mask_probability)
            image_keep = schedules.annealed_top_k(state["step"], total_steps, start=config.loss.image_topk_start,
                                                  budget=head.image_terms,
                                                  anneal_ratio=config.loss.image_topk_anneal_ratio)
            plan = StepPlan(reg_step=state["reg_step"], reg_warmup_steps=reg_warmup_steps,
                            d2s_temperature=d2s_temperature, image_keep=image_keep, mask_texts=mask,
                            sparse_share=schedules.linear_ramp(state["step"], int(config.loss.w_sparse_warmup_ratio
                                                                                  * total_steps)))
            rows = caption_image[idx]
            with autocast:
                losses = losses_of(model, image_features[rows], text_features[idx], config, plan,
                                   text_columns=caption_columns[idx] if caption_columns is not None else None,
                                   bow=bow.rows(rows) if bow is not None else None,
                                   same_image=rows[:, None] == rows[None, :])
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
            optimizer.step()
            state["step"] += 1
            state["reg_step"] += 1
            for name, value in losses.items():  # summed on the device: a step waits for no host copy
                sums[name] = sums[name] + value.detach() if name in sums else value.detach().clone()
        if config.loss.reg_counts_validation_batches:
            state["reg_step"] += val_reg_steps
        seconds = device_seconds(device) - started
        state["epoch_seconds"].append(seconds)
        state["epoch"] += 1
        train_means = {k: float(v) / max(1, steps_per_epoch) for k, v in sums.items()}
        _close_epoch(config, run, ws, model, state, val_split=val_split, grounding=grounding, device=device,
                     seconds=seconds, train_means=train_means, train_images=image_features)
        _save_state(run, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loop": state,
                          "torch_rng": torch.get_rng_state()})
        epochs_this_call += 1
    if state["bad_epochs"] >= config.patience and state["epoch"] < config.optim.epochs:
        # the loop's condition ends training here: say so, or the last epoch's progress bar just stops
        _logger.info("early stopping at epoch %d/%d: the selection value (%s) did not improve for %d %s; "
                     "best %.2f at epoch %d", state["epoch"], config.optim.epochs,
                     selection_criterion(config.selection_metric, config.selection_gp10_floor),
                     state["bad_epochs"], "epoch" if state["bad_epochs"] == 1 else "epochs", state["best"],
                     state["best_epoch"])
    return finish(config, run, ws, state, val_split=val_split, grounding=grounding, setup=setup)


def finish(config: TrainConfig, run: Path, ws: Workspace, state: dict[str, Any], *, val_split: SplitFeatures,
           grounding: GroundingReference, setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Select the fusion weights on val, evaluate the val-selected checkpoint on val and test, write results.json.

    The integrated leg is reported twice: with the training teacher's weights and with val-selected weights
    (the latter become the checkpoint's default fusion for serving).
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    best = load_checkpoint(run / "best", expected_fingerprint=ws.backbone.fingerprint)
    model = best.model.to(device)  # evaluated where it trained
    test_split = in_term_space(split_features(ws.dataset, ws.cache, config.data.test_split,
                                              tokenizer=ws.backbone.tokenizer),
                               ws.backbone.term_space(model.sparse_head.words))
    # the weights the model trained with, reported beside the val-selected ones (from the same scores)
    teacher = {"integrated_teacher_weights": (model.config.fusion_dense_weight, model.config.fusion_sparse_weight)}
    fusion = tune_fusion(model, val_split, device=device, metric=config.fusion_metric)
    tuned_config = model.config.model_copy(update={"fusion_dense_weight": fusion["w_dense"],
                                                   "fusion_sparse_weight": fusion["w_sparse"]})
    model.config = tuned_config
    content_hash = save_checkpoint(run / "best", model.cpu(), backbone_fingerprint=ws.backbone.fingerprint,
                                   metadata={**best.metadata, "fusion_selected_on": config.data.val_split})
    model.to(device)
    results: dict[str, Any] = {
        "method": config.method,
        "preset": config.preset,
        "checkpoint": str(run / "best"),
        "content_hash": content_hash,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(sum(state["epoch_seconds"]), 2),
        "epoch_seconds": [round(s, 2) for s in state["epoch_seconds"]],
        "setup": setup,  # this call's set-up before its first epoch (a resumed run: the resuming call's)
        "temperature": float(model.temperature.detach()),
        "fusion": {"teacher": {"w_dense": config.loss.w_dense, "w_sparse": config.loss.w_sparse},
                   "val_selected": {"w_dense": fusion["w_dense"], "w_sparse": fusion["w_sparse"]},
                   "selected_by": fusion["metric"],
                   "val_sweep": fusion["sweep"]},
        "config": config.model_dump(mode="json"),
    }
    for split_name, split in (("val", val_split), ("test", test_split)):
        metrics = evaluate_model(model, split, device=device, grounding=grounding, other_fusions=teacher)
        assert split.caption_terms is not None
        metrics["readability_floor"] = grounding.floor(split.caption_terms, split.caption_image,
                                                       len(split.image_ids))
        results[split_name] = metrics
    results["finish_seconds"] = round(time.perf_counter() - started, 3)  # fusion tuning, final evaluation, checkpoint
    write_text_atomic(run / RESULTS_FILE, json.dumps(results, indent=2))
    return results
