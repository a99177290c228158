"""Whole-image ops on HWC float32 arrays: global average pooling, instance and
group normalisation.

These make a network non-tileable (docs/architecture.md, section 2) and only ever run on
the full frame, but they are still deterministic: statistics are accumulated
in float64, first per row (rows in parallel), then over rows in order, so the
result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import as_f32, out_array

__all__ = ["global_avg_pool", "instance_norm", "group_norm"]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _channel_sums(x, mean, square):
    """Per-channel sum over (h, w) in float64 of ``x``, or with ``square`` of
    ``(x - mean[c])**2``; rows in parallel, then the row sums in order."""
    h, w, c = x.shape
    part = np.zeros((h, c), dtype=np.float64)
    for i in prange(h):
        acc = part[i]
        for j in range(w):
            src = x[i, j]
            if square:
                for ch in range(c):
                    d = np.float64(src[ch]) - mean[ch]
                    acc[ch] += d * d
            else:
                for ch in range(c):
                    acc[ch] += src[ch]
    total = np.zeros(c, dtype=np.float64)
    for i in range(h):
        for ch in range(c):
            total[ch] += part[i, ch]
    return total


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _normalize(x, mean, alpha, beta, out):
    """out = (x - mean[c]) * alpha[c] + beta[c], in float64, rounded once."""
    h, w, c = x.shape
    for i in prange(h):
        for j in range(w):
            src = x[i, j]
            dst = out[i, j]
            for ch in range(c):
                dst[ch] = np.float32((np.float64(src[ch]) - mean[ch]) * alpha[ch] + beta[ch])
    return out


def global_avg_pool(x):
    """Mean over height and width: ``(h, w, C) -> (1, 1, C)`` float32.

    Examples
    --------
    >>> global_avg_pool(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    array([[[3., 4.]]], dtype=float32)
    """
    x = as_f32(x, ndim=3)
    h, w, c = x.shape
    if h * w == 0:
        raise ValueError("global_avg_pool of an empty image")
    return (_channel_sums(x, np.zeros(c), False) / (h * w)).astype(np.float32).reshape(1, 1, c)


def _param(v, c, name):
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size == 1:
        v = np.full(c, v[0])
    if v.size != c:
        raise ValueError(f"{name} must have {c} entries, got {v.size}")
    return v


def _group_norm(x, groups, scale, bias, eps, out):
    x = as_f32(x, ndim=3)
    h, w, c = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"{c} channels cannot be split into {groups} groups")
    scale = _param(scale, c, "scale")
    bias = _param(bias, c, "bias")
    out = out_array(out, x.shape)
    if x.size == 0:
        return out
    cg = c // groups
    n = h * w * cg
    mean = _channel_sums(x, np.zeros(c), False).reshape(groups, cg).sum(axis=1) / n   # per group, in order
    mean_c = np.repeat(mean, cg)
    var = _channel_sums(x, mean_c, True).reshape(groups, cg).sum(axis=1) / n
    inv = 1.0 / np.sqrt(var + float(eps))
    alpha = np.repeat(inv, cg) * scale
    return _normalize(x, mean_c, alpha, bias, out)


def instance_norm(x, scale, bias, eps, out=None):
    """Instance normalisation (PyTorch InstanceNorm2d / ONNX InstanceNormalization).

    Per channel: ``(x - mean) / sqrt(var + eps) * scale[c] + bias[c]`` with the
    biased variance over (h, w); statistics and the affine map in float64.

    Examples
    --------
    >>> x = np.array([1, 3], np.float32).reshape(1, 2, 1)
    >>> instance_norm(x, np.ones(1), np.zeros(1), 0.0)[..., 0]
    array([[-1.,  1.]], dtype=float32)
    """
    x = as_f32(x, ndim=3)
    return _group_norm(x, x.shape[2], scale, bias, eps, out)


def group_norm(x, groups, scale, bias, eps, out=None):
    """Group normalisation (PyTorch GroupNorm / ONNX GroupNormalization opset 21).

    Channels split into ``groups`` consecutive groups; mean and biased variance
    over (h, w, channels of the group); then per-channel ``scale`` and ``bias``.

    Examples
    --------
    >>> x = np.array([1, 3, 5, 7], np.float32).reshape(1, 1, 4)
    >>> group_norm(x, 2, np.ones(4), np.zeros(4), 0.0)[0, 0]
    array([-1.,  1., -1.,  1.], dtype=float32)
    """
    return _group_norm(x, int(groups), scale, bias, eps, out)
