"""Register-blocked direct convolution, groups == 1 (private).

Implicit GEMM on the window: for output row r, a block of P pixels and a
block of 16*V output channels, micro-kernel ``d{P}x{V}`` (``_conv_mk``) sums
over k = (ky, kx, ci) in that order -- the same order as the generic direct
route -- with one FMA per term, then adds the bias and applies the
activation. Pixels past the row end repeat the last pixel and are not
stored, so every pixel's sum is the same FMA sequence wherever it sits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._conv_mk import d6x4, d8x1, d8x2, g6x4, g8x1, g8x2
from ._conv_simd import sfence

FM = {"contract"}

# Constants handed to another kernel are typed int64, not literals: Numba compiles a
# kernel once per argument *type*, and a literal 0 (or a loop counter starting at 0,
# whose first type Numba infers as Literal[int](0)) is a type of its own, so the
# micro-kernels below would be compiled (seconds each) once per call site.


@njit(cache=True, nogil=True, fastmath=FM, _nrt=False)
def _row(xf, xrow, xps, koff, K, wf, wb, CoP, bias, dst, rowbase, dps, Wo, act, alpha, epi):
    """Wo pixels: pixel c's k-th term reads xf[xrow + c*xps + koff[k]] (or
    xf[xrow + c*xps + k] when koff is empty) and the weights of the (K, CoP)
    matrix packed at wf[wb:] by :func:`pack_cols`; writes act(acc + bias) to
    dst[rowbase + c*dps + co] (``epi`` 1; 3: with non-temporal stores, every pixel's
    CoP outputs on whole 64-byte lines)."""
    direct = koff.shape[0] > 0
    co0 = np.int64(0)
    while co0 < CoP:
        if CoP - co0 >= 64:
            for c0 in range(0, Wo, 6):
                n = min(6, Wo - c0)
                if direct:
                    d6x4(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 64,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
                else:
                    g6x4(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 64,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
            co0 += 64
        elif CoP - co0 >= 32:
            for c0 in range(0, Wo, 8):
                n = min(8, Wo - c0)
                if direct:
                    d8x2(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 32,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
                else:
                    g8x2(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 32,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
            co0 += 32
        else:
            for c0 in range(0, Wo, 8):
                n = min(8, Wo - c0)
                if direct:
                    d8x1(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 16,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
                else:
                    g8x1(xf, xrow + c0 * xps, xps, n, koff, K, wf, wb + co0 * K, 16,
                         dst, rowbase + c0 * dps + co0, dps, bias, co0, epi, act, alpha)
            co0 += 16


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv2d_blocked(xf, Wp, Ci, wf, CoP, bias, koff, outf, Ho, Wo, Op, Co, sy, sx, act, alpha, nt=False):
    """xf: flat window, rows Wp pixels apart; wf: flat (K, CoP) weights, k = (ky, kx, ci);
    bias: (CoP,); koff[k]: window offset of term k; outf: flat (Ho, Wo, Co), rows Op
    pixels apart; nt: non-temporal stores (outf on 64-byte lines, Co == CoP)."""
    xps = sx * Ci
    epi = np.int64(3) if nt else np.int64(1)
    if Co == CoP:
        for r in prange(Ho):
            _row(xf, r * sy * Wp * Ci, xps, koff, koff.shape[0], wf, np.int64(0), CoP, bias, outf, r * Op * Co,
                 Co, Wo, act, alpha, epi)
            if nt:
                sfence()
    else:
        for r in prange(Ho):
            tmp = np.empty(Wo * CoP, np.float32)
            _row(xf, r * sy * Wp * Ci, xps, koff, koff.shape[0], wf, np.int64(0), CoP, bias, tmp, np.int64(0),
                 CoP, Wo, act, alpha, np.int64(1))
            for c in range(Wo):
                for co in range(Co):
                    outf[r * Op * Co + c * Co + co] = tmp[c * CoP + co]
    return outf


@njit(cache=True, nogil=True, fastmath=FM, _nrt=False)
def _no_tap(outf, o, bias, act, a32):
    """The output pixel at outf[o:] that no tap reaches: act(0 + bias)."""
    for co in range(bias.shape[0]):
        v = np.float32(0.0) + bias[co]
        if act == 1:
            v = v if v > 0.0 else np.float32(0.0)
        elif act == 2:
            v = v if v >= 0.0 else v * a32
        outf[o + co] = v


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv_transpose2d_blocked(xf, Hi, Wi, Wp, Ci, wf, kh, kw, bias, outf, Ho, Wo, Op, Co, sy, sx, ty, tx,
                             act, alpha):
    """Transposed conv with kh <= sy, kw <= sx, dilation 1, groups 1, Co % 16 == 0: every
    output pixel takes at most one tap, (ky, kx) = ((r + ty) % sy, (c + tx) % sx), so each
    (row, kx) is a GEMM over consecutive input pixels. Same sum order as the generic route
    (acc = 0; acc += x * w over ci; act(acc + bias)); pixels with no tap get act(0 + bias).
    wf: the (kh*kw, Ci, Co) tap matrices packed by :func:`pack_cols`; input rows lie Wp
    pixels apart in xf, output rows Op pixels apart in outf."""
    noff = np.zeros(0, np.int64)
    a32 = np.float32(alpha)
    for r in prange(Ho):
        ky = (r + ty) % sy
        iy = (r + ty) // sy
        for kx in range(sx):
            cf = (kx - tx) % sx            # first output column of this tap class
            if cf >= Wo:
                continue
            ncol = (Wo - 1 - cf) // sx + 1
            ix0 = (cf + tx) // sx
            nval = 0
            if ky < kh and kx < kw and iy < Hi:
                nval = max(0, min(ncol, Wi - ix0))
            if nval > 0:
                _row(xf, (iy * Wp + ix0) * Ci, Ci, noff, Ci, wf, (ky * kw + kx) * Ci * Co, Co,
                     bias, outf, (r * Op + cf) * Co, sx * Co, nval, act, alpha, np.int64(1))
            for j in range(nval, ncol):
                _no_tap(outf, (r * Op + cf + j * sx) * Co, bias, act, a32)
    return outf


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv_transpose2d_paired(xf, Hi, Wi, Wp, Ci, wp, wf, kh, kw, bias, bias2, outf, Ho, Wo, Op, Co, ty, tx,
                            act, alpha, nt=False):
    """Transposed conv with kernel == stride (kh = sy, kw = sx), dilation 1, groups 1,
    Co % 16 == 0 (UNet's 2x2 stride-2 up-conv). Input pixel ix feeds the kw adjacent
    output pixels sx*ix - tx + kx, kx < kw, whose kw*Co outputs are contiguous in HWC:
    per output row one GEMM over consecutive input pixels with K = Ci and kw*Co columns
    (wp: the kh (Ci, kw*Co) matrices [w[ky, 0] | w[ky, 1] | ...] packed by pack_cols;
    bias2: bias repeated kw times). Wider column blocks than one tap's Co (2x2, Co = 16:
    the 8x2 micro-kernel instead of 8x1) and one pass over the input row instead of kw.
    Columns of a pair cut by the window edge, or past the input, take the per-tap route
    (wf, as conv_transpose2d_blocked; ``nt``: the paired columns with non-temporal stores, outf on
    64-byte lines). Every element is the same sum as there
    (acc = 0; acc = fma(x, w, acc) over ci in order; act(acc + bias)): same bits. Input
    rows lie Wp pixels apart in xf, output rows Op pixels apart in outf."""
    sx = kw
    epi = np.int64(3) if nt else np.int64(1)
    noff = np.zeros(0, np.int64)
    a32 = np.float32(alpha)
    C2 = kw * Co
    cf0 = (sx - tx % sx) % sx                     # first column with kx == 0
    ix0 = (cf0 + tx) // sx
    npair = (Wo - cf0) // sx if Wo > cf0 else 0
    for r in prange(Ho):
        ky = (r + ty) % kh
        iy = (r + ty) // kh
        nval = 0
        if iy < Hi:
            nval = max(0, min(npair, Wi - ix0))
            if nval > 0:
                _row(xf, (iy * Wp + ix0) * Ci, Ci, noff, Ci, wp, ky * Ci * C2, C2,
                     bias2, outf, (r * Op + cf0) * Co, C2, nval, act, alpha, epi)
        c = 0
        while c < Wo:
            if c == cf0 and nval > 0:
                c = cf0 + nval * sx                 # the paired columns, done above
                continue
            kx = (c + tx) % sx
            ix = (c + tx) // sx
            if iy < Hi and ix < Wi:
                _row(xf, (iy * Wp + ix) * Ci, Ci, noff, Ci, wf, (ky * kw + kx) * Ci * Co, Co,
                     bias, outf, (r * Op + c) * Co, Co, np.int64(1), act, alpha, np.int64(1))
            else:
                _no_tap(outf, (r * Op + c) * Co, bias, act, a32)
            c += 1
        if nt:
            sfence()
    return outf


def col_blocks(CoP):
    """(co0, width) of the output-channel blocks the micro-kernels take: 64s, then 32, 16."""
    out, co0 = [], 0
    while co0 < CoP:
        cb = 64 if CoP - co0 >= 64 else 32 if CoP - co0 >= 32 else 16
        out.append((co0, cb))
        co0 += cb
    return out


def pack_cols(m):
    """(..., K, CoP) -> flat, each (K, CoP) matrix stored block by block: the block of
    columns [co0, co0 + cb) as a contiguous (K, cb) array at offset co0 * K, so the
    micro-kernel streams its weights sequentially."""
    m = np.asarray(m, np.float32)
    *lead, K, CoP = m.shape
    m = m.reshape(-1, K, CoP)
    out = np.empty((m.shape[0], K * CoP), np.float32)
    for co0, cb in col_blocks(CoP):
        out[:, co0 * K:(co0 + cb) * K] = m[:, :, co0:co0 + cb].reshape(m.shape[0], K * cb)
    return out.reshape(-1)


def pack_weights(w):
    """(kh, kw, Ci, Co) -> (K, CoP) with k = (ky, kx, ci), Co padded to 16 lanes, packed
    by :func:`pack_cols`."""
    kh, kw, Ci, Co = w.shape
    CoP = -(-Co // 16) * 16
    K = kh * kw * Ci
    wf = np.zeros((K, CoP), np.float32)
    wf[:, :Co] = w.reshape(K, Co)
    return pack_cols(wf), CoP


def tap_offsets(kh, kw, Ci, Wi, dy, dx):
    """koff[k] for k = (ky, kx, ci): offset of term k in the flat window."""
    ky, kx, ci = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(Ci), indexing="ij")
    return ((ky * dy * Wi + kx * dx) * Ci + ci).reshape(-1).astype(np.int64)
