"""Atomic publication of files and directories.

``atomic_file`` / ``atomic_directory``: write to a temporary sibling, then rename over the target. Replacing an
existing directory takes two renames (the old one aside, the new one in), so a reader can briefly find nothing:
good enough for a checkpoint or a feature cache, which are read once at start.

``versioned_directory``: for a directory that readers open while it is republished (an index). The path is a
real directory holding its versions and a link to the live one:

  <path>/current          symlink -> versions/<id> (relative, so the tree can be moved or copied whole)
  <path>/versions/<id>/   one complete version each
  <path>/versions/.<id>.tmp   a version being written (removed if the writer fails; if the writer is killed, by
                              the next publication: its writer's lock, .<id>.tmp.lock beside it, is free then)

A new version is written beside the live one, then ``current`` is replaced by a fresh symlink with one
``os.replace``: a reader resolving ``current`` finds the old complete version or the new one, never nothing.
Old versions are then removed, except any a reader is still opening (``reading_version`` holds a shared lock
on it; the next publication removes it) and, with ``keep_previous``, the one just replaced (a rollback is then
one link away; it costs the disk of a version). A path that is still a plain directory from before (its contents
at the top) is migrated by the first publication: ``current`` appears with the one rename (readers prefer it),
and the old contents stay until the next publication removes them. (A copy made by following links holds
``current`` as a directory: its first publication moves that into ``versions/`` before the link appears, the one
moment it shows no version.)

The temporary file or directory is created private (0600 / 0700); before it is published it gets the mode a plain
``open`` or ``mkdir`` would have given it (the process umask), or the mode of the file it replaces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
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


CURRENT = "current"
VERSIONS = "versions"
_LOCK = ".publish.lock"
_READERS = ".readers.lock"  # in each version: readers hold it shared while they open the version
_PLAIN = ".plain-entries.json"  # in versions/: the top-level names of contents from before versions


def current_version(path: str | Path) -> Path:
    """The directory to read: the version ``path/current`` links to (read once, so every later read of the caller
    stays in that version), else ``path`` itself (a plain directory, or a version directory opened directly)."""
    root = Path(path)
    link = root / CURRENT
    if link.is_symlink():
        return root / os.readlink(link)
    return link if link.is_dir() else root  # a copy that followed the link holds ``current`` as a directory


@contextlib.contextmanager
def reading_version(path: str | Path) -> Iterator[Path]:
    """The live version (as ``current_version``), held for the block: no publication removes it meanwhile. A
    reader needs it only while it opens its files (an open or mapped file outlives its removal)."""
    while True:
        version = current_version(path)
        lock = version / _READERS
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            if current_version(path) != version:
                continue  # removed after a newer one went live: read that one
            yield version  # a plain directory (no versions): nothing removes it under a reader
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                held = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                held = False  # removed while we waited for the lock
            if held:
                yield version
                return
        finally:
            os.close(fd)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


# each staged version's lock, held by its writer until it publishes or discards it: the kernel lets go of it when
# the writer dies, which is how a later publication knows a leftover staging directory is nobody's
_STAGING_LOCKS: dict[Path, int] = {}


def _staging_lock(staged: Path) -> Path:
    return staged.with_name(staged.name + ".lock")


def new_version(path: str | Path) -> Path:
    """A fresh private directory ``path/versions/.<id>.tmp`` to write a version into (at the depth the published
    version will have), locked as this process's until it is published or discarded."""
    versions = Path(path) / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{_stamp()}-", suffix=".tmp", dir=versions))
    fd = os.open(_staging_lock(staged), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _STAGING_LOCKS[staged] = fd
    (staged / _READERS).touch()
    return staged


def _release_staging(staged: Path) -> None:
    fd = _STAGING_LOCKS.pop(staged, None)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_staging_lock(staged))
    if fd is not None:
        os.close(fd)


def discard_version(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
    _release_staging(staged)


def _remove_abandoned_staging(versions: Path) -> None:
    """Staging directories whose writer died (killed mid-build or mid-compaction): their lock is free."""
    for lock in versions.glob(".*.tmp.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer's
            os.close(fd)
            continue
        try:
            shutil.rmtree(lock.with_name(lock.name.removesuffix(".lock")), ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_link(root: Path, target: str) -> None:
    """Point ``root/current`` at ``target`` with one rename of a fresh symlink over it."""
    fresh = root / f".{CURRENT}.{secrets.token_hex(4)}.tmp"
    os.symlink(target, fresh)
    try:
        os.replace(fresh, root / CURRENT)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)
        raise
    fsync_directory(root)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    elif entry.exists() or entry.is_symlink():
        entry.unlink()


def _remove_unless_read(version: Path) -> None:
    """Remove an old version unless a reader holds it (a later publication removes it then)."""
    try:
        fd = os.open(version / _READERS, os.O_RDONLY)
    except FileNotFoundError:
        _remove(version)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        _remove(version)
    finally:
        os.close(fd)


def publish_version(path: str | Path, staged: Path, *, keep_previous: bool = False,
                    keep_at_top: tuple[str, ...] = ()) -> Path:
    """Publish the version written in ``staged`` (from ``new_version``) as ``path``'s live one; return its
    directory. Versions other than the new one (and the previous one, with ``keep_previous``) are removed;
    ``keep_at_top`` names entries beside the versions that belong to the path, not to a pre-version layout."""
    root = Path(path)
    version = staged.with_name(staged.name.removeprefix(".").removesuffix(".tmp"))
    staged.chmod(DIRECTORY_MODE)
    os.replace(staged, version)
    _release_staging(staged)
    link, versions, plain_list = root / CURRENT, root / VERSIONS, root / VERSIONS / _PLAIN
    with (root / _LOCK).open("a") as lock:
        # one publisher at a time swaps and cleans up, so none removes a version another just made live
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous: str | None = None
        legacy: list[str] = []
        if link.is_symlink():
            previous = os.readlink(link)
        elif link.is_dir():
            # a copy that followed the link: its live version moves into versions/ (the one moment with none)
            previous = f"{VERSIONS}/{_stamp()}-copied"
            os.replace(link, root / previous)
        else:
            legacy = [p.name for p in root.iterdir()
                      if p.name not in (CURRENT, VERSIONS, *keep_at_top) and not p.name.startswith(".")]
        if plain_list.is_file():  # contents from before versions, kept at the top for one more publication
            for name in json.loads(plain_list.read_text()):
                _remove(root / name)
            plain_list.unlink()
        _swap_link(root, f"{VERSIONS}/{version.name}")
        if legacy:
            # no lock guards them: readers that found no link may still be opening them; the next publication
            # removes them
            write_text_atomic(plain_list, json.dumps(legacy))
        kept = {version.name} | ({Path(previous).name} if keep_previous and previous else set())
        for entry in versions.iterdir():
            if entry.name not in kept and not entry.name.startswith("."):
                _remove_unless_read(entry)
        _remove_abandoned_staging(versions)
    return version


@contextlib.contextmanager
def versioned_directory(path: str | Path, *, keep_previous: bool = False,
                        keep_at_top: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh version directory of ``path``; on success publish it (one rename of ``path/current``).

    A crash inside the block leaves the live version untouched and removes the new one.
    """
    staged = new_version(path)
    try:
        yield staged
    except BaseException:
        discard_version(staged)
        raise
    publish_version(path, staged, keep_previous=keep_previous, keep_at_top=keep_at_top)
