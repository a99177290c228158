"""Dask front end: ``hirestile.segment`` (array in, lazy array out) and cluster runs.

Layer 6 of DESIGN.md section 3, beside the Python API and the CLI. Two entry points:

* :func:`segment` -- NumPy in, NumPy out; Dask or zarr in, a lazy Dask array out
  (dask-image style: the halo is hirestile's business, never the user's).
* :func:`cluster_tiles` -- what ``hirestile segment --scheduler ADDR`` /
  ``--workers N`` runs: :func:`hirestile.scheduler.segment_to_zarr`'s job (same
  output, same manifest, same resume log) with the tiles computed on a
  dask.distributed cluster.

Graph shape
-----------
One task per output block, never ``map_overlap`` (about 15 tasks per block). A
block's task reads its own *read window* -- the analyzer's input window for the
block, clipped to the image -- and runs the executor on it:

* zarr source: the task reads the window straight from the zarr array, which is
  one key of the graph (zarr arrays pickle by store path): 1 task per block;
* dask source: the task depends on the source chunks its window overlaps and
  copies the window out of them: 1 task per block plus the source's own tasks.

What every task shares (model, image size, output kind) is one more key, so the
weights sit in the graph once, not once per task; pass the model as a built-in
name or a file path and not even that -- each worker loads it. A worker analyzes
the model once per image size and keeps the report (:func:`_prepared`); the Numba
kernels come from their on-disk cache (``cache=True``), compiled at most once per
worker process.

Threads: in a dask.distributed worker each task runs the kernels on
``NUMBA_NUM_THREADS // (worker threads)`` Numba threads when the worker's
environment sets ``NUMBA_NUM_THREADS`` (read when the task runs, so
``LocalCluster(env=...)`` works too), else on 1 (dask's own convention: the
nanny sets ``OMP_NUM_THREADS=1``). The local threaded scheduler gets the cores
split between its threads; ``numba_threads=`` overrides both. Kernels run under
the thread-safe layer ``hirestile/__init__.py`` selects (omp or tbb), never
workqueue, which aborts when two threads enter parallel kernels.

Examples
--------
>>> import numpy as np, dask.array as da
>>> from hirestile.models.unet import unet
>>> m = unet(in_channels=1, classes=2, base=4, depth=2)
>>> x = np.random.default_rng(0).random((70, 90), np.float32)
>>> y = segment(da.from_array(x, chunks=32), m, chunks=32)
>>> y.shape, y.chunks[1], y.dtype
((2, 70, 90), (32, 32, 6), dtype('float32'))
>>> np.array_equal(y.compute(scheduler="sync"), hirestile.predict(m, x))
True
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
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import hirestile
from hirestile import api, executor
from hirestile.analyzer import Report
from hirestile.errors import HirestileError, InputError
from hirestile.contract import normalize_window
from hirestile.model import Model

__all__ = ["segment", "cluster_tiles", "cluster_client", "postprocess", "worker_info", "OUTPUTS"]

OUTPUTS = ("logits", "probabilities", "labels")
DEFAULT_BLOCK = 1024             # default output block side (rows, cols)
BLOCK_MEMORY = 1 << 30           # the default block shrinks until the executor needs at most this
_AXES = {"HW": "YX", "CHW": "CYX", "HWC": "YXC", "YX": "YX", "CYX": "CYX", "YXC": "YXC"}

Region = tuple[tuple[int, int], tuple[int, int]]


# **** public API ****
def segment(image: Any, model: Model | str, *, output: str = "logits",
            chunks: int | Sequence[int] | Sequence[Sequence[int]] | None = None, axes: str | None = None,
            nan_fill: float | None = None, numba_threads: int | None = None) -> Any:
    """Segment an image: NumPy in -> NumPy out, Dask or zarr in -> lazy Dask array out.

    The result equals hirestile's full-frame output bit for bit (logits), and
    ``probabilities`` / ``labels`` are computed pointwise from those logits
    (:func:`postprocess`), whatever ``chunks`` is.

    Parameters
    ----------
    image : ndarray, dask.array.Array or zarr.Array
        (H, W), (C, H, W) or (H, W, C), any integer or float dtype; the model's
        input contract normalises it. A zarr array is read window by window
        inside the tasks; a Dask array through its own chunks.
    model : Model or str
        A :class:`hirestile.model.Model`, or a built-in name / model file path
        (then each worker loads it itself and no weights travel in the graph).
    output : {"logits", "probabilities", "labels"}
        float32 (K, H', W') logits; float32 (K, H', W') softmax over classes
        (sigmoid when K == 1); or (H', W') argmax labels (uint8; logit > 0 when K == 1).
    chunks : int, (int, int) or (tuple, tuple), optional
        Output block size (rows, cols) on the output grid, or explicit block
        sizes per axis as in Dask. One task per block. When you store the
        result into a zarr array, give its shard shape (its chunk shape when
        unsharded) so each task writes whole shards. Default: 1024 x 1024 (less
        for models that would need more than 1 GiB per block), or one block for
        a model that cannot run tiled.
    axes : {"HW", "CHW", "HWC"}, optional
        Layout of ``image``; inferred from the model's channel count when omitted.
    nan_fill : float, optional
        Value standing in for NaN/Inf input pixels (refused otherwise).
    numba_threads : int, optional
        Numba threads per task (see the module docstring for the default).

    Returns
    -------
    ndarray or dask.array.Array
        (K, H', W') for logits and probabilities, (H', W') for labels, on the
        model's output grid (H' x W' = H x W for size-preserving networks).

    Raises
    ------
    InputError
        Wrong dimensionality, channel count, dtype, or an image too small for the model.
    NotTileableError
        The model holds a whole-image op and more than one block was asked for.

    Examples
    --------
    >>> import numpy as np, hirestile
    >>> from hirestile.models.unet import unet
    >>> m = unet(in_channels=1, classes=2, base=4, depth=2)
    >>> x = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    >>> labels = hirestile.segment(x, m, output="labels", chunks=16)
    >>> labels.shape, labels.dtype
    ((40, 50), dtype('uint8'))
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if numba_threads is not None and int(numba_threads) < 1:
        raise ValueError(f"numba_threads must be positive, got {numba_threads}")
    m = api.as_model(model)
    kind, src = _source_kind(image)
    if kind == "dask" and any(np.isnan(c) for cs in src.chunks for c in cs):
        raise InputError("the Dask array's shape or chunk sizes are unknown; call x.compute_chunk_sizes() first")
    layout = _layout(tuple(src.shape), axes, m.contract.channels)
    dtype = np.dtype(src.dtype)
    if dtype.kind not in "iuf":
        raise InputError(f"image dtype {dtype} is not supported; give integer or floating-point pixels")
    hw = (int(src.shape[layout.index("Y")]), int(src.shape[layout.index("X")]))
    if 0 in hw:
        raise InputError(f"image is empty: shape {tuple(src.shape)}")
    rep = api.analyze(m, hw)
    k, oh, ow = rep.output_shape
    rows, cols = _out_chunks(rep, chunks)
    if not rep.tileable and (len(rows) > 1 or len(cols) > 1):
        rep.check_tileable()
    job = Job(model=model if isinstance(model, str) else m, token=_model_token(model, m), image_hw=hw,
              layout=layout, output=output, nan_fill=nan_fill, numba_threads=numba_threads)
    _remember(job, m, rep)
    reads = _read_windows(rep, rows, cols)
    out_dtype = _out_dtype(output, k)
    if kind == "numpy":
        return _run_numpy(job, src, rep, rows, cols, reads, out_dtype)
    return _lazy(job, kind, src, rep, rows, cols, reads, out_dtype)


def postprocess(logits: np.ndarray, output: str) -> np.ndarray:
    """Map (K, h, w) float32 logits to ``output``, pointwise per pixel.

    ``logits`` unchanged; ``probabilities``: ``e = exp(l - max_k l); e / sum_k e``
    in float32 (``1 / (1 + exp(-l))`` when K == 1); ``labels``: ``argmax_k l``
    (``l > 0`` when K == 1) as uint8 (uint16 past 256 classes).

    Examples
    --------
    >>> p = postprocess(np.array([[[0.0]], [[1.0]]], np.float32), "probabilities")
    >>> p.dtype, round(float(p[1, 0, 0]), 4)
    (dtype('float32'), 0.7311)
    """
    if output == "logits":
        return logits
    k = logits.shape[0]
    if output == "probabilities":
        if k == 1:
            return np.float32(1) / (np.float32(1) + np.exp(-logits))
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        e /= e.sum(axis=0, keepdims=True)
        return e
    if output == "labels":
        lab = logits[0] > 0 if k == 1 else np.argmax(logits, axis=0)
        return lab.astype(_out_dtype("labels", k))
    raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def _out_dtype(output: str, k: int) -> np.dtype:
    if output == "labels":
        return np.dtype(np.uint8 if k <= 256 else np.uint16)
    return np.dtype(np.float32)


# **** the job every task of one call shares ****
@dataclass(frozen=True)
class Job:
    """What all tasks of one :func:`segment` call share: one key in the graph.

    ``model`` is a Model, or a name / path each worker loads; ``token`` identifies
    it for the per-worker cache; ``layout`` names the stored axes (letters C, Y, X).
    """

    model: Any
    token: str
    image_hw: tuple[int, int]
    layout: str
    output: str
    nan_fill: float | None = None
    numba_threads: int | None = None


def _model_token(source: Any, m: Model) -> str:
    from hirestile.scheduler import model_fingerprint
    if isinstance(source, str):
        try:
            st = os.stat(source)
            return f"file:{os.path.abspath(source)}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return f"name:{source}"
    return "weights:" + model_fingerprint(m)


_CACHE: OrderedDict[tuple[str, tuple[int, int]], tuple[Model, Report]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
_STATS: dict[str, Any] = {"tasks": 0, "numba_threads": set()}


def _remember(job: Job, model: Model, rep: Report) -> None:
    with _CACHE_LOCK:
        _CACHE[(job.token, job.image_hw)] = (model, rep)
        _CACHE.move_to_end((job.token, job.image_hw))
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _prepared(job: Job) -> tuple[Model, Report]:
    """The model and its report for this job, made once per process (worker)."""
    key = (job.token, job.image_hw)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        model = api.as_model(job.model)
        hit = (model, api.analyze(model, job.image_hw))
        _CACHE[key] = hit
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return hit


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


def _run_logits(job: Job, raw: np.ndarray, read: Region, out_region: Region, *, where: str = "image",
                hint: str = "pass nan_fill=VALUE to stand in for NaN/Inf") -> np.ndarray:
    """The executor on one read window: raw (C, h, w) stored pixels -> (K, h', w') logits; a
    NaN/Inf error names ``where`` and ``hint`` (:func:`~hirestile.contract.normalize_window`)."""
    import numba

    model, rep = _prepared(job)
    window = normalize_window(raw, read, model.contract, job.nan_fill, where=where, hint=hint)
    del raw
    threads = _task_threads(job.numba_threads)
    old = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(min(threads, int(numba.config.NUMBA_NUM_THREADS)))
    try:
        logits = executor.run_region(rep, window, (read[0][0], read[1][0]), out_region)
        _STATS["numba_threads"].add(numba.get_num_threads())
    finally:
        numba.set_num_threads(old)
    _STATS["tasks"] += 1
    return logits


# **** sources, layout and blocks ****
def _source_kind(image: Any) -> tuple[str, Any]:
    from hirestile.io import InputImage
    if isinstance(image, InputImage):
        return "image", image
    mod = type(image).__module__.split(".")[0]
    if mod == "dask":
        import dask.array as da
        if isinstance(image, da.Array):
            z = _from_zarr_source(image)
            return ("zarr", z) if z is not None else ("dask", image)
    if mod == "zarr":
        import zarr
        if isinstance(image, zarr.Array):
            return "zarr", image
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    return "numpy", np.asarray(image)


def _from_zarr_source(x: Any) -> Any:
    """The zarr array behind ``da.from_zarr(...)`` (unsliced), else None: such input is then
    read window by window inside the tasks, as a zarr array would be."""
    import zarr
    layers = x.dask.layers
    orig = layers.get(f"original-{x.name}")
    if orig is None or len(layers) != 2:
        return None
    values = list(dict(orig).values())
    z = getattr(values[0], "value", values[0]) if len(values) == 1 else None
    if isinstance(z, zarr.Array) and tuple(z.shape) == tuple(x.shape) and np.dtype(z.dtype) == x.dtype:
        return z
    return None


def _layout(shape: tuple[int, ...], axes: str | None, channels: int) -> str:
    """Stored layout letters (C, Y, X) of an image of ``shape`` for a ``channels``-channel model."""
    if axes is not None:
        lay = _AXES.get(axes.upper())
        if lay is None or len(lay) != len(shape):
            raise InputError(f"axes {axes!r} does not fit an image of shape {shape}; use 'HW' for 2D, "
                             "'CHW' or 'HWC' for 3D")
    elif len(shape) == 2:
        lay = "YX"
    elif len(shape) == 3:
        first, last = shape[0] == channels, shape[2] == channels
        if first == last:
            what = "is ambiguous" if first else f"has no axis of {channels} channel(s)"
            raise InputError(f"image shape {shape} {what} for a {channels}-channel model; "
                             "pass axes='CHW' or axes='HWC'")
        lay = "CYX" if first else "YXC"
    else:
        raise InputError(f"image must be (H, W), (C, H, W) or (H, W, C), got shape {shape}")
    c = shape[lay.index("C")] if "C" in lay else 1
    if c != channels:
        raise InputError(f"the model takes {channels} channel(s), the image has {c} (shape {shape}, "
                         f"axes {lay.replace('Y', 'H').replace('X', 'W')})")
    return lay


def _to_chw(block: np.ndarray, layout: str) -> np.ndarray:
    if "C" not in layout:
        return block[None]
    return block.transpose([layout.index(r) for r in "CYX"])


def _out_chunks(rep: Report, chunks: Any) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Output blocks along rows and columns as lists of (start, stop)."""
    _, oh, ow = rep.output_shape
    if chunks is None:
        if not rep.tileable:
            chunks = (oh, ow)
        else:
            t = DEFAULT_BLOCK
            while t > 256 and rep.tile_memory((min(t, oh), min(t, ow))) > BLOCK_MEMORY:
                t //= 2
            chunks = (t, t)
    if isinstance(chunks, (int, np.integer)):
        chunks = (chunks, chunks)
    if len(chunks) != 2:
        raise ValueError(f"chunks must be an int, (rows, cols) or two tuples of block sizes, got {chunks!r}")
    res = []
    for c, n in zip(chunks, (oh, ow)):
        if isinstance(c, (int, np.integer)):
            if c < 1:
                raise ValueError(f"chunks must be positive, got {chunks!r}")
            sizes = [min(int(c), n - s) for s in range(0, n, int(c))]
        else:
            sizes = [int(v) for v in c]
            if sum(sizes) != n or min(sizes) < 1:
                raise ValueError(f"block sizes {tuple(sizes)} do not add up to the output's {n}")
        starts = np.cumsum([0] + sizes)
        res.append([(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])])
    return res[0], res[1]


def _read_windows(rep: Report, rows: list[tuple[int, int]],
                  cols: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Clipped input rows of each row block and input cols of each column block.

    Region rules act on each axis alone, so a block's window is (rows of its row
    block over the full width) x (cols of its column block over the full height):
    one analyzer call per row and per column instead of one per block. Over the
    full width every branch of the network is live, so these windows contain the
    per-block ones (equal for ordinary networks); ``run_region`` checks coverage.
    """
    _, oh, ow = rep.output_shape
    h, w = rep.image_shape

    def clip(iv: tuple[int, int], n: int) -> tuple[int, int]:
        lo = min(max(iv[0], 0), n)
        return (lo, max(min(iv[1], n), lo))

    rr = [clip(rep.input_window((r, (0, ow)), aligned=True)[0], h) for r in rows]
    cc = [clip(rep.input_window(((0, oh), c), aligned=True)[1], w) for c in cols]
    return rr, cc


# **** NumPy: run here, block by block ****
def _run_numpy(job: Job, src: np.ndarray, rep: Report, rows, cols, reads, out_dtype) -> np.ndarray:
    k, oh, ow = rep.output_shape
    out = np.empty((oh, ow) if job.output == "labels" else (k, oh, ow), out_dtype)
    for (oy, ry) in zip(rows, reads[0]):
        for (ox, rx) in zip(cols, reads[1]):
            index = tuple(slice(*ry) if r == "Y" else slice(*rx) if r == "X" else slice(None) for r in job.layout)
            raw = _to_chw(src[index], job.layout)
            logits = _run_logits(job, raw, (ry, rx), (oy, ox))
            out[(..., slice(*oy), slice(*ox))] = postprocess(logits, job.output)
    return out


# **** Dask: one task per output block ****
def _zarr_block(job: Job, img: Any, read: Region, out_region: Region) -> np.ndarray:
    """Task: read the window from the zarr array (an InputImage), run, postprocess."""
    raw = img.read(*read)
    return postprocess(_run_logits(job, raw, read, out_region), job.output)


def _chunks_block(job: Job, parts: list[np.ndarray], starts: list[tuple[int, ...]], read: Region,
                  out_region: Region) -> np.ndarray:
    """Task: copy the window out of the source chunks it overlaps (``starts``: their global
    corners, stored axis order), run, postprocess."""
    lo = [read[0][0] if r == "Y" else read[1][0] if r == "X" else 0 for r in job.layout]
    hi = [read[0][1] if r == "Y" else read[1][1] if r == "X" else None for r in job.layout]
    ci = job.layout.find("C")
    if ci >= 0:
        hi[ci] = max(s[ci] + p.shape[ci] for p, s in zip(parts, starts))
    buf = np.empty([b - a for a, b in zip(lo, hi)], parts[0].dtype)
    for p, s in zip(parts, starts):
        a = [max(lo[d], s[d]) for d in range(p.ndim)]
        b = [min(hi[d], s[d] + p.shape[d]) for d in range(p.ndim)]
        if any(x >= y for x, y in zip(a, b)):
            continue
        buf[tuple(slice(x - lo[d], y - lo[d]) for d, (x, y) in enumerate(zip(a, b)))] = \
            p[tuple(slice(x - s[d], y - s[d]) for d, (x, y) in enumerate(zip(a, b)))]
    return postprocess(_run_logits(job, _to_chw(buf, job.layout), read, out_region), job.output)


def _lazy(job: Job, kind: str, src: Any, rep: Report, rows, cols, reads, out_dtype) -> Any:
    import dask.array as da
    from dask._task_spec import DataNode, List, Task, TaskRef
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    from hirestile.io import InputImage

    k = rep.output_shape[0]
    lead = () if job.output == "labels" else (0,)
    if kind == "dask":
        src_id: Any = src.name
    elif kind == "zarr":
        src_id = (str(src.store_path), tuple(src.shape), str(src.dtype))
        src = InputImage(path=str(src.store_path), array=src, layout=job.layout, format="zarr")
    else:  # an InputImage from hirestile.io.open_image
        src_id = (os.path.abspath(src.path), src.level, src.layout, tuple(src.array.shape))
        kind = "zarr"
    token = tokenize(job.token, job.image_hw, job.layout, job.output, job.nan_fill, job.numba_threads,
                     src_id, rows, cols)
    name = f"hirestile-segment-{token}"
    job_key = f"hirestile-job-{token}"
    dsk: dict[Any, Any] = {job_key: DataNode(job_key, job)}
    job_ref = TaskRef(job_key)
    if kind == "zarr":
        src_key = f"hirestile-source-{token}"
        dsk[src_key] = DataNode(src_key, src)
        src_ref = TaskRef(src_key)
        for i, (oy, ry) in enumerate(zip(rows, reads[0])):
            for j, (ox, rx) in enumerate(zip(cols, reads[1])):
                key = (name, *lead, i, j)
                dsk[key] = Task(key, _zarr_block, job_ref, src_ref, (ry, rx), (oy, ox))
        graph = HighLevelGraph({name: MaterializedLayer(dsk)}, {name: set()})
    else:
        # per axis of the source, the chunks each read interval overlaps
        bounds = [np.cumsum((0,) + tuple(int(c) for c in cs)) for cs in src.chunks]

        def overlap(axis: int, iv: tuple[int, int]) -> range:
            b = bounds[axis]
            if iv[1] <= iv[0]:
                return range(0)
            return range(int(np.searchsorted(b, iv[0], "right")) - 1, int(np.searchsorted(b, iv[1], "left")))

        yi, xi, ci = job.layout.index("Y"), job.layout.index("X"), job.layout.find("C")
        row_chunks = [overlap(yi, r) for r in reads[0]]
        col_chunks = [overlap(xi, c) for c in reads[1]]
        chan_chunks = range(len(src.chunks[ci])) if ci >= 0 else range(1)
        for i, (oy, ry) in enumerate(zip(rows, reads[0])):
            for j, (ox, rx) in enumerate(zip(cols, reads[1])):
                refs, starts = [], []
                for a in row_chunks[i]:
                    for b in col_chunks[j]:
                        for c in chan_chunks:
                            idx = [0] * len(job.layout)
                            idx[yi], idx[xi] = a, b
                            if ci >= 0:
                                idx[ci] = c
                            refs.append(TaskRef((src.name, *idx)))
                            starts.append(tuple(int(bounds[d][idx[d]]) for d in range(len(idx))))
                key = (name, *lead, i, j)
                dsk[key] = Task(key, _chunks_block, job_ref, List(*refs), starts, (ry, rx), (oy, ox))
        graph = HighLevelGraph.from_collections(name, MaterializedLayer(dsk), dependencies=[src])
    chunks = (tuple(b - a for a, b in rows), tuple(b - a for a, b in cols))
    if job.output != "labels":
        chunks = ((k,),) + chunks
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), out_dtype), dtype=out_dtype)


# **** workers: what they report ****
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


# **** clusters: the CLI's --scheduler / --workers ****
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


def _open_source(source: tuple[str, int, str, int]) -> Any:
    from hirestile.io import open_image
    with _CACHE_LOCK:
        img = _IMAGES.get(source)
        if img is None:
            path, level, axes, channels = source
            img = _IMAGES[source] = open_image(path, level=level, axes=axes, channels=channels)
            while len(_IMAGES) > _CACHE_SIZE:
                _IMAGES.popitem(last=False)[1].close()
        return img


def _cluster_tile(cj: _ClusterJob, tile: Any) -> tuple[int, float, float, float]:
    """Task: read, compute and durably write one scheduler tile (whole shards).

    Returns (tile index, read s, compute s, write s); the driver marks it done.
    """
    from hirestile.scheduler import NAN_HINT, store_tile

    t0 = time.perf_counter()
    img = _open_source(cj.source)
    raw = img.read(*tile.read)
    t1 = time.perf_counter()
    logits = _run_logits(cj.job, raw, tile.read, tile.out, where=f"{img.path}:", hint=NAN_HINT)
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


def _stream_tiles(img: Any, model: Any, rep: Report, arr: Any, todo: list[Any], donelog: Any, stats: Any, *,
                  kind: str, nan_fill: float | None, progress: bool | None, total: int, client: Any,
                  say: Callable[[str], None]) -> None:
    """:func:`cluster_tiles`' runner (``hirestile.scheduler.TileRunner``): one task per tile."""
    import signal

    from dask._task_spec import DataNode, Task, TaskRef
    from distributed import as_completed
    from tqdm import tqdm

    m = api.as_model(model)
    job = Job(model=m, token=_model_token(m, m), image_hw=(img.height, img.width), layout="", output=kind,
              nan_fill=nan_fill)
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
            donelog.mark(t.blocks)
            stats.read += r
            stats.compute += c
            stats.write += w
            stats.tiles_computed += 1
            (y0, y1), (x0, x1) = t.out
            stats.out_pixels += (y1 - y0) * (x1 - x0)
            stats.in_pixels_read += (t.read[0][1] - t.read[0][0]) * (t.read[1][1] - t.read[1][0])
            bar.set_postfix_str(f"{stats.out_pixels / 1e6 / (time.perf_counter() - t0):.2f} MP/s", refresh=False)
            bar.update(1)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

