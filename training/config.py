"""Training configuration: validated pydantic models, JSON files and ``--set key=value`` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.config import ModelConfig
from core.data import dataset_dir_setting
from training.methods import METHODS, TrainingMethod, method


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dataset_dir: str | None = Field(default_factory=dataset_dir_setting,
                                    description="Karpathy-format dataset directory (default: the DUET_DATA setting)")
    image_root: str | None = Field(None, description="image folder (default: <dataset_dir>/images)")
    cache_root: str = Field("artifacts/cache", description="feature cache root")
    skip_corrupt: bool = Field(False, description="list and skip corrupt images instead of failing")
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(10, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="LR warm-up share of planned steps")
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    grad_clip: float = Field(1.0, ge=0, description="max grad norm (0 = off)")
    projection_lr_scale: float = Field(
        1.0, gt=0, description="LR multiplier of the projections and temperature (the already aligned final layer)")


class LossConfig(_Strict):
    w_dense: float = Field(0.1, ge=0, description="w1: dense weight in the integrated score (teacher)")
    w_sparse: float = Field(0.2, ge=0, description="w2: sparse weight in the integrated score")
    lambda_dense: float = Field(0.7, ge=0, description="lam1")
    lambda_sparse: float = Field(0.7, ge=0, description="lam2")
    teacher_grad: Literal["detach", "through"] = Field(
        "detach", description="'through' = official code (teacher not detached)")
    t2i_teacher: Literal["transposed", "untransposed"] = Field(
        "transposed", description="'untransposed' = official code's text-to-image teacher")
    regularizer: Literal["l1", "flops"] = "l1"
    eta_text: float = Field(1e-4, ge=0, description="q_reg: text sparsity weight")
    eta_image: float = Field(2e-5, ge=0, description="d_reg: image sparsity weight")
    reg_warmup_ratio: float = Field(0.2, ge=0, le=1, description="quadratic warm-up share of planned steps")
    reg_counts_validation_batches: bool = Field(
        False, description="official quirk: the regulariser schedule also steps on validation batches")
    d2s_teacher_temperature: float | None = Field(
        None, gt=0, description="d2s: teacher temperature (default: the dense base's learned temperature)")
    w_sparse_warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="share of planned steps over which w_sparse in the integrated score (the "
        "teacher) ramps linearly from 0: a fresh, weak sparse leg then does not drag the teacher down early")
    image_reg_threshold: int | None = Field(
        None, ge=0, description="the image regulariser applies only to vectors with more active terms than this")
    image_topk_start: int = Field(256, ge=1, description="image budget annealing: top-k at the first step")
    image_topk_anneal_ratio: float = Field(
        0.5, ge=0, le=1, description="share of planned steps over which top-k falls linearly to the image budget")
    bow_weight: float = Field(
        0.0, ge=0, description="weight of the bag-of-words grounding loss: image sparse vectors scored against the "
        "batch images' IDF-weighted caption words, same-image rows positive (VDR-style; 0 = off)")
    word_loss_weight: float = Field(
        0.0, ge=0, description="weight of the caption-word loss: the head's image logits as a word classifier of "
        "the image's caption words (0 = off)")
    hub_weight: float = Field(
        0.0, ge=0, description="weight of the hub loss: terms active in more than hub_max_share of a batch's images "
        "pay on their mean image weight for the excess share (0 = off)")
    hub_max_share: float = Field(
        0.3, gt=0, le=1, description="hub loss: the share of images a term may be active in before it pays")
    hub_scope: Literal["all", "non_caption"] = Field(
        "non_caption", description="hub loss: which activations of a hub pay: 'all', or only those on images whose "
        "captions do not use the term (needs the grounding losses' caption words)")
    word_loss: Literal["softmax", "bce"] = Field(
        "softmax", description="'softmax': over the vocabulary against the IDF-weighted caption words; 'bce': per "
        "term, like the readability probe (also shortens image vectors)")


    @property
    def needs_caption_words(self) -> bool:
        """Whether a step needs each batch image's caption words (the grounding losses, the hub loss's scope)."""
        return self.bow_weight > 0 or self.word_loss_weight > 0 or (self.hub_weight > 0
                                                                     and self.hub_scope == "non_caption")


class TrainConfig(_Strict):
    method: str = Field("skd", description=f"training method: one of {', '.join(METHODS)}")
    preset: str | None = Field(None, description="the named preset this run follows (recorded in the checkpoint)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    init_checkpoint: str | None = Field(
        None, description="checkpoint whose projections and temperature start this run (the LiT base)")
    patience: int = Field(5, ge=1, description="early stopping: epochs without val improvement")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    cpu_amp: bool = Field(
        False, description="bfloat16 autocast of the steps on a CPU too: one with bf16 instructions (AVX-512 BF16, "
        "AMX) runs their matrix products 2-4x faster, at bf16's precision. Off by default, so CPU runs reproduce the "
        "published figures; refused on a CPU without those instructions (there it would be slower)")
    compile_step: Literal["off", "default", "reduce-overhead"] = Field(
        "off", description="torch.compile of a training step's losses, forward and backward: 'default' fuses their "
        "element-wise work into fewer kernels; 'reduce-overhead' also replays the kernels as CUDA graphs on a GPU "
        "(for steps bound by launching kernels). The first steps of a run pay the compilation")
    eval_batch_size: int = Field(1024, ge=1)
    fusion_metric: Literal["t2i_r1", "rsum"] = Field(
        "t2i_r1", description="what the val-selected fusion weight maximises: text-to-image R@1, or RSUM (R@1/5/10 "
        "of both directions: the hybrid the service serves for both)")
    selection_gp10_floor: float | None = Field(
        None, ge=0, le=1, description="model selection: only epochs whose val GP@10 reaches this floor compete on "
        "R@1 (below it, higher GP@10 wins), so selection cannot drift back to latent terms")

    @field_validator("method")
    @classmethod
    def _canonical_method(cls, name: str) -> str:
        # older spellings in config files and --set are read as the method they name, stored under its name
        return method(name).name

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.training_method.from_lit_base and self.init_checkpoint is None:
            raise ValueError(f"method {self.method!r} starts from the LiT base: set init_checkpoint")
        return self

    @property
    def training_method(self) -> TrainingMethod:
        return METHODS[self.method]

    @property
    def selection_metric(self) -> str:
        """Early stopping / model selection: val t2i R@1 of the method's selection leg."""
        return self.training_method.selection_leg


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001); values are JSON when they parse as JSON, else strings."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_config(base: dict[str, Any], *, config_file: str | None = None,
                 overrides: list[str] | None = None) -> TrainConfig:
    """Preset <- JSON file <- --set overrides, validated (unknown keys are errors)."""
    tree = json.loads(json.dumps(base))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed config JSON {path}: {e}") from e
        _deep_update(tree, loaded)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return TrainConfig.model_validate(tree)


def _deep_update(tree: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _deep_update(tree[key], value)
        else:
            tree[key] = value
