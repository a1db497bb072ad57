"""Kernel cases of SST, ALS, Hahn & Choi and the main paper's integrated score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.skd_cases import Inputs, KernelCase
from training.skd.kernels.als import adaptive_ls_loss
from training.skd.kernels.hahn_choi import embedding_prior, embedding_skd_loss
from training.skd.kernels.integrated import integrated_score_skd_loss
from training.skd.kernels.sst import ClassBalancedBatchSampler, sst_loss, view_consistency_skd_loss

C, V, D = 5, 9, 4  # sleep stages, vocabulary, embedding size


def _targets(gen: torch.Generator, batch: int, single_class: bool, classes: int) -> torch.Tensor:
    target = (torch.zeros(batch, dtype=torch.long) if single_class
              else torch.randint(0, classes, (batch,), generator=gen))
    if batch > 1:
        target[0] = -100  # one ignored / padded row to perturb
    return target


# ---- SST -----------------------------------------------------------------------------------------------------------


def _views(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    mask = torch.ones(batch, dtype=torch.bool)
    mask[0] = batch == 1  # row 0 is padding unless it is the only row
    target = torch.zeros(batch, dtype=torch.long) if single_class else torch.randint(0, C, (batch,), generator=gen)
    return {"a": torch.randn(batch, C, generator=gen), "b": 2 * torch.randn(batch, C, generator=gen),
            "ema": torch.randn(batch, C, generator=gen), "mask": mask, "target": target, "lam": 0.5}


def _views_equal(x: Inputs) -> Inputs:
    return {**x, "b": x["a"].detach().clone(), "ema": x["a"].detach().clone()}


def _views_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    noise = 100 * torch.randn(x["a"].shape, generator=gen) * (~x["mask"])[:, None]
    return {**x, "a": x["a"] + noise, "b": x["b"] - noise, "ema": x["ema"] + noise}


def _balanced_batches(seed: int) -> list[list[int]]:
    labels = [0] * 9 + [1] * 2 + [2] * 5
    return list(ClassBalancedBatchSampler(labels, 5, generator=torch.Generator().manual_seed(seed)))


def _sst_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    return {**x, "lam": 0.0}, 0.5 * (F.cross_entropy(x["a"], x["target"]) + F.cross_entropy(x["b"], x["target"]))


# ---- ALS -----------------------------------------------------------------------------------------------------------


def _als_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"logits": 2 * torch.randn(batch, V, generator=gen), "prior": torch.randn(batch, V, generator=gen),
            "target": _targets(gen, batch, single_class, V), "alpha_max": 0.3}


def _als_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    pad = (x["target"] == -100)[:, None]
    noise = 100 * torch.randn(x["logits"].shape, generator=gen) * pad
    return {**x, "logits": x["logits"] + noise, "prior": x["prior"] - noise}


def _als_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    return {**x, "alpha_max": 0.0}, F.cross_entropy(x["logits"], x["target"])


# ---- Hahn & Choi ---------------------------------------------------------------------------------------------------


def _hc_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"logits": torch.randn(batch, V, generator=gen), "emb": torch.randn(V, D, generator=gen),
            "target": _targets(gen, batch, single_class, V), "alpha": 0.4}


def _hc_equal(x: Inputs) -> Inputs:
    """Student logits = log of the (full-support) prior, so KL(q || p) = 0."""
    safe = x["target"].clamp_min(0)
    return {**x, "logits": embedding_prior(safe, x["emb"], tau=1.0, topk=None).log()}


def _hc_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    pad = (x["target"] == -100)[:, None]
    return {**x, "logits": x["logits"] + 100 * torch.randn(x["logits"].shape, generator=gen) * pad}


def _hc_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    return {**x, "alpha": 0.0}, F.cross_entropy(x["logits"], x["target"])


def _hc_case(topk: int | None) -> KernelCase:
    return KernelCase(
        name=f"hahn_choi.embedding_skd_loss[topk={topk}]", make_inputs=_hc_inputs,
        call=lambda x: embedding_skd_loss(x["logits"], x["target"], x["emb"], x["alpha"], tau=1.0, topk=topk),
        student_keys=("logits",), teacher_keys=("emb",), term_keys=("kl",),
        equal_inputs=_hc_equal if topk is None else None,  # a top-K prior has zeros: no finite logits match it
        zero_weight=_hc_zero, zero_weight_atol=1e-6, perturb_masked=_hc_perturb)


# ---- main paper: integrated score ----------------------------------------------------------------------------------


def _scores(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"dense": 3 * torch.randn(batch, batch, generator=gen),
            "sparse": 5 * torch.rand(batch, batch, generator=gen)}


CASES: list[KernelCase] = [
    KernelCase(name="sst.view_consistency", make_inputs=_views,
               call=lambda x: view_consistency_skd_loss(x["a"], x["b"], tau=2.0, mask=x["mask"]),
               student_keys=("a",), teacher_keys=("b",), equal_inputs=_views_equal, perturb_masked=_views_perturb,
               sampler=_balanced_batches),
    KernelCase(name="sst.view_consistency[ema]", make_inputs=_views,
               call=lambda x: view_consistency_skd_loss(x["a"], x["b"], ema_teacher=x["ema"], mask=x["mask"]),
               student_keys=("a",), teacher_keys=("b", "ema"), equal_inputs=_views_equal,
               perturb_masked=_views_perturb),
    KernelCase(name="sst.view_consistency[symmetric]", make_inputs=_views,
               call=lambda x: view_consistency_skd_loss(x["a"], x["b"], symmetric=True, mask=x["mask"]),
               student_keys=("a", "b"), term_keys=("loss", "kl_a", "kl_b"), equal_inputs=_views_equal,
               perturb_masked=_views_perturb),
    KernelCase(name="sst.sst_loss", make_inputs=_views,
               call=lambda x: sst_loss(x["a"], x["b"], x["target"], lam=x["lam"]),
               student_keys=("a", "b"), term_keys=("skd",), equal_inputs=_views_equal, zero_weight=_sst_zero),
    KernelCase(name="als.adaptive_ls_loss", make_inputs=_als_inputs,
               call=lambda x: adaptive_ls_loss(x["logits"], x["target"], x["prior"], alpha_max=x["alpha_max"]),
               student_keys=("logits",), teacher_keys=("prior",), term_keys=("loss",), zero_weight=_als_zero,
               zero_weight_atol=1e-6, perturb_masked=_als_perturb),
    KernelCase(name="als.adaptive_ls_loss[constant,uniform]", make_inputs=_als_inputs,
               call=lambda x: adaptive_ls_loss(x["logits"], x["target"], None, alpha_max=x["alpha_max"],
                                               alpha_fn="constant"),
               student_keys=("logits",), term_keys=("loss",), zero_weight=_als_zero, zero_weight_atol=1e-6,
               perturb_masked=_als_perturb),
    _hc_case(None),
    _hc_case(3),
    KernelCase(name="integrated.integrated_score_skd_loss", make_inputs=_scores,
               call=lambda x: integrated_score_skd_loss(x["dense"], x["sparse"], 0.4, 0.6, tau=0.5, divergence="kl",
                                                        directions="both"),
               student_keys=("dense", "sparse"), term_keys=("loss", "dense", "sparse"),
               equal_inputs=lambda x: {**x, "sparse": x["dense"].detach().clone()}),
]
