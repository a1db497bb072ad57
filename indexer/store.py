"""On-disk index layout, its manifest, and the readers that refuse anything inconsistent.

An index directory holds its versions and a link to the live one (core/atomic.py ``versioned_directory``):
  <index>/current -> versions/<id>   replaced in one rename when a build publishes
  <index>/versions/<id>/             the contents of one build, self-contained:
    manifest.json          IndexManifest: checkpoint binding, quantisation, counts, index types, file hashes
    checkpoint/            a copy of the checkpoint the index was built with (loaded by default)
    <side>/items.jsonl     one item per row: {"id", ...metadata}; row number = FAISS id = Lucene doc id
    <side>/dense.npy       (N, D) unit vectors, float32 or float16 (exact rescoring)
    <side>/dense.faiss     FAISS index over the same rows
    <side>/sparse.*.npy    forward store: CSR over token ids (indptr, indices, values), float32 weights
    <side>/lucene/         Lucene impact index (integer impacts = round(weight * scale))
    <side>/payload.npz     the payload indexes of the fields the manifest declares (indexer/payload.py)
    <side>/order.npy       a shard's only: each row's position in the whole collection (indexer/sharding.py)
Readers resolve ``current`` once (``index_contents``) and read everything from that version. A directory with the
contents at its top (built before versions, or a version copied out on its own) opens as it is.
No path in the manifest is absolute, so an index opens wherever it is moved or mounted: the checkpoint's is
relative to the version (it is inside it); the image root's is relative to the index directory (the one readers
open), so it stays right while the images move along with the index, and a setting names it otherwise.
Manifests of format duet-index/1 recorded absolute paths, which are used as they are.
Sides: ``images`` (targets of text->image and image->image) and ``texts`` (targets of image->text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.atomic import CURRENT, VERSIONS, current_version, reading_version
from core.checkpoint import sha256_file
from core.encoder import EncodedItems, SparseRows, TermPostings
from indexer.payload import PAYLOAD_FILE, PayloadIndex, PayloadSchema

FORMAT: Final = "duet-index/2"
MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
ORDER_FILE = "order.npy"
LIVE = "live"  # beside the versions: a live collection's write-ahead log and uploads (indexer/live.py)
UPLOADS = "uploads"
Side = Literal["images", "texts"]
SIDES: tuple[Side, ...] = get_args(Side)


def file_inside(root: Path, name: str) -> Path | None:
    """``root / name`` when it is a file inside ``root`` (no "..", absolute name or link leads out), else None."""
    resolved = root.resolve()
    path = (resolved / name).resolve()
    return path if path.is_relative_to(resolved) and path.is_file() else None


def image_file(item: dict[str, Any], *, index_dir: Path, root: Path) -> Path | None:
    """An image item's file: its upload, kept by the live collection at ``index_dir``, else its path under the
    image ``root``; never outside either."""
    if item.get("upload"):
        return file_inside(index_dir / LIVE / UPLOADS, str(item["upload"]))
    return file_inside(root, str(item.get("path", "")))


class IndexUnavailableError(RuntimeError):
    """The index is missing, damaged, or bound to another model."""


class IndexMismatchError(IndexUnavailableError):
    """The index was built from another checkpoint, base model or vocabulary than the one in use."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointBinding(_Strict):
    path: str  # the index's own copy, relative to the version (duet-index/1: the absolute source path)
    content_hash: str
    backbone_fingerprint: str
    vocabulary_digest: str
    method: str | None = None


class SideManifest(_Strict):
    count: int = Field(ge=0)
    dense_dim: int = Field(gt=0)
    faiss_factory: str
    lucene_docs: int = Field(ge=0)
    mean_terms: float
    bytes: dict[str, int]  # "dense_faiss", "dense_store", "sparse_lucene", "sparse_store"
    dense_store: DenseStore = "float32"  # the stored vectors' precision (float16: half the memory, scores within 1e-3)
    files: dict[str, str]  # relative path -> sha256


class IndexManifest(_Strict):
    format: Literal["duet-index/1", "duet-index/2"] = FORMAT
    created_at: str
    checkpoint: CheckpointBinding
    temperature: float
    fusion_dense_weight: float
    fusion_sparse_weight: float
    quantization: dict[str, Any]  # {"scale": float, "rule": str}
    pruning: dict[str, int | None]  # {"images": k, "texts": k}
    # {"name", "source", "root" (relative to the index directory), "splits", "skipped_images" (relative to root)}
    collection: dict[str, Any]
    sides: dict[str, SideManifest]
    build: dict[str, Any] = {}
    # the last write-ahead-log record this version includes (a compaction's); a built index includes none
    wal_seq: int = 0
    # the payload fields indexed for filtered search (indexer/payload.py), the same on every side
    payload: PayloadSchema = {}


def index_contents(index_dir: str | Path) -> Path:
    """The directory holding the live version's manifest and sides (resolved once: read everything from it)."""
    return current_version(index_dir)


def opening_index(index_dir: str | Path) -> contextlib.AbstractContextManager[Path]:
    """``index_contents``, held for the block: a publication meanwhile does not remove the version being opened."""
    return reading_version(index_dir)


def manifest_path(base: str | Path, recorded: str) -> Path:
    """A path recorded in a manifest, relative to ``base``; absolute ones (duet-index/1) stay as they are."""
    return Path(base) / recorded


def relative_to(base: str | Path, path: str | Path) -> str:
    """``path`` as recorded relative to ``base`` (symlinks resolved first, as the kernel resolves ``..``)."""
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def check_publishable(index_dir: str | Path) -> None:
    """Refuse to publish over a directory that is neither an index nor empty (it would be moved aside)."""
    root = Path(index_dir)
    if not root.exists():
        return
    if not root.is_dir():
        raise IndexUnavailableError(f"cannot publish an index at {root}: it is not a directory")
    entries = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    if entries and not (entries & {CURRENT, VERSIONS, MANIFEST}):
        raise IndexUnavailableError(f"cannot publish an index at {root}: the directory holds other files "
                                    f"({sorted(entries)[:5]}); choose an empty or new directory")


def side_files(side_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(side_dir)): sha256_file(p) for p in sorted(side_dir.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


DenseStore = Literal["float32", "float16"]


def read_items(side_dir: Path) -> list[dict[str, Any]]:
    """A side's items.jsonl. Its lines end at "\n" only (json.dumps escapes every "\n" inside a value): splitlines()
    would also split inside a text holding U+2028, U+2029 or U+0085, which are written as they are."""
    text = (side_dir / "items.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def write_side_store(side_dir: Path, items: list[dict[str, Any]], encoded: EncodedItems, *,
                     order: np.ndarray | None = None, dense_store: DenseStore = "float32") -> None:
    side_dir.mkdir(parents=True, exist_ok=True)
    with (side_dir / "items.jsonl").open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    np.save(side_dir / "dense.npy", np.ascontiguousarray(encoded.dense, dtype=np.dtype(dense_store)))
    np.save(side_dir / "sparse.indptr.npy", encoded.sparse.indptr.astype(np.int64))
    np.save(side_dir / "sparse.indices.npy", encoded.sparse.indices.astype(np.int32))
    np.save(side_dir / "sparse.values.npy", encoded.sparse.values.astype(np.float32))
    if order is not None:  # a shard's rows: their positions in the whole collection (the tie order of a merge)
        np.save(side_dir / ORDER_FILE, np.asarray(order, np.int64))


def read_manifest(index_dir: str | Path) -> IndexManifest:
    """The live version's manifest (``index_dir`` may also be a version directory itself)."""
    if not Path(index_dir).is_dir():  # before resolving it: a missing directory has no versions either
        raise IndexUnavailableError(f"index directory not found: {index_dir} (build it with `python -m indexer build`)")
    with opening_index(index_dir) as contents:
        return manifest_in(contents, index_dir)


def manifest_in(contents: Path, index_dir: str | Path | None = None) -> IndexManifest:
    """The manifest of contents already resolved (``opening_index``), read there and not resolved again: a
    publication meanwhile would pair another version's manifest with these files (a directory from before versions
    gets its first ``current`` link while its own files are still at the top)."""
    if not contents.is_dir():
        raise IndexUnavailableError(f"index directory not found: {index_dir or contents} (build it with `python -m "
                                    "indexer build`)")
    path = contents / MANIFEST
    if not path.is_file():
        raise IndexUnavailableError(f"not a Duet index (no {MANIFEST}): {index_dir or contents}")
    try:
        return IndexManifest.model_validate_json(path.read_text())
    except ValidationError as e:
        first = e.errors()[0]
        raise IndexUnavailableError(f"invalid index manifest {path}: {first['loc']} {first['msg']}") from e


def check_binding(manifest: IndexManifest, *, content_hash: str, backbone_fingerprint: str,
                  vocabulary_digest: str) -> None:
    """Refuse an index built with another checkpoint, base model or vocabulary."""
    bound = manifest.checkpoint
    for what, expected, actual in (("checkpoint content hash", bound.content_hash, content_hash),
                                   ("base model fingerprint", bound.backbone_fingerprint, backbone_fingerprint),
                                   ("vocabulary", bound.vocabulary_digest, vocabulary_digest)):
        if expected != actual:
            raise IndexMismatchError(
                f"index was built with {what} {expected[:16]}, but the loaded model has {actual[:16]}; "
                f"rebuild the index with this checkpoint (python -m indexer build) or load the one it was built "
                f"with (the index's own copy, the default)")


@dataclass
class SideStore:
    """A loaded side: ids, metadata, dense vectors, the sparse forward store and the FAISS index."""

    side: str
    ids: list[str]
    items: list[dict[str, Any]]
    dense: np.ndarray  # (N, D) float32
    sparse: SparseRows
    faiss_index: Any
    row_of: dict[str, int]
    order: np.ndarray | None = None  # a shard's: each row's position in the whole collection
    payload: PayloadIndex = dataclasses.field(default_factory=PayloadIndex.empty)
    # the sparse forward store by term, for scoring most of a side's rows exactly: built when a side every search of
    # which may score all its rows is opened (indexer/index_reader.py), never mid-search
    term_postings: TermPostings | None = None

    @functools.cached_property
    def id_array(self) -> np.ndarray:
        """The ids as an array, to take many rows' at once (a search's candidates)."""
        return np.array(self.ids, dtype=object)

    @classmethod
    def load(cls, side_dir: Path, side: str, expected: SideManifest, payload: PayloadSchema | None = None) -> SideStore:
        """A side's stores, checked against its manifest (``payload``: the fields its payload index holds)."""
        import faiss

        try:
            items = read_items(side_dir)
            dense = np.load(side_dir / "dense.npy", mmap_mode="r")
            sparse = SparseRows(np.load(side_dir / "sparse.indptr.npy"), np.load(side_dir / "sparse.indices.npy"),
                                np.load(side_dir / "sparse.values.npy"))
            index = faiss.read_index(str(side_dir / "dense.faiss"))
            order = np.load(side_dir / ORDER_FILE) if (side_dir / ORDER_FILE).is_file() else None
            payload_index = (PayloadIndex.load(side_dir / PAYLOAD_FILE, payload, len(items)) if payload
                             else PayloadIndex.empty(len(items)))
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise IndexUnavailableError(f"cannot read index side {side_dir}: {e}") from e
        counts = {"items": len(items), "dense rows": dense.shape[0], "sparse rows": len(sparse),
                  "faiss vectors": int(index.ntotal)}
        wrong = {k: v for k, v in counts.items() if v != expected.count}
        if wrong:
            raise IndexUnavailableError(f"index side {side_dir} is inconsistent: manifest says {expected.count} items, "
                              f"found {wrong}")
        ids = [str(item["id"]) for item in items]
        if order is not None and order.shape != (len(ids),):
            raise IndexUnavailableError(f"index side {side_dir}: {ORDER_FILE} has {order.shape[0]} rows, not "
                                        f"{len(ids)}")
        return cls(side, ids, items, np.asarray(dense), sparse, index, {i: r for r, i in enumerate(ids)}, order,
                   payload_index)
