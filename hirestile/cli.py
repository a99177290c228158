"""The ``hirestile`` command line: the parser, ``main`` and the helpers every command shares.

The commands live beside it: :mod:`hirestile.cli_segment` (segment, objects) and
:mod:`hirestile.cli_commands` (plan, info, inspect, models, warmup, convert, example).

Every user error ends as one line ``hirestile: error: <what> ; <what to do>`` on
stderr and a non-zero exit code (2 input, 3 model, 4 output, 1 other,
130 interrupted), never a traceback.

    hirestile example histology slide.zarr
    hirestile segment slide.zarr --model unet
    hirestile info slide.unet.zarr
"""
from __future__ import annotations

import argparse
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


def _warmup(model: Any, precision: str = "fp32") -> Any:
    from .warmup import warmup

    return warmup(model, say=lambda s: _say(f"hirestile: {s}"), precision=precision)


def _hdu(a: argparse.Namespace) -> dict[str, Any]:
    """The FITS options given (--hdu, --plane) as open_image's keywords."""
    return {k: getattr(a, k) for k in ("hdu", "plane") if getattr(a, k, None) is not None}


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
    from .cli_commands import (cmd_convert, cmd_example, cmd_info, cmd_inspect, cmd_models, cmd_plan,
                               cmd_warmup)
    from .cli_segment import cmd_objects, cmd_segment_objects
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
        g.add_argument("--simplify", type=float, default=None, metavar="TOL",
                       help="--geojson: simplify outlines within TOL pixels (Hausdorff; shapely, topology "
                       "kept); default the exact pixel edges")
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
    s.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="bands down column strips, each intermediate row computed once per strip (--stream), or "
                        "overlap tiles with their own halos (--no-stream); default: the plan decides, streaming "
                        "where overlap tiles would compute >= 1.13x its FLOPs (same bits, same memory budget)")
    s.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory budget, e.g. 1.5GB or 800MiB (default: a quarter of the RAM, at most 2 GiB); "
                        "the tile is chosen to fit it")
    s.add_argument("--output", choices=list(OUTPUT_KINDS) + ["instances"], default="probabilities",
                   help="probabilities (float16, default), logits (float32), labels (uint8; uint16 past 256 "
                   "classes) or instances "
                   "(labels, then one uint32 id per object: OUT, its class map in OUT/classes)")
    s.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="arithmetic: fp32 (default) or bf16 (weights and layer inputs rounded to bfloat16, "
                        "float32 sums; tiles still equal full-frame bit for bit; vdpbf16ps where the CPU has "
                        "AVX512_BF16)")
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
    s.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="plan streamed bands down column strips (--stream) or overlap tiles (--no-stream); "
                        "default: as segment decides")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="arithmetic: fp32 (default) or bf16 (weights and layer inputs rounded to bfloat16, "
                        "float32 sums; tiles still equal full-frame bit for bit; vdpbf16ps where the CPU has "
                        "AVX512_BF16)")
    s.add_argument("--memory", default=None, metavar="SIZE", help="memory budget (see segment)")
    s.add_argument("--estimate", action="store_true",
                   help="measure this machine's GFLOP/s on one interior region and estimate the run time")
    s.add_argument("--image", default=None, metavar="HxW", help="image size (default 4096x4096)")
    s.add_argument("--dtype", default="uint8", choices=["uint8", "uint16", "int16", "float32", "float64"],
                   help="the image's stored values (default uint8, as slides are): the reader queues "
                        "windows as stored")
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
                       "about half a minute on 2 cores)")
    s.add_argument("--model", "-m", nargs="+", default=None, metavar="NAME",
                   help="built-in model names or model files (default: every built-in model)")
    s.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"], metavar="P",
                   help="the kernels of these precisions: fp32 (default), bf16, or both ('--precision fp32 bf16')")
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
