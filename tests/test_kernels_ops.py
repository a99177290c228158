"""Non-convolution kernels against slow NumPy references, PyTorch, and themselves
on sub-windows (the bit-exactness that tiling rests on)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hirestile.graph import Resize
from hirestile.kernels import norm, pointwise, pool, resize
from hirestile.kernels._common import flat as kflat

from npref import unary

F32 = np.float32
HYP = settings(max_examples=25, deadline=None)


def rng(seed=0):
    return np.random.default_rng(seed)


def randx(h, w, c, seed=0, scale=1.0):
    return (rng(seed).standard_normal((h, w, c)) * scale).astype(F32)


def sub_range(draw, n):
    """A drawn (a, b) with 0 <= a < b <= n."""
    a = draw(st.integers(0, n - 1))
    return a, draw(st.integers(a + 1, n))


def assert_close(got, ref, rtol=1e-6, atol_rel=1e-6):
    """|got - ref| <= rtol*|ref| + atol_rel*max|ref| elementwise."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan), "NaN pattern differs"
    got, ref = got[~nan], ref[~nan]
    scale = np.abs(ref).max() if ref.size else 0.0
    err = np.abs(got - ref)
    bad = err > rtol * np.abs(ref) + atol_rel * scale
    assert not bad.any(), f"max err {err.max():.3g}, max|ref| {scale:.3g}, {bad.sum()} bad"


def to_torch(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def from_torch(t):
    return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy())


# **** references ****


def ref_max_pool(x, k, s, d):
    (kh, kw), (sy, sx), (dy, dx) = k, s, d
    hi, wi, c = x.shape
    ho = (hi - dy * (kh - 1) - 1) // sy + 1
    wo = (wi - dx * (kw - 1) - 1) // sx + 1
    out = np.full((ho, wo, c), -np.inf, F32)
    for ky in range(kh):
        for kx in range(kw):
            win = x[ky * dy: ky * dy + sy * (ho - 1) + 1: sy, kx * dx: kx * dx + sx * (wo - 1) + 1: sx]
            out = np.maximum(out, win)
    return out


def ref_avg_pool(x, k, s, cy, cx):
    (kh, kw), (sy, sx) = k, s
    hi, wi, c = x.shape
    ho, wo = (hi - kh) // sy + 1, (wi - kw) // sx + 1
    acc = np.zeros((ho, wo, c))
    for ky in range(kh):
        for kx in range(kw):
            acc += x[ky: ky + sy * (ho - 1) + 1: sy, kx: kx + sx * (wo - 1) + 1: sx]
    return acc / (np.asarray(cy)[:, None, None] * np.asarray(cx)[None, :, None])


def ref_bilinear(x, y0, y1, ly, x0, x1, lx):
    x = x.astype(np.float64)
    ly = ly.astype(np.float64)[:, None, None]
    lx = lx.astype(np.float64)[None, :, None]
    top = x[y0][:, x0] * (1 - lx) + x[y0][:, x1] * lx
    bot = x[y1][:, x0] * (1 - lx) + x[y1][:, x1] * lx
    return top * (1 - ly) + bot * ly


# **** pooling ****


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (13, 17, 8), (4, 11, 33)])
@pytest.mark.parametrize("k,s,d", [((2, 2), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)),
                                   ((3, 2), (2, 1), (2, 3)), ((1, 1), (3, 2), (1, 1))])
def test_max_pool_reference(shape, k, s, d):
    x = randx(*shape, seed=1)
    if shape[0] < d[0] * (k[0] - 1) + 1 or shape[1] < d[1] * (k[1] - 1) + 1:
        assert pool.max_pool2d(x, kernel=k, stride=s, dilation=d).size == 0
        return
    got = pool.max_pool2d(x, kernel=k, stride=s, dilation=d)
    assert got.dtype == F32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref_max_pool(x, k, s, d))


def test_max_pool_nan_and_out():
    x = randx(5, 5, 2, seed=2)
    x[1, 1, 0] = np.nan
    out = np.empty((2, 2, 2), F32)
    got = pool.max_pool2d(x, kernel=2, stride=2, out=out)
    assert got is out
    assert np.isnan(got[0, 0, 0]) and not np.isnan(got[..., 1]).any()


def ref_max_pool_seq(x, k, s, d):
    """Max pooling as the kernels define it, taps in row-major order: ``v if (v > m or v != v) else m``
    (a NaN wins and stays; of equal values such as -0.0 and 0.0 the first tap's stays)."""
    (kh, kw), (sy, sx), (dy, dx) = k, s, d
    hi, wi, c = x.shape
    ho, wo = (hi - dy * (kh - 1) - 1) // sy + 1, (wi - dx * (kw - 1) - 1) // sx + 1
    tap = lambda ky, kx: x[ky * dy: ky * dy + sy * (ho - 1) + 1: sy, kx * dx: kx * dx + sx * (wo - 1) + 1: sx]  # noqa: E731
    m = tap(0, 0).copy()
    for ky in range(kh):
        for kx in range(kw):
            if ky or kx:
                v = tap(ky, kx)
                m = np.where((v > m) | np.isnan(v), v, m)
    return m


@pytest.mark.parametrize("nt", [False, True], ids=["stores", "non-temporal"])
@pytest.mark.parametrize("shape,s,d", [((2, 2, 16), (2, 2), (1, 1)), ((7, 9, 16), (2, 2), (1, 1)),
                                       ((13, 31, 32), (2, 2), (1, 1)), ((6, 5, 48), (1, 1), (1, 1)),
                                       ((9, 12, 16), (2, 1), (2, 3)), ((5, 40, 64), (1, 2), (1, 2))], ids=str)
def test_max_pool_2x2_on_channels_in_16s_keeps_its_bits(shape, s, d, nt, monkeypatch):
    """The 2x2 max-pool route for channels in 16s (a UNet's; its own loop, non-temporal stores for
    large outputs) gives the bits of the general loop and of the sequential twin: NaNs, infinities
    and signed zeros, windows of wider buffers in and out, every stride and dilation."""
    from hirestile.executor import aligned_empty
    monkeypatch.setattr(pool, "streaming", lambda out: nt and out.ctypes.data % 64 == 0 and out.shape[2] % 16 == 0)
    h, w, c = shape
    big = randx(h + 3, w + 5, c, seed=h * w + c)
    flat = big.reshape(-1)
    flat[::7], flat[::11], flat[::13], flat[::17] = np.nan, -np.inf, -0.0, 0.0
    x = big[1:1 + h, 2:2 + w]
    want = ref_max_pool_seq(np.ascontiguousarray(x), (2, 2), s, d)
    ho, wo = want.shape[:2]
    general = np.empty_like(want)
    xf, xp = kflat(x)
    pool._pool(xf, xp, c, 2, 2, s[0], s[1], d[0], d[1], True, np.empty(0, np.int64), np.empty(0, np.int64),
               general.reshape(-1), wo, ho, wo)
    assert np.array_equal(general.view(np.uint32), want.view(np.uint32))
    out = aligned_empty((ho + 2) * (wo + 3) * c).reshape(ho + 2, wo + 3, c)
    out[...] = 5.0
    view = out[1:1 + ho, :wo] if nt else out[1:1 + ho, 2:2 + wo]
    got = pool.max_pool2d(x, kernel=2, stride=s, dilation=d, out=view)
    assert got is view and np.array_equal(view.view(np.uint32), want.view(np.uint32))
    frame = np.ones(out.shape[:2], bool)
    if nt:
        frame[1:1 + ho, :wo] = False
    else:
        frame[1:1 + ho, 2:2 + wo] = False
    assert (out[frame] == 5.0).all()
    assert np.array_equal(pool.max_pool2d(np.ascontiguousarray(x), kernel=2, stride=s, dilation=d).view(np.uint32),
                          want.view(np.uint32))


@pytest.mark.parametrize("k,s,d", [((2, 2), (2, 2), (1, 1)), ((3, 2), (2, 1), (2, 3))])
def test_pools_read_and_write_windows_of_wider_buffers(k, s, d):
    """The executor passes views of its padded node buffers: same values, frame untouched."""
    big_in = randx(19, 23, 16, seed=11)
    x = big_in[2:15, 3:20]                                 # a window: rows further apart than its width
    assert not x.flags.c_contiguous
    want = ref_max_pool(np.ascontiguousarray(x), k, s, d)
    big_out = randx(want.shape[0] + 3, want.shape[1] + 4, 16, seed=12)
    before = big_out.copy()
    got = pool.max_pool2d(x, kernel=k, stride=s, dilation=d, out=big_out[1:1 + want.shape[0], 2:2 + want.shape[1]])
    np.testing.assert_array_equal(got, want)
    frame = np.ones(big_out.shape[:2], bool)
    frame[1:1 + want.shape[0], 2:2 + want.shape[1]] = False
    np.testing.assert_array_equal(big_out[frame], before[frame])
    if d == (1, 1):
        cy, cx = rng(7).integers(1, 5, want.shape[0]), rng(8).integers(1, 5, want.shape[1])
        avg = pool.avg_pool2d(x, kernel=k, stride=s, count_y=cy, count_x=cx,
                              out=big_out[1:1 + want.shape[0], 2:2 + want.shape[1]])
        assert_close(avg, ref_avg_pool(np.ascontiguousarray(x), k, s, cy, cx), rtol=1e-6, atol_rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 2), (7, 5, 3), (13, 17, 8)])
@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((3, 2), (2, 3))])
def test_avg_pool_reference(shape, k, s):
    x = randx(*shape, seed=4)
    if shape[0] < k[0] or shape[1] < k[1]:       # no window fits: an empty result
        got = pool.avg_pool2d(x, kernel=k, stride=s, count_y=np.ones(0, np.int64), count_x=np.ones(0, np.int64))
        assert got.shape == (0, 0, shape[2]) and got.dtype == F32
        return
    ho, wo = (shape[0] - k[0]) // s[0] + 1, (shape[1] - k[1]) // s[1] + 1
    cy = rng(5).integers(1, 10, ho)
    cx = rng(6).integers(1, 10, wo)
    got = pool.avg_pool2d(x, kernel=k, stride=s, count_y=cy, count_x=cx)
    assert_close(got, ref_avg_pool(x, k, s, cy, cx), rtol=1e-6, atol_rel=1e-6)


@st.composite
def pool_case(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    ho, wo = draw(st.integers(1, 17)), draw(st.integers(1, 17))
    (r0, r1), (c0, c1) = sub_range(draw, ho), sub_range(draw, wo)
    c = draw(st.sampled_from([1, 3, 5, 8, 13]))
    return k, s, d, ho, wo, (r0, r1, c0, c1), c, draw(st.integers(0, 2**16))


@HYP
@given(pool_case())
def test_pool_subwindow_bitwise(case):
    k, s, d, ho, wo, (r0, r1, c0, c1), c, seed = case
    span = lambda n: (n - 1) * s + d * (k - 1) + 1  # noqa: E731
    x = randx(span(ho), span(wo), c, seed=seed)
    sub = x[r0 * s: (r1 - 1) * s + d * (k - 1) + 1, c0 * s: (c1 - 1) * s + d * (k - 1) + 1]
    full = pool.max_pool2d(x, kernel=k, stride=s, dilation=d)
    part = pool.max_pool2d(sub, kernel=k, stride=s, dilation=d)
    assert np.array_equal(full[r0:r1, c0:c1], part)
    # avg pool has no dilation: window of k with d = 1
    spa = lambda n: (n - 1) * s + k  # noqa: E731
    x = randx(spa(ho), spa(wo), c, seed=seed)
    sub = x[r0 * s: (r1 - 1) * s + k, c0 * s: (c1 - 1) * s + k]
    cy = rng(seed).integers(1, 20, ho)
    cx = rng(seed + 1).integers(1, 20, wo)
    full = pool.avg_pool2d(x, kernel=k, stride=s, count_y=cy, count_x=cx)
    part = pool.avg_pool2d(sub, kernel=k, stride=s, count_y=cy[r0:r1], count_x=cx[c0:c1])
    assert np.array_equal(full[r0:r1, c0:c1], part)


# **** resizing ****


def test_resize_nearest_reference():
    x = randx(7, 9, 5, seed=8)
    iy = rng(9).integers(0, 7, 11)
    ix = rng(10).integers(0, 9, 4)
    out = np.empty((11, 4, 5), F32)
    got = resize.resize_nearest(x, iy=iy, ix=ix, out=out)
    assert got is out
    np.testing.assert_array_equal(got, x[iy][:, ix])
    with pytest.raises(IndexError):
        resize.resize_nearest(x, iy=[7], ix=[0])


def test_resize_bilinear_reference():
    x = randx(6, 8, 3, seed=11)
    g = rng(12)
    y0 = g.integers(0, 6, 13)
    y1 = g.integers(0, 6, 13)
    x0 = g.integers(0, 8, 5)
    x1 = g.integers(0, 8, 5)
    ly = g.random(13).astype(F32)
    lx = g.random(5).astype(F32)
    got = resize.resize_bilinear(x, y0=y0, y1=y1, ly=ly, x0=x0, x1=x1, lx=lx)
    assert_close(got, ref_bilinear(x, y0, y1, ly, x0, x1, lx))


@st.composite
def resize_case(draw):
    hi, wi = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    ho, wo = draw(st.integers(1, 29)), draw(st.integers(1, 29))
    (r0, r1), (c0, c1) = sub_range(draw, ho), sub_range(draw, wo)
    c = draw(st.sampled_from([1, 2, 3, 7, 16]))
    align = draw(st.booleans())
    return hi, wi, ho, wo, (r0, r1, c0, c1), c, align, draw(st.integers(0, 2**16))


@HYP
@given(resize_case())
def test_resize_subwindow_bitwise(case):
    hi, wi, ho, wo, (r0, r1, c0, c1), c, align, seed = case
    x = randx(hi, wi, c, seed=seed)
    # tables in global coordinates, as the executor takes them from the resize op
    op = Resize(mode="nearest", size=(ho, wo))
    (iy,), (ix,) = op.taps(0, np.arange(ho), hi, ho), op.taps(1, np.arange(wo), wi, wo)
    sy, sx = iy[r0:r1], ix[c0:c1]
    a, b = sy.min(), sx.min()
    part = resize.resize_nearest(x[a: sy.max() + 1, b: sx.max() + 1], iy=sy - a, ix=sx - b)
    assert np.array_equal(resize.resize_nearest(x, iy=iy, ix=ix)[r0:r1, c0:c1], part)
    op = Resize(mode="bilinear", size=(ho, wo), coord="align_corners" if align else "half_pixel")
    (y0, y1, ly), (x0, x1, lx) = op.taps(0, np.arange(ho), hi, ho), op.taps(1, np.arange(wo), wi, wo)
    full = resize.resize_bilinear(x, y0=y0, y1=y1, ly=ly, x0=x0, x1=x1, lx=lx)
    a, a1 = y0[r0:r1].min(), y1[r0:r1].max() + 1
    b, b1 = x0[c0:c1].min(), x1[c0:c1].max() + 1
    part = resize.resize_bilinear(
        x[a:a1, b:b1], y0=y0[r0:r1] - a, y1=y1[r0:r1] - a, ly=ly[r0:r1],
        x0=x0[c0:c1] - b, x1=x1[c0:c1] - b, lx=lx[c0:c1])
    assert np.array_equal(full[r0:r1, c0:c1], part)


def test_argument_checks():
    x = randx(4, 4, 2)
    for call in (lambda: pool.max_pool2d(x.astype(np.float64), kernel=2, stride=2),
                 lambda: pool.max_pool2d(x[0], kernel=2, stride=2),
                 lambda: pool.max_pool2d(x, kernel=2, stride=0),
                 lambda: pool.max_pool2d(x, kernel=2, stride=2, out=np.empty((3, 2, 2), F32)),
                 lambda: resize.resize_nearest(x, iy=[0], ix=[0], out=np.empty((1, 1, 2))),
                 lambda: norm.global_avg_pool(x[0]),
                 lambda: pointwise.unary(x, "relu", out=x[:, :2]),
                 lambda: pointwise.argmax_channels(x, out=np.empty((4, 4), F32))):
        with pytest.raises(ValueError):
            call()


# **** pointwise ****


_PARAMS = {"leaky_relu": (0.1, 0), "elu": (0.7, 0), "hard_sigmoid": (0.2, 0.5), "clip": (-0.5, 1.5)}
_POSITIVE = {"sqrt", "log", "reciprocal"}


def _unary_input(name, shape, seed):
    x = randx(*shape, seed=seed, scale=4.0)
    x.flat[::7] = 0.0
    x.flat[3::11] *= 8  # reach the tails (overflowing exp, softplus threshold)
    if name in _POSITIVE:
        x = np.abs(x) + F32(0.05)
    return x


@pytest.mark.parametrize("name", sorted(pointwise.UNARY))
def test_unary_reference(name):
    x = _unary_input(name, (9, 11, 7), seed=15)
    p0, p1 = _PARAMS.get(name, (0.0, 0.0))
    got = pointwise.unary(x, name, p0, p1)
    assert got.dtype == F32 and got.shape == x.shape
    assert_close(got, unary(name, x, p0, p1), rtol=1e-6, atol_rel=1e-6)
    # in place, and by code
    y = x.copy()
    assert pointwise.unary(y, pointwise.UNARY[name], p0, p1, out=y) is y
    assert np.array_equal(y, got)


@pytest.mark.parametrize("name", sorted(pointwise.UNARY))
def test_unary_torch(name):
    torch = pytest.importorskip("torch")
    Fn = torch.nn.functional
    x = _unary_input(name, (6, 13, 5), seed=16)
    p0, p1 = _PARAMS.get(name, (0.0, 0.0))
    t = torch.from_numpy(x)
    want = {
        "identity": lambda: t, "relu": lambda: Fn.relu(t), "leaky_relu": lambda: Fn.leaky_relu(t, p0),
        "sigmoid": lambda: torch.sigmoid(t), "tanh": lambda: torch.tanh(t), "silu": lambda: Fn.silu(t),
        "gelu": lambda: Fn.gelu(t), "gelu_tanh": lambda: Fn.gelu(t, approximate="tanh"),
        "hard_sigmoid": lambda: torch.clamp(p0 * t + p1, 0, 1), "hard_swish": lambda: Fn.hardswish(t),
        "clip": lambda: torch.clamp(t, p0, p1), "elu": lambda: Fn.elu(t, p0),
        "softplus": lambda: Fn.softplus(t), "exp": lambda: torch.exp(t), "abs": lambda: torch.abs(t),
        "neg": lambda: -t, "sqrt": lambda: torch.sqrt(t), "log": lambda: torch.log(t),
        "reciprocal": lambda: torch.reciprocal(t), "mish": lambda: Fn.mish(t), "erf": lambda: torch.erf(t),
    }[name]().numpy()
    assert_close(pointwise.unary(x, name, p0, p1), want, rtol=2e-6, atol_rel=1e-6)
    if name == "hard_sigmoid":  # torch's Hardsigmoid is alpha=1/6, beta=1/2
        assert_close(pointwise.unary(x, name, 1 / 6, 0.5), Fn.hardsigmoid(t).numpy())


def test_pointwise_empty_and_errors():
    e = np.zeros((0, 5, 3), F32)
    assert pointwise.unary(e, "relu").shape == (0, 5, 3)
    assert pointwise.binary(e, np.ones(3, F32), "add").shape == (0, 5, 3)
    assert pointwise.softmax_channels(e).shape == (0, 5, 3)
    assert pointwise.argmax_channels(e).shape == (0, 5)
    with pytest.raises(ValueError):
        pointwise.unary(np.zeros((2, 2, 2)), "relu")  # float64
    with pytest.raises(KeyError):
        pointwise.unary(np.zeros((2, 2, 2), F32), "nope")


def test_prelu_affine():
    x = randx(7, 9, 6, seed=17)
    s = rng(18).standard_normal(6).astype(F32)
    t = rng(19).standard_normal(6).astype(F32)
    np.testing.assert_array_equal(pointwise.prelu(x, s), np.where(x > 0, x, s * x))
    np.testing.assert_array_equal(pointwise.prelu(x, s[:1]), np.where(x > 0, x, s[0] * x))
    assert_close(pointwise.affine_channels(x, s, t), x.astype(np.float64) * s + t)
    torch = pytest.importorskip("torch")
    want = from_torch(torch.nn.functional.prelu(to_torch(x), torch.from_numpy(s)))
    np.testing.assert_array_equal(pointwise.prelu(x, s), want)


def _binary_operands(name, shape, bshape, seed):
    g = rng(seed)
    a = g.standard_normal(shape).astype(F32)
    b = g.standard_normal(bshape).astype(F32)
    if name == "pow":
        a = np.abs(a) + F32(0.1)
    if name == "div":
        b = np.where(np.abs(b) < 0.1, F32(0.5), b).astype(F32)
    return a, b


_BIN_REF = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
            "max": np.maximum, "min": np.minimum, "pow": np.power}


@pytest.mark.parametrize("name", sorted(pointwise.BINARY))
@pytest.mark.parametrize("bshape", [(7, 9, 5), (5,), (1,), (1, 1, 5), (7, 9, 1)])
def test_binary_reference(name, bshape):
    a, b = _binary_operands(name, (7, 9, 5), bshape, seed=20)
    got = pointwise.binary(a, b, name)
    assert_close(got, _BIN_REF[name](a.astype(np.float64), b.astype(np.float64)))
    # constant on the left: b is now the base / the dividend
    if name == "pow":
        a, b = a - F32(1), np.abs(b) + F32(0.1)
    if name == "div":
        a = np.where(np.abs(a) < 0.1, F32(0.5), a).astype(F32)
    got = pointwise.rbinary(b, a, name)
    assert_close(got, _BIN_REF[name](b.astype(np.float64), a.astype(np.float64)))


@pytest.mark.parametrize("name", sorted(pointwise.BINARY))
def test_binary_torch(name):
    torch = pytest.importorskip("torch")
    a, b = _binary_operands(name, (5, 8, 3), (5, 8, 3), seed=21)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
          "max": torch.maximum, "min": torch.minimum, "pow": torch.pow}[name]
    assert_close(pointwise.binary(a, b, name), fn(ta, tb).numpy(), rtol=2e-6)
    c = b[0, 0]  # per-channel constant
    assert_close(pointwise.binary(a, c, name), fn(ta, torch.from_numpy(c)).numpy(), rtol=2e-6)


def test_binary_nan_max_min():
    a = np.array([[[np.nan, 1.0, 2.0]]], F32)
    b = np.array([[[0.0, np.nan, 1.0]]], F32)
    for name in ("max", "min"):
        got = pointwise.binary(a, b, name)
        assert np.isnan(got[0, 0, :2]).all() and not np.isnan(got[0, 0, 2])


def test_softmax_argmax_reference():
    x = randx(11, 7, 9, seed=22, scale=5.0)
    x[0, 0] = 80.0  # large equal logits: stable only with the max subtracted
    got = pointwise.softmax_channels(x)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    assert_close(got, e / e.sum(-1, keepdims=True))
    xr = np.round(x)  # many ties
    np.testing.assert_array_equal(pointwise.argmax_channels(xr), np.argmax(xr, -1).astype(np.uint8))
    xr[1, 1, 3] = np.nan
    np.testing.assert_array_equal(pointwise.argmax_channels(xr), np.argmax(xr, -1).astype(np.uint8))
    with pytest.raises(ValueError):
        pointwise.argmax_channels(np.zeros((1, 1, 300), F32))
    torch = pytest.importorskip("torch")
    want = from_torch(torch.softmax(to_torch(x), dim=1))
    assert_close(got, want, rtol=2e-6)


@st.composite
def crop_case(draw):
    h, w = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    c = draw(st.sampled_from([1, 2, 3, 5, 7, 16, 33]))
    (r0, r1), (c0, c1) = sub_range(draw, h), sub_range(draw, w)
    return h, w, c, (slice(r0, r1), slice(c0, c1)), draw(st.integers(0, 2**16))


@HYP
@given(crop_case(), st.sampled_from(sorted(pointwise.UNARY)), st.sampled_from(sorted(pointwise.BINARY)))
def test_pointwise_subwindow_bitwise(case, uname, bname):
    h, w, c, crop, seed = case
    x = _unary_input(uname, (h, w, c), seed)
    p0, p1 = _PARAMS.get(uname, (0.0, 0.0))
    assert np.array_equal(pointwise.unary(x, uname, p0, p1)[crop],
                          pointwise.unary(x[crop], uname, p0, p1), equal_nan=True)
    a, b = _binary_operands(bname, (h, w, c), (h, w, c), seed)
    assert np.array_equal(pointwise.binary(a, b, bname)[crop], pointwise.binary(a[crop], b[crop], bname))
    v = b[0, 0]
    assert np.array_equal(pointwise.binary(a, v, bname)[crop], pointwise.binary(a[crop], v, bname))
    assert np.array_equal(pointwise.rbinary(v, a, bname)[crop], pointwise.rbinary(v, a[crop], bname),
                          equal_nan=True)
    assert np.array_equal(pointwise.prelu(x, v)[crop], pointwise.prelu(x[crop], v))
    assert np.array_equal(pointwise.affine_channels(x, v, b[-1, -1])[crop],
                          pointwise.affine_channels(x[crop], v, b[-1, -1]))
    assert np.array_equal(pointwise.softmax_channels(a)[crop], pointwise.softmax_channels(a[crop]))
    assert np.array_equal(pointwise.argmax_channels(a)[crop], pointwise.argmax_channels(a[crop]))


# **** whole-image norms ****


def ref_group_norm(x, groups, scale, bias, eps):
    h, w, c = x.shape
    g = x.astype(np.float64).reshape(h, w, groups, c // groups)
    mean = g.mean(axis=(0, 1, 3), keepdims=True)
    var = g.var(axis=(0, 1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(h, w, c) * scale + bias


def test_global_avg_pool():
    x = randx(13, 17, 6, seed=23) + F32(3)
    got = norm.global_avg_pool(x)
    assert got.shape == (1, 1, 6) and got.dtype == F32
    np.testing.assert_array_equal(got, x.astype(np.float64).mean(axis=(0, 1)).astype(F32)[None, None])


@pytest.mark.parametrize("shape,groups", [((13, 17, 6), 6), ((13, 17, 6), 3), ((5, 4, 8), 1), ((1, 1, 4), 2)])
def test_group_instance_norm_reference(shape, groups):
    x = randx(*shape, seed=24, scale=3.0) + F32(5)
    c = shape[2]
    scale = rng(25).standard_normal(c).astype(F32)
    bias = rng(26).standard_normal(c).astype(F32)
    out = np.empty(shape, F32)
    got = norm.group_norm(x, groups, scale, bias, 1e-5, out=out)
    assert got is out
    assert_close(got, ref_group_norm(x, groups, scale, bias, 1e-5))
    if groups == c:
        np.testing.assert_array_equal(norm.instance_norm(x, scale, bias, 1e-5), got)
    with pytest.raises(ValueError):
        norm.group_norm(x, 5, scale, bias, 1e-5)


def test_norms_torch():
    torch = pytest.importorskip("torch")
    x = randx(19, 23, 8, seed=27, scale=2.0) + F32(1)
    scale = rng(28).standard_normal(8).astype(F32)
    bias = rng(29).standard_normal(8).astype(F32)
    tx, ts, tb = to_torch(x), torch.from_numpy(scale), torch.from_numpy(bias)
    Fn = torch.nn.functional
    want = from_torch(Fn.group_norm(tx, 4, ts, tb, 1e-5))
    assert_close(norm.group_norm(x, 4, scale, bias, 1e-5), want, rtol=2e-6, atol_rel=2e-6)
    want = from_torch(Fn.instance_norm(tx, weight=ts, bias=tb, eps=1e-5))
    assert_close(norm.instance_norm(x, scale, bias, 1e-5), want, rtol=2e-6, atol_rel=2e-6)
    want = from_torch(Fn.adaptive_avg_pool2d(tx, 1))
    assert_close(norm.global_avg_pool(x), want)


def test_norms_thread_count_invariant(numba_threads):
    """One thread and two give the same bits (the reductions split rows between threads)."""
    x = randx(37, 29, 5, seed=30)
    s, b = np.ones(5, F32), np.zeros(5, F32)
    res = []
    for n in (1, 2):
        numba_threads(n)
        res.append((norm.group_norm(x, 5, s, b, 1e-5), norm.global_avg_pool(x)))
    for u, v in zip(*res):
        assert np.array_equal(u, v)
