"""FITS in and out (hirestile/fits.py): windows read as astropy reads them, segment from FITS equals
segment from the same pixels in zarr, FITS outputs carry the input's WCS, resume, bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS

import hirestile
from hirestile.io import open_image
from hirestile.models.unet import init_state, save_unet
from hirestile.scheduler import segment_to_zarr
from hirestile.stream import run_local

from clihelp import assert_one_line_error, cli

H, W = 70, 90                    # larger than the 32 px tile in both axes
TILE = 32


def _wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [40.5, 30.25]
    w.wcs.cd = [[-1.0e-4, 2.0e-6], [1.5e-6, 1.0e-4]]
    return w


def _pixels(shape=(H, W), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _int16(seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, (H, W)).astype(np.int16)


def _write(path, hdus) -> str:
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic FITS files of every kind the reader takes, written by astropy."""
    d = tmp_path_factory.mktemp("fits")
    hw = _wcs().to_header()
    out = {}
    out["float32"] = _write(d / "f32.fits", [fits.PrimaryHDU(_pixels(), header=hw)])
    p = fits.PrimaryHDU(_int16(), header=hw)
    p.header["BSCALE"], p.header["BZERO"] = 0.5, 1000.0
    out["int16_scaled"] = _write(d / "i16.fits", [p])
    b = _int16(2)
    b[5:9, 7:30] = -32768
    p = fits.PrimaryHDU(b, header=hw)
    p.header["BLANK"] = -32768
    out["blank"] = _write(d / "blank.fit", [p])
    out["uint16"] = _write(d / "u16.fts", [fits.PrimaryHDU(
        np.random.default_rng(3).integers(0, 65535, (H, W)).astype(np.uint16))])
    p = fits.PrimaryHDU(np.random.default_rng(4).integers(-2**30, 2**30, (H, W)).astype(np.int32))
    p.header["BSCALE"], p.header["BZERO"] = 1e-3, -5.0
    out["int32_scaled"] = _write(d / "i32.fits", [p])
    out["cube"] = _write(d / "cube.fits", [fits.PrimaryHDU(_pixels((3, H, W), seed=5), header=hw)])
    out["mef"] = _write(d / "mef.fits", [
        fits.PrimaryHDU(), fits.ImageHDU(_pixels(seed=6), name="SCI", header=hw),
        fits.ImageHDU(_pixels(seed=7), name="ERR"),
        fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(3.0))], name="CAT")])
    out["rice"] = _write(d / "rice.fits.fz", [fits.PrimaryHDU(), fits.CompImageHDU(
        _pixels(seed=8), header=hw, compression_type="RICE_1", tile_shape=(16, 16))])
    c = fits.CompImageHDU(_int16(9), compression_type="GZIP_1", tile_shape=(16, 32))
    c.header["BLANK"] = -3000
    out["gzip_int"] = _write(d / "gz.fits", [fits.PrimaryHDU(), c])
    return out


# ---- reading: every window equals astropy's own reading ---------------------------------------------------
WANT_DTYPE = {"float32": "float32", "int16_scaled": "float32", "blank": "float32", "uint16": "uint16",
              "int32_scaled": "float64", "cube": "float32", "mef": "float32", "rice": "float32",
              "gzip_int": "float32"}


@pytest.mark.parametrize("kind", list(WANT_DTYPE))
def test_windows_equal_astropy(files, kind):
    path = files[kind]
    with fits.open(path, memmap=False) as hd:
        i = 1 if kind in ("mef", "rice", "gzip_int") else 0
        ref = hd[i].data.copy()
        ref = ref.astype(ref.dtype.newbyteorder("="))
    with open_image(path) as img:
        assert img.format.startswith("FITS") and img.dtype == np.dtype(WANT_DTYPE[kind]) == ref.dtype
        assert img.shape == ((3, H, W) if kind == "cube" else (1, H, W))
        for rows, cols in [((0, H), (0, W)), ((3, 41), (17, 18)), ((69, 70), (0, 90)), ((20, 21), (33, 80))]:
            got = img.read(rows, cols)
            want = ref[..., slice(*rows), slice(*cols)]
            want = want if want.ndim == 3 else want[None]
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
    if kind == "blank":
        assert np.isnan(ref[5:9, 7:30]).all() and not np.isnan(ref[10:]).any()


def test_hdu_by_name_and_index(files):
    with fits.open(files["mef"]) as hd:
        sci, err = hd["SCI"].data.copy(), hd["ERR"].data.copy()
    for hdu, want in (("SCI", sci), ("sci", sci), (2, err), ("2", err), ("ERR,1", err)):
        with open_image(files["mef"], hdu=hdu) as img:
            assert np.array_equal(img.read((0, H), (0, W))[0], want)
    with open_image(files["mef"]) as img:           # default: the first image HDU with data
        assert img.extra_identity["hdu"] == 1


# ---- segment from FITS == segment from the same pixels in zarr, bitwise --------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    for name, c in (("grey", 1), ("three", 3)):
        arch = dict(in_channels=c, classes=2, base=4, depth=2)
        save_unet(d / f"{name}.safetensors", init_state(**arch, seed=5), **arch)
    return d


@pytest.mark.parametrize("kind", ["float32", "int16_scaled", "blank", "cube", "rice"])
def test_segment_fits_equals_zarr(files, models, tmp_path, kind):
    model = hirestile.load_model(str(models / f"{'three' if kind == 'cube' else 'grey'}.safetensors"))
    with fits.open(files[kind], memmap=False) as hd:
        data = hd[1 if kind == "rice" else 0].data.copy()
    data = data.astype(data.dtype.newbyteorder("="))
    zpath = str(tmp_path / "same.zarr")
    zarr.create_array(zpath, data=data, chunks=(17, 23) if data.ndim == 2 else (3, 17, 23))
    fill = 0.0 if kind == "blank" else None
    a = segment_to_zarr(files[kind], model, str(tmp_path / "a.zarr"), tile=TILE, nan_fill=fill,
                        axes="CHW" if kind == "cube" else None, progress=False)
    b = segment_to_zarr(zpath, model, str(tmp_path / "b.zarr"), tile=TILE, nan_fill=fill,
                        axes="CHW" if kind == "cube" else None, progress=False)
    assert a.tiles_total > 4
    got = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"][...]
    want = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["0"][...]
    assert got.dtype == want.dtype and np.array_equal(got, want)
    del b


def test_plane_of_a_cube_segments_as_a_single_band_image(files, models, tmp_path):
    """--plane P / plane=P: one plane of a cube is the image (a 1-channel model), bitwise equal to
    segmenting that plane stored on its own; out of range, on a 2-D image or a zarr input: one line."""
    with fits.open(files["cube"], memmap=False) as hd:
        cube = hd[0].data.astype(np.float32)
    with open_image(files["cube"], plane=2) as img:
        assert img.channels == 1 and img.extra_identity["plane"] == 2
        assert np.array_equal(img.read((0, H), (0, W))[0], cube[2])
    zpath = str(tmp_path / "plane.zarr")
    zarr.create_array(zpath, data=cube[2], chunks=(17, 23))
    m = str(models / "grey.safetensors")
    r = cli("segment", files["cube"], "-m", m, "--plane", "2", "-o", tmp_path / "a.zarr", "--tile", TILE, "-q")
    assert r.returncode == 0, r.stderr
    r = cli("segment", zpath, "-m", m, "-o", tmp_path / "b.zarr", "--tile", TILE, "-q")
    assert r.returncode == 0, r.stderr
    got = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"][...]
    assert np.array_equal(got, zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["0"][...])
    r = cli("segment", files["cube"], "-m", m, "--plane", "1", "-o", tmp_path / "a.zarr", "--tile", TILE, "-q")
    assert_one_line_error(r, 4, "different job")                     # another plane is another input
    assert_one_line_error(cli("info", files["cube"], "--plane", "3"), 2, r"--plane 3 does not fit a cube of 3")
    assert_one_line_error(cli("info", files["float32"], "--plane", "0"), 2, "--plane 0 does not fit 2-D data")
    assert_one_line_error(cli("info", zpath, "--plane", "0"), 2, "apply to FITS files only")


# ---- FITS output through the CLI ----------------------------------------------------------------------
def _grid_world(w: WCS) -> np.ndarray:
    y, x = np.mgrid[-5:H + 5:7, -5:W + 5:9]
    return np.array(w.pixel_to_world_values(x.ravel().astype(float), y.ravel().astype(float)))


@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_cli_fits_output_bits_wcs_provenance(files, models, tmp_path, output):
    src = files["float32"]
    m = str(models / "grey.safetensors")
    r = cli("segment", src, "-m", m, "-o", tmp_path / "out.fits", "--tile", TILE, "--output", output, "-q")
    assert r.returncode == 0, r.stderr
    r = cli("segment", src, "-m", m, "-o", tmp_path / "out.zarr", "--tile", TILE, "--output", output, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.fits", "out.zarr"]     # no staging zarr, no .partial
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    want = g["0"][...]
    with fits.open(tmp_path / "out.fits") as hd:
        assert len(hd) == 1
        got, hdr = hd[0].data, hd[0].header
        if output == "probabilities":                       # float16 -> float32, exactly
            assert hdr["BITPIX"] == -32 and got.shape == want.shape == (2, H, W)
            assert np.array_equal(got, want.astype(np.float32))
        else:
            assert hdr["BITPIX"] == 8 and got.dtype == want.dtype == np.uint8 and np.array_equal(got, want)
        assert hdr["HIERARCH HIRESTILE MODEL"] == "grey" and hdr["HIERARCH HIRESTILE OUTPUT"] == output
        assert hdr["HIERARCH HIRESTILE FINGERPRINT"] == hirestile.load_model(m).fingerprint
        assert hdr["HIERARCH HIRESTILE VERSION"] == hirestile.__version__
        w_out = WCS(hdr).celestial
    w_in = WCS(fits.getheader(src))
    assert np.abs(_grid_world(w_out) - _grid_world(w_in)).max() < 1e-9
    w_zarr = WCS(fits.Header(g.attrs["fits_wcs"]))                    # the zarr output keeps it too
    assert np.abs(_grid_world(w_zarr) - _grid_world(w_in)).max() < 1e-9
    r = cli("segment", src, "-m", m, "-o", tmp_path / "out.fits", "--tile", TILE, "--output", output, "-q")
    assert r.returncode == 0 and "already complete" in r.stderr, r.stderr
    r = cli("info", tmp_path / "out.fits")
    assert r.returncode == 0 and f"hirestile output: {output} of model 'grey'" in r.stdout, r.stdout


def test_interrupted_fits_run_resumes_to_the_same_bits(files, models, tmp_path):
    src, m = files["int16_scaled"], str(models / "grey.safetensors")
    r = cli("segment", src, "-m", m, "-o", tmp_path / "full.fits", "--tile", TILE, "-q")
    assert r.returncode == 0, r.stderr
    target = tmp_path / "resumed.fits"

    def half_then_killed(img, model, rep, arr, todo, donelog, stats, **kw):
        run_local(img, model, rep, arr, todo[: len(todo) // 2], donelog, stats, **kw)
        raise KeyboardInterrupt                              # as SIGTERM / Ctrl-C leave it

    with pytest.raises(KeyboardInterrupt):                   # the zarr stage, stopped half way
        segment_to_zarr(src, hirestile.load_model(m), str(target) + ".hirestile.zarr", tile=TILE,
                        progress=False, run_tiles=half_then_killed)
    (tmp_path / "resumed.fits.partial").write_bytes(b"SIMPLE  = torn write")   # a FITS stage cut short
    assert not target.exists()                               # nothing looks complete
    r = cli("segment", src, "-m", m, "-o", target, "--tile", TILE, "-q")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "already done" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["full.fits", "resumed.fits"]
    assert (tmp_path / "full.fits").read_bytes() == target.read_bytes()


def test_fits_output_refuses_another_file(files, models, tmp_path):
    (tmp_path / "x.fits").write_text("not mine")
    r = cli("segment", files["float32"], "-m", models / "grey.safetensors", "-o", tmp_path / "x.fits", "-q")
    assert_one_line_error(r, 4, r"x.fits exists and is not a FITS file")
    assert (tmp_path / "x.fits").read_text() == "not mine"


# ---- info and convert -------------------------------------------------------------------------------
def test_info_lists_hdus_compression_wcs(files):
    r = cli("info", files["rice"])
    assert r.returncode == 0, r.stderr
    assert "CompImageHDU" in r.stdout and "RICE_1" in r.stdout and "<- reading" in r.stdout
    cd = np.array(_wcs().wcs.cd)
    sx, sy = 3600 * np.hypot(cd[0, 0], cd[1, 0]), 3600 * np.hypot(cd[0, 1], cd[1, 1])   # arcsec per pixel
    assert "RA---TAN/DEC--TAN" in r.stdout and "TAN projection" in r.stdout and "150.100000" in r.stdout
    assert f"pixel scale {sx:.4g} x {sy:.4g} arcsec/px" in r.stdout, r.stdout
    r = cli("info", files["mef"], "--hdu", "ERR")
    assert r.returncode == 0 and "ERR" in r.stdout and "BinTableHDU" in r.stdout and "3 rows" in r.stdout
    assert "wcs:     none" in r.stdout


def test_convert_fits_to_ome_zarr_keeps_header(files, tmp_path):
    r = cli("convert", files["rice"], tmp_path / "sky.zarr", "-q")
    assert r.returncode == 0, r.stderr
    g = zarr.open_group(str(tmp_path / "sky.zarr"), mode="r")
    with fits.open(files["rice"]) as hd:
        want, hdr = hd[1].data.copy(), hd[1].header
    assert np.array_equal(g["0"][...], want)
    kept = fits.Header.fromstring(g.attrs["fits_header"], sep="\n")
    assert kept["CTYPE1"] == hdr["CTYPE1"] and kept["CRVAL1"] == hdr["CRVAL1"]
    assert np.abs(_grid_world(WCS(fits.Header(g.attrs["fits_wcs"]))) - _grid_world(WCS(hdr))).max() < 1e-9
    with open_image(str(tmp_path / "sky.zarr")) as img:
        assert img.format.startswith("OME-Zarr")


# ---- bad files: one line, exit 2 ----------------------------------------------------------------------
def _bad(files, d, what):
    if what == "truncated":
        raw = open(files["float32"], "rb").read()
        (d / "cut.fits").write_bytes(raw[: len(raw) // 2])
        return d / "cut.fits", (), r"truncated"
    if what == "no image":
        return _write(d / "tab.fits", [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column(name="a", format="E", array=np.arange(3.0))])]), (), r"no image HDU with data"
    if what == "1-D":
        return _write(d / "spec.fits", [fits.PrimaryHDU(np.arange(50.0))]), (), r"1-D data"
    if what == "unknown name":
        return files["mef"], ("--hdu", "NOPE"), r"no HDU named 'NOPE'.*SCI"
    if what == "table hdu":
        return files["mef"], ("--hdu", "CAT"), r"not an image"
    if what == "not fits":
        (d / "text.fits").write_text("hello")
        return d / "text.fits", (), r"not a FITS file"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["truncated", "no image", "1-D", "unknown name", "table hdu", "not fits"])
def test_bad_fits_one_line_exit_2(files, models, tmp_path, what):
    path, extra, pattern = _bad(files, tmp_path, what)
    r = cli("segment", path, "-m", models / "grey.safetensors", "-o", tmp_path / "o.fits", *extra, "-q")
    assert_one_line_error(r, 2, pattern)
    assert not (tmp_path / "o.fits").exists() and not (tmp_path / "o.fits.hirestile.zarr").exists()


def test_hdu_refused_for_zarr(tmp_path):
    zarr.create_array(str(tmp_path / "a.zarr"), data=np.zeros((8, 8), np.float32))
    assert_one_line_error(cli("info", tmp_path / "a.zarr", "--hdu", "1"), 2, r"FITS files only")


def test_dask_api_reads_fits_windows(files, models):
    m = hirestile.load_model(str(models / "grey.safetensors"))
    with fits.open(files["rice"]) as hd:
        data = hd[1].data.copy()
    want = hirestile.segment(data, m, output="labels", chunks=TILE)       # NumPy in, NumPy out
    with open_image(files["rice"]) as img:
        got = hirestile.segment(img, m, output="labels", chunks=TILE).compute()
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_default_output_names():
    from hirestile.fits import default_output
    assert default_output("/d/sky.fits", "unet-astro") == "/d/sky.unet-astro.zarr"
    assert default_output("/d/sky.fits.fz", "unet-astro", "fits") == "/d/sky.unet-astro.fits"


@pytest.mark.parametrize("cd", [True, False])
@pytest.mark.parametrize("s", [2, 4])
def test_output_wcs_of_a_strided_network(cd, s):
    """An output pixel of a stride-s network covers s x s input pixels; its world position is
    that of their centre, input pixel s * p + (s - 1) / 2 (0-based)."""
    from hirestile.fits import output_wcs
    w = _wcs()
    if not cd:
        w = WCS(naxis=2)
        w.wcs.ctype, w.wcs.crval, w.wcs.crpix = ["RA---TAN", "DEC--TAN"], [150.1, 2.2], [40.5, 30.25]
        w.wcs.cdelt, w.wcs.pc = [-1.0e-4, 1.0e-4], [[0.99, 0.02], [-0.02, 0.99]]
    got = output_wcs(w.to_header(), (float(s), float(s)))
    y, x = np.mgrid[-3:20:3, -3:25:4].astype(float)
    out = np.array(got.pixel_to_world_values(x.ravel(), y.ravel()))
    want = np.array(w.pixel_to_world_values(s * x.ravel() + (s - 1) / 2, s * y.ravel() + (s - 1) / 2))
    assert np.abs(out - want).max() < 1e-9
    if not cd:                                   # astropy's own slicing agrees (it does not scale CD matrices)
        ref = w.slice((slice(None, None, s), slice(None, None, s)))
        assert np.abs(np.array(ref.pixel_to_world_values(x.ravel(), y.ravel())) - out).max() < 1e-9


def test_sigkill_during_fits_output_run_then_resume(models, tmp_path):
    """kill -9 part way through a FITS-output run: no OUT, and the same command finishes it to the
    bytes of an uninterrupted run, without recomputing the tiles already stored."""
    import subprocess
    import sys
    import time

    src = _write(tmp_path / "big.fits", [fits.PrimaryHDU(_pixels((160, 192), seed=11), header=_wcs().to_header())])
    m = str(models / "grey.safetensors")
    args = [sys.executable, "-m", "hirestile", "segment", src, "-m", m, "--tile", "32", "-q", "-o"]
    r = subprocess.run(args + [str(tmp_path / "full.fits")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    target = tmp_path / "killed.fits"
    log = tmp_path / "killed.fits.hirestile.zarr" / ".hirestile" / "done.log"
    proc = subprocess.Popen(args + [str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (log.exists() and log.read_bytes().count(b"\n") >= 3) and proc.poll() is None:
        assert time.time() - t0 < 180
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=180)
    assert proc.returncode == -9, "the run finished before it could be killed"
    assert not target.exists()                                      # nothing looks complete
    r = subprocess.run(args + [str(target)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stderr, r.stderr
    assert target.read_bytes() == (tmp_path / "full.fits").read_bytes()
    assert not (tmp_path / "killed.fits.hirestile.zarr").exists() and not (tmp_path / "killed.fits.partial").exists()
