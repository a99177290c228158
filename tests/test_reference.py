"""hirestile against PyTorch and ONNX Runtime on the reference networks (conftest).

Each network is built in PyTorch with random weights and non-trivial batch-norm
statistics, exported with torch.onnx.export (opset 17, dynamic image size) and
loaded with ``hirestile.load_model``. Full-frame and tiled outputs must be within
1e-5 * max|ref| of PyTorch and of ONNX Runtime, and tiled must equal full-frame
bit for bit (docs/architecture.md, section 1). Whole-image networks must be refused tiled,
with the node named, and still match full-frame.
"""
from __future__ import annotations

import numpy as np
import pytest

import hirestile
from hirestile.errors import NotTileableError

REL = 1e-5

TILEABLE = ["unet_same", "unet_valid", "unet_bilinear", "unet_bilinear_ac", "dilated", "resnet_fcn", "dwsep",
            "reflect", "zoo"]
WHOLE_IMAGE = ["se_gap", "se_mean", "instnorm", "groupnorm"]


def image(c, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((c, h, w)).astype(np.float32)


def close(y, ref, what):
    assert y.shape == ref.shape, f"{what}: shape {y.shape} vs {ref.shape}"
    err = float(np.abs(y.astype(np.float64) - ref).max())
    assert err <= REL * float(np.abs(ref).max()), f"{what}: max error {err:.3g}, max|ref| {np.abs(ref).max():.3g}"


def references(net, data, x):
    """(PyTorch's output, ONNX Runtime's output) for image ``x``."""
    import torch

    ort = pytest.importorskip("onnxruntime")
    with torch.no_grad():
        ref_t = net(torch.from_numpy(x)[None]).numpy()[0]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ref_o = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]
    return ref_t, ref_o


@pytest.fixture(scope="module")
def loaded(reference_onnx, tmp_path_factory):
    """name -> (module, onnx bytes, hirestile model loaded from the .onnx file)."""
    cache = {}

    def get(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            net, data = reference_onnx(name, **kw)
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            path.write_bytes(data)
            cache[key] = (net, data, hirestile.load_model(path))
        return cache[key]

    return get


@pytest.mark.parametrize("name", TILEABLE)
def test_tileable_net_matches_references(name, torch_nets, loaded):
    spec = torch_nets[name]
    net, data, m = loaded(name)
    assert hirestile.analyze(m, spec.sizes[0]).tileable
    for k, size in enumerate(spec.sizes):
        x = image(spec.channels, *size, seed=k)
        ref_t, ref_o = references(net, data, x)
        y = hirestile.predict(m, x)
        close(y, ref_t, f"{name} {size} full-frame vs PyTorch")
        close(y, ref_o, f"{name} {size} full-frame vs ONNX Runtime")
        yt = hirestile.predict(m, x, tile=spec.tile)
        assert np.array_equal(yt, y), f"{name} {size}: tiled != full-frame"
        close(yt, ref_o, f"{name} {size} tiled vs ONNX Runtime")
        yt2 = hirestile.predict(m, x, tile=(spec.tile[0] + 3, spec.tile[1] - 1), tile_origin=(5, 3))
        assert np.array_equal(yt2, y), f"{name} {size}: tiled (odd grid) != full-frame"


@pytest.mark.parametrize("name", WHOLE_IMAGE)
def test_whole_image_net_refused_tiled(name, torch_nets, loaded):
    spec = torch_nets[name]
    net, data, m = loaded(name)
    rep = hirestile.analyze(m, spec.sizes[0])
    assert rep.tileable is False
    nodes = [n for n in m.graph.nodes if type(n.op).__name__ == spec.whole_image_kind]
    assert nodes, f"no {spec.whole_image_kind} node imported"
    assert any(repr(n.name) in rep.reason or n.name in rep.reason for n in nodes), rep.reason
    if name == "se_mean":                                   # the op the user's model names, not ours
        assert "(ReduceMean)" in rep.reason, rep.reason
    x = image(spec.channels, *spec.sizes[0])
    with pytest.raises(NotTileableError) as e:
        hirestile.predict(m, x, tile=(8, 8))
    assert any(n.name in str(e.value) for n in nodes), str(e.value)
    ref_t, ref_o = references(net, data, x)
    y = hirestile.predict(m, x)
    close(y, ref_o, f"{name} full-frame vs ONNX Runtime")
    close(y, ref_t, f"{name} full-frame vs PyTorch")


def test_fixed_size_export_runs_at_other_sizes(torch, torch_nets, loaded):
    """A valid-padding U-Net exported at one fixed size (crop offsets baked in as
    constants) runs exactly at other sizes, like its PyTorch code."""
    spec = torch_nets["unet_valid"]
    net, data, m = loaded("unet_valid", dynamic=False)
    x = image(1, *spec.sizes[1], seed=3)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None]).numpy()[0]
    y = hirestile.predict(m, x)
    close(y, ref, "fixed-size valid U-Net at another size")
    assert np.array_equal(hirestile.predict(m, x, tile=(7, 9)), y)


@pytest.mark.parametrize("name", TILEABLE)
def test_dynamo_export_matches(name, torch_nets, loaded):
    """The same families through torch.onnx.export(dynamo=True)."""
    pytest.importorskip("onnxscript")
    spec = torch_nets[name]
    net, data, m = loaded(name, dynamo=True, dynamic=True)
    x = image(spec.channels, *spec.sizes[-1], seed=4)
    ref_t, ref_o = references(net, data, x)
    y = hirestile.predict(m, x)
    close(y, ref_t, f"dynamo {name} vs PyTorch")
    close(y, ref_o, f"dynamo {name} vs ONNX Runtime")
    assert np.array_equal(hirestile.predict(m, x, tile=spec.tile, tile_origin=(3, 1)), y)


def test_from_torch(torch, torch_nets):
    spec = torch_nets["resnet_fcn"]
    net = spec.build(1)
    m = hirestile.from_torch(net, torch.zeros((1, spec.channels) + spec.sizes[0]))
    x = image(spec.channels, *spec.sizes[1], seed=5)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None]).numpy()[0]
    y = hirestile.predict(m, x)
    close(y, ref, "from_torch resnet_fcn")
    assert np.array_equal(hirestile.predict(m, x, tile=spec.tile), y)
