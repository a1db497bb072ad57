"""Hahn & Choi mini-experiment (RANLP 2019): embedding-space SKD on the synthetic class-based language of als.py.

Synonyms (the 8 words of a class) share contexts, the structure the method exploits. 30k training tokens (1500
sentences of 20) leave rare synonyms under-trained; 50k test tokens. GRU LM with untied output embeddings (d = 64).
Variants: CE; uniform LS eps = 0.1; Gaussian noise (sigma = 0.1) on the output embeddings during training (the
paper's foil); embedding-SKD (K = 10, alpha ramped linearly 0 -> alpha_max over the first half of training).
The first setting tried, tau = 1 / dot / alpha_max = 0.5, lost to CE on validation; similarity, tau and alpha_max
were chosen on the validation split of seed 100 (cosine, tau = 0.1, alpha_max = 0.25; see HCConfig), never on the
test split. Every variant is evaluated at its best-validation-NLL epoch (500 held-out sentences). The true-model
perplexity is reported as the floor.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.experiments.als import (
    GRULM,
    LMConfig,
    LossFn,
    ce_variant,
    lm_metrics,
    make_language,
    sample_sentences,
    smoothed_decrease,
    train_lm,
    true_nll,
)
from training.experiments.harness import Experiment, SeedResult, required_wins
from training.skd.kernels.hahn_choi import Similarity, embedding_skd_loss
from training.skd.weights import linear_ramp


@dataclass(frozen=True)
class HCConfig:
    lm: LMConfig = LMConfig(n_train=1500, n_val=500, n_test=2500, epochs=12, batch_size=64)
    emb: int = 64  # d of the GRU hidden state = output embedding size
    # chosen on validation (select_on_validation, seed 100): the first tried, dot / tau=1 / alpha 0.5, scored val
    # PPL 14.29 vs CE 12.93; every dot setting lost to CE; cos with tau=0.1, alpha 0.25 scored 12.89 (best of the grid)
    tau: float = 0.1
    topk: int = 10
    sim: Similarity = "cos"
    alpha_max: float = 0.25
    ramp_fraction: float = 0.5
    noise_sigma: float = 0.1
    ls_eps: float = 0.1


def noise_variant(sigma: float) -> LossFn:
    """CE with N(0, sigma^2) noise added to the output embeddings (and bias untouched) at every training step."""
    def loss_fn(model: GRULM, inputs: Tensor, targets: Tensor, _teacher: nn.Module | None, _step: int,
                _total: int) -> dict[str, Tensor]:
        weight = model.out.weight
        noisy = weight + sigma * torch.randn_like(weight)
        logits = F.linear(model.hidden(inputs), noisy, model.out.bias).reshape(-1, weight.shape[0])
        return {"loss": F.cross_entropy(logits, targets.reshape(-1))}
    return loss_fn


def skd_variant(cfg: HCConfig) -> LossFn:
    def loss_fn(model: GRULM, inputs: Tensor, targets: Tensor, _teacher: nn.Module | None, step: int,
                total: int) -> dict[str, Tensor]:
        logits = model(inputs).reshape(-1, model.out.out_features)
        alpha = linear_ramp(step, int(cfg.ramp_fraction * total), 0.0, cfg.alpha_max)
        return embedding_skd_loss(logits, targets.reshape(-1), model.out.weight, alpha, tau=cfg.tau, topk=cfg.topk,
                                  sim=cfg.sim)
    return loss_fn


def run_seed(seed: int, smoke: bool, cfg: HCConfig | None = None) -> SeedResult:
    cfg = cfg or HCConfig()
    if smoke:
        cfg = replace(cfg, lm=replace(cfg.lm, n_train=192, n_val=32, n_test=32, epochs=2))
    lm = cfg.lm
    lang = make_language(700 + seed)
    data = sample_sentences(lang, lm.n_train + lm.n_val + lm.n_test, lm.length, 800 + seed)
    train, val, test = data[:lm.n_train], data[lm.n_train:lm.n_train + lm.n_val], data[lm.n_train + lm.n_val:]
    variants: dict[str, LossFn] = {"ce": ce_variant(), "skd": skd_variant(cfg)}
    if not smoke:
        variants |= {"ls": ce_variant(cfg.ls_eps), "noise": noise_variant(cfg.noise_sigma)}
    extra: dict[str, float] = {"true_ppl": math.exp(true_nll(lang, test))}
    decreased = True
    for name, loss_fn in variants.items():
        model, losses = train_lm(train, val, loss_fn, lm, seed, lang.vocab, hidden=cfg.emb)
        extra |= {f"{name}_{k}": v for k, v in lm_metrics(model, test).items()}
        if name == "skd":
            decreased = smoothed_decrease(losses)
    return SeedResult(baseline=extra["ce_ppl"], method=extra["skd_ppl"], loss_decreased=decreased, extra=extra)


def extra_rule(results: Sequence[SeedResult]) -> tuple[bool, str]:
    """PPL(SKD) < PPL(noise) on the seed mean and in >= ceil(n/2)+1 paired seeds."""
    if "noise_ppl" not in results[0].extra:
        return True, "noise variant not run (smoke)"
    skd = [r.extra["skd_ppl"] for r in results]
    noise = [r.extra["noise_ppl"] for r in results]
    wins = sum(s < n for s, n in zip(skd, noise, strict=True))
    need = required_wins(len(results))
    held = statistics.fmean(skd) < statistics.fmean(noise) and wins >= need
    return held, (f"PPL SKD {statistics.fmean(skd):.3f} vs noise {statistics.fmean(noise):.3f}, "
                  f"paired wins {wins}/{len(results)} (need {need})")


EXPERIMENT = Experiment(
    name="hahn_choi",
    title="Self-knowledge distillation from the word-embedding space (Hahn & Choi, RANLP 2019)",
    metric="test perplexity",
    higher_is_better=False,
    claim="embedding-space SKD lowers perplexity vs CE and vs noise on the output embeddings",
    in_spirit_of=True,
    reconstructed=(
        "soft target q(j|y) = softmax(sim(w_y, w_j) / tau) over the top-K most similar output embeddings plus y "
        "(cosine, tau = 0.1 chosen on validation)",
        "loss (1 - alpha) CE + alpha KL(q || p), alpha ramped 0 -> 0.25 over the first half of training",
        "the HMM language-model task with synonym classes standing in for PTB / NMT",
    ),
    seeds=3,
    paired_rule=True,
    run_seed=run_seed,
    extra_rule=extra_rule,
)


def select_on_validation(alphas: Sequence[float] = (0.1, 0.25, 0.5), taus: Sequence[float] = (0.5, 1.0),
                         sim: Similarity = "dot", seed: int = 100) -> dict[tuple[float, float], float]:
    """Validation PPL of embedding-SKD per (alpha_max, tau) on a seed outside the evaluation seeds (CE as (0, 0)).

    Grid run: dot x alpha {0.1, 0.25, 0.5} x tau {0.5, 1}: 12.95-14.29, all above CE's 12.93; cos x (alpha, tau) in
    {(0.1, 0.1), (0.25, 0.1), (0.1, 0.2), (0.5, 0.1), (0.25, 0.05)}: 12.905, 12.894, 12.905, 12.981, 12.919.
    """
    cfg, lm = HCConfig(), HCConfig().lm
    lang = make_language(700 + seed)
    data = sample_sentences(lang, lm.n_train + lm.n_val, lm.length, 800 + seed)
    train, val = data[:lm.n_train], data[lm.n_train:]
    out = {(0.0, 0.0): lm_metrics(train_lm(train, val, ce_variant(), lm, seed, lang.vocab, hidden=cfg.emb)[0],
                                  val)["ppl"]}
    for alpha in alphas:
        for tau in taus:
            run = replace(cfg, alpha_max=alpha, tau=tau, sim=sim)
            model = train_lm(train, val, skd_variant(run), lm, seed, lang.vocab, hidden=cfg.emb)[0]
            out[(alpha, tau)] = lm_metrics(model, val)["ppl"]
    return out
