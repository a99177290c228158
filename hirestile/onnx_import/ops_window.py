"""Handlers of windowed image ops: convolution, transposed convolution, pooling, global
pooling and resizing, with the window padding rules (``auto_pad``) they share.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from hirestile.errors import ModelError
from hirestile.graph import Conv, ConvTranspose, GlobalPool, Pool, Resize
from hirestile.onnx_import.ops import _f32, _handler
from hirestile.onnx_import.read import MAX_RESIZE, MAX_SIDE
from hirestile.onnx_import.values import Act, Poison, _Unsupported

if TYPE_CHECKING:
    from hirestile.onnx_import.importer import _Importer

def _pair(v, default):
    v = list(v) if v is not None else list(default)
    if len(v) != 2:
        raise _Unsupported(f"{len(v)}-D window (2-D only)")
    return (int(v[0]), int(v[1]))


def _same_pads(imp: _Importer, x: str, kernel, stride, dilation, mode: str):
    """Per-side pads for auto_pad SAME_UPPER / SAME_LOWER, checked to be equal at every probe."""
    found = {_same_pads_at(imp, x, kernel, stride, dilation, mode, p) for p in imp._live()}
    if len(found) > 1:
        if imp.static:
            return _same_pads_at(imp, x, kernel, stride, dilation, mode, 0)
        raise _Unsupported(f"auto_pad={mode} whose amounts depend on the image size")
    return found.pop()


def _same_pads_at(imp, x, kernel, stride, dilation, mode, p):
    """The SAME pads at probe ``p``."""
    pads = [0, 0, 0, 0]
    for a in (0, 1):
        n = imp.shapes[p][x][a + 1]
        total = max((-(-n // stride[a]) - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1 - n, 0)
        small = total // 2
        pads[a], pads[a + 2] = (small, total - small) if mode == "SAME_UPPER" else (total - small, small)
    return tuple(pads)


def _window_pads(imp, at, x, kernel, stride, dilation):
    mode = at.get("auto_pad", "NOTSET") or "NOTSET"
    if mode == "NOTSET":
        pads = at.get("pads", [0, 0, 0, 0])
        if len(pads) != 4:
            raise _Unsupported("pads for a non-2-D window")
        if any(v < 0 for v in pads):
            raise _Unsupported("negative pads")
        return tuple(int(v) for v in pads)
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(imp, x, kernel, stride, dilation, mode)
    raise ModelError(f"{imp.label}: unknown auto_pad {mode!r}")


def _input_weight_bias(imp: _Importer, name: str, ins, what: str, outputs) -> tuple[str, np.ndarray, np.ndarray]:
    """A (transposed) convolution's input, 4-D weight and bias (zeros when absent), the bias
    checked against ``outputs(w)`` output channels."""
    x = imp.act(ins[0])
    w = imp.const(ins[1], "the weight")
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D {what} (2-D only)")
    cout = outputs(w)
    b = imp.const(ins[2], "the bias") if len(ins) > 2 and ins[2] is not None else np.zeros(cout, np.float32)
    if b.shape != (cout,):
        raise ModelError(f"{imp.label}: node {name!r}: bias shape {b.shape} does not match {cout} outputs")
    return x, w, b


@_handler("Conv")
def _conv(imp: _Importer, n, name, ins, at):
    x, w, b = _input_weight_bias(imp, name, ins, "convolution", lambda w: int(w.shape[0]))
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in at and tuple(at["kernel_shape"]) != kernel:
        raise ModelError(f"{imp.label}: node {name!r}: kernel_shape {at['kernel_shape']} does not match the "
                         f"weight {list(w.shape)}")
    group = int(at.get("group", 1))
    stride = _pair(at.get("strides"), (1, 1))
    dil = _pair(at.get("dilations"), (1, 1))
    if group < 1 or w.shape[0] % group or min(stride) < 1 or min(dil) < 1:
        raise ModelError(f"{imp.label}: node {name!r}: bad group/strides/dilations")
    pads = _window_pads(imp, at, x, kernel, stride, dil)
    op = Conv(kernel=kernel, stride=stride, dilation=dil, pads=pads, groups=group,
              cin=int(w.shape[1]) * group, cout=int(w.shape[0]))
    return [Act(imp.emit(name, op, [x], {"w": _f32(w), "b": _f32(b)}, "Conv"))]


@_handler("ConvTranspose")
def _conv_t(imp: _Importer, n, name, ins, at):
    group = int(at.get("group", 1))
    x, w, b = _input_weight_bias(imp, name, ins, "transposed convolution", lambda w: int(w.shape[1]) * group)
    cout = int(b.shape[0])
    kernel = (int(w.shape[2]), int(w.shape[3]))
    stride = _pair(at.get("strides"), (1, 1))
    dil = _pair(at.get("dilations"), (1, 1))
    opad = list(_pair(at.get("output_padding"), (0, 0)))
    if min(stride) < 1 or min(dil) < 1 or group < 1 or w.shape[0] % group:
        raise ModelError(f"{imp.label}: node {name!r}: bad group/strides/dilations")
    mode = at.get("auto_pad", "NOTSET") or "NOTSET"
    pads = list(at.get("pads", [0, 0, 0, 0]))
    out_shape = at.get("output_shape")
    if out_shape is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for a in (0, 1):
            if out_shape is not None:
                want = int(list(out_shape)[-2 + a])
                nin = imp.shape(x, 0 if imp.alive[0] else None)[a + 1]
            else:
                nin, want = 1, stride[a]  # SAME: output = input * stride, total padding is size-free
            total = stride[a] * (nin - 1) + opad[a] + (kernel[a] - 1) * dil[a] + 1 - want
            if mode == "SAME_UPPER":
                pads[a], pads[a + 2] = total // 2, total - total // 2
            else:
                pads[a], pads[a + 2] = total - total // 2, total // 2
            if pads[a + 2] < 0:
                opad[a] -= pads[a + 2]
                pads[a + 2] = 0
            if pads[a] < 0:
                raise _Unsupported("output_shape larger than the transposed convolution can produce")
    elif mode not in ("NOTSET", "VALID"):
        raise ModelError(f"{imp.label}: unknown auto_pad {mode!r}")
    if len(pads) != 4 or any(v < 0 for v in pads):
        raise _Unsupported("pads for a non-2-D or negative window")
    op = ConvTranspose(kernel=kernel, stride=stride, dilation=dil, pads=tuple(int(v) for v in pads),
                       output_padding=(int(opad[0]), int(opad[1])), groups=group, cin=int(w.shape[0]), cout=cout)
    return [Act(imp.emit(name, op, [x], {"w": _f32(w), "b": _f32(b)}, "ConvTranspose"))]


@_handler("MaxPool", "AveragePool")
def _pool(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    if "kernel_shape" not in at:
        raise ModelError(f"{imp.label}: node {name!r}: {n.op_type} without kernel_shape")
    kernel = _pair(at["kernel_shape"], None)
    stride = _pair(at.get("strides"), (1, 1))
    dil = _pair(at.get("dilations"), (1, 1))
    if min(kernel) < 1 or min(stride) < 1 or min(dil) < 1:
        raise ModelError(f"{imp.label}: node {name!r}: bad kernel/strides/dilations")
    if n.op_type == "AveragePool" and dil != (1, 1):
        raise _Unsupported(f"dilations {list(dil)}")
    pads = _window_pads(imp, at, x, kernel, stride, dil)
    op = Pool(mode="max" if n.op_type == "MaxPool" else "avg", kernel=kernel, stride=stride, dilation=dil,
              pads=pads, ceil_mode=bool(at.get("ceil_mode", 0)),
              count_include_pad=bool(at.get("count_include_pad", 0)))
    out = imp.emit(name, op, [x], onnx_op=n.op_type)
    return [Act(out), Poison()]


@_handler("GlobalAveragePool")
def _gap(imp: _Importer, n, name, ins, at):
    return [Act(imp.emit(name, GlobalPool(), [imp.act(ins[0])], onnx_op=n.op_type))]


@_handler("ReduceMean")
def _reduce_mean(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    axes = at.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = [int(v) for v in imp.const(ins[1], "axes").reshape(-1)]
    if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        raise _Unsupported(f"mean over axes {axes} (only over rows and columns, axes [2, 3])")
    if not at.get("keepdims", 1):
        raise _Unsupported("keepdims=0 (use keepdims=1)")
    return [Act(imp.emit(name, GlobalPool(label=n.op_type), [x], onnx_op=n.op_type))]


_COORD = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"}
_NEAREST = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}


@_handler("Resize", "Upsample")
def _resize(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    mode = at.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise _Unsupported(f"mode={mode!r}")
    if n.op_type == "Upsample":
        coord, nearest = "asymmetric", "floor"
        scales = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("scales")
        sizes = None
        if scales is None:
            raise ModelError(f"{imp.label}: node {name!r}: Upsample without scales")
    else:
        # Resize-10 had no such attributes: asymmetric coordinates, floor for nearest (as Upsample)
        coord = at.get("coordinate_transformation_mode", "half_pixel" if imp.opset >= 11 else "asymmetric")
        nearest = at.get("nearest_mode", "round_prefer_floor" if imp.opset >= 11 else "floor")
        if coord not in _COORD:
            raise _Unsupported(f"coordinate_transformation_mode={coord!r}")
        if nearest not in _NEAREST:
            raise _Unsupported(f"nearest_mode={nearest!r}")
        if at.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise _Unsupported("keep_aspect_ratio_policy other than 'stretch'")
        if imp.opset < 11:
            scales, sizes = ins[1] if len(ins) > 1 else None, None
        else:
            scales = ins[2] if len(ins) > 2 else None
            sizes = ins[3] if len(ins) > 3 else None
        if isinstance(scales, np.ndarray) and scales.size == 0:
            scales = None
        if isinstance(sizes, np.ndarray) and sizes.size == 0:
            sizes = None
    axes = at.get("axes")
    lin = "bilinear" if mode in ("linear", "bilinear") else "nearest"
    c0 = imp.shape(x)[0]

    def full(vec, fill):
        vec = [float(v) for v in np.asarray(vec).reshape(-1)]
        if axes is None:
            return vec
        out = list(fill)
        for a, v in zip(axes, vec):
            out[a % 4] = v
        return out

    if sizes is not None:
        per = imp._sym_or_const(sizes)
        ratios, fixed = set(), set()
        for p in imp._baked(sizes):
            if per[p] is None:
                continue
            s = full(per[p], [imp.batch, c0] + list(imp.shapes[p][x][1:]))
            if len(s) != 4 or s[0] != imp.batch or s[1] != c0:
                raise _Unsupported(f"resizes the batch or channel axis (sizes {s})")
            if not all(1 <= v <= MAX_SIDE for v in s[2:]):
                raise ModelError(f"{imp.label}: node {name!r}: absurd Resize sizes {s}")
            h, w = imp.shapes[p][x][1:]
            ratios.add((s[2] / h, s[3] / w))
            fixed.add((int(s[2]), int(s[3])))
        if isinstance(sizes, np.ndarray) and not imp.static:
            r = None  # a constant size asked for in a size-free model: honour it
        elif len(ratios) == 1:
            r = ratios.pop()
            if isinstance(sizes, np.ndarray) and not all(float(v).is_integer() for v in r):
                r = None
        else:
            r = None
        if r is not None:
            if max(r) > MAX_RESIZE or min(r) <= 0:
                raise ModelError(f"{imp.label}: node {name!r}: absurd Resize factor {r}")
            op = Resize(mode=lin, scale=(float(r[0]), float(r[1])), coord=coord, nearest=nearest)
        elif isinstance(sizes, np.ndarray) or imp.static:
            s = fixed.pop() if len(fixed) == 1 else tuple(int(v) for v in full(imp._sym_or_const(sizes)[0],
                                                                              [imp.batch, c0, 1, 1])[2:])
            op = Resize(mode=lin, size=s, coord=coord, nearest=nearest)
        else:
            raise _Unsupported("output size depends on the image size in a way hirestile cannot express")
    else:
        if scales is None:
            raise ModelError(f"{imp.label}: node {name!r}: Resize with neither scales nor sizes")
        s = full(imp.const(scales, "scales"), [1.0, 1.0, 1.0, 1.0])
        if len(s) != 4 or s[0] != 1 or s[1] != 1:
            raise _Unsupported(f"resizes the batch or channel axis (scales {s})")
        if not all(math.isfinite(v) and 0 < v <= MAX_RESIZE for v in s[2:]):
            raise ModelError(f"{imp.label}: node {name!r}: absurd Resize scales {s[2:]}")
        op = Resize(mode=lin, scale=(float(np.float32(s[2])), float(np.float32(s[3]))), coord=coord, nearest=nearest)
    if at.get("antialias", 0) and lin == "bilinear" and min(op.out_shape([imp.shape(x)])[1:]) < max(imp.shape(x)[1:]) \
            and (op.size is not None or min(op.scale) < 1):
        raise _Unsupported("antialias=1 when downsampling")
    return [Act(imp.emit(name, op, [x], onnx_op=n.op_type))]
