"""The dataflow executor: row bands moving down column strips, each intermediate row once.

Layer 4 of docs/architecture.md, beside :mod:`hirestile.executor` (whose region runner it
drives). A :class:`Stream` runs consecutive output bands of one column strip: every node
keeps, between bands, the rows the next band computes again (its line buffer, whose height
the region arithmetic gives) and computes only the rows below them. :func:`stream_stages`
reports that mapping per stage, the way a dataflow compiler reports placement (``hirestile
plan``). The kernels give a row the same bits in any region, so a streamed run equals the
overlap-tile and full-frame runs bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report, align, empty, hull, sources
from hirestile.executor import Buf
from hirestile.graph import op_label, padding_mode
from hirestile.region import Region
from hirestile.tiling import Tile


class Stream:
    """Row bands moving down one column strip, each intermediate row computed once.

    Call :meth:`run` with consecutive output bands of the same columns (top to bottom).
    Every node keeps a frontier: the rows it has computed so far. A band computes, per
    node, only the rows below its frontier that its consumers read for their own new rows
    (:func:`plan_band`), and between bands each node keeps in a line buffer just the rows
    its consumers will read again: a kernel's halo for most nodes, about the network's halo
    for a UNet's skips, whose decoder side runs behind the encoder. Any other sequence of
    regions is correct too (a band that does not continue the one above starts afresh). The
    output equals :func:`run_region`'s bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> from hirestile.models.unet import unet
    >>> rep = unet(in_channels=1, classes=2, base=4, depth=2).analyze((50, 40))
    >>> x = np.random.default_rng(0).random((1, 50, 40), np.float32)
    >>> s = Stream(rep)
    >>> bands = [s.run(x, (0, 0), ((y, min(y + 16, 50)), (0, 40))) for y in range(0, 50, 16)]
    >>> np.array_equal(np.concatenate(bands, axis=1), executor.run_full(rep, x))
    True
    """

    def __init__(self, rep: Report, arena: executor.Arena | None = None) -> None:
        self.rep = rep
        self.lines: dict[str, Buf] = {}
        self.arena = executor.Arena() if arena is None else arena   # band buffers, reused band after band
        self._at: tuple[int, tuple[int, int]] | None = None          # (next row, cols) that continues the strip
        self._done: dict[str, int] = {}                              # per node: rows computed so far
        self.resident: dict[str, int] = {}                            # buffers kept in place between bands (room)

    def run(self, window: np.ndarray, origin: tuple[int, int], out_region: Region,
            out: np.ndarray | None = None) -> np.ndarray:
        """The band ``out_region`` (as :func:`run_region`, into ``out`` when given), reusing
        the rows above; a band that starts the strip runs in pieces (:func:`fresh_pieces`)."""
        (y0, y1), (x0, x1) = out_region
        pieces = self.pieces(out_region)
        if out is None and len(pieces) > 1:
            out = np.empty((self.rep.output_shape[0], y1 - y0, x1 - x0), np.float32)
        for piece in pieces:
            held, comp, keep, fresh = self.advance(piece)
            if fresh:                         # which buffers stay resident: decided per strip, for running only
                slab, self.resident = stream_room(self.rep, Region((y0, y1), (x0, x1)))
                self.arena.reserve(slab)
            part = out if out is None or len(pieces) == 1 else out[:, piece.rows[0] - y0:piece.rows[1] - y0]
            res = executor._run(self.rep, window, origin, piece, (held, comp, keep), self.lines, self.arena,
                                self.arena.lines, part, self.resident)
            if not keep:                      # the strip's last band: nothing to carry on
                self.lines = {}
        return res if len(pieces) == 1 else out

    def pieces(self, out_region: Region) -> tuple[Region, ...]:
        """The pieces the band ``out_region`` runs as: :func:`fresh_pieces` where it starts
        the strip afresh (:meth:`advance`), else the band whole."""
        (y0, y1), cols = out_region
        band = Region((y0, y1), tuple(cols))
        return fresh_pieces(self.rep, band) if self._at != (y0, tuple(cols)) else (band,)

    def advance(self, out_region: Region) -> tuple[dict[str, Region], dict[str, Region], dict[str, int], bool]:
        """Plan the band ``out_region`` (:func:`plan_band`) and move the frontier past it:
        (held, computed, keep, fresh). A band that does not continue the one above starts the
        strip afresh (``fresh``; its line buffers dropped); after a band that keeps nothing
        (the strip's last) the next starts afresh too. :meth:`run` and :func:`stream_reads`
        both go through here, so the reader's windows and the bands' needs follow one rule."""
        (y0, y1), cols = out_region
        cols = tuple(cols)
        fresh = self._at != (y0, cols)
        if fresh:
            self.lines, self._done = {}, {}
        held, comp, keep, self._done = plan_band(self.rep, Region((y0, y1), cols), self._done,
                                                 last=y1 >= self.rep.output_shape[1])
        self._at = (y1, cols) if keep else None
        return held, comp, keep, fresh

    @property
    def nbytes(self) -> int:
        """Bytes held in line buffers between bands."""
        return sum(b.data.nbytes for b in self.lines.values())


def plan_band(rep: Report, band: Region, done: dict[str, int], *, last: bool = False
              ) -> tuple[dict[str, Region], dict[str, Region], dict[str, int], dict[str, int]]:
    """What each node does for ``band`` given ``done`` (per node, the rows computed by the
    bands above; empty for the first band of a strip): (held, computed, keep, done after).

    Walking the graph from the output back, a node computes from its frontier down to the
    last row its consumers read for their new rows (grown to its kernel route's row step),
    and holds from the first row they read. ``keep[name]`` is the first row the consumers
    will read in the next band: rows from there on are the node's line buffer (none after
    the ``last`` band). Columns are the strip's, as :meth:`Report.regions` gives them."""
    g, shapes = rep.graph, rep.shapes
    held, comp = executor.regions_of(rep, band)
    if not done:
        new_done = {name: r.rows[1] for name, r in comp.items()}
        return held, comp, ({} if last else _keep_rows(rep, band, comp, new_done)), new_done
    cols = {name: r.cols for name, r in held.items()}
    reads: dict[str, tuple[int, int]] = {g.output: tuple(band.rows)}
    held, comp, new_done = {}, {}, dict(done)
    fused = executor.fused_concats(rep)
    for n in reversed(g.nodes):
        r = reads.get(n.name)
        if n.name not in cols or r is None or empty(r):
            continue
        s = done[n.name]
        e = max(s, align(r, rep.steps.get(n.name, (1, 1))[0])[1])
        held[n.name] = Region((min(r[0], s), e), cols[n.name])
        comp[n.name] = Region((s, e), cols[n.name])
        new_done[n.name] = e
        # an unbuilt concat (executor.fused_concats) holds nothing: its inputs hold all its rows
        rows = (min(r[0], s), e) if n.name in fused else (s, e)
        if rows[1] > rows[0]:
            for k, t in enumerate(n.inputs):
                src = _rows_read(n, k, rows, shapes)
                if src is not None:
                    reads[t] = hull(reads.get(t), src)
    r = reads.get(g.input)
    if g.input in cols and r is not None and not empty(r):     # the input rows the band reads
        held[g.input] = comp[g.input] = Region(r, cols[g.input])
        new_done[g.input] = max(done.get(g.input, 0), r[1])
    return held, comp, ({} if last else _keep_rows(rep, band, comp, new_done)), new_done


def fresh_pieces(rep: Report, band: Region) -> tuple[Region, ...]:
    """The pieces a :class:`Stream` runs ``band`` as when it starts a strip afresh: the band
    whole, or cut in two where that holds less.

    A band that starts a strip computes every node's rows from the top of its cone, about a
    network's halo more rows at every level than a band that continues from kept rows (the
    encoder's full-resolution layers: 822 rows for a 512-row band of UNet-16), and more again
    mid-image (a resumed or masked run), where the cone reaches above it too. Cut at row
    ``s``, the first piece computes the cone of rows ``(y0, s)`` and the second only the rows
    below it; ``s``, a multiple of the network's tile step from ``y0``, is where the larger
    of the two pieces' slabs (:func:`hirestile.executor.region_memory`) is least. The first
    grows with ``s`` and the second shrinks, so a bisection finds it. Any sequence of bands
    gives the same bits, so the pieces' are the band's.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = unet(in_channels=3, classes=2, base=16, depth=4).analyze((4096, 4096))
    >>> fresh_pieces(rep, Region((0, 512), (0, 4096)))
    (Region(rows=(0, 208), cols=(0, 4096)), Region(rows=(208, 512), cols=(0, 4096)))
    """
    (y0, y1), cols = band
    band = Region((y0, y1), tuple(cols))
    return _remembered(rep, ("fresh_pieces", band), lambda: _fresh_pieces(rep, band))


def _remembered(rep: Report, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, made once per report and kept in :attr:`Report.memo` (plain data only:
    nothing there may refer back to the report)."""
    if key not in rep.memo:
        rep.memo[key] = make()
    return rep.memo[key]


def _fresh_pieces(rep: Report, band: Region) -> tuple[Region, ...]:
    (y0, y1), _ = band
    cuts = list(range(y0 + rep.tile_step[0], y1, rep.tile_step[0]))
    if not cuts:
        return (band,)
    last = y1 >= rep.output_shape[1]

    def slabs(s: int) -> tuple[int, int]:
        first = plan_band(rep, Region((y0, s), band.cols), {})
        second = plan_band(rep, Region((s, y1), band.cols), first[3], last=last)
        return executor.region_memory(rep, *first[:2]), executor.region_memory(rep, *second[:2])

    lo, hi = 0, len(cuts) - 1                 # the first cut where the first piece holds as much as the second
    while lo < hi:
        mid = (lo + hi) // 2
        a, b = slabs(cuts[mid])
        lo, hi = (lo, mid) if a >= b else (mid + 1, hi)
    best = min((max(slabs(cuts[i])), cuts[i]) for i in {lo, max(lo - 1, 0)})
    if best[0] >= executor.region_memory(rep, *executor.regions_of(rep, band)):
        return (band,)
    s = best[1]
    return Region((y0, s), band.cols), Region((s, y1), band.cols)


def _fresh_plans(rep: Report, band: Region) -> list[tuple[dict[str, Region], dict[str, Region], dict[str, int]]]:
    """(held, computed, keep) of each of :func:`fresh_pieces` of ``band``, run in turn."""
    done: dict[str, int] = {}
    res = []
    for piece in fresh_pieces(rep, band):
        held, comp, keep, done = plan_band(rep, piece, done, last=piece.rows[1] >= rep.output_shape[1])
        res.append((held, comp, keep))
    return res


def stream_reads(rep: Report, tiles: Iterable[Tile]) -> Iterator[Tile]:
    """``tiles`` (bands, strip by strip, top to bottom) with each ``read`` narrowed to the
    input rows a :class:`Stream` running them in that order holds for the band: the rows its
    first layers compute from, not the network's halo above, which the band above already
    carried through every layer. The reader of a streamed run reads these (a 768-row band of
    UNet-16 reads 768 rows instead of about 1130). Planned by a :class:`Stream`'s own
    :meth:`Stream.advance`, so a window given this way always covers what the band needs (the
    executor checks it)."""
    planner = Stream(rep)                     # planning only: its arena stays empty
    for t in tiles:
        need, fresh = None, None
        for piece in planner.pieces(t.write):    # a band starting a strip: the rows all its pieces read
            held, _, _, first = planner.advance(piece)
            fresh = first if fresh is None else fresh
            r = held.get(rep.graph.input)
            if r is not None:
                need = r if need is None else Region(hull(need.rows, r.rows), r.cols)
        if need is None and not fresh:        # the bands above computed every row it reads
            need = Region((t.read.rows[0], t.read.rows[0]), t.read.cols)
        yield t if need is None else replace(t, read=need)


def _rows_read(n, k: int, rows: tuple[int, int], shapes) -> tuple[int, int] | None:
    """Rows of input ``k`` that node ``n`` reads (inside the map) to compute ``rows``."""
    ins = [shapes[t] for t in n.inputs]
    iv = n.op.in_interval(k, 0, rows, ins, shapes[n.name])
    if iv is None:
        return None
    src = sources(iv, ins[k][1], padding_mode(n.op, k)[0])
    return None if empty(src) else src


def _keep_rows(rep: Report, band: Region, comp: dict[str, Region], done: dict[str, int]) -> dict[str, int]:
    """Per node, the first row its consumers read when they next compute (from their new
    frontier on): the start of the line buffer it keeps for the next band."""
    g = rep.graph
    keep = {g.output: band.rows[1]} if g.output in comp else {}
    for n in g.nodes:
        if n.name not in comp or n.name == g.input:
            continue
        for k, t in enumerate(n.inputs):
            if t in comp and t != g.input:
                src = _rows_read(n, k, (done[n.name], done[n.name] + 1), rep.shapes)
                if src is not None:
                    keep[t] = min(keep.get(t, src[0]), src[0])
    for name, inputs in executor.fused_concats(rep).items():    # an unbuilt concat's rows are kept by its inputs
        if name in keep:
            for t in inputs:
                if t in comp:
                    keep[t] = min(keep.get(t, keep[name]), keep[name])
    return keep


@dataclass(frozen=True)
class Stage:
    """One stage of a streamed run (a node of the prepared graph: a conv with its folded
    batch-norm and activation is one stage), for one band in steady state."""

    name: str
    op: str
    channels: int
    rows: int              # rows of the node's tensor the band holds (computed region)
    cols: int
    line_rows: int         # of those, rows kept for the next band (the line buffer)
    line_bytes: int
    flops: float           # FLOPs the band computes: only the rows not kept from the band above
    resident: bool = False  # its buffer kept in memory of its own, the line buffer in place (resident_nodes)


def steady_band(rep: Report, band: Region) -> tuple[dict[str, Region], dict[str, Region], dict[str, int]]:
    """(held, computed, keep) of :func:`plan_band` for ``band`` as a :class:`Stream` runs it
    after the bands of the same height above it (two of them set every frontier)."""
    (y0, y1), cols = band
    h = max(y1 - y0, 1)
    done: dict[str, int] = {}
    for a in range(max(0, y0 - 2 * h), y0, h):
        done = plan_band(rep, Region((a, min(a + h, y0)), tuple(cols)), done)[3]
    return plan_band(rep, Region((y0, y1), tuple(cols)), done, last=y1 >= rep.output_shape[1])[:3]


def stream_stages(rep: Report, band: Region) -> list[Stage]:
    """Per stage, what a :class:`Stream` holds and computes for ``band`` in steady state
    (:func:`steady_band`): rows held (kept from above plus computed), rows it keeps for the
    band below, FLOPs of the rows it computes."""
    held, comp, keep = steady_band(rep, band)
    fused = executor.fused_concats(rep)
    res = resident_nodes(rep, band)
    stages = []
    for n in rep.graph.nodes:
        if n.name not in held:
            continue
        (a, b), (c, d) = held[n.name]
        line = _line_rows(n.name, held, keep, fused)
        ch = rep.shapes[n.name][0]
        (p, q), _ = comp[n.name]
        note = " (unbuilt: read in place)" if n.name in fused else " (resident: kept in place)" if n.name in res else ""
        stages.append(Stage(n.name, op_label(n.op) + note, ch, b - a, d - c, line, 4 * ch * line * (d - c),
                            rep.node_flops(n) * (q - p) * (d - c), n.name in res))
    return stages


def _line_rows(name: str, held: dict[str, Region], keep: dict[str, int], fused: Mapping) -> int:
    """Rows node ``name`` keeps for the next band (an unbuilt concat: none, its inputs keep them)."""
    return max(0, held[name].rows[1] - keep[name]) if name in keep and name not in fused else 0


def line_buffer_bytes(rep: Report, band: Region) -> int:
    """Bytes a :class:`Stream` keeps between ``band`` and the band of the same height below it."""
    return sum(s.line_bytes for s in stream_stages(rep, band))


def stream_room(rep: Report, band: Region) -> tuple[int, dict[str, int]]:
    """What a :class:`Stream` reserves at ``band``, the first of a strip, for the bands below
    it, in float32 values: its arena slab, and per node of :func:`resident_nodes` its own
    buffer, each the largest the strip needs (the first band's pieces, steady bands; a
    restart mid-image where ``band`` is one). Memory set aside once: a resident buffer never
    grows while it holds a line buffer, and the slab never grows (a grown one takes fresh
    pages) when the bands below outgrow the first band's pieces."""
    parts = _BandParts.of(rep, band, restarts=band.rows[0] > 0)
    res = parts.residents()
    return parts.slab(res) // 4, {n: b // 4 for n, b in parts.resident_bytes(res).items()}


def band_memory(rep: Report, band: Region, *, restarts: bool = True) -> int:
    """Bytes a :class:`Stream` holds running bands like ``band`` (its height and columns, on
    the grid of its height, where a strip's bands lie): its arena slab, laid out for the
    largest of a strip's first band (in its pieces, :func:`fresh_pieces`), a band restarting
    the strip mid-image (a resumed or masked run: its cone reaches above it too), the band
    below the first, and two consecutive steady bands (the kernels' row steps can make them
    differ)
    (:func:`hirestile.executor.region_memory`); the resident nodes' own buffers
    (:func:`resident_nodes`), each as large as the largest of those bands needs; and per
    other node one line buffer's memory (``Arena.lines``): the rows a band reads from it are
    copied into the node's buffer before the node's new rows are kept in the same memory, so
    it holds the larger of the two. ``restarts=False``: for a run whose strips all start at
    the top (:func:`hirestile.api.predict`), without the restart mid-image."""
    parts = _BandParts.of(rep, band, restarts=restarts)
    return parts.memory(parts.residents())


def resident_nodes(rep: Report, band: Region) -> frozenset[str]:
    """The nodes whose band buffers a :class:`Stream` running bands like ``band`` keeps in
    memory of their own from band to band (:meth:`hirestile.executor.Arena.resident`).

    Candidates are the nodes read after the next node runs (a UNet's skips, which the
    decoder reads about a network's halo of rows behind the encoder: the largest line
    buffers); each, largest line buffer first, is made resident when that does not raise
    :func:`band_memory`. A resident buffer's line buffer stays in place (one copy per band
    instead of two), and the slab no longer holds it: for the full-resolution skip, alive
    through the whole band, that saves about its line buffer's bytes (UNet-16, 512 x 8192
    bands: 1537 -> 1242 MiB); a deeper skip, dead while the full-resolution layers peak,
    would cost more than it saves."""
    return _BandParts.of(rep, band).residents()


@dataclass(frozen=True)
class _BandParts:
    """What :func:`band_memory` sums, before the resident nodes are chosen: (held, computed)
    of the pieces of a strip's first band and of a restart mid-image, of the band below the
    first and of two steady bands; and per node the bytes of its line buffer (the most any
    of them keeps or reads)."""

    rep: Report
    regions: tuple[tuple[dict[str, Region], dict[str, Region]], ...]
    lines: dict[str, int]
    chosen: frozenset[str] | None = None        # the resident nodes, where known

    @classmethod
    def of(cls, rep: Report, band: Region, restarts: bool = True) -> "_BandParts":
        (y0, y1), cols = band

        def plain() -> tuple:         # the parts without their report
            parts = cls._of(rep, band, restarts)
            return parts.regions, parts.lines, parts.residents()
        return cls(rep, *_remembered(rep, ("band_parts", Region((y0, y1), tuple(cols)), restarts), plain))

    @classmethod
    def _of(cls, rep: Report, band: Region, restarts: bool) -> "_BandParts":
        (y0, y1), cols = band
        h, oh = max(y1 - y0, 1), rep.output_shape[1]
        k = min(max(2, round(y0 / h)), max(2, oh // h - 2))      # on the band grid, two bands below the first
        cols, fused = tuple(cols), executor.fused_concats(rep)
        plans = _fresh_plans(rep, Region((0, min(h, oh)), cols))
        # two bands on the grid, or the band below the first (short where it is the last)
        grid = [a for a in (k * h, (k + 1) * h) if a + h <= oh] or [a for a in (h,) if a < oh]
        if grid and restarts:     # a strip restarting mid-image (a resumed or masked run): its cone reaches above
            plans += _fresh_plans(rep, Region((grid[0], min(grid[0] + h, oh)), cols))
        # and the band right below the first, which continues from the first band's pieces
        plans += [steady_band(rep, Region((a, min(a + h, oh)), cols)) for a in sorted({h, *grid}) if a < oh]
        regions, lines = [], {}
        for held, comp, keep in plans:
            regions.append((held, comp))
            for n in held:
                if n not in fused:
                    rows = max(comp[n].rows[0] - held[n].rows[0], _line_rows(n, held, keep, fused))
                    lines[n] = max(lines.get(n, 0), 4 * rep.shapes[n][0] * rows * (held[n].cols[1] - held[n].cols[0]))
        return cls(rep, tuple(regions), lines)

    def resident_bytes(self, res: frozenset[str]) -> dict[str, int]:
        own: dict[str, int] = {}
        for held, comp in self.regions:
            for n, b in executor.resident_memory(self.rep, held, comp, res).items():
                own[n] = max(own.get(n, 0), b)
        return own

    def slab(self, res: frozenset[str]) -> int:
        return max(executor.region_memory(self.rep, held, comp, res) for held, comp in self.regions)

    def memory(self, res: frozenset[str]) -> int:
        return self.slab(res) + sum(self.resident_bytes(res).values()) + sum(b for n, b in self.lines.items() if n not in res)

    def residents(self) -> frozenset[str]:
        if self.chosen is not None:
            return self.chosen
        g = self.rep.graph
        fused = executor.fused_concats(self.rep)
        order = [n for n in g.nodes if n.name not in fused]     # an unbuilt concat runs no step
        step = {n.name: i for i, n in enumerate(order)}
        last: dict[str, int] = {}
        for i, n in enumerate(order):
            for t in executor.reads(n, fused):
                last[t] = i
        cands = sorted((t for t, i in last.items() if t in step and t not in (g.input, g.output)
                        and i - step[t] >= 2 and self.lines.get(t, 0) > 0), key=lambda t: -self.lines[t])
        res: frozenset[str] = frozenset()
        best = self.memory(res)
        for t in cands:
            m = self.memory(res | {t})
            if m <= best:
                res, best = res | {t}, m
        return res


__all__ = ["Stream", "Stage", "plan_band", "fresh_pieces", "resident_nodes", "stream_room", "stream_reads", "steady_band", "stream_stages", "line_buffer_bytes", "band_memory"]
