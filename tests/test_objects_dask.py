"""The Dask object API (hirestile.instances / hirestile.measure): lazy instance labels equal
skimage.measure.label on the full frame (same numbers), the table equals the CLI's, any chunking."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.measure import label

import hirestile
from hirestile.errors import InputError, OutputError
from hirestile.objects import instances as pass_instances

from clihelp import assert_one_line_error, cli
from test_objects import (_borders, _diagonal, _everything, _ring, _snake, class_map_and_image,
                          random_classmap)


def assert_bijection(a: np.ndarray, b: np.ndarray) -> None:
    """a and b are the same partition with background 0 <-> 0: a one-to-one relabelling."""
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "one label of a maps to two of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "two labels of a map to one of b"
    assert not ((pairs[0] == 0) ^ (pairs[1] == 0)).any(), "background maps to an object"


def sizes(total: int, draw_parts: list[int]) -> tuple[int, ...]:
    """Irregular block sizes adding up to ``total`` (cut at the drawn fractions)."""
    cutsat = sorted({int(total * f / 1000) for f in draw_parts} - {0, total})
    edges = [0, *cutsat, total]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


# ---- exactness -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.sampled_from([1, 2, 3, 7, 13, 29, 31, 37, 53, 61]), w=st.sampled_from([1, 2, 5, 11, 17, 41, 59]),
       rc=st.lists(st.integers(1, 999), max_size=6), cc=st.lists(st.integers(1, 999), max_size=6),
       conn=st.sampled_from([1, 2]), density=st.floats(0.05, 0.95), classes=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_random_class_maps_equal_full_frame(h, w, rc, cc, conn, density, classes, seed):
    cm = random_classmap(np.random.default_rng(seed), h, w, density, classes)
    chunks = (sizes(h, rc), sizes(w, cc))
    lab = hirestile.instances(da.from_array(cm, chunks=chunks), connectivity=conn)
    assert isinstance(lab, da.Array) and lab.dtype == np.uint32 and lab.chunks == chunks
    got = lab.compute(scheduler="sync")
    ref = label(cm, connectivity=conn)
    assert_bijection(got, ref)
    assert np.array_equal(got, ref)                       # and the same numbers: raster order of first pixels
    assert np.array_equal(got, pass_instances(cm, tile=7, connectivity=conn).labels)


@pytest.mark.parametrize("make", [_snake, _ring, _diagonal, _borders, _everything])
@pytest.mark.parametrize("chunks", [1, 3, 4, (5, 7), ((10, 1, 26), (2, 39)), 100])
@pytest.mark.parametrize("conn", [1, 2])
def test_hard_cases(make, chunks, conn):
    cm = make(37, 41)
    got = hirestile.instances(da.from_array(cm, chunks=chunks), connectivity=conn).compute()
    ref = label(cm, connectivity=conn)
    assert_bijection(got, ref)
    assert np.array_equal(got, ref)
    n = int(ref.max())
    t = hirestile.measure(da.from_array(cm, chunks=chunks), connectivity=conn)
    assert t.num_rows == n and t.column("label").to_pylist() == list(range(1, n + 1))
    assert np.array_equal(t.column("area").to_numpy(), np.bincount(ref.ravel(), minlength=n + 1)[1:])


def test_objects_across_every_chunk():
    """The snake crosses every seam of 1-pixel chunks: one object of 701 pixels over 1517 blocks."""
    cm = _snake(37, 41)
    lab = hirestile.instances(da.from_array(cm, chunks=1))
    assert lab.numblocks == (37, 41)
    got = lab.compute()
    assert got.max() == 1 and np.array_equal(got, label(cm, connectivity=1)) and int(got.sum()) == int(cm.sum())


# ---- the measurement table ------------------------------------------------------------------------
def test_measure_equals_cli_table(tmp_path):
    cm, src, img = class_map_and_image(tmp_path, 21, 131, 97)
    for conn in (1, 2):
        r = cli("objects", src, "-o", tmp_path / f"inst{conn}.zarr", "--image", tmp_path / "img.zarr", "--tile", "40",
                "--connectivity", conn, "--table", tmp_path / f"t{conn}.parquet", "-q")
        assert r.returncode == 0, r.stderr
        cli_table = pq.read_table(tmp_path / f"t{conn}.parquet")
        cli_labels = zarr.open_group(str(tmp_path / f"inst{conn}.zarr"), mode="r")["0"][...]
        for chunks in (17, (64, 23)):
            z = zarr.open_group(src, mode="r")["0"]
            t = hirestile.measure(da.from_zarr(z).rechunk(chunks), image=img, connectivity=conn,
                                  classes=["background", "nucleus", "other"])
            assert t.equals(cli_table), (conn, chunks)       # bit for bit, column for column
            t2 = hirestile.measure(src, image=str(tmp_path / "img.zarr"), connectivity=conn, chunks=chunks)
            assert t2.equals(cli_table)                       # class names from the labels output
            lab = hirestile.instances(src, connectivity=conn, chunks=chunks).compute()
            assert np.array_equal(lab, cli_labels) and np.array_equal(lab, label(cm, connectivity=conn))


def test_measure_with_probabilities_and_delayed():
    rng = np.random.default_rng(5)
    cm = random_classmap(rng, 45, 38, 0.6, 2)
    p = rng.random((3, 45, 38)).astype(np.float32)
    ref = pass_instances(cm, probabilities=p, tile=11)
    x = da.from_array(cm, chunks=(9, 13))
    lab, t = dask.compute(hirestile.instances(x), hirestile.measure(x, probabilities=p, compute=False))
    lab2, table = hirestile.instances(x, table=True, probabilities=p)        # one graph for both
    lab2, t2 = dask.compute(lab2, table)
    assert np.array_equal(lab2, lab) and t2.equals(t)
    lab3, tab3 = hirestile.instances(x, table=True, probabilities=p)

    def joins(graph) -> set:
        return {k for k in dict(graph) if isinstance(k, str) and k.startswith("hirestile-objects-join-")}
    assert len(joins(lab3.dask)) == 1 and joins(lab3.dask) == joins(tab3.dask)      # the same join task
    other = rng.random((3, 45, 38)).astype(np.float32)            # same shape, other data: other keys
    t1, t3 = dask.compute(hirestile.measure(x, probabilities=p, compute=False),
                          hirestile.measure(x, probabilities=other, compute=False))
    assert t1.equals(t) and not t3.equals(t)
    with pytest.raises(InputError, match="pass table=True"):
        hirestile.instances(x, probabilities=p)
    assert np.array_equal(lab, label(cm, connectivity=1))
    assert t.column_names == list(ref.table) + ["class_name"]
    for k, v in ref.table.items():
        if k == "probability_mean":                     # float sums: another block order
            np.testing.assert_allclose(t.column(k).to_numpy(), v, rtol=1e-12)
        else:
            assert np.array_equal(t.column(k).to_numpy(), v), k
    areas = np.bincount(lab.ravel())[1:]
    want = np.bincount(lab.ravel(), weights=p[cm, np.arange(45)[:, None], np.arange(38)].ravel())[1:] / areas
    np.testing.assert_allclose(t.column("probability_mean").to_numpy(), want, rtol=1e-9)


# ---- sources, graph, dtype, errors -------------------------------------------------------------------
def test_sources_and_graph(tmp_path):
    cm = random_classmap(np.random.default_rng(8), 70, 66, 0.5, 3)
    ref = label(cm, connectivity=2)
    z = zarr.create_array(str(tmp_path / "cm.zarr"), shape=cm.shape, chunks=(16, 32), dtype=cm.dtype)
    z[...] = cm
    lz = hirestile.instances(z, connectivity=2)                      # zarr: blocks are its chunks, read in the tasks
    assert lz.chunks == ((16,) * 4 + (6,), (32, 32, 2)) and np.array_equal(lz.compute(), ref)
    lf = hirestile.instances(da.from_zarr(z), connectivity=2)
    assert np.array_equal(lf.compute(), ref)
    nb = lz.numblocks[0] * lz.numblocks[1]
    assert len(dict(lz.dask)) == 2 * nb + 2                   # pass 1 and 2 per block, the join, the source
    got = hirestile.instances(cm, connectivity=2, chunks=9)     # NumPy in, NumPy out
    assert isinstance(got, np.ndarray) and np.array_equal(got, ref)


def test_segment_then_instances():
    from hirestile.models.unet import unet

    m = unet(in_channels=1, classes=3, base=4, depth=2, seed=3)
    x = np.random.default_rng(0).random((75, 83), np.float32)
    cls = hirestile.segment(da.from_array(x, chunks=32), m, output="labels", chunks=(25, 30))
    lab = hirestile.instances(cls, connectivity=1)
    full = hirestile.predict(m, x).argmax(0).astype(np.uint8)
    got = lab.compute()
    assert np.array_equal(got, label(full, connectivity=1)) and got.max() > 1


def test_dtype_and_bad_inputs():
    cm = np.zeros((40, 40), np.uint8)
    cm[::2, ::2] = 1                                           # 400 objects
    lab = hirestile.instances(da.from_array(cm, chunks=16), dtype=np.uint16)
    assert lab.dtype == np.uint16 and np.array_equal(lab.compute(), label(cm, connectivity=1))
    small = hirestile.instances(da.from_array(cm, chunks=16), dtype=np.uint8)
    with pytest.raises(OutputError, match="400 objects, more than uint8 labels hold"):
        small.compute()
    with pytest.raises(InputError, match="unsigned"):
        hirestile.instances(cm, dtype=np.int32)
    with pytest.raises(InputError, match="connectivity must be 1"):
        hirestile.instances(da.from_array(cm), connectivity=3)
    with pytest.raises(InputError, match=r"not an \(H, W\) integer class map"):
        hirestile.instances(da.zeros((2, 5, 5), np.uint8))
    with pytest.raises(InputError, match="integer class map"):
        hirestile.measure(da.zeros((5, 5), np.float32))
    x = da.from_array(cm, chunks=8)
    with pytest.raises(InputError, match="compute_chunk_sizes"):
        hirestile.instances(x[x[:, 0] >= 0])
    with pytest.raises(InputError, match="the image is 3 x 3 but the class map is 40 x 40"):
        hirestile.measure(x, image=np.zeros((3, 3), np.uint8))


def test_bad_input_one_line_in_the_cli(tmp_path):
    """The CLI path the API shares its checks with: a float array is one line, exit 2."""
    z = zarr.create_array(str(tmp_path / "f.zarr"), shape=(5, 5), chunks=(5, 5), dtype=np.float32)
    z[...] = 0
    r = cli("objects", tmp_path / "f.zarr", "-o", tmp_path / "o.zarr")
    assert_one_line_error(r, 2, r"integer class map")


def test_tasks_pickle_for_other_processes(tmp_path):
    """What distributed needs: every task, summary and reader crosses a process boundary."""
    rng = np.random.default_rng(2)
    cm = random_classmap(rng, 50, 44, 0.5, 2)
    img = rng.integers(0, 256, (2, 50, 44)).astype(np.uint8)
    z = zarr.create_array(str(tmp_path / "cm.zarr"), shape=cm.shape, chunks=(16, 16), dtype=cm.dtype)
    z[...] = cm
    lab, tab = hirestile.instances(z, table=True, image=img)
    lab, tab = dask.compute(lab, tab, scheduler="processes", num_workers=1)
    assert np.array_equal(lab, label(cm, connectivity=1))
    assert tab.equals(hirestile.measure(cm, image=img, chunks=16))
