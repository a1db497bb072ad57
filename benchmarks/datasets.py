"""The recall benchmarks' datasets: Karpathy-format JSON + image root, one loader for all three.

MSCOCO (5k test) and Flickr30k (1k test) use the same format as Flickr8k (Karpathy's ``dataset_coco.json`` /
``dataset_flickr30k.json``); only the file name, the image layout (COCO's ``filepath``) and the expected split
sizes differ. The presets record the protocol so a run on a truncated copy is flagged, not silently reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.data import DatasetError, load_karpathy, require_dataset_dir


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    json_name: str
    test_images: int  # the protocol's test split size (5k MSCOCO, 1k Flickr)
    default_dir: str | None  # None: the DUET_DATA setting


PRESETS: dict[str, DatasetPreset] = {
    "flickr8k": DatasetPreset("flickr8k", "dataset_flickr8k.json", 1000, None),
    "flickr30k": DatasetPreset("flickr30k", "dataset_flickr30k.json", 1000, "data/flickr30k"),
    "mscoco": DatasetPreset("mscoco", "dataset_coco.json", 5000, "data/mscoco"),
}


@dataclass(frozen=True)
class BenchmarkDataset:
    preset: DatasetPreset
    directory: Path
    json_name: str
    image_root: Path
    split: str
    images: int
    captions: int

    @property
    def protocol_note(self) -> str:
        if self.split == "test" and self.images != self.preset.test_images:
            return (f"{self.images} test images, not the protocol's {self.preset.test_images}: "
                    "numbers are not comparable with published ones")
        return ""


def resolve_dataset(name: str, directory: str | Path | None, split: str, *,
                    image_root: str | Path | None = None) -> BenchmarkDataset:
    """Load and check a dataset/split; every problem is a DatasetError naming it."""
    if name not in PRESETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    root = require_dataset_dir(directory if directory is not None else preset.default_dir)
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset directory not found: {root} (pass --data DIR with {preset.json_name} "
                           "and the images)")
    json_name = preset.json_name
    if not (root / json_name).is_file():
        found = sorted(p.name for p in root.glob("dataset_*.json"))
        if len(found) != 1:
            raise DatasetError(f"{name}: {json_name} not found in {root} (found {found})")
        json_name = found[0]
    dataset = load_karpathy(root, json_name=json_name, image_root=image_root)
    splits = Counter(record.split for record in dataset.images)
    if split not in splits:
        present = dict(sorted(splits.items()))
        raise DatasetError(f"{name}: unknown split {split!r}; {dataset.json_path.name} has {present} (images each)")
    records = dataset.split(split)
    return BenchmarkDataset(preset, root, json_name, dataset.image_root, split, len(records),
                            sum(len(r.captions) for r in records))
