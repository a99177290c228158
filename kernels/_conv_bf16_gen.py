"""Generator of the bf16 micro-kernels in ``_conv_bf16_mk.py`` (private).

Run ``python kernels/_conv_bf16_gen.py`` to rewrite ``_conv_bf16_mk.py``; the generated
module is committed so that Numba's ``cache=True`` works (no ``exec``).

The micro-kernel, P output pixels x 16 output channels (P = 8 zmm accumulators), is written
inline in the loops that use it -- ``row_{f}`` (a row of pixels x all column blocks: the
direct "pairs" route and the transposed conv) and ``wgemm_{f}`` (one of the Winograd route's
GEMMs: all the tiles of a work item x 16 columns) -- not called per tile (a Numba call passes
its arrays through the stack: at 16..32 channels, where a tile has only 16..18 terms, the
Winograd route ran 1.06-1.15x faster without, Zen 4, 1 thread, session 13). Per tile, family
``b`` (``vdpbf16ps``):

    acc[p, :] = 0;  for k < K:  acc[p, :] = vdp(acc[p, :], w[wc + 16*k : +16], a[ab_p + koff[k]])

``a`` and ``w`` are uint32 arrays of bf16 pairs (``a[i]`` is one input pixel's channels
2j, 2j+1; ``w`` 16 dwords per vector: output channels x the same channel pair), so term
k adds the odd channel's product, then the even one's, to every accumulator lane.
Family ``e`` is the same with ``vdpe`` (two float32 FMAs in the same order, flushing as
``vdpbf16ps`` does), for CPUs without AVX512_BF16: the same bits.
``ab_p = ab0 + min(p, npix - 1) * aps`` (pixels past ``npix`` repeat the last one and are not
stored), so every pixel's sum is the same instruction sequence whatever ``p`` or ``npix``.
``row_{f}`` stores ``round_bf16(act(acc + bias[co0 : co0 + 16]))`` into float32 ``dst``,
``wgemm_{f}`` the float32 sums as they are.
"""

from __future__ import annotations

try:
    from ._conv_gen import write_module
except ImportError:                  # run as a script: python kernels/_conv_bf16_gen.py
    from _conv_gen import write_module

P = 8  # pixels per register tile (8 zmm accumulators x 16 columns). Zen 4, 1 thread, 3x3: 8x1 203-227 GF/s at
# 16..256 channels; 4x2 .. 6x4 and 12x1 / 14x1 measured slower (LLVM unrolls the k loop and spills); blocking
# the terms so a block of weights stays in L1 (carrying the accumulators through dst) cost 8 %; two column
# blocks per tile (8x2) for the transposed conv: 0.8-0.9x at 64..256 channels (session 13)


def _stores(a, P, ind, store):
    for p in range(P):
        if p == 0:
            a(f"{ind}{store}(dst, db, c0)")
        else:
            a(f"{ind}if npix > {p}:")
            a(f"{ind}    {store}(dst, db + {p} * dps, c{p})")


def gen_row(family):
    """``row_{family}``: a row of output pixels x all column blocks, the P x 16 micro-kernel
    written inline in its loops."""
    L = []
    a = L.append
    dp = "vdp" if family == "b" else "vdpe"
    a("@njit(cache=True, nogil=True, _nrt=False)")
    a(f"def row_{family}(a, xrow, xps, koff, K, w, wb, CoP, bias, dst, rowbase, dps, Wo, act, alpha, nts):")
    a('''    """Wo pixels (pixel c's term k at a[xrow + c*xps + koff[k]]) x CoP columns, the 16-column
    blocks of the (K, CoP) weights packed at w[wb:]; pixel c's block co0 written at
    dst[rowbase + c*dps + co0]: round_bf16(act(acc + bias[co0:co0+16])), acc the module's sum.
    Callers pass int64 values, never literal constants (np.int64(0), not 0): Numba compiles a
    kernel once per argument type, and a literal is a type of its own (``_conv_blocked``).
    nts != 0: non-temporal stores (every vector on a whole 64-byte line of dst; the caller ends
    its work item with sfence)."""''')
    a("    for co0 in range(0, CoP, 16):")
    a("        wc = wb + co0 * K")
    a("        bv = vload(bias, co0)")
    a(f"        for px in range(0, Wo, {P}):")
    a(f"            npix = min({P}, Wo - px)")
    a("            ab0 = xrow + px * xps")
    ind = "            "
    for p in range(1, P):
        a(f"{ind}ab{p} = ab0 + min({p}, npix - 1) * xps")
    for p in range(P):
        a(f"{ind}c{p} = vzero()")
    a(f"{ind}for k in range(K):")
    a(f"{ind}    o = iload(koff, k)")
    a(f"{ind}    b0 = uload(w, wc + k * 16)")
    for p in range(P):
        a(f"{ind}    c{p} = {dp}(c{p}, b0, ubcast_at(a, ab{p} + o))")
    for p in range(P):
        a(f"{ind}c{p} = vround(vact(vadd(c{p}, bv), act, alpha))")
    a(f"{ind}db = rowbase + px * dps + co0")
    a(f"{ind}if nts:")
    _stores(a, P, ind + "    ", "vstore_nt")
    a(f"{ind}else:")
    _stores(a, P, ind + "    ", "vstore")
    a("")
    a("")
    return "\n".join(L)


def gen_wgemm(family):
    """``wgemm_{family}``: one of the Winograd route's GEMMs for the nt tiles of a work item, the
    P x 16 micro-kernel inline (float32 sums stored as they are)."""
    L = []
    a = L.append
    dp = "vdp" if family == "b" else "vdpe"
    a("@njit(cache=True, nogil=True, _nrt=False)")
    a(f"def wgemm_{family}(a, ab, K, nt, w, wc, dst, dbase, dps):")
    a('''    """dst[dbase + t*dps : +16] = sum over the K channel pairs k, in order, of vdp with a[ab + t*K + k] and
    the pair-k row of 16 columns at w[wc + 16*k:], for tiles t < nt."""''')
    a(f"    for t0 in range(0, nt, {P}):")
    a(f"        npix = min({P}, nt - t0)")
    a("        ab0 = ab + t0 * K")
    ind = "        "
    for p in range(1, P):
        a(f"{ind}ab{p} = ab0 + min({p}, npix - 1) * K")
    for p in range(P):
        a(f"{ind}c{p} = vzero()")
    a(f"{ind}for k in range(K):")
    a(f"{ind}    b0 = uload(w, wc + 16 * k)")
    for p in range(P):
        a(f"{ind}    c{p} = {dp}(c{p}, b0, ubcast_at(a, ab{p} + k))")
    a(f"{ind}db = dbase + t0 * dps")
    _stores(a, P, ind, "vstore")
    a("")
    a("")
    return "\n".join(L)


DRIVERS = '''@njit(parallel=True, cache=True, nogil=True)
def conv2d_{f}(src, sb, sp, Wi, Ci, Ch, RB, scratch, wp, CoP, bias, koff, outf, ob, Ho, Wo, Co, op, sy, sx, dy, kh,
              act, alpha, nts):
    """src: the float32 window as uint32, pixel (r, c) at src[sb + r*sp + c*Ci]; it is packed
    into bf16 pairs RB output rows at a time (their input rows, in this thread's part of
    scratch: they stay in cache for the GEMMs that read them); wp: (K, CoP) packed pair weights,
    k = (ky, kx, channel pair); koff[k]: offset of term k in the packed rows; bias: (CoP,);
    output (r, c, co) at outf[ob + r*op + c*Co + co] (rows op apart: a window of rows of a
    wider buffer). The packing is a function of each value alone: no bit depends on RB. nts != 0:
    the output is written with non-temporal stores (Co == CoP, outf[ob] and op on 64-byte lines)."""
    z = np.int64(0)                 # not a literal 0: see row_{f}
    K = koff.shape[0]
    nrin = (RB - 1) * sy + (kh - 1) * dy + 1
    per = nrin * Wi * Ch
    for t in prange((Ho + RB - 1) // RB):
        r0 = t * RB
        r1 = min(Ho, r0 + RB)
        xp = scratch[get_thread_id() * per:(get_thread_id() + 1) * per]
        pack_rows(src, sb + r0 * sy * sp, sp, (r1 - 1 - r0) * sy + (kh - 1) * dy + 1, Wi, Ci, xp)
        tmp = np.empty(8 * CoP if Co != CoP else 0, np.float32)   # Co short of the 16-column blocks
        for r in range(r0, r1):
            xrow = (r - r0) * sy * Wi * Ch
            if Co == CoP:
                row_{f}(xp, xrow, sx * Ch, koff, K, wp, z, CoP, bias, outf, ob + r * op, Co, Wo, act, alpha, nts)
            else:  # 8 pixels at a time through an L1-sized buffer
                for c0 in range(0, Wo, 8):
                    n = min(8, Wo - c0)
                    row_{f}(xp, xrow + c0 * sx * Ch, sx * Ch, koff, K, wp, z, CoP, bias, tmp, z, CoP, n, act, alpha, z)
                    o = ob + r * op + c0 * Co
                    for c in range(n):
                        for co in range(Co):
                            outf[o + c * Co + co] = tmp[c * CoP + co]
        if nts:
            sfence()


@njit(cache=True, nogil=True)
def convT_row_{f}(src, sb, sp, iy, ix0, ix1, nix, Ci, Ch, xp, wp, kh, kw, C2P, bias2, koff, nob, outf, ob, Ho, Wo, Co, op,
                 ty, tx, ia, ib, cpast, act, alpha, nts):
    """Input row iy of :func:`convT_{f}` and its kh output rows (``xp``: this thread's scratch; out of
    the parallel loop's body, which Numba compiles at a cost that grows with it)."""
    z, one = np.int64(0), np.int64(1)   # not literals: see row_{f}
    whole = C2P == kw * Co
    pack_rows(src, sb + iy * sp + ix0 * Ci, sp, one, nix, Ci, xp)
    for ky in range(kh):
        r = iy * kh + ky - ty
        if r < 0 or r >= Ho:
            continue
        o = ob + r * op
        wb = ky * Ch * C2P
        if whole:
            if ib >= ia:
                row_{f}(xp, (ia - ix0) * Ch, Ch, koff, Ch, wp, wb, C2P, bias2, outf, o + (kw * ia - tx) * Co, C2P,
                      ib - ia + 1, act, alpha, nts)
            tmp = np.empty(C2P, np.float32)
            for ix in range(ix0, ix1 + 1):
                if ia <= ix <= ib:
                    continue
                row_{f}(xp, (ix - ix0) * Ch, Ch, koff, Ch, wp, wb, C2P, bias2, tmp, z, C2P, one, act, alpha, z)
                for kx in range(kw):
                    c = kw * ix + kx - tx
                    if 0 <= c < Wo:
                        for co in range(Co):
                            outf[o + c * Co + co] = tmp[kx * Co + co]
        else:
            tmp = np.empty(nix * C2P, np.float32)
            row_{f}(xp, z, Ch, koff, Ch, wp, wb, C2P, bias2, tmp, z, C2P, nix, act, alpha, z)
            for c in range(min(cpast, Wo)):
                base = ((c + tx) // kw - ix0) * C2P + ((c + tx) % kw) * Co
                for co in range(Co):
                    outf[o + c * Co + co] = tmp[base + co]
        for c in range(cpast, Wo):
            for co in range(Co):
                outf[o + c * Co + co] = nob[co]
    if nts:
        sfence()


@njit(parallel=True, cache=True, nogil=True)
def convT_{f}(src, sb, sp, Hi, Wi, Ci, Ch, scratch, wp, kh, kw, C2P, bias2, koff, nob, outf, ob, Ho, Wo, Co, op, ty, tx,
             act, alpha, nts):
    """Transposed conv with kernel == stride: input row iy (pixel (iy, c) at src[sb + iy*sp + c*Ci],
    float32 as uint32) is packed into bf16 pairs in this thread's part of scratch, then each of
    its kh output rows r = iy*kh + ky - ty is one GEMM over its pixels with the kw taps side by side
    (wp: per ky a (Ch, C2P) packed matrix, C2P >= kw*Co); output (r, c) is column ((c + tx) %
    kw)*Co of input pixel (c + tx) // kw, or nob (no tap) past the input. koff = arange(Ch).
    When C2P == kw*Co a pixel's kw*Co columns are its kw output pixels, side by side in the
    output row: the GEMM stores them there (pixels whose outputs all lie inside the row; the
    one or two at the row's ends go through a small buffer). Output as conv2d_{f}; nts != 0: those
    in-row GEMM stores are non-temporal (Co a multiple of 16, outf[ob] and op on 64-byte lines)."""
    ix0 = tx // kw
    ix1 = min((Wo - 1 + tx) // kw, Wi - 1)
    nix = ix1 - ix0 + 1
    iy0 = ty // kh
    iy1 = min((Ho - 1 + ty) // kh, Hi - 1)
    ia = max(ix0, (tx + kw - 1) // kw)
    ib = min(ix1, (Wo - kw + tx) // kw)
    cpast = max(0, kw * (ix1 + 1) - tx)          # first output column past the input
    per = max(nix, 0) * Ch
    nrow = max(0, iy1 - iy0 + 1) if nix > 0 else 0   # not inside prange(): Numba then runs the loop serially
    for it in prange(nrow):
        xp = scratch[get_thread_id() * per:(get_thread_id() + 1) * per]
        convT_row_{f}(src, sb, sp, iy0 + it, ix0, ix1, nix, Ci, Ch, xp, wp, kh, kw, C2P, bias2, koff, nob, outf, ob,
                     Ho, Wo, Co, op, ty, tx, ia, ib, cpast, act, alpha, nts)
    for r in prange(Ho):
        if nix <= 0 or (r + ty) // kh > iy1:
            for c in range(Wo):
                for co in range(Co):
                    outf[ob + r * op + c * Co + co] = nob[co]


@njit(cache=True, nogil=True, _nrt=False)
def in_transform_{f}(src, base, rs, cs, Ci, V, vb, vxs):
    """V[vb + xi*vxs + ci/2] = cvt pairs of (B^T d B)[xi] for d[i][j] = cvt(src[base + i*rs + j*cs + ci])
    (``_bf16_wino``; cvt: ``_bf16_simd``'s VCVTNEPS2BF16 rounding)."""
    for c in range(0, Ci, 16):
        o = base + c
        d00 = {R}(vload(src, o)); d01 = {R}(vload(src, o + cs))
        d02 = {R}(vload(src, o + 2 * cs)); d03 = {R}(vload(src, o + 3 * cs))
        o += rs
        d10 = {R}(vload(src, o)); d11 = {R}(vload(src, o + cs))
        d12 = {R}(vload(src, o + 2 * cs)); d13 = {R}(vload(src, o + 3 * cs))
        o += rs
        d20 = {R}(vload(src, o)); d21 = {R}(vload(src, o + cs))
        d22 = {R}(vload(src, o + 2 * cs)); d23 = {R}(vload(src, o + 3 * cs))
        o += rs
        d30 = {R}(vload(src, o)); d31 = {R}(vload(src, o + cs))
        d32 = {R}(vload(src, o + 2 * cs)); d33 = {R}(vload(src, o + 3 * cs))
        # rows: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3
        t00 = vsub(d00, d20); t01 = vsub(d01, d21); t02 = vsub(d02, d22); t03 = vsub(d03, d23)
        t10 = vadd(d10, d20); t11 = vadd(d11, d21); t12 = vadd(d12, d22); t13 = vadd(d13, d23)
        t20 = vsub(d20, d10); t21 = vsub(d21, d11); t22 = vsub(d22, d12); t23 = vsub(d23, d13)
        t30 = vsub(d10, d30); t31 = vsub(d11, d31); t32 = vsub(d12, d32); t33 = vsub(d13, d33)
        # columns, same formulas
        q = vb + c // 2
        {S}(V, q + 0 * vxs, vsub(t00, t02)); {S}(V, q + 1 * vxs, vadd(t01, t02))
        {S}(V, q + 2 * vxs, vsub(t02, t01)); {S}(V, q + 3 * vxs, vsub(t01, t03))
        {S}(V, q + 4 * vxs, vsub(t10, t12)); {S}(V, q + 5 * vxs, vadd(t11, t12))
        {S}(V, q + 6 * vxs, vsub(t12, t11)); {S}(V, q + 7 * vxs, vsub(t11, t13))
        {S}(V, q + 8 * vxs, vsub(t20, t22)); {S}(V, q + 9 * vxs, vadd(t21, t22))
        {S}(V, q + 10 * vxs, vsub(t22, t21)); {S}(V, q + 11 * vxs, vsub(t21, t23))
        {S}(V, q + 12 * vxs, vsub(t30, t32)); {S}(V, q + 13 * vxs, vadd(t31, t32))
        {S}(V, q + 14 * vxs, vsub(t32, t31)); {S}(V, q + 15 * vxs, vsub(t31, t33))


@njit(cache=True, nogil=True, _nrt=False)
def in_strip_{f}(src, base, rs, cs, Ci, nt, V, vb, vts, vxs):
    """:func:`in_transform_{f}` for nt tiles side by side, tile t's patch at src[base + 2t*cs] (all
    inside the window), the pairs of its channels c at V[vb + t*vts + xi*vxs + c/2]: the same operations on
    the same values (the row transform of an input column is computed once and used by the two tiles
    that share it)."""
    for c in range(0, Ci, 16):
        o = base + c
        d0 = {R}(vload(src, o)); d1 = {R}(vload(src, o + rs))
        d2 = {R}(vload(src, o + 2 * rs)); d3 = {R}(vload(src, o + 3 * rs))
        p0 = vsub(d0, d2); p1 = vadd(d1, d2); p2 = vsub(d2, d1); p3 = vsub(d1, d3)
        o += cs
        d0 = {R}(vload(src, o)); d1 = {R}(vload(src, o + rs))
        d2 = {R}(vload(src, o + 2 * rs)); d3 = {R}(vload(src, o + 3 * rs))
        q0 = vsub(d0, d2); q1 = vadd(d1, d2); q2 = vsub(d2, d1); q3 = vsub(d1, d3)
        q = vb + c // 2
        for t in range(nt):
            o += cs
            d0 = {R}(vload(src, o)); d1 = {R}(vload(src, o + rs))
            d2 = {R}(vload(src, o + 2 * rs)); d3 = {R}(vload(src, o + 3 * rs))
            r0 = vsub(d0, d2); r1 = vadd(d1, d2); r2 = vsub(d2, d1); r3 = vsub(d1, d3)
            o += cs
            d0 = {R}(vload(src, o)); d1 = {R}(vload(src, o + rs))
            d2 = {R}(vload(src, o + 2 * rs)); d3 = {R}(vload(src, o + 3 * rs))
            s0 = vsub(d0, d2); s1 = vadd(d1, d2); s2 = vsub(d2, d1); s3 = vsub(d1, d3)
            # V[i][j] from the row transforms of columns 0..3 (p, q, r, s), as in_transform_{f}
            {S}(V, q + 0 * vxs, vsub(p0, r0)); {S}(V, q + 1 * vxs, vadd(q0, r0))
            {S}(V, q + 2 * vxs, vsub(r0, q0)); {S}(V, q + 3 * vxs, vsub(q0, s0))
            {S}(V, q + 4 * vxs, vsub(p1, r1)); {S}(V, q + 5 * vxs, vadd(q1, r1))
            {S}(V, q + 6 * vxs, vsub(r1, q1)); {S}(V, q + 7 * vxs, vsub(q1, s1))
            {S}(V, q + 8 * vxs, vsub(p2, r2)); {S}(V, q + 9 * vxs, vadd(q2, r2))
            {S}(V, q + 10 * vxs, vsub(r2, q2)); {S}(V, q + 11 * vxs, vsub(q2, s2))
            {S}(V, q + 12 * vxs, vsub(p3, r3)); {S}(V, q + 13 * vxs, vadd(q3, r3))
            {S}(V, q + 14 * vxs, vsub(r3, q3)); {S}(V, q + 15 * vxs, vsub(q3, s3))
            p0 = r0; p1 = r1; p2 = r2; p3 = r3
            q0 = s0; q1 = s1; q2 = s2; q3 = s3
            q += vts


@njit(cache=True, nogil=True, _nrt=False)
def out_transform_{f}(M, mb, mxs, bias, co, act, alpha, dst, db, rs, cs, nr, nc, nts):
    """Y = A^T m A on m[xi] = M[mb + xi*mxs : +16]; dst[db + i*rs + j*cs] = cvt(act(Y[i, j]
    + bias[co:co+16])) for i < nr, j < nc; nts != 0: non-temporal stores (dst[db], rs, cs on 64-byte lines)."""
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
    y00 = {R}(vact(vadd(vadd(vadd(s00, s01), s02), b), act, alpha))
    y01 = {R}(vact(vadd(vsub(vsub(s01, s02), s03), b), act, alpha))
    y10 = {R}(vact(vadd(vadd(vadd(s10, s11), s12), b), act, alpha))
    y11 = {R}(vact(vadd(vsub(vsub(s11, s12), s13), b), act, alpha))
    if nts:
        vstore_nt(dst, db, y00)
        if nc > 1:
            vstore_nt(dst, db + cs, y01)
        if nr > 1:
            vstore_nt(dst, db + rs, y10)
            if nc > 1:
                vstore_nt(dst, db + rs + cs, y11)
        return
    vstore(dst, db, y00)
    if nc > 1:
        vstore(dst, db + cs, y01)
    if nr > 1:
        vstore(dst, db + rs, y10)
        if nc > 1:
            vstore(dst, db + rs + cs, y11)


@njit(parallel=True, cache=True, nogil=True)
def wino2_{f}(xf, sb, sp, Hi, Wi, Ci, xf2, sb2, sp2, Ci2, U, bias, outf, ob, op, Ho, Wo, Co, NT, Vs, Ms, Ds, act,
             alpha, nts):
    """bf16 Winograd F(2x2, 3x3) (``_bf16_wino``): input pixel (r, c) at xf[sb + r*sp + c*Ci],
    output (r, c) at outf[ob + r*op + c*Co] (rows of wider buffers, in place); Ci, Co multiples
    of 16; U from ``_bf16_wino.weight_transform``; Vs, Ms, Ds per-thread scratch
    (``_bf16_wino.scratch``). A work item is NT tiles of one tile row. nts != 0: the output is written
    with non-temporal stores (outf[ob] and op on 64-byte lines). Ci2 > 0: the input is the channel
    concatenation of that window and a second one of Ci2 channels (a multiple of 16), pixel (r, c)
    at xf2[sb2 + r*sp2 + c*Ci2], read where it lies: each channel's transform is its own and the
    GEMMs take the pairs in the concatenation's order, so the bits are the concatenation's."""
    z = np.int64(0)                 # not a literal 0: see row_{f}
    Ct = Ci + Ci2
    Ch = Ct // 2
    ntx = (Wo + 1) // 2
    nch = (ntx + NT - 1) // NT
    vxs = NT * Ch + 16
    mxs = NT * Co + 16
    for it in prange(((Ho + 1) // 2) * nch):
        tid = get_thread_id()
        V = Vs[tid]
        M = Ms[tid]
        D = Ds[tid]
        ty = it // nch
        tx0 = (it - ty * nch) * NT
        nt = min(NT, ntx - tx0)
        r0 = 2 * ty
        nin = min(nt, max(0, (Wi - 4) // 2 - tx0 + 1)) if r0 + 4 <= Hi else 0   # patches inside the window
        for k in range(1 if Ci2 == 0 else 2):    # the sources: one call site each (compile time)
            src = xf if k == 0 else xf2
            b0, p0, C = (sb, sp, Ci) if k == 0 else (sb2, sp2, Ci2)
            vo = z if k == 0 else Ci // 2
            if nin > 0:
                in_strip_{f}(src, b0 + r0 * p0 + 2 * tx0 * C, p0, C, C, nin, V, vo, Ch, vxs)
            for t in range(nin, nt):  # the patch runs past the window: zeros there, the same transform
                c0 = 2 * (tx0 + t)
                patch(src, b0, p0, C, r0, c0, min(4, Hi - r0), min(4, Wi - c0), D)
                in_transform_{f}(D, 0, 4 * C, C, C, V, t * Ch + vo, vxs)
        for xi in range(16):
            for co0 in range(0, Co, 16):
                wgemm_{f}(V, xi * vxs, Ch, nt, U, (xi * Co + co0) * Ch, M, xi * mxs + co0, Co)
        nr = min(2, Ho - r0)
        for t in range(nt):
            c0 = 2 * (tx0 + t)
            nc = min(2, Wo - c0)
            for co in range(0, Co, 16):
                out_transform_{f}(M, t * Co + co, mxs, bias, co, act, alpha, outf, ob + r0 * op + c0 * Co + co, op, Co,
                              nr, nc, nts)
        if nts:
            sfence()


'''

DOT = '''@njit(parallel=True, cache=True, nogil=True)
def dot_{f}(src, sb, sp, Ci, wp, toff, bias, outf, ob, op, Ho, Wo, Co, sy, sx, act, alpha):
    """src: the float32 window as uint32, pixel (r, c) at src[sb + r*sp + c*Ci]; wp: pair
    weights (:func:`._bf16_dot.pack_weights`); toff[t]: offset of tap t from a pixel's first channel;
    output (r, c, co) at outf[ob + r*op + c*Co + co]. Family b on vdpbf16ps, e on vdpe
    (the conversion path): the same bits."""
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
                        a = {V}(a, p0, ubcast_at(wp, k))
                        a = {V}(a, p1, ubcast_at(wp, k + 1))
                        a = {V}(a, p2, ubcast_at(wp, k + 2))
                        a = {V}(a, p3, ubcast_at(wp, k + 3))
                        a = {V}(a, p4, ubcast_at(wp, k + 4))
                        a = {V}(a, p5, ubcast_at(wp, k + 5))
                        a = {V}(a, p6, ubcast_at(wp, k + 6))
                        a = {V}(a, p7, ubcast_at(wp, k + 7))
                        vstore(acc, co * 16, a)
            dot_store(acc, Co, bias, act, alpha, outf, ob + r * op + c0 * Co, n)


'''

HEADER = '''"""bf16 micro-kernels and their drivers (GENERATED by _conv_bf16_gen.py; do not edit).

See _conv_bf16_gen.py for the register tile of ``row_*`` / ``wgemm_*``: family b (vdpbf16ps) and
family e (the same sequence emulated with float32 FMAs); ``conv2d_*``, ``convT_*`` and ``wino2_*``
drive one family each, so a CPU without AVX512_BF16 never compiles the b family; ``dot_*`` is the
dot route's loop (``_bf16_dot``), one template for both families.
"""

import numpy as np
from numba import get_thread_id, njit, prange

from ._bf16_dot import dot_store
from ._bf16_simd import cround, cstore, eround, estore, pack_rows, tpairs, ubcast_at, uload, vdp, vdpe, vround
from ._bf16_wino import patch
from ._conv_simd import iload, sfence, vact, vadd, vload, vstore, vstore_nt, vsub, vzero


'''


def source() -> str:
    """The text of ``_conv_bf16_mk.py``."""
    def drivers(f):                  # b: VCVTNEPS2BF16 (cround / cstore); e: its emulation (eround / estore)
        c = "c" if f == "b" else "e"
        return DRIVERS.replace("{f}", f).replace("{R}", c + "round").replace("{S}", c + "store")

    def dot(f):                      # b: vdpbf16ps; e: its emulation
        return DOT.replace("{f}", f).replace("{V}", "vdp" if f == "b" else "vdpe")
    src = HEADER + "".join(gen_row(f) + gen_wgemm(f) + drivers(f) + dot(f) for f in "be")
    return src.rstrip("\n") + "\n"


def main():
    write_module("_conv_bf16_mk.py", source())


if __name__ == "__main__":
    main()
