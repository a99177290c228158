"""Reading an ONNX file without trusting it: the protobuf, its tensors and attributes.

Every failure here is a one-line :class:`~hirestile.errors.ModelError`; declared
sizes are checked against :data:`MAX_TENSOR_ELEMENTS` and against the bytes present
before anything is allocated. The other limits the importer enforces live here too.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from hirestile.errors import ModelError

#: most elements one initializer / constant may declare
MAX_TENSOR_ELEMENTS = 1 << 28
#: most elements a value computed while folding may have (beyond the inputs' size)
MAX_FOLD_ELEMENTS = 1 << 24
#: most elements of a shape value (integers derived from image sizes)
MAX_SHAPE_ELEMENTS = 1 << 12
#: largest fixed batch size a model may declare (hirestile runs one image at a time)
MAX_BATCH = 1 << 16
#: largest image side a model may declare, and largest resize factor
MAX_SIDE = 1 << 24
MAX_RESIZE = 256
#: most input pixels one output pixel of one op may reach per axis, beyond the input
#: (kernel extent with dilation, padding): bounds the halo a malformed file can ask for
MAX_REACH = 1 << 14
#: what to do about a file that is not a readable ONNX model
REEXPORT = "re-export it (torch.onnx.export, opset >= 13) or check the download"


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
