"""Winograd F(2x2, 3x3) convolution, stride 1, dilation 1, groups 1 (private).

Output tiles of 2x2 pixels are anchored to the window origin, so the executor
must ask for regions whose global origin and size are multiples of 2
(``conv_tile`` says so). Per tile the arithmetic is fixed:

* input transform  V = B^T d B  on the 4x4 input patch (zeros past the window),
* 16 GEMMs         M[xi] = V[xi] @ U[xi]  (micro-kernel, one FMA per ci, in order,
                   partial sums over blocks of KC = 128 channels added in order),
* output transform Y = A^T M A,  then + bias, then the activation.

None of it depends on where the tile sits, how many tiles a work item holds or
which thread runs it (the micro-kernel computes each tile's row alone; tiles
past the item end repeat the last one and are not stored). Accuracy (vs
float64, max err / max |ref|): 2e-7 .. 6e-7 for 32 .. 512 input channels,
within 2x of PyTorch's blocked float32 sums (benchmarks/kernels.py --accuracy).

Caveat: a non-finite input poisons the whole 2x2 output tile of every patch
containing it (inf - inf in the transforms), not only the outputs whose
receptive field holds it; hirestile rejects non-finite images up front.

Work shape: each work item is a strip of NT tiles of one tile row; the thread
transforms it into its own L2-resident buffers, runs the 16 small GEMMs and
transforms back.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from ._conv_blocked import pack_cols
from ._conv_mk import g6x4, g8x1, g8x2
from ._conv_simd import vact, vadd, vload, vstore, vsub

FM = {"contract"}


@njit(parallel=True, cache=True, nogil=True)
def _wt(w, U):
    kh, kw, Ci, Co = w.shape
    for ci in prange(Ci):
        for co in range(Co):
            # a = G g  (rows), G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
            a = np.empty((4, 3))
            for j in range(3):
                g0 = np.float64(w[0, j, ci, co])
                g1 = np.float64(w[1, j, ci, co])
                g2 = np.float64(w[2, j, ci, co])
                a[0, j] = g0
                a[1, j] = (g0 + g1 + g2) * 0.5
                a[2, j] = (g0 - g1 + g2) * 0.5
                a[3, j] = g2
            for i in range(4):
                h0, h1, h2 = a[i, 0], a[i, 1], a[i, 2]
                U[4 * i + 0, ci, co] = np.float32(h0)
                U[4 * i + 1, ci, co] = np.float32((h0 + h1 + h2) * 0.5)
                U[4 * i + 2, ci, co] = np.float32((h0 - h1 + h2) * 0.5)
                U[4 * i + 3, ci, co] = np.float32(h2)
    return U


def weight_transform(w):
    """U[4*a + b, ci, co] = (G g G^T)[a, b] for g = w[:, :, ci, co], in float64 rounded once
    to float32 (a function of w alone, so every window sees the same U); the 16 (Ci, Co)
    matrices packed by ``pack_cols``, flat."""
    U = np.empty((16,) + w.shape[2:], np.float32)
    return pack_cols(_wt(w, U))


@njit(cache=True, nogil=True, fastmath=FM, _nrt=False)
def _in_transform(src, base, rs, cs, Ci, V, vb, vxs):
    """V[vb + xi*vxs + ci] = (B^T d B)[xi] for d[i][j] = src[base + i*rs + j*cs + ci]."""
    for c in range(0, Ci, 16):
        o = base + c
        d00 = vload(src, o); d01 = vload(src, o + cs); d02 = vload(src, o + 2 * cs); d03 = vload(src, o + 3 * cs)
        o += rs
        d10 = vload(src, o); d11 = vload(src, o + cs); d12 = vload(src, o + 2 * cs); d13 = vload(src, o + 3 * cs)
        o += rs
        d20 = vload(src, o); d21 = vload(src, o + cs); d22 = vload(src, o + 2 * cs); d23 = vload(src, o + 3 * cs)
        o += rs
        d30 = vload(src, o); d31 = vload(src, o + cs); d32 = vload(src, o + 2 * cs); d33 = vload(src, o + 3 * cs)
        # rows: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3
        t00 = vsub(d00, d20); t01 = vsub(d01, d21); t02 = vsub(d02, d22); t03 = vsub(d03, d23)
        t10 = vadd(d10, d20); t11 = vadd(d11, d21); t12 = vadd(d12, d22); t13 = vadd(d13, d23)
        t20 = vsub(d20, d10); t21 = vsub(d21, d11); t22 = vsub(d22, d12); t23 = vsub(d23, d13)
        t30 = vsub(d10, d30); t31 = vsub(d11, d31); t32 = vsub(d12, d32); t33 = vsub(d13, d33)
        # columns, same formulas
        q = vb + c
        vstore(V, q + 0 * vxs, vsub(t00, t02)); vstore(V, q + 1 * vxs, vadd(t01, t02))
        vstore(V, q + 2 * vxs, vsub(t02, t01)); vstore(V, q + 3 * vxs, vsub(t01, t03))
        vstore(V, q + 4 * vxs, vsub(t10, t12)); vstore(V, q + 5 * vxs, vadd(t11, t12))
        vstore(V, q + 6 * vxs, vsub(t12, t11)); vstore(V, q + 7 * vxs, vsub(t11, t13))
        vstore(V, q + 8 * vxs, vsub(t20, t22)); vstore(V, q + 9 * vxs, vadd(t21, t22))
        vstore(V, q + 10 * vxs, vsub(t22, t21)); vstore(V, q + 11 * vxs, vsub(t21, t23))
        vstore(V, q + 12 * vxs, vsub(t30, t32)); vstore(V, q + 13 * vxs, vadd(t31, t32))
        vstore(V, q + 14 * vxs, vsub(t32, t31)); vstore(V, q + 15 * vxs, vsub(t31, t33))


@njit(cache=True, nogil=True, fastmath=FM, _nrt=False)
def _out_transform(M, mb, mxs, bias, co, act, alpha, dst, db, rs, cs, nr, nc):
    """Y = A^T m A on m[xi] = M[mb + xi*mxs : +16]; dst[db + i*rs + j*cs] = act(Y[i, j] + bias)
    for i < nr, j < nc."""
    m00 = vload(M, mb); m01 = vload(M, mb + mxs)
    m02 = vload(M, mb + 2 * mxs); m03 = vload(M, mb + 3 * mxs)
    m10 = vload(M, mb + 4 * mxs); m11 = vload(M, mb + 5 * mxs)
    m12 = vload(M, mb + 6 * mxs); m13 = vload(M, mb + 7 * mxs)
    m20 = vload(M, mb + 8 * mxs); m21 = vload(M, mb + 9 * mxs)
    m22 = vload(M, mb + 10 * mxs); m23 = vload(M, mb + 11 * mxs)
    m30 = vload(M, mb + 12 * mxs); m31 = vload(M, mb + 13 * mxs)
    m32 = vload(M, mb + 14 * mxs); m33 = vload(M, mb + 15 * mxs)
    # rows: s0 = (m0 + m1) + m2, s1 = (m1 - m2) - m3
    s00 = vadd(vadd(m00, m10), m20); s01 = vadd(vadd(m01, m11), m21)
    s02 = vadd(vadd(m02, m12), m22); s03 = vadd(vadd(m03, m13), m23)
    s10 = vsub(vsub(m10, m20), m30); s11 = vsub(vsub(m11, m21), m31)
    s12 = vsub(vsub(m12, m22), m32); s13 = vsub(vsub(m13, m23), m33)
    b = vload(bias, co)
    vstore(dst, db, vact(vadd(vadd(vadd(s00, s01), s02), b), act, alpha))
    if nc > 1:
        vstore(dst, db + cs, vact(vadd(vsub(vsub(s01, s02), s03), b), act, alpha))
    if nr > 1:
        vstore(dst, db + rs, vact(vadd(vadd(vadd(s10, s11), s12), b), act, alpha))
        if nc > 1:
            vstore(dst, db + rs + cs, vact(vadd(vsub(vsub(s11, s12), s13), b), act, alpha))


KC = 128  # ci per partial sum (a constant: part of every element's summation order)


@njit(cache=True, nogil=True, fastmath=FM, _nrt=False)
def _gemm(V, vb, Ci, nt, noff, U, ub, CoP, M, mb, bias):
    """M[mb + t*CoP + co] = sum_ci V[vb + t*Ci + ci] * U_xi[ci, co] for t < nt, with the
    (Ci, CoP) matrix U_xi packed at U[ub:] by ``pack_cols``. ``bias`` (the layer's, unused:
    epilogues 0 and 2) and int64 constants make the micro-kernels' argument types those of
    ``_conv_blocked._row``'s calls, so both routes share one compiled version of each.

    Blocked summation: each run of KC channels is summed in registers (one FMA per
    ci, in order) and the partial sums are added in order, ((s0 + s1) + s2) + ...;
    it keeps the float32 error within 2x of PyTorch's at 512 channels (a single
    sequential sum: 4x) for 4-10 % more GEMM time on the widest layers."""
    z = np.int64(0)
    co0 = np.int64(0)
    while co0 < CoP:
        cb = 64 if CoP - co0 >= 64 else 32 if CoP - co0 >= 32 else 16
        for kc in range(0, Ci, KC):
            kn = min(KC, Ci - kc)
            epi = np.int64(0) if kc == 0 else np.int64(2)
            wb = ub + co0 * Ci + kc * cb
            if cb == 64:
                for t0 in range(0, nt, 6):
                    g6x4(V, vb + t0 * Ci + kc, Ci, min(6, nt - t0), noff, kn, U, wb, 64,
                         M, mb + t0 * CoP + co0, CoP, bias, z, epi, z, 0.0)
            elif cb == 32:
                for t0 in range(0, nt, 8):
                    g8x2(V, vb + t0 * Ci + kc, Ci, min(8, nt - t0), noff, kn, U, wb, 32,
                         M, mb + t0 * CoP + co0, CoP, bias, z, epi, z, 0.0)
            else:
                for t0 in range(0, nt, 8):
                    g8x1(V, vb + t0 * Ci + kc, Ci, min(8, nt - t0), noff, kn, U, wb, 16,
                         M, mb + t0 * CoP + co0, CoP, bias, z, epi, z, 0.0)
        co0 += cb


@njit(cache=True, nogil=True)
def grid(Ho, Wo, m, NT, Ci, Co):
    """Work of a Winograd route with m x m output tiles and NT tiles per work item: (tile
    rows, tiles per row, items per tile row, stride of V's and of M's components; the
    strides padded off 4 KiB multiples against cache-set conflicts)."""
    ntx = (Wo + m - 1) // m
    return (Ho + m - 1) // m, ntx, (ntx + NT - 1) // NT, NT * Ci + 16, NT * Co + 16


@njit(cache=True, nogil=True)
def patch(xf, Wp, Ci, r0, c0, nr, nc, n, D):
    """D[:n*n*Ci] = the n x n patch of pixels at window row r0, column c0 (pixels packed,
    Ci channels each), of which the nr x nc inside the window are copied and the rest
    zero: the patches that run past the window (F(2x2): n 4, F(4x4): n 6)."""
    D[:n * n * Ci] = 0.0
    for i in range(nr):
        for j in range(nc):
            s = ((r0 + i) * Wp + c0 + j) * Ci
            d = (i * n + j) * Ci
            for k in range(Ci):          # not D[d:d + Ci] = xf[s:s + Ci]: its shape check
                D[d + k] = xf[s + k]     # compiles an error message (~2 s)


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv2d_wino2(xf, Hi, Wi, Wp, Ci, U, bias, outf, Ho, Wo, Op, Co, NT, Vs, Ms, Ds, act, alpha):
    """xf: flat (Hi, Wi, Ci) window whose rows lie Wp pixels apart, Ci % 16 == 0; U: flat
    (16, Ci, Co), Co % 16 == 0; outf: flat (Ho, Wo, Co) = (Hi-2, Wi-2, Co) output, rows Op
    pixels apart. Vs, Ms, Ds: per-thread scratch (nthreads, ...)."""
    noff = np.zeros(0, np.int64)
    nty, ntx, nch, vxs, mxs = grid(Ho, Wo, 2, NT, Ci, Co)
    for it in prange(nty * nch):
        tid = numba.get_thread_id()
        V, M, D = Vs[tid], Ms[tid], Ds[tid]
        ty = it // nch
        tx0 = (it - ty * nch) * NT
        nt = min(NT, ntx - tx0)
        r0 = 2 * ty
        for t in range(nt):
            c0 = 2 * (tx0 + t)
            if r0 + 4 <= Hi and c0 + 4 <= Wi:
                _in_transform(xf, (r0 * Wp + c0) * Ci, Wp * Ci, Ci, Ci, V, t * Ci, vxs)
            else:  # patch runs past the window: copy with zeros, same transform
                patch(xf, Wp, Ci, r0, c0, min(4, Hi - r0), min(4, Wi - c0), 4, D)
                _in_transform(D, np.int64(0), 4 * Ci, Ci, Ci, V, t * Ci, vxs)
        for xi in range(16):
            _gemm(V, xi * vxs, Ci, nt, noff, U, xi * Ci * Co, Co, M, xi * mxs, bias)
        nr = min(2, Ho - r0)
        for t in range(nt):
            c0 = 2 * (tx0 + t)
            nc = min(2, Wo - c0)
            for co in range(0, Co, 16):
                _out_transform(M, t * Co + co, mxs, bias, co, act, alpha,
                               outf, (r0 * Op + c0) * Co + co, Op * Co, Co, nr, nc)
    return outf


_tls = threading.local()


def scratch(nthreads, NT, Ci, Co, nx=16):
    """Per-thread buffers (nthreads, n), reused across calls (first-touch page faults on
    fresh buffers are costly): V and M for ``nx`` Winograd components, D for one padded
    patch plus nx * 16 floats of transform scratch. Kept per Python thread, so concurrent
    callers never share; shared by the F(2x2) (nx 16) and F(4x4) (nx 36) routes."""
    need = (nx * (NT * Ci + 16), nx * (NT * Co + 16), nx * (Ci + 16))
    have = getattr(_tls, "bufs", None)
    if have is not None and have[0].shape[0] >= nthreads and all(
            b.shape[1] >= n for b, n in zip(have, need)):
        return have
    if have is not None:
        nthreads = max(nthreads, have[0].shape[0])
        need = tuple(max(n, b.shape[1]) for b, n in zip(have, need))
    _tls.bufs = tuple(np.zeros((nthreads, n), np.float32) for n in need)
    return _tls.bufs


def pick_nt(Ci, Co, ntx, budget=384 * 1024):
    """Tiles per work item (never affects the result). Per Winograd component xi the GEMM
    touches V[xi] (NT x Ci), M[xi] (NT x Co) and a 64-column block of U[xi] (Ci x 64):
    keep those within ~budget bytes of L2, NT a multiple of 24 (the micro-kernels take 6
    or 8 tiles), at most 96, and split a tile row into equal chunks."""
    nt = (budget - 256 * Ci) // (4 * (Ci + Co))
    nt = max(24, min(96, nt // 24 * 24))
    nch = -(-ntx // nt)
    nt = -(-ntx // nch)
    return max(1, nt)
