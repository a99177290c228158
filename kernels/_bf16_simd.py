"""bfloat16 vector intrinsics for Numba kernels (private; bf16 mode).

Values are carried in LLVM ``<16 x float>`` registers (the ``f32x16`` type of
``_conv_simd``); the bf16 ones hold 32 bfloat16 numbers in the same 512 bits,
element 2j in the low half of dword j and element 2j+1 in its high half.

* :func:`vdp` is ``vdpbf16ps`` (LLVM ``llvm.x86.avx512bf16.dpbf16ps.512``). What it
  computes, per Intel's pseudo-code and checked on AMD Zen 4 (odd-first order, two
  roundings, DAZ and FTZ all observed there): for each lane j,
  ``acc = ftz(rne(acc + a[2j+1]*b[2j+1]))`` then ``acc = ftz(rne(acc + a[2j]*b[2j]))``,
  bf16 denormal inputs read as zero. The products of two bf16 numbers are exact in
  float32 (8-bit significands), so each step is one correctly rounded float32 add.
  Only compile it where the CPU has AVX512_BF16 (``hirestile.kernels.bf16.HAVE_AVX512_BF16``).
* :func:`vround` rounds each float32 lane to bf16 (round to nearest even; NaN stays a
  quiet NaN of the same sign, infinities stay, values past bf16's range become
  infinities), as :func:`round_bits` does for one uint32.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._conv_simd import f32x16

W = 16
_VT = ir.VectorType(ir.FloatType(), W)
_I32 = ir.IntType(32)
_VI = ir.VectorType(_I32, W)


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite has no class for it)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


_VB = ir.VectorType(_BFloat(), 2 * W)


def _splat_i32(v):
    return ir.Constant(_VI, [v] * W)


@intrinsic
def vdp(typingctx, acc, a, b):
    """``vdpbf16ps``: lanes of ``acc`` plus the two bf16 products of ``a`` and ``b``
    (odd element first, then even)."""
    if acc != f32x16 or a != f32x16 or b != f32x16:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT, _VB, _VB]),
                                            "llvm.x86.avx512bf16.dpbf16ps.512")
        return builder.call(fn, [args[0], builder.bitcast(args[1], _VB), builder.bitcast(args[2], _VB)])
    return f32x16(f32x16, f32x16, f32x16), codegen


def _u32_ptr(context, builder, aryty, ary, idx):
    a = context.make_array(aryty)(context, builder, ary)
    return builder.gep(a.data, [idx], inbounds=True)


@intrinsic
def uload(typingctx, arr, i):
    """16 dwords of a uint32 array from flat index ``i`` (32 bf16 values) as one register."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _VT.as_pointer()), align=4)
    return f32x16(arr, types.intp), codegen


@intrinsic
def ubcast_at(typingctx, arr, i):
    """The dword at flat index ``i`` of a uint32 array (a bf16 pair) in every lane."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        s = builder.load(builder.bitcast(p, ir.FloatType().as_pointer()), align=4)
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), s, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined), ir.Constant(_VI, [0] * W))
    return f32x16(arr, types.intp), codegen


@intrinsic
def vround(typingctx, v):
    """Every lane rounded to bf16 (round to nearest even, NaN kept quiet), as float32."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        return _round_vec(builder, args[0])
    return f32x16(f32x16), codegen


def _round_vec(builder, v):
    u = builder.bitcast(v, _VI)
    lsb = builder.and_(builder.lshr(u, _splat_i32(16)), _splat_i32(1))
    hi = _splat_i32(-(1 << 16))
    r = builder.and_(builder.add(builder.add(u, _splat_i32(0x7FFF)), lsb), hi)
    nan = builder.icmp_unsigned(">", builder.and_(u, _splat_i32(0x7FFFFFFF)), _splat_i32(0x7F800000))
    q = builder.and_(builder.or_(u, _splat_i32(0x00400000)), hi)
    return builder.bitcast(builder.select(nan, q, r), _VT)


@njit(cache=True, nogil=True, inline="always")
def round_bits(u):
    """bf16 rounding of one float32's bits ``u`` (uint32): the rounded float32's bits."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@njit(cache=True, nogil=True, inline="always")
def daz_bits(u):
    """:func:`round_bits`, then a bf16 denormal replaced by a zero of its sign (what
    ``vdpbf16ps`` reads it as)."""
    r = round_bits(u)
    if (r & np.uint32(0x7F800000)) == np.uint32(0):
        return r & np.uint32(0x80000000)
    return r


@njit(parallel=True, cache=True, nogil=True)
def round_flat(src, dst):
    """dst[i] = bf16 rounding of src[i] (uint32 views of float32 data; may alias)."""
    n = src.shape[0]
    nb = (n + 4095) // 4096
    for b in prange(nb):
        for i in range(b * 4096, min(n, (b + 1) * 4096)):
            dst[i] = round_bits(src[i])


@njit(cache=True, nogil=True)
def pack_rows(src, sb, sp, Hi, Wi, Ci, dst):
    """bf16 pairs of an HWC float32 window whose pixel (r, c) starts at ``src[sb + r*sp +
    c*Ci]`` (``src``: uint32 view of the float32 data; ``sp`` the row pitch, so a window of
    rows of a wider buffer is read in place). ``dst`` (Hi * Wi * ceil(Ci/2)) gets, per pixel,
    dword j = channel 2j in the low half, 2j+1 (or 0 past Ci) in the high half, each rounded
    to bf16, denormals flushed (:func:`daz_bits`). For even Ci the pairs never straddle
    pixels: a row is one stream of pairs, 16 dwords per vector step."""
    for r in range(Hi):
        _pack_row(src, sb + r * sp, Wi, Ci, dst, r * Wi * ((Ci + 1) // 2))


@njit(parallel=True, cache=True, nogil=True)
def pack_pairs(src, sb, sp, Hi, Wi, Ci, dst):
    """:func:`pack_rows`, rows in parallel."""
    for r in prange(Hi):
        _pack_row(src, sb + r * sp, Wi, Ci, dst, r * Wi * ((Ci + 1) // 2))


@njit(cache=True, nogil=True, inline="always")
def _pack_row(src, s0, Wi, Ci, dst, d0):
    Ch = (Ci + 1) // 2
    n = Wi * Ch
    if Ci % 2 == 0:
        nv = n // 16
        for v in range(nv):
            ustore(dst, d0 + 16 * v, vpack(src, s0 + 32 * v))
        for i in range(16 * nv, n):
            dst[d0 + i] = (daz_bits(src[s0 + 2 * i + 1]) & np.uint32(0xFFFF0000)) \
                | (daz_bits(src[s0 + 2 * i]) >> np.uint32(16))
    else:
        c0 = 0
        if Ci == 3:                  # an RGB input: 16 pixels a vector step
            for v in range(Wi // 16):
                opack3(src, s0 + 48 * v, dst, d0 + 32 * v)
            c0 = Wi // 16 * 16
        elif Ci == 1:
            for v in range(Wi // 16):
                opack1(src, s0 + 16 * v, dst, d0 + 16 * v)
            c0 = Wi // 16 * 16
        for c in range(c0, Wi):
            s = s0 + c * Ci
            d = d0 + c * Ch
            for j in range(Ci // 2):
                dst[d + j] = (daz_bits(src[s + 2 * j + 1]) & np.uint32(0xFFFF0000)) \
                    | (daz_bits(src[s + 2 * j]) >> np.uint32(16))
            dst[d + Ch - 1] = daz_bits(src[s + Ci - 1]) >> np.uint32(16)

def _ftz(builder, x):
    """x with float32 denormals replaced by a zero of the same sign."""
    u = builder.bitcast(x, _VI)
    tiny = builder.icmp_unsigned("<", builder.and_(u, _splat_i32(0x7FFFFFFF)), _splat_i32(0x00800000))
    return builder.bitcast(builder.select(tiny, builder.and_(u, _splat_i32(-(1 << 31))), u), _VT)


@intrinsic
def vdpe(typingctx, acc, a, b):
    """:func:`vdp` emulated with float32 FMAs (CPUs without AVX512_BF16): the odd pair's
    product, then the even pair's, each one rounding (the products of bf16 numbers are
    exact inside an FMA), each result flushed to zero when denormal. With inputs whose
    bf16 denormals were flushed when packed (``pack_pairs``, the weight packing), the
    same bits as ``vdpbf16ps``."""
    if acc != f32x16 or a != f32x16 or b != f32x16:
        return None

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT, _VT, _VT]),
                                             "llvm.fma.v16f32")
        hi = _splat_i32(-(1 << 16))

        def halves(v):
            u = builder.bitcast(v, _VI)
            return (builder.bitcast(builder.and_(u, hi), _VT),
                    builder.bitcast(builder.shl(u, _splat_i32(16)), _VT))
        (a1, a0), (b1, b0) = halves(args[1]), halves(args[2])
        r = _ftz(builder, builder.call(fma, [a1, b1, args[0]]))
        return _ftz(builder, builder.call(fma, [a0, b0, r]))
    return f32x16(f32x16, f32x16, f32x16), codegen


def _daz(builder, r):
    """bf16 denormals (zero exponent) of the rounded bits ``r`` replaced by signed zeros."""
    zexp = builder.icmp_unsigned("==", builder.and_(r, _splat_i32(0x7F800000)), _splat_i32(0))
    return builder.select(zexp, builder.and_(r, _splat_i32(-(1 << 31))), r)


@intrinsic
def vpack(typingctx, arr, i):
    """The 32 floats of a uint32 array (float32 bits) from flat index ``i`` as 16 bf16 pairs:
    dword j = bf16(arr[i+2j]) | bf16(arr[i+2j+1]) << 16, rounded as :func:`daz_bits`."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        vp = builder.bitcast(p, _VT.as_pointer())
        a = builder.load(vp, align=4)
        b = builder.load(builder.gep(vp, [ir.Constant(ir.IntType(64), 1)]), align=4)
        ra = _daz(builder, builder.bitcast(_round_vec(builder, a), _VI))
        rb = _daz(builder, builder.bitcast(_round_vec(builder, b), _VI))
        even = builder.shuffle_vector(ra, rb, ir.Constant(_VI, list(range(0, 32, 2))))
        odd = builder.shuffle_vector(ra, rb, ir.Constant(_VI, list(range(1, 32, 2))))
        res = builder.or_(builder.and_(odd, _splat_i32(-(1 << 16))), builder.lshr(even, _splat_i32(16)))
        return builder.bitcast(res, _VT)
    return f32x16(arr, types.intp), codegen


@intrinsic
def ustore(typingctx, arr, i, v):
    """Store the 16 dwords of ``v`` into a uint32 array at flat index ``i``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32 and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _VT.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(arr, types.intp, f32x16), codegen



# ---- VCVTNEPS2BF16 and its emulation: the bf16 Winograd route's rounding ("cvt")
#
# cvt(x), per Intel's pseudo-code of VCVTNEPS2BF16: a float32 denormal becomes a zero of its
# sign, a NaN a quiet NaN (its top half with the quiet bit set), anything else rounds to
# nearest even (integer add of 0x7FFF + lsb; past bf16's range to an infinity). On normal
# values and zeros this is round_bits; a result is never a bf16 denormal, so vdpbf16ps
# reads it as it is. The ``c*`` intrinsics use the instruction (AVX512_BF16 only), the
# ``e*`` ones compute the same bits with integer ops (round_bits after ftz).

_VB16 = ir.VectorType(_BFloat(), W)
_VH = ir.VectorType(_I32, W // 2)


def _cvt_hw(builder, v):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VB16, [_VT]),
                                        "llvm.x86.avx512bf16.cvtneps2bf16.512")
    return builder.call(fn, [v])                       # <16 x bfloat>, element i from lane i


def _cvt_emu(builder, v):
    """cvt(v) as float32 bits (<16 x i32>, low halves zero)."""
    return builder.bitcast(_round_vec(builder, _ftz(builder, v)), _VI)


@intrinsic
def cstore(typingctx, arr, i, v):
    """cvt of the 16 lanes of ``v`` stored as 8 bf16 pairs into a uint32 array at flat index
    ``i`` (dword j = lane 2j low, 2j+1 high): one VCVTNEPS2BF16."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32 and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(builder.bitcast(_cvt_hw(builder, args[2]), _VH), builder.bitcast(p, _VH.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(arr, types.intp, f32x16), codegen


@intrinsic
def estore(typingctx, arr, i, v):
    """:func:`cstore` without AVX512_BF16: the same bits."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32 and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        p = _u32_ptr(context, builder, sig.args[0], args[0], args[1])
        r = _cvt_emu(builder, args[2])
        h = W // 2
        even = builder.shuffle_vector(r, r, ir.Constant(_VH, list(range(0, W, 2))))
        odd = builder.shuffle_vector(r, r, ir.Constant(_VH, list(range(1, W, 2))))
        res = builder.or_(builder.and_(odd, ir.Constant(_VH, [-(1 << 16)] * h)),
                          builder.lshr(even, ir.Constant(_VH, [16] * h)))
        builder.store(res, builder.bitcast(p, _VH.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(arr, types.intp, f32x16), codegen


@intrinsic
def cround(typingctx, v):
    """cvt of every lane, as float32 (VCVTNEPS2BF16, widened back)."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        h = builder.bitcast(_cvt_hw(builder, args[0]), ir.VectorType(ir.IntType(16), W))
        u = builder.shl(builder.zext(h, _VI), _splat_i32(16))
        return builder.bitcast(u, _VT)
    return f32x16(f32x16), codegen


@intrinsic
def eround(typingctx, v):
    """:func:`cround` without AVX512_BF16: the same bits."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(_cvt_emu(builder, args[0]), _VT)
    return f32x16(f32x16), codegen


# ---- the "dot" route (conv2d with few output channels): 16 pixels in the 16 lanes

def _perm(builder, a, ca, b, cb, want):
    """Two-source shuffle of ``a`` / ``b`` (lane contents ``ca`` / ``cb``: labels) giving the
    lanes labelled ``want``."""
    src = list(ca) + list(cb)
    return builder.shuffle_vector(a, b, ir.Constant(_VI, [src.index(x) for x in want]))


@intrinsic
def tpairs(typingctx, arr, i, ps, n):
    """16 pixels' 16 channels as 8 vectors of bf16 pairs, one pixel per lane: pixel p's
    channels are the 16 float32 (bits, uint32 array) at ``i + min(p, n - 1) * ps``; vector j,
    lane p = pixel p's channel 2j rounded (:func:`daz_bits`) in the low half, 2j+1 in the
    high half -- the dword :func:`pack_rows` makes of them. Pixels past ``n`` repeat pixel
    ``n - 1`` (only memory of the first ``n`` is read)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32):
        return None
    tup = types.UniTuple(f32x16, 8)

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i64 = ir.IntType(64)
        base, step = args[1], args[2]
        last = builder.sub(args[3], ir.Constant(i64, 1))
        hi = _splat_i32(-(1 << 16))
        r = []
        for p in range(W):
            q = builder.select(builder.icmp_signed("<", ir.Constant(i64, p), args[3]), ir.Constant(i64, p), last)
            ptr = builder.gep(a.data, [builder.add(base, builder.mul(q, step))], inbounds=True)
            v = builder.load(builder.bitcast(ptr, _VT.as_pointer()), align=4)
            r.append(_daz(builder, builder.bitcast(_round_vec(builder, v), _VI)))
        # V[k]: pixels 2k (lanes 0..7) and 2k+1 (lanes 8..15), pair d in lane d % 8
        V = []
        for k in range(W // 2):
            even = builder.shuffle_vector(r[2 * k], r[2 * k + 1], ir.Constant(_VI, list(range(0, 32, 2))))
            odd = builder.shuffle_vector(r[2 * k], r[2 * k + 1], ir.Constant(_VI, list(range(1, 32, 2))))
            V.append((builder.or_(builder.and_(odd, hi), builder.lshr(even, _splat_i32(16))),
                      [(2 * k + l // 8, l % 8) for l in range(W)]))
        Wm = []                    # pixels 4m..4m+3 x pairs 4h..4h+3
        for m in range(4):
            for h in range(2):
                want = [(4 * m + q, 4 * h + d) for d in range(4) for q in range(4)]
                Wm.append((_perm(builder, *V[2 * m], *V[2 * m + 1], want), want))
        X = {}                     # pixels 8n..8n+7 x pairs 4h+2e, +1
        for n_ in range(2):
            for h in range(2):
                for e in range(2):
                    want = [(8 * n_ + q, 4 * h + 2 * e + d) for d in range(2) for q in range(8)]
                    X[n_, h, e] = (_perm(builder, *Wm[2 * (2 * n_) + h], *Wm[2 * (2 * n_ + 1) + h], want), want)
        out = []
        for j in range(8):
            h, e = j // 4, (j // 2) % 2
            want = [(p, j) for p in range(W)]
            out.append(builder.bitcast(_perm(builder, *X[0, h, e], *X[1, h, e], want), _VT))
        return context.make_tuple(builder, sig.return_type, out)
    return tup(arr, types.intp, types.intp, types.intp), codegen


def _zip(hi):
    @intrinsic
    def z(typingctx, a, b):
        if a != f32x16 or b != f32x16:
            return None

        def codegen(context, builder, sig, args):
            o = 8 if hi else 0
            mask = [x for l in range(8) for x in (o + l, W + o + l)]
            return builder.shuffle_vector(args[0], args[1], ir.Constant(_VI, mask))
        return f32x16(f32x16, f32x16), codegen
    return z


vzip_lo = _zip(False)      # a0 b0 a1 b1 .. a7 b7
vzip_hi = _zip(True)       # a8 b8 .. a15 b15


def _opack(ci):
    """:func:`pack_rows`'s pairs of 16 pixels of an odd channel count ``ci`` (1: grey, 3: RGB): the
    16 * ci float32 (bits) at ``src[i]`` rounded (:func:`daz_bits`), pixel p's dword j = channel
    2j low, 2j+1 (0 past ci) high, stored as 16 * (ci + 1) / 2 dwords at ``dst[d]``: the scalar
    loop's values, a vector step at a time."""
    ch = (ci + 1) // 2

    @intrinsic
    def opack(typingctx, src, i, dst, d):
        if not all(isinstance(a, types.Array) and a.dtype == types.uint32 for a in (src, dst)):
            return None

        def codegen(context, builder, sig, args):
            p = builder.bitcast(_u32_ptr(context, builder, sig.args[0], args[0], args[1]), _VT.as_pointer())
            r = [_daz(builder, builder.bitcast(_round_vec(builder, builder.load(
                builder.gep(p, [ir.Constant(ir.IntType(64), k)]), align=4)), _VI)) for k in range(ci)]
            zero = _splat_i32(0)
            q = builder.bitcast(_u32_ptr(context, builder, sig.args[2], args[2], args[3]), _VI.as_pointer())

            def lanes(idx):            # lane l <- float idx[l] of the 16 * ci (None: 0)
                out = zero
                for k in range(ci):
                    m = [idx[l] - 16 * k if idx[l] is not None and idx[l] // 16 == k else W for l in range(W)]
                    if any(x != W for x in m):
                        out = builder.or_(out, builder.shuffle_vector(r[k], zero, ir.Constant(_VI, m)))
                return out
            for v in range(ch):
                g = [v * W + l for l in range(W)]                    # dword g: pixel g // ch, pair g % ch
                lo = lanes([(x // ch) * ci + 2 * (x % ch) for x in g])
                hi = lanes([(x // ch) * ci + 2 * (x % ch) + 1 if 2 * (x % ch) + 1 < ci else None for x in g])
                res = builder.or_(builder.and_(hi, _splat_i32(-(1 << 16))), builder.lshr(lo, _splat_i32(16)))
                builder.store(res, builder.gep(q, [ir.Constant(ir.IntType(64), v)]), align=4)
            return context.get_dummy_value()
        return types.none(src, types.intp, dst, types.intp), codegen
    return opack


opack1 = _opack(1)
opack3 = _opack(3)
