"""kill -9 of the object pass (``hirestile objects``) halfway through, then the same command again:
it resumes from its on-disk state (pass 1's result, the done-log of written tiles) and gives the
same labels, table and outlines as an uninterrupted run, bit for bit."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import zarr
from skimage.measure import label

from clihelp import TIMEOUT, cli
from test_cli import _lines
from test_objects import labels_output

N, TILE = 1280, 64                     # 20 x 20 tiles in pass 2, each written and fsync'd


def blobs(n: int, seed: int) -> np.ndarray:
    """Objects of many sizes: 8 x 8 cells of two classes, some joined across many tiles."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((n // 8, n // 8)) < 0.45) * rng.integers(1, 3, (n // 8, n // 8))
    cm = np.kron(coarse, np.ones((8, 8), np.int64)).astype(np.uint8)
    cm[rng.random((n, n)) < 0.02] = 0                     # holes and ragged edges
    return cm


def _args(tmp, name):
    return ["objects", str(tmp / "cm.zarr"), "-o", str(tmp / f"{name}.zarr"), "--tile", str(TILE),
            "--table", str(tmp / f"{name}.parquet"), "--geojson", str(tmp / f"{name}.geojson")]


def test_sigkill_halfway_then_resume(tmp_path):
    cm = blobs(N, 3)
    labels_output(tmp_path / "cm.zarr", cm)
    ref = cli(*_args(tmp_path, "ref"), "-q")                      # the uninterrupted run
    assert ref.returncode == 0, ref.stderr

    total = (N // TILE) ** 2
    log = tmp_path / "cut.zarr" / ".hirestile" / "done.log"
    kill_at = random.Random(os.getpid()).randint(2, total // 2)
    proc = subprocess.Popen([sys.executable, "-m", "hirestile", *_args(tmp_path, "cut"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while _lines(log) < kill_at and proc.poll() is None and time.time() - t0 < TIMEOUT:
        time.sleep(0.002)
    proc.kill()                                                    # SIGKILL
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -9, "the run finished before it could be killed"
    done = _lines(log)                                             # tiles durably written at the moment of death
    assert kill_at <= done < total
    g = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r")
    assert g.attrs["hirestile"]["status"] == "incomplete" and "ome" not in g.attrs
    assert (tmp_path / "cut.zarr" / ".hirestile" / "objects.npz").exists()      # pass 1's result survived
    assert not (tmp_path / "cut.parquet").exists()

    r = cli(*_args(tmp_path, "cut"))                               # the same command again
    assert r.returncode == 0, r.stderr
    assert f"resuming the object pass: {done} of {total} tiles already written" in r.stderr, r.stderr
    assert not (tmp_path / "cut.zarr" / ".hirestile").exists()

    want = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")["0"][...]
    g = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r")
    assert g.attrs["hirestile"]["status"] == "complete"
    got = g["0"][...]
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(got, label(cm, connectivity=1))          # and both are the full-frame answer
    assert pq.read_table(tmp_path / "cut.parquet").equals(pq.read_table(tmp_path / "ref.parquet"))
    assert (tmp_path / "cut.geojson").read_bytes() == (tmp_path / "ref.geojson").read_bytes()
