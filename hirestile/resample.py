"""Running a model at the pixel size it was trained at: resampling as the first layers of its graph.

The model layer (docs/architecture.md, layer 5). When no pyramid level of the input lies within
the tolerance of the model's pixel size, :func:`plan_resampling` says how to get there from a
level (:func:`source_level`), and :func:`resampled` prepends that resampling to the model's
graph as ordinary ops with exact region rules. The slide is never resampled into a copy: every
tile reads its input window at the stored level and resamples it inside the graph, so a tiled run
is bit for bit the full-frame run of the resampled image through the network.

Semantics, per axis, for an input of ``N`` pixels of size ``p`` and a model trained at ``t``
(a pixel-size range ``[lo, hi]``; "within" means within the tolerance of that range, the rule
``io.closest_level`` uses for levels):

* **average pooling** by an integer ``n >= 2`` (:class:`~hirestile.graph.Pool`, ``avg``,
  kernel = stride = ``n``, ``ceil_mode``, padding not counted): output pixel ``o`` is the mean
  of input pixels ``[n*o, min(n*o + n, N))`` -- the last block of an axis that ``n`` does not
  divide is averaged over the pixels it has; ``ceil(N / n)`` outputs. Used alone when ``n*p``
  is within (the smallest such ``n``).
* **bilinear** by a ratio ``r`` (:class:`~hirestile.graph.Resize`, ``bilinear``,
  ``half_pixel``: PyTorch's ``F.interpolate(scale_factor=1/r, align_corners=False)``): output
  pixel ``o`` samples the source coordinate ``src = r*(o + 0.5) - 0.5`` (``r`` rounded to
  float32, the product and the difference rounded once), clamped at 0, between ``i0 =
  floor(src)`` and ``i1 = min(i0 + 1, M - 1)`` with weight ``lambda = src - i0`` on ``i1``;
  ``floor(M / r)`` outputs from ``M`` inputs (an axis short enough that this is ``M`` is copied,
  as PyTorch does). ``1/r`` is the nearest fraction with denominator
  at most :data:`MAX_DENOMINATOR` (at most 1/(2*8*8) off), which keeps the network's grid period
  small. Coarser inputs are only upsampled this way; finer ones are first average-pooled by
  ``floor(lo / p)`` when that is at least 2 (no bilinear aliasing over more than 2 pixels), then
  taken to ``lo`` bilinearly.

Examples
--------
>>> plan_resampling((0.25, 0.25), (0.5, 0.5)).describe()
'average 2x2'
>>> r = plan_resampling((0.3, 0.3), (0.5, 0.5))
>>> r.describe(), r.out_hw((1000, 600)), [round(v, 4) for v in r.pixel_size((0.3, 0.3))]
('bilinear x 3/5', (600, 360), [0.5, 0.5])
>>> from hirestile.models.unet import unet
>>> m = resampled(unet(in_channels=3, classes=2, base=4, depth=2), plan_resampling((0.25, 0.25), (0.5, 0.5)))
>>> m.analyze((101, 64)).output_shape
(2, 51, 32)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from hirestile.graph import INPUT, Graph, Node, Pool, Resize
from hirestile.model import Model

#: largest denominator of a bilinear output/input ratio (see the module's semantics)
MAX_DENOMINATOR = 8
TOLERANCE = 0.1          # the level rule's: a pixel size within 10% of the model's range is taken as is
POOL_NODE, BILINEAR_NODE = "resample_pool", "resample_bilinear"


@dataclass(frozen=True)
class Resampling:
    """How an input grid becomes the model's: average pooling by ``pool`` (rows, cols; 1 = none),
    then bilinear resizing with output/input ratio ``scale`` (rows, cols; 1 = none)."""

    pool: tuple[int, int] = (1, 1)
    scale: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))

    @property
    def identity(self) -> bool:
        """Whether the plan leaves the grid as it is (no layer to add)."""
        return self.pool == (1, 1) and self.scale == (1, 1)

    def factor(self) -> tuple[float, float]:
        """Input pixels per resampled pixel, per axis."""
        return tuple(float(n / s) for n, s in zip(self.pool, self.scale))

    def pixel_size(self, pixel: Sequence[float]) -> tuple[float, float]:
        """The resampled grid's pixel size for an input of ``pixel`` (rows, cols)."""
        return tuple(float(p) * f for p, f in zip(pixel, self.factor()))

    def out_hw(self, hw: Sequence[int]) -> tuple[int, int]:
        """The resampled grid's (rows, cols) for an input of ``hw``: the graph's own shape rules."""
        return tuple(int(v) for v in self.graph(1).shapes((int(hw[0]), int(hw[1])))[self.output][1:])

    @property
    def output(self) -> str:
        """The name of the tensor on the resampled grid (the graph input when there is nothing to do)."""
        return BILINEAR_NODE if self.scale != (1, 1) else POOL_NODE if self.pool != (1, 1) else INPUT

    def nodes(self) -> list[Node]:
        """The resampling ops as graph nodes reading the graph input; the last is :attr:`output`."""
        nodes, prev = [], INPUT
        if self.pool != (1, 1):
            nodes.append(Node(POOL_NODE, Pool(mode="avg", kernel=self.pool, stride=self.pool, ceil_mode=True,
                                              count_include_pad=False), (prev,)))
            prev = POOL_NODE
        if self.scale != (1, 1):
            nodes.append(Node(BILINEAR_NODE, Resize(mode="bilinear", scale=tuple(float(s) for s in self.scale),
                                                    coord="half_pixel"), (prev,)))
        return nodes

    def graph(self, channels: int) -> Graph:
        """The resampling alone, as a graph (what the tests compare against a NumPy reference)."""
        return Graph(nodes=tuple(self.nodes()), output=self.output, in_channels=channels)

    def describe(self) -> str:
        """"average 2x2", "bilinear x 3/5", "average 3x3, then bilinear x 5/6" or "none"."""
        parts = []
        if self.pool != (1, 1):
            parts.append(f"average {self.pool[0]}x{self.pool[1]}")
        if self.scale != (1, 1):
            sy, sx = self.scale
            parts.append(f"bilinear x {sy}" if sy == sx else f"bilinear x {sy} (rows), {sx} (columns)")
        return ", then ".join(parts) or "none"


def _within(size: float, lo: float, hi: float, tolerance: float) -> bool:
    return lo / (1 + tolerance) <= size <= hi * (1 + tolerance)


def plan_resampling(pixel: Sequence[float], target: Sequence[float], tolerance: float = TOLERANCE) -> Resampling:
    """The resampling that takes an input of pixel size ``pixel`` (rows, cols) to a model trained
    at ``target`` = (lo, hi) (lo == hi for one size), in the same unit: per axis nothing when the
    input is within ``tolerance`` of the range, else the module's rules.

    Examples
    --------
    >>> plan_resampling((0.1, 0.1), (0.25, 0.6)).describe()       # 3 x 0.1 = 0.3 lies in the range
    'average 3x3'
    >>> plan_resampling((0.1, 0.1), (0.27, 0.27)).describe()      # 0.2 after 2x2, then 0.2 -> 0.27
    'average 2x2, then bilinear x 3/4'
    >>> plan_resampling((1.0, 1.0), (0.5, 0.5)).describe()
    'bilinear x 2'
    """
    lo, hi = float(min(target)), float(max(target))
    if not (lo > 0 and math.isfinite(hi)) or not all(float(p) > 0 and math.isfinite(float(p)) for p in pixel):
        raise ValueError(f"pixel sizes must be positive and finite, got {tuple(pixel)} and {tuple(target)}")
    pool, scale = [], []
    for p in (float(v) for v in pixel):
        n, s = 1, Fraction(1)
        if _within(p, lo, hi, tolerance):
            pass
        elif p < lo:
            n = next((k for k in range(2, math.floor(hi * (1 + tolerance) / p) + 1)
                      if _within(k * p, lo, hi, tolerance)), 0)
            if not n:
                n = max(1, math.floor(lo / p))
                s = Fraction(n * p / lo).limit_denominator(MAX_DENOMINATOR)
        else:
            s = Fraction(p / hi).limit_denominator(MAX_DENOMINATOR)
        pool.append(n)
        scale.append(s)
    return Resampling(pool=(pool[0], pool[1]), scale=(scale[0], scale[1]))


def source_level(sizes: Sequence[Sequence[float] | None], target: Sequence[float]) -> int:
    """The level to resample from, given each level's pixel size (None: unknown): the coarsest
    level finer than the model's range (the fewest pixels that lose nothing), else the finest.

    >>> source_level([(0.25, 0.25), (1.0, 1.0), (4.0, 4.0)], (0.5, 0.5))
    0
    >>> source_level([(2.0, 2.0), (4.0, 4.0)], (0.5, 0.5))
    0
    """
    lo = float(min(target))
    known = [(math.sqrt(s[0] * s[1]), lv) for lv, s in enumerate(sizes) if s is not None]
    finer = [(g, lv) for g, lv in known if g < lo]
    return max(finer)[1] if finer else min(known)[1]


def resampled(model: Model, plan: Resampling) -> Model:
    """``model`` running on the grid ``plan`` resamples its input to: the resampling nodes, then
    the model's runnable graph (its pad-to rule applies to the resampled tensor and its crop
    crops back to it). Same name, classes and normalisation; a new fingerprint.

    Examples
    --------
    >>> import numpy as np
    >>> from hirestile import predict
    >>> from hirestile.models.unet import unet
    >>> r = resampled(unet(in_channels=1, classes=2, base=4, depth=2), plan_resampling((0.3, 0.3), (0.5, 0.5)))
    >>> x = np.random.default_rng(0).random((1, 90, 77), np.float32)     # 0.3 um/px, run at 0.5
    >>> tiled, full = predict(r, x, tile=24), predict(r, x)
    >>> tiled.shape, bool(np.array_equal(tiled, full))
    ((2, 54, 46), True)
    """
    if plan.identity:
        return model
    g = model.runnable
    taken = {n.name for n in g.nodes} & {POOL_NODE, BILINEAR_NODE}
    if taken:
        raise ValueError(f"the model already has nodes named {sorted(taken)}")
    last = plan.output
    nodes = plan.nodes() + [replace(n, inputs=tuple(last if t == g.input else t for t in n.inputs))
                            for n in g.nodes]
    graph = Graph(nodes=tuple(nodes), output=last if g.output == g.input else g.output,
                  in_channels=g.in_channels)
    return Model(graph=graph, contract=replace(model.contract, pad_to=1), name=model.name,
                 classes=model.classes, card=model.card)


__all__ = ["MAX_DENOMINATOR", "TOLERANCE", "Resampling", "plan_resampling", "resampled", "source_level"]
