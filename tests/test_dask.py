"""hirestile.segment and the cluster path (hirestile.dask_api), issue 5.

Everything is compared bit for bit with hirestile's own full-frame run
(``hirestile.predict`` without ``tile``). The distributed tests share one
``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)``.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dask.array as da
import zarr

import hirestile
from hirestile.tiling import make_tiles
from hirestile import cluster, dask_api, worker
from hirestile.errors import InputError, NotTileableError
from hirestile.graph import Binary, Conv, GlobalPool, Graph, Node
from hirestile.models.unet import init_state, save_unet, unet

from npref import expected_output


@pytest.fixture(scope="module")
def model():
    return unet(in_channels=1, classes=2, base=4, depth=2)


@pytest.fixture(scope="module")
def model3():
    return unet(in_channels=3, classes=3, base=4, depth=2, seed=3)


def expected(m, img, output):
    """The full-frame logits as ``output``, by the tests' own NumPy rule and dtype table (npref),
    the same for the Dask API as for the CLI."""
    return expected_output(hirestile.predict(m, img), output)


def image(shape, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=dtype)


# **** in-process: NumPy, Dask and zarr sources ****
@pytest.mark.parametrize("output", ["logits", "probabilities", "labels"])
def test_numpy_in_numpy_out(model, output):
    img = image((45, 61))
    want = expected(model, img, output)
    for chunks in ((16, 24), ((20, 25), (30, 1, 30))):
        got = hirestile.segment(img, model, output=output, chunks=chunks)
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and np.array_equal(got, want)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(9, 70), w=st.integers(9, 70), cy=st.integers(5, 40), cx=st.integers(5, 40),
       oy=st.integers(4, 50), ox=st.integers(4, 50))
def test_dask_in_lazy_out(model, h, w, cy, cx, oy, ox):
    img = image((h, w), seed=h * 100 + w)
    y = hirestile.segment(da.from_array(img, chunks=(cy, cx)), model, chunks=(oy, ox))
    assert isinstance(y, da.Array)
    assert y.dtype == np.float32 and type(y._meta) is np.ndarray and y._meta.dtype == np.float32
    assert y.chunks[0] == (2,) and all(c == oy for c in y.chunks[1][:-1]) and all(c == ox for c in y.chunks[2][:-1])
    assert np.array_equal(y.compute(scheduler="sync"), hirestile.predict(model, img))


def test_zarr_source_hwc_one_task_per_block(tmp_path, model3):
    img = image((50, 70, 3), seed=5)
    z = zarr.create_array(str(tmp_path / "in.zarr"), data=img, chunks=(16, 16, 3))
    y = hirestile.segment(z, model3, output="probabilities", chunks=(16, 32))
    graph = dict(y.__dask_graph__())
    assert len(graph) == y.npartitions + 2            # blocks + the job + the source array
    want = expected(model3, img.transpose(2, 0, 1), "probabilities")
    assert np.array_equal(y.compute(scheduler="threads"), want)
    # da.from_zarr input is recognised and read the same way
    y2 = hirestile.segment(da.from_zarr(z), model3, output="probabilities", chunks=(16, 32))
    assert len(dict(y2.__dask_graph__())) == y2.npartitions + 2
    assert np.array_equal(y2.compute(scheduler="sync"), want)
    # the same from a Dask array: tasks take the source chunks their windows overlap
    y3 = hirestile.segment(da.from_array(img, chunks=(20, 25, 2)), model3, output="probabilities", chunks=(16, 32))
    assert np.array_equal(y3.compute(scheduler="sync"), want)


def test_valid_unet_chw_float(model3):
    m = unet(in_channels=3, classes=2, base=4, depth=2, padding="valid")
    img = np.random.default_rng(2).random((3, 76, 92)).astype(np.float32)
    y = hirestile.segment(da.from_array(img, chunks=(2, 30, 30)), m, chunks=11, output="labels")
    assert y.shape == hirestile.predict(m, img).shape[1:] and y.dtype == np.uint8
    assert np.array_equal(y.compute(scheduler="sync"), expected(m, img, "labels"))


def test_read_windows_contain_every_block_window(model):
    for m, hw in ((model, (77, 91)), (unet(in_channels=1, classes=2, base=4, depth=2, padding="valid"), (76, 92))):
        rep = hirestile.analyze(m, hw)
        rows, cols = dask_api._out_cuts(rep, (13, 17))
        tiles = make_tiles(rep, rows, cols)
        assert len(tiles) == len(rows) * len(cols)
        for t in tiles:
            (a, b), (p, q) = rep.input_window(t.write, aligned=True)        # this block's own window
            exact = ((max(a, 0), min(b, hw[0])), (max(p, 0), min(q, hw[1])))
            assert exact == t.read                     # equal for these networks (contained in general)


def test_graph_holds_no_array_data(tmp_path, model):
    img = image((64, 80))
    for src in (da.from_array(img, chunks=32), zarr.create_array(str(tmp_path / "a.zarr"), data=img, chunks=(32, 32))):
        y = hirestile.segment(src, model, chunks=16)
        mine = {k: v for k, v in dict(y.__dask_graph__()).items() if "hirestile" in str(k)}
        big = {k: len(pickle.dumps(v)) for k, v in mine.items() if len(pickle.dumps(v)) > 2000}
        assert [str(k) for k in big] == [k for k in map(str, mine) if k.startswith("hirestile-job-")]
    # a model given by path travels as its path: every task stays small, workers load it
    path = str(tmp_path / "m.safetensors")
    arch = dict(in_channels=1, classes=2, base=4, depth=2)
    save_unet(path, init_state(**arch, seed=0), **arch)          # the weights of unet(**arch)
    y = hirestile.segment(da.from_array(img, chunks=32), path, chunks=16)
    assert max(len(pickle.dumps(v)) for k, v in dict(y.__dask_graph__()).items() if "hirestile" in str(k)) < 2000
    assert np.array_equal(y.compute(scheduler="sync"), hirestile.predict(model, img))


def _global_pool_model():
    rng = np.random.default_rng(0)
    c1 = Node("c1", Conv(kernel=(3, 3), pads=(1, 1, 1, 1), cin=1, cout=2), ("input",),
              {"w": rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "b": np.zeros(2, np.float32)})
    gp = Node("gp", GlobalPool(), ("c1",))
    out = Node("out", Binary(fn="add"), ("c1", "gp"))
    return Graph(nodes=(c1, gp, out), output="out", in_channels=1)


def test_not_tileable(model):
    g = _global_pool_model()
    img = image((30, 40))
    with pytest.raises(NotTileableError, match="gp"):
        hirestile.segment(da.from_array(img, chunks=16), g, chunks=16)
    y = hirestile.segment(da.from_array(img, chunks=16), g)          # default: one block
    assert y.npartitions == 1
    assert np.array_equal(y.compute(scheduler="sync"), hirestile.predict(g, img))


def test_bad_input(model, model3):
    with pytest.raises(InputError, match="channel"):
        hirestile.segment(image((20, 30)), model3)
    with pytest.raises(InputError, match="axes"):
        hirestile.segment(image((3, 20, 3)), model3)
    with pytest.raises(InputError, match="axes"):
        hirestile.segment(image((20, 30)), model, axes="CHW")
    with pytest.raises(InputError, match="shape"):
        hirestile.segment(np.zeros((1, 1, 20, 30), np.uint8), model)
    with pytest.raises(InputError, match="too small"):
        hirestile.segment(np.zeros((20, 30), np.uint8), unet(in_channels=1, classes=2, base=4, depth=2,
                                                             padding="valid"))
    with pytest.raises(ValueError, match="output"):
        hirestile.segment(image((20, 30)), model, output="mask")
    with pytest.raises(InputError, match="compute_chunk_sizes"):
        hirestile.segment(da.from_array(image((20, 30)), chunks=10)[da.ones(20, chunks=10) > 0], model)
    x = np.zeros((20, 30), np.float32)
    x[5, 7] = np.nan
    with pytest.raises(InputError, match="row 5, column 7"):
        hirestile.segment(da.from_array(x, chunks=10), model, chunks=10).compute(scheduler="sync")
    x0 = x.copy()
    x0[5, 7] = 0.5
    y = hirestile.segment(da.from_array(x, chunks=10), model, chunks=10, nan_fill=0.5)
    assert np.array_equal(y.compute(scheduler="sync"), hirestile.predict(model, x0))
    big = np.zeros((20, 30), np.float64)
    big[6, 8] = 1e300                                  # finite, but Inf once cast to float32
    with pytest.raises(InputError, match="value 1e[+]300 at channel 0, row 6, column 8 is inf"):
        hirestile.segment(da.from_array(big, chunks=10), model, chunks=10).compute(scheduler="sync")


def test_graph_100k(tmp_path, model, monkeypatch):
    """A 100k x 100k image plans in work proportional to its blocks, not its pixels: one task
    per block (plus the source's chunks and the job), one analyzer window per row and per
    column of blocks rather than per block, and (zarr source) no allocation near the 10 GB image."""
    from hirestile.analyzer import Report

    windows, real = [], Report.input_window
    monkeypatch.setattr(Report, "input_window", lambda self, *a, **kw: (windows.append(a), real(self, *a, **kw))[1])
    y = hirestile.segment(da.zeros((100_000, 100_000), np.uint8, chunks=1024), model, chunks=1024)
    n = len(dict(y.__dask_graph__()))
    assert y.npartitions == 98 * 98 and len(windows) <= 98 + 98      # not one per block (9604)
    assert n <= 2 * y.npartitions + 1                 # source chunks + blocks + the shared job key
    z = zarr.create_array(str(tmp_path / "big.zarr"), shape=(100_000, 100_000), chunks=(1024, 1024), dtype="uint8")
    windows.clear()
    tracemalloc.start()
    try:
        y = hirestile.segment(z, model, chunks=1024)
        n = len(dict(y.__dask_graph__()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == y.npartitions + 2
    assert len(windows) <= 98 + 98
    assert peak < 128 << 20, peak                     # about 8 MiB today


# **** dask.distributed ****
@pytest.fixture(scope="module")
def client():
    import distributed           # a dependency of hirestile: fails, never skips, when broken
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       env={"NUMBA_NUM_THREADS": "1"}, silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _out_array(path, shape, chunks, shards):
    return zarr.create_array(str(path), shape=shape, chunks=chunks, shards=shards, dtype="float32", fill_value=0)


def test_distributed_store_into_shards(tmp_path, client, model):
    img = image((96, 128), seed=7)
    src = zarr.create_array(str(tmp_path / "in.zarr"), data=img, chunks=(32, 32))
    y = hirestile.segment(src, model, chunks=(32, 64))
    out = _out_array(tmp_path / "out.zarr", y.shape, (2, 16, 32), (2, 32, 64))
    da.store(y, out, lock=False, scheduler=client)
    want = hirestile.predict(model, img)
    assert np.array_equal(out[:], want)
    info = client.run(worker.worker_info)
    assert len(info) == 2
    for w in info.values():
        assert w["threading_layer"] in ("omp", "tbb"), w      # not workqueue: thread-safe layer holds
        assert w["numba_threads"] == [1], w                       # NUMBA_NUM_THREADS=1 / 1 thread per worker
    # a second job (to_zarr) compiles nothing new: kernels come once per worker, not per task
    y.to_zarr(_out_array(tmp_path / "out2.zarr", y.shape, (2, 32, 64), None), compute=True)
    assert np.array_equal(zarr.open_array(str(tmp_path / "out2.zarr"))[:], want)
    again = client.run(worker.worker_info)
    for addr, w in again.items():
        assert w["signatures"] == info[addr]["signatures"] and w["compiled"] == info[addr]["compiled"], (w, info)
    assert sum(w["tasks"] for w in again.values()) >= sum(w["tasks"] for w in info.values()) + y.npartitions


def _slow(block):
    time.sleep(0.25)
    return block


def test_worker_killed_mid_run(tmp_path, client, model):
    import cloudpickle
    from distributed import wait
    mod = sys.modules.get(_slow.__module__)
    if mod is not None:
        cloudpickle.register_pickle_by_value(mod)
    img = image((128, 128), seed=11)
    src = da.from_array(img, chunks=32).map_blocks(_slow, dtype=img.dtype)
    y = hirestile.segment(src, model, chunks=32)
    out = _out_array(tmp_path / "out.zarr", y.shape, (2, 32, 32), None)
    fut = client.compute(da.store(y, out, lock=False, compute=False))
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    deadline = time.time() + 60
    while not os.path.isdir(tmp_path / "out.zarr" / "c") and time.time() < deadline:
        time.sleep(0.05)                               # until a first block is written
    assert not fut.done()
    os.kill(pids[victim], signal.SIGKILL)
    wait(fut, timeout=180)
    fut.result()
    assert np.array_equal(out[:], hirestile.predict(model, img))
    deadline = time.time() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert pids[victim] not in client.run(os.getpid).values()     # it did die (and was replaced)


def test_cluster_segment_to_zarr_matches_scheduler_and_resumes(tmp_path, client, model, monkeypatch):
    from hirestile import scheduler
    from hirestile.resume import DoneLog

    img = image((1, 80, 100), seed=13)
    src = str(tmp_path / "in.zarr")
    zarr.create_array(src, data=img, chunks=(1, 32, 32))
    ref = str(tmp_path / "ref.zarr")
    scheduler.segment_to_zarr(src, model, ref, tile=32, progress=False)
    want = zarr.open_group(ref)["0"][:]

    out = str(tmp_path / "out.zarr")
    on_cluster = cluster.cluster_tiles(client)
    stats = scheduler.segment_to_zarr(src, model, out, run_tiles=on_cluster, tile=32, progress=False)
    assert stats.tiles_computed == stats.tiles_total == 12
    assert np.array_equal(zarr.open_group(out)["0"][:], want)
    assert scheduler.segment_to_zarr(src, model, out, tile=32, progress=False).already_complete

    # interrupted after 3 tiles: both the cluster and the one-machine path resume it
    calls = []
    real = DoneLog.mark

    def mark(self, rect):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(rect)
        real(self, rect)

    part = str(tmp_path / "part.zarr")
    monkeypatch.setattr(DoneLog, "mark", mark)
    with pytest.raises(KeyboardInterrupt):
        scheduler.segment_to_zarr(src, model, part, run_tiles=on_cluster, tile=32, kind="labels",
                                  progress=False)
    monkeypatch.setattr(DoneLog, "mark", real)
    deadline = time.time() + 60
    while any(client.processing().values()) and time.time() < deadline:
        time.sleep(0.05)                               # stragglers finish before the rerun
    assert zarr.open_group(part).attrs["hirestile"]["status"] == "incomplete"
    stats = scheduler.segment_to_zarr(src, model, part, run_tiles=on_cluster, tile=32, kind="labels",
                                      progress=False)
    assert stats.tiles_skipped == 3 and stats.tiles_computed == 9
    assert np.array_equal(zarr.open_group(part)["0"][:], expected(model, img, "labels"))


# **** the CLI on a cluster ****
def _cli(*args, **kw):
    import subprocess
    return subprocess.Popen([sys.executable, "-m", "hirestile", "segment", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def cli_job(tmp_path_factory):
    """A small UNet's weights, a 1-channel input and the single-machine output for them."""
    from hirestile import scheduler
    d = tmp_path_factory.mktemp("cli_cluster")
    arch = dict(in_channels=1, classes=2, base=4, depth=2)
    save_unet(d / "m.safetensors", init_state(**arch, seed=2), **arch)
    zarr.create_array(str(d / "in.zarr"), data=image((1, 160, 224), seed=17), chunks=(1, 32, 32))
    scheduler.segment_to_zarr(str(d / "in.zarr"), hirestile.load_model(d / "m.safetensors"), str(d / "ref.zarr"),
                              tile=32, kind="logits", progress=False)
    return d, zarr.open_group(str(d / "ref.zarr"))["0"][:]


def test_cli_workers_starts_a_local_cluster(tmp_path, cli_job):
    d, want = cli_job
    p = _cli(d / "in.zarr", "--model", d / "m.safetensors", "-o", tmp_path / "o.zarr", "--tile", "32",
             "--output", "logits", "--workers", "2")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "35 tiles computed" in err, err
    assert np.array_equal(zarr.open_group(str(tmp_path / "o.zarr"))["0"][:], want)


def test_cli_scheduler_survives_a_killed_worker(tmp_path, client, cli_job):
    """--scheduler ADDR runs the tiles on an existing cluster; killing one of its workers
    mid-run still finishes the job with the same bits."""
    d, want = cli_job
    out = tmp_path / "o.zarr"
    log = out / ".hirestile" / "done.log"
    p = _cli(d / "in.zarr", "--model", d / "m.safetensors", "-o", out, "--tile", "32", "--output", "logits",
             "--scheduler", client.scheduler.address)
    pids = client.run(os.getpid)
    deadline = time.time() + 120
    while not (log.exists() and log.read_bytes().count(b"\n") >= 1) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed = p.poll() is None
    if killed:
        os.kill(pids[sorted(pids)[0]], signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert killed, "the job finished before a worker could be killed"
    assert np.array_equal(zarr.open_group(str(out))["0"][:], want)
    deadline = time.time() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
        time.sleep(0.2)                                 # the nanny restarts it for later tests


def test_worker_threads_reuse_their_slab_within_a_job():
    """A worker thread keeps its node buffers from task to task of one job (fresh pages cost
    30-50% of a tile) and starts a new slab for another job; the tiles' logits are the
    full frame's either way."""
    m = unet(in_channels=3, classes=2, base=4, depth=2, seed=7)
    x = np.random.default_rng(8).random((3, 90, 70), np.float32)
    full = hirestile.predict(m, x)
    slabs = []
    for token in ("job-a", "job-a", "job-b"):
        job = worker.Job(model=m, token=token, image_hw=(90, 70), layout="CYX", output="logits")
        worker.remember(job, m, m.analyze((90, 70)))
        rep = worker.model_for(job)[1]
        for t in make_tiles(rep, [(0, 40), (40, 90)], [(0, 33), (33, 70)]):
            got = worker.run_tile(job, x[(slice(None), *t.read.slices)], t)
            assert np.array_equal(got, full[(slice(None), *t.write.slices)])
        slabs.append(worker._LOCAL.arena)
    assert slabs[0] is slabs[1] and slabs[2] is not slabs[0]
    assert slabs[0].slab.ctypes.data % 64 == 0          # on a cache line (executor.aligned_empty)
