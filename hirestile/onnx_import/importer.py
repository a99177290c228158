"""The probing importer: walks the ONNX graph, classifies every value (constant, shape
value evaluated at several probe sizes, image tensor, pending crop), hands image ops
to the handlers of :mod:`~hirestile.onnx_import.ops` and friends, turns pending crops
into size-independent graph ops, and returns the graph after the pattern fusions of
:mod:`~hirestile.onnx_import.rewrites`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from hirestile.errors import ModelError
from hirestile.graph import CropLike, Graph, Node, ShapeError, Slice
from hirestile.rewrite import prune
from hirestile.onnx_import import ops_shape, ops_window  # noqa: F401 (they register their handlers)
from hirestile.onnx_import.fold import _FOLDABLE, _fold
from hirestile.onnx_import.ops import _HANDLERS
from hirestile.onnx_import.read import (
    MAX_BATCH, MAX_FOLD_ELEMENTS, MAX_REACH, MAX_RESIZE, MAX_SHAPE_ELEMENTS, MAX_SIDE, MAX_TENSOR_ELEMENTS, _attrs,
    _one_line, _tensor,
)
from hirestile.onnx_import.rewrites import fuse_patterns
from hirestile.onnx_import.values import _IMAGE, Act, Crop, Grouped, Poison, Sym, _NoSizeLeft, _Reported, _Unsupported

#: probe offsets from the first probe size (rows, cols)
PROBE_OFFSETS = ((0, 0), (128, 256), (256, 128))
DEFAULT_PROBE = (512, 512)
#: residues tried (on top of the first probe) when no probe survives: networks that take only some sizes
WIDE_RESIDUES = 64
#: oldest ONNX opset read; older models are upgraded to UPGRADE_TO first where onnx can
MIN_OPSET = 6
UPGRADE_TO = 13
#: ops that, on an image tensor of a fixed batch N > 1, may read across the batch axis
_BATCH_MIXING = {"Transpose", "Flatten", "MatMul", "Gemm", "Gather", "Expand", "Tile", "ReduceSum", "ReduceMax",
                 "ReduceMin", "ReduceProd", "Squeeze", "Unsqueeze", "SpaceToDepth", "DepthToSpace", "Einsum"}


class _Importer:
    def __init__(self, model, label: str, size_hint, output, wide: bool = False):
        self.model, self.label, self.g = model, label, model.graph
        self.wide = wide
        self.opset = self.source_opset = self._opset()
        if self.opset < UPGRADE_TO:
            self._upgrade()
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
        if ver < MIN_OPSET:
            raise ModelError(f"{self.label}: ONNX opset {ver} is too old (hirestile reads opset {MIN_OPSET} and "
                             f"newer); re-export with opset 13 or newer")
        return ver

    def _upgrade(self) -> None:
        """Old opsets: upgrade to :data:`UPGRADE_TO` with ``onnx.version_converter`` where it works;
        where it does not (e.g. Pad-2 with its ``pads``/``value`` attributes in an IR-3 file), the
        handlers read the old forms themselves (Pad-2, Upsample, Slice-1, Clip-6, ``broadcast``)."""
        if any(n.op_type == "Upsample" or (n.op_type == "Resize" and self.opset < 11) for n in self.g.node):
            return  # the converter turns them into half_pixel Resizes; they are asymmetric: read them as they are
        try:
            from onnx import version_converter
            up = version_converter.convert_version(self.model, UPGRADE_TO)
        except Exception:  # the converter refuses or lacks an adapter: read the model as it is
            return
        self.model, self.g, self.opset = up, up.graph, UPGRADE_TO

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
        if dims[0] is not None and not 0 < dims[0] <= MAX_BATCH:
            raise ModelError(f"{self.label}: input {inp.name!r} declares a batch size of {dims[0]}")
        # a fixed batch N > 1 (what torch.onnx.export bakes in from its example) or a symbolic one:
        # hirestile runs one image at a time, which is exact as long as no op mixes batch elements
        # (the handlers refuse every op that reads across the batch axis, naming the node)
        self.batch = dims[0] or 1
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
        # wide: every residue modulo WIDE_RESIDUES on the diagonal, for networks that take only some
        # sizes (a valid-padding U-Net whose skips must align takes 16k + 12); probes at other residues
        # die where the network cannot take them, so a size-derived value is judged at every residue
        # the network takes
        shifts = range(WIDE_RESIDUES) if self.wide and not self.static else (0,)
        self.probes = [(base[0] + r + dy, base[1] + r + dx) for r in shifts for dy, dx in PROBE_OFFSETS]
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
            raise _NoSizeLeft(f"{self.label}: node {name!r} ({onnx_op or op.kind}): {_one_line(first_err)} "
                              f"at every input size tried ({self._tried()}); pass load_model(..., size_hint=(H, W)) "
                              f"with a size the network takes")
        self.nodes.append(Node(name, op, tuple(inputs), params or {}))
        return name

    def _tried(self) -> str:
        if len(self.probes) <= len(PROBE_OFFSETS):
            return ", ".join(f"{h}x{w}" for h, w in self.probes)
        (h0, w0), (h1, w1) = self.probes[0], self.probes[-len(PROBE_OFFSETS)]
        return f"{h0}x{w0} to {h1}x{w1}, every residue modulo {WIDE_RESIDUES}, and those grown by (128, 256), (256, 128)"

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
        return prune(fuse_patterns(Graph(tuple(self.nodes), out_name, self.in_channels, input=self.input_name)))

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
                        mixes = self.batch > 1 and n.op_type in _BATCH_MIXING
                        raise _Unsupported("on the image tensor" + (" (mixes batch elements; hirestile runs one "
                                                                    "image at a time)" if mixes else ""))
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

        # 1. CropLike to a tensor of the crop's size at every probe, where the bounds are computed from
        #    the size (constant bounds keep their literal form: the network then refuses sizes whose
        #    crop does not meet its partner, as the reference framework does)
        anc = anchor(live) if v.sources else None
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
