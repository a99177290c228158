"""bf16 mode kernels: :func:`round_bf16`, :func:`conv2d`, :func:`conv_transpose2d`.

The bf16 mode (``precision="bf16"``) runs a network with every layer's input and
weights rounded to bfloat16 (round to nearest even) and products summed in float32;
each layer's output is rounded to bf16 again, in the kernel's store, so every
element is the same function of the input wherever it is computed and tiled ==
full-frame bit for bit, as in float32 mode. Arrays stay float32 HWC: a bf16 value
is a float32 whose low 16 bits are zero.

Instruction paths (:data:`PATH`, chosen once per process)
--------------------------------------------------------
``avx512_bf16 vdpbf16ps``  CPUs with AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids):
    the convolutions run on ``vdpbf16ps``, two bf16 products per float32 lane per
    instruction (twice the multiply-adds of a float32 FMA).
``conversion``  elsewhere (or ``HIRESTILE_BF16_PATH=conversion``): the same pair order
    emulated with float32 FMAs on bf16 values held as float32, flushing as the
    instruction does: **the same bits** as the vdpbf16ps path, slower.

Routes and what one output element is
-------------------------------------
``wino2`` (conv2d 3x3, stride 1, dilation 1, groups 1, Ci and Co multiples of 16, Ci * Co
>= 512): Winograd F(2x2, 3x3) on the same pair sums (:mod:`._bf16_wino`): the transformed
input V and weights U are rounded to bf16 instead of the pixels and weights, output tiles
of 2x2 anchored to the window origin (tile step (2, 2), :func:`conv_tile`); its roundings
are VCVTNEPS2BF16's (float32 denormals to zero, then nearest even). 2.25x fewer products:
1.3-1.9x the direct route's speed at 32..256 channels (Zen 4, 1 thread), about its accuracy.

``dot`` (conv2d with groups == 1, Co <= 8, Ci a multiple of 16, not ``wino2``: a segmentation
head): the ``pairs`` route's sum below, element for element (the same bits), with 16 output
pixels in the vector lanes instead of 16 output channels (:mod:`._bf16_dot`): the 16 -> 2 head
no longer computes 16 columns for 2.

``pairs`` (other conv2d with groups == 1, any kernel / stride / dilation; conv_transpose2d
with kernel == stride, groups 1, dilation 1 -- UNet's 2x2 up-conv): channels are
taken in pairs (2j, 2j+1; an odd count gets a zero partner), terms in the order
(ky, kx, pair), and each pair adds the odd channel's product, then the even one's,
to a float32 accumulator starting at 0, as ``vdpbf16ps`` defines it: each add one
float32 rounding (RNE), bf16 denormal operands read as zero, denormal sums flushed
to zero. Then ``round_bf16(act(acc + bias))``.

``seq`` (other convolutions: grouped, depthwise, other transposed convs): the float32
kernel of :mod:`hirestile.kernels.conv` on the rounded input and weights (its own
fixed order; the products are exact in float32), output rounded to bf16.

Rounding: NaN stays a quiet NaN of its sign, infinities stay, finite values past
bf16's range become infinities, denormals round like any value.

Examples
--------
>>> import numpy as np
>>> from hirestile.kernels import bf16
>>> float(bf16.round_bf16(np.float32([1 + 2 ** -8]))[0]), float(bf16.round_bf16(np.float32([1 + 3 * 2 ** -8]))[0])
(1.0, 1.015625)
>>> x = np.ones((4, 4, 3), np.float32) * np.float32(1.01)
>>> w = np.ones((3, 3, 3, 16), np.float32)
>>> y = bf16.conv2d(x, w, np.zeros(16, np.float32), act=1)
>>> y.shape, float(y[0, 0, 0])       # 27 * 1.0078125 (1.01 in bf16) = 27.2109375 -> bf16
((2, 2, 16), 27.25)
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np

from . import _bf16_dot as _dot
from . import _bf16_simd as _s
from . import _bf16_wino as _wino
from . import _conv_bf16_mk as _mk
from . import conv as _conv
from ._common import pair
from ._conv_blocked import tap_offsets
from ._move import streaming

__all__ = ["HAVE_AVX512_BF16", "PATH", "round_bf16", "conv2d", "conv2d_concat", "concat_fusable", "conv_transpose2d",
           "conv_route", "conv_tile"]


def _detect() -> bool:
    """Whether the vdpbf16ps path runs: the CPU Numba compiles for has AVX512_BF16 and
    ``HIRESTILE_BF16_PATH`` is not ``conversion``."""
    if os.environ.get("HIRESTILE_BF16_PATH", "auto").lower() == "conversion":
        return False
    name = numba.config.CPU_NAME
    if name and name != "host":          # a fixed target (portable caches): trust its features
        return "+avx512bf16" in (numba.config.CPU_FEATURES or "")
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get("avx512bf16", False))


HAVE_AVX512_BF16: bool = _detect()
PATH: str = "avx512_bf16 vdpbf16ps" if HAVE_AVX512_BF16 else "conversion"


def _fast(fast):
    if fast is None:
        return HAVE_AVX512_BF16
    if fast and not HAVE_AVX512_BF16:
        raise ValueError("fast=True needs a CPU with AVX512_BF16 (this one has none, or "
                         "HIRESTILE_BF16_PATH=conversion is set)")
    return bool(fast)


def round_bf16(x, out=None) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (nearest even), as float32.

    Parameters
    ----------
    x : float32 array
    out : float32 C-contiguous array of x's shape, optional (may be ``x`` itself)

    Examples
    --------
    >>> import numpy as np
    >>> round_bf16(np.float32([3.14159, np.inf, -np.nan, 3.4e38])).tolist()   # 3.4e38: past bf16's range
    [3.140625, inf, nan, inf]
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    if out is None or not (isinstance(out, np.ndarray) and out.flags.c_contiguous):
        if out is not None:
            raise ValueError("out must be a C-contiguous float32 array")
        out = np.empty(x.shape, np.float32)
    if out.dtype != np.float32 or out.shape != x.shape:
        raise ValueError(f"out must be float32 of shape {x.shape}, got {out.dtype} {out.shape}")
    src = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
    _s.round_flat(_conv._ro(src), out.reshape(-1).view(np.uint32))    # one compiled version (conv._ro)
    return out


def _operands(x, w, bias, stride, dilation):
    """x (as given when it is a float32 window of rows, :func:`_rows_of`, else a contiguous
    copy), x's rows or None, contiguous float32 w and bias (read-only views: ``conv._ro``), and the int pairs."""
    f = _conv._as_f32c
    x = np.asarray(x)
    rows = _rows_of(x, x.shape) if x.ndim == 3 else None
    if rows is None:
        x = f(x, "x")
        rows = _rows_of(x, x.shape) if x.ndim == 3 else None
    return x, rows, _conv._ro(f(w, "w")), _conv._ro(f(bias, "bias")), pair(stride, "stride"), pair(dilation, "dilation")


def _out(out, shape):
    """(C-contiguous array to compute into, the caller's ``out`` to copy it to or None)."""
    if out is None:
        return np.empty(shape, np.float32), None
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"out must be a float32 array of shape {shape}, "
                         f"got {getattr(out, 'dtype', None)} {getattr(out, 'shape', None)}")
    return (out, None) if out.flags.c_contiguous else (np.empty(shape, np.float32), out)


def _rows_of(a, shape):
    """``(flat, offset, row pitch)`` of a float32 (h, w, C) array whose pixels are packed in
    rows: C-contiguous, or a window of rows of a wider C-contiguous buffer (``buf[r0:r1,
    c0:c1]``, read or written in place through that buffer); None otherwise."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape and a.size):
        return None
    if a.flags.c_contiguous:
        return a.reshape(-1), 0, shape[1] * shape[2]
    if a.strides[1:] != (4 * shape[2], 4) or a.strides[0] % 4:
        return None
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    if not (base.flags.c_contiguous and base.dtype == np.float32):
        return None
    off = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base.reshape(-1), off // 4, a.strides[0] // 4


def _flat_out(out, shape):
    """``(outf, ob, op, buf, dest)``: the output (r, c, co) at ``outf[ob + r*op + c*Co + co]``, with
    ``outf`` a C-contiguous flat array: ``out`` itself, or -- for a window of rows of a wider
    C-contiguous HWC buffer (``buf[r0:r1, c0:c1]``) -- that buffer, written in place; ``buf``
    is the result, ``dest`` (or None) where it still has to be copied (as :func:`_out`)."""
    rows = _rows_of(out, shape) if isinstance(out, np.ndarray) and out.flags.writeable else None
    if rows is not None:
        return (*rows, out, None)
    buf, dest = _out(out, shape)
    return buf.reshape(-1), 0, shape[1] * shape[2], buf, dest


def _nt(buf) -> int:
    """1 when the kernels write ``buf`` (the output they compute into) with non-temporal stores:
    at least ``_move.NT_BYTES`` on whole 64-byte lines (:func:`hirestile.kernels._move.streaming`,
    as the float32 kernels decide), else 0. The values are the same either way."""
    return int(streaming(buf))


def _done(buf, dest):
    if dest is None:
        return buf
    dest[...] = buf
    return dest


def _half_bits(w) -> np.ndarray:
    """bf16 bits (uint32, in the low half) of ``w`` rounded, denormals flushed as vdpbf16ps reads them."""
    r = round_bf16(np.ascontiguousarray(w, np.float32)).view(np.uint32)
    r = np.where((r & 0x7F800000) == 0, r & 0x80000000, r)
    return (r >> 16).astype(np.uint32)


def _pair_rows(m) -> np.ndarray:
    """(..., Ci, C) half bits -> (..., ceil(Ci/2), C) dwords: row 2j low, row 2j+1 high."""
    if m.shape[-2] % 2:
        m = np.concatenate([m, np.zeros(m.shape[:-2] + (1, m.shape[-1]), np.uint32)], axis=-2)
    return m[..., 0::2, :] | (m[..., 1::2, :] << 16)


def _blocks(m) -> np.ndarray:
    """(..., K, CP) uint32 stored 16 columns at a time: the block of columns [co0, co0 + 16)
    as a contiguous (K, 16) array at offset co0 * K, as the micro-kernels read it."""
    m = np.ascontiguousarray(m, np.uint32)
    *lead, K, CP = m.shape
    m = m.reshape(-1, K, CP // 16, 16).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(m).reshape(-1)


def _pad_cols(m, cp):
    if m.shape[-1] == cp:
        return m
    return np.concatenate([m, np.zeros(m.shape[:-1] + (cp - m.shape[-1],), m.dtype)], axis=-1)


def _pack_conv(w):
    kh, kw, Ci, Co = w.shape
    CoP = -(-Co // 16) * 16
    m = _pair_rows(_pad_cols(_half_bits(w), CoP))             # (kh, kw, Ch, CoP)
    return _blocks(m.reshape(-1, CoP)), CoP


def _pack_convT(w):
    kh, kw, Ci, Co = w.shape
    C2P = -(-(kw * Co) // 16) * 16
    m = _half_bits(w).transpose(0, 2, 1, 3).reshape(kh, Ci, kw * Co)   # per ky: [w[ky,0] | w[ky,1] | ...]
    return _blocks(_pair_rows(_pad_cols(m, C2P))), C2P


def _rounded(w):
    r = round_bf16(np.ascontiguousarray(w, np.float32))
    r.setflags(write=False)            # so hirestile.kernels.conv caches its packed form
    return r


_tls = threading.local()


def _scratch(n: int) -> np.ndarray:
    """n uint32 of a scratch buffer this thread reuses (fresh pages cost more than the
    packing that fills them: a 1024^2 x 32 window packs in 16 ms into reused memory, 44 ms
    into a new array; best of 7, Zen 4, 2 threads)."""
    buf = getattr(_tls, "pairs", None)
    if buf is None or buf.size < n:
        buf = _tls.pairs = np.empty(max(n, 0 if buf is None else buf.size * 5 // 4), np.uint32)
    return buf[:n]


# Winograd F(2x2, 3x3) on vdpbf16ps for 3x3 convs with channels in multiples of 16 (_bf16_wino);
# False: every groups-1 conv takes the direct "pairs" route (the benchmarks compare the two).
WINO = True
WINO_MIN = 512   # Ci * Co from which 3x3 convs take it
# the "dot" route for groups-1 convs with Co <= DOT_MAX output channels (Ci in 16s); False: "pairs"
DOT = True
DOT_MAX = 8

CHUNK_BYTES = 1 << 20   # packed input rows per chunk of output rows: they stay in L2 for the GEMMs. 1 MiB:
# a chunk of a 2048-wide 16-channel map holds 14 output rows, not 1 (each packed 3 times over at 256 KiB);
# 16 -> 16 at 2048^2 0.83x the time of 256 KiB (Zen 4, 2 threads, min of 5), the same at 64 channels


def conv_route(groups: int, transposed: bool = False, kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
               ci: int = 0, co: int = 0) -> str:
    """``"wino2"``, ``"dot"``, ``"pairs"`` or ``"seq"``: the route (module docstring) a convolution
    takes in bf16 mode.

    >>> conv_route(1), conv_route(8), conv_route(1, True, (2, 2), (2, 2)), conv_route(1, ci=32, co=64)
    ('pairs', 'seq', 'pairs', 'wino2')
    >>> conv_route(1, False, (1, 1), ci=16, co=2)
    'dot'
    """
    if not transposed:
        if int(groups) != 1:
            return "seq"
        if WINO and tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) \
                and ci % 16 == 0 and co % 16 == 0 and ci * co >= WINO_MIN:   # 16 -> 16: direct is on par
            return "wino2"
        if DOT and 0 < co <= DOT_MAX and ci >= 16 and ci % 16 == 0:
            return "dot"
        return "pairs"
    ok = int(groups) == 1 and tuple(dilation) == (1, 1) and tuple(kernel) == tuple(stride)
    return "pairs" if ok else "seq"


def conv_tile(kh, kw, stride, dilation, groups, ci, co) -> tuple[int, int]:
    """Output tile step of the route a bf16 convolution takes (as
    :func:`hirestile.kernels.conv.conv_tile`): (2, 2) for ``wino2``, else (1, 1).

    >>> conv_tile(3, 3, 1, 1, 1, 32, 32), conv_tile(3, 3, 1, 1, 1, 3, 16)
    ((2, 2), (1, 1))
    """
    r = conv_route(groups, False, (int(kh), int(kw)), pair(stride, "stride"), pair(dilation, "dilation"),
                   int(ci), int(co))
    return (2, 2) if r == "wino2" else (1, 1)


def conv2d(x, w, bias, *, stride=(1, 1), dilation=(1, 1), groups=1, act=0, alpha=0.0, out=None, fast=None):
    """bf16-mode 2-D convolution of an HWC window, fused with bias, activation and rounding.

    Arguments as :func:`hirestile.kernels.conv.conv2d` (``x`` and ``w`` are rounded to
    bf16 here; pass them rounded already and nothing changes); ``fast`` picks the path
    (None: :data:`HAVE_AVX512_BF16`; False: conversion). The output is bf16-valued
    float32, each element summed in an order that does not depend on the window.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    >>> w = np.full((2, 2, 1, 1), 0.1, np.float32)     # 0.10009765625 in bf16
    >>> conv2d(x, w, np.zeros(1, np.float32), stride=2)[..., 0]
    array([[1.       , 1.8046875],
           [4.21875  , 5.       ]], dtype=float32)
    """
    fast = _fast(fast)
    w_in = w
    x, rows, w, bias, (sy, sx), (dy, dx) = _operands(x, w, bias, stride, dilation)
    groups = int(groups)
    if groups != 1:
        xr = round_bf16(np.ascontiguousarray(x))
        wr = _conv._pack(w_in, w, "bf16", _rounded)
        y = _conv.conv2d(xr, wr, bias, stride=(sy, sx), dilation=(dy, dx), groups=groups, act=act, alpha=alpha)
        return _done(round_bf16(y, out=y), out)
    if x.ndim != 3 or w.ndim != 4 or w.shape[2] != x.shape[2] or bias.shape != (w.shape[3],):
        raise ValueError(f"x (h, w, Ci), w (kh, kw, Ci, Co) and bias (Co,) do not fit: "
                         f"{x.shape}, {w.shape}, {bias.shape}")
    if act not in (0, 1, 2):
        raise ValueError(f"act must be 0, 1 or 2, got {act}")
    Hi, Wi, Ci = x.shape
    kh, kw, _, Co = w.shape
    Ho = max(0, (Hi - dy * (kh - 1) - 1) // sy + 1)
    Wo = max(0, (Wi - dx * (kw - 1) - 1) // sx + 1)
    outf, ob, op, buf, dest = _flat_out(out, (Ho, Wo, Co))
    if buf.size == 0:
        return _done(buf, dest)
    flat, sb, sp = rows
    route = conv_route(1, False, (kh, kw), (sy, sx), (dy, dx), Ci, Co)
    if route == "wino2":
        _wino2(w_in, w, bias, (Hi, Wi, Ci), rows, ((flat, 0, 0), 0), (outf, ob, op, buf), act, alpha, fast)
        return _done(buf, dest)
    if route == "dot":
        wp = _conv._pack(w_in, w, "bf16dot", lambda a: _dot.pack_weights(_half_bits(a)))
        run = _mk.dot_b if fast else _mk.dot_e
        run(flat.view(np.uint32), sb, sp, Ci, wp, _dot.tap_offsets(kh, kw, Ci, sp, dy, dx), bias, outf, ob, op,
            Ho, Wo, Co, sy, sx, int(act), float(alpha))
        return _done(buf, dest)
    wp, CoP = _conv._pack(w_in, w, "bf16pairs", _pack_conv)
    bp = _conv._ro(_pad_cols(bias, CoP))
    Ch = (Ci + 1) // 2
    koff = tap_offsets(kh, kw, Ch, Wi, dy, dx)
    run = _mk.conv2d_b if fast else _mk.conv2d_e
    halo = (kh - 1) * dy + 1
    rb = max(1, (CHUNK_BYTES // (Wi * Ch * 4) - halo) // sy + 1)
    rb = min(rb, -(-Ho // max(1, numba.get_num_threads())))
    per = ((rb - 1) * sy + halo) * Wi * Ch
    run(flat.view(np.uint32), sb, sp, Wi, Ci, Ch, rb, _scratch(per * numba.config.NUMBA_NUM_THREADS), wp, CoP, bp,
        koff, outf, ob, Ho, Wo, Co, op, sy, sx, dy, kh, int(act), float(alpha), _nt(buf))
    return _done(buf, dest)


def concat_fusable(w_shape, parts) -> bool:
    """True when :func:`conv2d_concat` reads ``parts`` (their channel counts) in place for a bf16
    conv of weights ``w_shape`` (kh, kw, Ci, Co), stride 1, dilation 1, groups 1: two parts of
    multiples of 16 channels, on the ``wino2`` route (as :func:`hirestile.kernels.conv.concat_fusable`
    for float32).

    >>> concat_fusable((3, 3, 32, 16), (16, 16)), concat_fusable((3, 3, 24, 16), (16, 8))
    (True, False)
    """
    kh, kw, ci, co = w_shape
    return (len(parts) == 2 and all(c % 16 == 0 for c in parts) and sum(parts) == ci
            and conv_route(1, False, (kh, kw), (1, 1), (1, 1), ci, co) == "wino2")


def conv2d_concat(parts, w, bias, *, act=0, alpha=0.0, out=None, fast=None):
    """bf16-mode :func:`conv2d` (stride 1, dilation 1, groups 1) of the channel concatenation of
    the two windows ``parts`` without building it (a UNet decoder's skip and up-sampled maps,
    read where their producers wrote them). Only where :func:`concat_fusable` holds; the bits are
    those of ``conv2d(np.concatenate(parts, axis=2), ...)``: each input channel's Winograd
    transform is its own, and the sums take the channel pairs in the concatenation's order.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.random((9, 10, 16), np.float32), rng.random((9, 10, 32), np.float32)
    >>> w, bias = rng.random((3, 3, 48, 16), np.float32) - 0.5, np.zeros(16, np.float32)
    >>> y = conv2d_concat((a, b), w, bias, act=1)
    >>> np.array_equal(y, conv2d(np.concatenate((a, b), axis=2), w, bias, act=1))
    True
    """
    fast = _fast(fast)
    if len(parts) != 2:
        raise ValueError(f"conv2d_concat takes two windows, got {len(parts)}")
    w_in = w
    x, rows, w, bias, _, _ = _operands(parts[0], w, bias, 1, 1)
    x2, rows2, _, _, _, _ = _operands(parts[1], w, bias, 1, 1)
    if (x.ndim != 3 or x2.ndim != 3 or x2.shape[:2] != x.shape[:2] or w.ndim != 4
            or not concat_fusable(w.shape, (x.shape[2], x2.shape[2]))):
        raise ValueError(f"conv2d_concat takes two windows of one size with multiples of 16 channels for a "
                         f"wino2-route conv; got {x.shape}, {x2.shape} and w {w.shape}")
    if bias.shape != (w.shape[3],) or act not in (0, 1, 2):
        raise ValueError(f"bias must have shape ({w.shape[3]},) and act be 0, 1 or 2")
    Hi, Wi, Ci = x.shape
    Ci2, Co = x2.shape[2], w.shape[3]
    Ho, Wo = max(0, Hi - 2), max(0, Wi - 2)
    outf, ob, op, buf, dest = _flat_out(out, (Ho, Wo, Co))
    if buf.size == 0:
        return _done(buf, dest)
    _wino2(w_in, w, bias, (Hi, Wi, Ci), rows, (rows2, Ci2), (outf, ob, op, buf), act, alpha, fast)
    return _done(buf, dest)


def _wino2(w_in, w, bias, shape, rows, second, outs, act, alpha, fast):
    """The Winograd F(2x2) route of :func:`conv2d` and :func:`conv2d_concat`: input ``shape``
    (Hi, Wi, Ci) in ``rows`` (flat, start, pitch), ``second`` ((flat, start, pitch), Ci2) the
    concatenation's second window (Ci2 0: none), into ``outs`` (flat, start, pitch, buffer)."""
    (Hi, Wi, Ci), (flat, sb, sp), ((flat2, sb2, sp2), Ci2) = shape, rows, second
    outf, ob, op, buf = outs
    Ho, Wo, Co = buf.shape
    U = _conv._pack(w_in, w, "bf16wino2", _wino.weight_transform)
    nt = _wino.pick_nt(Ci + Ci2, Co, (Wo + 1) // 2)
    Vs, Ms, Ds = _wino.scratch(numba.config.NUMBA_NUM_THREADS, nt, Ci + Ci2, Co)
    run = _mk.wino2_b if fast else _mk.wino2_e
    run(flat, sb, sp, Hi, Wi, Ci, flat2, sb2, sp2, Ci2, U, bias, outf, ob, op, Ho, Wo, Co, nt, Vs, Ms, Ds, int(act),
        float(alpha), _nt(buf))


def conv_transpose2d(x, w, bias, *, stride=(1, 1), dilation=(1, 1), groups=1, offset=(0, 0), out_shape=(0, 0),
                     act=0, alpha=0.0, out=None, fast=None):
    """bf16-mode transposed 2-D convolution; arguments as
    :func:`hirestile.kernels.conv.conv_transpose2d`, ``fast`` as in :func:`conv2d`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((2, 2, 1), 1.01, np.float32)
    >>> w = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    >>> conv_transpose2d(x, w, np.zeros(1, np.float32), stride=2, out_shape=(2, 4))[..., 0]
    array([[0.       , 1.0078125, 0.       , 1.0078125],
           [2.015625 , 3.03125  , 2.015625 , 3.03125  ]], dtype=float32)
    """
    fast = _fast(fast)
    w_in = w
    x, rows, w, bias, (sy, sx), (dy, dx) = _operands(x, w, bias, stride, dilation)
    kh, kw = (w.shape[0], w.shape[1]) if w.ndim == 4 else (0, 0)
    if conv_route(groups, True, (kh, kw), (sy, sx), (dy, dx)) == "seq":
        wr = _conv._pack(w_in, w, "bf16", _rounded)
        y = _conv.conv_transpose2d(round_bf16(x), wr, bias, stride=(sy, sx), dilation=(dy, dx), groups=groups,
                                   offset=offset, out_shape=out_shape, act=act, alpha=alpha)
        return _done(round_bf16(y, out=y), out)
    Hi, Wi, Ci = x.shape
    Co = w.shape[3]
    if w.shape[2] != Ci or bias.shape != (Co,) or act not in (0, 1, 2):
        raise ValueError(f"x {x.shape}, w {w.shape}, bias {bias.shape} or act {act} do not fit")
    ty, tx = int(offset[0]), int(offset[1])
    Ho, Wo = int(out_shape[0]), int(out_shape[1])
    if ty < 0 or tx < 0 or Ho < 0 or Wo < 0:
        raise ValueError(f"offset and out_shape must be non-negative, got {offset}, {out_shape}")
    outf, ob, op, buf, dest = _flat_out(out, (Ho, Wo, Co))
    if buf.size == 0:
        return _done(buf, dest)
    wp, C2P = _conv._pack(w_in, w, "bf16pairsT", _pack_convT)
    nob = np.float32(0.0) + bias
    nob = np.where(nob > 0, nob, np.float32(0)) if act == 1 else \
        np.where(nob >= 0, nob, nob * np.float32(alpha)) if act == 2 else nob
    Ch = (Ci + 1) // 2
    run = _mk.convT_b if fast else _mk.convT_e
    flat, sb, sp = rows
    nix = max(0, min((Wo - 1 + tx) // kw, Wi - 1) - tx // kw + 1)
    bias2 = _conv._ro(_pad_cols(np.tile(bias, kw), C2P))
    run(flat.view(np.uint32), sb, sp, Hi, Wi, Ci, Ch, _scratch(nix * Ch * numba.config.NUMBA_NUM_THREADS), wp, kh, kw,
        C2P, bias2, np.arange(Ch, dtype=np.int64), round_bf16(nob.astype(np.float32)),
        outf, ob, Ho, Wo, Co, op, ty, tx, int(act), float(alpha), _nt(buf))
    return _done(buf, dest)
