"""Shared SKD property tests (items 1-6 of tests/skd_cases' docstring), parametrised over every kernel case in
tests/skd_cases/.

To add cases: create or extend a module in ``tests/skd_cases/`` with ``CASES: list[KernelCase]`` (see the
package docstring of tests/skd_cases for each field). This file needs no edits.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
import torch

import tests.skd_cases as skd_cases
from tests.skd_cases import Inputs, KernelCase


def _collect() -> list[KernelCase]:
    cases: list[KernelCase] = []
    for info in sorted(pkgutil.iter_modules(skd_cases.__path__), key=lambda m: m.name):
        cases.extend(importlib.import_module(f"tests.skd_cases.{info.name}").CASES)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), f"duplicate case names: {names}"
    return cases


CASES = _collect()
ids = [c.name for c in CASES]


def _inputs(case: KernelCase, seed: int = 0, batch: int | None = None, single_class: bool = False) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    return case.make_inputs(gen, case.batch if batch is None else batch, single_class)


def _leafify(case: KernelCase, inputs: Inputs) -> Inputs:
    """Fresh leaves with requires_grad for the student and teacher tensors (teachers prove the inner detach)."""
    out = dict(inputs)
    for key in (*case.student_keys, *case.teacher_keys):
        out[key] = inputs[key].detach().clone().requires_grad_(True)
    return out


def _loss(case: KernelCase, inputs: Inputs) -> torch.Tensor:
    return case.call(inputs)["loss"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_terms_nonnegative_and_zero_at_equality(case: KernelCase) -> None:
    out = case.call(_inputs(case))
    for key in case.term_keys:
        assert float(out[key]) >= -1e-6, f"{key} < 0"
    if case.equal_inputs is None:
        return
    inputs = case.equal_inputs(_inputs(case))
    out = case.call(inputs)
    expected = case.equal_expected(inputs) if case.equal_expected else torch.zeros(())
    for key in case.term_keys:
        torch.testing.assert_close(out[key].detach().float(), expected.detach().float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_no_gradient_reaches_teacher(case: KernelCase) -> None:
    inputs = _leafify(case, _inputs(case))
    _loss(case, inputs).backward()
    for key in case.teacher_keys:
        assert inputs[key].grad is None, f"gradient reached teacher input {key}"
    assert any(inputs[k].grad is not None for k in case.student_keys), "no gradient reached the student"


@pytest.mark.parametrize("case", [c for c in CASES if c.zero_weight is not None],
                         ids=[c.name for c in CASES if c.zero_weight is not None])
def test_zero_weight_is_plain_task_loss(case: KernelCase) -> None:
    assert case.zero_weight is not None
    inputs, expected = case.zero_weight(_inputs(case))
    torch.testing.assert_close(_loss(case, inputs).detach(), expected.detach(), atol=case.zero_weight_atol, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.perturb_masked is not None],
                         ids=[c.name for c in CASES if c.perturb_masked is not None])
def test_masked_positions_do_not_matter(case: KernelCase) -> None:
    assert case.perturb_masked is not None
    inputs = _inputs(case)
    perturbed = case.perturb_masked(dict(inputs), torch.Generator().manual_seed(123))
    torch.testing.assert_close(_loss(case, perturbed).detach(), _loss(case, inputs).detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["scaled_1e3", "batch_1", "single_class"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_finite_values_and_gradients(case: KernelCase, variant: str) -> None:
    if variant == "batch_1":
        inputs = _inputs(case, batch=1)
    elif variant == "single_class":
        inputs = _inputs(case, single_class=True)
    else:
        inputs = _inputs(case)
        for key in case.logit_keys if case.logit_keys is not None else (*case.student_keys, *case.teacher_keys):
            inputs[key] = inputs[key] * 1e3
    inputs = _leafify(case, inputs)
    loss = _loss(case, inputs)
    assert torch.isfinite(loss).all(), f"loss not finite: {loss}"
    loss.backward()
    for key in case.student_keys:
        grad = inputs[key].grad
        assert grad is None or torch.isfinite(grad).all(), f"non-finite gradient on {key}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_deterministic(case: KernelCase) -> None:
    assert torch.equal(_loss(case, _inputs(case, seed=7)).detach(), _loss(case, _inputs(case, seed=7)).detach())
    if case.sampler is not None:
        assert _same(case.sampler(3), case.sampler(3))
