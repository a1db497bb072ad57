"""Atomic publication of files and directories: write to a temporary sibling, then rename.

The temporary file or directory is created private (0600 / 0700); before the rename it gets the mode a plain
``open`` or ``mkdir`` would have given it (the process umask), or the mode of the file it replaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _process_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()
FILE_MODE = 0o666 & ~_UMASK
DIRECTORY_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[object]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path`` (keeping the mode of
    the file it replaces, else the umask's)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    final_mode = target.stat().st_mode & 0o777 if target.is_file() else FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), final_mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)  # type: ignore[attr-defined]


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` (the old one is removed last).

    A crash inside the block leaves ``path`` untouched and removes the temporary directory.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(DIRECTORY_MODE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
