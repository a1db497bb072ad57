"""Siamese Sleep Transformer SKD (Kwak, Kweon, Shin 2022).

Two weight-shared branches see two stochastic views of one EEG epoch; the detached branch B (or an EMA copy on
view B) teaches branch A through a temperature-scaled KL. "Selective batch sampling" is reconstructed [R] as
class-balanced mini-batches: every batch holds floor(B/C) or ceil(B/C) examples of each class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from training.skd.core import soft_kl


class ClassBalancedBatchSampler:
    """Batches of indices with every class present floor(B/C) or ceil(B/C) times [R].

    The B mod C extra slots go to randomly chosen classes in each batch. Each class is drawn from a random
    permutation; a class that runs out starts a fresh one (minority classes are thus sampled with replacement across
    passes), or, with ``replacement_for_minority=False``, the epoch ends there. ``num_batches=None`` means "majority
    class covered once": as many batches as the largest class fills with ceil(B/C) per batch, so none of its examples
    repeats within an epoch (the smallest class when ``replacement_for_minority=False``).
    All randomness comes from ``generator``.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, batch_size: int, num_batches: int | None = None,
                 replacement_for_minority: bool = True, generator: torch.Generator | None = None) -> None:
        labels_t = torch.as_tensor(labels, dtype=torch.long)
        self.classes = torch.unique(labels_t).tolist()
        if batch_size < len(self.classes):
            raise ValueError(f"batch_size {batch_size} < number of classes {len(self.classes)}")
        self.pools = [torch.nonzero(labels_t == c).flatten() for c in self.classes]
        self.batch_size = batch_size
        self.replacement_for_minority = replacement_for_minority
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._num_batches = num_batches

    def __len__(self) -> int:
        if self._num_batches is not None:
            return self._num_batches
        ceil_quota = math.ceil(self.batch_size / len(self.classes))
        # the binding class is the largest one, or the smallest one when minorities may not repeat
        sizes = [len(p) for p in self.pools]
        limit = max(sizes) if self.replacement_for_minority else min(sizes)
        return max(1, limit // ceil_quota)

    def _quotas(self) -> list[int]:
        n_cls = len(self.classes)
        base, extra = divmod(self.batch_size, n_cls)
        quotas = [base] * n_cls
        for k in torch.randperm(n_cls, generator=self.generator)[:extra].tolist():
            quotas[k] += 1
        return quotas

    def __iter__(self) -> Iterator[list[int]]:
        streams = [p[torch.randperm(len(p), generator=self.generator)] for p in self.pools]
        cursors = [0] * len(self.pools)
        for _ in range(len(self)):
            batch: list[int] = []
            for k, quota in enumerate(self._quotas()):
                taken: list[int] = []
                while len(taken) < quota:
                    if cursors[k] == len(streams[k]):
                        if not self.replacement_for_minority:
                            return  # a class without replacement is exhausted: the epoch ends here
                        pool = self.pools[k]
                        streams[k] = pool[torch.randperm(len(pool), generator=self.generator)]
                        cursors[k] = 0
                    n = min(quota - len(taken), len(streams[k]) - cursors[k])
                    taken += streams[k][cursors[k]:cursors[k] + n].tolist()
                    cursors[k] += n
                batch += taken
            order = torch.randperm(len(batch), generator=self.generator).tolist()
            yield [batch[i] for i in order]


def view_consistency_skd_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, tau: float = 2.0,
                              symmetric: bool = False, ema_teacher: torch.Tensor | None = None,
                              mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """tau^2 * KL(sg(p_B^tau) || p_A^tau) between the two Siamese branches [R].

    ``ema_teacher``: logits of an EMA copy on view B; when given it replaces the detached branch B as the teacher.
    ``symmetric``: each branch is taught by the other's detached output, averaged (swap-invariant).
    """
    if symmetric and ema_teacher is not None:
        raise ValueError("symmetric=True uses the two branches as each other's teacher; drop ema_teacher")
    if symmetric:
        a_from_b = soft_kl(logits_a, logits_b, tau=tau, mask=mask)
        b_from_a = soft_kl(logits_b, logits_a, tau=tau, mask=mask)
        return {"loss": 0.5 * (a_from_b + b_from_a), "kl_a": a_from_b.detach(), "kl_b": b_from_a.detach()}
    teacher = ema_teacher if ema_teacher is not None else logits_b
    kl = soft_kl(logits_a, teacher, tau=tau, mask=mask)
    return {"loss": kl, "kl_a": kl.detach()}


def sst_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor, lam: float = 1.0,
             tau: float = 2.0, symmetric: bool = False,
             ema_teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L = mean CE over both views + lam * view-consistency KL; lam = 0 gives the plain two-view CE exactly."""
    task = 0.5 * (F.cross_entropy(logits_a, target) + F.cross_entropy(logits_b, target))
    if lam == 0.0:
        return {"loss": task, "task": task, "skd": torch.zeros(())}
    skd = view_consistency_skd_loss(logits_a, logits_b, tau=tau, symmetric=symmetric, ema_teacher=ema_teacher)
    return {"loss": task + lam * skd["loss"], "task": task.detach(), "skd": skd["loss"].detach()}
