"""The output's policy: where it goes, which job it belongs to, which blocks are durably written.

Layer 5 of docs/architecture.md, beside the scheduler: the scheduler asks this
module to open (or resume) an output, to store a tile's blocks durably, and
``hirestile info`` asks it how far a job got (:func:`job_status`).

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
import json
import os
import shutil
from typing import Any, Callable

import numpy as np

from . import ome
from .errors import HirestileError, OutputError
from .io import local_dir
from .outputs import postprocess
from .tiling import Tile

STATE_DIR = ".hirestile"


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


# **** where the output goes ****
INPUT_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".ndpi", ".zip")


def default_output(input_path: str, model_name: str) -> str:
    """``slide.zarr`` + ``unet`` -> ``slide.unet.zarr`` beside the input."""
    base = os.path.abspath(input_path).rstrip("/")
    for ext in INPUT_SUFFIXES:
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model_name)
    return f"{base}.{safe}.zarr"


def make_room(path: str, *, choose: str) -> None:
    """Remove ``path`` if it exists (never under a running writer) and check it can be created.

    ``choose`` ends the errors' advice, e.g. ``"another -o"``.
    """
    if os.path.lexists(path):
        if os.path.isdir(os.path.join(path, STATE_DIR)):      # never delete under a running writer
            probe = DoneLog(path)
            probe.lock()
            probe.close()
        ome.remove_output(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"cannot create {path}: directory {parent} does not exist; create it or choose {choose}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot create {path}: {parent} is not writable; choose {choose}")


# **** which job it belongs to ****
def open_output(path: str, *, manifest: dict[str, Any], kind: str, classes: int, out_hw: tuple[int, int],
                tile: int, overwrite: bool) -> tuple[Any, ome.Layout, bool]:
    """Create the output, or reopen it to resume the job ``manifest`` describes.

    Returns (group, or None when complete; layout; whether every tile is already written).
    A different job's output is refused, naming what differs, unless ``overwrite``.
    """
    import zarr

    if os.path.lexists(path) and not overwrite:
        existing = None
        if ome.is_zarr_dir(path):
            try:
                existing = zarr.open_group(path, mode="r+")
            except Exception:
                existing = None
        st = ome.status(existing) if existing is not None else {}
        old = st.get("manifest")
        if not old:
            raise OutputError(f"{path} already exists; pass --overwrite to replace it or choose another -o")
        diff = differences(old.get("job", {}), manifest["job"])
        if old.get("nan_fill") not in (None, manifest["nan_fill"]):
            diff.append("nan_fill")
        if diff:
            why = ": the input changed since this output was started" if any(
                d.startswith("input.") for d in diff) else ""
            raise OutputError(f"{path} holds the output of a different job ({', '.join(diff)} differ{why}); "
                              "pass --overwrite to replace it or choose another -o")
        layout = ome.Layout.of(existing["0"])
        complete = st.get("status") == "complete"
        if complete and old.get("pyramid", False) >= manifest["pyramid"]:
            return None, layout, True
        if complete:              # only levels are missing: every tile is done (the done-log is gone)
            attrs = {k: v for k, v in dict(existing.attrs).items() if k != "ome"}   # no longer looks complete
            existing.attrs.put({**attrs, "hirestile": {**st, "manifest": manifest, "status": "incomplete",
                                                       "tiles": "complete"}})
        elif old != manifest:
            existing.attrs.put({**dict(existing.attrs), "hirestile": {**st, "manifest": manifest}})
        return existing, layout, complete or st.get("tiles") == "complete"
    make_room(path, choose="another -o")
    layout = ome.choose_layout(kind, classes=classes, out_hw=out_hw, tile=tile)
    group = ome.create_output(path, kind=kind, layout=layout, attrs={"manifest": manifest}, classes=classes)
    return group, layout, False


def lock_output(path: str) -> DoneLog:
    """The output's done-log with its writer lock taken; an unwritable output is an OutputError."""
    donelog = DoneLog(path)
    try:
        donelog.lock()
    except OSError as e:
        if isinstance(e, HirestileError):
            raise
        raise OutputError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    return donelog


def all_done(blocks: tuple[int, int, int, int], done: set[tuple[int, int]]) -> bool:
    """Whether every block of the rectangle (i0, i1, j0, j1) is marked done."""
    i0, i1, j0, j1 = blocks
    return all((i, j) in done for i in range(i0, i1) for j in range(j0, j1))


def job_status(path: str) -> dict[str, Any]:
    """How far the job writing the output at ``path`` got, for ``hirestile info``.

    Returns {} for a path that is no zarr group; else ``status`` ("complete" /
    "incomplete"), ``manifest`` (the job, {} for outputs of convert / example),
    ``writer`` (the command that wrote a non-job output) and, for an incomplete
    job, ``blocks_done`` and ``blocks_total``.
    """
    import zarr

    if not (os.path.isdir(path) and ome.is_zarr_dir(path)):
        return {}
    node = zarr.open(path, mode="r")
    if not isinstance(node, zarr.Group):
        return {}
    st = ome.status(node)
    res = {"status": st.get("status"), "manifest": st.get("manifest") or {}, "writer": st.get("writer")}
    if res["manifest"] and res["status"] != "complete":
        gy, gx = ome.Layout.of(node["0"]).grid
        res["blocks_done"], res["blocks_total"] = len(DoneLog(path).load()), gy * gx
    return res


# **** storing a tile durably ****
def store_tile(arr: Any, tile: Tile, logits: np.ndarray, *, kind: str, output: str,
               mark: Callable[[tuple[int, int, int, int]], None] | None = None, work: dict | None = None) -> None:
    """Write a tile's logits into ``arr`` (its ``write`` region: whole blocks) as ``kind``
    (:func:`hirestile.outputs.postprocess`, in the caller's ``work`` arrays when given), fsync
    the blocks, then ``mark`` them done.

    An OSError becomes an :class:`OutputError` naming ``output`` (the output's path).
    """
    store_region(arr, tile.write, postprocess(logits, kind, work), output=output, mark=mark, where=f"tile {tile.index}")


def store_region(arr: Any, region: Any, data: np.ndarray, *, output: str,
                 mark: Callable[[tuple[int, int, int, int]], None] | None = None, where: str | None = None) -> None:
    """Write ``data`` into ``region`` ((y0, y1), (x0, x1): whole blocks) of ``arr``, fsync the blocks,
    then ``mark`` them done; an OSError becomes an :class:`OutputError` naming ``output``."""
    (y0, y1), (x0, x1) = region
    blocks = ome.Layout.of(arr).blocks_of(region)
    try:
        arr[(..., slice(y0, y1), slice(x0, x1))] = data
        files = _block_files(arr, blocks)
        for f in files:
            fsync_path(f)
        for d in {os.path.dirname(f) for f in files}:
            fsync_path(d)
        if mark is not None:
            mark(blocks)
    except OSError as e:
        raise OutputError(f"writing {output} failed at {where or f'rows {y0}-{y1}, cols {x0}-{x1}'} "
                          f"({e.strerror or e}); free space or fix permissions, then rerun the same command "
                          "to resume") from None


def _block_files(arr: Any, blocks: tuple[int, int, int, int]) -> list[str]:
    """Local file paths of the blocks (for fsync); [] for stores that are not local directories."""
    base = local_dir(arr)
    if base is None:
        return []
    i0, i1, j0, j1 = blocks
    lead = (0,) * (arr.ndim - 2)
    return [os.path.join(base, arr.metadata.encode_chunk_key(lead + (i, j)))
            for i in range(i0, i1) for j in range(j0, j1)]


__all__ = ["DoneLog", "differences", "fsync_path", "STATE_DIR", "default_output", "make_room", "open_output",
           "lock_output", "all_done", "job_status", "store_tile", "store_region"]
