"""Run a graph on one output region (overlap-tile), reproducing borders exactly.

Layer 4 of docs/architecture.md. Tensors live as float32 HWC arrays covering a
region of their grid (:class:`Buf`). Before an op runs, its input window is
*fetched*: the positions inside the producer's buffer are copied (or viewed)
and positions outside the feature map take the op's own padding semantics
(zeros, -inf, reflect, replicate), decided from global coordinates. Kernels
then run "valid" on the window. Full-frame is the case region = whole image.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from hirestile.analyzer import Report, analyze_graph, empty, reflect_index
from hirestile.contract import InputContract, normalize_window
from hirestile.errors import InputError
from hirestile.graph import (Affine, Binary, Concat, Conv, ConvTranspose, CropLike, GlobalPool, Graph, Node, Norm,
                             Pad, Pool, PRelu, Resize, Slice, Softmax, Unary, padding_mode)
from hirestile.kernels import bf16 as kbf16
from hirestile.kernels import conv as kconv
from hirestile.kernels import norm as knorm
from hirestile.kernels import pointwise as kpw
from hirestile.kernels import pool as kpool
from hirestile.kernels import resize as kresize
from hirestile.kernels._move import copy_channels, pixels_to_planes, planes_to_pixels
from hirestile.region import Region
from hirestile.rewrite import optimize
from hirestile.tiling import Tile

ACT = {"": 0, "relu": 1, "leaky_relu": 2}


@dataclass(frozen=True)
class Buf:
    """A tensor's values on rows [y0, y0 + h) and cols [x0, x0 + w) of its grid, HWC.

    The rows and columns may run past the feature map: with ``fill`` set, positions outside
    the map hold that value (the padding a consumer reads there), so the consumer's window
    is a view of the buffer, not a padded copy."""

    data: np.ndarray
    y0: int
    x0: int
    fill: float | None = None

    @property
    def region(self) -> Region:
        h, w = self.data.shape[:2]
        return Region((self.y0, self.y0 + h), (self.x0, self.x0 + w))

    def crop(self, reg: Region) -> "Buf":
        (a, b), (c, d) = reg
        return Buf(self.data[a - self.y0:b - self.y0, c - self.x0:d - self.x0], a, c, self.fill)


@dataclass(frozen=True)
class Parts:
    """A concatenation left unbuilt (:func:`fused_concats`): its inputs' buffers (None where an
    input has no pixel in the region), which the one conv reading it reads where they are."""

    bufs: tuple[Buf | None, ...]
    channels: tuple[int, ...]


_fused: weakref.WeakKeyDictionary[Graph, tuple[tuple, Mapping[str, tuple[str, ...]]]] = weakref.WeakKeyDictionary()


def fused_concats(rep: Report) -> Mapping[str, tuple[str, ...]]:
    """The concat nodes a run leaves unbuilt, with their inputs: read by one conv only, which
    reads the two inputs in place (``conv2d_concat`` of :mod:`hirestile.kernels.conv`, float32
    Winograd F(4x4), or of :mod:`hirestile.kernels.bf16`, its Winograd F(2x2): a UNet
    decoder's first convs). The concat's copy and buffer go (5-6 % of a UNet-16 run), and its
    inputs' buffers live until the conv has run, covering the rows and padding it reads. Same
    bits: each input channel's Winograd transform is its own.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> dict(fused_concats(analyze(unet(base=16, depth=2).graph, (64, 64))))
    {'cat.1': ('enc.1.conv2', 'up.1'), 'cat.0': ('enc.0.conv2', 'up.0')}
    >>> len(fused_concats(analyze(unet(base=16, depth=2).graph, (64, 64), precision="bf16")))
    2
    """
    g = rep.graph
    if rep.weights is None:
        return MappingProxyType({})
    kernels = kbf16 if rep.precision == "bf16" else kconv
    key = (rep.precision, kconv.WINO4, kconv.WINO_MIN, kbf16.WINO, kbf16.WINO_MIN)   # the routes (benchmarks switch them)
    hit = _fused.get(g)
    if hit is not None and hit[0] == key:
        return hit[1]
    cons = g.consumers()
    fused = {}
    for n in g.nodes:
        users = cons.get(n.name, [])
        if (not isinstance(n.op, Concat) or n.name == g.output or g.input in n.inputs or len(n.inputs) != 2
                or len(set(n.inputs)) != 2 or len(users) != 1):
            continue
        c = users[0][0].op
        w = rep.weights.get(users[0][0].name, {}).get("w")
        if (isinstance(c, Conv) and tuple(c.stride) == (1, 1) and tuple(c.dilation) == (1, 1) and c.groups == 1
                and w is not None and kernels.concat_fusable(w.shape, tuple(rep.shapes[t][0] for t in n.inputs))):
            fused[n.name] = tuple(n.inputs)
    _fused[g] = (key, MappingProxyType(fused))
    return _fused[g][1]


def reads(n: Node, fused: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The buffers node ``n`` reads: its inputs, and for an unbuilt concat among them
    (``fused``: :func:`fused_concats`), that concat's inputs."""
    return list(n.inputs) + [p for t in n.inputs for p in fused.get(t, ())]


def _index(lo: int, hi: int, n: int, mode: str) -> np.ndarray:
    """Global source index of positions [lo, hi) of an axis of length n; -1 = fill."""
    i = np.arange(lo, hi)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "reflect":
        return reflect_index(i, n)
    return np.where((i >= 0) & (i < n), i, -1)


def fetch(buf: Buf, window: Region, size: tuple[int, int], mode: str = "fill", fill: float = 0.0) -> np.ndarray:
    """The window (global rows, cols) of a tensor of spatial ``size`` as an HWC array with
    packed pixels: a view of ``buf`` when the buffer holds the whole window (its padding
    included), else a C-contiguous copy. Callers must not write into it.

    Positions outside [0, size) follow ``mode``: "fill" (``fill``), "reflect" or
    "replicate". Positions inside must be in ``buf`` (the analyzer guarantees it).
    """
    (r0, r1), (c0, c1) = window
    (by0, by1), (bx0, bx1) = buf.region
    if by0 <= r0 and r1 <= by1 and bx0 <= c0 and c1 <= bx1 and (
            (0 <= r0 and 0 <= c0 and r1 <= size[0] and c1 <= size[1])
            or (mode == "fill" and buf.fill is not None and buf.fill == fill)):
        return buf.data[r0 - by0:r1 - by0, c0 - bx0:c1 - bx0]
    out = np.empty((r1 - r0, c1 - c0, buf.data.shape[2]), np.float32)
    _fetch_into(out, buf, window, size, mode, fill)
    return out


def _fetch_into(out: np.ndarray, buf: Buf, window: Region, size: tuple[int, int], mode: str, fill: float) -> None:
    (r0, r1), (c0, c1) = window
    (by0, by1), (bx0, bx1) = buf.region
    inside = r0 >= 0 and c0 >= 0 and r1 <= size[0] and c1 <= size[1]
    if inside and by0 <= r0 and r1 <= by1 and bx0 <= c0 and c1 <= bx1:
        out[...] = buf.data[r0 - by0:r1 - by0, c0 - bx0:c1 - bx0]
        return
    iy, ix = _index(r0, r1, size[0], mode), _index(c0, c1, size[1], mode)
    vy, vx = iy >= 0, ix >= 0
    sy, sx = iy[vy], ix[vx]
    if sy.size and sx.size and (sy.min() < by0 or sy.max() >= by1 or sx.min() < bx0 or sx.max() >= bx1):
        raise AssertionError(f"internal error: window {window} reads outside the computed region {buf.region}")
    if not (vy.all() and vx.all()):
        out[...] = fill
    if sy.size == 0 or sx.size == 0:
        return
    ys, xs = np.flatnonzero(vy), np.flatnonzero(vx)
    if mode == "fill":  # valid positions and their sources are contiguous runs
        out[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] = buf.data[sy[0] - by0:sy[-1] + 1 - by0, sx[0] - bx0:sx[-1] + 1 - bx0]
    else:
        out[...] = buf.data[np.ix_(sy - by0, sx - bx0)]


# ---------------------------------------------------------------- preparation


@dataclass(frozen=True)
class Prepared:
    """A graph ready to run: optimized, weights in kernel layout, and each conv's tile step
    (the grid its kernel route computes on; the analyzer widens regions to it)."""

    graph: Graph
    weights: dict[str, dict[str, np.ndarray]]
    steps: dict[str, tuple[int, int]]
    precision: str = "fp32"


# Prepared forms live as long as the graph they were made from, and no longer: a model
# dropped (a notebook reloading it, a Dask worker's cache evicting it) frees its weights.
_prepared: weakref.WeakKeyDictionary[Graph, dict[str, Prepared]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one the executor runs ("fp32", "bf16"), else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def precision_label(precision: str) -> str:
    """What runs in words: "fp32", or "bf16 (avx512_bf16 vdpbf16ps)" / "bf16 (conversion)"."""
    return f"bf16 ({kbf16.PATH})" if check_precision(precision) == "bf16" else "fp32"


class _Bf16Weights(dict):
    """A conv's kernel-layout weights in a bf16 prepared graph (rounded to bf16): its runner
    calls the bf16 kernels (:func:`_kernels`)."""


def prepare(graph: Graph, precision: str = "fp32") -> Prepared:
    """Optimize ``graph`` and lay out its weights for the kernels (cached per ``precision``
    while ``graph`` lives).

    ``precision="bf16"``: conv weights rounded to bfloat16, the convs run on
    :mod:`hirestile.kernels.bf16` (inputs rounded, float32 sums, outputs rounded in the
    store; tile step 2 where a 3x3 conv takes the bf16 Winograd F(2x2) route), every other
    op's output rounded to bf16 (:func:`_runner`).
    """
    precision = check_precision(precision)
    with _lock:
        hit = _prepared.get(graph, {}).get(precision)
    if hit is not None:
        return hit
    g = optimize(graph)
    bf16 = precision == "bf16"
    weights, steps, nodes = {}, {}, []
    for n in g.nodes:
        op = n.op
        if isinstance(op, (Conv, ConvTranspose)):
            axes = (2, 3, 1, 0) if isinstance(op, Conv) else (2, 3, 0, 1)
            w = np.ascontiguousarray(n.params["w"].transpose(axes), np.float32)
            weights[n.name] = (_Bf16Weights if bf16 else dict)(
                w=kbf16.round_bf16(w) if bf16 else w, b=np.ascontiguousarray(n.params["b"], np.float32))
            if not bf16:          # the optimized graph's weights become views of the kernel layout: one copy, not two
                n = replace(n, params={**n.params, "w": w.transpose(np.argsort(axes)), "b": weights[n.name]["b"]})
            if isinstance(op, Conv):
                steps[n.name] = tuple((kbf16 if bf16 else kconv).conv_tile(
                    op.kernel[0], op.kernel[1], op.stride, op.dilation, op.groups, op.cin, op.cout))
        else:
            weights[n.name] = {k: np.ascontiguousarray(v, np.float32).reshape(-1) for k, v in n.params.items()}
        nodes.append(n)
    g = replace(g, nodes=tuple(nodes))
    for arrays in weights.values():
        for a in arrays.values():
            a.setflags(write=False)  # the conv kernels cache packed forms of read-only weights only
    prepared = Prepared(g, weights, steps, precision)
    with _lock:
        return _prepared.setdefault(graph, {}).setdefault(precision, prepared)


def analyze(graph: Graph, image_shape, precision: str = "fp32") -> Report:
    """Receptive-field report of the graph as the executor will run it in ``precision`` (it
    carries the prepared weights, so a report alone is enough to run)."""
    p = prepare(graph, precision)
    return analyze_graph(p.graph, image_shape, steps=p.steps, weights=p.weights, precision=p.precision)


def _kernels(wts):
    """The conv kernel module for a conv node's prepared weights: bf16 or float32."""
    return kbf16 if isinstance(wts, _Bf16Weights) else kconv


# ops whose outputs are bf16 when their inputs are (they move or pick values): not rounded again
_EXACT = (Concat, Slice, CropLike, Pad, Conv, ConvTranspose)


def _runner(n: Node, rep: Report) -> Callable:
    """The runner of node ``n``; in a bf16 report, one that also rounds the node's output to
    bf16 (the convs round in their kernels' store; ops that only move values need nothing)."""
    run = RUNNERS[type(n.op)]
    op = n.op
    if rep.precision != "bf16" or isinstance(op, _EXACT) or (isinstance(op, Pool) and op.mode == "max") \
            or (isinstance(op, Resize) and op.mode == "nearest"):
        return run

    def rounded(*args, **kw):
        y = run(*args, **kw)
        if y.flags.c_contiguous and y.flags.writeable:
            return kbf16.round_bf16(y, out=y)
        if y.flags.writeable:
            y[...] = kbf16.round_bf16(np.ascontiguousarray(y))
            return y
        return kbf16.round_bf16(y)
    return rounded


# ---------------------------------------------------------------- op runners


def _window(node: Node, k: int, comp: Region, shapes) -> Region:
    ins = [shapes[t] for t in node.inputs]
    iv = [node.op.in_interval(k, a, comp[a], ins, shapes[node.name]) for a in (0, 1)]
    return (iv[0], iv[1])


def _fetch_input(node: Node, k: int, bufs, comp: Region, shapes, out: np.ndarray | None = None) -> np.ndarray:
    """Input ``k``'s window for ``comp`` (:func:`fetch`: a view where the producer's buffer holds
    it), or copied into ``out`` when given."""
    t = node.inputs[k]
    mode, fill = padding_mode(node.op, k)
    buf, win, size = _or_empty(bufs.get(t), shapes[t][0]), _window(node, k, comp, shapes), shapes[t][1:]
    if out is None:
        return fetch(buf, win, size, mode, fill)
    _fetch_into(out, buf, win, size, mode, fill)
    return out


def _or_empty(buf: Buf | None, channels: int) -> Buf:
    """``buf``, or an empty one where the producer has no pixel in the region (the window lies
    wholly in padding)."""
    return buf if buf is not None else Buf(np.empty((0, 0, channels), np.float32), 0, 0)


def _run_conv(node, bufs, comp, shapes, wts, out=None):
    op = node.op
    src = bufs.get(node.inputs[0])
    if isinstance(src, Parts):   # an unbuilt concat: each input's window where its producer wrote it
        mode, fill = padding_mode(op, 0)
        win, size = _window(node, 0, comp, shapes), shapes[node.inputs[0]][1:]
        xs = [fetch(_or_empty(b, c), win, size, mode, fill) for b, c in zip(src.bufs, src.channels)]
        return _kernels(wts).conv2d_concat(xs, wts["w"], wts["b"], act=ACT[op.act], alpha=op.alpha, out=out)
    x = _fetch_input(node, 0, bufs, comp, shapes)
    return _kernels(wts).conv2d(x, wts["w"], wts["b"], stride=op.stride, dilation=op.dilation, groups=op.groups,
                        act=ACT[op.act], alpha=op.alpha, out=out)


def _run_conv_transpose(node, bufs, comp, shapes, wts, out=None):
    op = node.op
    win = _window(node, 0, comp, shapes)
    x = _fetch_input(node, 0, bufs, comp, shapes)
    offset = (comp[0][0] + op.pads[0] - op.stride[0] * win[0][0], comp[1][0] + op.pads[1] - op.stride[1] * win[1][0])
    shape = (comp[0][1] - comp[0][0], comp[1][1] - comp[1][0])
    return _kernels(wts).conv_transpose2d(x, wts["w"], wts["b"], stride=op.stride, dilation=op.dilation, groups=op.groups,
                                  offset=offset, out_shape=shape, act=ACT[op.act], alpha=op.alpha, out=out)


def _run_pool(node, bufs, comp, shapes, wts, out=None):
    op = node.op
    x = _fetch_input(node, 0, bufs, comp, shapes)
    if op.mode == "max":
        return kpool.max_pool2d(x, kernel=op.kernel, stride=op.stride, dilation=op.dilation, out=out)
    _, h, w = shapes[node.inputs[0]]
    cy, cx = op.divisors(0, *comp[0], h), op.divisors(1, *comp[1], w)
    return kpool.avg_pool2d(x, kernel=op.kernel, stride=op.stride, count_y=cy, count_x=cx, out=out)


def _run_resize(node, bufs, comp, shapes, wts):
    op = node.op
    src = shapes[node.inputs[0]]
    out = shapes[node.name]
    win = _window(node, 0, comp, shapes)
    x = np.ascontiguousarray(fetch(bufs[node.inputs[0]], win, src[1:]))
    taps = [op.taps(a, np.arange(*comp[a]), src[a + 1], out[a + 1]) for a in (0, 1)]
    if op.mode == "nearest":
        return kresize.resize_nearest(x, iy=taps[0][0] - win[0][0], ix=taps[1][0] - win[1][0])
    (y0, y1, ly), (x0, x1, lx) = taps
    return kresize.resize_bilinear(x, y0=y0 - win[0][0], y1=y1 - win[0][0], ly=ly,
                                   x0=x0 - win[1][0], x1=x1 - win[1][0], lx=lx)


def _same(node, bufs, comp, shapes, k=0):
    """The input window as an array of its own (a view of the producer's buffer is copied:
    these runners return it or hand it to kernels that take C-contiguous arrays)."""
    return _own(_fetch_input(node, k, bufs, comp, shapes))


def _own(x: np.ndarray) -> np.ndarray:
    return x if x.flags.c_contiguous and x.flags.owndata else x.copy()


def _run_unary(node, bufs, comp, shapes, wts):
    op = node.op
    return kpw.unary(_same(node, bufs, comp, shapes), kpw.UNARY[op.fn], op.p0, op.p1)


def _run_prelu(node, bufs, comp, shapes, wts):
    return kpw.prelu(_same(node, bufs, comp, shapes), wts["slope"])


def _run_affine(node, bufs, comp, shapes, wts):
    return kpw.affine_channels(_same(node, bufs, comp, shapes), wts["scale"], wts["shift"])


def _run_binary(node, bufs, comp, shapes, wts):
    op = node.op
    code = kpw.BINARY[op.fn]
    a = _same(node, bufs, comp, shapes)
    if len(node.inputs) == 1:
        f = kpw.rbinary if op.const_left else kpw.binary
        return f(wts["const"], a, code) if op.const_left else f(a, wts["const"], code)
    b = _same(node, bufs, comp, shapes, 1)
    ca, cb = a.shape[2], b.shape[2]
    if a.shape[:2] != b.shape[:2] or ca != cb:
        # broadcast a 1x1 (global) operand or a single channel
        if b.shape[:2] == (1, 1) and cb in (1, ca):
            return kpw.binary(a, np.ascontiguousarray(b.reshape(-1)), code)
        if a.shape[:2] == (1, 1) and ca in (1, cb):
            return kpw.rbinary(np.ascontiguousarray(a.reshape(-1)), b, code)
        a, b = np.broadcast_arrays(a, b)
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return kpw.binary(a, b, code)


def _run_concat(node, bufs, comp, shapes, wts, out=None):
    """Each input fetched straight into its channel slice of the output (one copy, not two)."""
    from hirestile.kernels._common import packed
    (a, b), (c, d) = comp
    chans = [shapes[t][0] for t in node.inputs]
    if out is None:
        out = np.empty((b - a, d - c, sum(chans)), np.float32)
    k0 = 0
    for k, t in enumerate(node.inputs):
        src = bufs.get(t)
        if src is None:
            src = Buf(np.empty((0, 0, chans[k]), np.float32), 0, 0)
        mode, fill = padding_mode(node.op, k)
        win = _window(node, k, comp, shapes)
        (r0, r1), (c0, c1) = win
        (by0, by1), (bx0, bx1) = src.region
        if (0 <= r0 and 0 <= c0 and r1 <= shapes[t][1] and c1 <= shapes[t][2] and by0 <= r0 and r1 <= by1
                and bx0 <= c0 and c1 <= bx1 and packed(src.data) and packed(out)):
            # inside the map and held by the producer (the usual case): a parallel vector copy
            copy_channels(src.data[r0 - by0:r1 - by0, c0 - bx0:c1 - bx0], out, k0)
        else:
            _fetch_into(out[:, :, k0:k0 + chans[k]], src, win, shapes[t][1:], mode, fill)
        k0 += chans[k]
    return out


def _run_slice(node, bufs, comp, shapes, wts):
    c0, c1 = node.op.bounds(0, shapes[node.inputs[0]][0])
    x = _fetch_input(node, 0, bufs, comp, shapes)
    return np.ascontiguousarray(x[:, :, c0:c1]) if (c0, c1) != (0, x.shape[2]) else _own(x)


def _run_crop(node, bufs, comp, shapes, wts, out=None):  # crop and pad: the fetch does it all
    return _same(node, bufs, comp, shapes) if out is None else _fetch_input(node, 0, bufs, comp, shapes, out)


def _run_softmax(node, bufs, comp, shapes, wts):
    return kpw.softmax_channels(_same(node, bufs, comp, shapes))


def _run_global_pool(node, bufs, comp, shapes, wts):
    return knorm.global_avg_pool(_same(node, bufs, comp, shapes))


def _run_norm(node, bufs, comp, shapes, wts):
    op = node.op
    x = _same(node, bufs, comp, shapes)
    c = x.shape[2]
    if op.groups == c:
        return knorm.instance_norm(x, wts["scale"], wts["bias"], op.eps)
    return knorm.group_norm(x, op.groups, wts["scale"], wts["bias"], op.eps)


RUNNERS: dict[type, Callable] = {
    Conv: _run_conv, ConvTranspose: _run_conv_transpose, Pool: _run_pool, Resize: _run_resize,
    Unary: _run_unary, PRelu: _run_prelu, Affine: _run_affine, Binary: _run_binary, Concat: _run_concat,
    Slice: _run_slice, CropLike: _run_crop, Pad: _run_crop, Softmax: _run_softmax,
    GlobalPool: _run_global_pool, Norm: _run_norm,
}
# Runners that write into a buffer they are given (``out=``, a window of the node's buffer):
# the others return a new array, copied into the buffer only when the buffer must be larger
# (padding for a consumer, rows kept from the band above). Crops and pads copy anyway (a view
# of the producer's buffer would outlive it): into the buffer, not into fresh pages each band.
WRITES_INTO = frozenset({Conv, ConvTranspose, Pool, Concat, CropLike, Pad})


# ---------------------------------------------------------------- region execution


def run_region(rep: Report, window: np.ndarray, origin: tuple[int, int], out_region: Region, *,
               arena: "Arena | None" = None, out: np.ndarray | None = None) -> np.ndarray:
    """Compute ``out_region`` of the network's output.

    Parameters
    ----------
    rep : Report
        From :func:`analyze` (the graph as prepared by the executor).
    window : ndarray, float32, (C, h, w)
        Input pixels covering at least ``rep.input_window(out_region, aligned=True)`` clipped to
        the image, already normalised.
    origin : (int, int)
        Global (row, col) of ``window[:, 0, 0]``.
    out_region : ((y0, y1), (x0, x1))
        Output region, on the output grid, inside the output.
    arena : Arena, optional
        Where the node buffers come from; pass the same one to every tile of a run so that
        they are reused (a fresh one by default).
    out : ndarray, float32, (K, y1 - y0, x1 - x0), optional
        Where to write the result (an array of the caller's, reused: no fresh pages); a new
        array by default.

    Returns
    -------
    ndarray, float32, (K, y1 - y0, x1 - x0)
        ``out`` when given.
    """
    return _run(rep, window, origin, out_region, arena=arena, result=out)


class Arena:
    """One slab of memory holding a run's node buffers, laid out once per region shape.

    A fresh large array costs first-touch page faults (10-30 % of a conv at large sizes),
    and a heap that keeps freed blocks of changing sizes fragments. So before a region runs,
    the executor lists the buffers it will take (their sizes, and the steps at which each
    is taken and given up); :meth:`place` gives each an offset in one slab such that buffers
    alive at the same time never overlap (largest first, at the lowest offset that fits: the
    static memory planning of dataflow compilers). Later tiles and bands of the same shape
    get the same layout (cached) in the same slab, which grows only when a layout needs
    more. Its size is the run's executor memory, and :func:`region_memory` computes it the
    same way without running anything. A stream's line buffers (``lines``) and its resident
    nodes' buffers (:meth:`resident`) live beside the slab, each node's in memory of its own.

    Examples
    --------
    >>> a = Arena()
    >>> a.place(((100, 0, 1), (50, 1, 2), (100, 2, 3)))     # (elements, taken, given up)
    [0, 112, 0]
    >>> a.nbytes                      # 176 elements: the second overlaps both in time
    704
    """

    ALIGN = 16            # elements: buffers start on 64-byte lines

    def __init__(self) -> None:
        self.slab = np.empty(0, np.float32)
        self._scratch = np.empty(0, np.float32)
        self._layouts: dict[tuple, tuple[list[int], int]] = {}
        # per node, the memory its line buffers live in between bands (a stream's, see
        # :func:`_keep`), kept from one column strip to the next: fresh pages cost more than
        # the copy
        self.lines: dict[str, np.ndarray] = {}
        # per resident node (a stream's long-lived buffers, see :meth:`resident`): its band
        # buffer, kept out of the slab from band to band, and the map row its row 0 holds
        self.residents: dict[str, np.ndarray] = {}
        self._top: dict[str, tuple[int, tuple[int, int]]] = {}

    def place(self, requests: tuple[tuple[int, int, int], ...]) -> list[int]:
        """Offsets (in float32 elements) for ``requests`` of (elements, first step, last step),
        lifetimes inclusive; the slab grows to hold them."""
        hit = self._layouts.get(requests)
        if hit is None:
            hit = self._layouts[requests] = layout(requests, self.ALIGN)
        self._grow("slab", hit[1])
        return hit[0]

    def resident(self, name: str, ext: Region, channels: int, kept: Region | None, room: int = 0) -> np.ndarray:
        """Node ``name``'s buffer for a band, covering ``ext`` (rows, cols of the map), in memory
        of its own kept from band to band: the region ``kept`` of the band above, which it
        kept in place (:func:`_keep`), is moved to its rows in it, the only copy it takes (a
        buffer in the slab copies it out and back in). ``kept`` None: nothing to carry (a
        strip's first band). Memory holds at least ``room`` values (the largest band of the
        strip), taken when nothing is carried, so that it need not grow while it holds kept
        rows: growing then copies them aside first (a strip 3072 wide of UNet-64: +280 MiB)."""
        (ea, eb), cols = ext
        row = (cols[1] - cols[0]) * channels
        need = (eb - ea) * row
        rows, carried = None, kept is not None and not empty(kept.rows)
        if carried:
            top, had = self._top[name]
            (k0, k1), (c0, c1) = kept
            src, dst, n = k0 - top, k0 - ea, k1 - k0
            if had == tuple(cols) and self.residents[name].size >= need:
                _move_rows(self.residents[name], src, dst, n, row)
            else:                             # another layout (columns padded otherwise) or grown: via a copy
                was = (had[1] - had[0]) * channels
                old = self.residents[name][src * was:(src + n) * was].reshape(n, had[1] - had[0], channels)
                rows = np.array(old[:, c0 - had[0]:c1 - had[0]])
                del old
        # nothing carried (a strip's first band): take the strip's room now, while growing copies nothing
        if name not in self.residents or self.residents[name].size < (need if carried else max(need, room)):
            self.residents[name] = np.empty(0, np.float32)           # the old one goes first
            self.residents[name] = aligned_empty(max(need, room))
        buf = self.residents[name][:need].reshape(eb - ea, cols[1] - cols[0], channels)
        if rows is not None:
            buf[dst:dst + n, c0 - cols[0]:c1 - cols[0]] = rows
        self._top[name] = (ea, tuple(cols))
        return buf

    def reserve(self, n: int) -> None:
        """Grow the slab to at least ``n`` values now (a stream's, at a strip's first band:
        :func:`hirestile.bands.stream_room`)."""
        self._grow("slab", n)

    def scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` in memory kept from call to call (grown when too small):
        the normalised input window of :func:`run_window`, which the region run copies into
        its node buffer before anything else is written."""
        n = int(np.prod(shape))
        return self._grow("_scratch", n)[:n].reshape(shape)

    def _grow(self, name: str, n: int) -> np.ndarray:
        """The array attribute ``name``, replaced by an aligned one of ``n`` values when it
        holds fewer; the old one goes first, so that the two never exist at once."""
        if getattr(self, name).size < n:
            setattr(self, name, np.empty(0, np.float32))
            setattr(self, name, aligned_empty(n))
        return getattr(self, name)

    def view(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        """The slab's elements from ``offset`` as a C-contiguous array of ``shape``."""
        return self.slab[offset:offset + int(np.prod(shape))].reshape(shape)

    @property
    def nbytes(self) -> int:
        return self.slab.nbytes


def aligned_empty(n: int) -> np.ndarray:
    """``np.empty(n, float32)`` starting on a 64-byte cache line. NumPy's own start 16 bytes past
    one here, so every 16-float vector load and store of the kernels spanned two lines
    (measured: 5-7% of a UNet-16 run's CPU), and the kernels' non-temporal stores, which
    need whole lines, never engaged."""
    raw = np.empty(n + 16, np.float32)
    off = (-raw.ctypes.data % 64) // 4
    return raw[off:off + n]


def _move_rows(mem: np.ndarray, src: int, dst: int, n: int, row: int) -> None:
    """Move ``n`` rows of ``row`` values within ``mem`` from row ``src`` to row ``dst``, in
    chunks no taller than the shift, so that no chunk reads what it writes (the copy runs
    on all threads)."""
    shift = abs(src - dst)
    if n <= 0 or shift == 0:
        return
    starts = range(0, n, shift) if dst < src else reversed(range(0, n, shift))
    for k in starts:
        m = min(shift, n - k)
        copy_channels(mem[(src + k) * row:(src + k + m) * row].reshape(m, 1, row),
                      mem[(dst + k) * row:(dst + k + m) * row].reshape(m, 1, row), 0)


def layout(requests, align: int = 16) -> tuple[list[int], int]:
    """(offsets, total elements) placing buffers of (elements, first step, last step) so that
    two alive at a common step never overlap: largest first, each at the lowest offset clear
    of the buffers already placed whose lifetimes meet its own."""
    offsets = [0] * len(requests)
    placed: list[tuple[int, int, int, int]] = []
    total = 0
    for i in sorted(range(len(requests)), key=lambda i: -requests[i][0]):
        size, s, e = requests[i]
        size = -(-size // align) * align
        off = 0
        for a, b in sorted((o, o + z) for o, z, s2, e2 in placed if s2 <= e and s <= e2):
            if off + size <= a:
                break
            off = max(off, b)
        offsets[i] = off
        placed.append((off, size, s, e))
        total = max(total, off + size)
    return offsets, total


def _extents(rep: Report, held: dict[str, Region], comp: dict[str, Region]) -> dict[str, tuple[Region, float | None]]:
    """Per node, the region its buffer covers and the value it holds outside the feature map.

    The buffer covers the rows and columns the node holds (``held``: what it computes, and in
    a band the rows kept from the band above) grown to the windows its consumers read for
    what they compute (``comp``), where those run past the map and read a constant ("fill"
    padding: zeros for a conv, -inf for a max-pool); the first such constant is the
    buffer's, a consumer wanting another (or reflect / replicate) gets a copy from
    :func:`fetch`."""
    g, shapes = rep.graph, rep.shapes
    wins: dict[str, list] = {}
    fused = fused_concats(rep)
    for n in g.nodes:
        if n.name not in comp:
            continue
        for k, t in enumerate(n.inputs):
            if t in held:
                w = _window(n, k, comp[n.name], shapes)
                if w[0] is not None and w[1] is not None:
                    for u in (t, *fused.get(t, ())):     # an unbuilt concat's inputs hold what it would
                        wins.setdefault(u, []).append((w, *padding_mode(n.op, k)))
    out = {}
    for t, reg in held.items():
        (a, b), (c, d) = reg
        h, w = shapes[t][1:]
        fill = None
        for ((wa, wb), (wc, wd)), mode, v in wins.get(t, ()):
            if mode != "fill" or (fill is not None and v != fill) or (0 <= wa and 0 <= wc and wb <= h and wd <= w):
                continue
            na, nb, nc, nd = min(a, wa), max(b, wb), min(c, wc), max(d, wd)
            # growing may only add positions outside the map
            if (na < a and a > 0) or (nb > b and b < h) or (nc < c and c > 0) or (nd > d and d < w):
                continue
            a, b, c, d, fill = na, nb, nc, nd, v
        out[t] = (Region((a, b), (c, d)), fill)
    return out


def _fill_outside(buf: Buf, size: tuple[int, int]) -> None:
    """Set the positions of ``buf`` outside the map (rows / cols past [0, size)) to its fill."""
    (y0, y1), (x0, x1) = buf.region
    d, v = buf.data, buf.fill
    if y0 < 0:
        d[:min(-y0, d.shape[0])] = v
    if y1 > size[0]:
        d[max(size[0] - y0, 0):] = v
    if x0 < 0:
        d[:, :min(-x0, d.shape[1])] = v
    if x1 > size[1]:
        d[:, max(size[1] - x0, 0):] = v


def regions_of(rep: Report, out_region: Region) -> tuple[dict[str, Region], dict[str, Region]]:
    """(held, computed) regions of every node for ``out_region`` run on its own: each node
    computes and holds its aligned computed region; the input holds the clipped window."""
    regs = rep.regions(out_region, aligned=True)
    comp = {name: Region.of(r.computed) for name, r in regs.items()}
    held = dict(comp)
    if rep.graph.input in regs:
        held[rep.graph.input] = comp[rep.graph.input] = Region.of(regs[rep.graph.input].needed)
    return held, comp


def _run(rep: Report, window: np.ndarray, origin: tuple[int, int], out_region: Region,
         band: tuple[dict, dict, dict] | None = None, lines: dict[str, Buf] | None = None,
         arena: Arena | None = None, stores: dict[str, np.ndarray] | None = None,
         result: np.ndarray | None = None, resident: Mapping[str, int] = MappingProxyType({})) -> np.ndarray:
    """:func:`run_region` (``result``: its ``out``); with ``band`` (held, computed, keep), as planned by
    :class:`hirestile.bands.Stream`: each node holds the ``held`` rows, of which it computes
    only ``computed``, the rows above coming from its line buffer in ``lines``; once a node's
    consumers have run, its rows from ``keep[name]`` on are kept in ``lines`` for the next band.
    ``stores`` holds, per node, the memory its line buffers live in, reused band after band
    (fresh pages cost more than the copy): a node's line buffer is consumed when the node
    computes, before its next one is kept. A ``resident`` node's buffer is its own memory
    from band to band (:meth:`Arena.resident`; the values: the room it takes), where its line
    buffer stays in place."""
    g = rep.graph
    if rep.weights is None:
        raise ValueError("this report was not made by hirestile.analyze / hirestile.executor.analyze")
    (oy0, oy1), (ox0, ox1) = out_region
    k_out, oh, ow = rep.output_shape
    if not (0 <= oy0 <= oy1 <= oh and 0 <= ox0 <= ox1 <= ow):
        raise ValueError(f"output region {out_region} lies outside the output {oh}x{ow}")
    if result is not None and (result.shape != (k_out, oy1 - oy0, ox1 - ox0) or result.dtype != np.float32):
        raise ValueError(f"out must be float32 {(k_out, oy1 - oy0, ox1 - ox0)}, got {result.dtype} {result.shape}")
    if oy1 == oy0 or ox1 == ox0:
        return np.zeros((k_out, oy1 - oy0, ox1 - ox0), np.float32) if result is None else result
    if window.ndim != 3 or window.shape[0] != g.in_channels:
        raise InputError(f"input window must be (C={g.in_channels}, h, w), got {window.shape}")
    held, comp, keep = band if band is not None else (*regions_of(rep, out_region), {})
    lines = {} if lines is None else lines
    stores = {} if stores is None else stores
    arena = Arena() if arena is None else arena
    ext = _extents(rep, held, comp)
    names, requests = _requests(rep, held, comp, ext, resident)
    mem = {name: arena.view(off, _ext_shape(rep, ext, name)) for name, off in zip(names, arena.place(requests))}
    given = Region((int(origin[0]), int(origin[0]) + window.shape[1]), (int(origin[1]), int(origin[1]) + window.shape[2]))
    if g.input in held:
        need = held[g.input]
        if given.intersect(need) != need:
            raise ValueError(f"input window {given} does not cover the rows/cols {need} this region needs")
        e, fill = ext[g.input]
        x = Buf(mem[g.input], e.rows[0], e.cols[0], fill)
        (a, b), (c, d) = need
        planes_to_pixels(window[:, a - given.rows[0]:b - given.rows[0], c - given.cols[0]:d - given.cols[0]],
                         x.data[a - e.rows[0]:b - e.rows[0], c - e.cols[0]:d - e.cols[0]])
        if fill is not None:
            _fill_outside(x, rep.shapes[g.input][1:])
    else:
        x = Buf(np.ascontiguousarray(np.moveaxis(window, 0, -1), np.float32), *given.origin)
    bufs: dict[str, Buf | Parts] = {g.input: x}
    fused = fused_concats(rep)
    remaining: dict[str, int] = {}
    for n in g.nodes:
        if n.name in comp:
            for t in reads(n, fused):
                remaining[t] = remaining.get(t, 0) + 1
    for n in g.nodes:
        if n.name not in comp:
            continue
        prev = lines.pop(n.name, None)           # the node's rows from the band above, consumed here
        if held[n.name].rows[0] >= comp[n.name].rows[0]:
            prev = None
        if n.name in fused:                      # left unbuilt: its conv reads the inputs' buffers
            bufs[n.name] = Parts(tuple(bufs.get(t) for t in n.inputs), tuple(rep.shapes[t][0] for t in n.inputs))
        elif n.name in resident:                 # the rows above are in place in its own memory
            r0, start, cols = held[n.name].rows[0], comp[n.name].rows[0], held[n.name].cols
            kept = Region((r0, start), cols) if start > r0 else None
            if kept is not None:
                _check_line(n, prev, r0, start, cols)
            prev = None                          # a view of that memory: it may be replaced (grown)
            data = arena.resident(n.name, ext[n.name][0], rep.shapes[n.name][0], kept, resident[n.name])
            bufs[n.name] = _compute(n, bufs, held[n.name], comp[n.name], ext[n.name], rep, None, data, True)
        else:
            bufs[n.name] = _compute(n, bufs, held[n.name], comp[n.name], ext[n.name], rep, prev, mem.get(n.name))
        for t in reads(n, fused):
            remaining[t] -= 1
            if remaining[t] == 0 and t != g.output:
                done = bufs.pop(t, None)         # its memory may now be another buffer's
                if isinstance(done, Buf) and t in keep:
                    _keep(lines, t, done, held[t], keep[t], None if t in resident else stores)
    if g.output == g.input:
        res = fetch(bufs[g.input], out_region, (oh, ow))
    else:
        res = bufs[g.output].crop(Region((oy0, oy1), (ox0, ox1))).data
    res = pixels_to_planes(res, result)
    if g.output != g.input and g.output in keep:
        _keep(lines, g.output, bufs[g.output], held[g.output], keep[g.output], stores)
    return res


def _ext_shape(rep: Report, ext: dict[str, tuple[Region, float | None]], name: str) -> tuple[int, int, int]:
    (a, b), (c, d) = ext[name][0]
    return (b - a, d - c, rep.shapes[name][0])


def _requests(rep: Report, held: dict[str, Region], comp: dict[str, Region],
              ext: dict[str, tuple[Region, float | None]], resident: Collection[str] = frozenset()
              ) -> tuple[list[str], tuple[tuple[int, int, int], ...]]:
    """The buffers a region's nodes take from the arena, as :meth:`Arena.place` requests
    (elements, step taken, last step read), and their nodes. The input is taken at step -1,
    node i of the run at step i; a buffer is read until its last consumer's step, the
    output's until the end (an unbuilt concat's inputs: until its conv's). A node takes one
    unless it returns an array of its own that needs nothing around it (no padding, no rows
    from the band above), is an unbuilt concat (:func:`fused_concats`), or is ``resident``
    (its buffer lives outside the slab: :meth:`Arena.resident`)."""
    g = rep.graph
    fused = fused_concats(rep)
    order = [n for n in g.nodes if n.name in comp]
    last: dict[str, int] = {}
    for i, n in enumerate(order):
        for t in reads(n, fused):
            last[t] = i
    names, reqs = [], []
    steps = ([(-1, g.input)] if g.input in held else []) + [(i, n.name) for i, n in enumerate(order)]
    for i, name in steps:
        if i >= 0:
            e, fill = ext[name]
            if name in fused or name in resident or (e == held[name] == comp[name] and fill is None
                                                     and type(order[i].op) not in WRITES_INTO):
                continue
        h, w, c = _ext_shape(rep, ext, name)
        names.append(name)
        reqs.append((h * w * c, i, len(order) if name == g.output else last.get(name, i)))
    return names, tuple(reqs)


def region_memory(rep: Report, held: dict[str, Region], comp: dict[str, Region],
                  resident: Collection[str] = frozenset()) -> int:
    """Bytes of the arena slab the executor lays out for a region whose nodes hold ``held``
    and compute ``comp`` (:func:`regions_of`, or a band's plan; see :class:`Arena`), found
    without running: what a run of such regions holds in node buffers, less the
    ``resident`` nodes' (:func:`resident_memory`)."""
    ext = _extents(rep, held, comp)
    return 4 * layout(_requests(rep, held, comp, ext, resident)[1], Arena.ALIGN)[1]


def resident_memory(rep: Report, held: dict[str, Region], comp: dict[str, Region],
                    resident: Collection[str]) -> dict[str, int]:
    """Per ``resident`` node that holds rows, the bytes of its buffer for such a region
    (:meth:`Arena.resident`)."""
    ext = _extents(rep, held, comp)
    return {n: 4 * int(np.prod(_ext_shape(rep, ext, n))) for n in resident if n in held}


def interior_region(rep: Report, tile: int | tuple[int, int]) -> Region:
    """An output region of ``tile`` (rows, cols) in the middle of the output: the largest
    window any tile of that size reads."""
    ty, tx = (tile, tile) if isinstance(tile, int) else tile
    _, oh, ow = rep.output_shape
    y0, x0 = max(0, oh // 2 - ty // 2), max(0, ow // 2 - tx // 2)
    return Region((y0, min(y0 + ty, oh)), (x0, min(x0 + tx, ow)))


def image_window(rep: Report, region: Region) -> Region:
    """The image rows and columns output ``region`` reads (its aligned input window clipped
    to the image: what a reader reads for it)."""
    (a, b), (c, d) = rep.input_window(region, aligned=True)
    (ih, iw) = rep.image_shape
    return Region((max(a, 0), min(b, ih)), (max(c, 0), min(d, iw)))


def tile_memory(rep: Report, tile: int | tuple[int, int]) -> int:
    """Bytes the executor holds running tiles of ``tile`` output pixels: the node-buffer slab
    laid out for an interior tile (:func:`region_memory`) and the weights as the kernels hold
    them (:func:`weight_bytes`); the input window and the output come on top.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = analyze(unet(base=8, depth=3).graph, (1024, 1024))
    >>> tile_memory(rep, 512) > tile_memory(rep, 128) > weight_bytes(rep)
    True
    """
    return region_memory(rep, *regions_of(rep, interior_region(rep, tile))) + weight_bytes(rep)


def weight_bytes(rep: Report) -> int:
    """Bytes of the network's weights as a run holds them: the model's own parameters
    (``rep.held_bytes``) and its optimized graph's (batch-norm folded) where they are not views
    of the prepared arrays (kernel layout: fp32 convs' are, :func:`prepare`), the prepared
    arrays, and the packed copy each conv route caches (a Winograd F(m x m, 3x3) route's
    transformed weights are (m + 2)^2 / 9 times the 3x3 kernel's). A UNet-64: 118 + 0 + 118 +
    442 MiB."""
    prepared = [a for arrays in (rep.weights or {}).values() for a in arrays.values()]
    total = rep.held_bytes + rep.graph.param_bytes(besides=prepared)
    for name, arrays in (rep.weights or {}).items():
        total += sum(a.nbytes for a in arrays.values())
        w = arrays.get("w")
        if w is not None:             # bf16 routes pack 2-byte values
            m = rep.steps.get(name, (1, 1))[0]
            total += int(w.nbytes * ((m + 2) ** 2 / 9 if m > 1 else 1) * (0.5 if rep.precision == "bf16" else 1))
    return total


def pack_weights(rep: Report) -> None:
    """Have the kernels pack (transform, reorder) every conv's weights now, by running a small
    region in the middle of the image: a run calls it before its slab exists, so that packing's
    transient copies (a Winograd layer's unpacked transform: 151 MB for 1024 -> 1024) never
    add to the peak the plan promises. Packed weights are cached for as long as the prepared
    ones live (the model)."""
    if not rep.tileable:
        return
    _, oh, ow = rep.output_shape
    region = interior_region(rep, (min(oh, 16), min(ow, 16)))
    (a, b), (c, d) = image_window(rep, region)
    run_region(rep, np.zeros((rep.graph.in_channels, b - a, d - c), np.float32), (a, c), region)


def _compute(n: Node, bufs: dict[str, Buf], held: Region, comp: Region, ext: tuple[Region, float | None],
             rep: Report, prev: Buf | None, data: np.ndarray | None, in_place: bool = False) -> Buf:
    """Node ``n``'s values on ``held``, in ``data`` (its arena buffer, covering ``ext``: the
    padding its consumers read outside the map included). Rows of ``held`` above ``comp``
    come from ``prev`` (the node's line buffer from the band above; ``in_place``: already in
    ``data``, a resident buffer's); only ``comp`` is computed. The kernels give every row the same bits whatever region it is computed in
    (the exactness contract), so this changes no value. Without ``data`` the runner's own
    array is the buffer."""
    run, writes = _runner(n, rep), type(n.op) in WRITES_INTO
    if data is None:
        return Buf(_checked(n, run(n, bufs, comp, rep.shapes, rep.weights[n.name]), comp), *comp.origin)
    e, fill = ext
    ea, ec = e.origin
    buf = Buf(data, ea, ec, fill)
    r0, (c0, c1) = held.rows[0], held.cols
    start, r1 = comp.rows
    if start > r0 and not in_place:
        _check_line(n, prev, r0, start, held.cols)
        copy_channels(prev.data[r0 - prev.y0:start - prev.y0], buf.data[r0 - ea:start - ea, c0 - ec:c1 - ec], 0)
    if r1 > start:
        dst = buf.data[start - ea:r1 - ea, c0 - ec:c1 - ec]
        if writes:
            res = run(n, bufs, comp, rep.shapes, rep.weights[n.name], out=dst)
        else:
            res = run(n, bufs, comp, rep.shapes, rep.weights[n.name])
        _checked(n, res, comp)
        if res is not dst:
            dst[...] = res
    if fill is not None:
        _fill_outside(buf, rep.shapes[n.name][1:])
    return buf


def _check_line(n: Node, prev: Buf | None, r0: int, start: int, cols: tuple[int, int]) -> None:
    """Node ``n``'s line buffer ``prev`` holds its rows ``r0 .. start`` of columns ``cols``."""
    if prev is None or prev.region.cols != cols or not prev.y0 <= r0 or prev.region.rows[1] < start:
        raise AssertionError(f"internal error: node {n.name!r} has no line buffer for rows {r0}..{start}")


def _checked(n: Node, data: np.ndarray, comp: Region) -> np.ndarray:
    expect = (comp[0][1] - comp[0][0], comp[1][1] - comp[1][0])
    if data.shape[:2] != expect:
        raise AssertionError(f"internal error: node {n.name!r} produced {data.shape[:2]}, expected {expect}")
    return data


def _keep(lines: dict[str, Buf], name: str, buf: Buf, held: Region, first: int,
          stores: dict[str, np.ndarray] | None) -> None:
    """Keep the rows of ``buf`` from ``first`` to the end of ``held`` (the rows the next band
    reads again), copied out (the buffer's memory goes to other nodes) into the node's store,
    grown when too small; with ``stores`` None (a resident buffer, whose memory stays the
    node's) kept where they are."""
    (_, y1), (c0, c1) = held
    if y1 > first:
        src = buf.data[first - buf.y0:y1 - buf.y0, c0 - buf.x0:c1 - buf.x0]
        if stores is None:
            lines[name] = Buf(src, first, c0)
            return
        store = stores.get(name)
        if store is None or store.size < src.size:
            store = stores[name] = aligned_empty(src.size)
        rows = store.reshape(-1)[:src.size].reshape(src.shape)
        copy_channels(src, rows, 0)
        lines[name] = Buf(rows, first, c0)


def run_window(rep: Report, contract: InputContract, raw: np.ndarray, tile: Tile, *, nan_fill: float | None = None,
               where: str = "image", hint: str = "pass nan_fill=VALUE to stand in for NaN/Inf",
               stream: Any = None, arena: Arena | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """A tile's logits from its read window as stored: normalise by the model's input
    contract (refusing NaN/Inf unless ``nan_fill``; the message names ``where`` and
    ``hint``), run the network, return the tile's output region (in ``out`` when given).
    The normalised window lives in the arena's scratch (:meth:`Arena.scratch`).

    Parameters
    ----------
    rep : Report
        From :meth:`hirestile.model.Model.analyze` (or :func:`analyze`).
    contract : InputContract
    raw : ndarray, (C, h, w)
        ``tile.read`` of the image, any dtype.
    tile : Tile
        From :mod:`hirestile.tiling`.
    stream : hirestile.bands.Stream, optional
        Run the tile as the next band of this stream (same bits, rows above reused).
    arena : Arena, optional
        Node buffers to reuse across the tiles of a run (see :func:`run_region`).

    Returns
    -------
    ndarray, float32, (K, rows, cols) of ``tile.write``
    """
    keep = stream.arena if stream is not None else arena
    window = normalize_window(raw, tile.read, contract, nan_fill, where=where, hint=hint,
                              out=None if keep is None else keep.scratch(raw.shape))
    if stream is not None:
        return stream.run(window, tile.read.origin, tile.write, out=out)
    return run_region(rep, window, tile.read.origin, tile.write, arena=arena, out=out)


_kept: weakref.WeakKeyDictionary[Graph, Arena] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def kept_arena(rep: Report):
    """An :class:`Arena` kept with the prepared graph from one call to the next (as inference
    engines keep their memory pools): a fresh slab's first touch costs 0.5-3 s of system time
    per GB on this project's VM, on every call. A call takes the kept arena (a concurrent one
    gets its own) and gives it back when done; it goes with the model (the prepared graph).

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = analyze(unet(base=4, depth=2).graph, (64, 64))
    >>> with kept_arena(rep) as a:
    ...     pass
    >>> with kept_arena(rep) as b:
    ...     b is a
    True
    """
    with _lock:
        arena = _kept.pop(rep.graph, None)
    if arena is None:
        arena = Arena()
    yield arena                    # an error in the call drops it (nothing half-used is kept)
    with _lock:
        _kept[rep.graph] = arena


def run_full(rep: Report, image: np.ndarray) -> np.ndarray:
    """Full-frame: the whole output from the whole (C, H, W) image."""
    _, oh, ow = rep.output_shape
    return run_region(rep, image, (0, 0), ((0, oh), (0, ow)))
