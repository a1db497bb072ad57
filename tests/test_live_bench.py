"""The live-collection benchmark runs end to end on a copy of the tiny index, reports every section with positive
numbers, and never writes the index it was given."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import main
from benchmarks.sections import SectionStore


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's content hash, a link's target, a directory's presence."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            out[name] = "-> " + str(path.readlink())
        elif path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[name] = "dir"
    return out


def numbers(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from numbers(value, f"{path}.{key}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


MEASURED = ("per_second", ".p50", ".p95", ".p99", ".mean", ".n", "seconds", "_ms", ".version", ".total", "calls")
MAY_BE_ZERO = ("never_found", "writes_missing_afterwards", "hit_by_a_search", "found_by_first_search", ".live",
               "checkpoint", "wal_bytes", "deleted", "base_wal_seq", "resumed")


@pytest.mark.java
def test_the_live_benchmark_reports_every_section_and_leaves_the_index_alone(
        tiny_index: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    given = tmp_path / "index"
    shutil.copytree(tiny_index, given, symlinks=True)
    before = tree(given)
    out = tmp_path / "out"
    argv = ["--log-level", "WARNING", "live", "--index", str(given), "--out", str(out),
            "--work", str(tmp_path / "work"), "--images", str(synthetic_dataset / "images"),
            "--image-adds", "3", "--text-adds", "4",
            "--raw-writes", "5", "--deletes", "2", "--visibility-samples", "3", "--visibility-images", "2",
            "--latency-queries", "6", "--delta-shares", "0.1", "--synthetic-items", "64",
            "--synthetic-shares", "0.1", "--synthetic-queries", "4"]
    assert main(argv) == 0
    assert tree(given) == before
    report = json.loads((out / "report.json").read_text())
    assert not (out / "report.partial.json").exists()
    assert set(report["sections"]) == {"writes", "visibility", "delta-0.1", "compaction-under-load",
                                         "termless-text", "synthetic-0.1"}
    writes = report["writes"]
    for kind in ("image_add", "text_add", "image_record_vectors_given", "text_record_vectors_given",
                 "log_append_fsync", "image_delete", "text_delete"):
        assert writes[kind]["items_per_second"] > 0 and writes[kind]["calls"] > 0, kind
    for kind in ("text_add_same_thread", "text_add_other_thread", "image_add_same_thread"):
        seen = report["visibility"][kind]
        assert seen["samples"] > 0 and seen["never_found"] == 0 and seen["max_ms"] > 0, kind
    for collection in (report["delta"]["0.1"], report["synthetic"]["0.1"]):
        assert set(collection["latency"]) == {"base", "delta", "compacted"}
        for state in collection["latency"].values():
            assert all(state[d][m]["p50"] > 0 for d in state for m in ("dense", "sparse", "hybrid"))
        compaction = collection["compaction"]
        assert compaction["seconds"] > 0 and compaction["bytes_after"]["version"] > 0
        assert collection["delta"]["images_added"] > 0
        assert compaction["live_items"]["images"] == (compaction["rows_before"]["images"]
                                                      - collection["delta"]["images_deleted"])
    assert set(report["delta"]["0.1"]["latency"]["base"]) == {"t2i", "i2t"}
    load = report["compaction_under_load"]
    assert load["failures"] == [] and load["writes_missing_afterwards"] == 0
    measured = [(p, v) for section in ("writes", "visibility", "delta", "compaction_under_load", "synthetic")
                for p, v in numbers(report[section], section)
                if any(m in p for m in MEASURED) and not any(z in p for z in MAY_BE_ZERO) and "min_ms" not in p]
    assert measured and all(v > 0 for _, v in measured), [(p, v) for p, v in measured if v <= 0][:5]
    readme = (out / "README.md").read_text()
    for heading in ("## Writes", "## From acknowledgement to searchable", "## Search latency", "## Compaction"):
        assert heading in readme


def test_a_resumed_run_reuses_only_sections_saved_under_the_same_key(tmp_path: Path) -> None:
    calls: list[str] = []
    first = SectionStore(tmp_path, {"index": "a"})
    assert first.section("writes", lambda: calls.append("writes") or {"x": 1}) == {"x": 1}
    again = SectionStore(tmp_path, {"index": "a"})
    again.resume()
    assert again.section("writes", lambda: calls.append("again") or {"x": 2}) == {"x": 1}
    assert again.log["writes"]["resumed"]
    other = SectionStore(tmp_path, {"index": "b"})
    other.resume()
    assert other.section("writes", lambda: calls.append("other") or {"x": 3}) == {"x": 3}
    assert calls == ["writes", "other"]
    other.finish()
    assert not (tmp_path / "report.partial.json").exists()
