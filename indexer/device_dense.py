"""The exact dense leg on an accelerator: every row's inner product with the query (one matrix product over the
side's stored vectors, held on the device) and the device's top k.

A side's FAISS index is approximate above a measured size (IVF) and searched on the CPU. When the service runs with
a CUDA device, the whole side fits the device's memory (1M x 256 float32 is 1 GB) and scoring every row costs less
than probing the lists on the host: the dense leg is then exact and filters cost nothing extra (rows a filter or a
delete excludes are masked before the top k). The vectors stay float32, as stored: the leg's scores select the
candidates that the forward store rescores, and an exact leg keeps the dense-first bound exact
(indexer/dense_first.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from indexer.query import Query
from indexer.searchers import Ranking, ranking_of

COPY_ROWS = 65_536  # rows copied to the device at a time: the stored vectors are read once, never all in host memory


class DeviceMatrix:
    """A side's dense vectors copied to ``device`` once (the reader holds one per side)."""

    def __init__(self, dense: np.ndarray, device: str) -> None:
        self.device = torch.device(device)
        self.rows = int(dense.shape[0])
        self.vectors = torch.empty((self.rows, int(dense.shape[1])), dtype=torch.float32, device=self.device)
        for start in range(0, self.rows, COPY_ROWS):  # a read-only memory map: each chunk is copied out first
            chunk = np.array(dense[start:start + COPY_ROWS], np.float32)
            self.vectors[start:start + chunk.shape[0]].copy_(torch.from_numpy(chunk))

    def mask(self, allowed: np.ndarray) -> torch.Tensor:
        """A mask over the rows (True: the row may be returned) on the device."""
        return torch.from_numpy(np.ascontiguousarray(allowed, bool)).to(self.device, non_blocking=True)


class DeviceDenseLeg:
    """Dense leg: exact inner-product top k over a side on the device; ``allowed`` (a mask over its rows, or None
    for every row) keeps a filter's or the live rows."""

    def __init__(self, matrix: DeviceMatrix, allowed: np.ndarray | None = None, *, name: str = "device") -> None:
        self.matrix, self.name = matrix, name
        self.allowed_count = matrix.rows if allowed is None else int(np.count_nonzero(allowed))
        self.allowed = None if allowed is None or self.allowed_count == matrix.rows else matrix.mask(allowed)

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        k = min(k, self.allowed_count)
        if not queries or k <= 0:
            return [Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        batch = torch.from_numpy(np.stack([np.asarray(q.dense, np.float32) for q in queries]))
        with torch.inference_mode():
            scores = batch.to(self.matrix.device, non_blocking=True) @ self.matrix.vectors.T
            if self.allowed is not None:
                scores.masked_fill_(~self.allowed, float("-inf"))
            top = torch.topk(scores, k, dim=1)
            values, rows = top.values.cpu().numpy(), top.indices.cpu().numpy()
        return [ranking_of(r, s) for r, s in zip(rows, values, strict=True)]
