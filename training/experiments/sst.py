"""SST mini-experiment (Kwak, Kweon, Shin 2022): synthetic single-channel EEG, train on domain A, test on shifted
domain B.

Stages W, N1, N2, N3, REM are generated at 50 Hz in 10-s epochs (a short option, for the CPU budget) over a 1/f
background.
Domain A (train, N2-dominated prior) and domain B (test: other prior, gain 0.8, more noise, frequencies shifted by
+-0.5 Hz) stand in for SHHS -> Sleep-EDF. Every variant trains with two augmented views per example and the mean CE
over both views, for the same number of steps; they differ only in
  a: random batches;  b: class-balanced batches;  c: + view-SKD (lam * tau^2 KL);  d: both (SST).
lam was chosen on an in-domain validation split of A (`select_lambda`, seed 100, never on B).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from training.experiments.harness import Experiment, SeedResult, seed_mean
from training.skd.kernels.sst import ClassBalancedBatchSampler, sst_loss

FS = 50
STAGES = ("W", "N1", "N2", "N3", "REM")
Variant = Literal["a", "b", "c", "d"]


@dataclass(frozen=True)
class Domain:
    priors: tuple[float, float, float, float, float]
    gain: float
    noise: float
    freq_shift: float  # each epoch's rhythm frequencies move by +-freq_shift Hz (random sign)


DOMAIN_A = Domain((0.15, 0.05, 0.50, 0.15, 0.15), gain=1.0, noise=0.5, freq_shift=0.0)
DOMAIN_B = Domain((0.30, 0.10, 0.35, 0.10, 0.15), gain=0.8, noise=0.7, freq_shift=0.5)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f background (amplitude ~ f^-1/2, random phase), unit std."""
    freqs = np.fft.rfftfreq(n, 1 / FS)
    spectrum = np.zeros(len(freqs), dtype=complex)
    spectrum[1:] = freqs[1:] ** -0.5 * np.exp(2j * np.pi * rng.random(len(freqs) - 1))
    x = np.fft.irfft(spectrum, n)
    return x / x.std()


def _rhythm(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float, shift: float, amp: float) -> np.ndarray:
    """A sinusoid with random frequency in [lo, hi] + shift, slow frequency jitter and random phase."""
    f = rng.uniform(lo, hi) + shift
    jitter = 0.3 * np.cumsum(rng.normal(0, 1, len(t))) / np.sqrt(len(t))
    return amp * np.sin(2 * np.pi * f * t + jitter * 2 * np.pi + rng.uniform(0, 2 * np.pi))


def eeg_epoch(rng: np.random.Generator, stage: int, domain: Domain, seconds: float = 10.0) -> np.ndarray:
    n = int(seconds * FS)
    t = np.arange(n) / FS
    shift = domain.freq_shift * rng.choice([-1.0, 1.0])
    x = domain.noise * _pink(rng, n)
    if stage == 0:  # W: alpha + broadband EMG
        x += _rhythm(rng, t, 8, 12, shift, 1.0) + 0.5 * rng.normal(0, 1, n)
    elif stage == 1:  # N1: low-amplitude theta
        x += _rhythm(rng, t, 4, 7, shift, 0.6)
    elif stage == 2:  # N2: theta + spindles + maybe a K-complex
        x += _rhythm(rng, t, 4, 7, shift, 0.6)
        for _ in range(rng.integers(1, 4)):
            centre, width = rng.uniform(1, seconds - 1), rng.uniform(0.5, 1.5) / 4
            envelope = np.exp(-0.5 * ((t - centre) / width) ** 2)
            x += 1.5 * envelope * np.sin(2 * np.pi * (rng.uniform(12, 14) + shift) * t)
        if rng.random() < 0.5:
            start = rng.uniform(0.5, seconds - 1.5)
            window = (t >= start) & (t < start + 1.0)
            x[window] += -3.0 * np.sin(2 * np.pi * (t[window] - start))  # biphasic ~1 Hz
    elif stage == 3:  # N3: high-amplitude delta
        x += _rhythm(rng, t, 0.5, 2, shift / 4, rng.uniform(3, 4))
    else:  # REM: theta + 2-3 Hz sawtooth, low amplitude
        f = rng.uniform(2, 3) + shift / 2
        saw = 2 * ((f * t + rng.random()) % 1.0) - 1
        x += _rhythm(rng, t, 4, 7, shift, 0.5) + 0.6 * saw
    return (domain.gain * x).astype(np.float32)


def make_domain(n: int, domain: Domain, seed: int, seconds: float = 10.0) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(STAGES), size=n, p=np.array(domain.priors))
    x = np.stack([eeg_epoch(rng, int(s), domain, seconds) for s in labels])
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels).long()


class SleepTransformer(nn.Module):
    """Conv1d(k=25, stride=5) x2 patching -> 1-layer Transformer (d=32) -> mean pool -> 5-way head."""

    def __init__(self, d: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 16, 25, stride=5, padding=12), nn.GELU(),
                                  nn.Conv1d(16, d, 25, stride=5, padding=12), nn.GELU())
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d, len(STAGES))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(x).transpose(1, 2)  # [B, T, d]
        return self.head(self.encoder(tokens).mean(dim=1))


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """One stochastic view: amplitude scaling, circular time shift (<= 1 s), additive noise."""
    b, _, n = x.shape
    scale = 0.8 + 0.4 * torch.rand(b, 1, 1, generator=gen)
    shifts = torch.randint(-FS, FS + 1, (b,), generator=gen)
    idx = (torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)) % n
    shifted = torch.gather(x, 2, idx.unsqueeze(1))
    return scale * shifted + 0.2 * torch.randn(x.shape, generator=gen)


@dataclass(frozen=True)
class SSTConfig:
    n_train: int = 3000  # not 4000 / 15 epochs: cut to fit ~4 min on 2 shared cores (in-domain val F1 saturates early)
    n_val: int = 1000
    n_test: int = 2000
    seconds: float = 10.0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    # chosen on the in-domain validation split of A (select_lambda, seed 100): val macro-F1 for lam 0.25 / 0.5 / 1 / 2
    # = 98.8 / 97.1 / 98.3 / 95.9 (near saturation, so the choice is weakly determined)
    lam: float = 0.25
    tau: float = 2.0  # the kernel's default (view_consistency_skd_loss)


def _batches(y: Tensor, variant: Variant, cfg: SSTConfig, gen: torch.Generator, steps: int) -> list[list[int]]:
    if variant in ("b", "d"):
        sampler = ClassBalancedBatchSampler(y, cfg.batch_size, num_batches=steps, generator=gen)
        return list(sampler)
    perm = torch.randperm(len(y), generator=gen)
    return [perm[i:i + cfg.batch_size].tolist() for i in range(0, steps * cfg.batch_size, cfg.batch_size)]


def train(x: Tensor, y: Tensor, variant: Variant, cfg: SSTConfig, seed: int) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(seed)  # same init for every variant of a seed
    model = SleepTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed + 1)
    steps = len(y) // cfg.batch_size  # equal step budget for random and balanced batches
    lam = cfg.lam if variant in ("c", "d") else 0.0
    losses: list[float] = []
    model.train()
    for _ in range(cfg.epochs):
        for idx in _batches(y, variant, cfg, gen, steps):
            xb, yb = x[idx], y[idx]
            out = sst_loss(model(augment(xb, gen)), model(augment(xb, gen)), yb, lam=lam, tau=cfg.tau)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
    return model, losses


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    model.eval()
    pred = torch.cat([model(x[i:i + 500]).argmax(-1) for i in range(0, len(y), 500)])
    f1s, recalls = [], []
    for c in range(len(STAGES)):
        tp = float(((pred == c) & (y == c)).sum())
        prec = tp / max(float((pred == c).sum()), 1.0)
        rec = tp / max(float((y == c).sum()), 1.0)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return {"macro_f1": 100 * statistics.fmean(f1s), "accuracy": 100 * float((pred == y).float().mean()),
            "n1_recall": 100 * recalls[1]}


def _data(cfg: SSTConfig, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    xa, ya = make_domain(cfg.n_train + cfg.n_val, DOMAIN_A, 1000 + seed, cfg.seconds)
    xb, yb = make_domain(cfg.n_test, DOMAIN_B, 2000 + seed, cfg.seconds)
    return xa[:cfg.n_train], ya[:cfg.n_train], xa[cfg.n_train:], ya[cfg.n_train:], xb, yb


def _smoothed_decrease(losses: Sequence[float]) -> bool:
    k = max(1, len(losses) // 5)
    return statistics.fmean(losses[-k:]) < statistics.fmean(losses[:k])


def run_seed(seed: int, smoke: bool, cfg: SSTConfig | None = None) -> SeedResult:
    cfg = cfg or SSTConfig()
    if smoke:
        cfg = replace(cfg, n_train=384, n_val=10, n_test=100, epochs=2)
    x, y, _, _, xt, yt = _data(cfg, seed)
    extra: dict[str, float] = {}
    losses_d: list[float] = []
    for variant in (("a", "d") if smoke else ("a", "b", "c", "d")):
        model, losses = train(x, y, variant, cfg, seed)
        for key, value in evaluate(model, xt, yt).items():
            extra[f"{variant}_{key}"] = value
        if variant == "d":
            losses_d = losses
    return SeedResult(baseline=extra["a_macro_f1"], method=extra["d_macro_f1"],
                      loss_decreased=_smoothed_decrease(losses_d), extra=extra)


def select_lambda(candidates: Sequence[float] = (0.5, 1.0, 2.0), seed: int = 100) -> dict[float, float]:
    """Validation macro-F1 (domain A, held out) of variant d per lam, on a seed outside the evaluation seeds."""
    cfg = SSTConfig()
    x, y, xv, yv, _, _ = _data(cfg, seed)
    return {lam: evaluate(train(x, y, "d", replace(cfg, lam=lam), seed)[0], xv, yv)["macro_f1"] for lam in candidates}


def extra_rule(results: Sequence[SeedResult]) -> tuple[bool, str]:
    """d >= c on mean macro-F1; std over seeds of b and of d below that of a (the robustness claim)."""
    if "c_macro_f1" not in results[0].extra:
        return True, "variants b and c not run (smoke)"

    def std(variant: str) -> float:
        return statistics.stdev(r.extra[f"{variant}_macro_f1"] for r in results) if len(results) > 1 else math.nan

    d_ge_c = seed_mean(results, "d_macro_f1") >= seed_mean(results, "c_macro_f1")
    sa, sb, sd = std("a"), std("b"), std("d")
    robust = sb < sa and sd < sa
    return d_ge_c and robust, f"macro-F1 d >= c: {d_ge_c}; std a {sa:.2f}, b {sb:.2f}, d {sd:.2f} (b, d < a: {robust})"


EXPERIMENT = Experiment(
    name="sst",
    title="Siamese sleep transformer: view-SKD + class-balanced batches (Kwak et al., 2022)",
    metric="macro-F1 on the shifted domain B (%)",
    higher_is_better=True,
    claim="SKD + selective (class-balanced) batches beat plain CE (d > a, d >= c) and lower the std over seeds",
    in_spirit_of=True,
    reconstructed=(
        "Siamese pairing: two augmented views, detached branch B teaches branch A by tau^2 KL (tau = 2)",
        "selective batch sampling as class-balanced batches (floor/ceil(B/C) per class, minorities repeat)",
        "network, EEG generator, domain shift and augmentations (SHHS -> Sleep-EDF stand-in)",
        "lam (chosen on an in-domain validation split)",
    ),
    seeds=5,
    paired_rule=False,
    run_seed=run_seed,
    extra_rule=extra_rule,
)
