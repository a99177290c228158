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


def postprocess(logits: np.ndarray, kind: str) -> np.ndarray:
    """Map (K, h, w) float32 logits to ``kind`` (see the module table), pointwise per pixel."""
    dtype = output_dtype(kind, logits.shape[0])
    if kind == "logits":
        return np.ascontiguousarray(logits, np.float32)
    if kind == "labels":
        lab = logits[0] > 0 if logits.shape[0] == 1 else np.argmax(logits, axis=0)
        return lab.astype(dtype)
    if logits.shape[0] == 1:
        return (np.float32(1) / (np.float32(1) + np.exp(-logits))).astype(dtype)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    e /= e.sum(axis=0, keepdims=True)
    return e.astype(dtype)


__all__ = ["OUTPUT_KINDS", "MAX_CLASSES", "output_dtype", "output_shape", "postprocess"]
