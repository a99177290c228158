"""Python API: load a model, analyze it, predict full-frame or tiled, import from PyTorch.

A front end (docs/architecture.md): arrays in memory in, logits out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report
from hirestile.bands import Stream, stream_reads
from hirestile.contract import normalize_window
from hirestile.errors import InputError
from hirestile.executor import tile_memory
from hirestile.graph import Graph
from hirestile.loading import as_model, load_model, with_contract
from hirestile.model import Model
from hirestile.tiling import column_strips, grid_tiles


def analyze(model: Model | Graph | str, image_shape: Sequence[int] | None = None, *,
            precision: str = "fp32") -> Report:
    """Receptive-field report of a model for an input image size.

    Parameters
    ----------
    model : Model, Graph or str
    image_shape : (H, W), optional
        Needed where a rule depends on the size (align_corners=True resizes,
        pad-to contracts); defaults to a 1024 x 1024 image.
    precision : {"fp32", "bf16"}
        The arithmetic the report's graph runs in (see :func:`predict`).

    Returns
    -------
    Report
        ``tileable``, ``reason``, ``input_window(region)``, ``halo``, ``stride``,
        ``receptive_field``, ``flops_per_pixel``, ``regions(region)``, ...

    Raises
    ------
    InputError
        If the network cannot take an image of this size; the message says which
        sizes it takes (a multiple to declare as ``pad_to``, or a minimum size).

    Examples
    --------
    >>> import hirestile
    >>> from hirestile.models.unet import unet
    >>> rep = hirestile.analyze(unet(padding="valid", base=2, depth=4), (572, 572))
    >>> rep.output_shape[1:], rep.halo_of(((0, 388), (0, 388)))
    ((388, 388), (92, 92, 92, 92))
    >>> rep.halo          # of an interior tile: its pools need the window to be 16k + 12 long
    (92, 92, 96, 96)
    """
    shape = tuple(image_shape) if image_shape is not None else (1024, 1024)
    return as_model(model).analyze(shape, precision)


def _as_image(m: Model, x: np.ndarray) -> np.ndarray:
    """``x`` as a (C, H, W) image the model takes, as stored (normalised window by window)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"image must be (C, H, W), (H, W) or a batch (N, C, H, W), got shape {x.shape}")
    if x.shape[0] != m.runnable.in_channels:
        raise InputError(f"model {m.name!r} takes {m.runnable.in_channels} channel(s), image has {x.shape[0]}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"image is empty: shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"unsupported image dtype {x.dtype}")
    return x


_NAN_HINT = "replace them first (np.nan_to_num), or use hirestile.segment(..., nan_fill=VALUE)"
# The band predict runs when no band fits its budget (the weights alone may not): a band
# costs a fixed ~40 ms on 2048-wide UNet-16 maps (line-buffer copies, one call per layer).
MIN_PREDICT_BAND = 128
# A full-frame predict streams when that takes at most this share of one region's memory.
# Streaming touches less fresh memory (first calls on a size ran 25-60 % faster at 2048^2 on
# this project's VM) but copies line buffers between a band's pieces: later calls run 3-5 %
# slower (UNet-16 2048^2; 1024^2 in bf16), and 11-40 % slower at 512^2-256^2, where it saves
# nothing.
STREAM_SHARE = 0.75


def predict_bands(rep: Report, memory: int | None = None, *, region: bool = True) -> tuple[int, int] | None:
    """How a full-frame :func:`predict` call runs within ``memory`` bytes (default
    :func:`hirestile.scheduler.default_memory`) of working memory -- node buffers, weights, the
    normalised input and the output band, beside the caller's image and the returned logits:
    ``None`` for one region, else the (rows, cols) of streamed bands
    (:class:`hirestile.bands.Stream`).

    One region holds every map whole; streaming holds about a network's halo of rows per
    layer, and a band that starts a strip runs in two pieces
    (:func:`hirestile.bands.fresh_pieces`). A call runs as one region when the model is not
    tileable, or when ``region`` and one region fits ``memory`` and streaming would take more
    than :data:`STREAM_SHARE` of its memory (small images: streaming's line-buffer copies
    cost time where it saves no memory); else in bands: the whole width and the tallest band
    that fits (a narrow strip recomputes its halo on both sides; a short band costs only its
    fixed per-band work), narrower strips only when no band of the whole width fits, and
    :data:`MIN_PREDICT_BAND` rows of the whole width when nothing fits. Fresh memory costs
    first-touch page faults (0.5-3 s per GB on some machines), which is why the less memory
    wins. Same bits either way.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> rep = unet(in_channels=3, classes=2, base=16, depth=4).analyze((2048, 2048))
    >>> predict_bands(rep)         # one band of the whole frame: 0.60 GiB, one region 0.89
    (2048, 2048)
    >>> predict_bands(rep, memory=512 << 20)  # 768-row bands of the whole width
    (768, 2048)
    >>> predict_bands(unet(in_channels=3, classes=2, base=16, depth=4).analyze((512, 512))) is None
    True
    """
    from hirestile.scheduler import TILE_CANDIDATES, default_memory, strip_widths

    if not rep.tileable:
        return None
    budget = memory or default_memory()
    _, oh, ow = rep.output_shape
    ih, iw = rep.image_shape
    heights = sorted({oh, *(h for h in TILE_CANDIDATES if h < oh)}, reverse=True)
    shapes = [(h, w) for w in strip_widths(ow) for h in heights]
    band = next((s for s in shapes if band_bytes(rep, s) <= budget), (min(MIN_PREDICT_BAND, oh), ow))
    whole = executor.tile_memory(rep, (oh, ow)) + 4 * rep.graph.in_channels * ih * iw
    if region and whole <= budget and band_bytes(rep, band) > STREAM_SHARE * whole:
        return None
    return band        # (when nothing fits, the weights alone perhaps: the least band worth running)


def band_bytes(rep: Report, band: tuple[int, int]) -> int:
    """Working bytes of a :func:`predict` call in streamed bands of ``band`` (rows, cols): the
    stream's slab and line buffers (:func:`hirestile.bands.band_memory`; every strip starts at
    the top), the weights, the largest normalised input window, and one band of logits' worth
    for what the kernels take beside the slab for a moment (a pad's copy, a transposed conv's
    scratch: not derived, measured at 4-8 MB on an 800 x 601 UNet-8; the bands write
    straight into the returned logits)."""
    from hirestile.bands import band_memory

    h, w = band
    region = executor.interior_region(rep, (h, w))
    window = 4 * rep.graph.in_channels * executor.image_window(rep, region).size
    return band_memory(rep, region, restarts=False) + executor.weight_bytes(rep) + window + 4 * rep.output_shape[0] * h * w


def predict(model: Model | Graph | str, x: np.ndarray, *, tile: int | Sequence[int] | None = None,
            tile_origin: Sequence[int] = (0, 0), stream: bool | None = None, precision: str = "fp32",
            memory: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Run a model on an in-memory image.

    Parameters
    ----------
    model : Model, Graph or str
    x : ndarray, (C, H, W), (H, W) or a batch (N, C, H, W)
        Raw image; the model's input contract normalises it. A batch runs image
        by image (models exported with a fixed batch N load when no op mixes the
        batch, see :func:`load_model`).
    tile : int or (int, int), optional
        Output tile size. ``None``: the whole frame, as one region or in streamed bands of
        the whole width, whichever takes less memory (:func:`predict_bands`). Tiled
        output equals full-frame output bit for bit.
    tile_origin : (int, int)
        Where the tile grid is anchored (tests use it to move seams around).
    stream : bool, optional
        Visit the tiles as bands moving down column strips and compute each
        intermediate row once per strip (:class:`hirestile.bands.Stream`)
        instead of each tile with its own halo. Same bits. Default: overlap tiles for a
        tiled call; :func:`predict_bands` decides for a full-frame one (``tile=None``),
        where ``stream=True`` streams and ``stream=False`` runs the whole frame as one
        region (every map whole: :func:`hirestile.executor.tile_memory`, whatever
        ``memory``).
    precision : {"fp32", "bf16"}
        ``"bf16"``: weights and every layer's input rounded to bfloat16, products summed
        in float32, every layer's output rounded to bf16 wherever it is computed, so tiled
        still equals full-frame bit for bit (same machine, same instruction path:
        ``vdpbf16ps`` where the CPU has AVX512_BF16, else a float32 conversion path giving
        the same bits; :mod:`hirestile.kernels.bf16`). Logits differ from fp32 by about
        1 % of their range; labels agree on >= 99.5 % of pixels on the built-in models.
    memory : int, optional
        Bytes of working memory a full-frame call may take (node buffers, weights, the
        normalised input, the output band), beside ``x`` and the returned logits; default
        :func:`hirestile.scheduler.default_memory` (a quarter of RAM, at most 2 GiB). A
        UNet-16 on 2048^2 runs as one band in 0.60 GiB (one region would take 0.89); on
        8192^2, in 768-row bands of the whole width (in 2 GiB).
    out : ndarray, optional
        Where to write the logits: float32, the shape returned (C-contiguous). A loop over
        images of one size that passes the same array each time takes no fresh pages for its
        results (as an inference engine's output tensor; fresh memory costs first-touch page
        faults). Returned.

    Returns
    -------
    ndarray, float32, (K, H', W') (or (N, K, H', W') for a batch)
        Logits on the model's output grid.

    Notes
    -----
    The input is normalised (the model's contract) region by region. The node buffers and the
    normalised input of a call (~0.6 GiB for a UNet-16 on 2048^2) stay with the model for its
    next call, as inference engines keep their memory pools: fresh memory
    costs 0.5-3 s per GB of first-touch page faults on some machines, on every call. They go
    with the model (``del model``), as do the plans for the last few image sizes
    (:meth:`hirestile.model.Model.analyze`).

    Examples
    --------
    >>> import numpy as np, hirestile
    >>> from hirestile.models.unet import unet
    >>> m = unet(in_channels=1, classes=2, base=4, depth=2)
    >>> x = np.random.default_rng(0).random((1, 37, 41), np.float32)
    >>> np.array_equal(hirestile.predict(m, x), hirestile.predict(m, x, tile=16))
    True
    >>> b = hirestile.predict(m, x, precision="bf16")
    >>> np.array_equal(b, hirestile.predict(m, x, tile=16, precision="bf16"))
    True
    """
    m = as_model(model)
    if np.ndim(x) == 4:  # a batch: one image at a time (what a batch-N export computes per element)
        if not len(x):
            raise InputError(f"empty batch: shape {np.shape(x)}")
        if out is not None and (not isinstance(out, np.ndarray) or out.ndim != 4 or len(out) != len(x)):
            raise ValueError(f"out must be a float32 array (N, K, H', W') for a batch of {len(x)}, "
                             f"got shape {np.shape(out)}")
        ys = [predict(m, xi, tile=tile, tile_origin=tile_origin, stream=stream, precision=precision,
                      memory=memory, out=None if out is None else out[i]) for i, xi in enumerate(x)]
        return np.stack(ys) if out is None else out
    img = _as_image(m, x)
    rep = m.analyze(img.shape[1:], precision)
    _, oh, ow = rep.output_shape
    if out is None:
        out = np.empty(rep.output_shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == rep.output_shape
              and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {rep.output_shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {np.shape(out)}")
    if tile is None:
        bands = None if stream is False else predict_bands(rep, memory, region=stream is None)
        if bands is None:
            with executor.kept_arena(rep) as arena:     # node buffers kept with the model for the next call
                window = normalize_window(img, ((0, img.shape[1]), (0, img.shape[2])), m.contract, None,
                                          where="image", hint=_NAN_HINT, out=arena.scratch(img.shape))
                return executor.run_region(rep, window, (0, 0), ((0, oh), (0, ow)), arena=arena, out=out)
        tile, tile_origin, stream = bands, (0, 0), True
    rep.check_tileable()
    ty, tx = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if ty < 1 or tx < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    tiles = grid_tiles(rep, (ty, tx), tile_origin)
    with executor.kept_arena(rep) as arena:         # node buffers reused tile after tile, call after call
        for strip in column_strips(tiles) if stream else [tiles]:
            band = Stream(rep, arena) if stream else None
            for t in stream_reads(rep, strip) if stream else strip:    # a band reads the rows it computes from
                executor.run_window(rep, m.contract, img[(slice(None), *t.read.slices)], t, where="image",
                                    hint=_NAN_HINT, stream=band, arena=arena, out=out[(slice(None), *t.write.slices)])
    return out


def from_torch(module, example_input, *, contract: dict | None = None) -> Model:
    """Import a PyTorch ``nn.Module`` (through ONNX export; needs torch installed).

    Parameters
    ----------
    module : torch.nn.Module
        In eval mode; every op must be one hirestile supports.
    example_input : torch.Tensor
        ``(1, C, H, W)``; the export keeps H and W dynamic.
    contract : dict, optional
        The input contract (keys of :class:`~hirestile.contract.InputContract`
        plus ``classes``), as in :func:`load_model`. Without it the model takes
        values as given (``scale="none"``) at any size.
    """
    from hirestile.torch_import import from_torch as _from_torch
    graph = _from_torch(module, example_input)
    m = Model.from_graph(graph, name=type(module).__name__)
    return with_contract(m, contract) if contract else m


__all__ = ["analyze", "predict", "from_torch", "load_model", "with_contract", "tile_memory", "predict_bands"]
