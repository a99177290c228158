"""Tiles: the one way any front end cuts an output into units of work.

Every front end (``predict``, the scheduler, the Dask API) asks this module for
its tiles: a :class:`Tile` pairs the output region it *writes* with the input
window it *reads*, derived from the analyzer's report. How the output is cut
differs (a tile size and origin, whole storage shards, Dask chunks); each front
end turns its rule into row and column cuts (:func:`cuts`) and
:func:`make_tiles` does the rest. See docs/architecture.md, "Regions".

Examples
--------
>>> from hirestile.models.unet import unet
>>> rep = unet(in_channels=1, classes=2, base=4, depth=2).analyze((100, 120))
>>> tiles = make_tiles(rep, cuts(100, 32), cuts(120, 32))
>>> len(tiles), tiles[5].write, tiles[5].read          # an interior tile reads a 30 px halo
(16, Region(rows=(32, 64), cols=(32, 64)), Region(rows=(2, 94), cols=(2, 94)))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hirestile.region import Interval, Region

@dataclass(frozen=True)
class Tile:
    """One unit of work: the output region it ``write``\\ s and the input window it ``read``\\ s.

    ``read`` is the analyzer's input window for ``write`` (kernel steps included),
    clipped to the image: the executor reproduces every border from global
    coordinates, so nothing outside the image is ever read.
    """

    index: int
    write: Region
    read: Region


def cuts(length: int, size: int, *, origin: int = 0) -> tuple[Interval, ...]:
    """Cut [0, length) into intervals of ``size``, the cut points on a grid anchored at ``origin``
    (mod size): the first and last interval may be shorter.

    >>> cuts(10, 4), cuts(10, 4, origin=1)
    (((0, 4), (4, 8), (8, 10)), ((0, 1), (1, 5), (5, 9), (9, 10)))
    """
    if size < 1:
        raise ValueError(f"tile size must be positive, got {size}")
    start = origin % size
    points = sorted({0, *range(start, length, size), length})
    return tuple((a, b) for a, b in zip(points[:-1], points[1:]) if b > a)


def sizes_to_cuts(sizes: Sequence[int]) -> tuple[Interval, ...]:
    """Consecutive intervals of the given lengths, from 0 (Dask's ``chunks`` per axis).

    >>> sizes_to_cuts((3, 4, 2))
    ((0, 3), (3, 7), (7, 9))
    """
    out, a = [], 0
    for s in sizes:
        out.append((a, a + int(s)))
        a += int(s)
    return tuple(out)


def make_tiles(rep: Any, rows: Sequence[Interval], cols: Sequence[Interval]) -> tuple[Tile, ...]:
    """The tiles of the grid ``rows`` x ``cols`` (output grid), row-major, with their read windows.

    Region rules act on each axis alone, so a tile's window is (the input rows of
    its row cut over the full width) x (the input cols of its column cut over the
    full height): one analyzer call per row and per column, not one per tile
    (10,000 tiles of a 100k x 100k image plan in a fraction of a second). Over the
    full width every branch of the network is live, so these windows contain the
    per-tile ones (equal for ordinary networks); the executor checks coverage.
    """
    _, oh, ow = rep.output_shape
    ih, iw = rep.image_shape
    rr = [Region.of(rep.input_window((r, (0, ow)), aligned=True)).clip((ih, iw)).rows for r in rows]
    cc = [Region.of(rep.input_window(((0, oh), c), aligned=True)).clip((ih, iw)).cols for c in cols]
    tiles = []
    for r, ry in zip(rows, rr):
        for c, rx in zip(cols, cc):
            tiles.append(Tile(len(tiles), Region(tuple(r), tuple(c)), Region(ry, rx)))
    return tuple(tiles)


def grid_tiles(rep: Any, tile: int | Sequence[int], origin: Sequence[int] = (0, 0)) -> tuple[Tile, ...]:
    """Tiles of ``tile`` output pixels (an int or (rows, cols)), the grid anchored at ``origin``."""
    ty, tx = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    _, oh, ow = rep.output_shape
    return make_tiles(rep, cuts(oh, ty, origin=origin[0]), cuts(ow, tx, origin=origin[1]))


def column_strips(tiles: Sequence[Tile]) -> list[tuple[Tile, ...]]:
    """The tiles grouped into column strips (left to right), each strip's tiles top to bottom:
    the order a streaming run (:class:`hirestile.bands.Stream`) visits them in."""
    strips: dict[Interval, list[Tile]] = {}
    for t in tiles:
        strips.setdefault(tuple(t.write.cols), []).append(t)
    return [tuple(sorted(ts, key=lambda t: t.write.rows)) for _, ts in sorted(strips.items())]


__all__ = ["Tile", "cuts", "sizes_to_cuts", "make_tiles", "grid_tiles", "column_strips"]
