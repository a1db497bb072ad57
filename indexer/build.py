"""Build both sides of an index from a collection and a checkpoint; publish atomically; verify.

Encoding goes through the shared feature cache (resumable, keyed by base model), so an interrupted build resumes
its slow part, and a dataset already cached for training is not encoded again. Everything is written into a
temporary sibling directory and renamed over the target only when complete: an interrupted build never replaces
or damages the live index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.atomic import atomic_directory
from core.data import DatasetError, dataset_dir_setting
from core.encoder import DuetEncoder, EncodedItems, SparseRows, vocabulary_digest
from core.feature_cache import compute_feature_cache
from core.progress import progress_bar
from indexer.collection import Collection, load_folder_collection, load_karpathy_collection
from indexer.lucene import build_impact_index, write_json_vector_collection
from indexer.store import (
    MANIFEST,
    CheckpointBinding,
    IndexManifest,
    IndexUnavailableError,
    SideManifest,
    SideStore,
    directory_bytes,
    read_manifest,
    side_files,
    write_side_store,
)

_logger = logging.getLogger(__name__)


class IndexBuildConfig(BaseModel):
    """What to index, with which model, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path = Field(description="Duet checkpoint directory (e.g. runs/skd/best).")
    output: Path = Field(description="Index directory to publish.")
    source: Literal["karpathy", "folder"] = "karpathy"
    dataset: Path | None = Field(default_factory=dataset_dir_setting,
                                 description="Karpathy dataset dir (default: the DUET_DATA setting), or the image "
                                 "folder.")
    image_root: Path | None = Field(None, description="Karpathy image root (default <dataset>/images).")
    splits: tuple[str, ...] = ("test",)
    faiss_factory: str = Field("Flat", description="FAISS index_factory string (inner product): Flat, HNSW32, "
                               "IVF256,Flat, ...")
    sparse_scale: float = Field(100.0, gt=0, le=10_000, description="Lucene impact = round(weight * scale).")
    prune_image_terms: int | None = Field(None, gt=0, description="Keep each image's top-k terms only.")
    prune_text_terms: int | None = Field(None, gt=0, description="Keep each text's top-k terms only.")
    cache_root: Path = Path("artifacts/cache")
    skip_corrupt: bool = Field(False, description="List and skip unreadable images instead of failing.")
    threads: int = Field(2, gt=0)
    batch_size: int = Field(1024, gt=0)
    device: str = "cpu"


def load_collection(config: IndexBuildConfig) -> Collection:
    if config.source == "folder":
        if config.dataset is None:
            raise DatasetError("no image folder given (--folder DIR)")
        return load_folder_collection(config.dataset)
    return load_karpathy_collection(config.dataset, config.splits, image_root=config.image_root)


def _encode_rows(encode: Callable[[int, int], EncodedItems], count: int, batch_size: int,
                 desc: str) -> EncodedItems:
    """Encode rows [0, count) in batches; ``encode(start, end)`` encodes one batch."""
    dense_parts: list[np.ndarray] = []
    sparse_parts: list[SparseRows] = []
    with progress_bar(total=count, desc=desc, unit="item") as bar:
        for start in range(0, count, batch_size):
            encoded = encode(start, min(count, start + batch_size))
            dense_parts.append(encoded.dense)
            sparse_parts.append(encoded.sparse)
            bar.update(encoded.dense.shape[0])
    dense = np.concatenate(dense_parts) if dense_parts else np.zeros((0, 1), np.float32)
    return EncodedItems(dense, SparseRows.concatenate(sparse_parts))


def _build_faiss(dense: np.ndarray, factory: str) -> Any:
    import faiss

    index = faiss.index_factory(dense.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(dense)
    index.add(dense)
    return index


def _write_side(side_dir: Path, items: list[dict[str, Any]], encoded: EncodedItems,
                config: IndexBuildConfig, timings: dict[str, float]) -> SideManifest:
    import faiss

    write_side_store(side_dir, items, encoded)
    started = time.perf_counter()
    faiss.write_index(_build_faiss(encoded.dense, config.faiss_factory), str(side_dir / "dense.faiss"))
    timings[f"{side_dir.name}_dense_seconds"] = time.perf_counter() - started
    collection_dir = side_dir.parent / f"_collection_{side_dir.name}"
    started = time.perf_counter()
    docs = write_json_vector_collection(collection_dir, encoded.sparse, config.sparse_scale)
    timings[f"{side_dir.name}_sparse_collection_seconds"] = time.perf_counter() - started
    build_impact_index(collection_dir, side_dir / "lucene", threads=config.threads)
    timings[f"{side_dir.name}_sparse_seconds"] = time.perf_counter() - started
    shutil.rmtree(collection_dir)
    sparse_store = sum((side_dir / f"sparse.{n}.npy").stat().st_size for n in ("indptr", "indices", "values"))
    return SideManifest(
        count=len(items), dense_dim=int(encoded.dense.shape[1]), faiss_factory=config.faiss_factory,
        lucene_docs=docs, mean_terms=float(encoded.sparse.terms_per_row().mean()) if len(items) else 0.0,
        bytes={"dense_faiss": (side_dir / "dense.faiss").stat().st_size,
               "dense_store": (side_dir / "dense.npy").stat().st_size,
               "sparse_lucene": directory_bytes(side_dir / "lucene"), "sparse_store": sparse_store},
        files=side_files(side_dir))


def build_index(config: IndexBuildConfig) -> IndexManifest:
    """Encode the collection, write both sides, publish atomically; return the manifest."""
    started = time.perf_counter()
    collection = load_collection(config)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint, device=config.device)
    cached = compute_feature_cache(encoder.backbone, collection.dataset, splits=collection.splits,
                                   cache_root=config.cache_root, skip_corrupt=config.skip_corrupt)
    collection = collection.restricted_to({int(i) for i in cached.images.ids})
    if cached.corrupt_images:
        _logger.warning("indexing without %d unreadable images: %s", len(cached.corrupt_images),
                        cached.corrupt_images[:5])
    if not collection.images:
        raise ValueError(f"nothing to index: no readable images in {config.dataset}")
    timings: dict[str, float] = {"features_seconds": time.perf_counter() - started}

    image_rows = cached.images.rows([i.cache_id for i in collection.images])
    images = _encode_rows(lambda start, end: encoder.encode_image_features(image_rows[start:end],
                                                                           prune=config.prune_image_terms),
                          image_rows.shape[0], config.batch_size, "encode images")
    image_items = [{"id": i.id, "path": i.relative_path, "captions": list(i.captions), **i.metadata}
                   for i in collection.images]
    text_items = [{"id": t.id, "text": t.text, "image_id": t.image_id} for t in collection.texts]
    texts = None
    if collection.texts:
        text_rows = cached.texts.rows([t.cache_id for t in collection.texts])
        captions = [t.text for t in collection.texts]

        def encode_texts(start: int, end: int) -> EncodedItems:
            # models that score texts on their own terms need the tokens beside the cached features
            tokens = encoder.tokenize(captions[start:end]) if encoder.texts_are_own_terms else None
            return encoder.encode_text_features(text_rows[start:end], token_ids=tokens,
                                                prune=config.prune_text_terms)

        texts = _encode_rows(encode_texts, len(captions), config.batch_size, "encode texts")
    timings["encode_seconds"] = time.perf_counter() - started - timings["features_seconds"]

    sides = {"images": (image_items, images)}
    if texts is not None:
        sides["texts"] = (text_items, texts)
    collection_info = {"name": collection.name, "source": collection.source, "root": str(collection.root.resolve()),
                       "splits": list(collection.splits), "skipped_images": list(cached.corrupt_images)}
    return publish_index(config, encoder, sides, collection_info, timings=timings, started=started)


def publish_index(config: IndexBuildConfig, encoder: DuetEncoder,
                  sides: dict[str, tuple[list[dict[str, Any]], EncodedItems]], collection: dict[str, Any], *,
                  timings: dict[str, float] | None = None, started: float | None = None) -> IndexManifest:
    """Write encoded sides (items + vectors) as an index bound to ``encoder``'s checkpoint, atomically.

    Also used by the benchmarks to index synthetic vectors in the model's space.
    """
    timings = dict(timings or {})
    started = time.perf_counter() if started is None else started
    checkpoint = encoder.checkpoint
    with atomic_directory(config.output) as tmp:
        side_manifests = {side: _write_side(tmp / side, items, encoded, config, timings)
                          for side, (items, encoded) in sides.items()}
        timings["total_seconds"] = time.perf_counter() - started
        manifest = IndexManifest(
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            checkpoint=CheckpointBinding(path=str(Path(config.checkpoint).resolve()),
                                         content_hash=checkpoint.content_hash,
                                         backbone_fingerprint=checkpoint.backbone_fingerprint,
                                         vocabulary_digest=vocabulary_digest(encoder.vocabulary),
                                         method=checkpoint.metadata.get("method")),
            temperature=encoder.temperature,
            fusion_dense_weight=encoder.fusion_weights[0], fusion_sparse_weight=encoder.fusion_weights[1],
            quantization={"scale": config.sparse_scale,
                          "rule": "impact = round(weight * scale); zero impacts dropped; queries quantised alike"},
            pruning={"images": config.prune_image_terms, "texts": config.prune_text_terms},
            collection=collection, sides=side_manifests,
            build={"timings": timings, "config": json.loads(config.model_dump_json())},
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    _logger.info("published index %s: %s", config.output, {side: s.count for side, s in manifest.sides.items()})
    return manifest


def verify_index(index_dir: str | Path, *, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Check counts, ids and file hashes of every side (and the checkpoint binding when given).

    Returns a report; raises IndexUnavailableError on the first inconsistency.
    """
    from core.checkpoint import read_manifest as read_checkpoint_manifest
    from indexer.lucene import ImpactSearcher

    root = Path(index_dir)
    manifest = read_manifest(root)
    report: dict[str, Any] = {"index": str(root), "sides": {}}
    for side, expected in manifest.sides.items():
        side_dir = root / side
        actual = side_files(side_dir)
        missing = sorted(set(expected.files) - set(actual))
        changed = sorted(f for f in expected.files if f in actual and actual[f] != expected.files[f])
        extra = sorted(set(actual) - set(expected.files))
        if missing or changed or extra:
            raise IndexUnavailableError(f"{side_dir}: files differ from the manifest: missing {missing[:5]}, "
                                        f"changed {changed[:5]}, unexpected {extra[:5]}")
        store = SideStore.load(side_dir, side, expected)
        if len(set(store.ids)) != len(store.ids):
            raise IndexUnavailableError(f"{side_dir}: duplicate item ids")
        searcher = ImpactSearcher(side_dir / "lucene", manifest.quantization["scale"])
        lucene_docs = searcher.num_docs()
        searcher.close()
        if lucene_docs != expected.count:
            raise IndexUnavailableError(f"{side_dir}/lucene has {lucene_docs} documents, expected {expected.count}")
        report["sides"][side] = {"count": expected.count, "files": len(actual), "lucene_docs": lucene_docs}
    if checkpoint is not None:
        bound = read_checkpoint_manifest(checkpoint)
        if bound["content_hash"] != manifest.checkpoint.content_hash:
            built_from = manifest.checkpoint.content_hash[:12]
            raise IndexUnavailableError(f"index {root} was built from checkpoint {built_from}"
                                        f", not from {checkpoint} ({bound['content_hash'][:12]})")
        report["checkpoint"] = "matches"
    report["ok"] = True
    return report
