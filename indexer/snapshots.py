"""Snapshots of a live collection, one archive file each, and their restore into a new collection directory.

Why: a collection changes while it serves (indexer/live.py), so copying its directory with ``cp`` may pair a
version with a log that a compaction has rewritten meanwhile, or tear the log's last record. A snapshot is a
point-in-time copy taken while writes go on, restorable anywhere as a collection that opens and verifies.

How: ``LiveCollection.snapshot_point`` takes the point under the collection's lock (writes wait only for that
instant): the live version (an immutable directory, held on disk until the copy ends), the log's records after
that version up to ``last_seq`` (the point), and each side's item count. The archive (an uncompressed tar) holds

  version/...        the version's manifest, checkpoint copy and sides (as ``<index>/versions/<id>/``)
  live/wal.jsonl     the log's records up to the point (replayed on open above the version's ``wal_seq``)
  live/uploads/...   the uploaded image files the version's items and the records name
  snapshot.json      format, name, source, the checkpoint binding, the point, counts, sha256 + size per file

and is written to a temporary file beside its final name, fsynced and linked into place (a crash or a kill -9
leaves no archive under the final name; ``SnapshotStore.take`` removes what a dead writer left). A restore checks
every file against snapshot.json, extracts into a temporary sibling of the target (no member may be a link, an
absolute path or leave the root), verifies the index there and renames it into place: a crash leaves nothing or
the whole restored collection. Sharded collections are not supported yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from core.atomic import CURRENT, VERSIONS, fsync_directory
from indexer.live import LIVE, UPLOADS, WAL, LiveCollection
from indexer.store import CHECKPOINT_DIR, MANIFEST, read_items, read_manifest

_logger = logging.getLogger(__name__)

FORMAT: Final = "duet-snapshot/1"
SNAPSHOT_MANIFEST: Final = "snapshot.json"
SUFFIX: Final = ".tar"
VERSION_PREFIX: Final = "version"  # the version's files in the archive
_READERS = ".readers.lock"  # a version's readers' lock (core/atomic.py), recreated on restore
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


class SnapshotError(ValueError):
    """A snapshot or restore refused for what the caller gave (a user error: the CLI exits 2)."""


class SnapshotExistsError(SnapshotError):
    """A snapshot of this name exists already (HTTP 409)."""


class SnapshotNotFoundError(SnapshotError):
    """No snapshot of this name (HTTP 404)."""


class SnapshotFormatError(SnapshotError):
    """The archive is of a newer or unknown format."""


class SnapshotCorruptError(SnapshotError):
    """The archive's files differ from its manifest, or a member is unsafe to extract."""


class SnapshotMismatchError(SnapshotError):
    """The snapshot is bound to another checkpoint than the one required."""


class RestoreTargetExistsError(SnapshotError):
    """A restore never writes into or over an existing path."""


class UnsupportedCollectionError(SnapshotError):
    """A collection this version cannot snapshot (a sharded one)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str
    bytes: int


class SnapshotManifest(_Strict):
    format: str = FORMAT
    name: str
    created_at: str
    collection: str  # the source collection's name (its manifest's)
    source: str  # the name of the index directory it was taken from
    version: str  # the version's directory name, kept by the restore
    checkpoint: dict[str, Any]  # the index manifest's checkpoint binding (content_hash, ...)
    wal_seq: int  # the point: every write up to this sequence number is in the snapshot
    base_wal_seq: int  # the writes the version itself includes
    counts: dict[str, int]  # live items per side at the point
    files: dict[str, FileEntry]  # archive path -> sha256 and size
    missing_uploads: list[str] = []  # uploads named by items but absent from the source


class SnapshotInfo(_Strict):
    """What a listing shows of one snapshot."""

    name: str
    created_at: str
    collection: str
    wal_seq: int
    counts: dict[str, int]
    bytes: int  # the archive's size
    checkpoint_hash: str


class RestoreResult(_Strict):
    index: str
    snapshot: str
    version: str
    wal_seq: int
    counts: dict[str, int]
    checkpoint_hash: str
    verified: bool


def check_name(name: str) -> str:
    """A snapshot's name: a safe file name ([A-Za-z0-9._-], not starting with a dot, at most 128 characters)."""
    if not _NAME.fullmatch(name):
        raise SnapshotError(f"invalid snapshot name {name!r}: use letters, digits, '.', '_' and '-' (at most 128, "
                            "not starting with '.')")
    return name


def default_name() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# ----- temporary files and directories that a dead writer may leave -----
_CREATING = threading.Lock()  # a file created and locked in one step for this process's cleaners (``_abandoned``)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[int]:
    """An exclusive lock on ``path`` (created) for the block: a dead holder's lock is free, so its leftovers can go."""
    with _CREATING:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


def _abandoned(lock: Path) -> bool:
    with _CREATING:
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Hashing:
    """A reader that hashes what is read through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


# ----- taking -----
def _version_files(version: Path) -> Iterator[tuple[str, Path]]:
    """The files of an index version (archive path, file): its manifest, checkpoint copy and sides."""
    manifest = read_manifest(version)
    yield f"{VERSION_PREFIX}/{MANIFEST}", version / MANIFEST
    for top in (CHECKPOINT_DIR, *sorted(manifest.sides)):
        for path in sorted((version / top).rglob("*")):
            if path.is_file() and not path.name.endswith(".lock"):
                yield f"{VERSION_PREFIX}/{path.relative_to(version).as_posix()}", path


def _uploads(version: Path, log: bytes) -> list[str]:
    """The upload file names the version's image items and the log's records name."""
    names = set()
    if (version / "images" / "items.jsonl").is_file():
        names |= {str(item["upload"]) for item in read_items(version / "images") if item.get("upload")}
    for line in log.splitlines():
        record = json.loads(line[9:])  # "<crc32> <json>": checked by snapshot_point
        names |= {str(e["item"]["upload"]) for e in record["entries"] if e["item"].get("upload")}
    return sorted(names)


def _add(tar: tarfile.TarFile, name: str, handle: IO[bytes], size: int) -> FileEntry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(dt.datetime.now(dt.UTC).timestamp())
    reader = _Hashing(handle)
    tar.addfile(info, reader)
    return FileEntry(sha256=reader.digest.hexdigest(), bytes=size)


def snapshots_of(index: str | Path) -> Path:
    """The default directory of a lone index's snapshots: ``<index>.snapshots`` beside it (a data directory's
    collections keep theirs in ``<data-dir>/.snapshots/<name>``, indexer/catalog.py)."""
    root = Path(index).resolve()
    return root.with_name(f"{root.name}.snapshots")


class SnapshotStore:
    """A directory of snapshot archives (``<name>.tar``) of one collection."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """The archive of snapshot ``name`` (to download); SnapshotNotFoundError when there is none."""
        path = self.directory / f"{check_name(name)}{SUFFIX}"
        if not path.is_file():
            raise SnapshotNotFoundError(f"no snapshot named {name!r} in {self.directory}")
        return path

    def get(self, name: str) -> SnapshotInfo:
        return _info(read_snapshot_manifest(self.path(name)), self.path(name))

    def list(self) -> list[SnapshotInfo]:
        """Every complete snapshot, oldest first (temporary files of takes in progress or abandoned are not)."""
        infos = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")) if self.directory.is_dir() else ():
            if path.name.startswith(".") or not _NAME.fullmatch(path.name.removesuffix(SUFFIX)):
                continue
            try:
                infos.append(_info(read_snapshot_manifest(path), path))
            except (SnapshotError, OSError, tarfile.TarError) as e:
                _logger.warning("skipping %s: %s", path, e)
        return sorted(infos, key=lambda info: (info.created_at, info.name))

    def delete(self, name: str) -> None:
        path = self.path(name)
        path.unlink()
        fsync_directory(self.directory)

    def take(self, live: LiveCollection, name: str | None = None) -> SnapshotInfo:
        """Snapshot the collection now (writes go on meanwhile); SnapshotExistsError when ``name`` is taken."""
        if not isinstance(live, LiveCollection):
            raise UnsupportedCollectionError(f"snapshots of sharded collections are not supported yet (a "
                                             f"{type(live).__name__} is not one index's LiveCollection)")
        name = check_name(name or default_name())
        final = self.directory / f"{name}{SUFFIX}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        if final.exists():
            raise SnapshotExistsError(f"a snapshot named {name!r} exists already in {self.directory}")
        temp = self.directory / f".{name}{SUFFIX}.{secrets.token_hex(4)}.tmp"
        try:
            with _held(temp) as fd, live.snapshot_point() as (version, log, seq, counts):
                with os.fdopen(os.dup(fd), "wb") as handle:
                    manifest = self._write(handle, live, name, version, log, seq, counts)
                    handle.flush()
                    os.fsync(handle.fileno())
                try:
                    os.link(temp, final)  # never over another archive: a name taken meanwhile is refused
                except FileExistsError as e:
                    raise SnapshotExistsError(f"a snapshot named {name!r} exists already in {self.directory}") from e
        finally:
            temp.unlink(missing_ok=True)
        fsync_directory(self.directory)
        _logger.info("snapshot %s of %s at seq %d: %s", final, live.index_dir, seq, counts)
        return _info(manifest, final)

    def _write(self, handle: IO[bytes], live: LiveCollection, name: str, version: Path, log: bytes, seq: int,
               counts: dict[str, int]) -> SnapshotManifest:
        index = read_manifest(version)
        files: dict[str, FileEntry] = {}
        missing: list[str] = []
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in _version_files(version):
                with path.open("rb") as source:
                    files[arcname] = _add(tar, arcname, source, os.fstat(source.fileno()).st_size)
            for upload in _uploads(version, log):
                path = live.index_dir / LIVE / UPLOADS / upload
                if not path.is_file() or not _NAME.fullmatch(upload):
                    missing.append(upload)
                    continue
                with path.open("rb") as source:  # content-addressed and written once: it does not change
                    arcname = f"{LIVE}/{UPLOADS}/{upload}"
                    files[arcname] = _add(tar, arcname, source, os.fstat(source.fileno()).st_size)
            files[f"{LIVE}/{WAL}"] = _add(tar, f"{LIVE}/{WAL}", io.BytesIO(log), len(log))
            if missing:
                _logger.warning("%s: uploads named by items are missing and left out: %s", live.index_dir, missing)
            manifest = SnapshotManifest(name=name, created_at=dt.datetime.now(dt.UTC).isoformat(),
                                        collection=str(index.collection.get("name", "")), source=live.index_dir.name,
                                        version=version.name, checkpoint=index.checkpoint.model_dump(),
                                        wal_seq=seq, base_wal_seq=index.wal_seq, counts=counts, files=files,
                                        missing_uploads=missing)
            body = manifest.model_dump_json(indent=2).encode()
            _add(tar, SNAPSHOT_MANIFEST, io.BytesIO(body), len(body))
        return manifest

    def _remove_abandoned(self) -> None:
        """Temporary archives whose taker died (their lock is free); a take in progress keeps its own."""
        for temp in self.directory.glob(f".*{SUFFIX}.*.tmp"):
            if _abandoned(temp):
                temp.unlink(missing_ok=True)


def _info(manifest: SnapshotManifest, path: Path) -> SnapshotInfo:
    return SnapshotInfo(name=manifest.name, created_at=manifest.created_at, collection=manifest.collection,
                        wal_seq=manifest.wal_seq, counts=manifest.counts, bytes=path.stat().st_size,
                        checkpoint_hash=str(manifest.checkpoint.get("content_hash", "")))


# ----- reading and restoring -----
def _check_format(found: object, archive: Path) -> None:
    if found == FORMAT:
        return
    number = re.fullmatch(r"duet-snapshot/(\d+)", str(found))
    if number and int(number.group(1)) > int(FORMAT.rsplit("/", 1)[1]):
        raise SnapshotFormatError(f"{archive}: {found} is newer than this version reads ({FORMAT}); restore it with "
                                  "a newer Duet")
    raise SnapshotFormatError(f"{archive}: unknown snapshot format {found!r} (this version reads {FORMAT})")


def _manifest_of(tar: tarfile.TarFile, archive: Path) -> SnapshotManifest:
    try:
        member = tar.getmember(SNAPSHOT_MANIFEST)
        source = tar.extractfile(member)
    except KeyError as e:
        raise SnapshotCorruptError(f"{archive}: not a Duet snapshot (no {SNAPSHOT_MANIFEST})") from e
    if source is None:
        raise SnapshotCorruptError(f"{archive}: {SNAPSHOT_MANIFEST} is not a file")
    try:
        raw = json.loads(source.read())
    except ValueError as e:
        raise SnapshotCorruptError(f"{archive}: {SNAPSHOT_MANIFEST} is not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise SnapshotCorruptError(f"{archive}: {SNAPSHOT_MANIFEST} is not a JSON object")
    _check_format(raw.get("format"), archive)
    try:
        return SnapshotManifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise SnapshotCorruptError(f"{archive}: invalid {SNAPSHOT_MANIFEST}: {first['loc']} {first['msg']}") from e


def _open_tar(archive: Path) -> tarfile.TarFile:
    if not archive.is_file():
        raise SnapshotNotFoundError(f"snapshot archive not found: {archive}")
    try:
        return tarfile.open(archive, mode="r:")
    except tarfile.TarError as e:
        raise SnapshotCorruptError(f"{archive}: not a readable snapshot archive: {e}") from e


def read_snapshot_manifest(archive: str | Path) -> SnapshotManifest:
    """The archive's snapshot.json (its format checked first)."""
    with _open_tar(Path(archive)) as tar:
        return _manifest_of(tar, Path(archive))


def _safe_members(tar: tarfile.TarFile, archive: Path) -> dict[str, tarfile.TarInfo]:
    """The archive's files by path; refuses links, devices, absolute paths, '..' and duplicates."""
    files: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if (path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts)
                or "\\" in member.name or str(path) != member.name.rstrip("/")):
            raise SnapshotCorruptError(f"{archive}: unsafe member path {member.name!r}")
        if member.isdir():
            continue
        if not member.isfile():
            raise SnapshotCorruptError(f"{archive}: member {member.name!r} is not a plain file (links and devices "
                                       "are refused)")
        if str(path) in files:
            raise SnapshotCorruptError(f"{archive}: member {member.name!r} appears twice")
        files[str(path)] = member
    return files


def _destination(arcname: str, root: Path, version: str, archive: Path) -> Path:
    """Where an archive file goes in the restored collection."""
    parts = PurePosixPath(arcname).parts
    if parts[0] == VERSION_PREFIX and len(parts) > 1:
        return root.joinpath(VERSIONS, version, *parts[1:])
    if arcname == f"{LIVE}/{WAL}" or (parts[:2] == (LIVE, UPLOADS) and len(parts) == 3):
        return root.joinpath(*parts)
    raise SnapshotCorruptError(f"{archive}: unexpected member {arcname!r}: a snapshot holds version/, {LIVE}/{WAL} and "
                               f"{LIVE}/{UPLOADS}/ only")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, expected: FileEntry, archive: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise SnapshotCorruptError(f"{archive}: cannot read {member.name}")
    digest, size = hashlib.sha256(), 0
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != expected.bytes or digest.hexdigest() != expected.sha256:
        raise SnapshotCorruptError(f"{archive}: {member.name} does not match its checksum in {SNAPSHOT_MANIFEST} "
                                   f"({size} bytes, sha256 {digest.hexdigest()[:12]}; recorded {expected.bytes} bytes, "
                                   f"{expected.sha256[:12]})")


def restore_snapshot(archive: str | Path, target_dir: str | Path, *, checkpoint_hash: str | None = None,
                     verify: bool = True) -> RestoreResult:
    """Restore a snapshot as a new collection at ``target_dir`` (which must not exist): every file checked against
    the archive's manifest, the index verified (``verify``), then renamed into place in one step. With
    ``checkpoint_hash``, a snapshot bound to another checkpoint is refused."""
    from indexer.build import verify_index  # the build's imports (torch, the model) only when restoring

    archive, target = Path(archive), Path(target_dir)
    if target.exists() or target.is_symlink():
        raise RestoreTargetExistsError(f"cannot restore into {target}: it exists (restore into a new directory)")
    with _open_tar(archive) as tar:
        files = _safe_members(tar, archive)  # before anything in it is read
        manifest = _manifest_of(tar, archive)
        bound = str(manifest.checkpoint.get("content_hash", ""))
        if checkpoint_hash is not None and bound != checkpoint_hash:
            raise SnapshotMismatchError(f"{archive}: snapshot {manifest.name!r} is bound to checkpoint {bound[:16]}, "
                                        f"not to {checkpoint_hash[:16]}")
        if not _NAME.fullmatch(manifest.version):
            raise SnapshotCorruptError(f"{archive}: invalid version name {manifest.version!r}")
        files.pop(SNAPSHOT_MANIFEST, None)
        missing, extra = sorted(set(manifest.files) - set(files)), sorted(set(files) - set(manifest.files))
        if missing or extra:
            raise SnapshotCorruptError(f"{archive}: files differ from {SNAPSHOT_MANIFEST}: missing {missing[:5]}, "
                                       f"unexpected {extra[:5]}")
        destinations = {name: _destination(name, Path(), manifest.version, archive) for name in files}
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_restores(target)
        staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.restore.tmp"
        lock = staging.with_name(staging.name + ".lock")
        try:
            with _held(lock):
                staging.mkdir()
                for name, member in files.items():
                    _extract(tar, member, staging / destinations[name], manifest.files[name], archive)
                _finish(staging, manifest.version)
                if verify:
                    verify_index(staging)
                if target.exists() or target.is_symlink():
                    raise RestoreTargetExistsError(f"cannot restore into {target}: it appeared meanwhile")
                os.rename(staging, target)
                fsync_directory(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            lock.unlink(missing_ok=True)
    _logger.info("restored snapshot %s (seq %d) into %s", archive, manifest.wal_seq, target)
    return RestoreResult(index=str(target), snapshot=manifest.name, version=manifest.version,
                         wal_seq=manifest.wal_seq, counts=manifest.counts, checkpoint_hash=bound, verified=verify)


def _finish(staging: Path, version: str) -> None:
    """The collection's own entries beside the files: the readers' lock, the uploads' directory, the log (an empty
    one when the snapshot held none) and ``current``; everything synced before the rename that publishes it."""
    (staging / VERSIONS / version / _READERS).touch()
    (staging / LIVE / UPLOADS).mkdir(parents=True, exist_ok=True)
    (staging / LIVE / WAL).touch()
    os.symlink(f"{VERSIONS}/{version}", staging / CURRENT)
    for directory, _, _ in os.walk(staging):
        fsync_directory(Path(directory))


def _remove_abandoned_restores(target: Path) -> None:
    """Staging directories of restores into ``target`` whose process died (their lock is free)."""
    for lock in target.parent.glob(f".{target.name}.*.restore.tmp.lock"):
        if _abandoned(lock):
            shutil.rmtree(lock.with_name(lock.name.removesuffix(".lock")), ignore_errors=True)
            lock.unlink(missing_ok=True)
