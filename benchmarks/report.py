"""Markdown tables from the JSON reports of ``python -m benchmarks search`` and ``synthetic``."""

from __future__ import annotations

from typing import Any


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def quality_table(report: dict[str, Any]) -> list[str]:
    q = report["quality"]
    rows = []
    for mode in ("dense", "sparse", "hybrid", "sparse_exact"):
        cells = [mode if mode != "sparse_exact" else "sparse, exact scoring (reference)"]
        for direction in ("t2i", "i2t"):
            cells += [f"{q[direction][mode][f'R@{k}']:.2f}" for k in (1, 5, 10)]
        rows.append([*cells, f"{q['rsum'][mode]:.1f}"])
    return _table(["mode", "t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10", "RSUM"], rows)


def latency_table(latency: dict[str, Any]) -> list[str]:
    rows = [[name, f"{v['p50']:.1f}", f"{v['p95']:.1f}", f"{v['p99']:.1f}"]
            for name, v in latency["search_only"].items()]
    for name, v in latency.get("with_text_encoding", {}).items():
        rows.append([f"{name} + text encoding", f"{v['p50']:.1f}", f"{v['p95']:.1f}", f"{v['p99']:.1f}"])
    return _table(["configuration (1 thread)", "p50 ms", "p95 ms", "p99 ms"], rows)


def size_table(sizes: dict[str, Any]) -> list[str]:
    rows = []
    for side, s in sizes.items():
        b = s["bytes_per_item"]
        rows.append([side, s["count"], f"{s['mean_terms']:.0f}", f"{b['sparse_lucene']:.0f}", f"{b['dense_faiss']:.0f}",
                     f"{s['lucene_vs_faiss']:.2f}", f"{b['sparse_store']:.0f}", f"{b['dense_store']:.0f}"])
    return _table(["side", "items", "terms/item", "Lucene B/item", "FAISS B/item", "Lucene/FAISS",
                   "sparse forward store B/item", "dense store B/item"], rows)
