"""Dot-product route for convolutions with few output channels (private).

For Co < 16 (a segmentation head: 1x1 conv to a handful of classes) blocking
over output channels wastes most of each 16-lane vector. This route
vectorises one output element's own sum instead, in a fixed order that is
the same for every element:

    acc (16 lanes) = 0;  for tap (ky, kx): for ci-block of 16: acc = fma(x, w, acc)
    y = act(hsum(acc) + bias)          hsum: fixed pairwise tree over the lanes

Needs Ci % 16 == 0 and groups == 1. The order differs from the direct routes'
(so the bits may differ from theirs) but never depends on the pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._conv_simd import vfma, vhsum, vload, vzero

FM = {"contract"}


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv2d_dot(xf, Wp, Ci, wt, bias, toff, outf, Ho, Wo, Op, Co, sy, sx, act, alpha):
    """xf: flat window, rows Wp pixels apart; wt: flat (Co, ntaps, Ci) weights; toff[t]:
    window offset of tap t = ky*kw + kx; outf: flat (Ho, Wo, Co), rows Op pixels apart."""
    ntap = toff.shape[0]
    a32 = np.float32(alpha)
    for r in prange(Ho):
        for c in range(Wo):
            pb = ((r * sy) * Wp + c * sx) * Ci
            for co in range(Co):
                acc = vzero()
                wb = co * ntap * Ci
                for t in range(ntap):
                    xb = pb + toff[t]
                    for cb in range(0, Ci, 16):
                        acc = vfma(vload(xf, xb + cb), vload(wt, wb + t * Ci + cb), acc)
                v = vhsum(acc) + bias[co]
                if act == 1:
                    v = v if v > 0.0 else np.float32(0.0)
                elif act == 2:
                    v = v if v >= 0.0 else v * a32
                outf[(r * Op + c) * Co + co] = v
    return outf


def pack_weights(w):
    """(kh, kw, Ci, Co) -> flat (Co, kh*kw, Ci)."""
    kh, kw, Ci, Co = w.shape
    return np.ascontiguousarray(w.reshape(kh * kw, Ci, Co).transpose(2, 0, 1)).reshape(-1)


def tap_offsets(kh, kw, Ci, Wp, dy, dx):
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return ((ky * dy * Wp + kx * dx) * Ci).reshape(-1).astype(np.int64)
