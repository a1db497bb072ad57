"""Kernel cases of the shared core (soft_kl, soft_ce, SKDObjective) MeDiVLAD and CTC."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.skd_cases import Inputs, KernelCase
from training.skd.core import SKDObjective, SKDTerm, soft_ce, soft_kl
from training.skd.kernels.ctc import ctc_frame_skd_loss, skd_ctc_objective
from training.skd.kernels.medivlad import dino_loss

C, T = 5, 6  # classes, positions per row


def _masked_logits(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    lengths = torch.randint(1, T + 1, (batch,), generator=gen)
    lengths[0] = T - 1 if T > 1 else 1  # at least one padded position to perturb
    return {"student": torch.randn(batch, T, C, generator=gen), "teacher": torch.randn(batch, T, C, generator=gen),
            "mask": torch.arange(T)[None, :] < lengths[:, None]}


def _equal(inputs: Inputs) -> Inputs:
    return {**inputs, "teacher": inputs["student"].detach().clone()}


def _perturb(inputs: Inputs, gen: torch.Generator) -> Inputs:
    noise = 100 * torch.randn(inputs["student"].shape, generator=gen)
    pad = ~inputs["mask"][..., None]
    return {**inputs, "student": inputs["student"] + noise * pad, "teacher": inputs["teacher"] - noise * pad}


def _kl_case(direction: str, tau: float) -> KernelCase:
    return KernelCase(
        name=f"core.soft_kl[{direction},tau={tau}]", make_inputs=_masked_logits,
        call=lambda x: {"loss": soft_kl(x["student"], x["teacher"], tau=tau, direction=direction,  # type: ignore[arg-type]
                                        mask=x["mask"])},
        student_keys=("student",), teacher_keys=("teacher",), equal_inputs=_equal, perturb_masked=_perturb)


def _ce_entropy(x: Inputs) -> torch.Tensor:
    p = torch.softmax(x["teacher"].detach() / 2.0, dim=-1)
    ent = -(p * p.log()).sum(-1)
    return (ent * x["mask"]).sum() / x["mask"].sum()


def _classify(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    target = (torch.zeros(batch, dtype=torch.long) if single_class
              else torch.randint(0, C, (batch,), generator=gen))
    return {"student": torch.randn(batch, C, generator=gen), "teacher": torch.randn(batch, C, generator=gen),
            "target": target, "weight": 0.7}


def _objective(x: Inputs) -> dict[str, torch.Tensor]:
    objective = SKDObjective(F.cross_entropy, [SKDTerm("kd", lambda s, t: soft_kl(s, t, tau=2.0), x["weight"])])
    return objective((x["student"], x["target"]), {"kd": (x["student"], x["teacher"])})


CASES: list[KernelCase] = [
    _kl_case("fw", 1.0), _kl_case("rv", 2.0), _kl_case("sym", 0.5),
    KernelCase(name="core.soft_ce", make_inputs=_masked_logits,
               call=lambda x: {"loss": soft_ce(x["student"], x["teacher"], tau=2.0, mask=x["mask"])},
               student_keys=("student",), teacher_keys=("teacher",), equal_inputs=_equal,
               equal_expected=_ce_entropy, perturb_masked=_perturb),
    KernelCase(name="core.SKDObjective", make_inputs=_classify, call=_objective, student_keys=("student",),
               teacher_keys=("teacher",), term_keys=("kd",), equal_inputs=_equal,
               zero_weight=lambda x: ({**x, "weight": 0.0}, F.cross_entropy(x["student"], x["target"]))),
]


# ---- MeDiVLAD: DINO loss (soft CE, so no zero-at-equality; the center is a teacher-side input) ----
def _dino_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    return {"student": torch.randn(4 * batch, C, generator=gen), "teacher": torch.randn(2 * batch, C, generator=gen),
            "center": torch.randn(1, C, generator=gen)}


def _dino(x: Inputs) -> dict[str, torch.Tensor]:
    return dino_loss(x["student"], x["teacher"], x["center"], n_s=4, n_t=2, tau_s=0.1, tau_t=0.04)


# ---- CTC SKD: CTC frame KL and the SKD-CTC objective (alpha = 0 is the teacher's CTC) ----
def _ctc_inputs(gen: torch.Generator, batch: int, single_class: bool) -> Inputs:
    frames, vocab = 8, 5
    lengths = torch.randint(5, frames + 1, (batch,), generator=gen)
    lengths[0] = frames - 2
    tgt_lens = torch.randint(1, 3, (batch,), generator=gen)
    targets = (torch.ones(batch, 2, dtype=torch.long) if single_class
               else torch.randint(1, vocab, (batch, 2), generator=gen))
    return {"student": torch.randn(batch, frames, vocab, generator=gen),
            "teacher": torch.randn(batch, frames, vocab, generator=gen), "lengths": lengths, "targets": targets,
            "tgt_lens": tgt_lens, "alpha": 0.6}


def _ctc_perturb(x: Inputs, gen: torch.Generator) -> Inputs:
    pad = (torch.arange(x["student"].shape[1])[None, :] >= x["lengths"][:, None])[..., None]
    noise = 50 * torch.randn(x["student"].shape, generator=gen)
    return {**x, "student": x["student"] + noise * pad, "teacher": x["teacher"] - noise * pad}


def _ctc_objective(x: Inputs) -> dict[str, torch.Tensor]:
    return skd_ctc_objective(x["student"], x["teacher"], x["targets"], x["lengths"], x["tgt_lens"], x["alpha"])


def _ctc_zero(x: Inputs) -> tuple[Inputs, torch.Tensor]:
    log_probs = F.log_softmax(x["teacher"], -1).transpose(0, 1)
    return {**x, "alpha": 0.0}, F.ctc_loss(log_probs, x["targets"], x["lengths"], x["tgt_lens"], zero_infinity=True)


CASES += [
    KernelCase(name="medivlad.dino_loss", make_inputs=_dino_inputs, call=_dino, student_keys=("student",),
               teacher_keys=("teacher", "center"), term_keys=("loss", "kl")),
    KernelCase(name="ctc.ctc_frame_skd_loss", make_inputs=_ctc_inputs,
               call=lambda x: {"loss": ctc_frame_skd_loss(x["student"], x["teacher"], x["lengths"])},
               student_keys=("student",), teacher_keys=("teacher",), equal_inputs=_equal, perturb_masked=_ctc_perturb),
    # the teacher head is trained by its own CTC inside the objective, so it is not a no-grad input here
    KernelCase(name="ctc.skd_ctc_objective", make_inputs=_ctc_inputs, call=_ctc_objective,
               student_keys=("student", "teacher"), term_keys=("skd",), equal_inputs=_equal, zero_weight=_ctc_zero,
               perturb_masked=_ctc_perturb),
]
