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


def _write_version(work: Path, label: str, files: int = 4) -> None:
    (work / "label.txt").write_text(label)
    for n in range(files):
        (work / f"part-{n}.txt").write_text(label * 1000)


def _read_version(path: Path) -> str:
    """Read one version the way an index reader does: resolve and hold it, then read every file from there."""
    from core.atomic import reading_version

    with reading_version(path) as contents:
        label = (contents / "label.txt").read_text()
        for part in sorted(contents.glob("part-*.txt")):
            assert part.read_text() == label * 1000, f"{part} is not from version {label}"
    return label


def _versions(target: Path) -> list[str]:
    return sorted(p.name for p in (target / "versions").iterdir() if not p.name.startswith("."))


def test_versioned_publication_swaps_one_link_and_removes_old_versions(tmp_path: Path) -> None:
    from core.atomic import CURRENT, VERSIONS, versioned_directory

    target = tmp_path / "index"
    for label in ("a", "b", "c"):
        with versioned_directory(target) as work:
            _write_version(work, label)
        assert _read_version(target) == label
    live = os.readlink(target / CURRENT)
    assert live.startswith(f"{VERSIONS}/") and not os.path.isabs(live)  # relative: the tree can move
    assert [f"{VERSIONS}/{name}" for name in _versions(target)] == [live]  # no old version, no temporary
    assert _mode(target / live) == DIRECTORY_MODE
    with versioned_directory(target, keep_previous=True) as work:
        _write_version(work, "d")
    assert _versions(target) == sorted([live.split("/")[1], os.readlink(target / CURRENT).split("/")[1]])


def test_a_version_being_opened_is_removed_only_after(tmp_path: Path) -> None:
    from core.atomic import reading_version, versioned_directory

    target = tmp_path / "index"
    with versioned_directory(target) as work:
        _write_version(work, "a")
    with reading_version(target) as held:
        for label in ("b", "c"):
            with versioned_directory(target) as work:
                _write_version(work, label)
        assert (held / "label.txt").read_text() == "a" and len(_versions(target)) == 2
    with versioned_directory(target) as work:
        _write_version(work, "d")
    assert not held.exists() and len(_versions(target)) == 1


def test_a_failed_version_leaves_the_live_one_and_no_temporary(tmp_path: Path) -> None:
    from core.atomic import CURRENT, VERSIONS, versioned_directory

    target = tmp_path / "index"
    with versioned_directory(target) as work:
        _write_version(work, "a")
    live = os.readlink(target / CURRENT)
    with pytest.raises(KeyboardInterrupt), versioned_directory(target) as work:
        _write_version(work, "b", files=2)
        raise KeyboardInterrupt("crash while writing")
    assert os.readlink(target / CURRENT) == live and _read_version(target) == "a"
    assert [f"{VERSIONS}/{p.name}" for p in (target / VERSIONS).iterdir()] == [live]  # no temporary either


def test_a_plain_directory_is_migrated_by_one_rename(tmp_path: Path) -> None:
    from core.atomic import CURRENT, VERSIONS, current_version, versioned_directory

    target = tmp_path / "index"
    target.mkdir()
    _write_version(target, "old")  # contents at the top, as published before versions
    assert current_version(target) == target and _read_version(target) == "old"
    with versioned_directory(target) as work:
        _write_version(work, "new")
    assert (target / CURRENT).is_symlink() and _read_version(target) == "new"
    # the old contents stay one publication longer (readers may still be loading them), then go
    assert (target / "label.txt").read_text() == "old"
    with versioned_directory(target) as work:
        _write_version(work, "newer")
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [CURRENT, VERSIONS]
    assert _read_version(target) == "newer" and len(_versions(target)) == 1


def test_a_copy_that_followed_the_link_opens_and_publishes(tmp_path: Path) -> None:
    import shutil

    from core.atomic import CURRENT, versioned_directory

    target = tmp_path / "index"
    with versioned_directory(target) as work:
        _write_version(work, "a")
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)  # follows links: current is a directory in the copy
    assert not (copy / CURRENT).is_symlink() and _read_version(copy) == "a"
    with versioned_directory(copy) as work:
        _write_version(work, "b")
    assert (copy / CURRENT).is_symlink() and _read_version(copy) == "b"


def test_readers_never_find_no_version_while_versions_are_published(tmp_path: Path) -> None:
    """Reader threads open the directory in a loop while it is migrated from a plain one and republished."""
    import threading
    import time

    from core.atomic import versioned_directory

    target = tmp_path / "index"
    target.mkdir()
    _write_version(target, "0")
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[str]] = [set(), set()]

    def read(labels: set[str]) -> None:
        while not stop.is_set():
            try:
                labels.add(_read_version(target))
            except BaseException as e:  # noqa: BLE001  (any failure is the finding)
                errors.append(e)
                return

    readers = [threading.Thread(target=read, args=(labels,)) for labels in seen]
    for reader in readers:
        reader.start()
    deadline, published = time.monotonic() + 3.0, 0
    try:
        while time.monotonic() < deadline and published < 300 and not errors:
            with versioned_directory(target) as work:
                _write_version(work, str(published + 1))
            published += 1
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=10)
    assert errors == []
    assert published >= 20 and all(len(labels) > 1 for labels in seen)
    assert _read_version(target) == str(published)
    assert len(_versions(target)) <= 1 + len(readers)  # old versions went, but for any held at the last swap


def test_a_killed_writers_staging_is_removed_by_the_next_publication_a_live_ones_is_kept(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from core.atomic import new_version, versioned_directory

    root = tmp_path / "index"
    with versioned_directory(root) as first:
        (first / "data").write_text("1")
    # a writer killed mid-version: its staging directory stays, with its lock, which the kernel let go of
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.atomic import new_version; "
                               f"print(new_version({str(root)!r}), flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert writer.stdout is not None
    abandoned = Path(writer.stdout.readline().strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=20)
    assert abandoned.is_dir()
    live = new_version(root)  # this process's, still being written
    with versioned_directory(root) as second:
        (second / "data").write_text("2")
    assert not abandoned.exists() and not abandoned.with_name(abandoned.name + ".lock").exists()
    assert live.is_dir()
    assert (root / "current" / "data").read_text() == "2"
