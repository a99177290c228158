"""Pixel size in (issue 16): read from OME-Zarr, OME-TIFF, Aperio SVS, TIFF resolution tags and
FITS WCS; bad metadata warns in one line naming --pixel-size; --pixel-size overrides; built-in
models declare their training resolution; segment reads the pyramid level closest to it."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr

from hirestile.cli import main
from hirestile.errors import InputError
from hirestile.io import closest_level, open_image, parse_pixel_size
from hirestile.models.registry import REGISTRY, get_spec
from hirestile.ome import write_image

RGB = np.zeros((48, 64, 3), np.uint8)


def _ome_zarr(path, *, scale0: float | None = 0.125, unit: str | None = "micrometer", shape=(3, 1200, 960)):
    """An OME-Zarr pyramid (levels 2x apart) whose level-0 scale is ``scale0`` ``unit``."""
    write_image(path, read=lambda r, c: np.full((3, r[1] - r[0], c[1] - c[0]), 200, np.uint8), shape=shape,
                dtype=np.dtype(np.uint8), name="slide", progress=False)
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
