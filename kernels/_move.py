"""Moving values (private): between HWC windows (the executor's concat, line buffers), and
between HWC buffers and the (C, h, w) planes images and outputs come in.

Copies are exact, so nothing here touches the exactness contract; what matters is speed
(2 threads, 16-lane vectors) on the large full-resolution skips of a UNet, which NumPy's
strided copy moves one 64-byte pixel slice at a time on one thread.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._common import flat
from ._conv_simd import _ptr, f32x16, sfence, vload, vstore, vstore_nt


@njit(parallel=True, cache=True, nogil=True)
def _copy_channels(sf, sp, cs, df, dp, cd, c0, h, w, nt):
    """dst[r, c, c0:c0 + cs] = src[r, c, :] for r < h, c < w; src: flat, rows sp pixels of cs
    channels apart; dst: flat, rows dp pixels of cd channels apart. ``nt``: whole 64-byte
    lines (the caller checked the alignment) written with non-temporal stores."""
    cv = cs - cs % 16
    for r in prange(h):
        s0 = r * sp * cs
        d0 = r * dp * cd + c0
        for c in range(w):
            s = s0 + c * cs
            d = d0 + c * cd
            if nt:
                for k in range(0, cv, 16):
                    vstore_nt(df, d + k, vload(sf, s + k))
            else:
                for k in range(0, cv, 16):
                    vstore(df, d + k, vload(sf, s + k))
            for k in range(cv, cs):
                df[d + k] = sf[s + k]
        if nt:
            sfence()


# the same loop on the calling thread alone: small copies (a line buffer's few rows) finish
# before a parallel region's threads would start, and on a loaded machine a parallel call
# waits for a descheduled thread (measured: 17x slower line-buffer copies beside a compiler)
_copy_channels_here = njit(cache=True, nogil=True)(_copy_channels.py_func)
PARALLEL_BYTES = 1 << 20


# outputs from this size on are written with non-temporal stores: they would not stay in the
# caches anyway (L3 is 32 MiB per Zen 4 CCD), and a normal store first reads the line it
# overwrites (read for ownership). 64 MiB measured better than 16 MiB (whole UNet-16 at
# 2048^2, CPU time 2.17-2.24 s vs 2.23-2.28 s, 2-core Zen 4)
NT_BYTES = 64 << 20


def streaming(dst, c0=0, cs=None):
    """True when the vector stores of ``c0 .. c0 + cs`` channels of every pixel of the packed
    window ``dst`` fall on whole 64-byte lines and ``dst`` is at least ``NT_BYTES``: the
    kernels may then write them non-temporally."""
    h, w, cd = dst.shape
    cs = cd - c0 if cs is None else cs
    return bool(h * w * cd * 4 >= NT_BYTES and dst.ctypes.data % 64 == 0 and cd % 16 == 0
                and c0 % 16 == 0 and cs % 16 == 0)


def copy_channels(src, dst, c0):
    """``dst[:, :, c0:c0 + C] = src`` for packed (h, w, C) / (h, w, Cd) float32 windows
    (``_common.packed``: C-contiguous, or windows of rows of wider buffers)."""
    h, w, cs = src.shape
    if h == 0 or w == 0 or cs == 0:
        return dst
    sf, sp = flat(src)
    df, dp = flat(dst)
    run = _copy_channels if h * w * cs * 4 >= PARALLEL_BYTES else _copy_channels_here
    run(sf, sp, cs, df, dp, dst.shape[2], c0, h, w, streaming(dst, c0, cs))
    return dst


# ---- between the engine's HWC buffers and the (C, h, w) planes of images and outputs
# NumPy's moveaxis copies move one value at a time on one thread (a 768 x 4096 band's
# 2-channel output: 6 ms, 23 ms with fresh pages); these run on all threads, the side
# with channels innermost read or written in runs.

@njit(parallel=True, cache=True, nogil=True)
def _planes_to_pixels(sf, sk, sr, df, dp, c, h, w):
    """df[r * dp * c + j * c + k] = sf[k * sk + r * sr + j] for k < c, r < h, j < w."""
    for r in prange(h):
        d0 = r * dp * c
        for j in range(w):
            for k in range(c):
                df[d0 + j * c + k] = sf[k * sk + r * sr + j]


def _half(odd):
    @intrinsic
    def load(typingctx, arr, i):
        """Lanes 2l + odd of the 32 floats of ``arr`` from flat index ``i`` (16 pixels of 2 channels: one channel)."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
            return None

        def codegen(context, builder, sig, args):
            p = _ptr(context, builder, sig.args[0], args[0], args[1])
            a = builder.load(p, align=4)
            b = builder.load(builder.gep(p, [ir.Constant(ir.IntType(64), 1)]), align=4)
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [2 * l + odd for l in range(16)])
            return builder.shuffle_vector(a, b, mask)
        return f32x16(arr, types.intp), codegen
    return load


_even, _odd = _half(0), _half(1)


@njit(parallel=True, cache=True, nogil=True)
def _pixels_to_planes(sf, sp, c, df, dk, dr, h, w):
    """df[k * dk + r * dr + j] = sf[r * sp * c + j * c + k] for k < c, r < h, j < w. Two channels
    (a two-class output) 16 pixels a vector step (2.5x the scalar loop's speed at 2048^2, Zen 4)."""
    for r in prange(h):
        s0 = r * sp * c
        j0 = 0
        if c == 2:
            d0 = r * dr
            j0 = w - w % 16
            for j in range(0, j0, 16):
                vstore(df, d0 + j, _even(sf, s0 + 2 * j))
                vstore(df, d0 + dk + j, _odd(sf, s0 + 2 * j))
        for k in range(c):
            d0 = k * dk + r * dr
            for j in range(j0, w):
                df[d0 + j] = sf[s0 + j * c + k]


def _planes(a):
    """(flat view from a's first element, plane stride, row stride) of a float32 (C, h, w)
    array whose columns are adjacent (``a.strides[2] == 4``) and other strides non-negative."""
    c, h, w = a.shape
    sk, sr = a.strides[0] // 4, a.strides[1] // 4
    n = (c - 1) * sk + (h - 1) * sr + w
    return np.lib.stride_tricks.as_strided(a, (n,), (4,)), sk, sr


def _plane_strides_ok(a):
    return a.dtype == np.float32 and a.strides[2] == 4 and min(a.strides) >= 0 and all(
        s % 4 == 0 for s in a.strides)


def planes_to_pixels(src, dst):
    """``dst[r, j, k] = src[k, r, j]``: a float32 (C, h, w) array (any strides) into a packed
    (h, w, C) window (``_common.packed``); exact. Returns ``dst``."""
    c, h, w = src.shape
    if c == 0 or h == 0 or w == 0:
        return dst
    if not _plane_strides_ok(src):
        src = np.ascontiguousarray(src, np.float32)
    sf, sk, sr = _planes(src)
    df, dp = flat(dst)
    _planes_to_pixels(sf, sk, sr, df, dp, c, h, w)
    return dst


def pixels_to_planes(src, dst=None):
    """``dst[k, r, j] = src[r, j, k]``: a packed float32 (h, w, C) window into a (C, h, w)
    array (given, with adjacent columns, or a new C-contiguous one); exact. Returns ``dst``."""
    h, w, c = src.shape
    if dst is None:
        dst = np.empty((c, h, w), np.float32)
    if c == 0 or h == 0 or w == 0:
        return dst
    if not _plane_strides_ok(dst):
        raise ValueError(f"dst must be a float32 (C, h, w) array with adjacent columns, got {dst.dtype} {dst.strides}")
    sf, sp = flat(src)
    df, dk, dr = _planes(dst)
    _pixels_to_planes(sf, sp, c, df, dk, dr, h, w)
    return dst
