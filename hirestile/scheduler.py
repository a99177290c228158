"""The scheduler: one job, zarr in -> tiles -> zarr out, resumable.

Layer 5 of docs/architecture.md. One run of :func:`segment_to_zarr`:

1. **plan** -- the output's storage *blocks* (shards, or chunks when unsharded)
   are grouped into tiles (:func:`make_plan`, through :mod:`hirestile.tiling`);
   a tile writes whole blocks only, so no two writers ever touch one shard.
2. **resume** -- the output's manifest must match this job; tiles whose blocks
   are all marked done are skipped (:mod:`hirestile.resume`).
3. **run** -- a tile runner computes and durably writes the rest: by default
   this process's reader -> compute -> writer threads
   (:func:`hirestile.stream.run_local`); ``hirestile.cluster.cluster_tiles``
   computes them on a dask cluster instead. Everything else stays here.
4. **finish** -- pyramid levels, OME metadata, resume state removed.

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

import functools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import executor, masks, ome
from .errors import InputError, ModelError, OutputError
from .executor import precision_label
from .io import InputImage, open_image
from .loading import as_model
from .outputs import MAX_CLASSES, OUTPUT_KINDS, postprocess_bytes
from .resume import all_done, default_output, lock_output, open_output
from .stream import PIPELINE_DEPTH, keep_freed_memory, peak_rss, run_local
from .bands import band_memory, steady_band, stream_reads
from .tiling import Tile, column_strips, cuts, make_tiles
from .version import __version__

# Resident memory of a hirestile process before any tile: Python, NumPy, Numba, zarr, tifffile
# and the compiled kernels. Measured (RSS) on the development machine, Python 3.11, NumPy 2.4,
# Numba 0.68: `python -c "import hirestile"` 100 MiB; with the I/O modules imported and the
# kernels loaded by a 64 x 64 `unet` predict, 192 MiB. Segment runs measured 233-307 MiB at
# peak, i.e. this baseline plus the executor's working memory.
PROCESS_BASELINE = 192 << 20
# Of a budget, the share a plan may fill: what no plan counts (small allocations' heap, thread
# stacks, codec buffers) measured up to 1.1 % over the plan (UNet-64, 192 x 3072 bands: 2043 MiB
# against 2021, session 16), so plans leave 2 %.
HEADROOM = 0.02


def usable(memory: int | None = None) -> int:
    """Bytes of the budget ``memory`` (default :func:`default_memory`) a plan's expected peak
    may take: all but :data:`HEADROOM`."""
    return int((memory or default_memory()) * (1 - HEADROOM))


# **** plan ****
@dataclass(frozen=True)
class Plan:
    """How one image is cut: layout of the output, tile size, tiles, and what that costs."""

    layout: ome.Layout
    tile: tuple[int, int]
    tiles: tuple[Tile, ...]
    image_hw: tuple[int, int]
    stream: bool = False          # tiles run as bands down column strips (strip by strip)
    restarts: bool = False        # streamed strips may restart mid-image (a masked run skips bands)

    @property
    def read_redundancy(self) -> float:
        """Input pixels read over all tiles / image pixels (1.0 = each pixel read once)."""
        return sum(t.read.size for t in self.tiles) / max(self.image_hw[0] * self.image_hw[1], 1)

    def blocks(self, tile: Tile) -> tuple[int, int, int, int]:
        """The block rectangle (i0, i1, j0, j1) a tile writes."""
        return self.layout.blocks_of(tile.write)

    def owner(self) -> dict[tuple[int, int], int]:
        """Block -> the index of the one tile that writes it."""
        own: dict[tuple[int, int], int] = {}
        for t in self.tiles:
            i0, i1, j0, j1 = self.blocks(t)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    if (i, j) in own:
                        raise AssertionError(f"block {(i, j)} written by tiles {own[(i, j)]} and {t.index}")
                    own[(i, j)] = t.index
        return own


def make_plan(rep: Any, layout: ome.Layout, tile: int | tuple[int, int], *, stream: bool = False,
              restarts: bool = False) -> Plan:
    """Group the layout's blocks into tiles of about ``tile`` output pixels (whole blocks each).

    The tile is rounded up to whole blocks. Tiles run row-major, or with ``stream`` column
    strip by column strip, each top to bottom: the order in which a
    :class:`hirestile.bands.Stream` reuses the rows of the band above; their ``read`` is then
    the input rows each band computes from (:func:`hirestile.bands.stream_reads`).
    """
    ty, tx = (tile, tile) if isinstance(tile, int) else tile
    (h, w), (bh, bw) = layout.shape[-2:], layout.block
    sy, sx = max(1, -(-ty // bh)) * bh, max(1, -(-tx // bw)) * bw
    tiles = make_tiles(rep, cuts(h, sy), cuts(w, sx))
    stream = stream and rep.tileable and len(tiles) > 1
    if stream:
        tiles = tuple(stream_reads(rep, [t for strip in column_strips(tiles) for t in strip]))
    return Plan(layout=layout, tile=(min(sy, h), min(sx, w)), tiles=tiles, image_hw=tuple(rep.image_shape),
                stream=stream, restarts=stream and restarts)


# above 256 only multiples of 256: output chunks are 256 x 256, and a tile covers whole chunks
TILE_CANDIDATES = (2048, 1536, 1024, 768, 512, 256, 192, 128, 96, 64, 48, 32)
# strips above 1024 wide are multiples of 1024 (whole shards at every pyramid level)
STRIP_STEP = 1024
# a band of h rows costs about 1 + BAND_COST / h times its FLOPs' time: per band, every layer
# runs its kernels on few rows (a 1/16-resolution layer gets h/16) and copies its line buffer.
# With the skip resident (session 15), UNet-16 on 4096 x 8192 in RAM, same process, 4 interleaved
# rounds, medians: 512 x 8192 bands 9.71 s, 256 x 8192 10.00 s (16 rows: 3.0 %); one pass each:
# 512-row 9.97 s, 256 11.13, 128 12.02, 64 14.24 (16 rows puts 64-row bands 21 % behind 512-row
# ones: short bands cost somewhat more than this). Session 12 measured 256-row bands at 0.77x,
# when every band copied its skips out and back in
BAND_COST = 16


def strip_widths(width: int) -> list[int]:
    """Strip widths to try for an output ``width``, widest first: for each count of strips the
    narrowest width (a multiple of :data:`STRIP_STEP`) that covers the output in that many, so
    that, of two widths needing as many strips (as much recomputed at their edges), the one
    leaving memory for taller bands is tried; then the tile candidates below 1024.

    Examples
    --------
    >>> strip_widths(40960)[:5]
    [40960, 20480, 14336, 10240, 8192]
    >>> strip_widths(3000)[:4]
    [3000, 2048, 1024, 768]
    """
    out = [width]
    for n in range(2, -(-width // STRIP_STEP) + 1):
        w = -(-(-(-width // n)) // STRIP_STEP) * STRIP_STEP
        if w < out[-1]:
            out.append(w)
    return out + [t for t in TILE_CANDIDATES if t < min(out[-1], STRIP_STEP)]


def default_memory() -> int:
    """The default memory budget of a run: a quarter of this machine's RAM, at most 2 GiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(min(2 << 30, ram // 4))


def _memory(rep: Any, band: int, strip: int, *, stream: bool, channels: int,
            read_pixels: int | None = None, restarts: bool = False, itemsize: int = 4) -> tuple[int, int]:
    """(executor bytes, working bytes) of a run with (band, strip) tiles: see :func:`expected_memory`.
    The tile is an interior one; its read window unless ``read_pixels`` gives the largest one.
    ``restarts``: streamed strips may restart mid-image (:func:`hirestile.bands.band_memory`);
    ``itemsize``: bytes of a stored input value (windows are queued as stored)."""
    _, oh, ow = rep.output_shape
    band, strip = min(band, oh), min(strip, ow)
    if not rep.tileable:
        mem = executor.tile_memory(rep, (oh, ow))
        window = channels * rep.image_shape[0] * rep.image_shape[1]
    else:
        region = executor.interior_region(rep, (band, strip))
        if stream:                # the stream's slab and line buffers, and the weights
            mem = band_memory(rep, region, restarts=restarts) + executor.weight_bytes(rep)
        else:                     # the slab laid out for an interior tile (the largest), and the weights
            mem = executor.tile_memory(rep, (band, strip))
        window = channels * executor.image_window(rep, region).size
    if read_pixels is not None:
        window = channels * read_pixels
    # the largest window normalised (float32, the arena's scratch), and the raw windows as stored:
    # the one being computed, those queued, the one being read
    raw = window * (PIPELINE_DEPTH + 2)
    if stream and rep.tileable:   # only a strip's first band reads its whole window (bands.stream_reads)
        steady = steady_band(rep, region)[0].get(rep.graph.input)
        if steady is not None:
            raw = window + channels * steady.size * (PIPELINE_DEPTH + 1)
    windows = 4 * window + itemsize * raw
    output = 4 * rep.output_shape[0] * band * strip
    post = postprocess_bytes("probabilities", rep.output_shape[0], band * strip)    # the most any kind holds
    return mem, mem + windows + output * (PIPELINE_DEPTH + 2) + post


MASKED_SIDE = 1024               # a masked run's tiles: small enough that glass fills whole ones


def choose_tile(rep: Any, tile: int | None, *, stream: bool, memory: int | None = None,
                channels: int = 3, max_side: int | None = None, restarts: bool = False,
                itemsize: int = 4) -> int | tuple[int, int]:
    """The tile a run uses: ``tile`` (checked), else the largest whose expected peak memory
    (:data:`PROCESS_BASELINE` plus :func:`expected_memory`'s working bytes) fits ``memory``
    (default :func:`default_memory`) less :data:`HEADROOM` (:func:`usable`).

    Streamed: of the band heights that fit, each with the widest strip (:func:`strip_widths`)
    that fits it, the one whose time per output pixel is least by the estimate
    redundancy x (1 + :data:`BAND_COST` / band): wider strips recompute less at their edges,
    taller bands cost less per band, and no band recomputes anything above it. Memory grows
    with the strip width, so the widest that fits is found by stepping from the last.
    ``max_side`` caps both sides (a masked run uses :data:`MASKED_SIDE`, so that tiles off
    the mask can be skipped). ``restarts``: streamed strips may restart mid-image (a masked run
    skips bands), whose first band holds more than a strip's first band at the top
    (:func:`hirestile.bands.band_memory`); a resumed run takes care of its own restarts
    (:func:`resumed_todo`).
    """
    if tile is not None:
        if tile < 1:
            raise InputError(f"--tile must be a positive number of output pixels, got {tile}; "
                             "e.g. --tile 512, or leave it out to choose one automatically")
        return int(tile)
    budget = usable(memory) - PROCESS_BASELINE
    _, oh, ow = rep.output_shape
    if stream and rep.tileable:
        widths = [w for w in strip_widths(ow) if not max_side or w <= max_side] or [min(max_side, ow)]
        bands = [b for b in sorted({min(b, oh) for b in TILE_CANDIDATES}, reverse=True)
                 if not max_side or b <= max_side] or [min(max_side, oh)]

        def fits(b: int, w: int) -> bool:
            return _memory(rep, b, w, stream=True, channels=channels, restarts=restarts, itemsize=itemsize)[1] <= budget

        def redundancy(w: int) -> float:
            return strips_redundancy(rep, cuts(ow, w))

        least = redundancy(widths[0])
        best, i = None, len(widths)          # widths[i:]: those that fit the last band tried
        for b in bands:                      # tallest first: each fits a strip at least as wide
            if best is not None and least * (1 + BAND_COST / b) >= best[0]:
                break                        # shorter bands cannot do better
            while i > 0 and fits(b, widths[i - 1]):
                i -= 1
            if i < len(widths):
                cost = redundancy(widths[i]) * (1 + BAND_COST / b)
                if best is None or cost < best[0]:
                    best = (cost, b, widths[i])
        return (best[1], best[2]) if best else (bands[-1], widths[-1])
    else:
        shapes = [(min(t, oh), min(t, ow)) for t in TILE_CANDIDATES]
    if max_side:
        shapes = [(b, w) for b, w in shapes if max(b, w) <= max_side] or shapes[-1:]
    for band, strip in shapes:
        if _memory(rep, band, strip, stream=stream, channels=channels, itemsize=itemsize)[1] <= budget:
            return (band, strip) if stream else max(band, strip)
    band, strip = shapes[-1]
    return (band, strip) if stream else max(band, strip)


def compute_redundancy(rep: Any, plan: Plan, exact_up_to: int = 400) -> float:
    """FLOPs the tiles compute / FLOPs of one full-frame pass (1.0 = no halo recomputation).

    Summed over every tile for plans of up to ``exact_up_to`` tiles, else estimated
    from an interior tile; a streaming plan computes each strip once, top to bottom.
    """
    if not rep.tileable:
        return 1.0
    _, oh, ow = rep.output_shape
    full = rep.flops_per_pixel * oh * ow
    if plan.stream:               # each row of every node once per strip: one strip-high region each
        return strips_redundancy(rep, {tuple(t.write.cols) for t in plan.tiles})
    if len(plan.tiles) <= exact_up_to:
        return sum(rep.region_flops(t.write) for t in plan.tiles) / max(full, 1.0)
    return float(rep.redundancy((min(plan.tile[0], oh), min(plan.tile[1], ow))))


def strips_redundancy(rep: Any, strips: Iterable[tuple[int, int]]) -> float:
    """FLOPs of streaming the output's column ``strips`` (each row of every node once per strip)
    / FLOPs of one full-frame pass."""
    _, oh, ow = rep.output_shape
    return sum(rep.region_flops(((0, oh), c)) for c in strips) / max(rep.flops_per_pixel * oh * ow, 1.0)


# Streaming computes each row once, at a small cost per FLOP (its bands hand the deep layers a
# few rows each: benchmarks/README.md, pipeline.py). Measured stream / tile throughput against
# tile / stream redundancy, zarr -> zarr, quiet Zen 4, after the executor's copies went
# parallel and streamed reads lost their halo (session 12): UNet-16 8192^2 0.85x / 1.05x at
# 1.148, 16384^2 1.10x / 1.14x at 1.164; before (session 11): UNet-32 4096^2 1.04x at 1.31,
# UNet-64 4096^2 1.29x at 1.49. Session 13 (unbuilt concats, quiet): UNet-16 8192^2 1.09x /
# 1.12x at 1.148, 4096^2 0.82x / 1.00x at 1.117. Session 14 (no fresh pages per band in either
# mode, 1024-row bands): 8192^2 1.07x / 1.15x at 1.148, 16384^2 1.05x at 1.164. Session 15
# (resident skip, fewest strips; 512 x 8192 bands): 8192^2 0.88x / 1.23x / 1.01x / 1.23x / 1.10x /
# 1.20x at 1.180, 16384^2 1.09x / 1.25x at 1.195, UNet-32 8192^2 1.47x / 1.34x at 1.42. So
# streaming is the default where overlap tiles would compute at least this much more.
STREAM_GAIN = 1.13


@dataclass(frozen=True)
class Mode:
    """The execution a run takes: streamed bands or overlap tiles, and why."""

    stream: bool
    tile: int | tuple[int, int]
    tile_redundancy: float = 0.0      # computed / needed FLOPs of each candidate
    stream_redundancy: float = 0.0
    chosen: bool = True               # decided here (False: the caller named the mode)

    def describe(self) -> str:
        """One line for the run summary and ``hirestile plan``."""
        what = (f"streamed bands {self.tile[0]}x{self.tile[1]}" if self.stream
                else f"overlap tiles {self.tile}x{self.tile}" if isinstance(self.tile, int)
                else f"overlap tiles {self.tile[0]}x{self.tile[1]}")
        if not self.chosen or not self.stream_redundancy or self.tile_redundancy == self.stream_redundancy:
            return f"mode: {what}"            # nothing was weighed (e.g. one tile covers the image)
        other = "--no-stream for overlap tiles" if self.stream else "--stream for streamed bands"
        return (f"mode: {what} (overlap tiles would compute {self.tile_redundancy:.2f}x the FLOPs of one pass, "
                f"streamed bands {self.stream_redundancy:.2f}x; {other})")


def choose_mode(rep: Any, tile: int | None, stream: bool | None, *, kind: str = "probabilities",
                memory: int | None = None, channels: int = 3, max_side: int | None = None,
                restarts: bool = False, itemsize: int = 4) -> Mode:
    """Streamed bands or overlap tiles, and the tile (:func:`choose_tile`) for it.

    ``stream`` True or False is the caller's choice. None decides: streamed bands when the
    overlap tiles that fit the budget would compute at least :data:`STREAM_GAIN` times the
    FLOPs the streamed bands compute (large halos against small tiles: big models, small
    budgets); overlap tiles otherwise, and whenever ``tile`` or ``max_side`` is given (a tile
    side is an overlap tile's; a masked run's small tiles skip glass) or the network is not
    tileable. Both give the same bits and keep the same memory budget.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = unet(in_channels=3, classes=2, base=16, depth=4).analyze((4096, 4096))
    >>> choose_mode(rep, None, None).stream                # tiles of 2048^2 recompute little
    False
    >>> rep = unet(in_channels=3, classes=2, base=32, depth=4).analyze((8192, 8192))
    >>> m = choose_mode(rep, None, None)                      # 2 GiB: tiles of 1024^2 recompute 46%
    >>> m.stream, m.tile, round(m.tile_redundancy, 2), round(m.stream_redundancy, 2)
    (True, (512, 4096), 1.46, 1.03)
    """
    if stream is not None or tile is not None or max_side is not None or not rep.tileable:
        stream = bool(stream) and rep.tileable
        return Mode(stream, choose_tile(rep, tile, stream=stream, memory=memory, channels=channels,
                                        max_side=max_side, restarts=restarts, itemsize=itemsize), chosen=False)
    k, oh, ow = rep.output_shape
    got = {}
    for s in (False, True):
        t = choose_tile(rep, None, stream=s, memory=memory, channels=channels, restarts=restarts, itemsize=itemsize)
        plan = make_plan(rep, ome.choose_layout(kind, classes=k, out_hw=(oh, ow), tile=t), t, stream=s)
        got[s] = (t, compute_redundancy(rep, plan))
    s = got[False][1] >= STREAM_GAIN * got[True][1]
    return Mode(s, got[s][0], tile_redundancy=got[False][1], stream_redundancy=got[True][1])


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
    planned_rss: int = 0              # the plan's expected peak (hirestile plan), 0 when not computed here
    budget: int = 0                   # the memory budget the tile was chosen for
    tile: tuple[int, int] = (0, 0)
    stream: bool = False              # bands down column strips (else overlap tiles)
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
            + f" in {self.wall:.1f} s, {self.mpix_per_s:.2f} MP/s, peak RSS {self.peak_rss / 2**20:.0f} MiB"
            + (f" (plan {self.planned_rss / 2**20:.0f} MiB, budget {self.budget / 2**20:.0f} MiB)"
               if self.planned_rss else ""),
            f"{'band x strip' if self.stream else 'tile'} {self.tile[0]}x{self.tile[1]}, "
            f"halo {_halo_text(self.halo)}, redundancy "
            f"{self.read_redundancy:.2f} (input pixels read per image pixel), "
            f"{self.compute_redundancy:.2f} (computed / needed FLOPs)",
            f"time: read {self.read:.1f} s, compute {self.compute:.1f} s ({busy:.0f}% of wall), "
            f"write {self.write:.1f} s, idle {self.idle:.1f} s, finish {self.finish:.1f} s",
        ] + self.notes)


def time_saved(skipped: int, per_tile: float) -> str:
    """The summary line of a masked run: the compute time its skipped tiles would have taken,
    estimated as their number times the mean compute time of a tile it computed.

    >>> time_saved(40, 0.5)
    'time saved: about 20.0 s (estimate: 40 skipped tiles x 0.500 s, the mean compute time of a computed tile)'
    """
    return (f"time saved: about {skipped * per_tile:.1f} s (estimate: {skipped} skipped tile"
            f"{'s' if skipped != 1 else ''} x {per_tile:.3f} s, the mean compute time of a computed tile)")


def _halo_text(h: tuple[int, ...]) -> str:
    return f"{h[0]} px" if len(set(h)) == 1 else "(top, left, bottom, right) = " + str(tuple(h))


def expected_memory(rep: Any, plan: Plan, channels: int, itemsize: int = 4) -> tuple[int, int]:
    """(executor bytes, working bytes) for running ``plan``'s tiles in this process. Working
    memory is the executor's memory for one tile plus what the pipeline holds at once. That is
    the windows queued, the one being read and the one being computed, normalised (the arena's
    scratch), and the outputs queued, the one being written and the one being computed, and
    the writer's postprocessing arrays (:func:`hirestile.outputs.postprocess_bytes`, at the
    most any output kind holds). Windows count at ``itemsize`` bytes a value (the input as
    stored: the reader queues it so), and the one being computed once more at 4 (normalised,
    float32); the largest window is an interior tile's (a streamed plan's: a strip's first
    band's, the others reading only their new rows; with ``plan.restarts``, an interior
    band's, restarting its strip). Executor memory is the slab of node buffers laid out
    for an interior tile (:func:`hirestile.executor.region_memory`), or for a streaming plan an
    interior band's slab plus the line buffers (:func:`hirestile.bands.band_memory`), and the
    weights as the kernels hold them (:func:`hirestile.executor.weight_bytes`).
    :data:`PROCESS_BASELINE` comes on top. :func:`choose_tile` uses the same figure with an
    interior tile's window, which no tile of the plan exceeds, so a chosen tile fits."""
    return _memory(rep, *plan.tile, stream=plan.stream, channels=channels, restarts=plan.restarts, itemsize=itemsize,
                   read_pixels=None if plan.restarts else max(t.read.size for t in plan.tiles))


def restart_memory(rep: Any, plan: Plan, channels: int, budget: int, itemsize: int = 4) -> tuple[int, bool]:
    """(expected peak bytes, whether it fits) of ``plan`` run with a streamed strip restarting
    mid-image, where its first band computes its cone above it too: it fits within the budget
    less :data:`HEADROOM`, or the plan's own figure where that is larger (a ``--tile`` the
    budget does not hold)."""
    peak = PROCESS_BASELINE + expected_memory(rep, replace(plan, restarts=True), channels, itemsize)[1]
    return peak, peak <= max(usable(budget), PROCESS_BASELINE + expected_memory(rep, plan, channels, itemsize)[1])


def resumed_todo(rep: Any, plan: Plan, todo: list[Tile], channels: int, budget: int,
                 itemsize: int = 4) -> list[Tile]:
    """The tiles a resumed run computes: ``todo``, the tiles not yet done, unless some strip
    of a streamed plan would restart mid-image and that restart does not fit the memory the
    run may take (:func:`restart_memory`): its first band computes its cone above it too,
    more than a strip's first band at the top holds (:func:`hirestile.bands.band_memory`;
    256-row bands of UNet-64: +235 MiB). Such strips
    run from their top again, their done bands recomputed and rewritten with the same bits.
    A plan made for restarts (``plan.restarts``: a masked run) fits them already.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = unet(in_channels=3, classes=2, base=4, depth=2).analyze((64, 64))
    >>> plan = make_plan(rep, ome.choose_layout("labels", classes=2, out_hw=(64, 64), tile=16), 16, stream=True)
    >>> rest = [t for t in plan.tiles if t.write.rows[0] >= 32]       # done: the top half of every strip
    >>> len(rest), len(resumed_todo(rep, plan, rest, 3, 2 << 30))     # 2 GiB: the restarts fit
    (8, 8)
    >>> len(resumed_todo(rep, plan, rest, 3, 1 << 20))                # 1 MiB: each strip from its top
    16
    """
    if not plan.stream or plan.restarts or not todo or len(todo) == len(plan.tiles) \
            or restart_memory(rep, plan, channels, budget, itemsize)[1]:
        return todo
    want, out = {t.index for t in todo}, []
    for strip in column_strips(plan.tiles):
        idx = [k for k, t in enumerate(strip) if t.index in want]
        out += strip[:idx[-1] + 1] if idx and idx != list(range(len(idx))) else [strip[k] for k in idx]
    return out


# **** the run ****
TileRunner = Callable[..., None]
"""Computes and durably writes tiles, called as ``run(img, model, rep, arr, todo, donelog, stats, *,
kind, nan_fill, progress, total)``: the opened input, the Model and its Report, the output's
level-0 zarr array, the tiles to do, the resume log (mark each tile's blocks once written), the
RunStats to add to (tiles_computed, out_pixels, in_pixels_read, read/compute/write seconds);
``total`` tiles in all, for the progress bar. :func:`hirestile.stream.run_local` is this
process's; ``hirestile.cluster.cluster_tiles(client)`` gives a dask cluster's."""

def segment_to_zarr(image: str | InputImage, model: Any, output: str | None = None, *,
                    tile: int | None = None, kind: str = "probabilities", threads: int | None = None,
                    overwrite: bool = False, level: int | None = None, axes: str | None = None,
                    nan_fill: float | None = None, pyramid: bool = False, allow_missing: bool = False,
                    progress: bool | None = True, memory: int | None = None,
                    log: Callable[[str], None] | None = None, run_tiles: TileRunner | None = None,
                    stream: bool | None = None, mask: Any = None, precision: str = "fp32") -> RunStats:
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
        Output tile side (band height and strip width when streaming); by default
        the largest whose expected peak memory fits ``memory`` (:func:`choose_tile`).
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
    memory : int, optional
        The run's memory budget in bytes (default :func:`default_memory`: a quarter
        of the RAM, at most 2 GiB); the tile is chosen so that the plan's expected
        peak (``hirestile plan``) fits it.
    log : callable, optional
        Receives one-line notes (resuming, missing chunks).
    run_tiles : TileRunner, optional
        What computes and writes the tiles; by default this process's reader ->
        compute -> writer stream. ``hirestile.cluster.cluster_tiles(client)``
        computes them on a dask cluster: same output, manifest and resume log.
    stream : bool, optional
        True: run the tiles as bands moving down column strips, each intermediate row
        computed once per strip (:class:`hirestile.bands.Stream`); False: every tile with its
        own halo (overlap tiles). None (default): :func:`choose_mode` decides from the plan --
        streamed bands where overlap tiles would recompute a lot (big models, small budgets,
        e.g. UNet-64 at 4096^2 in 2 GiB: 2.06x the FLOPs against 1.38x, streamed 1.29x
        faster), overlap tiles elsewhere (UNet-16: tiles 1.12-1.23x, measured as fast as
        streaming), and the summary says which and why. Same bits and the same memory
        promise either way. Runs on a cluster (``run_tiles``) use overlap tiles.
    mask : "auto", path or array, optional
        Compute only the tiles that touch the mask's foreground; the rest hold fill 0, are
        marked done and the mask is written as ``labels/mask`` (:mod:`hirestile.masks`).
    precision : {"fp32", "bf16"}
        The executor's arithmetic (:func:`hirestile.predict`); a bf16 output is its own job
        (the manifest records it, so a resume never mixes the two), and the summary names the
        instruction path that ran.

    Returns
    -------
    RunStats

    Examples
    --------
    >>> from hirestile.cluster import cluster_client, cluster_tiles
    >>> with cluster_client(workers=2) as client:     # doctest: +SKIP
    ...     stats = segment_to_zarr("slide.zarr", "unet", run_tiles=cluster_tiles(client))
    """
    t_start = time.perf_counter()
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    model = as_model(model)
    if run_tiles is None:                          # the tiles are computed in this process
        keep_freed_memory()  # before zarr starts its threads
    if isinstance(image, InputImage):
        img = image
    else:
        img = open_image(image, level=level, axes=axes, channels=model.contract.channels)
    try:
        return _segment(img, model, output, tile=tile, kind=kind, threads=threads, overwrite=overwrite,
                        nan_fill=nan_fill, pyramid=pyramid, allow_missing=allow_missing, progress=progress,
                        memory=memory, say=log or (lambda s: None), t_start=t_start,
                        run_tiles=run_tiles, stream=stream, mask=mask, precision=precision)
    finally:
        if img is not image:
            img.close()


def _segment(img: InputImage, model: Any, output: str | None, *, tile: int | None, kind: str,
             threads: int | None, overwrite: bool, nan_fill: float | None, pyramid: bool, allow_missing: bool,
             progress: bool | None, memory: int | None, say: Callable[[str], None], t_start: float,
             run_tiles: TileRunner | None, stream: bool | None, mask: Any = None, precision: str = "fp32") -> RunStats:
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
        rep = model.analyze((img.height, img.width), precision)   # its InputError says which sizes it takes
    except InputError as e:
        raise InputError(f"{img.path}: {e}") from None
    k, oh, ow = rep.output_shape
    if kind == "labels" and k > MAX_CLASSES:
        raise ModelError(f"model {model.name!r} has {k} output channels, too many for uint16 labels; "
                         "use --output probabilities")
    mode = choose_mode(rep, tile, False if run_tiles is not None else stream, kind=kind, memory=memory,
                       channels=channels, max_side=MASKED_SIDE if mask is not None else None,
                       restarts=mask is not None, itemsize=img.dtype.itemsize)
    stream, tile = mode.stream, mode.tile
    if not rep.tileable and (oh > tile or ow > tile):
        rep.check_tileable()                       # raises NotTileableError naming the node
    classes = tuple(model.classes) or tuple(f"class{i}" for i in range(k))
    out_path = output or default_output(img.path, model.name)
    if os.path.abspath(out_path) == os.path.abspath(img.path):
        raise OutputError(f"output {out_path} is the input; choose another -o")

    manifest = {"job": {"model": {"name": model.name, "fingerprint": model.fingerprint},
                        "input": img.identity(), "output": kind, "output_shape": [int(k), int(oh), int(ow)]},
                "nan_fill": nan_fill, "pyramid": bool(pyramid), "classes": list(classes),
                "hirestile": __version__}
    if precision != "fp32":                        # other bits: its own job (fp32 manifests unchanged)
        manifest["job"]["precision"] = precision
    mk = masks.make_mask(mask, img)
    if mk is not None:                             # a masked run is its own job
        manifest["job"]["mask"] = mk.identity()
    group, layout, tiles_done = open_output(out_path, manifest=manifest, kind=kind, classes=k, out_hw=(oh, ow),
                                             tile=tile, overwrite=overwrite)
    stats = RunStats(output=out_path, halo=tuple(rep.halo) if rep.tileable else (0, 0, 0, 0))
    if group is None:                              # complete output of this very job
        stats.already_complete, stats.wall = True, time.perf_counter() - t_start
        stats.tiles_total = len(make_plan(rep, layout, tile).tiles)
        return stats
    plan = make_plan(rep, layout, tile, stream=stream, restarts=mask is not None)
    stats.tiles_total, stats.tile, stats.stream = len(plan.tiles), plan.tile, plan.stream
    stats.read_redundancy = plan.read_redundancy
    stats.compute_redundancy = compute_redundancy(rep, plan)
    if mode.chosen and plan.stream == mode.stream:
        stats.notes.append(mode.describe())
    if precision != "fp32":
        stats.notes.append(f"precision: {precision_label(precision)}")

    donelog = lock_output(out_path)
    try:
        done = donelog.load()
        todo = [] if tiles_done else [t for t in plan.tiles if not all_done(plan.blocks(t), done)]
        off = 0
        pixel = ome.output_scale((img.height, img.width), (oh, ow), img.pixel_size, img.pixel_unit)
        if mk is not None:                         # tiles off the mask: marked done, left as fill 0
            todo, off = masks.apply_mask(mk, plan, todo, donelog, group, (oh, ow), pixel)
            stats.notes.append(f"mask {mk.source}: {off} of {len(plan.tiles)} tiles "
                               f"({100 * off / max(len(plan.tiles), 1):.0f}%) outside it, not computed")
        again = resumed_todo(rep, plan, todo, channels, memory or default_memory(), img.dtype.itemsize)
        if len(again) > len(todo):
            stats.notes.append(f"resumed: {len(again) - len(todo)} done band(s) computed again, so that each "
                               "strip restarts from its top: a restart mid-image would not fit the memory budget")
        todo = again
        stats.tiles_skipped = len(plan.tiles) - len(todo) - off
        if stats.tiles_skipped:
            say(f"resuming {out_path}: {stats.tiles_skipped} of {len(plan.tiles)} tiles already done")
        if missing and todo:
            say(f"note: {len(missing)} input chunk(s) are not stored (first {missing[0]}); zarr reads them as "
                f"fill value {img.array.fill_value}")
        if run_tiles is None:                      # the tiles are computed in this process
            stats.planned_rss = PROCESS_BASELINE + expected_memory(rep, plan, channels, img.dtype.itemsize)[1]
            stats.budget = memory or default_memory()
            if threads:
                import numba
                numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
            run_tiles = functools.partial(run_local, streaming=plan.stream)
        run_tiles(img, model, rep, group["0"], todo, donelog, stats, kind=kind, nan_fill=nan_fill,
                  progress=progress, total=len(plan.tiles))
        if mk is not None and off and stats.tiles_computed:
            stats.notes.append(time_saved(off, stats.compute / stats.tiles_computed))
        t_fin = time.perf_counter()
        levels = ome.pyramid_levels((oh, ow)) if pyramid else 1
        try:
            if levels > 1:
                ome.build_pyramid(group, kind=kind, base=layout, levels=levels)
            ome.finalize(group, ome=ome.ome_metadata(kind=kind, classes=classes, name=model.name, levels=levels,
                                                     scale=pixel[0], unit=pixel[1], extra={"model": model.name}))
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






__all__ = ["Plan", "RunStats", "TileRunner", "make_plan", "choose_tile", "default_memory", "segment_to_zarr", "compute_redundancy", "expected_memory",
           "PROCESS_BASELINE", "HEADROOM", "usable", "restart_memory", "resumed_todo"]
