"""Resume: which job an output belongs to, and which of its blocks are durably written.

The output's root attributes hold the job *manifest* (model fingerprint, input
identity, output kind, layout). A rerun whose manifest differs refuses to
continue into that output (unless ``--overwrite``), so blocks from two jobs never mix.

Done-markers live in ``OUT/.hirestile/done.log``: one line ``i0 i1 j0 j1`` per
finished tile, the half-open rectangle of blocks (shards, or chunks when
unsharded) it wrote. A line is appended, and fsync'd, only after the tile's block files are
fsync'd. zarr 3 does not store chunks that are all fill value, so chunk
existence cannot serve as a marker; the log does. A torn last line (a kill during
the append) is ignored, and that tile is recomputed, giving the same bits.
``OUT/.hirestile/lock`` keeps a second process from writing the same output.
When the job completes, the directory is removed.

Examples
--------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with DoneLog(d) as log:
...     log.mark((0, 1, 0, 2))
>>> sorted(DoneLog(d).load())
[(0, 0), (0, 1)]
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from typing import Any, Iterable

import numpy as np

from .errors import OutputError

STATE_DIR = ".hirestile"


def fingerprint_arrays(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 (hex, 16 chars) of named arrays: names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two manifests."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in differences(a, b)]
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(k)
    return out


def fsync_path(path: str) -> None:
    """fsync a file or directory if it exists (best effort on filesystems that refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class DoneLog:
    """Append-only, fsync'd log of finished block rectangles, plus the writer lock.

    Parameters
    ----------
    out_path : str
        The output root; state lives in ``out_path/.hirestile``.
    """

    def __init__(self, out_path: str) -> None:
        self.dir = os.path.join(out_path, STATE_DIR)
        self.path = os.path.join(self.dir, "done.log")
        self._fd: int | None = None
        self._lock_fd: int | None = None

    def load(self) -> set[tuple[int, int]]:
        """Blocks (row, col) marked done; an unfinished last line is ignored."""
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            return set()
        done: set[tuple[int, int]] = set()
        for line in text.split("\n")[:-1]:          # the part after the last newline is torn
            parts = line.split()
            if len(parts) != 4 or not all(p.isdigit() for p in parts):
                continue
            i0, i1, j0, j1 = map(int, parts)
            done.update((i, j) for i in range(i0, i1) for j in range(j0, j1))
        return done

    def lock(self) -> None:
        """Take the exclusive writer lock, or raise :class:`OutputError` naming the holder."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"{os.path.dirname(self.dir)} is being written by another hirestile "
                              f"process (pid {holder}); wait for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def mark(self, rect: tuple[int, int, int, int]) -> None:
        """Durably record blocks rows [i0, i1) x cols [j0, j1) as done."""
        if self._fd is None:
            os.makedirs(self.dir, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            fsync_path(self.dir)
        os.write(self._fd, ("%d %d %d %d\n" % rect).encode())
        os.fsync(self._fd)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def remove(self) -> None:
        """Drop the state directory (the job is complete)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DoneLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DoneLog", "differences", "fingerprint_arrays", "fsync_path", "STATE_DIR"]
