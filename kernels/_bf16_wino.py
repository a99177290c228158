"""Winograd F(2x2, 3x3) on bf16 pairs: the transforms of the bf16 mode's ``wino2`` route (private).

The route (3x3, stride 1, dilation 1, groups 1, Ci and Co multiples of 16) computes each
2x2 output tile, anchored to the window origin (the executor asks for output regions
whose global origin and size are multiples of 2: ``bf16.conv_tile``), as:

* d = cvt(x) on the tile's 4x4 input patch (zeros past the window), cvt being VCVTNEPS2BF16's
  rounding (float32 denormals to zeros of their sign, then nearest even; ``_bf16_simd``'s
  ``cround`` / ``eround``);
* V = B^T d B in float32, in the order of ``in_transform_*`` / ``in_strip_*`` (rows, then
  columns; adds and subtracts only), then cvt(V), packed in channel pairs (2j low, 2j+1 high:
  ``cstore`` / ``estore``);
* U = G g G^T per (ci, co) in float64 from the weights as given (the executor gives them
  rounded to bf16), rounded once to float32, then to bf16 with bf16 denormals flushed,
  packed like V (:func:`weight_transform`);
* M[xi] = sum over channel pairs, in order, of ``vdpbf16ps`` (odd product first, then the
  even one, each add rounded to float32 and flushed), from 0;
* Y = A^T M A in float32 (``out_transform_*``), then cvt(act(Y + bias)).

None of it depends on where the tile sits, how many tiles a work item holds or which
thread runs it, so tiled == full-frame bit for bit; the vdpbf16ps and conversion paths
give the same bits (``wgemm_b`` / ``wgemm_e`` of ``_conv_bf16_mk``).
2.25x fewer products than the direct route, at the price of rounding V and U (sums of
up to 4 inputs, 9 weights) instead of the pixels and weights themselves.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from ._conv_wino import (
    _wt,  # F(2x2)'s weight transform in float64, rounded once: fp32's own
)

NX = 16          # Winograd components of F(2x2, 3x3)


def transformed_weights(w) -> np.ndarray:
    """(16, Ci, Co) float32: U[4a + b, ci, co] = (G g G^T)[a, b] for g = w[:, :, ci, co],
    computed in float64 and rounded once to float32 (before the bf16 rounding)."""
    w = np.ascontiguousarray(w, np.float32)
    return _wt(w, np.empty((NX,) + w.shape[2:], np.float32))


def weight_transform(w):
    """U rounded to bf16 and packed as the micro-kernels read it: per component xi a (Ci/2, Co)
    matrix of channel pairs, 16 columns at a time (block co0 of xi at ``(xi*Co + co0) * Ci/2``)."""
    from .bf16 import _blocks, _half_bits, _pair_rows
    return _blocks(_pair_rows(_half_bits(transformed_weights(w))))


@njit(cache=True, nogil=True)
def patch(src, sb, sp, Ci, r0, c0, nr, nc, D):
    """D[:16*Ci] = the 4x4 patch of pixels at window row r0, column c0 (pixel (r, c) at
    src[sb + r*sp + c*Ci]), the nr x nc inside the window copied and the rest zero."""
    D[:16 * Ci] = 0.0
    for i in range(nr):
        for j in range(nc):
            s = sb + (r0 + i) * sp + (c0 + j) * Ci
            d = (i * 4 + j) * Ci
            D[d:d + Ci] = src[s:s + Ci]


def pick_nt(Ci, Co, ntx, budget=512 * 1024):
    """Tiles per work item (never affects the result): V (16 x NT x Ci/2 dwords) and M (16 x NT
    x Co floats) within ~budget bytes of L2, NT a multiple of 8 (the micro-kernel's tiles) in
    [8, 96], a tile row split into equal chunks."""
    nt = budget // (NX * 4 * (Ci // 2 + Co))
    nt = max(8, min(96, nt // 8 * 8))
    nch = -(-ntx // nt)
    return max(1, -(-ntx // nch))


_tls = threading.local()


def scratch(nthreads, NT, Ci, Co):
    """Per-thread buffers (nthreads, n), reused across calls and kept per Python thread: V
    (uint32 pairs), M and D (float32)."""
    need = (NX * (NT * (Ci // 2) + 16), NX * (NT * Co + 16), NX * Ci)
    have = getattr(_tls, "bufs", None)
    if have is not None and have[0].shape[0] >= nthreads and all(b.shape[1] >= n for b, n in zip(have, need)):
        return have
    if have is not None:
        nthreads = max(nthreads, have[0].shape[0])
        need = tuple(max(n, b.shape[1]) for b, n in zip(have, need))
    _tls.bufs = (np.zeros((nthreads, need[0]), np.uint32), np.zeros((nthreads, need[1]), np.float32),
                 np.zeros((nthreads, need[2]), np.float32))
    return _tls.bufs
