"""Generators, the PyTorch UNet twin and the training loop of the built-in models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hirestile.contract import InputContract
from hirestile.models import unet as unet_mod
from hirestile.models.training.synth_astro import STYLES, make_astro
from hirestile.models.training.synth_histo import MODES, make_histo


@pytest.fixture(scope="module")
def twin(torch):
    """hirestile.models.training.torch_unet, the PyTorch UNet twin (imports torch)."""
    from hirestile.models.training import torch_unet
    return torch_unet


# ---- astronomy generator

@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", [0, 7])
def test_astro_mask_is_k_sigma_of_noise_free_sources(style, seed):
    s = make_astro((96, 80), rng=seed, style=style)
    assert s.image.shape == (96, 80) and s.mask.shape == (96, 80)
    assert s.image.dtype == {"float": np.float32, "uint16": np.uint16, "display8": np.uint8}[style]
    assert s.mask.dtype == bool and s.sources.dtype == np.float32
    assert s.style == style and s.sigma > 0
    np.testing.assert_array_equal(s.mask, s.sources > np.float32(s.k * s.sigma))
    assert (s.sources >= 0).all()


def test_astro_k_controls_the_threshold():
    seed = next(s for s in range(50) if make_astro((64, 64), rng=s, style="float", k=3.0).mask.any())
    a = make_astro((64, 64), rng=seed, style="float", k=1.0)
    b = make_astro((64, 64), rng=seed, style="float", k=3.0)
    np.testing.assert_array_equal(a.sources, b.sources)
    assert (b.mask <= a.mask).all() and b.mask.sum() < a.mask.sum()


def test_astro_seed_reproducible_and_distinct():
    a, b, c = (make_astro((64, 64), rng=s) for s in (11, 11, 12))
    assert a.style == b.style
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.sources, c.sources)


@pytest.mark.parametrize("style", ["float", "uint16"])
def test_astro_background_noise_matches_sigma(style):
    # pixels far from any source scatter with the declared sigma (sky Poisson + read noise)
    for seed in range(3):
        s = make_astro((128, 128), rng=seed, style=style)
        img = s.image.astype(np.float64) / (65535 if style == "uint16" else 1)
        bg = s.sources < 0.02 * s.sigma
        resid = img[bg] - np.median(img[bg])
        std = 1.4826 * np.median(np.abs(resid))
        assert 0.8 < std / s.sigma < 1.2, (seed, std, s.sigma)


def test_astro_has_sources_on_average():
    frac = np.mean([make_astro((128, 128), rng=s).mask.mean() for s in range(12)])
    assert 0.005 < frac < 0.3


def test_astro_rejects_unknown_style():
    with pytest.raises(ValueError, match="style"):
        make_astro((32, 32), rng=0, style="fits")


# ---- histology generator

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 5])
def test_histo_mask_is_occupancy_threshold(mode, seed):
    s = make_histo((96, 112), rng=seed, mode=mode)
    assert s.image.shape == (96, 112, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (96, 112) and s.mask.dtype == bool
    assert s.occupancy.dtype == np.float32 and s.clean.dtype == np.float32
    assert 0 <= s.occupancy.min() and s.occupancy.max() <= 1
    assert 0 <= s.clean.min() and s.clean.max() <= 1
    np.testing.assert_array_equal(s.mask, s.occupancy > 0.5)
    assert s.mode == mode


@pytest.mark.parametrize("mode", MODES)
def test_histo_nuclei_carry_hematoxylin_in_the_clean_image(mode):
    from skimage.color import rgb2hed

    for seed in range(3):
        s = make_histo((128, 128), rng=seed, mode=mode)
        assert s.mask.sum() >= 50 and (~s.mask).sum() >= 50, (seed, int(s.mask.sum()))   # nuclei and background
        hem = rgb2hed(s.clean)[..., 0]
        assert hem[s.mask].mean() > hem[~s.mask].mean()


def test_histo_seed_reproducible_and_distinct():
    a, b, c = (make_histo((64, 64), rng=s) for s in (21, 21, 22))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.occupancy, c.occupancy)


def test_histo_nuclei_fraction_plausible():
    frac = np.mean([make_histo((128, 128), rng=s).mask.mean() for s in range(8)])
    assert 0.03 < frac < 0.6


# ---- contract: the astronomy stretch stays pointwise

def test_asinh_contract_is_pointwise_and_position_independent():
    c = InputContract(channels=1, stretch="asinh", softening=0.002, std=(2.0,))
    raw = make_astro((64, 64), rng=1, style="uint16").image[None]
    whole = c.normalize(raw)
    np.testing.assert_array_equal(whole[:, 10:30, 5:50], c.normalize(raw[:, 10:30, 5:50]))
    f = np.linspace(-1, 1, 11, dtype=np.float32)[None, None]
    np.testing.assert_allclose(c.normalize(f)[0, 0], np.arcsinh(f[0, 0] / 0.002) / 2, rtol=1e-6)


# ---- the PyTorch twin

@pytest.mark.parametrize("padding,up,size,out", [("same", "transpose", 32, 32), ("same", "nearest", 48, 48),
                                                 ("valid", "bilinear", 92, 52)])
def test_torch_unet_shapes(torch, twin, padding, up, size, out):
    net = twin.UNet(in_channels=3, classes=2, base=4, depth=2, padding=padding, up=up).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 3, size, size))
    assert y.shape == (1, 2, out, out)


def test_torch_unet_state_dict_names(twin):
    keys = set(twin.UNet(in_channels=1, classes=2, base=4, depth=2).state_dict())
    for k in ["enc.0.conv1.weight", "enc.0.bn1.running_mean", "enc.2.conv2.weight", "up.1.weight", "up.0.bias",
              "dec.1.conv2.weight", "dec.0.bn2.running_var", "head.weight", "head.bias"]:
        assert k in keys
    assert "enc.0.conv1.bias" not in keys
    keys = set(twin.UNet(in_channels=1, classes=2, base=4, depth=2, up="bilinear", bn=False).state_dict())
    assert {"up.1.1.weight", "enc.0.conv1.bias"} <= keys and not any(".bn" in k for k in keys)


def test_save_weights_roundtrip_and_metadata(tmp_path, torch, twin):
    torch.manual_seed(0)
    net = twin.UNet(in_channels=1, classes=3, base=4, depth=2, up="nearest")
    net.train()(torch.randn(2, 1, 16, 16))  # move the BN running statistics off their defaults
    net.eval()
    p = tmp_path / "w.safetensors"
    twin.save_weights(net, p, extra={"name": "test"})
    arch = twin.read_arch(p)
    assert arch == {"arch": "unet", "in_channels": 1, "classes": 3, "base": 4, "depth": 2, "padding": "same",
                    "up": "nearest", "bn": True}
    from safetensors.numpy import load_file
    assert not any(k.endswith("num_batches_tracked") for k in load_file(str(p)))
    net2 = twin.load_weights(p)
    x = torch.randn(1, 1, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(net2(x), net(x), rtol=0, atol=0)
    from safetensors import safe_open
    with safe_open(str(p), framework="np") as f:
        assert json.loads(f.metadata()["hirestile"])["arch"] == "unet"


def test_weights_file_reads_with_the_hirestile_builder(tmp_path, twin):
    net = twin.UNet(in_channels=1, classes=2, base=4, depth=2)
    p = tmp_path / "w.safetensors"
    twin.save_weights(net, p)
    assert unet_mod.read_arch(p) == {k: v for k, v in twin.read_arch(p).items() if k != "arch"}


# ---- training loop (tiny smoke run)

def test_train_smoke(tmp_path, monkeypatch, twin):
    from hirestile.models.training import train as train_mod
    from hirestile.models.registry import get_spec

    spec = get_spec("astro")
    small = type(spec)(**{**spec.__dict__, "arch": {**spec.arch, "base": 4, "depth": 2},
                          "contract": InputContract(**{**spec.contract.__dict__, "pad_to": 4})})
    monkeypatch.setattr(train_mod, "get_spec", lambda name: small)
    monkeypatch.setattr("hirestile.models.training.data.get_spec", lambda name: small)
    monkeypatch.setattr("hirestile.models.training.evaluate.get_spec", lambda name: small)
    m = train_mod.train("unet-astro", steps=3, out=tmp_path, batch_size=2, patch=32, threads=1,
                        log_every=1, heldout_n=3)
    assert m["steps"] == 3 and len(m["loss_curve"]) == 3
    assert 0 <= m["heldout"]["dice"] <= 1 and set(m["heldout"]["by_kind"]) == set(STYLES)
    assert (tmp_path / "weights" / small.weights).exists()
    saved = json.loads((tmp_path / "metrics" / f"{small.name}.json").read_text())
    assert saved["steps"] == 3
    assert twin.read_arch(tmp_path / "weights" / small.weights)["base"] == 4
    # a --steps run is a pure function of its arguments: the same weights again
    train_mod.train("unet-astro", steps=3, out=tmp_path / "again", batch_size=2, patch=32, threads=1,
                    log_every=1, heldout_n=3)
    from safetensors.numpy import load_file
    a = load_file(str(tmp_path / "weights" / small.weights))
    b = load_file(str(tmp_path / "again" / "weights" / small.weights))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_lr_schedule_warms_up_and_decays(torch):
    from hirestile.models.training.train import lr_at

    assert lr_at(0.0, 1.0) < lr_at(0.03, 1.0) == pytest.approx(1.0)
    assert lr_at(0.5, 1.0) > lr_at(0.9, 1.0) > lr_at(1.0, 1.0) == pytest.approx(0.02)


# ---- evaluation helpers

def test_dice_iou(torch):
    from hirestile.models.training.evaluate import dice_iou

    a = np.zeros((4, 4), bool)
    assert dice_iou(a, a) == (1.0, 1.0)
    b = a.copy()
    b[:2] = True
    c = a.copy()
    c[1:3] = True
    assert dice_iou(b, b) == (1.0, 1.0)
    assert dice_iou(b, c) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(b, a) == (0.0, 0.0)


def test_classical_baselines_find_the_generated_objects(torch):
    from hirestile.models.training.evaluate import classical_nuclei, dice_iou

    s = make_histo((128, 128), rng=2, mode="he")
    lab = classical_nuclei(s.image)
    assert lab.shape == s.mask.shape and lab.max() > 1
    assert dice_iou(lab > 0, s.mask)[0] > 0.5
    pytest.importorskip("photutils")
    from hirestile.models.training.evaluate import photutils_sources

    a = make_astro((128, 128), rng=4, style="float")
    assert dice_iou(photutils_sources(a.image), a.mask)[0] > 0.5
