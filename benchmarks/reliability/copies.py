"""Copies of an index for the parts that write to it (a service writes its log and lock into the index directory),
and the flag that keeps a copy's images served."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.atomic import current_version


def copy_index(source: Path, target: Path) -> Path:
    """The live version of ``source`` alone, laid out as it was (no older versions, no write-ahead log, no locks),
    at ``target`` (replaced), as an absolute path: the server that opens it runs elsewhere."""
    shutil.rmtree(target, ignore_errors=True)
    version = current_version(source)
    skip = shutil.ignore_patterns("live", ".*.lock", ".publish.lock")
    if version == source:  # a plain directory from before versions
        shutil.copytree(source, target, ignore=skip)
    else:
        shutil.copytree(version, target / "versions" / version.name, ignore=skip)
        (target / "current").symlink_to(f"versions/{version.name}")
    return target.resolve()


def collection_root_args(source: Path) -> tuple[str, ...]:
    """``--collection-root`` naming the source's image root: a copy elsewhere would resolve a root recorded relative
    to the index directory to a folder that is not there, and serve no indexed image."""
    from indexer.store import manifest_path, read_manifest

    root = read_manifest(source).collection.get("root")
    return ("--collection-root", str(manifest_path(source, root).resolve())) if root else ()
