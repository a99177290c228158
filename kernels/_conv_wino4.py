"""Winograd F(4x4, 3x3) convolution, stride 1, dilation 1, groups 1 (private).

Output tiles of 4x4 pixels are anchored to the window origin, so the executor
must ask for regions whose global origin and size are multiples of 4
(``conv_tile`` says so). Per tile the arithmetic is fixed:

* input transform  V = B^T d B  on the 6x6 input patch (zeros past the window),
* 36 GEMMs         M[xi] = V[xi] @ U[xi]  (``_conv_wino._gemm``: one FMA per ci, in
                   order, partial sums over blocks of KC = 128 channels added in order),
* output transform Y = A^T M A,  then + bias, then the activation.

None of it depends on where the tile sits, how many tiles a work item holds or
which thread runs it. The transforms use explicit FMAs (``vfma``) and no
fast-math contraction, so their rounding is fixed by the source.

Interpolation points 0, 1, -1, 1/2, -2 and infinity (not Lavin's 0, +-1, +-2):
every coefficient of B^T and A^T is a small dyadic number (exact in float32)
and the error is 2.5x lower than with +-2 (a NumPy float32 simulation, 32..512
channels: 2e-6..3e-6 of max|ref| against 5e-6..8e-6). G (thirds, fifteenths) is
applied in float64 and U rounded once to float32. Measured (``benchmarks/kernels.py
--accuracy``, max err / max|ref| vs float64): 1.6e-6 .. 3.9e-6 per layer on 32..512
channels (F(2x2) 2e-7 .. 6e-7, PyTorch 3e-7); whole UNet-16/32/64 1.3e-7 .. 1.9e-7
(benchmarks/README.md).

    B^T = [[1, -3/2, -2,  3/2,  1,  0],      A^T = [[1, 1,  1,   1,    1, 0],
           [0, -1,   1/2, 5/2,  1,  0],             [0, 1, -1, 1/2,   -2, 0],
           [0,  1,  -5/2, 1/2,  1,  0],             [0, 1,  1, 1/4,    4, 0],
           [0, -2,  -1,   2,    1,  0],             [0, 1, -1, 1/8,   -8, 1]]
           [0,  1/2, -1, -1/2,  1,  0],
           [0,  1,  -3/2, -2, 3/2,  1]]      G = [[1, 0, 0], [1/3, 1/3, 1/3],
                                                  [-1/3, 1/3, -1/3],
                                                  [-16/15, -8/15, -4/15],
                                                  [1/15, -2/15, 4/15], [0, 0, 1]]

Caveat (as F(2x2)): a non-finite input poisons the whole 4x4 output tile of
every patch containing it; hirestile rejects non-finite images up front.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._conv_blocked import pack_cols
from ._conv_simd import sfence, vact, vadd, vbcast, vfma, vload, vstore, vstore_nt, vsub
from ._conv_wino import _gemm, grid, patch

N = 6          # patch side
NX = N * N     # Winograd components

# points 0, 1, -1, 1/2, -2, inf: G (float64; the exact fractions above)
G = np.array([[1.0, 0.0, 0.0],
              [1 / 3, 1 / 3, 1 / 3],
              [-1 / 3, 1 / 3, -1 / 3],
              [-16 / 15, -8 / 15, -4 / 15],
              [1 / 15, -2 / 15, 4 / 15],
              [0.0, 0.0, 1.0]])
BT = np.array([[1, -1.5, -2, 1.5, 1, 0],
               [0, -1, 0.5, 2.5, 1, 0],
               [0, 1, -2.5, 0.5, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 0.5, -1, -0.5, 1, 0],
               [0, 1, -1.5, -2, 1.5, 1]])
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 0.5, -2, 0],
               [0, 1, 1, 0.25, 4, 0],
               [0, 1, -1, 0.125, -8, 1]])


@njit(parallel=True, cache=True, nogil=True)
def _wt(w, G, U):
    kh, kw, Ci, Co = w.shape
    for ci in prange(Ci):
        a = np.empty((N, 3))
        for co in range(Co):
            for j in range(3):          # a = G g, summed k = 0, 1, 2 in float64
                g0 = np.float64(w[0, j, ci, co])
                g1 = np.float64(w[1, j, ci, co])
                g2 = np.float64(w[2, j, ci, co])
                for i in range(N):
                    a[i, j] = G[i, 0] * g0 + G[i, 1] * g1 + G[i, 2] * g2
            for i in range(N):          # U = a G^T
                h0, h1, h2 = a[i, 0], a[i, 1], a[i, 2]
                for j in range(N):
                    U[N * i + j, ci, co] = np.float32(G[j, 0] * h0 + G[j, 1] * h1 + G[j, 2] * h2)
    return U


def weight_transform(w):
    """U[6*a + b, ci, co] = (G g G^T)[a, b] for g = w[:, :, ci, co], in float64 rounded once
    to float32 (a function of w alone); the 36 (Ci, Co) matrices packed by ``pack_cols``, flat."""
    U = np.empty((NX,) + w.shape[2:], np.float32)
    return pack_cols(_wt(w, G, U))


@njit(cache=True, nogil=True, _nrt=False)
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T d for one 6-vector (fixed operation order, explicit FMAs)."""
    p = vsub(d3, d1)
    q = vsub(d4, d2)
    r0 = vfma(vbcast(np.float32(1.5)), p, vfma(vbcast(np.float32(-2.0)), d2, vadd(d0, d4)))
    r1 = vfma(vbcast(np.float32(2.5)), d3, vfma(vbcast(np.float32(0.5)), d2, vsub(d4, d1)))
    r2 = vfma(vbcast(np.float32(-2.5)), d2, vfma(vbcast(np.float32(0.5)), d3, vadd(d4, d1)))
    r3 = vfma(vbcast(np.float32(2.0)), p, q)
    r4 = vfma(vbcast(np.float32(-0.5)), p, q)
    r5 = vfma(vbcast(np.float32(1.5)), q, vfma(vbcast(np.float32(-2.0)), d3, vadd(d1, d5)))
    return r0, r1, r2, r3, r4, r5


@njit(cache=True, nogil=True, _nrt=False)
def _at(m0, m1, m2, m3, m4, m5):
    """A^T m for one 6-vector (fixed operation order, explicit FMAs)."""
    a = vadd(m1, m2)
    b = vsub(m1, m2)
    y0 = vadd(vadd(m0, a), vadd(m3, m4))
    y1 = vfma(vbcast(np.float32(0.5)), m3, vfma(vbcast(np.float32(-2.0)), m4, b))
    y2 = vfma(vbcast(np.float32(0.25)), m3, vfma(vbcast(np.float32(4.0)), m4, a))
    y3 = vfma(vbcast(np.float32(0.125)), m3, vfma(vbcast(np.float32(-8.0)), m4, vadd(b, m5)))
    return y0, y1, y2, y3


@njit(cache=True, nogil=True, _nrt=False)
def _in_transform(src, base, rs, cs, Ci, V, vb, vxs, T):
    """V[vb + xi*vxs + ci] = (B^T d B)[xi] for d[i][j] = src[base + i*rs + j*cs + ci];
    T: 576 floats of scratch (B^T d, column by column)."""
    for c in range(0, Ci, 16):
        for j in range(N):
            o = base + j * cs + c
            t0, t1, t2, t3, t4, t5 = _bt(vload(src, o), vload(src, o + rs), vload(src, o + 2 * rs),
                                         vload(src, o + 3 * rs), vload(src, o + 4 * rs),
                                         vload(src, o + 5 * rs))
            vstore(T, (0 * N + j) * 16, t0)
            vstore(T, (1 * N + j) * 16, t1)
            vstore(T, (2 * N + j) * 16, t2)
            vstore(T, (3 * N + j) * 16, t3)
            vstore(T, (4 * N + j) * 16, t4)
            vstore(T, (5 * N + j) * 16, t5)
        for i in range(N):
            o = i * N * 16
            v0, v1, v2, v3, v4, v5 = _bt(vload(T, o), vload(T, o + 16), vload(T, o + 32),
                                         vload(T, o + 48), vload(T, o + 64), vload(T, o + 80))
            q = vb + i * N * vxs + c
            vstore(V, q, v0)
            vstore(V, q + vxs, v1)
            vstore(V, q + 2 * vxs, v2)
            vstore(V, q + 3 * vxs, v3)
            vstore(V, q + 4 * vxs, v4)
            vstore(V, q + 5 * vxs, v5)


@njit(cache=True, nogil=True, _nrt=False)
def _out_transform(M, mb, mxs, bias, co, act, alpha, dst, db, rs, cs, nr, nc, T, nt):
    """Y = A^T m A on m[xi] = M[mb + xi*mxs : +16]; dst[db + i*rs + j*cs] = act(Y[i, j] + bias)
    for i < nr, j < nc (``nt``: non-temporal stores, dst on 64-byte lines); T: scratch (A^T m,
    column by column)."""
    for j in range(N):
        o = mb + j * mxs
        s0, s1, s2, s3 = _at(vload(M, o), vload(M, o + N * mxs), vload(M, o + 2 * N * mxs),
                             vload(M, o + 3 * N * mxs), vload(M, o + 4 * N * mxs),
                             vload(M, o + 5 * N * mxs))
        vstore(T, (0 * N + j) * 16, s0)
        vstore(T, (1 * N + j) * 16, s1)
        vstore(T, (2 * N + j) * 16, s2)
        vstore(T, (3 * N + j) * 16, s3)
    b = vload(bias, co)
    for i in range(nr):
        o = i * N * 16
        y0, y1, y2, y3 = _at(vload(T, o), vload(T, o + 16), vload(T, o + 32),
                             vload(T, o + 48), vload(T, o + 64), vload(T, o + 80))
        d = db + i * rs
        y0 = vact(vadd(y0, b), act, alpha)
        y1 = vact(vadd(y1, b), act, alpha)
        y2 = vact(vadd(y2, b), act, alpha)
        y3 = vact(vadd(y3, b), act, alpha)
        if nt and nc == 4:
            vstore_nt(dst, d, y0)
            vstore_nt(dst, d + cs, y1)
            vstore_nt(dst, d + 2 * cs, y2)
            vstore_nt(dst, d + 3 * cs, y3)
            continue
        vstore(dst, d, y0)
        if nc > 1:
            vstore(dst, d + cs, y1)
        if nc > 2:
            vstore(dst, d + 2 * cs, y2)
        if nc > 3:
            vstore(dst, d + 3 * cs, y3)


def pick_nt(Ci, Co, ntx, budget=256 * 1024):
    """Tiles per work item (never affects the result). Unlike F(2x2)'s, the whole item's
    V and M (36 components x NT x (Ci + Co) floats) should stay in L2 between the
    transforms and the GEMMs: NT within ~budget bytes of them, a multiple of 8 in
    [16, 96], a tile row split into equal chunks (measured on Zen 4, 2 threads: 16-32
    tiles beat 86-96 by 1.1-1.3x on 16..64 channels, wide layers about even)."""
    nt = budget // (NX * 4 * (Ci + Co)) // 8 * 8
    nt = max(16, min(96, nt))
    nch = -(-ntx // nt)
    return max(1, -(-ntx // nch))


@njit(parallel=True, cache=True, nogil=True)
def conv2d_wino4(xf, Hi, Wi, Wp, Ci, xf2, Wp2, Ci2, U, bias, outf, Ho, Wo, Op, Co, NT, Vs, Ms, Ds, act, alpha,
                 nt_store):
    """xf: flat (Hi, Wi, Ci) window whose rows lie Wp pixels apart, Ci % 16 == 0; xf2 (rows
    Wp2 pixels apart, Ci2 % 16 == 0 channels; Ci2 == 0: none): the same window's channels
    Ci.. Ci + Ci2, kept in a buffer of their own -- the convolution reads the concatenation
    of the two without it being built (each channel's input transform is its own, so the
    values are those of the concatenated window); U: flat (36, Ci + Ci2, Co), Co % 16 == 0;
    outf: flat (Ho, Wo, Co) = (Hi-2, Wi-2, Co) output, rows Op pixels apart. Vs, Ms, Ds:
    per-thread scratch (nthreads, ...), Ds >= 36*(Ci + Ci2) + 576.
    nt_store: write outf with non-temporal stores (it lies on 64-byte lines; large outputs)."""
    noff = np.zeros(0, np.int64)
    Ct = Ci + Ci2
    nty, ntx, nch, vxs, mxs = grid(Ho, Wo, 4, NT, Ct, Co)
    for it in prange(nty * nch):
        tid = numba.get_thread_id()
        V, M, D = Vs[tid], Ms[tid], Ds[tid]
        T = D[NX * Ct:NX * Ct + NX * 16]     # transform scratch, past the padded patch
        ty = it // nch
        tx0 = (it - ty * nch) * NT
        nt = min(NT, ntx - tx0)
        r0 = 4 * ty
        for t in range(nt):
            c0 = 4 * (tx0 + t)
            if r0 + N <= Hi and c0 + N <= Wi:
                _in_transform(xf, (r0 * Wp + c0) * Ci, Wp * Ci, Ci, Ci, V, t * Ct, vxs, T)
                if Ci2 > 0:
                    _in_transform(xf2, (r0 * Wp2 + c0) * Ci2, Wp2 * Ci2, Ci2, Ci2, V, t * Ct + Ci, vxs, T)
            else:  # patch runs past the window: copy with zeros, same transform
                patch(xf, Wp, Ci, r0, c0, min(N, Hi - r0), min(N, Wi - c0), N, D)
                _in_transform(D, np.int64(0), N * Ci, Ci, Ci, V, t * Ct, vxs, T)
                if Ci2 > 0:
                    patch(xf2, Wp2, Ci2, r0, c0, min(N, Hi - r0), min(N, Wi - c0), N, D)
                    _in_transform(D, np.int64(0), N * Ci2, Ci2, Ci2, V, t * Ct + Ci, vxs, T)
        for xi in range(NX):
            _gemm(V, xi * vxs, Ct, nt, noff, U, xi * Ct * Co, Co, M, xi * mxs, bias)
        nr = min(4, Ho - r0)
        for t in range(nt):
            c0 = 4 * (tx0 + t)
            nc = min(4, Wo - c0)
            for co in range(0, Co, 16):
                _out_transform(M, t * Co + co, mxs, bias, co, act, alpha,
                               outf, (r0 * Op + c0) * Co + co, Op * Co, Co, nr, nc, T, nt_store)
        if nt_store:
            sfence()
    return outf
