"""Plain NumPy references for what hirestile stores: output kinds and pyramid levels.

Written from the documented rules (README "Command line", the kind table of
hirestile.outputs, the pyramid metadata of hirestile.ome), never with hirestile's
own postprocessing or downsampling, so the tests that use them can catch those.
tests/ is on pytest's pythonpath (see pyproject), like clihelp.py.
"""
from __future__ import annotations

import numpy as np

#: the stored dtype of each output kind, by number of classes K -- the same in the
#: CLI, the scheduler and the Dask API: probabilities float16 (computed in float32),
#: logits float32, labels uint8 up to 256 classes and uint16 beyond
STORED_DTYPE = {
    "probabilities": lambda k: np.float16,
    "logits": lambda k: np.float32,
    "labels": lambda k: np.uint8 if k <= 256 else np.uint16,
}


def stored_dtype(kind: str, classes: int) -> np.dtype:
    return np.dtype(STORED_DTYPE[kind](classes))


def expected_output(logits: np.ndarray, kind: str) -> np.ndarray:
    """(K, H, W) float32 logits as the stored ``kind``: logits unchanged; probabilities
    softmax over classes in float32 (exp(l - max_k l) / sum_k exp(...); sigmoid when
    K == 1); labels the argmax over classes (first maximum; l > 0 when K == 1)."""
    lg = np.asarray(logits)
    assert lg.dtype == np.float32 and lg.ndim == 3, (lg.dtype, lg.shape)
    k = lg.shape[0]
    if kind == "logits":
        out = lg
    elif kind == "probabilities":
        if k == 1:
            out = np.float32(1) / (np.float32(1) + np.exp(-lg))
        else:
            e = np.exp(lg - lg.max(axis=0, keepdims=True))
            out = e / e.sum(axis=0, keepdims=True)
        assert out.dtype == np.float32
    elif kind == "labels":
        out = lg[0] > 0 if k == 1 else lg.argmax(axis=0)
    else:
        raise ValueError(kind)
    return out.astype(stored_dtype(kind, k))


def next_level(level: np.ndarray, kind: str) -> np.ndarray:
    """The pyramid level after ``level`` (..., H, W): ceil(H/2) x ceil(W/2).

    Labels take the nearest sample, pixel (2i, 2j) (their level metadata has a scale
    of 2 and no translation). Probabilities and logits take the mean of each 2 x 2
    block (translated by half a pixel), over the pixels of the block inside the image
    at an odd edge; computed in float64, rounded once to the stored dtype.
    """
    if kind == "labels":
        return level[..., ::2, ::2].copy()
    h, w = level.shape[-2:]
    x = np.full(level.shape[:-2] + (h + h % 2, w + w % 2), np.nan)
    x[..., :h, :w] = level
    blocks = np.stack([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]])
    return np.nanmean(blocks, axis=0).astype(level.dtype)


def assert_next_level(got: np.ndarray, level: np.ndarray, kind: str) -> None:
    """``got`` is :func:`next_level` of ``level``: same shape and dtype; labels exact;
    means within one unit in the last place of the stored dtype plus float32 rounding
    of the sum (a writer may add the four values in float32 before rounding once more)."""
    want = next_level(level, kind)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if kind == "labels":
        np.testing.assert_array_equal(got, want)
        return
    absmean = next_level(np.abs(level.astype(np.float64)), kind)          # per output pixel
    tol = np.abs(np.spacing(want)).astype(np.float64) + 4 * np.finfo(np.float32).eps * absmean
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert (err <= tol).all(), f"{int((err > tol).sum())} pixels off, worst {err.max():.3g}"
