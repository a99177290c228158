"""The commands that run a job: ``segment`` (zarr, TIFF or FITS in; OME-Zarr or FITS out) and
``objects`` (instances, measurements and exports from a class map).

Front end (docs/architecture.md, layer 8); the parser and the shared helpers are in
:mod:`hirestile.cli`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from .cli import CONTRACT_FLAGS, _hdu, _progress, _say, _show_pixel_size, _warmup, load_model_cli, parse_bytes
from .errors import InputError, OutputError


def cmd_segment(a: argparse.Namespace) -> int:
    from .io import open_image
    from .scheduler import segment_to_zarr
    from .stream import keep_freed_memory

    memory = parse_bytes(a.memory)
    model = load_model_cli(a.model, a)
    if not (a.scheduler or a.workers):
        keep_freed_memory()  # as segment_to_zarr does, before zarr's and kernels' threads
    img = open_image(a.input, level=a.level, axes=a.axes, channels=model.contract.channels, **_hdu(a))
    _show_pixel_size(img, a)
    img, run = _choose_level(img, model, a)       # run: resampled to the model's pixel size if need be
    _show_contract(model, a, img.dtype)
    model = run
    out, fits_out, done = _fits_plan(a, img, model)
    if done:
        return 0
    with img, contextlib.ExitStack() as stack:   # a bad input fails above, before a first-use compile
        warm = None
        if not a.scheduler and img.channels == model.contract.channels:   # not a remote cluster's kernels
            warm = _warmup(model, a.precision)   # compile / load the kernels outside the timed run
        run_tiles = None
        if a.scheduler or a.workers:             # the same job, its tiles computed on a dask cluster
            from .cluster import cluster_client, cluster_tiles

            client = stack.enter_context(cluster_client(a.scheduler, workers=a.workers))
            run_tiles = cluster_tiles(client, log=_say)
        stats = segment_to_zarr(img, model, out, tile=a.tile, kind=a.output, threads=a.threads,
                                overwrite=a.overwrite, nan_fill=a.nan_fill,
                                pyramid=a.pyramid, allow_missing=a.allow_missing,
                                progress=_progress(a), log=_say, run_tiles=run_tiles, stream=a.stream,
                                memory=memory, mask=a.mask, precision=a.precision)
    _say(stats.summary())
    if warm is not None:
        _say(warm.summary())
    _fits_finish(a, img, stats.output, fits_out)
    return 0


def _fits_plan(a: argparse.Namespace, img: Any, model: Any) -> tuple[str | None, Any, bool]:
    """(zarr output path, (FITS target, job key) or None, whether that FITS output is already complete)
    for ``segment``: a FITS output is computed into a hidden zarr beside it (hirestile.fits)."""
    from . import fits

    if img.format.startswith("FITS") and _hdu(a) and (a.scheduler or a.workers):
        img.close()
        raise InputError("--hdu / --plane with --scheduler/--workers are not supported yet (workers open the "
                         "default HDU); run locally or write that HDU or plane to its own file")
    fmt = a.format or ("fits" if a.o and fits.is_fits_path(a.o) else "zarr")
    if fmt == "zarr":
        return a.o or (fits.default_output(a.input, model.name) if img.format.startswith("FITS") else None), None, False
    if a.pyramid:
        img.close()
        raise OutputError("--pyramid applies to zarr outputs; drop it for a FITS output")
    target = a.o or fits.default_output(a.input, model.name, "fits")
    key = fits.job_key(model, img, a.output, a.nan_fill)
    try:
        done = fits.finished(target, key, a.overwrite)
    except BaseException:
        img.close()
        raise
    if done:
        img.close()
        _say(f"{target} is already complete; nothing to do")
    return fits.staging_path(target), (target, key), done


def _fits_finish(a: argparse.Namespace, img: Any, zarr_out: str, fits_out: Any) -> None:
    """Stream the finished zarr into the FITS output, or keep a FITS input's WCS in the zarr output."""
    if fits_out is None and not img.format.startswith("FITS"):
        return
    from . import fits

    header = img.array.header if img.format.startswith("FITS") else None
    if fits_out is None:
        fits.annotate_zarr(zarr_out, header, in_hw=(img.height, img.width), hdu=img.array.hdu)
        return
    target, key = fits_out
    fits.zarr_to_fits(zarr_out, target, header=header, in_hw=(img.height, img.width), key=key,
                      source=a.input, progress=_progress(a))
    _say(f"wrote {target}: FITS" + (" with the input's WCS" if header is not None and fits.celestial_wcs(header)
                                    is not None else ""))


def _model_pixel_size(a: argparse.Namespace) -> tuple[tuple[float, float], str] | None:
    """((finest, coarsest), unit) the model was trained at: --model-pixel-size, else the model
    file's sidecar or a built-in's (``loading.model_pixel_size``)."""
    from .io import parse_pixel_size
    from .loading import model_pixel_size

    if getattr(a, "model_pixel_size", None):
        (py, px), unit = parse_pixel_size(a.model_pixel_size)
        return (min(py, px), max(py, px)), unit
    return model_pixel_size(a.model)


def _wanted(a: argparse.Namespace, img: Any) -> tuple[float, float, str, str] | None:
    """(lo, hi, unit, words) of the model's pixel size when it and the input's are known and
    comparable, else None (a note says when they are not comparable)."""
    want = _model_pixel_size(a)
    if want is None or img.pixel_size is None:
        return None
    (lo, hi), unit = want
    wanted = f"{lo:.4g}" + (f"-{hi:.4g}" if hi != lo else "") + f" {_SYM[unit]}/px"
    if img.pixel_unit != unit:
        _say(f"hirestile: note: the model's pixel size ({wanted}) and the input's ({img.pixel_unit}) are not "
             "comparable; no level chosen")
        return None
    return lo, hi, unit, wanted


_SYM = {"micrometer": "µm", "arcsecond": "arcsec"}


def _reopen(img: Any, level: int, model: Any, a: argparse.Namespace, size: tuple[float, float]) -> Any:
    """``img``'s level ``level`` with its pixel size scaled from ``img``'s; ``img`` is closed."""
    from .io import open_image

    if level == img.level:
        return img
    new = open_image(a.input, level=level, axes=a.axes, channels=model.contract.channels, **_hdu(a))
    new.pixel_size, new.pixel_unit = size, img.pixel_unit
    new.pixel_source, new.pixel_warning = f"{img.pixel_source}, scaled to level {level}", None
    img.close()
    return new


def _geo(px: tuple[float, float]) -> float:
    return (px[0] * px[1]) ** 0.5


def _choose_level(img: Any, model: Any, a: argparse.Namespace) -> tuple[Any, Any]:
    """(image, model) to run: the pyramid level within 10% of the model's pixel size
    (``io.closest_level``), reopened when it is not the one asked for, or where no level is that
    close and no --level was given, a level resampled inside the model (:func:`_resample`).
    Prints the choice."""
    from .io import closest_level, level_pixel_sizes

    want = _wanted(a, img)
    if want is None:
        return img, model
    lo, hi, unit, wanted = want
    ok, sizes = closest_level(img, (lo, hi), unit)[0], level_pixel_sizes(img)

    def size(lv: int) -> str:
        return f"{_geo(sizes[lv]):.4g} {_SYM[unit]}/px"

    if ok is None and a.level is None:
        return _resample(img, model, a, want, sizes)
    if ok is None or a.level is not None or ok == img.level:
        if ok is None and a.level is not None:
            _say(f"hirestile: note: level {img.level} ({size(img.level)}) is not within 10% of the model's "
                 f"{wanted}; reading it as asked (leave out --level to resample to the model's pixel size)")
        elif ok is not None and ok != img.level:
            _say(f"hirestile: note: level {ok} ({size(ok)}) matches the model's {wanted}; reading --level "
                 f"{img.level} ({size(img.level)}) as asked")
        elif ok is not None:
            print(f"level: {img.level} ({size(img.level)}) matches the model's {wanted}", flush=True)
        return img, model
    n = len(img.levels)
    new = _reopen(img, ok, model, a, sizes[ok])
    print(f"level: {ok} of 0..{n - 1} ({size(ok)}, {new.height} x {new.width} px) for the "
          f"model's {wanted}; level {img.level} is {size(img.level)}", flush=True)
    return new, model


def _resample(img: Any, model: Any, a: argparse.Namespace, want: tuple[float, float, str, str],
              sizes: list[Any]) -> tuple[Any, Any]:
    """(image, model) where no level is within 10% of the model's pixel size: the level to resample
    from (``resample.source_level``) and the model with the resampling as its first layers
    (``resample.resampled``: no resampled copy of the input is written); prints the level and factor."""
    from .resample import plan_resampling, resampled, source_level

    lo, hi, unit, wanted = want
    n, lv = len(img.levels), source_level(sizes, (lo, hi))
    img = _reopen(img, lv, model, a, sizes[lv])
    plan = plan_resampling(img.pixel_size, (lo, hi))
    (oh, ow), (fy, fx) = plan.out_hw((img.height, img.width)), plan.factor()
    factor = f"{fy:.4g}" if fy == fx else f"{fy:.4g} x {fx:.4g}"
    print(f"level: {lv} of 0..{n - 1} ({_geo(img.pixel_size):.4g} {_SYM[unit]}/px, {img.height} x {img.width} px) "
          f"resampled by factor {factor} ({plan.describe()}) to {_geo(plan.pixel_size(img.pixel_size)):.4g} "
          f"{_SYM[unit]}/px, {oh} x {ow} px, for the model's {wanted}: no level is within 10%", flush=True)
    return img, resampled(model, plan)


def _show_contract(model: Any, a: argparse.Namespace, dtype: Any) -> None:
    """Print the input contract segment applies and where each part comes from; warn (one line)
    when integer pixels meet a model that declares no scaling."""
    import numpy as np

    from .loading import contract_sources

    flags = {k: getattr(a, k) for k in CONTRACT_FLAGS if getattr(a, k, None) is not None}
    src = contract_sources(a.model, flags)
    print(f"input contract: {model.contract.describe()} (scale: {src['scale']}, normalisation: "
          f"{src['normalisation']}, pad: {src['pad']})", flush=True)      # stdout: stderr is for problems
    if model.contract.scale == "none" and np.issubdtype(np.dtype(dtype), np.integer) and src["scale"] == "default":
        top = np.iinfo(np.dtype(dtype)).max
        _say(f"hirestile: warning: raw 0..{top} values go into the network; pass --scale dtype or write a sidecar "
             f"if it was trained on [0, 1]")


EXPORTS = ("table", "geojson", "catalog")


def cmd_segment_objects(a: argparse.Namespace) -> int:
    """``segment``, and for ``--output instances`` the class map into OUT/classes (resumable as any
    segment run), then the object pass into OUT and the exports."""
    if a.output != "instances":
        if any(getattr(a, k) for k in EXPORTS) or a.split or a.simplify is not None:
            raise InputError("--table/--geojson/--simplify/--catalog/--split need --output instances "
                             "(or run `hirestile objects` on a labels output)")
        return cmd_segment(a)
    from .objects_io import open_classmap, prepare_instances_output
    from .resume import default_output

    if getattr(a, "format", None) == "fits" or (a.o or "").lower().endswith((".fits", ".fit", ".fts")):
        raise OutputError("--output instances writes OME-Zarr; give an OUT that is not .fits")
    _objects_check(a)
    out = a.o or default_output(a.input, load_model_cli(a.model, a).name)
    a.o, a.output = prepare_instances_output(out, a.overwrite, a.connectivity), "labels"
    rc = cmd_segment(a)
    if rc:
        return rc
    from .io import open_image

    hw = tuple(open_classmap(a.o)[0].shape)
    img = open_image(a.input, level=a.level, axes=a.axes, **_hdu(a))
    with img:
        same = (img.height, img.width) == hw
        if not same:
            _say(f"hirestile: note: the class map is {hw[0]} x {hw[1]} but the input {img.height} x {img.width}; "
                 "no intensity measurements")
        _objects_run(a, a.o, out, img if same else None, overwrite=True)   # OUT checked by prepare_instances_output
    return 0


def _objects_check(a: argparse.Namespace) -> None:
    from .objects_export import check_new, check_simplify

    for what in EXPORTS:
        check_new(getattr(a, what), a.overwrite, what)
    if a.simplify is not None and not a.geojson:
        raise InputError("--simplify applies to the --geojson outlines; add --geojson PATH or drop --simplify")
    check_simplify(a.simplify)


def _objects_run(a: argparse.Namespace, classmap: str, out: str, image: Any, overwrite: bool) -> None:
    from .objects import DEFAULT_TILE, instances
    from .objects_export import export
    from .objects_split import split_instances

    run, extra = (split_instances, {"radius": a.split_radius}) if a.split else (instances, {})
    res = run(classmap, out, image=image, probabilities=getattr(a, "probabilities", None),
              tile=a.tile or DEFAULT_TILE, connectivity=a.connectivity, dtype=a.label_dtype,
              overwrite=overwrite, pyramid=a.pyramid, outlines=bool(a.geojson),
              radec=True if a.radec else None, progress=_progress(a), log=_say, **extra)
    _say(f"hirestile: {res.summary()}")
    for line in export(res, table=a.table, geojson=a.geojson, catalog=a.catalog, overwrite=a.overwrite,
                       simplify=a.simplify):
        _say(f"wrote {line}")


def cmd_objects(a: argparse.Namespace) -> int:
    from .io import open_image
    from .objects_io import open_classmap

    open_classmap(a.input)                  # a bad class map fails before anything is written
    _objects_check(a)
    if a.o is None:
        raise OutputError("give the instances output path: -o OUT.zarr")
    if os.path.abspath(a.o) == os.path.abspath(a.input):
        raise OutputError(f"output {a.o} is the input; choose another -o")
    img = open_image(a.image, level=a.level, axes=a.axes, **_hdu(a)) if a.image else None
    with contextlib.ExitStack() as stack:
        if img is not None:
            stack.enter_context(img)
        _objects_run(a, a.input, a.o, img, overwrite=a.overwrite)
    return 0
