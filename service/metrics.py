"""Prometheus metrics of one app (prometheus_client): requests by route and status, search latency by mode and
side, shard searches by plan, text queries' words without a sparse term, writes by operation and outcome, requests
shed and pending, compactions by outcome and duration, and the client's process, Python and garbage-collector
metrics. Each app has its own registry, so
several apps in one process (tests) do not share counts."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# a compaction rewrites the published indexes: seconds on a small collection, minutes on a large one
COMPACTION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        self._requests = Counter("duet_http_requests", "HTTP requests by method, route and status.",
                                 ("method", "route", "status"), registry=self.registry)
        self._search = Histogram("duet_search_seconds", "Search latency (encode to response) by mode and side.",
                                 ("mode", "side"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self._plans = Counter("duet_search_plans", "Shard searches by plan (exact: brute force over the allowed "
                              "rows; index: the legs' indexes) and whether the search had a filter.",
                              ("plan", "filtered"), registry=self.registry)
        self._writes = Counter("duet_writes", "Write requests by operation (upsert, delete) and outcome "
                               "(ok, rejected, not_found, error).", ("op", "outcome"), registry=self.registry)
        self._shed = Counter("duet_shed_requests", "Requests refused or dropped under load, by reason (queue_full, "
                             "queue_wait, deadline, client_gone; bodies: body_budget, body_stalled, body_deadline, "
                             "body_too_slow).",
                             ("reason",), registry=self.registry)
        self._pending = Gauge("duet_pending_requests", "Admitted requests holding engine work (waiting or running).",
                              registry=self.registry)
        self._unmatched = Counter("duet_query_unmatched_words", "Content words of text queries that the model has no "
                                  "sparse term for (outside a word model's vocabulary).", registry=self.registry)
        self._unmatched_queries = Counter("duet_queries_with_unmatched_words", "Text queries with at least one "
                                          "content word that has no sparse term.", registry=self.registry)
        self._compactions = Counter("duet_compactions", "Compactions by outcome (ok, error, rolled_back: the "
                                    "service stopped first).", ("outcome",), registry=self.registry)
        self._compaction_seconds = Histogram("duet_compaction_seconds", "Compaction duration.",
                                             buckets=COMPACTION_BUCKETS, registry=self.registry)

    def observe_request(self, method: str, route: str, status: int) -> None:
        self._requests.labels(method, route, str(status)).inc()

    def observe_search(self, mode: str, side: str, seconds: float) -> None:
        self._search.labels(mode, side).observe(seconds)

    def observe_plans(self, plans: dict[str, int], *, filtered: bool) -> None:
        """The plans a search's shards chose (indexer/planner.py), each shard once."""
        for plan, shards in plans.items():
            self._plans.labels(plan, "true" if filtered else "false").inc(shards)

    def observe_unmatched_words(self, count: int) -> None:
        """A text query's content words without a term (0 counts the query as fully matched)."""
        if count:
            self._unmatched.inc(count)
            self._unmatched_queries.inc()

    def observe_write(self, op: str, outcome: str) -> None:
        self._writes.labels(op, outcome).inc()

    def observe_shed(self, reason: str) -> None:
        self._shed.labels(reason).inc()

    def set_pending(self, pending: int) -> None:
        self._pending.set(pending)

    def observe_compaction(self, outcome: str, seconds: float) -> None:
        self._compactions.labels(outcome).inc()
        self._compaction_seconds.observe(seconds)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
