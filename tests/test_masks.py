"""Masks that skip empty tiles (issue 16): a masked run equals the full-frame output on every
computed tile and holds fill 0 elsewhere, skipped tiles are never computed, resume honours
the mask, ``--mask auto`` finds tissue on glass and the valid-data footprint, user masks at
any resolution, the labels layer, bad masks get one line."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import zarr

import hirestile
from hirestile import executor
from hirestile.cli import main
from hirestile.errors import InputError, OutputError
from hirestile.examples import EXAMPLES
from hirestile.masks import auto_mask, from_array, load_mask, make_mask
from hirestile.io import open_image
from hirestile.models.unet import unet
from hirestile.ome import write_image
from hirestile.scheduler import segment_to_zarr

from npref import expected_output

H, W, T = 160, 224, 32           # image, tile: a 5 x 7 grid of tiles


@pytest.fixture(scope="module")
def model():
    return unet(in_channels=3, classes=2, base=4, depth=2, seed=5)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(16).integers(0, 256, (3, H, W)).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(model, image):
    return expected_output(hirestile.predict(model, image), "probabilities")


def _input(tmp_path, image) -> str:
    path = str(tmp_path / "in.zarr")
    if not os.path.exists(path):
        zarr.create_array(path, data=image, chunks=(3, 64, 64), dimension_names=["c", "y", "x"])
    return path


# a mask at 1/8 of the image's resolution: 20 x 28 cells of 8 x 8 pixels
MASK = np.zeros((H // 8, W // 8), bool)
MASK[2:5, 3:9] = True            # rows 16-40, cols 24-72: tiles (0..1) x (0..2)
MASK[19, 27] = True              # one cell in the bottom-right tile


def _computed_tiles(mask: np.ndarray, tile: int = T) -> set[tuple[int, int]]:
    """Tiles (row, col) holding a foreground pixel of the mask scaled to the image by nearest:
    the test's own reference (np.repeat), not hirestile.masks."""
    fy, fx = H // mask.shape[0], W // mask.shape[1]
    full = np.repeat(np.repeat(mask, fy, axis=0), fx, axis=1)
    return {(i, j) for i in range(-(-H // tile)) for j in range(-(-W // tile))
            if full[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].any()}


def _check(out: np.ndarray, reference: np.ndarray, computed: set[tuple[int, int]], tile: int = T) -> None:
    assert out.shape == reference.shape
    for i in range(-(-H // tile)):
        for j in range(-(-W // tile)):
            sl = (slice(None), slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile))
            if (i, j) in computed:
                assert np.array_equal(out[sl], reference[sl]), (i, j)
            else:
                assert not out[sl].any(), (i, j)


_RUN_WINDOW = executor.run_window


class _Stop(Exception):
    """A crash in the middle of a run."""


class _Counter:
    """Counts executor.run_window calls (one per computed tile) and can fail after ``fail_after``."""

    def __init__(self, monkeypatch, fail_after: int | None = None) -> None:
        self.calls, self.fail_after, self.real = [], fail_after, _RUN_WINDOW
        monkeypatch.setattr(executor, "run_window", self)

    def __call__(self, rep, contract, raw, tile, **kw):
        if tuple(rep.image_shape) != (H, W):   # the CLI's kernel warm-up (a small sample image), not the run
            return self.real(rep, contract, raw, tile, **kw)
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise _Stop
        self.calls.append(tuple(tile.write))
        return self.real(rep, contract, raw, tile, **kw)


@pytest.mark.parametrize("stream", [True, False])
def test_masked_run_equals_full_frame_on_computed_tiles_and_zero_elsewhere(tmp_path, model, image, reference,
                                                                           monkeypatch, stream):
    count = _Counter(monkeypatch)
    out = str(tmp_path / "out.zarr")
    stats = segment_to_zarr(_input(tmp_path, image), model, out, tile=T, progress=False, mask=MASK, stream=stream)
    computed = _computed_tiles(MASK)
    assert computed == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (4, 6)}
    g = zarr.open_group(out, mode="r")
    _check(g["0"][...], reference, computed)
    # skipped tiles were never computed; computed ones once each
    assert len(count.calls) == len(computed) == stats.tiles_computed
    assert {(r[0] // T, c[0] // T) for r, c in count.calls} == computed
    assert stats.tiles_total == 35 and stats.tiles_skipped == 0
    assert any("28 of 35 tiles (80%)" in n for n in stats.notes)
    # the time saved: an estimate from the tiles computed (format and arithmetic, not timings)
    saved = [n for n in stats.notes if n.startswith("time saved")]
    assert len(saved) == 1 and saved[0] in stats.summary().splitlines()
    m = re.fullmatch(r"time saved: about (\d+\.\d) s \(estimate: 28 skipped tiles x (\d+\.\d{3}) s, "
                     r"the mean compute time of a computed tile\)", saved[0])
    assert m and float(m.group(2)) == pytest.approx(stats.compute / stats.tiles_computed, abs=5e-4)
    assert float(m.group(1)) == pytest.approx(28 * stats.compute / stats.tiles_computed, abs=0.05 + 28 * 5e-4)
    # the mask is the output's OME-Zarr labels layer, laid over the output grid
    assert g["labels"].attrs["ome"]["labels"] == ["mask"]
    assert np.array_equal(g["labels/mask/0"][...], MASK.astype(np.uint8))
    ms = g["labels/mask"].attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [8.0, 8.0]
    assert g.attrs["hirestile"]["status"] == "complete" and "multiscales" in g.attrs["ome"]


def test_masked_resume_computes_only_the_rest(tmp_path, model, image, reference, monkeypatch):
    inp, out = _input(tmp_path, image), str(tmp_path / "out.zarr")
    first = _Counter(monkeypatch, fail_after=3)
    with pytest.raises(_Stop):
        segment_to_zarr(inp, model, out, tile=T, progress=False, mask=MASK, stream=False)
    assert len(first.calls) == 3
    again = _Counter(monkeypatch)
    stats = segment_to_zarr(inp, model, out, tile=T, progress=False, mask=MASK, stream=False)
    computed = _computed_tiles(MASK)
    done_before = {(r[0] // T, c[0] // T) for r, c in first.calls}
    # the resumed run computes neither the skipped tiles nor those done before the interruption
    assert {(r[0] // T, c[0] // T) for r, c in again.calls} <= computed - done_before
    assert len(again.calls) >= len(computed) - 3 - 2        # at most the pipeline's in-flight tiles lost
    _check(zarr.open_group(out, mode="r")["0"][...], reference, computed)
    assert stats.tiles_skipped == len(computed) - len(again.calls)
    # a complete masked output is the same job: nothing to do
    assert segment_to_zarr(inp, model, out, tile=T, progress=False, mask=MASK).already_complete


def test_mask_is_part_of_the_job(tmp_path, model, image):
    inp, out = _input(tmp_path, image), str(tmp_path / "out.zarr")
    segment_to_zarr(inp, model, out, tile=T, progress=False, mask=MASK)
    other = MASK.copy()
    other[0, 0] = True
    with pytest.raises(OutputError, match="mask"):
        segment_to_zarr(inp, model, out, tile=T, progress=False, mask=other)
    with pytest.raises(OutputError, match="mask"):
        segment_to_zarr(inp, model, out, tile=T, progress=False)


def test_empty_mask_computes_nothing_and_writes_fill(tmp_path, model, image, monkeypatch):
    count = _Counter(monkeypatch)
    out = str(tmp_path / "out.zarr")
    stats = segment_to_zarr(_input(tmp_path, image), model, out, tile=T, progress=False,
                            mask=np.zeros((5, 7), bool), kind="labels")
    assert count.calls == [] and stats.tiles_computed == 0
    assert not any("time saved" in n for n in stats.notes)      # nothing computed: nothing to estimate from
    g = zarr.open_group(out, mode="r")
    assert g["0"].shape == (H, W) and not g["0"][...].any()
    assert g.attrs["hirestile"]["status"] == "complete"


# ---- the tile decision against nearest-neighbour scaling ----------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_covers_every_region_nearest_scaling_touches(seed):
    """Mask.covers is true wherever the mask scaled to the output grid by nearest neighbour
    (pixel centres, the test's own rule) has a foreground pixel: no foreground is ever skipped."""
    rng = np.random.default_rng(seed)
    ih, iw = rng.integers(40, 300, 2)
    f = rng.integers(1, 9)                  # the mask: the image's proportions, 1/f of its size
    mh, mw = max(1, -(-ih // f)), max(1, -(-iw // f))
    s = rng.choice([1, 2, 4])               # the output grid: the network's stride s
    oh, ow = -(-ih // s), -(-iw // s)
    data = rng.random((mh, mw)) < 0.05
    m = from_array(data, (int(ih), int(iw)))
    ys = np.minimum(((np.arange(oh) + 0.5) * mh / oh).astype(int), mh - 1)
    xs = np.minimum(((np.arange(ow) + 0.5) * mw / ow).astype(int), mw - 1)
    near = data[np.ix_(ys, xs)]
    for _ in range(60):
        y0, x0 = rng.integers(0, oh), rng.integers(0, ow)
        y1, x1 = rng.integers(y0 + 1, oh + 1), rng.integers(x0 + 1, ow + 1)
        if near[y0:y1, x0:x1].any():
            assert m.covers(((y0, y1), (x0, x1)), (int(oh), int(ow)))
    if not data.any():
        assert not m.covers(((0, oh), (0, ow)), (int(oh), int(ow)))


# ---- --mask auto --------------------------------------------------------------------------
TISSUE = ((600, 1500), (300, 900))       # rows, cols of the tissue island on a 2048 x 1536 slide


def _slide(rows: tuple[int, int], cols: tuple[int, int], tissue=TISSUE) -> np.ndarray:
    """Glass (bright, slightly noisy) with the histology example's tissue in ``tissue``."""
    (y0, y1), (x0, x1) = rows, cols
    rng = np.random.default_rng(y0 * 7919 + x0)
    out = rng.integers(232, 244, (3, y1 - y0, x1 - x0)).astype(np.uint8)
    (ty0, ty1), (tx0, tx1) = tissue
    a, b, c, d = max(y0, ty0), min(y1, ty1), max(x0, tx0), min(x1, tx1)
    if a < b and c < d:
        out[:, a - y0:b - y0, c - x0:d - x0] = EXAMPLES["histology"].pixels((a, b), (c, d))
    return out


def test_auto_mask_skips_glass_on_a_pyramid_slide(tmp_path):
    path = str(tmp_path / "slide.zarr")
    write_image(path, read=_slide, shape=(3, 2048, 1536), dtype=np.dtype(np.uint8), name="slide", progress=False)
    with open_image(path) as img:
        assert len(img.levels) > 2
        m = auto_mask(img)
    assert "tissue" in m.source
    tile = 256
    for y in range(0, 2048, tile):
        for x in range(0, 1536, tile):
            region = ((y, y + tile), (x, x + tile))
            (ty0, ty1), (tx0, tx1) = TISSUE
            touches = y < ty1 and y + tile > ty0 and x < tx1 and x + tile > tx0
            # farther than the mask's growth (2 cells of 2 px at level 1) plus one cell of rounding
            far = y >= ty1 + 16 or y + tile <= ty0 - 16 or x >= tx1 + 16 or x + tile <= tx0 - 16
            if touches:
                assert m.covers(region, (2048, 1536)), region
            elif far:
                assert not m.covers(region, (2048, 1536)), region
    assert 0.1 < m.fraction < 0.25           # the island is 900 x 600 of 2048 x 1536 (17%)


def test_auto_mask_end_to_end_skips_glass_tiles(tmp_path, model, monkeypatch, capsys):
    """A small slide, run through the CLI: tiles on glass are not computed, the others equal
    the full-frame output."""
    img = _slide((0, H), (0, W), tissue=((40, 100), (30, 90)))
    inp = str(tmp_path / "glass.zarr")
    zarr.create_array(inp, data=img, chunks=(3, 64, 64), dimension_names=["c", "y", "x"])
    count = _Counter(monkeypatch)
    out = str(tmp_path / "out.zarr")
    assert main(["segment", inp, "--model", "unet", "-o", out, "--tile", str(T), "--mask", "auto", "-q"]) == 0
    tissue = np.zeros((H, W), bool)
    tissue[40:100, 30:90] = True
    touching = _computed_tiles(tissue)
    done = {(r[0] // T, c[0] // T) for r, c in count.calls}
    assert touching <= done and len(done) < 35 // 2
    ref = expected_output(hirestile.predict(hirestile.load_model("unet"), img), "probabilities")
    _check(zarr.open_group(out, mode="r")["0"][...], ref, done)
    err = capsys.readouterr().err
    assert f"{35 - len(done)} of 35 tiles" in err      # the summary's mask note, and the time saved
    assert re.search(rf"^time saved: about \d+\.\d s \(estimate: {35 - len(done)} skipped tiles x \d+\.\d{{3}} s, "
                     r"the mean compute time of a computed tile\)$", err, re.MULTILINE)
    assert main(["info", out]) == 0
    assert "mask: auto (tissue: optical density > " in (info := capsys.readouterr().out)
    assert f"{35 - len(done)} of 35 tiles outside it" in info


def test_auto_mask_float_footprint_and_fits(tmp_path):
    from astropy.io import fits

    data = np.zeros((300, 500), np.float32)
    data[50:200, 120:400] = np.random.default_rng(1).normal(10, 1, (150, 280))
    data[250:, :] = np.nan                   # a no-data margin
    fp = str(tmp_path / "sky.fits")
    fits.PrimaryHDU(data).writeto(fp)
    with open_image(fp) as img:
        m = auto_mask(img)
    assert "footprint" in m.source
    assert m.covers(((50, 51), (120, 121)), (300, 500)) and m.covers(((199, 200), (399, 400)), (300, 500))
    assert not m.covers(((0, 50), (0, 500)), (300, 500))        # exact: rows above the data
    assert not m.covers(((200, 300), (0, 500)), (300, 500))     # zeros and NaN below
    assert not m.covers(((0, 300), (400, 500)), (300, 500))
    # the same from zarr float32
    zp = str(tmp_path / "sky.zarr")
    zarr.create_array(zp, data=data)
    with open_image(zp) as img:
        assert np.array_equal(auto_mask(img).data, m.data)


# ---- user masks ---------------------------------------------------------------------------
def test_user_mask_files_at_any_resolution(tmp_path):
    import imageio.v3 as iio
    import tifffile

    png, tif, zp = str(tmp_path / "m.png"), str(tmp_path / "m.tif"), str(tmp_path / "m.zarr")
    iio.imwrite(png, MASK.astype(np.uint8) * 255)
    full = np.repeat(np.repeat(MASK, 8, 0), 8, 1).astype(np.uint8)    # the image's own resolution
    tifffile.imwrite(tif, full)
    zarr.create_array(zp, data=MASK.astype(np.uint8))
    for p in (png, tif, zp):
        m = load_mask(p, (H, W))
        for i in range(H // T):
            for j in range(W // T):
                region = ((i * T, (i + 1) * T), (j * T, (j + 1) * T))
                assert m.covers(region, (H, W)) == ((i, j) in _computed_tiles(MASK)), (p, i, j)


def test_bad_masks_one_line(tmp_path, image):
    inp = _input(tmp_path, image)
    with open_image(inp) as img:
        with pytest.raises(InputError, match="no such file"):
            make_mask(str(tmp_path / "nope.png"), img)
        with pytest.raises(InputError, match="different proportions"):
            make_mask(np.ones((10, 40), bool), img)
        with pytest.raises(InputError, match="larger than the image"):
            make_mask(np.ones((H * 2, W * 2), bool), img)
    rc = main(["segment", inp, "--model", "unet", "-o", str(tmp_path / "o.zarr"), "--mask",
               str(tmp_path / "nope.png"), "-q"])
    assert rc == 2 and not os.path.exists(tmp_path / "o.zarr")


# ---- the Dask API ------------------------------------------------------------------------
def test_dask_segment_with_mask(tmp_path, model, image, reference, monkeypatch):
    import dask
    import dask.array as da

    count = _Counter(monkeypatch)
    computed = _computed_tiles(MASK)
    got = hirestile.segment(image, model, output="probabilities", chunks=T, mask=MASK)       # NumPy in
    _check(got, reference, computed)
    assert len(count.calls) == len(computed)
    zp = _input(tmp_path, image)
    with dask.config.set(scheduler="sync"):
        for src in (da.from_array(image, chunks=(3, 64, 64)), zarr.open_array(zp, mode="r")):
            count.calls.clear()
            lazy = hirestile.segment(src, model, output="probabilities", chunks=T, mask=MASK)
            _check(lazy.compute(), reference, computed)
            assert len(count.calls) == len(computed)
    with pytest.raises(InputError, match="auto"):
        hirestile.segment(da.from_array(image), model, chunks=T, mask="auto")
