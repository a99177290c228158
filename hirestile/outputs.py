"""What a run returns: logits turned into the output kind a user asked for.

One rule for the CLI, the scheduler and the Dask API alike, so the same model
and image give the same values and dtypes whichever front end ran them:

============== ======================================== =====================
kind            values                                   dtype
============== ======================================== =====================
logits          the network's output                      float32
probabilities   softmax over classes (sigmoid for K=1)   float16 (computed in float32)
labels          argmax over classes (logit > 0 for K=1)  uint8 (K <= 256), else uint16
============== ======================================== =====================

Every kind is pointwise per pixel, so tiles and the whole image agree bit for bit.

Examples
--------
>>> import numpy as np
>>> p = postprocess(np.array([[[0.0]], [[1.0]]], np.float32), "probabilities")
>>> p.dtype, round(float(p[1, 0, 0]), 3)
(dtype('float16'), 0.731)
>>> output_dtype("labels", 300)
dtype('uint16')
"""
from __future__ import annotations

import numpy as np

OUTPUT_KINDS = ("probabilities", "logits", "labels")
MAX_CLASSES = 1 << 16            # labels are uint16 at most


def output_dtype(kind: str, classes: int) -> np.dtype:
    """The stored / returned dtype of ``kind`` for a model with ``classes`` output channels."""
    if kind == "logits":
        return np.dtype(np.float32)
    if kind == "probabilities":
        return np.dtype(np.float16)
    if kind == "labels":
        return np.dtype(np.uint8 if classes <= 256 else np.uint16)
    raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")


def output_shape(kind: str, logits_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """(K, H, W) for logits and probabilities, (H, W) for labels."""
    return tuple(logits_shape[1:]) if kind == "labels" else tuple(logits_shape)


def postprocess(logits: np.ndarray, kind: str, work: dict | None = None) -> np.ndarray:
    """Map (K, h, w) float32 logits to ``kind`` (see the module table), pointwise per pixel.

    ``work``: a dict the caller keeps from call to call (one per thread); the result then lives
    in its arrays, whose pages are already touched (a fresh 25 MB array costs thousands of page
    faults), and is overwritten by the next call, and the temporaries cover
    :data:`CHUNK_PIXELS` pixels at a time (:func:`postprocess_bytes` is what it holds). The same
    NumPy operations on each pixel either way: the same bits.
    """
    dtype = output_dtype(kind, logits.shape[0])
    k, h, w = logits.shape
    if kind == "logits":
        return np.ascontiguousarray(logits, np.float32)
    res = _scratch(work, "result", (h, w) if kind == "labels" else (k, h, w), dtype)
    step = h if work is None else max(1, CHUNK_PIXELS // max(w, 1))
    for y in range(0, h, step):
        _rows(logits[:, y:y + step], kind, res[..., y:y + step, :], work)
    return res


CHUNK_PIXELS = 1 << 18           # postprocess's temporaries with ``work``: 256 Ki pixels at a time


def postprocess_bytes(kind: str, classes: int, pixels: int) -> int:
    """Bytes :func:`postprocess` holds in ``work`` for ``pixels`` output pixels: the result and
    the temporaries of one chunk."""
    if kind == "logits":
        return 0                 # the logits as they are
    chunk = min(pixels, CHUNK_PIXELS)
    temps = chunk * 8 if kind == "labels" else chunk * 4 * (classes + 2)
    return output_dtype(kind, classes).itemsize * pixels * (1 if kind == "labels" else classes) + temps


def _rows(logits: np.ndarray, kind: str, res: np.ndarray, work: dict | None) -> None:
    """:func:`postprocess` of a block of rows into ``res``."""
    k, h, w = logits.shape
    if kind == "labels":
        if k == 1:
            lab = np.greater(logits[0], 0, out=_scratch(work, "bool", (h, w), np.bool_))
        else:
            lab = np.argmax(logits, axis=0, out=_scratch(work, "index", (h, w), np.intp))
        np.copyto(res, lab, casting="unsafe")          # astype's conversion
        return
    e = _scratch(work, "e", (k, h, w), np.float32)
    if k == 1:
        np.negative(logits, out=e)
        np.exp(e, out=e)
        np.add(np.float32(1), e, out=e)
        np.divide(np.float32(1), e, out=e)
    else:
        m = np.max(logits, axis=0, keepdims=True, out=_scratch(work, "max", (1, h, w), np.float32))
        np.subtract(logits, m, out=e)
        np.exp(e, out=e)
        np.divide(e, np.sum(e, axis=0, keepdims=True, out=_scratch(work, "sum", (1, h, w), np.float32)), out=e)
    np.copyto(res, e, casting="same_kind")             # float32 -> float16 as astype rounds


def _scratch(work: dict | None, key: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """An array of ``shape`` from ``work[key]`` (grown when too small), or a new one without ``work``."""
    if work is None:
        return np.empty(shape, dtype)
    n = int(np.prod(shape))
    a = work.get(key)
    if a is None or a.dtype != np.dtype(dtype) or a.size < n:
        a = work[key] = np.empty(0, dtype)        # the old one goes first
        a = work[key] = np.empty(n, dtype)
    return a[:n].reshape(shape)


__all__ = ["OUTPUT_KINDS", "MAX_CLASSES", "CHUNK_PIXELS", "output_dtype", "output_shape", "postprocess",
           "postprocess_bytes"]
