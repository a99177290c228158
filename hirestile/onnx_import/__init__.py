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
  rules. A probe where the network fails (skips that do not align) dies; when
  none survives, the import starts again with probes at every residue modulo
  ``WIDE_RESIDUES`` (64) on the diagonal, so a network that takes only some
  sizes (a valid U-Net: 8k + 4 at depth 3) loads without a hint. A shape value
  equal at every live probe is treated as a constant;
* an **image tensor** (an activation, mapped to a graph node), or a pending
  crop of one (see below).

Size-dependent crops
--------------------
``Slice`` of an image tensor whose bounds come from shape values (the centre
crop of a valid-padding U-Net skip, ``s[..., top:top + u.H, left:left + u.W]``)
is matched, at every probe, against these size-independent forms, in order:
:class:`~hirestile.graph.CropLike` (centre or start anchor) to a tensor of the
right size (preferably the tensor it is concatenated / added with; only where
the bounds are computed from the size), then a constant margin ``x[a:-b]``, then
a fixed window ``x[a:a+n]``. Constant bounds keep their literal form, so the
graph refuses the sizes whose crops do not meet their partners, as ONNX Runtime
does (hirestile derives and reports the accepted sizes: ``Model.size_rule``). Models exported
with a fixed input size have such bounds baked in as constants: there a crop
whose output meets a same-sized partner and whose offset is the centre (or
zero) at the declared size becomes a ``CropLike`` too, so the model runs at
other sizes the way its PyTorch code would.

Rewrites done here
------------------
Two kinds. While translating, the handlers turn dynamo's softplus threshold
(``Where(x > 20, x, Softplus(x))``) into ``Unary softplus`` and the exported
GroupNorm (Reshape -> InstanceNormalization -> Reshape) into one ``Norm``. After
translating, the rules of :mod:`~hirestile.onnx_import.rewrites`, run by
:func:`hirestile.rewrite.rewrite` (the mechanism :func:`hirestile.rewrite.optimize`
uses too), fuse node patterns: ``Pad`` (zero / reflect / edge) feeding only a
``Conv`` becomes the conv's padding (``pad_mode`` reflect / replicate: PyTorch's
``padding_mode``); the Erf form of GELU becomes ``Unary gelu``; ``x * sigmoid(x)``
becomes ``Unary silu``; a ``Norm`` followed by a per-channel constant Mul / Add /
Sub / Div (GroupNorm's affine part) takes it into its scale and bias. Batch-norm
stays an ``Affine`` node for :func:`hirestile.rewrite.optimize` to fold. Node names
are the ONNX node names (or output names where a node has none), made unique; a
fused node keeps the name of its last node (the norm's name for a folded
GroupNorm).

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
* 2-D image ops only; one float32 image input; one output (pick one with
  ``output=``). Any batch, fixed or symbolic: the graph is one image's, which is
  exact because no handler maps an op that reads across the batch axis (those
  are refused naming the node, "mixes batch elements" where the batch is > 1).
* Opsets 6-12 are upgraded to 13 with ``onnx.version_converter`` first; where it
  fails (Pad-2 in IR-3 files) or would change the meaning (Upsample, Resize-10:
  it makes them half_pixel), the handlers read the old forms. Below 6: refused. Reshape / Transpose / Flatten / Gemm
  / MatMul on the image tensor are refused (they fold on constants).
  ``LogSoftmax`` is imported as softmax followed by log. ``Where`` and
  comparisons on images exist only in the softplus pattern. The tanh form of
  GELU written op by op (TorchScript, dynamo) is imported op by op.
* Malformed input never gets past :func:`~hirestile.onnx_import.read._tensor`
  (declared sizes checked before any allocation, external data refused), the
  folding limits (``MAX_FOLD_ELEMENTS``, ``MAX_SHAPE_ELEMENTS`` in
  :mod:`~hirestile.onnx_import.read`) and the attribute types the ONNX schema
  declares; anything else a corrupt node triggers is reported as a ModelError
  naming that node.

Modules
-------
* :mod:`~hirestile.onnx_import.read`: the protobuf, checked: file reading, tensors,
  attributes, the limits and the one-line error texts;
* :mod:`~hirestile.onnx_import.values`: what an ONNX value is while importing
  (constant, shape value, image tensor, pending crop, ...);
* :mod:`~hirestile.onnx_import.fold`: the NumPy evaluator of constant sub-graphs;
* :mod:`~hirestile.onnx_import.importer`: the probing importer that drives it all;
* :mod:`~hirestile.onnx_import.ops`, :mod:`~hirestile.onnx_import.ops_window`,
  :mod:`~hirestile.onnx_import.ops_shape`: the handlers mapping ONNX ops on image
  tensors to graph ops (pointwise and normalising; windowed: conv, pool, resize;
  shape-moving: shape, slice, split, pad, reshape);
* :mod:`~hirestile.onnx_import.rewrites`: the pattern fusions, rules for
  :func:`hirestile.rewrite.rewrite`.
"""
from __future__ import annotations

from hirestile.graph import Graph
from hirestile.onnx_import.importer import _Importer
from hirestile.onnx_import.read import _read
from hirestile.onnx_import.values import _NoSizeLeft

__all__ = ["load_onnx", "describe_onnx"]


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
        ``Affine`` node; :func:`hirestile.rewrite.optimize` folds it into the conv.

    Raises
    ------
    ModelError
        Malformed or unsupported model; unsupported ops are listed in one
        message, each with its node names.
    """
    model, label = _read(src)
    try:
        return _Importer(model, label, size_hint, output).run()
    except _NoSizeLeft:
        if size_hint is not None:
            raise
    # no probe size survived: the network takes only some sizes; probe every residue
    return _Importer(model, label, None, output, wide=True).run()


def describe_onnx(src) -> dict:
    """What an ONNX file declares, for ``hirestile inspect``: inputs and outputs with their
    shapes (symbolic dimensions by name), the opset (and whether the importer upgrades it),
    the op census and how the batch axis is handled. Reads the file only (no import)."""
    from collections import Counter

    from hirestile.onnx_import.importer import MIN_OPSET, UPGRADE_TO

    model, _ = _read(src)
    g = model.graph
    inits = {t.name for t in g.initializer}

    def dims(v):
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            return "?"
        return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                               for d in v.type.tensor_type.shape.dim) + ")"

    ins = [i for i in g.input if i.name not in inits]
    opset = max((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        reading = f"too old (hirestile reads opset {MIN_OPSET} and newer)"
    elif opset < UPGRADE_TO:
        reading = f"upgraded to {UPGRADE_TO} with onnx.version_converter where it can, else read as it is"
    else:
        reading = "read as it is"
    batch = "?"
    if len(ins) == 1 and ins[0].type.tensor_type.HasField("shape") and ins[0].type.tensor_type.shape.dim:
        d = ins[0].type.tensor_type.shape.dim[0]
        if d.HasField("dim_value") and d.dim_value == 1:
            batch = "1"
        elif d.HasField("dim_value"):
            batch = (f"fixed at {d.dim_value}: runs one image at a time (ops that mix the batch are refused); "
                     f"predict takes (N, C, H, W)")
        else:
            batch = f"symbolic ({d.dim_param or '?'}): runs one image at a time"
    census = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in g.node)
    return {"inputs": [(i.name, dims(i)) for i in ins], "outputs": [(o.name, dims(o)) for o in g.output],
            "opset": opset, "opset_reading": reading, "batch": batch, "ops": dict(census.most_common()),
            "nodes": len(g.node)}
