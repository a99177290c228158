"""Loading a model: built-in names, model files, sidecar contracts.

The model layer (docs/architecture.md), beside :mod:`hirestile.model`: every
front end (Python API, Dask API, scheduler, CLI) turns what a user names into a
:class:`~hirestile.model.Model` here. The importers (ONNX, safetensors UNets)
are called lazily, so importing this module loads none of them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hirestile.contract import pixel_size_value
from hirestile.errors import ModelError
from hirestile.graph import Graph
from hirestile.model import Model


def as_model(model: Model | Graph | str | Path) -> Model:
    """Accept a Model, a bare Graph, a built-in name or a model file path."""
    if isinstance(model, Model):
        return model
    if isinstance(model, Graph):
        return Model.from_graph(model)
    return load_model(model)


MODEL_FORMATS = "a model is a built-in name (`hirestile models` lists them), a .onnx file or a UNet .safetensors file"
CONTRACT_FIELDS = ("mean", "std", "scale", "pad_to", "pad_mode", "stretch", "softening", "value_range")
#: sidecar keys beside the contract's: class names, and the pixel size the model was trained at
MODEL_FIELDS = ("classes", "pixel_size")


def load_model(source: str | Path, *, contract: dict | None = None,
               size_hint: tuple[int, int] | None = None) -> Model:
    """Load a model: a built-in name (see ``hirestile models``), an ``.onnx`` file or a
    UNet ``.safetensors`` file.

    A model file may come with a sidecar ``<file>.json`` (e.g. ``my.onnx.json``)
    declaring its input contract and class names::

        {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "scale": "dtype",
         "pad_to": 16, "pad_mode": "reflect", "classes": ["background", "nucleus"],
         "pixel_size": "0.5um"}

    ``pixel_size`` is the pixel size the model was trained at (:func:`model_pixel_size`).

    ``contract`` (same keys) overrides the sidecar; the CLI fills it from its
    contract flags (``--pad-to``, ``--pad-mode``, ``--mean``, ``--std``, ``--scale``,
    ``--stretch``, ``--softening``).

    ``size_hint`` (H, W), for ``.onnx`` files: an input size the network takes, where
    the importer's own search finds none (it tries 512 x 512 and, failing that, every
    residue modulo 64 around it). Models exported with any fixed batch size load when no
    op mixes the batch (they run image by image); opsets 6-12 are upgraded.

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
        graph = load_onnx(path, size_hint=size_hint)
        m = Model.from_graph(graph, name=path.stem)
    spec = dict(read_sidecar(path))
    spec.update(contract or {})
    return with_contract(m, spec) if spec else m


def contract_sources(source: str | Path, contract: dict | None = None) -> dict[str, str]:
    """Where each part of the input contract :func:`load_model` applies comes from: "flags"
    (``contract``), "sidecar" (``<file>.json``), "built-in" (a registry model's card) or
    "default" (a model file without either: values as given, any size). Keys: scale,
    normalisation, stretch, pad."""
    contract = contract or {}
    path = Path(str(source))
    builtin = path.suffix.lower() not in (".onnx", ".safetensors") and not path.is_file()
    side = {} if builtin or not path.is_file() else read_sidecar(path)
    keys = {"scale": ("scale",), "normalisation": ("mean", "std"), "stretch": ("stretch", "softening"),
            "pad": ("pad_to", "pad_mode")}
    out = {}
    for part, names in keys.items():
        if any(k in contract for k in names):
            out[part] = "flags"
        elif any(k in side for k in names):
            out[part] = "sidecar"
        else:
            out[part] = "built-in" if builtin else "default"
    return out


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
    if "pixel_size" in spec:
        parse_model_pixel_size(spec["pixel_size"], where=f"{side}: ")
    return spec


def parse_model_pixel_size(value: object, *, where: str = "") -> tuple[tuple[float, float], str]:
    """A declared model pixel size -> ((finest, coarsest), unit): a number (micrometres), a string
    with a unit as ``--pixel-size`` takes (``"0.5um"``, ``"0.4arcsec"``), or a [finest, coarsest]
    range of those. Anything else is a one-line :class:`ModelError` (``where`` names the source).

    Examples
    --------
    >>> parse_model_pixel_size("500nm"), parse_model_pixel_size([0.25, "0.6um"])
    (((0.5, 0.5), 'micrometer'), ((0.25, 0.6), 'micrometer'))
    >>> parse_model_pixel_size(0)
    Traceback (most recent call last):
    ...
    hirestile.errors.ModelError: "pixel_size": 0 is not a positive finite size with a length or angle unit; write e.g. "pixel_size": 0.5 (micrometres), "0.5um", "0.4arcsec" or [0.25, 0.6]
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    parsed = [pixel_size_value(v) if isinstance(v, (str, int, float)) else None for v in items]
    if not 1 <= len(items) <= 2 or None in parsed or len({unit for _, unit in parsed}) != 1:
        raise ModelError(f'{where}"pixel_size": {value!r} is not a positive finite size with a length or angle '
                         'unit; write e.g. "pixel_size": 0.5 (micrometres), "0.5um", "0.4arcsec" or [0.25, 0.6]')
    sizes = [v for size, _ in parsed for v in size]
    return (min(sizes), max(sizes)), parsed[0][1]


def model_pixel_size(source: str | Path, contract: dict | None = None) -> tuple[tuple[float, float], str] | None:
    """((finest, coarsest), unit) the model named by ``source`` was trained at: ``contract``'s
    ``pixel_size``, else its sidecar's (model files), else its registry entry's (built-ins, from
    their cards), else None.

    Examples
    --------
    >>> model_pixel_size("unet")
    ((0.25, 0.6), 'micrometer')
    >>> model_pixel_size("unet", {"pixel_size": "0.5um"})
    ((0.5, 0.5), 'micrometer')
    """
    if contract and "pixel_size" in contract:
        return parse_model_pixel_size(contract["pixel_size"])
    path = Path(str(source))
    if path.suffix.lower() in (".onnx", ".safetensors") or path.is_file():
        side = read_sidecar(path) if path.is_file() else {}
        return parse_model_pixel_size(side["pixel_size"]) if "pixel_size" in side else None
    from hirestile.models.registry import get_spec
    try:
        spec = get_spec(str(source))
    except KeyError:
        return None
    return (tuple(spec.pixel_size), "micrometer") if spec.pixel_size else None


def with_contract(m: Model, spec: dict) -> Model:
    """``m`` with its input contract / class names changed by ``spec`` (keys of
    :class:`InputContract` plus ``classes``; a ``pixel_size`` is checked here and read by
    :func:`model_pixel_size`)."""
    unknown = set(spec) - set(CONTRACT_FIELDS) - set(MODEL_FIELDS)
    if unknown:
        raise ModelError(f"unknown input-contract keys {sorted(unknown)}; use {', '.join(CONTRACT_FIELDS + MODEL_FIELDS)}")
    if "pixel_size" in spec:
        parse_model_pixel_size(spec["pixel_size"])
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


__all__ = ["as_model", "load_model", "load_builtin", "read_sidecar", "contract_sources", "with_contract", "MODEL_FORMATS",
           "CONTRACT_FIELDS", "MODEL_FIELDS", "parse_model_pixel_size", "model_pixel_size"]
