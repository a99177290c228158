"""Splitting touching objects (``--split``) with a result that does not depend on the tiling.

Every step is either an exact object pass (:func:`hirestile.objects.instances`, equal to
the full frame bit for bit) or a local operation computed per tile with a halo wide
enough that it sees everything it depends on, so tiled == full frame exactly:

1. **objects**: the connected components of the class map (``instances``).
2. **markers** (local, halo ``radius + window``): per class, the squared Euclidean
   distance of each pixel to the nearest pixel of another class, capped at ``radius**2``
   (outside the image counts as the same class, so borders do not cut); a pixel is a
   marker when its distance is at least ``min_distance`` and the largest among the
   pixels of its class within ``window`` pixels (a (2 window + 1)^2 square).
3. **seeds**: the connected components of the markers (``instances`` again: a plateau
   of equal maxima is one seed, however large).
4. **assignment** (local, halo ``2 * radius``): each pixel takes the seed of the nearest
   marker pixel of *its own object* within ``2 * radius`` (Euclidean; ties broken by a fixed
   order of offsets: distance, then row, then column, which is an order on global
   coordinates). Pixels with no such marker keep their object id (a seedless object stays
   whole; in a seeded object they form their own pieces, e.g. a thin arm longer than
   ``2 * radius``).
5. **result**: the connected components of the assignment (``instances`` with the
   original class map for the classes), numbered in raster order of first pixels.

Two touching round nuclei have two distance maxima, hence two seeds, and are cut along
the line of equal distance to them. Objects wider than ``2 * radius`` have a plateau of
capped distance and are not split.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

from .errors import InputError
from .objects import DEFAULT_TILE, SENTINEL, Objects, instances
from .objects_io import check_out, open_classmap


def _window(arr: Any, y0: int, y1: int, x0: int, x1: int, h: int, fill: int) -> np.ndarray:
    """Rows [y0-h, y1+h) x cols [x0-h, x1+h) of ``arr`` as int64, ``fill`` outside it."""
    H, W = arr.shape
    out = np.full((y1 - y0 + 2 * h, x1 - x0 + 2 * h), fill, np.int64)
    a, b, c, d = max(y0 - h, 0), min(y1 + h, H), max(x0 - h, 0), min(x1 + h, W)
    out[a - y0 + h:b - y0 + h, c - x0 + h:d - x0 + h] = np.asarray(arr[a:b, c:d])
    return out


def markers(win: np.ndarray, h: int, radius: int, window: int, min_distance: float) -> np.ndarray:
    """The marker map (class id at markers, else 0) of the core of a window with halo ``h``."""
    from scipy.ndimage import distance_transform_edt, maximum_filter

    out = np.zeros(win.shape, np.int64)
    r2 = radius * radius
    for c in np.unique(win):
        if c in (0, SENTINEL):
            continue
        mine = win == c
        inside = mine | (win == SENTINEL)
        if inside.all():
            d2 = np.full(win.shape, r2, np.int64)
        else:
            e = distance_transform_edt(inside)
            d2 = np.minimum(np.rint(e * e).astype(np.int64), r2)     # an integer: exact, whatever the window
        d2 = np.where(mine, d2, -1)
        top = maximum_filter(d2, size=2 * window + 1, mode="constant", cval=-1)
        out[mine & (d2 == top) & (d2 >= min_distance * min_distance)] = c
    return out[h:out.shape[0] - h, h:out.shape[1] - h]


def _offsets(radius: int) -> list[tuple[int, int]]:
    r = range(-radius, radius + 1)
    return sorted(((dy, dx) for dy in r for dx in r if dy * dy + dx * dx <= radius * radius),
                  key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))


def assign(obj: np.ndarray, seed: np.ndarray, h: int, radius: int, n_seeds: int) -> np.ndarray:
    """Per core pixel: the seed of the nearest marker of its object within ``radius``, else
    ``n_seeds`` + its object id; 0 for background."""
    th, tw = obj.shape[0] - 2 * h, obj.shape[1] - 2 * h
    me = obj[h:h + th, h:h + tw]
    out = np.zeros((th, tw), np.int64)
    todo = me > 0
    for dy, dx in _offsets(radius):
        if not todo.any():
            break
        s = seed[h + dy:h + dy + th, h + dx:h + dx + tw]
        hit = todo & (s > 0) & (obj[h + dy:h + dy + th, h + dx:h + dx + tw] == me)
        out[hit] = s[hit]
        todo &= ~hit
    out[todo] = n_seeds + me[todo]
    return out


def split_instances(labels: Any, out: str | os.PathLike[str] | None = None, *, radius: int = 8, window: int = 2,
                    min_distance: float = 2.0, tile: int = DEFAULT_TILE, connectivity: int = 1,
                    progress: bool | None = None, **kw: Any) -> Objects:
    """:func:`hirestile.objects.instances` with touching objects split (see the module notes).

    ``radius`` is the distance cap (about a nucleus radius); markers need a halo of ``radius +
    window``, the assignment one of ``2 * radius``;
    ``kw`` goes to the final ``instances`` call (image, probabilities, dtype, outlines, ...).
    Intermediate maps live in memory when ``out`` is None, else in a temporary folder beside it.
    """
    if radius < 1 or window < 1:
        raise InputError(f"split radius and window must be at least 1 pixel, got {radius} and {window}")
    cm, _, _ = open_classmap(labels)
    H, W = (int(s) for s in cm.shape)
    job = {"source": os.path.abspath(labels) if isinstance(labels, (str, os.PathLike)) else None,
           "connectivity": connectivity, "split": [radius, window, float(min_distance)]}
    if out is not None:
        check_out(os.fspath(out), job, kw.get("overwrite", False))
        kw["overwrite"] = True                   # checked here, against this job
    tmp = None if out is None else tempfile.mkdtemp(prefix=".split-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        def store(name: str, dtype: Any) -> Any:
            if tmp is None:
                return np.zeros((H, W), dtype)
            import zarr
            return zarr.create_array(os.path.join(tmp, name), shape=(H, W), chunks=(min(tile, H), min(tile, W)),
                                     dtype=dtype, fill_value=0)

        def objects_of(src: Any, name: str) -> tuple[Any, int]:
            where = None if tmp is None else os.path.join(tmp, name)
            r = instances(src, where, tile=tile, connectivity=connectivity, radec=False, progress=progress)
            if tmp is None:
                return r.labels, r.count
            import zarr
            return zarr.open_group(where, mode="r")["0"], r.count

        grid = [(y0, min(y0 + tile, H), x0, min(x0 + tile, W)) for y0 in range(0, H, tile) for x0 in range(0, W, tile)]
        obj, _ = objects_of(cm, "objects.zarr")
        mk = store("markers.zarr", np.dtype(cm.dtype))
        h = radius + window
        for y0, y1, x0, x1 in grid:
            mk[y0:y1, x0:x1] = markers(_window(cm, y0, y1, x0, x1, h, SENTINEL), h, radius, window,
                                       min_distance).astype(mk.dtype)
        seed, n_seeds = objects_of(mk, "seeds.zarr")
        asg = store("assigned.zarr", np.uint64)
        reach = 2 * radius
        for y0, y1, x0, x1 in grid:
            asg[y0:y1, x0:x1] = assign(_window(obj, y0, y1, x0, x1, reach, 0), _window(seed, y0, y1, x0, x1, reach, 0),
                                       reach, reach, n_seeds).astype(np.uint64)
        return instances(asg, out, tile=tile, connectivity=connectivity, class_map=labels, progress=progress,
                         job=job, **kw)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["split_instances", "markers", "assign"]
