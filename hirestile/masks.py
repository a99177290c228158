"""Foreground masks: which output tiles a run computes, and which it leaves as fill.

Layer 7 of docs/architecture.md, beside the scheduler. A :class:`Mask` is a small boolean
array laid over the input image (each mask cell covers an exact rational rectangle of input
pixels). :func:`make_mask` builds one from ``--mask``:

* ``"auto"`` -- RGB(A) integer images (histology): tissue against glass, Otsu on the optical
  density of block means read from a coarse pyramid level (or the image's own level), small
  specks removed and the tissue grown by two cells (scipy.ndimage, skimage.morphology); any
  other image (FITS, float, single channel): the footprint of valid data, every block holding
  one finite non-zero pixel (exact: read in full at the image's own level).
* a path -- the user's mask (zarr / OME-Zarr / TIFF / PNG / JPEG, any resolution with the
  image's proportions): non-zero is foreground; it is laid over the image by scaling.
* an array -- the same, in memory.

The scheduler asks :meth:`Mask.covers` for every tile's write region: a tile is computed
whole if any mask cell its region touches is foreground (a superset of nearest-neighbour
scaling to the output grid), else it is not computed at all: its blocks are marked done and
read back as the output's fill value 0. Computed tiles are bit for bit a maskless run's.
:func:`write_labels` stores the mask as the OME-Zarr labels layer ``labels/mask``.

Examples
--------
>>> import numpy as np
>>> m = from_array(np.array([[0, 1], [0, 0]], bool), (100, 100), source="example")
>>> m.covers(((0, 50), (0, 50)), (100, 100)), m.covers(((0, 50), (50, 100)), (100, 100))
(False, True)
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import InputError
from .io import InputImage, open_image
from .ome import compressor

AUTO_CELLS = 1024          # the auto mask's long side, at most (cells)
BAND_BYTES = 64 << 20      # read the image in row bands of about this many bytes
OD_RANGE = (0.03, 0.10)    # the tissue threshold: Otsu on optical density, kept in this range
GROW = 2                   # auto tissue masks grow by this many cells (faint tissue edges)
LABEL_NAME = "mask"


@dataclass(frozen=True)
class Mask:
    """A boolean foreground mask laid over an image of ``image_hw`` input pixels.

    Cell (i, j) covers input rows [i * ey / mh, (i + 1) * ey / mh) and the like for columns,
    with ``extent`` = (ey, ex) exact fractions of input pixels (at least the image's size).
    """

    data: np.ndarray
    extent: tuple[Fraction, Fraction]
    image_hw: tuple[int, int]
    source: str

    def cells(self, region: Any, out_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The mask cells (rows, cols) that the output region ``region`` touches; the output
        grid ``out_hw`` spans the image (output pixel y covers input [y H / oh, (y + 1) H / oh))."""
        spans = []
        for (a, b), n_out, n_in, ext, cells in zip(region, out_hw, self.image_hw, self.extent, self.data.shape):
            f = Fraction(n_in, n_out) * cells / ext           # mask cells per output pixel
            lo, hi = a * f, b * f
            c0 = min(max(int(lo), 0), cells - 1)               # floor
            c1 = max(min(-int(-hi // 1), cells), c0 + 1)        # ceil
            spans.append((c0, c1))
        return spans[0], spans[1]

    def covers(self, region: Any, out_hw: tuple[int, int]) -> bool:
        """Whether the output region touches any foreground cell (then its tile is computed)."""
        (r0, r1), (c0, c1) = self.cells(region, out_hw)
        return bool(self.data[r0:r1, c0:c1].any())

    @property
    def fraction(self) -> float:
        """Foreground fraction of the mask's cells."""
        return float(self.data.mean()) if self.data.size else 0.0

    def identity(self) -> dict[str, Any]:
        """What identifies the mask for resume: its source, shape and a hash of its cells."""
        bits = np.packbits(self.data, axis=None).tobytes()
        return {"source": self.source, "shape": list(self.data.shape),
                "extent": [str(e) for e in self.extent],
                "sha256": hashlib.sha256(bits).hexdigest()[:16]}


def from_array(data: Any, image_hw: tuple[int, int], *, source: str = "array") -> Mask:
    """A mask from an (h, w) array at any resolution with the image's proportions (non-zero is
    foreground; a (C, h, w) array counts a cell if any channel is non-zero)."""
    a = np.asarray(data)
    if a.ndim == 3:
        a = (a != 0).any(axis=0)
    if a.ndim != 2 or 0 in a.shape:
        raise InputError(f"mask {source}: shape {a.shape} is not a 2D image; give a (height, width) mask")
    _check_proportions(a.shape, image_hw, source)
    return Mask(data=np.ascontiguousarray(a != 0), extent=(Fraction(image_hw[0]), Fraction(image_hw[1])),
                image_hw=tuple(image_hw), source=source)


def _check_proportions(mhw: tuple[int, ...], image_hw: tuple[int, int], source: str) -> None:
    (mh, mw), (h, w) = mhw, image_hw
    ratio = (h / mh) / (w / mw)               # 1 when the mask spans the image's proportions
    if abs(ratio - 1) > 0.02 + 1 / min(mh, mw):   # integer downsampling may round a side by one cell
        raise InputError(f"mask {source}: is {mh}x{mw} but the image is {h}x{w} (different proportions); "
                         "give a mask of the image's whole extent, at any resolution")
    if mh > h or mw > w:
        raise InputError(f"mask {source}: is {mh}x{mw}, larger than the image ({h}x{w}); give a mask at "
                         "the image's resolution or coarser")


def make_mask(spec: Any, img: InputImage) -> Mask | None:
    """The mask ``spec`` names for ``img``: None, ``"auto"``, a path or an array."""
    if spec is None:
        return None
    if isinstance(spec, Mask):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        return auto_mask(img) if text == "auto" else load_mask(text, img.shape[1:])
    return from_array(spec, img.shape[1:])


def make_mask_for(spec: Any, image_hw: tuple[int, int]) -> Mask:
    """The mask ``spec`` names for an image of ``image_hw`` known only by its size (the Dask
    API's arrays): a Mask, a path or an array; ``"auto"`` needs the image itself."""
    if isinstance(spec, Mask):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        if os.fspath(spec) == "auto":
            raise InputError("mask 'auto' needs an image opened with hirestile.io.open_image (or a path); "
                             "for arrays give the mask itself")
        return load_mask(os.fspath(spec), image_hw)
    return from_array(spec, image_hw)


# ---- reading -------------------------------------------------------------------------
def _block_reduce(img: InputImage, step: int, how: str) -> np.ndarray:
    """(C, ceil(H / step), ceil(W / step)) block reductions of the whole image, read in row
    bands: ``"mean"`` (float64 means per channel) or ``"valid"`` (whether a block holds a
    finite non-zero value, any channel; shape (1, ...))."""
    c, h, w = img.shape
    itemsize = max(img.dtype.itemsize, 4)
    rows = max(1, BAND_BYTES // max(1, c * w * itemsize * step)) * step
    edges = np.arange(0, w, step)
    out = []
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        band = img.read((r0, r1), (0, w))
        redges = np.arange(0, r1 - r0, step)
        if how == "valid":
            v = np.isfinite(band) & (band != 0) if band.dtype.kind == "f" else band != 0
            v = v.any(axis=0, keepdims=True).view(np.uint8)
            v = np.maximum.reduceat(np.maximum.reduceat(v, redges, axis=1), edges, axis=2)
            out.append(v.astype(bool))
        else:
            s = np.add.reduceat(np.add.reduceat(band, redges, axis=1, dtype=np.float64), edges, axis=2)
            ny = np.diff(np.append(redges, r1 - r0))
            nx = np.diff(np.append(edges, w))
            out.append(s / (ny[:, None] * nx[None, :]))
    return np.concatenate(out, axis=1)


def _step(h: int, w: int, cells: int = AUTO_CELLS) -> int:
    return max(1, -(-max(h, w) // cells))


def load_mask(path: str, image_hw: tuple[int, int]) -> Mask:
    """The user's mask file: PNG / JPEG (any image file imageio reads), zarr / OME-Zarr (level 0)
    or TIFF; non-zero is foreground. A mask at the image's full resolution is reduced to at most
    :data:`AUTO_CELLS` cells a side, a cell counting when any of its pixels is non-zero."""
    if not os.path.exists(path):
        raise InputError(f"--mask {path}: no such file or directory; give a mask image or 'auto'")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
        import imageio.v3 as iio
        try:
            a = np.asarray(iio.imread(path))
        except Exception as e:
            raise InputError(f"--mask {path}: cannot read the image ({str(e).splitlines()[0] if str(e) else e}); "
                             "give a PNG, TIFF or zarr mask") from None
        if a.ndim == 3 and a.shape[-1] in (2, 4):
            a = a[..., :-1]                          # alpha says nothing about foreground
        if a.ndim == 3:
            a = (a != 0).any(axis=-1)
        mh, mw = a.shape[:2]
        _check_proportions((mh, mw), image_hw, path)
        step = _step(mh, mw)
        if step > 1:
            a = np.maximum.reduceat(np.maximum.reduceat((a != 0).view(np.uint8) if a.dtype == bool
                                                        else (a != 0).astype(np.uint8),
                                                        np.arange(0, mh, step), axis=0),
                                    np.arange(0, mw, step), axis=1)
        return _scaled(a != 0, (mh, mw), step, image_hw, path)
    try:
        m = open_image(path, channels=1)
    except InputError as e:
        raise InputError(f"--mask {path}: {str(e).removeprefix(path + ': ')}") from None
    try:
        mh, mw = m.height, m.width
        _check_proportions((mh, mw), image_hw, path)
        step = _step(mh, mw)
        data = _block_reduce(m, step, "valid")[0]
    finally:
        m.close()
    return _scaled(data, (mh, mw), step, image_hw, path)


def _scaled(data: np.ndarray, mhw: tuple[int, int], step: int, image_hw: tuple[int, int], source: str) -> Mask:
    """A mask of cells of ``step`` pixels of an (mh, mw) grid that spans the image."""
    ext = tuple(Fraction(n, m) * step * c for n, m, c in zip(image_hw, mhw, data.shape))
    return Mask(data=np.ascontiguousarray(data, dtype=bool), extent=ext, image_hw=tuple(image_hw), source=source)


def auto_mask(img: InputImage) -> Mask:
    """``--mask auto``: tissue against glass for RGB(A) integer images, else the valid-data
    footprint (see the module's docstring)."""
    c, h, w = img.shape
    if img.dtype.kind in "iu" and c in (3, 4) and "FITS" not in img.format:
        return _tissue(img)
    step = _step(h, w)
    data = _block_reduce(img, step, "valid")[0]
    return _scaled(data, (h, w), step, (h, w), "auto (valid-data footprint)")


def _coarse(img: InputImage) -> tuple[InputImage, bool]:
    """The coarsest stored level still at least :data:`AUTO_CELLS` on its long side (or the
    image's own level); whether it was opened here (and must be closed)."""
    y, x = img.layout.find("Y"), img.layout.find("X")
    best = img.level
    for lv in range(img.level + 1, len(img.levels)):
        shp = img.levels[lv]
        if len(shp) == len(img.layout) and max(shp[y], shp[x]) >= AUTO_CELLS:
            best = lv
    if best == img.level:
        return img, False
    try:
        return open_image(img.path, level=best, axes=img.axes), True
    except InputError:
        return img, False


def _tissue(img: InputImage) -> Mask:
    from scipy import ndimage
    from skimage import filters, morphology

    h, w = img.height, img.width
    src, opened = _coarse(img)
    try:
        lh, lw = src.height, src.width
        step = _step(lh, lw)
        means = _block_reduce(src, step, "mean")[:3]
    finally:
        if opened:
            src.close()
    top = float(np.iinfo(img.dtype).max)
    od = (-np.log10((means + 1) / (top + 1))).mean(axis=0)
    try:
        t = float(filters.threshold_otsu(od))
    except ValueError:
        t = OD_RANGE[0]
    t = min(max(t, OD_RANGE[0]), OD_RANGE[1])
    fg = od > t
    lab, _ = ndimage.label(fg)                   # drop specks (dust, debris) of a few cells
    sizes = np.bincount(lab.ravel())
    fg = (sizes >= max(4, fg.size // 20000))[lab] & fg
    if GROW:                                      # faint tissue edges: grow the tissue
        fg = morphology.dilation(fg, morphology.disk(GROW)).astype(bool)
    return _scaled(fg, (lh, lw), step, (h, w), f"auto (tissue: optical density > {t:.3f})")


# ---- output ---------------------------------------------------------------------------
def write_labels(group: Any, mask: Mask, out_hw: tuple[int, int], *, skipped: int, total: int,
                 pixel: tuple[tuple[float, float], str | None] = ((1.0, 1.0), None)) -> None:
    """Store ``mask`` as the OME-Zarr 0.5 labels layer ``labels/mask`` of an output group: uint8,
    1 = foreground (computed), 0 = skipped, one pixel per mask cell. Its scale is in output pixels
    times ``pixel`` = (the output's pixel size, its unit or None), the output's own scale
    (``ome.output_scale``)."""
    labels = group.require_group("labels")
    names = list(dict(labels.attrs).get("ome", {}).get("labels", []))
    if LABEL_NAME not in names:
        names.append(LABEL_NAME)
    labels.attrs.put({"ome": {"version": "0.5", "labels": names}})
    g = labels.require_group(LABEL_NAME)
    mh, mw = mask.data.shape
    scale = [float(e * o / (n * m)) * p for e, o, n, m, p in zip(mask.extent, out_hw, mask.image_hw, (mh, mw),
                                                                   pixel[0])]
    unit = {"unit": pixel[1]} if pixel[1] else {}
    g.create_array("0", data=mask.data.astype(np.uint8), chunks=(min(mh, 1024), min(mw, 1024)),
                   dimension_names=["y", "x"], overwrite=True, compressors=compressor())
    g.attrs.put({"ome": {
        "version": "0.5",
        "multiscales": [{"name": LABEL_NAME, "axes": [{"name": "y", "type": "space", **unit},
                                                      {"name": "x", "type": "space", **unit}],
                         "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
                         "type": "nearest"}],
        "image-label": {"colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]},
                                   {"label-value": 1, "rgba": [60, 180, 75, 96]}],
                        "properties": [{"label-value": 0, "class": "skipped"},
                                       {"label-value": 1, "class": "computed"}],
                        "source": {"image": "../../"}}},
        "hirestile": {"mask": mask.source, "tiles_skipped": int(skipped), "tiles_total": int(total),
                      "rule": "a tile is computed when its write region touches a foreground cell; "
                              "skipped tiles hold the fill value 0"}})


def mask_status(path: str, job_mask: dict[str, Any]) -> str:
    """One line for ``hirestile info`` on a masked output: the mask's source and the tiles it skipped."""
    import zarr

    text = f"{job_mask.get('source', '?')}, {'x'.join(map(str, job_mask.get('shape', [])))} cells"
    try:
        st = dict(zarr.open_group(path, mode="r")[f"labels/{LABEL_NAME}"].attrs).get("hirestile", {})
    except (KeyError, OSError, ValueError, zarr.errors.BaseZarrError):
        return text
    if "tiles_skipped" in st:
        text += (f"; {st['tiles_skipped']} of {st['tiles_total']} tiles outside it, not computed (fill 0); "
                 f"see labels/{LABEL_NAME}")
    return text


def apply_mask(mask: Mask, plan: Any, todo: list[Any], donelog: Any, group: Any,
               out_hw: tuple[int, int], pixel: tuple[tuple[float, float], str | None] = ((1.0, 1.0), None),
               ) -> tuple[list[Any], int]:
    """Drop the tiles of ``todo`` the mask leaves empty: their blocks are marked done (they read
    back as fill 0), the mask is written as ``labels/mask`` (``pixel``: see :func:`write_labels`).
    Returns (tiles to compute, the number of the plan's tiles the mask skips)."""
    empty = {t.index for t in plan.tiles if not mask.covers(t.write, out_hw)}
    for t in todo:
        if t.index in empty:
            donelog.mark(plan.blocks(t))
    write_labels(group, mask, out_hw, skipped=len(empty), total=len(plan.tiles), pixel=pixel)
    return [t for t in todo if t.index not in empty], len(empty)


__all__ = ["Mask", "make_mask", "from_array", "load_mask", "auto_mask", "write_labels", "apply_mask",
           "mask_status", "make_mask_for", "AUTO_CELLS"]
