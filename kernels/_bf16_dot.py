"""bf16 mode's "dot" route: convolutions with few output channels (private).

For Co <= 8 (a segmentation head: 1x1 conv to a handful of classes) the "pairs" route's
8 pixels x 16 output channels register tile computes 16 columns for Co: 8x the work for
a 16 -> 2 head. Here the 16 lanes hold 16 output pixels of one output channel instead
(:func:`._bf16_simd.tpairs` turns 16 pixels' channels into bf16 pairs, one pixel per
lane), and each output channel is one chain of ``vdpbf16ps`` over the terms (ky, kx,
channel pair) -- the very sum the "pairs" route computes for that element (accumulator
starting at 0, the odd channel's product then the even one's, each add one float32
rounding, flushed as the instruction does), then ``round_bf16(act(acc + bias))``. So the
bits are the "pairs" route's; family ``e`` runs the same chain on ``vdpe`` (the
conversion path): the same bits again.

Needs groups == 1 and Ci a multiple of 16; any kernel, stride, dilation. The loop itself,
``dot_b`` / ``dot_e``, is generated into ``_conv_bf16_mk.py`` from one template
(``_conv_bf16_gen.py``); this module holds its weight packing, tap offsets and store.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._bf16_simd import vround, vzip_hi, vzip_lo
from ._conv_simd import vact, vadd, vbcast, vload, vstore


def pack_weights(wbits):
    """(kh, kw, Ci, Co) bf16 half bits (uint32, ``bf16._half_bits``) -> flat uint32 (Co, kh*kw*Ci/2)
    pairs: term (t, j) of output channel co holds channel 2j low, 2j+1 high."""
    kh, kw, Ci, Co = wbits.shape
    m = wbits.reshape(kh * kw, Ci // 2, 2, Co)
    pairs = m[:, :, 0, :] | (m[:, :, 1, :] << 16)                   # (taps, Ch, Co)
    return np.ascontiguousarray(pairs.transpose(2, 0, 1)).reshape(-1)


@njit(cache=True, nogil=True)
def dot_store(acc, Co, bias, act, alpha, outf, o, n):
    """round_bf16(act(acc + bias)) of the Co vectors of ``acc`` (16 pixels each), pixels
    0 .. n-1 stored at outf[o + p*Co + co]."""
    if Co == 2 and n == 16:
        a0 = vround(vact(vadd(vload(acc, 0), vbcast(bias[0])), act, alpha))
        a1 = vround(vact(vadd(vload(acc, 16), vbcast(bias[1])), act, alpha))
        vstore(outf, o, vzip_lo(a0, a1))
        vstore(outf, o + 16, vzip_hi(a0, a1))
        return
    for co in range(Co):
        vstore(acc, co * 16, vround(vact(vadd(vload(acc, co * 16), vbcast(bias[co])), act, alpha)))
    for p in range(n):
        for co in range(Co):
            outf[o + p * Co + co] = acc[co * 16 + p]


def tap_offsets(kh, kw, Ci, sp, dy, dx):
    """Offset (in float32) of tap (ky, kx) from a pixel's first channel, rows sp apart."""
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return (ky * dy * sp + kx * dx * Ci).reshape(-1).astype(np.int64)
