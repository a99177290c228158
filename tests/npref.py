"""Plain NumPy references the tests share: activations, output kinds, pyramid levels.

Written from the documented rules (PyTorch / ONNX for the activations; README
"Command line", the kind table of hirestile.outputs and the pyramid metadata of
hirestile.ome for the outputs), never with hirestile's own code, so the tests that
use them can catch it. tests/ is on pytest's pythonpath (see pyproject), like clihelp.py.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf


def unary(fn: str, x: np.ndarray, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """Activation ``fn`` of hirestile's Unary op in float64, by its PyTorch / ONNX definition
    (``p0``, ``p1``: the op's alpha / beta, or min / max for clip)."""
    v = np.asarray(x, np.float64)

    def softplus(t):                          # torch: beta 1, threshold 20
        return np.where(t > 20, t, np.log1p(np.exp(np.minimum(t, 20))))

    def sigmoid(t):
        return 1 / (1 + np.exp(-t))

    with np.errstate(over="ignore"):
        return {
            "identity": lambda: v,
            "relu": lambda: np.maximum(v, 0),
            "leaky_relu": lambda: np.where(v > 0, v, p0 * v),
            "sigmoid": lambda: sigmoid(v),
            "tanh": lambda: np.tanh(v),
            "silu": lambda: v * sigmoid(v),
            "gelu": lambda: 0.5 * v * (1 + erf(v / np.sqrt(2))),
            "gelu_tanh": lambda: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))),
            "hard_sigmoid": lambda: np.clip(p0 * v + p1, 0, 1),
            "hard_swish": lambda: v * np.clip(v + 3, 0, 6) / 6,
            "clip": lambda: np.minimum(np.maximum(v, p0), p1),
            "elu": lambda: np.where(v > 0, v, p0 * np.expm1(np.minimum(v, 0))),
            "softplus": lambda: softplus(v),
            "exp": lambda: np.exp(v),
            "abs": lambda: np.abs(v),
            "neg": lambda: -v,
            "sqrt": lambda: np.sqrt(v),
            "log": lambda: np.log(v),
            "reciprocal": lambda: 1 / v,
            "mish": lambda: v * np.tanh(softplus(v)),
            "erf": lambda: erf(v),
        }[fn]()

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
