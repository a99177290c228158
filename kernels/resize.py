"""Nearest and bilinear resizing on HWC float32 windows via index tables.

The kernels gather through per-row and per-column tables that index into the
window the caller hands over. The caller builds those tables in *global*
coordinates (the executor takes them from the resize op's region rule, so the
rows and columns a region reads and the ones the kernel gathers are the same)
and subtracts the window origin. Because every output element reads its
inputs and weights from the tables alone, a sub-region gives exactly the crop
of the full result.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import as_f32, out_array

__all__ = ["resize_nearest", "resize_bilinear"]


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
    x = as_f32(x, ndim=3)
    iy = _index_table(iy, "iy", x.shape[0])
    ix = _index_table(ix, "ix", x.shape[1])
    out = out_array(out, (iy.size, ix.size, x.shape[2]))
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
    x = as_f32(x, ndim=3)
    y0 = _index_table(y0, "y0", x.shape[0])
    y1 = _index_table(y1, "y1", x.shape[0])
    x0 = _index_table(x0, "x0", x.shape[1])
    x1 = _index_table(x1, "x1", x.shape[1])
    ly = np.ascontiguousarray(ly, dtype=np.float32)
    lx = np.ascontiguousarray(lx, dtype=np.float32)
    if not (y0.shape == y1.shape == ly.shape) or not (x0.shape == x1.shape == lx.shape):
        raise ValueError("y0/y1/ly and x0/x1/lx must have matching 1-D shapes")
    out = out_array(out, (y0.size, x0.size, x.shape[2]))
    if out.size == 0:
        return out
    return _bilinear(x, y0, y1, ly, x0, x1, lx, out)
