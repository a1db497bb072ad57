"""The scale-out report's arithmetic and tables, on a fabricated report (the benchmark itself needs a Ray cluster,
servers and a real dataset, and is not run here)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.scale_bench import BUILDS, agreement, build_figures, fan_out, pcts, render_scale_out


def _search(p50: float, qps: float) -> dict[str, Any]:
    latency = {"p50": p50, "p90": p50 * 2, "p95": p50 * 3, "p99": p50 * 4, "mean": p50, "max": p50 * 5, "n": 200}
    return {"server": {"ready_seconds": 7.0, "cluster_cpu_share": 0.02}, "queries": 200, "sequential_ms": latency,
            "server_total_ms": {**latency, "p50": p50 - 2}, "server_encode_ms": {**latency, "p50": 3.0},
            "load": {"clients": 4, "queries": 200, "seconds": 200 / qps, "qps": qps, "latency_ms": latency,
                     "failures": 0, "first_failures": []}}


def _build(name: str, total: float, encoding: float) -> dict[str, Any]:
    timings = ({"features_seconds": encoding - 1, "encode_seconds": 1.0, "total_seconds": total - 0.5}
               if name == "single" else {"encode_seconds": encoding, "shards_seconds": total - encoding - 1,
                                         "total_seconds": total - 0.5})
    return {**build_figures(BUILDS[name], {"timings": timings}, {"images": 1000, "texts": 5000}, total),
            "driver_connect_seconds": 1.5 if name == "ray_1_worker" else None}


def _writes(per_second: float) -> dict[str, Any]:
    ack = {"p50": 1000 / per_second, "p99": 2000 / per_second, "n": 40}
    return {"writes": 40, "items_per_write": 6.0, "writes_per_second": per_second, "items_per_second": 6 * per_second,
            "ack_ms": ack, "visible_ms": {"p50": 31.0, "p99": 44.0, "n": 40}, "never_found": 0,
            "polls": {"mean": 1.0, "max": 1}, "found_by_first_poll": 1.0, "poll_ms": {"p50": 30.0, "n": 40}}


def _memory(faiss_bytes: float) -> dict[str, Any]:
    per_item = {"dense_faiss": faiss_bytes, "dense_store": 1024.0, "sparse_lucene": 300.0, "sparse_store": 200.0}
    recall = {"R@1": 20.5, "R@5": 45.25, "R@10": 60.0}
    return {"sizes": {"images": {"count": 1000, "bytes_per_item": per_item}},
            "quality": {"t2i": {"dense": recall, "hybrid": {**recall, "R@1": 25.0}}}}


def fabricated() -> dict[str, Any]:
    search = {"single": _search(10.0, 100.0), "sharded": _search(15.0, 80.0), "ray": _search(30.0, 40.0)}
    return {
        "config": {"batch_size": 64, "queries": 200, "clients": 4, "candidate_k": 100, "write_split": "val"},
        "machine": {"cpu": "Test CPU", "cpus": 2, "torch": "2.x", "torch_threads": 2},
        "cluster": {"nodes": 2, "cpus_per_node": 1, "start_seconds": 8.0, "processes": 14, "idle_cpu_share": 0.03},
        "collection": {"split": "test", "images": 1000, "texts": 5000},
        "checkpoint": {"method": "grounded", "content_hash": "0123456789abcdef"}, "seconds": 900.0,
        "builds": {"single": _build("single", 100.0, 80.0), "sharded": _build("sharded", 110.0, 85.0),
                   "ray_1_worker": _build("ray_1_worker", 200.0, 160.0),
                   "ray_2_workers": _build("ray_2_workers", 120.0, 90.0)},
        "search": search,
        "agreement": {"sharded": {"queries": 200, "identical": 200, "identical_share": 1.0,
                                  "mean_overlap_at_10": 1.0, "differing": 0, "differing_ties_only": 0},
                      "ray": {"queries": 200, "identical": 199, "identical_share": 0.995,
                              "mean_overlap_at_10": 0.9995, "differing": 1, "differing_ties_only": 1}},
        "writes": {"ray": _writes(5.0), "single": _writes(8.0)},
        "memory": {"Flat": _memory(1024.0), "SQ8": _memory(256.0)},
    }


def row(text: str, first_cell: str, after: str = "") -> list[str]:
    """The cells of the first table row whose first cell is ``first_cell`` (below the heading ``after``)."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(after)) if after else 0
    for line in lines[start:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def test_fan_out_ratios_are_sharded_over_single_for_p50_and_single_over_sharded_for_qps() -> None:
    ratios = fan_out(fabricated()["search"])
    assert ratios["sharded"] == pytest.approx({"p50_ratio": 1.5, "qps_ratio": 1.25})
    assert ratios["ray"] == pytest.approx({"p50_ratio": 3.0, "qps_ratio": 2.5})


def test_build_figures_count_images_and_captions_over_the_encoding_seconds() -> None:
    single = _build("single", 100.0, 80.0)
    assert single["items"] == 6000 and single["encoding_seconds"] == pytest.approx(80.0)
    assert single["encoding_items_per_second"] == pytest.approx(75.0)
    assert single["shard_build_seconds"] == pytest.approx(99.5 - 80.0)  # the published clock less encoding
    sharded = _build("ray_2_workers", 120.0, 90.0)
    assert sharded["shard_build_seconds"] == pytest.approx(29.0) and sharded["total_seconds"] == 120.0


def test_the_readme_tables_carry_the_figures_and_ratios() -> None:
    text = render_scale_out(fabricated())
    fan_out_table = "### Fan-out"
    assert row(text, "sharded", fan_out_table)[1:6] == ["1.50", "1.25", "200 / 200 (100.0%)", "1.0000", "0 (0)"]
    assert row(text, "ray", fan_out_table)[1:6] == ["3.00", "2.50", "199 / 200 (99.5%)", "0.9995", "1 (1)"]
    assert row(text, "single")[4:8] == ["100.0", "80.0", "75.0", "19.5"]
    assert row(text, "ray_1_worker")[3] == "1"
    single = row(text, "single index, `python -m service`")
    assert single[2] == "10.0 / 20.0 / 40.0" and single[4] == "100.0"  # sequential p50/p90/p99, QPS
    assert single[8] == "2.0%"  # the idle cluster's share of the machine meanwhile
    on_ray = row(text, "2 shards on Ray Serve, `python -m service --engine ray --replicas 2`", "## Writes")
    assert on_ray[3:6] == ["5.00", "30.0", "200.0 / 400.0"]  # writes/s, items/s, ack p50 / p99
    assert row(text, "Flat")[3:8] == ["1,024.0", "1,024.0", "300.0", "200.0", "2,548.0"]
    assert "| SQ8 | 20.5 / 45.2 / 60.0 | 25.0 / 45.2 / 60.0 |" in text
    assert "driver in 1.5 s" in text and "3.0% of the machine's CPUs" in text
    assert "- sharded: p50 1.50x the single index's (15.0 vs 10.0 ms)" in text


def test_agreement_counts_identical_lists_overlap_and_tie_only_differences() -> None:
    reference = [[["a", 3.0], ["b", 2.0], ["c", 1.0]], [["a", 3.0], ["b", 2.0], ["c", 2.0]],
                 [["a", 3.0], ["b", 2.0], ["c", 1.0]]]
    other = [[["a", 3.0], ["b", 2.0], ["c", 1.0]],  # identical
             [["a", 3.0], ["c", 2.0], ["b", 2.0]],  # a tie ordered otherwise
             [["a", 3.0], ["b", 2.0], ["d", 0.5]]]  # another item
    result = agreement(reference, other, k=3)
    assert result["identical"] == 1 and result["differing"] == 2 and result["differing_ties_only"] == 1
    assert result["mean_overlap_at_3"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        agreement(reference, other[:2])


def test_percentiles_are_measured_samples() -> None:
    stats = pcts([float(v) for v in range(101)])
    assert (stats["p50"], stats["p90"], stats["p99"], stats["max"], stats["n"]) == (50.0, 90.0, 99.0, 100.0, 101)
    assert pcts([]) == {"n": 0} and not math.isnan(stats["mean"])
