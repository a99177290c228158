"""Handlers of ops that read shapes or move pixels and channels: Shape, Size, Slice
(pending crops, see :mod:`~hirestile.onnx_import.importer`), Split, Pad and Reshape
(the only reshapes an image tensor may take: to itself, and GroupNorm's two halves).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hirestile.errors import ModelError
from hirestile.graph import Norm, Pad
from hirestile.onnx_import.ops import _f32, _handler
from hirestile.onnx_import.read import MAX_SIDE
from hirestile.onnx_import.values import _IMAGE, Act, Crop, Grouped, Sym, _NoSizeLeft, _Unsupported

if TYPE_CHECKING:
    from hirestile.onnx_import.importer import _Importer

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
        s = np.array((imp.batch,) + tuple(get(p)), np.int64)
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
                lo, hi, _ = slice(max(s, -2**62), min(e, 2**62)).indices(imp.batch)
                if (lo, hi) != (0, imp.batch):
                    raise _Unsupported("slices the batch axis (mixes batch elements)")
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
        raise _NoSizeLeft(f"{imp.label}: node {name!r} (Slice) gives an empty tensor at every size tried "
                          f"({imp._tried()}); pass load_model(..., size_hint=(H, W)) with a size the network takes")
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


@_handler("Reshape")
def _reshape(imp: _Importer, n, name, ins, at):
    v = ins[0]
    if isinstance(v, Grouped) and v.normed is not None:
        target = imp._sym_or_const(ins[1])
        ok = all(target[p] is not None and np.asarray(target[p]).reshape(-1).tolist()
                 == [imp.batch, *imp.shapes[p][v.src]] for p in imp._baked(ins[1]))
        if not ok:
            raise _Unsupported("reshapes the image tensor" + (" (mixes batch elements)" if imp.batch > 1 else ""))
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
    if all(s is not None and len(s) == 3 and s[0] in (0, imp.batch) and s[2] == -1 and s[1] >= 1 and c % s[1] == 0
           for s in shapes) and len({s[1] for s in shapes}) == 1:
        return [Grouped(x, shapes[0][1], name)]
    # a reshape to the tensor's own shape
    if all(s is not None and len(s) == 4 and s.count(-1) <= 1 and all(
            t in (want, 0, -1) for t, want in zip(s, [imp.batch, *imp.shapes[p][x]]))
           for s, p in zip(shapes, imp._live()) if p in imp._baked(ins[1])):
        return [Act(x)]
    raise _Unsupported("reshapes the image tensor" + (" (mixes batch elements)" if imp.batch > 1 else ""))
