"""The shared search path: Lucene agrees with exact scoring, hybrid rescoring is exact, explanations add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import ExactScores
from indexer.store import IndexMismatchError

pytestmark = pytest.mark.java  # every test searches a Lucene index


@pytest.fixture(scope="module")
def engine(tiny_index: Path) -> SearchEngine:
    return SearchEngine.open(tiny_index)


def _stored_query(engine: SearchEngine, side: str, row: int) -> Query:
    store = engine.reader.stores[side]
    ids, values = store.sparse.row(row)
    return Query(np.asarray(store.dense[row]), ids, values)


def _exact_top(engine: SearchEngine, query: Query, side: str, k: int) -> list[int]:
    store = engine.reader.stores[side]
    scores = ExactScores(store, engine.reader.vocab_size).sparse(query, np.arange(len(store.ids)))
    return list(np.lexsort((np.arange(scores.size), -scores))[:k])


@pytest.mark.parametrize(("query_side", "target_side"), [("texts", "images"), ("images", "texts")])
def test_lucene_sparse_ranking_agrees_with_exact_scoring(engine: SearchEngine, query_side: str,
                                                         target_side: str) -> None:
    """Lucene's top 10 has the exact top 10's scores, up to the quantisation error bound (tie-aware)."""
    store = engine.reader.stores[target_side]
    step = 0.5 / engine.manifest.quantization["scale"]  # rounding error of one impact, in weight units
    max_doc_mass = max(float(store.sparse.row(r)[1].sum()) for r in range(len(store.ids)))
    for row in range(len(engine.reader.stores[query_side].ids)):
        query = _stored_query(engine, query_side, row)
        found = engine.search(query, SearchParams(side=target_side, mode="sparse", top_k=10)).hits
        lucene = [store.row_of[h.id] for h in found]
        exact = _exact_top(engine, query, target_side, 10)
        scores = ExactScores(store, engine.reader.vocab_size).sparse(query, np.arange(len(store.ids)))
        bound = 2 * step * (float(query.term_weights.sum()) + max_doc_mass) + 2 * query.term_ids.size * step**2
        assert len(lucene) == len(exact)
        assert np.all(np.abs(np.sort(scores[lucene]) - np.sort(scores[exact])) <= bound + 1e-6)


def test_hybrid_scores_are_exact_and_ranked_by_the_integrated_score(engine: SearchEngine) -> None:
    query = engine.encode_text("a red square on blue")
    result = engine.search(query, SearchParams(side="images", mode="hybrid", top_k=8, candidate_k=12))
    store = engine.reader.stores["images"]
    w_dense, w_sparse = engine.default_weights()
    assert result.weights["w_dense"] == w_dense and result.candidates >= 8
    for hit in result.hits:
        dense = float(store.dense[store.row_of[hit.id]] @ query.dense)
        sparse = float(ExactScores(store, engine.reader.vocab_size).sparse(query, np.array([store.row_of[hit.id]]))[0])
        assert hit.dense == pytest.approx(dense, abs=1e-5)
        assert hit.sparse == pytest.approx(sparse, abs=1e-4)
        assert hit.fused == pytest.approx(w_dense * dense / engine.manifest.temperature + w_sparse * sparse, abs=1e-4)
    fused = [h.fused for h in result.hits]
    assert fused == sorted(fused, reverse=True)
    assert [h.rank for h in result.hits] == list(range(1, 9))


def test_dense_mode_matches_brute_force(engine: SearchEngine) -> None:
    query = engine.encode_text("a green dot")
    result = engine.search(query, SearchParams(side="texts", mode="dense", top_k=5))
    scores = engine.reader.stores["texts"].dense @ query.dense
    assert [h.dense for h in result.hits] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-6)


def test_weights_per_request_and_rrf(engine: SearchEngine) -> None:
    query = engine.encode_text("yellow stripe")
    dense_only = engine.search(query, SearchParams(mode="hybrid", top_k=5, w_dense=1.0, w_sparse=0.0,
                                                   candidate_k=32))
    dense = engine.search(query, SearchParams(mode="dense", top_k=5))
    # Same ranking; compared by score, since duplicate synthetic images tie exactly.
    assert [h.dense for h in dense_only.hits] == pytest.approx([h.dense for h in dense.hits], abs=1e-6)
    rrf = engine.search(query, SearchParams(mode="hybrid", fusion="rrf", top_k=5, candidate_k=32))
    assert all(0 < h.fused <= 2 / 61 for h in rrf.hits)
    assert [h.fused for h in rrf.hits] == sorted((h.fused for h in rrf.hits), reverse=True)


def test_offset_pages_through_the_same_ranking(engine: SearchEngine) -> None:
    query = engine.encode_text("a black square")
    full = engine.search(query, SearchParams(top_k=20, candidate_k=40))
    page = engine.search(query, SearchParams(top_k=10, offset=10, candidate_k=40))
    assert [h.id for h in page.hits] == [h.id for h in full.hits[10:20]]
    assert page.hits[0].rank == 11


def test_explanations_add_up_to_the_sparse_score(engine: SearchEngine) -> None:
    query = engine.encode_text("a blue dot on white")
    result = engine.search(query, SearchParams(top_k=3, explain=True))
    vocabulary = {engine.encoder.vocabulary.display(i) for i in range(len(engine.encoder.vocabulary))}
    for hit in result.hits:
        assert hit.explanation is not None
        assert sum(m.contribution for m in hit.explanation.matched_terms) == pytest.approx(hit.sparse, rel=1e-4)
        assert all(term in vocabulary for term, _ in hit.explanation.item_terms)
    assert all(isinstance(t, str) and w > 0 for t, w in engine.query_terms(query))


def test_only_the_first_hits_of_a_page_are_explained(engine: SearchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import indexer.search

    monkeypatch.setattr(indexer.search, "EXPLAINED_HITS", 2)  # the response stays bounded however long the page
    query = engine.encode_text("a blue dot on white")
    page = engine.search(query, SearchParams(top_k=5, offset=3, explain=True))
    assert [hit.explanation is not None for hit in page.hits] == [True, True, False, False, False]


def test_image_queries_search_both_sides(engine: SearchEngine, synthetic_dataset: Path) -> None:
    from PIL import Image

    item = engine.reader.stores["images"].items[0]
    image = Image.open(synthetic_dataset / "images" / item["path"])
    query = engine.encode_image(image)
    same = engine.search(query, SearchParams(side="images", mode="dense", top_k=1))
    assert same.hits[0].id == item["id"]  # an indexed image finds itself
    captions = engine.search(query, SearchParams(side="texts", top_k=5))
    assert len(captions.hits) == 5 and all("#" in h.id for h in captions.hits)


def test_an_index_from_another_checkpoint_is_refused(tiny_index: Path, tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    from tests.conftest import save_tiny_checkpoint

    other = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "other", seed=2)
    with pytest.raises(IndexMismatchError, match="checkpoint content hash"):
        SearchEngine.open(tiny_index, checkpoint=other)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_batched_search_equals_single_queries(engine: SearchEngine, mode: str) -> None:
    queries = [_stored_query(engine, "texts", row) for row in range(0, 40, 4)]
    params = SearchParams(side="images", mode=mode, top_k=5, candidate_k=10)
    batched = engine.search_batch(queries, params, threads=2)
    for query, result in zip(queries, batched, strict=True):
        single = engine.search(query, params)
        assert [h.fused for h in result.hits] == pytest.approx([h.fused for h in single.hits], abs=1e-6)


def test_pruned_lucene_queries_still_score_exactly(engine: SearchEngine) -> None:
    query = engine.encode_text("a red dot on black")
    assert query.term_ids.size > 3
    pruned = engine.search(query, SearchParams(mode="sparse", top_k=5, candidate_k=32, sparse_query_terms=3,
                                               plan="index"))
    full = engine.search(query, SearchParams(mode="sparse", top_k=5, sparse_query_terms=0, plan="index"))
    store = engine.reader.stores["images"]
    for hit in pruned.hits:  # scores use the full query whatever reached Lucene
        exact = ExactScores(store, engine.reader.vocab_size).sparse(query, np.array([store.row_of[hit.id]]))[0]
        assert hit.sparse == pytest.approx(float(exact), abs=1e-4)
    assert pruned.candidates == 32 and full.candidates == 5
    # all 32 images are candidates here, so the exact rescoring recovers the full query's top 5
    assert [h.sparse for h in pruned.hits] == pytest.approx([h.sparse for h in full.hits], abs=1e-4)


@pytest.fixture(scope="module")
def grounded_engine(tiny_grounded_index: Path) -> SearchEngine:
    return SearchEngine.open(tiny_grounded_index)


def test_grounded_query_terms_are_the_querys_own_words(grounded_engine: SearchEngine) -> None:
    encoder = grounded_engine.encoder
    assert encoder.texts_are_own_terms and encoder.inference_free
    query = grounded_engine.encode_text("the red square is on a blue one")
    words = {encoder.vocabulary.word(int(t)) for t in query.term_ids}
    assert words and words <= {"red", "square", "blue", "one"}
    # the sparse leg needs no text tower: the same terms as the full encoding, from the lookup alone
    terms = encoder.encode_text_terms(["the red square is on a blue one"])
    assert np.array_equal(terms.indices, query.term_ids) and np.allclose(terms.values, query.term_weights)
    # indexed captions are their own words too
    store = grounded_engine.reader.stores["texts"]
    for row in range(len(store.ids)):
        ids, _ = store.sparse.row(row)
        caption_words = set(store.items[row]["text"].lower().replace(".", "").split())
        assert {encoder.vocabulary.word(int(t)) for t in ids} <= caption_words


@pytest.mark.parametrize("text", ["the of a", "!!!"])
def test_a_query_without_content_words_has_an_empty_sparse_leg(grounded_engine: SearchEngine, text: str) -> None:
    from indexer.search import EMPTY_SPARSE_WARNING, EmptySparseQueryError

    query = grounded_engine.encode_text(text)
    assert query.term_ids.size == 0
    hybrid = grounded_engine.search(query, SearchParams(mode="hybrid", top_k=5))
    dense = grounded_engine.search(query, SearchParams(mode="dense", top_k=5))
    assert [h.id for h in hybrid.hits] == [h.id for h in dense.hits]
    assert hybrid.warnings == [EMPTY_SPARSE_WARNING] and dense.warnings == []
    with pytest.raises(EmptySparseQueryError, match="no sparse terms"):
        grounded_engine.search(query, SearchParams(mode="sparse", top_k=5))
    with pytest.raises(EmptySparseQueryError):
        grounded_engine.search_batch([query], SearchParams(mode="sparse", top_k=5))
