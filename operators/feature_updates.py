"""Which entities' online features changed: an append-only log that writers add ids to and the
feature caches of every serving process tail.

Writers (the ``events`` model, catalogue upserts) append the ids whose Feast rows they just
wrote, as int64 bytes, under an exclusive ``flock``; a reader (:class:`UpdateLog`, one per
:class:`~operators.feast_lookup.QueryFeatures`) checks the file's size on every request (a
``stat``, microseconds) and reads only what was appended since its last look. Every Triton
process on the machine shares the file, so one event reaches the caches of every replica
that serves from the same Feast repository. A writer starts a new file (a new inode) when the
log passes ``MAX_BYTES``; a reader that sees another file treats every entry as changed.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MAX_BYTES = 64 * 1024 * 1024
ALL = None  # what :meth:`UpdateLog.changed` returns when everything may have changed


def log_path(feature_data_dir: Path, feature_view: str) -> Path:
    """The update log of ``feature_view`` in a Feast repository's data directory."""
    return Path(feature_data_dir) / "updates" / f"{feature_view}.ids"


@contextmanager
def writing(feature_data_dir: Path):
    """Held by every writer of the online store's rows outside materialization (events,
    catalogue upserts), so a read-modify-write of one never interleaves with another's."""
    path = Path(feature_data_dir) / "updates" / "writers.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def append(path: Path, ids) -> None:
    """Record that the online rows of ``ids`` changed (durably, before returning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(ids, dtype=np.int64).tobytes()
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file() and path.stat().st_size + len(data) > MAX_BYTES:
            # kept under another name, so the new file cannot reuse its inode: readers see
            # another file and drop everything
            os.replace(path, path.with_suffix(".old"))
        with open(path, "ab") as handle:
            handle.write(data)


class UpdateLog:
    """A reader's position in one update log."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file, self._offset = self._stat()

    def _stat(self) -> tuple[int, int]:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return 0, 0
        return found.st_ino, found.st_size

    def changed(self) -> np.ndarray | None:
        """Ids appended since the last call (empty if none), or :data:`ALL` if the log was
        started anew meanwhile."""
        file, size = self._stat()
        if file == self._file and size == self._offset:
            return np.zeros(0, dtype=np.int64)
        if (file != self._file and self._file != 0) or (file == self._file and size < self._offset):
            self._file, self._offset = file, size
            return ALL
        self._file = file
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(max(size - self._offset, 0))
        whole = len(data) - len(data) % 8  # a writer's bytes still arriving are read next time
        self._offset += whole
        return np.frombuffer(data[:whole], dtype=np.int64)
