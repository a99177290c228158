"""Tests for hirestile.kernels.conv: NumPy/PyTorch references and determinism.

The determinism tests are the exactness contract (docs/architecture.md, section 1):
a sub-window's output equals the corresponding crop of the whole-window output
bit for bit, and 1 vs 2 threads give the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hirestile.kernels import conv

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- references

def _apply_act(y, act, alpha):
    if act == 1:
        return np.maximum(y, 0.0)
    if act == 2:
        return np.where(y >= 0, y, y * alpha)
    return y


def ref_conv2d(x, w, bias, stride=(1, 1), dilation=(1, 1), groups=1, act=0, alpha=0.0):
    """Slow, obvious float64 conv: loop over kernel taps, einsum over channels."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    Hi, Wi, Ci = x.shape
    kh, kw, cig, Co = w.shape
    (sy, sx), (dy, dx) = stride, dilation
    Ho = max(0, (Hi - dy * (kh - 1) - 1) // sy + 1)
    Wo = max(0, (Wi - dx * (kw - 1) - 1) // sx + 1)
    cog = Co // groups
    y = np.zeros((Ho, Wo, Co))
    if Ho == 0 or Wo == 0:
        return y
    for ky in range(kh):
        for kx in range(kw):
            xs = x[ky * dy: ky * dy + sy * (Ho - 1) + 1: sy,
                   kx * dx: kx * dx + sx * (Wo - 1) + 1: sx, :]
            for g in range(groups):
                y[:, :, g * cog:(g + 1) * cog] += np.einsum(
                    "hwc,cd->hwd", xs[:, :, g * cig:(g + 1) * cig],
                    w[ky, kx, :, g * cog:(g + 1) * cog])
    return _apply_act(y + bias, act, alpha)


def ref_conv_transpose2d(x, w, bias, stride=(1, 1), dilation=(1, 1), groups=1,
                         offset=(0, 0), out_shape=(0, 0), act=0, alpha=0.0):
    """Scatter form: input (iy, ix) tap (ky, kx) lands on r = sy*iy + dy*ky - ty."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    Hi, Wi, Ci = x.shape
    kh, kw, _, cog = w.shape
    cig = Ci // groups
    (sy, sx), (dy, dx), (ty, tx) = stride, dilation, offset
    Ho, Wo = out_shape
    y = np.zeros((Ho, Wo, cog * groups))
    for ky in range(kh):
        r = sy * np.arange(Hi) + dy * ky - ty
        ri = np.nonzero((r >= 0) & (r < Ho))[0]
        for kx in range(kw):
            c = sx * np.arange(Wi) + dx * kx - tx
            cj = np.nonzero((c >= 0) & (c < Wo))[0]
            for g in range(groups):
                contrib = np.einsum("hwc,cd->hwd",
                                    x[np.ix_(ri, cj, np.arange(g * cig, (g + 1) * cig))],
                                    w[ky, kx, g * cig:(g + 1) * cig])
                y[np.ix_(r[ri], c[cj], np.arange(g * cog, (g + 1) * cog))] += contrib
    return _apply_act(y + bias, act, alpha)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _close(a, ref, rtol=1e-5):
    assert a.shape == ref.shape
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    err = float(np.abs(a.astype(np.float64) - ref).max(initial=0.0))
    assert err <= rtol * scale, f"max err {err:.3g} vs {rtol} * {scale:.3g}"


# --------------------------------------------------------------------------- conv2d vs reference

CASES = [
    # (Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups)
    (9, 11, 3, 5, 3, 3, (1, 1), (1, 1), 1),
    (13, 7, 4, 6, 1, 1, (1, 1), (1, 1), 1),
    (17, 19, 8, 8, 3, 3, (2, 2), (1, 1), 1),
    (16, 16, 6, 4, 2, 2, (2, 2), (1, 1), 1),
    (15, 20, 5, 7, 1, 7, (1, 1), (1, 1), 1),
    (20, 15, 5, 7, 7, 1, (1, 1), (1, 1), 1),
    (23, 23, 3, 4, 7, 7, (1, 1), (1, 1), 1),
    (21, 22, 4, 4, 3, 3, (1, 1), (2, 3), 1),
    (18, 19, 8, 12, 3, 3, (1, 2), (1, 1), 4),
    (12, 14, 8, 8, 3, 3, (1, 1), (1, 1), 8),      # depthwise
    (12, 14, 4, 12, 3, 3, (2, 1), (1, 1), 4),     # depthwise, multiplier 3
    (11, 13, 6, 6, 4, 4, (3, 2), (1, 2), 2),
    (12, 12, 32, 32, 3, 3, (1, 1), (1, 1), 1),
    (13, 11, 16, 16, 3, 3, (1, 1), (1, 1), 1),   # thin 3x3: Winograd F(4x4) (conv.WINO_MIN)
    (13, 11, 16, 24, 3, 3, (1, 1), (1, 1), 1),   # Co not in 16s: blocked
    (15, 13, 16, 16, 3, 3, (2, 1), (1, 1), 1),   # strided, Co in 16s: blocked
    (11, 14, 16, 32, 3, 3, (1, 1), (1, 1), 1),   # smallest Winograd shape
    (10, 10, 64, 64, 3, 3, (1, 1), (1, 1), 1),
    (9, 9, 32, 2, 1, 1, (1, 1), (1, 1), 1),       # segmentation head (dot route)
    (13, 12, 48, 5, 3, 2, (2, 1), (1, 2), 1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", [0, 1, 2])
def test_conv2d_matches_reference(case, act):
    Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups = case
    rng = np.random.default_rng(hash((case, act)) % 2**32)
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci // groups, Co), _rand(rng, Co)
    y = conv.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups, act=act, alpha=0.1)
    _close(y, ref_conv2d(x, w, b, stride, dilation, groups, act, 0.1))


def test_conv2d_out_buffer_and_empty():
    rng = np.random.default_rng(0)
    x, w, b = _rand(rng, 8, 9, 3), _rand(rng, 3, 3, 3, 4), _rand(rng, 4)
    out = np.full((6, 7, 4), np.nan, np.float32)
    y = conv.conv2d(x, w, b, out=out)
    assert y is out
    _close(out, ref_conv2d(x, w, b))
    assert conv.conv2d(x[:2], w, b).shape == (0, 7, 4)
    with pytest.raises(ValueError):
        conv.conv2d(x, w, b, out=np.empty((6, 7, 5), np.float32))
    with pytest.raises(ValueError):
        conv.conv2d(x, w, b, groups=2)


@SETTINGS
@given(st.data())
def test_conv2d_random_shapes(data):
    groups = data.draw(st.sampled_from([1, 1, 2, 3]))
    cig = data.draw(st.integers(1, 5))
    cog = data.draw(st.integers(1, 5))
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    dilation = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    Hi, Wi = data.draw(st.integers(1, 23)), data.draw(st.integers(1, 23))
    act = data.draw(st.sampled_from([0, 1, 2]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    Ci, Co = cig * groups, cog * groups
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, cig, Co), _rand(rng, Co)
    y = conv.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups, act=act, alpha=0.2)
    _close(y, ref_conv2d(x, w, b, stride, dilation, groups, act, 0.2))


# --------------------------------------------------------------------------- transposed conv

TCASES = [
    # (Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups, offset, out_shape)
    (5, 6, 4, 3, 2, 2, (2, 2), (1, 1), 1, (0, 0), (10, 12)),
    (5, 6, 4, 3, 3, 3, (2, 2), (1, 1), 1, (1, 1), (9, 11)),
    (7, 5, 6, 4, 4, 4, (2, 3), (1, 1), 2, (1, 2), (14, 15)),
    (6, 6, 3, 5, 3, 3, (1, 1), (2, 1), 1, (2, 1), (8, 8)),
    (6, 7, 4, 8, 3, 2, (3, 2), (2, 3), 4, (0, 3), (17, 13)),
    (9, 9, 32, 16, 2, 2, (2, 2), (1, 1), 1, (0, 0), (18, 18)),
    (9, 10, 24, 32, 2, 2, (2, 2), (1, 1), 1, (1, 0), (19, 21)),   # blocked route, ragged
    (6, 7, 8, 48, 2, 3, (3, 3), (1, 1), 1, (2, 1), (20, 22)),     # kernel < stride
    (5, 5, 16, 64, 1, 1, (2, 2), (1, 1), 1, (0, 1), (9, 9)),
    # kernel == stride: the paired route (kw taps side by side), odd offsets, ragged ends
    (7, 9, 32, 16, 2, 2, (2, 2), (1, 1), 1, (1, 1), (13, 17)),
    (6, 5, 3, 48, 2, 2, (2, 2), (1, 1), 1, (2, 3), (11, 9)),
    (5, 7, 16, 32, 3, 3, (3, 3), (1, 1), 1, (4, 2), (13, 21)),
    (4, 6, 8, 16, 2, 3, (2, 3), (1, 1), 1, (0, 5), (9, 16)),
]


@pytest.mark.parametrize("case", TCASES)
@pytest.mark.parametrize("act", [0, 1, 2])
def test_conv_transpose2d_matches_reference(case, act):
    Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups, offset, out_shape = case
    rng = np.random.default_rng(hash((case, act)) % 2**32)
    x = _rand(rng, Hi, Wi, Ci)
    w = _rand(rng, kh, kw, Ci, Co // groups)
    b = _rand(rng, Co)
    y = conv.conv_transpose2d(x, w, b, stride=stride, dilation=dilation, groups=groups,
                              offset=offset, out_shape=out_shape, act=act, alpha=0.1)
    _close(y, ref_conv_transpose2d(x, w, b, stride, dilation, groups, offset, out_shape,
                                   act, 0.1))


# --------------------------------------------------------------------------- vs PyTorch

def _torch_conv(x, w, b, stride, dilation, groups, padding=0):
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(x).permute(2, 0, 1)[None]
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    y = torch.nn.functional.conv2d(tx, tw, torch.from_numpy(b), stride=stride,
                                   dilation=dilation, groups=groups, padding=padding)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("case", CASES[:12] + [(40, 37, 64, 48, 3, 3, (1, 1), (1, 1), 1)])
def test_conv2d_matches_torch(case):
    Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups = case
    rng = np.random.default_rng(7)
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci // groups, Co), _rand(rng, Co)
    ref = _torch_conv(x, w, b, stride, dilation, groups).astype(np.float64)
    _close(conv.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups), ref)


@pytest.mark.parametrize("case", [
    # (Hi, Wi, Ci, Co, k, stride, dilation, groups, padding, output_padding)
    (5, 6, 8, 4, 2, 2, 1, 1, 0, 0),
    (5, 6, 8, 4, 3, 2, 1, 1, 1, 1),
    (6, 5, 6, 9, 4, 3, 2, 3, 2, 1),
    (7, 7, 4, 4, 3, 1, 1, 1, 1, 0),
])
def test_conv_transpose2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    Hi, Wi, Ci, Co, k, s, d, g, p, op = case
    rng = np.random.default_rng(3)
    x, b = _rand(rng, Hi, Wi, Ci), _rand(rng, Co)
    wt = _rand(rng, Ci, Co // g, k, k)  # PyTorch layout
    y_t = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x).permute(2, 0, 1)[None], torch.from_numpy(wt), torch.from_numpy(b),
        stride=s, padding=p, output_padding=op, groups=g, dilation=d)[0].permute(1, 2, 0).numpy()
    w = np.ascontiguousarray(wt.transpose(2, 3, 0, 1))
    y = conv.conv_transpose2d(x, w, b, stride=s, dilation=d, groups=g, offset=(p, p),
                              out_shape=y_t.shape[:2])
    _close(y, y_t.astype(np.float64))


# --------------------------------------------------------------------------- determinism

def _conv_in_interval(o0, o1, k, s, d):
    """Input interval [i0, i1) an output interval [o0, o1) reads (docs/architecture.md, section 2)."""
    return s * o0, s * (o1 - 1) + d * (k - 1) + 1


def _sub_interval(draw, n, step):
    """A region [a, b) of [0, n) with origin and size multiples of step (or ending at n)."""
    nt = -(-n // step)
    a = draw(st.integers(0, nt - 1)) * step
    b = min(n, a + draw(st.integers(1, nt - a // step)) * step)
    return a, b


def _check_conv2d_subwindows(data, Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups, act):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci // groups, Co), _rand(rng, Co)
    kw_ = dict(stride=stride, dilation=dilation, groups=groups, act=act, alpha=0.1)
    full = conv.conv2d(x, w, b, **kw_)
    Ho, Wo = full.shape[:2]
    size = [max((n - d * (k - 1) - 1) // s + 1, 0) for n, k, s, d in zip((Hi, Wi), (kh, kw), stride, dilation)]
    assert full.shape == (*size, Co)
    if Ho == 0 or Wo == 0:                      # no window fits: nothing to cut into sub-windows
        return
    my, mx = conv.conv_tile(kh, kw, stride, dilation, groups, Ci, Co)
    for _ in range(3):
        r0, r1 = _sub_interval(data.draw, Ho, my)
        c0, c1 = _sub_interval(data.draw, Wo, mx)
        i0, i1 = _conv_in_interval(r0, r1, kh, stride[0], dilation[0])
        j0, j1 = _conv_in_interval(c0, c1, kw, stride[1], dilation[1])
        sub = conv.conv2d(x[i0:i1, j0:j1], w, b, **kw_)
        assert np.array_equal(sub, full[r0:r1, c0:c1]), (r0, r1, c0, c1)


@SETTINGS
@given(st.data())
def test_conv2d_subwindow_bitwise_random(data):
    groups = data.draw(st.sampled_from([1, 1, 2]))
    Ci = groups * data.draw(st.integers(1, 6))
    Co = groups * data.draw(st.integers(1, 20))
    k = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    s = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    Hi, Wi = data.draw(st.integers(5, 41)), data.draw(st.integers(5, 41))
    _check_conv2d_subwindows(data, Hi, Wi, Ci, Co, k[0], k[1], s, d, groups,
                             data.draw(st.sampled_from([0, 1, 2])))


@pytest.mark.parametrize("Ci,Co", [(3, 32), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64),
                                   (48, 80), (128, 128), (32, 3), (24, 40)])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv3x3_subwindow_bitwise(Ci, Co, data):
    """UNet-like 3x3 'same' layers through whatever route they take (odd/prime sizes)."""
    Hi = data.draw(st.sampled_from([23, 37, 41, 50]))
    Wi = data.draw(st.sampled_from([19, 31, 43, 66]))
    _check_conv2d_subwindows(data, Hi, Wi, Ci, Co, 3, 3, (1, 1), (1, 1), 1, 1)


@SETTINGS
@given(st.data())
def test_conv_transpose2d_subwindow_bitwise(data):
    """Executor convention: window = global input rows [i0, i1) (clipped to the map),
    ty = o0 + pad - sy*i0; the sub-output equals the full-output crop bitwise."""
    g = data.draw(st.sampled_from([1, 1, 2]))
    Ci = g * data.draw(st.integers(1, 5))
    Co = g * data.draw(st.sampled_from([1, 3, 8, 16, 32]))
    k = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    p = (data.draw(st.integers(0, d[0] * (k[0] - 1))), data.draw(st.integers(0, d[1] * (k[1] - 1))))
    Hi, Wi = data.draw(st.integers(1, 17)), data.draw(st.integers(1, 17))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, k[0], k[1], Ci, Co // g), _rand(rng, Co)
    Ho = (Hi - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + 1
    Wo = (Wi - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + 1
    assume(Ho > 0 and Wo > 0)                   # padding larger than the full output: no such layer
    kw_ = dict(stride=s, dilation=d, groups=g, act=1)
    full = conv.conv_transpose2d(x, w, b, offset=p, out_shape=(Ho, Wo), **kw_)
    _close(full, ref_conv_transpose2d(x, w, b, s, d, g, p, (Ho, Wo), 1))
    for _ in range(3):
        r0, r1 = _sub_interval(data.draw, Ho, 1)
        c0, c1 = _sub_interval(data.draw, Wo, 1)
        win = []
        for o0, o1, kk, ss, dd, pp, n in ((r0, r1, k[0], s[0], d[0], p[0], Hi),
                                           (c0, c1, k[1], s[1], d[1], p[1], Wi)):
            i0 = max(0, (o0 + pp - dd * (kk - 1)) // ss)        # floor: keeps ty >= 0
            i1 = min(n, (o1 - 1 + pp) // ss + 1)
            win.append((i0, max(i0, i1), o0 + pp - ss * i0))
        (i0, i1, ty), (j0, j1, tx) = win
        sub = conv.conv_transpose2d(x[i0:i1, j0:j1], w, b, offset=(ty, tx),
                                    out_shape=(r1 - r0, c1 - c0), **kw_)
        assert np.array_equal(sub, full[r0:r1, c0:c1]), (r0, r1, c0, c1)


@pytest.mark.parametrize("Ci,Co,k,s,d", [(3, 32, 3, 1, 1), (5, 20, 2, 2, 1), (24, 64, 3, 1, 2),
                                         (32, 48, 1, 1, 1), (16, 24, 3, 1, 1)])
def test_direct_routes_agree_bitwise(Ci, Co, k, s, d):
    """blocked / generic direct share one sum order (ky, kx, ci): same bits."""
    from hirestile.kernels import _conv_direct
    rng = np.random.default_rng(5)
    x, w, b = _rand(rng, 19, 23, Ci), _rand(rng, k, k, Ci, Co), _rand(rng, Co)
    y = conv.conv2d(x, w, b, stride=s, dilation=d, act=1)
    y2 = np.empty_like(y)
    _conv_direct.conv2d_direct(x, w, b, y2, s, s, d, d, 1, 1, 0.0)
    assert np.array_equal(y, y2)


@pytest.mark.parametrize("k,s", [(2, 2), (2, 3)])
def test_transpose_routes_agree_bitwise(k, s):
    """The blocked up-conv routes (kernel == stride: paired; kernel < stride: per tap) and
    the generic gather give the same bits."""
    from hirestile.kernels import _conv_direct
    rng = np.random.default_rng(6)
    x, w, b = _rand(rng, 9, 11, 24), _rand(rng, k, k, 24, 32), _rand(rng, 32)
    y = conv.conv_transpose2d(x, w, b, stride=s, offset=(1, 0), out_shape=(19, 23), act=2, alpha=0.3)
    y2 = np.empty_like(y)
    _conv_direct.conv_transpose2d_direct(x, w, b, y2, s, s, 1, 1, 1, 1, 0, 2, 0.3)
    assert np.array_equal(y, y2)


@SETTINGS
@given(st.data())
def test_conv_transpose2d_paired_route(data):
    """kernel == stride, Co % 16 == 0 (UNet up-convs): the paired route against the float64
    reference and bitwise against the generic gather (same sum order per element), for
    every offset residue, ragged window ends, input shorter than the output asks for."""
    from hirestile.kernels import _conv_direct
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    Ci = data.draw(st.sampled_from([1, 3, 16, 21, 32]))
    Co = data.draw(st.sampled_from([16, 32, 48, 64]))
    Hi, Wi = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 13))
    ty, tx = data.draw(st.integers(0, 2 * kh)), data.draw(st.integers(0, 2 * kw))
    Ho, Wo = data.draw(st.integers(1, kh * Hi + 2)), data.draw(st.integers(1, kw * Wi + 2))
    act = data.draw(st.sampled_from([0, 1, 2]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci, Co), _rand(rng, Co)
    y = conv.conv_transpose2d(x, w, b, stride=(kh, kw), offset=(ty, tx), out_shape=(Ho, Wo),
                              act=act, alpha=0.3)
    _close(y, ref_conv_transpose2d(x, w, b, (kh, kw), (1, 1), 1, (ty, tx), (Ho, Wo), act, 0.3))
    y2 = np.empty_like(y)
    _conv_direct.conv_transpose2d_direct(x, w, b, y2, kh, kw, 1, 1, 1, ty, tx, act, 0.3)
    assert np.array_equal(y, y2)


@pytest.mark.parametrize("Ci,Co", [(32, 16), (64, 32), (24, 48), (128, 64)])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_upconv2x2_subwindow_bitwise(Ci, Co, data):
    """2x2 stride-2 up-conv (paired route): every sub-region, at every alignment (odd
    origins cut a pair of output columns), gives the full output's bits."""
    Hi, Wi = data.draw(st.integers(1, 19)), data.draw(st.integers(1, 23))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, 2, 2, Ci, Co), _rand(rng, Co)
    Ho, Wo = 2 * Hi, 2 * Wi
    full = conv.conv_transpose2d(x, w, b, stride=2, out_shape=(Ho, Wo), act=1)
    _close(full, ref_conv_transpose2d(x, w, b, (2, 2), (1, 1), 1, (0, 0), (Ho, Wo), 1))
    for _ in range(4):
        r0, r1 = _sub_interval(data.draw, Ho, 1)
        c0, c1 = _sub_interval(data.draw, Wo, 1)
        i0, i1, j0, j1 = r0 // 2, (r1 + 1) // 2, c0 // 2, (c1 + 1) // 2
        sub = conv.conv_transpose2d(x[i0:i1, j0:j1], w, b, stride=2,
                                    offset=(r0 - 2 * i0, c0 - 2 * j0),
                                    out_shape=(r1 - r0, c1 - c0), act=1)
        assert np.array_equal(sub, full[r0:r1, c0:c1]), (r0, r1, c0, c1)


@pytest.mark.parametrize("Hi,Wi", [(3, 3), (3, 8), (4, 5), (5, 4), (6, 7), (7, 6)])
def test_conv3x3_tiny_windows(Hi, Wi):
    """Windows smaller than one Winograd patch (zero-filled past the window)."""
    rng = np.random.default_rng(Hi * 10 + Wi)
    x, w, b = _rand(rng, Hi, Wi, 16), _rand(rng, 3, 3, 16, 32), _rand(rng, 32)
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 32) == (4, 4)
    _close(conv.conv2d(x, w, b, act=1), ref_conv2d(x, w, b, act=1))


def test_weight_cache_read_only(monkeypatch):
    """Read-only weights are packed once and reused; results equal the writeable path."""
    from hirestile.kernels import _conv_wino4
    calls = []
    real = _conv_wino4.weight_transform
    monkeypatch.setattr(_conv_wino4, "weight_transform", lambda w: calls.append(1) or real(w))
    rng = np.random.default_rng(8)
    x, w, b = _rand(rng, 12, 14, 32), _rand(rng, 3, 3, 32, 32), _rand(rng, 32)
    y1 = conv.conv2d(x, w, b)
    conv.conv2d(x, w, b)
    assert len(calls) == 2                      # writeable: transformed every call
    w.setflags(write=False)
    y2 = conv.conv2d(x, w, b)
    y3 = conv.conv2d(x, w, b)
    assert len(calls) == 3                      # read-only: transformed once
    assert np.array_equal(y1, y2) and np.array_equal(y2, y3)
    key = id(w)
    del w
    import gc
    gc.collect()
    assert key not in conv._packed


@pytest.mark.parametrize("Ci,Co,k,s,g", [(3, 32, 3, 1, 1), (32, 32, 3, 1, 1), (64, 64, 3, 1, 1),
                                         (128, 96, 3, 1, 1), (16, 16, 3, 1, 16),
                                         (8, 12, 4, 2, 2), (32, 2, 1, 1, 1)])
def test_conv2d_threads_bitwise(numba_threads, Ci, Co, k, s, g):
    rng = np.random.default_rng(11)
    x, w, b = _rand(rng, 45, 53, Ci), _rand(rng, k, k, Ci // g, Co), _rand(rng, Co)
    res = []
    for n in (1, 2):
        numba_threads(n)
        res.append(conv.conv2d(x, w, b, stride=s, groups=g, act=1))
    assert np.array_equal(res[0], res[1])


def test_conv_transpose2d_threads_bitwise(numba_threads):
    rng = np.random.default_rng(12)
    x, w, b = _rand(rng, 21, 30, 64), _rand(rng, 2, 2, 64, 32), _rand(rng, 32)
    res = []
    for n in (1, 2):
        numba_threads(n)
        res.append(conv.conv_transpose2d(x, w, b, stride=2, out_shape=(42, 60)))
    assert np.array_equal(res[0], res[1])


def test_generated_microkernels_match_their_generator():
    """_conv_mk.py is committed generated code: it must be what _conv_gen.py writes."""
    from pathlib import Path

    from hirestile.kernels import _conv_gen

    path = Path(_conv_gen.__file__).with_name("_conv_mk.py")
    assert path.read_text() == _conv_gen.source(), "run: python kernels/_conv_gen.py"


# --------------------------------------------------------------------------- windows of wider buffers
# The executor hands kernels views of its node buffers (a consumer's window inside its
# producer's padded buffer) and has them write into the interior of the next buffer:
# same bits as on C-contiguous copies, and nothing outside the output window touched.

def _embed(rng, a, pad):
    """``a`` placed inside a larger random buffer, returned as the window view and the buffer."""
    (t, btm, l, r) = pad
    big = _rand(rng, a.shape[0] + t + btm, a.shape[1] + l + r, a.shape[2])
    big[t:t + a.shape[0], l:l + a.shape[1]] = a
    return big[t:t + a.shape[0], l:l + a.shape[1]], big


@pytest.mark.parametrize("case", CASES)
def test_conv2d_reads_and_writes_windows_of_wider_buffers(case):
    Hi, Wi, Ci, Co, kh, kw, stride, dilation, groups = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci // groups, Co), _rand(rng, Co)
    want = conv.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups, act=1)
    xv, _ = _embed(rng, x, (2, 1, 3, 5))
    assert not xv.flags.c_contiguous
    ov, big = _embed(rng, np.zeros_like(want), (1, 3, 2, 1))
    before = big.copy()
    got = conv.conv2d(xv, w, b, stride=stride, dilation=dilation, groups=groups, act=1, out=ov)
    assert got is ov
    assert np.array_equal(ov, want)
    mask = np.ones(big.shape[:2], bool)
    mask[1:1 + want.shape[0], 2:2 + want.shape[1]] = False
    assert np.array_equal(big[mask], before[mask])        # the frame around the window untouched


@pytest.mark.parametrize("case", [(6, 7, 32, 16, 2, 2, (2, 2), (1, 3)), (5, 9, 16, 32, 2, 2, (2, 2), (0, 1)),
                                  (6, 5, 16, 16, 2, 1, (2, 3), (1, 2)), (4, 6, 5, 7, 3, 3, (2, 2), (1, 1))])
def test_conv_transpose2d_reads_and_writes_windows(case):
    Hi, Wi, Ci, Co, kh, kw, stride, offset = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, kh, kw, Ci, Co), _rand(rng, Co)
    shape = (stride[0] * Hi - offset[0], stride[1] * Wi - offset[1])
    want = conv.conv_transpose2d(x, w, b, stride=stride, offset=offset, out_shape=shape, act=2, alpha=0.2)
    xv, _ = _embed(rng, x, (1, 2, 3, 1))
    ov, big = _embed(rng, np.zeros_like(want), (2, 1, 1, 4))
    before = big.copy()
    conv.conv_transpose2d(xv, w, b, stride=stride, offset=offset, out_shape=shape, act=2, alpha=0.2, out=ov)
    assert np.array_equal(ov, want)
    mask = np.ones(big.shape[:2], bool)
    mask[2:2 + want.shape[0], 1:1 + want.shape[1]] = False
    assert np.array_equal(big[mask], before[mask])


def test_conv2d_refuses_an_out_whose_pixels_are_not_packed():
    rng = np.random.default_rng(5)
    x, w, b = _rand(rng, 8, 9, 16), _rand(rng, 3, 3, 16, 4), _rand(rng, 4)
    with pytest.raises(ValueError, match="packed"):
        conv.conv2d(x, w, b, out=np.empty((6, 7, 8), np.float32)[:, :, :4])
    y = conv.conv2d(x[:, :, ::2], w[:, :, ::2], b)           # any input layout still works (copied)
    _close(y, ref_conv2d(np.ascontiguousarray(x[:, :, ::2]), np.ascontiguousarray(w[:, :, ::2]), b))


# --------------------------------------------------------------------------- Winograd F(4x4, 3x3)
# The default route of 3x3 stride-1 convs with Ci, Co multiples of 16 (Ci * Co >= 512); tile
# step (4, 4). Each check also runs F(2x2) (conv.WINO4 = False), which is no longer reached
# by default but stays as the comparison route of the benchmarks. The checks run with
# conv.WINO_MIN = 256 (the default), so 16 -> 16 goes through Winograd too.

W4_SHAPES = [(16, 16), (16, 32), (32, 32), (32, 48), (64, 16), (48, 80), (128, 64)]


@pytest.fixture(params=[True, False], ids=["wino4", "wino2"])
def wino(request, monkeypatch):
    monkeypatch.setattr(conv, "WINO4", request.param)
    monkeypatch.setattr(conv, "WINO_MIN", 256)
    return "wino4" if request.param else "wino2"


def test_thin_3x3_route_by_default(monkeypatch):
    assert conv.WINO_MIN == 256
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 16) == (4, 4)          # 16 -> 16: Winograd F(4x4)
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 32) == (4, 4)
    monkeypatch.setattr(conv, "WINO_MIN", 512)
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 16) == (1, 1)          # the benchmarks' switch: blocked


def test_wino4_route_and_tile_step(wino):
    assert conv._route(3, 3, (1, 1), (1, 1), 1, 32, 64) == wino
    assert conv.conv_tile(3, 3, 1, 1, 1, 32, 64) == ((4, 4) if wino == "wino4" else (2, 2))
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 16) == ((4, 4) if wino == "wino4" else (2, 2))  # WINO_MIN 256
    assert conv.conv_tile(3, 3, 1, 1, 1, 16, 24) == (1, 1)          # Co not in 16s: blocked
    assert conv.conv_tile(3, 3, 2, 1, 1, 32, 64) == (1, 1)          # strided: blocked


@pytest.mark.parametrize("Ci,Co", W4_SHAPES)
@pytest.mark.parametrize("rows,cols", [(0, 1), (1, 2), (2, 3), (3, 0)])
def test_wino_matches_reference_all_alignments(wino, Ci, Co, rows, cols):
    """Output sizes of every residue mod 4 (partial last tiles in both axes), odd sizes."""
    rng = np.random.default_rng(Ci * 1000 + Co * 10 + rows * 4 + cols)
    Hi, Wi = 13 + rows + 2, 17 + cols + 2 + 4 * (Ci == 16)
    x, w, b = _rand(rng, Hi, Wi, Ci), _rand(rng, 3, 3, Ci, Co), _rand(rng, Co)
    for act in (0, 1, 2):
        y = conv.conv2d(x, w, b, act=act, alpha=0.1)
        _close(y, ref_conv2d(x, w, b, act=act, alpha=0.1))


@pytest.mark.parametrize("Ci,Co", [(16, 32), (32, 32), (64, 48), (128, 128)])
@settings(max_examples=6, deadline=None,   # the fixture only sets the route: same for every input
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wino_subwindow_bitwise(wino, Ci, Co, data):
    """A window's output equals the crop of the whole window's output when the crop sits
    on the route's grid (origin and size multiples of the tile step, or ending at the end)."""
    Hi = data.draw(st.sampled_from([9, 23, 30, 41]))
    Wi = data.draw(st.sampled_from([11, 19, 36, 43]))
    _check_conv2d_subwindows(data, Hi, Wi, Ci, Co, 3, 3, (1, 1), (1, 1), 1, data.draw(st.sampled_from([0, 1, 2])))


@pytest.mark.parametrize("Ci,Co", [(32, 32), (64, 128), (256, 64)])
def test_wino_threads_bitwise(numba_threads, wino, Ci, Co):
    rng = np.random.default_rng(13)
    x, w, b = _rand(rng, 58, 301, Ci), _rand(rng, 3, 3, Ci, Co), _rand(rng, Co)
    res = []
    for n in (1, 2):
        numba_threads(n)
        res.append(conv.conv2d(x, w, b, act=1))
    assert np.array_equal(res[0], res[1])


def test_wino_tiles_per_work_item_do_not_change_bits(monkeypatch, wino):
    """The number of tiles a work item holds (pick_nt) is a speed choice only."""
    from hirestile.kernels import _conv_wino, _conv_wino4
    rng = np.random.default_rng(14)
    x, w, b = _rand(rng, 27, 250, 32), _rand(rng, 3, 3, 32, 48), _rand(rng, 48)
    want = conv.conv2d(x, w, b)
    for nt in (1, 5, 7, 24, 96):
        mod = _conv_wino4 if wino == "wino4" else _conv_wino
        monkeypatch.setattr(mod, "pick_nt", lambda Ci, Co, ntx, nt=nt: nt)
        assert np.array_equal(conv.conv2d(x, w, b), want), nt


@pytest.mark.parametrize("Hi,Wi", [(3, 3), (3, 9), (4, 6), (5, 5), (6, 6), (7, 8), (8, 7), (9, 9), (9, 4)])
def test_wino_tiny_windows(wino, Hi, Wi):
    """Windows smaller than one or two Winograd patches (zero-filled past the window)."""
    rng = np.random.default_rng(Hi * 10 + Wi)
    x, w, b = _rand(rng, Hi, Wi, 32), _rand(rng, 3, 3, 32, 32), _rand(rng, 32)
    _close(conv.conv2d(x, w, b, act=1), ref_conv2d(x, w, b, act=1))


@pytest.mark.parametrize("case", [(14, 19, 32, 48, 3, 3, (1, 1), (1, 1), 1),
                                  (9, 10, 64, 32, 3, 3, (1, 1), (1, 1), 1),
                                  (20, 7, 16, 32, 3, 3, (1, 1), (1, 1), 1)])
def test_wino_reads_and_writes_windows_of_wider_buffers(wino, case):
    test_conv2d_reads_and_writes_windows_of_wider_buffers(case)


def test_wino4_weight_transform_is_float64_rounded_once():
    """U = G g G^T computed in float64 and rounded once (a function of w alone)."""
    from hirestile.kernels import _conv_wino4 as w4
    rng = np.random.default_rng(15)
    w = _rand(rng, 3, 3, 16, 32)
    U = w4._wt(w, w4.G, np.empty((36, 16, 32), np.float32))
    ref = np.einsum("ak,klcd,bl->abcd", w4.G, w.astype(np.float64), w4.G).reshape(36, 16, 32)
    assert np.abs(U - ref).max() <= np.abs(ref).max() * 2.0 ** -23
    # the transform pair is exact: A^T [(G g G^T) * (B^T d B)] A is the 3x3 correlation
    d = rng.standard_normal((6, 6))
    g = rng.standard_normal((3, 3))
    y = w4.AT @ ((w4.G @ g @ w4.G.T) * (w4.BT @ d @ w4.BT.T)) @ w4.AT.T
    want = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(y, want, atol=1e-12)


# --------------------------------------------------------------------------- conv of an unbuilt concat

@SETTINGS
@given(st.data())
def test_conv2d_concat_reads_two_windows_as_their_concatenation(data):
    """conv2d_concat((a, b)) gives the bits of conv2d(concatenate((a, b))) -- which the executor's
    unfused path computes -- for any window size (odd, prime, smaller than a 6x6 patch), any
    channel split of multiples of 16, parts that are windows of wider buffers; and is within
    float32 rounding of the float64 reference."""
    Hi = data.draw(st.integers(3, 23), label="Hi")
    Wi = data.draw(st.integers(3, 29), label="Wi")
    ca, cb = data.draw(st.sampled_from([(16, 16), (16, 32), (32, 16), (64, 64), (32, 96)]), label="parts")
    co = data.draw(st.sampled_from([16, 32, 48]), label="Co")
    act = data.draw(st.sampled_from([0, 1, 2]), label="act")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    a, b = _rand(rng, Hi, Wi, ca), _rand(rng, Hi, Wi, cb)
    w, bias = _rand(rng, 3, 3, ca + cb, co), _rand(rng, co)
    assert conv.concat_fusable(w.shape, (ca, cb))
    want = conv.conv2d(np.concatenate((a, b), axis=2), w, bias, act=act, alpha=0.1)
    av, _ = _embed(rng, a, (data.draw(st.integers(0, 3)), 1, data.draw(st.integers(0, 5)), 2))
    bv, _ = _embed(rng, b, (2, 0, 1, data.draw(st.integers(0, 4))))
    got = conv.conv2d_concat((av, bv), w, bias, act=act, alpha=0.1)
    assert np.array_equal(got, want)
    _close(got, ref_conv2d(np.concatenate((a, b), axis=2), w, bias, act=act, alpha=0.1), rtol=2e-5)


def test_conv2d_concat_only_where_fusable():
    rng = np.random.default_rng(0)
    a = _rand(rng, 8, 8, 16)
    assert not conv.concat_fusable((3, 3, 24, 16), (16, 8))        # 8 channels: not 16-lane blocks
    assert not conv.concat_fusable((1, 1, 32, 16), (16, 16))       # 1x1: not the Winograd route
    assert not conv.concat_fusable((3, 3, 48, 16), (16, 16, 16))   # three parts
    with pytest.raises(ValueError, match="conv2d_concat"):
        conv.conv2d_concat((a, _rand(rng, 8, 8, 8)), _rand(rng, 3, 3, 24, 16), np.zeros(16, np.float32))
    with pytest.raises(ValueError, match="conv2d_concat"):
        conv.conv2d_concat((a, _rand(rng, 7, 8, 16)), _rand(rng, 3, 3, 32, 16), np.zeros(16, np.float32))
