"""One published index version as a shard of a collection: its stores, its Lucene and FAISS legs, and the live
segment of writes since it was built (indexer/segments.py).

A search's legs are composed here (``searcher``): FAISS top-k for the dense leg, Lucene impacts with the query's
own quantised term weights for the sparse leg, deleted rows dropped from each, and the delta as one more leg per
score the mode ranks by; every candidate is rescored exactly on both legs from the forward store. The reader stops
before ranking: ``candidates`` answers each leg's candidates with their exact scores, and the one read engine
(indexer/search.py) merges the answers of every shard, ranks them and fetches the hits' ``records``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.encoder import DuetEncoder, vocabulary_digest
from indexer.dense_first import DenseFirstSearcher, FusedBound
from indexer.device_dense import DeviceDenseLeg, DeviceMatrix
from indexer.filters import Allowed, CompiledFilter, Filter, KeywordMatch, Part, compile_filter, is_empty
from indexer.ivf import FilteredIvfLeg, IvfLists, ValueLists
from indexer.lucene import ImpactSearcher
from indexer.merge import UNORDERED, ItemRecord, ShardCandidates
from indexer.params import SearchParams, search_fusion, search_weights
from indexer.payload import KeywordColumn, PayloadIndex, is_keyword
from indexer.planner import EXACT_ROWS, ExactSearcher, Filtered, choose_plan
from indexer.query import Query
from indexer.searchers import (
    ExactScores,
    FaissLeg,
    HybridSearcher,
    LuceneLeg,
    RowScorer,
    Searcher,
    StrongestTerms,
    excluding_rows,
    is_flat,
    within_rows,
)
from indexer.segments import Delta, DeltaLeg, Excluding, Segment, SegmentScores, SideView, unchanged
from indexer.store import (
    IndexManifest,
    IndexUnavailableError,
    SideStore,
    check_binding,
    manifest_in,
    manifest_path,
    opening_index,
)


class IndexReader:
    """An index version plus the encoder it was built with: a collection's shard (a single index is its only one).
    """

    def __init__(self, index_dir: str | Path, *, encoder: DuetEncoder | None = None,
                 checkpoint: str | Path | None = None, sides: tuple[str, ...] | None = None,
                 dense_device: str | None = None) -> None:
        """``dense_device``: where the dense leg scores every row exactly (indexer/device_dense.py); default: the
        encoder's device when it is an accelerator, else FAISS on the CPU."""
        self.index_dir = Path(index_dir)
        # the live version, resolved once and held while it is opened: every read comes from it
        with opening_index(self.index_dir) as directory:
            self.directory = directory
            self._open(encoder, checkpoint, sides, dense_device)

    def _open(self, encoder: DuetEncoder | None, checkpoint: str | Path | None, sides: tuple[str, ...] | None,
              dense_device: str | None) -> None:
        self.manifest: IndexManifest = manifest_in(self.directory, self.index_dir)
        if encoder is None:
            encoder = DuetEncoder.from_checkpoint(Path(checkpoint) if checkpoint is not None else self.checkpoint_dir)
        check_binding(self.manifest, content_hash=encoder.checkpoint.content_hash,
                      backbone_fingerprint=encoder.checkpoint.backbone_fingerprint,
                      vocabulary_digest=vocabulary_digest(encoder.vocabulary))
        self.encoder = encoder
        self.vocab_size = len(encoder.vocabulary)
        scale = float(self.manifest.quantization["scale"])
        self.stores: dict[str, SideStore] = {}
        self.lucene: dict[str, ImpactSearcher] = {}
        self.segments: dict[str, Segment] = {}  # per side: writes since the index was built (indexer/live.py)
        self._exclusions: dict[str, tuple[np.ndarray, Any]] = {}  # per side: FAISS parameters skipping deletes
        self._delta_payloads: dict[str, tuple[Delta, PayloadIndex]] = {}  # per side: the payload of the rows since
        self._ivf_lists: dict[str, IvfLists | None] = {}  # per side: an IVF index's rows by list (filtered probing)
        self._approximate: dict[str, bool] = {}  # per side: its dense index is approximate (the planner asks)
        self._value_lists: dict[tuple[str, str], ValueLists] = {}  # per side and keyword field over IVF lists
        if dense_device is None and encoder.device != "cpu":
            dense_device = str(encoder.device)
        self.dense_device = dense_device
        self._device: dict[str, DeviceMatrix] = {}  # per side, with a dense device: its vectors there
        self._device_live: dict[str, tuple[np.ndarray | None, DeviceDenseLeg]] = {}  # per side: skipping deletes
        for side, side_manifest in self.manifest.sides.items():
            if sides is not None and side not in sides:
                continue
            self.stores[side] = SideStore.load(self.directory / side, side, side_manifest, self.manifest.payload)
            if side_manifest.count <= EXACT_ROWS:  # every search of it is exact: its term postings now, not mid-search
                self.stores[side].term_postings = self.stores[side].sparse.by_term()
            self.segments[side] = unchanged(self.stores[side])
            self._ivf_lists[side] = IvfLists.of(self.stores[side].faiss_index)
            self._value_lists.update(self._keyword_value_lists(side))
            self._approximate[side] = not is_flat(self.stores[side].faiss_index)
            if dense_device is not None:
                self._device[side] = DeviceMatrix(self.stores[side].dense, dense_device)
            self.lucene[side] = ImpactSearcher(self.directory / side / "lucene", scale)
            lucene_docs = self.lucene[side].num_docs()
            if lucene_docs != side_manifest.count:
                raise IndexUnavailableError(f"{self.directory / side}/lucene holds {lucene_docs} "
                                            f"documents, the manifest {side_manifest.count}")

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.stores)

    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint the index was built with (its own copy; format 1: where it was built from)."""
        return manifest_path(self.directory, self.manifest.checkpoint.path)

    @property
    def collection_root(self) -> Path:
        """Where the index's image files are, as recorded at build time (relative to the index directory)."""
        return manifest_path(self.index_dir, self.manifest.collection["root"])

    def _keyword_value_lists(self, side: str) -> dict[tuple[str, str], ValueLists]:
        """The (value, list) centroids of each keyword field of a side with IVF lists, where they fit."""
        lists, store = self._ivf_lists[side], self.stores[side]
        if lists is None:
            return {}
        found = {}
        for field, kind in self.manifest.payload.items():
            column = store.payload.column(field)
            if is_keyword(kind) and isinstance(column, KeywordColumn):
                value_lists = ValueLists.of(lists, column.code_rows(), column.codes, store.dense)
                if value_lists is not None:
                    found[(side, field)] = value_lists
        return found

    def store(self, side: str) -> SideStore:
        if side not in self.stores:
            raise KeyError(f"this index has no {side!r} side (sides: {sorted(self.stores)})")
        return self.stores[side]

    def exact_scores(self, side: str) -> ExactScores:
        return ExactScores(self.store(side), self.vocab_size)

    def view(self, side: str) -> SideView:
        """The side as a search sees it now: the base index and the live segment (writes since, deletes)."""
        return SideView(self.store(side), self.segments.get(side))

    def set_segment(self, side: str, segment: Segment) -> None:
        """Make a side's changes visible to every later search (one reference swap: a search in flight keeps the
        segment it took)."""
        self.store(side)
        self.segments = {**self.segments, side: segment}

    # ----- the legs -----
    def dense_leg(self, side: str, *, excluded: np.ndarray | None = None) -> Searcher:
        """FAISS over a side; ``excluded`` rows (deleted ones) are skipped inside FAISS where the index kind allows
        it, else dropped from an over-fetched answer."""
        index = self.store(side).faiss_index
        if side in self._device:
            return self._device_dense_leg(side, excluded)
        if excluded is None or excluded.size == 0:
            return FaissLeg(index)
        cached = self._exclusions.get(side)
        if cached is None or cached[0] is not excluded:  # one selector per deletes snapshot, not per search
            cached = (excluded, excluding_rows(index, excluded))
            self._exclusions[side] = cached
        parameters = cached[1]
        if parameters is None:
            return Excluding(FaissLeg(index), excluded, int(index.ntotal))
        return FaissLeg(index, parameters=parameters)

    def _filtered_dense_leg(self, side: str, allowed: Allowed) -> Searcher:
        """FAISS over the ``allowed`` rows of a side: an IVF index probes the lists holding them, another kind
        searches with a selector where it takes one, else over-fetches and drops the rest."""
        if side in self._device:
            return DeviceDenseLeg(self._device[side], allowed.mask)
        index = self.store(side).faiss_index
        lists = self._ivf_lists.get(side)
        if lists is not None:
            return FilteredIvfLeg(index, lists, allowed, self.exact_scores(side).dense,
                                  list_scores=self._list_scores(side, allowed.listed_by))
        parameters = within_rows(index, allowed.mask)
        if parameters is not None:
            return FaissLeg(index, parameters=parameters)
        return Filtered(FaissLeg(index), allowed)

    def _list_scores(self, side: str, keyword: KeywordMatch | None) -> Callable[[np.ndarray], np.ndarray] | None:
        """How a filter's IVF leg ranks lists for a query vector: by the centroids of the rows holding the keyword's
        values in each (``ValueLists``), where the field has them."""
        if keyword is None or (value_lists := self._value_lists.get((side, keyword.field))) is None:
            return None
        column = self.store(side).payload.column(keyword.field)
        assert isinstance(column, KeywordColumn)
        return functools.partial(value_lists.scores, column.codes_of(keyword.values))

    def _device_dense_leg(self, side: str, excluded: np.ndarray | None) -> DeviceDenseLeg:
        """The device leg over a side's rows less ``excluded`` (one mask per deletes snapshot, not per search)."""
        excluded = excluded if excluded is not None and excluded.size else None
        cached = self._device_live.get(side)
        if cached is None or cached[0] is not excluded:
            matrix = self._device[side]
            live = None
            if excluded is not None:
                live = np.ones(matrix.rows, bool)
                live[excluded] = False
            cached = (excluded, DeviceDenseLeg(matrix, live))
            self._device_live[side] = cached
        return cached[1]

    def sparse_leg(self, side: str, *, threads: int = 1) -> LuceneLeg:
        self.store(side)
        if side not in self.lucene:
            raise IndexUnavailableError(f"{self.directory}: this index is closed")
        return LuceneLeg(self.lucene[side], threads=threads)

    def searcher(self, params: SearchParams, *, threads: int = 1, name: str = "duet",
                 view: SideView | None = None, allowed: Allowed | None = None) -> HybridSearcher:
        """The searcher of one side through its indexes: the mode's legs, every candidate rescored exactly.

        Hybrid takes each leg's top candidate_k; a sparse search that sends Lucene only its strongest terms widens
        to candidate_k too, so the full-query rescoring can recover what the cut missed. On a side that changed
        since its index was built, deleted rows are dropped from every base leg and the delta is one more leg per
        score the mode ranks by. ``allowed`` (a filter's live rows of the view): FAISS searches
        only those, and the other legs' answers are filtered (indexer/planner.py)."""
        view = view or self.view(params.side)
        legs: dict[str, Searcher] = {}
        term_limit = params.query_term_limit
        sparse: Searcher | None = None
        if params.mode in ("sparse", "hybrid"):
            sparse = StrongestTerms(self.sparse_leg(params.side, threads=threads), term_limit)
        if allowed is None:
            deleted = view.segment.deleted_base_rows
            if params.mode in ("dense", "hybrid"):
                legs["dense"] = self.dense_leg(params.side, excluded=deleted)
            if sparse is not None:
                legs["sparse"] = Excluding(sparse, deleted, view.base_count) if deleted.size else sparse
        else:
            in_base = allowed.below(view.base_count)
            if params.mode in ("dense", "hybrid"):
                legs["dense"] = self._filtered_dense_leg(params.side, in_base)
            if sparse is not None:
                legs["sparse"] = Filtered(sparse, in_base, self.exact_scores(params.side).sparse)
        scores = self._with_delta(legs, view, allowed)
        widen = params.mode == "hybrid" or (params.mode == "sparse" and term_limit is not None)
        return HybridSearcher(legs, scores, search_fusion(self.manifest, params), rank_by=params.rank_by,
                              candidate_k=params.candidate_k if widen else None, name=name)

    def index_plan(self, params: SearchParams, view: SideView, allowed: Allowed | None, *,
                   threads: int = 1) -> HybridSearcher | DenseFirstSearcher:
        """The searcher of the index plan: a hybrid search fused by non-negative weights goes dense first
        (indexer/dense_first.py), every other search through all its legs at once."""
        general = self.searcher(params, threads=threads, view=view, allowed=allowed)
        bound = self.fused_bound(params, view)
        return general if bound is None else DenseFirstSearcher(general, bound)

    def fused_bound(self, params: SearchParams, view: SideView) -> FusedBound | None:
        """The bound a hybrid search fused by non-negative weights settles its top k by (None for another)."""
        w_dense, w_sparse = search_weights(self.manifest, params)
        if params.mode != "hybrid" or params.fusion == "rrf" or w_dense < 0 or w_sparse < 0:
            return None
        ceilings = [view.base.sparse.term_ceilings]
        if view.segment.delta.count:
            ceilings.append(view.segment.delta.sparse.term_ceilings)
        return FusedBound(w_dense / self.manifest.temperature, w_sparse, tuple(ceilings))

    def row_scores(self, view: SideView) -> RowScorer:
        """Exact scores of any row of the view (the base index's and the delta's)."""
        base_scores = self.exact_scores(view.base.side)
        if not view.segment.delta.count:
            return base_scores
        return SegmentScores(base_scores, ExactScores(view.segment.delta, self.vocab_size), view.base_count)

    def _with_delta(self, legs: dict[str, Searcher], view: SideView, allowed: Allowed | None) -> RowScorer:
        """Add the delta (its rows ``allowed`` passes) as one more leg per score the base legs rank by; return the
        scorer over both parts."""
        segment = view.segment
        scores = self.row_scores(view)
        if not segment.delta.count:
            return scores
        delta = ExactScores(segment.delta, self.vocab_size)
        rows = None if allowed is None else view.base_count + np.flatnonzero(allowed.mask[view.base_count:])
        for by in ("dense", "sparse"):
            if by in legs:
                legs[f"delta_{by}"] = DeltaLeg(delta, segment, by, rows=rows)
        return scores

    # ----- filters -----
    def payload_parts(self, view: SideView) -> list[Part]:
        """The view's rows as parts a filter evaluates over: the base index's, and the delta's when it has rows."""
        def rows_of_ids(ids: Sequence[str]) -> np.ndarray:
            rows = [view.row_of(item_id) for item_id in ids]
            return np.array([r for r in rows if r is not None], np.int64)

        parts = [Part(view.base.payload, 0, view.base_count, rows_of_ids)]
        delta = view.segment.delta
        if delta.count:
            cached = self._delta_payloads.get(view.base.side)
            if cached is None or cached[0] is not delta:  # once per write, when a filter first needs it
                cached = delta, PayloadIndex.from_items(self.manifest.payload, delta.items[:delta.count])
                self._delta_payloads[view.base.side] = cached
            parts.append(Part(cached[1], view.base_count, delta.count, rows_of_ids))
        return parts

    @staticmethod
    def live_mask(view: SideView) -> np.ndarray:
        mask = np.ones(len(view), bool)
        mask[view.segment.deleted] = False
        return mask

    def allowed(self, view: SideView, compiled: CompiledFilter | None) -> Allowed:
        """The view's rows that are live and pass the filter (every live row without one); listed as well when a
        keyword's posting holds them all (``CompiledFilter.keywords``)."""
        if compiled is None:
            return Allowed(self.live_mask(view))
        parts = self.payload_parts(view)
        masks = [compiled.mask(part) for part in parts]
        mask = masks[0] if len(masks) == 1 else np.concatenate(masks)  # a fresh array: cleared in place
        mask[view.segment.deleted] = False
        narrowest = compiled.narrowest(parts[0])  # the base part's narrowest match lists every part's rows
        if narrowest is None:
            return Allowed(mask)
        keyword, rows = narrowest
        postings = [rows] + [part.first + keyword.rows(part) for part in parts[1:]]
        candidates = postings[0] if len(postings) == 1 else np.concatenate(postings)
        return Allowed(mask, candidates[mask[candidates]], keyword)

    def compiled(self, filter_: Filter | None) -> CompiledFilter | None:
        """A filter checked against this index's payload fields (``PayloadError`` names a field)."""
        return None if filter_ is None or is_empty(filter_) else compile_filter(filter_, self.manifest.payload)

    def facets(self, side: str, field: str, compiled: CompiledFilter | None) -> dict[Any, int]:
        """How many live items passing the filter hold each value of a payload field."""
        view = self.view(side)
        mask = self.allowed(view, compiled).mask
        counts: dict[Any, int] = {}
        for part in self.payload_parts(view):
            column = part.payload.column(field)
            within = mask[part.first:part.first + part.rows]
            for value, count in column.counts(within).items():
                counts[value] = counts.get(value, 0) + count
        return counts

    # ----- what a shard answers -----
    @staticmethod
    def _keys(view: SideView, rows: np.ndarray) -> np.ndarray:
        """Rows' collection positions: a shard's built rows have theirs; other rows sort after, by row (and by
        shard once placed: ``ShardCandidates.placed``)."""
        keys = UNORDERED + rows
        order = view.base.order
        if order is not None:
            built = rows < view.base_count
            keys[built] = order[rows[built]]
        return keys.astype(np.int64)

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int, *,
                   threads: int = 1) -> list[ShardCandidates]:
        """Each query's candidates for a top k on a side: every leg's, with exact scores (no ranking yet), by the
        plan the rows the search may return call for (indexer/planner.py)."""
        view = self.view(side)
        started = time.perf_counter()
        compiled = self.compiled(params.filter)
        allowed = None if compiled is None else self.allowed(view, compiled)
        live = len(view) - int(view.segment.deleted.size)
        rows = live if allowed is None else allowed.count
        if rows == live:  # a filter every live row passes is no filter: the unfiltered legs, without selectors
            allowed = None
        # a device leg, like an approximate index, costs about the same whatever the filter allows
        plan = choose_plan(params.plan, rows, approximate_index=self._approximate[side] or side in self._device)
        searcher: HybridSearcher | ExactSearcher | DenseFirstSearcher
        if plan == "exact":
            listed = self.allowed(view, None).rows if allowed is None else allowed.rows
            searcher = ExactSearcher(listed, self.row_scores(view), search_fusion(self.manifest, params),
                                     mode=params.mode, fusion=params.fusion, candidate_k=params.candidate_k,
                                     bound=self.fused_bound(params, view))
        else:
            searcher = self.index_plan(params, view, allowed, threads=threads)
        planned_ms = (time.perf_counter() - started) * 1000
        gathered, timings = searcher.gather(queries, k)
        timings["plan_ms"] = planned_ms
        out = []
        for found in gathered:
            by_row = np.argsort(found.rows, kind="stable")  # a single leg's rows come in its ranking's order
            legs = {role: (by_row[np.searchsorted(found.rows[by_row], ranking.rows)], ranking.scores)
                    for role, ranking in found.legs.items()}
            out.append(ShardCandidates(view.ids(found.rows), self._keys(view, found.rows), found.dense,
                                       found.sparse, legs, rows, searcher.candidate_k, timings, plan))
        return out

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]:
        """The live items of these ids on a side (None for one gone since it was found)."""
        view = self.view(side)
        out: list[ItemRecord | None] = []
        for item_id in ids:
            row = view.row_of(item_id)
            if row is None:
                out.append(None)
                continue
            term_ids, weights = view.sparse_row(row)
            out.append(ItemRecord(side, view.item(row), np.asarray(term_ids), np.asarray(weights)))
        return out

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None:
        """The live item with this id and its side (a deleted item is gone)."""
        for side in self.stores:
            view = self.view(side)
            row = view.row_of(item_id)
            if row is not None:
                return side, view.item(row)
        return None

    def close(self) -> None:
        # the searchers' Java objects are released now (ImpactSearcher.close, under the Java lock), not by whichever
        # thread happens to drop this reader last (a live collection's last reader of a replaced version)
        while self.lucene:
            self.lucene.popitem()[1].close()
        self._device.clear()  # the device memory goes with the last search holding a leg
        self._device_live.clear()


class ReaderShard:
    """An index reader as a shard of the read engine, in this process (a read-only index, or one generation of a
    live collection pinned for a read)."""

    def __init__(self, reader: IndexReader, *, name: str = "index", owned: bool = True) -> None:
        """``owned``: closing the shard closes the reader (not so for a generation its live collection owns)."""
        self.reader, self.name, self._owned = reader, name, owned

    @property
    def manifest(self) -> IndexManifest:
        return self.reader.manifest

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int, *,
                   threads: int = 1) -> list[ShardCandidates]:
        return self.reader.candidates(side, queries, params, k, threads=threads)

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]:
        return self.reader.records(side, ids)

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None:
        return self.reader.find(item_id)

    def facets(self, side: str, field: str, filter_: Filter | None) -> dict[Any, int]:
        return self.reader.facets(side, field, self.reader.compiled(filter_))

    def close(self) -> None:
        if self._owned:
            self.reader.close()
