"""``python -m benchmarks reliability``: every part of the harness in turn, each saved as soon as it is done
(``--resume`` runs only the missing ones), then ``report.json`` and ``README.md``.

A part that crashes is a result too: its goals are missed and its traceback is the finding, and the run goes on.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.sections import SectionStore

_logger = logging.getLogger("benchmarks")
# (part, module, entry point), in the order they run: the read-only parts first, the ones that kill processes last
PARTS: tuple[tuple[str, str, str], ...] = (
    ("access", "benchmarks.reliability.access", "run_access"),
    ("fuzz", "benchmarks.reliability.fuzz", "run_fuzz"),
    ("hostile", "benchmarks.reliability.hostile", "run_hostile"),
    ("load", "benchmarks.reliability.load", "run_load"),
    ("slow", "benchmarks.reliability.slow", "run_slow"),
    ("concurrency", "benchmarks.reliability.concurrency", "run_concurrency"),
    ("stop", "benchmarks.reliability.stop", "run_stop"),
    ("faults", "benchmarks.reliability.faults", "run_faults"),
)


def _entry(module: str, name: str) -> Callable[[ReliabilityConfig], PartResult]:
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def run_part(part: str, run: Callable[[ReliabilityConfig], PartResult], config: ReliabilityConfig) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = run(config)
    except Exception as e:  # the part's own failure is what it found: reported, and the other parts still run
        _logger.exception("reliability part %s crashed", part)
        result = PartResult(part=part, goals=[Goal(name="the part ran to its end", target="yes",
                                                   value=f"{type(e).__name__}: {e}", met=False)],
                            findings=[traceback.format_exc(limit=8)])
    result.seconds = result.seconds or time.monotonic() - started
    met = sum(g.met for g in result.goals)
    _logger.info("reliability part %s: %d/%d goals met in %.0f s", part, met, len(result.goals), result.seconds)
    return json.loads(result.model_dump_json())


def run_reliability(config: ReliabilityConfig, *, resume: bool = False,
                    only: tuple[str, ...] = ()) -> dict[str, Any]:
    from benchmarks.machine import machine
    from core.checkpoint import read_manifest

    started = time.monotonic()
    checkpoint = read_manifest(config.checkpoint)
    key = {"content_hash": checkpoint["content_hash"],
           "config": json.loads(config.model_dump_json(exclude={"out", "work"}))}
    sections = SectionStore(config.out, key)
    if resume:
        sections.resume()
    parts = {}
    for part, module, entry in PARTS:
        if only and part not in only:
            continue
        parts[part] = sections.section(part, lambda p=part, m=module, e=entry: run_part(p, _entry(m, e), config))
    report = {"config": json.loads(config.model_dump_json()), "budget": config.budget.model_dump(),
              "machine": machine(), "checkpoint": {"path": str(config.checkpoint),
                                                   "content_hash": checkpoint["content_hash"]},
              "parts": parts, "seconds": time.monotonic() - started, "sections": sections.log,
              "goals_met": sum(g["met"] for p in parts.values() for g in p["goals"]),
              "goals": sum(len(p["goals"]) for p in parts.values())}
    sections.finish()
    return report
