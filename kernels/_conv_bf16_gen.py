"""Generator of the bf16 micro-kernels in ``_conv_bf16_mk.py`` (private).

Run ``python kernels/_conv_bf16_gen.py`` to rewrite ``_conv_bf16_mk.py``; the generated
module is committed so that Numba's ``cache=True`` works (no ``exec``).

``b{P}x{V}`` computes P output pixels x V*16 output channels with ``vdpbf16ps``:

    acc[p, :] = 0;  for k < K:  acc[p, :] = vdp(acc[p, :], w[wb + k*wrs : +16*V], a[ab_p + koff[k]])

``a`` and ``w`` are uint32 arrays of bf16 pairs (``a[i]`` is one input pixel's channels
2j, 2j+1; ``w`` 16 dwords per vector: output channels x the same channel pair), so term
k adds the odd channel's product, then the even one's, to every accumulator lane.
``e{P}x{V}`` is the same with ``vdpe`` (two float32 FMAs in the same order, flushing as
``vdpbf16ps`` does), for CPUs without AVX512_BF16: the same bits.
``ab_p = ab0 + min(p, npix - 1) * aps`` (rows past ``npix`` repeat the last one and are not
stored), so every pixel's sum is the same instruction sequence whatever ``p`` or ``npix``.
The store (rows < npix) is ``round_bf16(act(acc + bias[bofs : bofs + 16V]))`` into the
float32 ``dst[db + p*dps + 16*v]``.
"""

from __future__ import annotations

try:
    from ._conv_gen import emit_stores, write_module
except ImportError:                  # run as a script: python kernels/_conv_bf16_gen.py
    from _conv_gen import emit_stores, write_module

SHAPES = [(8, 1)]  # 8 zmm accumulators. Zen 4, 1 thread, 3x3: 8x1 203-227 GF/s at 16..256 channels;
# 4x2 .. 6x4 and 12x1 / 14x1 measured slower (LLVM unrolls the k loop and spills); blocking the
# terms so a block of weights stays in L1 (carrying the accumulators through dst) cost 8 %


def gen_mk(P, V, family):
    L = []
    a = L.append
    dp = "vdp" if family == "b" else "vdpe"
    a("@njit(cache=True, nogil=True)")
    a(f"def {family}{P}x{V}(a, ab0, aps, npix, koff, K, w, wb, wrs, dst, db, dps, bias, bofs, act, alpha):")
    for p in range(1, P):
        a(f"    ab{p} = ab0 + min({p}, npix - 1) * aps")
    for p in range(P):
        for v in range(V):
            a(f"    c{p}_{v} = vzero()")
    a("    for k in range(K):")
    a("        o = iload(koff, k)")
    a("        wk = wb + k * wrs")
    for v in range(V):
        a(f"        b{v} = uload(w, wk + {16 * v})")
    for p in range(P):
        a(f"        s = ubcast_at(a, ab{p} + o)")
        for v in range(V):
            a(f"        c{p}_{v} = {dp}(c{p}_{v}, b{v}, s)")
    for v in range(V):
        a(f"    bv{v} = vload(bias, bofs + {16 * v})")
    for p in range(P):
        for v in range(V):
            a(f"    c{p}_{v} = vround(vact(vadd(c{p}_{v}, bv{v}), act, alpha))")
    emit_stores(a, P, V)
    return "\n".join(L)


DRIVERS = '''@njit(cache=True, nogil=True)
def row_{f}(a, xrow, xps, koff, K, w, wb, CoP, bias, dst, rowbase, dps, Wo, act, alpha):
    """Wo pixels (pixel c's term k at a[xrow + c*xps + koff[k]]) x CoP columns, the 16-column
    blocks of the (K, CoP) weights packed at w[wb:]; written at dst[rowbase + c*dps]."""
    for co0 in range(0, CoP, 16):
        for c0 in range(0, Wo, 8):
            {f}8x1(a, xrow + c0 * xps, xps, min(8, Wo - c0), koff, K, w, wb + co0 * K, 16,
                  dst, rowbase + c0 * dps + co0, dps, bias, co0, act, alpha)


@njit(parallel=True, cache=True, nogil=True)
def conv2d_{f}(src, sb, sp, Wi, Ci, Ch, RB, scratch, wp, CoP, bias, koff, outf, ob, Ho, Wo, Co, op, sy, sx, dy, kh,
              act, alpha):
    """src: the float32 window as uint32, pixel (r, c) at src[sb + r*sp + c*Ci]; it is packed
    into bf16 pairs RB output rows at a time (their input rows, in this thread's part of
    scratch: they stay in cache for the GEMMs that read them); wp: (K, CoP) packed pair weights,
    k = (ky, kx, channel pair); koff[k]: offset of term k in the packed rows; bias: (CoP,);
    output (r, c, co) at outf[ob + r*op + c*Co + co] (rows op apart: a window of rows of a
    wider buffer). The packing is a function of each value alone: no bit depends on RB."""
    K = koff.shape[0]
    nrin = (RB - 1) * sy + (kh - 1) * dy + 1
    per = nrin * Wi * Ch
    for t in prange((Ho + RB - 1) // RB):
        r0 = t * RB
        r1 = min(Ho, r0 + RB)
        xp = scratch[get_thread_id() * per:(get_thread_id() + 1) * per]
        pack_rows(src, sb + r0 * sy * sp, sp, (r1 - 1 - r0) * sy + (kh - 1) * dy + 1, Wi, Ci, xp)
        for r in range(r0, r1):
            xrow = (r - r0) * sy * Wi * Ch
            if Co == CoP:
                row_{f}(xp, xrow, sx * Ch, koff, K, wp, 0, CoP, bias, outf, ob + r * op, Co, Wo, act, alpha)
            else:
                tmp = np.empty(Wo * CoP, np.float32)
                row_{f}(xp, xrow, sx * Ch, koff, K, wp, 0, CoP, bias, tmp, 0, CoP, Wo, act, alpha)
                for c in range(Wo):
                    for co in range(Co):
                        outf[ob + r * op + c * Co + co] = tmp[c * CoP + co]


@njit(parallel=True, cache=True, nogil=True)
def convT_{f}(xp, Hi, Wi, Ch, wp, kh, kw, C2P, bias2, koff, nob, outf, ob, Ho, Wo, Co, op, ty, tx, act, alpha):
    """Transposed conv with kernel == stride: output row r is one GEMM over the input pixels
    of row (r + ty) // kh with the kw taps side by side (wp: per ky a (Ch, C2P) packed
    matrix, C2P >= kw*Co); output (r, c) is column ((c + tx) % kw)*Co of input pixel
    (c + tx) // kw, or nob (no tap) past the input. koff = arange(Ch). Output as conv2d_{f}."""
    ix0 = tx // kw
    ix1 = min((Wo - 1 + tx) // kw, Wi - 1)
    nix = ix1 - ix0 + 1
    for r in prange(Ho):
        ky = (r + ty) % kh
        iy = (r + ty) // kh
        o = ob + r * op
        if iy >= Hi or nix <= 0:
            for c in range(Wo):
                for co in range(Co):
                    outf[o + c * Co + co] = nob[co]
            continue
        tmp = np.empty(nix * C2P, np.float32)
        row_{f}(xp, (iy * Wi + ix0) * Ch, Ch, koff, Ch, wp, ky * Ch * C2P, C2P, bias2, tmp, 0, C2P, nix,
                act, alpha)
        for c in range(Wo):
            ix = (c + tx) // kw
            if ix > ix1:
                for co in range(Co):
                    outf[o + c * Co + co] = nob[co]
            else:
                base = (ix - ix0) * C2P + ((c + tx) % kw) * Co
                for co in range(Co):
                    outf[o + c * Co + co] = tmp[base + co]


'''

HEADER = '''"""bf16 micro-kernels and their drivers (GENERATED by _conv_bf16_gen.py; do not edit).

See _conv_bf16_gen.py for the contract of ``b{P}x{V}`` (vdpbf16ps) and ``e{P}x{V}``
(the same sequence emulated with float32 FMAs); ``row_*``, ``conv2d_*`` and ``convT_*``
drive one family each, so a CPU without AVX512_BF16 never compiles the b family.
"""

import numpy as np
from numba import get_thread_id, njit, prange

from ._bf16_simd import pack_rows, ubcast_at, uload, vdp, vdpe, vround
from ._conv_simd import iload, vact, vadd, vload, vstore, vzero


'''


def source() -> str:
    """The text of ``_conv_bf16_mk.py``."""
    src = HEADER + "".join("".join(gen_mk(P, V, f) for P, V in SHAPES) + DRIVERS.replace("{f}", f) for f in "be")
    return src.rstrip("\n") + "\n"


def main():
    write_module("_conv_bf16_mk.py", source())


if __name__ == "__main__":
    main()
