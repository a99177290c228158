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

from dataclasses import dataclass

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report
from hirestile.executor import Buf
from hirestile.graph import op_label
from hirestile.region import Region


class Stream:
    """Row bands moving down one column strip, each intermediate row computed once.

    Call :meth:`run` with consecutive output bands of the same columns (top to bottom):
    every node keeps, between calls, the rows the next band needs again (a line buffer
    whose height the region arithmetic gives: a halo's worth, more for a UNet's level-0
    skip), and the next band computes only the rows below them. Any other sequence of
    regions is correct too, just without reuse. The output equals :func:`run_region`'s
    bit for bit.

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

    def run(self, window: np.ndarray, origin: tuple[int, int], out_region: Region) -> np.ndarray:
        """The band ``out_region`` (as :func:`run_region`), reusing the previous band's rows."""
        (y0, y1), cols = out_region
        oh = self.rep.output_shape[1]
        ahead = ((y1, min(y1 + (y1 - y0), oh)), tuple(cols)) if y1 < oh else None
        if ahead is None:                     # the strip's last band: nothing to keep
            lines, self.lines = self.lines, {}
            return executor._run(self.rep, window, origin, out_region, lines, None, self.arena)
        return executor._run(self.rep, window, origin, out_region, self.lines, ahead, self.arena)

    @property
    def nbytes(self) -> int:
        """Bytes held in line buffers between bands."""
        return sum(b.data.nbytes for b in self.lines.values())


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


def stream_stages(rep: Report, band: Region) -> list[Stage]:
    """Per stage, what a :class:`Stream` holds and computes for ``band`` when the next band
    below it has the same height: the line buffers are the rows both bands compute."""
    (y0, y1), cols = band
    oh = rep.output_shape[1]
    now = rep.regions(band, aligned=True)
    nxt = rep.regions(((y1, min(y1 + (y1 - y0), oh)), tuple(cols)), aligned=True) if y1 < oh else {}
    stages = []
    for n in rep.graph.nodes:
        if n.name not in now:
            continue
        (a, b), (c, d) = now[n.name].computed
        keep = 0
        if n.name in nxt:
            (p, q), _ = nxt[n.name].computed
            keep = max(0, min(b, q) - max(a, p))
        ch = rep.shapes[n.name][0]
        stages.append(Stage(n.name, op_label(n.op), ch, b - a, d - c, keep, 4 * ch * keep * (d - c),
                            rep.node_flops(n) * (b - a - keep) * (d - c)))
    return stages


def line_buffer_bytes(rep: Report, band: Region) -> int:
    """Bytes a :class:`Stream` keeps between ``band`` and the band of the same height below it."""
    return sum(s.line_bytes for s in stream_stages(rep, band))


__all__ = ["Stream", "Stage", "stream_stages", "line_buffer_bytes"]
