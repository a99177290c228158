"""The model as a DAG of ops: shapes, parameters and exact region rules.

Layer 1 of docs/architecture.md: no numerics, no I/O. Every tensor is one image
(batch 1) of shape (C, H, W) on its own pixel grid. Every op knows, per spatial
axis and exactly, which input interval an output interval reads, in *global*
coordinates (row 0 is the top of the whole image at that resolution). Intervals
are half-open ``(start, stop)``; a region is ``(rows, cols)``.

Ops are frozen dataclasses holding their attributes; weights live on the
:class:`Node` (``params``) so ops stay small and hashable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import ClassVar, Mapping, Sequence

import numpy as np

from hirestile.errors import ModelError
from hirestile.region import Interval
Shape = tuple[int, int, int]  # (C, H, W)
Pair = tuple[int, int]  # (y, x)
CentreMap = tuple[Fraction, Fraction]  # input coordinate = scale * output coordinate + offset

INPUT = "input"


class ShapeError(ModelError):
    """A tensor shape the network cannot take (too small, mismatched channels, ...)."""


def _empty(iv: Interval) -> bool:
    return iv[1] <= iv[0]


def window_rule(iv: Interval, k: int, s: int, d: int, p: int) -> Interval:
    """Input interval a sliding window (conv / pool) reads for output interval ``iv``."""
    o0, o1 = iv
    if o1 <= o0:
        return (0, 0)
    return (s * o0 - p, s * (o1 - 1) - p + d * (k - 1) + 1)


def window_size(n: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool = False) -> int:
    """Output length of a sliding window over ``n`` inputs padded by ``p0``/``p1``.

    PyTorch's rule: with ``ceil_mode`` the last window may run past the padded
    input (it then has fewer members), as long as it starts inside the input or
    the left padding.
    """
    span = n + p0 + p1 - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p0:
        out -= 1
    return max(out, 0)


# ---------------------------------------------------------------- ops


@dataclass(frozen=True)
class Op:
    """Base op. Subclasses override the rules they need."""

    kind: ClassVar[str] = "op"
    #: None, or why the output depends on the whole image
    whole_image: ClassVar[str | None] = None

    def out_shape(self, shapes: Sequence[Shape]) -> Shape:
        return shapes[0]

    def in_interval(self, k: int, axis: int, iv: Interval, shapes: Sequence[Shape], out: Shape) -> Interval | None:
        """Input interval of input ``k`` read for output interval ``iv`` on ``axis`` (0 = rows).

        ``None`` means the op reads no pixels of that input (shape-only dependency).
        """
        return iv

    def centre(self, axis: int, shapes: Sequence[Shape], out: Shape) -> CentreMap:
        """Where an output pixel's centre sits on input 0's grid."""
        return (Fraction(1), Fraction(0))

    def flops(self, shapes: Sequence[Shape], out: Shape) -> float:
        """Floating-point operations per output pixel (all channels)."""
        return float(out[0])


@dataclass(frozen=True)
class _Convolution(Op):
    """What Conv and ConvTranspose share: kernel geometry, channels, a fused activation."""

    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    dilation: Pair = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    cin: int = 1
    cout: int = 1
    act: str = ""
    alpha: float = 0.0

    def _input_hw(self, shapes) -> tuple[int, int]:
        c, h, w = shapes[0]
        if c != self.cin:
            raise ShapeError(f"expects {self.cin} input channels, got {c}")
        return h, w


@dataclass(frozen=True)
class Conv(_Convolution):
    """2-D convolution (cross-correlation), weights ``w`` (Co, Ci/g, kh, kw), bias ``b``.

    ``pads`` is (top, left, bottom, right); ``pad_mode`` one of zeros, reflect,
    replicate. ``act`` is a fused activation ("", "relu", "leaky_relu") with ``alpha``.
    """

    kind: ClassVar[str] = "Conv"
    pad_mode: str = "zeros"

    def out_shape(self, shapes):
        h, w = self._input_hw(shapes)
        ho = window_size(h, self.kernel[0], self.stride[0], self.dilation[0], self.pads[0], self.pads[2])
        wo = window_size(w, self.kernel[1], self.stride[1], self.dilation[1], self.pads[1], self.pads[3])
        return (self.cout, ho, wo)

    def in_interval(self, k, axis, iv, shapes, out):
        return window_rule(iv, self.kernel[axis], self.stride[axis], self.dilation[axis], self.pads[axis])

    def centre(self, axis, shapes, out):
        return (Fraction(self.stride[axis]), Fraction(self.dilation[axis] * (self.kernel[axis] - 1), 2) - self.pads[axis])

    def flops(self, shapes, out):
        return 2.0 * self.kernel[0] * self.kernel[1] * (self.cin // self.groups) * self.cout


@dataclass(frozen=True)
class ConvTranspose(_Convolution):
    """Transposed convolution: output ``y = s*x - pad + d*j`` for input x, tap j.

    Weights ``w`` (Ci, Co/g, kh, kw) as in PyTorch and ONNX; bias ``b``.
    """

    kind: ClassVar[str] = "ConvTranspose"
    output_padding: Pair = (0, 0)

    def out_shape(self, shapes):
        dims = []
        for a, n in enumerate(self._input_hw(shapes)):
            dims.append((n - 1) * self.stride[a] - self.pads[a] - self.pads[a + 2]
                        + self.dilation[a] * (self.kernel[a] - 1) + self.output_padding[a] + 1)
        return (self.cout, max(dims[0], 0), max(dims[1], 0))

    def in_interval(self, k, axis, iv, shapes, out):
        o0, o1 = iv
        if o1 <= o0:
            return (0, 0)
        s, d, kk, p = self.stride[axis], self.dilation[axis], self.kernel[axis], self.pads[axis]
        return (-((-(o0 + p - d * (kk - 1))) // s), (o1 - 1 + p) // s + 1)

    def centre(self, axis, shapes, out):
        s = self.stride[axis]
        return (Fraction(1, s), (self.pads[axis] - Fraction(self.dilation[axis] * (self.kernel[axis] - 1), 2)) / s)

    def flops(self, shapes, out):
        taps = self.kernel[0] * self.kernel[1] / (self.stride[0] * self.stride[1])
        return 2.0 * taps * (self.cin // self.groups) * self.cout


@dataclass(frozen=True)
class Pool(Op):
    """Max or average pooling (``mode`` "max" | "avg") with PyTorch's attributes."""

    kind: ClassVar[str] = "Pool"
    mode: str = "max"
    kernel: Pair = (2, 2)
    stride: Pair = (2, 2)
    dilation: Pair = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        if self.mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be 'max' or 'avg', got {self.mode!r}")
        if self.mode == "avg" and tuple(self.dilation) != (1, 1):
            raise ValueError("average pooling with dilation is not supported (PyTorch has none)")

    def out_shape(self, shapes):
        c, h, w = shapes[0]
        ho = window_size(h, self.kernel[0], self.stride[0], self.dilation[0], self.pads[0], self.pads[2], self.ceil_mode)
        wo = window_size(w, self.kernel[1], self.stride[1], self.dilation[1], self.pads[1], self.pads[3], self.ceil_mode)
        return (c, ho, wo)

    in_interval = Conv.in_interval
    centre = Conv.centre

    def divisors(self, axis: int, o0: int, o1: int, n: int) -> np.ndarray:
        """Average-pool divisor factors (int64) of outputs ``[o0, o1)`` on ``axis`` over ``n`` inputs.

        PyTorch's rule: the window ``[o*s - p0, o*s - p0 + k)`` clipped to the padded
        input ``[-p0, n + p1)``; with ``count_include_pad`` its length, else the length
        of its part inside ``[0, n)``. An output's divisor is its row factor times its
        column factor.
        """
        k, s, p0, p1 = self.kernel[axis], self.stride[axis], self.pads[axis], self.pads[axis + 2]
        start = np.arange(o0, o1, dtype=np.int64) * s - p0
        end = np.minimum(start + k, n + p1)
        if not self.count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        return end - start

    def flops(self, shapes, out):
        return float(self.kernel[0] * self.kernel[1] * out[0])


@dataclass(frozen=True)
class Resize(Op):
    """Upsampling / resizing. ``mode`` "nearest" | "bilinear".

    ``scale`` is the factor per axis (output = floor(input * scale)) unless
    ``size`` fixes the output size. ``coord`` is the coordinate transform:
    "half_pixel", "pytorch_half_pixel", "align_corners" or "asymmetric".
    Nearest uses ``floor(src)`` of the asymmetric transform (PyTorch "nearest")
    unless ``nearest`` says "round_prefer_floor" / "round_prefer_ceil" / "ceil".

    :meth:`taps` is the one rule for which inputs (and weights) an output reads:
    the region rule and the executor both use it. It reproduces the arithmetic of
    the framework that defines the mode (see :meth:`source`), so the taps are the
    reference's taps exactly.
    """

    kind: ClassVar[str] = "Resize"
    mode: str = "nearest"
    scale: tuple[float, float] = (2.0, 2.0)
    size: Pair | None = None
    coord: str = "asymmetric"
    nearest: str = "floor"

    def out_shape(self, shapes):
        c, h, w = shapes[0]
        if self.size is not None:
            return (c, self.size[0], self.size[1])
        return (c, int(math.floor(h * self.scale[0])), int(math.floor(w * self.scale[1])))

    @property
    def torch_mode(self) -> bool:
        """Whether the mode is one of PyTorch's ``F.interpolate`` modes: "bilinear" (half-pixel
        or align_corners), "nearest" (asymmetric, floor), "nearest-exact" (half_pixel,
        round_prefer_ceil). The others exist only in ONNX."""
        if self.mode == "bilinear":
            return self.coord != "asymmetric"
        return (self.coord, self.nearest) in (("asymmetric", "floor"), ("half_pixel", "round_prefer_ceil"))

    def _inv_scale(self, axis: int, n_in: int, n_out: int) -> np.float32:
        """PyTorch's float32 input/output ratio: ``1/scale`` (taken in double) when a scale
        factor is given, else ``in/out``."""
        if self.size is None:
            return np.float32(1.0 / self.scale[axis])
        return np.float32(n_in) / np.float32(n_out)

    def source(self, axis: int, o: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
        """Continuous source coordinate (float32) of output positions ``o``.

        PyTorch modes (:attr:`torch_mode`) use PyTorch's CPU arithmetic: the product of
        ``o`` and the float32 ratio of :meth:`_inv_scale` (``(in-1)/(out-1)`` for
        align_corners), and for half-pixel ``ratio*(o + 0.5) - 0.5`` as one fused
        multiply-add, as its vectorised builds compute it. ONNX-only modes use ONNX
        Runtime's: float32 division by the scale (``out/in`` with a fixed size).
        """
        o = np.asarray(o, np.int64)
        f32 = np.float32
        if n_out <= 1 and self.coord in ("align_corners", "pytorch_half_pixel"):
            return np.zeros(o.shape, f32)
        of = o.astype(f32)
        if self.coord == "align_corners":
            if self.torch_mode:
                return of * (f32(n_in - 1) / f32(n_out - 1))
            return of * f32(n_in - 1) / f32(n_out - 1)
        half = self.coord != "asymmetric"
        if self.torch_mode:
            r = self._inv_scale(axis, n_in, n_out)
            if not half:
                return of * r
            # the float64 product of a float32 and o + 0.5 is exact, and so is the
            # subtraction: one rounding to float32, as a fused multiply-add does
            return (np.float64(r) * (o + 0.5) - 0.5).astype(f32)
        r = f32(self.scale[axis]) if self.size is None else f32(n_out) / f32(n_in)
        return of / r if not half else (of + f32(0.5)) / r - f32(0.5)

    def taps(self, axis: int, o: np.ndarray, n_in: int, n_out: int):
        """Source indices and weights of output positions ``o`` (global, on ``axis``):
        (i0, i1, lambda) for bilinear, (i0,) for nearest; int64 indices, float32 weights.

        Monotone in ``o``. Equal sizes copy (PyTorch and ONNX Runtime short-cut them).
        Bilinear follows PyTorch: ``src`` clamped at 0, ``i0 = floor(src)``, ``i1 = i0 + 1``
        but at the last input, ``lambda = src - i0`` clamped to [0, 1].
        """
        o = np.asarray(o, np.int64)
        if n_out == n_in:
            return (o.copy(),) if self.mode == "nearest" else (o.copy(), o.copy(), np.zeros(o.shape, np.float32))
        if self.mode == "nearest":
            if (self.coord, self.nearest) == ("asymmetric", "floor") and n_out == 2 * n_in:
                i = o >> 1  # PyTorch's nearest short-cuts x2
            elif self.torch_mode and self.nearest == "round_prefer_ceil":
                # PyTorch's nearest-exact: floorf((o + 0.5) * ratio), the product rounded to float32
                i = np.floor((np.float64(self._inv_scale(axis, n_in, n_out)) * (o + 0.5)).astype(np.float32))
            else:
                src = self.source(axis, o, n_in, n_out).astype(np.float64)  # rounding offsets exact
                if self.nearest == "round_prefer_floor":
                    i = np.ceil(src - 0.5)
                elif self.nearest == "round_prefer_ceil":
                    i = np.floor(src + 0.5)
                elif self.nearest == "ceil":
                    i = np.ceil(src)
                else:
                    i = np.floor(src)
            return (np.clip(i, 0, n_in - 1).astype(np.int64),)
        src = np.maximum(self.source(axis, o, n_in, n_out), np.float32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
        return i0, i1, lam

    def in_interval(self, k, axis, iv, shapes, out):
        if _empty(iv):
            return (0, 0)
        n_in, n_out = shapes[0][axis + 1], out[axis + 1]
        idx = np.concatenate(self.taps(axis, np.array([iv[0], iv[1] - 1]), n_in, n_out)[:2])
        return (int(idx.min()), int(idx.max()) + 1)  # taps are monotone in o: the hull of all of them

    def centre(self, axis, shapes, out):
        n_in, n_out = shapes[0][axis + 1], out[axis + 1]
        if self.coord == "align_corners":
            return (Fraction(n_in - 1, max(n_out - 1, 1)), Fraction(0))
        r = Fraction(self.scale[axis]).limit_denominator(1 << 16) if self.size is None else Fraction(n_out, n_in)
        return (1 / r, 1 / (2 * r) - Fraction(1, 2))

    def flops(self, shapes, out):
        return float(out[0] * (8 if self.mode == "bilinear" else 1))


@dataclass(frozen=True)
class Unary(Op):
    """Pointwise activation ``fn`` with parameters p0, p1 (see hirestile.kernels.pointwise)."""

    kind: ClassVar[str] = "Unary"
    fn: str = "relu"
    p0: float = 0.0
    p1: float = 0.0


@dataclass(frozen=True)
class PRelu(Op):
    """PReLU with per-channel (or shared) slope ``slope``."""

    kind: ClassVar[str] = "PRelu"


@dataclass(frozen=True)
class Affine(Op):
    """Per-channel ``x * scale + shift`` (inference BatchNorm that could not be folded).

    ``scale`` and ``shift`` are kept in float64 (see :func:`batchnorm_affine`) so
    that folding them into a conv rounds each folded weight to float32 once.
    """

    kind: ClassVar[str] = "Affine"


def batchnorm_affine(gamma, beta, mean, var, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as float64 ``(scale, shift)``: ``y = x * scale + shift``.

    Float64 matters where the network sees a large common offset (a sky pedestal):
    the conv's output then nearly cancels against the BN mean, and double-rounded
    float32 folding showed up as up to 10x PyTorch's own float32 error.
    """
    f64 = [np.asarray(a, np.float64).reshape(-1) for a in (gamma, beta, mean, var)]
    scale = f64[0] / np.sqrt(f64[3] + float(eps))
    return scale, f64[1] - f64[2] * scale


@dataclass(frozen=True)
class Binary(Op):
    """Elementwise ``fn`` (add, sub, mul, div, max, min, pow) of two tensors, or of a
    tensor and a per-channel / scalar constant ``const`` (``const_left`` puts it first).

    A tensor operand of spatial size 1 x 1 (from a global pool) broadcasts.
    """

    kind: ClassVar[str] = "Binary"
    fn: str = "add"
    const_left: bool = False

    def out_shape(self, shapes):
        if len(shapes) == 1:
            return shapes[0]
        (ca, ha, wa), (cb, hb, wb) = shapes
        c = max(ca, cb)
        if ca not in (1, c) or cb not in (1, c):
            raise ShapeError(f"cannot broadcast channels {ca} and {cb}")
        if (ha, wa) != (hb, wb) and (1, 1) not in ((ha, wa), (hb, wb)):
            raise ShapeError(f"spatial sizes differ: {ha}x{wa} and {hb}x{wb}")
        return (c, max(ha, hb), max(wa, wb))

    def in_interval(self, k, axis, iv, shapes, out):
        if shapes[k][axis + 1] == 1 and out[axis + 1] != 1:
            return (0, 1)
        return iv


@dataclass(frozen=True)
class Concat(Op):
    """Concatenation over channels."""

    kind: ClassVar[str] = "Concat"

    def out_shape(self, shapes):
        hw = {s[1:] for s in shapes}
        if len(hw) != 1:
            raise ShapeError(f"concat of different spatial sizes {sorted(hw)}")
        return (sum(s[0] for s in shapes), shapes[0][1], shapes[0][2])


@dataclass(frozen=True)
class Slice(Op):
    """Crop: Python-slice ``starts``/``stops`` (negative counts from the end, None = end)
    on (channels, rows, cols); step 1 on the spatial axes.
    """

    kind: ClassVar[str] = "Slice"
    starts: tuple[int | None, int | None, int | None] = (None, None, None)
    stops: tuple[int | None, int | None, int | None] = (None, None, None)

    def bounds(self, axis: int, n: int) -> Interval:
        """Resolved (start, stop) on an axis of length n (axis 0 = channels)."""
        start, stop, _ = slice(self.starts[axis], self.stops[axis]).indices(n)
        return (start, max(stop, start))

    def out_shape(self, shapes):
        return tuple(b - a for a, b in (self.bounds(i, n) for i, n in enumerate(shapes[0])))

    def in_interval(self, k, axis, iv, shapes, out):
        a = self.bounds(axis + 1, shapes[0][axis + 1])[0]
        return (iv[0] + a, iv[1] + a) if not _empty(iv) else (0, 0)

    def centre(self, axis, shapes, out):
        return (Fraction(1), Fraction(self.bounds(axis + 1, shapes[0][axis + 1])[0]))


@dataclass(frozen=True)
class CropLike(Op):
    """Crop input 0 to the spatial size of input 1, centred (``anchor`` "centre") or
    from the top-left (``anchor`` "start") — the skip crop of valid-padding U-Nets and
    the crop-back of a pad-to-multiple contract. Reads no pixels of input 1.
    """

    kind: ClassVar[str] = "CropLike"
    anchor: str = "centre"

    def offset(self, axis: int, shapes: Sequence[Shape]) -> int:
        extra = shapes[0][axis + 1] - shapes[1][axis + 1]
        if extra < 0:
            raise ShapeError(f"cannot crop {shapes[0][1:]} to the larger {shapes[1][1:]}")
        return extra // 2 if self.anchor == "centre" else 0

    def out_shape(self, shapes):
        for axis in (0, 1):
            self.offset(axis, shapes)
        return (shapes[0][0], shapes[1][1], shapes[1][2])

    def in_interval(self, k, axis, iv, shapes, out):
        if k == 1:
            return None
        a = self.offset(axis, shapes)
        return (iv[0] + a, iv[1] + a) if not _empty(iv) else (0, 0)

    def centre(self, axis, shapes, out):
        return (Fraction(1), Fraction(self.offset(axis, shapes)))


@dataclass(frozen=True)
class Pad(Op):
    """Spatial padding (top, left, bottom, right); negative amounts crop.

    ``mode`` "constant" (with ``value``), "reflect" or "edge". With ``multiple`` > 1
    the bottom/right amounts are instead whatever brings H, W up to a multiple of it
    (an input contract's pad-to rule).
    """

    kind: ClassVar[str] = "Pad"
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    mode: str = "constant"
    value: float = 0.0
    multiple: int = 1

    def amounts(self, shape: Shape) -> tuple[int, int, int, int]:
        if self.multiple > 1:
            m = self.multiple
            return (0, 0, -shape[1] % m, -shape[2] % m)
        return self.pads

    def out_shape(self, shapes):
        c, h, w = shapes[0]
        t, l, b, r = self.amounts(shapes[0])
        if self.mode == "edge" and (h == 0 or w == 0) and max(t, l, b, r) > 0:
            raise ShapeError("edge padding of an empty image")
        return (c, max(h + t + b, 0), max(w + l + r, 0))

    def in_interval(self, k, axis, iv, shapes, out):
        if _empty(iv):
            return (0, 0)
        p = self.amounts(shapes[0])[axis]
        return (iv[0] - p, iv[1] - p)

    def centre(self, axis, shapes, out):
        return (Fraction(1), Fraction(-self.amounts(shapes[0])[axis]))


@dataclass(frozen=True)
class Softmax(Op):
    """Softmax over channels."""

    kind: ClassVar[str] = "Softmax"

    def flops(self, shapes, out):
        return 4.0 * out[0]


@dataclass(frozen=True)
class GlobalPool(Op):
    """Mean over the whole spatial extent -> (C, 1, 1)."""

    kind: ClassVar[str] = "GlobalAveragePool"
    whole_image: ClassVar[str] = "output depends on the whole image (global average over space)"
    label: str = "GlobalAveragePool"      # or "ReduceMean": the op the user's model names

    def out_shape(self, shapes):
        return (shapes[0][0], 1, 1)

    def in_interval(self, k, axis, iv, shapes, out):
        return (0, shapes[0][axis + 1])

    def centre(self, axis, shapes, out):
        return (Fraction(0), Fraction(shapes[0][axis + 1] - 1, 2))


@dataclass(frozen=True)
class Norm(Op):
    """Instance (``groups`` == channels) or group normalisation over space, with
    per-channel ``scale`` and ``bias`` params."""

    kind: ClassVar[str] = "Norm"
    whole_image: ClassVar[str] = "normalisation statistics are taken over the whole image"
    groups: int = 1
    eps: float = 1e-5
    label: str = "InstanceNormalization"

    def in_interval(self, k, axis, iv, shapes, out):
        return (0, shapes[0][axis + 1])


OPS: dict[str, type[Op]] = {cls.kind: cls for cls in (
    Conv, ConvTranspose, Pool, Resize, Unary, PRelu, Affine, Binary, Concat, Slice, CropLike,
    Pad, Softmax, GlobalPool, Norm)}


def op_label(op: Op) -> str:
    """The name a user knows the op by (ONNX-style)."""
    return getattr(op, "label", None) or op.kind


def padding_mode(op: Op, k: int) -> tuple[str, float]:
    """How positions outside input ``k``'s map read for this op: (mode, fill value).

    mode is "fill" (constant ``fill``), "reflect" or "replicate"; ops whose rules
    never read outside the map report ("fill", 0.0).
    """
    if isinstance(op, Conv):
        return ({"zeros": "fill"}.get(op.pad_mode, op.pad_mode), 0.0)
    if isinstance(op, Pool):
        return ("fill", -np.inf if op.mode == "max" else 0.0)
    if isinstance(op, Pad):
        return ({"constant": "fill", "edge": "replicate"}.get(op.mode, op.mode), op.value)
    return ("fill", 0.0)


# ---------------------------------------------------------------- graph


@dataclass(frozen=True, eq=False)
class Node:
    """One op applied to named input tensors; its output tensor has the node's name."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    params: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class Graph:
    """A single-input, single-output DAG of nodes in topological order."""

    nodes: tuple[Node, ...]
    output: str
    in_channels: int
    input: str = INPUT

    def __post_init__(self):
        object.__setattr__(self, "nodes", toposort(self.nodes, self.input))
        names = {n.name for n in self.nodes}
        if self.output not in names and self.output != self.input:
            raise ModelError(f"graph output {self.output!r} is produced by no node")

    @property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def param_bytes(self, besides: Sequence[np.ndarray] = ()) -> int:
        """Bytes of the nodes' parameter arrays, leaving out those that may share memory with
        an array in ``besides`` (memory already counted elsewhere)."""
        return sum(a.nbytes for n in self.nodes for a in n.params.values()
                   if isinstance(a, np.ndarray) and not any(np.may_share_memory(a, b) for b in besides))

    def consumers(self) -> dict[str, list[tuple[Node, int]]]:
        """For each tensor, the (node, input index) pairs that read it."""
        cons: dict[str, list[tuple[Node, int]]] = {self.input: []}
        for n in self.nodes:
            cons.setdefault(n.name, [])
            for k, t in enumerate(n.inputs):
                cons[t].append((n, k))
        return cons

    def shapes(self, image_shape: tuple[int, int]) -> dict[str, Shape]:
        """Every tensor's (C, H, W) for an input image of ``image_shape`` (H, W)."""
        shapes: dict[str, Shape] = {self.input: (self.in_channels, int(image_shape[0]), int(image_shape[1]))}
        for n in self.nodes:
            ins = [shapes[t] for t in n.inputs]
            try:
                out = n.op.out_shape(ins)
            except ShapeError as e:
                raise ShapeError(f"node {n.name!r} ({n.op.kind}) on input {ins}: {e}") from None
            if any(v <= 0 for v in out):
                raise ShapeError(f"node {n.name!r} ({n.op.kind}) gives an empty tensor {out} for an "
                                 f"image of {image_shape[0]}x{image_shape[1]}: the image is too small for this network")
            shapes[n.name] = out
        return shapes

    def replace_nodes(self, nodes: Sequence[Node], output: str | None = None) -> "Graph":
        return replace(self, nodes=tuple(nodes), output=output or self.output)


def toposort(nodes: Sequence[Node], input_name: str = INPUT) -> tuple[Node, ...]:
    """Nodes in dependency order; clear errors for duplicates, dangling inputs and cycles."""
    by_name: dict[str, Node] = {}
    for n in nodes:
        if n.name in by_name or n.name == input_name:
            raise ModelError(f"two tensors are named {n.name!r}")
        by_name[n.name] = n
    for n in nodes:
        for t in n.inputs:
            if t != input_name and t not in by_name:
                raise ModelError(f"node {n.name!r} reads {t!r}, which no node produces")
    order: list[Node] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in nodes:
        stack = [(root, 0)]
        while stack:
            n, i = stack.pop()
            if i == 0:
                if state.get(n.name) == 2:
                    continue
                state[n.name] = 1
            if i < len(n.inputs):
                stack.append((n, i + 1))
                t = n.inputs[i]
                if t == input_name:
                    continue
                if state.get(t) == 1:
                    raise ModelError(f"the graph has a cycle through node {t!r}")
                if state.get(t) != 2:
                    stack.append((by_name[t], 0))
            else:
                state[n.name] = 2
                order.append(n)
    return tuple(order)
