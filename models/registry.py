"""The built-in models: name -> architecture, input contract, classes, weights and card.

>>> from hirestile.models.registry import get_spec
>>> spec = get_spec("nuclei")            # an alias
>>> spec.name, spec.classes, spec.contract.pad_to
('unet', ('background', 'nucleus'), 16)

Building a runnable model from a spec is ``hirestile.load_model(name)``; this
module only says what each model is and where its files lie.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hirestile.contract import InputContract

__all__ = ["ModelSpec", "REGISTRY", "get_spec", "list_specs", "MODELS_DIR"]

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ModelSpec:
    """One built-in model.

    Attributes
    ----------
    name : str
        Canonical name (``hirestile segment IN --model NAME``).
    aliases : tuple of str
        Other names that resolve to this model.
    arch : dict
        Keyword arguments of the UNet builder (``hirestile.models.unet.unet``
        and its PyTorch twin ``hirestile.models.training.torch_unet.UNet``).
    contract : InputContract
        Channels, scaling, normalisation, pad-to multiple and pad mode.
    classes : tuple of str
        Output class names, in channel order.
    weights : str
        File name under ``models/weights/`` (safetensors).
    card : str
        File name under ``models/cards/`` (the model card).
    description : str
        One line for ``hirestile models``.
    inputs : str
        Which dtypes and value ranges the model was trained for (one line).
    pixel_size : (float, float) or None
        The pixel sizes it was trained for, (finest, coarsest) in micrometres (its card's
        "Resolution"); None for a model that knows no physical scale. ``segment`` picks the
        pyramid level within 10% of this range (``hirestile.io.closest_level``).
    """

    name: str
    aliases: tuple[str, ...]
    arch: dict[str, Any] = field(hash=False)
    contract: InputContract
    classes: tuple[str, ...]
    weights: str
    card: str
    description: str
    inputs: str = ""
    pixel_size: tuple[float, float] | None = None

    @property
    def weights_path(self) -> Path:
        """Absolute path of the weights file inside the installed package."""
        return MODELS_DIR / "weights" / self.weights

    @property
    def card_path(self) -> Path:
        """Absolute path of the model card."""
        return MODELS_DIR / "cards" / self.card


# Both built-in nets: small same-padding UNets (base 8, depth 4: 0.49 M
# parameters, 1.9 MB of float32 weights, ~11 k multiply-adds per output pixel)
# -- fast on a CPU and trainable on two CPU cores in minutes. Depth 4 gives a
# 204 px receptive field (94 px of context per side: local background for
# galaxies, context for nuclei) and a pad-to of 16.
_ARCH = dict(base=8, depth=4, padding="same", up="transpose", bn=True)

REGISTRY: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        name="unet",
        aliases=("unet-histo", "nuclei", "histo"),
        arch=dict(in_channels=3, classes=2, **_ARCH),
        # RGB uint8 -> [0, 1] -> (x - 0.5) / 0.25. Float RGB input must already be in [0, 1].
        contract=InputContract(channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale="dtype",
                               pad_to=16, pad_mode="reflect", value_range=(0.0, 1.0)),
        classes=("background", "nucleus"),
        weights="unet.safetensors",
        card="unet.md",
        description="Nuclei in brightfield histology (H&E, IHC/DAB), RGB, ~0.25-0.6 um/px",
        inputs="uint8 RGB (0..255), uint16 RGB, or float RGB already in [0, 1]",
        pixel_size=(0.25, 0.6),            # card: about 0.25 - 0.6 um per pixel (20x - 40x scans)
    ),
    "unet-astro": ModelSpec(
        name="unet-astro",
        aliases=("astro", "sources"),
        arch=dict(in_channels=1, classes=2, **_ARCH),
        # Integers -> / dtype max; floats as they are; then arcsinh(x / 0.01) / 2. Trained for
        # background noise of 0.03 .. 3 x the softening (3e-4 .. 3e-2 in these units).
        contract=InputContract(channels=1, mean=(0.0,), std=(2.0,), scale="dtype", pad_to=16,
                               pad_mode="reflect", stretch="asinh", softening=0.01),
        classes=("background", "source"),
        weights="unet-astro.safetensors",
        card="unet-astro.md",
        description="Stars and galaxies in single-band sky images (float fluxes, uint16 ADU, 8-bit renderings)",
        inputs=("float fluxes with background noise ~3e-4..3e-2 (sky-subtracted or not), "
                "uint16 ADU frames, uint8 renderings; NaN no-data needs --nan-fill"),
    ),
}

_ALIASES: dict[str, str] = {a: s.name for s in REGISTRY.values() for a in (s.name, *s.aliases)}


def get_spec(name: str) -> ModelSpec:
    """The spec of a built-in model, by name or alias (case-insensitive).

    Raises
    ------
    KeyError
        If ``name`` is not a known model; the message lists the known names.
    """
    key = _ALIASES.get(name.lower().strip())
    if key is None:
        known = ", ".join(f"{s.name} (aliases: {', '.join(s.aliases)})" for s in REGISTRY.values())
        raise KeyError(f"unknown model {name!r}; built-in models are: {known}; "
                       "or pass a path to an .onnx or .safetensors file")
    return REGISTRY[key]


def list_specs() -> list[ModelSpec]:
    """All built-in model specs, in registry order."""
    return list(REGISTRY.values())
