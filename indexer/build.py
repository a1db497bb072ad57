"""Build both sides of an index from a collection and a checkpoint; publish atomically; verify.

A build is a pipeline of stages, each a function of the previous one's output (so shards could run them apart):

  load_collection      IndexBuildConfig              -> Collection          images and texts with ids
  extract_features     Collection                    -> CollectionFeatures  frozen backbone features, via the cache
  encode_collection    CollectionFeatures            -> EncodedCollection   dense + sparse vectors per side
  write_side           EncodedSide                   -> WrittenSide         forward store, FAISS, Lucene
  copy_checkpoint      DuetEncoder                   -> CheckpointBinding   the checkpoint, copied into the index
  make_manifest        sides, binding, collection    -> IndexManifest       every path relative to the index
  publish_index        all of the above, written into a new version, made live in one rename

Features go through the shared feature cache (resumable, keyed by base model), so an interrupted build resumes
its slow part, and a dataset already cached for training is not encoded again. Each build writes a new version
beside the live one and publishes it by replacing the ``current`` link (core/atomic.py ``versioned_directory``):
an interrupted build never replaces or damages the live index, and a reader never finds none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.atomic import versioned_directory
from core.backbone import Backbone
from core.cancel import Cancellation, check
from core.checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from core.checkpoint import WEIGHTS, sha256_file
from core.data import DatasetError, dataset_dir_setting
from core.encoder import DuetEncoder, EncodedItems, SparseRows, vocabulary_digest
from core.feature_cache import compute_features
from core.progress import progress_bar
from indexer.collection import Collection, load_folder_collection, load_karpathy_collection
from indexer.lucene import ImpactSearcher, build_impact_index, write_json_vector_collection
from indexer.payload import PAYLOAD_FILE, PayloadError, PayloadIndex, PayloadSchema, check_schema
from indexer.planner import EXACT_ROWS
from indexer.store import (
    CHECKPOINT_DIR,
    MANIFEST,
    CheckpointBinding,
    DenseStore,
    IndexManifest,
    IndexUnavailableError,
    SideManifest,
    SideStore,
    check_publishable,
    directory_bytes,
    manifest_in,
    manifest_path,
    opening_index,
    relative_to,
    side_files,
    write_side_store,
)

_logger = logging.getLogger(__name__)


# The dense index a build picks unless told (``dense_factory``): a side the planner always brute-forces unfiltered
# (at most EXACT_ROWS: indexer/planner.py) needs only the exact flat index; past it an inverted file of 8-bit
# scalar-quantised vectors (IVF, SQ8) answers the dense leg in a fraction of a flat scan's time, and the exact
# rescoring of its candidates keeps the scores exact. Its lists also serve a filter well (indexer/ivf.py), which a
# graph does not. Measured on 1M synthetic items, one thread, top 200: IVF4096,SQ8 probing 128 lists 0.75 ms with
# every exact dense top 10 and 99.6% of the top 100 found, built in 55 s; HNSW32 at efSearch 512 0.9 ms for 97.9%
# of the top 10, built in 605 s.
AUTO_FACTORY = "auto"
APPROXIMATE_DENSE_ROWS = EXACT_ROWS + 1
IVF_PROBED_SHARE = 32  # an IVF index probes 1/32 of its lists
IVF_TRAINING_PER_LIST = 40  # k-means sample: FAISS asks for 39 points per centroid
HNSW_EF_SEARCH = 512


def ivf_lists(rows: int) -> int:
    """The lists of an automatic IVF index over ``rows`` rows: the power of two nearest 4 * sqrt(rows)."""
    return 2 ** max(6, round(math.log2(4 * math.sqrt(rows))))


def _setting_path(value: str | None) -> Path | None:
    # a default_factory's value is not validated, so the setting's string becomes a Path here
    return Path(value) if value else None


class IndexBuildConfig(BaseModel):
    """What to index, with which model, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path = Field(description="Duet checkpoint directory (e.g. runs/skd/best).")
    output: Path = Field(description="Index directory to publish (its new version goes live only when complete).")
    source: Literal["karpathy", "folder"] = "karpathy"
    dataset: Path | None = Field(default_factory=lambda: _setting_path(dataset_dir_setting()),
                                 description="Karpathy dataset dir (default: the DUET_DATA setting), or the image "
                                 "folder.")
    image_root: Path | None = Field(None, description="Karpathy image root (default <dataset>/images).")
    splits: tuple[str, ...] = Field(("test",), description="Karpathy splits, e.g. test or train,val,test.")
    faiss_factory: str = Field(AUTO_FACTORY, description="FAISS index_factory string (inner product): Flat, "
                               "HNSW32, IVF256,Flat, SQfp16, SQ8, ...; auto: Flat (exact) for a side under "
                               f"{APPROXIMATE_DENSE_ROWS:,} items, else IVF<4 sqrt(items)>,SQ8 probing 1/"
                               f"{IVF_PROBED_SHARE} of its lists (approximate; candidates are rescored exactly).")
    dense_store: DenseStore = Field("float32", description="Precision of the stored dense vectors the exact "
                                    "rescoring reads: float32, or float16 for half their memory.")
    sparse_scale: float = Field(100.0, gt=0, le=10_000, description="Lucene impact = round(weight * scale).")
    prune_image_terms: int | None = Field(None, gt=0, description="Keep each image's top-k terms only.")
    prune_text_terms: int | None = Field(None, gt=0, description="Keep each text's top-k terms only.")
    cache_root: Path = Field(Path("artifacts/cache"), description="Feature cache root (shared with training).")
    skip_corrupt: bool = Field(False, description="List and skip unreadable images instead of failing.")
    threads: int = Field(2, gt=0, description="Threads of the Lucene index build.")
    batch_size: int = Field(1024, gt=0, description="Images or captions encoded per batch.")
    device: str = Field("cpu", description="Torch device of the encoder, e.g. cuda.")
    shards: int = Field(1, ge=1, le=4096, description="Shards of the collection (an item's shard: a stable hash of "
                        "its id); 1: one index.")
    engine: Literal["embedded", "ray"] = Field("embedded", description="Where the build runs: this process, or a "
                                               "Ray cluster (--address).")
    address: str | None = Field(None, description="Ray cluster address (host:port) for --engine ray (default: the "
                                "RAY_ADDRESS setting).")
    workers: int = Field(1, ge=1, description="Encoding actors of a Ray build (each takes a GPU where the cluster "
                         "has them, else a CPU).")
    actor_batch_size: int = Field(64, gt=0, le=4096, description="Items per batch of a Ray build's encoding actor "
                                  "(it runs the whole model on decoded images: memory grows with the batch).")
    payload: PayloadSchema | None = Field(None, description="Payload fields to index for filtered search, name -> "
                                          "type (keyword, keywords, integer, float, datetime, bool); default: the "
                                          "source's own fields (indexer/collection.py).")
    keep_previous: bool = Field(False, description="Keep the version this build replaces (a rollback is one link "
                                "away, for the disk of one more index); older versions are removed.")

    @field_validator("payload")
    @classmethod
    def _known_payload(cls, payload: PayloadSchema | None) -> PayloadSchema | None:
        try:
            return None if payload is None else check_schema(payload)
        except PayloadError as e:
            raise ValueError(str(e)) from e


# ----- stage outputs -----
@dataclass(frozen=True)
class CollectionFeatures:
    """Frozen backbone features of a collection, one row per item, in the collection's order."""

    collection: Collection  # less the images that could not be read (and their captions)
    images: torch.Tensor  # (N, D_image)
    texts: torch.Tensor  # (M, D_text)
    skipped_images: tuple[str, ...]  # unreadable images, relative to the collection root


@dataclass(frozen=True)
class EncodedSide:
    items: list[dict[str, Any]]  # one per row: what items.jsonl stores
    encoded: EncodedItems
    order: np.ndarray | None = None  # a shard's rows: their positions in the whole collection


@dataclass(frozen=True)
class EncodedCollection:
    collection: Collection
    sides: dict[str, EncodedSide]  # "images", and "texts" when the collection has any
    skipped_images: tuple[str, ...]


@dataclass(frozen=True)
class WrittenSide:
    manifest: SideManifest
    timings: dict[str, float]  # "<side>_dense_seconds", "<side>_sparse_collection_seconds", "<side>_sparse_seconds"


# ----- stages -----
def with_source_payload(config: IndexBuildConfig, collection: Collection) -> IndexBuildConfig:
    """The build's payload fields: the declared ones, else the source's own (``Collection.payload``)."""
    if config.payload is not None:
        return config
    return config.model_copy(update={"payload": dict(collection.payload)})


def load_collection(config: IndexBuildConfig) -> Collection:
    if config.source == "folder":
        if config.dataset is None:
            raise DatasetError("no image folder given (--folder DIR)")
        return load_folder_collection(config.dataset)
    return load_karpathy_collection(config.dataset, config.splits, image_root=config.image_root)


def extract_features(collection: Collection, backbone: Backbone, *, cache_root: Path,
                     skip_corrupt: bool = False) -> CollectionFeatures:
    """The collection's features from the shared cache (computed and cached first where missing)."""
    cached = compute_features(backbone, collection.feature_inputs, cache_root=cache_root,
                              skip_corrupt=skip_corrupt)
    readable = collection.restricted_to({int(i) for i in cached.images.ids})
    kept = {i.id for i in readable.images}
    skipped = tuple(i.relative_path for i in collection.images if i.id not in kept)
    if skipped:
        _logger.warning("indexing without %d unreadable images: %s", len(skipped), list(skipped[:5]))
    if not readable.images:
        raise ValueError(f"nothing to index: no readable images in {collection.root}")
    texts = (cached.texts.rows([t.cache_id for t in readable.texts]) if readable.texts
             else torch.zeros(0, backbone.text_feature_dim))
    return CollectionFeatures(readable, cached.images.rows([i.cache_id for i in readable.images]), texts, skipped)


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


def encode_collection(features: CollectionFeatures, encoder: DuetEncoder, *, batch_size: int = 1024,
                      prune_image_terms: int | None = None,
                      prune_text_terms: int | None = None) -> EncodedCollection:
    """Dense and sparse vectors of every item, with the rows items.jsonl stores, per side."""
    collection = features.collection
    images = _encode_rows(lambda start, end: encoder.encode_image_features(features.images[start:end],
                                                                           prune=prune_image_terms),
                          features.images.shape[0], batch_size, "encode images")
    image_items = [collection.image_record(i) for i in collection.images]
    sides = {"images": EncodedSide(image_items, images)}
    if collection.texts:
        captions = [t.text for t in collection.texts]

        def encode_texts(start: int, end: int) -> EncodedItems:
            # models that score texts on their own terms need their term ids beside the cached features
            rows = encoder.term_rows(captions[start:end]) if encoder.texts_are_own_terms else None
            return encoder.encode_text_features(features.texts[start:end], term_rows=rows, prune=prune_text_terms)

        texts = _encode_rows(encode_texts, len(captions), batch_size, "encode texts")
        sides["texts"] = EncodedSide(collection.text_records(), texts)
    return EncodedCollection(collection, sides, features.skipped_images)


def dense_factory(requested: str, rows: int) -> str:
    """The FAISS factory a side of ``rows`` items gets: the one requested, or for ``auto`` exact below
    ``APPROXIMATE_DENSE_ROWS`` and an IVF index above (a flat scan's time grows with the rows, a few lists' less)."""
    if requested != AUTO_FACTORY:
        return requested
    return "Flat" if rows < APPROXIMATE_DENSE_ROWS else f"IVF{ivf_lists(rows)},SQ8"


def _build_faiss(dense: np.ndarray, factory: str) -> Any:
    import faiss

    index = faiss.index_factory(dense.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    inner: Any = faiss.downcast_index(index)
    if not index.is_trained:
        sample = dense
        if isinstance(inner, faiss.IndexIVF) and dense.shape[0] > IVF_TRAINING_PER_LIST * inner.nlist:
            chosen = np.random.default_rng(0).choice(dense.shape[0], IVF_TRAINING_PER_LIST * inner.nlist,
                                                     replace=False)
            sample = np.ascontiguousarray(dense[np.sort(chosen)])
        index.train(sample)
    index.add(dense)
    if isinstance(inner, faiss.IndexHNSW):  # saved with the index: every search of it explores this deep
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    if isinstance(inner, faiss.IndexIVF):  # saved with the index too
        inner.nprobe = max(1, inner.nlist // IVF_PROBED_SHARE)
    return index


def write_dense_leg(side_dir: Path, dense: np.ndarray, factory: str) -> None:
    import faiss

    faiss.write_index(_build_faiss(dense, factory), str(side_dir / "dense.faiss"))


def write_sparse_leg(side_dir: Path, sparse: SparseRows, *, scale: float, threads: int,
                     cancel: Cancellation | None = None) -> tuple[int, float]:
    """The Lucene impact index of ``sparse``; return its document count and the seconds its input took to write."""
    collection_dir = side_dir.parent / f"_collection_{side_dir.name}"
    started = time.perf_counter()
    docs = write_json_vector_collection(collection_dir, sparse, scale)
    collection_seconds = time.perf_counter() - started
    build_impact_index(collection_dir, side_dir / "lucene", threads=threads, cancel=cancel)
    shutil.rmtree(collection_dir)
    searcher = ImpactSearcher(side_dir / "lucene", scale)
    try:  # checked before publication: a version whose Lucene index lost rows must never go live
        indexed = searcher.num_docs()
    finally:
        searcher.close()
    if indexed != docs:
        raise IndexUnavailableError(f"Lucene indexed {indexed} of {docs} documents of {side_dir.name}")
    return docs, collection_seconds


def write_side(side_dir: Path, side: EncodedSide, *, faiss_factory: str = AUTO_FACTORY, sparse_scale: float = 100.0,
               threads: int = 2, dense_store: DenseStore = "float32", payload: PayloadSchema | None = None,
               cancel: Cancellation | None = None) -> WrittenSide:
    """Every leg of one side: the forward store, the payload index, the FAISS index and the Lucene impact index
    (``cancel`` is checked between them, and stops the Lucene indexer)."""
    items, encoded = side.items, side.encoded
    timings: dict[str, float] = {}
    started = time.perf_counter()
    payload_index = PayloadIndex.from_items(payload or {}, items)  # first: an item of a wrong type stops the build
    write_side_store(side_dir, items, encoded, order=side.order, dense_store=dense_store)
    payload_index.save(side_dir / PAYLOAD_FILE)
    timings[f"{side_dir.name}_payload_seconds"] = time.perf_counter() - started
    check(cancel)
    started = time.perf_counter()
    faiss_factory = dense_factory(faiss_factory, len(items))
    write_dense_leg(side_dir, encoded.dense, faiss_factory)
    timings[f"{side_dir.name}_dense_seconds"] = time.perf_counter() - started
    check(cancel)
    started = time.perf_counter()
    docs, timings[f"{side_dir.name}_sparse_collection_seconds"] = write_sparse_leg(
        side_dir, encoded.sparse, scale=sparse_scale, threads=threads, cancel=cancel)
    timings[f"{side_dir.name}_sparse_seconds"] = time.perf_counter() - started
    sparse_store = sum((side_dir / f"sparse.{n}.npy").stat().st_size for n in ("indptr", "indices", "values"))
    manifest = SideManifest(
        count=len(items), dense_dim=int(encoded.dense.shape[1]), faiss_factory=faiss_factory,
        lucene_docs=docs, mean_terms=float(encoded.sparse.terms_per_row().mean()) if len(items) else 0.0,
        bytes={"dense_faiss": (side_dir / "dense.faiss").stat().st_size,
               "dense_store": (side_dir / "dense.npy").stat().st_size,
               "sparse_lucene": directory_bytes(side_dir / "lucene"), "sparse_store": sparse_store,
               "payload": (side_dir / PAYLOAD_FILE).stat().st_size},
        files=side_files(side_dir), dense_store=dense_store)
    return WrittenSide(manifest, timings)


def copy_checkpoint(encoder: DuetEncoder, source: Path, contents_dir: Path) -> CheckpointBinding:
    """Copy the checkpoint (weights + manifest, a few MB) into the index, refusing a copy that is not the one the
    vectors were encoded with (it may have been republished since it was loaded)."""
    target = contents_dir / CHECKPOINT_DIR
    target.mkdir()
    for name in (WEIGHTS, CHECKPOINT_MANIFEST):
        shutil.copyfile(source / name, target / name)  # not copy2: the index's files get the umask's modes
    checkpoint = encoder.checkpoint
    if sha256_file(target / WEIGHTS) != checkpoint.content_hash:
        raise IndexUnavailableError(f"checkpoint {source} changed during the build (its weights no longer hash to "
                                    f"{checkpoint.content_hash[:12]}); build again")
    return CheckpointBinding(path=CHECKPOINT_DIR, content_hash=checkpoint.content_hash,
                             backbone_fingerprint=checkpoint.backbone_fingerprint,
                             vocabulary_digest=vocabulary_digest(encoder.vocabulary),
                             method=checkpoint.metadata.get("method"))


def collection_record(encoded: EncodedCollection) -> dict[str, Any]:
    collection = encoded.collection
    return {"name": collection.name, "source": collection.source, "root": str(collection.root),
            "splits": list(collection.splits), "skipped_images": list(encoded.skipped_images)}


_CONFIG_PATHS = ("checkpoint", "dataset", "image_root", "cache_root")


def make_manifest(*, config: IndexBuildConfig, encoder: DuetEncoder, binding: CheckpointBinding,
                  sides: Mapping[str, SideManifest], collection: Mapping[str, Any],
                  timings: Mapping[str, float]) -> IndexManifest:
    """The manifest of a new version of ``config.output``, with every path relative to the index (the image root
    and the recorded build inputs to the index directory, the checkpoint to the version)."""
    collection = dict(collection)
    if collection.get("root") is not None:
        collection["root"] = relative_to(config.output, collection["root"])
    recorded = json.loads(config.model_dump_json(exclude={"output"}))
    for name in _CONFIG_PATHS:
        if recorded.get(name) is not None:
            recorded[name] = relative_to(config.output, recorded[name])
    return IndexManifest(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        checkpoint=binding, temperature=encoder.temperature,
        fusion_dense_weight=encoder.fusion_weights[0], fusion_sparse_weight=encoder.fusion_weights[1],
        quantization={"scale": config.sparse_scale,
                      "rule": "impact = round(weight * scale); zero impacts dropped; queries quantised alike"},
        pruning={"images": config.prune_image_terms, "texts": config.prune_text_terms},
        collection=collection, sides=dict(sides), build={"timings": dict(timings), "config": recorded},
        payload=dict(config.payload or {}),
    )


def publish_index(config: IndexBuildConfig, encoder: DuetEncoder,
                  sides: Mapping[str, EncodedSide | tuple[list[dict[str, Any]], EncodedItems]],
                  collection: Mapping[str, Any], *, timings: Mapping[str, float] | None = None,
                  started: float | None = None, wal_seq: int = 0,
                  keep_at_top: tuple[str, ...] = (), cancel: Cancellation | None = None) -> IndexManifest:
    """Write encoded sides (items + vectors) as a new version of ``config.output``, bound to ``encoder``'s
    checkpoint (copied in), and make it the live one.

    Also used by the benchmarks to index synthetic vectors in the model's space, and by a live collection's
    compaction (``wal_seq``: the last write-ahead-log record the version includes; ``keep_at_top``: the
    collection's own entries beside the versions; ``cancel``: checked between steps until the version is published,
    a cancelled one is discarded).
    """
    timings = dict(timings or {})
    started = time.perf_counter() if started is None else started
    check_publishable(config.output)
    source = config.checkpoint  # the encoder's own weights, checked by hash when copied
    try:
        manifest = _publish_version(config, encoder, sides, collection, timings, started, wal_seq, keep_at_top,
                                    Path(source), cancel)
    except OSError as e:  # a full disk, most often: the staged version is gone, the live one untouched
        free = shutil.disk_usage(config.output).free // 2**20 if config.output.exists() else 0
        raise IndexUnavailableError(f"cannot write the new version of {config.output}: {e} (disk space left "
                                    f"there: {free} MiB); the live version is unchanged") from e
    _logger.info("published index %s: %s", config.output, {side: s.count for side, s in manifest.sides.items()})
    return manifest


def _publish_version(config: IndexBuildConfig, encoder: DuetEncoder,
                     sides: Mapping[str, EncodedSide | tuple[list[dict[str, Any]], EncodedItems]],
                     collection: Mapping[str, Any], timings: dict[str, float], started: float, wal_seq: int,
                     keep_at_top: tuple[str, ...], source: Path, cancel: Cancellation | None) -> IndexManifest:
    """``publish_index``'s writing: the sides, the checkpoint and the manifest into a new version, published."""
    with versioned_directory(config.output, keep_previous=config.keep_previous, keep_at_top=keep_at_top) as contents:
        side_manifests = {}
        for name, side in sides.items():
            written = write_side(contents / name, side if isinstance(side, EncodedSide) else EncodedSide(*side),
                                 faiss_factory=config.faiss_factory, sparse_scale=config.sparse_scale,
                                 threads=config.threads, dense_store=config.dense_store,
                                 payload=config.payload, cancel=cancel)
            side_manifests[name] = written.manifest
            timings.update(written.timings)
        binding = copy_checkpoint(encoder, source, contents)
        timings["total_seconds"] = time.perf_counter() - started
        manifest = make_manifest(config=config, encoder=encoder, binding=binding, sides=side_manifests,
                                 collection=collection, timings=timings).model_copy(update={"wal_seq": wal_seq})
        (contents / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        check(cancel)  # the last moment: past it, the version is published
    return manifest


def build_index(config: IndexBuildConfig) -> IndexManifest:
    """Run every stage: collection, features, vectors, then the index's legs and manifest, published at once."""
    started = time.perf_counter()
    check_publishable(config.output)  # before the slow stages, not after them
    collection = load_collection(config)
    config = with_source_payload(config, collection)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint, device=config.device)
    features = extract_features(collection, encoder.backbone, cache_root=config.cache_root,
                                skip_corrupt=config.skip_corrupt)
    timings = {"features_seconds": time.perf_counter() - started}
    encoded = encode_collection(features, encoder, batch_size=config.batch_size,
                                prune_image_terms=config.prune_image_terms, prune_text_terms=config.prune_text_terms)
    timings["encode_seconds"] = time.perf_counter() - started - timings["features_seconds"]
    return publish_index(config, encoder, encoded.sides, collection_record(encoded), timings=timings,
                         started=started)


def verify_index(index_dir: str | Path, *, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Check counts, ids and file hashes of every side (and the checkpoint binding when given).

    Returns a report; raises IndexUnavailableError on the first inconsistency.
    """
    with opening_index(index_dir) as root:  # held: a publication meanwhile leaves this version in place
        return _verify_version(root, str(index_dir), checkpoint)


def _verify_payload(side_dir: Path, store: SideStore, schema: PayloadSchema) -> None:
    """The stored payload index is the items' own fields, as the manifest declares them."""
    try:
        rebuilt = PayloadIndex.from_items(schema, store.items)
    except PayloadError as e:
        raise IndexUnavailableError(f"{side_dir}: an item's payload does not fit the manifest: {e}") from e
    if not rebuilt.equals(store.payload):
        raise IndexUnavailableError(f"{side_dir}/{PAYLOAD_FILE} is not the payload index of its items")


def _verify_version(root: Path, index_dir: str, checkpoint: str | Path | None) -> dict[str, Any]:
    from core.checkpoint import read_manifest as read_checkpoint_manifest
    from indexer.lucene import ImpactSearcher

    manifest = manifest_in(root, index_dir)
    report: dict[str, Any] = {"index": index_dir, "version": str(root), "sides": {}}
    for side, expected in manifest.sides.items():
        side_dir = root / side
        actual = side_files(side_dir)
        missing = sorted(set(expected.files) - set(actual))
        changed = sorted(f for f in expected.files if f in actual and actual[f] != expected.files[f])
        extra = sorted(set(actual) - set(expected.files))
        if missing or changed or extra:
            raise IndexUnavailableError(f"{side_dir}: files differ from the manifest: missing {missing[:5]}, "
                                        f"changed {changed[:5]}, unexpected {extra[:5]}")
        store = SideStore.load(side_dir, side, expected, manifest.payload)
        if len(set(store.ids)) != len(store.ids):
            raise IndexUnavailableError(f"{side_dir}: duplicate item ids")
        _verify_payload(side_dir, store, manifest.payload)
        searcher = ImpactSearcher(side_dir / "lucene", manifest.quantization["scale"])
        lucene_docs = searcher.num_docs()
        searcher.close()
        if lucene_docs != expected.count:
            raise IndexUnavailableError(f"{side_dir}/lucene has {lucene_docs} documents, expected {expected.count}")
        report["sides"][side] = {"count": expected.count, "files": len(actual), "lucene_docs": lucene_docs,
                                 "payload_fields": len(manifest.payload)}
    if manifest.format != "duet-index/1":  # format 1 named the checkpoint where it was built from, not a copy
        own = manifest_path(root, manifest.checkpoint.path)
        weights = own / WEIGHTS
        if not weights.is_file() or sha256_file(weights) != manifest.checkpoint.content_hash:
            raise IndexUnavailableError(f"{own}: the index's checkpoint is missing or not the one it was built with")
        report["own_checkpoint"] = "matches"
    if checkpoint is not None:
        bound = read_checkpoint_manifest(checkpoint)
        if bound["content_hash"] != manifest.checkpoint.content_hash:
            built_from = manifest.checkpoint.content_hash[:12]
            raise IndexUnavailableError(f"index {root} was built from checkpoint {built_from}"
                                        f", not from {checkpoint} ({bound['content_hash'][:12]})")
        report["checkpoint"] = "matches"
    report["ok"] = True
    return report
