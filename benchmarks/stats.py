"""Latency summaries every benchmark shares (no index or engine imports: the GPU benchmark runs without them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 as measured samples (numpy's 'nearest' method: no interpolation between two calls), mean, n."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(samples, (50, 95, 99), method="nearest")
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(samples.mean()),
            "n": int(samples.size)}
