"""Concats left unbuilt (executor.fused_concats): a UNet decoder's first conv reads the skip
and the up-sampled map where their producers wrote them. The same bits as building the concat
(the executor with fusion switched off is the reference), in one region, overlap tiles and
streamed bands, float32 and bf16; less memory in the plan and the run."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hirestile
from hirestile import executor
from hirestile.api import band_bytes
from hirestile.models.unet import unet

NETS = {
    "same": lambda: unet(in_channels=3, classes=2, base=16, depth=3, seed=2),
    "valid": lambda: unet(in_channels=1, classes=3, base=16, depth=2, padding="valid", bn=False, seed=3),
    "bilinear": lambda: unet(in_channels=2, classes=2, base=16, depth=2, up="bilinear", seed=4),
}
_built = {name: make() for name, make in NETS.items()}


def _unfused(monkeypatch):
    monkeypatch.setattr(executor, "fused_concats", lambda rep: {})


@pytest.mark.parametrize("name", sorted(NETS))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_unbuilt_concat_gives_the_built_concats_bits(name, data):
    m = _built[name]
    lo = 44 if name == "valid" else 1
    h = data.draw(st.integers(lo, lo + 60), label="h")
    w = data.draw(st.integers(lo, lo + 60), label="w")
    x = np.random.default_rng(h * 1000 + w).standard_normal((m.graph.in_channels, h, w)).astype(np.float32)
    rep = m.analyze((h, w))
    assert len(executor.fused_concats(rep)) == (3 if name == "same" else 2)
    oh, ow = rep.output_shape[1:]
    tile = (data.draw(st.integers(1, oh), label="ty"), data.draw(st.integers(1, ow), label="tx"))
    with pytest.MonkeyPatch.context() as mp:
        _unfused(mp)
        want = executor.run_full(rep, x)
    assert np.array_equal(executor.run_full(rep, x), want)
    assert np.array_equal(hirestile.predict(m, x, tile=tile), want)
    assert np.array_equal(hirestile.predict(m, x, tile=tile, stream=True), want)


@pytest.mark.parametrize("name", ["same", "bilinear"])
def test_bf16_unbuilt_concat_gives_the_built_concats_bits(name):
    """bf16 mode leaves its concats unbuilt too (kernels.bf16.conv2d_concat on its Winograd
    F(2x2) route): the same bits as building them, in one region, tiles and streamed bands."""
    m = _built[name]
    x = np.random.default_rng(7).standard_normal((m.graph.in_channels, 83, 61)).astype(np.float32)
    rep = m.analyze((83, 61), precision="bf16")
    assert len(executor.fused_concats(rep)) == (3 if name == "same" else 2)
    with pytest.MonkeyPatch.context() as mp:
        _unfused(mp)
        want = executor.run_full(rep, x)
    assert np.array_equal(executor.run_full(rep, x), want)
    for tile in ((16, 24), (37, 61)):
        assert np.array_equal(hirestile.predict(m, x, tile=tile, precision="bf16"), want)
        assert np.array_equal(hirestile.predict(m, x, tile=tile, stream=True, precision="bf16"), want)


def test_unbuilt_concats_shrink_the_plan(monkeypatch):
    """The one-region slab and a steady streamed band's slab without the decoders' concat
    buffers, and what a run allocates follows (tracemalloc, after a warm-up). (A whole
    stream's plan, :func:`band_bytes`, can come out even: with the full-resolution skip
    resident, a strip's first band, computed whole, holds the most either way.)"""
    import tracemalloc

    from hirestile.bands import steady_band

    def steady_slab(rep):
        return executor.region_memory(rep, *steady_band(rep, ((128, 192), (0, 257)))[:2])

    x = np.random.default_rng(0).standard_normal((3, 300, 257)).astype(np.float32)
    plans, peaks = {}, []
    for unfuse in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if unfuse:
                _unfused(mp)
            # a model of its own: a report keeps the stream plans derived from it (Report.memo)
            model = unet(in_channels=3, classes=2, base=16, depth=3, seed=2)
            rep = model.analyze(x.shape[1:])
            plans[unfuse] = executor.tile_memory(rep, (300, 257)), steady_slab(rep), band_bytes(rep, (64, 257))
            hirestile.predict(model, x[:, :50, :50], stream=False)
            tracemalloc.start()
            hirestile.predict(model, x, stream=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    fused, built = plans[False], plans[True]
    assert fused[0] < 0.9 * built[0] and fused[1] < built[1] and fused[2] <= 1.01 * built[2]
    assert peaks[1] < peaks[0] - 0.5 * (built[0] - fused[0])
