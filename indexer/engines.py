"""What the service reads and writes through, whatever holds the collection: one index (``SearchEngine`` inside a
``LiveCollection``) or a sharded collection (``ShardedEngine`` inside a ``ShardedCollection``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from core.cancel import Cancellation
from indexer.live import CompactionResult, WriteResult
from indexer.query import Query
from indexer.search import SearchParams, SearchResult
from indexer.store import IndexManifest


class ReadEngine(Protocol):
    """Searches and item lookups over one state of the collection."""

    @property
    def manifest(self) -> IndexManifest: ...

    @property
    def sides(self) -> tuple[str, ...]: ...

    def encode_text(self, text: str) -> Query: ...

    def encode_image(self, image: Image.Image) -> Query: ...

    def query_terms(self, query: Query, limit: int = 32) -> list[tuple[str, float]]: ...

    def search(self, query: Query, params: SearchParams) -> SearchResult: ...

    def item(self, item_id: str) -> tuple[str, dict[str, Any]]: ...

    def image_path(self, item: dict[str, Any], *, root: Path | None = None) -> Path | None: ...


class WritableCollection(Protocol):
    """A collection that changes while it serves: reads through ``reading()``, writes acknowledged when durable."""

    @property
    def engine(self) -> ReadEngine: ...

    def reading(self) -> AbstractContextManager[ReadEngine]: ...

    def image_path(self, side: str, item: dict[str, Any], *, root: Path | None = None) -> Path | None: ...

    def stats(self) -> dict[str, Any]: ...

    def needs_compaction(self) -> bool: ...

    def add_image(self, data: bytes, *, item_id: str | None = None, captions: Sequence[str] = (),
                  metadata: Mapping[str, Any] | None = None) -> WriteResult: ...

    def add_text(self, text: str, *, item_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> WriteResult: ...

    def delete(self, item_id: str) -> WriteResult: ...

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult: ...

    def close(self) -> None: ...
