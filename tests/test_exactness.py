"""The exactness contract: tiled == full-frame, bit for bit, for any size, tile and origin.

Networks are built directly on the graph IR (no torch needed); test_reference.py
checks the same families against PyTorch and ONNX Runtime.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hirestile
from hirestile.contract import InputContract
from hirestile.graph import (INPUT, Affine, Binary, Conv, ConvTranspose, Graph, Node, Pad, Pool, Resize,
                             Slice, Softmax, Unary)
from hirestile.model import Model
from hirestile.models.unet import unet


class Net:
    """A tiny graph builder with random weights."""

    def __init__(self, cin, seed=0):
        self.nodes, self.rng, self.cin, self.n = [], np.random.default_rng(seed), cin, 0
        self.ch = {INPUT: cin}

    def _add(self, op, inputs, params=None, c=None):
        self.n += 1
        name = f"{op.kind.lower()}{self.n}"
        self.nodes.append(Node(name, op, tuple(inputs), params or {}))
        self.ch[name] = c if c is not None else self.ch[inputs[0]]
        return name

    def conv(self, x, cout, k=3, s=1, d=1, p=None, groups=1, mode="zeros", bias=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        cin = self.ch[x]
        pads = (d * (kh - 1) // 2, d * (kw - 1) // 2) * 2 if p is None else ((p,) * 4 if isinstance(p, int) else p)
        w = (self.rng.standard_normal((cout, cin // groups, kh, kw)) * np.sqrt(2 / (cin // groups * kh * kw))).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1 * bias).astype(np.float32)
        op = Conv(kernel=(kh, kw), stride=(s, s), dilation=(d, d), pads=pads, groups=groups, cin=cin, cout=cout,
                  pad_mode=mode)
        return self._add(op, [x], {"w": w, "b": b}, cout)

    def bn(self, x):
        c = self.ch[x]
        return self._add(Affine(), [x], {"scale": self.rng.uniform(0.5, 1.5, c).astype(np.float32),
                                         "shift": self.rng.uniform(-0.3, 0.3, c).astype(np.float32)})

    def act(self, x, fn="relu", p0=0.0, p1=0.0):
        return self._add(Unary(fn=fn, p0=p0, p1=p1), [x])

    def add(self, a, b):
        return self._add(Binary(fn="add"), [a, b])

    def up(self, x, cout, k=2, s=2, p=0, op_pad=0):
        cin = self.ch[x]
        w = (self.rng.standard_normal((cin, cout, k, k)) / np.sqrt(cin)).astype(np.float32)
        return self._add(ConvTranspose(kernel=(k, k), stride=(s, s), pads=(p,) * 4, output_padding=(op_pad,) * 2,
                                       cin=cin, cout=cout), [x], {"w": w, "b": np.zeros(cout, np.float32)}, cout)

    def model(self, out, pad_to=1):
        g = Graph(nodes=tuple(self.nodes), output=out, in_channels=self.cin)
        return Model(graph=g, contract=InputContract(channels=self.cin, scale="none", pad_to=pad_to))


def dilated_net():
    n = Net(2)
    x = INPUT
    for d in (1, 2, 4, 8, 16):
        x = n.act(n.bn(n.conv(x, 6, d=d)), "leaky_relu", 0.1)
    return n.model(n.conv(x, 3, k=1))


def resnet_fcn():
    n = Net(3, seed=1)
    x = n.act(n.bn(n.conv(INPUT, 8, k=7, s=2, p=3)))
    x = n._add(Pool(mode="max", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1)), [x])
    for cout in (8, 12):
        stride = 1 if cout == 8 else 2
        y = n.act(n.bn(n.conv(x, cout, s=stride)))
        y = n.bn(n.conv(y, cout))
        short = x if stride == 1 and n.ch[x] == cout else n.conv(x, cout, k=1, s=stride, p=0)
        x = n.act(n.add(y, short))
    x = n.conv(x, 4, k=1, p=0)
    x = n._add(Resize(mode="bilinear", scale=(4.0, 4.0), coord="pytorch_half_pixel"), [x])
    x = n.up(x, 4, k=3, s=2, p=1, op_pad=1)
    return n.model(x)


def depthwise_net():
    n = Net(3, seed=2)
    x = n.act(n.conv(INPUT, 8), "hard_swish")
    x = n.act(n.conv(x, 8, groups=8), "silu")               # depthwise
    x = n.act(n.conv(x, 16, k=1, p=0), "gelu")              # pointwise
    x = n.act(n.conv(x, 16, s=2, groups=16), "hard_sigmoid", 0.2, 0.5)
    x = n._add(Pool(mode="avg", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True,
                    count_include_pad=False), [x])
    x = n.conv(x, 4, k=1, p=0)
    x = n._add(Resize(mode="nearest", scale=(4.0, 4.0)), [x])
    return n.model(n._add(Softmax(), [x]))


def reflect_net():
    n = Net(1, seed=3)
    x = n.act(n.conv(INPUT, 4, mode="reflect"), "tanh")
    x = n.act(n.conv(x, 4, k=5, mode="replicate"), "sigmoid")
    x = n._add(Pad(pads=(2, 1, 0, 3), mode="reflect"), [x])
    x = n.conv(x, 4, k=(2, 3), p=0)                          # even and asymmetric kernel
    x = n._add(Pad(pads=(1, 0, 2, 1), mode="edge"), [x])
    x = n._add(Pool(mode="avg", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1)), [x])
    x = n._add(Slice(starts=(0, 1, 2), stops=(3, -1, None)), [x])
    return n.model(n.act(x, "clip", -0.5, 0.5))


NETS = {
    "unet_same_bn_transpose": lambda: unet(in_channels=3, classes=3, base=4, depth=4),
    "unet_valid": lambda: unet(in_channels=1, classes=2, base=2, depth=3, padding="valid", bn=False),
    "unet_bilinear": lambda: unet(in_channels=2, classes=2, base=4, depth=3, up="bilinear"),
    "unet_nearest": lambda: unet(in_channels=1, classes=2, base=4, depth=2, up="nearest", bn=False),
    "dilated": dilated_net,
    "resnet_fcn": resnet_fcn,
    "depthwise": depthwise_net,
    "reflect": reflect_net,
    # 16-channel multiples: the decoders' concats are left unbuilt (executor.fused_concats)
    "unet16_fused_concat": lambda: unet(in_channels=3, classes=2, base=16, depth=2),
    "unet16_valid_fused": lambda: unet(in_channels=1, classes=2, base=16, depth=2, padding="valid", bn=False),
}
MIN_SIZE = {"unet_valid": 92, "unet16_valid_fused": 44}
_built: dict = {}


def _net(name):
    if name not in _built:
        _built[name] = NETS[name]()
    return _built[name]


sizes = st.one_of(st.integers(1, 70), st.sampled_from([2, 3, 5, 7, 11, 13, 17, 31, 37, 53, 61, 67]))


def draw_case(name, data):
    """A network of NETS, a random image of a drawn size (odd and prime sizes included), its
    full-frame output, and a drawn tile size and grid origin."""
    m = _net(name)
    lo = MIN_SIZE.get(name, 1)
    h = data.draw(st.integers(lo, lo + 30) if lo > 1 else sizes, label="h")
    w = data.draw(st.integers(lo, lo + 30) if lo > 1 else sizes, label="w")
    x = np.random.default_rng(h * 100 + w).standard_normal((m.graph.in_channels, h, w)).astype(np.float32)
    full = hirestile.predict(m, x)
    oh, ow = full.shape[1:]
    ty = data.draw(st.integers(1, max(oh, 1)), label="tile_y")
    tx = data.draw(st.integers(1, max(ow, 1)), label="tile_x")
    origin = (data.draw(st.integers(0, 40), label="oy"), data.draw(st.integers(0, 40), label="ox"))
    return m, x, full, (ty, tx), origin


@pytest.mark.parametrize("name", sorted(NETS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tiled_equals_full_frame(name, data):
    m, x, full, tile, origin = draw_case(name, data)
    assert np.array_equal(full, hirestile.predict(m, x, tile=tile, tile_origin=origin))


def test_align_corners_resize_tiles_exactly():
    n = Net(2, seed=4)
    x = n.act(n.conv(INPUT, 4))
    x = n._add(Pool(mode="max", kernel=(2, 2), stride=(2, 2), ceil_mode=True), [x])
    x = n._add(Resize(mode="bilinear", scale=(2.0, 2.0), coord="align_corners"), [x])
    m = n.model(n.conv(x, 2, k=1, p=0))
    for h, w in [(9, 13), (31, 17), (2, 40)]:
        img = np.random.default_rng(h).standard_normal((2, h, w)).astype(np.float32)
        full = hirestile.predict(m, img)
        for t in (1, 4, 7):
            assert np.array_equal(full, hirestile.predict(m, img, tile=t, tile_origin=(t // 2, 1)))
        # (2, 40): every output row sits on input row 0 (no period, Report.tile_step 1)
        for stream in (True, False):
            assert np.array_equal(full, hirestile.predict(m, img, stream=stream))


def test_region_smaller_than_stride_at_every_phase():
    """One-pixel tiles at every phase of a depth-4 UNet (the parity of pools and ups)."""
    m = _net("unet_same_bn_transpose")
    x = np.random.default_rng(7).standard_normal((3, 19, 23)).astype(np.float32)
    full = hirestile.predict(m, x)
    assert np.array_equal(full, hirestile.predict(m, x, tile=(1, 5), tile_origin=(0, 3)))
