"""The Python front end: model loading, input contracts, input validation."""
import json

import numpy as np
import pytest

import hirestile
from hirestile.errors import InputError, ModelError
from hirestile.models.unet import init_state, save_unet, unet

ARCH = dict(in_channels=1, classes=2, base=4, depth=2)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "m.safetensors"
    save_unet(path, init_state(**ARCH, seed=3), **ARCH)
    return path


def test_safetensors_roundtrip_equals_in_memory_model(weights):
    x = np.random.default_rng(0).random((1, 23, 19), np.float32)
    loaded = hirestile.load_model(weights)
    assert loaded.contract.pad_to == 4
    assert np.array_equal(hirestile.predict(loaded, x), hirestile.predict(unet(**ARCH, seed=3), x))


def test_sidecar_declares_contract_and_classes(weights):
    x = np.random.default_rng(1).integers(0, 255, (1, 16, 16), dtype=np.uint8)
    plain = hirestile.predict(hirestile.load_model(weights), (x.astype(np.float32) / 255 - 0.5) / 2)
    (weights.parent / (weights.name + ".json")).write_text(
        json.dumps({"mean": [0.5], "std": [2.0], "classes": ["sky", "star"]}))
    m = hirestile.load_model(weights)
    assert m.classes == ("sky", "star") and m.contract.mean == (0.5,)
    assert np.allclose(hirestile.predict(m, x), plain, atol=1e-6)
    assert hirestile.load_model(weights, contract={"pad_to": 8}).contract.pad_to == 8


@pytest.mark.parametrize("spec, match", [({"bogus": 1}, "unknown input-contract"),
                                         ({"pad_to": 0}, r"pad_to must be a positive integer \(1: any size\)"),
                                         ({"pad_mode": "wrap"}, "pad_mode must be one of reflect, replicate, zeros"),
                                         ({"std": [0]}, "std must not be 0"),
                                         ({"softening": -1}, "softening must be positive"),
                                         ({"value_range": [1, 0]}, "low < high"),
                                         ({"mean": [1, 2, 3]}, "3 values for 1 channels")])
def test_bad_contract_is_a_model_error(weights, spec, match):
    with pytest.raises(ModelError, match=match):
        hirestile.load_model(weights, contract=spec)


def test_bad_sidecar(weights):
    (weights.parent / (weights.name + ".json")).write_text("{not json")
    with pytest.raises(ModelError, match="sidecar"):
        hirestile.load_model(weights)


def test_missing_and_unknown_models(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        hirestile.load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="unknown model"):
        hirestile.load_model("no-such-model")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError):
        hirestile.load_model(bad)


def test_predict_validates_input():
    m = unet(**ARCH)
    with pytest.raises(InputError, match="channel"):
        hirestile.predict(m, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(InputError, match="empty"):
        hirestile.predict(m, np.zeros((1, 0, 8), np.float32))
    x = np.zeros((1, 9, 9), np.float32)
    x[0, 4, 7] = np.nan
    with pytest.raises(InputError, match="NaN at channel 0, row 4, column 7"):
        hirestile.predict(m, x)
    assert hirestile.predict(m, np.zeros((9, 9), np.float32)).shape == (2, 9, 9)  # 2D = one channel


def test_contract_describes_itself():
    from hirestile.contract import InputContract

    astro = hirestile.load_model("unet-astro").contract.describe()
    assert "arcsinh(x / 0.01)" in astro and "x / 2" in astro and "multiple of 16 (reflect)" in astro
    histo = hirestile.load_model("unet").contract.describe()
    assert "expected in [0, 1]" in histo and "(x - 0.5) / 0.25" in histo
    assert InputContract(channels=3, scale="none").describe() == "3 channels; values as given; any size"


def test_from_torch_takes_a_contract():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1)).eval()
    m = hirestile.from_torch(net, torch.zeros(1, 1, 16, 16), contract={"std": [255.0], "classes": ["a", "b"]})
    assert m.contract.std == (255.0,) and m.classes == ("a", "b")
    x = np.random.default_rng(2).integers(0, 255, (1, 11, 13)).astype(np.uint8)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.astype(np.float32) / 255)[None]).numpy()[0]
    assert np.abs(hirestile.predict(m, x) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("kw, size, match", [({}, (5, 7), r"multiples of 4; declare pad_to=4 \(--pad-to 4\)"),
                                             ({"padding": "valid"}, (20, 20),
                                              r"too small for it; it takes any size >= 44 \(the smallest: 44x44\)")])
def test_size_the_network_cannot_take_says_which_it_takes(kw, size, match):
    m = hirestile.api.with_contract(unet(**ARCH, **kw), {"pad_to": 1})
    with pytest.raises(InputError, match=match):
        hirestile.predict(m, np.zeros((1, *size), np.float32))
    with pytest.raises(InputError, match=match):
        hirestile.analyze(m, size)


def test_model_paths_that_are_not_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unet").mkdir()                       # a folder named like a built-in does not shadow it
    assert hirestile.load_model("unet").name == "unet"
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelError, match="weights is a directory; a model is a built-in name"):
        hirestile.load_model("weights")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelError, match="neither .onnx nor .safetensors"):
        hirestile.load_model("notes.txt")


def test_predict_keeps_its_buffers_with_the_model():
    """predict keeps its node-buffer slab with the model for the next call (no fresh pages);
    an earlier result is never a view the next call overwrites; dropping the model frees it."""
    import gc
    import weakref

    from hirestile import executor
    from hirestile.models.unet import unet

    m = unet(in_channels=1, classes=1, base=4, depth=2, seed=3)      # one channel out: the view case
    x1, x2 = (np.random.default_rng(s).random((1, 60, 52), np.float32) for s in (1, 2))
    first = hirestile.predict(m, x1)
    kept = executor._kept[m.analyze((60, 52)).graph]
    again = first.copy()
    second = hirestile.predict(m, x2)
    assert executor._kept[m.analyze((60, 52)).graph] is kept           # the same slab, reused
    assert np.array_equal(first, again) and not np.array_equal(first, second)
    assert not np.shares_memory(first, kept.slab) and not np.shares_memory(second, kept.slab)
    tiled = hirestile.predict(m, x2, tile=16)
    assert np.array_equal(tiled, second)
    gone = weakref.ref(kept)
    del m, kept
    gc.collect()
    assert gone() is None


BANDED = dict(in_channels=3, classes=3, base=4, depth=3)


def _working_bytes(m, x, **kw):
    """Peak bytes NumPy holds during ``predict(m, x, **kw)`` beyond the returned logits (after
    a warm-up call, so that compiling and first imports do not count), and the logits."""
    import tracemalloc

    hirestile.predict(unet(**BANDED), x[:, :40, :40], **kw)
    tracemalloc.start()
    try:
        y = hirestile.predict(m, x, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - y.nbytes, y


@pytest.mark.parametrize("h, w", [(601, 131), (457, 263), (389, 389)])
def test_predict_streams_full_frame_within_memory(h, w):
    """A full-frame call whose one region would not fit ``memory`` runs in streamed bands
    (predict_bands), takes at most ``memory`` bytes beyond its result, and returns the bits of
    the one-region run (executor.run_full on the normalised image, the exactness reference)."""
    from hirestile import executor
    from hirestile.api import band_bytes, predict_bands

    m = unet(**BANDED, seed=5)
    x = np.random.default_rng(h).integers(0, 255, (3, h, w), dtype=np.uint8)
    rep = m.analyze((h, w))
    full = executor.tile_memory(rep, rep.output_shape[1:]) + 4 * 3 * h * w
    budget = int(full * 0.5)
    bands = predict_bands(rep, budget)
    assert bands is not None and band_bytes(rep, bands) <= budget      # the plan fits (not the fallback)
    assert predict_bands(rep, full) is None
    used, y = _working_bytes(m, x, memory=budget)
    assert used <= budget
    norm = m.contract.normalize(x, None)
    assert np.array_equal(y, executor.run_full(rep, norm))
    assert np.array_equal(y, hirestile.predict(m, x, memory=full))    # one region: same bits


@pytest.mark.parametrize("h, w", [(613, 307), (800, 601)])
def test_full_frame_streams_where_that_takes_less_memory(h, w):
    """A full-frame call whose streamed bands take at most STREAM_SHARE of one region's memory
    streams by default, and holds less than the one-region call (stream=False) does; a small
    image, where streaming saves little, runs as one region unless stream=True. Every way
    gives the bits of executor.run_full on the normalised image."""
    import tracemalloc

    from hirestile import executor
    from hirestile.api import STREAM_SHARE, band_bytes, predict_bands

    m = unet(in_channels=3, classes=2, base=8, depth=3, seed=7)
    x = np.random.default_rng(w).integers(0, 255, (3, h, w), dtype=np.uint8)
    rep = m.analyze((h, w))
    whole = executor.tile_memory(rep, rep.output_shape[1:]) + 4 * 3 * h * w
    assert predict_bands(rep) == (h, w) and band_bytes(rep, (h, w)) <= STREAM_SHARE * whole
    want = executor.run_full(rep, m.contract.normalize(x, None))
    used = {}
    for stream in (None, False):
        model = unet(in_channels=3, classes=2, base=8, depth=3, seed=7)     # its own kept arena
        hirestile.predict(model, x[:, :40, :40], stream=stream)
        tracemalloc.start()
        try:
            y = hirestile.predict(model, x, stream=stream)
            used[stream] = tracemalloc.get_traced_memory()[1] - y.nbytes
        finally:
            tracemalloc.stop()
        assert np.array_equal(y, want)
    assert used[None] <= band_bytes(rep, (h, w)) and used[None] < 0.85 * used[False]

    small = x[:, :97, :101]
    rep = m.analyze(small.shape[1:])
    assert predict_bands(rep) is None and predict_bands(rep, region=False) == (97, 101)
    want = executor.run_full(rep, m.contract.normalize(small, None))
    for stream in (None, True, False):
        assert np.array_equal(hirestile.predict(m, small, stream=stream), want)


def test_predict_writes_into_out():
    """``out=`` takes the logits on every path (one region, streamed bands, overlap tiles, a
    batch), same bits, and is returned; a wrong array is refused naming the shape it needs."""
    m = unet(**BANDED, seed=6)
    x = np.random.default_rng(8).random((3, 61, 47), np.float32)
    want = hirestile.predict(m, x)
    for kw in ({}, dict(stream=True), dict(stream=False), dict(tile=(16, 23)), dict(tile=20, stream=True)):
        out = np.full_like(want, np.nan)
        assert hirestile.predict(m, x, out=out, **kw) is out and np.array_equal(out, want), kw
    batch = np.full((2, *want.shape), np.nan, np.float32)
    assert hirestile.predict(m, np.stack([x, x]), out=batch) is batch and np.array_equal(batch[1], want)
    need = r"out must be a writable C-contiguous float32 array of shape \(3, 61, 47\)"
    for bad in (np.zeros((3, 61, 46), np.float32), want.astype(np.float64), np.zeros((47, 61, 3), np.float32).T):
        with pytest.raises(ValueError, match=need):
            hirestile.predict(m, x, out=bad)
    with pytest.raises(ValueError, match="for a batch of 2"):
        hirestile.predict(m, np.stack([x, x]), out=want)


def test_model_keeps_its_latest_reports_and_their_plans():
    """Model.analyze gives the same report for the same size and precision (the stream's
    plans, kept in Report.memo, are made once), and keeps only its KEPT_REPORTS latest."""
    from hirestile import bands
    from hirestile.region import Region

    m = unet(**BANDED)
    rep = m.analyze((120, 90))
    assert m.analyze((120, 90)) is rep and m.analyze((120, 90), "bf16") is not rep
    pieces = bands.fresh_pieces(rep, Region((0, 120), (0, 90)))
    assert bands.fresh_pieces(rep, Region((0, 120), (0, 90))) is pieces
    assert pieces == bands._fresh_pieces(rep, Region((0, 120), (0, 90)))     # the memo keeps what it made
    for k in range(m.KEPT_REPORTS):
        m.analyze((64 + k, 64))
    last = (64 + m.KEPT_REPORTS - 1, 64)
    assert m.analyze((120, 90)) is not rep and m.analyze(last) is m.analyze(last)


def test_a_model_pickles_without_its_reports():
    """A model sent to a Dask worker carries no reports (they hold the prepared weights): it
    pickles to the same bytes before and after a call, and the copy predicts the same bits."""
    import pickle

    m = unet(**BANDED, seed=2)
    x = np.random.default_rng(4).random((3, 70, 50), np.float32)
    m.runnable                                         # (cached with the model, and pickled)
    before = pickle.dumps(m)
    y = hirestile.predict(m, x)
    assert m._reports and pickle.dumps(m) == before
    assert np.array_equal(hirestile.predict(pickle.loads(before), x), y)


def test_a_dropped_model_frees_its_reports_without_the_collector():
    """Nothing a report keeps (Report.memo) refers back to it: dropping the model frees its
    reports, and their prepared weights and arena, by reference counting alone."""
    import gc
    import weakref

    m = unet(**BANDED)
    x = np.random.default_rng(3).random((3, 150, 90), np.float32)
    hirestile.predict(m, x, stream=True)
    rep = weakref.ref(m.analyze((150, 90)))
    assert rep().memo                                  # the stream's plans are kept
    gc.collect()
    gc.disable()
    try:
        del m
        assert rep() is None
    finally:
        gc.enable()


def test_predict_in_bands_reports_nan_where_it_is():
    from hirestile import executor
    from hirestile.api import predict_bands

    m = unet(**BANDED)
    x = np.zeros((3, 150, 90), np.float32)
    x[1, 140, 7] = np.nan
    rep = m.analyze((150, 90))
    budget = int(0.6 * (executor.tile_memory(rep, (150, 90)) + 4 * 3 * 150 * 90))
    assert predict_bands(rep, budget) is not None
    with pytest.raises(InputError, match="NaN at channel 1, row 140, column 7"):
        hirestile.predict(m, x, memory=budget)
