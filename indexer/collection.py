"""What gets indexed: images (with their captions and metadata) and texts, from either input format.

  - a Karpathy-format dataset (``dataset_*.json`` + image root), any splits;
  - a plain folder of images, with an optional ``metadata.jsonl`` whose lines are
    ``{"file": "relative/path.jpg", "captions": ["...", ...], ...any other fields}``.

An image's fields beyond its captions are its payload (indexer/payload.py), which its captions carry too: a
Karpathy image's split, Flickr photo id, file size and pixel size (``karpathy_fields``); a folder image's own
metadata.jsonl fields, indexed by the type each holds unless the build declares them.

Either way the source is read as a listing of images with captions (``KarpathyDataset``; a folder's is one split,
"all"), which gives the items and, through ``karpathy_inputs`` as training does, ``feature_inputs``: what the
shared feature cache (resumable, keyed by base model) is asked for. Item ids are strings, unique across both sides:
an image's id is its path relative to the collection root and a caption's id is ``<image id>#<n>`` (the Flickr
convention).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from core.data import (
    Caption,
    DatasetError,
    FeatureInputs,
    ImageRecord,
    KarpathyDataset,
    karpathy_inputs,
    load_karpathy,
)
from indexer.payload import PayloadSchema, inferred_schema

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
METADATA_FILE = "metadata.jsonl"
FOLDER_SPLIT = "all"  # a folder's one split


@dataclass(frozen=True)
class ImageItem:
    id: str
    relative_path: str
    cache_id: int  # feature cache key (the Karpathy imgid; a folder numbers its files)
    captions: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextItem:
    id: str
    text: str
    image_id: str
    cache_id: int  # feature cache key (the Karpathy sentid; a folder numbers its captions)


@dataclass(frozen=True)
class Collection:
    name: str  # also names its feature cache: unique to the source (a folder's includes a listing digest)
    source: str  # "karpathy" | "folder"
    root: Path  # image root
    splits: tuple[str, ...]
    images: tuple[ImageItem, ...]
    texts: tuple[TextItem, ...]
    # what the feature cache is asked for, by cache id, named by the source's name, file (dataset JSON,
    # metadata.jsonl) and splits: the whole collection as read (``restricted_to`` leaves it so)
    feature_inputs: FeatureInputs
    payload: PayloadSchema = field(default_factory=dict)  # the fields its items hold, indexed by default

    def image_path(self, image: ImageItem) -> Path:
        return self.root / image.relative_path

    def image_record(self, image: ImageItem) -> dict[str, Any]:
        """What an image's row stores (items.jsonl): its id, path, captions and payload."""
        return {"id": image.id, "path": image.relative_path, "captions": list(image.captions), **image.metadata}

    def text_records(self) -> list[dict[str, Any]]:
        """What each caption's row stores: its id, text, image and its image's payload."""
        fields = {i.id: i.metadata for i in self.images}
        return [{"id": t.id, "text": t.text, "image_id": t.image_id, **fields.get(t.image_id, {})} for t in self.texts]

    def restricted_to(self, readable_image_ids: set[int]) -> Collection:
        """The collection less images the encoder could not read (and their captions)."""
        images = tuple(i for i in self.images if i.cache_id in readable_image_ids)
        if len(images) == len(self.images):
            return self
        kept = {i.id for i in images}
        texts = tuple(t for t in self.texts if t.image_id in kept)
        return dataclasses.replace(self, images=images, texts=texts)


def _collection(source: str, root: Path, records: tuple[ImageRecord, ...], inputs: FeatureInputs,
                metadata: Callable[[ImageRecord], dict[str, Any]], payload: PayloadSchema | None = None) -> Collection:
    """The items of ``records`` (the images of ``inputs``, in its order); named, as its cache is, by ``inputs``.
    ``payload``: the fields to index (default: those the metadata holds, each with one type)."""
    images: list[ImageItem] = []
    texts: list[TextItem] = []
    for record in records:
        image_id = record.relative_path
        images.append(ImageItem(image_id, record.relative_path, record.image_id,
                                tuple(c.text for c in record.captions), metadata(record)))
        texts.extend(TextItem(f"{image_id}#{n}", c.text, image_id, c.caption_id)
                     for n, c in enumerate(record.captions))
    schema = inferred_schema(i.metadata for i in images) if payload is None else payload
    return Collection(inputs.dataset, source, root, inputs.splits, tuple(images), tuple(texts), inputs, schema)


def load_karpathy_collection(dataset_dir: str | Path | None, splits: tuple[str, ...], *,
                             image_root: str | Path | None = None) -> Collection:
    dataset = load_karpathy(dataset_dir, image_root=image_root)
    records, inputs = dataset.split(*splits), karpathy_inputs(dataset, splits)
    return _collection("karpathy", dataset.image_root, records, inputs,
                       lambda record: karpathy_fields(dataset.image_root, record), KARPATHY_PAYLOAD)


# A Karpathy image's fields: facts of the photo and its file, none derived from its captions.
KARPATHY_PAYLOAD: PayloadSchema = {"split": "keyword", "photo_id": "integer", "file_bytes": "integer",
                                   "width": "integer", "height": "integer", "orientation": "keyword"}


def karpathy_fields(image_root: Path, record: ImageRecord) -> dict[str, Any]:
    """Its split; the Flickr photo id its file is named by (``<id>_<secret>.jpg``); its file's size in bytes; and
    its pixel size and orientation, read from the file's header. A fact the file cannot give is left out."""
    fields: dict[str, Any] = {"split": record.split}
    stem = Path(record.relative_path).stem.split("_", 1)[0]
    if stem.isdigit():
        fields["photo_id"] = int(stem)
    path = image_root / record.relative_path
    try:
        fields["file_bytes"] = path.stat().st_size
        with Image.open(path) as image:  # the header only: no pixel is decoded
            width, height = image.size
    except (OSError, ValueError):  # unreadable: the build lists and skips it, or fails on it, later
        return fields
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    return {**fields, "width": width, "height": height, "orientation": orientation}


def _read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    # lines end at "\n" only (a caption may hold U+2028 or U+0085, which splitlines() would split at)
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
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
    records: list[ImageRecord] = []
    captions = 0  # caption cache ids run on across the folder, in file order
    for imgid, relative in enumerate(files):
        texts = [text.strip() for text in metadata.get(relative, {}).get("captions", [])]
        records.append(ImageRecord(imgid, relative, FOLDER_SPLIT,
                                   tuple(Caption(captions + n, text) for n, text in enumerate(texts))))
        captions += len(texts)
    # The cache key must change when the folder's listing or captions change.
    digest = hashlib.sha256(json.dumps([files, {k: v.get("captions", []) for k, v in metadata.items()}],
                                       sort_keys=True).encode()).hexdigest()[:12]
    listing = KarpathyDataset(f"{root.name or 'folder'}-{digest}", metadata_path, root, tuple(records))
    inputs = karpathy_inputs(listing, (FOLDER_SPLIT,))
    return _collection("folder", root, listing.images, inputs, lambda record: _extra_fields(metadata, record))


def _extra_fields(metadata: dict[str, dict[str, Any]], record: ImageRecord) -> dict[str, Any]:
    """An image's own metadata.jsonl fields ("split" is the Karpathy items' field; a folder has no splits)."""
    entry = metadata.get(record.relative_path, {})
    return {f: v for f, v in entry.items() if f not in ("file", "captions", "split")}
