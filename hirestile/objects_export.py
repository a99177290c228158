"""Objects out: exact pixel-edge outlines, and the table as Parquet / CSV, GeoJSON (QuPath), FITS.

Outlines follow pixel edges, so they are exact: the polygon of object ``i`` covers
exactly its pixels (pixel (r, c) is the square [c, c+1] x [r, r+1]; vertices are pixel
corners (x, y), QuPath's convention). They are traced out of core: the second pass of
:func:`hirestile.objects.instances` emits, per tile, the directed edges between an
object pixel and a pixel of another class (:func:`tile_edges`: a local test on the
class map, so seams need nothing special); :func:`trace_outlines` chains them into
rings. Where two pixels of one object touch only at a corner, the chain turns
around the pixel it is on, so every ring is simple: exteriors counter-clockwise, holes
clockwise (RFC 7946, in (x, y) numbers), and an 8-connected object joined only through
corners becomes a MultiPolygon of simple polygons.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np
from numba import njit

from .errors import InputError, OutputError
from .ome import PALETTE

TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


# **** outlines ****
def tile_edges(block: np.ndarray, cpad: np.ndarray, y0: int, x0: int, W: int) -> np.ndarray:
    """(k, 3) int64 rows (label, start vertex key, direction) of one tile's boundary edges.

    ``block`` holds final labels, ``cpad`` the class map with a one-pixel halo. Directions:
    0 left along a top edge, 1 down a left edge, 2 right along a bottom edge, 3 up a
    right edge (the object on the same hand throughout). Vertex key = y * (W + 1) + x.
    """
    c = cpad[1:-1, 1:-1]
    W1 = W + 1
    out = []
    h, w = block.shape
    rr, cc = np.mgrid[y0:y0 + h, x0:x0 + w]
    for code, nb, (dx, dy) in ((0, cpad[:-2, 1:-1], (1, 0)), (1, cpad[1:-1, :-2], (0, 0)),
                               (2, cpad[2:, 1:-1], (0, 1)), (3, cpad[1:-1, 2:], (1, 1))):
        m = (block > 0) & (c != nb)
        key = (rr[m] + dy) * W1 + cc[m] + dx
        out.append(np.stack([block[m].astype(np.int64), key, np.full(key.shape, code, np.int64)], axis=1))
    return np.concatenate(out)


@njit(cache=True)
def _chain(lab: np.ndarray, start: np.ndarray, code: np.ndarray, W1: int) -> np.ndarray:  # pragma: no cover
    n = len(lab)
    nxt = np.full(n, -1, np.int64)
    delta = np.array([-1, W1, 1, -W1], np.int64)
    i = 0
    while i < n:
        j = i
        while j < n and lab[j] == lab[i]:
            j += 1
        for e in range(i, j):
            endk = start[e] + delta[code[e]]
            lo, hi = i, j
            while lo < hi:
                mid = (lo + hi) // 2
                if start[mid] < endk:
                    lo = mid + 1
                else:
                    hi = mid
            want = (code[e] + 1) % 4          # turn around the pixel we are on
            best = -1
            k = lo
            while k < j and start[k] == endk:
                if best == -1 or code[k] == want:
                    best = k
                k += 1
            nxt[e] = best
        i = j
    return nxt


@njit(cache=True)
def _walk(nxt: np.ndarray, start: np.ndarray, code: np.ndarray):  # pragma: no cover
    n = len(nxt)
    seen = np.zeros(n, np.bool_)
    verts = np.empty(n, np.int64)
    rs = np.empty(n + 1, np.int64)
    first = np.empty(n, np.int64)
    nv = 0
    nr = 0
    for e0 in range(n):
        if seen[e0]:
            continue
        rs[nr] = nv
        first[nr] = e0
        nr += 1
        e = e0
        while True:
            seen[e] = True
            f = nxt[e]
            if code[f] != code[e]:
                verts[nv] = start[f]
                nv += 1
            e = f
            if e == e0:
                break
    rs[nr] = nv
    return verts[:nv], rs[:nr + 1], first[:nr]


def _inside(pt: tuple[float, float], ring: np.ndarray) -> bool:
    """Even-odd test of a point that lies on no edge of ``ring`` ((m, 2) x, y vertices)."""
    x, y = pt
    xa, ya = ring[:, 0], ring[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    cross = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = xa + (y - ya) * (xb - xa) / (yb - ya)
    return bool(np.count_nonzero(cross & (x < xi)) % 2)


def _split(keys: np.ndarray) -> list[np.ndarray]:
    """Cut a ring that passes a vertex twice (a pinch: the object on two diagonal corners) into
    loops that each pass it once: one is the exterior part, the others holes touching it there."""
    loops, path, pos = [], [], {}
    for v in keys.tolist():
        if v in pos:
            p = pos[v]
            loops.append(np.array(path[p:], np.int64))
            for u in path[p + 1:]:
                del pos[u]
            del path[p + 1:]
        else:
            pos[v] = len(path)
            path.append(v)
    loops.append(np.array(path, np.int64))
    return loops


def trace_outlines(edges: list[np.ndarray], W: int) -> dict[int, list[list[np.ndarray]]]:
    """label -> polygons, each [exterior, hole, ...] of (m, 2) float (x, y) rings (not closed)."""
    e = np.concatenate(edges) if edges else np.zeros((0, 3), np.int64)
    if not len(e):
        return {}
    e = e[np.lexsort((e[:, 1], e[:, 0]))]
    lab, start, code = (np.ascontiguousarray(e[:, i]) for i in range(3))
    W1 = W + 1
    nxt = _chain(lab, start, code, W1)
    if (nxt < 0).any():
        raise AssertionError("open outline: the edge set is not closed")
    verts, rs, first = _walk(nxt, start, code)
    ring = np.repeat(np.arange(len(first)), np.diff(rs))
    o = np.lexsort((verts, ring))
    dup = (ring[o][1:] == ring[o][:-1]) & (verts[o][1:] == verts[o][:-1])
    pinched = set(ring[o][1:][dup].tolist())
    rings_of: dict[int, list[np.ndarray]] = {}
    for r in range(len(first)):
        keys = verts[rs[r]:rs[r + 1]]
        for loop in (_split(keys) if r in pinched else [keys]):
            rings_of.setdefault(int(lab[first[r]]), []).append(
                np.stack([loop % W1, loop // W1], axis=1).astype(np.float64))
    out: dict[int, list[list[np.ndarray]]] = {}
    for k, rings in rings_of.items():
        outers, holes = [], []
        for ring_xy in rings:
            x, y = ring_xy[:, 0], ring_xy[:, 1]
            a2 = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
            if a2 < 0:                            # traced clockwise in (x, y) numbers: an exterior
                outers.append((ring_xy[::-1].copy(), -a2))
            else:
                holes.append(ring_xy)
        polys = [[o_] for o_, _ in outers]
        for hole in holes:
            if len(polys) > 1:
                (ax, ay), (bx, by) = hole[0], hole[1]
                dx, dy = np.sign(bx - ax), np.sign(by - ay)
                pt = (ax + dx / 2 - dy / 2, ay + dy / 2 + dx / 2)     # a pixel centre inside the hole
                best = min((a, i) for i, (o_, a) in enumerate(outers) if _inside(pt, o_))[1]
            else:
                best = 0
            polys[best].append(hole[::-1].copy())
        out[k] = polys
    return out


# **** exports ****
def check_new(path: str | None, overwrite: bool, what: str) -> None:
    """Refuse an existing export path (without ``overwrite``) or an unwritable directory, before any work."""
    if path is None:
        return
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{what} {path} already exists; pass --overwrite to replace it or choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {what} {path}: {parent} is not a writable directory; choose another path")
    if what == "table" and os.path.splitext(path)[1].lower() not in TABLE_FORMATS:
        raise OutputError(f"table {path}: unknown format; end the path with .parquet or .csv")
    if what == "catalog" and not path.lower().endswith((".fits", ".fit", ".fits.gz")):
        raise OutputError(f"catalog {path}: end the path with .fits")


def _class_names(res: Any) -> list[str]:
    names = list(res.classes)
    return [names[c] if 0 <= c < len(names) else f"class{c}" for c in res.table["class"]]


def _columns(res: Any) -> dict[str, np.ndarray]:
    cols = dict(res.table)
    cols["class_name"] = np.array(_class_names(res), dtype=object)
    return cols


def arrow_table(res: Any) -> Any:
    """The measurement table as a pyarrow Table: the columns of ``res.table`` and ``class_name``."""
    try:
        import pyarrow as pa
    except ImportError:
        raise OutputError("the Parquet / Arrow table needs pyarrow: pip install pyarrow "
                          "(or hirestile[objects]; or write the table as .csv)") from None
    return pa.table({k: pa.array(list(v) if v.dtype == object else v) for k, v in _columns(res).items()})


def write_table(res: Any, path: str) -> None:
    """The measurement table as Parquet (pyarrow) or CSV, by the path's extension."""
    fmt = TABLE_FORMATS.get(os.path.splitext(path)[1].lower())
    cols = _columns(res)
    if fmt == "parquet":
        table = arrow_table(res)
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(cols))
            for row in zip(*[v.tolist() for v in cols.values()]):
                w.writerow([repr(x) if isinstance(x, float) else x for x in row])
    else:
        raise OutputError(f"table {path}: unknown format; end the path with .parquet or .csv")


def check_simplify(tol: float | None) -> None:
    """Refuse a bad ``--simplify`` tolerance, or a missing shapely, before any work."""
    if tol is None:
        return
    if not (np.isfinite(tol) and tol > 0):
        raise InputError(f"--simplify {tol}: the tolerance is a distance in pixels > 0 (e.g. 0.5); "
                         "leave it out for the exact pixel-edge outlines")
    try:
        import shapely  # noqa: F401
    except ImportError:
        raise InputError("--simplify needs shapely: pip install shapely (or hirestile[objects]); "
                         "or leave it out for the exact pixel-edge outlines") from None


def simplify_outlines(outlines: dict[int, list[list[np.ndarray]]], tol: float) -> dict[int, list[list[np.ndarray]]]:
    """Outlines simplified within ``tol`` pixels: each object stays a valid (Multi)Polygon within
    Hausdorff distance ``tol`` of its exact outline, its vertices a subset of the exact ones.

    Douglas-Peucker with shapely's topology-preserving simplifier, run on each ring cut into
    three open pieces at fixed vertices: open pieces keep their ends, so every removed vertex lies
    within ``tol`` of the segment replacing it, and so does every point of that segment (GEOS
    would otherwise also drop a ring's start vertex without that bound); the pieces of one object
    are simplified together, so its rings neither cross themselves nor each other. An object whose
    result would still be invalid (three cut vertices in a line) keeps its exact outline.
    Neighbouring objects are simplified apart: a shared edge may part by up to ``tol``.
    """
    check_simplify(tol)
    import shapely

    keys = sorted(outlines)
    coords, piece_of, object_of, shape = [], [], [], []      # shape: (object, polygon, ring) per 3 pieces
    for i, k in enumerate(keys):
        for pi, poly in enumerate(outlines[k]):
            for ring in poly:
                n = len(ring)
                closed = np.vstack([ring, ring[:1]])
                for a, b in ((0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)):
                    coords.append(closed[a:b + 1])
                    piece_of.append(np.full(b + 1 - a, len(object_of)))
                    object_of.append(i)
                shape.append((k, pi))
    if not coords:
        return {}
    lines = shapely.linestrings(np.concatenate(coords), indices=np.concatenate(piece_of))
    multi = shapely.multilinestrings(lines, indices=np.asarray(object_of))
    simple = shapely.simplify(multi, tol, preserve_topology=True)
    parts = shapely.get_parts(simple)
    xy, idx = shapely.get_coordinates(parts, return_index=True)
    if len(parts) != len(coords):
        raise AssertionError("the simplifier dropped a piece of an outline")
    ends = np.searchsorted(idx, np.arange(len(parts) + 1))
    out: dict[int, list[list[np.ndarray]]] = {k: [[] for _ in outlines[k]] for k in keys}
    for r, (k, pi) in enumerate(shape):
        out[k][pi].append(np.vstack([xy[ends[j]:ends[j + 1] - 1] for j in range(3 * r, 3 * r + 3)]))
    for k in keys:
        g = shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in out[k]])
        if not g.is_valid:
            out[k] = outlines[k]
    return out


def write_geojson(res: Any, path: str, simplify: float | None = None) -> None:
    """One QuPath detection Feature per object: its exact outline (or one simplified within
    ``simplify`` pixels, :func:`simplify_outlines`) and its measurements (always of the exact pixels)."""
    if res.outlines is None:
        raise ValueError("outlines were not traced: call instances(..., outlines=True)")
    outlines = res.outlines if simplify is None else simplify_outlines(res.outlines, simplify)
    names = _class_names(res)
    cols = [k for k in res.table if k not in ("label", "class")]
    with open(path, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i in range(res.count):
            k = i + 1
            c = int(res.table["class"][i])
            polys = [[np.vstack([r, r[:1]]).astype(int).tolist() for r in p] for p in outlines[k]]
            geom = ({"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                    else {"type": "MultiPolygon", "coordinates": polys})
            meas = {col: _num(res.table[col][i]) for col in cols}
            feat = {"type": "Feature", "id": k, "geometry": geom, "properties": {
                "objectType": "detection", "label": k,
                "classification": {"name": names[i], "color": list(PALETTE[c % len(PALETTE)])},
                "measurements": meas}}
            f.write(("" if i == 0 else ",\n") + json.dumps(feat, separators=(",", ":")))
        f.write("\n]}\n")


def _num(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and not np.isfinite(v) else v


def write_catalog(res: Any, path: str, overwrite: bool = False) -> None:
    """A FITS source catalogue (astropy Table with units): flux = intensity sum, peak = max."""
    try:
        import astropy.units as u
        from astropy.table import Table
    except ImportError:
        raise OutputError("writing a FITS catalogue needs astropy: pip install astropy") from None
    t = Table()
    units = {"area": u.pix ** 2, "perimeter": u.pix, "ra": u.deg, "dec": u.deg}
    for k, v in res.table.items():
        name = k.replace("intensity_sum_", "flux_").replace("intensity_max_", "peak_")
        unit = units.get(k, u.pix if k.startswith(("centroid", "bbox")) else None)
        t[name] = v if unit is None else v * unit
    t["class_name"] = _class_names(res)
    t.meta["CONNECT"] = res.connectivity
    t.meta["ORIGIN"] = "hirestile"
    try:
        t.write(path, format="fits", overwrite=overwrite)
    except OSError as e:
        raise OutputError(f"cannot write catalog {path}: {e}; choose another path or pass --overwrite") from None


def export(res: Any, *, table: str | None = None, geojson: str | None = None, catalog: str | None = None,
           overwrite: bool = False, simplify: float | None = None) -> list[str]:
    """Write the asked exports; returns one line per file written."""
    done = []
    if table:
        write_table(res, table)
        done.append(f"table {table}: {res.count:,} rows")
    if geojson:
        write_geojson(res, geojson, simplify=simplify)
        done.append(f"geojson {geojson}: {res.count:,} features" + (f", simplified within {simplify:g} px"
                                                                    if simplify is not None else ""))
    if catalog:
        write_catalog(res, catalog, overwrite=True)
        done.append(f"catalog {catalog}: {res.count:,} sources")
    return done


__all__ = ["tile_edges", "trace_outlines", "check_new", "check_simplify", "simplify_outlines", "arrow_table", "write_table", "write_geojson", "write_catalog",
           "export"]
