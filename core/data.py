"""Image-caption datasets: the Karpathy format (MSCOCO, Flickr30k, Flickr8k share this JSON layout), and the
plain item list features are computed of (``FeatureInputs``; ``karpathy_inputs`` makes one of a dataset's splits).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test", "restval")
# The setting that names the dataset directory when no flag does (data is never part of the project).
DATA_ENV = "DUET_DATA"


class DatasetError(ValueError):
    """The dataset path, its JSON or a field of it is missing or malformed."""


MSCOCO_TRAIN_PAIRS = 566_747  # caption-image pairs of Karpathy's MSCOCO training split (train + restval)


@dataclass(frozen=True)
class Caption:
    caption_id: int
    text: str


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    relative_path: str
    split: str
    captions: tuple[Caption, ...]


@dataclass(frozen=True)
class KarpathyDataset:
    """Images with their captions, by split, as a Karpathy JSON lists them (an image folder can be listed alike)."""

    name: str
    json_path: Path
    image_root: Path
    images: tuple[ImageRecord, ...]

    def split(self, *names: str) -> tuple[ImageRecord, ...]:
        known = {record.split for record in self.images}
        for name in names:
            if name not in known:
                raise DatasetError(f"unknown split {name!r} in {self.json_path}; present: {sorted(known)}")
        return tuple(record for record in self.images if record.split in names)

    def image_path(self, record: ImageRecord) -> Path:
        return self.image_root / record.relative_path


@dataclass(frozen=True)
class ImageInput:
    id: int  # the cache key of its features (a Karpathy imgid)
    path: Path  # its file, or the name an uploaded image's errors give
    data: bytes | None = None  # an uploaded image's bytes (read instead of the file)


@dataclass(frozen=True)
class TextInput:
    id: int  # the cache key of its features (a Karpathy sentid)
    text: str
    image_id: int  # the image it describes: it is dropped with that image when the image is unreadable


@dataclass(frozen=True)
class FeatureInputs:
    """What to compute features of (core/feature_cache.py), and under which name the result is cached.

    ``dataset``, ``origin`` and ``splits`` name the cache: a finished cache of the same dataset and origin whose
    splits include these serves them without encoding anything again.
    """

    dataset: str  # a name unique to the item list's source (a folder's includes a digest of its listing)
    origin: str  # the file the items were read from (dataset JSON, metadata.jsonl), recorded and matched on reuse
    splits: tuple[str, ...]
    images: tuple[ImageInput, ...]
    texts: tuple[TextInput, ...]


def karpathy_inputs(dataset: KarpathyDataset, splits: Sequence[str]) -> FeatureInputs:
    """The images and captions of ``splits`` of a dataset, in dataset order: the one way training and the index
    build name their features, so each reuses the other's cache."""
    records = dataset.split(*splits)
    return FeatureInputs(
        dataset.name, str(dataset.json_path), tuple(sorted(splits)),
        tuple(ImageInput(r.image_id, dataset.image_path(r)) for r in records),
        tuple(TextInput(c.caption_id, c.text, r.image_id) for r in records for c in r.captions))


def _field(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise DatasetError(f"{where}: missing field {key!r}")
    return entry[key]


def dataset_dir_setting() -> str | None:
    """The dataset directory named by the ``DUET_DATA`` setting, if any."""
    return os.environ.get(DATA_ENV) or None


def require_dataset_dir(dataset_dir: str | Path | None) -> Path:
    """``dataset_dir``, else the ``DUET_DATA`` setting; a DatasetError saying how to name one when neither is set."""
    chosen = dataset_dir if dataset_dir not in (None, "") else dataset_dir_setting()
    if chosen is None:
        raise DatasetError(f"no dataset given: pass --data DIR or set {DATA_ENV} to a Karpathy-format dataset")
    return Path(chosen)


def _dataset_json(directory: Path, json_name: str | None) -> Path:
    """The dataset's JSON: ``json_name``, else the folder's one ``dataset_*.json``."""
    if json_name is None:
        candidates = sorted(directory.glob("dataset_*.json"))
        if len(candidates) != 1:
            found = [c.name for c in candidates]
            raise DatasetError(f"expected exactly one dataset_*.json in {directory}, found {found}")
        return candidates[0]
    json_path = directory / json_name
    if not json_path.is_file():
        raise DatasetError(f"dataset JSON not found: {json_path}")
    return json_path


def _image_record(entry: object, where: str) -> ImageRecord:
    """One ``images[]`` entry; ``filepath`` (MSCOCO: ``val2014``) prefixes the file name."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object")
    image_id = int(_field(entry, "imgid", where))
    filename = str(_field(entry, "filename", where))
    relative = f"{entry['filepath']}/{filename}" if entry.get("filepath") else filename
    sentences = _field(entry, "sentences", where)
    if not isinstance(sentences, list):
        raise DatasetError(f"{where}: 'sentences' must be a list")
    captions = tuple(Caption(int(_field(s, "sentid", f"{where} sentence {j}")),
                             str(_field(s, "raw", f"{where} sentence {j}")).strip())
                     for j, s in enumerate(sentences))
    return ImageRecord(image_id, relative, str(_field(entry, "split", where)), captions)


def load_karpathy(dataset_dir: str | Path | None, *, json_name: str | None = None,
                  image_root: str | Path | None = None) -> KarpathyDataset:
    """Load ``dataset_*.json`` from ``dataset_dir`` (None: the ``DUET_DATA`` setting); images under ``image_root``
    (default ``dataset_dir/images``).

    Entries with a ``filepath`` (MSCOCO: ``val2014``) resolve to ``image_root/filepath/filename``.
    """
    directory = require_dataset_dir(dataset_dir)
    if not directory.is_dir():
        raise DatasetError(f"dataset directory not found: {directory} (set --data to a Karpathy-format dataset)")
    json_path = _dataset_json(directory, json_name)
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"malformed dataset JSON {json_path}: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise DatasetError(f"{json_path}: expected an object with an 'images' list")
    records = []
    seen_ids: set[int] = set()
    for index, entry in enumerate(raw["images"]):
        record = _image_record(entry, f"{json_path} images[{index}]")
        if record.image_id in seen_ids:
            raise DatasetError(f"{json_path} images[{index}]: duplicate imgid {record.image_id}")
        seen_ids.add(record.image_id)
        records.append(record)
    root = Path(image_root) if image_root is not None else directory / "images"
    if not root.is_dir():
        raise DatasetError(f"image root not found: {root}")
    return KarpathyDataset(name=str(raw.get("dataset", directory.name)), json_path=json_path, image_root=root,
                           images=tuple(records))
