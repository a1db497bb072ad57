"""Kernel cases for the shared SKD property tests (tests/test_skd_properties.py, items 1-6 below).

Mechanism: one module per family of methods in this package, each defining ``CASES: list[KernelCase]``; the
property test imports every module here, so a new method adds a module and edits no shared file.

A case describes one kernel call on tiny tensors:
- ``make_inputs(gen, batch, single_class)`` -> dict of inputs (tensors or anything else). Build every tensor from
  ``gen``. ``single_class=True``: only one class/label is present in the batch (all targets equal); kernels
  without labels may ignore it. The test marks ``student_keys`` and ``teacher_keys`` tensors requires_grad itself.
- ``call(inputs)`` -> mapping with at least "loss" (the scalar to backpropagate).
- ``term_keys``: output keys holding pure divergence terms: they must be >= 0 (item 1).
- ``equal_inputs(inputs)`` -> inputs where the teacher equals the student; every ``term_keys`` value must then
  be 0 (atol 1e-6), or ``equal_expected(inputs)`` when given (a soft CE is H(p), not 0). None skips item 1's
  equality part.
- ``teacher_keys``: tensors that must have ``grad is None`` after backward (item 2).
- ``zero_weight(inputs)`` -> (inputs with weight / alpha_max 0, expected plain task loss); "loss" must equal it
  exactly (atol ``zero_weight_atol``, default 0) (item 3). None when the kernel has no task loss.
- ``perturb_masked(inputs, gen)`` -> inputs with only masked / padded positions changed; "loss" must stay the same
  (item 4). None when the kernel has no mask.
- ``logit_keys``: tensors scaled x1e3 for item 5 (default: student_keys + teacher_keys). Items 5 also runs with
  batch 1 and single_class=True; loss and student gradients must be finite.
- ``sampler(seed)`` -> any sampler/view output that must be identical for equal seeds (item 6); the loss of
  two identical-seed ``make_inputs`` must also be identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, Any]


@dataclass(frozen=True)
class KernelCase:
    name: str
    make_inputs: Callable[[torch.Generator, int, bool], Inputs]
    call: Callable[[Inputs], Mapping[str, torch.Tensor]]
    student_keys: tuple[str, ...]
    teacher_keys: tuple[str, ...] = ()
    term_keys: tuple[str, ...] = ("loss",)
    equal_inputs: Callable[[Inputs], Inputs] | None = None
    equal_expected: Callable[[Inputs], torch.Tensor] | None = None
    zero_weight: Callable[[Inputs], tuple[Inputs, torch.Tensor]] | None = None
    zero_weight_atol: float = 0.0
    perturb_masked: Callable[[Inputs, torch.Generator], Inputs] | None = None
    logit_keys: tuple[str, ...] | None = None
    sampler: Callable[[int], Any] | None = None
    batch: int = 4
