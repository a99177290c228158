"""The ``hirestile`` command line, run in subprocesses: commands, bad inputs, kill -9 and resume."""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

import hirestile
from hirestile.examples import write_example
from hirestile.models.unet import init_state, save_unet

from clihelp import TIMEOUT, assert_one_line_error, cli
from npref import assert_next_level, expected_output


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny UNet weights (3 -> 2 and 1 -> 2 classes, one valid-padding) and a small example slide."""
    d = tmp_path_factory.mktemp("cli")
    for name, arch in {"rgb": dict(in_channels=3, classes=2, base=4, depth=2),
                       "grey": dict(in_channels=1, classes=2, base=4, depth=2),
                       "valid": dict(in_channels=1, classes=2, base=2, depth=2, padding="valid")}.items():
        save_unet(d / f"{name}.safetensors", init_state(**arch, seed=5), **arch)
    write_example("histology", str(d / "slide.zarr"), size="300x260", progress=False)
    return d


def _reference(model_path, chw, kind="probabilities"):
    """The full-frame logits as the stored ``kind``, by the test's own NumPy rule (npref)."""
    return expected_output(hirestile.predict(hirestile.load_model(model_path), chw), kind)


def _slide(work) -> np.ndarray:
    return zarr.open_group(str(work / "slide.zarr"), mode="r")["0"][...]


# ---- commands ----------------------------------------------------------------------------
def test_segment_info_roundtrip(work):
    r = cli("segment", "slide.zarr", "--model", "rgb.safetensors", "--tile", "128", "--output", "labels",
            "--pyramid", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "tiles computed" in r.stderr and "MP/s" in r.stderr and "peak RSS" in r.stderr
    assert "halo" in r.stderr and "redundancy" in r.stderr and "compute" in r.stderr
    out = work / "slide.rgb.zarr"                                   # default output name
    g = zarr.open_group(str(out), mode="r")
    got = g["0"][...]
    want = _reference(work / "rgb.safetensors", _slide(work), "labels")
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert sorted(g.keys()) == ["0", "1"]
    assert_next_level(g["1"][...], got, "labels")                   # nearest samples
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["ome"]["version"] == "0.5" and "image-label" in attrs["ome"]
    info = cli("info", out)
    assert info.returncode == 0 and "status: complete" in info.stdout and "labels of model 'rgb'" in info.stdout
    assert "(300, 260)" in info.stdout and "levels:  2" in info.stdout
    again = cli("segment", "slide.zarr", "--model", "rgb.safetensors", "--output", "labels", cwd=work)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_info_example_models_plan(work, tmp_path):
    info = cli("info", work / "slide.zarr")
    assert info.returncode == 0
    for s in ("OME-Zarr 0.5", "axes CHW", "uint8", "chunks:  (3, 300, 260)", "shards:  none"):
        assert s in info.stdout
    r = cli("example", "astronomy", tmp_path / "sky.zarr", "--size", "200", "-q")
    assert r.returncode == 0 and "hirestile segment" in r.stdout
    assert zarr.open_group(str(tmp_path / "sky.zarr"), mode="r")["0"].shape == (200, 200)
    m = cli("models")
    assert m.returncode == 0 and "unet" in m.stdout and "unet-astro" in m.stdout and "classes:" in m.stdout
    assert "arcsinh(x / 0.01)" in m.stdout and "expected in [0, 1]" in m.stdout       # the whole contract
    p = cli("plan", "--model", work / "rgb.safetensors", "--image", "1000x700", "--tile", "256")
    assert p.returncode == 0, p.stderr
    for s in ("halo", "total stride", "receptive field", "FLOPs per output pixel", "redundancy",
              "expected peak memory", "tiles", "shards"):
        assert s in p.stdout, s
    assert "mode:" not in p.stdout                       # --tile names an overlap tile: nothing to decide
    for budget, why in (("260MiB", True), ("4GiB", False)):   # 4 GiB: one tile covers it, nothing weighed
        p = cli("plan", "--model", work / "rgb.safetensors", "--image", "1000x700", "--memory", budget)
        assert p.returncode == 0 and "mode: overlap tiles" in p.stdout, p.stdout
        assert ("--stream for streamed bands" in p.stdout) == why, p.stdout
    p = cli("plan", "--model", work / "rgb.safetensors", "--image", "1000x700", "--memory", "194MiB", "--stream")
    assert p.returncode == 0 and "streamed: bands down column strips" in p.stdout and "mode:" not in p.stdout


def test_convert_tiff_streams_to_ome_zarr(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (130, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", rgb, tile=(64, 64), photometric="rgb")
    r = cli("convert", tmp_path / "s.tif", tmp_path / "s.zarr", "--pyramid", "-q")
    assert r.returncode == 0, r.stderr
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(g["0"][...], rgb.transpose(2, 0, 1))
    assert g.attrs["ome"]["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}
    assert cli("convert", tmp_path / "s.tif", tmp_path / "s.zarr").returncode == 4     # exists


def test_console_script_and_module():
    import sysconfig

    # where pip puts it for this interpreter, or on PATH
    exe = shutil.which("hirestile", path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))
    assert exe is not None, "the console script is not installed: pip install -e '.[test]'"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.startswith("hirestile ")
    assert cli("--help").returncode == 0


# ---- bad input: one line, exit code, no traceback, no complete-looking output -------------------
def _setup(kind: str, d):
    rng = np.random.default_rng(0)
    if kind == "text":
        (d / "notes.txt").write_text("not an image")
    elif kind == "4d":
        zarr.create_array(str(d / "4d.zarr"), data=np.zeros((2, 2, 20, 20), np.uint8))
    elif kind == "grey":
        zarr.create_array(str(d / "grey.zarr"), data=np.zeros((20, 20), np.uint8))
    elif kind == "complex":
        zarr.create_array(str(d / "c.zarr"), data=np.zeros((3, 20, 20), np.complex64))
    elif kind == "nan":
        a = rng.random((40, 30)).astype(np.float32)
        a[17, 23] = np.nan
        zarr.create_array(str(d / "nan.zarr"), data=a)
    elif kind == "empty":
        zarr.create_array(str(d / "empty.zarr"), shape=(0, 10), dtype=np.uint8)
    elif kind == "tiny":
        zarr.create_array(str(d / "tiny.zarr"), data=np.zeros((6, 6), np.uint8))
    elif kind == "exists":
        (d / "taken").mkdir()
        (d / "taken" / "keep.txt").write_text("mine")
    elif kind == "missing-chunk":
        write_example("histology", str(d / "holey.zarr"), size=600, pyramid=False, progress=False)
        os.remove(d / "holey.zarr" / "0" / "c" / "0" / "1" / "0")
    elif kind == "corrupt-chunk":
        write_example("histology", str(d / "bad.zarr"), size=600, pyramid=False, progress=False)
        (d / "bad.zarr" / "0" / "c" / "0" / "1" / "1").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    elif kind == "truncated-blosc":
        from numcodecs import Blosc
        rgb = np.random.default_rng(2).integers(0, 255, (3, 300, 300), dtype=np.uint8)
        zarr.create_array(str(d / "cut.zarr"), data=rgb, chunks=(3, 128, 128), zarr_format=2,
                          compressors=Blosc(cname="lz4"))
        chunk = d / "cut.zarr" / "0.1.1"
        chunk.write_bytes(chunk.read_bytes()[:1000])
    elif kind == "bad-onnx":
        (d / "net.onnx").write_bytes(b"\x08\x07\x12\x04junk" * 10)
    elif kind == "bad-safetensors":
        (d / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")


BAD = [
    ("missing path", None, ["segment", "nowhere.zarr", "--model", "{rgb}"], 2, r"no such file"),
    ("not zarr/TIFF", "text", ["segment", "notes.txt", "--model", "{rgb}"], 2, r"not a zarr store or TIFF"),
    ("wrong ndim", "4d", ["segment", "4d.zarr", "--model", "{rgb}"], 2, r"4 dimensions"),
    ("channels", "grey", ["segment", "grey.zarr", "--model", "{rgb}"], 2, r"1 channel.*takes 3"),
    ("dtype", "complex", ["segment", "c.zarr", "--model", "{rgb}"], 2, r"dtype complex64 is not supported"),
    ("NaN", "nan", ["segment", "nan.zarr", "--model", "{grey}"], 2, r"NaN at channel 0, row 17, column 23.*--nan-fill"),
    ("empty", "empty", ["segment", "empty.zarr", "--model", "{rgb}"], 2, r"empty"),
    ("too small", "tiny", ["segment", "tiny.zarr", "--model", "{valid}"], 2, r"tiny.zarr: model 'valid' cannot take a 6x6 image.*larger image"),
    ("output exists", "exists", ["segment", "{slide}", "--model", "{rgb}", "-o", "taken"], 4,
     r"already exists.*--overwrite"),
    ("overwrite non-zarr", "exists", ["segment", "{slide}", "--model", "{rgb}", "-o", "taken", "--overwrite"], 4,
     r"not a zarr store.*will not delete"),
    ("not writable", None, ["segment", "{slide}", "--model", "{rgb}", "-o", "/proc/hirestile-out.zarr"], 4,
     r"cannot create"),
    ("missing chunk", "missing-chunk", ["segment", "holey.zarr", "--model", "{rgb}"], 2, r"chunk c/0/1/0 is missing"),
    ("corrupt chunk", "corrupt-chunk", ["segment", "bad.zarr", "--model", "{rgb}", "--tile", "256"], 2,
     r"corrupt"),
    ("truncated Blosc chunk", "truncated-blosc", ["segment", "cut.zarr", "--model", "{rgb}", "--tile", "256"], 2,
     r"cut.zarr: chunk 0.1.1 is truncated \(1000 of \d+ bytes\); a chunk is corrupt"),
    ("unknown model", None, ["segment", "{slide}", "--model", "no-such-net"], 3, r"unknown model 'no-such-net'"),
    ("malformed onnx", "bad-onnx", ["segment", "{slide}", "--model", "net.onnx"], 3, r"net.onnx"),
    ("malformed safetensors", "bad-safetensors", ["segment", "{slide}", "--model", "w.safetensors"], 3,
     r"w.safetensors"),
    ("bad level", None, ["info", "{slide}", "--level", "5"], 2, r"level 5 does not exist"),
    ("bad example", None, ["example", "zoology", "z.zarr"], 2, r"unknown example"),
]


@pytest.mark.parametrize("name, setup, args, code, pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input(work, tmp_path, name, setup, args, code, pattern):
    if setup:
        _setup(setup, tmp_path)
    subs = {"rgb": work / "rgb.safetensors", "grey": work / "grey.safetensors",
            "valid": work / "valid.safetensors", "slide": work / "slide.zarr"}
    before = set(os.listdir(tmp_path))
    r = cli(*[a.format(**subs) for a in args], cwd=tmp_path)
    assert_one_line_error(r, code, pattern)
    for new in set(os.listdir(tmp_path)) - before:                 # nothing that looks like a finished output
        zj = tmp_path / new / "zarr.json"
        if zj.exists():
            attrs = json.loads(zj.read_text()).get("attributes", {})
            assert "ome" not in attrs and attrs.get("hirestile", {}).get("status") == "incomplete"
    if name == "output exists":
        assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_io_error_while_writing(work, tmp_path):
    """A write failing mid-run (file size limit -> EFBIG, like a full disk): one line, incomplete output."""
    args = ["segment", work / "slide.zarr", "--model", work / "rgb.safetensors", "--output", "logits", "--tile", "128"]
    assert cli(*args, "-o", tmp_path / "warm.zarr").returncode == 0      # numba's cache is written now

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000))

    r = cli(*args, "-o", tmp_path / "out.zarr", preexec_fn=limit)
    assert_one_line_error(r, 4, r"writing .*out.zarr failed at tile \d+ \(File too large\).*rerun")
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs
    assert "ome" not in attrs and attrs["hirestile"]["status"] == "incomplete"
    info = cli("info", tmp_path / "out.zarr")
    assert "INCOMPLETE" in info.stdout
    ok = cli(*args, "-o", tmp_path / "out.zarr")                           # same command, no limit: finishes
    assert ok.returncode == 0, ok.stderr
    warm = zarr.open_group(str(tmp_path / "warm.zarr"), mode="r")["0"][...]
    assert np.array_equal(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...], warm)


# ---- kill -9 and resume ---------------------------------------------------------------------
def _lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _start(work, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hirestile", "segment", str(work / "big.zarr"), "--model",
                             str(work / "rgb.safetensors"), "-o", str(out), "--tile", "32", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def big(work):
    if not (work / "big.zarr").exists():
        write_example("histology", str(work / "big.zarr"), size="256x288", pyramid=False, progress=False)
    return zarr.open_group(str(work / "big.zarr"), mode="r")["0"][...]


def _wait_for(cond, proc, timeout=TIMEOUT):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            return False
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.002)
    return True


def test_sigkill_at_random_tile_then_resume(work, big, tmp_path):
    total = 8 * 9
    out = tmp_path / "out.zarr"
    log = out / ".hirestile" / "done.log"
    kill_at = random.Random(os.getpid()).randint(2, total // 2)
    proc = _start(work, out)
    reached = _wait_for(lambda: _lines(log) >= kill_at, proc)
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    assert reached, "the run finished before it could be killed"
    done = _lines(log)                                       # durably marked tiles at the moment of death
    assert done >= kill_at
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert "ome" not in attrs and attrs["hirestile"]["status"] == "incomplete"
    r = _start(work, out)
    _, err = r.communicate(timeout=TIMEOUT)
    assert r.returncode == 0, err
    assert f"{total - done} tiles computed, {done} already done" in err     # finished tiles not recomputed
    got = zarr.open_group(str(out), mode="r")["0"][...]
    assert np.array_equal(got, _reference(work / "rgb.safetensors", big))
    assert not (out / ".hirestile").exists()


def test_second_writer_refused_and_sigterm_resumes(work, big, tmp_path):
    out = tmp_path / "out.zarr"
    log = out / ".hirestile" / "done.log"
    proc = _start(work, out, "--output", "logits")
    try:
        assert _wait_for(lambda: _lines(log) >= 2, proc), "the run finished too early"
        # Freeze the writer (it keeps its lock) so the run cannot finish while the
        # other commands start: a tiny model computes all 72 tiles in about a second.
        proc.send_signal(signal.SIGSTOP)
        second = cli("segment", work / "big.zarr", "--model", work / "rgb.safetensors", "-o", out, "--tile", "32",
                     "--output", "logits")
        assert_one_line_error(second, 4, rf"being written by another hirestile process \(pid {proc.pid}\)")
        third = cli("segment", work / "big.zarr", "--model", work / "rgb.safetensors", "-o", out, "--overwrite")
        assert_one_line_error(third, 4, r"being written by another")             # --overwrite does not delete it
        proc.send_signal(signal.SIGTERM)                 # pending until the process runs again
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    r = _start(work, out, "--output", "logits")
    _, err = r.communicate(timeout=TIMEOUT)
    assert r.returncode == 0 and "already done" in err, err
    got = zarr.open_group(str(out), mode="r")["0"][...]
    assert np.array_equal(got, _reference(work / "rgb.safetensors", big, "logits"))


def test_contract_flags_and_sidecar(work, tmp_path):
    """--mean/--std/--pad-to override the model's contract; a <model>.json sidecar declares it."""
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(work / "rgb.safetensors", model)
    r = cli("segment", work / "slide.zarr", "--model", model, "-o", tmp_path / "a.zarr", "--output", "logits",
            "--mean", "0.5", "--std", "0.25", "--pad-to", "8")
    assert r.returncode == 0, r.stderr
    (tmp_path / "m.safetensors.json").write_text(json.dumps({"mean": [0.5], "std": [0.25], "pad_to": 8}))
    expect = hirestile.predict(hirestile.load_model(model), _slide(work))
    got = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"][...]
    assert np.array_equal(got, expect)
    assert not np.array_equal(expect, hirestile.predict(hirestile.load_model(work / "rgb.safetensors"), _slide(work)))
    assert_one_line_error(cli("plan", "--model", model, "--mean", "1", "2"), 3, "2 values for 3 channels")


def test_every_contract_field_has_a_flag(work, tmp_path):
    """--pad-mode, --stretch and --softening too: the command line can declare a whole contract."""
    flags = ("--pad-to", "8", "--pad-mode", "replicate", "--stretch", "asinh", "--softening", "0.5",
             "--scale", "dtype", "--mean", "0.1", "--std", "2")
    r = cli("segment", work / "slide.zarr", "--model", work / "rgb.safetensors", "-o", tmp_path / "a.zarr",
            "--output", "logits", *flags)
    assert r.returncode == 0, r.stderr
    m = hirestile.api.with_contract(hirestile.load_model(work / "rgb.safetensors"),
                                    dict(pad_to=8, pad_mode="replicate", stretch="asinh", softening=0.5,
                                         scale="dtype", mean=[0.1], std=[2.0]))
    got = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"][...]
    assert np.array_equal(got, hirestile.predict(m, _slide(work)))
