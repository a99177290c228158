"""Dask front end: ``hirestile.segment``, array in, lazy array out; and the object pass on a
class map (``hirestile.instances``, ``hirestile.measure``, see :func:`instances`).

Layer 6 of docs/architecture.md, beside the Python API, the CLI and the cluster
runner (:mod:`hirestile.cluster`). :func:`segment`: NumPy in, NumPy out; Dask or
zarr in, a lazy Dask array out (dask-image style: the halo is hirestile's
business, never the user's).

Graph shape
-----------
One task per output block, never ``map_overlap`` (about 15 tasks per block). The
blocks are :mod:`hirestile.tiling`'s tiles; a block's task reads its own *read
window* (the analyzer's input window for the block, clipped to the image) and
runs the executor on it (:func:`hirestile.worker.run_tile`):

* zarr source: the task reads the window straight from the zarr array, which is
  one key of the graph (zarr arrays pickle by store path): 1 task per block;
* dask source: the task depends on the source chunks its window overlaps and
  copies the window out of them: 1 task per block plus the source's own tasks.

What every task shares (model, image size, output kind) is one more key
(:class:`hirestile.worker.Job`); see :mod:`hirestile.worker` for the per-worker
model cache and thread counts.

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

import os
from typing import Any, Sequence

import numpy as np

import hirestile  # noqa: F401  (the doctest above uses it)
from hirestile.errors import InputError
from hirestile.io import infer_axes
from hirestile.loading import as_model
from hirestile.model import Model
from hirestile.outputs import OUTPUT_KINDS, output_dtype, output_shape, postprocess
from hirestile.tiling import Interval, Tile, cuts, make_tiles, sizes_to_cuts
from hirestile.worker import Job, model_token, remember, run_tile

__all__ = ["segment", "instances", "measure"]


# **** public API ****
def segment(image: Any, model: Model | str, *, output: str = "logits",
            chunks: int | Sequence[int] | Sequence[Sequence[int]] | None = None, axes: str | None = None,
            nan_fill: float | None = None, numba_threads: int | None = None, mask: Any = None,
            precision: str = "fp32") -> Any:
    """Segment an image: NumPy in -> NumPy out, Dask or zarr in -> lazy Dask array out.

    The result equals hirestile's full-frame output bit for bit (logits), and
    ``probabilities`` / ``labels`` are computed pointwise from those logits
    (:func:`hirestile.outputs.postprocess`), whatever ``chunks`` is.

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
        float32 (K, H', W') logits; float16 (K, H', W') softmax over classes
        (sigmoid when K == 1); or (H', W') argmax labels (uint8 up to 256 classes,
        else uint16; logit > 0 when K == 1). The same values and dtypes as
        ``hirestile segment`` writes (:mod:`hirestile.outputs`).
    chunks : int, (int, int) or (tuple, tuple), optional
        Output block size (rows, cols) on the output grid, or explicit block
        sizes per axis as in Dask. One task per block. When you store the
        result into a zarr array, give its shard shape (its chunk shape when
        unsharded) so each task writes whole shards. Default: the tile
        ``hirestile segment`` would choose (:func:`hirestile.scheduler.choose_tile`)
        within the default memory budget shared by the tasks that run at once, or
        one block for a model that cannot run tiled.
    axes : {"HW", "CHW", "HWC"}, optional
        Layout of ``image``; inferred from the model's channel count when omitted.
    nan_fill : float, optional
        Value standing in for NaN/Inf input pixels (refused otherwise).
    numba_threads : int, optional
        Numba threads per task (see the module docstring for the default).
    precision : {"fp32", "bf16"}
        The executor's arithmetic (:func:`hirestile.predict`): bf16 blocks equal bf16
        full-frame bit for bit too.
    mask : array, path or hirestile.masks.Mask, optional
        A foreground mask at any resolution with the image's proportions (non-zero is
        foreground; ``"auto"`` for an image opened with ``hirestile.io.open_image``): blocks
        that touch no foreground cell are 0 and never computed (no task reads the image for
        them); the others are exactly what they are without a mask (:mod:`hirestile.masks`).

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
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
    if numba_threads is not None and int(numba_threads) < 1:
        raise ValueError(f"numba_threads must be positive, got {numba_threads}")
    m = as_model(model)
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
    rep = m.analyze(hw, precision)
    rows, cols = _out_cuts(rep, chunks, m.contract.channels)
    if not rep.tileable and (len(rows) > 1 or len(cols) > 1):
        rep.check_tileable()
    job = Job(model=model if isinstance(model, str) else m, token=model_token(model, m), image_hw=hw,
              layout=layout, output=output, nan_fill=nan_fill, numba_threads=numba_threads, precision=precision)
    remember(job, m, rep)
    tiles = make_tiles(rep, rows, cols)
    off: frozenset[int] = frozenset()
    if mask is not None:
        from hirestile import masks

        mk = masks.make_mask(mask, src) if kind == "image" else masks.make_mask_for(mask, hw)
        off = frozenset(t.index for t in tiles if not mk.covers(t.write, rep.output_shape[1:]))
        job_mask = mk.identity()
    else:
        job_mask = None
    if kind == "numpy":
        return _run_numpy(job, src, rep, tiles, off)
    return _lazy(job, kind, src, rep, rows, cols, tiles, off, job_mask)


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
    """Stored layout letters (C, Y, X) of an image of ``shape`` for a ``channels``-channel model
    (:func:`hirestile.io.infer_axes`, the one axis rule), its channel count checked."""
    lay = infer_axes(shape, axes=axes, channels=channels, where="image: ")
    c = shape[lay.index("C")] if "C" in lay else 1
    if c != channels:
        raise InputError(f"the model takes {channels} channel(s), the image has {c} (shape {shape}, "
                         f"axes {lay.replace('Y', 'H').replace('X', 'W')}); pass axes= if it is read wrong")
    return lay


def _to_chw(block: np.ndarray, layout: str) -> np.ndarray:
    if "C" not in layout:
        return block[None]
    return block.transpose([layout.index(r) for r in "CYX"])


def _concurrent_tasks() -> int:
    """Tasks that run at once under the configured scheduler on this machine."""
    import dask
    from dask.system import CPU_COUNT
    return max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))


def _out_cuts(rep: Any, chunks: Any, channels: int = 1) -> tuple[tuple[Interval, ...], tuple[Interval, ...]]:
    """Output blocks along rows and columns as (start, stop) cuts."""
    from hirestile.scheduler import PROCESS_BASELINE, choose_tile, default_memory

    _, oh, ow = rep.output_shape
    if chunks is None and not rep.tileable:
        chunks = (oh, ow)
    elif chunks is None:          # the segment command's rule, its budget shared by the tasks that run at once
        share = PROCESS_BASELINE + (default_memory() - PROCESS_BASELINE) // _concurrent_tasks()
        chunks = choose_tile(rep, None, stream=False, memory=share, channels=channels)
    return _chunk_cuts(chunks, (oh, ow))


def _chunk_cuts(chunks: Any, hw: tuple[int, int]) -> tuple[tuple[Interval, ...], tuple[Interval, ...]]:
    """Blocks of an (H, W) grid along rows and columns as (start, stop) cuts: ``chunks`` an int,
    (rows, cols) or two tuples of block sizes, as in Dask."""
    oh, ow = hw
    if isinstance(chunks, (int, np.integer)):
        chunks = (chunks, chunks)
    if len(chunks) != 2:
        raise ValueError(f"chunks must be an int, (rows, cols) or two tuples of block sizes, got {chunks!r}")
    res = []
    for c, n in zip(chunks, (oh, ow)):
        if isinstance(c, (int, np.integer)):
            if c < 1:
                raise ValueError(f"chunks must be positive, got {chunks!r}")
            res.append(cuts(n, int(c)))
        else:
            sizes = [int(v) for v in c]
            if sum(sizes) != n or min(sizes) < 1:
                raise ValueError(f"block sizes {tuple(sizes)} do not add up to the output's {n}")
            res.append(sizes_to_cuts(sizes))
    return res[0], res[1]


# **** NumPy: run here, block by block ****
def _run_numpy(job: Job, src: np.ndarray, rep: Any, tiles: Sequence[Tile],
               off: frozenset[int] = frozenset()) -> np.ndarray:
    out = np.zeros(output_shape(job.output, rep.output_shape), output_dtype(job.output, rep.output_shape[0]))
    for t in tiles:
        if t.index in off:                  # off the mask: left as 0
            continue
        index = tuple(t.read.slices[0] if r == "Y" else t.read.slices[1] if r == "X" else slice(None)
                      for r in job.layout)
        out[(..., *t.write.slices)] = postprocess(run_tile(job, _to_chw(src[index], job.layout), t), job.output)
    return out


# **** Dask: one task per output block ****
def _zarr_block(job: Job, img: Any, tile: Tile) -> np.ndarray:
    """Task: read the window from the zarr array (an InputImage), run, postprocess."""
    return postprocess(run_tile(job, img.read(*tile.read), tile), job.output)


def _chunks_block(job: Job, parts: list[np.ndarray], starts: list[tuple[int, ...]], tile: Tile) -> np.ndarray:
    """Task: copy the window out of the source chunks it overlaps (``starts``: their global
    corners, stored axis order), run, postprocess."""
    read = tile.read
    lo = [read.rows[0] if r == "Y" else read.cols[0] if r == "X" else 0 for r in job.layout]
    hi = [read.rows[1] if r == "Y" else read.cols[1] if r == "X" else None for r in job.layout]
    ci = job.layout.find("C")
    if ci >= 0:
        hi[ci] = max(s[ci] + p.shape[ci] for p, s in zip(parts, starts))
    return postprocess(run_tile(job, _to_chw(_gather(parts, starts, lo, hi), job.layout), tile), job.output)


def _gather(parts: list[np.ndarray], starts: list[tuple[int, ...]], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """The box [lo, hi) (global corners) copied out of the source chunks ``parts`` that cover it
    (``starts``: their global corners)."""
    buf = np.empty([b - a for a, b in zip(lo, hi)], parts[0].dtype)
    for p, s in zip(parts, starts):
        a = [max(lo[d], s[d]) for d in range(p.ndim)]
        b = [min(hi[d], s[d] + p.shape[d]) for d in range(p.ndim)]
        if any(x >= y for x, y in zip(a, b)):
            continue
        buf[tuple(slice(x - lo[d], y - lo[d]) for d, (x, y) in enumerate(zip(a, b)))] = \
            p[tuple(slice(x - s[d], y - s[d]) for d, (x, y) in enumerate(zip(a, b)))]
    return buf


def _fill_block(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Task of a block off the mask: zeros, the output's fill."""
    return np.zeros(shape, dtype)


def _lazy(job: Job, kind: str, src: Any, rep: Any, rows: Sequence[Interval], cols: Sequence[Interval],
          tiles: Sequence[Tile], off: frozenset[int] = frozenset(), job_mask: Any = None) -> Any:
    import dask.array as da
    from dask._task_spec import DataNode, List, Task, TaskRef
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    from hirestile.io import InputImage

    k = rep.output_shape[0]
    out_dtype = output_dtype(job.output, k)
    grid = [tiles[i * len(cols):(i + 1) * len(cols)] for i in range(len(rows))]      # row-major
    lead = () if job.output == "labels" else (0,)
    if kind == "dask":
        src_id: Any = src.name
    elif kind == "zarr":
        src_id = (str(src.store_path), tuple(src.shape), str(src.dtype))
        src = InputImage(path=str(src.store_path), array=src, layout=job.layout, format="zarr")
    else:  # an InputImage from hirestile.io.open_image
        src_id = (os.path.abspath(src.path), src.level, src.layout, tuple(src.array.shape))
        kind = "zarr"
    token = tokenize(job.token, job.image_hw, job.layout, job.output, job.nan_fill, job.numba_threads, job.precision,
                     src_id, rows, cols, *((job_mask,) if job_mask else ()))
    name = f"hirestile-segment-{token}"
    job_key = f"hirestile-job-{token}"
    dsk: dict[Any, Any] = {job_key: DataNode(job_key, job)}
    job_ref = TaskRef(job_key)
    if kind == "zarr":
        src_key = f"hirestile-source-{token}"
        dsk[src_key] = DataNode(src_key, src)
        src_ref = TaskRef(src_key)
        for i, row in enumerate(grid):
            for j, t in enumerate(row):
                key = (name, *lead, i, j)
                dsk[key] = (Task(key, _fill_block, (k,) * len(lead) + t.write.shape, out_dtype) if t.index in off
                            else Task(key, _zarr_block, job_ref, src_ref, t))
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
        row_chunks = [overlap(yi, row[0].read.rows) for row in grid]
        col_chunks = [overlap(xi, t.read.cols) for t in grid[0]]
        chan_chunks = range(len(src.chunks[ci])) if ci >= 0 else range(1)
        for i, row in enumerate(grid):
            for j, t in enumerate(row):
                if t.index in off:
                    key = (name, *lead, i, j)
                    dsk[key] = Task(key, _fill_block, (k,) * len(lead) + t.write.shape, out_dtype)
                    continue
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
                dsk[key] = Task(key, _chunks_block, job_ref, List(*refs), starts, t)
        graph = HighLevelGraph.from_collections(name, MaterializedLayer(dsk), dependencies=[src])
    chunks = (tuple(b - a for a, b in rows), tuple(b - a for a, b in cols))
    if job.output != "labels":
        chunks = ((k,),) + chunks
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), out_dtype), dtype=out_dtype)



# **** objects: instance labels and measurements of a class map ****
def instances(class_map: Any, *, connectivity: int = 1, dtype: Any = None,
              chunks: int | Sequence[int] | Sequence[Sequence[int]] | None = None, table: bool = False,
              image: Any = None, probabilities: Any = None, classes: Sequence[str] | None = None) -> Any:
    """Instance labels of a class map: Dask or zarr in -> lazy Dask array out, NumPy in -> NumPy out.

    The result equals ``skimage.measure.label(class_map, connectivity=connectivity)`` on the
    full frame, pixel for pixel and number for number: objects are numbered 1..N in raster
    order of their first pixel, whatever the blocks, so it also equals
    :func:`hirestile.objects.instances` (``hirestile objects``) on the same class map. Objects
    may span any number of blocks. The graph is the object pass of :mod:`hirestile.objects`:
    one task per block labels it (per class) and keeps its border rows and columns and the
    raster index of each component's first pixel; one task joins the seams (union-find) and
    numbers the objects; one task per block relabels it to the final ids. Nothing else crosses
    blocks, so a task holds one block, but the join waits for every block: a Dask class map
    (such as ``segment(..., output="labels")``) is computed once and kept in memory until its
    blocks are relabelled. For class maps larger than memory, store it first
    (``da.to_zarr``) and pass the zarr array or path: the tasks then read their blocks from it,
    twice.

    Parameters
    ----------
    class_map : dask.array.Array, zarr.Array, ndarray or str
        (H, W) integer class ids, 0 for background (e.g. ``segment(..., output="labels")``), or
        the path of a ``hirestile segment --output labels`` output.
    connectivity : {1, 2}
        1: 4-connected (default), 2: 8-connected, as ``skimage.measure.label``. Pixels of
        different classes are never one object.
    dtype : optional
        Label dtype. Default uint32, or uint64 for images of more than 2**32 - 1 pixels (a lazy
        array's dtype is fixed before the objects are counted). A dtype too narrow for the
        objects found raises :class:`hirestile.OutputError` when computed.
    chunks : int, (int, int) or (tuple, tuple), optional
        Blocks (one task each); default the Dask array's chunks, the zarr array's shards
        (its chunks when unsharded), or 1024 x 1024 for NumPy.
    table : bool
        Also return the measurement table (:func:`measure`) from the same graph, as a
        ``dask.delayed`` pyarrow Table: the labels and the table then share every pass-1 task and
        the join (``dask.compute(labels.to_zarr(..., compute=False), table)``). ``image``,
        ``probabilities`` and ``classes`` go into that table.

    Returns
    -------
    dask.array.Array or ndarray
        (H, W) instance labels, 0 for background, chunked as the blocks; with ``table=True``
        the pair (labels, delayed table).

    Raises
    ------
    InputError
        Not an (H, W) integer class map, connectivity not 1 or 2, unknown chunk sizes.

    Examples
    --------
    >>> import numpy as np, dask.array as da, hirestile
    >>> from skimage.measure import label
    >>> cm = np.zeros((9, 11), np.uint8); cm[1:8, 1] = 1; cm[7, 1:10] = 1; cm[0:3, 6:11] = 2
    >>> lab = hirestile.instances(da.from_array(cm, chunks=4))
    >>> lab.dtype, lab.chunks[1]
    (dtype('uint32'), (4, 4, 3))
    >>> np.array_equal(lab.compute(), label(cm, connectivity=1))
    True
    """
    if not table and (image is not None or probabilities is not None or classes is not None):
        raise InputError("image / probabilities / classes are measurements: pass table=True (or call measure())")
    g = _objects_graph(class_map, connectivity, chunks, dtype=dtype, measuring=table, image=image,
                       probabilities=probabilities, classes=classes)
    labels = g.labels() if g.kind != "numpy" else g.labels().compute(scheduler="sync")
    return (labels, g.table()) if table else labels


def measure(class_map: Any, *, image: Any = None, probabilities: Any = None, connectivity: int = 1,
            chunks: int | Sequence[int] | Sequence[Sequence[int]] | None = None,
            classes: Sequence[str] | None = None, compute: bool = True) -> Any:
    """The per-object measurement table of a class map, computed block by block with Dask.

    The same columns and values as ``hirestile objects --table`` (and
    :func:`hirestile.objects.instances`' ``table``), row i for the object
    :func:`instances` labels i + 1: ``label``, ``class``, ``area``, ``centroid_y/x``,
    ``bbox_y0/x0/y1/x1`` (half-open), ``perimeter`` (edge perimeter), with ``image``
    ``intensity_{sum,mean,max,min}_<c>`` per channel, with ``probabilities``
    ``probability_mean``, and ``class_name``. Sums and extremes are merged across blocks
    exactly. (RA/Dec: use ``hirestile objects --radec`` on a FITS input.)

    Parameters
    ----------
    class_map : dask.array.Array, zarr.Array, ndarray or str
        As for :func:`instances`.
    image : ndarray, zarr array, InputImage or path, optional
        The image the class map was computed from, (H, W) or (C, H, W); each task reads its
        block of it.
    probabilities : (K, H, W) array or path of a probabilities output, optional
        Mean probability of each object's class.
    connectivity : {1, 2}
        As for :func:`instances`.
    chunks : optional
        As for :func:`instances`.
    classes : sequence of str, optional
        Class names (``class_name``); default those a labels output path records, else ``class<k>``.
    compute : bool
        False returns a ``dask.delayed`` object of the table, to compute together with other
        results (``dask.compute(labels, table)``).

    Returns
    -------
    pyarrow.Table
        One row per object (``pip install pyarrow``, or ``hirestile[objects]``).

    Examples
    --------
    >>> import numpy as np, dask.array as da, hirestile
    >>> cm = np.zeros((9, 11), np.uint8); cm[1:8, 1] = 1; cm[7, 1:10] = 1; cm[0:3, 6:11] = 2
    >>> t = hirestile.measure(da.from_array(cm, chunks=4), classes=["bg", "nucleus", "stroma"])
    >>> t.column("area").to_pylist(), t.column("class_name").to_pylist()
    ([15, 15], ['stroma', 'nucleus'])
    """
    g = _objects_graph(class_map, connectivity, chunks, measuring=True, image=image, probabilities=probabilities,
                       classes=classes)
    table = g.table()
    return table.compute(scheduler="sync" if g.kind == "numpy" else None) if compute else table


class _ObjectsGraph:
    """The object pass of one class map as Dask tasks: pass 1 per block, the join, pass 2 per block."""

    def __init__(self, kind: str, src: Any, rows: Sequence[Interval], cols: Sequence[Interval], connectivity: int,
                 dtype: np.dtype, classes: tuple[str, ...], src_id: Any, readers: Any = None,
                 channels: int = 0, reader_id: Any = None) -> None:
        from dask._task_spec import DataNode, List, Task, TaskRef
        from dask.base import tokenize

        self.kind, self.src, self.rows, self.cols = kind, src, rows, cols
        self.dtype = dtype
        H, W = int(src.shape[0]), int(src.shape[1])
        measuring = readers is not None
        self.token = tokenize("hirestile-objects", src_id, rows, cols, connectivity, measuring, reader_id)
        boxes = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
        self.boxes = boxes
        self.dsk: dict[Any, Any] = {}
        src_ref = None
        if kind != "dask":
            src_key = f"hirestile-classmap-{self.token}"
            self.dsk[src_key] = DataNode(src_key, src)
            src_ref = TaskRef(src_key)
        read_ref = None
        if measuring:
            read_key = f"hirestile-measure-inputs-{self.token}"
            self.dsk[read_key] = DataNode(read_key, readers)
            read_ref = TaskRef(read_key)
        p1 = f"hirestile-objects-pass1-{self.token}"
        bounds = [np.cumsum((0,) + tuple(b - a for a, b in iv)) for iv in (rows, cols)]
        refs = []
        for i in range(len(rows)):
            for j in range(len(cols)):
                key = (p1, i, j)
                box = boxes[i * len(cols) + j]
                if kind == "dask":                     # the block, and with measurements its 8 neighbours (halo)
                    near = [(a, b) for a in range(i - measuring, i + measuring + 1)
                            for b in range(j - measuring, j + measuring + 1)
                            if 0 <= a < len(rows) and 0 <= b < len(cols)]
                    self.dsk[key] = Task(key, _objects_pass1_parts, List(*[TaskRef((src.name, a, b)) for a, b in near]),
                                         [(int(bounds[0][a]), int(bounds[1][b])) for a, b in near], box, (H, W),
                                         connectivity, read_ref)
                else:
                    self.dsk[key] = Task(key, _objects_pass1, src_ref, box, connectivity, read_ref)
                refs.append(TaskRef(key))
        self.join_key = f"hirestile-objects-join-{self.token}"
        self.dsk[self.join_key] = Task(self.join_key, _objects_join, List(*refs), boxes, W, connectivity, channels,
                                       measuring and readers[1] is not None, measuring, classes)
        self.src_ref = src_ref

    def _graph(self, name: str, extra: dict[Any, Any]) -> Any:
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

        layer = MaterializedLayer({**self.dsk, **extra})
        if self.kind == "dask":
            return HighLevelGraph.from_collections(name, layer, dependencies=[self.src])
        return HighLevelGraph({name: layer}, {name: set()})

    def labels(self) -> Any:
        import dask.array as da
        from dask._task_spec import Task, TaskRef

        name = f"hirestile-instances-{self.token}-{self.dtype}"
        dsk: dict[Any, Any] = {}
        for i in range(len(self.rows)):
            for j in range(len(self.cols)):
                t = i * len(self.cols) + j
                key = (name, i, j)
                block = TaskRef((self.src.name, i, j)) if self.kind == "dask" else self.src_ref
                dsk[key] = Task(key, _objects_pass2, block, self.boxes[t] if self.kind != "dask" else None,
                                TaskRef(self.join_key), t, self.dtype)
        chunks = tuple(tuple(b - a for a, b in iv) for iv in (self.rows, self.cols))
        return da.Array(self._graph(name, dsk), name, chunks, meta=np.empty((0, 0), self.dtype), dtype=self.dtype)

    def table(self) -> Any:
        from dask._task_spec import Task, TaskRef
        from dask.delayed import Delayed

        name = f"hirestile-objects-table-{self.token}"
        return Delayed(name, self._graph(name, {name: Task(name, _objects_arrow, TaskRef(self.join_key))}))


def _objects_graph(class_map: Any, connectivity: int, chunks: Any, *, dtype: Any = None, measuring: bool = False,
                   image: Any = None, probabilities: Any = None,
                   classes: Sequence[str] | None = None) -> _ObjectsGraph:
    """Check the inputs (one-line errors, before any task) and build the graph."""
    from hirestile.objects import DEFAULT_TILE
    from hirestile.objects_io import open_classmap, open_image_reader, open_probabilities, source_identity

    if connectivity not in (1, 2):
        raise InputError(f"connectivity must be 1 (4-connected) or 2 (8-connected), got {connectivity}")
    names: tuple[str, ...] = ()
    if isinstance(class_map, (str, os.PathLike)):
        z, names, _ = open_classmap(class_map)
        kind, src = "zarr", z
    else:
        kind, src = _source_kind(class_map)
        if kind == "image":
            raise InputError("give the class map as an (H, W) integer array, a zarr array or a labels output path, "
                             "not an opened image")
        open_classmap(src)
    if kind == "dask" and any(np.isnan(c) for cs in src.chunks for c in cs):
        raise InputError("the Dask array's shape or chunk sizes are unknown; call x.compute_chunk_sizes() first")
    H, W = (int(v) for v in src.shape)
    if kind == "dask":
        if chunks is not None:
            src = src.rechunk(chunks)
        rows, cols = (sizes_to_cuts([int(c) for c in cs]) for cs in src.chunks)
        src_id = src.name
    else:
        if chunks is None:
            chunks = (tuple(class_map.chunks) if type(class_map).__module__.startswith("dask") else
                      (src.shards or src.chunks) if kind == "zarr" else (DEFAULT_TILE, DEFAULT_TILE))
        rows, cols = _chunk_cuts(chunks, (H, W))
        src_id = ((str(src.store_path), tuple(src.shape), str(src.dtype)) if kind == "zarr" else src)
    if dtype is None:
        label_dtype = np.dtype(np.uint32 if H * W <= np.iinfo(np.uint32).max else np.uint64)
    else:
        label_dtype = np.dtype(dtype)
        if label_dtype.kind != "u":
            raise InputError(f"label dtype must be unsigned (uint8/16/32/64), got {label_dtype}")
    readers, nch, reader_id = None, 0, None
    if measuring:
        read_img, nch = open_image_reader(image, (H, W), "image")
        prob = (open_probabilities(probabilities) if isinstance(probabilities, (str, os.PathLike))
                else probabilities)
        read_prob, _ = open_image_reader(prob, (H, W), "probabilities")
        readers = (read_img, read_prob)
        reader_id = (_identity(image, source_identity), _identity(probabilities, source_identity),
                     tuple(classes or names))
    return _ObjectsGraph(kind, src, rows, cols, connectivity, label_dtype, tuple(classes or names), src_id,
                         readers, nch, reader_id)


def _identity(x: Any, named: Any) -> Any:
    """What tells two measurement inputs apart in the graph's keys: a NumPy array's data (Dask
    tokenizes it), a zarr array's store, a Dask array's name, else its path (``named``)."""
    kind = type(x).__module__.split(".")[0]
    if isinstance(x, np.ndarray) or (kind == "dask" and hasattr(x, "name")):
        return x if isinstance(x, np.ndarray) else x.name
    if kind == "zarr":
        return (str(x.store_path), tuple(x.shape), str(x.dtype))
    return named(x)


def _objects_pass1(src: Any, box: tuple[int, int, int, int], connectivity: int, readers: Any) -> Any:
    """Task: pass 1 of one block read from a zarr / NumPy class map (with its halo when measuring)."""
    from hirestile.objects import _padded

    return _pass1(_padded(src, *box), box, int(src.shape[1]), connectivity, readers)


def _objects_pass1_parts(parts: list[np.ndarray], starts: list[tuple[int, int]], box: tuple[int, int, int, int],
                         hw: tuple[int, int], connectivity: int, readers: Any) -> Any:
    """Task: pass 1 of one block of a Dask class map, its halo copied from the neighbouring chunks."""
    from hirestile.objects import SENTINEL

    (y0, y1, x0, x1), (H, W) = box, hw
    lo, hi = (max(y0 - 1, 0), max(x0 - 1, 0)), (min(y1 + 1, H), min(x1 + 1, W))
    if readers is None:                      # labels only: the block itself, no halo needed
        lo, hi = (y0, x0), (y1, x1)
    cpad = np.full((y1 - y0 + 2, x1 - x0 + 2), SENTINEL, np.int64)
    cpad[lo[0] - y0 + 1:hi[0] - y0 + 1, lo[1] - x0 + 1:hi[1] - x0 + 1] = _gather(parts, starts, lo, hi)
    return _pass1(cpad, box, W, connectivity, readers)


def _pass1(cpad: np.ndarray, box: tuple[int, int, int, int], W: int, connectivity: int, readers: Any) -> Any:
    from hirestile.objects import summarize_tile

    y0, y1, x0, x1 = box
    read_img, read_prob = readers if readers is not None else (None, None)
    return summarize_tile(cpad, box, W, connectivity, measure=readers is not None,
                          img=read_img((y0, y1), (x0, x1)) if read_img else None,
                          prob=read_prob((y0, y1), (x0, x1)) if read_prob else None)


def _objects_join(summaries: list[Any], boxes: list[tuple[int, int, int, int]], W: int, connectivity: int,
                  channels: int, probabilities: bool, measuring: bool, classes: tuple[str, ...]) -> Any:
    """Task: the seams, the union-find and (when measuring) the table: an Objects with the id map."""
    from hirestile.objects import Objects, join

    fmap, offsets, count, table = join(summaries, boxes, W, connectivity, channels=channels,
                                       probabilities=probabilities, measure=measuring)
    res = Objects(count=count, dtype=np.dtype(np.uint64), table=table or {}, classes=classes,
                  connectivity=connectivity)
    return res, fmap, offsets


def _objects_pass2(block: Any, box: tuple[int, int, int, int] | None, joined: Any, t: int, dtype: np.dtype) -> np.ndarray:
    """Task: one block relabelled to the final ids (``box`` None: ``block`` is the Dask chunk itself)."""
    from hirestile.objects import check_label_dtype, relabel

    res, fmap, offsets = joined
    check_label_dtype(res.count, dtype)
    core = np.asarray(block if box is None else block[box[0]:box[1], box[2]:box[3]]).astype(np.int64)
    return relabel(core, res.connectivity, fmap, int(offsets[t]), dtype)


def _objects_arrow(joined: Any) -> Any:
    """Task: the table as a pyarrow Table, the columns ``hirestile objects --table`` writes."""
    from hirestile.objects_export import arrow_table

    return arrow_table(joined[0])
