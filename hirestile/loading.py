"""Loading a model: built-in names, model files, sidecar contracts.

The model layer (docs/architecture.md), beside :mod:`hirestile.model`: every
front end (Python API, Dask API, scheduler, CLI) turns what a user names into a
:class:`~hirestile.model.Model` here. The importers (ONNX, safetensors UNets)
are called lazily, so importing this module loads none of them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
        m = Model.from_graph(graph, name=path.stem)
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


__all__ = ["as_model", "load_model", "load_builtin", "read_sidecar", "with_contract", "MODEL_FORMATS", "CONTRACT_FIELDS"]
