"""Objects, inputs and output: the class map, the image and probabilities to measure, the
instances output (an OME-Zarr labels image marked incomplete until :func:`ome.finalize`).

Split from :mod:`hirestile.objects`, which runs the pass.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from typing import Any, Callable

import numpy as np

from . import ome
from .errors import InputError, OutputError
from .resume import STATE_DIR, fsync_path


# **** inputs ****
def open_classmap(src: Any) -> tuple[Any, tuple[str, ...], str]:
    """(array, class names, source description) of a class map: a 2D integer array, a zarr
    array, or the path of a hirestile labels output (its level 0)."""
    import zarr

    classes: tuple[str, ...] = ()
    name = "class map"
    if isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        if not os.path.exists(name):
            raise InputError(f"{name}: no such file or directory; give the labels output of "
                             "`hirestile segment --output labels`")
        try:
            node = zarr.open(name, mode="r")
        except Exception:                                     # noqa: BLE001 - anything not zarr
            raise InputError(f"{name}: not a zarr store; give the labels output of "
                             "`hirestile segment --output labels`") from None
        if isinstance(node, zarr.Group):
            hs = dict(node.attrs).get("hirestile", {})
            man = hs.get("manifest") or {}
            kind = (man.get("job") or {}).get("output")
            if hs.get("writer") == "objects":
                raise InputError(f"{name}: is an instances output, not a class map; give the class map "
                                 f"it was made from ({os.path.join(name, 'classes')} after segment --output instances)")
            if kind not in (None, "labels"):
                raise InputError(f"{name}: is a {kind} output, not a class map; segment with --output labels "
                                 "(or --output instances)")
            if hs.get("status") == "incomplete":
                raise InputError(f"{name}: is incomplete (its segment run did not finish); rerun that command first")
            if "0" not in node:
                raise InputError(f"{name}: a zarr group without array '0'; give a labels output")
            classes = tuple(man.get("classes") or ())
            src = node["0"]
        else:
            src = node
    shape, dtype = tuple(src.shape), np.dtype(src.dtype)
    if len(shape) != 2 or dtype.kind not in "biu":
        raise InputError(f"{name}: has shape {shape} and dtype {dtype}, not an (H, W) integer class map; "
                         "give the labels output of `hirestile segment --output labels`")
    if dtype.kind == "i" and isinstance(src, np.ndarray) and src.size and src.min() < 0:
        raise InputError(f"{name}: holds negative class ids; class ids are >= 0 (0 background)")
    return src, classes, name


def open_image_reader(image: Any, hw: tuple[int, int], what: str) -> tuple[Callable[[tuple[int, int], tuple[int, int]],
                                                                           np.ndarray] | None, int]:
    """A (rows, cols) -> (C, h, w) reader of ``image`` (None, InputImage, path, array) and its channels."""
    if image is None:
        return None, 0
    if isinstance(image, (str, os.PathLike)):
        from .io import open_image
        image = open_image(image)
    if hasattr(image, "read") and hasattr(image, "channels"):
        h, w, c = image.height, image.width, image.channels
        read = image.read
    else:
        arr = image if image.ndim == 3 else image[None]
        c, h, w = arr.shape
        read = lambda r, q: np.asarray(arr[:, r[0]:r[1], q[0]:q[1]])      # noqa: E731
    if (h, w) != tuple(hw):
        raise InputError(f"the {what} is {h} x {w} but the class map is {hw[0]} x {hw[1]}; give the {what} "
                         "the class map was computed from (a model with output stride 1)")
    return read, int(c)


def open_probabilities(path: Any) -> Any:
    import zarr

    try:
        node = zarr.open(os.fspath(path), mode="r")
        arr = node["0"] if isinstance(node, zarr.Group) else node
    except Exception:                                          # noqa: BLE001
        raise InputError(f"{path}: not a zarr probabilities output; give `hirestile segment --output "
                         "probabilities` output") from None
    if arr.ndim != 3 or np.dtype(arr.dtype).kind != "f":
        raise InputError(f"{path}: has shape {arr.shape} and dtype {arr.dtype}, not (K, H, W) probabilities; "
                         "give a --output probabilities output")
    return arr


# **** the output ****
def check_out(out: str, job: dict[str, Any], overwrite: bool) -> None:
    """Refuse an existing ``out`` that is not this job's (unless ``overwrite``); before any work."""
    if not os.path.lexists(out) or overwrite:
        return
    import zarr

    st: dict[str, Any] = {}
    if ome.is_zarr_dir(out):
        try:
            st = ome.status(zarr.open_group(out, mode="r"))
        except Exception:                                      # noqa: BLE001
            st = {}
    if st.get("writer") != "objects" or {k: st.get(k) for k in job} != job:
        raise OutputError(f"{out} already exists; pass --overwrite to replace it or choose another path")


def create_out(out: str, job: dict[str, Any], hw: tuple[int, int], layout: ome.Layout,
               dt: np.dtype) -> tuple[Any, Any, Any]:
    """The instances output (group, array "0" with ``layout``), marked incomplete; an earlier run's
    resume state is dropped (its tiles are about to be rewritten)."""
    import zarr

    shutil.rmtree(os.path.join(out, STATE_DIR), ignore_errors=True)
    try:
        if os.path.lexists(out) and ome.is_zarr_dir(out) and ome.status(zarr.open_group(out, mode="r")).get(
                "writer") == "objects":
            group = zarr.open_group(out, mode="r+")          # this job's earlier output (maybe holding classes/)
            attrs = dict(group.attrs)
            attrs.pop("ome", None)
            attrs["hirestile"] = {"writer": "objects", **job, "status": "incomplete"}
            group.attrs.put(attrs)
        else:
            if os.path.lexists(out):
                ome.remove_output(out)
            group = ome.new_group(out, {"writer": "objects", **job})
        arr = ome.create_array(group, "0", layout, dt, dimension_names=["y", "x"])
    except OSError as e:
        raise OutputError(f"cannot create {out}: {e.strerror or e}; choose a writable output path") from None
    return group, arr, layout


# **** resume state ****
STATE_FILE = "objects.npz"


def source_identity(src: Any) -> str | None:
    """What names an image / probabilities input in the resume key: its path, else its kind."""
    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)):
        return os.path.abspath(os.fspath(src))
    path = getattr(src, "path", None)
    if isinstance(path, str):
        return f"{os.path.abspath(path)}:{getattr(src, 'level', 0)}"
    return f"{type(src).__name__}{tuple(getattr(src, 'shape', ()))}"


def save_state(out: str, key: dict[str, Any], *, fmap: np.ndarray, offsets: np.ndarray, count: int,
               table: dict[str, np.ndarray], dtype: np.dtype) -> None:
    """Pass 1's result (provisional -> final ids, tile offsets, the table), durably: written beside
    the done-log, fsync'd, then renamed into place, so a kill leaves it whole or absent."""
    d = os.path.join(out, STATE_DIR)
    path = os.path.join(d, STATE_FILE)
    cols = {f"table_{i}": v for i, v in enumerate(table.values())}
    meta = json.dumps({"key": key, "columns": list(table), "count": int(count), "dtype": str(dtype)}, sort_keys=True)
    try:
        with open(path + ".tmp", "wb") as f:
            np.savez(f, meta=np.array(meta), fmap=fmap, offsets=offsets, **cols)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        fsync_path(d)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; free space or fix permissions") from None


def load_state(out: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """An unfinished earlier run of the same job at ``out``: its pass-1 result and group; else None."""
    import zarr

    path = os.path.join(out, STATE_DIR, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        group = zarr.open_group(out, mode="r+")
        if ome.status(group).get("status") != "incomplete" or "0" not in group:
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if json.dumps(meta["key"], sort_keys=True) != json.dumps(key, sort_keys=True):
                return None
            table = {c: z[f"table_{i}"] for i, c in enumerate(meta["columns"])}
            fmap, offsets = z["fmap"], z["offsets"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if np.dtype(group["0"].dtype) != np.dtype(meta["dtype"]):
        return None
    return {"fmap": fmap, "offsets": offsets, "count": int(meta["count"]), "table": table,
            "dtype": np.dtype(meta["dtype"]), "group": group}


def prepare_instances_output(out: str, overwrite: bool, connectivity: int) -> str:
    """For ``segment --output instances``: make ``out`` an (incomplete) objects group and return
    where its class map goes (``out/classes``), so the segmentation resumes there."""
    import zarr

    classes = os.path.join(out, "classes")
    job = {"source": os.path.abspath(classes), "connectivity": connectivity}
    if os.path.lexists(out):
        st = {}
        if ome.is_zarr_dir(out):
            try:
                st = ome.status(zarr.open_group(out, mode="r"))
            except Exception:                                  # noqa: BLE001
                st = {}
        if st.get("writer") == "objects" and st.get("source") == job["source"] and not overwrite:
            return classes
        if not overwrite:
            raise OutputError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
        ome.remove_output(out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise OutputError(f"cannot create {out}: directory {parent} does not exist; create it or choose another -o")
    try:
        ome.new_group(out, {"writer": "objects", **job})
    except OSError as e:
        raise OutputError(f"cannot create {out}: {e.strerror or e}; choose a writable output path") from None
    return classes


def find_wcs(labels: Any, image: Any) -> Any:
    """The celestial WCS (astropy) of the class map's grid: the ``fits_wcs`` cards a FITS input left
    on the labels output, else a FITS ``image``'s header; None when there is none."""
    from .fits import celestial_wcs

    cards = None
    if isinstance(labels, (str, os.PathLike)):
        import zarr

        try:
            node = zarr.open(os.fspath(labels), mode="r")
            cards = dict(node.attrs).get("fits_wcs") if isinstance(node, zarr.Group) else None
        except Exception:                                      # noqa: BLE001
            cards = None
    if cards:
        from astropy.io import fits as afits

        return celestial_wcs(afits.Header(cards))
    header = getattr(getattr(image, "array", None), "header", None)
    return celestial_wcs(header) if header is not None else None


__all__ = ["find_wcs", "open_classmap", "open_image_reader", "open_probabilities", "check_out", "create_out",
           "prepare_instances_output",
           "save_state", "load_state", "source_identity"]
