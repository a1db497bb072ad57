"""The collections one service serves, by name: each one's slot (the collection once loaded, or why it is not, and
its compaction thread), the aliases that name them, and the encoders they share.

``--index DIR`` serves one collection, named after the directory. ``--data-dir DIR`` serves every collection under
DIR (indexer/catalog.py): collections created, restored or deleted through the API join or leave while it serves,
and an alias is resolved once per request, so a request sees one collection whatever swaps meanwhile. Collections
bound to the same checkpoint share one encoder in memory.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.encoder import DuetEncoder
from indexer.catalog import Catalog, checkpoint_hash
from indexer.search import SearchEngine
from indexer.served import ServedCollection
from indexer.store import IndexUnavailableError
from service.compaction import Compactor
from service.errors import ApiError
from service.metrics import Metrics
from service.settings import ServiceSettings

_logger = logging.getLogger("service")
# opens the collection a settings object names (its index_dir), with the encoder to share if one is loaded already
CollectionLoader = Callable[[ServiceSettings, DuetEncoder | None], ServedCollection]


@dataclass
class CollectionSlot:
    """One collection: loaded, loading, or the error that stopped it loading; and its compaction thread."""

    name: str
    path: Path
    compactor: Compactor
    live: ServedCollection | None = None
    not_ready: str | None = "loading"

    @property
    def engine(self) -> SearchEngine | None:
        return None if self.live is None else self.live.engine


@dataclass
class Registry:
    settings: ServiceSettings
    metrics: Metrics
    slots: dict[str, CollectionSlot] = field(default_factory=dict)
    encoders: dict[str, DuetEncoder] = field(default_factory=dict)  # checkpoint content hash -> encoder
    loader: CollectionLoader | None = None  # set by the app's lifespan
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @functools.cached_property
    def catalog(self) -> Catalog | None:
        """The data directory's catalog (None when one index is served)."""
        return Catalog(self.settings.data_dir) if self.settings.data_dir is not None else None

    def require_catalog(self) -> Catalog:
        catalog = self.catalog
        if catalog is None:
            raise ApiError(409, "single_collection", "this service serves one index (--index); named collections, "
                           "aliases and snapshots need --data-dir")
        return catalog

    def discover(self) -> list[CollectionSlot]:
        """The slots of every collection on disk (new ones added, loading); those gone are dropped."""
        catalog = self.catalog
        if catalog is None:
            paths = {self.settings.index_dir.name: self.settings.index_dir}
        else:
            catalog.remove_abandoned()
            paths = {name: catalog.path(name) for name in catalog.names()}
        with self._lock:
            for name, path in paths.items():
                if name not in self.slots:
                    self.slots[name] = CollectionSlot(name, path, Compactor(self.metrics))
            return [self.slots[name] for name in paths]

    def load(self, slot: CollectionSlot) -> None:
        """Open a slot's collection (on the engine worker), sharing a loaded encoder of the same checkpoint."""
        loader = self.loader
        assert loader is not None, "the lifespan sets the loader before anything loads"
        try:
            live = loader(self.settings.model_copy(update={"index_dir": slot.path}), self._shared_encoder(slot.path))
            encoder = live.engine.encoder
            self.encoders.setdefault(encoder.checkpoint.content_hash, encoder)
            slot.live, slot.not_ready = live, None
            _logger.info("collection %s loaded: %s", slot.name, live.stats()["sides"])
        except Exception as e:  # a missing, mismatched or locked index must not stop the process: /readyz says why
            slot.not_ready = f"{type(e).__name__}: {e}"
            _logger.error("collection %s not loaded: %s", slot.name, slot.not_ready)

    def _shared_encoder(self, path: Path) -> DuetEncoder | None:
        """A loaded encoder of the checkpoint the collection at ``path`` is bound to (none when a checkpoint is
        named by the settings: every collection loads that one)."""
        if self.settings.checkpoint is not None:
            return None
        try:
            return self.encoders.get(checkpoint_hash(path))
        except (IndexUnavailableError, OSError):  # the loader says what is wrong with it
            return None

    # ----- compactions, all collections together (the drain waits for them) -----
    @property
    def compacting(self) -> bool:
        return any(slot.compactor.running for slot in list(self.slots.values()))

    def refuse_compactions(self) -> None:
        for slot in list(self.slots.values()):
            slot.compactor.refuse_new()

    def shutdown_compactions(self, finish_within_s: float) -> None:
        """Let running compactions finish within the time left, then roll back the rest (service/compaction.py)."""
        deadline = time.monotonic() + finish_within_s
        for slot in list(self.slots.values()):
            slot.compactor.shutdown(max(0.0, deadline - time.monotonic()))

    # ----- names -----
    def default_name(self) -> str | None:
        if self.settings.data_dir is None:
            return self.settings.index_dir.name
        if self.settings.default_collection is not None:
            return self.settings.default_collection
        names = list(self.slots)
        return names[0] if len(names) == 1 else None

    def aliases(self) -> dict[str, str]:
        catalog = self.catalog
        return catalog.aliases() if catalog is not None else {}

    def resolve(self, name: str | None) -> CollectionSlot:
        """The slot a request names (None: the default collection), its alias resolved once; 404 when none."""
        if name is None:
            name = self.default_name()
            if name is None:
                raise ApiError(404, "no_default_collection", "this service has no default collection: name one "
                               "(/v1/collections/{name}/...) or start it with --default-collection")
        target = self.aliases().get(name, name)
        slot = self.slots.get(target)
        if slot is None:
            raise ApiError(404, "collection_not_found", f"no collection or alias named {name!r}")
        return slot

    def load_new(self) -> list[CollectionSlot]:
        """Serve the collections that appeared on disk since (created through the API, or restored beside it)."""
        fresh = [slot for slot in self.discover() if slot.live is None and slot.not_ready == "loading"]
        for slot in fresh:
            self.load(slot)
        return fresh

    def remove(self, name: str) -> CollectionSlot | None:
        with self._lock:
            return self.slots.pop(name, None)
