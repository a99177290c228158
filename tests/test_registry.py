"""The built-in model registry, its shipped files, and hirestile == PyTorch on the shipped weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hirestile.models.registry import REGISTRY, ModelSpec, get_spec, list_specs

NAMES = sorted(REGISTRY)


def test_names_and_aliases_resolve():
    assert get_spec("unet").name == "unet"
    assert get_spec("unet-astro").name == "unet-astro"
    for alias in ("nuclei", "unet-histo", "histo", "NUCLEI"):
        assert get_spec(alias).name == "unet"
    for alias in ("astro", "sources", " Astro "):
        assert get_spec(alias).name == "unet-astro"
    assert [s.name for s in list_specs()] == list(REGISTRY)


def test_aliases_are_unique():
    seen: list[str] = []
    for s in list_specs():
        seen += [s.name, *s.aliases]
    assert len(seen) == len(set(seen))


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError) as e:
        get_spec("resnet")
    msg = str(e.value)
    assert "resnet" in msg and "unet" in msg and "unet-astro" in msg and "astro" in msg


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_consistent(name):
    s = get_spec(name)
    assert isinstance(s, ModelSpec)
    with pytest.raises(AttributeError):
        s.name = "x"  # frozen
    assert s.contract.channels == s.arch["in_channels"]
    assert len(s.classes) == s.arch["classes"] and s.classes[0] == "background"
    if s.arch["padding"] == "same":
        assert s.contract.pad_to == 2 ** s.arch["depth"]
    assert s.contract.pad_mode == "reflect"
    assert s.description


@pytest.mark.parametrize("name", NAMES)
def test_weights_shipped_small_and_self_describing(name):
    from safetensors import safe_open

    s = get_spec(name)
    assert s.weights_path.exists(), f"{s.weights_path} missing: run python -m hirestile.models.training.train {name}"
    assert s.weights_path.stat().st_size <= 10 * 2**20
    with safe_open(str(s.weights_path), framework="np") as f:
        meta = f.metadata()
        keys = set(f.keys())
    arch = json.loads(meta["hirestile"])
    assert arch.pop("arch") == "unet" and arch == s.arch
    assert json.loads(meta["classes"]) == list(s.classes)
    assert "enc.0.bn1.running_var" in keys and not any(k.endswith("num_batches_tracked") for k in keys)


@pytest.mark.parametrize("name", NAMES)
def test_card_has_the_required_sections(name):
    s = get_spec(name)
    text = s.card_path.read_text().lower()
    for word in ("training data", "metrics", "intended use", "limitations", "licen", "dice"):
        assert word in text, f"{s.card} lacks {word!r}"


# ---- hirestile == PyTorch on the shipped weights (docs/architecture.md, section 1)

def _raw(name: str, shape: tuple[int, int], seed: int, kind: str) -> np.ndarray:
    from hirestile.models.training.synth_astro import make_astro
    from hirestile.models.training.synth_histo import make_histo

    if get_spec(name).name == "unet":
        return np.moveaxis(make_histo(shape, rng=seed, mode=kind).image, -1, 0)
    return make_astro(shape, rng=seed, style=kind).image[None]


def _torch_logits(net, contract, raw: np.ndarray, dtype=None) -> np.ndarray:
    import torch

    x = torch.from_numpy(contract.normalize(raw))[None]
    H, W = x.shape[-2:]
    ph, pw = (-H) % contract.pad_to, (-W) % contract.pad_to
    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    if dtype is not None:
        net, x = net.to(dtype), x.to(dtype)
    with torch.no_grad():
        return net(x)[0, :, :H, :W].numpy()


CASES = [("unet", "he"), ("unet", "ihc"), ("unet-astro", "display8"), ("unet-astro", "float")]


@pytest.mark.parametrize("name,kind", CASES)
def test_hirestile_equals_torch_on_builtin_weights(torch, name, kind):
    import hirestile
    from hirestile.models.training.torch_unet import load_weights

    s = get_spec(name)
    assert s.weights_path.exists(), f"{s.weights_path} missing (the weights ship with the package)"
    net = load_weights(s.weights_path)
    model = hirestile.load_model(name)
    assert model.classes == s.classes and model.contract == s.contract
    raw = _raw(name, (75, 90), seed=3, kind=kind)  # not a multiple of 16: exercises the pad-to contract
    ref = _torch_logits(net, s.contract, raw)
    full = hirestile.predict(model, raw)
    assert full.shape == ref.shape
    assert np.abs(full - ref).max() <= 1e-5 * np.abs(ref).max()
    tiled = hirestile.predict(model, raw, tile=(32, 40), tile_origin=(5, 11))
    np.testing.assert_array_equal(tiled, full)


def test_hirestile_accuracy_on_ill_conditioned_astro_input(torch):
    """Raw uint16 frames carry a bias + sky pedestal ~100x the noise, so the network
    amplifies differences of nearly equal inputs, and float32 rounding of any
    implementation shows. Against a float64 forward, hirestile must stay within a
    small factor of PyTorch's own float32 error (and bit-exact when tiled)."""
    import hirestile
    from hirestile.models.training.torch_unet import load_weights

    s = get_spec("unet-astro")
    assert s.weights_path.exists(), f"{s.weights_path} missing (the weights ship with the package)"
    net = load_weights(s.weights_path)
    raw = _raw("unet-astro", (75, 90), seed=3, kind="uint16")
    ref64 = _torch_logits(net, s.contract, raw, dtype=torch.float64)
    ref32 = _torch_logits(load_weights(s.weights_path), s.contract, raw)
    model = hirestile.load_model("unet-astro")
    full = hirestile.predict(model, raw)
    scale = np.abs(ref64).max()
    err_torch = np.abs(ref32 - ref64).max() / scale
    err_hs = np.abs(full - ref64).max() / scale
    assert err_hs <= max(10 * err_torch, 1e-5), (err_hs, err_torch)
    assert err_hs <= 1e-4
    np.testing.assert_array_equal(hirestile.predict(model, raw, tile=(32, 40), tile_origin=(5, 11)), full)
