"""The scheduler: walk the output in tiles, zarr in -> executor -> zarr out.

Layer 5 of DESIGN.md section 3. One run of :func:`segment_to_zarr`:

1. **plan** — the output's storage *blocks* (shards, or chunks when unsharded)
   are grouped into tiles; a tile writes whole blocks only, so no two writers
   ever touch one shard. Each tile's *read window* is the analyzer's input
   window for it, clipped to the image (the executor reproduces the borders).
2. **resume** — the output's manifest must match this job; blocks already
   marked done are skipped (:mod:`hirestile.resume`).
3. **stream** — a reader thread reads the next tiles' windows (queued as stored,
   uint8 being a quarter of float32), the main thread normalises and computes
   (numba's parallel kernels are called from one thread only), a writer thread
   turns logits into the stored output, writes whole blocks, fsyncs them and
   marks them done. Bounded queues between them keep
   memory at a few tiles, independent of the image size. A ``run_tiles`` runner
   may compute them elsewhere instead (``hirestile.dask_api.cluster_tiles``);
   everything else stays here.
4. **finish** — pyramid levels, OME metadata, resume state removed.

Examples
--------
>>> import numpy as np, zarr, tempfile, os
>>> from hirestile.models.unet import unet
>>> d = tempfile.mkdtemp()
>>> zarr.create_array(os.path.join(d, "in.zarr"), data=np.zeros((3, 50, 70), np.uint8)).shape
(3, 50, 70)
>>> m = unet(in_channels=3, classes=2, base=4, depth=2)
>>> stats = segment_to_zarr(os.path.join(d, "in.zarr"), m, os.path.join(d, "out.zarr"),
...                         tile=32, progress=False)
>>> stats.tiles_total, zarr.open_group(os.path.join(d, "out.zarr"))["0"].shape
(6, (2, 50, 70))
"""
from __future__ import annotations

import ctypes
import os
import queue
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import ome
from .contract import normalize_window
from .errors import HirestileError, InputError, ModelError, OutputError
from .io import InputImage, local_dir, open_image
from .resume import STATE_DIR, DoneLog, differences, fingerprint_arrays, fsync_path

Region = tuple[tuple[int, int], tuple[int, int]]
TILE_CANDIDATES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32)
MEMORY_BUDGET = 2 << 30          # default bytes the executor may use for one tile
# Resident memory of a hirestile process before any tile: Python, NumPy, Numba, zarr, tifffile
# and the compiled kernels. Measured (RSS) on the development machine, Python 3.11, NumPy 2.4,
# Numba 0.68: `python -c "import hirestile"` 100 MiB; with the I/O modules imported and the
# kernels loaded by a 64 x 64 `unet` predict, 192 MiB. Segment runs measured 233-307 MiB at
# peak, i.e. this baseline plus the executor's working memory.
PROCESS_BASELINE = 192 << 20


# **** plan ****
@dataclass(frozen=True)
class Tile:
    """One unit of work: ``out`` (output region, whole blocks) and ``read`` (input window, clipped)."""

    index: int
    out: Region
    blocks: tuple[int, int, int, int]      # block rows [i0, i1) x cols [j0, j1)
    read: Region

    @property
    def read_pixels(self) -> int:
        """Pixels in the read window."""
        (r0, r1), (c0, c1) = self.read
        return (r1 - r0) * (c1 - c0)


@dataclass(frozen=True)
class Plan:
    """How one image is cut: layout of the output, tile size, tiles, and what that costs."""

    layout: ome.Layout
    tile: tuple[int, int]
    tiles: tuple[Tile, ...]
    image_hw: tuple[int, int]

    @property
    def read_redundancy(self) -> float:
        """Input pixels read over all tiles / image pixels (1.0 = each pixel read once)."""
        return sum(t.read_pixels for t in self.tiles) / max(self.image_hw[0] * self.image_hw[1], 1)

    def owner(self) -> dict[tuple[int, int], int]:
        """Block -> the index of the one tile that writes it."""
        own: dict[tuple[int, int], int] = {}
        for t in self.tiles:
            i0, i1, j0, j1 = t.blocks
            for i in range(i0, i1):
                for j in range(j0, j1):
                    if (i, j) in own:
                        raise AssertionError(f"block {(i, j)} written by tiles {own[(i, j)]} and {t.index}")
                    own[(i, j)] = t.index
        return own


def resolve_tile(rep: Any, tile: int | None, *, budget: int = MEMORY_BUDGET) -> int:
    """``tile``, checked to be a positive number of pixels, or :func:`auto_tile` when it is None."""
    if tile is None:
        return auto_tile(rep, budget=budget)
    if tile < 1:
        raise InputError(f"--tile must be a positive number of output pixels, got {tile}; "
                         "e.g. --tile 512, or leave it out to choose one automatically")
    return int(tile)


def auto_tile(rep: Any, *, budget: int = MEMORY_BUDGET) -> int:
    """Largest candidate tile whose executor memory fits ``budget`` bytes."""
    _, oh, ow = rep.output_shape
    for t in TILE_CANDIDATES:
        if rep.tile_memory(min(t, max(oh, ow))) <= budget or t == TILE_CANDIDATES[-1]:
            return t
    return TILE_CANDIDATES[-1]


def make_plan(rep: Any, layout: ome.Layout, tile: int | tuple[int, int]) -> Plan:
    """Group the layout's blocks into tiles of about ``tile`` output pixels (whole blocks each).

    The tile is rounded up to whole blocks. Tiles run row-major.
    """
    ty, tx = (tile, tile) if isinstance(tile, int) else tile
    (h, w), (bh, bw) = layout.shape[-2:], layout.block
    ny, nx = max(1, -(-ty // bh)), max(1, -(-tx // bw))
    gy, gx = layout.grid
    ih, iw = rep.image_shape
    tiles = []
    for i0 in range(0, gy, ny):
        for j0 in range(0, gx, nx):
            i1, j1 = min(i0 + ny, gy), min(j0 + nx, gx)
            out = ((i0 * bh, min(i1 * bh, h)), (j0 * bw, min(j1 * bw, w)))
            (a, b), (c, d) = rep.input_window(out, aligned=True)
            read = ((max(a, 0), min(b, ih)), (max(c, 0), min(d, iw)))
            tiles.append(Tile(len(tiles), out, (i0, i1, j0, j1), read))
    return Plan(layout=layout, tile=(min(ny * bh, h), min(nx * bw, w)), tiles=tuple(tiles), image_hw=(ih, iw))


def compute_redundancy(rep: Any, plan: Plan, exact_up_to: int = 400) -> float:
    """FLOPs the tiles compute / FLOPs of one full-frame pass (1.0 = no halo recomputation).

    Summed over every tile for plans of up to ``exact_up_to`` tiles, else estimated
    from an interior tile.
    """
    if not rep.tileable:
        return 1.0
    _, oh, ow = rep.output_shape
    full = rep.flops_per_pixel * oh * ow
    if len(plan.tiles) <= exact_up_to:
        return sum(rep.region_cost(t.out)[0] for t in plan.tiles) / max(full, 1.0)
    return float(rep.redundancy((min(plan.tile[0], oh), min(plan.tile[1], ow))))


# **** run statistics ****
@dataclass
class RunStats:
    """What a run did and where its time went (seconds)."""

    output: str = ""
    tiles_total: int = 0
    tiles_skipped: int = 0            # already done by an earlier run
    tiles_computed: int = 0
    out_pixels: int = 0               # output pixels written by this run
    in_pixels_read: int = 0
    wall: float = 0.0
    read: float = 0.0                 # reader thread busy
    compute: float = 0.0              # main thread normalising and in the executor
    write: float = 0.0                # writer thread busy
    idle: float = 0.0                 # main thread waiting for input or for the writer
    finish: float = 0.0               # pyramid + metadata
    peak_rss: int = 0
    tile: tuple[int, int] = (0, 0)
    halo: tuple[int, ...] = ()
    read_redundancy: float = 0.0
    compute_redundancy: float = 0.0
    already_complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def mpix_per_s(self) -> float:
        return self.out_pixels / 1e6 / self.wall if self.wall > 0 else 0.0

    def summary(self) -> str:
        """A few lines for the end of ``hirestile segment``."""
        if self.already_complete:
            return f"{self.output} is already complete ({self.tiles_total} tiles); nothing to do"
        busy = 100 * self.compute / self.wall if self.wall else 0.0
        return "\n".join([
            f"wrote {self.output}: {self.tiles_computed} tiles computed"
            + (f", {self.tiles_skipped} already done" if self.tiles_skipped else "")
            + f" in {self.wall:.1f} s, {self.mpix_per_s:.2f} MP/s, peak RSS {self.peak_rss / 2**20:.0f} MiB",
            f"tile {self.tile[0]}x{self.tile[1]}, halo {_halo_text(self.halo)}, redundancy "
            f"{self.read_redundancy:.2f} (input pixels read per image pixel), "
            f"{self.compute_redundancy:.2f} (computed / needed FLOPs)",
            f"time: read {self.read:.1f} s, compute {self.compute:.1f} s ({busy:.0f}% of wall), "
            f"write {self.write:.1f} s, idle {self.idle:.1f} s, finish {self.finish:.1f} s",
        ] + self.notes)


def _halo_text(h: tuple[int, ...]) -> str:
    return f"{h[0]} px" if len(set(h)) == 1 else "(top, left, bottom, right) = " + str(tuple(h))


def peak_rss() -> int:
    """Peak resident set size of this process, bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS.

    Tiles allocate the same large buffers over and over; served from mmap each
    time, every buffer page-faults afresh (0.5-2 GiB/s here). Without mmap and
    trimming, the second tile reuses the first tile's memory. Peak memory stays
    that of one tile. No-op where glibc is absent.

    All threads share one arena (M_ARENA_MAX 1): the reader, the writer and zarr's
    codec threads would otherwise each get an arena of their own and, with trimming
    off, each keep its own peak (measured: 617 against 736 MiB at 8192^2, and no slower).
    Threads that already own an arena keep it, so call this before the first zarr read.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 2 ** 30)      # M_TRIM_THRESHOLD
        libc.mallopt(-4, 0)            # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-8, 1)            # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


# **** model and job identity ****
def model_fingerprint(model: Any) -> str:
    """Hash of a model's weights, ops, input contract and classes."""
    arrays = []
    for n in model.graph.nodes:
        arrays.append((f"{n.name}:{n.op!r}:{n.inputs}", np.zeros(0)))
        arrays += [(f"{n.name}.{k}", np.asarray(v)) for k, v in sorted(n.params.items())]
    arrays.append((repr(model.contract) + repr(tuple(model.classes)), np.zeros(0)))
    return fingerprint_arrays(arrays)


def default_output(input_path: str, model_name: str) -> str:
    """``slide.zarr`` + ``unet`` -> ``slide.unet.zarr`` beside the input."""
    base = os.path.abspath(input_path).rstrip("/")
    for ext in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".ndpi", ".zip"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model_name)
    return f"{base}.{safe}.zarr"


# **** the run ****
TileRunner = Callable[..., None]
"""Computes and durably writes tiles, called as ``run(img, model, rep, arr, todo, donelog, stats, *,
kind, nan_fill, progress, total)``: the opened input, the Model and its Report, the output's
level-0 zarr array, the tiles to do, the resume log (mark each tile's blocks once written), the
RunStats to add to (tiles_computed, out_pixels, in_pixels_read, read/compute/write seconds);
``total`` tiles in all, for the progress bar. :func:`_stream` is this process's;
``hirestile.dask_api.cluster_tiles(client)`` gives a dask cluster's."""
_STOP = object()


PIPELINE_DEPTH = 2                # windows queued for compute, and outputs queued for the writer


def expected_memory(rep: Any, plan: Plan, channels: int) -> tuple[int, int]:
    """(executor bytes, working bytes) for running ``plan``'s tiles in this process. Working
    memory is the executor's memory for one tile plus what the pipeline holds at once. That is
    the windows queued and the one being read, and the outputs queued, the one being written and
    the one being computed. Windows count at 4 bytes a value (any dtype up to float32); the
    largest window is an interior tile's. :data:`PROCESS_BASELINE` comes on top."""
    _, oh, ow = rep.output_shape
    ty, tx = plan.tile
    mem = rep.tile_memory((min(ty, oh), min(tx, ow))) if rep.tileable else rep.region_cost(((0, oh), (0, ow)))[1]
    window = 4 * channels * max(t.read_pixels for t in plan.tiles)
    output = 4 * rep.output_shape[0] * ty * tx
    return mem, mem + window * (PIPELINE_DEPTH + 1) + output * (PIPELINE_DEPTH + 2)


class _Pipeline:
    """Reader thread -> main thread (compute) -> writer thread, through bounded queues."""

    def __init__(self, depth: int = PIPELINE_DEPTH) -> None:
        self.inq: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.outq: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue[Any], item: Any) -> bool:
        """Put unless the pipeline stops; False when stopped."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


NAN_HINT = "pass --nan-fill VALUE to stand in for NaN/Inf (e.g. --nan-fill 0)"


def tile_window(img: InputImage, tile: Tile, raw: np.ndarray, nan_fill: float | None, contract: Any) -> np.ndarray:
    """``raw``, the tile's read window as ``img`` stores it, normalised for the network and checked
    finite (:func:`normalize_window`)."""
    return normalize_window(raw, tile.read, contract, nan_fill, where=f"{img.path}:", hint=NAN_HINT)


def store_tile(arr: Any, tile: Tile, logits: np.ndarray, *, kind: str, output: str,
               mark: Callable[[tuple[int, int, int, int]], None] | None = None) -> None:
    """Write the tile's ``logits`` as ``kind`` into ``arr`` (whole blocks), fsync them, then ``mark(tile.blocks)``.

    An OSError becomes an :class:`OutputError` naming ``output`` (the output's path).
    """
    data = ome.postprocess(logits, kind)
    (y0, y1), (x0, x1) = tile.out
    try:
        arr[(..., slice(y0, y1), slice(x0, x1))] = data
        files, dirs = _block_files(arr, tile, kind)
        for f in files:
            fsync_path(f)
        for d in dirs:
            fsync_path(d)
        if mark is not None:
            mark(tile.blocks)
    except OSError as e:
        raise OutputError(f"writing {output} failed at tile {tile.index} ({e.strerror or e}); "
                          "free space or fix permissions, then rerun the same command to resume") from None


def _block_files(arr: Any, tile: Tile, kind: str) -> tuple[list[str], set[str]]:
    """Local file paths of the tile's blocks and their directories (for fsync)."""
    base = local_dir(arr)
    if base is None:
        return [], set()
    i0, i1, j0, j1 = tile.blocks
    lead = () if kind == "labels" else (0,)
    files = [os.path.join(base, arr.metadata.encode_chunk_key(lead + (i, j)))
             for i in range(i0, i1) for j in range(j0, j1)]
    return files, {os.path.dirname(f) for f in files}


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


def segment_to_zarr(image: str | InputImage, model: Any, output: str | None = None, *,
                    tile: int | None = None, kind: str = "probabilities", threads: int | None = None,
                    overwrite: bool = False, level: int | None = None, axes: str | None = None,
                    nan_fill: float | None = None, pyramid: bool = False, allow_missing: bool = False,
                    progress: bool | None = True, memory_budget: int = MEMORY_BUDGET,
                    log: Callable[[str], None] | None = None, run_tiles: TileRunner | None = None) -> RunStats:
    """Segment an image stored in zarr/TIFF into an OME-Zarr output, tile by tile, resumably.

    Parameters
    ----------
    image : str or InputImage
        Input path (zarr array/group, OME-Zarr, TIFF) or an opened image.
    model : Model or str
        A :class:`hirestile.model.Model`, a built-in model name or a model file.
    output : str, optional
        Output path; default ``<input>.<model>.zarr`` beside the input.
    tile : int, optional
        Output tile side; by default the largest that fits ``memory_budget``.
        Rounded up to whole output shards.
    kind : {"probabilities", "logits", "labels"}
    threads : int, optional
        Numba threads for the kernels (when they run in this process).
    overwrite : bool
        Replace an existing output (of any job) instead of resuming it.
    level, axes : see :func:`hirestile.io.open_image`.
    nan_fill : float, optional
        Value standing in for NaN/Inf input pixels (refused otherwise).
    pyramid : bool
        Add downsampled levels to the output.
    allow_missing : bool
        Read missing input chunks as the fill value even where the input's writer
        stored every chunk (by default that is refused as damage).
    progress : bool or None
        Show a progress bar (tiles, MP/s, ETA); None shows it only on a terminal.
    memory_budget : int
        Bytes the executor may use for one tile when ``tile`` is not given.
    log : callable, optional
        Receives one-line notes (resuming, missing chunks).
    run_tiles : TileRunner, optional
        What computes and writes the tiles; by default this process's reader ->
        compute -> writer stream. ``hirestile.dask_api.cluster_tiles(client)``
        computes them on a dask cluster: same output, manifest and resume log.

    Returns
    -------
    RunStats

    Examples
    --------
    >>> from hirestile.dask_api import cluster_client, cluster_tiles
    >>> with cluster_client(workers=2) as client:     # doctest: +SKIP
    ...     stats = segment_to_zarr("slide.zarr", "unet", run_tiles=cluster_tiles(client))
    """
    from . import api

    t_start = time.perf_counter()
    if kind not in ome.OUTPUT_KINDS:
        raise ValueError(f"output must be one of {', '.join(ome.OUTPUT_KINDS)}, got {kind!r}")
    model = api.as_model(model)
    if run_tiles is None:                          # the tiles are computed in this process
        keep_freed_memory()                        # before zarr starts its threads
    if isinstance(image, InputImage):
        img = image
    else:
        img = open_image(image, level=level, axes=axes, channels=model.contract.channels)
    try:
        return _segment(img, model, output, tile=tile, kind=kind, threads=threads, overwrite=overwrite,
                        nan_fill=nan_fill, pyramid=pyramid, allow_missing=allow_missing, progress=progress,
                        memory_budget=memory_budget, say=log or (lambda s: None), t_start=t_start,
                        run_tiles=run_tiles)
    finally:
        if img is not image:
            img.close()


def _segment(img: InputImage, model: Any, output: str | None, *, tile: int | None, kind: str,
             threads: int | None, overwrite: bool, nan_fill: float | None, pyramid: bool, allow_missing: bool,
             progress: bool | None, memory_budget: int, say: Callable[[str], None], t_start: float,
             run_tiles: TileRunner | None) -> RunStats:
    from . import api

    channels = model.contract.channels
    if img.channels != channels:
        raise InputError(f"{img.path}: has {img.channels} channel(s) (axes {img.axes}, shape {img.shape}) but model "
                         f"{model.name!r} takes {channels}; give a {channels}-channel image or check --axes")
    missing = img.missing_chunks(limit=1 if img.dense else None)
    if missing and img.dense and not allow_missing:
        raise InputError(f"{img.path}: chunk {missing[0]} is missing (its writer stored every chunk, so the "
                         "data is damaged); restore or re-create the input, or pass --allow-missing to read "
                         f"it as fill value {img.array.fill_value}")
    try:
        rep = api.analyze(model, (img.height, img.width))     # its InputError says which sizes the model takes
    except InputError as e:
        raise InputError(f"{img.path}: {e}") from None
    k, oh, ow = rep.output_shape
    if kind == "labels" and k > 255:
        raise ModelError(f"model {model.name!r} has {k} classes, too many for uint8 labels; use --output probabilities")
    tile = resolve_tile(rep, tile, budget=memory_budget)
    if not rep.tileable and (oh > tile or ow > tile):
        rep.check_tileable()                       # raises NotTileableError naming the node
    classes = tuple(model.classes) or tuple(f"class{i}" for i in range(k))
    out_path = output or default_output(img.path, model.name)
    if os.path.abspath(out_path) == os.path.abspath(img.path):
        raise OutputError(f"output {out_path} is the input; choose another -o")

    manifest = {"job": {"model": {"name": model.name, "fingerprint": model_fingerprint(model)},
                        "input": img.identity(), "output": kind, "output_shape": [int(k), int(oh), int(ow)]},
                "nan_fill": nan_fill, "pyramid": bool(pyramid), "classes": list(classes),
                "hirestile": _version()}
    group, layout, tiles_done = _open_output(out_path, manifest=manifest, kind=kind, classes=k, out_hw=(oh, ow),
                                             tile=tile, overwrite=overwrite)
    stats = RunStats(output=out_path, halo=tuple(rep.halo) if rep.tileable else (0, 0, 0, 0))
    if group is None:                              # complete output of this very job
        stats.already_complete, stats.wall = True, time.perf_counter() - t_start
        stats.tiles_total = len(make_plan(rep, layout, tile).tiles)
        return stats
    plan = make_plan(rep, layout, tile)
    stats.tiles_total, stats.tile = len(plan.tiles), plan.tile
    stats.read_redundancy = plan.read_redundancy
    stats.compute_redundancy = compute_redundancy(rep, plan)

    donelog = DoneLog(out_path)
    try:
        donelog.lock()
    except OSError as e:
        if isinstance(e, HirestileError):
            raise
        raise OutputError(f"cannot write {out_path}: {e.strerror or e}; choose a writable output path") from None
    try:
        done = donelog.load()
        todo = [] if tiles_done else [t for t in plan.tiles if not _all_done(t, done)]
        stats.tiles_skipped = len(plan.tiles) - len(todo)
        if stats.tiles_skipped:
            say(f"resuming {out_path}: {stats.tiles_skipped} of {len(plan.tiles)} tiles already done")
        if missing and todo:
            say(f"note: {len(missing)} input chunk(s) are not stored (first {missing[0]}); zarr reads them as "
                f"fill value {img.array.fill_value}")
        if run_tiles is None:                      # the tiles are computed in this process
            if threads:
                import numba
                numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
            run_tiles = _stream
        run_tiles(img, model, rep, group["0"], todo, donelog, stats, kind=kind, nan_fill=nan_fill,
                  progress=progress, total=len(plan.tiles))
        t_fin = time.perf_counter()
        levels = ome.pyramid_levels((oh, ow)) if pyramid else 1
        try:
            if levels > 1:
                ome.build_pyramid(group, kind=kind, base=layout, levels=levels)
            scale = ome.scale_of((img.height, img.width), (oh, ow))
            ome.finalize(group, ome=ome.ome_metadata(kind=kind, classes=classes, name=model.name, levels=levels,
                                                     scale=scale, extra={"model": model.name}))
        except OSError as e:
            raise OutputError(f"writing {out_path} failed ({e.strerror or e}); free space or fix permissions, "
                              "then rerun the same command to finish") from None
        donelog.remove()
        stats.finish = time.perf_counter() - t_fin
    finally:
        donelog.close()
    stats.wall = time.perf_counter() - t_start
    stats.peak_rss = peak_rss()
    return stats


def _version() -> str:
    from . import __version__
    return __version__


def _all_done(t: Tile, done: set[tuple[int, int]]) -> bool:
    i0, i1, j0, j1 = t.blocks
    return all((i, j) in done for i in range(i0, i1) for j in range(j0, j1))


def _open_output(path: str, *, manifest: dict[str, Any], kind: str, classes: int, out_hw: tuple[int, int],
                 tile: int, overwrite: bool) -> tuple[Any, ome.Layout, bool]:
    """Create the output, or reopen it for resume.

    Returns (group, or None when complete; layout; whether every tile is already written).
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
        arr = existing["0"]
        layout = ome.Layout(tuple(arr.shape), tuple(arr.chunks), tuple(arr.shards) if arr.shards else None)
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
    group = ome.create_output(path, kind=kind, layout=layout, attrs={"manifest": manifest})
    return group, layout, False


def _stream(img: InputImage, model: Any, rep: Any, arr: Any, todo: list[Tile], donelog: DoneLog,
            stats: RunStats, *, kind: str, nan_fill: float | None, progress: bool | None, total: int) -> None:
    """This process's :data:`TileRunner`: ``todo`` through reader -> compute -> writer threads;
    raise the first error any stage hit."""
    from tqdm import tqdm

    from . import executor

    pipe = _Pipeline()
    contract = model.contract
    bar = tqdm(total=total, initial=total - len(todo), unit="tile", dynamic_ncols=True,
               disable=None if progress is None else not progress,      # None: only on a terminal
               desc="segment", smoothing=0.1)
    t0 = time.perf_counter()

    def reader() -> None:
        try:
            for t in todo:
                if pipe.stop.is_set():
                    return
                s = time.perf_counter()
                raw = img.read(*t.read)     # queued as stored: uint8 is a quarter of float32
                stats.read += time.perf_counter() - s
                stats.in_pixels_read += raw.shape[1] * raw.shape[2]
                if not pipe.put(pipe.inq, (t, raw)):
                    return
            pipe.put(pipe.inq, _STOP)
        except BaseException as e:          # noqa: BLE001 - handed to the main thread
            pipe.fail(e)

    def writer() -> None:
        try:
            while True:
                item = pipe.outq.get()
                if item is _STOP:
                    return
                t, logits = item
                s = time.perf_counter()
                store_tile(arr, t, logits, kind=kind, output=stats.output, mark=donelog.mark)
                (y0, y1), (x0, x1) = t.out
                stats.write += time.perf_counter() - s
                stats.tiles_computed += 1
                stats.out_pixels += (y1 - y0) * (x1 - x0)
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{stats.out_pixels / 1e6 / el:.2f} MP/s", refresh=False)
                bar.update(1)
        except BaseException as e:          # noqa: BLE001
            pipe.fail(e)
            while True:                     # unblock the main thread
                try:
                    pipe.outq.get_nowait()
                except queue.Empty:
                    break

    # Ctrl-C / SIGTERM stop the run between tiles (an exception raised inside a kernel call
    # can surface as a SystemError); a second signal interrupts at once.
    interrupted = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        sys.stderr.write("\nhirestile: stopping after the tile in progress (signal again to stop at once)\n")

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    rt = threading.Thread(target=reader, name="hirestile-reader", daemon=True)
    wt = threading.Thread(target=writer, name="hirestile-writer", daemon=True)
    rt.start()
    wt.start()
    try:
        while True:
            s = time.perf_counter()
            item = None
            while item is None and not pipe.stop.is_set() and not interrupted.is_set():
                try:
                    item = pipe.inq.get(timeout=0.1)
                except queue.Empty:
                    pass
            stats.idle += time.perf_counter() - s
            if interrupted.is_set():
                raise KeyboardInterrupt
            if item is None or item is _STOP:
                break
            t, raw = item
            s = time.perf_counter()
            window = tile_window(img, t, raw, nan_fill, contract)
            del item, raw
            logits = executor.run_region(rep, window, (t.read[0][0], t.read[1][0]), t.out)
            del window
            stats.compute += time.perf_counter() - s
            s = time.perf_counter()
            if not pipe.put(pipe.outq, (t, logits)):
                break
            stats.idle += time.perf_counter() - s
    except BaseException as e:
        pipe.fail(e)
        raise
    finally:
        # let the writer finish what was computed (those tiles are then durably done)
        while wt.is_alive():
            try:
                pipe.outq.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        wt.join()
        pipe.stop.set()
        rt.join()
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)
    if pipe.error is not None:
        raise pipe.error


__all__ = ["Tile", "Plan", "RunStats", "TileRunner", "make_plan", "auto_tile", "resolve_tile", "segment_to_zarr",
           "default_output", "model_fingerprint", "peak_rss", "keep_freed_memory",
           "tile_window", "store_tile", "make_room", "expected_memory", "PROCESS_BASELINE", "PIPELINE_DEPTH"]
