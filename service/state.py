"""What one app holds: its settings, its metrics, the engine's worker thread, the threads that keep decoding and
serialisation off the event loop, admission, and the collections served (service/registry.py).

All engine work (encoding, FAISS, Lucene through pyjnius, torch) and every write runs on one dedicated worker thread:
the JVM is attached to that thread once, torch gets both cores for each request, writes and reads of the live
collection never interleave, and the event loop stays free. Compaction alone runs on its own thread
(service/compaction.py), so that searches go on while it rebuilds the indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from starlette.applications import Starlette

from service.admission import Admission
from service.drain import Drain
from service.lanes import EngineWorker, OffLoop
from service.metrics import Metrics
from service.registry import Registry
from service.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceState:
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    worker: EngineWorker = field(default_factory=EngineWorker)
    off_loop: OffLoop = field(default_factory=OffLoop)
    registry: Registry = field(init=False)
    admission: Admission = field(init=False)
    drain: Drain = field(init=False)

    def __post_init__(self) -> None:  # frozen: set once, here
        object.__setattr__(self, "drain", Drain(self.settings.drain_timeout_s))
        object.__setattr__(self, "registry", Registry(self.settings, self.metrics))
        object.__setattr__(self, "admission", Admission(self.settings.max_pending,
                                                        self.settings.max_queue_wait_s,
                                                        self.settings.queue_timeout_s, self.metrics))


def state_of(app: Starlette) -> ServiceState:
    return cast(ServiceState, app.state.service)
