"""Saved backbone facts: a run on cached features builds no towers, and no saved fact outlives what made it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from core.backbone import StaleBackboneFactsError
from core.backbone_facts import FACTS_FILE, TOKENS_FILE, RememberingTokenizer, facts_key, load_backbone
from core.config import BackboneConfig
from tests.conftest import TINY_MODEL, tiny_backbone_config
from training.config import build_config
from training.presets import PRESETS
from training.trainer import prepare_workspace, train

TEXTS = ["a red square on blue", "the dot is green", "stripe"]


def _tiny() -> BackboneConfig:
    return BackboneConfig.model_validate(tiny_backbone_config())


def test_saved_facts_give_the_built_backbone_without_building_it(tmp_path: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    first = load_backbone(_tiny(), tmp_path)
    assert first.towers is not None  # nothing saved yet: built, and its facts saved
    saved = load_backbone(_tiny(), tmp_path)
    assert saved.towers is None
    assert saved.fingerprint == tiny_backbone.fingerprint == first.fingerprint
    assert saved.description == tiny_backbone.description
    assert saved.vocabulary.tokens == tiny_backbone.vocabulary.tokens
    assert saved.vocabulary.special_ids == tiny_backbone.vocabulary.special_ids
    assert saved.pad_id_for_trimming == tiny_backbone.pad_id_for_trimming
    for name in ("token_embedding", "image_projection", "text_projection"):
        assert torch.equal(getattr(saved, name), getattr(tiny_backbone, name)), name
    assert torch.equal(saved.term_tokenizer(TEXTS), tiny_backbone.tokenizer(TEXTS))


def test_a_saved_backbone_builds_its_towers_at_the_first_encode(tmp_path: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    load_backbone(_tiny(), tmp_path)
    saved = load_backbone(_tiny(), tmp_path).to("cpu")
    assert saved.towers is None and saved.device == torch.device("cpu")
    tokens = tiny_backbone.tokenizer(TEXTS)
    assert torch.equal(saved.text_features(tokens), tiny_backbone.text_features(tokens))
    assert saved.towers is not None
    pixels = torch.rand(2, 3, 32, 32)
    assert torch.equal(saved.image_features(pixels), tiny_backbone.image_features(pixels))


def test_the_term_tokenizer_remembers_and_asks_the_towers_only_for_new_texts(tmp_path: Path,
                                                                              tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    load_backbone(_tiny(), tmp_path)
    asked: list[list[str]] = []

    def towers_tokenizer(texts: list[str]) -> torch.Tensor:
        asked.append(list(texts))
        return tiny_backbone.tokenizer(texts)

    path = tmp_path / "tokens.pt"
    remembering = RememberingTokenizer(path, lambda: towers_tokenizer)
    assert torch.equal(remembering([*TEXTS, TEXTS[0]]), tiny_backbone.tokenizer([*TEXTS, TEXTS[0]]))
    assert asked == [sorted(set(TEXTS))]
    again = RememberingTokenizer(path, lambda: pytest.fail("a remembered text built the towers"))  # type: ignore[arg-type,return-value]
    assert torch.equal(again(TEXTS[::-1]), tiny_backbone.tokenizer(TEXTS[::-1]))
    assert again([]).shape[0] == 0
    other_run = RememberingTokenizer(path, lambda: towers_tokenizer)
    other_run(TEXTS)  # reads the file now, before "a yellow dot" is added to it
    remembering(["a yellow dot"])
    assert asked[-1] == ["a yellow dot"]
    other_run(["a black stripe"])
    third = RememberingTokenizer(path, lambda: pytest.fail("a run's words were lost"))  # type: ignore[arg-type,return-value]
    assert torch.equal(third(["a yellow dot", "a black stripe", *TEXTS]),
                       tiny_backbone.tokenizer(["a yellow dot", "a black stripe", *TEXTS]))

    saved = load_backbone(_tiny(), tmp_path)
    saved.term_tokenizer(TEXTS)
    assert saved.towers is not None  # the facts' own tokens file lacked them: built for them once
    rerun = load_backbone(_tiny(), tmp_path)
    rerun.term_tokenizer(TEXTS)
    assert rerun.towers is None  # remembered now


def test_an_unreadable_tokens_file_is_tokenised_afresh(tmp_path: Path, tiny_backbone,  # type: ignore[no-untyped-def]
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.pt"
    path.write_bytes(b"not a tensor file")
    with caplog.at_level(logging.WARNING):
        out = RememberingTokenizer(path, lambda: tiny_backbone.tokenizer)(TEXTS)
    assert torch.equal(out, tiny_backbone.tokenizer(TEXTS))
    assert "unreadable" in caplog.text
    assert torch.equal(RememberingTokenizer(path, lambda: pytest.fail("not remembered"))(TEXTS), out)  # type: ignore[arg-type,return-value]


def test_unreadable_facts_are_rebuilt_and_saved_again(tmp_path: Path, tiny_backbone,  # type: ignore[no-untyped-def]
                                                      caplog: pytest.LogCaptureFixture) -> None:
    load_backbone(_tiny(), tmp_path)
    key = facts_key(_tiny())
    assert key is not None
    (tmp_path / key / FACTS_FILE).write_bytes(b"\x00" * 64)
    with caplog.at_level(logging.WARNING):
        rebuilt = load_backbone(_tiny(), tmp_path)
    assert rebuilt.towers is not None and rebuilt.fingerprint == tiny_backbone.fingerprint
    assert "unreadable" in caplog.text
    assert load_backbone(_tiny(), tmp_path).towers is None


def test_facts_that_do_not_match_the_towers_stop_at_the_build(tmp_path: Path) -> None:
    load_backbone(_tiny(), tmp_path)
    key = facts_key(_tiny())
    assert key is not None
    facts = torch.load(tmp_path / key / FACTS_FILE, weights_only=True)
    facts["fingerprint"] = "0" * 16  # as if the towers had changed under an unchanged key
    torch.save(facts, tmp_path / key / FACTS_FILE)
    stale = load_backbone(_tiny(), tmp_path)
    assert stale.fingerprint == "0" * 16
    with pytest.raises(StaleBackboneFactsError, match="remove the saved backbone facts"):
        stale.image_features(torch.rand(1, 3, 32, 32))


def test_every_input_of_the_build_is_in_the_key(tmp_path: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    architecture = tmp_path / "tiny-copy.json"
    shutil.copy(TINY_MODEL, architecture)
    base = BackboneConfig(kind="open_clip", model_name=str(architecture))
    key = facts_key(base)
    assert key is not None and key == facts_key(base)
    assert facts_key(base.model_copy(update={"init_seed": 1})) != key
    spec = json.loads(architecture.read_text())
    spec["embed_dim"] = 16
    architecture.write_text(json.dumps(spec))
    assert facts_key(base) != key  # same name, other architecture

    import open_clip

    model = open_clip.create_model("duet-tiny-test", pretrained=None)  # registered by the tiny backbone
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    local = BackboneConfig(kind="open_clip", model_name=TINY_MODEL, pretrained=str(checkpoint))
    before = facts_key(local)
    assert before is not None
    torch.nn.init.constant_(model.visual.proj, 0.25)
    torch.save(model.state_dict(), checkpoint)  # rewritten in place: a new modification time
    assert facts_key(local) != before
    # a hub tag is read from a cache this code cannot identify: always built, nothing saved
    assert facts_key(BackboneConfig(kind="open_clip", model_name="ViT-B-32", pretrained="some_hub_tag")) is None


def test_a_run_on_cached_features_builds_no_towers(tmp_path: Path, synthetic_dataset: Path) -> None:
    overrides = [f"data.dataset_dir={synthetic_dataset}", f"data.cache_root={tmp_path / 'cache'}",
                 "model.backbone.kind=open_clip", f"model.backbone.model_name={TINY_MODEL}",
                 "model.backbone.embed_dim=32", "optim.batch_size=32", "optim.epochs=1", "eval_batch_size=64"]
    align = build_config(PRESETS["align"], overrides=overrides)
    built = prepare_workspace(align)
    assert built.backbone.towers is not None  # nothing saved yet: built, and the features computed
    train(align, tmp_path / "align", workspace=built)
    grounded = build_config({**PRESETS["grounded"], "init_checkpoint": str(tmp_path / "align" / "best")},
                            overrides=[*overrides, "model.sparse_head.vocabulary=words"])
    train(grounded, tmp_path / "first", workspace=prepare_workspace(grounded))  # tokenises its words once
    from_facts = prepare_workspace(grounded)
    assert from_facts.backbone.towers is None
    train(grounded, tmp_path / "from-facts", workspace=from_facts)
    assert from_facts.backbone.towers is None  # set-up, the epoch and the final evaluation needed none
    assert (tmp_path / "cache" / "backbones" / str(facts_key(grounded.model.backbone)) / TOKENS_FILE).is_file()
    train(grounded, tmp_path / "built", workspace=built)
    test_of = {run: json.loads((tmp_path / run / "results.json").read_text())["test"]
               for run in ("from-facts", "built")}
    assert test_of["from-facts"] == test_of["built"]


def test_features_missing_beside_saved_facts_are_computed_by_towers_built_then(tmp_path: Path,
                                                                                 synthetic_dataset: Path) -> None:
    config = build_config(PRESETS["align"], overrides=[
        f"data.dataset_dir={synthetic_dataset}", f"data.cache_root={tmp_path / 'cache'}",
        "model.backbone.kind=open_clip", f"model.backbone.model_name={TINY_MODEL}", "model.backbone.embed_dim=32"])
    first = prepare_workspace(config)
    assert first.backbone.towers is not None
    shutil.rmtree(first.cache.directory)  # the features go; the saved facts stay
    again = prepare_workspace(config)
    assert again.backbone.build is not None  # read from the saved facts,
    assert again.backbone.towers is not None  # then built to encode (with the saved fingerprint)
    assert again.cache.directory == first.cache.directory
    assert torch.equal(again.cache.images.features, first.cache.images.features)
    assert torch.equal(again.cache.texts.features, first.cache.texts.features)
