"""Graph size and build time of ``hirestile.segment`` on a 100k x 100k image (issue 5).

Nothing is computed: each source is lazy (``da.zeros``, a zarr array created with
no data written, ``da.from_zarr`` of it). For each it prints the output blocks,
the tasks of the whole graph (source tasks included), tasks per block, and the
seconds to build the graph (``hirestile.segment`` plus materialising every task).
The target is under 5 s and at most 2 tasks per output block.

    python benchmarks/dask_graph.py                    # 100000^2, blocks 1024, tiny UNet
    python benchmarks/dask_graph.py --size 200000 --block 2048
    python benchmarks/dask_graph.py --model big        # UNet base 32, depth 4, default blocks
    python benchmarks/dask_graph.py --submit           # also hand the zarr graph to a local
                                                       # dask.distributed scheduler (not run)
"""
from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000, help="image side (pixels)")
    p.add_argument("--block", type=int, default=1024, help="output block side; 0 = hirestile's default")
    p.add_argument("--model", choices=("tiny", "big"), default="tiny")
    p.add_argument("--submit", action="store_true", help="time handing the graph to a distributed scheduler")
    a = p.parse_args()

    import dask.array as da
    import numpy as np
    import zarr

    import hirestile
    from hirestile.models.unet import unet

    m = (unet(in_channels=1, classes=2, base=4, depth=2) if a.model == "tiny"
         else unet(in_channels=1, classes=2, base=32, depth=4))
    n, chunks = a.size, (a.block or None)
    hirestile.segment(np.zeros((64, 64), np.uint8), m, chunks=32)        # imports and kernels warm
    tmp = tempfile.mkdtemp()
    z = zarr.create_array(f"{tmp}/in.zarr", shape=(n, n), chunks=(1024, 1024), dtype="uint8")
    sources = {
        "da.zeros, chunks 1024": lambda: da.zeros((n, n), np.uint8, chunks=1024),
        "zarr array (no data written)": lambda: z,
        "da.from_zarr(zarr array)": lambda: da.from_zarr(z),
    }
    print(f"image {n} x {n}, model {a.model}, output blocks {a.block or 'default'}")
    print(f"{'source':32s} {'blocks':>8s} {'tasks':>8s} {'tasks/block':>12s} {'build s':>8s}")
    graphs = {}
    for label, make in sources.items():
        src = make()
        t = time.perf_counter()
        y = hirestile.segment(src, m, chunks=chunks)
        g = dict(y.__dask_graph__())
        dt = time.perf_counter() - t
        graphs[label] = y
        print(f"{label:32s} {y.npartitions:8d} {len(g):8d} {len(g) / y.npartitions:12.4f} {dt:8.2f}")
    if a.submit:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl, \
                Client(cl) as client:
            y = graphs["zarr array (no data written)"]
            t = time.perf_counter()
            fut = client.compute(y)
            while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) < y.npartitions:
                time.sleep(0.05)
            dt = time.perf_counter() - t
            fut.cancel()
            print(f"submitted {y.npartitions} blocks to a distributed scheduler in {dt:.2f} s")


if __name__ == "__main__":
    main()
