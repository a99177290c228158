"""Max and average pooling on HWC float32 windows (valid kernels).

The caller hands an input *window* whose positions outside the feature map
already hold the pooling's padding value: ``-inf`` for max pooling, ``0`` for
average pooling. Average pooling divides each output by a divisor the caller
computes from global coordinates (PyTorch's ``count_include_pad`` rule), so the
kernels themselves never need to know where the window lies.

Determinism: each output element is reduced over its ``kh x kw`` window in one
fixed order (rows, then columns), whatever the window's size or origin.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import as_window, flat, out_array, pair, valid_size
from ._conv_simd import sfence, vadd, vbcast, vdiv, vload, vmax_nan, vstore, vstore_nt
from ._move import streaming

__all__ = ["max_pool2d", "avg_pool2d"]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _pool(xf, xp, c, kh, kw, sy, sx, dy, dx, is_max, count_y, count_x, of, op, ho, wo):
    """Max (``is_max``) or average pooling; ``count_y``/``count_x`` only for average.
    xf / of: flat input / output windows whose rows lie xp / op pixels apart.

    Channels in whole groups of 16 run as 16-lane vectors, the rest one by one; both do
    per element the same operations in the same order (first tap, then the others in
    row-major order: max with the NaN rule, or a float32 add; then the division), so the
    split changes no bit."""
    cv = c - c % 16
    for i in prange(ho):
        y0 = i * sy
        acc = np.empty(max(c - cv, 1), dtype=np.float32)
        for j in range(wo):
            x0 = j * sx
            s0 = (y0 * xp + x0) * c
            o = (i * op + j) * c
            div = np.float32(1.0)
            if not is_max:
                div = np.float32(count_y[i] * count_x[j])
            if is_max and kh == 2 and kw == 2:       # UNet's 2x2 max-pool: the same taps, unrolled
                s1 = s0 + dx * c
                s2 = s0 + dy * xp * c
                s3 = s2 + dx * c
                for cb in range(0, cv, 16):
                    a = vmax_nan(vload(xf, s0 + cb), vload(xf, s1 + cb))
                    a = vmax_nan(a, vload(xf, s2 + cb))
                    vstore(of, o + cb, vmax_nan(a, vload(xf, s3 + cb)))
            else:
                for cb in range(0, cv, 16):
                    a = vload(xf, s0 + cb)
                    for ky in range(kh):
                        for kx in range(kw):
                            if ky == 0 and kx == 0:
                                continue
                            v = vload(xf, ((y0 + ky * dy) * xp + x0 + kx * dx) * c + cb)
                            a = vmax_nan(a, v) if is_max else vadd(a, v)
                    if is_max:
                        vstore(of, o + cb, a)
                    else:
                        vstore(of, o + cb, vdiv(a, vbcast(div)))
            if cv == c:
                continue
            for ch in range(cv, c):
                acc[ch - cv] = xf[s0 + ch]
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    s = ((y0 + ky * dy) * xp + x0 + kx * dx) * c
                    if is_max:
                        for ch in range(cv, c):
                            v = xf[s + ch]
                            m = acc[ch - cv]
                            # torch semantics: a NaN in the window wins and stays
                            acc[ch - cv] = v if (v > m or v != v) else m
                    else:
                        for ch in range(cv, c):
                            acc[ch - cv] += xf[s + ch]
            if is_max:
                for ch in range(cv, c):
                    of[o + ch] = acc[ch - cv]
            else:
                for ch in range(cv, c):
                    of[o + ch] = acc[ch - cv] / div
    return of


@njit(cache=True, nogil=True, parallel=True)
def _max2x2(xf, xp, c, sy, sx, dy, dx, of, op, ho, wo, nt):
    """:func:`_pool`'s 2x2 max pooling for channels in whole groups of 16 (a UNet's): the same
    four taps in the same order, per 16 channels ``max(max(max(x00, x01), x10), x11)`` with the
    NaN rule, so the same bits; the index arithmetic of the general loop out of the way (1.6x
    at 2048^2 x 16 channels, Zen 4, 2 threads). nt: non-temporal stores (``of`` on 64-byte
    lines, :func:`hirestile.kernels._move.streaming`)."""
    step = sx * c
    t1 = dx * c
    t2 = dy * xp * c
    for i in prange(ho):
        s = i * sy * xp * c
        o = i * op * c
        for j in range(wo):
            for cb in range(0, c, 16):
                a = vmax_nan(vload(xf, s + cb), vload(xf, s + t1 + cb))
                a = vmax_nan(a, vload(xf, s + t2 + cb))
                a = vmax_nan(a, vload(xf, s + t2 + t1 + cb))
                if nt:
                    vstore_nt(of, o + cb, a)
                else:
                    vstore(of, o + cb, a)
            s += step
            o += c
        if nt:
            sfence()
    return of


def _run(x, kh, kw, sy, sx, dy, dx, is_max, count_y, count_x, out):
    xf, xp = flat(x)
    of, op = flat(out)
    c = x.shape[2]
    if is_max and kh == 2 and kw == 2 and c % 16 == 0:
        _max2x2(xf, xp, c, sy, sx, dy, dx, of, op, out.shape[0], out.shape[1], streaming(out))
        return out
    _pool(xf, xp, x.shape[2], kh, kw, sy, sx, dy, dx, is_max, count_y, count_x, of, op, out.shape[0], out.shape[1])
    return out


def max_pool2d(x, *, kernel, stride, dilation=(1, 1), out=None):
    """Max pooling over a window prefilled with ``-inf`` outside the map.

    Parameters
    ----------
    x : (Hi, Wi, C) float32
        Input window (C-contiguous, or a window of rows of a wider buffer: read in place).
    kernel, stride, dilation : int or (int, int)
    out : (Ho, Wo, C) float32, optional
        C-contiguous or a window of rows of a wider buffer. ``Ho = (Hi - dy*(kh-1) - 1)//sy + 1`` (0 if the window is too small).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    >>> max_pool2d(x, kernel=2, stride=2)[..., 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    x = as_window(x)
    kh, kw = pair(kernel, "kernel")
    sy, sx = pair(stride, "stride")
    dy, dx = pair(dilation, "dilation")
    hi, wi, c = x.shape
    out = out_array(out, (valid_size(hi, kh, sy, dy), valid_size(wi, kw, sx, dx), c), window=True)
    if out.size == 0:
        return out
    none = np.empty(0, np.int64)
    return _run(x, kh, kw, sy, sx, dy, dx, True, none, none, out)


def avg_pool2d(x, *, kernel, stride, count_y, count_x, out=None):
    """Average pooling over a zero-filled window: ``sum / (count_y[i] * count_x[j])``.

    The window sum runs in a fixed order (rows, then columns) in float32 and
    is divided by ``np.float32(count_y[i] * count_x[j])``, as PyTorch does.
    ``count_y`` (Ho,) and ``count_x`` (Wo,) are the per-axis divisor factors,
    which the caller computes from global coordinates.

    Examples
    --------
    >>> x = np.ones((4, 4, 1), np.float32)
    >>> cy = np.array([2, 2]); cx = np.array([2, 2])
    >>> avg_pool2d(x, kernel=2, stride=2, count_y=cy, count_x=cx)[..., 0]
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    x = as_window(x)
    kh, kw = pair(kernel, "kernel")
    sy, sx = pair(stride, "stride")
    hi, wi, c = x.shape
    shape = (valid_size(hi, kh, sy, 1), valid_size(wi, kw, sx, 1), c)
    count_y = np.ascontiguousarray(count_y, dtype=np.int64)
    count_x = np.ascontiguousarray(count_x, dtype=np.int64)
    if count_y.shape != shape[:1] or count_x.shape != shape[1:2]:
        raise ValueError(
            f"count_y/count_x must have shapes ({shape[0]},)/({shape[1]},), "
            f"got {count_y.shape}/{count_x.shape}"
        )
    out = out_array(out, shape, window=True)
    if out.size == 0:
        return out
    return _run(x, kh, kw, sy, sx, 1, 1, False, count_y, count_x, out)
