"""The commands that describe and prepare: ``plan``, ``info``, ``inspect``, ``models``,
``warmup``, ``convert`` and ``example``.

Front end (docs/architecture.md, layer 8); the parser and the shared helpers are in
:mod:`hirestile.cli`.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from .cli import (CONTRACT_FLAGS, _check_new_output, _hdu, _mib, _progress, _show_pixel_size, _warmup,
                  load_model_cli, parse_bytes)
from .errors import InputError


def cmd_plan(a: argparse.Namespace) -> int:
    import numpy as np

    from . import ome
    from .examples import parse_size
    from .executor import precision_label
    from .scheduler import (PROCESS_BASELINE, choose_mode, compute_redundancy, default_memory, expected_memory,
                            make_plan, restart_memory, usable)

    model = load_model_cli(a.model, a)
    h, w = parse_size(a.image, 4096, option="--image")
    rep = model.analyze((h, w), a.precision)   # its InputError says which sizes the model takes
    k, oh, ow = rep.output_shape
    budget = parse_bytes(a.memory) or default_memory()
    itemsize = np.dtype(a.dtype).itemsize
    mode = choose_mode(rep, a.tile, a.stream, kind=a.output, memory=budget, channels=model.contract.channels,
                       itemsize=itemsize)
    layout = ome.choose_layout(a.output, classes=k, out_hw=(oh, ow), tile=mode.tile)
    plan = make_plan(rep, layout, mode.tile, stream=mode.stream)
    ty, tx = plan.tile
    mem, working = expected_memory(rep, plan, model.contract.channels, itemsize)
    print(f"model {model.name}: {model.contract.channels} channel(s) in, {k} classes "
          f"({', '.join(model.classes) or '?'})")
    print(rep.summary())
    print(f"precision: {precision_label(rep.precision)}")
    print(f"accepted sizes: {model.takes() or 'not found'}")
    if rep.tileable:
        how = ("streamed: bands down column strips, each intermediate row computed once per strip"
               if plan.stream else "overlap tiles, each with its own halo")
        print(f"tile {ty}x{tx} (output px): {len(plan.tiles)} tiles, {how}; compute redundancy "
              f"{compute_redundancy(rep, plan):.2f} (computed / needed FLOPs), read redundancy "
              f"{plan.read_redundancy:.2f} (input pixels read per image pixel)")
        if mode.chosen:
            print(mode.describe())
    if plan.stream:
        _print_stages(rep, ((oh // 2, min(oh // 2 + ty, oh)), (0, tx)))
    print(f"output {a.output}: shape {layout.shape}, chunks {layout.chunks}, shards {layout.shards or 'none'}")
    print(f"expected peak memory: {_mib(working + PROCESS_BASELINE)} = working memory {_mib(working)} "
          f"(executor {_mib(mem)} + queued windows ({a.dtype} as stored) and outputs) + process baseline ~{_mib(PROCESS_BASELINE)} "
          "(Python, NumPy, Numba, compiled kernels; measured)")
    print(f"memory budget: {_mib(budget)}" + (" (--memory)" if a.memory else " (default: a quarter of the RAM, "
                                               "at most 2 GiB; --memory to change)")
          + f", of which plans fill up to {_mib(usable(budget))}"
          + ("" if working + PROCESS_BASELINE <= usable(budget) else "; the smallest tile does not fit it"))
    if plan.stream:
        again, fits = restart_memory(rep, plan, model.contract.channels, budget, itemsize)
        print(f"resumed run: a strip restarting mid-image holds up to {_mib(again)}"
              + (" (fits)" if fits else "; over the budget, so a resumed run restarts such strips from their top"))
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

    from .executor import image_window, interior_region, run_region

    _warmup(model, rep.precision)
    region = interior_region(rep, ESTIMATE_SIDE)
    (a, b), (c, d) = image_window(rep, region)
    window = np.random.default_rng(0).random((rep.graph.in_channels, b - a, d - c), np.float32)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        run_region(rep, window, (a, c), region)
        best = min(best, time.perf_counter() - t)
    return rep.region_flops(region) / 1e9 / best


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


def cmd_warmup(a: argparse.Namespace) -> int:
    names = a.model
    if not names:
        from .models.registry import list_specs
        names = [s.name for s in list_specs()]
    for name in names:
        model = load_model_cli(name)
        for precision in dict.fromkeys(a.precision):
            w = _warmup(model, precision)
            label = f"{name} ({precision})" if a.precision != ["fp32"] else name
            print(f"{label}: {w.summary()}" + (f"; cache: {w.cache_dir}" if w.cache_dir else ""), flush=True)
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
