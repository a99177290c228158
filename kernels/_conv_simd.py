"""Explicit 16-lane float32 vectors for Numba kernels (private).

LLVM's loop vectoriser gives up on most register-blocked Numba loops (no
aliasing information, accumulators kept in memory). These intrinsics let a
kernel hold a block of accumulators in named local variables of an LLVM
``<16 x float>`` type, which mem2reg keeps in (zmm) registers.

Every operation is elementwise: lane i of a result depends only on lane i of
the operands, so a vector op computes exactly what the scalar op would on each
lane (``vfma`` is one rounding, like a contracted scalar ``a*b + c``).

Arrays must be C-contiguous float32; ``i`` is a flat element index into the
array's data, and the caller guarantees ``i .. i+15`` lie inside it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

W = 16  # lanes


class F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = F32x16()
_VT = ir.VectorType(ir.FloatType(), W)


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _ptr(context, builder, aryty, ary, idx):
    a = context.make_array(aryty)(context, builder, ary)
    p = builder.gep(a.data, [idx], inbounds=True)
    return builder.bitcast(p, _VT.as_pointer())


@intrinsic
def vload(typingctx, arr, i):
    """16 floats of ``arr``'s data starting at flat index ``i``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(ptr, align=4)
    return f32x16(arr, types.intp), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """Store ``v`` into ``arr``'s data at flat index ``i`` .. ``i+15``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()
    return types.none(arr, types.intp, f32x16), codegen


@intrinsic
def vbcast(typingctx, s):
    """All lanes equal to the float32 scalar ``s``."""
    if s != types.float32:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), args[0],
                                   ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined), mask)
    return f32x16(types.float32), codegen


@intrinsic
def vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VT, [0.0] * W)
    return f32x16(), codegen


def _binop(opname):
    @intrinsic
    def op(typingctx, a, b):
        if a != f32x16 or b != f32x16:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, opname)(args[0], args[1])
        return f32x16(f32x16, f32x16), codegen
    return op


vadd = _binop("fadd")
vsub = _binop("fsub")
vmul = _binop("fmul")


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (llvm.fma)."""
    if a != f32x16 or b != f32x16 or c != f32x16:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VT, [_VT, _VT, _VT]), "llvm.fma.v16f32")
        return builder.call(fn, args)
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vact(typingctx, v, act, alpha):
    """Activation code ``act`` (0 none, 1 ReLU, 2 LeakyReLU(alpha)) on every lane.

    ReLU is ``v > 0 ? v : 0`` and LeakyReLU ``v >= 0 ? v : v * alpha``, exactly
    like the scalar ``_act`` of the direct routes.
    """
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        x, a, al = args
        zero = ir.Constant(_VT, [0.0] * W)
        relu = builder.select(builder.fcmp_ordered(">", x, zero), x, zero)
        alv = builder.insert_element(ir.Constant(_VT, ir.Undefined),
                                     builder.fptrunc(al, ir.FloatType())
                                     if al.type != ir.FloatType() else al,
                                     ir.Constant(ir.IntType(32), 0))
        alv = builder.shuffle_vector(alv, ir.Constant(_VT, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
        leaky = builder.select(builder.fcmp_ordered(">=", x, zero), x, builder.fmul(x, alv))
        a64 = a if a.type == ir.IntType(64) else builder.sext(a, ir.IntType(64))
        is1 = builder.icmp_signed("==", a64, ir.Constant(ir.IntType(64), 1))
        is2 = builder.icmp_signed("==", a64, ir.Constant(ir.IntType(64), 2))
        return builder.select(is1, relu, builder.select(is2, leaky, x))
    return f32x16(f32x16, act, alpha), codegen


@intrinsic
def vbcast_at(typingctx, arr, i):
    """All lanes equal to ``arr``'s element at flat index ``i`` (no wrap-around check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        s = builder.load(builder.gep(a.data, [args[1]], inbounds=True), align=4)
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), s,
                                   ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined), mask)
    return f32x16(arr, types.intp), codegen


@intrinsic
def iload(typingctx, arr, i):
    """``arr``'s integer element at flat index ``i`` (no wrap-around check)."""
    if not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load(builder.gep(a.data, [args[1]], inbounds=True))
    return arr.dtype(arr, types.intp), codegen


@intrinsic
def vhsum(typingctx, v):
    """Sum of the 16 lanes in a fixed tree: halves added pairwise (8, 4, 2, 1 lanes).
    The same order for every call, so it is deterministic (not sequential order)."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        undef = ir.Constant(_VT, ir.Undefined)
        n = W
        while n > 1:
            h = n // 2
            i32 = ir.IntType(32)
            lo = builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(i32, h), list(range(h))))
            hi = builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(i32, h),
                                                                list(range(h, n))))
            x = builder.fadd(lo, hi)
            undef = ir.Constant(ir.VectorType(ir.FloatType(), h), ir.Undefined)
            n = h
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))
    return types.float32(f32x16), codegen


vdiv = _binop("fdiv")


@intrinsic
def vmax_nan(typingctx, m, v):
    """Lane-wise ``v if (v > m or v != v) else m``: the running maximum of a max-pool with
    PyTorch's NaN rule (a NaN in the window wins and stays), exactly the scalar test."""
    if m != f32x16 or v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        a, b = args
        take = builder.or_(builder.fcmp_ordered(">", b, a), builder.fcmp_unordered("uno", b, b))
        return builder.select(take, b, a)
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vstore_nt(typingctx, arr, i, v):
    """Store ``v`` into ``arr``'s data at flat index ``i`` .. ``i+15`` with a non-temporal hint
    (``vmovntps``: no read for ownership, the line goes to memory, not the caches). The
    address must be 64-byte aligned: check ``arr``'s address and ``i`` before using it."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
        st = builder.store(args[2], ptr, align=64)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.none(arr, types.intp, f32x16), codegen


@intrinsic
def sfence(typingctx):
    """``sfence``: the non-temporal stores before it are globally visible before any store
    after it (each parallel work item that used :func:`vstore_nt` ends with one)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen
