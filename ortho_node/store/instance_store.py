"""Durable instance store: temp file → fsync → link into place → fsync directory.

A file appears under its final name only when every byte is on disk, so a crash at any point
leaves either nothing or a complete file, never half of one. Content is never rewritten: the
final name is claimed with ``link(2)``, which refuses to replace an existing file (``rename``
would silently overwrite it).

Layout: ``<root>/<study uid>/<series uid>/<sop instance uid>.dcm``. UIDs are checked to be
valid DICOM UIDs (digits and dots only) before they become path components.

Same SOP Instance UID received twice:

- identical bytes: nothing is written, the existing file stands (idempotent retries);
- different bytes: the stored original is kept as it is, the new bytes are written durably to
  ``<quarantine>/<sop instance uid>/<sha256>.dcm`` for an admin to inspect, and
  :class:`PutResult` says ``conflict=True``. Nothing is lost and nothing is overwritten.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID

from ortho_node.privacy import uid_ref

log = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview
_TMP_DIR = ".tmp"
_COMPARE_BLOCK = 1 << 20


class StoreError(Exception):
    """The store could not make an instance durable."""


class StoreFullError(StoreError):
    """No space left (or quota exceeded) on the store's file system."""


class StoreWriteError(StoreError):
    """Any other I/O failure while writing (permissions, read-only file system, I/O error)."""


class InvalidUidError(ValueError):
    """A UID that cannot be used as a path component (not a valid DICOM UID)."""


@dataclass(frozen=True)
class PutResult:
    """What :meth:`InstanceStore.put` did.

    ``relative_path`` is relative to the store root. ``created`` is False when an identical file
    was already there. ``conflict`` is True when a different file was already there; then
    ``quarantine_path`` says where the new bytes went.
    """

    relative_path: str
    size_bytes: int
    sha256: str
    created: bool
    conflict: bool = False
    quarantine_path: Path | None = None


def _checked_uid(value: str, name: str) -> str:
    uid = str(value).strip()
    if not uid or not UID(uid).is_valid:
        raise InvalidUidError(f"{name} is not a valid DICOM UID ({uid_ref(uid)})")
    return uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_store_error(exc: OSError, action: str) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StoreFullError(f"store is full while {action}: {exc.strerror}") from exc
    raise StoreWriteError(f"store I/O error while {action}: {exc.strerror or exc}") from exc


def _same_content(path: Path, chunks: Sequence[Chunk]) -> bool:
    """Compare a file with the concatenation of ``chunks`` without joining them."""
    with open(path, "rb") as handle:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            offset = 0
            while offset < len(view):
                block = handle.read(min(_COMPARE_BLOCK, len(view) - offset))
                if not block or block != view[offset : offset + len(block)]:
                    return False
                offset += len(block)
        return handle.read(1) == b""


class InstanceStore:
    """Durable, write-once storage of DICOM Part 10 files.

    Parameters
    ----------
    root : pathlib.Path
        Directory of the store; created if missing.
    quarantine : pathlib.Path
        Directory for conflicting duplicates; created if missing.
    """

    def __init__(self, root: Path, *, quarantine: Path) -> None:
        self.root = Path(root)
        self.quarantine = Path(quarantine)
        self._tmp = self.root / _TMP_DIR
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        for directory in (self.root, self._tmp, self.quarantine):
            self._make_dirs(directory)

    def relative_path(self, *, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """The store path of an instance, relative to the root; raises InvalidUidError."""
        study = _checked_uid(study_uid, "StudyInstanceUID")
        series = _checked_uid(series_uid, "SeriesInstanceUID")
        sop = _checked_uid(sop_instance_uid, "SOPInstanceUID")
        return f"{study}/{series}/{sop}.dcm"

    def absolute(self, relative_path: str) -> Path:
        return self.root / relative_path

    def put(
        self,
        chunks: Sequence[Chunk],
        *,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
    ) -> PutResult:
        """Store the concatenation of ``chunks`` durably under the instance's path.

        Returns only once the file (and its directory entry) is on disk.

        Raises
        ------
        InvalidUidError
            A UID is not usable as a path component.
        StoreFullError
            No space left on the file system.
        StoreWriteError
            Any other I/O error. In both error cases nothing is left under the final name.
        """
        relative = self.relative_path(
            study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_instance_uid
        )
        final = self.root / relative
        tmp, size, digest = self._write_temp(chunks)
        try:
            self._make_dirs(final.parent)
            try:
                try:
                    os.link(tmp, final)
                except FileNotFoundError:
                    # The directory went away under the cache (e.g. an admin removed an old study).
                    self._forget_dir(final.parent)
                    self._make_dirs(final.parent)
                    os.link(tmp, final)
            except FileExistsError:
                return self._resolve_duplicate(final, relative, chunks, tmp, size, digest, sop_instance_uid)
            except OSError as exc:
                _raise_store_error(exc, "linking the instance into place")
            _fsync_dir(final.parent)
            return PutResult(relative_path=relative, size_bytes=size, sha256=digest, created=True)
        finally:
            tmp.unlink(missing_ok=True)

    def withdraw(self, relative_path: str) -> None:
        """Remove a file this store has just created for an instance that is refused after all
        (never acknowledged), durably, so that nothing is left for ``store check`` to find."""
        final = self.root / relative_path
        try:
            final.unlink(missing_ok=True)
            _fsync_dir(final.parent)
        except OSError as exc:
            _raise_store_error(exc, "removing a refused instance")

    def discard_temporary_files(self) -> int:
        """Delete temp files left by a crash (they were never acknowledged). Returns the count."""
        count = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        if count:
            log.warning("discarded %d unacknowledged temporary file(s) from an earlier run", count)
        return count

    def _write_temp(self, chunks: Sequence[Chunk]) -> tuple[Path, int, str]:
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            _raise_store_error(exc, "creating a temporary file")
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                digest.update(view)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            _raise_store_error(exc, "writing the instance")
        os.close(fd)
        return tmp, size, digest.hexdigest()

    def _resolve_duplicate(
        self,
        final: Path,
        relative: str,
        chunks: Sequence[Chunk],
        tmp: Path,
        size: int,
        digest: str,
        sop_instance_uid: str,
    ) -> PutResult:
        if _same_content(final, chunks):
            return PutResult(relative_path=relative, size_bytes=size, sha256=digest, created=False)
        target_dir = self.quarantine / sop_instance_uid
        self._make_dirs(target_dir)
        target = target_dir / f"{digest}.dcm"
        try:
            os.link(tmp, target)
            _fsync_dir(target_dir)
        except FileExistsError:
            pass  # the same conflicting bytes were quarantined before
        except OSError as exc:
            _raise_store_error(exc, "quarantining a conflicting duplicate")
        log.warning(
            "instance %s received again with different content; original kept, new copy quarantined",
            uid_ref(sop_instance_uid),
        )
        return PutResult(
            relative_path=relative,
            size_bytes=size,
            sha256=digest,
            created=False,
            conflict=True,
            quarantine_path=target,
        )

    def _forget_dir(self, directory: Path) -> None:
        with self._dirs_lock:
            self._known_dirs.discard(directory)

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and make each newly created level durable in its parent."""
        if directory in self._known_dirs:
            return
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            for level in reversed(missing):
                try:
                    level.mkdir()
                except FileExistsError:
                    continue
                _fsync_dir(level.parent)
        except OSError as exc:
            _raise_store_error(exc, "creating a store directory")
        with self._dirs_lock:
            if len(self._known_dirs) > 50_000:  # a cache, not a record: keep it bounded
                self._known_dirs.clear()
            self._known_dirs.add(directory)
