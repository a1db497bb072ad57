"""Resumable report sections: each finished section is saved at once (``<out>/report.partial.json``), so an
interrupted run resumed with ``--resume`` measures only what it had not finished.

Saved sections are reused only under the same key (the checkpoint and options that decide what a section
measures). ``log`` says when each section was measured and how long it took, so a resumed report shows what an
earlier invocation did.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic

_logger = logging.getLogger("benchmarks")
PARTIAL = "report.partial.json"


class SectionStore:
    def __init__(self, out: Path, key: dict[str, Any]) -> None:
        self.path, self.key = Path(out) / PARTIAL, key
        self.sections: dict[str, Any] = {}
        self.log: dict[str, dict[str, Any]] = {}

    def comparable(self, key: dict[str, Any]) -> dict[str, Any]:
        """What of a key must match for saved sections to be reused (all of it, unless a report says less)."""
        return key

    def reuse(self, path: Path, saved: dict[str, Any]) -> None:
        """Take the sections of ``saved`` (read from ``path``) when its key matches this run's."""
        if self.comparable(saved.get("key", {})) != self.comparable(self.key):
            _logger.warning("ignoring %s: another checkpoint or configuration", path)
            return
        self.sections = saved["sections"]
        self.log = {name: {**saved.get("log", {}).get(name, {"measured_at": None, "seconds": None}), "resumed": True}
                    for name in self.sections}
        _logger.info("resuming from %s: %s already measured", path, sorted(self.sections))

    def resume(self) -> None:
        if self.path.is_file():
            self.reuse(self.path, json.loads(self.path.read_text()))

    def section(self, name: str, measure: Callable[[], Any], *,
                reusable: Callable[[Any], bool] = lambda _saved: True) -> Any:
        """A saved section, or ``measure()`` saved now; ``reusable`` can refuse a saved one (another grid)."""
        if name in self.sections and not reusable(self.sections[name]):
            _logger.info("%s was measured with other settings: measuring it again", name)
            del self.sections[name]
        if name not in self.sections:
            _logger.info("measuring: %s", name)
            started, at = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
            self.sections[name] = measure()
            self.log[name] = {"measured_at": at, "seconds": time.perf_counter() - started, "resumed": False}
            write_text_atomic(self.path, json.dumps({"key": self.key, "sections": self.sections, "log": self.log}))
        return self.sections[name]

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
