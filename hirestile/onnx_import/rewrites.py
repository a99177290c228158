"""The ONNX importer's pattern fusions: rules for :func:`hirestile.rewrite.rewrite`.

Exporters spell some ops as several nodes; these rules put them back together:

* ``Pad`` (zero / reflect / edge) read only by a ``Conv`` becomes the conv's padding
  (``pad_mode`` reflect / replicate: PyTorch's ``padding_mode``);
* ``x * 0.5 * (1 + erf(x / sqrt 2))``, in the orders exporters write it, becomes
  ``Unary gelu``;
* ``x * sigmoid(x)`` becomes ``Unary silu``;
* a ``Norm`` followed by a per-channel constant Mul / Add / Sub / Div (GroupNorm's
  affine part) takes it into its scale and bias.

A fused node keeps the name of the last node it replaces, except the norm, which keeps
its own (the name the user knows).
"""
from __future__ import annotations

import math
from dataclasses import replace

from hirestile.graph import Binary, Conv, Graph, Node, Norm, Pad, Unary
from hirestile.rewrite import GraphIndex, Match, rewrite
from hirestile.onnx_import.ops import _f32


def _is_const_binary(n: Node | None, fn: str, value: float | None = None, tol: float = 1e-6) -> bool:
    if n is None or not isinstance(n.op, Binary) or n.op.fn != fn or len(n.inputs) != 1 or n.op.const_left:
        return False
    c = n.params["const"]
    if value is None:
        return True
    return c.size == 1 and abs(float(c[0]) - value) <= tol * max(1.0, abs(value))


def _is_mul(n: Node | None) -> bool:
    return n is not None and isinstance(n.op, Binary) and n.op.fn == "mul"


def pad_into_conv(p: Node, index: GraphIndex) -> Match | None:
    """A Pad read only by a zero-padded Conv becomes the conv's padding."""
    if not isinstance(p.op, Pad) or p.op.multiple != 1 or min(p.op.pads) < 0:
        return None
    c = index.sole_reader(p.name)
    if c is None or not isinstance(c.op, Conv) or c.inputs[0] != p.name or c.op.pad_mode != "zeros":
        return None
    if p.op.mode == "constant" and p.op.value == 0.0:
        pads, mode = tuple(a + b for a, b in zip(c.op.pads, p.op.pads)), "zeros"
    elif p.op.mode in ("reflect", "edge") and c.op.pads == (0, 0, 0, 0):
        pads, mode = p.op.pads, "reflect" if p.op.mode == "reflect" else "replicate"
    else:
        return None
    return Match((p, c), replace(c, op=replace(c.op, pads=pads, pad_mode=mode), inputs=(p.inputs[0],)))


def erf_gelu(e: Node, index: GraphIndex) -> Match | None:
    """x * 0.5 * (1 + erf(x / sqrt 2)) in the orders exporters write it -> Unary gelu."""
    if not (isinstance(e.op, Unary) and e.op.fn == "erf"):
        return None
    d = index.producer(e.inputs[0])
    if not (_is_const_binary(d, "div", math.sqrt(2.0), 1e-5) or _is_const_binary(d, "mul", 1 / math.sqrt(2.0), 1e-5)):
        return None
    x = d.inputs[0]
    if index.sole_reader(d.name) is not e:
        return None
    a = index.sole_reader(e.name)
    if not _is_const_binary(a, "add", 1.0):
        return None
    m1 = index.sole_reader(a.name)
    if not _is_mul(m1):
        return None
    if len(m1.inputs) == 2 and x in m1.inputs:            # (x * a) * 0.5
        m2 = index.sole_reader(m1.name)
        matched = (d, e, a, m1, m2) if _is_const_binary(m2, "mul", 0.5) else None
    elif _is_const_binary(m1, "mul", 0.5):                # x * (a * 0.5)
        m2 = index.sole_reader(m1.name)
        matched = (d, e, a, m1, m2) if _is_mul(m2) and set(m2.inputs) == {x, m1.name} else None
    elif len(m1.inputs) == 2:                              # (x * 0.5) * a
        h = index.producer(next(t for t in m1.inputs if t != a.name))
        ok = _is_const_binary(h, "mul", 0.5) and h.inputs[0] == x and index.sole_reader(h.name) is m1
        matched = (d, e, a, h, m1) if ok else None
    else:
        matched = None
    return None if matched is None else Match(matched, Node(matched[-1].name, Unary(fn="gelu"), (x,)))


def sigmoid_silu(m: Node, index: GraphIndex) -> Match | None:
    """x * sigmoid(x) -> Unary silu."""
    if not (_is_mul(m) and len(m.inputs) == 2):
        return None
    for k in (0, 1):
        s = index.producer(m.inputs[k])
        x = m.inputs[1 - k]
        if s is not None and isinstance(s.op, Unary) and s.op.fn == "sigmoid" and s.inputs == (x,) \
                and index.sole_reader(s.name) is m:
            return Match((s, m), Node(m.name, Unary(fn="silu"), (x,)))
    return None


def norm_affine(nd: Node, index: GraphIndex) -> Match | None:
    """Norm followed by a per-channel constant multiply / add: fold into its scale and bias."""
    if not isinstance(nd.op, Norm):
        return None
    m = index.sole_reader(nd.name)
    if m is None or not isinstance(m.op, Binary) or len(m.inputs) != 1 or m.op.const_left:
        return None
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
        return None
    if scale.shape != nd.params["scale"].shape:
        return None
    # the fused node keeps the norm's name (the one the user knows); readers of m follow
    return Match((nd, m), Node(nd.name, nd.op, nd.inputs, {"scale": _f32(scale), "bias": _f32(bias)}))


#: the pattern fusions, tried in this order at each node
RULES = (pad_into_conv, erf_gelu, sigmoid_silu, norm_affine)


def fuse_patterns(graph: Graph) -> Graph:
    """``graph`` with every pattern of :data:`RULES` fused."""
    return rewrite(graph, RULES)
