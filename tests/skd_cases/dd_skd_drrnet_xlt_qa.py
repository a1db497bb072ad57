"""Kernel cases of SKD-DD, DRRNet-SKD and cross-lingual QA distillation."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tests.skd_cases import Inputs, KernelCase
from training.skd.kernels.dd_skd import dd_match_loss, logit_mse_match, standardized_logit_kd
from training.skd.kernels.drrnet import dual_teacher_skd_loss
from training.skd.kernels.xlt_qa import cross_lingual_pairs, qa_skd_objective, span_ce

K = 5  # classes
L, VALID = 12, 9  # QA sequence length; positions >= VALID are padding


def _row_mask(batch: int) -> torch.Tensor:
    mask = torch.ones(batch, dtype=torch.bool)
    mask[0] = batch == 1  # row 0 is padding unless it is the only row
    return mask


def _labels(gen: torch.Generator, batch: int, single_class: bool, classes: int) -> torch.Tensor:
    return torch.zeros(batch, dtype=torch.long) if single_class else torch.randint(0, classes, (batch,), generator=gen)


# ---- SKD-DD --------------------------------------------------------------------------------------------------------


def _dd_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"s": 3 * torch.randn(batch, K, generator=gen), "t": torch.randn(batch, K, generator=gen),
            "labels": _labels(gen, batch, single_class, K), "mask": _row_mask(batch)}


def _dd_equal(x: Inputs) -> Inputs:
    return {**x, "t": x["s"].detach().clone()}


def _dd_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    noise = 100 * torch.randn(x["s"].shape, generator=gen) * (~x["mask"])[:, None]
    return {**x, "s": x["s"] + noise, "t": x["t"] - noise}


# ---- DRRNet --------------------------------------------------------------------------------------------------------


def _drr_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"s": 2 * torch.randn(batch, K, generator=gen), "off": torch.randn(batch, K, generator=gen),
            "on": torch.softmax(torch.randn(batch, K, generator=gen), -1), "seen": _row_mask(batch),
            "target": _labels(gen, batch, single_class, K), "w_off": 0.4, "w_on": 0.6}


def _drr_call(x: Inputs) -> dict[str, torch.Tensor]:
    out = dual_teacher_skd_loss(x["s"], x["target"], offline_logits=x["off"], online_probs=x["on"],
                                online_mask=x["seen"], w_off=x["w_off"], w_on=x["w_on"], tau=4.0)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _drr_equal(x: Inputs) -> Inputs:
    s = x["s"].detach().clone()
    return {**x, "off": s, "on": torch.softmax(s, -1)}


def _drr_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    return {**x, "w_off": 0.0, "w_on": 0.0}, F.cross_entropy(x["s"], x["target"])


def _drr_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    on = x["on"].clone()
    on[~x["seen"]] = torch.rand(int((~x["seen"]).sum()), K, generator=gen)  # whatever unseen bank rows hold
    return {**x, "on": on}


# ---- cross-lingual QA ----------------------------------------------------------------------------------------------


def _qa_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    mask = torch.zeros(batch, L, dtype=torch.bool)
    mask[:, :VALID] = True
    start = torch.full((batch,), 3) if single_class else torch.randint(0, VALID, (batch,), generator=gen)
    end = torch.full((batch,), 4) if single_class else torch.randint(0, VALID, (batch,), generator=gen)
    # the teacher's top position sits on the gold start in half of the rows, so mAP@k is neither 0 nor 1
    ts = torch.randn(batch, L, generator=gen)
    ts[::2].scatter_(1, start[::2, None], 5.0)
    return {"s": torch.randn(batch, L, generator=gen), "e": torch.randn(batch, L, generator=gen), "ts": ts,
            "te": torch.randn(batch, L, generator=gen), "start": start, "end": end, "mask": mask, "w": 1.0}


def _qa_call(coefficient: str, direction: str = "fw") -> Callable[[Inputs], dict[str, torch.Tensor]]:
    def call(x: Inputs) -> dict[str, torch.Tensor]:
        out = qa_skd_objective(x["s"], x["e"], x["start"], x["end"], t_start=x["ts"], t_end=x["te"], tau=2.0,
                               coefficient=coefficient, kd_weight=x["w"], direction=direction, mask=x["mask"],  # type: ignore[arg-type]
                               k=4, window=2)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    return call


def _qa_equal(x: Inputs) -> Inputs:
    return {**x, "ts": x["s"].detach().clone(), "te": x["e"].detach().clone()}


def _qa_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    return {**x, "w": 0.0}, span_ce(x["s"], x["e"], x["start"], x["end"], x["mask"])


def _qa_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    pad = ~x["mask"]
    out = dict(x)
    for key in ("s", "e", "ts", "te"):
        out[key] = x[key] + 1e3 * torch.randn(x[key].shape, generator=gen) * pad
    return out


def _pairs(seed: int) -> list[tuple[str, str, str]]:
    langs = {f"q{i}": {"en", "es", "de", "ar", "vi", "hi", "zh"} for i in range(3)}
    return cross_lingual_pairs(langs, n_tgt_langs=3, rng=random.Random(seed))


CASES: list[KernelCase] = [
    KernelCase(name="dd_skd.standardized_logit_kd", make_inputs=_dd_inputs,
               call=lambda x: standardized_logit_kd(x["s"], x["t"], tau=2.0, mask=x["mask"]),
               student_keys=("s",), teacher_keys=("t",), equal_inputs=_dd_equal, perturb_masked=_dd_perturb),
    KernelCase(name="dd_skd.standardized_logit_kd[plain,sym]", make_inputs=_dd_inputs,
               call=lambda x: standardized_logit_kd(x["s"], x["t"], direction="sym", standardize=False,
                                                    mask=x["mask"]),
               student_keys=("s",), teacher_keys=("t",), equal_inputs=_dd_equal, perturb_masked=_dd_perturb),
    KernelCase(name="dd_skd.logit_mse_match", make_inputs=_dd_inputs,
               call=lambda x: logit_mse_match(x["s"], x["t"], mask=x["mask"]),
               student_keys=("s",), teacher_keys=("t",), equal_inputs=_dd_equal, perturb_masked=_dd_perturb),
    KernelCase(name="dd_skd.dd_match_loss[skd,class_mean]", make_inputs=_dd_inputs,
               call=lambda x: dd_match_loss(x["s"], x["t"], x["labels"], variant="skd", tau=2.0, level="class_mean"),
               student_keys=("s",), teacher_keys=("t",), equal_inputs=_dd_equal),
    KernelCase(name="drrnet.dual_teacher_skd_loss", make_inputs=_drr_inputs, call=_drr_call,
               student_keys=("s",), teacher_keys=("off", "on"), term_keys=("kd_off", "kd_on"),
               equal_inputs=_drr_equal, zero_weight=_drr_zero, perturb_masked=_drr_perturb, logit_keys=("s", "off")),
    KernelCase(name="xlt_qa.qa_skd_objective[map]", make_inputs=_qa_inputs, call=_qa_call("map"),
               student_keys=("s", "e"), teacher_keys=("ts", "te"), term_keys=("kl",), equal_inputs=_qa_equal,
               zero_weight=_qa_zero, perturb_masked=_qa_perturb, sampler=_pairs),
    KernelCase(name="xlt_qa.qa_skd_objective[none,sym]", make_inputs=_qa_inputs, call=_qa_call("none", "sym"),
               student_keys=("s", "e"), teacher_keys=("ts", "te"), term_keys=("kl",), equal_inputs=_qa_equal,
               zero_weight=_qa_zero, perturb_masked=_qa_perturb),
    KernelCase(name="xlt_qa.qa_skd_objective[mrr]", make_inputs=_qa_inputs, call=_qa_call("mrr"),
               student_keys=("s", "e"), teacher_keys=("ts", "te"), term_keys=("kl",), equal_inputs=_qa_equal,
               zero_weight=_qa_zero, perturb_masked=_qa_perturb),
]
