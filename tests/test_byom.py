"""Bring your own model (issue 14): what users export loads, against ONNX Runtime and PyTorch.

* valid-padding U-Nets exported by both torch exporters load without a size hint, are exact
  at the sizes they take and refused (with the derived rule) where ONNX Runtime refuses;
* fixed batch sizes: a batch-4 export runs image by image; ops mixing the batch are refused;
* old opsets are upgraded (or read in their old form).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

import hirestile
from hirestile.errors import InputError, ModelError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn, F = torch.nn, torch.nn.functional


def _block(a, b):
    return nn.Sequential(nn.Conv2d(a, b, 3), nn.ReLU(), nn.Conv2d(b, b, 3), nn.ReLU())


class ValidUNet(nn.Module):
    """Ronneberger's U-Net, small: valid 3x3 convs, 2x2 max-pools, 2x2 transposed convs. ``crop``
    "constant": the skips lose a constant margin (the paper's 4, 16, 40, 88), so they align only
    at some sizes (8k + 4 at depth 3); "centre": the margin is computed from the sizes."""

    def __init__(self, crop="constant", depth=3, base=2):
        super().__init__()
        torch.manual_seed(0)
        w = [base * 2 ** i for i in range(depth + 1)]
        cins = [1] + w[:-1]
        self.enc = nn.ModuleList(_block(cins[i], w[i]) for i in range(depth + 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(_block(2 * w[i], w[i]) for i in range(depth))
        self.head = nn.Conv2d(w[0], 2, 1)
        self.depth, self.crop = depth, crop
        self.margins = [0] * depth
        self.margins[-1] = 4
        for i in range(depth - 2, -1, -1):
            self.margins[i] = 2 * self.margins[i + 1] + 8
        for p in self.parameters():
            p.data.uniform_(-0.5, 0.5)
        self.eval()

    def forward(self, x):
        skips = []
        for i, b in enumerate(self.enc):
            x = b(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        x = skips[-1]
        for i in range(self.depth - 1, -1, -1):
            u, s = self.up[i](x), skips[i]
            if self.crop == "constant":
                c = self.margins[i]
                s = s[:, :, c:-c, c:-c]
            else:
                top, left = (s.shape[-2] - u.shape[-2]) // 2, (s.shape[-1] - u.shape[-1]) // 2
                s = s[:, :, top:top + u.shape[-2], left:left + u.shape[-1]]
            x = self.dec[i](torch.cat([s, u], 1))
        return self.head(x)


def export(net, example, dynamo, *, opset=17, dynamic=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kw = {}
            if dynamic:
                kw["dynamic_shapes"] = {"x": {2: torch.export.Dim("h", min=16), 3: torch.export.Dim("w", min=16)}}
            prog = torch.onnx.export(net, (example,), None, input_names=["x"], output_names=["y"],
                                     opset_version=max(opset, 18), dynamo=True, verbose=False, **kw)
            return prog.model_proto.SerializeToString()
        f = io.BytesIO()
        torch.onnx.export(net, (example,), f, input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamo=False, dynamic_axes={"x": {2: "h", 3: "w"}} if dynamic else None)
        return f.getvalue()


def ort_run(data, x):
    """ONNX Runtime's output, or None where it refuses the input."""
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    try:
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception:  # onnxruntime's Fail / InvalidArgument / RuntimeException
        return None


def load(tmp_path, data, name="net"):
    p = tmp_path / f"{name}.onnx"
    p.write_bytes(data)
    return hirestile.load_model(p)


def close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-6), np.abs(a - b).max()


@pytest.fixture(scope="module")
def valid_exports():
    out = {}
    for crop in ("constant", "centre"):
        net = ValidUNet(crop)
        for dynamo in (False, True):
            out[crop, dynamo] = (net, export(net, torch.zeros(1, 1, 92, 92), dynamo))
    return out


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_valid_unet_constant_crops_loads_without_hint(valid_exports, dynamo, tmp_path):
    """Takes 8k + 4 >= 92 only (512, the importer's first probe, is not one): it loads, says
    so, is exact where ONNX Runtime runs and refused where ONNX Runtime refuses."""
    net, data = valid_exports["constant", dynamo]
    m = load(tmp_path, data)
    assert m.takes() == "8k + 4, >= 92"  # independent check: ONNX Runtime runs exactly those below
    rng = np.random.default_rng(0)
    for h, w in [(92, 92), (100, 124), (116, 108)]:
        x = rng.random((1, 1, h, w), np.float32)
        ref = ort_run(data, x)
        assert ref is not None
        with torch.no_grad():
            close(ref, net(torch.from_numpy(x)).numpy())
        full = hirestile.predict(m, x[0])
        close(full, ref[0])
        assert np.array_equal(hirestile.predict(m, x[0], tile=(8, 12), tile_origin=(3, 5)), full)
    for h, w in [(1000, 1100), (93, 92), (84, 84)]:
        x = rng.random((1, 1, h, w), np.float32)
        assert ort_run(data, x) is None
        with pytest.raises(InputError, match=r"cannot take a \d+x\d+ image.*it takes 8k \+ 4, >= 92"):
            hirestile.predict(m, x[0])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_valid_unet_size_derived_crops(valid_exports, dynamo, tmp_path):
    """Crops computed from the sizes: any size >= 92, off-centre crops included, as ONNX Runtime."""
    net, data = valid_exports["centre", dynamo]
    m = load(tmp_path, data)
    assert m.takes() == "any size >= 92"
    rng = np.random.default_rng(1)
    for h, w in [(92, 93), (97, 105), (110, 99)]:
        x = rng.random((1, 1, h, w), np.float32)
        ref = ort_run(data, x)
        full = hirestile.predict(m, x[0])
        close(full, ref[0])
        assert np.array_equal(hirestile.predict(m, x[0], tile=(8, 8), tile_origin=(1, 2)), full)
    x = rng.random((1, 1, 91, 100), np.float32)
    assert ort_run(data, x) is None
    with pytest.raises(InputError, match=r"too small for it; it takes any size >= 92 \(the smallest: 92x100\)"):
        hirestile.predict(m, x[0])


def test_size_hint_is_a_load_model_parameter(valid_exports, tmp_path):
    _, data = valid_exports["constant", False]
    p = tmp_path / "v.onnx"
    p.write_bytes(data)
    m = hirestile.load_model(p, size_hint=(100, 100))
    assert m.takes() == "8k + 4, >= 92"
    with pytest.raises(ModelError, match=r"size_hint=\(H, W\)"):
        hirestile.load_model(p, size_hint=(93, 93))


@pytest.mark.parametrize("name", ["unet_same", "resnet_fcn", "dwsep"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_fixed_batch_4_export_runs_per_image(torch_nets, name, dynamo, tmp_path):
    spec = torch_nets[name]
    net = spec.build(0)
    h, w = spec.sizes[0]
    x = np.random.default_rng(2).random((4, spec.channels, h, w), np.float32)
    data = export(net, torch.from_numpy(x), dynamo)
    m = load(tmp_path, data, name)
    ref = ort_run(data, x)
    got = hirestile.predict(m, x)
    assert got.shape == ref.shape
    close(got, ref)
    with torch.no_grad():
        close(got, net(torch.from_numpy(x)).numpy())
    assert np.array_equal(hirestile.predict(m, x, tile=(16, 16)), got)


class _Mixer(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv, self.how = nn.Conv2d(3, 3, 3, padding=1), how

    def forward(self, x):
        y = self.conv(x)
        if self.how == "sum":
            return y - y.sum(0, keepdim=True)
        if self.how == "flip":
            return y.flip(0)
        return y.transpose(0, 1)


@pytest.mark.parametrize("how", ["sum", "flip", "transpose"])
def test_ops_mixing_the_batch_are_refused(how, tmp_path):
    data = export(_Mixer(how).eval(), torch.zeros(4, 3, 16, 16), False)
    with pytest.raises(ModelError) as e:
        load(tmp_path, data)
    msg = str(e.value)
    assert "\n" not in msg and "unsupported ONNX ops" in msg and "('" in msg, msg


@pytest.mark.parametrize("opset", [9, 10, 11])
def test_old_opsets_load(torch_nets, opset, tmp_path):
    """TorchScript exports at opset 9 (Upsample), 10 (Resize-10) and 11: read or upgraded, as ONNX Runtime."""
    spec = torch_nets["unet_bilinear"]
    net = spec.build(0)
    h, w = spec.sizes[0]
    data = export(net, torch.zeros(1, spec.channels, h, w), False, opset=opset, dynamic=False)
    m = load(tmp_path, data)
    x = np.random.default_rng(3).random((1, spec.channels, h, w), np.float32)
    close(hirestile.predict(m, x[0]), ort_run(data, x)[0])


def test_opset_below_6_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper as oh

    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])])
    data = oh.make_model(g, opset_imports=[oh.make_opsetid("", 5)], ir_version=3).SerializeToString()
    with pytest.raises(ModelError, match=r"opset 5 is too old \(hirestile reads opset 6 and newer\)"):
        load(tmp_path, data)
    assert onnx  # imported for the helper


# ----------------------------------------------------------------------------- the command line


def _cli(capsys, *args):
    from hirestile.cli import main

    code = main([str(v) for v in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_shows_what_hirestile_makes_of_a_model(valid_exports, tmp_path, capsys):
    _, data = valid_exports["constant", True]
    p = tmp_path / "vunet.onnx"
    p.write_bytes(data)
    code, out, err = _cli(capsys, "inspect", p)
    assert code == 0, err
    for want in ["inputs:   x (1, 1, ", "outputs:  y ", "opset:    18 (read as it is)", "batch:    1", "Conv 15",
                 "ConvTranspose 3", "sizes:    8k + 4, >= 92", "tileable: yes", "halo (top, left, bottom, right)",
                 "total stride: (8, 8)", "FLOPs per output pixel", "scale: default"]:
        assert want in out, (want, out)
    batch = export(_Mixer("none").eval(), torch.zeros(4, 3, 16, 16), False)
    (tmp_path / "b4.onnx").write_bytes(batch)
    code, out, err = _cli(capsys, "inspect", tmp_path / "b4.onnx", "--pad-to", "4")
    assert code == 3 and "Transpose" in err        # transpose(0, 1) mixes the batch: refused, one line
    assert err.count("\n") == 1
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    (tmp_path / "b4.onnx").write_bytes(export(net, torch.zeros(4, 3, 16, 16), False, dynamic=False))
    code, out, err = _cli(capsys, "inspect", tmp_path / "b4.onnx", "--pad-to", "4")
    assert code == 0, err
    assert "batch:    fixed at 4: runs one image at a time" in out and "pad: flags" in out
    code, out, err = _cli(capsys, "inspect", "unet")          # a built-in: its contract pads
    assert code == 0, err
    assert "sizes:    any size >= 1" in out and "(the network alone: 16k, >= 16;" in out and "pad: built-in" in out


def test_segment_prints_the_contract_and_warns_on_raw_integers(tmp_path, capsys):
    import tifffile

    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    model = tmp_path / "m.onnx"
    model.write_bytes(export(net, torch.zeros(1, 3, 16, 16), False))
    rgb = np.random.default_rng(4).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", rgb, photometric="rgb")
    code, out, err = _cli(capsys, "segment", tmp_path / "s.tif", "--model", model, "-o", tmp_path / "a.zarr", "-q")
    assert code == 0, err
    assert "input contract: 3 channels; values as given; any size (scale: default, normalisation: default, " \
           "pad: default)" in out
    assert ("warning: raw 0..255 values go into the network; pass --scale dtype or write a sidecar if it was "
            "trained on [0, 1]") in err
    code, out, err = _cli(capsys, "segment", tmp_path / "s.tif", "--model", model, "-o", tmp_path / "b.zarr", "-q",
                          "--scale", "dtype")
    assert code == 0, err
    assert "integers / dtype max" in out and "scale: flags" in out and "warning" not in err
    (tmp_path / "m.onnx.json").write_text('{"scale": "dtype", "mean": [0.5]}')
    code, out, err = _cli(capsys, "segment", tmp_path / "s.tif", "--model", model, "-o", tmp_path / "c.zarr", "-q")
    assert code == 0, err
    assert "scale: sidecar, normalisation: sidecar, pad: default" in out and "warning" not in err


def test_opset_6_read_in_its_old_form_where_the_converter_fails(tmp_path):
    """An IR-3 file whose initializers are not graph inputs: onnx.version_converter refuses it, so
    Add-6 (broadcast=1, axis=1) and Pad-2 (pads / value attributes) are read as they are."""
    import onnx
    from onnx import TensorProto, helper as oh, numpy_helper as nh, version_converter

    nodes = [oh.make_node("Add", ["x", "b"], ["a"], broadcast=1, axis=1),
             oh.make_node("Pad", ["a"], ["y"], pads=[0, 0, 1, 2, 0, 0, 3, 0], mode="reflect")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 7])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [nh.from_array(np.array([1.0, 2.0, -3.0], np.float32), "b")])
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 6)], ir_version=3)
    with pytest.raises(Exception):  # noqa: B017 - whatever the converter raises
        version_converter.convert_version(model, 13)
    p = tmp_path / "old.onnx"
    onnx.save(model, str(p))
    x = np.random.default_rng(5).random((2, 3, 6, 7), np.float32)
    ref = np.pad(x + np.array([1, 2, -3], np.float32)[:, None, None], ((0, 0), (0, 0), (1, 3), (2, 0)),
                 mode="reflect")
    assert np.array_equal(hirestile.predict(hirestile.load_model(p), x), ref)
