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

Needs groups == 1 and Ci a multiple of 16; any kernel, stride, dilation.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bf16_simd import tpairs, ubcast_at, vdp, vdpe, vround, vzip_hi, vzip_lo
from ._conv_simd import vact, vadd, vbcast, vload, vstore, vzero


def pack_weights(wbits):
    """(kh, kw, Ci, Co) bf16 half bits (uint32, ``bf16._half_bits``) -> flat uint32 (Co, kh*kw*Ci/2)
    pairs: term (t, j) of output channel co holds channel 2j low, 2j+1 high."""
    kh, kw, Ci, Co = wbits.shape
    m = wbits.reshape(kh * kw, Ci // 2, 2, Co)
    pairs = m[:, :, 0, :] | (m[:, :, 1, :] << 16)                   # (taps, Ch, Co)
    return np.ascontiguousarray(pairs.transpose(2, 0, 1)).reshape(-1)


@njit(cache=True, nogil=True)
def _store(acc, Co, bias, act, alpha, outf, o, n):
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


@njit(parallel=True, cache=True, nogil=True)
def dot_b(src, sb, sp, Ci, wp, toff, bias, outf, ob, op, Ho, Wo, Co, sy, sx, act, alpha):
    """src: the float32 window as uint32, pixel (r, c) at src[sb + r*sp + c*Ci]; wp: pair
    weights (:func:`pack_weights`); toff[t]: offset of tap t from a pixel's first channel;
    output (r, c, co) at outf[ob + r*op + c*Co + co]. vdpbf16ps."""
    ntap = toff.shape[0]
    Ch = Ci // 2
    K = ntap * Ch
    ps = sx * Ci
    for r in prange(Ho):
        acc = np.empty(Co * 16, np.float32)
        for c0 in range(0, Wo, 16):
            n = min(16, Wo - c0)
            pb = sb + r * sy * sp + c0 * ps
            for co in range(Co):
                vstore(acc, co * 16, vzero())
            for t in range(ntap):
                for cb in range(0, Ci, 16):
                    p0, p1, p2, p3, p4, p5, p6, p7 = tpairs(src, pb + toff[t] + cb, ps, n)
                    for co in range(Co):
                        k = co * K + t * Ch + cb // 2
                        a = vload(acc, co * 16)
                        a = vdp(a, p0, ubcast_at(wp, k))
                        a = vdp(a, p1, ubcast_at(wp, k + 1))
                        a = vdp(a, p2, ubcast_at(wp, k + 2))
                        a = vdp(a, p3, ubcast_at(wp, k + 3))
                        a = vdp(a, p4, ubcast_at(wp, k + 4))
                        a = vdp(a, p5, ubcast_at(wp, k + 5))
                        a = vdp(a, p6, ubcast_at(wp, k + 6))
                        a = vdp(a, p7, ubcast_at(wp, k + 7))
                        vstore(acc, co * 16, a)
            _store(acc, Co, bias, act, alpha, outf, ob + r * op + c0 * Co, n)


@njit(parallel=True, cache=True, nogil=True)
def dot_e(src, sb, sp, Ci, wp, toff, bias, outf, ob, op, Ho, Wo, Co, sy, sx, act, alpha):
    """:func:`dot_b` on ``vdpe`` (the conversion path): the same bits."""
    ntap = toff.shape[0]
    Ch = Ci // 2
    K = ntap * Ch
    ps = sx * Ci
    for r in prange(Ho):
        acc = np.empty(Co * 16, np.float32)
        for c0 in range(0, Wo, 16):
            n = min(16, Wo - c0)
            pb = sb + r * sy * sp + c0 * ps
            for co in range(Co):
                vstore(acc, co * 16, vzero())
            for t in range(ntap):
                for cb in range(0, Ci, 16):
                    p0, p1, p2, p3, p4, p5, p6, p7 = tpairs(src, pb + toff[t] + cb, ps, n)
                    for co in range(Co):
                        k = co * K + t * Ch + cb // 2
                        a = vload(acc, co * 16)
                        a = vdpe(a, p0, ubcast_at(wp, k))
                        a = vdpe(a, p1, ubcast_at(wp, k + 1))
                        a = vdpe(a, p2, ubcast_at(wp, k + 2))
                        a = vdpe(a, p3, ubcast_at(wp, k + 3))
                        a = vdpe(a, p4, ubcast_at(wp, k + 4))
                        a = vdpe(a, p5, ubcast_at(wp, k + 5))
                        a = vdpe(a, p6, ubcast_at(wp, k + 6))
                        a = vdpe(a, p7, ubcast_at(wp, k + 7))
                        vstore(acc, co * 16, a)
            _store(acc, Co, bias, act, alpha, outf, ob + r * op + c0 * Co, n)


def tap_offsets(kh, kw, Ci, sp, dy, dx):
    """Offset (in float32) of tap (ky, kx) from a pixel's first channel, rows sp apart."""
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return (ky * dy * sp + kx * dx * Ci).reshape(-1).astype(np.int64)
