"""Elementwise kernels on HWC float32 arrays: activations, binary ops, channel
affine, softmax and argmax over channels.

All arithmetic is float32 and follows PyTorch's CPU formulas (see each op).
Every output element is computed by the same scalar expression wherever it
lies, so any sub-region equals the crop of the full result bit for bit.
Elementwise work is split into fixed blocks of whole pixels run in parallel;
the ops over channels run pixels in parallel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._common import as_f32, out_array

__all__ = [
    "UNARY", "BINARY", "unary", "prelu", "binary", "rbinary",
    "affine_channels", "softmax_channels", "argmax_channels",
]

UNARY = {
    "identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4, "silu": 5,
    "gelu": 6, "gelu_tanh": 7, "hard_sigmoid": 8, "hard_swish": 9, "clip": 10,
    "elu": 11, "softplus": 12, "exp": 13, "abs": 14, "neg": 15, "sqrt": 16,
    "log": 17, "reciprocal": 18, "mish": 19, "erf": 20,
}
BINARY = {"add": 0, "sub": 1, "mul": 2, "div": 3, "max": 4, "min": 5, "pow": 6}
# internal codes: constant-on-the-left forms of the non-commutative ops, and the
# per-channel parameter ops prelu (x, slope) and affine (x, scale, shift)
_RSUB, _RDIV, _RPOW, _PRELU, _AFFINE = 7, 8, 9, 10, 11
_REVERSED = {0: 0, 1: _RSUB, 2: 2, 3: _RDIV, 4: 4, 5: 5, 6: _RPOW}

_BLOCK = 4096  # elements per parallel work item (rounded to whole pixels)

_Z = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_THREE = np.float32(3.0)
_SIX = np.float32(6.0)
_SQRT1_2 = np.float32(0.7071067811865476)   # M_SQRT1_2
_K_BETA = np.float32(0.7978845608028654)    # M_SQRT2 * M_2_SQRTPI * 0.5
_K_KAPPA = np.float32(0.044715)
_SOFTPLUS_THRESHOLD = np.float32(20.0)


# **** helpers ****


def _channels(x):
    return x.shape[-1] if x.ndim else 1


def _block_len(c):
    """Block length in elements: whole pixels, about _BLOCK elements."""
    c = max(int(c), 1)
    return max(1, _BLOCK // c) * c


def _tile(v, c, length):
    """A per-channel vector (C,) or (1,) repeated to `length` elements."""
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if v.size == 1:
        return np.full(length, v[0], np.float32)
    if v.size != c:
        raise ValueError(f"expected a vector of length {c} or 1, got {v.size}")
    return np.tile(v, length // c)


# **** unary ****


@njit(cache=True, nogil=True, error_model="numpy")
def _unary_span(x, o, code, p0, p1):
    n = x.size
    if code == 0:
        for i in range(n):
            o[i] = x[i]
    elif code == 1:  # relu (NaN propagates, like clamp_min)
        for i in range(n):
            v = x[i]
            o[i] = _Z if v < _Z else v
    elif code == 2:  # leaky_relu: x > 0 ? x : x * alpha
        for i in range(n):
            v = x[i]
            o[i] = v if v > _Z else v * p0
    elif code == 3:  # sigmoid: 1 / (1 + exp(-x))
        for i in range(n):
            o[i] = _ONE / (_ONE + math.exp(-x[i]))
    elif code == 4:
        for i in range(n):
            o[i] = math.tanh(x[i])
    elif code == 5:  # silu (torch): x / (1 + exp(-x))
        for i in range(n):
            v = x[i]
            o[i] = v / (_ONE + math.exp(-v))
    elif code == 6:  # gelu (torch): x * 0.5 * (1 + erf(x * M_SQRT1_2))
        for i in range(n):
            v = x[i]
            o[i] = v * _HALF * (_ONE + math.erf(v * _SQRT1_2))
    elif code == 7:  # gelu tanh (torch): 0.5 * x * (1 + tanh(kBeta * (x + kKappa * x^3)))
        for i in range(n):
            v = x[i]
            inner = _K_BETA * (v + _K_KAPPA * (v * v * v))
            o[i] = _HALF * v * (_ONE + math.tanh(inner))
    elif code == 8:  # hard_sigmoid (ONNX): max(0, min(1, alpha * x + beta))
        for i in range(n):
            t = p0 * x[i] + p1
            t = _ONE if t > _ONE else t
            o[i] = _Z if t < _Z else t
    elif code == 9:  # hard_swish (torch): x * min(max(x + 3, 0), 6) / 6
        for i in range(n):
            v = x[i]
            t = v + _THREE
            t = _Z if t < _Z else t
            t = _SIX if t > _SIX else t
            o[i] = v * t / _SIX
    elif code == 10:  # clip(min=p0, max=p1), NaN propagates
        for i in range(n):
            v = x[i]
            v = p0 if v < p0 else v
            o[i] = p1 if v > p1 else v
    elif code == 11:  # elu (torch): x > 0 ? x : expm1(x) * alpha
        for i in range(n):
            v = x[i]
            o[i] = v if v > _Z else math.expm1(v) * p0
    elif code == 12:  # softplus (torch, beta 1, threshold 20)
        for i in range(n):
            v = x[i]
            o[i] = v if v > _SOFTPLUS_THRESHOLD else math.log1p(math.exp(v))
    elif code == 13:
        for i in range(n):
            o[i] = math.exp(x[i])
    elif code == 14:
        for i in range(n):
            o[i] = abs(x[i])
    elif code == 15:
        for i in range(n):
            o[i] = -x[i]
    elif code == 16:
        for i in range(n):
            o[i] = np.sqrt(x[i])
    elif code == 17:
        for i in range(n):
            o[i] = np.log(x[i])
    elif code == 18:
        for i in range(n):
            o[i] = _ONE / x[i]
    elif code == 19:  # mish (torch): x * tanh(log1p(exp(x)))
        for i in range(n):
            v = x[i]
            o[i] = v * math.tanh(math.log1p(math.exp(v)))
    elif code == 20:
        for i in range(n):
            o[i] = math.erf(x[i])


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _unary(x, o, code, p0, p1, block):
    n = x.size
    nb = (n + block - 1) // block
    for b in prange(nb):
        lo = b * block
        hi = min(lo + block, n)
        _unary_span(x[lo:hi], o[lo:hi], code, p0, p1)
    return o


def unary(x, code, p0=0.0, p1=0.0, out=None):
    """Apply the activation ``code`` (a value of :data:`UNARY` or its name).

    ``p0``/``p1``: alpha for ``leaky_relu``/``elu``; (alpha, beta) for
    ``hard_sigmoid`` (ONNX: ``max(0, min(1, alpha*x + beta))``; PyTorch's
    Hardsigmoid is alpha=1/6, beta=0.5); (min, max) for ``clip``.

    Examples
    --------
    >>> unary(np.array([[[-1.0, 2.0]]], np.float32), "relu")
    array([[[0., 2.]]], dtype=float32)
    """
    if isinstance(code, str):
        code = UNARY[code]
    if int(code) not in UNARY.values():
        raise ValueError(f"unknown unary code {code}")
    x = as_f32(x)
    out = out_array(out, x.shape)
    if x.size == 0:
        return out
    _unary(x.reshape(-1), out.reshape(-1), int(code), np.float32(p0), np.float32(p1),
           _block_len(_channels(x)))
    return out


# **** binary and per-channel parameter ops ****


@njit(cache=True, nogil=True, error_model="numpy")
def _binary_span(a, b, t, o, code):
    # t is read by _AFFINE only
    n = a.size
    if code == 0:
        for i in range(n):
            o[i] = a[i] + b[i]
    elif code == 1:
        for i in range(n):
            o[i] = a[i] - b[i]
    elif code == 2:
        for i in range(n):
            o[i] = a[i] * b[i]
    elif code == 3:
        for i in range(n):
            o[i] = a[i] / b[i]
    elif code == 4:  # torch.maximum: NaN if either is NaN
        for i in range(n):
            u = a[i]
            v = b[i]
            o[i] = u if (u > v or u != u) else v
    elif code == 5:
        for i in range(n):
            u = a[i]
            v = b[i]
            o[i] = u if (u < v or u != u) else v
    elif code == 6:
        for i in range(n):
            o[i] = a[i] ** b[i]
    elif code == 7:
        for i in range(n):
            o[i] = b[i] - a[i]
    elif code == 8:
        for i in range(n):
            o[i] = b[i] / a[i]
    elif code == 9:
        for i in range(n):
            o[i] = b[i] ** a[i]
    elif code == 10:  # prelu (torch): x > 0 ? x : w * x
        for i in range(n):
            v = a[i]
            o[i] = v if v > _Z else b[i] * v
    elif code == 11:  # affine
        for i in range(n):
            o[i] = a[i] * b[i] + t[i]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _binary_blocks(a, b, t, o, code, block, tiled):
    # blocks of `block` elements in parallel; b and t cover all of a, or (tiled)
    # hold one block of a per-channel vector repeated (a whole number of pixels)
    n = a.size
    nb = (n + block - 1) // block
    for k in prange(nb):
        lo = k * block
        hi = min(lo + block, n)
        j = 0 if tiled else lo
        _binary_span(a[lo:hi], b[j: j + hi - lo], t[j: j + hi - lo], o[lo:hi], code)
    return o


def _per_channel(a, code, b, t=None, out=None):
    """``a OP b`` with ``b`` (and ``t``) per-channel (C,) or scalar (1,) constants."""
    out = out_array(out, a.shape)
    if a.size:
        c = _channels(a)
        block = _block_len(c)
        bt = _tile(b, c, block)
        _binary_blocks(a.reshape(-1), bt, bt if t is None else _tile(t, c, block), out.reshape(-1),
                       code, block, True)
    return out


def _elementwise(a, b, code, out):
    """``a OP b`` for ``b`` of ``a``'s shape."""
    out = out_array(out, a.shape)
    if a.size:
        b = np.ascontiguousarray(b).reshape(-1)
        _binary_blocks(a.reshape(-1), b, b, out.reshape(-1), code, _block_len(_channels(a)), False)
    return out


def prelu(x, slope, out=None):
    """PReLU: ``x if x > 0 else slope[c] * x``; ``slope`` is (C,) or (1,).

    Examples
    --------
    >>> prelu(np.array([[[-2.0, 2.0]]], np.float32), np.array([0.5, 0.1], np.float32))
    array([[[-1.,  2.]]], dtype=float32)
    """
    return _per_channel(as_f32(x), _PRELU, slope, out=out)


def affine_channels(x, scale, shift, out=None):
    """``out = x * scale[c] + shift[c]`` (an unfused inference BatchNorm).

    Examples
    --------
    >>> affine_channels(np.ones((1, 1, 2), np.float32), np.array([2, 3], np.float32),
    ...                 np.array([0.5, -1], np.float32))
    array([[[2.5, 2. ]]], dtype=float32)
    """
    return _per_channel(as_f32(x), _AFFINE, scale, shift, out)


def _binary(a, b, code, reverse, out):
    if isinstance(code, str):
        code = BINARY[code]
    code = int(code)
    if code not in _REVERSED:
        raise ValueError(f"unknown binary code {code}")
    a = as_f32(a, "a")
    b = np.asarray(b, dtype=np.float32)
    c = _channels(a)
    k = _REVERSED[code] if reverse else code
    if b.shape == a.shape:
        return _elementwise(a, b, k, out)
    if b.ndim <= a.ndim and b.size in (1, c) and (b.ndim == 0 or b.shape[-1] == b.size):
        return _per_channel(a, k, b, out=out)  # scalar or per-channel constant
    # general broadcasting (e.g. an (h, w, 1) gate times (h, w, C)): materialise
    shape = np.broadcast_shapes(a.shape, b.shape)
    aa = np.ascontiguousarray(np.broadcast_to(a, shape))
    return _elementwise(aa, np.broadcast_to(b, shape), k, out)


def binary(a, b, code, out=None):
    """``out = a OP b`` with ``OP`` from :data:`BINARY` (code or name).

    ``b`` has ``a``'s shape, or is a per-channel (C,) / scalar (1,) constant;
    other NumPy-broadcastable shapes are accepted too (materialised).
    Arithmetic is plain float32 (``pow`` via ``powf``); ``max``/``min``
    propagate NaN like ``torch.maximum``/``torch.minimum``.

    Examples
    --------
    >>> binary(np.ones((1, 2, 1), np.float32), np.array([3], np.float32), "sub")
    array([[[-2.],
            [-2.]]], dtype=float32)
    """
    return _binary(a, b, code, False, out)


def rbinary(b, a, code, out=None):
    """``out = b OP a`` with the constant ``b`` on the left (``1 - x``, ``2 / x``).

    Examples
    --------
    >>> rbinary(np.array([1], np.float32), np.full((1, 1, 2), 4, np.float32), "div")
    array([[[0.25, 0.25]]], dtype=float32)
    """
    return _binary(a, b, code, True, out)


# **** over channels ****


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _softmax(x, o):
    npix, c = x.shape
    for p in prange(npix):
        xp = x[p]
        op = o[p]
        m = xp[0]
        for ch in range(1, c):
            v = xp[ch]
            m = v if (v > m or v != v) else m
        s = _Z
        for ch in range(c):
            e = math.exp(xp[ch] - m)
            op[ch] = e
            s += e
        for ch in range(c):
            op[ch] = op[ch] / s
    return o


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _argmax(x, o):
    npix, c = x.shape
    for p in prange(npix):
        xp = x[p]
        best = xp[0]
        idx = 0
        if best == best:
            for ch in range(1, c):
                v = xp[ch]
                if v != v:  # numpy: the first NaN wins
                    idx = ch
                    break
                if v > best:
                    best = v
                    idx = ch
        o[p] = idx
    return o


def softmax_channels(x, out=None):
    """Softmax over the channel axis per pixel: ``exp(x - max) / sum``.

    The max, the exponentials and their sum run over channels in order, in
    float32.

    Examples
    --------
    >>> softmax_channels(np.zeros((1, 1, 4), np.float32))
    array([[[0.25, 0.25, 0.25, 0.25]]], dtype=float32)
    """
    x = as_f32(x)
    out = out_array(out, x.shape)
    if x.size == 0:
        return out
    c = x.shape[-1]
    _softmax(x.reshape(-1, c), out.reshape(-1, c))
    return out


def argmax_channels(x, out=None):
    """Index of the largest channel per pixel as uint8 ``(h, w)``; the first max wins.

    Examples
    --------
    >>> argmax_channels(np.array([[[0.1, 0.7, 0.7]]], np.float32))
    array([[1]], dtype=uint8)
    """
    x = as_f32(x)
    c = x.shape[-1]
    if c > 256:
        raise ValueError(f"argmax_channels returns uint8 labels; {c} channels is more than 256")
    out = out_array(out, x.shape[:-1], np.uint8)
    if out.size == 0:
        return out
    if c == 0:
        raise ValueError("argmax over zero channels")
    _argmax(x.reshape(-1, c), out.reshape(-1))
    return out
