"""Atomic publication: nothing half-written is ever in place, and what is published has ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.atomic import DIRECTORY_MODE, FILE_MODE, atomic_directory, write_text_atomic


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    fresh = tmp_path / "fresh.json"
    write_text_atomic(fresh, "{}")
    assert fresh.read_text() == "{}" and _mode(fresh) == FILE_MODE
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    write_text_atomic(kept, "new")
    assert kept.read_text() == "new" and _mode(kept) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "kept.txt"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from core.atomic import atomic_file

    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_published_directory_gets_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "index"
    with atomic_directory(target) as work:
        (work / "manifest.json").write_text("{}")
    assert _mode(target) == DIRECTORY_MODE and (target / "manifest.json").read_text() == "{}"
