"""Convolution kernels: :func:`conv2d`, :func:`conv2d_concat`, :func:`conv_transpose2d`, :func:`conv_tile`.

All arrays are float32 in HWC layout ``(h, w, C)``. The kernels are *valid*
kernels: the caller hands in an input window that already holds the padding
values, so a kernel never needs global coordinates.

Routes (chosen by shape alone, see ``_route``)
----------------------------------------------
wino4       3x3, stride 1, dilation 1, groups 1, Ci and Co multiples of 16,
            Ci * Co >= WINO_MIN (512): Winograd F(4x4, 3x3) (``_conv_wino4``: points 0, +-1,
            1/2, -2, inf); tile step (4, 4). 1.2-1.5x F(2x2)'s speed on 16..512
            channels (Zen 4, 2 threads); per-layer error 1.6e-6..3.9e-6 of max|ref|
            vs float64 (F(2x2): 2e-7..6e-7, PyTorch: 3e-7), whole UNets 1.3e-7..1.9e-7
            (benchmarks/README.md). Not 16 -> 16 (``WINO_MIN``: Ci * Co >= 512) by
            default: F(4x4) is 1.29x the blocked route there (2048^2, 1 thread; error
            1.4e-6 of max|ref|), but its (4, 4) step widens tile halos (the tiling
            doctest's 22 px halo becomes 30) for ~3 % of a full-frame UNet-16;
            ``WINO_MIN = 256`` takes it.
            :func:`conv2d_concat` runs it on two windows whose channels it reads as
            one concatenated window (a UNet decoder's skip and up-sampled map, left
            where their producers wrote them): the same bits, no concat copy.
wino2       the same shapes with ``WINO4 = False``: Winograd F(2x2, 3x3); tile step
            (2, 2). Slightly more accurate than a direct float32 sum; the benchmarks'
            comparison route.
dot         groups == 1, Co <= 8, Ci a multiple of 16 (segmentation heads):
            each element's sum vectorised over ci (fixed lane tree); (1, 1).
blocked     any other groups == 1 conv: register-blocked direct (16-lane
            vectors over output channels x 6-8 pixels); tile step (1, 1).
depthwise   groups == Ci; vectorised over channels; tile step (1, 1).
direct      everything else (grouped); tile step (1, 1).

blocked, depthwise and direct sum each element in the same order (ky, kx, ci),
so they give the same bits as each other.

conv_transpose2d routes (groups 1, dilation 1, Co a multiple of 16; else a generic
gather): kernel == stride (UNet's 2x2 stride-2 up-conv) runs one GEMM per output
row with the kw taps side by side (kw*Co columns: wider micro-kernels for thin
Co, one pass over the input row); kernel < stride one GEMM per tap. Both sum
each element as the gather does (ci in order, one FMA each): same bits.

Weights: conv2d transforms / packs ``w`` on every call (for wino4 a 36 x Ci x Co
transform, for wino2 16 x Ci x Co: ~20 ms at 512 x 512). Pass a **read-only** array
(``w.setflags(write=False)``, and never modify it through another view) and
the packed form is cached for as long as that array object lives.

Large outputs (``_move.NT_BYTES``, 64 MiB, and up) lying on whole 64-byte lines are written
with non-temporal stores by the wino4, blocked and paired transposed routes (no read for
ownership of lines that would leave the caches anyway); the values are the same.

Determinism: the float operations that produce one output element do not
depend on the window's size or origin, nor on the thread count (see
``_conv_direct`` for the order). :func:`conv_tile` names the output-region
granularity the executor must respect for the route a shape takes.

Examples
--------
>>> import numpy as np
>>> from hirestile.kernels import conv
>>> x = np.ones((5, 5, 2), np.float32)
>>> w = np.ones((3, 3, 2, 4), np.float32)
>>> y = conv.conv2d(x, w, np.zeros(4, np.float32), act=1)
>>> y.shape, float(y[0, 0, 0])
((3, 3, 4), 18.0)
"""

from __future__ import annotations

import threading
import weakref

import numba
import numpy as np

from . import _conv_blocked as _b
from . import _conv_direct as _d
from . import _conv_dot as _dot
from . import _conv_wino as _w
from . import _conv_wino4 as _w4
from ._common import as_window, flat, packed
from ._move import streaming

__all__ = ["conv2d", "conv2d_concat", "concat_fusable", "conv_transpose2d", "conv_tile"]

ACT_NONE, ACT_RELU, ACT_LEAKY = 0, 1, 2


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    a, b = (int(v[0]), int(v[1]))
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return a, b


def _as_f32c(a, name):
    a = np.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}")
    return np.ascontiguousarray(a)


def _ro(a):
    """``a``, or a read-only view of it: the kernels always see weights and biases as
    read-only arrays (a Numba argument type of its own), so that each compiles one
    version whether the caller's arrays are writable or not."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _operands(x, w, bias, stride, dilation):
    """The checks and conversions conv2d and conv_transpose2d share."""
    return (as_window(x, "x"), _ro(_as_f32c(w, "w")), _ro(_as_f32c(bias, "bias")),
            _pair(stride, "stride"), _pair(dilation, "dilation"))


def _check_out(out, shape):
    if out is None:
        return np.empty(shape, np.float32)
    if not packed(out) or out.shape != shape:
        raise ValueError(f"out must be a float32 array of shape {shape} with packed pixels (C-contiguous, "
                         f"or a window of rows of a wider one), got {getattr(out, 'shape', None)} "
                         f"{getattr(out, 'dtype', None)}")
    return out


# Winograd F(4x4, 3x3) for every shape F(2x2) would take (measured 1.2-1.5x faster on
# 16..512 channels, Zen 4); False sends them back to F(2x2) (benchmarks compare the two).
WINO4 = True
# Ci * Co from which a 3x3 stride-1 conv takes Winograd (256, the default: every
# multiple-of-16 shape, 16 -> 16 included; 512: 16 -> 16 on the blocked route). F(4x4) on
# 16 -> 16 measured 1.29x the blocked route per layer, and a UNet-16 5 % less CPU end to end
# (session 14, Zen 4), though its (4, 4) step widens a UNet-16's tile halo by a few pixels.
WINO_MIN = 256


def _route(kh, kw, stride, dilation, groups, ci, co):
    """Name of the route conv2d takes for this shape (kept in one place so that
    conv_tile and conv2d can never disagree)."""
    if groups == 1:
        if (kh, kw, stride, dilation) == (3, 3, (1, 1), (1, 1)) and ci % 16 == 0 \
                and co % 16 == 0 and ci * co >= WINO_MIN:
            return "wino4" if WINO4 else "wino2"
        if co <= 8 and ci % 16 == 0:
            return "dot"
        return "blocked"
    if groups == ci:
        return "depthwise"
    return "direct"


_TILE = {"wino2": (2, 2), "wino4": (4, 4)}

# packed weights of read-only weight arrays: id(array) -> (weakref to it, {route: packed})
_packed: dict = {}
_packed_lock = threading.Lock()


def _forget(key, ref):
    with _packed_lock:
        if key in _packed and _packed[key][0] is ref:
            del _packed[key]


def _pack(w_in, w, route, make):
    """make(w), cached for the lifetime of the caller's weight array when it is
    read-only (numpy arrays are unhashable, so the key is id() guarded by a weakref)."""
    if not (isinstance(w_in, np.ndarray) and not w_in.flags.writeable):
        return make(w)
    key = id(w_in)
    with _packed_lock:
        ent = _packed.get(key)
        if ent is None or ent[0]() is not w_in:
            ref = weakref.ref(w_in, lambda r, key=key: _forget(key, r))
            ent = _packed[key] = (ref, {})
        got = ent[1].get(route)
    if got is None:
        got = make(w)
        with _packed_lock:
            ent[1][route] = got
    return got


def conv_tile(kh, kw, stride, dilation, groups, ci, co):
    """Output tile step ``(my, mx)`` of the route :func:`conv2d` takes for this shape.

    The executor only asks for output regions whose global origin and size are
    multiples of it. Direct routes return ``(1, 1)``.

    >>> conv_tile(3, 3, (1, 1), (1, 1), 1, 3, 32)
    (1, 1)
    >>> conv_tile(3, 3, (1, 1), (1, 1), 1, 32, 64)   # Winograd F(4x4, 3x3)
    (4, 4)
    >>> conv_tile(3, 3, (1, 1), (1, 1), 1, 16, 16)   # from Ci * Co = WINO_MIN (256) up
    (4, 4)
    >>> conv_tile(3, 3, (1, 1), (1, 1), 1, 16, 24)   # Co not in 16s: register-blocked direct
    (1, 1)
    """
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    route = _route(int(kh), int(kw), stride, dilation, int(groups), int(ci), int(co))
    return _TILE.get(route, (1, 1))


def conv2d(x, w, bias, *, stride=(1, 1), dilation=(1, 1), groups=1,
           act=0, alpha=0.0, out=None):
    """2-D convolution of an HWC window, fused with bias and activation.

    Parameters
    ----------
    x : (Hi, Wi, Ci) float32
        Input window, padding already applied. C-contiguous, or a window of rows of a
        wider HWC buffer (``buf[r0:r1, c0:c1]``), is read in place; anything else is copied.
    w : (kh, kw, Ci // groups, Co) float32
        Read-only arrays get their packed / transformed form cached.
    bias : (Co,) float32 (zeros when the layer has none)
    stride, dilation : int or pair of ints
    groups : int
        Ci and Co must be multiples of it (groups == Ci is depthwise).
        The output region must respect :func:`conv_tile` for this shape (origin
        and size multiples of it, or ending at the map's end) for tiles to
        reproduce the full-frame bits.
    act : {0, 1, 2}
        0 none, 1 ReLU, 2 LeakyReLU with slope ``alpha``; fused into the store.
    out : (Ho, Wo, Co) float32, C-contiguous, optional
        Written in place and returned. Reuse it across calls: first-touch page
        faults on fresh buffers cost 10-30 % at large sizes.

    Returns
    -------
    (Ho, Wo, Co) float32 with ``Ho = (Hi - dy*(kh-1) - 1)//sy + 1`` (same for W),
    empty when the window is too small.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    >>> w = np.ones((2, 2, 1, 1), np.float32)
    >>> conv2d(x, w, np.zeros(1, np.float32), stride=2)[..., 0]
    array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    w_in = w
    x, w, bias, (sy, sx), (dy, dx) = _operands(x, w, bias, stride, dilation)
    groups = int(groups)
    if x.ndim != 3 or w.ndim != 4:
        raise ValueError(f"x must be (h, w, C) and w (kh, kw, Ci/g, Co); got {x.shape}, {w.shape}")
    Hi, Wi, Ci = x.shape
    kh, kw, cig, Co = w.shape
    if groups < 1 or Ci % groups or Co % groups or cig * groups != Ci:
        raise ValueError(f"groups={groups} does not fit x channels {Ci} and w {w.shape}")
    if bias.shape != (Co,):
        raise ValueError(f"bias must have shape ({Co},), got {bias.shape}")
    if act not in (0, 1, 2):
        raise ValueError(f"act must be 0, 1 or 2, got {act}")
    Ho = max(0, (Hi - dy * (kh - 1) - 1) // sy + 1)
    Wo = max(0, (Wi - dx * (kw - 1) - 1) // sx + 1)
    out = _check_out(out, (Ho, Wo, Co))
    if out.size == 0:
        return out
    route = _route(kh, kw, (sy, sx), (dy, dx), groups, Ci, Co)
    act, alpha = int(act), float(alpha)
    xf, xp = flat(x)
    of, op = flat(out)
    if route == "wino2":
        U = _pack(w_in, w, route, _w.weight_transform)
        nt = _w.pick_nt(Ci, Co, (Wo + 1) // 2)
        Vs, Ms, Ds = _w.scratch(numba.get_num_threads(), nt, Ci, Co)
        _w.conv2d_wino2(xf, Hi, Wi, xp, Ci, U.reshape(-1), bias, of, Ho, Wo, op, Co, nt, Vs, Ms, Ds,
                        act, alpha)
    elif route == "wino4":
        _wino4(w_in, w, bias, x, None, out, act, alpha)
    elif route == "blocked":
        wf, CoP = _pack(w_in, w, route, _b.pack_weights)
        bp = bias if CoP == Co else _ro(np.concatenate([bias, np.zeros(CoP - Co, np.float32)]))
        koff = _b.tap_offsets(kh, kw, Ci, xp, dy, dx)
        _b.conv2d_blocked(xf, xp, Ci, wf, CoP, bp, koff, of, Ho, Wo, op, Co, sy, sx, act, alpha,
                          CoP == Co and streaming(out))
    elif route == "dot":
        wt = _pack(w_in, w, route, _dot.pack_weights)
        toff = _dot.tap_offsets(kh, kw, Ci, xp, dy, dx)
        _dot.conv2d_dot(xf, xp, Ci, wt, bias, toff, of, Ho, Wo, op, Co, sy, sx, act, alpha)
    else:                             # the generic routes take whole arrays
        y = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
        if route == "depthwise":
            _d.conv2d_depthwise(np.ascontiguousarray(x), w, bias, y, sy, sx, dy, dx, act, alpha)
        else:
            _d.conv2d_direct(np.ascontiguousarray(x), w, bias, y, sy, sx, dy, dx, groups, act, alpha)
        if y is not out:
            out[...] = y
    return out


def concat_fusable(w_shape, parts):
    """True when :func:`conv2d_concat` reads ``parts`` (their channel counts) in place for a
    conv of weights ``w_shape`` (kh, kw, Ci, Co), stride 1, dilation 1, groups 1: two parts of
    multiples of 16 channels, on the Winograd F(4x4) route."""
    kh, kw, ci, co = w_shape
    return (len(parts) == 2 and all(c % 16 == 0 for c in parts) and sum(parts) == ci
            and _route(kh, kw, (1, 1), (1, 1), 1, ci, co) == "wino4")


def conv2d_concat(parts, w, bias, *, act=0, alpha=0.0, out=None):
    """:func:`conv2d` (stride 1, dilation 1, groups 1) of the channel concatenation of the two
    windows ``parts`` without building it: a UNet decoder's skip and up-sampled maps, read
    where their producers wrote them. Only where :func:`concat_fusable` holds; the values
    (bits) are those of ``conv2d(np.concatenate(parts, axis=2), ...)``.

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
    w_in = w
    x, w, bias, _, _ = _operands(parts[0], w, bias, 1, 1)
    x2 = as_window(parts[1], "parts[1]")
    if x2.shape[:2] != x.shape[:2] or not concat_fusable(w.shape, (x.shape[2], x2.shape[2])):
        raise ValueError(f"conv2d_concat takes two windows of one size with multiples of 16 channels for a "
                         f"Winograd-route conv; got {x.shape}, {x2.shape} and w {w.shape}")
    if bias.shape != (w.shape[3],) or act not in (0, 1, 2):
        raise ValueError(f"bias must have shape ({w.shape[3]},) and act be 0, 1 or 2")
    Hi, Wi, _ = x.shape
    out = _check_out(out, (max(0, Hi - 2), max(0, Wi - 2), w.shape[3]))
    if out.size == 0:
        return out
    return _wino4(w_in, w, bias, x, x2, out, int(act), float(alpha))


def _wino4(w_in, w, bias, x, x2, out, act, alpha):
    """The Winograd F(4x4) route of :func:`conv2d` (``x2`` None) and :func:`conv2d_concat`
    (``x2`` the concatenation's second window) into ``out``."""
    (Hi, Wi, Ci), (Ho, Wo, Co) = x.shape, out.shape
    xf, xp = flat(x)
    xf2, xp2, Ci2 = (xf, 0, 0) if x2 is None else (*flat(x2), x2.shape[2])
    of, op = flat(out)
    U = _pack(w_in, w, "wino4", _w4.weight_transform)
    nt = _w4.pick_nt(Ci + Ci2, Co, (Wo + 3) // 4)
    Vs, Ms, Ds = _w.scratch(numba.get_num_threads(), nt, Ci + Ci2, Co, _w4.NX)
    _w4.conv2d_wino4(xf, Hi, Wi, xp, Ci, xf2, xp2, Ci2, U, bias, of, Ho, Wo, op, Co, nt, Vs, Ms, Ds, act, alpha,
                     streaming(out))
    return out


def conv_transpose2d(x, w, bias, *, stride=(1, 1), dilation=(1, 1), groups=1,
                     offset=(0, 0), out_shape=(0, 0), act=0, alpha=0.0, out=None):
    """Transposed 2-D convolution on a window, fused with bias and activation.

    Output element ``(r, c, co)`` is ``bias[co]`` plus the sum over ky, kx, ci of
    ``x[iy, ix, ci] * w[ky, kx, ci, co']`` over every (ky, kx) with
    ``r + ty - dy*ky == sy*iy`` for some ``iy`` in ``[0, Hi)`` (same for columns),
    where ``(ty, tx) = offset``. The executor passes ``ty = o0 + pad - sy*i0``
    with ``i0`` the window's global first input row.

    Parameters
    ----------
    x : (Hi, Wi, Ci) float32
    w : (kh, kw, Ci, Co // groups) float32
        PyTorch's ``(Ci, Co/g, kh, kw)`` weight transposed to (kh, kw, Ci, Co/g):
        group g maps input channels ``[g*Ci/g, (g+1)*Ci/g)`` to output channels
        ``[g*Co/g, (g+1)*Co/g)``. (For groups == 1 this is (kh, kw, Ci, Co).)
    bias : (Co,) float32
    offset : pair of non-negative ints
    out_shape : (Ho, Wo)
    act, alpha, out : as in :func:`conv2d`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((2, 2, 1), np.float32)
    >>> w = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    >>> conv_transpose2d(x, w, np.zeros(1, np.float32), stride=2, out_shape=(4, 4))[..., 0]
    array([[0., 1., 0., 1.],
           [2., 3., 2., 3.],
           [0., 1., 0., 1.],
           [2., 3., 2., 3.]], dtype=float32)
    """
    w_in = w
    x, w, bias, (sy, sx), (dy, dx) = _operands(x, w, bias, stride, dilation)
    ty, tx = int(offset[0]), int(offset[1])
    if ty < 0 or tx < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    groups = int(groups)
    if x.ndim != 3 or w.ndim != 4:
        raise ValueError(f"x must be (h, w, C) and w (kh, kw, Ci, Co/g); got {x.shape}, {w.shape}")
    Hi, Wi, Ci = x.shape
    kh, kw, wci, cog = w.shape
    if groups < 1 or Ci % groups or wci != Ci:
        raise ValueError(f"groups={groups} does not fit x channels {Ci} and w {w.shape}")
    Co = cog * groups
    if bias.shape != (Co,):
        raise ValueError(f"bias must have shape ({Co},), got {bias.shape}")
    if act not in (0, 1, 2):
        raise ValueError(f"act must be 0, 1 or 2, got {act}")
    Ho, Wo = int(out_shape[0]), int(out_shape[1])
    if Ho < 0 or Wo < 0:
        raise ValueError(f"out_shape must be non-negative, got {out_shape}")
    out = _check_out(out, (Ho, Wo, Co))
    if out.size == 0:
        return out
    xf, xp = flat(x)
    of, op = flat(out)
    if groups == 1 and (dy, dx) == (1, 1) and (kh, kw) == (sy, sx) and Co % 16 == 0:
        # kernel == stride (UNet's 2x2 stride-2 up-conv): one GEMM per output row with
        # the kw taps side by side (kw*Co columns); same bits as the per-tap route below
        wp = _pack(w_in, w, "convT2", lambda w: _b.pack_cols(
            np.ascontiguousarray(w.transpose(0, 2, 1, 3)).reshape(kh, Ci, kw * Co)))
        wf = _pack(w_in, w, "convT", lambda w: _b.pack_cols(w.reshape(kh * kw, Ci, Co)))
        _b.conv_transpose2d_paired(xf, Hi, Wi, xp, Ci, wp, wf, kh, kw, bias, _ro(np.tile(bias, kw)),
                                   of, Ho, Wo, op, Co, ty, tx, int(act), float(alpha), streaming(out))
    elif groups == 1 and (dy, dx) == (1, 1) and kh <= sy and kw <= sx and Co % 16 == 0:
        # non-overlapping taps, kernel < stride: blocked GEMM per tap
        wf = _pack(w_in, w, "convT", lambda w: _b.pack_cols(w.reshape(kh * kw, Ci, Co)))
        _b.conv_transpose2d_blocked(xf, Hi, Wi, xp, Ci, wf, kh, kw, bias, of, Ho, Wo, op, Co,
                                    sy, sx, ty, tx, int(act), float(alpha))
    else:
        y = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
        _d.conv_transpose2d_direct(np.ascontiguousarray(x), w, bias, y, sy, sx, dy, dx, groups, ty, tx,
                                   int(act), float(alpha))
        if y is not out:
            out[...] = y
    return out
