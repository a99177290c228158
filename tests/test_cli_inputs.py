"""Bad inputs found by the audit, through the CLI in subprocesses: damaged TIFF tiles, bad
--tile / --image / --model values, malformed weights, values beyond float32 range; and the
TIFF path end to end, convert's incomplete mark and quiet progress bars off a terminal."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

import hirestile
from hirestile.errors import ModelError
from hirestile.models.unet import init_state, save_unet, unet

from clihelp import assert_one_line_error, cli

ARCH = dict(in_channels=3, classes=2, base=4, depth=2)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """Tiny RGB UNet weights, a zlib-compressed tiled TIFF, the same cut in half, and bad files."""
    d = tmp_path_factory.mktemp("inputs")
    save_unet(d / "rgb.safetensors", init_state(**ARCH, seed=5), **ARCH)
    rgb = np.random.default_rng(1).integers(0, 255, (75, 101, 3), dtype=np.uint8)
    np.save(d / "rgb.npy", rgb)
    tifffile.imwrite(d / "s.tif", rgb, bigtiff=True, tile=(32, 32), photometric="rgb", compression="zlib")
    data = (d / "s.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) // 2])                 # tiles past the cut are truncated
    (d / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 60)              # valid magic, then junk
    (d / "notes.txt").write_text("not a model")
    (d / "models").mkdir()
    return d


def _no_complete_output(path) -> None:
    zj = path / "zarr.json"
    if zj.exists():
        attrs = json.loads(zj.read_text()).get("attributes", {})
        assert "ome" not in attrs and attrs.get("hirestile", {}).get("status") == "incomplete"


# ---- TIFF ------------------------------------------------------------------------------------
def test_segment_tiff_equals_predict(d):
    out = d / "s.out.zarr"
    r = cli("segment", d / "s.tif", "--model", d / "rgb.safetensors", "-o", out, "--tile", "32",
            "--output", "logits")
    assert r.returncode == 0, r.stderr
    expect = hirestile.predict(hirestile.load_model(d / "rgb.safetensors"), np.load(d / "rgb.npy").transpose(2, 0, 1))
    assert np.array_equal(zarr.open_group(str(out), mode="r")["0"][...], expect)


@pytest.mark.parametrize("command", ["segment", "convert"])
def test_truncated_tiff_tile_is_one_line(d, tmp_path, command):
    out = tmp_path / "out.zarr"
    args = (["segment", d / "cut.tif", "--model", d / "rgb.safetensors", "-o", out] if command == "segment"
            else ["convert", d / "cut.tif", out])
    r = cli(*args)
    assert_one_line_error(r, 2, r"cut.tif: cannot read rows \d+:\d+, columns \d+:\d+ \(zlib.error: .*\); "
                                r"a chunk is corrupt or unreadable: repair or re-create the input")
    _no_complete_output(out)
    if command == "convert":                    # marked incomplete from its first metadata on
        info = cli("info", out)
        assert info.returncode == 0 and "INCOMPLETE: `hirestile convert` stopped" in info.stdout, info.stdout
        assert_one_line_error(cli("segment", out, "--model", d / "rgb.safetensors"), 2, "incomplete")


def test_tiff_junk_after_magic_is_one_line(d):
    assert_one_line_error(cli("info", d / "junk.tif"), 2, r"junk.tif: cannot read this TIFF \(invalid offset.*\); check")


def test_convert_and_example_bars_hidden_off_a_terminal(d, tmp_path):
    r = cli("convert", d / "s.tif", tmp_path / "c.zarr")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "complete" == zarr.open_group(str(tmp_path / "c.zarr"), mode="r").attrs["hirestile"]["status"]
    r = cli("example", "astronomy", tmp_path / "e.zarr", "--size", "64")
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ---- command-line values ---------------------------------------------------------------------
BAD = [
    (["plan", "--model", "unet", "--tile", "-5"], 2, r"--tile must be a positive number.*got -5; e.g. --tile 512"),
    (["plan", "--model", "unet", "--tile", "0"], 2, r"--tile must be a positive number.*got 0"),
    (["segment", "s.tif", "--model", "rgb.safetensors", "--tile", "0"], 2, r"--tile must be a positive"),
    (["plan", "--model", "unet", "--image", "3x"], 2, r"--image '3x' is not a positive size; give --image HxW"),
    (["plan", "--model", "unet", "--pad-to", "0"], 3, r"pad_to must be a positive integer"),
    (["plan", "--model", "models"], 3, r"model models is a directory; a model is a built-in name.*\.onnx.*\.safetensors"),
    (["plan", "--model", "notes.txt"], 3, r"notes.txt is neither .onnx nor .safetensors; a model is a built-in"),
    (["plan", "--model", "gone.safetensors"], 3, r"gone.safetensors does not exist; check the path.*hirestile models"),
    (["plan", "--model", "gone.onnx"], 3, r"gone.onnx does not exist; check the path"),
    (["plan", "--model", "cut.tif.safetensors"], 3, r"does not exist"),
]


@pytest.mark.parametrize("args, code, pattern", BAD, ids=[" ".join(b[0][:1] + b[0][-2:]) for b in BAD])
def test_bad_values(d, args, code, pattern):
    assert_one_line_error(cli(*args, cwd=d), code, pattern)


def test_plan_memory_includes_process_baseline(d):
    r = cli("plan", "--model", d / "rgb.safetensors", "--image", "600x600")
    assert r.returncode == 0, r.stderr
    line = next(s for s in r.stdout.splitlines() if s.startswith("expected peak memory"))
    assert "working memory" in line and "process baseline" in line, line


def test_plan_memory_counts_an_interior_tile(d):
    """Corner tiles read a smaller window; the estimate is for the largest (interior) one
    (float32 windows, so that the difference shows in whole MiB)."""
    def working(image):
        r = cli("plan", "--model", d / "rgb.safetensors", "--image", image, "--tile", "512", "--no-stream",
                "--dtype", "float32")
        assert r.returncode == 0, r.stderr
        line = next(s for s in r.stdout.splitlines() if s.startswith("expected peak memory"))
        value, unit = line.split("working memory ")[1].split()[:2]
        return float(value.replace(",", "")) * {"KiB": 1, "MiB": 1024}[unit]
    assert working("3000x3000") > working("1024x1024")       # 1024^2 at tile 512: corner tiles only


# ---- malformed weights -----------------------------------------------------------------------
@pytest.mark.parametrize("key, value, pattern", [
    ("dec.0.bn1.bias", np.zeros(1, np.float32), r"dec.0.bn1.bias have shape \(1,\), expected \(4,\)"),
    ("head.bias", np.zeros(3, np.float32), r"head.bias have shape \(3,\), expected \(2,\)"),
    ("up.0.bias", np.zeros((4, 1), np.float32), r"up.0.bias have shape \(4, 1\), expected \(4,\)"),
    ("enc.1.bn2.running_mean", np.full(8, np.nan, np.float32), r"enc.1.bn2.running_mean hold NaN or Inf"),
    ("enc.0.conv1.weight", np.full((4, 3, 3, 3), 1e300), r"enc.0.conv1.weight hold NaN or Inf"),
    ("dec.0.bn1.running_var", -np.ones(4, np.float32), r"dec.0.bn1.running_var hold negative"),
])
def test_malformed_unet_weights_refused(key, value, pattern):
    state = init_state(**ARCH, seed=5)
    state[key] = value
    with pytest.raises(ModelError, match=pattern + ".*export"):
        unet(**ARCH, state=state)


def test_malformed_weights_through_cli(d, tmp_path):
    state = init_state(**ARCH, seed=5)
    state["dec.0.bn1.bias"] = np.zeros(1, np.float32)
    save_unet(tmp_path / "bn.safetensors", state, **ARCH)
    r = cli("segment", d / "s.tif", "--model", tmp_path / "bn.safetensors", "-o", tmp_path / "o.zarr")
    assert_one_line_error(r, 3, r"dec.0.bn1.bias have shape \(1,\), expected \(4,\).*export the model again")
    assert not (tmp_path / "o.zarr").exists()
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert_one_line_error(cli("plan", "--model", tmp_path / "w.safetensors"), 3,
                          r"not a readable safetensors file .*; check the path, or save the weights again")


# ---- values beyond float32 -------------------------------------------------------------------
def test_float64_beyond_float32_range_refused(d, tmp_path):
    img = np.random.default_rng(2).random((3, 40, 50))
    img[1, 17, 23] = 1e300
    zarr.create_array(str(tmp_path / "f64.zarr"), data=img)
    r = cli("segment", tmp_path / "f64.zarr", "--model", d / "rgb.safetensors", "-o", tmp_path / "o.zarr",
            "--nan-fill", "0")
    assert "Warning" not in r.stderr
    assert_one_line_error(r, 2, r"value 1e\+300 at channel 1, row 17, column 23 is inf once normalised to "
                                r"float32.*; rescale the input")
    _no_complete_output(tmp_path / "o.zarr")
