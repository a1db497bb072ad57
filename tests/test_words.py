"""Whole-word terms: the analyzer, the word vocabulary (with and without merged inflections), the term space and a
word head's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, read_manifest
from core.terms import TermSpace
from core.words import PAD_TERM, WordVocabulary, base_forms, content_words, normalized_words
from tests.conftest import GROUNDED_HEAD, save_tiny_checkpoint


def test_the_analyzer_normalises_lowers_and_splits_into_content_words() -> None:
    assert normalized_words("A CAFÉ's ﬁsh-bowl, 2 dogs!") == ["a", "café", "s", "fish", "bowl", "2", "dogs"]
    # stopwords, single characters and repeats go; order is kept
    assert content_words("The dog and the DOG run to a T-shirt") == ["dog", "run", "shirt"]
    assert content_words("Ein Mädchen läuft über die Straße") == ["ein", "mädchen", "läuft", "über", "die", "straße"]
    assert content_words("!!! ... of the") == []
    assert content_words("snake_case") == ["snake", "case"]  # '_' separates words, as punctuation does


def test_a_word_vocabulary_holds_caption_words_by_document_frequency() -> None:
    captions = ["A dog runs on the beach", "Two dogs on a beach", "a dog", "A skateboarder does a trick"]
    every = WordVocabulary.from_captions(captions)
    # 'does' is a stopword
    assert every.words == sorted(every.words) == ["beach", "dog", "dogs", "runs", "skateboarder", "trick", "two"]
    assert WordVocabulary.from_captions(captions, min_df=2).words == ["beach", "dog"]
    vocabulary = every.vocabulary
    assert vocabulary.tokens[0] == PAD_TERM and vocabulary.special_ids == {0}
    assert [vocabulary.display(i) for i in range(1, 4)] == ["beach", "dog", "dogs"]
    assert vocabulary.content_mask().tolist() == [False] + [True] * len(every)

    rows = every.rows(["the dog on the beach, the dog", "nothing known here", ""])
    assert rows.dtype == torch.long and rows.shape == (3, 2)
    assert rows[0].tolist() == [every.term_of("dog"), every.term_of("beach")]  # each term once, in order
    assert rows[1].tolist() == rows[2].tolist() == [0, 0]
    assert every.unmatched("Celtic harp on the beach") == ["celtic", "harp"]


def test_merged_inflections_share_a_term_shown_as_the_most_frequent_form() -> None:
    captions = ["a dog runs", "two dogs running", "dogs play", "a man is riding", "people ride bikes", "a riding horse",
                "a wine glass", "we win"]
    merged = WordVocabulary.from_captions(captions, inflections=True)
    assert ("dogs", "dog") in merged.terms  # 'dogs' in 2 captions, 'dog' in 1: the term shows 'dogs'
    dogs = merged.term_of("dog")
    assert dogs == merged.term_of("dogs") and merged.vocabulary.display(dogs) == "dogs"
    assert merged.term_of("riding") == merged.term_of("ride") and merged.term_of("running") == merged.term_of("runs")
    assert merged.term_of("wine") != merged.term_of("win")  # a word is never cut to another word by itself
    # a form the captions never used finds its base's term; without merging it is unmatched
    assert merged.term_of("playing") == merged.term_of("play") != 0
    kept = WordVocabulary.from_captions(captions)
    assert kept.term_of("playing") == 0 and kept.unmatched("dogs playing") == ["playing"]
    assert kept.term_of("dog") != kept.term_of("dogs")
    # min_df counts captions holding any form of the term
    assert "dogs" in WordVocabulary.from_captions(captions, min_df=3, inflections=True).words
    assert WordVocabulary.from_captions(captions, min_df=3).words == []


def test_words_of_their_own_keep_their_term_while_their_plurals_join_it() -> None:
    captions = ["a boy in red shorts", "a girl with short hair", "a dog panting", "blue pants", "two buildings",
                "a tall building", "a man builds", "a tired man", "a bike tire", "bike tires", "wine glasses",
                "a glass of wine"]
    merged = WordVocabulary.from_captions(captions, inflections=True)
    for form, other in (("shorts", "short"), ("pants", "panting"), ("glasses", "glass"), ("tired", "tire"),
                        ("building", "builds")):
        assert merged.term_of(form) != merged.term_of(other) != 0, form
    assert merged.term_of("buildings") == merged.term_of("building")
    assert merged.term_of("tires") == merged.term_of("tire")
    assert merged.term_of("weddings") == 0  # no caption says wedding: a query's plural of it finds nothing


def test_homographs_keep_their_own_terms() -> None:
    """A form whose base is mostly read in another sense is not merged with it: a parked car is not in a park."""
    captions = ["a dog in the park", "cars parked on the street", "a train at the station", "dog training",
                "a woman with earrings", "a dog with floppy ears", "a dog leaving the water", "autumn leaves",
                "a dog runs through the woods", "a pile of wood", "a woman dressed in red", "a red dress",
                "the dog is sticking out its tongue", "a dog with a stick", "two dogs in the park"]
    merged = WordVocabulary.from_captions(captions, inflections=True)
    for form, other in (("parked", "park"), ("training", "train"), ("earrings", "ears"), ("leaves", "leaving"),
                        ("woods", "wood"), ("dressed", "dress"), ("sticking", "stick")):
        assert merged.term_of(form) != merged.term_of(other) != 0, form
    assert merged.term_of("earring") == merged.term_of("earrings")  # the singular finds the plural's term
    assert merged.term_of("dogs") == merged.term_of("dog")  # the rules still merge a plain plural


def test_irregular_plurals_share_their_singulars_term() -> None:
    captions = ["two men", "a man", "women walking", "a woman", "children play", "a child", "a red scarf",
                "two scarves", "a pair of gloves", "a glove", "people and a person", "a ramen bowl"]
    merged = WordVocabulary.from_captions(captions, inflections=True)
    for plural, singular in (("men", "man"), ("women", "woman"), ("children", "child"), ("scarves", "scarf"),
                             ("gloves", "glove")):
        assert merged.term_of(plural) == merged.term_of(singular) != 0, plural
    assert merged.term_of("people") != merged.term_of("person")  # a word of its own as often as a plural
    assert merged.term_of("ramen") not in (0, merged.term_of("man"))  # -men joins only a -man word
    assert merged.term_of("policemen") == 0  # neither form in the captions: no term to join
    assert len(merged) == len(WordVocabulary.from_captions(captions)) - 5


@pytest.mark.parametrize(("word", "bases"), [
    ("puppies", ["puppy", "puppie"]), ("boxes", ["box", "boxe"]), ("dogs", ["dog"]),
    ("running", ["run"]), ("riding", ["ride", "rid"]), ("jumped", ["jumpe", "jump"]), ("grass", []), ("bus", []),
    ("sing", []), ("red", []), ("2018s", []), ("shorts", []), ("evening", []), ("buildings", ["building"]),
    ("men", ["man"]), ("firemen", ["fireman"]), ("children", ["child"]), ("teeth", ["tooth"]), ("people", []),
    ("scarves", ["scarve", "scarf", "scarfe"]), ("lives", ["live"])])
def test_base_forms_follow_conservative_suffix_rules(word: str, bases: list[str]) -> None:
    assert base_forms(word) == bases


def test_a_word_term_starts_from_the_mean_of_its_pieces(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    words = WordVocabulary.from_captions(["a red square", "a blue circle"])
    space = TermSpace(tiny_backbone.vocabulary, tiny_backbone.tokenizer, words)
    embedding = space.embedding(tiny_backbone.token_embedding)
    assert embedding.shape == (len(words) + 1, tiny_backbone.token_embedding.shape[1])
    tokens = tiny_backbone.tokenizer(["square"])[0]
    pieces = [int(t) for t in tokens if int(t) not in tiny_backbone.vocabulary.special_ids]
    assert torch.allclose(embedding[words.term_of("square")], tiny_backbone.token_embedding[pieces].mean(dim=0))
    pieces_space = TermSpace(tiny_backbone.vocabulary, tiny_backbone.tokenizer)
    assert pieces_space.embedding(tiny_backbone.token_embedding) is tiny_backbone.token_embedding
    assert pieces_space.unmatched("anything at all") == [] and not pieces_space.is_words


def test_a_word_heads_checkpoint_carries_its_words(tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    import json

    path = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "best", sparse_head=GROUNDED_HEAD)
    model = load_checkpoint(path).model
    words = model.sparse_head.words
    assert words is not None and len(words) == model.sparse_head.num_terms
    assert read_manifest(path)["words"] == [list(forms) for forms in words.terms]
    manifest = json.loads((path / "checkpoint.json").read_text())
    del manifest["words"]
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="must list its words"):
        load_checkpoint(path)


def test_the_piece_rate_counts_shown_terms_that_are_not_whole_caption_words() -> None:
    from core.readability import readability, whole_word_mask
    from core.vocab import Vocabulary

    pieces = Vocabulary(["[PAD]", "dog", "##board", "skate", "sl", "beach</w>"], [0])
    mask = whole_word_mask(pieces, ["A dog on a skateboard at the beach", "dogs sledding"])
    assert mask.tolist() == [False, True, False, False, False, True]  # BPE's end-of-word marker is not shown
    # one image whose top terms are dog, ##board, skate (3 active) and one whose only term is beach
    weights = torch.tensor([[0.0, 3.0, 2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    targets = torch.zeros_like(weights, dtype=torch.bool)
    out = readability(weights, targets, torch.ones(6, dtype=torch.bool), whole_words=torch.from_numpy(mask))
    assert out["piece_rate@10"] == pytest.approx(2 / 4)
    assert "piece_rate@10" not in readability(weights, targets, torch.ones(6, dtype=torch.bool))


def test_the_report_tables_every_word_option_with_piece_rates_and_hubs(tmp_path: Path) -> None:
    import json

    from training.report import WORD_RUNS, word_sections

    def recall(r1: float) -> dict[str, float]:
        return {"R@1": r1, "R@5": 2 * r1, "R@10": 3 * r1, "RSUM": 6 * r1}

    split = {"sparse": {"t2i": recall(10.0), "i2t": recall(5.0)},
             "integrated": {"t2i": recall(20.0), "i2t": recall(25.0)},
             "sparsity": {"active_terms_query": 6.0, "max_terms_query": 16, "active_terms_doc": 64.0,
                          "max_terms_doc": 64, "flops": 1.25},
             "readability": {"GP@5": 0.5, "GP@10": 0.45, "GP@20": 0.3, "piece_rate@10": 0.0, "query_piece_rate": 0.0,
                             "hub_max_df": 0.56, "hub_median_df": 0.029, "distinct_terms": 1092}}
    name = WORD_RUNS[0][0]
    (tmp_path / "words" / name).mkdir(parents=True)
    (tmp_path / "words" / name / "results.json").write_text(json.dumps({"val": split, "test": split, "best_epoch": 3}))
    probe = {"words": 3189, "min_df": 2, "test": {"GP@5": 0.6, "GP@10": 0.46, "GP@20": 0.32}}
    text = "\n".join(word_sections(tmp_path, probe))
    row = next(line for line in text.splitlines() if line.startswith(f"| {WORD_RUNS[0][1]} |"))
    assert row.split(" | ")[1:8] == ["10.0", "5.0", "90.0", "20.0", "25.0", "270.0", "6.0 (16)"]
    assert "| 0.450 |" in row and "| 0.000 | 0.000 | 0.560 | 0.0290 | 1092 | 3 |" in row
    assert text.count("(not run)") == 2 * (len(WORD_RUNS) - 1)  # both splits
    assert "3,189 words" in text and "0.600 / 0.460 / 0.320 on test" in text
    assert word_sections(tmp_path / "nothing") == []
