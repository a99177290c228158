"""Pixel size in (issue 16): read from OME-Zarr, OME-TIFF, Aperio SVS, TIFF resolution tags and
FITS WCS; bad metadata warns in one line naming --pixel-size; --pixel-size overrides; built-in
models declare their training resolution (BYOM: a sidecar's pixel_size); segment reads the pyramid
level closest to it, or resamples inside the graph where none is within 10%; the output's OME scale
is in micrometres."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr
from hirestile.models.registry import REGISTRY, get_spec
from hirestile.models.unet import unet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_io import check_ome

import hirestile
from hirestile.cli import main
from hirestile.contract import InputContract
from hirestile.errors import InputError, ModelError
from hirestile.io import closest_level, open_image, parse_pixel_size
from hirestile.model import Model
from hirestile.ome import write_image
from hirestile.resample import plan_resampling, resampled, source_level

RGB = np.zeros((48, 64, 3), np.uint8)


def _ome_zarr(path, *, scale0: float | None = 0.125, unit: str | None = "micrometer", shape=(3, 1200, 960),
              read=None):
    """An OME-Zarr pyramid (levels 2x apart) whose level-0 scale is ``scale0`` ``unit``, of grey 200
    or what ``read(rows, cols)`` gives."""
    write_image(path, read=read or (lambda r, c: np.full((3, r[1] - r[0], c[1] - c[0]), 200, np.uint8)),
                shape=shape, dtype=np.dtype(np.uint8), name="slide", progress=False)
    g = zarr.open_group(path, mode="r+")
    attrs = dict(g.attrs)
    ms = attrs["ome"]["multiscales"][0]
    for ax in ms["axes"]:
        if ax["name"] in ("y", "x") and unit:
            ax["unit"] = unit
    if scale0 is not None:
        for d in ms["datasets"]:
            for t in d["coordinateTransformations"]:
                if t["type"] == "scale":
                    t["scale"] = [1.0] + [v * scale0 for v in t["scale"][1:]]
    g.attrs.put(attrs)
    return path


def _px(path, **kw):
    with open_image(str(path), **kw) as img:
        return img.pixel_size, img.pixel_unit, img.pixel_warning


def test_ome_zarr_scale_and_unit_per_level(tmp_path):
    p = _ome_zarr(str(tmp_path / "s.zarr"))
    assert _px(p) == ((0.125, 0.125), "micrometer", None)
    assert _px(p, level=2) == ((0.5, 0.5), "micrometer", None)
    q = _ome_zarr(str(tmp_path / "nm.zarr"), scale0=250.0, unit="nanometer")
    assert _px(q)[:2] == ((0.25, 0.25), "micrometer")


def test_ome_zarr_without_physical_size_is_silent(tmp_path):
    p = _ome_zarr(str(tmp_path / "px.zarr"), scale0=None, unit=None)    # scale 1, no unit: pixels
    assert _px(p) == (None, None, None)
    plain = str(tmp_path / "plain.zarr")
    zarr.create_array(plain, data=np.zeros((3, 20, 20), np.uint8))
    assert _px(plain) == (None, None, None)


@pytest.mark.parametrize("scale0, unit, why", [(0.5, None, "no unit"), (-0.5, "micrometer", "zero, negative"),
                                               (0.0, "micrometer", "zero, negative"),
                                               (0.5, "parsec-ish", "unknown unit")])
def test_ome_zarr_bad_metadata_warns(tmp_path, scale0, unit, why):
    p = _ome_zarr(str(tmp_path / "bad.zarr"), scale0=scale0, unit=unit)
    size, _, warning = _px(p)
    assert size is None and why in warning and "--pixel-size" in warning and "\n" not in warning


def test_ome_tiff_physical_size(tmp_path):
    p = str(tmp_path / "a.ome.tif")
    tifffile.imwrite(p, RGB, ome=True, metadata={"axes": "YXS", "PhysicalSizeX": 250.0, "PhysicalSizeY": 260.0,
                                                 "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    size, unit, warning = _px(p)
    assert unit == "micrometer" and warning is None and np.allclose(size, (0.26, 0.25))


def test_svs_aperio_mpp(tmp_path):
    p = str(tmp_path / "a.svs")
    desc = ("Aperio Image Library v12.0.15\r\n64x48 [0,0 64x48] (256x256) JPEG/RGB Q=70|AppMag = 40"
            "|StripeWidth = 2040|ScanScope ID = SS1234|MPP = 0.2527|Filename = slide")
    tifffile.imwrite(p, RGB, description=desc, photometric="rgb")
    with open_image(p) as img:
        assert img.format == "SVS"
        assert img.pixel_size == (0.2527, 0.2527) and img.pixel_source == "Aperio MPP"


@pytest.mark.parametrize("res, unit, um", [((40000, 40000), "CENTIMETER", (0.25, 0.25)),
                                           ((50800, 101600), "INCH", (0.25, 0.5))])
def test_tiff_resolution_tags(tmp_path, res, unit, um):
    p = str(tmp_path / "r.tif")
    tifffile.imwrite(p, RGB, resolution=res, resolutionunit=unit, photometric="rgb")
    size, u, warning = _px(p)
    assert u == "micrometer" and warning is None
    assert np.allclose(size, um)                 # (rows, cols): YResolution, XResolution


def test_tiff_without_resolution_and_with_zero(tmp_path):
    p = str(tmp_path / "none.tif")
    tifffile.imwrite(p, RGB, photometric="rgb")
    assert _px(p) == (None, None, None)
    q = str(tmp_path / "zero.tif")
    tifffile.imwrite(q, RGB, resolution=((0, 1), (0, 1)), resolutionunit="INCH", photometric="rgb")
    size, _, warning = _px(q)
    assert size is None and "zero, negative" in warning and "--pixel-size" in warning


def _fits(path, cdelt: float | None):
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.zeros((30, 40), np.float32))
    if cdelt is not None:
        h = hdu.header
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CRVAL1"], h["CRVAL2"], h["CRPIX1"], h["CRPIX2"] = 150.0, 2.0, 20.0, 15.0
        h["CDELT1"], h["CDELT2"] = -cdelt, cdelt
        h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    hdu.writeto(path)
    return path


def test_fits_wcs_arcsec(tmp_path):
    size, unit, warning = _px(_fits(str(tmp_path / "a.fits"), 1e-4))
    assert unit == "arcsecond" and warning is None and np.allclose(size, (0.36, 0.36))
    assert _px(_fits(str(tmp_path / "b.fits"), None)) == (None, None, None)
    size, _, warning = _px(_fits(str(tmp_path / "c.fits"), 0.0))
    assert size is None and "FITS WCS" in warning and "--pixel-size" in warning


@pytest.mark.parametrize("text, want", [("0.25", ((0.25, 0.25), "micrometer")),
                                        ("0.25um", ((0.25, 0.25), "micrometer")),
                                        ("250nm", ((0.25, 0.25), "micrometer")),
                                        ("0.25x0.5 µm", ((0.25, 0.5), "micrometer")),
                                        ("0.4arcsec", ((0.4, 0.4), "arcsecond")),
                                        ("1e-4 deg", ((0.36, 0.36), "arcsecond"))])
def test_parse_pixel_size(text, want):
    size, unit = parse_pixel_size(text)
    assert unit == want[1] and np.allclose(size, want[0])


@pytest.mark.parametrize("text", ["0", "-1um", "nan", "abc", "0.25 furlong", ""])
def test_parse_pixel_size_refuses(text):
    with pytest.raises(InputError, match="--pixel-size"):
        parse_pixel_size(text)


def test_builtin_models_declare_the_cards_resolution():
    for spec in REGISTRY.values():
        card = spec.card_path.read_text()
        m = re.search(r"\| Resolution \| about ([0-9.]+) - ([0-9.]+) um per pixel", card)
        if m:
            assert spec.pixel_size == (float(m.group(1)), float(m.group(2))), spec.name
        else:
            assert spec.pixel_size is None, spec.name
    assert get_spec("unet").pixel_size is not None


def test_closest_level(tmp_path):
    p = _ome_zarr(str(tmp_path / "s.zarr"))             # levels at 0.125, 0.25, 0.5, 1.0 um/px
    with open_image(p) as img:
        assert closest_level(img, (0.25, 0.6), "micrometer")[0] == 1       # finest inside the range
        assert closest_level(img, (0.5, 0.5), "micrometer")[0] == 2
        assert closest_level(img, (0.54, 0.54), "micrometer")[0] == 2      # within 10%
        ok, near, f = closest_level(img, (0.6, 0.6), "micrometer")         # 0.5 is 17% off
        assert ok is None and near == 2 and f == pytest.approx(0.5 / 0.6)
        assert closest_level(img, (5.0, 5.0), "micrometer")[:2] == (None, 3)
        assert closest_level(img, (0.36, 0.36), "arcsecond")[0] is None    # not comparable


def test_cli_info_and_segment_level_choice(tmp_path, capsys):
    p = _ome_zarr(str(tmp_path / "s.zarr"))
    assert main(["info", p]) == 0
    assert "pixel:   0.125 µm per pixel (from OME-Zarr coordinateTransformations)" in capsys.readouterr().out
    assert main(["info", p, "--pixel-size", "0.3um"]) == 0
    assert "pixel:   0.3 µm per pixel (from --pixel-size)" in capsys.readouterr().out
    out = str(tmp_path / "o.zarr")
    assert main(["segment", p, "--model", "unet", "-o", out, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "level: 1 of 0..3 (0.25 µm/px, 600 x 480 px)" in printed
    assert zarr.open_group(out, mode="r")["0"].shape == (2, 600, 480)
    # the same level asked for explicitly gives the same bits
    ref = str(tmp_path / "ref.zarr")
    assert main(["segment", p, "--model", "unet", "-o", ref, "-q", "--level", "1"]) == 0
    assert np.array_equal(zarr.open_group(out, mode="r")["0"][...], zarr.open_group(ref, mode="r")["0"][...])
    # --pixel-size says level 0 is already at the model's resolution: level 0 is read
    o2 = str(tmp_path / "o2.zarr")
    assert main(["segment", p, "--model", "unet", "-o", o2, "-q", "--pixel-size", "0.4um"]) == 0
    assert "level: 0 (0.4 µm/px) matches" in capsys.readouterr().out
    assert zarr.open_group(o2, mode="r")["0"].shape == (2, 1200, 960)


def test_cli_bad_metadata_one_line_warning(tmp_path, capsys):
    q = str(tmp_path / "zero.tif")
    tifffile.imwrite(q, RGB, resolution=((0, 1), (0, 1)), resolutionunit="INCH", photometric="rgb")
    assert main(["info", q]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and "--pixel-size" in lines[0] and "pixel:   unknown" in cap.out
    with pytest.raises(SystemExit) as e:
        main(["info", q, "--pixel-size", "-3um"])
    assert e.value.code == 2


# ---- resampling to the model's pixel size as graph layers ------------------------------------
def _pool_reference(x: np.ndarray, n: tuple[int, int]) -> np.ndarray:
    """The stated average pooling: output (i, j) is the float64 mean of input rows
    [n*i, min(n*i + n, H)) and columns likewise (the last block of an axis has what is left)."""
    c, h, w = x.shape
    out = np.empty((c, -(-h // n[0]), -(-w // n[1])))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, n[0] * i:n[0] * i + n[0], n[1] * j:n[1] * j + n[1]].astype(np.float64).mean(axis=(1, 2))
    return out


def _bilinear_reference(x: np.ndarray, scale) -> np.ndarray:
    """The stated bilinear sampling, in float64 arithmetic from the float32 coordinates: output o
    of an axis of M inputs samples src = r*(o + 0.5) - 0.5 (r = float32(1/scale), rounded once to
    float32), clamped at 0, between floor(src) and the next pixel (clamped to the last); an axis
    whose length does not change is copied."""
    def taps(m: int, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_out = int(np.floor(m * float(s)))
        r = float(np.float32(1.0 / float(s)))
        if n_out == m:                    # an axis that keeps its length is copied
            return np.arange(m), np.arange(m), np.zeros(m)
        src = np.maximum(np.array([np.float32(r * (o + 0.5) - 0.5) for o in range(n_out)], np.float64), 0.0)
        i0 = np.minimum(np.floor(src).astype(int), m - 1)
        return i0, np.minimum(i0 + 1, m - 1), np.clip(src - i0, 0.0, 1.0)

    if all(s == 1 for s in scale):
        return x.astype(np.float64)
    (y0, y1, ly), (x0, x1, lx) = taps(x.shape[1], scale[0]), taps(x.shape[2], scale[1])
    x = x.astype(np.float64)
    rows = x[:, y0, :] * (1 - ly)[None, :, None] + x[:, y1, :] * ly[None, :, None]
    return rows[:, :, x0] * (1 - lx)[None, None, :] + rows[:, :, x1] * lx[None, None, :]


# (input pixel size, the model's range): pooling alone, bilinear down, pooling then bilinear, upsampling,
# and a non-square pixel
PLANS = [((0.25, 0.25), (0.5, 0.5)), ((0.3, 0.3), (0.5, 0.5)), ((0.1, 0.1), (0.27, 0.27)),
         ((1.0, 1.0), (0.5, 0.5)), ((0.1, 0.1), (0.25, 0.6)), ((0.12, 0.3), (0.45, 0.45)), ((0.7, 0.7), (0.5, 0.5))]
SIZES = st.sampled_from([1, 2, 5, 13, 17, 31, 37, 48, 53, 64])


def test_plans_are_the_stated_ones():
    got = [(r.pool, tuple(str(s) for s in r.scale)) for r in (plan_resampling(*p) for p in PLANS)]
    assert got == [((2, 2), ("1", "1")), ((1, 1), ("3/5", "3/5")), ((2, 2), ("3/4", "3/4")),
                   ((1, 1), ("2", "2")), ((3, 3), ("1", "1")), ((4, 1), ("1", "2/3")), ((1, 1), ("7/5", "7/5"))]
    for pixel, target in PLANS:             # the resampled pixel lies within 10% of the range
        size = plan_resampling(pixel, target).pixel_size(pixel)
        assert all(min(target) / 1.1 <= s <= max(target) * 1.1 for s in size), (pixel, target, size)
    assert source_level([(0.25, 0.25), (1.0, 1.0), (4.0, 4.0)], (0.5, 0.5)) == 0
    assert source_level([(0.1, 0.1), (0.2, 0.2), (0.8, 0.8)], (0.5, 0.5)) == 1
    assert source_level([None, (2.0, 2.0), (4.0, 4.0)], (0.5, 0.5)) == 1
    for bad in [((0.0, 0.25), (0.5, 0.5)), ((0.25, 0.25), (float("nan"),) * 2)]:
        with pytest.raises(ValueError, match="positive and finite"):
            plan_resampling(*bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.sampled_from(PLANS), h=SIZES, w=SIZES, seed=st.integers(0, 2**16))
def test_resampling_layers_match_numpy_reference(plan, h, w, seed):
    r = plan_resampling(*plan)
    x = np.random.default_rng(seed).random((2, h, w), dtype=np.float32)
    pooled = _pool_reference(x, r.pool)
    if any(np.floor(n * float(s)) == 0 for n, s in zip(pooled.shape[1:], r.scale)):
        with pytest.raises(InputError, match="too small"):        # no pixel left: refused in one line
            hirestile.predict(Model.from_graph(r.graph(2)), x)
        return
    got = hirestile.predict(Model.from_graph(r.graph(2)), x)
    want = _bilinear_reference(pooled.astype(np.float32), r.scale)
    assert got.shape == want.shape == (2, *r.out_hw((h, w)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_resampling_layers_match_pytorch():
    """PyTorch's avg_pool2d(ceil_mode, count_include_pad=False) and interpolate(scale_factor,
    bilinear, align_corners=False) state the same semantics: the layers agree to float32 rounding."""
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(3).random((1, 3, 61, 47), dtype=np.float32)
    for pixel, target in PLANS:
        r = plan_resampling(pixel, target)
        t = torch.from_numpy(x)
        if r.pool != (1, 1):
            t = F.avg_pool2d(t, r.pool, r.pool, ceil_mode=True, count_include_pad=False)
        if r.scale != (1, 1):
            t = F.interpolate(t, scale_factor=tuple(float(s) for s in r.scale), mode="bilinear", align_corners=False)
        got = hirestile.predict(Model.from_graph(r.graph(3)), x[0])
        np.testing.assert_allclose(got, t.numpy()[0], rtol=0, atol=1e-6)


def _net(channels: int = 2) -> Model:
    """A small UNet fed values as given, pad-to 4 (its two poolings): the resampled grid is padded."""
    m = unet(in_channels=channels, classes=3, base=4, depth=2)
    return Model(graph=m.graph, contract=InputContract(channels=channels, scale="none", pad_to=4), name="net")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.sampled_from(PLANS), h=st.sampled_from([7, 23, 37, 53, 64, 71]), w=st.sampled_from([11, 29, 41, 60]),
       tile=st.integers(7, 40), origin=st.tuples(st.integers(0, 9), st.integers(0, 9)), seed=st.integers(0, 99))
def test_resampled_model_tiled_equals_full_frame_of_the_resampled_image(plan, h, w, tile, origin, seed):
    net, r = _net(), plan_resampling(*plan)
    model = resampled(net, r)
    x = np.random.default_rng(seed).random((2, h, w), dtype=np.float32)
    full = hirestile.predict(model, x)
    tiled = hirestile.predict(model, x, tile=tile, tile_origin=origin)
    assert np.array_equal(tiled, full)
    # the full frame is the network run on the resampled image, which exists here only as a reference
    image = hirestile.predict(Model.from_graph(r.graph(2)), x)
    assert np.array_equal(full, hirestile.predict(net, image))
    assert full.shape == (3, *r.out_hw((h, w)))


def test_resampled_model_keeps_the_model_and_refuses_clashing_names():
    net = _net()
    assert resampled(net, plan_resampling((0.5, 0.5), (0.5, 0.5))) is net      # nothing to do
    m = resampled(net, plan_resampling((0.25, 0.25), (0.5, 0.5)))
    assert (m.name, m.classes, m.contract.pad_to) == (net.name, net.classes, 1) and m.fingerprint != net.fingerprint
    with pytest.raises(ValueError, match="resample_pool"):
        resampled(m, plan_resampling((0.25, 0.25), (0.5, 0.5)))


def _pattern_zarr(path, *, scale0: float, shape=(3, 520, 400)):
    """An OME-Zarr pyramid of a position-dependent pattern (so resampling shows), level-0 scale ``scale0`` µm."""
    def read(r, c):
        yy, xx = np.meshgrid(np.arange(*r), np.arange(*c), indexing="ij")
        return np.stack([(yy * 7 + xx * 13 + k * 50) % 251 for k in range(3)]).astype(np.uint8)

    return _ome_zarr(path, scale0=scale0, shape=shape, read=read)


def _scale_and_units(out):
    ms = zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]
    units = [a.get("unit") for a in ms["axes"] if a["type"] == "space"]
    return ms["datasets"][0]["coordinateTransformations"][0]["scale"][-2:], units


def test_cli_resamples_when_no_level_is_within_10_percent(tmp_path, capsys):
    """Levels at 0.3, 0.6 and 1.2 µm/px, a model at 0.45 µm/px: 0.3 and 0.6 are 33% off, so level 0
    is resampled by 1.5 (bilinear x 2/3) inside the graph; the output is the Python API's
    resampled model on level 0, bit for bit, and its OME scale is 0.45 µm."""
    from hirestile.loading import load_model

    p = _pattern_zarr(str(tmp_path / "s.zarr"), scale0=0.3)
    out = str(tmp_path / "o.zarr")
    assert main(["segment", p, "--model", "unet", "--model-pixel-size", "0.45um", "-o", out, "-q",
                 "--output", "logits", "--tile", "128"]) == 0
    printed = capsys.readouterr().out
    assert ("level: 0 of 0..2 (0.3 µm/px, 520 x 400 px) resampled by factor 1.5 (bilinear x 2/3) to 0.45 µm/px, "
            "346 x 266 px, for the model's 0.45 µm/px: no level is within 10%") in printed
    got = zarr.open_group(out, mode="r")["0"][...]
    with open_image(p) as img:
        x = img.read((0, 520), (0, 400))
    want = hirestile.predict(resampled(load_model("unet"), plan_resampling((0.3, 0.3), (0.45, 0.45))), x)
    assert got.shape == (2, 346, 266) and np.array_equal(got, want)
    scale, units = _scale_and_units(out)
    assert units == ["micrometer", "micrometer"] and np.allclose(scale, (0.3 * 520 / 346, 0.3 * 400 / 266))


def test_cli_40x_slide_at_half_a_micrometre_pools_2x2(tmp_path, capsys):
    """An SVS-like pyramid (0.25 µm/px, then 4x steps: 1.0 µm/px) and a model at 0.5 µm/px: level 0
    is average-pooled 2 x 2; the OME scale is 0.5 µm."""
    p = str(tmp_path / "svs.zarr")
    _pattern_zarr(p, scale0=0.25, shape=(3, 600, 520))
    g = zarr.open_group(p, mode="r+")            # keep levels 0 and 2 only: 0.25 and 1.0 µm/px
    attrs = dict(g.attrs)
    ms = attrs["ome"]["multiscales"][0]
    ms["datasets"] = [d for d in ms["datasets"] if d["path"] in ("0", "2")]
    g.attrs.put(attrs)
    out = str(tmp_path / "o.zarr")
    assert main(["segment", p, "--model", "unet", "--model-pixel-size", "0.5", "-o", out, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "level: 0 of 0..1 (0.25 µm/px, 600 x 520 px) resampled by factor 2 (average 2x2) to 0.5 µm/px" in printed
    assert zarr.open_group(out, mode="r")["0"].shape == (2, 300, 260)
    assert _scale_and_units(out) == ([0.5, 0.5], ["micrometer", "micrometer"])


def test_output_scale_in_micrometres_or_input_pixels(tmp_path, capsys):
    p = _ome_zarr(str(tmp_path / "s.zarr"), shape=(3, 120, 96))     # one level at 0.125 µm/px: pooled to 0.25
    out = str(tmp_path / "o.zarr")
    assert main(["segment", p, "--model", "unet", "-o", out, "-q", "--pyramid"]) == 0
    ms = check_ome(out)["ome"]["multiscales"][0]          # valid OME-Zarr 0.5 (schema and prose rules)
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[1.0, 0.25 * 2 ** lv, 0.25 * 2 ** lv] for lv in range(len(ms["datasets"]))]
    # a masked run's labels layer lies in the same physical space: 10 x 8 cells over a 60 x 48 output
    mask = str(tmp_path / "mask.zarr")
    zarr.create_array(mask, data=np.ones((10, 8), np.uint8))
    o3 = str(tmp_path / "o3.zarr")
    assert main(["segment", p, "--model", "unet", "-o", o3, "-q", "--mask", mask]) == 0
    assert _scale_and_units(o3) == ([0.25, 0.25], ["micrometer", "micrometer"])
    assert _scale_and_units(o3 + "/labels/mask") == ([1.5, 1.5], ["micrometer", "micrometer"])
    plain = str(tmp_path / "plain.zarr")          # no pixel size: the scale counts input pixels, no unit
    zarr.create_array(plain, data=np.zeros((3, 40, 30), np.uint8))
    o2 = str(tmp_path / "o2.zarr")
    assert main(["segment", plain, "--model", "unet", "-o", o2, "-q"]) == 0
    assert _scale_and_units(o2) == ([1.0, 1.0], [None, None])


# ---- pixel_size in a model's sidecar -----------------------------------------------------------
def _byom(tmp_path, sidecar: str):
    model = tmp_path / "m.safetensors"
    model.write_bytes(get_spec("unet").weights_path.read_bytes())
    (tmp_path / "m.safetensors.json").write_text(sidecar)
    return str(model)


@pytest.mark.parametrize("value, want", [("0.5", ((0.5, 0.5), "micrometer")), ('"500nm"', ((0.5, 0.5), "micrometer")),
                                         ('[0.25, "0.6um"]', ((0.25, 0.6), "micrometer")),
                                         ('"0.4arcsec"', ((0.4, 0.4), "arcsecond"))])
def test_sidecar_pixel_size(tmp_path, value, want):
    from hirestile.loading import load_model, model_pixel_size

    path = _byom(tmp_path, f'{{"scale": "dtype", "pixel_size": {value}}}')
    assert load_model(path).contract.scale == "dtype"
    size, unit = model_pixel_size(path)
    assert unit == want[1] and np.allclose(size, want[0])


def test_sidecar_pixel_size_picks_the_level(tmp_path, capsys):
    p = _ome_zarr(str(tmp_path / "s.zarr"), shape=(3, 120, 96))     # one level at 0.125 µm/px
    model = _byom(tmp_path, '{"scale": "dtype", "pixel_size": "0.5um"}')
    out = str(tmp_path / "o.zarr")
    assert main(["segment", p, "--model", model, "-o", out, "-q"]) == 0
    assert ("level: 0 of 0..0 (0.125 µm/px, 120 x 96 px) resampled by factor 4 (average 4x4) to 0.5 µm/px, "
            "30 x 24 px, for the model's 0.5 µm/px") in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-0.5", '"nan"', '"inf"', '"0.5 parsec"', '"abc"', "true", "null", "[]",
                                   "[0.25, 0.5, 1]", '[0.25, "0.4arcsec"]', '{"v": 1}'])
def test_bad_sidecar_pixel_size_one_line(tmp_path, capsys, value):
    from hirestile.loading import load_model

    model = _byom(tmp_path, f'{{"pixel_size": {value}}}')
    with pytest.raises(ModelError, match='"pixel_size": .* is not a positive finite size'):
        load_model(model)
    img = str(tmp_path / "in.zarr")
    zarr.create_array(img, data=np.zeros((3, 40, 30), np.uint8))
    assert main(["segment", img, "--model", model, "-o", str(tmp_path / "o.zarr"), "-q"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("hirestile: error: ") and "m.safetensors.json" in err and '"pixel_size": 0.5' in err
