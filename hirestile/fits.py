"""FITS in and out: astronomers' images read window by window, outputs written with the input's WCS.

Reading (:func:`open_fits`, called by :func:`hirestile.io.open_image` for ``.fits``,
``.fit``, ``.fts``, ``.fits.fz`` or any file starting ``SIMPLE  =``): one image HDU
(``hdu=`` index or EXTNAME, default the first image HDU holding data), 2-D or a 3-D
cube whose planes are channels, wrapped in a small array (:class:`FitsArray`) that
:class:`hirestile.io.InputImage` reads like a zarr array. Uncompressed data is
memory-mapped and only the window asked for is read and scaled; tile-compressed
HDUs (Rice, GZIP, ... ``CompImageHDU``) are read through astropy's ``.section``.

Pixel values are astropy's, bit for bit: BSCALE/BZERO applied as astropy does
(BITPIX 8/16 scaled -> float32, 32/64 scaled -> float64; BZERO 2^(n-1) -> unsigned
ints), integer BLANK pixels -> NaN (the ``--nan-fill`` rule then applies), floats
as stored in native byte order.

Writing (:func:`zarr_to_fits`): a finished hirestile zarr output streamed block by
block into ``OUT.partial`` through a memory map (header with the final shape
first), carrying the input's celestial WCS (rescaled for a network whose output
grid differs from its input's), a few observation cards and hirestile's
provenance cards, then renamed to ``OUT``: a FITS file that exists is complete.

astropy is a runtime dependency (sky images are a headline use); it is imported
lazily, so the rest of hirestile never pays for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from typing import Any

import numpy as np

from .errors import InputError, OutputError
from .io import InputImage, _file_stamp, infer_axes

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fts.fz")
FITS_MAGIC = b"SIMPLE  ="
STAGING_SUFFIX = ".hirestile.zarr"       # the zarr output a FITS output is computed into
#: observation cards copied from the input header to a FITS output (when present)
COPIED_CARDS = ("OBJECT", "TELESCOP", "INSTRUME", "OBSERVER", "FILTER", "DATE-OBS", "MJD-OBS", "EXPTIME",
                "EQUINOX", "RADESYS")
_RAW = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def astropy_fits() -> Any:
    """``astropy.io.fits``, or a one-line InputError saying how to install it."""
    try:
        from astropy.io import fits
    except ImportError:
        raise InputError("reading or writing FITS needs astropy; install it: pip install 'astropy>=6.0'") from None
    return fits


def is_fits_path(path: str) -> bool:
    return path.lower().endswith(FITS_SUFFIXES)


# ---- reading -----------------------------------------------------------------------------------
class FitsArray:
    """One FITS image HDU as an array: ``shape``, ``dtype`` and NumPy-style ``[...]`` reads of
    windows (slices and integers), scaled as astropy scales them. ``header`` is the HDU's header,
    ``hdu`` its index, ``compression`` its tile compression (None when uncompressed)."""

    def __init__(self, path: str, hdul: Any, index: int) -> None:
        fits = astropy_fits()
        h = hdul[index]
        self.path, self.hdu, self.header, self._hdul = path, index, h.header, hdul
        self.shape = tuple(int(n) for n in h.shape)
        self._lock = threading.Lock()
        if isinstance(h, fits.CompImageHDU):
            self.compression = str(getattr(h, "compression_type", None) or "tile-compressed")
            self._section = h.section
            self._raw = None
            self.dtype = np.dtype(np.asarray(self._section[(slice(0, 1),) * len(self.shape)]).dtype).newbyteorder("=")
            return
        self.compression = None
        self._section = None
        bitpix = int(h.header["BITPIX"])
        if bitpix not in _RAW:
            raise InputError(f"{path}: HDU {index} has BITPIX {bitpix}, not a FITS image type; check the file")
        raw = np.dtype(_RAW[bitpix])
        offset = int(h.fileinfo()["datLoc"])
        need = offset + raw.itemsize * int(np.prod(self.shape))
        size = os.path.getsize(path)
        if size < need:
            raise InputError(f"{path}: truncated: HDU {index} needs {need} bytes but the file has {size}; "
                             "copy or download the file again")
        self._raw = np.memmap(path, dtype=raw, mode="r", offset=offset, shape=self.shape)
        self._bscale = float(h.header.get("BSCALE", 1))
        self._bzero = float(h.header.get("BZERO", 0))
        blank = h.header.get("BLANK") if bitpix > 0 else None
        self._blank = int(blank) if isinstance(blank, (int, np.integer)) else None
        self._unsigned = None                # (unsigned dtype, top bit) for BZERO = 2^(n-1) pseudo-unsigned ints
        self._float = None                   # dtype of scaled integers
        scaled = not (self._bzero == 0 and self._bscale == 1)
        if bitpix > 0 and self._bscale == 1 and (bitpix, self._bzero) in ((8, -128), (16, 2.0 ** 15),
                                                                         (32, 2.0 ** 31), (64, 2.0 ** 63)):
            self._unsigned = (np.dtype("int8") if bitpix == 8 else np.dtype(f"uint{bitpix}"))
            self.dtype = self._unsigned
        elif bitpix > 0 and (scaled or self._blank is not None):
            self._float = np.dtype("float64" if bitpix > 16 else "float32")
            self.dtype = self._float
        else:
            self.dtype = raw.newbyteorder("=")

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._raw is None:
            with self._lock:                 # one file object under the compressed section
                out = np.asarray(self._section[index])
            return out.astype(out.dtype.newbyteorder("="), copy=False)
        raw = np.array(self._raw[index])
        if self._unsigned is not None:
            if self._unsigned.kind == "i":  # BITPIX 8, BZERO -128: signed bytes
                return (raw ^ np.uint8(0x80)).view(np.int8)
            u = raw.astype(raw.dtype.newbyteorder("=")).view(self._unsigned)
            return u ^ self._unsigned.type(1 << (8 * self._unsigned.itemsize - 1))
        if self._float is not None:          # astropy's arithmetic: cast, multiply, add, in that dtype
            data = np.array(raw, dtype=self._float)
            if self._bscale != 1:
                np.multiply(data, self._bscale, data)
            if self._bzero != 0:
                data += self._bzero
            if self._blank is not None:
                data[raw == self._blank] = np.nan
            return data
        data = raw.astype(self.dtype)
        if self._bscale != 1:
            np.multiply(data, self._bscale, data)
        if self._bzero != 0:
            data += self._bzero
        return data

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:     # a Dask worker reopens the file
        return _reopen, (self.path, self.hdu)

    def close(self) -> None:
        self._raw = None
        self._section = None
        self._hdul.close()


def _reopen(path: str, hdu: int) -> FitsArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FitsArray(path, astropy_fits().open(path, lazy_load_hdus=False), hdu)


def _hdu_kind(h: Any) -> str:
    return type(h).__name__


def _is_image(fits: Any, h: Any) -> bool:
    return isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def choose_hdu(path: str, hdul: Any, hdu: int | str | None) -> int:
    """The index of the image HDU to read: ``hdu`` (index, EXTNAME or "EXTNAME,EXTVER"), else the
    first image HDU with data. Raises a one-line :class:`InputError` naming what the file holds."""
    fits = astropy_fits()
    listing = ", ".join(f"{i} {h.name or '-'} ({_hdu_kind(h)})" for i, h in enumerate(hdul))
    if hdu is None:
        for i, h in enumerate(hdul):
            if _is_image(fits, h) and h.header.get("NAXIS", 0) > 0 and all(int(n) > 0 for n in h.shape):
                return i
        raise InputError(f"{path}: no image HDU with data (HDUs: {listing}); give a FITS file holding an image")
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    if isinstance(hdu, int):
        if not 0 <= hdu < len(hdul):
            raise InputError(f"{path}: HDU {hdu} does not exist (HDUs: {listing}); pass --hdu 0..{len(hdul) - 1}")
        i = hdu
    else:
        name, _, ver = hdu.partition(",")
        found = [i for i, h in enumerate(hdul) if h.name.upper() == name.strip().upper()
                 and (not ver.strip() or int(h.header.get("EXTVER", 1)) == int(ver))]
        if not found:
            raise InputError(f"{path}: no HDU named {hdu!r} (HDUs: {listing}); pass --hdu with one of these "
                             "names or indices")
        i = found[0]
    if not _is_image(fits, hdul[i]):
        raise InputError(f"{path}: HDU {hdu} is a {_hdu_kind(hdul[i])}, not an image (HDUs: {listing}); "
                         "pass --hdu naming an image HDU")
    return i


class FitsPlane:
    """One plane of a 3-D FITS cube as a 2-D array (``--plane``): reads go to that plane only."""

    def __init__(self, cube: FitsArray, plane: int) -> None:
        self.cube, self.plane = cube, plane
        self.shape, self.dtype = cube.shape[-2:], cube.dtype
        self.path, self.hdu, self.header, self.compression = cube.path, cube.hdu, cube.header, cube.compression

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        lead = (0,) * (len(self.cube.shape) - 3)
        return self.cube[lead + (self.plane,) + index]

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return (_reopen_plane, (self.path, self.hdu, self.plane))

    def close(self) -> None:
        self.cube.close()


def _reopen_plane(path: str, hdu: int, plane: int) -> FitsPlane:
    return FitsPlane(_reopen(path, hdu), plane)


def open_fits(path: str, *, hdu: int | str | None = None, axes: str | None = None,
              level: int | None = None, plane: int | None = None) -> InputImage:
    """Open one image HDU of a FITS file as an :class:`~hirestile.io.InputImage`.

    2-D HDUs are (H, W); a 3-D cube's planes (NAXIS3) are channels, or with ``plane`` one
    plane (0-based) is the image; leading axes of size 1 (radio cubes' Stokes axis) are
    dropped. Nothing is read until a window is.
    """
    fits = astropy_fits()
    if level not in (None, 0):
        raise InputError(f"{path}: a FITS image has a single resolution level; drop --level {level}")
    with open(path, "rb") as f:
        if f.read(9) != FITS_MAGIC:
            raise InputError(f"{path}: not a FITS file (it does not start with SIMPLE =); check the file "
                             "or give a zarr / TIFF input")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, lazy_load_hdus=False)   # memmap where it can, not strictly
    except Exception as e:  # noqa: BLE001 - astropy raises many types on damaged files
        raise InputError(f"{path}: not a readable FITS file ({type(e).__name__}: {_first(e)}); "
                         "copy or download the file again") from None
    try:
        index = choose_hdu(path, hdul, hdu)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = FitsArray(path, hdul, index)
    except InputError:
        hdul.close()
        raise
    except Exception as e:  # noqa: BLE001
        hdul.close()
        raise InputError(f"{path}: cannot read the FITS image ({type(e).__name__}: {_first(e)}); "
                         "check the file") from None
    shape = arr.shape
    where = f"{path}: HDU {index}: "
    if len(shape) < 2:
        arr.close()
        raise InputError(f"{where}holds {len(shape)}-D data (shape {shape}); hirestile segments 2-D images "
                         "and 3-D cubes: pass --hdu naming an image HDU")
    if plane is not None:
        planes = shape[-3] if len(shape) >= 3 else 0
        if len(shape) < 3 or not 0 <= plane < planes or any(n != 1 for n in shape[:-3]):
            arr.close()
            what = f"a cube of {planes} planes (0 to {planes - 1})" if planes else f"{len(shape)}-D data"
            raise InputError(f"{where}--plane {plane} does not fit {what}; give a plane index of a 3-D cube")
        arr = FitsPlane(arr, plane)
        shape = arr.shape
    names = ["1"] * (len(shape) - 3) + (["C"] if len(shape) >= 3 else []) + ["Y", "X"]
    try:
        layout = infer_axes(shape, axes=axes, names=names, where=where)
    except InputError:
        arr.close()
        raise
    fmt = "FITS" + (f" ({arr.compression} tile-compressed)" if arr.compression else "")
    ident = {**_file_stamp(path), "hdu": index, **({"plane": plane} if plane is not None else {})}
    return InputImage(path=path, array=arr, layout=layout, format=fmt, level=0, levels=(shape,),
                      extra_identity=ident, _closers=[arr])


def _first(e: BaseException) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:200]


# ---- describing (hirestile info) ----------------------------------------------------------------
def describe(img: InputImage) -> list[str]:
    """Lines for ``hirestile info``: the file's HDUs, the chosen one's compression and its WCS."""
    fits = astropy_fits()
    arr = img.array
    lines = ["hdus:"]
    for i, h in enumerate(arr._hdul):
        hd = h.header
        if _is_image(fits, h):
            what = f"shape {tuple(h.shape)}, BITPIX {hd.get('BITPIX')}"
            if isinstance(h, fits.CompImageHDU):
                what += f", {getattr(h, 'compression_type', '?')} compressed"
        else:
            what = f"{hd.get('NAXIS2', '?')} rows" if hd.get("XTENSION") in ("BINTABLE", "TABLE") else "no image"
        mark = "  <- reading" if i == arr.hdu else ""
        lines.append(f"  {i:>3}  {h.name or '-':<16} {_hdu_kind(h):<13} {what}{mark}")
    lines.append(f"compression: {arr.compression or 'none'}")
    lines.append("wcs:     " + wcs_summary(arr.header))
    hd = arr.header
    if "HIRESTILE MODEL" in hd:
        lines.append(f"hirestile output: {hd.get('HIRESTILE OUTPUT', '?')} of model {hd['HIRESTILE MODEL']!r} "
                     f"(fingerprint {hd.get('HIRESTILE FINGERPRINT', '?')}, hirestile {hd.get('HIRESTILE VERSION', '?')})"
                     f", input {hd.get('HIRESTILE INPUT', '?')}; status: complete")
    return lines


def celestial_wcs(header: Any) -> Any:
    """The celestial part of ``header``'s WCS (astropy.wcs.WCS), or None."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header)
    except Exception:  # noqa: BLE001 - a damaged WCS is reported as none
        return None
    return w.celestial if w.has_celestial else None


def wcs_summary(header: Any) -> str:
    """Projection, reference coordinates and pixel scale in arcsec, on one line."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    w = celestial_wcs(header)
    if w is None:
        return "none (no celestial WCS in the header)"
    ctype = "/".join(w.wcs.ctype)
    proj = w.wcs.ctype[0][-3:] if len(w.wcs.ctype[0]) >= 8 else "?"
    crval = ", ".join(f"{v:.6f}" for v in w.wcs.crval)
    try:
        scales = proj_plane_pixel_scales(w)
        units = [str(u) or "deg" for u in w.wcs.cunit]
        arcsec = [s * 3600.0 if u == "deg" else float("nan") for s, u in zip(scales, units)]
        scale = " x ".join(f"{s:.4g}" for s in arcsec) + " arcsec/px"
    except Exception:  # noqa: BLE001
        scale = "?"
    radesys = getattr(w.wcs, "radesys", "") or ""
    return f"{ctype} ({proj} projection{', ' + radesys if radesys else ''}), CRVAL ({crval}) deg, " \
           f"CRPIX ({', '.join(f'{v:.2f}' for v in w.wcs.crpix)}), pixel scale {scale}"


# ---- WCS for an output grid ----------------------------------------------------------------------
def output_wcs(header: Any, scale: tuple[float, float] = (1.0, 1.0)) -> Any:
    """The input's celestial WCS for an output whose pixel is ``scale`` = (rows, cols) input pixels
    (the network's output stride), centred on the block it covers; None when there is none.
    For size-preserving networks (scale 1) it is the input's WCS unchanged."""
    w = celestial_wcs(header)
    if w is None or tuple(scale) == (1.0, 1.0):
        return w
    w = w.deepcopy()
    sy, sx = scale
    s = np.array([sx, sy])                                        # FITS axis order: x, y
    w.wcs.crpix = (np.asarray(w.wcs.crpix) - 1 - (s - 1) / 2) / s + 1
    if w.wcs.has_cd():
        w.wcs.cd = np.asarray(w.wcs.cd) * s[None, :]
    else:
        w.wcs.cdelt = np.asarray(w.wcs.cdelt) * s
    w.sip = None                                                  # distortion polynomials are in input pixels
    w.wcs.set()
    return w


def wcs_cards(header: Any, scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """:func:`output_wcs` as FITS cards (JSON-able values), {} when the input has no celestial WCS."""
    w = output_wcs(header, scale)
    if w is None:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = w.to_header(relax=True)
    return {k: v for k, v in h.items() if k not in ("COMMENT", "HISTORY", "")}


def annotate_zarr(path: str, header: Any, *, in_hw: tuple[int, int] | None = None, hdu: int = 0,
                  full_header: bool = False) -> None:
    """Keep a FITS input's WCS (``fits_wcs``: cards, rescaled from the input grid ``in_hw`` to the
    output's level 0) and, with ``full_header``, its whole header (``fits_header``: the 80-character
    cards, newline-separated) in the attributes of the zarr group at ``path``."""
    import zarr

    from .ome import scale_of

    g = zarr.open_group(path, mode="r+")
    oh, ow = g["0"].shape[-2:]
    attrs = dict(g.attrs)
    attrs["fits_wcs"] = wcs_cards(header, scale_of(in_hw, (oh, ow)) if in_hw else (1.0, 1.0))
    attrs["fits_hdu"] = hdu
    if full_header:
        attrs["fits_header"] = header.tostring(sep="\n", padding=False, endcard=False)
    g.attrs.put(attrs)


# ---- writing -------------------------------------------------------------------------------------
def staging_path(out: str) -> str:
    """The hidden zarr output a FITS output ``out`` is computed into (resumable), beside it."""
    return out + STAGING_SUFFIX


def job_key(model: Any, img: InputImage, kind: str, nan_fill: float | None) -> str:
    """What identifies a FITS output's job (model, input and its data stamp, output kind, nan_fill)."""
    job = {"model": model.fingerprint, "input": img.identity(), "output": kind, "nan_fill": nan_fill}
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished(out: str, key: str, overwrite: bool) -> bool:
    """Whether ``out`` is a finished FITS output of the job ``key``. Another file there is an
    :class:`OutputError` unless ``overwrite`` (then it is removed, if it is a FITS file)."""
    if not os.path.lexists(out):
        return False
    if os.path.isdir(out) or not _starts_fits(out):
        raise OutputError(f"{out} exists and is not a FITS file; hirestile will not replace it: choose another -o")
    if overwrite:
        os.remove(out)
        return False
    fits = astropy_fits()
    try:
        old = fits.getheader(out).get("HIERARCH HIRESTILE JOB")
    except Exception:  # noqa: BLE001
        old = None
    if old == key:
        return True
    raise OutputError(f"{out} already exists and was not written by this job; pass --overwrite to replace it "
                      "or choose another -o")


def _starts_fits(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(9) == FITS_MAGIC
    except OSError:
        return False


_STORED = {"float16": (-32, 0, ">f4"), "float32": (-32, 0, ">f4"), "uint8": (8, 0, "u1"),
           "uint16": (16, 32768, ">u2")}


def zarr_to_fits(zarr_path: str, out: str, *, header: Any = None, in_hw: tuple[int, int] | None = None,
                 key: str = "", source: str = "", block: int = 2048, progress: bool | None = None,
                 remove_zarr: bool = True) -> None:
    """Stream the finished hirestile zarr output at ``zarr_path`` into the FITS file ``out``.

    The pixels are the zarr's level 0, bit for bit (float16 probabilities become float32,
    exactly; labels uint8 -> BITPIX 8, uint16 -> BITPIX 16 with BZERO 32768). ``header``
    (the input's) gives the WCS, rescaled to the output grid from ``in_hw`` (the input's
    height, width), and the :data:`COPIED_CARDS`. Provenance: ``HIERARCH HIRESTILE`` MODEL,
    FINGERPRINT, VERSION, OUTPUT, JOB (``key``), INPUT (``source``) and CLASSn.
    Written to ``out.partial`` then renamed; the zarr is removed after (``remove_zarr``).
    """
    import zarr
    from tqdm import tqdm

    from . import ome
    from .resume import fsync_path

    fits = astropy_fits()
    g = zarr.open_group(zarr_path, mode="r")
    st = ome.status(g)
    if st.get("status") != "complete":
        raise OutputError(f"{zarr_path} is not a finished hirestile output; rerun the segment command")
    man = st.get("manifest") or {}
    job = man.get("job", {})
    arr = g["0"]
    shape = tuple(int(n) for n in arr.shape)
    dt = np.dtype(arr.dtype).name
    if dt not in _STORED:
        raise OutputError(f"{zarr_path}: dtype {dt} has no FITS output type here; use a zarr output")
    bitpix, bzero, stored = _STORED[dt]
    cards: list[tuple[Any, ...]] = [("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", bitpix),
                                    ("NAXIS", len(shape))]
    cards += [(f"NAXIS{i + 1}", n) for i, n in enumerate(reversed(shape))]
    if bzero:
        cards += [("BSCALE", 1), ("BZERO", bzero, "unsigned 16-bit labels")]
    hdr = fits.Header(cards)
    if header is not None:
        oh, ow = shape[-2:]
        scale = ome.scale_of(in_hw, (oh, ow)) if in_hw else (1.0, 1.0)
        for k, v in wcs_cards(header, scale).items():
            hdr[k] = v
        for k in COPIED_CARDS:
            if k in header and k not in hdr:
                hdr[k] = (header[k], header.comments[k])
    model = job.get("model", {})
    prov = {"MODEL": model.get("name", "?"), "FINGERPRINT": model.get("fingerprint", "?"),
            "VERSION": man.get("hirestile", "?"), "OUTPUT": job.get("output", "?"), "JOB": key,
            "INPUT": os.path.basename(source)[:40]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # HIERARCH cards are announced with a VerifyWarning
        for k, v in prov.items():
            hdr[f"HIERARCH HIRESTILE {k}"] = v
        for i, c in enumerate(man.get("classes", [])):
            hdr[f"HIERARCH HIRESTILE CLASS{i}"] = str(c)[:40]
    if man.get("nan_fill") is not None:
        hdr["HISTORY"] = f"hirestile: NaN/Inf input pixels read as {man['nan_fill']}"
    head = hdr.tostring().encode("ascii")
    nbytes = int(np.prod(shape)) * np.dtype(stored).itemsize
    total = len(head) + -(-nbytes // 2880) * 2880
    partial = out + ".partial"
    try:
        with open(partial, "wb") as f:
            f.write(head)
            f.truncate(total)                     # the data and its zero padding
        mm = np.memmap(partial, dtype=stored, mode="r+", offset=len(head), shape=shape)
        h, w = shape[-2:]
        cy, cx = (tuple(arr.chunks)[-2:])
        step_y, step_x = -(-block // cy) * cy, -(-block // cx) * cx
        pieces = [(y, min(y + step_y, h), x, min(x + step_x, w)) for y in range(0, h, step_y)
                  for x in range(0, w, step_x)]
        for y0, y1, x0, x1 in tqdm(pieces, desc="fits", unit="block", leave=False,
                                   disable=None if progress is None else not progress):
            data = np.asarray(arr[..., y0:y1, x0:x1])
            if bzero:
                data = data ^ np.uint16(0x8000)
            mm[..., y0:y1, x0:x1] = data
        mm.flush()
        del mm
        fsync_path(partial)
        os.replace(partial, out)
        fsync_path(os.path.dirname(os.path.abspath(out)))
    except OSError as e:
        raise OutputError(f"writing {out} failed ({e.strerror or e}); free space or fix permissions, then rerun "
                          "the same command") from None
    if remove_zarr:
        ome.remove_output(zarr_path)


def default_output(path: str, model_name: str, fmt: str = "zarr") -> str:
    """``sky.fits`` + ``unet-astro`` -> ``sky.unet-astro.zarr`` (or ``.fits``) beside the input."""
    from .resume import default_output as zarr_default

    ext = next((e for e in sorted(FITS_SUFFIXES, key=len, reverse=True) if path.lower().endswith(e)), "")
    out = zarr_default(path[: len(path) - len(ext)], model_name)
    return out if fmt == "zarr" else out[: -len(".zarr")] + f".{fmt}"


__all__ = ["FitsArray", "open_fits", "choose_hdu", "describe", "wcs_summary", "celestial_wcs", "output_wcs",
           "wcs_cards", "annotate_zarr", "staging_path", "job_key", "finished", "zarr_to_fits",
           "default_output", "is_fits_path", "FITS_SUFFIXES"]
