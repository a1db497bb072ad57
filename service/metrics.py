"""Prometheus text exposition for request counts and search latency (no client library needed for this much)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._search_count: dict[tuple[str, str], int] = defaultdict(int)
        self._search_sum: dict[tuple[str, str], float] = defaultdict(float)
        self._search_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))

    def observe_request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1

    def observe_search(self, mode: str, side: str, seconds: float) -> None:
        key = (mode, side)
        with self._lock:
            self._search_count[key] += 1
            self._search_sum[key] += seconds
            buckets = self._search_buckets[key]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1

    def render(self) -> str:
        lines = ["# HELP duet_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE duet_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f'duet_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP duet_search_seconds Search latency (encode to response) by mode and side.",
                      "# TYPE duet_search_seconds histogram"]
            for (mode, side), count in sorted(self._search_count.items()):
                labels = f'mode="{mode}",side="{side}"'
                for bound, n in zip(LATENCY_BUCKETS, self._search_buckets[(mode, side)], strict=True):
                    lines.append(f'duet_search_seconds_bucket{{{labels},le="{bound}"}} {n}')
                lines.append(f'duet_search_seconds_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"duet_search_seconds_sum{{{labels}}} {self._search_sum[(mode, side)]:.6f}")
                lines.append(f"duet_search_seconds_count{{{labels}}} {count}")
        return "\n".join(lines) + "\n"
