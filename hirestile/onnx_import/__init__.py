"""Import ONNX models into hirestile's graph IR (:mod:`hirestile.graph`).

Entry point: :func:`load_onnx`. It reads an ``.onnx`` file (or its bytes), checks
it without trusting it, folds everything that is not image data into constants,
maps the image ops onto :mod:`hirestile.graph` ops and returns a
:class:`~hirestile.graph.Graph`. Every failure is a one-line
:class:`~hirestile.errors.ModelError`.

How values are classified
-------------------------
Each ONNX value is one of

* a **constant** (NumPy array): initializers, ``Constant`` nodes and anything
  computed from constants only (exporters compute pad amounts, slice bounds and
  reshape targets in small sub-graphs; those are evaluated here with NumPy);
* a **shape value**: integers computed from ``Shape`` of an image tensor. They
  depend on the image size, so they are evaluated at several *probe* sizes
  (the model's declared input size, or ``size_hint``, or 512 x 512, plus that
  size grown by (128, 256) and (256, 128)) by running hirestile's own shape
  rules. A shape value equal at every probe is treated as a constant;
* an **image tensor** (an activation, mapped to a graph node), or a pending
  crop of one (see below).

Size-dependent crops
--------------------
``Slice`` of an image tensor whose bounds come from shape values (the centre
crop of a valid-padding U-Net skip, ``s[..., top:top + u.H, left:left + u.W]``)
is matched, at every probe, against these size-independent forms, in order:
:class:`~hirestile.graph.CropLike` (centre or start anchor) to a tensor of the
right size (preferably the tensor it is concatenated / added with), then a
constant margin ``x[a:-b]``, then a fixed window ``x[a:a+n]``. Models exported
with a fixed input size have such bounds baked in as constants: there a crop
whose output meets a same-sized partner and whose offset is the centre (or
zero) at the declared size becomes a ``CropLike`` too, so the model runs at
other sizes the way its PyTorch code would.

Rewrites done here
------------------
``Pad`` (zero / reflect / edge) feeding only a ``Conv`` becomes the conv's padding
(``pad_mode`` reflect / replicate: PyTorch's ``padding_mode``); the Erf form of
GELU becomes ``Unary gelu``; ``x * sigmoid(x)`` becomes ``Unary silu``; the
exported GroupNorm (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add)
becomes one ``Norm``; dynamo's softplus threshold (``Where(x > 20, x,
Softplus(x))``) becomes ``Unary softplus``. Batch-norm stays an ``Affine`` node
for :func:`hirestile.graph.optimize` to fold. Node names are the ONNX node names
(or output names where a node has none), made unique; a fused node keeps the
name of its last node (the norm's name for a folded GroupNorm).

Limits (documented behaviour, not bugs)
---------------------------------------
* Shape-derived values are judged at probe sizes that differ by multiples of
  128 from the first one. A sub-graph that only changes off that lattice (the
  "pad the upsampled tensor to the skip's size" of some U-Nets, SAME padding
  with stride > 1, ``interpolate(size=other.shape)``) is imported as its value
  at the probes; at sizes congruent to the probes (e.g. multiples of the
  network's total stride, which a model's input contract enforces) the result
  is exact.
* In a model with a dynamic input size, a shape-derived value that varies with
  the size and matches none of the forms above is refused (node named). In a
  model with a fixed input size it is frozen at that size, and constant
  ``Resize`` sizes that are integer multiples of the input become scales.
* 2-D image ops only; batch 1 (or a dynamic batch); one float32 image input;
  one output (pick one with ``output=``). Reshape / Transpose / Flatten / Gemm
  / MatMul on the image tensor are refused (they fold on constants).
  ``LogSoftmax`` is imported as softmax followed by log. ``Where`` and
  comparisons on images exist only in the softplus pattern. The tanh form of
  GELU written op by op (TorchScript, dynamo) is imported op by op.
* Malformed input never gets past :func:`_tensor` (declared sizes checked
  before any allocation, external data refused), the folding limits
  (``MAX_FOLD_ELEMENTS``, ``MAX_SHAPE_ELEMENTS``) and the attribute types the
  ONNX schema declares; anything else a corrupt node triggers is reported as a
  ModelError naming that node.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from hirestile.errors import ModelError
from hirestile.graph import (
    Affine, Binary, Concat, Conv, ConvTranspose, CropLike, Graph, GlobalPool, Node, Norm, Pad,
    Pool, PRelu, Resize, ShapeError, Slice, Softmax, Unary, batchnorm_affine, prune,
)

__all__ = ["load_onnx"]

#: most elements one initializer / constant may declare
MAX_TENSOR_ELEMENTS = 1 << 28
#: most elements a value computed while folding may have (beyond the inputs' size)
MAX_FOLD_ELEMENTS = 1 << 24
#: most elements of a shape value (integers derived from image sizes)
MAX_SHAPE_ELEMENTS = 1 << 12
#: largest image side a model may declare, and largest resize factor
MAX_SIDE = 1 << 24
MAX_RESIZE = 256
#: most input pixels one output pixel of one op may reach per axis, beyond the input
#: (kernel extent with dilation, padding): bounds the halo a malformed file can ask for
MAX_REACH = 1 << 14
#: what to do about a file that is not a readable ONNX model
REEXPORT = "re-export it (torch.onnx.export, opset >= 13) or check the download"
#: probe offsets from the first probe size (rows, cols)
PROBE_OFFSETS = ((0, 0), (128, 256), (256, 128))
DEFAULT_PROBE = (512, 512)
_INT64_MAX = np.iinfo(np.int64).max


def load_onnx(src, *, size_hint: tuple[int, int] | None = None, output: str | None = None) -> Graph:
    """Build a :class:`~hirestile.graph.Graph` from an ONNX model.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
        The ``.onnx`` file, its contents, or a parsed model.
    size_hint : (H, W), optional
        An input size the network takes, used to evaluate size-dependent
        sub-graphs of models whose input size is dynamic (default: the size the
        file declares, else 512 x 512).
    output : str, optional
        Name of the graph output to keep when the model has several.

    Returns
    -------
    Graph
        Nodes keep the ONNX node names (made unique). Batch-norm stays a separate
        ``Affine`` node; :func:`hirestile.graph.optimize` folds it into the conv.

    Raises
    ------
    ModelError
        Malformed or unsupported model; unsupported ops are listed in one
        message, each with its node names.
    """
    model, label = _read(src)
    return _Importer(model, label, size_hint, output).run()


# ----------------------------------------------------------------- reading


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _read(src):
    import onnx

    if isinstance(src, onnx.ModelProto):
        return src, "model"
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, label = bytes(src), "ONNX bytes"
    elif isinstance(src, (str, os.PathLike)):
        label = os.fspath(src)
        if not os.path.isfile(label):
            raise ModelError(f"{label}: no such ONNX file")
        try:
            with open(label, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"{label}: cannot read: {_one_line(e)}") from None
    else:
        raise ModelError(f"cannot load an ONNX model from a {type(src).__name__}; pass a path or bytes")
    if not data:
        raise ModelError(f"{label}: empty file, not an ONNX model; {REEXPORT}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise ModelError(f"{label}: not a valid ONNX file (truncated or not protobuf: {_one_line(e)}); "
                         f"{REEXPORT}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{label}: not an ONNX model (no graph; truncated or not an .onnx file?); {REEXPORT}")
    _check_text(model, label)
    return model, label


def _check_text(model, label: str):
    """Protobuf hands back invalid UTF-8 strings as bytes: a corrupt file; refuse it up front."""
    g = model.graph
    texts = [o.domain for o in model.opset_import]
    for n in g.node:
        texts += [n.op_type, n.domain, n.name, *n.input, *n.output, *(a.name for a in n.attribute)]
    texts += [t.name for t in g.initializer] + [v.name for v in g.input] + [v.name for v in g.output]
    if not all(isinstance(t, str) for t in texts):
        raise ModelError(f"{label}: corrupt ONNX file (a name is not valid UTF-8 text)")


# ----------------------------------------------------------------- values


@dataclass(eq=False)
class Sym:
    """Integers that depend on the image size: one array per probe (None where the probe died)."""

    vals: list
    sources: frozenset = frozenset()


@dataclass(eq=False)
class Act:
    """An image tensor: the hirestile tensor ``name``."""

    name: str


@dataclass(eq=False)
class Crop:
    """A pending slice of image tensor ``src``: channel bounds and, per spatial axis,
    per-probe (n, offset, size) triples, or None where the axis is not cut."""

    src: str
    base: str
    ch: tuple[int, int] | None
    axes: list
    sources: frozenset = frozenset()
    done: str | None = None


@dataclass(eq=False)
class Grouped:
    """An image tensor reshaped to (1, G, -1) (the first half of an exported GroupNorm)."""

    src: str
    groups: int
    node: str
    normed: tuple | None = None  # (scale, bias, eps) after InstanceNormalization


@dataclass(eq=False)
class Cmp:
    """``act > c`` / ``act < c`` (only consumed by the softplus-threshold ``Where``)."""

    act: str
    op: str
    value: float


@dataclass(eq=False)
class Poison:
    """The output of a node that could not be imported (already reported)."""


class _Unsupported(Exception):
    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class _Reported(_Unsupported):
    """Unsupported, and already recorded against the node responsible."""


_IMAGE = (Act, Crop, Grouped, Cmp)

# ONNX elem types -> numpy dtypes we accept in constants
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
           9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
_FIELDS = {1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data", 5: "int32_data",
           6: "int32_data", 7: "int64_data", 9: "int32_data", 10: "int32_data", 11: "double_data",
           12: "uint64_data", 13: "uint64_data"}


def _tensor(t, what: str) -> np.ndarray:
    """A TensorProto as a NumPy array, after checking what it declares against what it holds."""
    from onnx import TensorProto, numpy_helper

    if t.data_location == TensorProto.EXTERNAL or t.external_data:
        raise ModelError(f"{what} keeps its data in an external file; hirestile reads self-contained "
                         f"models only (save with onnx.save(model, path, save_as_external_data=False))")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} declares a negative dimension {dims}")
    n = math.prod(dims)
    if n > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} declares {n:.3g} elements ({dims}), beyond hirestile's limit of "
                         f"{MAX_TENSOR_ELEMENTS}")
    dt = _DTYPES.get(t.data_type)
    if dt is None:
        raise ModelError(f"{what} has unsupported data type {t.data_type}")
    if t.HasField("raw_data"):
        have = len(t.raw_data)
        need = n * np.dtype(dt).itemsize
    else:
        have = len(getattr(t, _FIELDS[t.data_type]))
        need = n
    if have != need:
        raise ModelError(f"{what} declares shape {dims} but holds {have} "
                         f"{'bytes' if t.HasField('raw_data') else 'values'} (needs {need}): truncated or corrupt")
    try:
        a = numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"{what} cannot be decoded: {_one_line(e)}") from None
    return np.array(a, dtype=dt).reshape(dims)


def _schema_types(op_type: str, domain: str, opset: int) -> dict[str, int]:
    """Attribute name -> AttributeProto type the operator's schema declares ({} if unknown)."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return {}
    return {k: int(v.type) for k, v in schema.attributes.items()}


def _attrs(node, what: str, opset: int = 0) -> dict[str, Any]:
    from onnx import AttributeProto

    out = {}
    types = _schema_types(node.op_type, node.domain, opset) if opset else {}
    for a in node.attribute:
        want = types.get(a.name)
        if want is not None and a.type != want:
            raise ModelError(f"{what} ({node.op_type}): attribute {a.name!r} has type "
                             f"{AttributeProto.AttributeType.Name(a.type) if a.type in AttributeProto.AttributeType.values() else a.type}"
                             f", the operator takes {AttributeProto.AttributeType.Name(want)}")
        if a.type == AttributeProto.FLOAT:
            out[a.name] = float(a.f)
        elif a.type == AttributeProto.INT:
            out[a.name] = int(a.i)
        elif a.type == AttributeProto.STRING:
            out[a.name] = a.s.decode("utf-8", "replace")
        elif a.type == AttributeProto.FLOATS:
            out[a.name] = [float(v) for v in a.floats]
        elif a.type == AttributeProto.INTS:
            out[a.name] = [int(v) for v in a.ints]
        elif a.type == AttributeProto.TENSOR:
            out[a.name] = _tensor(a.t, f"{what} attribute {a.name!r}")
        elif a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            out[a.name] = "<graph>"
        else:
            out[a.name] = None
    return out


# ----------------------------------------------------------------- numeric folding


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


# ----------------------------------------------------------------- the importer


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Exp": "exp",
          "Abs": "abs", "Neg": "neg", "Sqrt": "sqrt", "Log": "log", "Reciprocal": "reciprocal",
          "Erf": "erf", "Mish": "mish", "HardSwish": "hard_swish"}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min",
           "Pow": "pow", "Sum": "add"}


class _Importer:
    def __init__(self, model, label: str, size_hint, output):
        self.model, self.label, self.g = model, label, model.graph
        self.opset = self._opset()
        self.inits = {}
        for t in self.g.initializer:
            self.inits[t.name] = t
        if len(self.g.sparse_initializer):
            raise ModelError(f"{label}: sparse initializers are not supported")
        self.values: dict[str, Any] = {}
        self.nodes: list[Node] = []
        self.used: set[str] = set()
        self.unsupported: dict[str, list[str]] = {}
        self.size_hint = size_hint
        self.output_name = output
        self.largest_init = max((math.prod(t.dims) for t in self.g.initializer), default=0)

    # ---- setup

    def _opset(self) -> int:
        ver = None
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                ver = int(o.version)
        if ver is None:
            raise ModelError(f"{self.label}: declares no ONNX operator set (truncated or not an .onnx file?)")
        if ver < 9:
            raise ModelError(f"{self.label}: ONNX opset {ver} is too old; re-export with opset 13 or newer")
        return ver

    def _input(self):
        g = self.g
        image_inputs = [i for i in g.input if i.name not in self.inits]
        if not image_inputs:
            raise ModelError(f"{self.label}: the model has no image input")
        if len(image_inputs) > 1:
            names = ", ".join(repr(i.name) for i in image_inputs)
            raise ModelError(f"{self.label}: the model has {len(image_inputs)} inputs ({names}); "
                             f"hirestile runs models with one image input")
        inp = image_inputs[0]
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise ModelError(f"{self.label}: input {inp.name!r} is not a tensor")
        if tt.elem_type not in (0, 1):
            raise ModelError(f"{self.label}: input {inp.name!r} has element type {tt.elem_type}; "
                             f"hirestile feeds float32 images")
        if not tt.HasField("shape") or len(tt.shape.dim) != 4:
            rank = len(tt.shape.dim) if tt.HasField("shape") else "unknown"
            raise ModelError(f"{self.label}: input {inp.name!r} has rank {rank}; hirestile takes "
                             f"(N, C, H, W) image inputs")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if dims[0] not in (None, 1):
            raise ModelError(f"{self.label}: input {inp.name!r} has batch size {dims[0]}; re-export with "
                             f"batch 1 or a dynamic batch")
        if not dims[1]:
            raise ModelError(f"{self.label}: input {inp.name!r} has no fixed channel count")
        for d in dims[2:]:
            if d is not None and not 0 < d <= MAX_SIDE:
                raise ModelError(f"{self.label}: input {inp.name!r} declares an image side of {d}")
        return inp.name, dims[1], dims[2], dims[3]

    def _sorted_nodes(self, wanted: list[str]):
        """Nodes that the outputs depend on, in dependency order (iterative: no recursion limit)."""
        g = self.g
        producer: dict[str, int] = {}
        for i, n in enumerate(g.node):
            for o in n.output:
                if not o:
                    continue
                if o in producer or o in self.inits or o == self.input_name:
                    raise ModelError(f"{self.label}: tensor {o!r} is produced twice (node "
                                     f"{self._nname(n, i)!r}); malformed graph")
                producer[o] = i
        order, state = [], {}
        for out in wanted:
            if out not in producer:
                if out == self.input_name:
                    continue
                raise ModelError(f"{self.label}: output {out!r} is produced by no node")
            stack = [(producer[out], 0)]
            while stack:
                i, k = stack.pop()
                if k == 0:
                    if state.get(i) == 2:
                        continue
                    state[i] = 1
                n = g.node[i]
                ins = [t for t in n.input if t]
                if k < len(ins):
                    stack.append((i, k + 1))
                    t = ins[k]
                    if t == self.input_name or t in self.inits:
                        continue
                    j = producer.get(t)
                    if j is None:
                        raise ModelError(f"{self.label}: node {self._nname(n, i)!r} reads {t!r}, which is no "
                                         f"initializer, graph input or node output (missing initializer?)")
                    if state.get(j) == 1:
                        raise ModelError(f"{self.label}: the graph has a cycle through node "
                                         f"{self._nname(g.node[j], j)!r}")
                    if state.get(j) != 2:
                        stack.append((j, 0))
                else:
                    state[i] = 2
                    order.append(i)
        return order

    @staticmethod
    def _nname(n, i) -> str:
        return n.name or (n.output[0] if n.output and n.output[0] else f"{n.op_type}_{i}")

    # ---- probes and shapes

    def _probes(self, h, w):
        self.static = h is not None and w is not None
        if self.static:
            base = (h, w)
        elif self.size_hint is not None:
            base = (int(self.size_hint[0]), int(self.size_hint[1]))
        else:
            base = (h or DEFAULT_PROBE[0], w or DEFAULT_PROBE[1])
        self.probes = [(base[0] + dy, base[1] + dx) for dy, dx in PROBE_OFFSETS]
        self.alive = [True] * len(self.probes)
        self.shapes: list[dict[str, tuple[int, int, int]]] = [
            {self.input_name: (self.in_channels, ph, pw)} for ph, pw in self.probes]

    def _live(self):
        return [p for p, a in enumerate(self.alive) if a]

    def shape(self, name: str, p: int | None = None):
        return self.shapes[self._live()[0] if p is None else p][name]

    # ---- emitting graph nodes

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def _check_reach(self, name: str, op, ins, out, onnx_op: str) -> None:
        """Refuse an op whose first or last output pixel reads a window absurdly far
        outside its input (e.g. dilation 1e8 with pads 1e8 keeps a sane output shape
        but asks the executor for a 1e8-pixel halo)."""
        for k, shape in enumerate(ins):
            for a in (0, 1):
                n_in = shape[a + 1]
                for o in (0, out[a + 1] - 1):
                    iv = op.in_interval(k, a, (o, o + 1), ins, out)
                    if iv is not None and (iv[0] < -MAX_REACH or iv[1] > n_in + MAX_REACH
                                           or iv[1] - iv[0] > MAX_REACH):
                        raise ModelError(f"{self.label}: node {name!r} ({onnx_op or op.kind}) reads input "
                                         f"{'rows' if a == 0 else 'cols'} {iv[0]}..{iv[1]} for one output "
                                         f"pixel of a {n_in}-pixel axis: absurd kernel, dilation or padding")

    def emit(self, base: str, op, inputs: Sequence[str], params=None, onnx_op: str = "") -> str:
        name = self._unique(base)
        first_err = None
        for p in self._live():
            try:
                out = op.out_shape([self.shapes[p][t] for t in inputs])
                if any(v <= 0 for v in out):
                    raise ShapeError(f"gives an empty tensor {out}")
                if max(out[1:]) > MAX_RESIZE * max(self.probes[p]) + 4096 or out[0] > MAX_TENSOR_ELEMENTS:
                    raise ModelError(f"{self.label}: node {name!r} ({onnx_op or op.kind}) gives an absurd "
                                     f"tensor shape {out}")
                self._check_reach(name, op, [self.shapes[p][t] for t in inputs], out, onnx_op)
            except ShapeError as e:
                if self.static and p == 0:
                    raise ModelError(f"{self.label}: node {name!r} ({onnx_op or op.kind}) at the model's input "
                                     f"size {self.probes[0][0]}x{self.probes[0][1]}: {_one_line(e)}") from None
                first_err = first_err or e
                self.alive[p] = False
                continue
            self.shapes[p][name] = tuple(int(v) for v in out)
        if not self._live():
            sizes = ", ".join(f"{h}x{w}" for h, w in self.probes)
            raise ModelError(f"{self.label}: node {name!r} ({onnx_op or op.kind}): {_one_line(first_err)} "
                             f"at every input size tried ({sizes}); pass size_hint=(H, W) with a size the "
                             f"network takes")
        self.nodes.append(Node(name, op, tuple(inputs), params or {}))
        return name

    # ---- value helpers

    def const(self, v, what: str) -> np.ndarray:
        if isinstance(v, np.ndarray):
            return v
        if isinstance(v, Sym):
            c = self._sym_const(v)
            if c is not None:
                return c
            if self.static:
                return v.vals[0]
            raise _Unsupported(f"{what} depends on the image size")
        raise _Unsupported(f"{what} must be a constant, not computed from the image")

    def _sym_const(self, v: Sym):
        vals = [v.vals[p] for p in self._live() if v.vals[p] is not None]
        if vals and all(a.shape == vals[0].shape and np.array_equal(a, vals[0]) for a in vals[1:]):
            return vals[0]
        return None

    def _baked(self, v):
        """Probes at which a size-like value is to be checked: all live ones, or only the declared
        size where a fixed-size model baked the value into a constant."""
        if self.static and self.alive[0] and isinstance(v, np.ndarray):
            return [0]
        return self._live()

    def _sym_or_const(self, v):
        """The value at each live probe (list indexed by probe)."""
        if isinstance(v, Sym):
            return v.vals
        return [v] * len(self.probes)

    def act(self, v, partners: Sequence[str] = ()) -> str:
        if isinstance(v, Act):
            return v.name
        if isinstance(v, Crop):
            return self._materialize(v, partners)
        if isinstance(v, Grouped):
            raise _Unsupported("reshapes the image tensor")
        raise _Unsupported("expects an image tensor")

    # ---- main

    def run(self) -> Graph:
        self.input_name, self.in_channels, h, w = self._input()
        self.used.add(self.input_name)
        outs = [o.name for o in self.g.output]
        if self.output_name is not None:
            if self.output_name not in outs:
                raise ModelError(f"{self.label}: no graph output named {self.output_name!r} (outputs: "
                                 f"{', '.join(map(repr, outs))})")
            outs = [self.output_name]
        if len(outs) != 1:
            raise ModelError(f"{self.label}: the model has {len(outs)} outputs ({', '.join(map(repr, outs))}); "
                             f"pick one with output=")
        order = self._sorted_nodes(outs)
        self._check_ops(order)
        self._probes(h, w)
        self.values[self.input_name] = Act(self.input_name)
        for i in order:
            self._translate(self.g.node[i], i)
        if self.unsupported:
            parts = [f"{op} ({', '.join(names)})" for op, names in self.unsupported.items()]
            raise ModelError(f"{self.label}: unsupported ONNX ops: {'; '.join(parts)}")
        out = self._value(outs[0])
        if isinstance(out, (np.ndarray, Sym)):
            raise ModelError(f"{self.label}: output {outs[0]!r} does not depend on the input image")
        try:
            out_name = self.act(out)
        except _Reported:
            out_name = None
        except _Unsupported as e:
            raise ModelError(f"{self.label}: output {outs[0]!r}: {e.reason}") from None
        if self.unsupported:
            parts = [f"{op} ({', '.join(names)})" for op, names in self.unsupported.items()]
            raise ModelError(f"{self.label}: unsupported ONNX ops: {'; '.join(parts)}")
        nodes, out_name = _fuse(self.nodes, out_name)
        return prune(Graph(tuple(nodes), out_name, self.in_channels, input=self.input_name))

    def _check_ops(self, order):
        """One error listing every op type no handler knows (before any work)."""
        bad: dict[str, list[str]] = {}
        for i in order:
            n = self.g.node[i]
            known = n.domain in ("", "ai.onnx") and (n.op_type in _FOLDABLE or n.op_type in _HANDLERS)
            if not known:
                op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                op = op if op.isprintable() else repr(op)
                bad.setdefault(op, []).append(repr(self._nname(n, i)))
        if bad:
            parts = [f"{op} ({', '.join(names)})" for op, names in bad.items()]
            raise ModelError(f"{self.label}: unsupported ONNX ops: {'; '.join(parts)}")

    def _value(self, name: str):
        if name in self.values:
            return self.values[name]
        if name in self.inits:
            v = _tensor(self.inits[name], f"initializer {name!r}")
            self.values[name] = v
            return v
        raise ModelError(f"{self.label}: tensor {name!r} has no value (missing initializer?)")

    def _translate(self, n, i):
        name = self._nname(n, i)
        ins = [self._value(t) if t else None for t in n.input]
        at = _attrs(n, f"node {name!r}", self.opset)
        if any(isinstance(v, Poison) for v in ins):
            outs = [Poison()] * len(n.output)
        else:
            try:
                if any(isinstance(v, _IMAGE) for v in ins):
                    h = _HANDLERS.get(n.op_type)
                    if h is None:
                        raise _Unsupported("on the image tensor")
                    outs = h(self, n, name, ins, at)
                elif any(isinstance(v, Sym) for v in ins) and n.op_type != "Constant":
                    outs = self._fold_sym(n, name, ins, at)
                else:
                    if n.op_type not in _FOLDABLE:
                        raise _Unsupported("on constants")
                    cap = max(MAX_FOLD_ELEMENTS, 2 * self.largest_init)
                    outs = _fold(n.op_type, ins, at, self.opset, cap, f"node {name!r} ({n.op_type})")
            except _Reported:
                outs = [Poison()] * len(n.output)
            except _Unsupported as e:
                why = f": {e.reason}" if e.reason else ""
                self.unsupported.setdefault(n.op_type, []).append(f"{name!r}{why}")
                outs = [Poison()] * len(n.output)
            except (ModelError, RecursionError, MemoryError):
                raise
            except Exception as e:  # malformed attributes or inputs the checks above did not name
                raise ModelError(f"{self.label}: node {name!r} ({n.op_type}) is malformed: "
                                 f"{type(e).__name__}: {_one_line(e)[:200]}") from None
        outs = list(outs) + [Poison()] * (len(n.output) - len(outs))
        for o, v in zip(n.output, outs):
            if o:
                self.values[o] = v

    def _fold_sym(self, n, name, ins, at):
        if n.op_type not in _FOLDABLE:
            raise _Unsupported("on shape values")
        sources = frozenset().union(*[v.sources for v in ins if isinstance(v, Sym)])
        per = [self._sym_or_const(v) if v is not None else [None] * len(self.probes) for v in ins]
        results = []
        for p in range(len(self.probes)):
            if not self.alive[p] or any(isinstance(v, Sym) and v.vals[p] is None for v in ins):
                results.append(None)
                continue
            r = _fold(n.op_type, [c[p] for c in per], at, self.opset, MAX_SHAPE_ELEMENTS,
                      f"node {name!r} ({n.op_type})")
            results.append(r)
        k = max(len(r) for r in results if r is not None)
        outs = [Sym([r[j] if r is not None else None for r in results], sources) for j in range(k)]
        return [self._sym_const(o) if self._sym_const(o) is not None else o for o in outs]

    # ---- crops

    def _crop_shape(self, v: Crop, p: int):
        c, h, w = self.shapes[p][v.src]
        if v.ch is not None:
            c = v.ch[1] - v.ch[0]
        dims = [h, w]
        for a in (0, 1):
            if v.axes[a] is not None:
                dims[a] = v.axes[a][p][2]
        return (c, dims[0], dims[1])

    def _materialize(self, v: Crop, partners: Sequence[str]) -> str:
        if v.done is not None:
            return v.done
        live = self._live()
        src = v.src
        cut = [a for a in (0, 1) if v.axes[a] is not None and any(
            v.axes[a][p][1] != 0 or v.axes[a][p][2] != v.axes[a][p][0] for p in live)]
        if v.ch is not None and v.ch != (0, self.shape(src)[0]):
            src = self.emit(v.base if not cut else v.base + "/channels",
                            Slice(starts=(v.ch[0], None, None), stops=(v.ch[1], None, None)), [src], onnx_op="Slice")
        if not cut:
            v.done = src
            return src

        def trip(a, p):
            if v.axes[a] is None:
                n = self.shapes[p][v.src][a + 1]
                return (n, 0, n)
            return v.axes[a][p]

        def fits(ref, ps):
            return all(self.shapes[p][ref][a + 1] == trip(a, p)[2] for p in ps for a in (0, 1))

        def anchor(ps):
            if all(trip(a, p)[1] == (trip(a, p)[0] - trip(a, p)[2]) // 2 for p in ps for a in (0, 1)):
                return "centre"
            if all(trip(a, p)[1] == 0 for p in ps for a in (0, 1)):
                return "start"
            return None

        def crop_like(ref, anc):
            return self.emit(v.base, CropLike(anchor=anc), [src, ref], onnx_op="Slice")

        # 1. CropLike to a tensor of the crop's size at every probe
        anc = anchor(live)
        if anc is not None:
            everyone = [nd.name for nd in reversed(self.nodes)] + [self.input_name]
            for ref in list(partners) + sorted(v.sources) + everyone:
                if ref in self.shapes[live[0]] and fits(ref, live):
                    return self._done(v, crop_like(ref, anc))
        starts, stops = [None, None], [None, None]
        # 2. constant margins x[a:-b]
        margin = True
        for a in cut:
            offs = {trip(a, p)[1] for p in live}
            tails = {trip(a, p)[0] - trip(a, p)[1] - trip(a, p)[2] for p in live}
            if len(offs) == 1 and len(tails) == 1:
                starts[a], t = offs.pop(), tails.pop()
                stops[a] = -t if t else None
            else:
                margin = False
        if margin:
            return self._done(v, self._slice(v, src, starts, stops))
        # 3. fixed-size models: a crop meeting a same-sized partner at the declared size
        if self.static and self.alive[0]:
            anc = anchor([0])
            if anc is not None:
                for ref in partners:
                    if fits(ref, [0]):
                        return self._done(v, crop_like(ref, anc))
        # 4. a fixed window x[a:a+n]
        fixed = True
        for a in cut:
            offs = {trip(a, p)[1] for p in live}
            sizes = {trip(a, p)[2] for p in live}
            if len(offs) == 1 and len(sizes) == 1:
                starts[a] = offs.pop()
                stops[a] = starts[a] + sizes.pop()
            else:
                fixed = False
        if fixed:
            return self._done(v, self._slice(v, src, starts, stops))
        # 5. frozen at the declared size
        if self.static and self.alive[0]:
            for a in cut:
                n, off, size = trip(a, 0)
                starts[a], stops[a] = off, off + size
            return self._done(v, self._slice(v, src, starts, stops))
        self.unsupported.setdefault("Slice", []).append(
            f"{v.base!r}: crop bounds depend on the image size in a way hirestile cannot express "
            f"(no centre/start crop to a tensor, no constant margins)")
        raise _Reported()

    def _slice(self, v, src, starts, stops):
        return self.emit(v.base, Slice(starts=(None, starts[0], starts[1]), stops=(None, stops[0], stops[1])),
                         [src], onnx_op="Slice")

    @staticmethod
    def _done(v, name):
        v.done = name
        return name


# ----------------------------------------------------------------- op handlers

_HANDLERS: dict[str, Callable] = {}


def _handler(*ops):
    def deco(f):
        for op in ops:
            _HANDLERS[op] = f
        return f
    return deco


def _pair(v, default):
    v = list(v) if v is not None else list(default)
    if len(v) != 2:
        raise _Unsupported(f"{len(v)}-D window (2-D only)")
    return (int(v[0]), int(v[1]))


def _same_pads(imp: _Importer, x: str, kernel, stride, dilation, mode: str):
    """Per-side pads for auto_pad SAME_UPPER / SAME_LOWER, checked to be equal at every probe."""
    found = set()
    for p in imp._live():
        pads = [0, 0, 0, 0]
        for a in (0, 1):
            n = imp.shapes[p][x][a + 1]
            total = max((-(-n // stride[a]) - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1 - n, 0)
            small = total // 2
            if mode == "SAME_UPPER":
                pads[a], pads[a + 2] = small, total - small
            else:
                pads[a], pads[a + 2] = total - small, small
        found.add(tuple(pads))
    if len(found) > 1:
        if imp.static:
            return _same_pads_at(imp, x, kernel, stride, dilation, mode, 0)
        raise _Unsupported(f"auto_pad={mode} whose amounts depend on the image size")
    return found.pop()


def _same_pads_at(imp, x, kernel, stride, dilation, mode, p):
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


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


@_handler("Conv")
def _conv(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    w = imp.const(ins[1], "the weight")
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D convolution (2-D only)")
    b = imp.const(ins[2], "the bias") if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0], np.float32)
    if b.shape != (w.shape[0],):
        raise ModelError(f"{imp.label}: node {name!r}: bias shape {b.shape} does not match {w.shape[0]} outputs")
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
    x = imp.act(ins[0])
    w = imp.const(ins[1], "the weight")
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D transposed convolution (2-D only)")
    group = int(at.get("group", 1))
    cout = int(w.shape[1]) * group
    b = imp.const(ins[2], "the bias") if len(ins) > 2 and ins[2] is not None else np.zeros(cout, np.float32)
    if b.shape != (cout,):
        raise ModelError(f"{imp.label}: node {name!r}: bias shape {b.shape} does not match {cout} outputs")
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
        coord = at.get("coordinate_transformation_mode", "half_pixel")
        nearest = at.get("nearest_mode", "round_prefer_floor")
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
            s = full(per[p], [1, c0] + list(imp.shapes[p][x][1:]))
            if len(s) != 4 or s[0] != 1 or s[1] != c0:
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
                                                                              [1, c0, 1, 1])[2:])
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


@_handler("Shape")
def _shape(imp: _Importer, n, name, ins, at):
    v = ins[0]
    if isinstance(v, Act):
        src, get = v.name, lambda p: imp.shapes[p][v.name]
    elif isinstance(v, Crop):
        src, get = v.src, lambda p: imp._crop_shape(v, p)
    else:
        raise _Unsupported("shape of a reshaped tensor")
    vals = []
    for p in range(len(imp.probes)):
        if not imp.alive[p]:
            vals.append(None)
            continue
        s = np.array((1,) + tuple(get(p)), np.int64)
        vals.append(s[at.get("start", 0):at["end"] if "end" in at else None])
    sym = Sym(vals, frozenset([src]))
    c = imp._sym_const(sym)
    return [c if c is not None else sym]


@_handler("Size")
def _size(imp, n, name, ins, at):
    (s,) = _shape(imp, n, name, ins, {})
    if isinstance(s, np.ndarray):
        return [np.array(np.prod(s), np.int64)]
    return [Sym([None if v is None else np.array(np.prod(v), np.int64) for v in s.vals], s.sources)]


@_handler("Slice")
def _slice(imp: _Importer, n, name, ins, at):
    v = ins[0]
    if isinstance(v, Act):
        v = Crop(v.name, name, None, [None, None])
    elif not isinstance(v, Crop):
        raise _Unsupported("slices a reshaped tensor")
    if v.done is not None:
        v = Crop(v.done, name, None, [None, None])
    sources = frozenset().union(*[u.sources for u in ins[1:] if isinstance(u, Sym)])
    if imp.opset >= 10:
        if any(isinstance(u, _IMAGE) for u in ins[1:]):
            raise _Unsupported("slice bounds computed from image values")
        axes = imp.const(ins[3], "slice axes").reshape(-1) if len(ins) > 3 and ins[3] is not None else None
        steps = imp.const(ins[4], "slice steps").reshape(-1) if len(ins) > 4 and ins[4] is not None else None
        per_start = imp._sym_or_const(ins[1])
        per_end = imp._sym_or_const(ins[2])
    else:
        per_start = [np.asarray(at["starts"])] * len(imp.probes)
        per_end = [np.asarray(at["ends"])] * len(imp.probes)
        axes = np.asarray(at.get("axes", range(len(at["starts"]))))
        steps = None
    k = np.asarray(per_start[imp._live()[0]]).size
    axes = np.arange(k) if axes is None else axes
    if steps is not None and np.any(np.asarray(steps) != 1):
        raise _Unsupported("strided or reversed slice of the image tensor")
    new = Crop(v.src, name, v.ch, list(v.axes), v.sources | sources)
    for j, a in enumerate(int(a) % 4 for a in axes):
        def bounds(p, j=j):
            s = np.asarray(per_start[p]).reshape(-1)
            e = np.asarray(per_end[p]).reshape(-1)
            return int(s[j]), int(e[j])

        if a == 0:
            for p in imp._live():
                s, e = bounds(p)
                lo, hi, _ = slice(max(s, -2**62), min(e, 2**62)).indices(1)
                if (lo, hi) != (0, 1):
                    raise _Unsupported("slices the batch axis")
        elif a == 1:
            vals = {bounds(p) for p in imp._live()}
            if len(vals) != 1:
                raise _Unsupported("channel slice that depends on the image size")
            s, e = vals.pop()
            c0, c1 = new.ch if new.ch is not None else (0, imp.shapes[imp._live()[0]][v.src][0])
            lo, hi, _ = slice(max(s, -2**62), min(e, 2**62)).indices(c1 - c0)
            new.ch = (c0 + lo, c0 + max(hi, lo))
        else:
            ax = a - 2
            old = new.axes[ax]
            trips = [None] * len(imp.probes)
            for p in imp._live():
                if old is None:
                    n0 = imp.shapes[p][v.src][a - 1]
                    off0, size0 = 0, n0
                else:
                    n0, off0, size0 = old[p]
                s, e = bounds(p)
                lo, hi, _ = slice(max(s, -2**62), min(e, 2**62)).indices(size0)
                trips[p] = (n0, off0 + lo, max(hi - lo, 0))
            new.axes[ax] = trips
    for p in imp._live():
        if min(imp._crop_shape(new, p)) <= 0:
            if imp.static and p == 0:
                raise ModelError(f"{imp.label}: node {name!r} (Slice) gives an empty tensor at the model's "
                                 f"input size")
            imp.alive[p] = False
    if not imp._live():
        raise ModelError(f"{imp.label}: node {name!r} (Slice) gives an empty tensor at every size tried")
    return [new]


@_handler("Split")
def _split(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    if at.get("axis", 0) % 4 != 1:
        raise _Unsupported("splits along a spatial axis")
    c = imp.shape(x)[0]
    split = imp.const(ins[1], "split sizes").reshape(-1) if len(ins) > 1 and ins[1] is not None else at.get("split")
    if split is None:
        k = at.get("num_outputs", len(n.output))
        size = -(-c // k)
        split = [min(size, c - i * size) for i in range(k)]
    outs, c0 = [], 0
    for k, s in enumerate(int(v) for v in split):
        outs.append(Crop(x, n.output[k] if k < len(n.output) and n.output[k] else f"{name}_{k}",
                         (c0, c0 + s), [None, None]))
        c0 += s
    if c0 != c:
        raise ModelError(f"{imp.label}: node {name!r}: split sizes {list(split)} do not add up to {c} channels")
    return outs


@_handler("Pad")
def _pad(imp: _Importer, n, name, ins, at):
    x = imp.act(ins[0])
    mode = at.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise _Unsupported(f"mode={mode!r}")
    if imp.opset < 11:
        pads_v, value = np.asarray(at.get("pads", [])), float(at.get("value", 0.0))
    else:
        pads_v = ins[1]
        value = float(imp.const(ins[2], "the pad value").reshape(-1)[0]) \
            if len(ins) > 2 and ins[2] is not None and np.size(imp.const(ins[2], "the pad value")) else 0.0
    axes = None
    if len(ins) > 3 and ins[3] is not None:
        axes = [int(a) % 4 for a in imp.const(ins[3], "pad axes").reshape(-1)]
    found = set()
    for p in imp._live():
        pv = np.asarray(imp._sym_or_const(pads_v)[p]).reshape(-1)
        ax = axes if axes is not None else list(range(len(pv) // 2))
        if len(pv) != 2 * len(ax):
            raise ModelError(f"{imp.label}: node {name!r}: {len(pv)} pad amounts for {len(ax)} axes")
        full = [0] * 8
        for j, a in enumerate(ax):
            full[a], full[a + 4] = int(pv[j]), int(pv[j + len(ax)])
        if full[0] or full[4] or full[1] or full[5]:
            raise _Unsupported("pads the batch or channel axis")
        found.add((full[2], full[3], full[6], full[7]))
    if len(found) > 1:
        if not imp.static:
            raise _Unsupported("pad amounts depend on the image size")
        pv = np.asarray(imp._sym_or_const(pads_v)[0]).reshape(-1)
        found = {_pads_at(pv, axes)}
    pads = found.pop()
    if max(abs(v) for v in pads) > MAX_SIDE:
        raise ModelError(f"{imp.label}: node {name!r}: absurd pad amounts {pads}")
    if pads == (0, 0, 0, 0):
        return [Act(x)]
    return [Act(imp.emit(name, Pad(pads=pads, mode=mode, value=value), [x], onnx_op="Pad"))]


def _pads_at(pv, axes):
    ax = axes if axes is not None else list(range(len(pv) // 2))
    full = [0] * 8
    for j, a in enumerate(ax):
        full[a], full[a + 4] = int(pv[j]), int(pv[j + len(ax)])
    return (full[2], full[3], full[6], full[7])


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


@_handler("Reshape")
def _reshape(imp: _Importer, n, name, ins, at):
    v = ins[0]
    if isinstance(v, Grouped) and v.normed is not None:
        target = imp._sym_or_const(ins[1])
        ok = all(target[p] is not None and np.asarray(target[p]).reshape(-1).tolist()
                 == [1, *imp.shapes[p][v.src]] for p in imp._baked(ins[1]))
        if not ok:
            raise _Unsupported("reshapes the image tensor")
        scale, bias, eps = v.normed
        c = imp.shape(v.src)[0]
        return [Act(imp.emit(v.node, Norm(groups=v.groups, eps=eps, label="GroupNormalization"), [v.src],
                             {"scale": _f32(np.repeat(scale, c // v.groups)),
                              "bias": _f32(np.repeat(bias, c // v.groups))}, "GroupNorm"))]
    x = imp.act(v)
    target = imp._sym_or_const(ins[1])
    shapes = [None if target[p] is None else np.asarray(target[p]).reshape(-1).tolist() for p in imp._live()]
    c = imp.shape(x)[0]
    # (1, G, -1) / (0, G, -1): the first half of an exported GroupNorm
    if all(s is not None and len(s) == 3 and s[0] in (0, 1) and s[2] == -1 and s[1] >= 1 and c % s[1] == 0
           for s in shapes) and len({s[1] for s in shapes}) == 1:
        return [Grouped(x, shapes[0][1], name)]
    # a reshape to the tensor's own shape
    if all(s is not None and len(s) == 4 and s.count(-1) <= 1 and all(
            t in (want, 0, -1) for t, want in zip(s, [1, *imp.shapes[p][x]]))
           for s, p in zip(shapes, imp._live()) if p in imp._baked(ins[1])):
        return [Act(x)]
    raise _Unsupported("reshapes the image tensor")


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


# ----------------------------------------------------------------- graph-level rewrites


def _fuse(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    """Pattern rewrites on the imported nodes. Returns the nodes and the output's name."""
    nodes = list(nodes)
    for rule in (_fuse_pad_conv, _fuse_gelu, _fuse_silu, _fuse_norm_affine):
        while True:
            new = rule(nodes, output)
            if new is None:
                break
            nodes, output = new if isinstance(new, tuple) else (new, output)
    return nodes, output


def _index(nodes):
    by = {n.name: n for n in nodes}
    cons: dict[str, list[Node]] = {}
    for n in nodes:
        for t in n.inputs:
            cons.setdefault(t, []).append(n)
    return by, cons


def _only(cons, name, output) -> Node | None:
    c = cons.get(name, [])
    if len(c) != 1 or name == output:
        return None
    return c[0]


def _splice(nodes, remove: set[str], replace_node: Node):
    out = []
    for n in nodes:
        if n.name == replace_node.name:
            out.append(replace_node)
        elif n.name not in remove:
            out.append(n)
    return out


def _is_const_binary(n: Node | None, fn: str, value: float | None = None, tol: float = 1e-6) -> bool:
    if n is None or not isinstance(n.op, Binary) or n.op.fn != fn or len(n.inputs) != 1 or n.op.const_left:
        return False
    c = n.params["const"]
    if value is None:
        return True
    return c.size == 1 and abs(float(c[0]) - value) <= tol * max(1.0, abs(value))


def _fuse_pad_conv(nodes, output):
    by, cons = _index(nodes)
    for p in nodes:
        if not isinstance(p.op, Pad) or p.op.multiple != 1 or min(p.op.pads) < 0:
            continue
        c = _only(cons, p.name, output)
        if c is None or not isinstance(c.op, Conv) or c.inputs[0] != p.name or c.op.pad_mode != "zeros":
            continue
        if p.op.mode == "constant" and p.op.value == 0.0:
            pads, mode = tuple(a + b for a, b in zip(c.op.pads, p.op.pads)), "zeros"
        elif p.op.mode in ("reflect", "edge") and c.op.pads == (0, 0, 0, 0):
            pads, mode = p.op.pads, "reflect" if p.op.mode == "reflect" else "replicate"
        else:
            continue
        new = replace(c, op=replace(c.op, pads=pads, pad_mode=mode), inputs=(p.inputs[0],))
        return _splice(nodes, {p.name}, new)
    return None


def _fuse_gelu(nodes, output):
    """x * 0.5 * (1 + erf(x / sqrt 2)) in the orders exporters write it -> Unary gelu."""
    by, cons = _index(nodes)
    for e in nodes:
        if not (isinstance(e.op, Unary) and e.op.fn == "erf"):
            continue
        d = by.get(e.inputs[0])
        if _is_const_binary(d, "div", math.sqrt(2.0), 1e-5) or _is_const_binary(d, "mul", 1 / math.sqrt(2.0), 1e-5):
            x = d.inputs[0]
        else:
            continue
        if _only(cons, d.name, output) is not e:
            continue
        a = _only(cons, e.name, output)
        if not _is_const_binary(a, "add", 1.0):
            continue
        m1 = _only(cons, a.name, output)
        if m1 is None or not isinstance(m1.op, Binary) or m1.op.fn != "mul":
            continue
        removed = {d.name, e.name, a.name}
        final = None
        if len(m1.inputs) == 2 and x in m1.inputs:            # (x * a) * 0.5
            m2 = _only(cons, m1.name, output)
            if _is_const_binary(m2, "mul", 0.5):
                removed.add(m1.name)
                final = m2
        elif _is_const_binary(m1, "mul", 0.5):                # x * (a * 0.5)
            m2 = _only(cons, m1.name, output)
            if m2 is not None and isinstance(m2.op, Binary) and m2.op.fn == "mul" and set(m2.inputs) == {x, m1.name}:
                removed.add(m1.name)
                final = m2
        elif len(m1.inputs) == 2:                              # (x * 0.5) * a
            h = by.get(next(t for t in m1.inputs if t != a.name))
            if _is_const_binary(h, "mul", 0.5) and h.inputs[0] == x and _only(cons, h.name, output) is m1:
                removed.add(h.name)
                final = m1
        if final is None:
            continue
        removed.discard(final.name)
        return _splice(nodes, removed, Node(final.name, Unary(fn="gelu"), (x,)))
    return None


def _fuse_silu(nodes, output):
    """x * sigmoid(x) -> Unary silu."""
    by, cons = _index(nodes)
    for m in nodes:
        if not (isinstance(m.op, Binary) and m.op.fn == "mul" and len(m.inputs) == 2):
            continue
        for k in (0, 1):
            s = by.get(m.inputs[k])
            x = m.inputs[1 - k]
            if s is not None and isinstance(s.op, Unary) and s.op.fn == "sigmoid" and s.inputs == (x,) \
                    and _only(cons, s.name, output) is m:
                return _splice(nodes, {s.name}, Node(m.name, Unary(fn="silu"), (x,)))
    return None


def _fuse_norm_affine(nodes, output):
    """Norm followed by a per-channel constant multiply / add: fold into its scale and bias."""
    by, cons = _index(nodes)
    for nd in nodes:
        if not isinstance(nd.op, Norm):
            continue
        m = _only(cons, nd.name, output)
        if m is None or not isinstance(m.op, Binary) or len(m.inputs) != 1 or m.op.const_left:
            continue
        c = m.params["const"]
        scale, bias = nd.params["scale"], nd.params["bias"]
        if m.op.fn == "mul":
            scale, bias = scale * c, bias * c
        elif m.op.fn == "add":
            bias = bias + c
        elif m.op.fn == "sub":
            bias = bias - c
        elif m.op.fn == "div":
            scale, bias = scale / c, bias / c
        else:
            continue
        if scale.shape != nd.params["scale"].shape:
            continue
        # the fused node keeps the norm's name (the one the user knows); readers of m follow
        new = Node(nd.name, nd.op, nd.inputs, {"scale": _f32(scale), "bias": _f32(bias)})
        out = []
        for k in _splice(nodes, {m.name}, new):
            out.append(replace(k, inputs=tuple(nd.name if t == m.name else t for t in k.inputs)))
        return out, (nd.name if output == m.name else output)
    return None
