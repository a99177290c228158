"""Python API: load a model, analyze it, predict full-frame or tiled."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report
from hirestile.contract import InputContract, normalize_window
from hirestile.errors import InputError, ModelError
from hirestile.graph import Graph, ShapeError
from hirestile.model import Model


def as_model(model: Model | Graph | str | Path) -> Model:
    """Accept a Model, a bare Graph, a built-in name or a model file path."""
    if isinstance(model, Model):
        return model
    if isinstance(model, Graph):
        return Model(graph=model, contract=InputContract(channels=model.in_channels, scale="none"))
    return load_model(model)


MODEL_FORMATS = "a model is a built-in name (`hirestile models` lists them), a .onnx file or a UNet .safetensors file"
CONTRACT_FIELDS = ("mean", "std", "scale", "pad_to", "pad_mode", "stretch", "softening", "value_range")


def load_model(source: str | Path, *, contract: dict | None = None) -> Model:
    """Load a model: a built-in name (see ``hirestile models``), an ``.onnx`` file or a
    UNet ``.safetensors`` file.

    A model file may come with a sidecar ``<file>.json`` (e.g. ``my.onnx.json``)
    declaring its input contract and class names::

        {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "scale": "dtype",
         "pad_to": 16, "pad_mode": "reflect", "classes": ["background", "nucleus"]}

    ``contract`` (same keys) overrides the sidecar; the CLI fills it from its
    contract flags (``--pad-to``, ``--pad-mode``, ``--mean``, ``--std``, ``--scale``,
    ``--stretch``, ``--softening``).

    Examples
    --------
    >>> import hirestile
    >>> m = hirestile.load_model("unet")   # doctest: +SKIP
    """
    src = str(source)
    path = Path(src)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".safetensors") and not path.is_file():
        try:
            m = load_builtin(src)              # a built-in name wins over a folder of that name
        except ModelError:
            if path.is_dir():
                raise ModelError(f"model {src} is a directory; {MODEL_FORMATS}") from None
            raise
        return with_contract(m, contract) if contract else m
    if path.is_dir():
        raise ModelError(f"model {src} is a directory; {MODEL_FORMATS}")
    if not path.exists():
        raise ModelError(f"model file {src} does not exist; check the path, or give a built-in name "
                         "(`hirestile models` lists them)")
    if suffix not in (".onnx", ".safetensors"):
        raise ModelError(f"model file {src} is neither .onnx nor .safetensors; {MODEL_FORMATS}")
    if suffix == ".safetensors":
        from hirestile.models.unet import load_unet
        m = load_unet(path, name=path.stem)
    else:
        from hirestile.onnx_import import load_onnx
        graph = load_onnx(path)
        m = Model(graph=graph, contract=InputContract(channels=graph.in_channels, scale="none"), name=path.stem)
    spec = dict(read_sidecar(path))
    spec.update(contract or {})
    return with_contract(m, spec) if spec else m


def read_sidecar(path: Path) -> dict:
    """The contract/classes declared in ``<path>.json`` beside a model file ({} if none)."""
    side = path.with_name(path.name + ".json")
    if not side.exists():
        return {}
    import json
    try:
        spec = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{side}: not a readable JSON sidecar ({e})") from None
    if not isinstance(spec, dict):
        raise ModelError(f"{side}: the sidecar must be a JSON object")
    return spec


def with_contract(m: Model, spec: dict) -> Model:
    """``m`` with its input contract / class names changed by ``spec`` (keys of
    :class:`InputContract` plus ``classes``)."""
    unknown = set(spec) - set(CONTRACT_FIELDS) - {"classes"}
    if unknown:
        raise ModelError(f"unknown input-contract keys {sorted(unknown)}; use {', '.join(CONTRACT_FIELDS)}, classes")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k in CONTRACT_FIELDS}
    try:
        contract = replace(m.contract, **fields)
    except (TypeError, ValueError) as e:
        raise ModelError(f"invalid input contract: {e}") from None
    classes = tuple(spec.get("classes", m.classes))
    return Model(graph=m.graph, contract=contract, name=m.name, classes=classes, card=m.card)


def load_builtin(name: str) -> Model:
    """A built-in model from the registry (``hirestile models`` lists them)."""
    from hirestile.models.registry import get_spec
    from hirestile.models.unet import load_unet
    try:
        spec = get_spec(name)
    except KeyError as e:
        raise ModelError(e.args[0]) from None
    if not spec.weights_path.exists():
        raise ModelError(f"weights of built-in model {spec.name!r} are missing ({spec.weights_path}); reinstall hirestile")
    card = spec.card_path.read_text() if spec.card_path.exists() else ""
    m = load_unet(spec.weights_path, contract=spec.contract, name=spec.name, classes=spec.classes)
    return Model(graph=m.graph, contract=m.contract, name=m.name, classes=m.classes, card=card)


def analyze(model: Model | Graph | str, image_shape: Sequence[int] | None = None) -> Report:
    """Receptive-field report of a model for an input image size.

    Parameters
    ----------
    model : Model, Graph or str
    image_shape : (H, W), optional
        Needed where a rule depends on the size (align_corners=True resizes,
        pad-to contracts); defaults to a 1024 x 1024 image.

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
    >>> rep.output_shape[1:], rep.halo
    ((388, 388), (92, 92, 92, 92))
    """
    m = as_model(model)
    shape = tuple(image_shape) if image_shape is not None else (1024, 1024)
    try:
        return executor.analyze(m.runnable, shape)
    except ShapeError as e:
        raise InputError(_size_advice(m, shape, e)) from None


def _size_advice(m: Model, shape: tuple[int, int], err: Exception) -> str:
    """Why a network cannot take an image of ``shape``, and which sizes it takes."""
    h, w = shape
    head = f"model {m.name!r} cannot take a {h}x{w} image ({err})"
    def takes(hw) -> bool:
        try:
            executor.analyze(m.runnable, hw)
            return True
        except (ShapeError, ArithmeticError):
            return False
    # candidates in order: small multiples (a same-padding UNet), a minimum size (valid
    # padding), then large multiples; the first size the network takes names the fix
    candidates = ([("multiple", k) for k in (2, 4, 8, 16, 32)] + [("size", s) for s in (64, 128, 256, 512, 1024,
                  2048, 4096)] + [("multiple", k) for k in (64, 128, 256)])
    for kind, k in candidates:
        hw = (-(-h // k) * k, -(-w // k) * k) if kind == "multiple" else (max(h, k), max(w, k))
        if takes(hw):
            if kind == "multiple":
                return (f"{head}: it takes sizes that are multiples of {k}; declare pad_to={k} "
                        f"(--pad-to {k}) to pad virtually and crop back")
            return f"{head}: the image is too small for it; it takes {hw[0]}x{hw[1]}, use a larger image"
    return f"{head}; check the model's input contract (pad_to)"


def _as_image(m: Model, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"image must be (C, H, W) or (H, W), got shape {x.shape}")
    if x.shape[0] != m.runnable.in_channels:
        raise InputError(f"model {m.name!r} takes {m.runnable.in_channels} channel(s), image has {x.shape[0]}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"image is empty: shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"unsupported image dtype {x.dtype}")
    return normalize_window(x, ((0, x.shape[1]), (0, x.shape[2])), m.contract, None, where="image",
                            hint="replace them first (np.nan_to_num), or use hirestile.segment(..., nan_fill=VALUE)")


def tiles(shape: Sequence[int], tile: Sequence[int], origin: Sequence[int] = (0, 0)):
    """Output tiles ((y0, y1), (x0, x1)) covering a (H, W) grid; the grid of tile
    corners starts at ``origin`` (mod tile), so tiles need not align to anything."""
    h, w = shape
    ty, tx = tile
    oy, ox = origin[0] % ty, origin[1] % tx
    ys = sorted({0, *range(oy, h, ty)})
    xs = sorted({0, *range(ox, w, tx)})
    for i, y0 in enumerate(ys):
        y1 = ys[i + 1] if i + 1 < len(ys) else h
        for j, x0 in enumerate(xs):
            x1 = xs[j + 1] if j + 1 < len(xs) else w
            if y1 > y0 and x1 > x0:
                yield ((y0, y1), (x0, x1))


def predict(model: Model | Graph | str, x: np.ndarray, *, tile: int | Sequence[int] | None = None,
            tile_origin: Sequence[int] = (0, 0)) -> np.ndarray:
    """Run a model on an in-memory image.

    Parameters
    ----------
    model : Model, Graph or str
    x : ndarray, (C, H, W) or (H, W)
        Raw image; the model's input contract normalises it.
    tile : int or (int, int), optional
        Output tile size. ``None`` runs full-frame. Tiled output equals
        full-frame output bit for bit.
    tile_origin : (int, int)
        Where the tile grid is anchored (tests use it to move seams around).

    Returns
    -------
    ndarray, float32, (K, H', W')
        Logits on the model's output grid.

    Examples
    --------
    >>> import numpy as np, hirestile
    >>> from hirestile.models.unet import unet
    >>> m = unet(in_channels=1, classes=2, base=4, depth=2)
    >>> x = np.random.default_rng(0).random((1, 37, 41), np.float32)
    >>> np.array_equal(hirestile.predict(m, x), hirestile.predict(m, x, tile=16))
    True
    """
    m = as_model(model)
    img = _as_image(m, x)
    rep = analyze(m, img.shape[1:])
    if tile is None:
        return executor.run_full(rep, img)
    rep.check_tileable()
    ty, tx = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if ty < 1 or tx < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    k, oh, ow = rep.output_shape
    out = np.empty((k, oh, ow), np.float32)
    _, h, w = img.shape
    for (y0, y1), (x0, x1) in tiles((oh, ow), (ty, tx), tile_origin):
        (a, b), (c, d) = rep.input_window(((y0, y1), (x0, x1)), aligned=True)
        a, b, c, d = max(a, 0), min(b, h), max(c, 0), min(d, w)
        out[:, y0:y1, x0:x1] = executor.run_region(rep, img[:, a:b, c:d], (a, c), ((y0, y1), (x0, x1)))
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
    m = Model(graph=graph, contract=InputContract(channels=graph.in_channels, scale="none"), name=type(module).__name__)
    return with_contract(m, contract) if contract else m
