"""Max and average pooling on HWC float32 windows (valid kernels).

The caller hands an input *window* whose positions outside the feature map
already hold the pooling's padding value: ``-inf`` for max pooling, ``0`` for
average pooling. Average pooling divides each output by a divisor the caller
computes from global coordinates (see :func:`pool_divisors`), so the kernels
themselves never need to know where the window lies.

Determinism: each output element is reduced over its ``kh x kw`` window in one
fixed order (rows, then columns), whatever the window's size or origin.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["max_pool2d", "avg_pool2d", "pool_output_size", "pool_divisors"]


def _pair(v):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _out_array(out, shape, dtype=np.float32):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {out.dtype} {out.shape}"
        )
    return out


def _check_input(x):
    if x.ndim != 3 or x.dtype != np.float32:
        raise ValueError(f"expected a float32 (h, w, C) array, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def _valid_size(n, k, s, d):
    return max(0, (n - d * (k - 1) - 1) // s + 1) if n >= d * (k - 1) + 1 else 0


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _max_pool(x, kh, kw, sy, sx, dy, dx, out):
    ho, wo, c = out.shape
    for i in prange(ho):
        y0 = i * sy
        for j in range(wo):
            x0 = j * sx
            o = out[i, j]
            src = x[y0, x0]
            for ch in range(c):
                o[ch] = src[ch]
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    src = x[y0 + ky * dy, x0 + kx * dx]
                    for ch in range(c):
                        v = src[ch]
                        m = o[ch]
                        # torch semantics: a NaN in the window wins and stays
                        o[ch] = v if (v > m or v != v) else m
    return out


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _avg_pool(x, kh, kw, sy, sx, count_y, count_x, out):
    ho, wo, c = out.shape
    for i in prange(ho):
        y0 = i * sy
        acc = np.empty(c, dtype=np.float32)
        for j in range(wo):
            x0 = j * sx
            src = x[y0, x0]
            for ch in range(c):
                acc[ch] = src[ch]
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    src = x[y0 + ky, x0 + kx]
                    for ch in range(c):
                        acc[ch] += src[ch]
            div = np.float32(count_y[i] * count_x[j])
            o = out[i, j]
            for ch in range(c):
                o[ch] = acc[ch] / div
    return out


def max_pool2d(x, *, kernel, stride, dilation=(1, 1), out=None):
    """Max pooling over a window prefilled with ``-inf`` outside the map.

    Parameters
    ----------
    x : (Hi, Wi, C) float32
        Input window.
    kernel, stride, dilation : int or (int, int)
    out : (Ho, Wo, C) float32, optional
        ``Ho = (Hi - dy*(kh-1) - 1)//sy + 1`` (0 if the window is too small).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    >>> max_pool2d(x, kernel=2, stride=2)[..., 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    x = _check_input(x)
    kh, kw = _pair(kernel)
    sy, sx = _pair(stride)
    dy, dx = _pair(dilation)
    hi, wi, c = x.shape
    shape = (_valid_size(hi, kh, sy, dy), _valid_size(wi, kw, sx, dx), c)
    out = _out_array(out, shape)
    if out.size == 0:
        return out
    return _max_pool(x, kh, kw, sy, sx, dy, dx, out)


def avg_pool2d(x, *, kernel, stride, count_y, count_x, out=None):
    """Average pooling over a zero-filled window: ``sum / (count_y[i] * count_x[j])``.

    The window sum runs in a fixed order (rows, then columns) in float32 and
    is divided by ``np.float32(count_y[i] * count_x[j])``, as PyTorch does.
    ``count_y`` (Ho,) and ``count_x`` (Wo,) are the per-axis divisor factors;
    :func:`pool_divisors` computes them from global coordinates.

    Examples
    --------
    >>> x = np.ones((4, 4, 1), np.float32)
    >>> cy = np.array([2, 2]); cx = np.array([2, 2])
    >>> avg_pool2d(x, kernel=2, stride=2, count_y=cy, count_x=cx)[..., 0]
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    x = _check_input(x)
    kh, kw = _pair(kernel)
    sy, sx = _pair(stride)
    hi, wi, c = x.shape
    shape = (_valid_size(hi, kh, sy, 1), _valid_size(wi, kw, sx, 1), c)
    count_y = np.ascontiguousarray(count_y, dtype=np.int64)
    count_x = np.ascontiguousarray(count_x, dtype=np.int64)
    if count_y.shape != shape[:1] or count_x.shape != shape[1:2]:
        raise ValueError(
            f"count_y/count_x must have shapes ({shape[0]},)/({shape[1]},), "
            f"got {count_y.shape}/{count_x.shape}"
        )
    out = _out_array(out, shape)
    if out.size == 0:
        return out
    return _avg_pool(x, kh, kw, sy, sx, count_y, count_x, out)


# **** helpers the executor uses to describe pools in global coordinates ****


def pool_output_size(in_size, *, kernel, stride, padding=0, dilation=1, ceil_mode=False):
    """Output length of a pooling along one axis, PyTorch's rule (incl. ceil_mode)."""
    eff = dilation * (kernel - 1) + 1
    num = in_size + 2 * padding - eff
    if ceil_mode:
        n = -(-num // stride) + 1
        # the last window must start inside the input or the left padding
        if (n - 1) * stride >= in_size + padding:
            n -= 1
    else:
        n = num // stride + 1
    return max(int(n), 0)


def pool_divisors(o0, o1, *, in_size, kernel, stride, padding, count_include_pad):
    """Per-axis divisor factors of ``avg_pool2d`` for global outputs ``[o0, o1)``.

    Reproduces PyTorch's rule: the window ``[o*s - p, o*s - p + k)`` is first
    clipped to the padded input ``[-p, in_size + p)``; with
    ``count_include_pad`` that length is the factor, else the length of its
    intersection with ``[0, in_size)``. The 2-D divisor is the product of the
    row and column factors. Returns an int64 array of length ``o1 - o0``.
    """
    o = np.arange(o0, o1, dtype=np.int64)
    start = o * stride - padding
    end = np.minimum(start + kernel, in_size + padding)
    if count_include_pad:
        n = end - start
    else:
        n = np.minimum(end, in_size) - np.maximum(start, 0)
    return np.maximum(n, 1).astype(np.int64)
