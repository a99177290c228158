"""GeoJSON outlines read back with shapely (an independent geometry library): every exported
polygon is valid, covers exactly its object's pixels (area = pixel count, no two objects overlap),
and ``--simplify TOL`` keeps them valid and within Hausdorff distance TOL of the exact outline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import shape

from hirestile.errors import InputError
from hirestile.objects import instances
from hirestile.objects_export import write_geojson

from clihelp import assert_one_line_error, cli
from test_objects import _borders, _diagonal, _everything, _ring, _snake, labels_output, random_classmap


def geojson_shapes(res, path, simplify=None) -> list:
    write_geojson(res, str(path), simplify=simplify)
    feats = json.loads(path.read_text())["features"]
    assert [f["properties"]["label"] for f in feats] == list(range(1, res.count + 1))
    return [shape(f["geometry"]) for f in feats]


def check_exact(cm: np.ndarray, res, shapes: list) -> None:
    for g, area in zip(shapes, res.table["area"]):
        assert g.is_valid, shapely.is_valid_reason(g)
        assert g.area == area                                     # the object's pixel count
        for p in shapely.get_parts(g):                            # RFC 7946: exteriors CCW, holes CW
            assert p.exterior.is_ccw and not any(r.is_ccw for r in p.interiors)
    if shapes:
        assert shapely.union_all(shapes).area == np.count_nonzero(cm)     # so no two objects overlap
    yy, xx = np.nonzero(cm)                                       # each pixel centre lies in its own object
    lab = res.labels[yy, xx].astype(np.int64)
    tree = shapely.STRtree(shapes)
    pts, hit = tree.query(shapely.points(xx + 0.5, yy + 0.5), predicate="within")
    assert np.array_equal(np.sort(pts), np.arange(len(yy))) and np.array_equal(hit[np.argsort(pts)] + 1, lab)


def check_simplified(exact: list, simple: list, tol: float) -> None:
    for a, b in zip(exact, simple):
        assert b.is_valid, shapely.is_valid_reason(b)
        assert shapely.hausdorff_distance(a, b, densify=0.05) <= tol + 1e-9
        va = {tuple(v) for v in shapely.get_coordinates(a)}
        vb = {tuple(v) for v in shapely.get_coordinates(b)}
        assert vb <= va                                           # vertices are exact pixel corners kept
        for p in shapely.get_parts(b):
            assert p.exterior.is_ccw and not any(r.is_ccw for r in p.interiors)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 47), w=st.integers(1, 43), tile=st.sampled_from([1, 2, 3, 7, 11, 64]),
       conn=st.sampled_from([1, 2]), density=st.floats(0.1, 0.95), tol=st.floats(0.3, 6.0),
       seed=st.integers(0, 2**31))
def test_random_outlines_valid_and_simplified_within_tol(tmp_path, h, w, tile, conn, density, tol, seed):
    cm = random_classmap(np.random.default_rng(seed), h, w, density, 2)
    res = instances(cm, tile=tile, connectivity=conn, outlines=True)
    exact = geojson_shapes(res, tmp_path / "e.geojson")
    check_exact(cm, res, exact)
    check_simplified(exact, geojson_shapes(res, tmp_path / "s.geojson", simplify=tol), tol)


@pytest.mark.parametrize("make", [_snake, _ring, _diagonal, _borders, _everything])
@pytest.mark.parametrize("conn", [1, 2])
def test_hard_cases(tmp_path, make, conn):
    cm = make(37, 41)
    cm[18:30, 5:25] = np.where(cm[18:30, 5:25] == 0, 2, cm[18:30, 5:25])    # a block with holes as well
    yy, xx = np.mgrid[0:37, 0:41]
    cm[(yy - 8) ** 2 + (xx - 32) ** 2 <= 30] = 3                               # a disc: a staircase outline
    res = instances(cm, tile=5, connectivity=conn, outlines=True)
    exact = geojson_shapes(res, tmp_path / "e.geojson")
    check_exact(cm, res, exact)
    for tol in (0.5, 1.0, 3.0, 20.0):
        simple = geojson_shapes(res, tmp_path / "s.geojson", simplify=tol)
        check_simplified(exact, simple, tol)
    disc = int(res.labels[8, 32]) - 1
    assert len(shapely.get_coordinates(simple[disc])) < len(shapely.get_coordinates(exact[disc]))


def test_simplify_in_the_cli(tmp_path):
    rng = np.random.default_rng(4)
    cm = random_classmap(rng, 80, 90, 0.6, 2)
    cm[20:60, 20:70] = 1
    src = labels_output(tmp_path / "cm.zarr", cm)
    r = cli("objects", src, "-o", tmp_path / "i.zarr", "--geojson", tmp_path / "s.geojson", "--simplify", "1.5",
            "--tile", "32")
    assert r.returncode == 0, r.stderr
    assert "simplified within 1.5 px" in r.stderr
    res = instances(cm, tile=32, outlines=True)
    exact = geojson_shapes(res, tmp_path / "e.geojson")
    feats = json.loads((tmp_path / "s.geojson").read_text())["features"]
    simple = [shape(f["geometry"]) for f in feats]
    check_simplified(exact, simple, 1.5)
    assert [f["properties"]["measurements"]["area"] for f in feats] == res.table["area"].tolist()  # exact pixels
    assert sum(len(shapely.get_coordinates(g)) for g in simple) < sum(len(shapely.get_coordinates(g)) for g in exact)

    r = cli("objects", src, "-o", tmp_path / "j.zarr", "--geojson", tmp_path / "t.geojson", "--simplify", "0")
    assert_one_line_error(r, 2, r"--simplify 0.0: the tolerance is a distance in pixels > 0")
    r = cli("objects", src, "-o", tmp_path / "j.zarr", "--simplify", "1")
    assert_one_line_error(r, 2, r"--simplify applies to the --geojson outlines")
    assert not (tmp_path / "j.zarr").exists() and not (tmp_path / "t.geojson").exists()
    with pytest.raises(InputError, match="distance in pixels"):
        write_geojson(res, str(tmp_path / "u.geojson"), simplify=float("nan"))
