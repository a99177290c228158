"""Objects: exact instance labels and per-object measurements from a class map, out of core.

A class map is what ``hirestile segment --output labels`` writes: an (H, W) array of
uint8 / uint16 class ids, 0 for background. :func:`instances` turns it into instance
labels tile by tile and gives **exactly** ``skimage.measure.label(classmap,
connectivity=c)`` on the full frame -- same labels, same numbers -- for objects of
any size and shape, without ever holding more than one tile (plus the last row of
the tile row above and the union-find tables, whose size is the object count):

1. **pass 1**, tile by tile in row-major order: connected components of each class
   inside the tile (``skimage.measure.label``: neighbours of different classes are
   never joined); each component gets a provisional id; the tile's first row and
   first column are compared with the stored last row of the tile row above and
   last column of the tile to the left (the diagonal neighbours too for
   ``connectivity=2``): same class, both foreground -> the two provisional ids are
   one object (an edge of the union-find graph). Per provisional id the pass keeps
   sums (area, coordinates, intensities, probabilities, edge perimeter), extremes
   (bounding box, max / min intensity) and the raster index of its first pixel.
2. the union-find (``scipy.sparse.csgraph.connected_components`` on the seam edges)
   joins provisional ids into objects; objects are numbered 1..N in **raster order
   of their first pixel** (as skimage numbers them), so the file is the same on
   every run, resume or tile size; measurements merge exactly (sums and extremes).
3. **pass 2** relabels every tile (the same deterministic labelling) to the final
   ids and writes it: uint32 labels, uint64 past 2**32 - 1 objects.

``connectivity`` is skimage's: 1 (the default: 4-connected, edge neighbours; pixels
touching only at a corner are separate objects, and every object's outline is one
polygon) or 2 (8-connected, corners join; an object joined only through corners is a
MultiPolygon). The perimeter is the **edge perimeter**:
the number of pixel edges between the object and anything else (another class,
background, or outside the image). Which edges those are depends only on the class
map (4-neighbours of the same class always belong to one object, whatever the
connectivity), so it is computed per tile and adds up exactly across seams; it is
not skimage's ``perimeter`` (a smoothed estimate, which cannot be merged exactly).

Examples
--------
>>> import numpy as np
>>> cm = np.zeros((7, 9), np.uint8); cm[1:6, 1] = 1; cm[5, 1:8] = 1; cm[0:3, 6:9] = 2
>>> res = instances(cm, tile=3)
>>> res.count, int(res.labels[0, 8]), int(res.labels[5, 7]), res.table["area"].tolist()   # raster order
(2, 1, 2, [9, 11])
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import ome
from .errors import InputError, OutputError
from .objects_io import (check_out, create_out, find_wcs, load_state, open_classmap, open_image_reader,
                         open_probabilities, prepare_instances_output, save_state, source_identity)
from .resume import all_done, lock_output, store_region

DEFAULT_TILE = 1024
SENTINEL = -1                      # the class "outside the image" (never a stored class)


@dataclass
class Objects:
    """What :func:`instances` found.

    ``table`` maps column name -> array of length ``count`` (row i is object i + 1):
    ``label``, ``class``, ``area``, ``centroid_y``, ``centroid_x``, ``bbox_y0``,
    ``bbox_x0``, ``bbox_y1``, ``bbox_x1`` (half-open, as skimage's ``bbox``),
    ``perimeter`` (edge perimeter, see the module notes), and with an image
    ``intensity_{sum,mean,max,min}_<c>`` per channel, with probabilities
    ``probability_mean`` (mean probability of the object's own class), with a WCS ``ra``, ``dec``.
    ``labels`` is the label image when no output path was given (else None).
    ``outlines`` (when asked) maps label -> list of polygons, each a list of rings of
    (x, y) pixel-corner vertices, the first ring the exterior.
    """

    count: int
    dtype: np.dtype
    table: dict[str, np.ndarray]
    classes: tuple[str, ...] = ()
    output: str | None = None
    labels: np.ndarray | None = None
    outlines: dict[int, list[list[np.ndarray]]] | None = None
    connectivity: int = 1
    times: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())
        where = f" into {self.output}" if self.output else ""
        return f"{self.count:,} objects ({self.dtype} labels, connectivity {self.connectivity}){where}; {t}"


# **** pass 1: one tile ****
def _edge_count(cpad: np.ndarray) -> np.ndarray:
    """Per pixel of the core, how many of its 4 neighbours hold another class (or lie outside)."""
    c = cpad[1:-1, 1:-1]
    return ((c != cpad[:-2, 1:-1]).astype(np.int64) + (c != cpad[2:, 1:-1]) + (c != cpad[1:-1, :-2])
            + (c != cpad[1:-1, 2:]))


def _padded(cm: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Class block rows [y0-1, y1+1) x cols [x0-1, x1+1) as int64, SENTINEL outside the image."""
    H, W = cm.shape
    out = np.full((y1 - y0 + 2, x1 - x0 + 2), SENTINEL, np.int64)
    a, b, c, d = max(y0 - 1, 0), min(y1 + 1, H), max(x0 - 1, 0), min(x1 + 1, W)
    out[a - y0 + 1:b - y0 + 1, c - x0 + 1:d - x0 + 1] = np.asarray(cm[a:b, c:d])
    return out


def _label(core: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    from skimage.measure import label

    lab, n = label(core, background=0, connectivity=connectivity, return_num=True)
    return lab, int(n)


def _tile_stats(lab: np.ndarray, n: int, y0: int, x0: int, W: int, core: np.ndarray, edges: np.ndarray | None,
                img: np.ndarray | None, prob: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per local component 1..n: sums, extremes and the raster index of its first pixel
    (only the first pixel when ``edges`` is None: labels without measurements)."""
    h, w = lab.shape
    if n == 0:
        return {}
    fg = np.flatnonzero(lab)
    v = lab.ravel()[fg]
    order = np.argsort(v, kind="stable")            # by component, raster order inside each
    pix = fg[order]
    starts = np.flatnonzero(np.r_[True, np.diff(v[order]) != 0])
    ys, xs = pix // w + y0, pix % w + x0
    if edges is None:
        return {"first": ys[starts] * W + xs[starts]}
    s: dict[str, np.ndarray] = {
        "area": np.diff(np.r_[starts, len(pix)]).astype(np.int64),
        "first": ys[starts] * W + xs[starts],
        "class": core.ravel()[pix[starts]].astype(np.int64),
        "sum_y": np.add.reduceat(ys, starts), "sum_x": np.add.reduceat(xs, starts),
        "bbox_y0": ys[starts], "bbox_y1": np.maximum.reduceat(ys, starts) + 1,
        "bbox_x0": np.minimum.reduceat(xs, starts), "bbox_x1": np.maximum.reduceat(xs, starts) + 1,
        "perimeter": np.add.reduceat(edges.ravel()[pix], starts)}
    if img is not None:
        for c in range(img.shape[0]):
            val = img[c].ravel()[pix].astype(np.float64)
            s[f"isum{c}"] = np.add.reduceat(val, starts)
            s[f"imax{c}"] = np.maximum.reduceat(val, starts)
            s[f"imin{c}"] = np.minimum.reduceat(val, starts)
    if prob is not None:
        k = core.ravel()[pix].astype(np.int64)
        if k.size and k.max() >= prob.shape[0]:
            raise InputError(f"the class map holds class {int(k.max())} but the probabilities have "
                             f"{prob.shape[0]} channels; give the probabilities of the same model")
        p = prob.reshape(prob.shape[0], -1)[k, pix].astype(np.float64)
        s["psum"] = np.add.reduceat(p, starts)
    assert len(starts) == n
    return s


def _seam_pairs(a_ids: np.ndarray, a_cls: np.ndarray, b_ids: np.ndarray, b_cls: np.ndarray,
                shift: int) -> np.ndarray:
    """(k, 2) id pairs a[i + shift] ~ b[i]: same class, both foreground."""
    n = len(b_ids)
    i = np.arange(n)
    j = i + shift
    ok = (j >= 0) & (j < len(a_ids))
    i, j = i[ok], j[ok]
    m = (a_cls[j] == b_cls[i]) & (b_cls[i] != 0)
    return np.stack([a_ids[j][m], b_ids[i][m]], axis=1)


@dataclass
class TileSummary:
    """What pass 1 keeps of one tile: its component count, per-component sums (:func:`_tile_stats`)
    and its border rows / columns as (local ids, classes), for the seams."""

    n: int
    stats: dict[str, np.ndarray]
    top: tuple[np.ndarray, np.ndarray]
    bottom: tuple[np.ndarray, np.ndarray]
    left: tuple[np.ndarray, np.ndarray]
    right: tuple[np.ndarray, np.ndarray]


def summarize_tile(cpad: np.ndarray, box: tuple[int, int, int, int], W: int, connectivity: int, *,
                   measure: bool = True, ccore: np.ndarray | None = None, img: np.ndarray | None = None,
                   prob: np.ndarray | None = None) -> TileSummary:
    """Pass 1 on one tile: ``cpad`` is its class block with a one-pixel halo (:func:`_padded`),
    ``box`` = (y0, y1, x0, x1); ``ccore`` the classes when the labels are other ids."""
    y0, y1, x0, x1 = box
    core = cpad[1:-1, 1:-1]
    lab, n = _label(core, connectivity)
    ids = lab.astype(np.int64)
    stats = _tile_stats(lab, n, y0, x0, W, core if ccore is None else ccore,
                        _edge_count(cpad) if measure else None, img, prob)
    return TileSummary(n, stats, (ids[0].copy(), core[0].copy()), (ids[-1].copy(), core[-1].copy()),
                       (ids[:, 0].copy(), core[:, 0].copy()), (ids[:, -1].copy(), core[:, -1].copy()))


class Seams:
    """The seam equivalences of tiles added in row-major order (each tile row starting at x = 0),
    holding only the last row of the tile row above and the last column of the tile to the left.

    ``offsets[t]`` is tile t's first provisional id - 1; ``pairs`` the (k, 2) provisional id pairs
    that are one object; :meth:`resolve` numbers the objects.
    """

    def __init__(self, W: int, connectivity: int) -> None:
        self.W = W
        self.shifts = (0,) if connectivity == 1 else (-1, 0, 1)
        self.prev_ids, self.prev_cls = np.zeros(W, np.int64), np.zeros(W, np.int64)
        self.next_ids, self.next_cls = self.prev_ids.copy(), self.prev_cls.copy()
        self.left_ids = self.left_cls = np.zeros(0, np.int64)
        self.offsets = [0]
        self.pairs: list[np.ndarray] = []
        self.first: list[np.ndarray] = []

    def add(self, box: tuple[int, int, int, int], s: TileSummary) -> int:
        """Record tile ``box``'s seams with the tiles above and to its left; returns its offset."""
        y0, y1, x0, x1 = box
        W, off = self.W, self.offsets[-1]
        if x0 == 0 and y0:
            self.prev_ids, self.prev_cls, self.next_ids, self.next_cls = (self.next_ids, self.next_cls,
                                                                          self.prev_ids, self.prev_cls)

        def glob(ids: np.ndarray) -> np.ndarray:
            return np.where(ids > 0, ids + off, 0)

        if y0:                                   # the seam with the tile row above
            lo = max(x0 - 1, 0)
            a_ids, a_cls = self.prev_ids[lo:min(x1 + 1, W)], self.prev_cls[lo:min(x1 + 1, W)]
            for sh in self.shifts:
                self.pairs.append(_seam_pairs(a_ids, a_cls, glob(s.top[0]), s.top[1], sh + (x0 - lo)))
        if x0:                                   # the seam with the tile to the left
            for sh in self.shifts:
                self.pairs.append(_seam_pairs(self.left_ids, self.left_cls, glob(s.left[0]), s.left[1], sh))
        self.next_ids[x0:x1], self.next_cls[x0:x1] = glob(s.bottom[0]), s.bottom[1]
        self.left_ids, self.left_cls = glob(s.right[0]), s.right[1]
        self.offsets.append(off + s.n)
        if s.n:
            self.first.append(s.stats["first"])
        return off

    def resolve(self) -> tuple[np.ndarray, int]:
        """Provisional id -> final id and the object count (:func:`_resolve`)."""
        return _resolve(self.offsets[-1], self.pairs, np.concatenate([np.zeros(0, np.int64)] + self.first))


def join(summaries: list[TileSummary], boxes: list[tuple[int, int, int, int]], W: int, connectivity: int, *,
         channels: int = 0, probabilities: bool = False, measure: bool = True
         ) -> tuple[np.ndarray, np.ndarray, int, dict[str, np.ndarray] | None]:
    """Pass 1's end for tiles summarised apart (the Dask API): their seams in row-major order, the
    union-find, the merged table. Returns (provisional -> final id, tile offsets, count, table)."""
    seams = Seams(W, connectivity)
    for box, s in zip(boxes, summaries):
        seams.add(box, s)
    fmap, count = seams.resolve()
    table = _merge([s.stats for s in summaries], fmap, count, channels, probabilities) if measure else None
    return fmap, np.asarray(seams.offsets, np.int64), count, table


def relabel(core: np.ndarray, connectivity: int, fmap: np.ndarray, offset: int, dtype: np.dtype) -> np.ndarray:
    """Pass 2 on one tile: the same deterministic labelling as pass 1, mapped to the final ids."""
    lab, _ = _label(core, connectivity)
    return fmap[np.where(lab > 0, lab + offset, 0)].astype(dtype)


def tile_grid(H: int, W: int, ty: int, tx: int) -> list[tuple[int, int, int, int]]:
    """The passes' tiles (y0, y1, x0, x1) of ty x tx pixels, row-major."""
    return [(y0, min(y0 + ty, H), x0, min(x0 + tx, W)) for y0 in range(0, H, ty) for x0 in range(0, W, tx)]


# **** the pass ****
def instances(labels: Any, out: str | os.PathLike[str] | None = None, *, image: Any = None,
              probabilities: Any = None, tile: int = DEFAULT_TILE, connectivity: int = 1,
              dtype: Any = None, overwrite: bool = False, pyramid: bool = False, outlines: bool = False,
              radec: bool | None = None, progress: bool | None = None, name: str | None = None,
              class_map: Any = None, job: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None) -> Objects:
    """Instance labels and measurements of a class map, tile by tile, exactly.

    Parameters
    ----------
    labels : str, zarr array or ndarray
        The class map: a ``--output labels`` output path (its level 0), or an (H, W)
        integer array; 0 is background.
    out : str, optional
        Where to write the instance labels (an OME-Zarr labels image). None keeps
        them in memory (``Objects.labels``; small images only). Resumable: once pass 1
        is done its result (``OUT/.hirestile/objects.npz``) and a done-log of the tiles
        pass 2 wrote (fsync'd, as the segmentation's, :mod:`hirestile.resume`) survive a
        ``kill -9``; the same call again skips both and gives the same bits.
    image : InputImage, path or array, optional
        The image the class map was computed from (same H x W): per-channel
        intensity sum / mean / max / min.
    probabilities : path or (K, H, W) array, optional
        A probabilities output of the same model: mean probability of each object's class.
    tile : int
        Tile side of both passes (memory ~ tile**2 * (channels + a few) * 8 bytes); with
        ``out``, the output's shard (``tile`` rounded up to whole 256-pixel chunks).
    connectivity : {1, 2}
        1: 4-connected (default), 2: 8-connected, as ``skimage.measure.label``.
    dtype : optional
        Label dtype; default uint32, uint64 past 2**32 - 1 objects. Too many objects
        for a given dtype raise :class:`OutputError` before anything is written.
    overwrite : bool
        Replace an existing ``out`` that is not this job's earlier output.
    outlines : bool
        Also trace each object's exact pixel-edge outline (``Objects.outlines``).
    job : dict, optional
        What identifies the job in the output (a rerun of the same job needs no ``overwrite``);
        default the labels path and the connectivity.
    class_map : optional
        Where each object's ``class`` (and the probability channel it reads) comes from when
        ``labels`` holds other ids than classes (:mod:`hirestile.objects_split`); default ``labels``.
    radec : bool, optional
        Add ``ra`` and ``dec`` (degrees) of each centroid from the celestial WCS a FITS input
        left on the class map (or a FITS ``image``'s header). None: when there is one;
        True: required (:class:`InputError` without a WCS, before any work).
    log : callable, optional
        Called with a line when a run resumes (the CLI prints it).
    """
    if connectivity not in (1, 2):
        raise InputError(f"connectivity must be 1 (4-connected) or 2 (8-connected), got {connectivity}")
    tile = int(tile)
    if tile < 1:
        raise InputError(f"tile must be at least 1 pixel, got {tile}")
    cm, classes, src_name = open_classmap(labels)
    ccm = cm
    if class_map is not None:
        ccm, classes, _ = open_classmap(class_map)
        if tuple(ccm.shape) != tuple(cm.shape):
            raise InputError(f"the class map is {ccm.shape} but the labels {cm.shape}; give matching arrays")
    wcs = find_wcs(labels if class_map is None else class_map, image) if radec is not False else None
    if radec and wcs is None:
        raise InputError(f"{src_name}: RA/Dec asked for, but neither the class map nor the image carries a "
                         "celestial WCS; segment the FITS image itself, or drop --radec")
    H, W = (int(s) for s in cm.shape)
    read_img, nch = open_image_reader(image, (H, W), "image")
    read_prob, _ = open_image_reader(probabilities if probabilities is None or not isinstance(probabilities, (str, os.PathLike))
                           else open_probabilities(probabilities), (H, W), "probabilities")
    job = job or {"source": os.path.abspath(src_name) if isinstance(labels, (str, os.PathLike)) else None,
           "connectivity": connectivity}
    if out is not None:
        out = os.fspath(out)
        check_out(out, job, overwrite)
        layout = ome.choose_layout("labels", classes=1, out_hw=(H, W), tile=tile)
        ty, tx = layout.block                    # the passes' tiles are the output's shards: a tile writes
    else:                                        # whole shards, so a kill tears only unmarked ones
        ty = tx = tile
    from tqdm import tqdm

    bar: dict[str, Any] = {"unit": "tile", "leave": False, "disable": None if progress is None else not progress}
    times: dict[str, float] = {}
    grid = tile_grid(H, W, ty, tx)
    key = {"job": job, "tile": [ty, tx], "shape": [H, W], "connectivity": connectivity, "channels": nch,
           "probabilities": read_prob is not None, "wcs": wcs is not None, "split": class_map is not None,
           "dtype": None if dtype is None else str(np.dtype(dtype)),
           "image": source_identity(image), "probabilities_source": source_identity(probabilities)}
    state = load_state(out, key) if out is not None else None
    t0 = time.perf_counter()
    if state is None:
        seams, stats = Seams(W, connectivity), []
        for box in tqdm(grid, desc="objects 1/2", **bar):
            (y0, y1, x0, x1), cpad = box, _padded(cm, *box)
            s = summarize_tile(cpad, box, W, connectivity,
                               ccore=None if class_map is None else np.asarray(ccm[y0:y1, x0:x1]).astype(np.int64),
                               img=read_img((y0, y1), (x0, x1)) if read_img else None,
                               prob=read_prob((y0, y1), (x0, x1)) if read_prob else None)
            seams.add(box, s)
            stats.append(s.stats)
        times["pass 1"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        fmap, count = seams.resolve()
        offsets = np.asarray(seams.offsets, np.int64)
        table = _merge(stats, fmap, count, nch, read_prob is not None)
        del stats, seams
        if wcs is not None:                  # 0-based pixel coordinates, as the centroids
            ra, dec = wcs.pixel_to_world_values(table["centroid_x"], table["centroid_y"])
            table["ra"], table["dec"] = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
        label_dtype = check_label_dtype(count, dtype)
        times["union-find"] = time.perf_counter() - t1
    else:
        fmap, offsets, count, table, label_dtype = (state[k] for k in ("fmap", "offsets", "count", "table", "dtype"))

    t2 = time.perf_counter()
    res = Objects(count=count, dtype=label_dtype, table=table, classes=classes, connectivity=connectivity,
                  output=out)
    group = arr = donelog = None
    done: set[tuple[int, int]] = set()
    if out is None:
        res.labels = np.zeros((H, W), label_dtype)
    elif state is None:
        group, arr, layout = create_out(out, job, (H, W), layout, label_dtype)
        donelog = lock_output(out)
        save_state(out, key, fmap=fmap, offsets=offsets, count=count, table=table, dtype=label_dtype)
    else:
        group, arr = state["group"], state["group"]["0"]
        donelog = lock_output(out)
        done = donelog.load()
        if log is not None:
            log(f"hirestile: resuming the object pass: {len(done)} of {len(grid)} tiles already written")
    edges: list[np.ndarray] = []
    try:
        for t, box in enumerate(tqdm(grid, desc="objects 2/2", **bar)):
            y0, y1, x0, x1 = box
            cpad = _padded(cm, *box)
            rect = layout.blocks_of(((y0, y1), (x0, x1))) if arr is not None else None
            if rect is not None and all_done(rect, done):
                if not outlines:
                    continue
                block = np.asarray(arr[y0:y1, x0:x1])         # written before the kill: read back for its edges
            else:
                block = relabel(cpad[1:-1, 1:-1], connectivity, fmap, offsets[t], label_dtype)
                if arr is None:
                    res.labels[y0:y1, x0:x1] = block
                else:
                    store_region(arr, ((y0, y1), (x0, x1)), block, output=out, mark=donelog.mark)
            if outlines:
                from .objects_export import tile_edges
                edges.append(tile_edges(block, cpad, y0, x0, W))
        if outlines:
            from .objects_export import trace_outlines
            res.outlines = trace_outlines(edges, W)
        if group is not None:
            if pyramid:
                ome.build_pyramid(group, kind="labels", base=layout, levels=ome.pyramid_levels((H, W)))
            ome.finalize(group, ome=ome.ome_metadata(
                kind="labels", classes=(), name=name or os.path.basename(out.rstrip("/")),
                levels=ome.pyramid_levels((H, W)) if pyramid else 1,
                extra={"objects": count, "connectivity": connectivity}))
            donelog.remove()
    finally:
        if donelog is not None:
            donelog.close()
    times["pass 2"] = time.perf_counter() - t2
    res.times = times
    return res


def _resolve(n_prov: int, pairs: list[np.ndarray], first: np.ndarray) -> tuple[np.ndarray, int]:
    """Provisional id -> final id (0 stays 0), objects numbered in raster order of their first pixel."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(n_prov) + 1
    e = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    g = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    ncomp, comp = connected_components(g, directed=False)
    comp = comp.astype(np.int64)
    big = np.iinfo(np.int64).max
    cf = np.full(ncomp, big, np.int64)
    np.minimum.at(cf, comp[1:], first)
    cf[comp[0]] = -1                                     # background first
    rank = np.empty(ncomp, np.int64)
    rank[np.argsort(cf, kind="stable")] = np.arange(ncomp)
    return rank[comp], ncomp - 1


def _merge(stats: list[dict[str, np.ndarray]], fmap: np.ndarray, count: int, nch: int,
           prob: bool) -> dict[str, np.ndarray]:
    """Per-object table from per-provisional-id sums and extremes."""
    stats = [s for s in stats if s]
    cat = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]} if stats else {}
    f = fmap[1:] - 1                                     # provisional 1.. -> row 0..
    n = count

    def red(key: str, op: Any, init: Any, dt: Any) -> np.ndarray:
        o = np.full(n, init, dt)
        if len(f):
            op.at(o, f, cat[key])
        return o

    area = red("area", np.add, 0, np.int64)
    t: dict[str, np.ndarray] = {"label": np.arange(1, n + 1, dtype=np.int64)}
    t["class"] = red("class", np.maximum, 0, np.int64)
    t["area"] = area
    t["centroid_y"] = red("sum_y", np.add, 0, np.int64) / np.maximum(area, 1)
    t["centroid_x"] = red("sum_x", np.add, 0, np.int64) / np.maximum(area, 1)
    for k, op, init in (("bbox_y0", np.minimum, np.iinfo(np.int64).max), ("bbox_x0", np.minimum, np.iinfo(np.int64).max),
                        ("bbox_y1", np.maximum, 0), ("bbox_x1", np.maximum, 0)):
        t[k] = red(k, op, init, np.int64)
    t["perimeter"] = red("perimeter", np.add, 0, np.int64)
    for c in range(nch):
        s = red(f"isum{c}", np.add, 0.0, np.float64)
        t[f"intensity_sum_{c}"] = s
        t[f"intensity_mean_{c}"] = s / np.maximum(area, 1)
        t[f"intensity_max_{c}"] = red(f"imax{c}", np.maximum, -np.inf, np.float64)
        t[f"intensity_min_{c}"] = red(f"imin{c}", np.minimum, np.inf, np.float64)
    if prob:
        t["probability_mean"] = red("psum", np.add, 0.0, np.float64) / np.maximum(area, 1)
    return t


def check_label_dtype(count: int, dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype(np.uint32 if count <= np.iinfo(np.uint32).max else np.uint64)
    dt = np.dtype(dtype)
    if dt.kind != "u":
        raise InputError(f"label dtype must be unsigned (uint8/16/32/64), got {dt}")
    if count > np.iinfo(dt).max:
        raise OutputError(f"the class map holds {count:,} objects, more than {dt} labels hold "
                          f"({np.iinfo(dt).max:,}); use a wider dtype (uint32, uint64) or leave it out")
    return dt


__all__ = ["Objects", "instances", "open_classmap", "prepare_instances_output", "DEFAULT_TILE", "TileSummary",
           "summarize_tile", "Seams", "join", "relabel", "tile_grid"]
