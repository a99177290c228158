"""Cluster runs: a scheduler job's tiles computed on a dask.distributed cluster.

Layer 6 of docs/architecture.md: what ``hirestile segment --scheduler ADDR`` /
``--workers N`` runs. :func:`cluster_tiles` is a tile runner for
:func:`hirestile.scheduler.segment_to_zarr`: same output, same manifest, same
resume log as a run in one process; each worker opens the input by path, reads
its tile's window, runs it (:func:`hirestile.worker.run_tile`) and writes and
fsyncs whole shards (:func:`hirestile.resume.store_tile`).

Examples
--------
>>> from hirestile.scheduler import segment_to_zarr
>>> with cluster_client(workers=2) as client:     # doctest: +SKIP
...     stats = segment_to_zarr("slide.zarr", "unet", run_tiles=cluster_tiles(client))
"""
from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from hirestile import ome
from hirestile.contract import NAN_FILL_HINT
from hirestile.errors import HirestileError
from hirestile.io import open_image
from hirestile.loading import as_model
from hirestile.resume import store_tile
from hirestile.tiling import Tile
from hirestile.worker import Job, model_token, run_tile

__all__ = ["cluster_client", "cluster_tiles"]


# **** the client ****
@contextmanager
def cluster_client(address: str | None = None, *, workers: int | None = None, threads_per_worker: int = 1,
                   memory_limit: str | int = "auto") -> Iterator[Any]:
    """A dask.distributed client: connected to ``address`` or to a new local cluster.

    Parameters
    ----------
    address : str, optional
        Scheduler address, e.g. ``"tcp://10.0.0.5:8786"`` (``--scheduler``).
    workers : int, optional
        Without ``address``: start a local cluster of this many worker processes
        (``--workers N``), ``threads_per_worker`` threads each, Numba threads set
        so that workers x threads x Numba threads = the cores this process may use.
    memory_limit : str or int
        Per local worker ("auto" splits the machine's memory between them).

    Examples
    --------
    >>> from hirestile.scheduler import segment_to_zarr
    >>> with cluster_client(workers=2) as client:     # doctest: +SKIP
    ...     stats = segment_to_zarr("slide.zarr", "unet", run_tiles=cluster_tiles(client))
    """
    from distributed import Client, LocalCluster

    if address:
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as e:
            why = (str(e).splitlines() or [""])[0][:200]
            raise HirestileError(f"cannot reach the dask scheduler at {address} ({type(e).__name__}: {why}); "
                                 "start one with `dask scheduler` and workers with `dask worker ADDRESS`, "
                                 "or check the address") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = int(workers or 1)
    if n < 1 or threads_per_worker < 1:
        raise ValueError(f"workers and threads per worker must be positive, got {n} and {threads_per_worker}")
    import dask
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    numba_threads = str(max(1, cores // (n * threads_per_worker)) * threads_per_worker)
    # set before each worker process starts (restarts included), so Numba sizes its pool by it
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), "NUMBA_NUM_THREADS": numba_threads}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                               memory_limit=memory_limit, dashboard_address=None,
                               env={"NUMBA_NUM_THREADS": numba_threads})
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@dataclass(frozen=True)
class _ClusterJob:
    """What every tile task of a cluster run shares (one key in the graph)."""

    job: Job
    source: tuple[str, int, str, int]     # input path, level, axes, channels: each worker opens it
    out: Any                              # the output's level-0 zarr array (pickles by store path)
    kind: str
    output: str                           # the output's path, for messages


_IMAGES: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


_IMAGES_LOCK = threading.Lock()
_IMAGES_SIZE = 4


def _open_source(source: tuple[str, int, str, int]) -> Any:
    with _IMAGES_LOCK:
        img = _IMAGES.get(source)
        if img is None:
            path, level, axes, channels = source
            img = _IMAGES[source] = open_image(path, level=level, axes=axes, channels=channels)
            while len(_IMAGES) > _IMAGES_SIZE:
                _IMAGES.popitem(last=False)[1].close()
        return img


def _cluster_tile(cj: _ClusterJob, tile: Tile) -> tuple[int, float, float, float]:
    """Task: read, compute and durably write one scheduler tile (whole shards).

    Returns (tile index, read s, compute s, write s); the driver marks it done.
    """
    t0 = time.perf_counter()
    img = _open_source(cj.source)
    raw = img.read(*tile.read)
    t1 = time.perf_counter()
    logits = run_tile(cj.job, raw, tile, where=f"{img.path}:", hint=NAN_FILL_HINT)
    t2 = time.perf_counter()
    store_tile(cj.out, tile, logits, kind=cj.kind, output=cj.output)
    return tile.index, t1 - t0, t2 - t1, time.perf_counter() - t2


def cluster_tiles(client: Any, *, log: Callable[[str], None] | None = None) -> Callable[..., None]:
    """The tile runner that computes a scheduler job's tiles on ``client``'s workers.

    Pass it as ``run_tiles`` to :func:`hirestile.scheduler.segment_to_zarr`: same
    output, same job manifest and same resume log, so a run interrupted on the
    cluster resumes on one machine, and the reverse. This process plans the
    tiles, holds the output's lock, marks tiles done as workers report them
    written and shows progress; each worker opens the input by path (cached per
    worker), reads its tile's window, runs the executor and writes and fsyncs
    whole shards. Input and output must be visible to every worker under the
    same path (one machine, or a shared filesystem). A run stopped here
    (Ctrl-C, SIGTERM, a crash) resumes like the single-machine one; a failed
    worker's tiles are recomputed elsewhere by dask. In the returned RunStats,
    ``read``, ``compute`` and ``write`` add up worker time; ``idle`` is unused.

    Parameters
    ----------
    client : distributed.Client
        See :func:`cluster_client`.
    log : callable, optional
        Receives a one-line note: how many tiles on how many workers.
    """
    return functools.partial(_stream_tiles, client=client, say=log or (lambda s: None))


def _stream_tiles(img: Any, model: Any, rep: Any, arr: Any, todo: list[Tile], donelog: Any, stats: Any, *,
                  kind: str, nan_fill: float | None, progress: bool | None, total: int, client: Any,
                  say: Callable[[str], None]) -> None:
    """:func:`cluster_tiles`' runner (``hirestile.scheduler.TileRunner``): one task per tile."""
    import signal

    from dask._task_spec import DataNode, Task, TaskRef
    from distributed import as_completed
    from tqdm import tqdm

    m = as_model(model)
    layout = ome.Layout.of(arr)
    job = Job(model=m, token=model_token(m, m), image_hw=(img.height, img.width), layout="", output=kind,
              nan_fill=nan_fill, precision=getattr(rep, "precision", "fp32"))
    cj = _ClusterJob(job=job, source=(os.path.abspath(img.path), img.level, img.axes, m.contract.channels),
                     out=arr, kind=kind, output=stats.output)
    run = uuid.uuid4().hex[:12]              # tiles write files: never share keys with another run
    job_key = f"hirestile-cluster-job-{run}"
    dsk: dict[Any, Any] = {job_key: DataNode(job_key, cj)}
    keys, by_index = [], {}
    for t in todo:
        key = f"hirestile-tile-{run}-{t.index}"
        dsk[key] = Task(key, _cluster_tile, TaskRef(job_key), t)
        keys.append(key)
        by_index[t.index] = t
    if keys:
        nworkers = len(client.scheduler_info().get("workers", {}))
        say(f"computing {len(keys)} tiles on {nworkers} dask worker(s) at {client.scheduler.address}")
    bar = tqdm(total=total, initial=total - len(todo), unit="tile", dynamic_ncols=True, desc="segment",
               smoothing=0.1, disable=None if progress is None else not progress)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        old_term = signal.signal(signal.SIGTERM, on_term)
    t0 = time.perf_counter()
    futures = client.get(dsk, keys, sync=False) if keys else []
    try:
        for fut in as_completed(futures):
            index, r, c, w = fut.result()
            t = by_index[index]
            donelog.mark(layout.blocks_of(t.write))
            stats.read += r
            stats.compute += c
            stats.write += w
            stats.tiles_computed += 1
            stats.out_pixels += t.write.size
            stats.in_pixels_read += t.read.size
            bar.set_postfix_str(f"{stats.out_pixels / 1e6 / (time.perf_counter() - t0):.2f} MP/s", refresh=False)
            bar.update(1)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
