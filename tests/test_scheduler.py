"""The streaming scheduler: tiled zarr output == full-frame output bit for bit, shard
ownership, resume without recomputation, job identity, bad inputs at the API level."""
from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import hirestile
from hirestile import executor, ome
from hirestile.errors import InputError, OutputError
from hirestile.models.unet import unet
from hirestile.resume import default_output, store_tile
from hirestile.scheduler import make_plan, segment_to_zarr

from npref import STORED_DTYPE, assert_next_level, expected_output

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def rgb_model():
    return unet(in_channels=3, classes=2, base=4, depth=2, seed=1)


@pytest.fixture(scope="module")
def grey_model():
    return unet(in_channels=1, classes=3, base=4, depth=2, seed=2)


def _store(path, chw: np.ndarray, layout: str) -> str:
    """Write a (C, H, W) image in the given stored layout; return its path."""
    if layout == "CHW":
        zarr.create_array(path, data=chw, dimension_names=["c", "y", "x"])
    elif layout == "HWC":                       # zarr v2, layout inferred from the shape
        a = zarr.create_array(path, shape=chw.shape[1:] + chw.shape[:1], dtype=chw.dtype, zarr_format=2,
                              chunks=(32, 32, chw.shape[0]))
        a[...] = chw.transpose(1, 2, 0)
    else:                                       # HW
        zarr.create_array(path, data=chw[0], chunks=(32, 32))
    return path


def _image(shape, dtype) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(max(info.min, -1000), min(info.max, 60000), shape).astype(dtype)


def _segment(tmp_path, model, chw, layout="CHW", name="out.zarr", **kw) -> tuple[np.ndarray, object]:
    inp = str(tmp_path / "in.zarr")
    if not os.path.exists(inp):
        _store(inp, chw, layout)
    out = str(tmp_path / name)
    stats = segment_to_zarr(inp, model, out, progress=False, **kw)
    return zarr.open_group(out, mode="r")["0"][...], stats


def _reference(model, chw, kind="probabilities") -> np.ndarray:
    """The full-frame logits as the stored ``kind``, by the test's own NumPy rule (npref)."""
    return expected_output(hirestile.predict(model, chw), kind)


# (size, tile, stored layout, dtype, output kind): odd sizes, 1 x 1, smaller than a tile, primes,
# non-multiples of the stride (4), every layout, several dtypes and tile sizes
CASES = [
    ((1, 1), 16, "CHW", "uint8", "probabilities"),
    ((1, 1), None, "HW", "float32", "labels"),
    ((5, 3), 16, "HWC", "uint16", "logits"),
    ((31, 37), 16, "CHW", "float32", "labels"),
    ((31, 37), 48, "HW", "uint8", "probabilities"),
    ((67, 53), 16, "HWC", "uint8", "labels"),
    ((67, 53), 32, "CHW", "int16", "logits"),
    ((67, 53), None, "HW", "uint16", "probabilities"),
    ((100, 130), 48, "HWC", "float64", "probabilities"),
    ((97, 101), 24, "HW", "float32", "logits"),
]


@pytest.mark.parametrize("size, tile, layout, dtype, kind", CASES)
def test_segment_equals_full_frame(tmp_path, rgb_model, grey_model, size, tile, layout, dtype, kind):
    model = grey_model if layout == "HW" else rgb_model
    chw = _image((model.contract.channels,) + size, dtype)
    got, stats = _segment(tmp_path, model, chw, layout, tile=tile, kind=kind)
    ref = _reference(model, chw, kind)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.array_equal(got, ref, equal_nan=True)
    assert stats.tiles_computed == stats.tiles_total >= 1
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs
    assert attrs["hirestile"]["status"] == "complete" and "ome" in attrs
    assert not os.path.exists(tmp_path / "out.zarr" / ".hirestile")


LAYOUTS = ("CHW", "HWC", "HW")
DTYPES = ("uint8", "uint16", "int16", "float32", "float64")


@settings(max_examples=20, deadline=None)
@given(pair=st.sampled_from([(lay, dt) for lay in LAYOUTS for dt in DTYPES]),
       h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(8, 64),
       kind=st.sampled_from(sorted(STORED_DTYPE)), stream=st.booleans())
def test_segment_equals_full_frame_any_layout_dtype(tmp_path_factory, rgb_model, grey_model, pair, h, w, tile,
                                                     kind, stream):
    """Random sizes and tiles over every stored layout x dtype pair (CASES pins the odd sizes),
    streamed (bands down column strips) or overlap-tile."""
    layout, dtype = pair
    model = grey_model if layout == "HW" else rgb_model
    chw = _image((model.contract.channels, h, w), dtype)
    # an (H, W, C) array without axis names whose first axis has C entries too is ambiguous:
    # it takes axes= (io.infer_axes); any other shape is inferred
    axes = "HWC" if layout == "HWC" and h == model.contract.channels else None
    got, stats = _segment(tmp_path_factory.mktemp("any"), model, chw, layout, tile=tile, kind=kind, axes=axes,
                          stream=stream)
    assert np.array_equal(got, _reference(model, chw, kind), equal_nan=True)
    assert stats.tiles_computed == stats.tiles_total >= 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_equals_full_frame_every_layout_dtype(tmp_path, rgb_model, grey_model, layout, dtype):
    """Each layout x dtype pair once, on a prime-sized image over several tiles."""
    model = grey_model if layout == "HW" else rgb_model
    chw = _image((model.contract.channels, 41, 59), dtype)
    got, stats = _segment(tmp_path, model, chw, layout, tile=16, kind="logits")
    assert np.array_equal(got, _reference(model, chw, "logits"))
    assert stats.tiles_total == 3 * 4


def test_sharded_output_and_pyramid(tmp_path, rgb_model, monkeypatch):
    monkeypatch.setattr(ome, "CHUNK", 16)       # small chunks: shards of 3 x 3 chunks on a small image
    chw = _image((3, 101, 77), np.uint8)
    got, stats = _segment(tmp_path, rgb_model, chw, tile=48, pyramid=True)
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert g["0"].chunks == (2, 16, 16) and g["0"].shards == (2, 48, 48)
    assert np.array_equal(got, _reference(rgb_model, chw))
    assert stats.tiles_total == 3 * 2 and sorted(g.keys()) == ["0", "1", "2", "3"]
    for lv in (1, 2, 3):                        # each level from the one before: 2 x 2 means
        assert_next_level(g[str(lv)][...], g[str(lv - 1)][...], "probabilities")
    assert g["3"].shape == (2, 13, 10)


def test_nan_refused_then_filled(tmp_path, grey_model):
    chw = _image((1, 40, 30), np.float32)
    chw[0, 33, 7] = np.nan
    chw[0, 35, 2] = np.inf
    with pytest.raises(InputError, match="NaN at channel 0, row 33, column 7.*--nan-fill"):
        _segment(tmp_path, grey_model, chw, "HW", tile=64)
    got, _ = _segment(tmp_path, grey_model, chw, "HW", tile=16, nan_fill=0.5)   # resumes into the same output
    filled = np.where(np.isfinite(chw), chw, np.float32(0.5))
    assert np.array_equal(got, _reference(grey_model, filled))


def test_bad_inputs_api(tmp_path, rgb_model):
    with pytest.raises(InputError, match="has 1 channel"):
        _segment(tmp_path, rgb_model, _image((1, 20, 20), np.uint8), "HW")
    small = unet(in_channels=1, classes=2, base=2, depth=2, padding="valid")
    zarr.create_array(str(tmp_path / "tiny.zarr"), data=np.zeros((9, 9), np.uint8))
    with pytest.raises(InputError, match=r"tiny.zarr: model 'unet' cannot take a 9x9 image"):
        segment_to_zarr(str(tmp_path / "tiny.zarr"), small, str(tmp_path / "o.zarr"), progress=False)
    assert not os.path.exists(tmp_path / "o.zarr")


# ---- plan: one writer per shard --------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 200), w=st.integers(1, 200), tile=st.integers(8, 150), chunk=st.sampled_from([8, 16, 256]))
def test_plan_gives_each_shard_one_writer(rgb_model, h, w, tile, chunk):
    old, ome.CHUNK = ome.CHUNK, chunk
    try:
        rep = hirestile.analyze(rgb_model, (h, w))
        lay = ome.choose_layout("probabilities", classes=2, out_hw=(h, w), tile=tile)
    finally:
        ome.CHUNK = old
    plan = make_plan(rep, lay, tile)
    owner = plan.owner()                                          # raises if a block had two writers
    assert sorted(owner) == [(i, j) for i in range(lay.grid[0]) for j in range(lay.grid[1])]
    (bh, bw), covered = lay.block, np.zeros((h, w), np.int32)
    for t in plan.tiles:
        (y0, y1), (x0, x1) = t.write
        i0, i1, j0, j1 = plan.blocks(t)
        assert (y0, x0) == (i0 * bh, j0 * bw)                     # starts on a shard boundary
        assert y1 == min(i1 * bh, h) and x1 == min(j1 * bw, w)    # ends on one, or at the image edge
        covered[y0:y1, x0:x1] += 1
        (a, b), (c, d) = t.read
        assert 0 <= a < b <= h and 0 <= c < d <= w
    assert (covered == 1).all()


def test_concurrent_writers_on_shard_aligned_tiles(tmp_path, rgb_model, monkeypatch):
    """Many threads write the plan's tiles at once through the scheduler's own writer, in
    random order, each tile three times (as a rerun after a crash may; one writer per tile
    at a time, as in a run): no update is lost, every block of every tile holds what its
    writer wrote, and is marked done only once it is stored."""
    monkeypatch.setattr(ome, "CHUNK", 8)
    h, w = 120, 100
    lay = ome.choose_layout("logits", classes=2, out_hw=(h, w), tile=24)
    assert lay.shards is not None
    path = str(tmp_path / "c.zarr")
    g = ome.create_output(path, kind="logits", layout=lay, attrs={})
    plan = make_plan(hirestile.analyze(rgb_model, (h, w)), lay, 24)
    assert len(plan.tiles) == 5 * 5
    expect = RNG.normal(size=(2, h, w)).astype(np.float32)
    tiles = list(plan.tiles) * 3                                  # each tile written 3 times
    random.Random(0).shuffle(tiles)
    barrier = threading.Barrier(6)
    marks, lock = [], threading.Lock()
    owner = {t.index: threading.Lock() for t in plan.tiles}
    arr = g["0"]

    def rows_cols(blocks):
        (bh, bw), (i0, i1, j0, j1) = lay.block, blocks
        return slice(i0 * bh, min(i1 * bh, h)), slice(j0 * bw, min(j1 * bw, w))

    def mark(blocks):                                             # called once the blocks are stored
        ys, xs = rows_cols(blocks)
        np.testing.assert_array_equal(zarr.open_array(path + "/0", mode="r")[:, ys, xs], expect[:, ys, xs])
        with lock:
            marks.append(blocks)

    def write(t):
        (y0, y1), (x0, x1) = t.write
        if t.index < 6:
            barrier.wait(timeout=10)
        with owner[t.index]:
            store_tile(arr, t, expect[:, y0:y1, x0:x1].copy(), kind="logits", output=path, mark=mark)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(write, tiles))
    got = zarr.open_group(path, mode="r")["0"][...]
    assert got.dtype == np.float32
    for t in plan.tiles:                                          # block by block, so a failure names it
        i0, i1, j0, j1 = plan.blocks(t)
        for i, j in ((i, j) for i in range(i0, i1) for j in range(j0, j1)):
            ys, xs = rows_cols((i, i + 1, j, j + 1))
            np.testing.assert_array_equal(got[:, ys, xs], expect[:, ys, xs], err_msg=f"tile {t.index}, block {i, j}")
    np.testing.assert_array_equal(got, expect)
    assert sorted(marks) == sorted(plan.blocks(t) for t in tiles)      # every write marked once


# ---- resume and job identity -------------------------------------------------------------
def _crash_then_resume(tmp_path, model, chw, monkeypatch, **kw):
    """Segment ``chw`` in 16-px tiles as labels, crash after 7 tiles, check that the output does
    not look complete, and run the same job again: (tile writes before the crash, tile writes
    of the second run, its output, its stats)."""
    calls, real = [], executor.run_window

    def crashing(rep, contract, raw, tile, **k):
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        calls.append(tile.write)
        return real(rep, contract, raw, tile, **k)

    monkeypatch.setattr(executor, "run_window", crashing)
    with pytest.raises(RuntimeError, match="simulated"):
        _segment(tmp_path, model, chw, tile=16, kind="labels", **kw)
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs
    assert attrs["hirestile"]["status"] == "incomplete" and "ome" not in attrs    # does not look complete
    first = list(calls)
    calls.clear()
    monkeypatch.setattr(executor, "run_window", lambda *a, **k: (calls.append(a[3].write), real(*a, **k))[1])
    got, stats = _segment(tmp_path, model, chw, tile=16, kind="labels", **kw)
    return first, calls, got, stats


@pytest.mark.parametrize("stream", [True, False])
def test_resume_after_crash_recomputes_nothing(tmp_path, rgb_model, monkeypatch, stream):
    chw = _image((3, 70, 90), np.uint8)
    ref = _reference(rgb_model, chw, "labels")
    first, calls, got, stats = _crash_then_resume(tmp_path, rgb_model, chw, monkeypatch, stream=stream)
    assert stats.stream == stream
    # the summary sets the measured peak beside the plan's figure and the budget it was made for
    assert stats.planned_rss > 0 and stats.budget > 0
    assert f"(plan {stats.planned_rss / 2**20:.0f} MiB, budget {stats.budget / 2**20:.0f} MiB)" in stats.summary()
    assert stats.tiles_skipped == len(first) == 7
    assert stats.tiles_computed == len(calls) == stats.tiles_total - 7 == 5 * 6 - 7
    assert not set(first) & set(calls)                            # finished tiles were not recomputed
    assert np.array_equal(got, ref)


def test_resume_runs_a_strip_from_its_top_where_a_restart_would_not_fit(tmp_path, rgb_model, monkeypatch):
    """A streamed run stopped mid-strip, resumed with a budget that a restart mid-image would
    exceed (its first band's cone reaches above it: resumed_todo): the unfinished strip runs
    from its top again, its done bands computed and written again with the same bits, the
    finished strip is not touched, and the summary says why. Within 2 GiB (the test above) the
    strip restarts where it stopped."""
    chw = _image((3, 70, 90), np.uint8)
    ref = _reference(rgb_model, chw, "labels")
    first, calls, got, stats = _crash_then_resume(tmp_path, rgb_model, chw, monkeypatch, stream=True,
                                                  memory=1 << 20)
    assert [w.cols for w in first] == [(0, 16)] * 5 + [(16, 32)] * 2    # strip 0, and strip 1's first 2 bands
    assert np.array_equal(got, ref)
    assert stats.tiles_skipped == 5 and stats.tiles_computed == len(calls) == 5 * 6 - 5
    assert set(first) & set(calls) == set(first[5:])                # strip 1 from its top again
    assert "2 done band(s) computed again" in stats.summary()


def test_job_identity(tmp_path, rgb_model, monkeypatch):
    monkeypatch.setattr(ome, "CHUNK", 16)       # so that --pyramid has levels to add
    chw = _image((3, 40, 50), np.uint8)
    _segment(tmp_path, rgb_model, chw, tile=32)
    _, again = _segment(tmp_path, rgb_model, chw, tile=32)
    assert again.already_complete and "nothing to do" in again.summary()
    with pytest.raises(OutputError, match="different job.*output"):
        _segment(tmp_path, rgb_model, chw, kind="labels")
    other = unet(in_channels=3, classes=2, base=4, depth=2, seed=99)
    with pytest.raises(OutputError, match="different job.*fingerprint"):
        _segment(tmp_path, other, chw)
    got, _ = _segment(tmp_path, other, chw, overwrite=True, kind="labels")
    assert np.array_equal(got, _reference(other, chw, "labels"))
    got, stats = _segment(tmp_path, other, chw, kind="labels", pyramid=True)   # adds levels, computes nothing
    assert stats.tiles_computed == 0 and "1" in zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    os.mkdir(tmp_path / "plain")
    with pytest.raises(OutputError, match="already exists"):
        segment_to_zarr(str(tmp_path / "in.zarr"), rgb_model, str(tmp_path / "plain"), progress=False)


def test_default_output_name():
    assert default_output("/d/slide.ome.zarr", "unet") == "/d/slide.unet.zarr"
    assert default_output("/d/scan.svs", "my net.v2") == "/d/scan.my-net-v2.zarr"


def test_input_rewritten_in_place_refuses_resume(tmp_path, rgb_model, monkeypatch):
    """A chunk rewritten in place (zarr r+) between a crash and the rerun: the old output would mix
    two inputs, so the rerun is refused naming the changed input; --overwrite recomputes it."""
    chw = _image((3, 70, 90), np.uint8)
    real = executor.run_window
    calls = []

    def crashing(*a, **kw):
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(executor, "run_window", crashing)
    with pytest.raises(RuntimeError, match="simulated"):
        _store(str(tmp_path / "in.zarr"), chw, "HWC")             # zarr v2, (32, 32, 3) chunks
        _segment(tmp_path, rgb_model, chw, tile=16)
    monkeypatch.setattr(executor, "run_window", real)
    meta = os.stat(tmp_path / "in.zarr" / ".zarray").st_mtime_ns
    zarr.open_array(str(tmp_path / "in.zarr"), mode="r+")[40:50, 40:50] = 7    # one chunk, in place
    assert os.stat(tmp_path / "in.zarr" / ".zarray").st_mtime_ns == meta       # metadata untouched
    with pytest.raises(OutputError, match=r"different job \(input.data differ: the input changed .*--overwrite"):
        _segment(tmp_path, rgb_model, chw, tile=16)
    got, _ = _segment(tmp_path, rgb_model, chw, tile=16, overwrite=True)
    changed = zarr.open_array(str(tmp_path / "in.zarr"), mode="r")[...].transpose(2, 0, 1)
    assert np.array_equal(got, _reference(rgb_model, changed))


@pytest.mark.parametrize("extra_mib, streamed", [(8, True), (64, False)])
def test_default_mode_streams_where_tiles_would_recompute_much(tmp_path, extra_mib, streamed):
    """stream=None: the plan picks streamed bands where the overlap tiles that fit the budget would
    compute >= STREAM_GAIN x the streamed bands' FLOPs (each as its own explicit plan computes
    them), overlap tiles elsewhere; says which; the output is the full frame's either way, and
    an explicit choice overrides."""
    from hirestile.scheduler import PROCESS_BASELINE, STREAM_GAIN, choose_mode, compute_redundancy

    model = unet(in_channels=3, classes=2, base=8, depth=3, seed=4)
    chw = _image((3, 300, 260), "uint8")
    budget = PROCESS_BASELINE + (extra_mib << 20)
    rep = model.analyze((300, 260))
    mode = choose_mode(rep, None, None, memory=budget)
    red = {}
    for s in (False, True):
        explicit = choose_mode(rep, None, s, memory=budget)
        assert explicit.stream == s and not explicit.chosen
        layout = ome.choose_layout("probabilities", classes=2, out_hw=(300, 260), tile=explicit.tile)
        red[s] = compute_redundancy(rep, make_plan(rep, layout, explicit.tile, stream=s))
    assert (mode.tile_redundancy, mode.stream_redundancy) == (red[False], red[True])
    assert mode.stream == (red[False] >= STREAM_GAIN * red[True]) == streamed

    got, stats = _segment(tmp_path, model, chw, memory=budget)
    assert stats.stream == streamed
    assert ("mode: streamed bands" if streamed else "mode: overlap tiles") in stats.summary()
    assert np.array_equal(got, _reference(model, chw))
    got, stats = _segment(tmp_path, model, chw, name="other.zarr", memory=budget, stream=not streamed, tile=64)
    assert stats.stream == (not streamed) and np.array_equal(got, _reference(model, chw))


def test_a_masked_streamed_plan_fits_restarts_mid_image():
    """A masked run skips bands, so its strips restart mid-image: its plan (restarts=True)
    counts such a restart's larger first band and still fits the budget, where a plan for
    strips that start only at the top chooses bands whose restart would not fit."""
    from hirestile import scheduler

    rep = unet(in_channels=3, classes=2, base=16, depth=4).analyze((4096, 4096))
    budget = 600 << 20
    for restarts in (False, True):
        b, w = scheduler.choose_tile(rep, None, stream=True, memory=budget, restarts=restarts)
        plan = scheduler.make_plan(rep, ome.choose_layout("labels", classes=2, out_hw=(4096, 4096), tile=(b, w)),
                                   (b, w), stream=True, restarts=restarts)
        fits = scheduler.PROCESS_BASELINE + scheduler.expected_memory(rep, plan, 3)[1]
        again = scheduler._memory(rep, b, w, stream=True, channels=3, restarts=True)[1] + scheduler.PROCESS_BASELINE
        assert plan.restarts == restarts and fits <= budget and again >= fits
        assert (again <= budget) == restarts      # 600 MiB: 256 x 2048 bands, whose restart needs 620


def test_queued_windows_count_as_stored():
    """The reader queues windows as stored (uint8 slides: a quarter of float32), and the one
    being computed is normalised into float32 beside its raw window: the plan's working memory
    grows with the input's item size by exactly the raw windows' bytes."""
    from hirestile import scheduler

    rep = unet(in_channels=3, classes=2, base=8, depth=3).analyze((1024, 1024))
    for stream in (False, True):
        plan = make_plan(rep, ome.choose_layout("labels", classes=2, out_hw=(1024, 1024), tile=(256, 512)),
                         (256, 512), stream=stream)
        work = {k: scheduler.expected_memory(rep, plan, 3, k)[1] for k in (1, 2, 4, 8)}
        raw = work[2] - work[1]
        assert raw > 0 and work[4] - work[2] == 2 * raw and work[8] - work[4] == 4 * raw
        # at least the largest window and the queued ones, as stored
        assert raw >= 3 * max(t.read.size for t in plan.tiles)
