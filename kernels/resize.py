"""Nearest and bilinear resizing on HWC float32 windows via index tables.

The kernels gather through per-row and per-column tables that index into the
window the caller hands over; :func:`nearest_indices` and
:func:`bilinear_weights` build those tables in *global* coordinates with
PyTorch's CPU arithmetic (float32 source coordinates), and the caller
subtracts the window origin. Because every output element reads its inputs
and weights from the tables alone, a sub-region gives exactly the crop of the
full result.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["resize_nearest", "resize_bilinear", "nearest_indices", "bilinear_weights"]


def _out_array(out, shape):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}"
        )
    return out


def _check_input(x):
    if x.ndim != 3 or x.dtype != np.float32:
        raise ValueError(f"expected a float32 (h, w, C) array, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def _index_table(a, name, n_src):
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D")
    if a.size and (a.min() < 0 or a.max() >= n_src):
        raise IndexError(f"{name} indexes outside the window (size {n_src})")
    return a


@njit(cache=True, nogil=True, parallel=True)
def _nearest(x, iy, ix, out):
    ho, wo, c = out.shape
    for r in prange(ho):
        row = x[iy[r]]
        for q in range(wo):
            src = row[ix[q]]
            o = out[r, q]
            for ch in range(c):
                o[ch] = src[ch]
    return out


@njit(cache=True, nogil=True, parallel=True)
def _bilinear(x, y0, y1, ly, x0, x1, lx, out):
    ho, wo, c = out.shape
    one = np.float32(1.0)
    for r in prange(ho):
        h1l = ly[r]
        h0l = one - h1l
        ra = x[y0[r]]
        rb = x[y1[r]]
        for q in range(wo):
            w1l = lx[q]
            w0l = one - w1l
            a = ra[x0[q]]
            b = ra[x1[q]]
            cc = rb[x0[q]]
            d = rb[x1[q]]
            o = out[r, q]
            for ch in range(c):
                # PyTorch CPU (NCHW) upsample_bilinear2d: separable, columns first
                o[ch] = (a[ch] * w0l + b[ch] * w1l) * h0l + (cc[ch] * w0l + d[ch] * w1l) * h1l
    return out


def resize_nearest(x, *, iy, ix, out=None):
    """Gather ``out[r, c] = x[iy[r], ix[c]]``.

    Examples
    --------
    >>> x = np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    >>> resize_nearest(x, iy=[0, 0, 1], ix=[1, 0])[..., 0]
    array([[1., 0.],
           [1., 0.],
           [3., 2.]], dtype=float32)
    """
    x = _check_input(x)
    iy = _index_table(iy, "iy", x.shape[0])
    ix = _index_table(ix, "ix", x.shape[1])
    out = _out_array(out, (iy.size, ix.size, x.shape[2]))
    if out.size == 0:
        return out
    return _nearest(x, iy, ix, out)


def resize_bilinear(x, *, y0, y1, ly, x0, x1, lx, out=None):
    """Bilinear gather with per-row and per-column weights.

    ``out[r, c] = (x[y0,x0]*(1-lx) + x[y0,x1]*lx) * (1-ly) + (x[y1,x0]*(1-lx) + x[y1,x1]*lx) * ly``
    in float32 with ``1 - l`` computed in float32, which is PyTorch's CPU
    arithmetic for contiguous tensors. ``y0, y1`` (Ho,) int64 and ``ly``
    (Ho,) float32 describe rows; ``x0, x1, lx`` (Wo,) columns.

    Examples
    --------
    >>> x = np.array([[0.0, 2.0]], np.float32).reshape(1, 2, 1)
    >>> z = np.zeros(1, np.int64)
    >>> resize_bilinear(x, y0=z, y1=z, ly=np.zeros(1, np.float32),
    ...                 x0=np.array([0, 0]), x1=np.array([1, 1]),
    ...                 lx=np.array([0.25, 0.5], np.float32))[..., 0]
    array([[0.5, 1. ]], dtype=float32)
    """
    x = _check_input(x)
    y0 = _index_table(y0, "y0", x.shape[0])
    y1 = _index_table(y1, "y1", x.shape[0])
    x0 = _index_table(x0, "x0", x.shape[1])
    x1 = _index_table(x1, "x1", x.shape[1])
    ly = np.ascontiguousarray(ly, dtype=np.float32)
    lx = np.ascontiguousarray(lx, dtype=np.float32)
    if not (y0.shape == y1.shape == ly.shape) or not (x0.shape == x1.shape == lx.shape):
        raise ValueError("y0/y1/ly and x0/x1/lx must have matching 1-D shapes")
    out = _out_array(out, (y0.size, x0.size, x.shape[2]))
    if out.size == 0:
        return out
    return _bilinear(x, y0, y1, ly, x0, x1, lx, out)


# **** tables in global coordinates (PyTorch's CPU arithmetic) ****


def _scale(in_size, out_size, align_corners, scale):
    """PyTorch's area_pixel_compute_scale, in float32."""
    f32 = np.float32
    if align_corners:
        return f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    if scale is not None and scale > 0:
        return f32(1.0 / float(scale))  # computed in double, then cast
    return f32(in_size) / f32(out_size)


def nearest_indices(o0, o1, *, in_size, out_size, scale=None, exact=False):
    """Source rows (global) of nearest resizing for global outputs ``[o0, o1)``.

    ``scale`` is the user's scale factor when ``F.interpolate`` was given one
    (PyTorch then uses ``1/scale``, not ``in/out``); ``exact`` selects
    ``mode='nearest-exact'`` (ONNX ``half_pixel`` + ``round_prefer_ceil``-like).
    """
    o = np.arange(o0, o1, dtype=np.int64)
    if not exact and out_size == in_size:
        return o
    if not exact and out_size == 2 * in_size:
        return o >> 1
    s = _scale(in_size, out_size, False, scale)
    if exact:
        # PyTorch: (dst + 0.5) is a double, so the product is taken in double
        src = np.floor((o.astype(np.float64) + 0.5) * np.float64(s))
    else:
        src = np.floor(o.astype(np.float32) * s)
    return np.minimum(src.astype(np.int64), in_size - 1)


def bilinear_weights(o0, o1, *, in_size, out_size, align_corners, scale=None):
    """Global ``(i0, i1, l1)`` tables of bilinear resizing for outputs ``[o0, o1)``.

    ``i0, i1`` are int64 source indices, ``l1`` the float32 weight of ``i1``;
    computed exactly as PyTorch's ``compute_source_index_and_lambda`` does
    (half-pixel centres clamped at 0 unless ``align_corners``).
    """
    o = np.arange(o0, o1, dtype=np.int64)
    if out_size == in_size:
        return o.copy(), o.copy(), np.zeros(o.size, np.float32)
    f32 = np.float32
    s = _scale(in_size, out_size, align_corners, None if align_corners else scale)
    if align_corners:
        src = s * o.astype(f32)
    else:
        # PyTorch's AVX2/AVX512 kernels contract scale*(o + 0.5) - 0.5 into one FMA:
        # the float64 product of two float32 values and the subtraction are exact,
        # so one rounding to float32 reproduces it
        src = (np.float64(s) * (o.astype(np.float64) + 0.5) - 0.5).astype(f32)
        src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, l1
