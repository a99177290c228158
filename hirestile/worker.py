"""What a Dask task does in its worker process: get the model once, pick threads, run a tile.

Layer 6 of docs/architecture.md, shared by the two Dask front ends: the array
API (:mod:`hirestile.dask_api`) and the cluster runner (:mod:`hirestile.cluster`).

What every task of one call shares is one :class:`Job` (one key in the graph),
so the weights sit in the graph once, not once per task; pass the model as a
built-in name or a file path and not even that -- each worker loads it. A
worker loads and analyzes the model once per image size and keeps the last few
(:func:`model_for`); dropping one frees its prepared weights. The Numba kernels
come from their on-disk cache (``cache=True``), compiled at most once per worker
process. Each worker thread keeps its node-buffer slab (:class:`hirestile.executor.Arena`)
from task to task of one job: a fresh slab's first-touch page faults cost 30-50% of a
tile's time (UNet-16, 1024^2 tiles: 1.0-2.5 s fresh against 0.6-1.4 s reused). It is the
memory the plan gives each task, held until the thread runs another job's task.

Threads: in a dask.distributed worker each task runs the kernels on
``NUMBA_NUM_THREADS // (worker threads)`` Numba threads when the worker's
environment sets ``NUMBA_NUM_THREADS`` (read when the task runs, so
``LocalCluster(env=...)`` works too), else on 1 (dask's own convention: the
nanny sets ``OMP_NUM_THREADS=1``). The local threaded scheduler gets the cores
split between its threads; ``numba_threads=`` overrides both. Kernels run under
the thread-safe layer ``hirestile/__init__.py`` selects (omp or tbb), never
workqueue, which aborts when two threads enter parallel kernels.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report
from hirestile.loading import as_model
from hirestile.model import Model
from hirestile.tiling import Tile

__all__ = ["Job", "model_token", "remember", "model_for", "run_tile", "worker_info"]


# **** the job every task of one call shares ****
@dataclass(frozen=True)
class Job:
    """What all tasks of one :func:`segment` call share: one key in the graph.

    ``model`` is a Model, or a name / path each worker loads; ``token`` identifies
    it for the per-worker cache; ``layout`` names the stored axes (letters C, Y, X);
    ``precision`` is the executor's arithmetic ("fp32" or "bf16").
    """

    model: Any
    token: str
    image_hw: tuple[int, int]
    layout: str
    output: str
    nan_fill: float | None = None
    numba_threads: int | None = None
    precision: str = "fp32"


def model_token(source: Any, m: Model) -> str:
    """What identifies a model across processes: a file's path, size and mtime, a built-in
    name, or the weights' fingerprint."""
    if isinstance(source, str):
        try:
            st = os.stat(source)
            return f"file:{os.path.abspath(source)}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return f"name:{source}"
    return "weights:" + m.fingerprint


# **** the per-process model cache ****
_CACHE: OrderedDict[tuple[str, tuple[int, int], str], tuple[Model, Report]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
_STATS: dict[str, Any] = {"tasks": 0, "numba_threads": set()}
_LOCAL = threading.local()          # per worker thread: (job key, its Arena)


def _put(key: tuple[str, tuple[int, int], str], hit: tuple[Model, Report]) -> None:
    _CACHE[key] = hit
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def remember(job: Job, model: Model, rep: Report) -> None:
    """Seed this process's cache with what the caller already loaded and analyzed."""
    with _CACHE_LOCK:
        _put((job.token, job.image_hw, job.precision), (model, rep))


def model_for(job: Job) -> tuple[Model, Report]:
    """The model and its report for this job, made once per process (worker)."""
    key = (job.token, job.image_hw, job.precision)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            model = as_model(job.model)
            hit = (model, model.analyze(job.image_hw, job.precision))
        _put(key, hit)
        return hit


# **** one tile ****
def _task_threads(requested: int | None) -> int | None:
    """Numba threads for the kernels of one task (None: leave Numba's setting)."""
    import numba
    if requested:
        return int(requested)
    n = int(numba.config.NUMBA_NUM_THREADS)
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:     # read at task time: the nanny's env= lands after numba may be imported
        env = os.environ.get("NUMBA_NUM_THREADS", "")
        if not env.isdigit():
            return 1
        return max(1, int(env) // max(1, int(getattr(worker, "nthreads", 1))))
    if threading.current_thread() is threading.main_thread():
        return None                                   # synchronous scheduler / NumPy path
    import dask
    from dask.system import CPU_COUNT
    return max(1, n // int(dask.config.get("num_workers", None) or CPU_COUNT))


def _arena(job: Job) -> executor.Arena:
    """This thread's slab for ``job``'s tiles (a new one when the thread last ran another job)."""
    key = (job.token, job.image_hw, job.precision)
    if getattr(_LOCAL, "key", None) != key:
        _LOCAL.key, _LOCAL.arena = key, None            # the old slab goes before the new one grows
        _LOCAL.arena = executor.Arena()
    return _LOCAL.arena


def run_tile(job: Job, raw: np.ndarray, tile: Tile, *, where: str = "image",
             hint: str = "pass nan_fill=VALUE to stand in for NaN/Inf") -> np.ndarray:
    """A tile's logits from its raw (C, h, w) read window (:func:`hirestile.executor.run_window`),
    on the Numba threads this task should use; a NaN/Inf error names ``where`` and ``hint``."""
    import numba

    model, rep = model_for(job)
    threads = _task_threads(job.numba_threads)
    old = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(min(threads, int(numba.config.NUMBA_NUM_THREADS)))
    try:
        logits = executor.run_window(rep, model.contract, raw, tile, nan_fill=job.nan_fill, where=where, hint=hint,
                                     arena=_arena(job))
        _STATS["numba_threads"].add(numba.get_num_threads())
    finally:
        numba.set_num_threads(old)
    _STATS["tasks"] += 1
    return logits


# **** what a worker reports ****
def worker_info() -> dict[str, Any]:
    """What this process (e.g. a dask worker, through ``client.run``) has done with hirestile.

    Returns a dict: ``pid``; ``tasks`` (blocks computed); ``numba_threads`` (the Numba
    thread counts tasks ran with); ``numba_max_threads`` (``NUMBA_NUM_THREADS``);
    ``threading_layer`` (None until a parallel kernel ran); ``signatures`` (kernel
    signatures in memory), ``compiled`` (compiled here: on-disk cache misses) and
    ``loaded`` (loaded from the on-disk cache).

    Examples
    --------
    >>> sorted(worker_info())                         # doctest: +NORMALIZE_WHITESPACE
    ['compiled', 'loaded', 'numba_max_threads', 'numba_threads', 'pid', 'signatures', 'tasks',
     'threading_layer']
    """
    import sys

    import numba
    from numba.core.dispatcher import Dispatcher
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    seen: dict[int, Any] = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("hirestile.kernels") and mod is not None:
            for v in vars(mod).values():
                if isinstance(v, Dispatcher):
                    seen[id(v)] = v
    sigs = sum(len(d.overloads) for d in seen.values())
    compiled = sum(sum(d.stats.cache_misses.values()) for d in seen.values())
    loaded = sum(sum(d.stats.cache_hits.values()) for d in seen.values())
    return {"pid": os.getpid(), "tasks": _STATS["tasks"], "numba_threads": sorted(_STATS["numba_threads"]),
            "numba_max_threads": int(numba.config.NUMBA_NUM_THREADS), "threading_layer": layer,
            "signatures": sigs, "compiled": compiled, "loaded": loaded}


