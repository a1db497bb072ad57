"""SKD-DD mini-experiment (Li et al., ICASSP 2025): distil load_digits into a conditional generator, three matching
terms.

A generator G(z, y) is trained only through a matching term on a model M drawn from a pool (MLP-64, MLP-128, tiny
CNN); M is re-drawn every `redraw_every` generator steps, warmed up on `warmup_batches` real batches and trained on
one real batch between generator steps. The adversarial CGAN term (optional) is dropped: the variants
differ only in the matching term, which is what is compared.

Variants: A = DiM logit MSE (x0.01), B = KL without z-score (tau=1), C = SKD-DD (z-score + KL), and an anchor:
a random real subset with the same images per class. Evaluation: IPC=10 images per class train a fresh MLP and a fresh
tiny CNN for 300 steps; test accuracy on the 450 held-out digits. tau_C was chosen on a validation split of the
training digits (`select_on_validation`: 300 held-out training digits, 2 seeds), never on the test split; the other
settings were set before any run and not tuned. Variants share the pool trajectory, noise and evaluator init (paired).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from training.experiments.harness import Experiment, SeedResult, seed_mean
from training.skd.kernels.dd_skd import dd_match_loss

NUM_CLASSES = 10
SPLIT_SEED = 12345  # fixed train/test split of load_digits (1347 / 450), shared by all seeds


@dataclass(frozen=True)
class DigitsSplit:
    x_train: Tensor  # [1347, 1, 8, 8] in [0, 1]
    y_train: Tensor
    x_test: Tensor  # [450, 1, 8, 8]
    y_test: Tensor


def digits_split(n_test: int = 450) -> DigitsSplit:
    """load_digits (bundled, no download) scaled to [0, 1], split 1347 / 450 with a fixed permutation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return DigitsSplit(x[train], y[train], x[test], y[test])


Arch = Literal["mlp64", "mlp128", "cnn"]
ARCHS: tuple[Arch, ...] = ("mlp64", "mlp128", "cnn")
Variant = Literal["mse", "kl", "skd"]


def make_model(arch: Arch) -> nn.Module:
    """Pool / evaluator networks on [B, 64] pixels in [0, 1]."""
    if arch == "mlp64":
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
    if arch == "mlp128":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16, NUM_CLASSES))


class Generator(nn.Module):
    """MLP on [z (32) + onehot(y)] -> 64 pixels in [0, 1] (sigmoid; x16 gives the digits' 0..16 range)."""

    def __init__(self, z_dim: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = nn.Sequential(nn.Linear(z_dim + NUM_CLASSES, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.sigmoid(self.net(torch.cat([z, F.one_hot(y, NUM_CLASSES).float()], dim=-1)))


@dataclass(frozen=True)
class DDConfig:
    gen_steps: int = 1500
    batch_size: int = 100
    redraw_every: int = 100
    warmup_batches: int = 20
    model_lr: float = 1e-3
    gen_lr: float = 1e-3
    tau_kl: float = 1.0  # variant B: plain KL at tau = 1
    tau_skd: float = 4.0  # variant C [R]; validation MLP acc. (2 seeds): tau 1: 73.9, 2: 77.7, 4: 78.5
    mse_weight: float = 0.01
    ipc: int = 10
    eval_steps: int = 300
    eval_lr: float = 1e-2
    eval_batch: int = 50


def _real_batch(x: Tensor, y: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, len(y), (n,), generator=gen)
    return x[idx], y[idx]


def train_generators(x: Tensor, y: Tensor, variants: Sequence[Variant], cfg: DDConfig,
                     seed: int) -> dict[Variant, tuple[Generator, list[float]]]:
    """Matching-only training of one generator per variant, side by side.

    The pool model never sees synthetic data (its own CE optimiser on real batches), so its trajectory does not
    depend on the variant: all generators share the same pool draws, real batches and noise (paired, and 1/3 of
    the pool cost). Each generator starts from the same initialisation.
    """
    torch.manual_seed(seed)
    init = Generator()
    gens = {v: copy.deepcopy(init) for v in variants}
    opts = {v: torch.optim.Adam(g.parameters(), lr=cfg.gen_lr) for v, g in gens.items()}
    losses: dict[Variant, list[float]] = {v: [] for v in variants}
    rng = torch.Generator().manual_seed(seed)
    pool_model: nn.Module = make_model("mlp64")
    m_opt = torch.optim.Adam(pool_model.parameters(), lr=cfg.model_lr)

    def train_pool(steps: int) -> None:
        for _ in range(steps):
            xb, yb = _real_batch(x, y, cfg.batch_size, rng)
            loss = F.cross_entropy(pool_model(xb), yb)
            m_opt.zero_grad()
            loss.backward()
            m_opt.step()

    for step in range(cfg.gen_steps):
        if step % cfg.redraw_every == 0:
            arch = ARCHS[int(torch.randint(0, len(ARCHS), (1,), generator=rng))]
            pool_model = make_model(arch)
            m_opt = torch.optim.Adam(pool_model.parameters(), lr=cfg.model_lr)
            train_pool(cfg.warmup_batches)
        xb, yb = _real_batch(x, y, cfg.batch_size, rng)
        z = torch.randn(cfg.batch_size, init.z_dim, generator=rng)
        pool_model.requires_grad_(False)  # gradients reach G only; M is trained by its own CE optimiser
        with torch.no_grad():
            real_logits = pool_model(xb)
        for v in variants:
            syn_logits = pool_model(gens[v](z, yb))
            tau = cfg.tau_skd if v == "skd" else cfg.tau_kl
            loss = dd_match_loss(syn_logits, real_logits, yb, variant=v, tau=tau, mse_weight=cfg.mse_weight)["loss"]
            opts[v].zero_grad()
            loss.backward()
            opts[v].step()
            losses[v].append(loss.item())
        pool_model.requires_grad_(True)
        train_pool(1)
    # The running loss is confounded by the pool model getting better; so report, last, the matching loss of the
    # initial and the trained generator on the same final pool model and batch ([initial, trained]).
    xb, yb = _real_batch(x, y, 500, rng)
    z = torch.randn(500, init.z_dim, generator=rng)
    with torch.no_grad():
        real_logits = pool_model(xb)
        for v in variants:
            tau = cfg.tau_skd if v == "skd" else cfg.tau_kl
            losses[v] = [float(dd_match_loss(pool_model(g(z, yb)), real_logits, yb, variant=v, tau=tau,
                                             mse_weight=cfg.mse_weight)["loss"]) for g in (init, gens[v])]
    return {v: (gens[v], losses[v]) for v in variants}


def evaluate_set(xs: Tensor, ys: Tensor, x_eval: Tensor, y_eval: Tensor, arch: Arch, cfg: DDConfig,
                 seed: int) -> float:
    """Train a fresh `arch` on the distilled set (xs, ys) for eval_steps; accuracy (%) on (x_eval, y_eval)."""
    torch.manual_seed(seed)
    model = make_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.eval_lr)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(cfg.eval_steps):
        idx = torch.randint(0, len(ys), (min(cfg.eval_batch, len(ys)),), generator=rng)
        loss = F.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float((model(x_eval).argmax(-1) == y_eval).float().mean())


def anchor_set(x: Tensor, y: Tensor, ipc: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random real subset with `ipc` images per class."""
    idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:ipc]]
                     for c in range(NUM_CLASSES)])
    return x[idx], y[idx]


def run_all(seed: int, cfg: DDConfig, split: DigitsSplit | None = None,
            eval_on: Literal["test", "validation"] = "test") -> tuple[dict[str, float], bool]:
    """Accuracy (%) of every variant x evaluator on one seed; eval_on='validation' holds out 300 training digits."""
    split = split if split is not None else digits_split()
    x_tr, y_tr = split.x_train.flatten(1), split.y_train
    if eval_on == "validation":
        x_ev, y_ev, x_tr, y_tr = x_tr[:300], y_tr[:300], x_tr[300:], y_tr[300:]
    else:
        x_ev, y_ev = split.x_test.flatten(1), split.y_test
    out: dict[str, float] = {}
    decreased = True
    labels = torch.arange(NUM_CLASSES).repeat_interleave(cfg.ipc)
    sets: dict[str, tuple[Tensor, Tensor]] = {"anchor": anchor_set(x_tr, y_tr, cfg.ipc,
                                                                   torch.Generator().manual_seed(seed))}
    for variant, (g, losses) in train_generators(x_tr, y_tr, ("mse", "kl", "skd"), cfg, seed).items():
        with torch.no_grad():
            z = torch.randn(len(labels), g.z_dim, generator=torch.Generator().manual_seed(seed + 1))
            sets[variant] = (g(z, labels), labels)
        if variant == "skd":
            decreased = losses[1] < losses[0]
    for name, (xs, ys) in sets.items():
        for arch in ("mlp64", "cnn"):
            out[f"{name}_{'mlp' if arch == 'mlp64' else 'cnn'}"] = evaluate_set(xs, ys, x_ev, y_ev, arch, cfg, seed)
    return out, decreased


def select_on_validation(taus: tuple[float, ...] = (1.0, 2.0, 4.0), seeds: tuple[int, ...] = (100, 101),
                         cfg: DDConfig | None = None) -> dict[float, float]:
    """Mean validation MLP accuracy of variant C per tau (how tau_skd was chosen); not run by the harness."""
    base = cfg if cfg is not None else DDConfig()
    scores: dict[float, float] = {}
    for tau in taus:
        accs = [run_all(s, replace(base, tau_skd=tau), eval_on="validation")[0]["skd_mlp"] for s in seeds]
        scores[tau] = sum(accs) / len(accs)
    return scores


def run_seed(seed: int, smoke: bool) -> SeedResult:
    cfg = DDConfig()
    if smoke:
        cfg = replace(cfg, gen_steps=60, redraw_every=60, warmup_batches=5, eval_steps=20)
    res, decreased = run_all(seed, cfg)
    return SeedResult(baseline=res["mse_mlp"], method=res["skd_mlp"], loss_decreased=decreased, extra=res)


def extra_rule(results: Sequence[SeedResult]) -> tuple[bool, str]:
    """The claim's further clause, MLP evaluator: C >= B on seed means (C > A, mean and paired, is the harness's
main rule)."""
    held = seed_mean(results, "skd_mlp") >= seed_mean(results, "kl_mlp")
    return held, f"SKD-DD >= plain KL (MLP, seed mean): {'yes' if held else 'no'}"


EXPERIMENT = Experiment(
    name="dd_skd",
    title="Generative dataset distillation with SKD + logit standardisation (Li et al., ICASSP 2025)",
    metric="test accuracy (%) of an MLP trained on 10 generated images per class",
    higher_is_better=True,
    claim="z-scored SKD matching (C) beats DiM's logit MSE (A) and is at least as good as plain KL (B)",
    in_spirit_of=True,
    reconstructed=("teacher = pool model on real data, student = same model on synthetic data",
                   "KL direction fw, per-sample matching (not class means), tau (chosen on validation), lambda",
                   "adversarial CGAN term dropped: matching-only generator"),
    seeds=5,
    paired_rule=True,
    run_seed=run_seed,
    extra_rule=extra_rule,
)
