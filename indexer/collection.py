"""What gets indexed: images (with their captions and metadata) and texts, from either input format.

  - a Karpathy-format dataset (``dataset_*.json`` + image root), any splits;
  - a plain folder of images, with an optional ``metadata.jsonl`` whose lines are
    ``{"file": "relative/path.jpg", "captions": ["...", ...], ...any other fields}``.

Item ids are strings, unique across both sides: an image's id is its path relative to the collection root and a
caption's id is ``<image id>#<n>`` (the Flickr convention). Both inputs are also exposed as a KarpathyDataset, so
the shared feature cache (resumable, keyed by base model) does the encoding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data import Caption, DatasetError, ImageRecord, KarpathyDataset, load_karpathy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class ImageItem:
    id: str
    relative_path: str
    cache_id: int  # the KarpathyDataset imgid (feature cache key)
    captions: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextItem:
    id: str
    text: str
    image_id: str
    cache_id: int  # the KarpathyDataset sentid


@dataclass(frozen=True)
class Collection:
    name: str
    source: str  # "karpathy" | "folder"
    root: Path  # image root
    splits: tuple[str, ...]
    dataset: KarpathyDataset
    images: tuple[ImageItem, ...]
    texts: tuple[TextItem, ...]

    def restricted_to(self, readable_image_ids: set[int]) -> Collection:
        """The collection less images the encoder could not read (and their captions)."""
        images = tuple(i for i in self.images if i.cache_id in readable_image_ids)
        if len(images) == len(self.images):
            return self
        kept = {i.id for i in images}
        texts = tuple(t for t in self.texts if t.image_id in kept)
        return Collection(self.name, self.source, self.root, self.splits, self.dataset, images, texts)


def _items(dataset: KarpathyDataset, records: tuple[ImageRecord, ...],
           metadata: dict[str, dict[str, Any]] | None = None) -> tuple[tuple[ImageItem, ...], tuple[TextItem, ...]]:
    images, texts = [], []
    for record in records:
        image_id = record.relative_path
        extra = {"split": record.split, **((metadata or {}).get(image_id, {}))}
        images.append(ImageItem(image_id, record.relative_path, record.image_id,
                                tuple(c.text for c in record.captions), extra))
        texts.extend(TextItem(f"{image_id}#{n}", c.text, image_id, c.caption_id)
                     for n, c in enumerate(record.captions))
    return tuple(images), tuple(texts)


def load_karpathy_collection(dataset_dir: str | Path, splits: tuple[str, ...], *,
                             image_root: str | Path | None = None) -> Collection:
    dataset = load_karpathy(dataset_dir, image_root=image_root)
    records = dataset.split(*splits)
    images, texts = _items(dataset, records)
    return Collection(dataset.name, "karpathy", dataset.image_root, tuple(sorted(splits)), dataset, images, texts)


def _read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{number}: malformed JSON: {e}") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DatasetError(f"{path}:{number}: expected an object with a 'file' string")
        captions = entry.get("captions", [])
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DatasetError(f"{path}:{number}: 'captions' must be a list of strings")
        entries[entry["file"]] = entry
    return entries


def load_folder_collection(folder: str | Path) -> Collection:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    metadata_path = root / METADATA_FILE
    metadata = _read_metadata(metadata_path) if metadata_path.is_file() else {}
    unknown = sorted(set(metadata) - set(files))
    if unknown:
        raise DatasetError(f"{metadata_path}: entries for files that are not images under {root}: {unknown[:5]}")
    records, sentid = [], 0
    for imgid, relative in enumerate(files):
        captions = []
        for text in metadata.get(relative, {}).get("captions", []):
            captions.append(Caption(sentid, text.strip()))
            sentid += 1
        records.append(ImageRecord(imgid, relative, "all", tuple(captions)))
    # The cache key must change when the folder's listing or captions change.
    digest = hashlib.sha256(json.dumps([files, {k: v.get("captions", []) for k, v in metadata.items()}],
                                       sort_keys=True).encode()).hexdigest()[:12]
    dataset = KarpathyDataset(f"{root.name or 'folder'}-{digest}", metadata_path, root, tuple(records))
    extra = {k: {f: v for f, v in m.items() if f not in ("file", "captions")} for k, m in metadata.items()}
    images, texts = _items(dataset, dataset.images, extra)
    images = tuple(ImageItem(i.id, i.relative_path, i.cache_id, i.captions,
                             {k: v for k, v in i.metadata.items() if k != "split"}) for i in images)
    return Collection(dataset.name, "folder", root, ("all",), dataset, images, texts)
