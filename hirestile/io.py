"""Input images: zarr (v2/v3 arrays and groups, OME-Zarr multiscales) and TIFF.

One entry point, :func:`open_image`, turns a path into an :class:`InputImage`:
a lazily read array plus its layout. Nothing is loaded until :meth:`InputImage.read`
asks for a region, which comes back as a (C, h, w) block in the stored dtype.

Layouts are inferred in this order: an explicit ``axes`` argument, OME-Zarr axes
metadata, zarr v3 ``dimension_names`` (or xarray/tifffile ``_ARRAY_DIMENSIONS``),
TIFF series axes, and finally the shape (a small first or last axis is the channel
axis). When none of them decides, the user is asked for ``--axes``.

Examples
--------
>>> import numpy as np, zarr, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "img.zarr")
>>> zarr.create_array(path, data=np.zeros((50, 30, 2), np.uint8)).shape
(50, 30, 2)
>>> img = open_image(path)
>>> img.axes, img.channels, img.height, img.width
('HWC', 2, 50, 30)
>>> img.read((10, 13), (0, 2)).shape
(2, 3, 2)
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zarr

from .contract import pixel_size_value, unit_factor
from .errors import InputError

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SMALL_AXIS = 16          # an end axis this small (and the other end larger) is the channel axis

# axis-name synonyms -> role: C channel, Y rows, X columns, 1 a singleton to drop
_ROLE_OF_NAME = {
    **dict.fromkeys(("c", "ch", "channel", "channels", "s", "sample", "samples", "band", "bands"), "C"),
    **dict.fromkeys(("y", "row", "rows", "height", "h", "lat"), "Y"),
    **dict.fromkeys(("x", "col", "cols", "column", "columns", "width", "w", "lon"), "X"),
    **dict.fromkeys(("t", "time", "z", "depth", "plane", "q", "i"), "1"),
}
_ROLE_OF_TYPE = {"channel": "C", "time": "1"}


@dataclass
class InputImage:
    """A 2D image with an optional channel axis, stored in zarr or TIFF, read lazily.

    Attributes
    ----------
    path : str
        The path it was opened from.
    array : zarr.Array (or any object with ``shape``, ``dtype`` and NumPy indexing)
        The stored array of the chosen resolution level.
    layout : str
        One letter per stored axis: ``C`` channel, ``Y`` rows, ``X`` columns, ``1`` a
        size-1 axis (time, z) that is dropped.
    format : str
        Human-readable source format, e.g. ``"OME-Zarr 0.5"``, ``"zarr v2"``, ``"TIFF"``.
    level : int
        Resolution level read (0 = full resolution).
    levels : tuple of tuple of int
        Stored shapes of every level the source holds.
    """

    path: str
    array: Any
    layout: str
    format: str
    level: int = 0
    levels: tuple[tuple[int, ...], ...] = ()
    dense: bool = False               # the writer stored every chunk: a missing one means damage
    extra_identity: dict[str, Any] = field(default_factory=dict)
    _closers: list[Any] = field(default_factory=list, repr=False)
    # physical size of one pixel of this level, (rows, cols), in pixel_unit ("micrometer" or
    # "arcsecond"), from the metadata (pixel_source says which) or --pixel-size; None when not
    # recorded, or unusable (then pixel_warning says why and names the override)
    pixel_size: tuple[float, float] | None = None
    pixel_unit: str | None = None
    pixel_source: str = ""
    pixel_warning: str | None = None

    # ---- shape ---------------------------------------------------------------
    @property
    def axes(self) -> str:
        """Layout in the CLI's vocabulary: ``"HW"``, ``"CHW"`` or ``"HWC"``."""
        return self.layout.replace("1", "").replace("Y", "H").replace("X", "W")

    def _size(self, role: str, default: int = 1) -> int:
        i = self.layout.find(role)
        return int(self.array.shape[i]) if i >= 0 else default

    @property
    def height(self) -> int:
        return self._size("Y")

    @property
    def width(self) -> int:
        return self._size("X")

    @property
    def channels(self) -> int:
        return self._size("C")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the network sees it."""
        return (self.channels, self.height, self.width)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return tuple(getattr(self.array, "chunks", ()) or ()) or None

    @property
    def shards(self) -> tuple[int, ...] | None:
        return tuple(getattr(self.array, "shards", None) or ()) or None

    def identity(self) -> dict[str, Any]:
        """What identifies this input for resume: path, level, layout, shape, dtype, and a stamp
        of the stored data (computed here, not at open: only a resumable run needs it)."""
        return {"path": os.path.abspath(self.path), "format": self.format, "level": self.level,
                "axes": self.axes, "shape": list(self.shape), "dtype": self.dtype.str,
                **_stamp(self.array), **self.extra_identity}

    # ---- reading -------------------------------------------------------------
    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Read rows [r0, r1) and columns [c0, c1) as a C-contiguous (C, h, w) block.

        The region must lie inside the image; the stored dtype is kept.
        Read failures (corrupt chunk, vanished file) raise :class:`InputError`.
        """
        (r0, r1), (c0, c1) = rows, cols
        if not (0 <= r0 <= r1 <= self.height and 0 <= c0 <= c1 <= self.width):
            raise ValueError(f"region rows {r0}:{r1} cols {c0}:{c1} outside the {self.height}x{self.width} image")
        index = tuple(0 if r == "1" else slice(r0, r1) if r == "Y" else slice(c0, c1) if r == "X"
                      else slice(None) for r in self.layout)
        self._check_frames(index)
        try:
            block = np.asarray(self.array[index])
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - codecs (zlib, imagecodecs, numcodecs) raise any type
            raise InputError(f"{self.path}: cannot read rows {r0}:{r1}, columns {c0}:{c1} "
                             f"({_kind(e)}: {_first_line(e)}); a chunk is corrupt or unreadable: "
                             "repair or re-create the input") from None
        kept = [r for r in self.layout if r != "1"]
        if "C" not in kept:
            return np.ascontiguousarray(block[None])
        return np.ascontiguousarray(block.transpose([kept.index(r) for r in "CYX"]))

    @functools.cached_property
    def _blosc_root(self) -> str | None:
        """Chunk directory of an unsharded local zarr array whose chunk files are Blosc frames."""
        arr = self.array
        codecs = getattr(arr, "compressors", None) or ()
        if getattr(arr, "shards", None) or not codecs or type(codecs[-1]).__name__ not in ("Blosc", "BloscCodec"):
            return None
        return local_dir(arr)

    def _check_frames(self, index: tuple[Any, ...]) -> None:
        """Refuse a truncated Blosc chunk among those ``index`` reads (an :class:`InputError`).

        Blosc decodes a cut-off frame without complaint (garbage past the cut), but its
        16-byte header states the frame's length, so a file shorter than that is damage.
        """
        root = self._blosc_root
        if root is None:
            return
        arr = self.array
        spans = []
        for ix, n, g in zip(index, arr.shape, arr.chunks):
            if isinstance(ix, slice):
                a, b = ix.start or 0, n if ix.stop is None else ix.stop
                if b <= a:
                    return
                spans.append(range(a // g, (b - 1) // g + 1))
            else:
                spans.append(range(ix // g, ix // g + 1))
        for coords in itertools.product(*spans):
            key = arr.metadata.encode_chunk_key(coords)
            try:
                with open(os.path.join(root, key), "rb") as f:
                    head = f.read(16)
                    size = os.fstat(f.fileno()).st_size
            except FileNotFoundError:
                continue                       # fill value (missing_chunks says whether that is damage)
            except OSError as e:
                raise InputError(f"{self.path}: cannot read chunk {key} ({e.strerror or e}); repair or "
                                 "re-create the input") from None
            stated = int.from_bytes(head[12:16], "little") if len(head) == 16 else None
            if stated is None or size < stated:
                raise InputError(f"{self.path}: chunk {key} is truncated ({size} of "
                                 f"{stated if stated is not None else 'at least 16'} bytes); a chunk is corrupt: "
                                 "repair or re-create the input")

    def missing_chunks(self, limit: int | None = None) -> list[str]:
        """Stored chunk keys (shard keys when sharded) absent from a local store, up to ``limit``.

        zarr reads a missing chunk as the fill value, so a deleted chunk is silent.
        zarr writers also skip chunks that are all fill value, so a missing chunk is
        damage only where the writer stored every chunk (:attr:`dense`, set for
        images hirestile wrote). Only local directory stores are checked (TIFF and
        remote stores return []).
        """
        arr = self.array
        root = local_dir(arr)
        if root is None:
            return []
        grid = tuple(getattr(arr, "shards", None) or arr.chunks)
        counts = [-(-s // g) for s, g in zip(arr.shape, grid)]
        missing: list[str] = []
        for coords in np.ndindex(*counts):
            key = arr.metadata.encode_chunk_key(coords)
            if not os.path.exists(os.path.join(root, key)):
                missing.append(key)
                if limit is not None and len(missing) >= limit:
                    break
        return missing

    def close(self) -> None:
        for c in self._closers:
            c.close()
        self._closers.clear()

    def __enter__(self) -> InputImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_dir(arr: Any) -> str | None:
    """The directory holding a zarr array's files in a local directory store, else None."""
    store = getattr(getattr(arr, "store_path", None), "store", None)
    if not isinstance(store, zarr.storage.LocalStore):
        return None
    return os.path.join(str(store.root), arr.store_path.path)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _kind(e: BaseException) -> str:
    """The exception's type as a reader knows it: ``ValueError``, ``zlib.error``."""
    mod = type(e).__module__
    return type(e).__qualname__ if mod == "builtins" else f"{mod.split('.')[0]}.{type(e).__qualname__}"


# ---- opening -----------------------------------------------------------------
def open_image(path: str | os.PathLike[str], *, level: int | None = None, axes: str | None = None,
               channels: int | None = None, allow_incomplete: bool = False,
               hdu: int | str | None = None, plane: int | None = None) -> InputImage:
    """Open a zarr array/group, OME-Zarr image, TIFF or FITS file as an :class:`InputImage`.

    Parameters
    ----------
    path : str or path-like
        A zarr directory (array or group, v2 or v3), a ``.zip`` zarr store, or a
        TIFF/BigTIFF/OME-TIFF/SVS/NDPI file.
    level : int, optional
        Resolution level of a multiscale source (0, full resolution, by default).
    axes : {"HW", "CHW", "HWC"}, optional
        Layout of the stored axes, overriding what metadata or shape suggest.
    channels : int, optional
        Channel count the caller expects; breaks ties when the shape is ambiguous.
    allow_incomplete : bool
        Open a hirestile output that is still being written (for ``info``).
    hdu : int or str, optional
        FITS only: the HDU to read (index or EXTNAME); default the first image HDU with
        data (:func:`hirestile.fits.open_fits`).
    plane : int, optional
        FITS cubes only: the plane (0-based) to read as the image, instead of the planes
        as channels.

    Raises
    ------
    InputError
        Missing path, not zarr/TIFF, unsupported dtype or shape, empty image,
        level out of range, undecidable layout.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory; check the path")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(9)
        from .fits import FITS_MAGIC, is_fits_path, open_fits
        if head == FITS_MAGIC or is_fits_path(path):
            img = open_fits(path, hdu=hdu, axes=axes, level=level, plane=plane)
            _set_pixel(img, _fits_pixel(img))
        elif hdu is not None or plane is not None:
            raise InputError(f"{path}: --hdu / --plane apply to FITS files only; drop them")
        elif head[:4] in TIFF_MAGIC:
            img = _open_tiff(path, level, axes)
        elif zipfile.is_zipfile(path):
            img = _open_zarr(path, zarr.storage.ZipStore(path, mode="r"), level, axes, channels, allow_incomplete)
        else:
            raise InputError(f"{path}: not a zarr store or TIFF/FITS file; hirestile reads zarr "
                             "directories (v2/v3, OME-Zarr), TIFF/SVS/NDPI and FITS files "
                             "(`hirestile convert` turns TIFF and FITS into OME-Zarr)")
    elif hdu is not None or plane is not None:
        raise InputError(f"{path}: --hdu / --plane apply to FITS files only; drop them")
    else:
        img = _open_zarr(path, path, level, axes, channels, allow_incomplete)
    _validate(img)
    return img


def _open_zarr(path: str, store: Any, level: int | None, axes: str | None,
               channels: int | None, allow_incomplete: bool = False) -> InputImage:
    try:
        node = zarr.open(store, mode="r")
    except (zarr.errors.BaseZarrError, FileNotFoundError, KeyError) as e:
        raise InputError(f"{path}: not a zarr store or TIFF file ({_first_line(e)}); "
                         "give a zarr array or group, an OME-Zarr image or a TIFF file") from None
    except (ValueError, TypeError, OSError) as e:  # unreadable zarr.json / .zarray
        raise InputError(f"{path}: corrupt zarr metadata ({_first_line(e)}); "
                         "repair or re-create the input") from None
    fmt = f"zarr v{node.metadata.zarr_format}"
    ome_axes = None
    px: dict[str, Any] = {}
    mark = dict(node.attrs).get("hirestile", {}) if isinstance(node, zarr.Group) else {}
    if isinstance(mark, dict) and mark.get("status") == "incomplete" and not allow_incomplete:
        raise InputError(f"{path}: is an incomplete hirestile output or conversion; rerun the command "
                         "that wrote it to finish it first")
    # a missing chunk is damage only once the writer that stores every chunk has finished
    dense = bool(isinstance(mark, dict) and mark.get("all_chunks_stored") and mark.get("status") == "complete")
    levels: tuple[tuple[int, ...], ...] = ()
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ome = attrs.get("ome", attrs)
        if "bioformats2raw.layout" in ome and "0" in node:
            node = node["0"]
            attrs = dict(node.attrs)
            ome = attrs.get("ome", attrs)
        ms = ome.get("multiscales")
        if ms:
            version = ome.get("version") or ms[0].get("version", "?")
            fmt = f"OME-Zarr {version}"
            datasets = ms[0].get("datasets", [])
            paths = [d["path"] for d in datasets]
            lv = 0 if level is None else level
            if not 0 <= lv < len(paths):
                raise InputError(f"{path}: level {lv} does not exist; the image has levels "
                                 f"0..{len(paths) - 1}: pass --level within that range")
            try:
                levels = tuple(tuple(node[p].shape) for p in paths)
                arr = node[paths[lv]]
            except KeyError:
                raise InputError(f"{path}: multiscales metadata names level '{paths[lv]}' but no such "
                                 "array exists; repair or re-create the input") from None
            level = lv
            ome_axes = ms[0].get("axes")
            px = _ome_zarr_pixel(path, ms[0], lv)
        else:
            with warnings.catch_warnings():      # hirestile's own .hirestile state dir is no zarr node
                warnings.simplefilter("ignore")
                arrays = sorted(k for k, v in node.members() if isinstance(v, zarr.Array))
            if len(arrays) != 1:
                listing = ", ".join(arrays[:8]) or "none"
                raise InputError(f"{path}: a zarr group without OME multiscales metadata holding "
                                 f"arrays [{listing}]; give the array's path, e.g. {path}/<name>")
            arr = node[arrays[0]]
    else:
        arr = node
    if level not in (None, 0) and not levels:
        raise InputError(f"{path}: has a single resolution level; drop --level {level}")
    layout = _layout(path, arr, axes, ome_axes, channels)
    img = InputImage(path=path, array=arr, layout=layout, format=fmt, level=level or 0,
                     levels=levels or (tuple(arr.shape),), dense=dense)
    _set_pixel(img, px)
    return img


def _stamp(arr: Any) -> dict[str, Any]:
    """What changes when a local array's stored data changes: a hash of every file under the
    array's directory (path, size, mtime), from stat alone. A chunk rewritten in place
    (zarr ``r+``) changes it, so resume never mixes two versions of an input."""
    store = getattr(getattr(arr, "store_path", None), "store", None)
    if isinstance(store, zarr.storage.ZipStore):
        return _file_stamp(str(store.path))
    base = local_dir(arr)
    if base is None:
        return {}
    h = hashlib.sha256()
    n = 0
    for rel, st in sorted(_walk_files(base)):
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        n += 1
    return {"data": f"{n} files, {h.hexdigest()[:16]}"}


def _walk_files(base: str, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of every regular file below ``base`` (symlinks not followed)."""
    try:
        entries = list(os.scandir(os.path.join(base, rel)))
    except OSError:
        return
    for e in entries:
        r = f"{rel}/{e.name}" if rel else e.name
        if e.is_dir(follow_symlinks=False):
            yield from _walk_files(base, r)
        else:
            try:
                yield r, e.stat()
            except OSError:
                continue


def _file_stamp(path: str) -> dict[str, Any]:
    """Size and modification time of a single-file input (TIFF, zip store)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


_TIFF_LOG_LOCK = threading.Lock()


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    """Keep tifffile's logged warnings off stderr (a bad file must end in one error line)
    and collect them: they often say what is wrong better than the exception."""
    log = logging.getLogger("tifffile")
    seen: list[str] = []
    handler = _ListHandler(seen)
    with _TIFF_LOG_LOCK:
        propagate, log.propagate = log.propagate, False
        log.addHandler(handler)
        try:
            yield seen
        finally:
            log.removeHandler(handler)
            log.propagate = propagate


def _tiff_reason(e: BaseException, logged: list[str]) -> str:
    """The first thing tifffile logged (minus its ``<TiffPages @...>`` prefix), else the exception."""
    if logged:
        msg = logged[0].split("> ", 1)[-1] if logged[0].startswith("<") else logged[0]
        return " ".join(msg.split())[:200]
    return _first_line(e)


def _open_tiff(path: str, level: int | None, axes: str | None) -> InputImage:
    with _tifffile_log() as logged:
        return _open_tiff_quiet(path, level, axes, logged)


def _open_tiff_quiet(path: str, level: int | None, axes: str | None, logged: list[str]) -> InputImage:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many types for bad files
        raise InputError(f"{path}: not a readable TIFF ({_tiff_reason(e, logged)}); check the file "
                         "or convert it with another tool") from None
    try:
        if not tf.series:
            raise ValueError("no image in the file")
        series = tf.series[0]
        lv = 0 if level is None else level
        if not 0 <= lv < len(series.levels):
            raise InputError(f"{path}: level {lv} does not exist; the TIFF has levels "
                             f"0..{len(series.levels) - 1}: pass --level within that range")
        store = series.aszarr(level=lv)
        arr = zarr.open(store, mode="r")
        tiff_axes = series.levels[lv].axes
        fmt = ("OME-TIFF" if tf.is_ome else "SVS" if tf.is_svs else "NDPI" if tf.is_ndpi
               else "BigTIFF" if tf.is_bigtiff else "TIFF")
        levels = tuple(tuple(s.shape) for s in series.levels)
    except InputError:
        tf.close()
        raise
    except Exception as e:
        tf.close()
        raise InputError(f"{path}: cannot read this TIFF ({_tiff_reason(e, logged)}); check the file "
                         "or convert it with another tool") from None
    names = [{"S": "c", "C": "c", "Y": "y", "X": "x"}.get(a, a.lower()) for a in tiff_axes]
    layout = _layout(path, arr, axes, [{"name": n} for n in names], None)
    img = InputImage(path=path, array=arr, layout=layout, format=fmt, level=lv, levels=levels,
                     extra_identity=_file_stamp(path),
                     _closers=[store, tf])
    try:
        px = _tiff_pixel(path, tf, series, lv)
    except Exception as e:  # noqa: BLE001 - odd metadata never stops a read
        px = {"pixel_warning": f"{path}: unreadable pixel-size metadata ({_first_line(e)}); "
                               "pass --pixel-size SIZE, e.g. --pixel-size 0.25um"}
    _set_pixel(img, px)
    return img


def _layout(path: str, arr: Any, axes: str | None, ome_axes: list[dict[str, Any]] | None,
            channels: int | None) -> str:
    """Decide the stored layout (letters C/Y/X/1 per axis) of a stored array."""
    names = None
    if ome_axes:
        names = [_ROLE_OF_TYPE.get(a.get("type", ""), _ROLE_OF_NAME.get(str(a.get("name", "")).lower(), "?"))
                 for a in ome_axes]
    else:
        dims = getattr(arr.metadata, "dimension_names", None) or dict(arr.attrs).get("_ARRAY_DIMENSIONS")
        if dims and all(d is not None for d in dims):
            names = [_ROLE_OF_NAME.get(str(d).lower(), "?") for d in dims]
    return infer_axes(tuple(arr.shape), axes=axes, names=names, channels=channels, where=f"{path}: ")


def infer_axes(shape: tuple[int, ...], *, axes: str | None = None, names: list[str] | None = None,
               channels: int | None = None, where: str = "") -> str:
    """The layout letters (C, Y, X; 1 for a singleton extra axis) of an image of ``shape``.

    The one axis rule for every input (stored arrays, NumPy, Dask): ``axes`` when
    given (HW, CHW, HWC, any order); else axis names from metadata (``names``:
    letters per axis); else 2D is (H, W), and of a 3D shape the end axis of
    ``channels`` (the model's channel count) when exactly one end has that size,
    else the end axis of at most 16 when the other end is larger. ``where``
    starts the error messages (e.g. the path).

    >>> infer_axes((512, 768, 3)), infer_axes((3, 10, 3), channels=3, axes="CHW"), infer_axes((8, 1000, 3), channels=3)
    ('YXC', 'CYX', 'YXC')
    """
    if axes is not None:
        want = axes.upper().replace("H", "Y").replace("W", "X")
        if sorted(want) not in (sorted("YX"), sorted("CYX")) or len(want) != len(shape):
            raise InputError(f"{where}axes {axes} does not fit an image of shape {shape}; "
                             "use HW for 2D, CHW or HWC for 3D (--axes / axes=)")
        return want
    if names is not None and len(names) == len(shape):
        if names.count("Y") == 1 and names.count("X") == 1 and names.count("C") <= 1 and "?" not in names:
            for n, s in zip(names, shape):
                if n == "1" and s != 1:
                    raise InputError(f"{where}has a non-channel extra axis of size {s} (shape {shape}); "
                                     "hirestile segments 2D images: select one plane first")
            return "".join(names)
    if len(shape) == 2:
        return "YX"
    if len(shape) != 3:
        raise InputError(f"{where}image has {len(shape)} dimensions (shape {shape}); hirestile "
                         "takes 2D (H, W) or 3D (C, H, W) / (H, W, C) images")
    first, last = shape[0], shape[2]
    if channels is not None and (first == channels) != (last == channels):
        return "CYX" if first == channels else "YXC"
    if first <= SMALL_AXIS < last:
        return "CYX"
    if last <= SMALL_AXIS < first:
        return "YXC"
    raise InputError(f"{where}cannot tell the channel axis of shape {shape}; pass axes CHW or HWC "
                     "(--axes / axes=)")


def _validate(img: InputImage) -> None:
    dt = img.dtype
    if dt.kind not in "iuf" or dt.itemsize > 8:
        raise InputError(f"{img.path}: dtype {dt} is not supported; hirestile reads integer and "
                         "floating-point images: convert it (e.g. to uint8 or float32)")
    if 0 in tuple(img.array.shape):
        raise InputError(f"{img.path}: the image is empty (shape {tuple(img.array.shape)}); nothing to segment")


# ---- physical pixel size ---------------------------------------------------------------------
PIXEL_HINT = "pass --pixel-size SIZE with a unit, e.g. --pixel-size 0.25um (or 0.4arcsec)"


def pixel_size_fields(path: str, values: Any, unit: str | None, source: str) -> dict[str, Any]:
    """The InputImage pixel fields for ``values`` (rows, cols) in ``unit`` read from ``source``;
    zero, negative, NaN or unit-less values give a one-line warning naming the override."""
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        vals = (float("nan"),) * 2
    shown = " x ".join(f"{v:g}" for v in vals)
    conv = unit_factor(unit)
    why = ("zero, negative or not a number" if not all(np.isfinite(v) and v > 0 for v in vals)
           else "no unit" if not unit else f"unknown unit {unit!r}" if conv is None else None)
    if why:
        return {"pixel_warning": f"{path}: {source} gives pixel size {shown} {unit or ''}".rstrip()
                                 + f" ({why}); ignored: {PIXEL_HINT}"}
    canon, f = conv
    return {"pixel_size": (vals[0] * f, vals[1] * f), "pixel_unit": canon, "pixel_source": source}


def _set_pixel(img: InputImage, fields: dict[str, Any]) -> None:
    for k, v in fields.items():
        setattr(img, k, v)


def parse_pixel_size(text: str, *, default_unit: str = "micrometer") -> tuple[tuple[float, float], str]:
    """``--pixel-size``: ``0.25`` / ``0.25um`` / ``0.25x0.3um`` / ``0.4arcsec`` -> ((rows, cols), unit)
    in micrometer or arcsecond; a number without unit is in ``default_unit``
    (:func:`hirestile.contract.pixel_size_value`)."""
    found = pixel_size_value(text, default_unit=default_unit)
    if found is None:
        raise InputError(f"--pixel-size {text!r} is not a positive size with a length or angle unit; "
                         "write e.g. --pixel-size 0.25um, 0.25x0.3um or 0.4arcsec")
    return found


def set_pixel_size(img: InputImage, text: str) -> None:
    """Override the image's pixel size with ``--pixel-size`` ``text`` (:func:`parse_pixel_size`)."""
    unit = "arcsecond" if img.format.startswith("FITS") else "micrometer"
    img.pixel_size, img.pixel_unit = parse_pixel_size(text, default_unit=unit)
    img.pixel_source, img.pixel_warning = "--pixel-size", None


def _ome_zarr_pixel(path: str, ms: dict[str, Any], level: int) -> dict[str, Any]:
    """OME-Zarr: the level's ``coordinateTransformations`` scale (times the multiscale's own)
    on the y and x axes, in their ``unit``. No unit and a scale of 1 is "not recorded"."""
    axes = ms.get("axes") or []
    names = [str(a.get("name", "")).lower() if isinstance(a, dict) else str(a).lower() for a in axes]
    if "y" not in names or "x" not in names:
        return {}
    iy, ix = names.index("y"), names.index("x")
    scale = np.ones(len(names))
    for trs in (ms.get("coordinateTransformations") or [],
                (ms.get("datasets") or [{}])[level].get("coordinateTransformations") or []):
        for t in trs:
            if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == len(names):
                scale = scale * np.asarray(t["scale"], dtype=float)
    units = {axes[i].get("unit") for i in (iy, ix) if isinstance(axes[i], dict)} - {None, ""}
    vals = (scale[iy], scale[ix])
    if not units:
        if (ms.get("datasets") or [{}])[0].get("coordinateTransformations") is None or \
                _ome_level0_is_pixels(ms, iy, ix):
            return {}                      # the scale counts pixels: no physical size recorded
        return pixel_size_fields(path, vals, None, "OME-Zarr coordinateTransformations")
    unit = units.pop() if len(units) == 1 else f"{axes[iy].get('unit')}/{axes[ix].get('unit')}"
    return pixel_size_fields(path, vals, unit, "OME-Zarr coordinateTransformations")


def _ome_level0_is_pixels(ms: dict[str, Any], iy: int, ix: int) -> bool:
    for t in (ms.get("datasets") or [{}])[0].get("coordinateTransformations") or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            sc = t.get("scale", [])
            return len(sc) > max(iy, ix) and sc[iy] == 1 and sc[ix] == 1
    return True


def _tiff_pixel(path: str, tf: Any, series: Any, level: int) -> dict[str, Any]:
    """OME-TIFF PhysicalSizeY/X, else Aperio ``MPP =``, else XResolution / YResolution with an
    inch or centimetre ResolutionUnit; level > 0 scales level 0's by the shape ratio."""
    import re

    y, x = series.levels[0].axes.find("Y"), series.levels[0].axes.find("X")
    s0, sl = series.levels[0].shape, series.levels[level].shape
    ratio = (s0[y] / sl[y], s0[x] / sl[x])
    found: dict[str, Any] = {}
    if tf.is_ome and tf.ome_metadata:
        import xml.etree.ElementTree as ET

        pix = next((e for e in ET.fromstring(tf.ome_metadata).iter() if e.tag.endswith("}Pixels")), None)
        if pix is not None and (pix.get("PhysicalSizeX") or pix.get("PhysicalSizeY")):
            ux, uy = pix.get("PhysicalSizeXUnit", "µm"), pix.get("PhysicalSizeYUnit", "µm")
            vy, vx = pix.get("PhysicalSizeY", pix.get("PhysicalSizeX")), pix.get("PhysicalSizeX", pix.get("PhysicalSizeY"))
            unit = ux if ux == uy else None
            found = pixel_size_fields(path, (vy, vx), unit, "OME-TIFF PhysicalSizeY/X")
    if not found:
        desc = tf.pages.first.description or ""
        m = re.search(r"\bMPP\s*=\s*([^|\s]+)", desc) if "Aperio" in desc else None
        if m:
            found = pixel_size_fields(path, (m.group(1), m.group(1)), "µm", "Aperio MPP")
    if not found:
        tags = tf.pages.first.tags
        unit = {2: "inch", 3: "centimeter"}.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2)
        if "XResolution" in tags and unit:
            def per_unit(tag: str) -> float:
                v = tags[tag].value if tag in tags else tags["XResolution"].value
                num, den = v if isinstance(v, tuple) else (v, 1)
                return num / den if den else float("nan")
            ry, rx = per_unit("YResolution"), per_unit("XResolution")
            if (ry, rx) != (1.0, 1.0):     # writers' 1 pixel per unit placeholder
                f = 25400.0 if unit == "inch" else 1e4
                with np.errstate(divide="ignore"):
                    found = pixel_size_fields(path, (f / ry if ry else 0.0, f / rx if rx else 0.0),
                                              "µm", f"TIFF resolution tags (pixels per {unit})")
    if found.get("pixel_size"):
        found["pixel_size"] = (found["pixel_size"][0] * ratio[0], found["pixel_size"][1] * ratio[1])
    return found


def _fits_pixel(img: InputImage) -> dict[str, Any]:
    """FITS: the celestial WCS's pixel scale (proj_plane_pixel_scales) in arcseconds."""
    from .fits import celestial_wcs

    header = img.array.header
    w = celestial_wcs(header)
    if w is None:                      # none, or one astropy cannot use (zero CDELT, singular CD)
        celestial = any(str(header.get(f"CTYPE{i}", "")).startswith(("RA", "DEC", "GLON", "GLAT")) for i in (1, 2))
        return pixel_size_fields(img.path, (float("nan"),) * 2, "deg", "FITS WCS") if celestial else {}
    try:
        from astropy.wcs.utils import proj_plane_pixel_scales

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sx, sy = proj_plane_pixel_scales(w)[:2]
        units = {str(u) for u in list(w.wcs.cunit)[:2]} - {""} or {"deg"}
    except Exception:  # noqa: BLE001 - a damaged WCS: no usable scale
        sx = sy = float("nan")
        units = {"deg"}
    return pixel_size_fields(img.path, (sy, sx), units.pop() if len(units) == 1 else None, "FITS WCS")


def level_pixel_sizes(img: InputImage) -> list[tuple[float, float] | None]:
    """Pixel size (rows, cols) of every stored level, from the opened level's and the shapes."""
    if img.pixel_size is None:
        return [None] * len(img.levels)
    y, x = img.layout.find("Y"), img.layout.find("X")
    here = img.levels[img.level]
    return [(img.pixel_size[0] * here[y] / s[y], img.pixel_size[1] * here[x] / s[x])
            if len(s) == len(img.layout) else None for s in img.levels]


def closest_level(img: InputImage, target: tuple[float, float], unit: str,
                  tolerance: float = 0.1) -> tuple[int | None, int, float]:
    """For a model trained at pixel sizes ``target`` = (lo, hi) (lo == hi for one size) in ``unit``:
    (the level whose pixel size lies within ``tolerance`` of that range, else None; the level
    closest to it; its size over the range's nearest end, 1.0 inside). Closest is in log scale,
    ties to the finest level."""
    import math

    lo, hi = min(target), max(target)
    best, best_d, best_f = img.level, math.inf, 1.0
    for lv, px in enumerate(level_pixel_sizes(img)):
        if px is None or img.pixel_unit != unit:
            continue
        size = math.sqrt(px[0] * px[1])
        f = size / lo if size < lo else size / hi if size > hi else 1.0
        if abs(math.log(f)) < best_d - 1e-12:
            best, best_d, best_f = lv, abs(math.log(f)), f
    ok = best_d <= math.log(1 + tolerance)
    return (best if ok else None), best, best_f


__all__ = ["InputImage", "open_image", "local_dir", "infer_axes", "parse_pixel_size", "set_pixel_size",
           "pixel_size_fields", "level_pixel_sizes", "closest_level"]
