"""ALS mini-experiment (Lee, Cheung, Zhang, EMNLP 2022) and the synthetic class-based language it shares with the
Hahn & Choi experiment.

Language: a 12-class HMM with a sparse Markov transition matrix; each class emits its own 8 words (96 in all) with
Zipf weights. A word determines its class, so the true next-token distribution is
p(w' | w) = sum_c' T[c(w), c'] E[c', w'], which gives the true-model NLL floor.
Model: 1-layer GRU LM (emb 64, hidden 128, untied output layer). Every variant is evaluated at its epoch with the best
validation NLL (the same early-stopping rule for all, so the baseline is not handicapped by over-fitting).
Variants: CE; LS eps=0.1; ALS (alpha_max=0.3, entropy alpha, best-val snapshot prior); ALS with a uniform prior;
constant-alpha snapshot KD (alpha = alpha_max / 2, about the mean entropy alpha).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.experiments.harness import Experiment, SeedResult, seed_mean
from training.skd.kernels.als import AlphaFn, adaptive_ls_loss
from training.skd.teachers import SnapshotTeacher

# ---- the synthetic language (shared with training/experiments/hahn_choi.py) -----------------------------------


@dataclass(frozen=True)
class Language:
    transition: np.ndarray  # [C, C] class Markov matrix (sparse rows)
    emission: np.ndarray  # [C, V] word given class (each class owns its block of words)
    word_class: np.ndarray  # [V]
    start: np.ndarray  # [C]

    @property
    def vocab(self) -> int:
        return self.emission.shape[1]

    def next_word_probs(self) -> np.ndarray:
        """[V, V]: the true p(next word | current word)."""
        return self.transition[self.word_class] @ self.emission


def make_language(seed: int, classes: int = 12, words_per_class: int = 8, fan_out: int = 3) -> Language:
    rng = np.random.default_rng(seed)
    transition = np.zeros((classes, classes))
    for c in range(classes):
        targets = rng.choice(classes, size=fan_out, replace=False)
        transition[c, targets] = rng.dirichlet(np.ones(fan_out))
    vocab = classes * words_per_class
    emission = np.zeros((classes, vocab))
    zipf = 1.0 / np.arange(1, words_per_class + 1)
    for c in range(classes):
        emission[c, c * words_per_class:(c + 1) * words_per_class] = rng.permutation(zipf / zipf.sum())
    word_class = np.repeat(np.arange(classes), words_per_class)
    return Language(transition, emission, word_class, np.full(classes, 1.0 / classes))


def _draw(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` [N, K] (inverse CDF, vectorised)."""
    cdf = probs.cumsum(axis=1)
    u = rng.random((len(probs), 1)) * cdf[:, -1:]
    return np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1)


def sample_sentences(lang: Language, n: int, length: int, seed: int) -> Tensor:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, length), dtype=np.int64)
    c = _draw(rng, np.tile(lang.start, (n, 1)))
    for t in range(length):
        out[:, t] = _draw(rng, lang.emission[c])
        c = _draw(rng, lang.transition[c])
    return torch.from_numpy(out)


def true_nll(lang: Language, sentences: Tensor) -> float:
    """Mean NLL of the true model on next-token prediction (positions 1..T-1)."""
    probs = torch.from_numpy(lang.next_word_probs())
    return float(-probs[sentences[:, :-1], sentences[:, 1:]].log().mean())


class GRULM(nn.Module):
    def __init__(self, vocab: int, emb: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)  # untied output embeddings W = out.weight [V, hidden]

    def hidden(self, tokens: Tensor) -> Tensor:
        return self.gru(self.embed(tokens))[0]

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.hidden(tokens))


# A variant's loss: (model, inputs [B, T], targets [B, T], teacher | None, step, total_steps) -> dict with "loss".
LossFn = Callable[[GRULM, Tensor, Tensor, "nn.Module | None", int, int], dict[str, Tensor]]


@dataclass(frozen=True)
class LMConfig:
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 2000
    length: int = 20
    epochs: int = 12  # not 20: cut to fit the CPU budget (validation NLL flattens by then)
    batch_size: int = 64
    lr: float = 3e-3


@torch.no_grad()
def lm_metrics(model: GRULM, sentences: Tensor, bins: int = 15) -> dict[str, float]:
    """Next-token NLL, perplexity, top-1 accuracy (%) and ECE (%, 15 bins, top-1 confidence vs correctness)."""
    model.eval()
    logits = model(sentences[:, :-1]).reshape(-1, model.out.out_features)
    target = sentences[:, 1:].reshape(-1)
    log_p = F.log_softmax(logits, -1)
    nll = float(F.nll_loss(log_p, target))
    conf, pred = log_p.exp().max(-1)
    correct = (pred == target).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    model.train()
    return {"nll": nll, "ppl": math.exp(nll), "accuracy": 100 * float(correct.mean()), "ece": 100 * ece}


def train_lm(train: Tensor, val: Tensor, loss_fn: LossFn, cfg: LMConfig, seed: int, vocab: int,
             snapshot_teacher: bool = False, hidden: int = 128) -> tuple[GRULM, list[float]]:
    """Train; return the best-validation-NLL model. With ``snapshot_teacher`` the loss gets the best-so-far
    snapshot (None before the first epoch ends): at each epoch end it is replaced when validation NLL improves."""
    torch.manual_seed(seed)  # identical init and batch order for every variant of a seed
    model = GRULM(vocab, hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    best, best_nll = copy.deepcopy(model), math.inf
    snapshot = SnapshotTeacher(model, keep="best", higher_is_better=False) if snapshot_teacher else None
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        # the prior is uniform (teacher None) until the first snapshot has been taken
        teacher = snapshot.module if snapshot is not None and snapshot.best is not None else None
        perm = torch.randperm(len(train), generator=gen)
        for k in range(steps_per_epoch):
            batch = train[perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
            out = loss_fn(model, batch[:, :-1], batch[:, 1:], teacher, epoch * steps_per_epoch + k, total)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
        nll = lm_metrics(model, val)["nll"]
        if nll < best_nll:
            best_nll, best = nll, copy.deepcopy(model)
        if snapshot is not None:
            snapshot.on_epoch_end(model, nll)  # teacher <- student when validation NLL improves
    return best, losses


# ---- ALS variants ------------------------------------------------------------------------------------------------


def als_variant(alpha_max: float, alpha_fn: AlphaFn, use_prior: bool, tau: float = 1.0) -> LossFn:
    def loss_fn(model: GRULM, inputs: Tensor, targets: Tensor, teacher: nn.Module | None, _step: int,
                _total: int) -> dict[str, Tensor]:
        logits = model(inputs).reshape(-1, model.out.out_features)
        prior = None
        if use_prior and teacher is not None:
            with torch.no_grad():
                prior = teacher(inputs).reshape(-1, model.out.out_features)
        return adaptive_ls_loss(logits, targets.reshape(-1), prior, alpha_max=alpha_max, tau=tau, alpha_fn=alpha_fn)
    return loss_fn


def ce_variant(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(model: GRULM, inputs: Tensor, targets: Tensor, _teacher: nn.Module | None, _step: int,
                _total: int) -> dict[str, Tensor]:
        logits = model(inputs).reshape(-1, model.out.out_features)
        return {"loss": F.cross_entropy(logits, targets.reshape(-1), label_smoothing=label_smoothing)}
    return loss_fn


@dataclass(frozen=True)
class ALSConfig:
    lm: LMConfig = LMConfig()
    alpha_max: float = 0.3
    tau: float = 1.0
    ls_eps: float = 0.1


def _lm_data(cfg: LMConfig, seed: int) -> tuple[Language, Tensor, Tensor, Tensor]:
    lang = make_language(500 + seed)
    data = sample_sentences(lang, cfg.n_train + cfg.n_val + cfg.n_test, cfg.length, 600 + seed)
    return lang, data[:cfg.n_train], data[cfg.n_train:cfg.n_train + cfg.n_val], data[cfg.n_train + cfg.n_val:]


def smoothed_decrease(losses: Sequence[float]) -> bool:
    k = max(1, len(losses) // 5)
    return statistics.fmean(losses[-k:]) < statistics.fmean(losses[:k])


def run_seed(seed: int, smoke: bool, cfg: ALSConfig | None = None) -> SeedResult:
    cfg = cfg or ALSConfig()
    if smoke:
        cfg = replace(cfg, lm=replace(cfg.lm, n_train=192, n_val=32, n_test=32, epochs=2))
    lang, train, val, test = _lm_data(cfg.lm, seed)
    variants: dict[str, tuple[LossFn, bool]] = {
        "ce": (ce_variant(), False),
        "als": (als_variant(cfg.alpha_max, "entropy", True, cfg.tau), True),
    }
    if not smoke:
        variants |= {
            "ls": (ce_variant(cfg.ls_eps), False),
            "als_uniform": (als_variant(cfg.alpha_max, "entropy", False), False),
            "const_kd": (als_variant(cfg.alpha_max / 2, "constant", True, cfg.tau), True),
        }
    extra: dict[str, float] = {"true_nll": true_nll(lang, test)}
    decreased = True
    for name, (loss_fn, snapshot) in variants.items():
        model, losses = train_lm(train, val, loss_fn, cfg.lm, seed, lang.vocab, snapshot_teacher=snapshot)
        extra |= {f"{name}_{k}": v for k, v in lm_metrics(model, test).items()}
        if name == "als":
            decreased = smoothed_decrease(losses)
    return SeedResult(baseline=extra["ce_nll"], method=extra["als_nll"], loss_decreased=decreased, extra=extra)


def extra_rule(results: Sequence[SeedResult]) -> tuple[bool, str]:
    """ECE(ALS) < ECE(CE) and <= ECE(LS); accuracy(ALS) >= accuracy(CE) - 0.5 pt (seed means)."""
    ece_als, ece_ce = seed_mean(results, "als_ece"), seed_mean(results, "ce_ece")
    ece_ls = seed_mean(results, "ls_ece") if "ls_ece" in results[0].extra else math.inf
    acc_als, acc_ce = seed_mean(results, "als_accuracy"), seed_mean(results, "ce_accuracy")
    calib = ece_als < ece_ce and ece_als <= ece_ls
    acc = acc_als >= acc_ce - 0.5
    return calib and acc, (f"ECE ALS {ece_als:.2f} vs CE {ece_ce:.2f} / LS {ece_ls:.2f} (held: {calib}); "
                           f"accuracy ALS {acc_als:.2f} vs CE {acc_ce:.2f} (>= CE - 0.5: {acc})")


EXPERIMENT = Experiment(
    name="als",
    title="Adaptive label smoothing with self-knowledge (Lee et al., EMNLP 2022)",
    metric="test next-token NLL (nats)",
    higher_is_better=False,
    claim="ALS lowers NLL and ECE vs CE (ECE also <= LS) without costing > 0.5 pt accuracy",
    in_spirit_of=True,
    reconstructed=(
        "alpha = alpha_max * (1 - H(p)/log V) (direction and formula)",
        "uniform prior before the first best-validation snapshot",
        "the HMM language-model task standing in for machine translation",
    ),
    seeds=3,
    paired_rule=False,
    run_seed=run_seed,
    extra_rule=extra_rule,
)
