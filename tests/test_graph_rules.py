"""The graph's index rules against PyTorch, and the region rule's consistency.

``Resize.taps`` (which inputs and weights an output reads), ``window_size``
(pooling output sizes) and ``Pool.divisors`` (average-pool divisors) are the
one implementation of each rule: the analyzer's region rules and the executor
both use them. Here they are checked against PyTorch directly (the taps) and
end to end through one-node graphs run by :func:`hirestile.predict`, full-frame
and tiled.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import hirestile
from hirestile.graph import INPUT, Graph, Node, Pool, Resize, window_size

#: PyTorch's interpolation modes as graph ops
TORCH_RESIZE = {
    "nearest": dict(mode="nearest", coord="asymmetric", nearest="floor"),
    "nearest-exact": dict(mode="nearest", coord="half_pixel", nearest="round_prefer_ceil"),
    "bilinear": dict(mode="bilinear", coord="half_pixel"),
    "bilinear-align": dict(mode="bilinear", coord="align_corners"),
}


def image(c, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((c, h, w)).astype(np.float32)


def one_node(op, channels):
    return Graph(nodes=(Node("y", op, (INPUT,)),), output="y", in_channels=channels)


def assert_close(got, want, rtol=1e-6):
    """|got - want| <= rtol * (|want| + max|want|) elementwise."""
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    bound = rtol * (np.abs(want) + np.abs(want).max())
    assert (err <= bound).all(), f"max err {err.max():.3g}"


def run(op, x, want, exact, tile=(5, 7)):
    """predict on the one-node graph equals ``want`` (bitwise or to 1e-6); tiled equals full-frame."""
    g = one_node(op, x.shape[0])
    got = hirestile.predict(g, x)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        assert_close(got, want)
    assert np.array_equal(hirestile.predict(g, x, tile=tile), got)


def interpolate(x, mode, size, scale):
    import torch

    kw = {"align_corners": mode == "bilinear-align"} if mode.startswith("bilinear") else {}
    return torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, scale_factor=scale,
                         mode=mode.split("-")[0] if mode != "nearest-exact" else mode, **kw)[0].numpy()


def resize_op(mode, size, scale, out_hw):
    return Resize(scale=(scale, scale) if scale else (1.0, 1.0), size=None if scale else tuple(out_hw),
                  **TORCH_RESIZE[mode])


# ---------------------------------------------------------------- resize


RESIZE_CASES = [((5, 7), (10, 14), None), ((5, 7), (13, 4), None), ((6, 9), None, 2.0), ((6, 9), None, 1.7),
                ((8, 8), (3, 5), None), ((9, 10), (4, 3), None), ((1, 4), (3, 9), None), ((6, 6), (6, 7), None),
                ((7, 5), None, 0.6), ((11, 13), (29, 31), None)]


@pytest.mark.parametrize("hw,size,scale", RESIZE_CASES)
@pytest.mark.parametrize("mode", sorted(TORCH_RESIZE))
def test_resize_matches_torch(torch, mode, hw, size, scale):
    x = image(3, *hw, seed=1)
    want = interpolate(x, mode, size, scale)
    op = resize_op(mode, size, scale, want.shape[1:])
    assert op.out_shape([x.shape]) == want.shape
    run(op, x, want, exact=mode.startswith("nearest"))


def torch_taps(mode, n_in, size, scale):
    """PyTorch's resize along one axis as an (out, in) weight matrix: resize the one-hot rows."""
    eye = np.eye(n_in, dtype=np.float32).reshape(n_in, 1, n_in, 1)
    y = interpolate(eye.reshape(n_in, n_in, 1), mode, size and (size, 1), scale and (scale, 1.0))
    return y.reshape(n_in, -1).T


def graph_taps(op, n_in, n_out):
    t = op.taps(0, np.arange(n_out), n_in, n_out)
    w = np.zeros((n_out, n_in), np.float32)
    if op.mode == "nearest":
        w[np.arange(n_out), t[0]] = 1
        return w
    i0, i1, lam = t
    np.add.at(w, (np.arange(n_out), i0), np.float32(1) - lam)
    np.add.at(w, (np.arange(n_out), i1), lam)
    return w


@pytest.mark.parametrize("mode", sorted(TORCH_RESIZE))
def test_resize_taps_are_torchs(torch, mode):
    """The taps (indices and float32 weights) are PyTorch's, bit for bit, for sizes and scale factors."""
    cases = [(n, m, None) for n in (1, 2, 3, 5, 7, 12, 31) for m in (1, 2, 3, 4, 6, 9, 14, 23, 61)]
    cases += [(n, None, s) for n in (3, 6, 10, 17, 100) for s in (0.3, 0.5, 0.7, 1.5, 1.7, 2.0, 2.5, 3.3, 4.0)
              if int(n * s) and int(n * s) != n]  # a scale factor that keeps the size: see Resize.taps
    for n_in, size, scale in cases:
        want = torch_taps(mode, n_in, size, scale)
        n_out = want.shape[0]
        op = resize_op(mode, size, scale, (n_out, n_out))
        assert np.array_equal(graph_taps(op, n_in, n_out), want), (n_in, n_out, scale)


def test_resize_onnx_only_modes():
    # 2x down, half-pixel: source 2o + 0.5, a tie for the rounding modes
    o = np.arange(4)
    for nearest, want in [("floor", 2 * o), ("ceil", 2 * o + 1), ("round_prefer_floor", 2 * o),
                          ("round_prefer_ceil", 2 * o + 1)]:
        op = Resize(mode="nearest", scale=(0.5, 0.5), coord="half_pixel", nearest=nearest)
        assert not op.torch_mode or nearest == "round_prefer_ceil"
        assert np.array_equal(op.taps(0, o, 8, 4)[0], want), nearest
    # asymmetric bilinear: source o / 2; the last outputs read the last input only
    i0, i1, lam = Resize(mode="bilinear", coord="asymmetric").taps(0, np.arange(8), 4, 8)
    assert np.array_equal(i0, [0, 0, 1, 1, 2, 2, 3, 3]) and np.array_equal(i1, [1, 1, 2, 2, 3, 3, 3, 3])
    assert np.array_equal(lam, np.float32([0, 0.5] * 4))
    # pytorch_half_pixel to one output reads input 0 (ONNX), align_corners too
    for coord in ("pytorch_half_pixel", "align_corners"):
        assert Resize(mode="bilinear", size=(1, 1), coord=coord).taps(0, np.arange(1), 5, 1)[0][0] == 0


RESIZE_OPS = [Resize(mode="nearest", coord=c, nearest=n) for c in ("asymmetric", "half_pixel", "align_corners")
              for n in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")] + \
             [Resize(mode="bilinear", coord=c) for c in ("asymmetric", "half_pixel", "pytorch_half_pixel",
                                                         "align_corners")]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(RESIZE_OPS), st.integers(1, 40), st.integers(1, 90), st.data())
def test_resize_region_rule_is_the_hull_of_the_taps(op, n_in, n_out, data):
    scale = data.draw(st.sampled_from([None, 0.5, 1.3, 1.7, 2.0, 3.0, 4.0]))
    if scale is None:
        op = Resize(mode=op.mode, size=(n_out, n_out), coord=op.coord, nearest=op.nearest)
    else:
        op = Resize(mode=op.mode, scale=(scale, scale), coord=op.coord, nearest=op.nearest)
        n_out = op.out_shape([(1, n_in, n_in)])[1]
        assume(n_out >= 1)                      # downscaled to nothing: no output to ask about
    o0 = data.draw(st.integers(0, n_out - 1))
    o1 = data.draw(st.integers(o0 + 1, n_out))
    full = op.taps(0, np.arange(n_out), n_in, n_out)
    part = op.taps(0, np.arange(o0, o1), n_in, n_out)
    for f, p in zip(full, part):  # an output's taps do not depend on the range asked
        assert np.array_equal(f[o0:o1], p)
    idx = np.concatenate(part[:2])
    assert idx.min() >= 0 and idx.max() < n_in
    for t in part[:2]:
        assert (np.diff(t) >= 0).all()  # monotone
    got = op.in_interval(0, 0, (o0, o1), [(1, n_in, 1)], (1, n_out, 1))
    assert got == (int(idx.min()), int(idx.max()) + 1)


# ---------------------------------------------------------------- pooling


def test_pool_output_size_matches_torch(torch):
    F = torch.nn.functional
    x = torch.zeros(1, 1, 1, 1)
    for n in range(1, 13):
        for k in range(1, 5):
            for s in range(1, 4):
                for d in (1, 2):
                    for p in range(k // 2 + 1):
                        for ceil in (False, True):
                            want = 0
                            try:
                                want = F.max_pool2d(x.expand(1, 1, n, 1), (k, 1), (s, 1), (p, 0), (d, 1),
                                                    ceil_mode=ceil).shape[2]
                            except RuntimeError:  # "output size is too small"
                                pass
                            assert window_size(n, k, s, d, p, p, ceil) == want, (n, k, s, d, p, ceil)


@pytest.mark.parametrize("shape", [(9, 8), (12, 13), (5, 4)])
@pytest.mark.parametrize("k,s,p,d,ceil", [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 2, 1, 2, True),
                                          (3, 3, 1, 1, True), (2, 1, 1, 1, False), (5, 3, 2, 1, True)])
def test_max_pool_matches_torch(torch, shape, k, s, p, d, ceil):
    x = image(3, *shape, seed=3)
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x)[None], k, s, p, d, ceil_mode=ceil)[0].numpy()
    op = Pool(mode="max", kernel=(k, k), stride=(s, s), dilation=(d, d), pads=(p,) * 4, ceil_mode=ceil)
    run(op, x, want, exact=True, tile=(2, 3))


@pytest.mark.parametrize("shape", [(9, 8), (12, 13), (6, 7)])
@pytest.mark.parametrize("k,s,p,ceil", [(2, 2, 0, False), (3, 2, 1, True), (3, 3, 1, True),
                                        (3, 1, 1, False), (5, 3, 2, True), (4, 3, 2, False)])
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool_matches_torch(torch, shape, k, s, p, ceil, cip):
    x = image(3, *shape, seed=7)
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(x)[None], k, s, p, ceil_mode=ceil,
                                          count_include_pad=cip)[0].numpy()
    op = Pool(mode="avg", kernel=(k, k), stride=(s, s), pads=(p,) * 4, ceil_mode=ceil, count_include_pad=cip)
    run(op, x, want, exact=False, tile=(2, 3))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_ceil_mode_window_past_a_small_input(torch, mode):
    """ceil_mode: a window that starts inside the input may run past it, even past an input
    smaller than the kernel (1 x 3 with a 2 x 2 kernel gives 1 x 2)."""
    x = image(2, 1, 3, seed=5)
    t, F = torch.from_numpy(x)[None], torch.nn.functional
    want = (F.max_pool2d(t, 2, 2, ceil_mode=True) if mode == "max" else
            F.avg_pool2d(t, 2, 2, ceil_mode=True))[0].numpy()
    assert want.shape == (2, 1, 2)
    run(Pool(mode=mode, ceil_mode=True), x, want, exact=mode == "max", tile=(1, 1))


def test_avg_pool_divisors():
    # 7 inputs, kernel 3, stride 2, padding 1 before and 2 after, ceil_mode: windows
    # [-1, 2), [1, 4), [3, 6), [5, 8) clipped to the padded input [-1, 9)
    op = Pool(mode="avg", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 2, 2), ceil_mode=True)
    assert op.out_shape([(1, 7, 7)])[1] == 4
    assert op.divisors(0, 0, 4, 7).tolist() == [3, 3, 3, 3]
    assert op.divisors(1, 1, 3, 7).tolist() == [3, 3]
    op = Pool(mode="avg", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 2, 2), ceil_mode=True, count_include_pad=False)
    assert op.divisors(0, 0, 4, 7).tolist() == [2, 3, 3, 2]
