"""Shared fixtures: the PyTorch reference networks and ONNX export helpers.

The networks are small (a few channels per layer) so that the reference tests
run in seconds on two cores, but each one exercises the structure it is named
for (docs/architecture.md, section 1, issue 2 "Tests that must exist"). torch is imported
lazily: ``torch_nets`` skips where torch is absent, and nothing at module level
needs it.

Fixtures
--------
torch
    the ``torch`` module (skips the test where PyTorch is absent).
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
numba_threads
    ``numba_threads(n)`` sets Numba's thread count for the rest of a test (at least 2
    are available: this file raises ``NUMBA_NUM_THREADS`` on one-core machines).
reference_onnx
    ``reference_onnx(name, dynamo=False, dynamic=True) -> (module, bytes)``: one
    seeded module per network and its export, cached for the session.
graph_eval
    :func:`eval_graph`, a float64 NumPy evaluation of a hirestile Graph that implements
    every op from its ONNX / PyTorch definition (the importer's reference, independent
    of the engine and of the IR's own region and index rules).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np
import pytest

from npref import unary


# The thread-count tests compare 1 against 2 Numba threads. Numba's pool has as many
# threads as usable cores unless NUMBA_NUM_THREADS says otherwise, read when numba is
# first imported (after this file): make it at least 2, so that a one-core runner
# exercises the parallel split too instead of comparing one thread with one thread.
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if int(os.environ.get("NUMBA_NUM_THREADS") or _cores) < 2:
    os.environ["NUMBA_NUM_THREADS"] = "2"


@pytest.fixture
def numba_threads():
    """``set(n)``: run Numba's parallel kernels on ``n`` threads from now on in this test
    (the count is restored afterwards). Fails, never skips, when Numba's pool is smaller."""
    import numba

    before = numba.get_num_threads()

    def set_threads(n: int) -> None:
        assert numba.config.NUMBA_NUM_THREADS >= n, (
            f"Numba started with NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}; this test needs {n} "
            "(tests/conftest.py raises it to 2 unless numba was imported before it)")
        numba.set_num_threads(n)
        assert numba.get_num_threads() == n

    yield set_threads
    numba.set_num_threads(before)


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
def torch():
    """PyTorch, a reference from the [test] extra: the tests that ask for it skip where it
    is absent (test_packaging fails then in CI), the others still run."""
    return pytest.importorskip("torch")


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
    return export_bytes


@pytest.fixture(scope="session")
def reference_onnx(torch_nets):
    """``reference_onnx(name, dynamo=False, dynamic=True) -> (module, onnx_bytes)``, cached
    for the session so the import and reference tests share one export per network."""
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
#
# An engine-independent float64 NumPy evaluation of a hirestile Graph. Each op is
# written from the ONNX operator / PyTorch documentation and reads only the op's
# attribute values (kernel, stride, pads, mode, ...) and the node's params: no
# graph.py rule (taps, bounds, offset, amounts, out_shape, window_size, divisors),
# no analyzer, executor or kernel code. Images are (C, H, W).


def _np_pad(x, top, left, bottom, right, mode, value=0.0):
    """torch.nn.functional.pad / ONNX Pad on (C, H, W): positive amounts add rows and
    columns ("constant" with ``value``, "reflect" without repeating the edge,
    "edge" = "replicate" repeating it), negative amounts remove them."""
    pos = [(0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))]
    if mode == "constant":
        x = np.pad(x, pos, mode="constant", constant_values=value)
    else:
        x = np.pad(x, pos, mode={"reflect": "reflect", "edge": "edge", "replicate": "edge"}[mode])
    h, w = x.shape[1:]
    return x[:, -min(top, 0):h + min(bottom, 0), -min(left, 0):w + min(right, 0)]


def _np_conv(x, w, b, stride, dilation, groups):
    """ONNX Conv / torch conv2d on an already padded (C, H, W): cross-correlation,
    y[o, i, j] = b[o] + sum_{c in group(o), u, v} w[o, c, u, v] x[c, s*i + d*u, s*j + d*v]."""
    co, cpg, kh, kw = w.shape
    (sy, sx), (dy, dx) = stride, dilation
    _, h, wd = x.shape
    ho, wo = (h - dy * (kh - 1) - 1) // sy + 1, (wd - dx * (kw - 1) - 1) // sx + 1
    y = np.zeros((co, max(ho, 0), max(wo, 0)))
    opg = co // groups
    for g in range(groups):
        xg, wg = x[g * cpg:(g + 1) * cpg], w[g * opg:(g + 1) * opg]
        for u in range(kh):
            for v in range(kw):
                patch = xg[:, dy * u:dy * u + sy * (ho - 1) + 1:sy, dx * v:dx * v + sx * (wo - 1) + 1:sx]
                y[g * opg:(g + 1) * opg] += np.einsum("oc,chw->ohw", wg[:, :, u, v], patch)
    return y + np.asarray(b, np.float64).reshape(-1, 1, 1)


def _np_conv_transpose(x, w, b, stride, dilation, groups, pads, output_padding):
    """ONNX ConvTranspose / torch conv_transpose2d: input x[c, i, j] adds
    w[c, o, u, v] x[c, i, j] at output (s*i - pad_top + d*u, s*j - pad_left + d*v);
    the output has (n - 1)*s - pad_begin - pad_end + d*(k - 1) + output_padding + 1 rows/cols."""
    ci, opg, kh, kw = w.shape
    (sy, sx), (dy, dx) = stride, dilation
    _, h, wd = x.shape
    full = np.zeros((opg * groups, (h - 1) * sy + dy * (kh - 1) + 1 + output_padding[0],
                     (wd - 1) * sx + dx * (kw - 1) + 1 + output_padding[1]))
    cpg = ci // groups
    for g in range(groups):
        xg, wg = x[g * cpg:(g + 1) * cpg], w[g * cpg:(g + 1) * cpg]
        for u in range(kh):
            for v in range(kw):
                full[g * opg:(g + 1) * opg, dy * u:dy * u + sy * (h - 1) + 1:sy, dx * v:dx * v + sx * (wd - 1) + 1:sx] \
                    += np.einsum("co,chw->ohw", wg[:, :, u, v], xg)
    top, left, bottom, right = pads
    hf, wf = full.shape[1:]
    y = full[:, top:hf - bottom, left:wf - right]
    return y + np.asarray(b, np.float64).reshape(-1, 1, 1)


def _np_pool(x, op):
    """torch max_pool2d / avg_pool2d (and ONNX MaxPool / AveragePool): window o covers
    s*o - pad_begin + d*j, j < k. Output length floor((n + p0 + p1 - d*(k-1) - 1) / s) + 1,
    with ceil_mode rounded up unless that last window would start past the input and
    the begin padding. Max ignores positions outside the input; average divides the sum
    by the window's length clipped to the padded input (count_include_pad) or to the
    input, per axis."""
    c, h, w = x.shape
    windows, divisors = [], []
    for a, n in enumerate((h, w)):
        k, s, d = op.kernel[a], op.stride[a], op.dilation[a]
        p0, p1 = op.pads[a], op.pads[a + 2]
        span = n + p0 + p1 - d * (k - 1) - 1
        no = (-(-span // s) if op.ceil_mode else span // s) + 1
        if op.ceil_mode and (no - 1) * s >= n + p0:
            no -= 1
        starts = [s * o - p0 for o in range(no)]
        windows.append([[t for t in range(st, st + d * k, d) if 0 <= t < n] for st in starts])
        lo, hi = (-p0, n + p1) if op.count_include_pad else (0, n)
        divisors.append([min(st + k, hi) - max(st, lo) for st in starts])
    y = np.empty((c, len(windows[0]), len(windows[1])))
    for i, ry in enumerate(windows[0]):
        for j, rx in enumerate(windows[1]):
            win = x[:, ry][:, :, rx]
            if op.mode == "max":
                y[:, i, j] = win.max(axis=(1, 2)) if win.size else -np.inf
            else:
                assert op.mode == "avg", op.mode
                y[:, i, j] = win.sum(axis=(1, 2)) / (divisors[0][i] * divisors[1][j])
    return y


def _np_resize_axis(op, axis, n_in):
    """Source positions of one axis under ONNX Resize (PyTorch's interpolate modes are
    special cases): output length ``size`` or floor(n * scale); the source coordinate of
    output o, as an exact fraction, is by coordinate_transformation_mode
    half_pixel (o + 1/2)/r - 1/2, pytorch_half_pixel the same (0 when one output),
    align_corners o (n_in - 1)/(n_out - 1), asymmetric o / r, with r the scale (or
    n_out / n_in when a size is given). Nearest rounds it by nearest_mode; linear reads
    floor(x) and floor(x) + 1 with weight x - floor(x), x clamped to [0, n_in - 1].
    Returns (n_out, i0, i1, lambda)."""
    if op.size is not None:
        n_out = int(op.size[axis])
        r = Fraction(n_out, n_in)
    else:
        r = Fraction(float(op.scale[axis]))
        n_out = math.floor(n_in * r)
    i0, i1, lam = [], [], []
    for o in range(n_out):
        if op.coord in ("half_pixel", "pytorch_half_pixel"):
            x = (o + Fraction(1, 2)) / r - Fraction(1, 2)
            if op.coord == "pytorch_half_pixel" and n_out <= 1:
                x = Fraction(0)
        elif op.coord == "align_corners":
            x = Fraction(o * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        else:
            assert op.coord == "asymmetric", op.coord
            x = o / r
        if op.mode == "nearest":
            i = {"floor": math.floor(x), "ceil": math.ceil(x), "round_prefer_floor": math.ceil(x - Fraction(1, 2)),
                 "round_prefer_ceil": math.floor(x + Fraction(1, 2))}[op.nearest]
            i = min(max(i, 0), n_in - 1)
            i0.append(i), i1.append(i), lam.append(0.0)
        else:
            assert op.mode == "bilinear", op.mode
            x = min(max(x, Fraction(0)), Fraction(n_in - 1))
            f = math.floor(x)
            i0.append(f), i1.append(min(f + 1, n_in - 1)), lam.append(float(x - f))
    return n_out, np.array(i0, np.int64), np.array(i1, np.int64), np.array(lam)


def _np_act(y, fn, alpha):
    """A convolution's fused activation ("", "relu", "leaky_relu")."""
    return unary(fn, y, alpha) if fn else y


def eval_graph(graph, x):
    """Evaluate a hirestile Graph on one (C, H, W) image in float64 NumPy.

    The slow, obvious reference for the importer's tests: every op is implemented
    here from its ONNX / PyTorch definition, reading only the op's attributes and
    the node's weights, so an import is checked against ONNX Runtime and PyTorch
    without the engine or the IR's own region and index rules.
    """
    from hirestile import graph as G

    def f64(a):
        return np.asarray(a, np.float64)

    def per_channel(a):
        return f64(a).reshape(-1, 1, 1)

    vals = {graph.input: f64(x)}
    for n in graph.nodes:
        op, ins, prm = n.op, [vals[i] for i in n.inputs], n.params
        y = ins[0]
        if isinstance(op, G.Conv):
            top, left, bottom, right = op.pads
            mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[op.pad_mode]
            y = _np_pad(y, top, left, bottom, right, mode)
            w = f64(prm["w"])
            y = _np_conv(y, w, prm.get("b", np.zeros(w.shape[0])), op.stride, op.dilation, op.groups)
            y = _np_act(y, op.act, op.alpha)
        elif isinstance(op, G.ConvTranspose):
            w = f64(prm["w"])
            y = _np_conv_transpose(y, w, prm.get("b", np.zeros(w.shape[1] * op.groups)), op.stride, op.dilation,
                                   op.groups, op.pads, op.output_padding)
            y = _np_act(y, op.act, op.alpha)
        elif isinstance(op, G.Pool):
            y = _np_pool(y, op)
        elif isinstance(op, G.Resize):
            _, ry0, ry1, ly = _np_resize_axis(op, 0, y.shape[1])
            _, rx0, rx1, lx = _np_resize_axis(op, 1, y.shape[2])
            ly, lx = ly[None, :, None], lx[None, None, :]
            top = y[:, ry0][:, :, rx0] * (1 - lx) + y[:, ry0][:, :, rx1] * lx
            bot = y[:, ry1][:, :, rx0] * (1 - lx) + y[:, ry1][:, :, rx1] * lx
            y = top * (1 - ly) + bot * ly
        elif isinstance(op, G.Unary):
            y = unary(op.fn, y, op.p0, op.p1)
        elif isinstance(op, G.PRelu):
            y = np.where(y > 0, y, y * per_channel(prm["slope"]))
        elif isinstance(op, G.Affine):
            y = y * per_channel(prm["scale"]) + per_channel(prm["shift"])
        elif isinstance(op, G.Binary):
            f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
                 "min": np.minimum, "pow": np.power}[op.fn]
            if len(ins) == 2:
                y = f(ins[0], ins[1])
            else:
                c = per_channel(prm["const"])
                y = f(c, y) if op.const_left else f(y, c)
            y = np.broadcast_to(y, y.shape).copy()
        elif isinstance(op, G.Concat):
            y = np.concatenate(ins, 0)
        elif isinstance(op, G.Slice):
            y = y[tuple(slice(a, b) for a, b in zip(op.starts, op.stops))]
        elif isinstance(op, G.CropLike):
            (h0, w0), (h1, w1) = ins[0].shape[1:], ins[1].shape[1:]
            oy, ox = ((h0 - h1) // 2, (w0 - w1) // 2) if op.anchor == "centre" else (0, 0)
            assert op.anchor in ("centre", "start") and h0 >= h1 and w0 >= w1
            y = y[:, oy:oy + h1, ox:ox + w1]
        elif isinstance(op, G.Pad):
            top, left, bottom, right = op.pads
            if op.multiple > 1:      # pad-to-multiple: bottom/right up to the next multiple
                top, left, bottom, right = 0, 0, -y.shape[1] % op.multiple, -y.shape[2] % op.multiple
            y = _np_pad(y, top, left, bottom, right, op.mode, op.value)
        elif isinstance(op, G.Softmax):
            e = np.exp(y - y.max(axis=0, keepdims=True))
            y = e / e.sum(axis=0, keepdims=True)
        elif isinstance(op, G.GlobalPool):
            y = y.mean(axis=(1, 2), keepdims=True)
        elif isinstance(op, G.Norm):       # group norm (instance norm: groups == channels), biased variance
            c, h, w = y.shape
            g = y.reshape(op.groups, -1)
            g = (g - g.mean(axis=1, keepdims=True)) / np.sqrt(g.var(axis=1, keepdims=True) + op.eps)
            y = g.reshape(c, h, w) * per_channel(prm["scale"]) + per_channel(prm["bias"])
        else:
            raise NotImplementedError(op.kind)
        vals[n.name] = y
    return vals[graph.output]


@pytest.fixture(scope="session")
def graph_eval():
    return eval_graph
