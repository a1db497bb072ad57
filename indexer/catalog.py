"""A data directory of named collections, and the aliases that name them.

Layout:
  <data-dir>/<name>/               a collection: one index (indexer/store.py) or a sharded collection
                                   (indexer/sharding.py), each with its own versions and live log
  <data-dir>/aliases.json          {"aliases": {alias: collection}}, replaced in one rename under a lock
  <data-dir>/.snapshots/<name>/    a collection's snapshot archives (indexer/snapshots.py); kept when the collection
                                   is deleted, so it can be restored
A name and an alias are ``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``; no alias may be a collection's name. An alias swap is
one atomic file replacement, so a reader sees the old target or the new one, never a half state, and it survives a
restart. A collection is deleted by renaming it out of the way first (``.deleting-<name>-*``, removed after), so a
crash never leaves half a collection under its name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from core.atomic import CURRENT, write_text_atomic
from core.encoder import DuetEncoder, EncodedItems, SparseRows
from indexer.build import EncodedSide, IndexBuildConfig, publish_index
from indexer.sharding import COLLECTION_MANIFEST, is_sharded, read_layout
from indexer.store import SIDES, IndexManifest, IndexUnavailableError, read_manifest

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ALIASES: Final = "aliases.json"
SNAPSHOTS: Final = ".snapshots"
_LOCK: Final = ".catalog.lock"
_DELETING: Final = ".deleting-"


class CatalogError(ValueError):
    """A name, alias or catalog operation the data directory refuses."""


class CollectionExistsError(CatalogError):
    """A collection or alias already has this name."""


class CollectionNotFoundError(CatalogError):
    """No collection (or alias) has this name."""


class AliasInUseError(CatalogError):
    """A collection that aliases name cannot be deleted."""


def check_name(name: str, what: str = "collection name") -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise CatalogError(f"{what} {name!r} is not valid: 1-64 characters of letters, digits, '_' and '-', "
                           "starting with a letter or digit")
    return name


def is_collection(path: Path) -> bool:
    """Whether ``path`` holds a published collection (one index, or a sharded collection)."""
    return path.is_dir() and ((path / CURRENT).exists() or (path / COLLECTION_MANIFEST).is_file()
                              or (path / "manifest.json").is_file())


def checkpoint_hash(path: Path) -> str:
    """The content hash of the checkpoint a collection is bound to (read from its manifest, no model loaded)."""
    if is_sharded(path):
        return read_layout(path).manifest.checkpoint.content_hash
    return read_manifest(path).checkpoint.content_hash


class Catalog:
    """The collections and aliases of one data directory."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._read: tuple[tuple[int, int, int], dict[str, str]] | None = None  # aliases.json as last read
        if not self.data_dir.is_dir():
            raise IndexUnavailableError(f"data directory not found: {self.data_dir}")

    # ----- collections -----
    def path(self, name: str) -> Path:
        return self.data_dir / check_name(name)

    def names(self) -> list[str]:
        """Every published collection under the data directory, by name."""
        return sorted(entry.name for entry in self.data_dir.iterdir()
                      if re.fullmatch(NAME_PATTERN, entry.name) and is_collection(entry))

    def snapshots_dir(self, name: str) -> Path:
        return self.data_dir / SNAPSHOTS / check_name(name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held around every change of the catalog (creation, deletion, aliases), across processes."""
        with (self.data_dir / _LOCK).open("ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_empty(self, name: str, checkpoint_dir: Path, encoder: DuetEncoder,
                     *, build: Mapping[str, Any] | None = None) -> IndexManifest:
        """A new collection with no items, bound to ``encoder``'s checkpoint (copied in from ``checkpoint_dir``),
        to be filled through the write API. Built beside its final name and renamed into place."""
        check_name(name)
        with self.locked():
            self._refuse_taken(name)
            staging = Path(tempfile.mkdtemp(prefix=f".creating-{name}-", dir=self.data_dir))
            try:
                dim = int(encoder.encode_texts(["."]).dense.shape[1])
                empty = EncodedItems(np.zeros((0, dim), np.float32), SparseRows.concatenate([]))
                config = IndexBuildConfig(checkpoint=checkpoint_dir, output=staging / "index", dataset=None,
                                          **dict(build or {}))
                manifest = publish_index(config, encoder, {side: EncodedSide([], empty) for side in SIDES},
                                         {"name": name, "source": "empty", "root": "."})
                os.rename(staging / "index", self.data_dir / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def delete(self, name: str) -> None:
        """Remove a collection (not its snapshots); refused while an alias names it."""
        with self.locked():
            path = self.path(name)
            if not is_collection(path):
                raise CollectionNotFoundError(f"no collection named {name!r}")
            pointing = sorted(alias for alias, target in self.aliases().items() if target == name)
            if pointing:
                raise AliasInUseError(f"collection {name!r} is named by the aliases {pointing}: move or delete them "
                                      "first")
            doomed = Path(tempfile.mkdtemp(prefix=f"{_DELETING}{name}-", dir=self.data_dir))
            os.rename(path, doomed / name)
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_abandoned(self) -> None:
        """What a crash left: half-created and half-deleted collections (never a published one)."""
        for entry in self.data_dir.iterdir():
            if entry.name.startswith((_DELETING, ".creating-")):
                shutil.rmtree(entry, ignore_errors=True)

    def _refuse_taken(self, name: str) -> None:
        if (self.data_dir / name).exists():
            raise CollectionExistsError(f"a collection named {name!r} exists")
        if name in self.aliases():
            raise CollectionExistsError(f"{name!r} is an alias")

    # ----- aliases -----
    def aliases(self) -> dict[str, str]:
        """The aliases as the file holds them now; read again only when it was replaced (every request resolves
        through here: a stat, not a read)."""
        path = self.data_dir / ALIASES
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._read is None or self._read[0] != signature:
            try:
                found = json.loads(path.read_text())["aliases"]
            except (ValueError, KeyError, TypeError) as e:
                raise IndexUnavailableError(f"{path} is damaged: {e}") from e
            self._read = signature, {str(alias): str(target) for alias, target in found.items()}
        return dict(self._read[1])

    def set_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` (atomically: a reader sees the old target or the new); the old target."""
        check_name(alias, "alias")
        with self.locked():
            if not is_collection(self.path(collection)):
                raise CollectionNotFoundError(f"no collection named {collection!r}")
            if (self.data_dir / alias).exists():
                raise CollectionExistsError(f"{alias!r} is a collection's name; an alias needs a name of its own")
            aliases = self.aliases()
            previous = aliases.get(alias)
            aliases[alias] = collection
            self._write_aliases(aliases)
        return previous

    def delete_alias(self, alias: str) -> str:
        """Remove an alias; the collection it named."""
        with self.locked():
            aliases = self.aliases()
            if alias not in aliases:
                raise CollectionNotFoundError(f"no alias named {alias!r}")
            target = aliases.pop(alias)
            self._write_aliases(aliases)
        return target

    def _write_aliases(self, aliases: Mapping[str, str]) -> None:
        write_text_atomic(self.data_dir / ALIASES, json.dumps({"aliases": dict(sorted(aliases.items()))}, indent=2))

    def resolve(self, name: str) -> str:
        """The collection a name means: itself, or the one its alias names."""
        return self.aliases().get(name, name)
