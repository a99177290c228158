"""Pooling's 16-lane path and the concat's channel copy (kernels/pool.py, kernels/_move.py):
against NumPy references on odd sizes, NaNs in vector lanes, windows of wider buffers in and
out, sub-windows and 1 vs 2 threads bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from hirestile.kernels import pool
from hirestile.kernels._move import copy_channels

F32 = np.float32


def randx(h, w, c, seed=0):
    return np.random.default_rng(seed).standard_normal((h, w, c)).astype(F32)


def ref_max(x, k, s, d):
    """Sequential max with PyTorch's NaN rule (a NaN wins and stays), tap by tap."""
    (kh, kw), (sy, sx), (dy, dx) = k, s, d
    hi, wi, c = x.shape
    ho, wo = (hi - dy * (kh - 1) - 1) // sy + 1, (wi - dx * (kw - 1) - 1) // sx + 1
    acc = None
    for ky in range(kh):
        for kx in range(kw):
            v = x[ky * dy: ky * dy + sy * (ho - 1) + 1: sy, kx * dx: kx * dx + sx * (wo - 1) + 1: sx]
            acc = v.copy() if acc is None else np.where((v > acc) | np.isnan(v), v, acc)
    return acc


def ref_avg(x, k, s, cy, cx):
    """float32 sums in the kernel's order (row-major taps), then the float32 division."""
    (kh, kw), (sy, sx) = k, s
    hi, wi, c = x.shape
    ho, wo = (hi - kh) // sy + 1, (wi - kw) // sx + 1
    acc = None
    for ky in range(kh):
        for kx in range(kw):
            v = x[ky: ky + sy * (ho - 1) + 1: sy, kx: kx + sx * (wo - 1) + 1: sx]
            acc = v.copy() if acc is None else (acc + v).astype(F32)
    div = (np.asarray(cy)[:, None, None] * np.asarray(cx)[None, :, None]).astype(F32)
    return (acc / div).astype(F32)


CASES = [((2, 2), (2, 2), (1, 1)), ((2, 2), (1, 3), (2, 3)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (2, 3))]


@pytest.mark.parametrize("c", [16, 32, 35, 64])
@pytest.mark.parametrize("k,s,d", CASES)
def test_pools_vector_lanes_against_reference(c, k, s, d):
    x = randx(13, 17, c, seed=c)
    x[3, 4, 5] = np.nan                    # in a vector lane
    x[7, 2, c - 1] = np.nan                # the last channel (vector or scalar tail)
    x[9, 9, :] = np.inf
    np.testing.assert_array_equal(pool.max_pool2d(x, kernel=k, stride=s, dilation=d), ref_max(x, k, s, d))
    if d == (1, 1):
        ho, wo = (13 - k[0]) // s[0] + 1, (17 - k[1]) // s[1] + 1
        cy = np.random.default_rng(1).integers(1, 9, ho)
        cx = np.random.default_rng(2).integers(1, 9, wo)
        x = randx(13, 17, c, seed=c + 1)
        np.testing.assert_array_equal(pool.avg_pool2d(x, kernel=k, stride=s, count_y=cy, count_x=cx),
                                      ref_avg(x, k, s, cy, cx))


@pytest.mark.parametrize("c", [16, 48])
def test_pools_windows_subwindows_and_threads(numba_threads, c):
    big = randx(41, 47, c, seed=3)
    x = big[3:36, 5:44]                    # a window of a wider buffer
    full = pool.max_pool2d(np.ascontiguousarray(x), kernel=2, stride=2)
    out_big = randx(full.shape[0] + 4, full.shape[1] + 6, c, seed=4)
    before = out_big.copy()
    got = pool.max_pool2d(x, kernel=2, stride=2, out=out_big[2:2 + full.shape[0], 3:3 + full.shape[1]])
    np.testing.assert_array_equal(got, full)
    frame = np.ones(out_big.shape[:2], bool)
    frame[2:2 + full.shape[0], 3:3 + full.shape[1]] = False
    np.testing.assert_array_equal(out_big[frame], before[frame])
    for r0, c0 in ((0, 0), (1, 3), (5, 2)):            # any sub-window: the same bits
        part = pool.max_pool2d(x[2 * r0:2 * r0 + 11, 2 * c0:2 * c0 + 9], kernel=2, stride=2)
        np.testing.assert_array_equal(part, full[r0:r0 + 5, c0:c0 + 4])
    res = []
    for n in (1, 2):
        numba_threads(n)
        cy, cx = np.full(full.shape[0], 4), np.full(full.shape[1], 1)
        res.append((pool.max_pool2d(x, kernel=3, stride=1),
                    pool.avg_pool2d(x, kernel=2, stride=2, count_y=cy, count_x=cx)))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("cs,cd,c0", [(16, 32, 0), (16, 32, 16), (3, 8, 5), (35, 70, 35), (64, 64, 0)])
def test_copy_channels_windows(numba_threads, monkeypatch, cs, cd, c0, parallel):
    """Both the parallel loop (large copies) and the calling thread's (small ones)."""
    from hirestile.kernels import _move
    monkeypatch.setattr(_move, "PARALLEL_BYTES", 0 if parallel else 1 << 40)
    src_big = randx(23, 29, cs, seed=5)
    src = src_big[2:19, 3:25]
    for n in (1, 2):
        numba_threads(n)
        dst_big = randx(21, 27, cd, seed=6)
        want = dst_big.copy()
        want[1:18, 2:24, c0:c0 + cs] = src
        copy_channels(src, dst_big[1:18, 2:24], c0)
        np.testing.assert_array_equal(dst_big, want)
    empty = np.empty((0, 4, cs), F32)
    dst = randx(0, 4, cd)
    copy_channels(empty, dst, c0)


# **** non-temporal stores (large outputs on 64-byte lines) ****


def aligned(h, w, c, seed=0):
    """A random (h, w, c) float32 array whose data starts on a 64-byte line."""
    raw = np.empty(h * w * c + 16, F32)
    off = (-raw.ctypes.data % 64) // 4
    a = raw[off:off + h * w * c].reshape(h, w, c)
    a[...] = randx(h, w, c, seed)
    return a


def test_streaming_rule():
    from hirestile.kernels import _move
    a = aligned(520, 520, 64)                            # 69 MB
    assert _move.streaming(a) and _move.streaming(a, 16, 32)
    assert not _move.streaming(a, 8, 16)                 # vectors across lines
    assert _move.streaming(a[1:, 1:])                    # a window 64 channels in: still on lines
    assert not _move.streaming(aligned(512, 512, 72))    # pixels of 72 channels: not on lines
    assert not _move.streaming(aligned(64, 64, 16))      # small: stays in the caches


@pytest.mark.parametrize("case", ["wino4-16-16", "wino4-32-16", "blocked-3-16", "convT-32-16", "concat"])
def test_non_temporal_stores_same_bits(numba_threads, monkeypatch, case):
    """With every output streamed (NT_BYTES = 0) the kernels write the same bits into a window
    of a wider, line-aligned buffer, and nothing around it; 1 and 2 threads."""
    from hirestile.kernels import _move, conv
    monkeypatch.setattr(conv, "WINO_MIN", 256)              # 16 -> 16 through Winograd too
    rng = np.random.default_rng(7)
    if case == "concat":
        src = randx(21, 19, 16, seed=8)
        make = lambda: aligned(25, 23, 48, seed=9)                        # noqa: E731
        def run(dst):
            return copy_channels(src, dst[2:23, 1:20], 32)
        sl = (slice(2, 23), slice(1, 20), slice(32, 48))
    else:
        kind, ci, co = case.split("-")
        ci, co = int(ci), int(co)
        Hi, Wi = 31, 27
        x = randx(Hi, Wi, ci, seed=10)
        b = rng.standard_normal(co).astype(F32)
        if kind == "convT":
            w = rng.standard_normal((2, 2, ci, co)).astype(F32)
            Ho, Wo = 2 * Hi - 1, 2 * Wi - 1
            def run(dst):
                return conv.conv_transpose2d(x, w, b, stride=2, offset=(1, 0), out_shape=(Ho, Wo), act=1,
                                             out=dst[3:3 + Ho, 2:2 + Wo])
        else:
            w = rng.standard_normal((3, 3, ci, co)).astype(F32)
            Ho, Wo = Hi - 2, Wi - 2
            def run(dst):
                return conv.conv2d(x, w, b, act=1, out=dst[3:3 + Ho, 2:2 + Wo])
        make = lambda: aligned(Ho + 5, Wo + 4, co, seed=11)               # noqa: E731
        sl = (slice(3, 3 + Ho), slice(2, 2 + Wo))
    want_buf = make()
    run(want_buf)                                                          # normal stores: too small
    monkeypatch.setattr(_move, "NT_BYTES", 0)
    for n in (1, 2):
        numba_threads(n)
        buf = make()
        assert _move.streaming(buf[sl[:2]]) or case == "concat"
        run(buf)
        np.testing.assert_array_equal(buf, want_buf)


# ---- HWC buffers <-> (C, h, w) planes (the executor's input and output copies)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hirestile.kernels._move import pixels_to_planes, planes_to_pixels  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 19), h=st.integers(1, 23), w=st.integers(1, 29), pad=st.integers(0, 7), top=st.integers(0, 3))
def test_planes_to_pixels_into_windows_of_wider_buffers(c, h, w, pad, top):
    rng = np.random.default_rng(c * 1000 + h * 31 + w)
    img = rng.standard_normal((c + 2, h + top + 3, w + pad + 5)).astype(F32)
    src = img[1:c + 1, top:top + h, 2:2 + w]            # planes with gaps between rows and planes
    big = np.full((h + 4, w + pad + 3, c), -7.0, F32)
    dst = big[2:2 + h, 1:1 + w]                         # a packed window of a wider HWC buffer
    before = big.copy()
    assert planes_to_pixels(src, dst) is dst
    np.testing.assert_array_equal(dst, np.moveaxis(src, 0, -1))
    mask = np.ones(big.shape, bool)
    mask[2:2 + h, 1:1 + w] = False
    np.testing.assert_array_equal(big[mask], before[mask])   # nothing outside the window written


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 19), h=st.integers(1, 23), w=st.integers(1, 29), pad=st.integers(0, 7))
def test_pixels_to_planes_from_windows(c, h, w, pad):
    big = np.random.default_rng(h * 7 + w).standard_normal((h + 3, w + pad + 2, c)).astype(F32)
    src = big[1:1 + h, 2:2 + w]
    np.testing.assert_array_equal(pixels_to_planes(src), np.moveaxis(src, -1, 0))
    out = np.full((c + 1, h, w + 4), 5.0, F32)[:c, :, 1:1 + w]    # given planes with gaps
    assert pixels_to_planes(src, out) is out
    np.testing.assert_array_equal(out, np.moveaxis(src, -1, 0))


@pytest.mark.parametrize("w", [1, 15, 16, 17, 33, 64])
def test_pixels_to_planes_two_channels_bitwise(w):
    """Two channels (a two-class output) go 16 pixels a vector step: the same bits as moving them
    one by one (NaN payloads, signed zeros), from a window of a wider buffer into planes with gaps."""
    big = np.random.default_rng(w).standard_normal((5, w + 3, 2)).astype(F32)
    u = big.reshape(-1).view(np.uint32)
    u[::5], u[::7] = 0x7FC01234, 0x80000000
    src = big[1:4, 2:2 + w]
    out = np.full((3, 3, w + 4), 5.0, F32)[:2, :, 1:1 + w]
    assert pixels_to_planes(src, out) is out
    assert np.array_equal(out.view(np.uint32), np.moveaxis(src, -1, 0).view(np.uint32))
    assert np.array_equal(pixels_to_planes(src).view(np.uint32), np.moveaxis(src, -1, 0).view(np.uint32))


def test_planes_to_pixels_takes_any_strides():
    x = np.random.default_rng(3).standard_normal((3, 12, 10)).astype(F32)
    for src in (x[:, ::2, ::-1], x[::-1], np.asfortranarray(x)):
        dst = np.empty((src.shape[1], src.shape[2], 3), F32)
        np.testing.assert_array_equal(planes_to_pixels(src, dst), np.moveaxis(src, 0, -1))


def test_pixels_to_planes_refuses_scattered_output():
    src = np.zeros((4, 5, 2), F32)
    with pytest.raises(ValueError, match="adjacent columns"):
        pixels_to_planes(src, np.zeros((2, 4, 10), F32)[:, :, ::2])
