"""Regions: the pixel rectangles every layer of hirestile speaks in.

A tensor lives on its own pixel grid; a region is a pair of half-open intervals
on one grid, in *global* coordinates (row 0 is the top of the whole image at
that resolution). The graph's rules map output intervals to input intervals,
the analyzer pushes regions backward through the network, the tiler pairs the
region a tile writes with the window it reads. See docs/architecture.md.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

Interval = tuple[int, int]


class Region(NamedTuple):
    """Rows [y0, y1) x cols [x0, x1) of one grid, in global coordinates.

    A tuple, so it unpacks as ``(y0, y1), (x0, x1) = region`` like the pairs the
    analyzer's interval rules take.

    Examples
    --------
    >>> r = Region((2, 10), (5, 9))
    >>> r.shape, r.grow(3).clip((8, 8)), r.intersect(Region((0, 4), (0, 6)))
    ((8, 4), Region(rows=(0, 8), cols=(2, 8)), Region(rows=(2, 4), cols=(5, 6)))
    """

    rows: Interval
    cols: Interval

    @classmethod
    def of(cls, region: Sequence[Sequence[int]]) -> Region:
        """A Region from any ((y0, y1), (x0, x1)) pair of pairs."""
        (a, b), (c, d) = region
        return cls((int(a), int(b)), (int(c), int(d)))

    @classmethod
    def whole(cls, shape: Sequence[int]) -> Region:
        """All of a (H, W) grid."""
        return cls((0, int(shape[0])), (0, int(shape[1])))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols); 0 for an empty axis."""
        return (max(self.rows[1] - self.rows[0], 0), max(self.cols[1] - self.cols[0], 0))

    @property
    def size(self) -> int:
        """Pixels in the region."""
        h, w = self.shape
        return h * w

    @property
    def origin(self) -> tuple[int, int]:
        """Global (row, col) of the first pixel."""
        return (self.rows[0], self.cols[0])

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index of the region in an array that covers the grid from (0, 0)."""
        return (slice(*self.rows), slice(*self.cols))

    def intersect(self, other: Sequence[Sequence[int]]) -> Region:
        """Pixels in both; an empty axis becomes (lo, lo)."""
        o = Region.of(other)
        res = []
        for (a, b), (c, d) in ((self.rows, o.rows), (self.cols, o.cols)):
            lo = max(a, c)
            res.append((lo, max(min(b, d), lo)))
        return Region(res[0], res[1])

    def clip(self, shape: Sequence[int]) -> Region:
        """The part inside a (H, W) grid."""
        return self.intersect(Region.whole(shape))

    def grow(self, top: int, left: int | None = None, bottom: int | None = None, right: int | None = None) -> Region:
        """Widen by a halo: one value for all sides, or (top, left, bottom, right)."""
        left = top if left is None else left
        bottom = top if bottom is None else bottom
        right = left if right is None else right
        return Region((self.rows[0] - top, self.rows[1] + bottom), (self.cols[0] - left, self.cols[1] + right))


__all__ = ["Interval", "Region"]
