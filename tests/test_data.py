from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import DatasetError, load_karpathy


def test_loads_generated_dataset(synthetic_dataset: Path) -> None:
    ds = load_karpathy(synthetic_dataset)
    assert ds.name == "synthetic"
    assert len(ds.split("train")) == 48 and len(ds.split("test")) == 16
    record = ds.split("val")[0]
    assert len(record.captions) == 5
    assert ds.image_path(record).is_file()


def test_coco_style_filepath(tmp_path: Path) -> None:
    (tmp_path / "images" / "val2014").mkdir(parents=True)
    entry = {"filepath": "val2014", "filename": "x.jpg", "imgid": 0, "split": "test",
             "sentences": [{"raw": "a cat", "sentid": 0, "imgid": 0}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": [entry]}))
    ds = load_karpathy(tmp_path)
    assert ds.image_path(ds.images[0]) == tmp_path / "images" / "val2014" / "x.jpg"


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_karpathy(tmp_path / "nowhere")


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset_bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset_bad.json"):
        load_karpathy(tmp_path)


def test_missing_field_names_the_entry(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset_x.json").write_text(json.dumps({"images": [{"imgid": 0, "split": "train",
                                                                       "sentences": []}]}))
    with pytest.raises(DatasetError, match=r"images\[0\].*filename"):
        load_karpathy(tmp_path)


def test_unknown_split(synthetic_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_karpathy(synthetic_dataset).split("dev")


def test_the_dataset_comes_from_the_flag_else_the_setting(monkeypatch: pytest.MonkeyPatch,
                                                          synthetic_dataset: Path) -> None:
    from core.data import DATA_ENV, DatasetError, load_karpathy, require_dataset_dir
    from training.config import DataConfig

    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetError, match="pass --data DIR or set DUET_DATA"):
        load_karpathy(None)
    assert DataConfig().dataset_dir is None
    monkeypatch.setenv(DATA_ENV, str(synthetic_dataset))
    assert require_dataset_dir(None) == synthetic_dataset
    assert require_dataset_dir("elsewhere") == Path("elsewhere")  # a flag wins over the setting
    assert DataConfig().dataset_dir == str(synthetic_dataset)
    assert len(load_karpathy(None).split("test")) > 0
