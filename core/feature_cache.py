"""Feature cache: pre-final-layer features of a list of images and texts, computed once.

The input is a ``FeatureInputs`` (core/data.py): image files and texts, each with an integer id (a dataset's
splits give one through ``karpathy_inputs``). Keyed by the backbone fingerprint, so features of another base model
are never mixed in. Computation runs in shards; each finished shard is written atomically, so an interrupted run
resumes where it stopped. The final cache directory is published atomically:

  <root>/<fingerprint>/<dataset>-<splits>/images.safetensors   {"features": (N, D) float32, "ids": (N,) int64}
  <root>/<fingerprint>/<dataset>-<splits>/texts.safetensors    {"features": (M, D') float32, "ids": (M,) int64}
  <root>/<fingerprint>/<dataset>-<splits>/meta.json            counts, splits, skipped corrupt images
  <root>/<fingerprint>/<dataset>-<splits>/tokens.safetensors   {"ids": (M',) int64, "tokens": (M', L) int32}
The token table holds the captions' token ids (the fingerprint's tokenizer), added by the first run that asks for
them (``caption_tokens``): tokenising is CPU work that every training command repeated (3.3 s for Flickr8k's 40,455
captions on 2 cores, about 50 s for MSCOCO's), before its first epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save, save_file

from core.atomic import atomic_directory, atomic_file, write_text_atomic
from core.backbone import Backbone
from core.data import FeatureInputs, ImageInput
from core.image_pipeline import CorruptImageError, ImagePipeline, in_order_ahead
from core.image_pipeline import text_batch_size as default_text_batch_size
from core.progress import progress_bar
from core.vocab import tokenize_in_batches

_logger = logging.getLogger(__name__)

TOKENIZED_AHEAD = 2  # caption batches tokenised ahead of the one being encoded
TOKENS_FILE = "tokens.safetensors"


@dataclass(frozen=True)
class FeatureTable:
    ids: np.ndarray  # (N,) int64: image ids or caption ids
    features: torch.Tensor  # (N, D) float32

    def rows(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Features for ``ids`` in the given order; unknown ids raise KeyError."""
        position = {int(i): r for r, i in enumerate(self.ids)}
        return self.features[[position[int(i)] for i in ids]]


@dataclass(frozen=True)
class CachedFeatures:
    images: FeatureTable
    texts: FeatureTable
    directory: Path
    corrupt_images: list[str] = field(default_factory=list)

    def caption_tokens(self, caption_ids: np.ndarray, texts: Sequence[str],
                       tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
        """(N, L) token ids of these captions (``texts``, aligned with ``caption_ids``), from the cache's token
        table; captions it lacks are tokenised (in batches) and added to it, atomically."""
        path = self.directory / TOKENS_FILE
        known, tokens = _read_tokens(path)
        found = np.isin(caption_ids, known)
        if not found.all():
            missing = np.flatnonzero(~found)
            new = tokenize_in_batches(tokenizer, [texts[m] for m in missing.tolist()]).to(torch.int32)
            if new.shape[1] != tokens.shape[1]:  # none yet, or another tokenizer's: start the table over
                known, tokens = np.zeros(0, np.int64), torch.zeros(0, new.shape[1], dtype=torch.int32)
            added = np.unique(caption_ids[missing], return_index=True)[1]
            known, tokens = _merged(known, tokens, caption_ids[missing][added], new[added])
            _write_tokens(path, known, tokens)
        return tokens[torch.from_numpy(np.searchsorted(known, caption_ids))].long()


def cache_directory(root: str | Path, fingerprint: str, inputs: FeatureInputs) -> Path:
    return Path(root) / fingerprint / f"{inputs.dataset}-{'+'.join(sorted(inputs.splits))}"


def _plan_hash(kind: str, ids: Sequence[int], shard_size: int) -> str:
    return hashlib.sha256(f"{kind}:{shard_size}:{','.join(map(str, ids))}".encode()).hexdigest()[:16]


def _shards(items: Sequence[Any], shard_size: int) -> list[Sequence[Any]]:
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


class _ShardedWriter:
    """Resumable shard store under ``partial``; a finished shard is never recomputed."""

    def __init__(self, partial: Path, kind: str, ids: Sequence[int], shard_size: int) -> None:
        self.dir = partial / kind
        plan = _plan_hash(kind, ids, shard_size)
        plan_file = self.dir / "plan.txt"
        if self.dir.exists() and (not plan_file.is_file() or plan_file.read_text() != plan):
            _logger.info("discarding stale partial %s cache (different items or shard size)", kind)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(plan_file, plan)

    def path(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.safetensors"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def write(self, index: int, ids: list[int], features: torch.Tensor, skipped: list[str]) -> None:
        tmp = self.path(index).with_suffix(".tmp")
        save_file({"ids": torch.tensor(ids, dtype=torch.long).reshape(-1), "features": features.contiguous()},
                  str(tmp), metadata={"skipped": json.dumps(skipped)})
        tmp.replace(self.path(index))

    def read_all(self, count: int) -> tuple[FeatureTable, list[str]]:
        from safetensors import safe_open

        ids, feats, skipped = [], [], []
        if count == 0:
            return FeatureTable(np.zeros(0, dtype=np.int64), torch.zeros(0, 0)), []
        for index in range(count):
            with safe_open(str(self.path(index)), framework="pt") as handle:
                skipped += json.loads((handle.metadata() or {}).get("skipped", "[]"))
                ids.append(handle.get_tensor("ids"))
                feats.append(handle.get_tensor("features"))
        return FeatureTable(torch.cat(ids).numpy(), torch.cat(feats).float()), skipped


def _shard_batches(sizes: Sequence[int], indexes: Sequence[int], batch_size: int,
                   order: Callable[[int], list[int]] | None = None) -> list[tuple[int, list[int], bool]]:
    """The batches of several shards, shard after shard: (shard index, positions in the shard, whether it is the
    shard's last batch). ``order(i)`` gives the i-th shard's positions in the order they are batched."""
    batches = []
    for n, (size, index) in enumerate(zip(sizes, indexes, strict=True)):
        positions = order(n) if order is not None else list(range(size))
        for start in range(0, size, batch_size):
            batches.append((index, positions[start:start + batch_size], start + batch_size >= size))
    return batches


def _encode_images(backbone: Backbone, shards: Sequence[Sequence[ImageInput]], indexes: Sequence[int],
                   pipeline: ImagePipeline, bar: Any) -> Iterator[tuple[int, list[int], torch.Tensor, list[str]]]:
    """Each shard's image features, shard by shard: the pipeline decodes the next batches (across shards: a GPU's
    shard is two batches) while the tower encodes this one."""
    batches = _shard_batches([len(shard) for shard in shards], indexes, pipeline.batch_size)
    by_index = dict(zip(indexes, shards, strict=True))
    chunks = [[by_index[index][k] for k in positions] for index, positions, _ in batches]
    ids: list[int] = []
    features: list[torch.Tensor] = []
    skipped: list[str] = []
    try:
        for batch, (index, _, last) in zip(pipeline.chunked(chunks), batches, strict=True):
            skipped += batch.skipped
            if batch.ids:
                ids += batch.ids
                features.append(backbone.image_features(batch.pixels).cpu())
            bar.update(batch.count)
            if last:
                width = backbone.image_feature_dim
                yield index, ids, (torch.cat(features) if features else torch.zeros(0, width)), skipped
                ids, features, skipped = [], [], []
    except CorruptImageError as e:
        raise e.with_skip_hint() from e


def _encode_texts(backbone: Backbone, shards: Sequence[Sequence[tuple[int, str]]], indexes: Sequence[int],
                  batch_size: int, bar: Any) -> Iterator[tuple[int, torch.Tensor]]:
    """Each shard's caption features, shard by shard. Captions of similar length share a batch (little padding is
    computed; rows go back to shard order), and a thread tokenises the next batches while the tower encodes this
    one (across shards: a GPU's batch is a whole shard)."""
    by_index = dict(zip(indexes, shards, strict=True))
    batches = _shard_batches([len(shard) for shard in shards], indexes, batch_size,
                             order=lambda n: sorted(range(len(shards[n])), key=lambda k: len(shards[n][k][1])))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        def start(batch: tuple[int, list[int], bool]) -> Callable[[], torch.Tensor]:
            index, positions, _ = batch
            return pool.submit(backbone.tokenizer, [by_index[index][k][1] for k in positions]).result

        feats: torch.Tensor | None = None
        for (index, positions, last), tokens in zip(batches, in_order_ahead(start, batches, TOKENIZED_AHEAD),
                                                    strict=True):
            if feats is None:
                feats = torch.zeros(len(by_index[index]), backbone.text_feature_dim)
            feats[positions] = backbone.text_features(tokens).cpu()
            bar.update(len(positions))
            if last:
                yield index, feats
                feats = None


def compute_features(backbone: Backbone, inputs: FeatureInputs, *, cache_root: str | Path,
                     image_batch_size: int | None = None, text_batch_size: int | None = None, shard_size: int = 1024,
                     skip_corrupt: bool = False,
                     after_shard: Callable[[str, int], None] | None = None) -> CachedFeatures:
    """Compute (or resume, or reuse) the cache of ``inputs``; return it loaded.

    ``after_shard(kind, index)`` is called after each shard is stored (progress hooks, interruption tests).
    """
    final = cache_directory(cache_root, backbone.fingerprint, inputs)
    if (final / "meta.json").is_file():
        return load_feature_cache(final)
    superset = _superset_cache(final, inputs)
    if superset is not None:
        return superset
    captions = [(t.id, t.text) for t in inputs.texts]
    partial = final.with_name(final.name + ".partial")
    image_store = _ShardedWriter(partial, "images", [i.id for i in inputs.images], shard_size)
    text_store = _ShardedWriter(partial, "texts", [c for c, _ in captions], shard_size)
    image_shards = _shards(inputs.images, shard_size)
    text_shards = _shards(captions, shard_size)

    pipeline = ImagePipeline(backbone.preprocess, backbone.device, batch_size=image_batch_size,
                             skip_corrupt=skip_corrupt)
    todo = [i for i in range(len(image_shards)) if not image_store.done(i)]
    if len(todo) < len(image_shards):
        _logger.info("resuming image features: %d of %d shards already done", len(image_shards) - len(todo),
                     len(image_shards))
    remaining = sum(len(image_shards[i]) for i in todo)
    with progress_bar(total=remaining, desc="image features", unit="img") as bar:
        for index, ids, feats, skipped in _encode_images(backbone, [image_shards[i] for i in todo], todo, pipeline,
                                                         bar):
            image_store.write(index, ids, feats, skipped)
            if after_shard is not None:
                after_shard("images", index)
    text_batch = text_batch_size or default_text_batch_size(backbone.device)
    todo = [i for i in range(len(text_shards)) if not text_store.done(i)]
    with progress_bar(total=sum(len(text_shards[i]) for i in todo), desc="text features", unit="caption") as bar:
        for index, feats in _encode_texts(backbone, [text_shards[i] for i in todo], todo, text_batch, bar):
            text_store.write(index, [c for c, _ in text_shards[index]], feats, [])
            if after_shard is not None:
                after_shard("texts", index)

    images, corrupt = image_store.read_all(len(image_shards))
    texts, _ = text_store.read_all(len(text_shards))
    if corrupt:
        _logger.warning("skipped %d corrupt images (listed in meta.json): %s", len(corrupt), corrupt[:5])
        kept_images = {int(i) for i in images.ids}
        caption_image = {t.id: t.image_id for t in inputs.texts}
        keep = [k for k, cid in enumerate(texts.ids) if caption_image[int(cid)] in kept_images]
        texts = FeatureTable(texts.ids[keep], texts.features[keep])
    with atomic_directory(final) as tmp:
        save_file({"ids": torch.from_numpy(images.ids), "features": images.features}, str(tmp / "images.safetensors"))
        save_file({"ids": torch.from_numpy(texts.ids), "features": texts.features}, str(tmp / "texts.safetensors"))
        meta = {"backbone_fingerprint": backbone.fingerprint, "backbone": backbone.description,
                "dataset": inputs.dataset, "dataset_json": inputs.origin, "splits": sorted(inputs.splits),
                "num_images": int(len(images.ids)), "num_texts": int(len(texts.ids)), "corrupt_images": corrupt}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(partial, ignore_errors=True)
    return CachedFeatures(images=images, texts=texts, directory=final, corrupt_images=corrupt)


def _read_tokens(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The token table's ids (ascending) and token rows (empty when there is none yet)."""
    if not path.is_file():
        return np.zeros(0, np.int64), torch.zeros(0, 1, dtype=torch.int32)
    state = load_file(str(path))
    return state["ids"].numpy(), state["tokens"]


def _merged(ids: np.ndarray, tokens: torch.Tensor, new_ids: np.ndarray,
            new_tokens: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    all_ids = np.concatenate([ids, new_ids])
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], torch.cat([tokens, new_tokens])[torch.from_numpy(order)]


def _write_tokens(path: Path, ids: np.ndarray, tokens: torch.Tensor) -> None:
    """Replace the token table at once (a reader sees the old table or the new one); a cache it cannot write to
    (read only) keeps working, tokenising again next time."""
    try:
        with atomic_file(path) as handle:
            handle.write(save({"ids": torch.from_numpy(ids), "tokens": tokens.contiguous()}))  # type: ignore[attr-defined]
    except OSError as e:
        _logger.warning("caption tokens not stored in %s (%s): they are tokenised again next time", path, e)


def _same_file(recorded: str | None, origin: str) -> bool:
    """Whether a cache's recorded origin names ``origin``: as the same string, or as another path to the same file
    (one given relative, the other absolute)."""
    if recorded is None or recorded == origin:
        return recorded is not None
    try:
        return os.path.samefile(recorded, origin)
    except OSError:
        return False


def _superset_cache(final: Path, inputs: FeatureInputs) -> CachedFeatures | None:
    """A finished cache of the same dataset and base model covering more splits, cut down to ``inputs``."""
    wanted = set(inputs.splits)
    for candidate in sorted(final.parent.glob(f"{inputs.dataset}-*")):
        meta_path = candidate / "meta.json"
        if candidate == final or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        if not _same_file(meta.get("dataset_json"), inputs.origin) or not wanted <= set(meta.get("splits", [])):
            continue
        cached = load_feature_cache(candidate)
        image_ids = {i.id for i in inputs.images}
        caption_ids = {t.id for t in inputs.texts}
        keep_images = np.array([int(i) in image_ids for i in cached.images.ids], dtype=bool)
        keep_texts = np.array([int(i) in caption_ids for i in cached.texts.ids], dtype=bool)
        _logger.info("using the feature cache %s for splits %s", candidate, sorted(wanted))
        return CachedFeatures(
            images=FeatureTable(cached.images.ids[keep_images], cached.images.features[torch.from_numpy(keep_images)]),
            texts=FeatureTable(cached.texts.ids[keep_texts], cached.texts.features[torch.from_numpy(keep_texts)]),
            directory=candidate, corrupt_images=cached.corrupt_images)
    return None


def load_feature_cache(directory: str | Path) -> CachedFeatures:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no finished feature cache at {directory}")
    meta = json.loads(meta_path.read_text())
    image_state = load_file(str(directory / "images.safetensors"))
    text_state = load_file(str(directory / "texts.safetensors"))
    return CachedFeatures(
        images=FeatureTable(image_state["ids"].numpy(), image_state["features"].float()),
        texts=FeatureTable(text_state["ids"].numpy(), text_state["features"].float()),
        directory=directory,
        corrupt_images=list(meta.get("corrupt_images", [])),
    )
