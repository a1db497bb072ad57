from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.data import FeatureInputs, ImageInput, TextInput, karpathy_inputs, load_karpathy
from core.feature_cache import cache_directory, compute_features, load_feature_cache
from core.image_pipeline import CorruptImageError

SPLITS = ["train", "val", "test"]


class Interrupt(RuntimeError):
    pass


def test_cache_contents(tmp_path: Path, synthetic_dataset: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    ds = load_karpathy(synthetic_dataset)
    cache = compute_features(tiny_backbone, karpathy_inputs(ds, SPLITS), cache_root=tmp_path, shard_size=16)
    assert cache.images.features.shape == (80, 32)
    assert cache.texts.features.shape == (400, 32)
    assert sorted(cache.images.ids.tolist()) == sorted(r.image_id for r in ds.split(*SPLITS))
    assert cache.directory.parent.name == tiny_backbone.fingerprint
    # rows really are the towers' features of those items
    record = ds.split("val")[3]
    from core.image_pipeline import load_image

    expected = tiny_backbone.image_features(load_image(ds.image_path(record), tiny_backbone.preprocess)[None])
    assert torch.allclose(cache.images.rows([record.image_id]), expected, atol=1e-5)
    caption = record.captions[2]
    expected_text = tiny_backbone.text_features(tiny_backbone.tokenizer([caption.text]))
    assert torch.allclose(cache.texts.rows([caption.caption_id]), expected_text, atol=1e-5)
    reloaded = load_feature_cache(cache.directory)
    assert torch.equal(reloaded.images.features, cache.images.features)


def test_resume_after_interruption(tmp_path: Path, synthetic_dataset: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    ds = load_karpathy(synthetic_dataset)
    inputs = karpathy_inputs(ds, SPLITS)
    reference = compute_features(tiny_backbone, inputs, cache_root=tmp_path / "ref", shard_size=16)

    def crash_on_third(kind: str, index: int) -> None:
        if kind == "images" and index == 2:
            raise Interrupt("simulated crash")

    with pytest.raises(Interrupt):
        compute_features(tiny_backbone, inputs, cache_root=tmp_path / "run", shard_size=16, after_shard=crash_on_third)
    final = cache_directory(tmp_path / "run", tiny_backbone.fingerprint, inputs)
    assert not final.exists()  # nothing half-written is published

    computed: list[tuple[str, int]] = []
    resumed = compute_features(tiny_backbone, inputs, cache_root=tmp_path / "run", shard_size=16,
                               after_shard=lambda kind, index: computed.append((kind, index)))
    image_shards = [i for kind, i in computed if kind == "images"]
    assert image_shards == [3, 4]  # shards 0-2 were kept from the interrupted run
    assert torch.equal(resumed.images.features, reference.images.features)
    assert torch.equal(resumed.texts.features, reference.texts.features)
    assert not final.with_name(final.name + ".partial").exists()


def _dataset_with_bad_images(tmp_path: Path, source: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(source, root)
    ds = load_karpathy(root)
    first, second = ds.split("test")[:2]
    ds.image_path(first).write_bytes(b"this is not a jpeg")
    data = ds.image_path(second).read_bytes()
    ds.image_path(second).write_bytes(data[: len(data) // 3])  # truncated
    return root


def test_corrupt_image_fails_with_its_name(tmp_path: Path, synthetic_dataset: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    root = _dataset_with_bad_images(tmp_path, synthetic_dataset)
    ds = load_karpathy(root)
    bad = ds.image_path(ds.split("test")[0]).name
    with pytest.raises(CorruptImageError, match=bad):
        compute_features(tiny_backbone, karpathy_inputs(ds, ["test"]), cache_root=tmp_path / "c")
    assert not cache_directory(tmp_path / "c", tiny_backbone.fingerprint, karpathy_inputs(ds, ["test"])).exists()


def test_corrupt_images_listed_and_skipped_with_flag(tmp_path: Path, synthetic_dataset: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    root = _dataset_with_bad_images(tmp_path, synthetic_dataset)
    ds = load_karpathy(root)
    bad_records = ds.split("test")[:2]
    cache = compute_features(tiny_backbone, karpathy_inputs(ds, ["test"]), cache_root=tmp_path / "c",
                             skip_corrupt=True)
    assert sorted(Path(p).name for p in cache.corrupt_images) == sorted(ds.image_path(r).name for r in bad_records)
    assert len(cache.images.ids) == 14
    bad_captions = {c.caption_id for r in bad_records for c in r.captions}
    assert not bad_captions & set(cache.texts.ids.tolist())
    assert len(cache.texts.ids) == 70


def test_missing_image_is_named(tmp_path: Path, synthetic_dataset: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, root)
    ds = load_karpathy(root)
    victim = ds.image_path(ds.split("val")[5])
    victim.unlink()
    with pytest.raises(CorruptImageError, match=f"missing: .*{victim.name}"):
        compute_features(tiny_backbone, karpathy_inputs(ds, ["val"]), cache_root=tmp_path / "c")


def test_a_cache_of_more_splits_serves_a_subset(tiny_backbone, synthetic_dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = load_karpathy(synthetic_dataset)
    full = compute_features(tiny_backbone, karpathy_inputs(dataset, ["test", "val"]), cache_root=tmp_path)
    calls: list[str] = []
    subset = compute_features(tiny_backbone, karpathy_inputs(dataset, ["val"]), cache_root=tmp_path,
                              after_shard=lambda kind, _index: calls.append(kind))
    assert calls == []  # nothing was encoded again
    val = dataset.split("val")
    assert sorted(int(i) for i in subset.images.ids) == sorted(r.image_id for r in val)
    assert len(subset.texts.ids) == sum(len(r.captions) for r in val)
    row = int(subset.images.ids[0])
    assert torch.equal(subset.images.rows([row]), full.images.rows([row]))


def test_features_of_any_item_list(tiny_backbone, synthetic_dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The cache takes a plain list of image files and texts with ids; a Karpathy split is one such list."""
    dataset = load_karpathy(synthetic_dataset)
    split = karpathy_inputs(dataset, ["val"])
    assert split.splits == ("val",) and split.origin == str(dataset.json_path)
    assert [i.id for i in split.images] == [r.image_id for r in dataset.split("val")]
    assert split.images[0].path == dataset.image_path(dataset.split("val")[0])
    assert [(t.id, t.image_id) for t in split.texts[:2]] == [(c.caption_id, dataset.split("val")[0].image_id)
                                                             for c in dataset.split("val")[0].captions[:2]]
    listed = FeatureInputs("my-list", "made by hand", ("all",),
                           tuple(ImageInput(100 + n, i.path) for n, i in enumerate(split.images[:3])),
                           (TextInput(7, "a red square", 101), TextInput(8, split.texts[0].text, 100)))
    ours = compute_features(tiny_backbone, listed, cache_root=tmp_path, shard_size=2)
    assert ours.directory == cache_directory(tmp_path, tiny_backbone.fingerprint, listed)
    assert ours.directory.name == "my-list-all"
    reference = compute_features(tiny_backbone, split, cache_root=tmp_path)
    assert torch.equal(ours.images.rows([100, 102]), reference.images.rows([split.images[0].id, split.images[2].id]))
    # texts are batched with others (padded alike), so equal up to rounding
    assert torch.allclose(ours.texts.rows([8]), reference.texts.rows([split.texts[0].id]), atol=1e-5)
    assert sorted(ours.texts.ids.tolist()) == [7, 8]


def test_a_cache_recorded_with_a_relative_dataset_path_serves_an_absolute_one(
        tiny_backbone, synthetic_dataset, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(synthetic_dataset.parent)
    compute_features(tiny_backbone, karpathy_inputs(load_karpathy(Path(synthetic_dataset.name)), ["test", "val"]),
                     cache_root=tmp_path)
    calls: list[str] = []
    subset = compute_features(tiny_backbone, karpathy_inputs(load_karpathy(synthetic_dataset.resolve()), ["val"]),
                              cache_root=tmp_path, after_shard=lambda kind, _index: calls.append(kind))
    assert calls == [] and len(subset.images.ids) == 16  # nothing was encoded again


def test_an_index_build_asks_for_the_same_features_as_training(synthetic_dataset) -> None:  # type: ignore[no-untyped-def]
    """A Karpathy collection of the indexer names the same cache, with the same items, as the training's
    ``karpathy_inputs``: an index build reuses the features training computed."""
    from indexer.collection import load_karpathy_collection

    for splits in (("test",), ("val", "test")):
        collection = load_karpathy_collection(synthetic_dataset, splits)
        assert collection.feature_inputs == karpathy_inputs(load_karpathy(synthetic_dataset), splits)


def test_caption_features_are_in_shard_order_whatever_the_batching(tmp_path: Path, synthetic_dataset: Path,
                                                                    tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    """Captions are batched by length and tokenised ahead across shards; each row still holds its own caption."""
    ds = load_karpathy(synthetic_dataset)
    small = compute_features(tiny_backbone, karpathy_inputs(ds, ["val"]), cache_root=tmp_path / "a", shard_size=7,
                             text_batch_size=3)
    captions = [c for r in ds.split("val") for c in r.captions]
    assert small.texts.ids.tolist() == [c.caption_id for c in captions]
    expected = torch.cat([tiny_backbone.text_features(tiny_backbone.tokenizer([c.text])) for c in captions])
    assert torch.allclose(small.texts.features, expected, atol=1e-5)


def test_caption_tokens_are_tokenised_once_per_cache(tmp_path: Path, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                                     tiny_backbone) -> None:
    from core.feature_cache import TOKENS_FILE
    from core.vocab import tokenize_in_batches
    from training.features import split_features

    ds = load_karpathy(synthetic_dataset)
    cache = compute_features(tiny_backbone, karpathy_inputs(ds, SPLITS), cache_root=tmp_path, shard_size=16)
    calls: list[int] = []

    def counting(texts):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return tiny_backbone.tokenizer(texts)

    val = split_features(ds, cache, "val", tokenizer=counting)
    assert val.caption_terms is not None and (cache.directory / TOKENS_FILE).is_file()
    assert torch.equal(val.caption_terms, tokenize_in_batches(tiny_backbone.tokenizer, val.caption_texts))
    assert sum(calls) == val.num_pairs
    calls.clear()
    again = split_features(ds, load_feature_cache(cache.directory), "val", tokenizer=counting)
    assert calls == [] and again.caption_terms is not None  # read from the table, not tokenised
    assert torch.equal(again.caption_terms, val.caption_terms)
    train = split_features(ds, cache, "train", tokenizer=counting)  # another split: only its captions are added
    assert sum(calls) == train.num_pairs
    assert torch.equal(train.caption_terms, tokenize_in_batches(tiny_backbone.tokenizer, train.caption_texts))
    assert torch.equal(split_features(ds, cache, "val", tokenizer=counting).caption_terms, val.caption_terms)
