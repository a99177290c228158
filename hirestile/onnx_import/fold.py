"""The constant folder: ONNX ops evaluated with NumPy on constants and shape values.

Exporters compute pad amounts, slice bounds and reshape targets in small sub-graphs;
:func:`_fold` evaluates one op of such a sub-graph. Every computed tensor is held to a
size limit (``cap``) before it is allocated, so a malformed file cannot make the
folder allocate absurd amounts of memory.
"""
from __future__ import annotations

import math

import numpy as np

from hirestile.errors import ModelError
from hirestile.onnx_import.read import _DTYPES, _one_line
from hirestile.onnx_import.values import _Unsupported

_INT64_MAX = np.iinfo(np.int64).max


def _limit(n: int, cap: int, what: str):
    if n > cap:
        raise ModelError(f"{what} would compute a tensor of {n:.3g} elements while folding constants "
                         f"(limit {cap}): absurd shapes in the model")


def _int_div(a, b):
    """ONNX (C) integer division: truncation toward zero."""
    a = np.asarray(a)
    b = np.asarray(b)
    if np.any(b == 0):
        raise ModelError("integer division by zero while folding constants")
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return (q + fix).astype(np.result_type(a, b))


def _broadcast_size(arrays) -> int:
    try:
        return math.prod(np.broadcast_shapes(*[np.shape(a) for a in arrays]))
    except ValueError as e:
        raise ModelError(f"shapes do not broadcast while folding constants: {_one_line(e)}") from None


def _axes(attrs, inputs, k):
    """Axes from input ``k`` (newer opsets) or the ``axes`` attribute."""
    if len(inputs) > k and inputs[k] is not None:
        return [int(v) for v in np.asarray(inputs[k]).reshape(-1)]
    if "axes" in attrs:
        return list(attrs["axes"])
    return None


def _slice_np(x, starts, ends, axes, steps):
    x = np.asarray(x)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) + (x.ndim if a < 0 else 0)
        if not 0 <= a < x.ndim or st == 0:
            raise ModelError("bad Slice axes or steps while folding constants")
        s = max(min(int(s), _INT64_MAX // 2), -_INT64_MAX // 2)
        e = max(min(int(e), _INT64_MAX // 2), -_INT64_MAX // 2)
        idx[a] = slice(s, e, int(st))
    return x[tuple(idx)]


def _fold(op: str, ins: list, at: dict, opset: int, cap: int, what: str) -> list:
    """Evaluate one ONNX op on NumPy arrays (constants and shape values)."""
    x = ins[0] if ins else None
    if op in ("Identity", "Dropout"):
        return [x]
    if op == "Constant":
        if "value" in at:
            return [at["value"]]
        for k, f in (("value_float", np.float32), ("value_floats", np.float32),
                     ("value_int", np.int64), ("value_ints", np.int64)):
            if k in at:
                return [np.array(at[k], f)]
        raise _Unsupported("Constant without a numeric value")
    if op == "Cast":
        dt = _DTYPES.get(at.get("to"))
        if dt is None:
            raise _Unsupported(f"Cast to data type {at.get('to')}")
        return [np.asarray(x).astype(dt)]
    if op == "CastLike":
        return [np.asarray(x).astype(np.asarray(ins[1]).dtype)]
    if op == "Shape":
        s = np.array(np.shape(x), np.int64)
        return [s[at.get("start", 0):at["end"] if "end" in at else None]]
    if op == "Size":
        return [np.array(np.size(x), np.int64)]
    binops = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
              "Max": np.maximum, "Min": np.minimum, "Equal": np.equal, "Less": np.less,
              "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
              "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}
    if op in binops or op in ("Div", "Mod", "Sum", "Mean"):
        _limit(_broadcast_size(ins), cap, what)
        if op in ("Max", "Min", "Sum", "Mean"):
            f = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[op]
            out = ins[0]
            for v in ins[1:]:
                out = f(out, v)
            if op == "Mean":
                out = (np.asarray(out) / len(ins)).astype(np.asarray(ins[0]).dtype)
            return [np.asarray(out)]
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        if op == "Div":
            if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
                return [_int_div(a, b)]
            with np.errstate(all="ignore"):
                return [(a / b).astype(np.result_type(a, b))]
        if op == "Mod":
            if at.get("fmod", 0):
                return [np.fmod(a, b)]
            if np.issubdtype(b.dtype, np.integer) and np.any(b == 0):
                raise ModelError("integer modulo by zero while folding constants")
            return [np.mod(a, b)]
        with np.errstate(all="ignore"):
            r = binops[op](a, b)
        if op == "Pow":
            r = r.astype(a.dtype)
        elif op not in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"):
            r = r.astype(np.result_type(a, b))
        return [r]
    unops = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,
             "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Exp": np.exp, "Log": np.log, "Sign": np.sign,
             "Not": np.logical_not, "Relu": lambda v: np.maximum(v, 0), "Sigmoid": lambda v: 1 / (1 + np.exp(-v)),
             "Tanh": np.tanh, "Erf": None}
    if op in unops and unops[op] is not None:
        a = np.asarray(x)
        with np.errstate(all="ignore"):
            return [np.asarray(unops[op](a)).astype(a.dtype if op != "Not" else np.bool_)]
    if op == "Clip":
        lo = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("min", -np.inf)
        hi = ins[2] if len(ins) > 2 and ins[2] is not None else at.get("max", np.inf)
        a = np.asarray(x)
        return [np.clip(a, lo, hi).astype(a.dtype)]
    if op == "Where":
        _limit(_broadcast_size(ins), cap, what)
        return [np.where(np.asarray(ins[0], bool), ins[1], ins[2])]
    if op == "Gather":
        a, idx = np.asarray(x), np.asarray(ins[1])
        axis = at.get("axis", 0)
        if not -a.ndim <= axis < a.ndim:
            raise ModelError("Gather axis out of range while folding constants")
        n = a.shape[axis]
        if np.any((idx < -n) | (idx >= n)):
            raise ModelError("Gather index out of range while folding constants")
        _limit(idx.size * (a.size // max(n, 1)), cap, what)
        return [np.take(a, np.where(idx < 0, idx + n, idx), axis=axis)]
    if op in ("Unsqueeze", "Squeeze"):
        a = np.asarray(x)
        axes = _axes(at, ins, 1)
        if op == "Squeeze":
            if axes is None:
                return [np.squeeze(a)]
            return [np.squeeze(a, axis=tuple(v % a.ndim for v in axes))]
        if axes is None:
            raise ModelError("Unsqueeze without axes")
        r = a.ndim + len(axes)
        axes = sorted(v % r for v in axes)
        for v in axes:
            a = np.expand_dims(a, v)
        return [a]
    if op == "Concat":
        arrays = [np.asarray(v) for v in ins if v is not None]
        _limit(sum(a.size for a in arrays), cap, what)
        if all(a.ndim == 0 for a in arrays):
            arrays = [a.reshape(1) for a in arrays]
        return [np.concatenate(arrays, axis=at.get("axis", 0))]
    if op == "Range":
        start, limit, delta = (np.asarray(v).reshape(()) for v in ins[:3])
        if delta == 0:
            raise ModelError("Range with step 0 while folding constants")
        n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
        _limit(n, cap, what)
        return [np.arange(n, dtype=np.result_type(start)) * delta + start]
    if op == "ConstantOfShape":
        shape = [int(v) for v in np.asarray(x).reshape(-1)]
        if any(v < 0 for v in shape):
            raise ModelError("ConstantOfShape with a negative dimension")
        _limit(math.prod(shape), cap, what)
        val = at.get("value")
        val = np.zeros(1, np.float32) if val is None else np.asarray(val).reshape(-1)
        return [np.full(shape, val[0], val.dtype)]
    if op == "Slice":
        if opset < 10:
            starts, ends = at["starts"], at["ends"]
            axes = at.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = np.asarray(ins[1]).reshape(-1)
            ends = np.asarray(ins[2]).reshape(-1)
            axes = np.asarray(ins[3]).reshape(-1) if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = np.asarray(ins[4]).reshape(-1) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        return [np.array(_slice_np(x, starts, ends, axes, steps))]
    if op in ("Reshape", "Flatten"):
        a = np.asarray(x)
        if op == "Flatten":
            ax = at.get("axis", 1) % (a.ndim + 1) if a.ndim else 0
            return [a.reshape(math.prod(a.shape[:ax]), math.prod(a.shape[ax:]))]
        shape = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        if not at.get("allowzero", 0):
            shape = [a.shape[i] if v == 0 and i < a.ndim else v for i, v in enumerate(shape)]
        try:
            return [a.reshape(shape)]
        except ValueError as e:
            raise ModelError(f"Reshape while folding constants: {_one_line(e)}") from None
    if op == "Transpose":
        a = np.asarray(x)
        return [np.transpose(a, at.get("perm"))]
    if op == "Expand":
        shape = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        try:
            out = np.broadcast_shapes(np.shape(x), tuple(shape))
        except ValueError as e:
            raise ModelError(f"Expand while folding constants: {_one_line(e)}") from None
        _limit(math.prod(out), cap, what)
        return [np.array(np.broadcast_to(x, out))]
    if op == "Tile":
        a = np.asarray(x)
        reps = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        if any(v < 0 for v in reps):
            raise ModelError("Tile with a negative repeat")
        _limit(a.size * math.prod(reps), cap, what)
        return [np.tile(a, reps)]
    if op in ("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean"):
        a = np.asarray(x)
        axes = _axes(at, ins, 1)
        keep = bool(at.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if at.get("noop_with_empty_axes", 0):
                return [a]
            axes = list(range(a.ndim))
        f = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min,
             "ReduceMean": np.mean}[op]
        return [np.asarray(f(a, axis=tuple(v % max(a.ndim, 1) for v in axes), keepdims=keep)).astype(a.dtype)]
    if op == "Split":
        a = np.asarray(x)
        axis = at.get("axis", 0) % a.ndim
        split = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("split")
        if split is None:
            k = at.get("num_outputs")
            if k is None:
                raise _Unsupported("Split without sizes")
            n = a.shape[axis]
            size = -(-n // k)
            split = [min(size, n - i * size) for i in range(k)]
        cuts = np.cumsum([int(v) for v in np.asarray(split).reshape(-1)])[:-1]
        return list(np.split(a, cuts, axis=axis))
    if op == "MatMul":
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        rows = a.shape[-2] if a.ndim > 1 else 1
        cols = b.shape[-1] if b.ndim > 1 else 1
        _limit(max(a.size // max(a.shape[-1], 1), 1) * cols + rows * cols, cap, what)
        try:
            return [np.matmul(a, b)]
        except ValueError as e:
            raise ModelError(f"MatMul while folding constants: {_one_line(e)}") from None
    raise _Unsupported("")


_FOLDABLE = {
    "Identity", "Dropout", "Constant", "Cast", "CastLike", "Shape", "Size", "Add", "Sub", "Mul", "Div", "Pow",
    "Max", "Min", "Sum", "Mean", "Mod", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And",
    "Or", "Xor", "Neg", "Abs", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Exp", "Log", "Sign", "Not",
    "Relu", "Sigmoid", "Tanh", "Clip", "Where", "Gather", "Unsqueeze", "Squeeze", "Concat", "Range",
    "ConstantOfShape", "Slice", "Reshape", "Flatten", "Transpose", "Expand", "Tile", "ReduceProd", "ReduceSum",
    "ReduceMax", "ReduceMin", "ReduceMean", "Split", "MatMul",
}
