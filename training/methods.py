"""The training methods: one record each, the only place their names, trained parts, losses and selection live.

Every other module (trainer, config, CLI, presets, report) looks a method up here instead of matching strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# DuetModel.trainable_groups() names
ParamGroup = Literal["projections", "sparse_head", "temperature"]
# The relevance loss step_losses builds: "dense" = InfoNCE on the dense leg only (no sparse head in the step);
# "joint" = the joint dense + sparse + integrated loss (core of SKD); "d2s" = sparse scores distilled from the
# frozen dense scores. The sparse methods ("joint", "d2s") add the sparsity regulariser and the grounding losses.
Relevance = Literal["dense", "joint", "d2s"]
Leg = Literal["dense", "sparse", "integrated"]


@dataclass(frozen=True)
class TrainingMethod:
    name: str  # the one spelling written to configs, checkpoints, run directories and the CLI help
    description: str  # one line (the CLI help)
    label: str  # its row label in the results table
    trainable: tuple[ParamGroup, ...]
    relevance: Relevance
    selection_leg: Literal["dense", "sparse"]  # whose val t2i R@1 picks the best checkpoint
    preset: str | None  # the default configuration (training.presets.PRESETS key) its CLI command runs
    self_distill: bool = False  # "joint" only: the teacher-distillation terms (off for the no-KD ablation)
    from_lit_base: bool = True  # starts from the aligned dense base (init_checkpoint required)
    aliases: tuple[str, ...] = ()  # older spellings, accepted on input only (CLI, stored configs, run directories)

    def __post_init__(self) -> None:
        if self.self_distill and self.relevance != "joint":
            raise ValueError(f"{self.name}: self-distillation belongs to the joint loss")

    @property
    def sparse(self) -> bool:
        """Whether the sparse head takes part in training (and so its regulariser and grounding losses)."""
        return self.relevance != "dense"

    @property
    def trained_legs(self) -> tuple[Leg, ...]:
        """The scoring legs its relevance loss trains: the ones its results table rows show."""
        return {"dense": ("dense",), "d2s": ("sparse",), "joint": ("dense", "sparse", "integrated")}[self.relevance]


_ALL_PARTS: tuple[ParamGroup, ...] = ("projections", "sparse_head", "temperature")

# In results-table order.
_METHODS: tuple[TrainingMethod, ...] = (
    TrainingMethod("align", "LiT-style alignment of the frozen towers' projections (the dense base)",
                   label="LiT base (align)", trainable=("projections", "temperature"), relevance="dense",
                   selection_leg="dense", preset="align", from_lit_base=False),
    TrainingMethod("dense", "baseline: projections only, dense InfoNCE", label="dense baseline",
                   trainable=("projections", "temperature"), relevance="dense", selection_leg="dense",
                   preset="dense"),
    TrainingMethod("d2s", "baseline: sparse head distilled from the frozen dense model (D2S)",
                   label="D2S (sparse from frozen dense)", trainable=("sparse_head",), relevance="d2s",
                   selection_leg="sparse", preset="d2s"),
    TrainingMethod("no_kd", "ablation: the joint losses without distillation", label="no-KD ablation",
                   trainable=_ALL_PARTS, relevance="joint", selection_leg="sparse", preset="no_kd",
                   aliases=("no-kd",)),
    TrainingMethod("frozen_final", "ablation: SKD with the final layer (projections) frozen",
                   label="frozen final layer", trainable=("sparse_head", "temperature"), relevance="joint",
                   self_distill=True, selection_leg="sparse", preset="frozen_final",
                   aliases=("frozen", "frozen-final")),
    TrainingMethod("skd", "the paper's joint sparse-dense training with self-knowledge distillation",
                   label="SKD (ours)", trainable=_ALL_PARTS, relevance="joint", self_distill=True,
                   selection_leg="sparse", preset="skd"),
)

METHODS: dict[str, TrainingMethod] = {m.name: m for m in _METHODS}
_BY_ALIAS: dict[str, TrainingMethod] = {alias: m for m in _METHODS for alias in m.aliases}
if len(METHODS) != len(_METHODS) or len(_BY_ALIAS) != sum(len(m.aliases) for m in _METHODS) \
        or set(METHODS) & set(_BY_ALIAS):
    raise ValueError("training method names and aliases must be unique")


def method(name_or_alias: str) -> TrainingMethod:
    """The method of a canonical name or an older spelling; unknown names list the valid ones."""
    found = METHODS.get(name_or_alias) or _BY_ALIAS.get(name_or_alias)
    if found is None:
        raise ValueError(f"unknown training method {name_or_alias!r}: choose one of {', '.join(METHODS)}")
    return found
