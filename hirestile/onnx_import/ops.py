"""The handler registry and the handlers of pointwise, channel and normalising ops.

A handler ``f(imp, node, name, ins, attrs)`` maps one ONNX node that reads an image
tensor onto graph nodes (``imp.emit``) and returns the node's output values; it raises
``_Unsupported`` (with a reason) for what hirestile cannot map. Windowed ops are in
:mod:`~hirestile.onnx_import.ops_window`, shape-moving ones in
:mod:`~hirestile.onnx_import.ops_shape`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from hirestile.errors import ModelError
from hirestile.graph import Affine, Binary, Concat, Norm, PRelu, Softmax, Unary, batchnorm_affine
from hirestile.onnx_import.values import _IMAGE, Act, Cmp, Grouped, Poison, _Unsupported

if TYPE_CHECKING:
    from hirestile.onnx_import.importer import _Importer

_HANDLERS: dict[str, Callable] = {}


def _handler(*ops):
    def deco(f):
        for op in ops:
            _HANDLERS[op] = f
        return f
    return deco


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Exp": "exp",
          "Abs": "abs", "Neg": "neg", "Sqrt": "sqrt", "Log": "log", "Reciprocal": "reciprocal",
          "Erf": "erf", "Mish": "mish", "HardSwish": "hard_swish"}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min",
           "Pow": "pow", "Sum": "add"}


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


@_handler("BatchNormalization")
def _batchnorm(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    if at.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    gamma, beta, mean, var = (imp.const(v, "batch-norm statistics").astype(np.float64).reshape(-1)
                              for v in ins[1:5])
    c = imp.shape(x)[0]
    if not all(a.size == c for a in (gamma, beta, mean, var)):
        raise ModelError(f"{imp.label}: node {name!r}: batch-norm parameters do not have {c} channels")
    scale, shift = batchnorm_affine(gamma, beta, mean, var, float(at.get("epsilon", 1e-5)))
    out = imp.emit(name, Affine(), [x], {"scale": scale, "shift": shift}, n.op_type)
    return [Act(out)] + [Poison()] * (len(n.output) - 1)


def _unary(imp: _Importer, name, x, fn, p0=0.0, p1=0.0, onnx_op=""):
    return Act(imp.emit(name, Unary(fn=fn, p0=float(p0), p1=float(p1)), [x], onnx_op=onnx_op))


@_handler(*_UNARY)
def _unary_op(imp: _Importer, n, name, ins, at):
    return [_unary(imp, name, imp.act(ins[0]), _UNARY[n.op_type], onnx_op=n.op_type)]


@_handler("LeakyRelu")
def _leaky(imp, n, name, ins, at):
    return [_unary(imp, name, imp.act(ins[0]), "leaky_relu", at.get("alpha", 0.01), onnx_op=n.op_type)]


@_handler("Elu")
def _elu(imp, n, name, ins, at):
    return [_unary(imp, name, imp.act(ins[0]), "elu", at.get("alpha", 1.0), onnx_op=n.op_type)]


@_handler("HardSigmoid")
def _hsig(imp, n, name, ins, at):
    return [_unary(imp, name, imp.act(ins[0]), "hard_sigmoid", at.get("alpha", 0.2), at.get("beta", 0.5),
                   onnx_op=n.op_type)]


@_handler("Gelu")
def _gelu(imp, n, name, ins, at):
    approx = at.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise _Unsupported(f"approximate={approx!r}")
    return [_unary(imp, name, imp.act(ins[0]), "gelu" if approx == "none" else "gelu_tanh", onnx_op=n.op_type)]


@_handler("Clip")
def _clip(imp, n, name, ins, at):
    x = imp.act(ins[0])
    lo = float(imp.const(ins[1], "the clip minimum").reshape(())) if len(ins) > 1 and ins[1] is not None \
        else float(at.get("min", -np.inf))
    hi = float(imp.const(ins[2], "the clip maximum").reshape(())) if len(ins) > 2 and ins[2] is not None \
        else float(at.get("max", np.inf))
    return [_unary(imp, name, x, "clip", lo, hi, onnx_op=n.op_type)]


@_handler("PRelu")
def _prelu(imp, n, name, ins, at):
    x = imp.act(ins[0])
    slope = imp.const(ins[1], "the slope")
    c = imp.shape(x)[0]
    s = _channel_const(slope, c)
    if s is None:
        raise _Unsupported(f"slope of shape {list(slope.shape)} (per-channel or scalar only)")
    return [Act(imp.emit(name, PRelu(), [x], {"slope": s}, n.op_type))]


def _channel_const(a: np.ndarray, c: int) -> np.ndarray | None:
    """A constant that broadcasts against (1, C, H, W) per channel: as (C,) or (1,); else None."""
    a = np.asarray(a)
    if a.ndim > 4:
        return None
    shape = (1,) * (4 - a.ndim) + a.shape
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, c):
        return None
    return _f32(a.reshape(-1))


@_handler("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum")
def _binary(imp: _Importer, n, name, ins, at):
    fn = _BINARY[n.op_type]
    ins = [v for v in ins if v is not None]
    if imp.opset < 7 and at.get("broadcast") and len(ins) == 2 and isinstance(ins[1], np.ndarray):
        # opset 1-6 (a model onnx's converter could not upgrade): B broadcasts from ``axis`` on
        axis = int(at.get("axis", 4 - ins[1].ndim)) % 4
        ins = [ins[0], ins[1].reshape(ins[1].shape + (1,) * (4 - axis - ins[1].ndim))]
    if len(ins) == 1:
        return [Act(imp.act(ins[0]))]
    if len(ins) > 2:
        if n.op_type not in ("Max", "Min", "Sum"):
            raise ModelError(f"{imp.label}: node {name!r}: {n.op_type} with {len(ins)} inputs")
        acc = ins[0]
        for k, v in enumerate(ins[1:-1]):
            acc = _binary_pair(imp, f"{name}/{k}", fn, acc, v)
        return [_binary_pair(imp, name, fn, acc, ins[-1])]
    return [_binary_pair(imp, name, fn, ins[0], ins[1])]


def _binary_pair(imp: _Importer, name, fn, a, b):
    images = [v for v in (a, b) if isinstance(v, _IMAGE)]
    names = [v.name for v in images if isinstance(v, Act)]
    if len(images) == 2:
        xa, xb = imp.act(a, names), imp.act(b, names)
        return Act(imp.emit(name, Binary(fn=fn), [xa, xb], onnx_op=fn))
    left = not isinstance(a, _IMAGE)
    x = imp.act(b if left else a)
    c = imp.const(a if left else b, "the constant operand")
    cc = _channel_const(c, imp.shape(x)[0])
    if cc is None:
        raise _Unsupported(f"constant operand of shape {list(np.shape(c))} (per-channel or scalar only)")
    if cc.size > 1 and imp.shape(x)[0] == 1:
        raise _Unsupported("a constant with more channels than the tensor")
    return Act(imp.emit(name, Binary(fn=fn, const_left=left and fn not in ("add", "mul", "max", "min")), [x],
                        {"const": cc}, fn))


@_handler("Concat")
def _concat(imp: _Importer, n, name, ins, at):
    ins = [v for v in ins if v is not None]
    if not all(isinstance(v, _IMAGE) for v in ins):
        raise _Unsupported("concatenates constants with the image tensor")
    if at.get("axis", 0) % 4 != 1:
        raise _Unsupported(f"axis {at.get('axis')} (channels, axis 1, only)")
    names = [v.name for v in ins if isinstance(v, Act)]
    xs = [imp.act(v, names) for v in ins]
    if len(xs) == 1:
        return [Act(xs[0])]
    return [Act(imp.emit(name, Concat(), xs, onnx_op="Concat"))]


@_handler("Identity", "Dropout")
def _identity(imp, n, name, ins, at):
    if n.op_type == "Dropout" and len(ins) > 2 and ins[2] is not None and bool(
            np.asarray(imp.const(ins[2], "training_mode")).reshape(())):
        raise _Unsupported("training_mode=True")
    return [ins[0], Poison()]


@_handler("Cast")
def _cast(imp, n, name, ins, at):
    if at.get("to") != 1:
        raise _Unsupported(f"cast of the image tensor to data type {at.get('to')}")
    return [ins[0]]


@_handler("Softmax", "LogSoftmax")
def _softmax(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    if imp.opset < 13:
        raise _Unsupported("opset < 13 softmax (flattens channels and space); re-export with opset 13+")
    if at.get("axis", -1) % 4 != 1:
        raise _Unsupported(f"axis {at.get('axis', -1)} (channels, axis 1, only)")
    if n.op_type == "Softmax":
        return [Act(imp.emit(name, Softmax(), [x], onnx_op=n.op_type))]
    s = imp.emit(f"{name}/softmax", Softmax(), [x], onnx_op=n.op_type)
    return [_unary(imp, name, s, "log", onnx_op=n.op_type)]


@_handler("InstanceNormalization")
def _instnorm(imp: _Importer, n, name, ins, at):
    v = ins[0]
    eps = float(at.get("epsilon", 1e-5))
    scale = imp.const(ins[1], "the scale").astype(np.float32).reshape(-1)
    bias = imp.const(ins[2], "the bias").astype(np.float32).reshape(-1)
    if isinstance(v, Grouped) and v.normed is None:
        if scale.size != v.groups or bias.size != v.groups:
            raise ModelError(f"{imp.label}: node {name!r}: {scale.size} scales for {v.groups} groups")
        return [Grouped(v.src, v.groups, name, (scale, bias, eps))]
    x = imp.act(v)
    c = imp.shape(x)[0]
    if scale.size != c or bias.size != c:
        raise ModelError(f"{imp.label}: node {name!r}: {scale.size} scales for {c} channels")
    return [Act(imp.emit(name, Norm(groups=c, eps=eps), [x], {"scale": _f32(scale), "bias": _f32(bias)},
                         n.op_type))]


@_handler("GroupNormalization")
def _groupnorm(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    g = int(at.get("num_groups", 0))
    c = imp.shape(x)[0]
    if g < 1 or c % g:
        raise ModelError(f"{imp.label}: node {name!r}: {g} groups for {c} channels")
    scale = imp.const(ins[1], "the scale").astype(np.float32).reshape(-1)
    bias = imp.const(ins[2], "the bias").astype(np.float32).reshape(-1)
    if scale.size == g and g != c:  # opset 18's per-group parameters
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    if scale.size != c or bias.size != c:
        raise ModelError(f"{imp.label}: node {name!r}: {scale.size} scales for {c} channels")
    return [Act(imp.emit(name, Norm(groups=g, eps=float(at.get("epsilon", 1e-5)), label="GroupNormalization"), [x],
                         {"scale": _f32(scale), "bias": _f32(bias)}, n.op_type))]


@_handler("Greater", "Less")
def _compare(imp: _Importer, n, name, ins, at):
    if not isinstance(ins[0], Act) or isinstance(ins[1], _IMAGE):
        raise _Unsupported("comparison of image tensors")
    c = imp.const(ins[1], "the threshold")
    if c.size != 1:
        raise _Unsupported("comparison with a non-scalar")
    return [Cmp(ins[0].name, ">" if n.op_type == "Greater" else "<", float(c.reshape(-1)[0]))]


@_handler("Where")
def _where(imp: _Importer, n, name, ins, at):
    cond, a, b = ins
    # torch's softplus threshold: where(x > 20, x, softplus(x)) is what hirestile's softplus computes
    if isinstance(cond, Cmp) and cond.op == ">" and abs(cond.value - 20.0) < 1e-6 and isinstance(a, Act) \
            and a.name == cond.act and isinstance(b, Act):
        node = next((nd for nd in imp.nodes if nd.name == b.name), None)
        if node is not None and isinstance(node.op, Unary) and node.op.fn == "softplus" \
                and node.inputs == (a.name,):
            return [b]
    raise _Unsupported("selects between image tensors")
