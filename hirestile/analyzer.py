"""Receptive-field analysis: regions pushed backward through the graph.

Layer 2 of docs/architecture.md. For an output region it yields the exact input
window, the region every node must compute, halo, total stride, receptive field,
FLOPs and bytes per node, and the tileability verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np

from hirestile.errors import NotTileableError
from hirestile.graph import Graph, Node, Shape, op_label, padding_mode
from hirestile.region import Interval, Region

# ---------------------------------------------------------------- interval helpers


def empty(iv: Interval) -> bool:
    return iv[1] <= iv[0]


def hull(a: Interval | None, b: Interval) -> Interval:
    """Smallest interval holding both (an empty one holds nothing)."""
    if a is None or empty(a):
        return b
    if empty(b):
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def clip(iv: Interval, n: int) -> Interval:
    lo, hi = max(iv[0], 0), min(iv[1], n)
    return (lo, hi) if hi > lo else (0, 0)


def align(iv: Interval, step: int) -> Interval:
    """Grow ``iv`` outward to multiples of ``step`` (global grid)."""
    if step == 1 or empty(iv):
        return iv
    return (iv[0] // step * step, -(-iv[1] // step) * step)


def sources(iv: Interval, n: int, mode: str) -> Interval:
    """Positions inside [0, n) that a window ``iv`` reads under a padding mode."""
    if empty(iv) or n <= 0:
        return (0, 0)
    if mode == "fill":
        return clip(iv, n)
    if mode == "replicate":
        lo, hi = min(max(iv[0], 0), n - 1), min(max(iv[1] - 1, 0), n - 1)
        return (lo, hi + 1)
    # reflect: the periodic mirror (-i -> i, n-1+i -> n-1-i, and on for pads >= n)
    inside = clip(iv, n)
    parts = [np.arange(iv[0], min(iv[1], 0)), np.arange(max(iv[0], n), iv[1])]
    if any(len(p) >= 2 * n for p in parts):
        return (0, n)
    vals = reflect_index(np.concatenate(parts), n)
    if vals.size:
        inside = hull(inside, (int(vals.min()), int(vals.max()) + 1))
    return inside


def reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Mirror positions into [0, n) without repeating the edge (numpy/ONNX "reflect"),
    periodically, so pads of any size work (n == 1 reflects onto its only pixel)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class NodeRegion:
    """What one node does for one output region.

    ``needed`` is the part of the node's tensor its consumers read (inside the
    tensor); ``computed`` is ``needed`` grown to the kernel route's tile step
    (it may run past the tensor's end; the extra is discarded).
    """

    needed: Region
    computed: Region


@dataclass(frozen=True)
class NodeInfo:
    """One row of :meth:`Report.node_table`."""

    name: str
    op: str
    shape: Shape
    flops: float
    bytes: int


@dataclass(frozen=True)
class Report:
    """Receptive-field report of a graph for one image size.

    Attributes
    ----------
    graph : Graph
    image_shape : (int, int)
    shapes : dict
        (C, H, W) of every tensor.
    tileable : bool
    reason : str
        Why not tileable ("" when tileable): names the node and its op.
    steps : dict
        Per node, the (rows, cols) grid step its computed region is widened to
        (``aligned=True``): a kernel route's tile (Winograd tiles sit on a global
        2x2 grid). Given by the executor; absent nodes have step (1, 1).
    weights : object
        The executor's kernel-layout weights for ``graph``, carried with the report
        so they live exactly as long as it (the analyzer never reads them).
    precision : str
        ``"fp32"`` or ``"bf16"``: the arithmetic the executor runs the graph in (given
        by the executor with the weights; the analyzer never reads it).
    held_bytes : int
        Bytes of arrays kept alive beside ``graph`` while the report is used: a model's
        own parameters, which ``graph`` (optimized: batch-norm folded) does not share. Given
        by the model; the memory model counts them (:func:`hirestile.executor.weight_bytes`).
    """

    graph: Graph
    image_shape: tuple[int, int]
    shapes: dict[str, Shape] = field(repr=False)
    tileable: bool
    reason: str
    steps: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    weights: Any = field(default=None, repr=False, compare=False)
    precision: str = "fp32"
    held_bytes: int = field(default=0, repr=False, compare=False)

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.graph.output]

    @cached_property
    def memo(self) -> dict:
        """Plans the layers above derive from this report alone (a stream's pieces and band
        parts, :mod:`hirestile.bands`), kept with it: a report never changes, so neither do
        they, and a model's next call on an image of the same size reuses them. Plain data
        only: nothing in it refers back to the report (a cycle would keep the report, its
        weights and its arena alive past the model until the garbage collector's full pass)."""
        return {}

    # -- regions

    def regions(self, out_region: Region, *, aligned: bool = False) -> dict[str, NodeRegion]:
        """Region every tensor must provide for ``out_region`` (output grid, global).

        The graph input's entry holds, in ``needed``, the clipped input window.
        By default this is the network's own geometry; ``aligned=True`` widens each
        node's computed region to its kernel route's tile steps (Winograd tiles sit
        on a global 2x2 grid), which is what the executor computes.
        """
        g, shapes = self.graph, self.shapes
        need: dict[str, list[Interval | None]] = {}
        _, oh, ow = shapes[g.output]
        need[g.output] = [clip(out_region[0], oh), clip(out_region[1], ow)]
        out: dict[str, NodeRegion] = {}
        for node in reversed(g.nodes):
            nr = need.get(node.name)
            if nr is None or empty(nr[0]) or empty(nr[1]):
                continue
            needed = (nr[0], nr[1])
            steps = self.steps.get(node.name, (1, 1)) if aligned else (1, 1)
            computed = (align(needed[0], steps[0]), align(needed[1], steps[1]))
            out[node.name] = NodeRegion(needed, computed)
            ins = [shapes[t] for t in node.inputs]
            for k, t in enumerate(node.inputs):
                win = [node.op.in_interval(k, a, computed[a], ins, shapes[node.name]) for a in (0, 1)]
                if win[0] is None:
                    continue
                mode = padding_mode(node.op, k)[0]
                src = [sources(win[a], ins[k][a + 1], mode) for a in (0, 1)]
                if empty(src[0]) or empty(src[1]):
                    continue
                cur = need.setdefault(t, [None, None])
                cur[0], cur[1] = hull(cur[0], src[0]), hull(cur[1], src[1])
        nr = need.get(g.input)
        if nr is not None and not empty(nr[0]) and not empty(nr[1]):
            out[g.input] = NodeRegion((nr[0], nr[1]), (nr[0], nr[1]))
        return out

    def input_window(self, out_region: Region, *, aligned: bool = False) -> Region:
        """Exact input rows/cols that ``out_region`` reads, in global coordinates.

        By default this is the network's own minimal window: every pixel in it
        can change the region's output. ``aligned=True`` gives what the executor
        reads, including the extra rows/cols the kernel routes' tile steps need
        (Winograd tiles sit on a global 2x2 grid); readers of input use that.

        Includes the positions outside the image the first layers' padding
        stands in for, so it may extend past the image; clip it to the image
        when reading (the executor reproduces the borders).
        """
        g, shapes = self.graph, self.shapes
        regs = self.regions(out_region, aligned=aligned)
        window: list[Interval | None] = [None, None]
        for node in g.nodes:
            if node.name not in regs or g.input not in node.inputs:
                continue
            ins = [shapes[t] for t in node.inputs]
            comp = regs[node.name].computed
            for k, t in enumerate(node.inputs):
                if t != g.input:
                    continue
                for a in (0, 1):
                    iv = node.op.in_interval(k, a, comp[a], ins, shapes[node.name])
                    if iv is not None:
                        window[a] = hull(window[a], iv)
        if g.input in regs:  # reflected sources lie inside; keep them covered
            for a in (0, 1):
                window[a] = hull(window[a], regs[g.input].needed[a])
        if g.output == g.input:
            return (tuple(out_region[0]), tuple(out_region[1]))
        return (window[0] or (0, 0), window[1] or (0, 0))

    def check_tileable(self) -> None:
        if not self.tileable:
            raise NotTileableError(f"model is not tileable: {self.reason}; run it full-frame (no tile)")

    # -- geometry

    @cached_property
    def _centres(self) -> dict[str, tuple[tuple[Fraction, Fraction], tuple[Fraction, Fraction]]]:
        """Per tensor and axis, (scale, offset): input coordinate of a pixel centre."""
        g, shapes = self.graph, self.shapes
        maps = {g.input: ((Fraction(1), Fraction(0)),) * 2}
        for node in g.nodes:
            src = maps[node.inputs[0]]
            ins = [shapes[t] for t in node.inputs]
            m = []
            for a in (0, 1):
                s, o = node.op.centre(a, ins, shapes[node.name])
                m.append((src[a][0] * s, src[a][0] * o + src[a][1]))
            maps[node.name] = tuple(m)
        return maps

    @cached_property
    def stride(self) -> tuple[int, int]:
        """Total stride (y, x): input pixels per pixel of the coarsest grid in the network."""
        res = []
        for a in (0, 1):
            res.append(math.lcm(*[s[a][0].numerator for s in self._centres.values() if s[a][0] > 0]))
        return (res[0], res[1])

    @cached_property
    def tile_step(self) -> tuple[int, int]:
        """Output-grid period after which the network's geometry repeats: 1 along an axis
        where every output pixel sits on one input coordinate (an align-corners resize of a
        one-pixel map), which has no period."""
        out = self._centres[self.graph.output]
        res = []
        for a in (0, 1):
            res.append(math.lcm(*[(s[a][0] / out[a][0]).numerator
                                  for s in self._centres.values() if s[a][0] > 0]) if out[a][0] > 0 else 1)
        return (res[0], res[1])

    def _interior_tile(self, size: int) -> Region:
        """An output region of ``size`` (rounded up to the tile step) near the output's
        centre, at the phase of the network's grid that reads the fewest input pixels."""
        _, oh, ow = self.output_shape
        res = []
        for a, n in ((0, oh), (1, ow)):
            step = self.tile_step[a]
            t = -(-size // step) * step
            base = max((n - t) // 2 // step * step, 0)
            best = None
            for r in range(step if base + t + step <= n else 1):
                reg = [(0, 1), (0, 1)]
                reg[a] = (base + r, base + r + t)
                win = self.input_window((reg[0], reg[1]))[a]
                if best is None or win[1] - win[0] < best[0]:
                    best = (win[1] - win[0], base + r)
            res.append((best[1], best[1] + t))
        return (res[0], res[1])

    def halo_of(self, out_region: Region) -> tuple[int, int, int, int]:
        """Input pixels read beyond ``out_region``'s own footprint: (top, left, bottom, right)."""
        win = self.input_window(out_region)
        cy, cx = self._centres[self.graph.output]
        res = []
        for a, (sc, off) in ((0, cy), (1, cx)):
            lo = sc * out_region[a][0] + off - (sc - 1) / 2
            hi = sc * (out_region[a][1] - 1) + off + (sc - 1) / 2
            res.append((math.ceil(lo - win[a][0]), math.ceil(win[a][1] - 1 - hi)))
        return (res[0][0], res[1][0], res[0][1], res[1][1])

    def _holds_interior(self, region: Region) -> bool:
        """Whether ``region``'s input window lies inside the image, away from its borders."""
        win = self.input_window(region)
        return all(win[a][0] > 0 and win[a][1] < self.image_shape[a] for a in (0, 1))

    @cached_property
    def _geometry(self) -> Report:
        """A report on which halo and receptive field are the network's own.

        On an image too small for an interior tile, borders clip every window; then
        the same graph is analysed on a larger image of the same size modulo the total
        stride (the largest it takes up to 32768 px). A graph that takes only its own
        size (fixed-size resizes) keeps this report.
        """
        if self._holds_interior(self._interior_tile(2 * max(self.tile_step))):
            return self
        (h, w), (sy, sx) = self.image_shape, self.stride
        for target in (512, 2048, 8192, 32768):
            size = (h + -(-max(target - h, 0) // sy) * sy, w + -(-max(target - w, 0) // sx) * sx)
            try:
                big = analyze_graph(self.graph, size, steps=self.steps, weights=self.weights)
            except (ValueError, ArithmeticError):      # ShapeError is a ValueError
                return self
            if big._holds_interior(big._interior_tile(2 * max(big.tile_step))):
                return big
        return self

    @cached_property
    def halo(self) -> tuple[int, int, int, int]:
        """Per-side halo (top, left, bottom, right) of a stride-aligned interior tile.

        The network's own: not clipped by a small image's borders (see ``_geometry``).
        """
        geo = self._geometry
        if geo is not self:
            return geo.halo
        step = max(self.tile_step)
        return self.halo_of(self._interior_tile(2 * step))

    @cached_property
    def receptive_field(self) -> tuple[int, int]:
        """Receptive field (y, x) in input pixels: the largest window one output pixel
        reads (the network's own, as ``halo``)."""
        geo = self._geometry
        if geo is not self:
            return geo.receptive_field
        base = self._interior_tile(max(self.tile_step))
        res = []
        for a in (0, 1):
            best = 0
            for r in range(self.tile_step[a]):
                reg = [list(base[0][:1]) * 2, list(base[1][:1]) * 2]
                reg[a] = [base[a][0] + r] * 2
                reg[0][1] += 1
                reg[1][1] += 1
                win = self.input_window(((reg[0][0], reg[0][1]), (reg[1][0], reg[1][1])))
                best = max(best, win[a][1] - win[a][0])
            res.append(best)
        return (res[0], res[1])

    # -- cost

    def node_flops(self, node: Node) -> float:
        """FLOPs per pixel of the node's output tensor."""
        return node.op.flops([self.shapes[t] for t in node.inputs], self.shapes[node.name])

    @cached_property
    def flops_per_pixel(self) -> float:
        """Full-frame FLOPs per output pixel."""
        _, oh, ow = self.output_shape
        total = sum(self.node_flops(n) * self.shapes[n.name][1] * self.shapes[n.name][2] for n in self.graph.nodes)
        return total / max(oh * ow, 1)

    def region_flops(self, out_region: Region) -> float:
        """FLOPs the executor spends on ``out_region`` (every node's aligned computed region).
        Its memory is :func:`hirestile.executor.region_memory`'s."""
        regs = self.regions(out_region, aligned=True)
        return float(sum(self.node_flops(n) * Region.of(regs[n.name].computed).size
                         for n in self.graph.nodes if n.name in regs))

    def redundancy(self, tile: int | tuple[int, int]) -> float:
        """FLOPs of an interior output tile over the same tile's share of a full-frame run."""
        ty, tx = (tile, tile) if isinstance(tile, int) else tile
        reg = self._interior_tile(max(ty, tx))
        _, oh, ow = self.output_shape
        reg = (clip((reg[0][0], reg[0][0] + ty), oh), clip((reg[1][0], reg[1][0] + tx), ow))
        flops = self.region_flops(reg)
        return flops / (self.flops_per_pixel * (reg[0][1] - reg[0][0]) * (reg[1][1] - reg[1][0]))

    def node_table(self, out_region: Region | None = None) -> list[NodeInfo]:
        """Per node: op, output shape, FLOPs and bytes, full-frame or for ``out_region``."""
        regs = self.regions(out_region, aligned=True) if out_region is not None else None
        rows = []
        for n in self.graph.nodes:
            c, h, w = self.shapes[n.name]
            if regs is not None:
                if n.name not in regs:
                    continue
                (a, b), (d, e) = regs[n.name].computed
                h, w = b - a, e - d
            rows.append(NodeInfo(n.name, op_label(n.op), (c, h, w), self.node_flops(n) * h * w, 4 * c * h * w))
        return rows

    def summary(self) -> str:
        """A few lines for humans (the core of ``hirestile plan``)."""
        c, h, w = self.output_shape
        lines = [f"input {self.graph.in_channels} x {self.image_shape[0]} x {self.image_shape[1]} -> output {c} x {h} x {w}",
                 f"tileable: {'yes' if self.tileable else 'no: ' + self.reason}"]
        if self.tileable:
            lines += [f"halo (top, left, bottom, right): {self.halo}",
                      f"total stride: {self.stride}   tile step (output px): {self.tile_step}",
                      f"receptive field: {self.receptive_field}"]
        lines.append(f"FLOPs per output pixel: {self.flops_per_pixel:,.0f}")
        return "\n".join(lines)


def analyze_graph(graph: Graph, image_shape: Sequence[int], *, steps: Mapping[str, tuple[int, int]] | None = None,
                  weights: Any = None, precision: str = "fp32") -> Report:
    """Analyze ``graph`` for an input image of ``image_shape`` (H, W); ``steps``,
    ``weights`` and ``precision`` as in :class:`Report`."""
    h, w = int(image_shape[0]), int(image_shape[1])
    shapes = graph.shapes((h, w))
    reason = ""
    for node in graph.nodes:
        if node.op.whole_image:
            reason = f"node {node.name!r} ({op_label(node.op)}): {node.op.whole_image}"
            break
    return Report(graph=graph, image_shape=(h, w), shapes=shapes, tileable=not reason, reason=reason,
                  steps=dict(steps or {}), weights=weights, precision=precision)
