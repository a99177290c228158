"""Objects (hirestile.objects): tiled instance labels equal skimage.measure.label on the full frame,
measurements equal regionprops_table, outlines are exact, exports parse back, bad input is one line."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.measure import label, regionprops_table

from hirestile import ome
from hirestile.errors import InputError, OutputError
from hirestile.objects import instances
from hirestile.objects_export import write_catalog, write_geojson, write_table

from clihelp import assert_one_line_error, cli


# ---- references ----------------------------------------------------------------------------
def edge_perimeter(cm: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Full-frame reference: per object, pixel edges to another class or the outside."""
    p = np.pad(cm.astype(np.int64), 1, constant_values=-1)
    c = p[1:-1, 1:-1]
    e = sum((c != q).astype(np.int64) for q in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]))
    return np.bincount(lab.ravel(), weights=e.ravel(), minlength=n + 1)[1:].astype(np.int64)


def check_table(res, cm: np.ndarray, ref: np.ndarray, img: np.ndarray | None = None) -> None:
    n = int(ref.max())
    assert res.count == n and len(res.table["label"]) == n
    if not n:
        return
    props = ["label", "area", "centroid", "bbox"] + (["intensity_mean", "intensity_max", "intensity_min"]
                                                      if img is not None else [])
    rp = regionprops_table(ref, intensity_image=None if img is None else np.moveaxis(img, 0, -1),
                           properties=props)
    t = res.table
    assert np.array_equal(t["label"], rp["label"]) and np.array_equal(t["area"], rp["area"])
    np.testing.assert_allclose(t["centroid_y"], rp["centroid-0"], rtol=1e-12)
    np.testing.assert_allclose(t["centroid_x"], rp["centroid-1"], rtol=1e-12)
    for i, k in enumerate(["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]):
        assert np.array_equal(t[k], rp[f"bbox-{i}"]), k
    vals, first = np.unique(ref.ravel(), return_index=True)
    first = first[vals > 0]
    assert np.array_equal(t["class"], cm.ravel()[first])
    assert np.array_equal(t["perimeter"], edge_perimeter(cm, ref, n))
    if img is not None:
        for c in range(img.shape[0]):
            sfx = f"-{c}" if img.shape[0] > 1 else ""
            np.testing.assert_allclose(t[f"intensity_mean_{c}"], rp[f"intensity_mean{sfx}"], rtol=1e-9)
            assert np.array_equal(t[f"intensity_max_{c}"], rp[f"intensity_max{sfx}"])
            assert np.array_equal(t[f"intensity_min_{c}"], rp[f"intensity_min{sfx}"])
            sums = np.bincount(ref.ravel(), weights=img[c].ravel().astype(np.float64))[1:]
            np.testing.assert_allclose(t[f"intensity_sum_{c}"], sums, rtol=1e-9)


def check_outlines(res, labels: np.ndarray) -> None:
    """Every object's polygons cover exactly its pixels (even-odd over pixel centres)."""
    from matplotlib.path import Path

    H, W = labels.shape
    yy, xx = np.mgrid[0:H, 0:W]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    assert sorted(res.outlines) == list(range(1, res.count + 1))
    for k, polys in res.outlines.items():
        inside = np.zeros(H * W, bool)
        area = 0.0
        for poly in polys:
            for i, ring in enumerate(poly):
                x, y = ring[:, 0], ring[:, 1]
                a = (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2
                assert (a > 0) == (i == 0), "exteriors counter-clockwise, holes clockwise"
                area += a
                inside ^= Path(np.vstack([ring, ring[:1]]), closed=True).contains_points(centres)
                assert len({tuple(v) for v in ring}) == len(ring), "a ring visits a vertex once"
        assert area == res.table["area"][k - 1]
        assert np.array_equal(inside.reshape(H, W), labels == k), k


def random_classmap(rng: np.random.Generator, h: int, w: int, density: float, classes: int) -> np.ndarray:
    fg = rng.random((h, w)) < density
    return (fg * rng.integers(1, classes + 1, (h, w))).astype(np.uint8)


# ---- exactness -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 61), w=st.integers(1, 61), tile=st.sampled_from([1, 2, 3, 5, 7, 13, 16, 31, 64]),
       conn=st.sampled_from([1, 2]), density=st.floats(0.05, 0.95), classes=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_random_class_maps_equal_full_frame(h, w, tile, conn, density, classes, seed):
    rng = np.random.default_rng(seed)
    cm = random_classmap(rng, h, w, density, classes)
    img = rng.integers(0, 256, (2, h, w)).astype(np.uint8)
    res = instances(cm, tile=tile, connectivity=conn, image=img)
    ref = label(cm, connectivity=conn)
    assert res.labels.dtype == np.uint32
    assert np.array_equal(res.labels, ref)                # same objects, same numbers (raster order)
    check_table(res, cm, ref, img.astype(np.float64))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 29), w=st.integers(1, 29), tile=st.sampled_from([1, 2, 3, 7, 11]),
       conn=st.sampled_from([1, 2]), density=st.floats(0.2, 0.9), seed=st.integers(0, 2**31))
def test_outlines_are_exact(h, w, tile, conn, density, seed):
    cm = random_classmap(np.random.default_rng(seed), h, w, density, 2)
    res = instances(cm, tile=tile, connectivity=conn, outlines=True)
    check_outlines(res, res.labels)


def _snake(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for i, y in enumerate(range(0, h, 2)):
        m[y, :] = 1
        if y + 1 < h:
            m[y + 1, w - 1 if i % 2 == 0 else 0] = 1
    return m


def _ring(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    m = ((r > min(h, w) / 4) & (r < min(h, w) / 2.2)).astype(np.uint8)
    m[h // 2 - 1:h // 2 + 2, w // 2 - 1:w // 2 + 2] = 2                 # an island of another class inside
    return m


def _diagonal(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    i = np.arange(min(h, w))
    m[i, i] = 1
    m[i[:-3], i[:-3] + 3] = 1
    return m


def _borders(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[0, :] = 1
    m[:, -1] = 1
    m[-1, : w // 2] = 2
    m[1:-1, 0] = 3
    return m


def _everything(h: int, w: int) -> np.ndarray:
    m = np.ones((h, w), np.uint8)
    m[1::4, 1:-1] = 0                                       # a comb: one object through every tile
    return m


@pytest.mark.parametrize("make", [_snake, _ring, _diagonal, _borders, _everything])
@pytest.mark.parametrize("tile", [1, 2, 3, 5, 8, 13, 100])
@pytest.mark.parametrize("conn", [1, 2])
def test_hard_cases(make, tile, conn):
    cm = make(37, 41)
    res = instances(cm, tile=tile, connectivity=conn, outlines=True)
    ref = label(cm, connectivity=conn)
    assert np.array_equal(res.labels, ref)
    check_table(res, cm, ref)
    check_outlines(res, res.labels)


def test_one_object_and_connectivity():
    assert instances(_snake(37, 41), tile=4).count == 1
    assert instances(_everything(37, 41), tile=3).count == 1
    d = _diagonal(20, 20)
    assert instances(d, tile=3, connectivity=1).count == int(d.sum())    # corners do not join
    assert instances(d, tile=3, connectivity=2).count == 2
    res = instances(np.eye(6, dtype=np.uint8), tile=2, connectivity=2, outlines=True)
    assert len(res.outlines[1]) == 6                        # one object, six simple squares touching at corners
    assert instances(np.zeros((5, 7), np.uint8), tile=2).count == 0


def test_probability_mean():
    rng = np.random.default_rng(1)
    cm = random_classmap(rng, 30, 23, 0.6, 2)
    p = rng.random((3, 30, 23)).astype(np.float16)
    res = instances(cm, tile=7, probabilities=p)
    ref = label(cm, connectivity=1)
    own = np.take_along_axis(p.astype(np.float64), cm[None].astype(np.int64), 0)[0]
    want = np.bincount(ref.ravel(), weights=own.ravel())[1:] / np.bincount(ref.ravel())[1:]
    np.testing.assert_allclose(res.table["probability_mean"], want, rtol=1e-12)


def test_probabilities_from_a_probabilities_output(tmp_path):
    rng = np.random.default_rng(2)
    cm = random_classmap(rng, 30, 23, 0.6, 2)
    p = rng.random((3, 30, 23)).astype(np.float16)
    g = ome.new_group(str(tmp_path / "p.zarr"), {"manifest": {"job": {"output": "probabilities"}}})
    lay = ome.choose_layout("probabilities", classes=3, out_hw=cm.shape, tile=64)
    ome.create_array(g, "0", lay, p.dtype, dimension_names=["c", "y", "x"])[...] = p
    got = instances(cm, tile=6, probabilities=str(tmp_path / "p.zarr")).table["probability_mean"]
    np.testing.assert_array_equal(got, instances(cm, tile=6, probabilities=p).table["probability_mean"])
    with pytest.raises(InputError, match="not .K, H, W. probabilities"):
        instances(cm, probabilities=labels_output(tmp_path / "cm.zarr", cm))


# ---- out of core: zarr in, OME-Zarr out, reruns ------------------------------------------------
def labels_output(path, cm: np.ndarray, classes=("background", "nucleus", "other")) -> str:
    """A class map stored the way `segment --output labels` stores one (group, array 0, manifest)."""
    g = ome.new_group(str(path), {"manifest": {"job": {"output": "labels"}, "classes": list(classes)}})
    lay = ome.choose_layout("labels", classes=len(classes), out_hw=cm.shape, tile=64)
    ome.create_array(g, "0", lay, cm.dtype, dimension_names=["y", "x"])[...] = cm
    ome.finalize(g, ome=ome.ome_metadata(kind="labels", classes=classes, name="cm", levels=1))
    return str(path)


def test_zarr_output_rerun_and_resume(tmp_path):
    cm = random_classmap(np.random.default_rng(3), 300, 271, 0.55, 2)
    src = labels_output(tmp_path / "cm.zarr", cm)
    out = tmp_path / "inst.zarr"
    res = instances(src, out, tile=64, pyramid=True)
    g = zarr.open_group(str(out), mode="r")
    a = g["0"][...]
    assert a.dtype == np.uint32 and np.array_equal(a, label(cm, connectivity=1)) and res.labels is None
    attrs = dict(g.attrs)
    assert attrs["hirestile"]["status"] == "complete" and "image-label" in attrs["ome"]
    assert attrs["ome"]["multiscales"][0]["metadata"]["objects"] == res.count and "1" in g
    assert res.classes == ("background", "nucleus", "other")
    g2 = zarr.open_group(str(out), mode="r+")                # an interrupted run: garbage, marked incomplete
    g2["0"][:10, :10] = 7
    g2.attrs.put({"hirestile": {**attrs["hirestile"], "status": "incomplete"}})
    again = instances(src, out, tile=37)                      # the same job: rerun without --overwrite
    assert np.array_equal(zarr.open_group(str(out), mode="r")["0"][...], a)
    assert again.count == res.count
    for k in res.table:
        assert np.array_equal(res.table[k], again.table[k]), k
    with pytest.raises(OutputError, match="already exists"):
        instances(src, out, tile=37, connectivity=2)         # another job
    instances(src, out, tile=37, connectivity=2, overwrite=True)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="not an .H, W. integer class map"):
        instances(np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(InputError, match="integer class map"):
        instances(np.zeros((5, 5), np.float32))
    g = ome.new_group(str(tmp_path / "p.zarr"), {"manifest": {"job": {"output": "probabilities"}}})
    ome.finalize(g, ome={})
    with pytest.raises(InputError, match="is a probabilities output, not a class map"):
        instances(str(tmp_path / "p.zarr"))
    cm = np.zeros((40, 40), np.uint8)
    cm[::2, ::2] = 1                                          # 400 objects
    with pytest.raises(OutputError, match="400 objects, more than uint8 labels hold"):
        instances(cm, tmp_path / "x.zarr", dtype="uint8")
    assert not (tmp_path / "x.zarr").exists()                 # refused before anything is written
    assert instances(cm, dtype="uint16").labels.dtype == np.uint16
    with pytest.raises(InputError, match="image is 5 x 5 but the class map is 40 x 40"):
        instances(cm, image=np.zeros((5, 5)))
    with pytest.raises(InputError, match="connectivity"):
        instances(cm, connectivity=3)


# ---- exports ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured():
    rng = np.random.default_rng(7)
    cm = random_classmap(rng, 64, 57, 0.5, 2)
    img = rng.integers(0, 4000, (3, 64, 57)).astype(np.uint16)
    res = instances(cm, tile=16, image=img, outlines=True)
    res.classes = ("background", "nucleus", "stroma")
    return cm, img, res


def test_parquet_and_csv(measured, tmp_path):
    import pyarrow.parquet as pq                    # in the [test] extra (test_packaging checks it is installed)
    _, _, res = measured
    write_table(res, str(tmp_path / "o.parquet"))
    t = pq.read_table(str(tmp_path / "o.parquet")).to_pydict()
    assert len(t["label"]) == res.count
    for k, v in res.table.items():
        assert np.array_equal(np.asarray(t[k]), v), k
    assert set(t["class_name"]) <= {"nucleus", "stroma"}
    write_table(res, str(tmp_path / "o.csv"))
    with open(tmp_path / "o.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res.count
    for k, v in res.table.items():
        assert np.array_equal(np.array([float(r[k]) for r in rows]), v.astype(np.float64)), k


def test_geojson(measured, tmp_path):
    _, _, res = measured
    write_geojson(res, str(tmp_path / "o.geojson"))
    doc = json.loads((tmp_path / "o.geojson").read_text())
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == res.count
    for i, f in enumerate(feats):
        p = f["properties"]
        assert p["objectType"] == "detection" and p["label"] == i + 1
        assert p["classification"]["name"] == res.classes[res.table["class"][i]]
        assert p["measurements"]["area"] == res.table["area"][i]
        assert f["geometry"]["type"] == "Polygon"             # 4-connected: one simple polygon each
        rings = f["geometry"]["coordinates"]
        assert all(r[0] == r[-1] for r in rings)
        area = sum((np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1])) / 2
                   for r in (np.array(x, float) for x in rings))
        assert area == res.table["area"][i]


def test_fits_catalog(measured, tmp_path):
    from astropy.table import Table
    import astropy.units as u

    _, img, res = measured
    write_catalog(res, str(tmp_path / "c.fits"))
    t = Table.read(str(tmp_path / "c.fits"))
    assert len(t) == res.count and t["area"].unit == u.pix ** 2 and t["centroid_x"].unit == u.pix
    assert np.array_equal(np.asarray(t["flux_2"]), res.table["intensity_sum_2"])
    assert np.array_equal(np.asarray(t["peak_0"]), res.table["intensity_max_0"])


# ---- command line -------------------------------------------------------------------------------
def class_map_and_image(tmp_path, seed: int, h: int, w: int) -> tuple[np.ndarray, str, np.ndarray]:
    """A random class map stored as a labels output (cm.zarr) and an RGB uint8 image (img.zarr)."""
    rng = np.random.default_rng(seed)
    cm = random_classmap(rng, h, w, 0.5, 2)
    src = labels_output(tmp_path / "cm.zarr", cm)
    img = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
    ome.write_image(str(tmp_path / "img.zarr"), read=lambda r, c: img[:, r[0]:r[1], c[0]:c[1]], shape=img.shape,
                    dtype=img.dtype, name="img", pyramid=False, progress=False)
    return cm, src, img


def test_cli_objects_and_errors(tmp_path):
    cm, src, img = class_map_and_image(tmp_path, 11, 90, 70)
    r = cli("objects", src, "-o", tmp_path / "inst.zarr", "--image", tmp_path / "img.zarr", "--tile", "32",
            "--table", tmp_path / "o.csv", "--geojson", tmp_path / "o.geojson", "--catalog", tmp_path / "o.fits", "-q")
    assert r.returncode == 0, r.stderr
    ref = label(cm, connectivity=1)
    assert np.array_equal(zarr.open_group(str(tmp_path / "inst.zarr"), mode="r")["0"][...], ref)
    with open(tmp_path / "o.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == ref.max() and len(json.loads((tmp_path / "o.geojson").read_text())["features"]) == ref.max()
    rp = regionprops_table(ref, intensity_image=np.moveaxis(img, 0, -1), properties=["intensity_mean"])
    np.testing.assert_allclose([float(x["intensity_mean_1"]) for x in rows], rp["intensity_mean-1"], rtol=1e-9)

    # an existing table without --overwrite: refused before anything is written
    r = cli("objects", src, "-o", tmp_path / "inst2.zarr", "--table", tmp_path / "o.csv")
    assert_one_line_error(r, 4, r"table .*o.csv already exists; pass --overwrite")
    assert not (tmp_path / "inst2.zarr").exists()
    # more objects than the dtype holds
    r = cli("objects", src, "-o", tmp_path / "inst3.zarr", "--label-dtype", "uint8", "--connectivity", "1")
    if ref.max() > 255:
        assert_one_line_error(r, 4, r"more than uint8 labels hold")
        assert not (tmp_path / "inst3.zarr").exists()
    # not a class map
    r = cli("objects", tmp_path / "img.zarr", "-o", tmp_path / "inst4.zarr")
    assert_one_line_error(r, 2, r"not an \(H, W\) integer class map")
    r = cli("objects", src, "-o", tmp_path / "inst5.zarr", "--table", tmp_path / "o.xlsx")
    assert_one_line_error(r, 4, r"end the path with .parquet or .csv")
    r = cli("objects", src, "-o", tmp_path / "inst6.zarr", "--catalog", tmp_path / "c.fits", "--radec")
    assert_one_line_error(r, 2, r"RA/Dec asked for, but neither the class map nor the image carries")
    assert not (tmp_path / "inst6.zarr").exists() and not (tmp_path / "c.fits").exists()


def test_cli_segment_instances(tmp_path):
    from hirestile.examples import write_example
    from hirestile.models.unet import init_state, save_unet

    arch = dict(in_channels=3, classes=3, base=4, depth=2)
    save_unet(tmp_path / "rgb.safetensors", init_state(**arch, seed=5), **arch)
    write_example("histology", str(tmp_path / "slide.zarr"), size="130x150", progress=False)
    args = ["segment", "slide.zarr", "--model", "rgb.safetensors", "--tile", "64", "--output", "instances",
            "-o", "inst.zarr", "--table", "t.csv", "-q"]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    classes = zarr.open_group(str(tmp_path / "inst.zarr/classes"), mode="r")["0"][...]
    g = zarr.open_group(str(tmp_path / "inst.zarr"), mode="r")
    inst = g["0"][...]
    assert np.array_equal(inst, label(classes, connectivity=1)) and inst.max() > 0
    assert g.attrs["hirestile"]["status"] == "complete"
    with open(tmp_path / "t.csv") as f:
        assert len(list(csv.DictReader(f))) == inst.max()
    r = cli(*args, cwd=tmp_path)                                    # table exists
    assert_one_line_error(r, 4, r"already exists")
    g2 = zarr.open_group(str(tmp_path / "inst.zarr"), mode="r+")    # an object pass cut short: rerun it
    g2["0"][:5, :5] = 99
    g2.attrs.put({"hirestile": {**dict(g2.attrs)["hirestile"], "status": "incomplete"}})
    r = cli(*args[:-3], "-q", cwd=tmp_path)                         # the same command, no table
    assert r.returncode == 0 and "already complete" in r.stderr, r.stderr
    g2 = zarr.open_group(str(tmp_path / "inst.zarr"), mode="r")
    assert np.array_equal(g2["0"][...], inst) and g2.attrs["hirestile"]["status"] == "complete"
    r = cli(*args, "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(zarr.open_group(str(tmp_path / "inst.zarr"), mode="r")["0"][...], inst)
    r = cli("segment", "slide.zarr", "--model", "rgb.safetensors", "--table", "u.csv", cwd=tmp_path)
    assert_one_line_error(r, 2, r"need --output instances")


def test_radec_from_the_wcs_a_fits_input_left(tmp_path):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.1, 2.2], [20.0, 15.0], [-1e-4, 1e-4]
    cm = random_classmap(np.random.default_rng(5), 40, 50, 0.4, 1)
    src = labels_output(tmp_path / "cm.zarr", cm)
    g = zarr.open_group(src, mode="r+")
    g.attrs.put({**dict(g.attrs), "fits_wcs": dict(w.to_header())})      # as hirestile.fits.annotate_zarr leaves it
    res = instances(src, tile=16, radec=True)
    ref = label(cm, connectivity=1)
    rp = regionprops_table(ref, properties=["centroid"])
    ra, dec = w.pixel_to_world_values(rp["centroid-1"], rp["centroid-0"])
    np.testing.assert_allclose(res.table["ra"], ra, rtol=1e-12)
    np.testing.assert_allclose(res.table["dec"], dec, rtol=1e-12)
    write_catalog(res, str(tmp_path / "c.fits"))
    from astropy.table import Table
    import astropy.units as u
    assert Table.read(str(tmp_path / "c.fits"))["ra"].unit == u.deg
    with pytest.raises(InputError, match="RA/Dec asked for"):
        instances(cm, radec=True)
    assert "ra" not in instances(cm).table


class WindowedClassMap:
    """A class map that can only be read in windows, recording the largest one (out-of-core check)."""

    def __init__(self, a: np.ndarray):
        self.a, self.shape, self.dtype, self.largest = a, a.shape, a.dtype, 0

    def __getitem__(self, idx):
        out = self.a[idx]
        self.largest = max(self.largest, out.size)
        return out


def test_reads_windows_of_one_tile():
    cm = _everything(203, 97)
    src = WindowedClassMap(cm)
    res = instances(src, tile=16, outlines=True)
    assert res.count == 1 and np.array_equal(res.labels, label(cm, connectivity=1))
    assert src.largest <= 18 * 18                    # a tile and its one-pixel halo, whatever the height


# ---- --split: touching objects, the same for any tiling ------------------------------------------
def discs(rng: np.random.Generator, h: int, w: int, n: int, classes: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cm = np.zeros((h, w), np.uint8)
    for _ in range(n):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 9)
        cm[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, classes + 1)
    return cm


@settings(max_examples=25, deadline=None)
@given(h=st.integers(5, 67), w=st.integers(5, 67), tile=st.sampled_from([3, 5, 8, 13, 29]),
       conn=st.sampled_from([1, 2]), radius=st.integers(1, 9), n=st.integers(0, 14), seed=st.integers(0, 2**31))
def test_split_tiled_equals_full_frame(h, w, tile, conn, radius, n, seed):
    from hirestile.objects_split import split_instances

    cm = discs(np.random.default_rng(seed), h, w, n)
    a = split_instances(cm, tile=tile, connectivity=conn, radius=radius)
    b = split_instances(cm, tile=max(h, w), connectivity=conn, radius=radius)       # the full frame
    assert np.array_equal(a.labels, b.labels)
    for k in b.table:
        assert np.array_equal(a.table[k], b.table[k]), k
    ref = label(a.labels.astype(np.int64), connectivity=conn)                    # objects are connected ...
    assert np.array_equal(ref, a.labels)
    whole = label(cm, connectivity=conn)                                         # ... and inside one object each
    assert all(len(np.unique(whole[a.labels == k])) == 1 for k in range(1, a.count + 1))
    assert np.array_equal(a.table["class"], [cm[a.labels == k][0] for k in range(1, a.count + 1)])


def test_split_separates_touching_discs(tmp_path):
    from hirestile.objects_split import split_instances

    yy, xx = np.mgrid[0:40, 0:60]
    cm = (((yy - 20) ** 2 + (xx - 20) ** 2 <= 81) | ((yy - 20) ** 2 + (xx - 34) ** 2 <= 81)).astype(np.uint8)
    assert instances(cm).count == 1
    res = split_instances(cm, tile=7)
    assert res.count == 2 and res.table["area"].sum() == cm.sum()
    assert res.labels[20, 20] != res.labels[20, 34]
    mid = int(cm[:, 27].sum())                     # the column equidistant from both centres goes to one side
    assert int(res.table["area"][0]) - int(res.table["area"][1]) == mid
    src = labels_output(tmp_path / "cm.zarr", cm)
    r = cli("objects", src, "-o", tmp_path / "s.zarr", "--split", "--tile", "16", "--table", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["0"][...], res.labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".split-")]     # temporaries removed
    again = cli("objects", src, "-o", tmp_path / "s.zarr", "--split", "--tile", "16")   # the same job: reruns
    assert again.returncode == 0, again.stderr
