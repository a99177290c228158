"""The ``hirestile`` command line: segment, plan, info, models, convert, example, warmup.

Every user error ends as one line ``hirestile: error: <what> ; <what to do>`` on
stderr and a non-zero exit code (2 input, 3 model, 4 output, 1 other,
130 interrupted), never a traceback.

    hirestile example histology slide.zarr
    hirestile segment slide.zarr --model unet
    hirestile info slide.unet.zarr
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Any, Sequence

from .errors import HirestileError, InputError, ModelError, OutputError

EXIT_INTERRUPTED = 130


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# **** model loading at the boundary ****
#: InputContract fields settable on the command line (contract_opts adds the flags)
CONTRACT_FLAGS = ("pad_to", "pad_mode", "mean", "std", "scale", "stretch", "softening")

def load_model_cli(name: str, a: argparse.Namespace | None = None) -> Any:
    """``hirestile.load_model`` with every failure turned into a one-line :class:`ModelError`;
    the contract flags of ``a`` (``CONTRACT_FLAGS``: --pad-to, --mean, ...) override the model's."""
    from .loading import load_model

    contract = {k: getattr(a, k) for k in CONTRACT_FLAGS if getattr(a, k, None) is not None}
    try:
        return load_model(name, contract=contract or None)
    except HirestileError:
        raise
    except KeyError as e:                     # the registry's unknown-name error
        msg = str(e.args[0]) if e.args else f"unknown model {name!r}; `hirestile models` lists them"
        raise ModelError(msg) from None
    except MemoryError:
        raise ModelError(f"model {name}: too large to load; check the file") from None
    except Exception as e:                    # noqa: BLE001 - malformed files raise anything
        if os.path.exists(name):
            raise ModelError(f"model file {name} is malformed or unsupported ({type(e).__name__}: "
                             f"{_one_line(e)}); export it again (ONNX opset >= 13) or check the path") from None
        raise ModelError(f"cannot load model {name!r} ({type(e).__name__}: {_one_line(e)}); "
                         "`hirestile models` lists the built-in models") from None


def _one_line(e: BaseException | str) -> str:
    s = " ".join(str(e).split())
    return s[:300] + ("..." if len(s) > 300 else "")


def parse_bytes(text: str | None) -> int | None:
    """``--memory``: ``1.5GB``, ``800MiB``, ``2G``, ``512M``, ``1073741824`` -> bytes (K, M, G, T are
    powers of 1024); None stays None."""
    import re

    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"--memory {text!r} is not a memory size; write e.g. 1.5GB, 800MiB or 2G")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


# **** commands ****
def cmd_segment(a: argparse.Namespace) -> int:
    from .io import open_image
    from .scheduler import segment_to_zarr
    from .stream import keep_freed_memory

    memory = parse_bytes(a.memory)
    model = load_model_cli(a.model, a)
    if not (a.scheduler or a.workers):
        keep_freed_memory(reuse_large=not a.stream)  # as segment_to_zarr does, before zarr's and kernels' threads
    img = open_image(a.input, level=a.level, axes=a.axes, channels=model.contract.channels, **_hdu(a))
    _show_pixel_size(img, a)
    img = _choose_level(img, model, a)
    _show_contract(model, a, img.dtype)
    out, fits_out, done = _fits_plan(a, img, model)
    if done:
        return 0
    with img, contextlib.ExitStack() as stack:   # a bad input fails above, before a first-use compile
        warm = None
        if not a.scheduler and img.channels == model.contract.channels:   # not a remote cluster's kernels
            warm = _warmup(model)           # compile / load the kernels outside the timed run
        run_tiles = None
        if a.scheduler or a.workers:             # the same job, its tiles computed on a dask cluster
            from .cluster import cluster_client, cluster_tiles

            client = stack.enter_context(cluster_client(a.scheduler, workers=a.workers))
            run_tiles = cluster_tiles(client, log=_say)
        stats = segment_to_zarr(img, model, out, tile=a.tile, kind=a.output, threads=a.threads,
                                overwrite=a.overwrite, nan_fill=a.nan_fill,
                                pyramid=a.pyramid, allow_missing=a.allow_missing,
                                progress=_progress(a), log=_say, run_tiles=run_tiles, stream=a.stream,
                                memory=memory, mask=a.mask)
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


def pixel_size_arg(text: str) -> str:
    """``--pixel-size``, checked at parse time (the unit of a bare number depends on the input)."""
    from .io import parse_pixel_size

    try:
        parse_pixel_size(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--pixel-size {text!r} ")) from None
    return text


def _show_pixel_size(img: Any, a: argparse.Namespace, *, label: str = "pixel size: ") -> None:
    """The input's pixel size line (stdout; --pixel-size overrides the metadata) and, for unusable
    metadata, a one-line warning naming the override (stderr)."""
    from .io import set_pixel_size

    if getattr(a, "pixel_size", None):
        set_pixel_size(img, a.pixel_size)
    if img.pixel_warning:
        _say(f"hirestile: warning: {img.pixel_warning}")
    if img.pixel_size is None:
        text = "unknown" + ("" if img.pixel_warning else " (not in the metadata; --pixel-size sets it)")
    else:
        (py, px), unit = img.pixel_size, {"micrometer": "µm", "arcsecond": "arcsec"}.get(img.pixel_unit, "")
        text = (f"{px:.6g} {unit}" if py == px else f"{py:.6g} x {px:.6g} {unit} (rows x cols)") + \
            f" per pixel (from {img.pixel_source})"
    print(f"{label}{text}", flush=True)


def _model_pixel_size(a: argparse.Namespace) -> tuple[tuple[float, float], str] | None:
    """((finest, coarsest), unit) the model was trained at: --model-pixel-size, else a built-in's."""
    from .io import parse_pixel_size

    if getattr(a, "model_pixel_size", None):
        (py, px), unit = parse_pixel_size(a.model_pixel_size)
        return (min(py, px), max(py, px)), unit
    if os.path.exists(a.model):
        return None
    from .models.registry import get_spec
    try:
        spec = get_spec(a.model)
    except KeyError:
        return None
    return (spec.pixel_size, "micrometer") if spec.pixel_size else None


def _choose_level(img: Any, model: Any, a: argparse.Namespace) -> Any:
    """The pyramid level within 10% of the model's pixel size (``io.closest_level``), reopened when
    it is not the one asked for; prints the choice, or a note when no level is that close."""
    from .io import closest_level, level_pixel_sizes, open_image

    want = _model_pixel_size(a)
    if want is None or img.pixel_size is None:
        return img
    (lo, hi), unit = want
    sym = {"micrometer": "µm", "arcsecond": "arcsec"}[unit]
    wanted = f"{lo:.4g}" + (f"-{hi:.4g}" if hi != lo else "") + f" {sym}/px"
    if img.pixel_unit != unit:
        _say(f"hirestile: note: the model's pixel size ({wanted}) and the input's ({img.pixel_unit}) are not "
             "comparable; no level chosen")
        return img
    ok, near, f = closest_level(img, (lo, hi), unit)
    sizes = level_pixel_sizes(img)

    def size(lv: int) -> str:
        return f"{(sizes[lv][0] * sizes[lv][1]) ** 0.5:.4g} {sym}/px"

    if ok is None or a.level is not None or ok == img.level:
        if ok is None:
            _say(f"hirestile: note: no level of the input is within 10% of the model's {wanted} (closest: level "
                 f"{near}, {size(near)}, {f:.2f}x): the resolution differs from the model's training; "
                 "resample the input or pass --level")
        elif ok != img.level:
            _say(f"hirestile: note: level {ok} ({size(ok)}) matches the model's {wanted}; reading --level "
                 f"{img.level} ({size(img.level)}) as asked")
        else:
            print(f"level: {img.level} ({size(img.level)}) matches the model's {wanted}", flush=True)
        return img
    new = open_image(a.input, level=ok, axes=a.axes, channels=model.contract.channels, **_hdu(a))
    new.pixel_size, new.pixel_unit = sizes[ok], unit
    new.pixel_source, new.pixel_warning = f"{img.pixel_source}, scaled to level {ok}", None
    print(f"level: {ok} of 0..{len(img.levels) - 1} ({size(ok)}, {new.height} x {new.width} px) for the "
          f"model's {wanted}; level {img.level} is {size(img.level)}", flush=True)
    img.close()
    return new


def _warmup(model: Any) -> Any:
    from .warmup import warmup

    return warmup(model, say=lambda s: _say(f"hirestile: {s}"))


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


def cmd_inspect(a: argparse.Namespace) -> int:
    """What hirestile makes of a model: inputs, outputs, op census, opset, batch handling,
    accepted sizes, tileability, halo, stride, FLOPs per pixel, input contract."""
    from .loading import contract_sources

    model = load_model_cli(a.model, a)
    flags = {k: getattr(a, k) for k in CONTRACT_FLAGS if getattr(a, k, None) is not None}
    print(f"model {model.name}: {model.contract.channels} channel(s) in, classes "
          f"{', '.join(model.classes) or '?'}")
    if str(a.model).lower().endswith(".onnx"):
        from .onnx_import import describe_onnx

        d = describe_onnx(a.model)
        print("inputs:   " + "; ".join(f"{n} {s}" for n, s in d["inputs"]))
        print("outputs:  " + "; ".join(f"{n} {s}" for n, s in d["outputs"]))
        print(f"opset:    {d['opset']} ({d['opset_reading']})")
        print(f"batch:    {d['batch']}")
        print(f"ops:      {d['nodes']} nodes: " + ", ".join(f"{k} {v}" for k, v in d["ops"].items()))
    census: dict[str, int] = {}
    for n in model.graph.nodes:
        census[n.op.kind] = census.get(n.op.kind, 0) + 1
    print(f"graph:    {len(model.graph.nodes)} hirestile ops: " + ", ".join(f"{k} {v}" for k, v in census.items()))
    src = contract_sources(a.model, flags)
    print(f"contract: {model.contract.describe()} (scale: {src['scale']}, normalisation: {src['normalisation']}, "
          f"pad: {src['pad']})")
    rule = model.size_rule
    print(f"sizes:    {model.takes() or 'not found (no square size up to 2048 taken)'}")
    if model.contract.pad_to > 1:                # what the contract's padding makes of the network's own rule
        from .model import describe_sizes, size_rule

        print(f"          (the network alone: {describe_sizes(size_rule(model.graph)) or 'not found'}; the contract "
              f"pads to a multiple of {model.contract.pad_to})")
    size = (1024, 1024) if rule is None else (rule[0].at_least(1024), rule[1].at_least(1024))
    rep = model.analyze(size)
    print(f"at {size[0]}x{size[1]}: " + rep.summary().replace("\n", "\n  "))
    return 0


def cmd_warmup(a: argparse.Namespace) -> int:
    names = a.model
    if not names:
        from .models.registry import list_specs
        names = [s.name for s in list_specs()]
    for name in names:
        w = _warmup(load_model_cli(name))
        print(f"{name}: {w.summary()}" + (f"; cache: {w.cache_dir}" if w.cache_dir else ""), flush=True)
    return 0


# **** objects: instances, measurements, exports (hirestile.objects) ****
EXPORTS = ("table", "geojson", "catalog")


def cmd_segment_objects(a: argparse.Namespace) -> int:
    """``segment``, and for ``--output instances`` the class map into OUT/classes (resumable as any
    segment run), then the object pass into OUT and the exports."""
    if a.output != "instances":
        if any(getattr(a, k) for k in EXPORTS) or a.split:
            raise InputError("--table/--geojson/--catalog/--split need --output instances "
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


def _hdu(a: argparse.Namespace) -> dict[str, Any]:
    """The FITS options given (--hdu, --plane) as open_image's keywords."""
    return {k: getattr(a, k) for k in ("hdu", "plane") if getattr(a, k, None) is not None}


def _objects_check(a: argparse.Namespace) -> None:
    from .objects_export import check_new

    for what in EXPORTS:
        check_new(getattr(a, what), a.overwrite, what)


def _objects_run(a: argparse.Namespace, classmap: str, out: str, image: Any, overwrite: bool) -> None:
    from .objects import DEFAULT_TILE, instances
    from .objects_export import export
    from .objects_split import split_instances

    run, extra = (split_instances, {"radius": a.split_radius}) if a.split else (instances, {})
    res = run(classmap, out, image=image, probabilities=getattr(a, "probabilities", None),
              tile=a.tile or DEFAULT_TILE, connectivity=a.connectivity, dtype=a.label_dtype,
              overwrite=overwrite, pyramid=a.pyramid, outlines=bool(a.geojson),
              radec=True if a.radec else None, progress=_progress(a), **extra)
    _say(f"hirestile: {res.summary()}")
    for line in export(res, table=a.table, geojson=a.geojson, catalog=a.catalog, overwrite=a.overwrite):
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


def cmd_plan(a: argparse.Namespace) -> int:
    from . import ome
    from .examples import parse_size
    from .scheduler import (PROCESS_BASELINE, choose_tile, compute_redundancy, default_memory, expected_memory,
                            make_plan)

    model = load_model_cli(a.model, a)
    h, w = parse_size(a.image, 4096, option="--image")
    rep = model.analyze((h, w))              # its InputError says which sizes the model takes
    k, oh, ow = rep.output_shape
    budget = parse_bytes(a.memory) or default_memory()
    tile = choose_tile(rep, a.tile, stream=a.stream, memory=budget, channels=model.contract.channels)
    layout = ome.choose_layout(a.output, classes=k, out_hw=(oh, ow), tile=tile)
    plan = make_plan(rep, layout, tile, stream=a.stream)
    ty, tx = plan.tile
    mem, working = expected_memory(rep, plan, model.contract.channels)
    print(f"model {model.name}: {model.contract.channels} channel(s) in, {k} classes "
          f"({', '.join(model.classes) or '?'})")
    print(rep.summary())
    print(f"accepted sizes: {model.takes() or 'not found'}")
    if rep.tileable:
        mode = ("streamed: bands down column strips, each intermediate row computed once per strip"
                if plan.stream else "overlap tiles, each with its own halo")
        print(f"tile {ty}x{tx} (output px): {len(plan.tiles)} tiles, {mode}; compute redundancy "
              f"{compute_redundancy(rep, plan):.2f} (computed / needed FLOPs), read redundancy "
              f"{plan.read_redundancy:.2f} (input pixels read per image pixel)")
    if plan.stream:
        _print_stages(rep, ((oh // 2, min(oh // 2 + ty, oh)), (0, tx)))
    print(f"output {a.output}: shape {layout.shape}, chunks {layout.chunks}, shards {layout.shards or 'none'}")
    print(f"expected peak memory: {_mib(working + PROCESS_BASELINE)} = working memory {_mib(working)} "
          f"(executor {_mib(mem)} + queued windows and outputs) + process baseline ~{_mib(PROCESS_BASELINE)} "
          "(Python, NumPy, Numba, compiled kernels; measured)")
    print(f"memory budget: {_mib(budget)}" + (" (--memory)" if a.memory else " (default: a quarter of the RAM, "
                                               "at most 2 GiB; --memory to change)")
          + ("" if working + PROCESS_BASELINE <= budget else "; the smallest tile does not fit it"))
    work = rep.flops_per_pixel * oh * ow * (compute_redundancy(rep, plan) if rep.tileable else 1.0)
    print(f"work: {rep.flops_per_pixel * oh * ow / 1e9:,.1f} GFLOP for the whole image, {work / 1e9:,.1f} computed")
    if a.estimate:
        rate = _measure_gflops(model, rep)
        sec = work / 1e9 / rate
        took = f"{sec:,.1f} s" if sec < 120 else f"{sec / 60:,.1f} min"
        print(f"estimated time: {took} of compute at {rate:,.0f} GFLOP/s "
              f"(measured here on one interior region of {ESTIMATE_SIDE} x {ESTIMATE_SIDE} output px)")
    return 0


ESTIMATE_SIDE = 512


def _measure_gflops(model: Any, rep: Any) -> float:
    """GFLOP/s of this machine's kernels on one interior output region of the planned image (the
    kernels are compiled or loaded first, outside the timing)."""
    import time

    import numpy as np

    from .executor import run_region

    _warmup(model)
    _, oh, ow = rep.output_shape
    y0, x0 = max(0, oh // 2 - ESTIMATE_SIDE // 2), max(0, ow // 2 - ESTIMATE_SIDE // 2)
    region = ((y0, min(oh, y0 + ESTIMATE_SIDE)), (x0, min(ow, x0 + ESTIMATE_SIDE)))
    (a, b), (c, d) = rep.input_window(region, aligned=True)
    (ih, iw) = rep.image_shape
    a, b, c, d = max(a, 0), min(b, ih), max(c, 0), min(d, iw)
    window = np.random.default_rng(0).random((rep.graph.in_channels, b - a, d - c), np.float32)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        run_region(rep, window, (a, c), region)
        best = min(best, time.perf_counter() - t)
    return rep.region_cost(region)[0] / 1e9 / best


def _print_stages(rep: Any, band: Any) -> None:
    """The streamed mapping, one stage per line: what each keeps between bands and computes."""
    from .bands import stream_stages

    stages = stream_stages(rep, band)
    print(f"stages of one band ({band[0][1] - band[0][0]} output rows x {band[1][1] - band[1][0]} cols): "
          "rows held, line buffer kept for the next band, work")
    print(f"  {'stage':<24} {'op':<34} {'C':>4} {'rows':>6} {'line rows':>9} {'line MiB':>9} {'GFLOP':>8}")
    for st in stages:
        print(f"  {st.name[:24]:<24} {st.op[:34]:<34} {st.channels:>4} {st.rows:>6} {st.line_rows:>9} "
              f"{st.line_bytes / 2**20:>9.1f} {st.flops / 1e9:>8.2f}")
    print(f"  {'all':<24} {len(stages):>34} stages {'':>11} {sum(st.line_bytes for st in stages) / 2**20:>9.1f} "
          f"{sum(st.flops for st in stages) / 1e9:>8.2f}")


def cmd_info(a: argparse.Namespace) -> int:
    from .io import open_image
    from .resume import job_status

    img = open_image(a.input, level=a.level, axes=a.axes, allow_incomplete=True, **_hdu(a))
    with img:
        print(f"path:    {img.path}")
        print(f"format:  {img.format}")
        print(f"shape:   {tuple(img.array.shape)} stored, axes {img.axes}: {img.channels} channel(s), "
              f"{img.height} x {img.width} px")
        print(f"dtype:   {img.dtype}")
        print(f"chunks:  {img.chunks or 'n/a'}")
        print(f"shards:  {img.shards or 'none'}")
        lv = "  ".join(f"{i}: {tuple(s)}" for i, s in enumerate(img.levels))
        print(f"levels:  {len(img.levels)} ({lv}){'  [reading ' + str(img.level) + ']' if img.level else ''}")
        _show_pixel_size(img, a, label="pixel:   ")
        missing = img.missing_chunks(limit=None)
        if missing:
            print(f"missing: {len(missing)} chunk(s) not stored (first {missing[0]}); read as fill value "
                  f"{img.array.fill_value}" + ("  DAMAGED: its writer stored every chunk" if img.dense else ""))
        if img.format.startswith("FITS"):
            from .fits import describe
            print("\n".join(describe(img)))
    st = job_status(a.input)
    man = st.get("manifest")
    if st.get("status") == "incomplete" and not man:              # convert / example that did not finish
        writer = f"`hirestile {st['writer']}`" if st.get("writer") else "the command that wrote it"
        print(f"status:  INCOMPLETE: {writer} stopped before the end; run it again with --overwrite")
    if man:
        job = man["job"]
        print(f"hirestile output: {job['output']} of model {job['model']['name']!r} "
              f"(fingerprint {job['model']['fingerprint']}), classes {', '.join(man.get('classes', []))}")
        print(f"  input: {job['input']['path']} ({job['input']['format']}, level {job['input']['level']})")
        if job.get("mask"):
            from .masks import mask_status
            print(f"  mask: {mask_status(a.input, job['mask'])}")
        if st["status"] == "complete":
            print("  status: complete")
        else:
            print(f"  status: INCOMPLETE: {st['blocks_done']} of {st['blocks_total']} blocks written; "
                  "rerun the segment command to finish")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    try:
        from .models.registry import list_specs
    except ImportError:
        print("no built-in models in this installation")
        return 0
    for s in list_specs():
        c = s.contract
        have = "" if s.weights_path.exists() else "  [weights file missing]"
        print(f"{s.name}{have}")
        print(f"  {s.description}")
        if s.aliases:
            print(f"  aliases:  {', '.join(s.aliases)}")
        if s.inputs:
            print(f"  input:    {s.inputs}")
        print(f"  contract: {c.describe()}")
        print(f"  classes:  {', '.join(s.classes)}")
        print(f"  card:     {s.card_path}")
    print("or pass a model file: --model net.onnx | --model weights.safetensors")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from . import ome
    from .io import open_image

    img = open_image(a.input, level=a.level, axes=a.axes, **_hdu(a))
    with img:
        _check_new_output(a.out, a.overwrite, inputs=(a.input,))
        shape = img.shape if "C" in img.layout else (img.height, img.width)
        read = img.read if "C" in img.layout else (lambda r, c: img.read(r, c)[0])
        ome.write_image(a.out, read=read, shape=shape, dtype=img.dtype, name=os.path.basename(a.input),
                        pyramid=a.pyramid, progress=_progress(a), desc="convert")
        if img.format.startswith("FITS"):                   # the header, and the WCS as cards
            from .fits import annotate_zarr
            annotate_zarr(a.out, img.array.header, hdu=img.array.hdu, full_header=True)
    print(f"wrote {a.out}: OME-Zarr {ome.OME_VERSION}, shape {shape}, {img.dtype}")
    return 0


def cmd_example(a: argparse.Namespace) -> int:
    from .examples import EXAMPLES, write_example

    if a.name not in EXAMPLES:
        raise InputError(f"unknown example {a.name!r}; choose one of: {', '.join(EXAMPLES)}")
    _check_new_output(a.out, a.overwrite)
    shape = write_example(a.name, a.out, size=a.size, progress=_progress(a))
    model = "unet" if a.name == "histology" else "unet-astro"
    print(f"wrote {a.out}: {EXAMPLES[a.name].description}, shape {shape}")
    print(f"next: hirestile segment {a.out} --model {model}")
    return 0


def _progress(a: argparse.Namespace) -> bool | None:
    """Every command's progress bar: off with --quiet, else (None) only when stderr is a terminal."""
    return False if a.quiet else None


def _check_new_output(path: str, overwrite: bool, inputs: Sequence[str] = ()) -> None:
    from .resume import make_room

    if any(os.path.abspath(path) == os.path.abspath(i) for i in inputs):
        raise OutputError(f"output {path} is the input; choose another output path")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    make_room(path, choose="another path")


# **** argument parsing ****
def build_parser() -> argparse.ArgumentParser:
    from .outputs import OUTPUT_KINDS

    p = argparse.ArgumentParser(prog="hirestile", description="Exact tiled inference of segmentation networks "
                                "on images too large for memory.")
    p.add_argument("--version", action="version", version=f"hirestile {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def contract_opts(q: argparse.ArgumentParser) -> None:
        g = q.add_argument_group("input contract (override the model's, or its <model>.json sidecar)")
        g.add_argument("--pad-to", type=int, default=None, metavar="M",
                       help="the network takes multiples of M: pad (reflect) and crop back")
        g.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean subtracted after scaling")
        g.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std divided by after that")
        g.add_argument("--pad-mode", choices=["reflect", "replicate", "zeros"], default=None,
                       help="how --pad-to pads (default reflect)")
        g.add_argument("--scale", choices=["dtype", "none"], default=None,
                       help="dtype: integers / dtype max (uint8 -> /255); none: raw values")
        g.add_argument("--stretch", choices=["linear", "asinh"], default=None,
                       help="asinh: arcsinh(x / softening) after scaling, before mean/std (astronomy)")
        g.add_argument("--softening", type=float, default=None, help="the asinh softening, in scaled units")

    def object_opts(q: argparse.ArgumentParser) -> None:
        g = q.add_argument_group("objects (--output instances, or the objects command)")
        g.add_argument("--connectivity", type=int, choices=[1, 2], default=1,
                       help="1: 4-connected (default), 2: 8-connected (corners join), as skimage.measure.label")
        g.add_argument("--label-dtype", choices=["uint8", "uint16", "uint32", "uint64"], default=None,
                       help="instance label dtype (default uint32, uint64 past 2**32 - 1 objects)")
        g.add_argument("--table", default=None, metavar="PATH", help="per-object measurements: .parquet or .csv")
        g.add_argument("--geojson", default=None, metavar="PATH",
                       help="one QuPath detection per object with its exact pixel-edge outline")
        g.add_argument("--catalog", default=None, metavar="PATH", help="FITS source catalogue (astropy, with units)")
        g.add_argument("--split", action="store_true", help="split touching objects (distance maxima as "
                       "markers, nearest-marker assignment: the same result for any tiling)")
        g.add_argument("--split-radius", type=int, default=8, metavar="R",
                       help="--split: about the radius of one object in pixels (default 8)")
        g.add_argument("--radec", action="store_true", help="require RA/Dec columns (from a FITS input's WCS; "
                       "added anyway when there is one)")

    def image_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--level", type=int, default=None, help="resolution level of a multiscale input (default 0)")
        q.add_argument("--axes", choices=["HW", "CHW", "HWC"], type=str.upper, default=None,
                       help="layout of the stored axes when it cannot be inferred")
        q.add_argument("--hdu", default=None, metavar="N|NAME",
                       help="FITS: the HDU to read, index or EXTNAME (default the first image HDU with data)")
        q.add_argument("--plane", type=int, default=None, metavar="P",
                       help="FITS cube: segment plane P (0-based) instead of the planes as channels")

    s = sub.add_parser("segment", help="segment an image (zarr, OME-Zarr, TIFF, FITS) into an OME-Zarr or FITS output")
    s.add_argument("input", metavar="IN")
    s.add_argument("--model", "-m", required=True, help="built-in model name or a .onnx / .safetensors file")
    s.add_argument("-o", metavar="OUT", default=None, help="output path (default IN.MODEL.zarr beside IN); "
                   "OUT.fits writes FITS")
    s.add_argument("--format", choices=["zarr", "fits"], default=None,
                   help="output format (default: fits when OUT ends in .fits/.fit/.fts, else zarr)")
    s.add_argument("--tile", type=int, default=None,
                   help="output tile side in pixels (band height and strip width when streamed; default: the "
                        "largest that fits --memory)")
    s.add_argument("--stream", action="store_true",
                   help="bands down column strips, each intermediate row computed once per strip, instead of "
                        "tiles with their own halos (same bits; not yet faster here, see benchmarks/README.md)")
    s.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory budget, e.g. 1.5GB or 800MiB (default: a quarter of the RAM, at most 2 GiB); "
                        "the tile is chosen to fit it")
    s.add_argument("--output", choices=list(OUTPUT_KINDS) + ["instances"], default="probabilities",
                   help="probabilities (float16, default), logits (float32), labels (uint8; uint16 past 256 "
                   "classes) or instances "
                   "(labels, then one uint32 id per object: OUT, its class map in OUT/classes)")
    s.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming it")
    image_opts(s)
    s.add_argument("--nan-fill", type=float, default=None, metavar="V",
                   help="value standing in for NaN/Inf input pixels")
    s.add_argument("--pyramid", action="store_true", help="add downsampled levels to the output")
    s.add_argument("--allow-missing", action="store_true",
                   help="read missing input chunks as fill value even where the writer stored every chunk")
    s.add_argument("--pixel-size", type=pixel_size_arg, default=None, metavar="SIZE",
                   help="the input's pixel size, overriding its metadata: e.g. 0.25um, 0.25x0.3um, 0.4arcsec")
    s.add_argument("--model-pixel-size", type=pixel_size_arg, default=None, metavar="SIZE",
                   help="the pixel size the model was trained at (built-ins declare theirs): segment reads the "
                        "pyramid level within 10%% of it")
    s.add_argument("--mask", default=None, metavar="auto|PATH",
                   help="compute only tiles touching the foreground: auto (tissue vs glass for RGB, else the "
                        "valid-data footprint) or a mask image (zarr / TIFF / PNG, any resolution); the rest "
                        "is fill 0, the mask is written as OUT/labels/mask")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="compute the tiles on a running dask cluster, e.g. tcp://host:8786")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="compute the tiles on a local dask cluster of N worker processes")
    contract_opts(s)
    object_opts(s)
    s.set_defaults(func=cmd_segment_objects)

    s = sub.add_parser("objects", help="instance labels, measurements and exports from a labels output")
    s.add_argument("input", metavar="CLASSMAP", help="a `segment --output labels` output")
    s.add_argument("-o", metavar="OUT", default=None, help="instance labels output (OME-Zarr labels image)")
    s.add_argument("--image", default=None, metavar="IMG", help="the segmented image: intensity measurements")
    s.add_argument("--probabilities", default=None, metavar="P",
                   help="a `segment --output probabilities` output of the same model: mean class probability")
    image_opts(s)
    s.add_argument("--tile", type=int, default=None, help="tile side of the object pass (default 1024)")
    s.add_argument("--pyramid", action="store_true", help="add downsampled levels to the output")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    object_opts(s)
    s.set_defaults(func=cmd_objects)

    s = sub.add_parser("plan", help="show how a model would be tiled: halo, stride, FLOPs, memory")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--tile", type=int, default=None)
    s.add_argument("--stream", action="store_true", help="plan streamed strips instead of overlap tiles")
    s.add_argument("--memory", default=None, metavar="SIZE", help="memory budget (see segment)")
    s.add_argument("--estimate", action="store_true",
                   help="measure this machine's GFLOP/s on one interior region and estimate the run time")
    s.add_argument("--image", default=None, metavar="HxW", help="image size (default 4096x4096)")
    s.add_argument("--output", choices=list(OUTPUT_KINDS), default="probabilities")
    contract_opts(s)
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("inspect", help="describe a model: inputs, outputs, ops, opset, batch, accepted sizes, "
                       "tileability, halo, stride, FLOPs")
    s.add_argument("model", metavar="MODEL")
    contract_opts(s)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("info", help="describe an image or a hirestile output")
    s.add_argument("input", metavar="IN")
    image_opts(s)
    s.add_argument("--pixel-size", type=pixel_size_arg, default=None, metavar="SIZE",
                   help="show the image with this pixel size")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("models", help="list the built-in models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("warmup", help="compile the kernels ahead of time (else the first segment run does, "
                       "about a minute)")
    s.add_argument("--model", "-m", nargs="+", default=None, metavar="NAME",
                   help="built-in model names or model files (default: every built-in model)")
    s.set_defaults(func=cmd_warmup)

    s = sub.add_parser("convert", help="convert TIFF/SVS/NDPI/OME-TIFF/FITS (or zarr) to OME-Zarr, streaming")
    s.add_argument("input", metavar="IN")
    s.add_argument("out", metavar="OUT")
    image_opts(s)
    s.add_argument("--pyramid", action="store_true", help="add downsampled levels")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("example", help="write a bundled example image (histology, astronomy)")
    s.add_argument("name", metavar="NAME", help="histology | astronomy")
    s.add_argument("out", metavar="OUT")
    s.add_argument("--size", default=None, metavar="N|HxW", help="image size (default 1024)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_example)
    return p


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except ImportError:
        return "?"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hirestile`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)   # zarr's cancelled reads after an error
    if threading_main():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args) or 0)
    except HirestileError as e:
        _say(f"hirestile: error: {_one_line(e)}")
        return e.exit_code
    except KeyboardInterrupt:
        _say("hirestile: interrupted; finished tiles are saved: run the same command again to resume")
        return EXIT_INTERRUPTED
    except MemoryError:
        _say("hirestile: error: out of memory; use a smaller --tile")
        return 1
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"hirestile: error: {e.strerror or _one_line(e)}{where}; check the path, permissions and free space")
        return 1
    except ValueError as e:
        _say(f"hirestile: error: {_one_line(e)}")
        return 1
    except RuntimeError as e:  # e.g. a codec failing on a damaged chunk outside a guarded read
        _say(f"hirestile: error: {_one_line(e)}; the input may be damaged")
        return 1


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
