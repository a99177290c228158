"""Shared fixtures: the PyTorch reference networks and ONNX export helpers.

The networks are small (a few channels per layer) so that the reference tests
run in seconds on two cores, but each one exercises the structure it is named
for (DESIGN.md section 1, issue 2 "Tests that must exist"). torch is imported
lazily: ``torch_nets`` skips where torch is absent, and nothing at module level
needs it.

Fixtures
--------
torch_nets
    dict ``name -> NetSpec``; ``spec.build(seed)`` returns an eval-mode module
    with random weights and non-trivial batch-norm statistics, ``spec.sizes``
    lists (H, W) input sizes the network takes, ``spec.channels`` its input
    channels, ``spec.tileable`` whether it may run tiled, ``spec.tile`` a tile
    size that cuts its output into several tiles, ``spec.kinds`` the graph op
    classes (by name) its import must contain (exporters fold batch-norm into the
    convs themselves, so no ``Affine`` is expected).
export_onnx
    ``export_onnx(module, example, dynamo=False, dynamic=True) -> bytes``.
reference_onnx
    ``reference_onnx(name, dynamo=False, dynamic=True) -> (module, bytes)``: one
    seeded module per network and its export, cached for the session.
graph_eval
    :func:`eval_graph`, a float64 torch evaluation of a hirestile Graph (the
    importer's reference, independent of the engine).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest


@dataclass(frozen=True)
class NetSpec:
    name: str
    build: Callable[[int], object]
    channels: int
    sizes: tuple[tuple[int, int], ...]
    kinds: frozenset[str]
    tileable: bool = True
    tile: tuple[int, int] = (16, 16)
    #: the graph op class (by name) that makes it non-tileable
    whole_image_kind: str | None = None
    extra: dict = field(default_factory=dict)


def _randomize(net, seed: int):
    """Random weights plus non-trivial batch-norm statistics, eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d,)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            elif isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return net.eval()


def _nets() -> dict[str, NetSpec]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv_bn_relu(cin, cout, k=3, pad=1, **kw):
        return [nn.Conv2d(cin, cout, k, padding=pad, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU()]

    class Block(nn.Module):
        def __init__(self, cin, cout, pad=1, bn=True):
            super().__init__()
            layers = []
            for a, b in ((cin, cout), (cout, cout)):
                layers.append(nn.Conv2d(a, b, 3, padding=pad, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(b))
                layers.append(nn.ReLU())
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return self.body(x)

    class UNet(nn.Module):
        """The lead's UNet layout: enc/up/dec/head, skip first in the concat."""

        def __init__(self, cin=3, classes=2, base=4, depth=4, padding="same", up="transpose",
                     align_corners=False, bn=True):
            super().__init__()
            pad = 1 if padding == "same" else 0
            w = [base * 2 ** i for i in range(depth + 1)]
            cins = [cin] + w[:-1]
            self.depth = depth
            self.enc = nn.ModuleList(Block(cins[i], w[i], pad, bn) for i in range(depth + 1))
            ups = []
            for i in range(depth):
                if up == "transpose":
                    ups.append(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2))
                else:
                    ups.append(nn.Sequential(
                        nn.Upsample(scale_factor=2, mode=up,
                                    **({"align_corners": align_corners} if up == "bilinear" else {})),
                        nn.Conv2d(w[i + 1], w[i], 1)))
            self.up = nn.ModuleList(ups)
            self.dec = nn.ModuleList(Block(2 * w[i], w[i], pad, bn) for i in range(depth))
            self.head = nn.Conv2d(w[0], classes, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.enc):
                if i > 0:
                    x = F.max_pool2d(x, 2)
                x = block(x)
                skips.append(x)
            x = skips[-1]
            for i in range(self.depth - 1, -1, -1):
                u = self.up[i](x)
                s = skips[i]
                if s.shape[-2:] != u.shape[-2:]:  # valid padding: centre-crop the skip
                    top = (s.shape[-2] - u.shape[-2]) // 2
                    left = (s.shape[-1] - u.shape[-1]) // 2
                    s = s[..., top:top + u.shape[-2], left:left + u.shape[-1]]
                x = self.dec[i](torch.cat([s, u], dim=1))
            return self.head(x)

    class Dilated(nn.Module):
        """Context net: 3x3 convs with dilations 1, 2, 4, 8, 16 (padding = dilation)."""

        def __init__(self, cin=3, width=6, classes=3):
            super().__init__()
            layers, c = [], cin
            for d in (1, 2, 4, 8, 16, 1):
                layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU()]
                c = width
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(width, classes, 1)

        def forward(self, x):
            return self.head(self.body(x))

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x if self.proj is None else self.proj(x)
            return F.relu(y + s)

    class ResNetFCN(nn.Module):
        """7x7/2 stem (pad 3), 3x3/2 max-pool (pad 1), residual stages with stride-2
        convs and 1x1 projections, then transposed-conv x2 and bilinear x8 back."""

        def __init__(self, cin=3, classes=3, w=4):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(cin, w, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU())
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = ResBlock(w, w, 1)
            self.layer2 = ResBlock(w, 2 * w, 2)
            self.layer3 = ResBlock(2 * w, 2 * w, 1)
            self.head = nn.Conv2d(2 * w, classes, 1)
            self.up2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1)

        def forward(self, x):
            y = self.pool(self.stem(x))
            y = self.layer3(self.layer2(self.layer1(y)))
            y = self.up2(self.head(y))
            return F.interpolate(y, scale_factor=8, mode="bilinear", align_corners=False)

    class DWSep(nn.Module):
        """Depthwise-separable blocks (depthwise 3x3 groups=C + pointwise 1x1)."""

        def __init__(self, cin=3, w=8, classes=2):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.Hardswish())
            self.dw1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
            self.pw1 = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.SiLU())
            self.dw2 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1, groups=2 * w),
                                     nn.BatchNorm2d(2 * w), nn.Hardswish())
            self.pw2 = nn.Sequential(nn.Conv2d(2 * w, w, 1), nn.BatchNorm2d(w), nn.GELU())
            self.gate = nn.Sequential(nn.Conv2d(w, w, 1), nn.Hardsigmoid())
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.head = nn.Conv2d(2 * w, classes, 3, padding=1)

        def forward(self, x):
            s = self.dw1(self.stem(x))
            y = self.pw2(self.dw2(self.pw1(s)))
            y = y * self.gate(y)
            y = self.up(y)
            return self.head(torch.cat([s, y], 1))

    class Reflect(nn.Module):
        """Convs with padding_mode reflect / replicate and explicit F.pad."""

        def __init__(self, cin=3, w=6, classes=2):
            super().__init__()
            self.c1 = nn.Conv2d(cin, w, 3, padding=1, padding_mode="reflect")
            self.c2 = nn.Conv2d(w, w, 5, padding=2, padding_mode="replicate")
            self.c3 = nn.Conv2d(w, w, (3, 5), padding=(1, 2), padding_mode="reflect", stride=(1, 2))
            self.c4 = nn.Conv2d(w, classes, 3)

        def forward(self, x):
            y = F.leaky_relu(self.c1(x), 0.1)
            y = F.elu(self.c2(y))
            y = torch.tanh(self.c3(y))
            y = F.pad(y, (1, 1, 2, 0), mode="reflect")
            return self.c4(y)

    class Zoo(nn.Module):
        """Pointwise activations, constants, pools and pads the importer maps."""

        def __init__(self, cin=3, w=6, classes=4):
            super().__init__()
            self.c1 = nn.Conv2d(cin, w, 3, padding=1)
            self.prelu = nn.PReLU(w)
            self.c2 = nn.Conv2d(w, w, 3, padding=1, dilation=1)
            self.prelu1 = nn.PReLU()
            self.c3 = nn.Conv2d(w, w, 1)
            self.c4 = nn.Conv2d(w, classes, 3, padding=1)
            self.scale = nn.Parameter(torch.linspace(0.5, 1.5, w).reshape(1, w, 1, 1))

        def forward(self, x):
            y = self.prelu(self.c1(x))
            y = F.softplus(y) - torch.sigmoid(y) * 0.5
            y = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
            y = F.max_pool2d(self.prelu1(self.c2(y)), 3, stride=2, padding=1, ceil_mode=True)
            y = F.gelu(y, approximate="tanh") * self.scale + 1.0
            y = torch.clamp(y, -2.0, 3.0) / 1.5
            y = torch.minimum(1.0 - y * y, y) + torch.maximum(y, self.scale)
            y = F.pad(y, (1, 1, 1, 1), mode="replicate")
            y = F.avg_pool2d(y, 3, stride=1)
            y = F.interpolate(self.c3(y), scale_factor=2, mode="nearest")
            y = F.pad(y, (2, -1, -1, 2), value=0.25)
            y = F.leaky_relu(y) + torch.abs(y) * torch.exp(-torch.abs(y))
            return torch.log_softmax(self.c4(y), dim=1)

    class SE(nn.Module):
        """Squeeze-and-excitation through 1x1 convs: a global pool (not tileable)."""

        def __init__(self, cin=3, w=6, classes=2, mean=False):
            super().__init__()
            self.c1 = nn.Conv2d(cin, w, 3, padding=1)
            self.fc1 = nn.Conv2d(w, 3, 1)
            self.fc2 = nn.Conv2d(3, w, 1)
            self.head = nn.Conv2d(w, classes, 1)
            self.mean = mean

        def forward(self, x):
            y = F.relu(self.c1(x))
            g = y.mean((2, 3), keepdim=True) if self.mean else F.adaptive_avg_pool2d(y, 1)
            g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
            return torch.softmax(self.head(y * g), dim=1)

    class INorm(nn.Module):
        def __init__(self, cin=3, w=6, classes=2):
            super().__init__()
            self.c1 = nn.Conv2d(cin, w, 3, padding=1)
            self.norm = nn.InstanceNorm2d(w, affine=True)
            self.head = nn.Conv2d(w, classes, 1)

        def forward(self, x):
            return self.head(F.relu(self.norm(self.c1(x))))

    class GNorm(nn.Module):
        def __init__(self, cin=3, w=8, classes=2):
            super().__init__()
            self.c1 = nn.Conv2d(cin, w, 3, padding=1)
            self.norm = nn.GroupNorm(2, w)
            self.head = nn.Conv2d(w, classes, 1)

        def forward(self, x):
            return self.head(F.silu(self.norm(self.c1(x))))

    def spec(name, factory, channels, sizes, kinds, **kw):
        def build(seed=0, factory=factory):
            torch.manual_seed(seed)
            return _randomize(factory(), seed)
        return name, NetSpec(name, build, channels, tuple(sizes), frozenset(kinds), **kw)

    return dict([
        spec("unet_same", lambda: UNet(3, 2, base=4, depth=4), 3, [(48, 64), (32, 80)],
             {"Conv", "ConvTranspose", "Pool", "Concat"}, tile=(16, 32)),
        spec("unet_valid", lambda: UNet(1, 2, base=4, depth=2, padding="valid", bn=False), 1,
             [(60, 60), (76, 92)], {"Conv", "ConvTranspose", "Pool", "Concat", "CropLike"}, tile=(8, 12)),
        spec("unet_bilinear", lambda: UNet(3, 2, base=4, depth=3, up="bilinear"), 3, [(40, 56), (24, 32)],
             {"Conv", "Resize", "Pool", "Concat"}, tile=(16, 24)),
        spec("unet_bilinear_ac", lambda: UNet(3, 2, base=4, depth=3, up="bilinear", align_corners=True), 3,
             [(40, 56), (24, 32)], {"Conv", "Resize", "Pool", "Concat"}, tile=(16, 24)),
        spec("dilated", lambda: Dilated(), 3, [(45, 52), (33, 31)], {"Conv", "Unary"}, tile=(16, 20)),
        spec("resnet_fcn", lambda: ResNetFCN(), 3, [(48, 64), (32, 48)],
             {"Conv", "Pool", "Binary", "ConvTranspose", "Resize"}, tile=(16, 32)),
        spec("dwsep", lambda: DWSep(), 3, [(32, 40), (18, 22)],
             {"Conv", "Unary", "Binary", "Resize", "Concat"}, tile=(8, 16)),
        spec("reflect", lambda: Reflect(), 3, [(29, 41), (20, 33)], {"Conv", "Unary"}, tile=(8, 8)),
        spec("zoo", lambda: Zoo(), 3, [(30, 38), (23, 17)],
             {"Conv", "PRelu", "Unary", "Binary", "Pool", "Resize", "Pad", "Softmax"}, tile=(8, 16)),
        spec("se_gap", lambda: SE(), 3, [(20, 28)], {"Conv", "GlobalPool", "Binary", "Softmax"},
             tileable=False, whole_image_kind="GlobalPool"),
        spec("se_mean", lambda: SE(mean=True), 3, [(20, 28)], {"Conv", "GlobalPool", "Binary", "Softmax"},
             tileable=False, whole_image_kind="GlobalPool"),
        spec("instnorm", lambda: INorm(), 3, [(20, 28)], {"Conv", "Norm"},
             tileable=False, whole_image_kind="Norm"),
        spec("groupnorm", lambda: GNorm(), 3, [(20, 28)], {"Conv", "Norm"},
             tileable=False, whole_image_kind="Norm"),
    ])


@pytest.fixture(scope="session")
def torch_nets() -> dict[str, NetSpec]:
    pytest.importorskip("torch")
    return _nets()


def export_bytes(module, example, *, dynamo: bool = False, dynamic: bool = True, opset: int = 17) -> bytes:
    """Export ``module`` to ONNX bytes with H and W dynamic (or fixed at the example size)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kw = {}
            if dynamic:
                h, w = torch.export.Dim("h", min=8), torch.export.Dim("w", min=8)
                kw["dynamic_shapes"] = {"x": {2: h, 3: w}}
            prog = torch.onnx.export(module, (example,), None, input_names=["x"], output_names=["y"],
                                     opset_version=max(opset, 18), dynamo=True, verbose=False, **kw)
            return prog.model_proto.SerializeToString()
        f = io.BytesIO()
        torch.onnx.export(module, (example,), f, input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamo=False,
                          dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "oh", 3: "ow"}} if dynamic else None)
        return f.getvalue()


@pytest.fixture(scope="session")
def export_onnx():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    return export_bytes


@pytest.fixture(scope="session")
def reference_onnx(torch_nets):
    """``reference_onnx(name, dynamo=False, dynamic=True) -> (module, onnx_bytes)``, cached
    for the session so the import and reference tests share one export per network."""
    pytest.importorskip("onnx")
    cache: dict = {}

    def get(name: str, *, dynamo: bool = False, dynamic: bool = True):
        key = (name, dynamo, dynamic)
        if key not in cache:
            import torch

            spec = torch_nets[name]
            net = cache.setdefault((name,), spec.build(0))
            example = torch.zeros((1, spec.channels) + spec.sizes[0])
            cache[key] = export_bytes(net, example, dynamo=dynamo, dynamic=dynamic)
        return cache[(name,)], cache[key]

    return get


# ----------------------------------------------------------------------------- graph reference


def eval_graph(graph, x):
    """Evaluate a hirestile Graph on one (C, H, W) image with plain torch ops in float64.

    The slow, obvious reference for the importer's tests: it reads only the graph
    IR (ops, attributes, params), so an import can be checked against ONNX Runtime
    and PyTorch without the engine.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hirestile import graph as G

    def t(a):
        return torch.as_tensor(np.asarray(a, np.float64))

    def act(y, fn, alpha):
        if fn == "relu":
            return torch.relu(y)
        if fn == "leaky_relu":
            return torch.where(y > 0, y, y * alpha)
        assert not fn, fn
        return y

    def pad(y, pads, mode, value=0.0):
        top, left, bottom, right = pads
        if mode in ("reflect", "replicate", "edge"):
            pos = [max(v, 0) for v in (left, right, top, bottom)]
            y = F.pad(y[None], pos, mode="replicate" if mode == "edge" else mode)[0]
            h, w = y.shape[1:]
            return y[:, -min(top, 0):h + min(bottom, 0), -min(left, 0):w + min(right, 0)]
        return F.pad(y, (left, right, top, bottom), value=value)

    def pool(y, op, out):
        c, h, w = y.shape
        idx = []
        for a, (n, no) in enumerate(((h, out[1]), (w, out[2]))):
            o = np.arange(no)[:, None]
            j = np.arange(op.kernel[a])[None, :]
            r = op.stride[a] * o - op.pads[a] + op.dilation[a] * j
            inside_pad = (r >= -op.pads[a]) & (r < n + op.pads[a + 2])
            idx.append((r, (r >= 0) & (r < n), inside_pad))
        (ry, vy, py), (rx, vx, px) = idx
        g = y[:, np.clip(ry, 0, h - 1)][:, :, :, np.clip(rx, 0, w - 1)]  # (C, Ho, kh, Wo, kw)
        valid = torch.as_tensor(vy[:, :, None, None] & vx[None, None])
        if op.mode == "max":
            return torch.where(valid, g, torch.tensor(-np.inf, dtype=g.dtype)).amax(dim=(2, 4))
        s = torch.where(valid, g, torch.zeros((), dtype=g.dtype)).sum(dim=(2, 4))
        if op.count_include_pad:
            cnt = (py[:, :, None, None] & px[None, None]).sum(axis=(1, 3))
        else:
            cnt = valid.numpy().sum(axis=(1, 3))
        return s / torch.as_tensor(cnt, dtype=s.dtype)

    vals = {graph.input: t(x)}
    for n in graph.nodes:
        op, ins, prm = n.op, [vals[i] for i in n.inputs], n.params
        y = ins[0]
        if isinstance(op, G.Conv):
            mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[op.pad_mode]
            y = pad(y, op.pads, mode)
            y = F.conv2d(y[None], t(prm["w"]), t(prm["b"]), op.stride, 0, op.dilation, op.groups)[0]
            y = act(y, op.act, op.alpha)
        elif isinstance(op, G.ConvTranspose):
            full = F.conv_transpose2d(y[None], t(prm["w"]), None, op.stride, 0, 0, op.groups, op.dilation)[0]
            full = F.pad(full, (0, op.output_padding[1], 0, op.output_padding[0]))
            hf, wf = full.shape[1:]
            y = full[:, op.pads[0]:hf - op.pads[2], op.pads[1]:wf - op.pads[3]] + t(prm["b"])[:, None, None]
            y = act(y, op.act, op.alpha)
        elif isinstance(op, G.Pool):
            y = pool(y, op, op.out_shape([tuple(y.shape)]))
        elif isinstance(op, G.Resize):
            shp = tuple(y.shape)
            out = op.out_shape([shp])
            ty = op.taps(0, np.arange(out[1]), shp[1], out[1])
            tx = op.taps(1, np.arange(out[2]), shp[2], out[2])
            if op.mode == "nearest":
                y = y[:, ty[0]][:, :, tx[0]]
            else:
                ly, lx = t(ty[2])[None, :, None], t(tx[2])[None, None, :]
                rows0, rows1 = y[:, ty[0]], y[:, ty[1]]
                top = rows0[:, :, tx[0]] * (1 - lx) + rows0[:, :, tx[1]] * lx
                bot = rows1[:, :, tx[0]] * (1 - lx) + rows1[:, :, tx[1]] * lx
                y = top * (1 - ly) + bot * ly
        elif isinstance(op, G.Unary):
            p0, p1 = op.p0, op.p1
            y = {
                "identity": lambda v: v, "relu": torch.relu, "leaky_relu": lambda v: torch.where(v > 0, v, v * p0),
                "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "gelu": F.gelu,
                "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
                "hard_sigmoid": lambda v: torch.clamp(p0 * v + p1, 0, 1),
                "hard_swish": F.hardswish, "clip": lambda v: torch.clamp(v, p0, p1),
                "elu": lambda v: F.elu(v, p0), "softplus": F.softplus, "exp": torch.exp, "abs": torch.abs,
                "neg": torch.neg, "sqrt": torch.sqrt, "log": torch.log, "reciprocal": torch.reciprocal,
                "mish": F.mish, "erf": torch.erf,
            }[op.fn](y)
        elif isinstance(op, G.PRelu):
            s = t(prm["slope"])[:, None, None]
            y = torch.where(y > 0, y, y * s)
        elif isinstance(op, G.Affine):
            y = y * t(prm["scale"])[:, None, None] + t(prm["shift"])[:, None, None]
        elif isinstance(op, G.Binary):
            f = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "max": torch.maximum,
                 "min": torch.minimum, "pow": torch.pow}[op.fn]
            if len(ins) == 2:
                y = f(ins[0], ins[1])
            else:
                c = t(prm["const"])[:, None, None]
                y = f(c, y) if op.const_left else f(y, c)
        elif isinstance(op, G.Concat):
            y = torch.cat(ins, 0)
        elif isinstance(op, G.Slice):
            b = [op.bounds(a, s) for a, s in enumerate(y.shape)]
            y = y[b[0][0]:b[0][1], b[1][0]:b[1][1], b[2][0]:b[2][1]]
        elif isinstance(op, G.CropLike):
            shapes = [tuple(v.shape) for v in ins]
            oy, ox = op.offset(0, shapes), op.offset(1, shapes)
            y = y[:, oy:oy + shapes[1][1], ox:ox + shapes[1][2]]
        elif isinstance(op, G.Pad):
            y = pad(y, op.amounts(tuple(y.shape)), op.mode, op.value)
        elif isinstance(op, G.Softmax):
            y = torch.softmax(y, 0)
        elif isinstance(op, G.GlobalPool):
            y = y.mean(dim=(1, 2), keepdim=True)
        elif isinstance(op, G.Norm):
            y = F.group_norm(y[None], op.groups, t(prm["scale"]), t(prm["bias"]), op.eps)[0]
        else:
            raise NotImplementedError(op.kind)
        vals[n.name] = y
    return vals[graph.output].numpy()


@pytest.fixture(scope="session")
def graph_eval():
    pytest.importorskip("torch")
    return eval_graph
