"""Teachers: the model itself seen at another time (EMA, snapshot, bank), place (deeper head) or geometry.

Every teacher returns its signal without gradient; the objective detaches again anyway (training/skd/core.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Teacher(Protocol):
    def logits(self, *inputs: torch.Tensor) -> torch.Tensor: ...

    def on_step_end(self, student: nn.Module) -> None: ...

    def on_epoch_end(self, student: nn.Module, val_metric: float | None = None) -> None: ...


class _Hooks:
    """No-op hooks for teachers that do not follow the student."""

    def on_step_end(self, student: nn.Module) -> None:  # noqa: ARG002 (the hook protocol's signature)
        return None

    def on_epoch_end(self, student: nn.Module, val_metric: float | None = None) -> None:  # noqa: ARG002
        return None


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s in place; float buffers (e.g. BN stats) are copied."""
    for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
        p_t.mul_(m).add_(p_s.detach(), alpha=1.0 - m)
    for b_t, b_s in zip(teacher.buffers(), student.buffers(), strict=True):
        b_t.copy_(b_s)


class EMATeacher(_Hooks):
    """Mean teacher (DINO, SST): an EMA of the student, momentum constant or a function of the step."""

    def __init__(self, module: nn.Module, momentum: float | Callable[[int], float] = 0.996) -> None:
        self.module = _frozen_copy(module).eval()
        self.momentum = momentum
        self.step = 0

    @torch.no_grad()
    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)

    def on_step_end(self, student: nn.Module) -> None:
        m = self.momentum(self.step) if callable(self.momentum) else self.momentum
        ema_update_(self.module, student, float(m))
        self.step += 1


class SnapshotTeacher(_Hooks):
    """A frozen copy of the student: the latest epoch's (XLT-QA) or the best on validation so far (ALS)."""

    def __init__(self, module: nn.Module, keep: Literal["latest", "best"] = "latest",
                 higher_is_better: bool = True) -> None:
        if keep not in ("latest", "best"):
            raise ValueError(f"keep must be 'latest' or 'best', got {keep!r}")
        self.module = _frozen_copy(module).eval()
        self.keep, self.higher_is_better = keep, higher_is_better
        self.best: float | None = None

    @torch.no_grad()
    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)

    def on_epoch_end(self, student: nn.Module, val_metric: float | None = None) -> None:
        if self.keep == "best":
            if val_metric is None:
                raise ValueError("SnapshotTeacher(keep='best') needs val_metric")
            better = self.best is None or (val_metric > self.best if self.higher_is_better else val_metric < self.best)
            if not better:
                return
            self.best = val_metric
        self.module.load_state_dict(student.state_dict())


class PredictionBank(_Hooks):
    """Per-sample probabilities stored from an earlier epoch (PS-KD / DRRNet online teacher)."""

    def __init__(self, num_samples: int, num_classes: int) -> None:
        self.probs = torch.zeros(num_samples, num_classes)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probs: torch.Tensor) -> None:
        self.probs[indices] = probs.detach().to(self.probs.dtype).cpu()
        self.seen[indices] = True

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Stored rows (zeros where never written: check ``has``)."""
        return self.probs[indices].clone()

    def has(self, indices: torch.Tensor) -> torch.Tensor:
        return self.seen[indices].clone()

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, valid mask), the spelling DRRNet-SKD's online teacher uses."""
        return self.lookup(indices), self.has(indices)

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the stored rows (-inf-free: clamped), for callers that want logits."""
        return self.lookup(inputs[0]).clamp_min(torch.finfo(self.probs.dtype).tiny).log()


class DetachedHead(_Hooks):
    """A deeper head of the same forward pass as teacher (CTC top layer, main paper): its output, detached."""

    def __init__(self, head: Callable[..., torch.Tensor]) -> None:
        self.head = head

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(*inputs).detach()


class EmbeddingPrior(_Hooks):
    """Teacher logits from the output-embedding geometry (Hahn & Choi): sim(w_y, w_j) / tau, top-k kept.

    Columns outside the top-k (the target is always kept) get -inf, i.e. probability 0 after the softmax.
    """

    def __init__(self, embedding_weight: torch.Tensor, tau: float = 1.0, top_k: int | None = None) -> None:
        self.weight, self.tau, self.top_k = embedding_weight, tau, top_k

    @torch.no_grad()
    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        targets = inputs[0]
        emb = self.weight.detach()
        scores = emb[targets] @ emb.T / self.tau  # (N, V)
        if self.top_k is not None and self.top_k + 1 < scores.shape[-1]:
            keep = torch.zeros_like(scores, dtype=torch.bool)
            others = scores.scatter(-1, targets[:, None], float("-inf"))
            keep.scatter_(-1, others.topk(self.top_k, dim=-1).indices, True)
            keep.scatter_(-1, targets[:, None], True)
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores

    def probs(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(targets), dim=-1)


class IntegratedScore(_Hooks):
    """Main paper's teacher: sum_i w_i * score_i of the same model's heads, detached."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = tuple(float(w) for w in weights)

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} score tensors, got {len(inputs)}")
        return sum(w * s.detach() for w, s in zip(self.weights, inputs, strict=True))  # type: ignore[return-value]
