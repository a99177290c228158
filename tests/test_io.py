"""Inputs (zarr, OME-Zarr, TIFF), output layout and OME-Zarr 0.5 metadata, resume log, examples."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from hirestile import ome
from hirestile.errors import InputError, OutputError
from hirestile.examples import EXAMPLES, mirror_index, parse_size, write_example
from hirestile.io import open_image
from hirestile.outputs import OUTPUT_KINDS, postprocess
from hirestile.resume import DoneLog, differences

RNG = np.random.default_rng(7)


# ---- inputs ------------------------------------------------------------------------
def _v3(path, data, dims=None, chunks=None):
    return zarr.create_array(str(path), data=data, chunks=chunks or "auto", dimension_names=dims)


def _v2(path, data, dims=None):
    a = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, zarr_format=2,
                          chunks=tuple(min(s, 16) for s in data.shape))
    a[...] = data
    if dims:
        a.attrs["_ARRAY_DIMENSIONS"] = dims
    return a


CHW = RNG.integers(0, 255, (3, 23, 31), dtype=np.uint8)


@pytest.mark.parametrize("writer, data, dims, axes", [
    ("v3", CHW, ["c", "y", "x"], "CHW"),
    ("v3", CHW.transpose(1, 2, 0), None, "HWC"),            # small last axis
    ("v3", CHW, None, "CHW"),                               # small first axis
    ("v3", CHW[0], None, "HW"),
    ("v2", CHW.transpose(1, 2, 0), None, "HWC"),
    ("v2", CHW.transpose(1, 2, 0), ["y", "x", "c"], "HWC"),
    ("v2", CHW[0].astype(np.float32), None, "HW"),
    ("v3", CHW.transpose(2, 1, 0), ["x", "y", "c"], None),  # transposed spatial axes via dimension_names
])
def test_zarr_layouts_read_as_chw(tmp_path, writer, data, dims, axes):
    p = tmp_path / "img.zarr"
    (_v3 if writer == "v3" else _v2)(p, data, dims)
    img = open_image(p)
    expect = CHW if data.ndim == 3 else CHW[:1]
    if axes is None:                       # x, y, c stored: reading gives (C, Y, X)
        assert img.layout == "XYC"
        np.testing.assert_array_equal(img.read((2, 9), (4, 30)), CHW[:, 2:9, 4:30])
        return
    assert img.axes == axes
    assert img.shape == (expect.shape[0], 23, 31)
    got = img.read((2, 9), (4, 30))
    assert got.flags.c_contiguous and got.dtype == data.dtype
    np.testing.assert_array_equal(got, expect[:, 2:9, 4:30].astype(data.dtype))


def test_axes_override_and_ambiguous_shape(tmp_path):
    data = RNG.integers(0, 9, (5, 6, 4), dtype=np.uint8)    # both ends small: ambiguous
    _v3(tmp_path / "a.zarr", data)
    with pytest.raises(InputError, match="--axes"):
        open_image(tmp_path / "a.zarr")
    assert open_image(tmp_path / "a.zarr", axes="HWC").shape == (4, 5, 6)
    assert open_image(tmp_path / "a.zarr", axes="chw").shape == (5, 6, 4)
    assert open_image(tmp_path / "a.zarr", channels=4).axes == "HWC"   # the model's channel count decides
    with pytest.raises(InputError, match="does not fit"):
        open_image(tmp_path / "a.zarr", axes="HW")


def test_ome_zarr_levels_and_5d_axes(tmp_path):
    p = str(tmp_path / "ome.zarr")
    full = RNG.integers(0, 2**16, (1, 2, 1, 40, 50), dtype=np.uint16)    # t c z y x
    g = zarr.open_group(p, mode="w")
    g.create_array("0", data=full, dimension_names=list("tczyx"))
    g.create_array("1", data=full[..., ::2, ::2].copy(), dimension_names=list("tczyx"))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    ds = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 2**i, 2**i]}]}
          for i in range(2)]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": ds}]}
    img = open_image(p)
    assert (img.format, img.layout, img.shape, len(img.levels)) == ("OME-Zarr 0.5", "1C1YX", (2, 40, 50), 2)
    np.testing.assert_array_equal(img.read((0, 40), (0, 50)), full[0, :, 0])
    img1 = open_image(p, level=1)
    assert img1.shape == (2, 20, 25) and img1.level == 1
    with pytest.raises(InputError, match="level 2 does not exist"):
        open_image(p, level=2)


def test_group_without_multiscales(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("only", data=CHW)
    assert open_image(tmp_path / "g.zarr").shape == CHW.shape
    g.create_array("other", data=CHW)
    with pytest.raises(InputError, match=r"arrays \[only, other\]"):
        open_image(tmp_path / "g.zarr")
    assert open_image(tmp_path / "g.zarr" / "other").shape == CHW.shape


def test_tiff_rgb_and_ome_pyramid(tmp_path):
    rgb = RNG.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", rgb, tile=(32, 32), photometric="rgb")
    img = open_image(tmp_path / "a.tif")
    assert (img.format, img.axes, img.shape) == ("TIFF", "HWC", (3, 70, 90))
    np.testing.assert_array_equal(img.read((5, 69), (1, 80)), rgb[5:69, 1:80].transpose(2, 0, 1))
    img.close()
    data = RNG.integers(0, 2**12, (2, 64, 96), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "b.ome.tif", bigtiff=True, ome=True) as tw:
        tw.write(data, tile=(32, 32), subifds=1, metadata={"axes": "CYX"}, photometric="minisblack")
        tw.write(data[:, ::2, ::2], tile=(32, 32), subfiletype=1, photometric="minisblack")
    with open_image(tmp_path / "b.ome.tif") as img:
        assert (img.format, img.axes, img.shape, len(img.levels)) == ("OME-TIFF", "CHW", (2, 64, 96), 2)
        np.testing.assert_array_equal(img.read((0, 64), (0, 96)), data)
    with open_image(tmp_path / "b.ome.tif", level=1) as img:
        np.testing.assert_array_equal(img.read((0, 32), (0, 48)), data[:, ::2, ::2])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "uint64", "float16", "float32", "float64"])
def test_numeric_dtypes_accepted(tmp_path, dtype):
    _v3(tmp_path / "a.zarr", np.ones((4, 5), dtype))
    assert open_image(tmp_path / "a.zarr").dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["complex64", "bool"])
def test_unsupported_dtypes_refused(tmp_path, dtype):
    _v3(tmp_path / "a.zarr", np.ones((4, 5), dtype))
    with pytest.raises(InputError, match=f"dtype {dtype} is not supported"):
        open_image(tmp_path / "a.zarr")


def test_bad_paths_shapes(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_image(tmp_path / "nope.zarr")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(InputError, match="not a zarr store or TIFF"):
        open_image(tmp_path / "t.txt")
    os.mkdir(tmp_path / "empty")
    with pytest.raises(InputError, match="not a zarr store or TIFF"):
        open_image(tmp_path / "empty")
    _v3(tmp_path / "z.zarr", np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError, match="empty"):
        open_image(tmp_path / "z.zarr")
    _v3(tmp_path / "4d.zarr", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="4 dimensions"):
        open_image(tmp_path / "4d.zarr")
    _v3(tmp_path / "zstack.zarr", np.zeros((3, 8, 9), np.uint8), dims=["z", "y", "x"])
    with pytest.raises(InputError, match="select one plane"):
        open_image(tmp_path / "zstack.zarr")


def test_missing_and_corrupt_chunks(tmp_path):
    p = str(tmp_path / "ex.zarr")
    write_example("astronomy", p, size=600, pyramid=False, progress=False)
    img = open_image(p)
    assert img.dense and img.missing_chunks() == []
    os.remove(os.path.join(p, "0", "c", "1", "0"))
    assert img.missing_chunks() == ["c/1/0"]
    with open(os.path.join(p, "0", "c", "0", "1"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(InputError, match="corrupt"):
        img.read((0, 10), (500, 600))
    # a plain zarr 3 array skips all-fill chunks: missing is normal there
    _v3(tmp_path / "sparse.zarr", np.zeros((40, 40), np.uint8), chunks=(16, 16))
    sparse = open_image(tmp_path / "sparse.zarr")
    assert not sparse.dense and len(sparse.missing_chunks()) == 9


@pytest.mark.parametrize("fmt", [2, 3])
def test_truncated_blosc_chunk_is_refused(tmp_path, fmt):
    """Blosc decodes a cut-off frame as garbage without an error; the reader refuses it."""
    from numcodecs import Blosc
    data = RNG.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    data[:, 40:] = 0                                            # chunks that compress well, too
    p = str(tmp_path / f"b{fmt}.zarr")
    codec = Blosc(cname="lz4") if fmt == 2 else zarr.codecs.BloscCodec()
    zarr.create_array(p, data=data, chunks=(3, 32, 32), zarr_format=fmt, compressors=codec)
    img = open_image(p)
    assert np.array_equal(img.read((0, 70), (0, 90)), data)     # intact: no false alarm
    key = "0.0.1" if fmt == 2 else "c/0/0/1"
    f = tmp_path / f"b{fmt}.zarr" / key
    whole = f.read_bytes()
    f.write_bytes(whole[:-1])
    with pytest.raises(InputError, match=f"chunk {key} is truncated \\({len(whole) - 1} of {len(whole)} bytes\\)"):
        img.read((10, 20), (30, 40))
    assert np.array_equal(img.read((0, 70), (0, 32)), data[:, :, :32])    # other chunks still read
    f.write_bytes(whole[:9])
    with pytest.raises(InputError, match="truncated .9 of at least 16 bytes"):
        img.read((0, 1), (32, 33))


# ---- output layout and metadata ---------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), tile=st.integers(1, 2100), k=st.integers(1, 5),
       kind=st.sampled_from(OUTPUT_KINDS))
def test_layout_properties(h, w, tile, k, kind):
    lay = ome.choose_layout(kind, classes=k, out_hw=(h, w), tile=tile)
    assert lay.shape[-2:] == (h, w) and len(lay.shape) == (2 if kind == "labels" else 3)
    cy, cx = lay.chunks[-2:]
    assert 1 <= cy <= min(h, 256) and 1 <= cx <= min(w, 256)
    by, bx = lay.block
    assert by % cy == 0 and bx % cx == 0                  # shards hold whole chunks
    assert by >= min(tile, h) and bx >= min(tile, w)       # a tile-sized shard, at least
    assert by < max(tile, h) + cy and bx < max(tile, w) + cx
    for lv in range(1, ome.pyramid_levels((h, w))):
        ll = ome.level_layout(lay, lv)
        assert ll.shape[-2:] == (-(-h // 2**lv), -(-w // 2**lv))
        assert ll.block[0] % ll.chunks[-2] == 0 and ll.block[1] % ll.chunks[-1] == 0


def test_postprocess_kinds():
    logits = RNG.normal(0, 3, (3, 5, 7)).astype(np.float32)
    p = postprocess(logits, "probabilities")
    assert p.dtype == np.float16
    np.testing.assert_allclose(p.astype(np.float32).sum(0), 1, atol=3e-3)
    np.testing.assert_array_equal(postprocess(logits, "labels"), logits.argmax(0))
    assert postprocess(logits, "labels").dtype == np.uint8
    assert postprocess(logits, "logits").dtype == np.float32
    one = logits[:1]
    np.testing.assert_array_equal(postprocess(one, "labels"), (one[0] > 0).astype(np.uint8))
    np.testing.assert_allclose(postprocess(one, "probabilities"), 1 / (1 + np.exp(-one)), atol=1e-3)
    many = RNG.normal(0, 3, (300, 2, 3)).astype(np.float32)             # past uint8: uint16 labels
    lab = postprocess(many, "labels")
    assert lab.dtype == np.uint16 and np.array_equal(lab, many.argmax(0))


@pytest.mark.parametrize("chunk", [7, 1 << 18])
@pytest.mark.parametrize("k", [1, 2, 3, 300])
def test_postprocess_into_kept_arrays_gives_the_same_bits(monkeypatch, k, chunk):
    """The writer's reused arrays (``work``, rows a chunk at a time) give fresh arrays' bits,
    NaN and Inf included, whatever the sizes before (larger, smaller, another kind)."""
    from hirestile import outputs
    monkeypatch.setattr(outputs, "CHUNK_PIXELS", chunk)        # 7: a row per chunk, or a part of one
    work: dict = {}
    for kind, (h, w) in [("probabilities", (9, 11)), ("labels", (4, 5)), ("probabilities", (3, 2)),
                         ("labels", (12, 13)), ("logits", (2, 2))]:
        logits = RNG.normal(0, 4, (k, h, w)).astype(np.float32)
        logits[0, 0, 0], logits[-1, 1, 1], logits[:, 1, 0] = np.nan, np.inf, -np.inf
        with np.errstate(invalid="ignore"):
            fresh, kept = postprocess(logits, kind), postprocess(logits, kind, work)
        assert fresh.dtype == kept.dtype and fresh.shape == kept.shape
        assert fresh.tobytes() == kept.tobytes()
        if kind == "labels":                            # against NumPy's own argmax / threshold
            np.testing.assert_array_equal(kept, logits.argmax(0) if k > 1 else logits[0] > 0)


# A transcription of the OME-Zarr 0.5 JSON schemas (image.schema + label.schema) as far as they
# constrain what hirestile writes; prose rules of the spec are checked in check_ome below.
_VECTOR = {"type": "array", "minItems": 2, "items": {"type": "number"}}
OME_05_SCHEMA = {
    "type": "object", "required": ["ome"],
    "properties": {"ome": {
        "type": "object", "required": ["version", "multiscales"],
        "properties": {
            "version": {"const": "0.5"},
            "multiscales": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["axes", "datasets"],
                "properties": {
                    "name": {"type": "string"},
                    "axes": {"type": "array", "minItems": 2, "maxItems": 5, "uniqueItems": True,
                             "contains": {"properties": {"type": {"const": "space"}}, "required": ["type"]},
                             "minContains": 2, "maxContains": 3,
                             "items": {"type": "object", "required": ["name"],
                                       "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                    "datasets": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["path", "coordinateTransformations"],
                        "properties": {"path": {"type": "string"}, "coordinateTransformations": {
                            "type": "array", "minItems": 1, "maxItems": 2,
                            "prefixItems": [{"properties": {"type": {"const": "scale"}, "scale": _VECTOR},
                                             "required": ["type", "scale"]}],
                            "items": {"properties": {"type": {"const": "translation"}, "translation": _VECTOR},
                                      "required": ["type", "translation"]}}}}},
                    "coordinateTransformations": {"type": "array"},
                }}},
            "omero": {"type": "object", "required": ["channels"], "properties": {"channels": {
                "type": "array", "items": {"type": "object", "required": ["window", "color"], "properties": {
                    "window": {"type": "object", "required": ["start", "min", "end", "max"],
                               "properties": {k: {"type": "number"} for k in ("start", "min", "end", "max")}},
                    "color": {"type": "string"}, "label": {"type": "string"}, "active": {"type": "boolean"}}}}}},
            "image-label": {"type": "object", "properties": {
                "colors": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {
                    "type": "object", "required": ["label-value"], "properties": {
                        "label-value": {"type": "number"},
                        "rgba": {"type": "array", "minItems": 4, "maxItems": 4,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 255}}}}},
                "properties": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {
                    "type": "object", "required": ["label-value"],
                    "properties": {"label-value": {"type": "integer"}}}},
                "source": {"type": "object", "properties": {"image": {"type": "string"}}}}},
        }}},
}


def check_ome(path: str) -> dict:
    """Validate an OME-Zarr 0.5 image group on disk: schema plus the spec's prose rules."""
    import jsonschema

    with open(os.path.join(path, "zarr.json")) as f:
        meta = json.load(f)
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    attrs = meta["attributes"]
    jsonschema.Draft202012Validator(OME_05_SCHEMA).validate(attrs)
    ms = attrs["ome"]["multiscales"][0]
    names = [a["name"] for a in ms["axes"]]
    order = {"time": 0, "channel": 1, "space": 2}
    ranks = [order.get(a.get("type"), 1) for a in ms["axes"]]
    assert ranks == sorted(ranks), "axes must be time, channel, then space"
    g = zarr.open_group(path, mode="r")
    base = g[ms["datasets"][0]["path"]].shape
    scale0 = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    for ds in ms["datasets"]:
        arr = g[ds["path"]]
        assert arr.ndim == len(names) and list(arr.metadata.dimension_names) == names
        for t in ds["coordinateTransformations"]:
            assert len(t.get("scale", t.get("translation"))) == len(names)
        scale = ds["coordinateTransformations"][0]["scale"]
        for n, b, s, sc, sc0 in zip(names, base, arr.shape, scale, scale0):
            if n in ("x", "y"):                 # level shapes agree with their scale factors
                assert s == -(-b // round(sc / sc0))
    if "image-label" in attrs["ome"]:
        for ds in ms["datasets"]:
            assert np.dtype(g[ds["path"]].dtype).kind in "iu", "label arrays hold integers"
    return attrs


def napari_style_layers(path: str) -> list[tuple[list, dict, str]]:
    """Read an OME-Zarr image the way napari-ome-zarr does: (multiscale data, kwargs, layer type)."""
    import dask.array as da

    g = zarr.open_group(path, mode="r")
    ome_attrs = g.attrs["ome"]
    ms = ome_attrs["multiscales"][0]
    data = [da.from_zarr(g[d["path"]]) for d in ms["datasets"]]
    kwargs: dict = {"name": ms.get("name")}
    if "image-label" in ome_attrs:
        kwargs["properties"] = {p["label-value"]: p for p in ome_attrs["image-label"].get("properties", [])}
        return [(data, kwargs, "labels")]
    types = [a.get("type") for a in ms["axes"]]
    if "channel" in types:
        kwargs["channel_axis"] = types.index("channel")
        kwargs["name"] = [c["label"] for c in ome_attrs["omero"]["channels"]]
    return [(data, kwargs, "image")]


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_output_metadata_valid_and_readable(tmp_path, kind):
    p = str(tmp_path / f"{kind}.zarr")
    lay = ome.choose_layout(kind, classes=3, out_hw=(600, 333), tile=256)
    g = ome.create_output(p, kind=kind, layout=lay, attrs={"manifest": {}})
    assert "ome" not in g.attrs and ome.status(g)["status"] == "incomplete"   # not yet an OME image
    logits = RNG.normal(0, 2, (3, 600, 333)).astype(np.float32)
    g["0"][...] = postprocess(logits, kind)
    levels = ome.pyramid_levels((600, 333))
    ome.build_pyramid(g, kind=kind, base=lay, levels=levels)
    ome.finalize(g, ome=ome.ome_metadata(kind=kind, classes=("bg", "a", "b"), name="m", levels=levels))
    attrs = check_ome(p)
    assert attrs["hirestile"]["status"] == "complete" and levels == 3
    (data, kw, ltype), = napari_style_layers(p)
    assert [d.shape[-2:] for d in data] == [(600, 333), (300, 167), (150, 84)]
    if kind == "labels":
        assert ltype == "labels" and kw["properties"][2]["class"] == "b"
        np.testing.assert_array_equal(data[1].compute(), logits.argmax(0)[::2, ::2])
    else:
        assert ltype == "image" and kw["channel_axis"] == 0 and kw["name"] == ["bg", "a", "b"]
        top = postprocess(logits, kind)[:, :2, :2].astype(np.float32).mean(axis=(1, 2))
        np.testing.assert_allclose(data[1][:, 0, 0].compute().astype(np.float32), top, rtol=2e-3, atol=2e-3)


def test_remove_output_refuses_non_zarr(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a zarr store"):
        ome.remove_output(str(tmp_path / "docs"))
    assert (tmp_path / "docs" / "thesis.txt").exists()


# ---- resume log ----------------------------------------------------------------------
def test_done_log_torn_line_lock_and_remove(tmp_path):
    log = DoneLog(str(tmp_path))
    log.lock()
    log.mark((0, 2, 1, 2))
    log.mark((3, 4, 0, 3))
    with open(log.path, "ab") as f:
        f.write(b"5 6 0")                      # a kill in the middle of an append
    assert log.load() == {(0, 1), (1, 1), (3, 0), (3, 1), (3, 2)}
    other = DoneLog(str(tmp_path))
    with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        other.lock()
    log.remove()
    assert not os.path.exists(log.dir)
    other.lock()
    other.close()


def test_manifest_differences():
    a = {"model": {"name": "u", "fingerprint": "1"}, "output": "labels", "input": {"shape": [3, 4, 5]}}
    b = {"model": {"name": "u", "fingerprint": "2"}, "output": "labels", "input": {"shape": [3, 4, 6]}}
    assert differences(a, b) == ["input.shape", "model.fingerprint"]
    assert differences(a, a) == []


# ---- examples ------------------------------------------------------------------------
def test_mirror_index():
    np.testing.assert_array_equal(mirror_index(np.arange(-3, 9), 3), [2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2])


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_pixels_depend_on_position_only(name):
    ex = EXAMPLES[name]
    big = ex.pixels((900, 1000), (2000, 2100))
    np.testing.assert_array_equal(ex.pixels((930, 950), (2050, 2061)), big[..., 30:50, 50:61])
    assert big.dtype == np.uint8 and big.std() > 1


def test_write_example_is_valid_ome(tmp_path):
    p = str(tmp_path / "h.zarr")
    assert write_example("histology", p, size="300x520", progress=False) == (3, 300, 520)
    attrs = check_ome(p)
    assert attrs["ome"]["multiscales"][0]["axes"][0]["type"] == "channel"
    img = open_image(p)
    assert img.shape == (3, 300, 520) and img.dense and img.missing_chunks() == []
    np.testing.assert_array_equal(img.read((10, 20), (500, 520)), EXAMPLES["histology"].pixels((10, 20), (500, 520)))
    assert parse_size("3x4", 1) == (3, 4) and parse_size(None, 7) == (7, 7)
    with pytest.raises(InputError):
        parse_size("big", 1)
