"""The input contract a model declares: channels, normalisation and pad-to rule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hirestile.errors import InputError
from hirestile.region import Region


SCALES = ("dtype", "none")
PAD_MODES = ("reflect", "replicate", "zeros")
STRETCHES = ("linear", "asinh")


@dataclass(frozen=True)
class InputContract:
    """What a model expects of its input image.

    Parameters
    ----------
    channels : int
        Number of input channels the network takes.
    mean, std : tuple of float
        Per-channel (or one shared) normalisation applied after scaling:
        ``x = (scaled - mean) / std``.
    scale : {"dtype", "none"}
        ``"dtype"`` divides integer images by their dtype's maximum (uint8 -> /255)
        and leaves floats as they are; ``"none"`` leaves values unscaled.
    pad_to : int
        The network takes sizes that are multiples of this; other sizes are
        padded (``pad_mode``) at the bottom/right and cropped back. hirestile
        does this virtually, never materialising the padded image.
    pad_mode : {"reflect", "replicate", "zeros"}
    stretch : {"linear", "asinh"}
        Applied after scaling, before ``mean``/``std``: ``"asinh"`` maps
        ``x -> arcsinh(x / softening)`` -- linear for faint values, logarithmic
        for bright ones (Lupton et al. 1999), the usual way to bring
        astronomical fluxes spanning many decades into a network's range
        with a *fixed* softening and no per-image statistics.
    softening : float
        The ``"asinh"`` softening, in scaled units.
    value_range : (float, float) or None
        The range the network was trained on, after scaling (e.g. ``(0, 1)``:
        uint8 images, or float images already in [0, 1]). Declared for users and
        ``hirestile models``; values outside it are not refused.

    Examples
    --------
    >>> c = InputContract(channels=1, stretch="asinh", softening=0.01)
    >>> [round(float(v), 3) for v in c.normalize(np.array([[[0, 255]]], np.uint8)).ravel()]
    [0.0, 5.298]
    """

    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: str = "dtype"
    pad_to: int = 1
    pad_mode: str = "reflect"
    stretch: str = "linear"
    softening: float = 1.0
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.channels, (int, np.integer)) or self.channels < 1:
            problems.append(f"channels must be a positive integer, got {self.channels!r}")
        if not isinstance(self.pad_to, (int, np.integer)) or self.pad_to < 1:
            problems.append(f"pad_to must be a positive integer (1: any size), got {self.pad_to!r}")
        for name, value, allowed in (("scale", self.scale, SCALES), ("pad_mode", self.pad_mode, PAD_MODES),
                                     ("stretch", self.stretch, STRETCHES)):
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not self.softening > 0:
            problems.append(f"softening must be positive, got {self.softening!r}")
        if any(float(s) == 0 for s in self.std):
            problems.append(f"std must not be 0, got {self.std}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, self.channels):
                problems.append(f"{name} has {len(v)} values for {self.channels} channels (give 1 or {self.channels})")
        if self.value_range is not None and (len(self.value_range) != 2 or not self.value_range[0] < self.value_range[1]):
            problems.append(f"value_range must be (low, high) with low < high, got {self.value_range!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def describe(self) -> str:
        """One line for humans: what the model expects and how its input is mapped.

        >>> InputContract(channels=1, std=(2.0,), stretch="asinh", softening=0.01, pad_to=16).describe()
        '1 channel; integers / dtype max, floats as given; arcsinh(x / 0.01); x / 2; pad to a multiple of 16 (reflect)'
        """
        parts = [f"{self.channels} channel{'s' if self.channels > 1 else ''}"]
        scaled = "integers / dtype max, floats as given" if self.scale == "dtype" else "values as given"
        if self.value_range is not None:
            scaled += f", expected in [{self.value_range[0]:g}, {self.value_range[1]:g}]"
        parts.append(scaled)
        if self.stretch == "asinh":
            parts.append(f"arcsinh(x / {self.softening:g})")
        fmt = lambda v: (f"{float(v[0]):g}" if len(set(v)) == 1  # noqa: E731
                         else "[" + ", ".join(f"{float(a):g}" for a in v) + "]")
        mean, std = any(float(m) != 0 for m in self.mean), any(float(s) != 1 for s in self.std)
        if mean or std:
            parts.append(("(x - " + fmt(self.mean) + ")" if mean else "x") + (" / " + fmt(self.std) if std else ""))
        parts.append("any size" if self.pad_to == 1 else f"pad to a multiple of {self.pad_to} ({self.pad_mode})")
        return "; ".join(parts)

    def normalize(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map a raw (C, h, w) block of any numeric dtype to the float32 the network takes
        (into ``out``, a float32 array of the same shape, when given).

        Pointwise and position-independent, so tiles and the whole image agree.
        """
        if out is None:
            x = raw.astype(np.float32, copy=True)
        else:
            x = out
            np.copyto(x, raw, casting="unsafe")     # the same conversion as astype
        if self.scale == "dtype" and np.issubdtype(raw.dtype, np.integer):
            x *= np.float32(1.0 / np.iinfo(raw.dtype).max)
        if self.stretch == "asinh":
            x /= np.float32(self.softening)
            np.arcsinh(x, out=x)
        elif self.stretch != "linear":
            raise ValueError(f"unknown stretch {self.stretch!r}; use 'linear' or 'asinh'")
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        if np.any(mean != 0):
            x -= mean
        if np.any(std != 1):
            x /= std
        return x


def check_finite(raw: np.ndarray, read: Region, nan_fill: float | None, *, where: str,
                 hint: str) -> np.ndarray:
    """``raw`` (C, h, w) read at ``read`` with NaN/Inf replaced by ``nan_fill``; when that is None,
    an :class:`InputError` naming ``where``, the first such pixel and ``hint``."""
    if raw.dtype.kind != "f":
        return raw
    finite = np.isfinite(raw)
    if finite.all():
        return raw
    if nan_fill is None:
        _refuse_nonfinite(raw, read, tuple(np.argwhere(~finite)[0]), where=where, hint=hint)
    raw = raw.copy()
    raw[~finite] = nan_fill
    return raw


NAN_FILL_HINT = "pass --nan-fill VALUE to stand in for NaN/Inf (e.g. --nan-fill 0)"


def normalize_window(raw: np.ndarray, read: Region, contract: InputContract, nan_fill: float | None, *, where: str,
                     hint: str, out: np.ndarray | None = None) -> np.ndarray:
    """The network's float32 window for ``raw`` (C, h, w) read at ``read``: NaN/Inf filled with
    ``nan_fill``, normalised by ``contract``, and refused (:class:`InputError` naming ``where`` and
    the first pixel) where it is not finite after normalisation. ``out``: where to write it (a
    float32 array of ``raw``'s shape, reused from window to window: no fresh pages).

    Checking the normalised block catches both NaN/Inf stored in the input and finite values
    that the float32 cast or the contract's arithmetic turn into Inf (a float64 1e300): NaN
    shows in the block's minimum and maximum, Inf in one of them.
    """
    if nan_fill is not None:
        raw = check_finite(raw, read, nan_fill, where=where, hint=hint)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # refused below instead
        x = contract.normalize(raw, out)
        if np.isfinite(x.min(initial=0.0)) and np.isfinite(x.max(initial=0.0)):   # NaN and Inf show in both
            return x
    bad = ~np.isfinite(x)
    first = tuple(np.argwhere(bad)[0])
    if not np.isfinite(raw[first]):
        _refuse_nonfinite(raw, read, first, where=where, hint=hint)
    c, y, z = first
    raise InputError(f"{where} value {float(raw[first]):g} at channel {c}, row {read[0][0] + y}, column "
                     f"{read[1][0] + z} is {x[first]} once normalised to float32 (beyond its range, about 3.4e38); "
                     "rescale the input into float32 range first")


def _refuse_nonfinite(block: np.ndarray, read: Region, first: tuple[int, ...], *, where: str, hint: str) -> None:
    """Raise the :class:`InputError` naming the non-finite value of ``block`` at ``first`` (c, y, x)."""
    c, y, x = first
    what = "NaN" if np.isnan(block[first]) else "Inf"
    raise InputError(f"{where} holds {what} at channel {c}, row {read[0][0] + y}, column {read[1][0] + x}; {hint}")


# ---- pixel sizes ---------------------------------------------------------------------------
# One reading of a physical pixel size for every place one is given: the input's metadata
# (hirestile.io), --pixel-size / --model-pixel-size and a model sidecar's "pixel_size".
TO_MICROMETER = {**dict.fromkeys(("angstrom", "Å"), 1e-4), **dict.fromkeys(("nanometer", "nm"), 1e-3),
                 **dict.fromkeys(("micrometer", "micron", "um", "µm", "μm"), 1.0),
                 **dict.fromkeys(("millimeter", "mm"), 1e3), **dict.fromkeys(("centimeter", "cm"), 1e4),
                 **dict.fromkeys(("meter", "m"), 1e6), "inch": 25400.0}
TO_ARCSECOND = {**dict.fromkeys(("arcsecond", "arcsec", '"'), 1.0), **dict.fromkeys(("arcminute", "arcmin"), 60.0),
                **dict.fromkeys(("degree", "deg"), 3600.0), **dict.fromkeys(("milliarcsecond", "mas"), 1e-3)}


def unit_factor(unit: str | None) -> tuple[str, float] | None:
    """("micrometer" | "arcsecond", factor to it) for a length or angle unit name, else None.

    >>> unit_factor("nm"), unit_factor("arcmin"), unit_factor("parsec")
    (('micrometer', 0.001), ('arcsecond', 60.0), None)
    """
    u = (unit or "").strip()
    for canon, table in (("micrometer", TO_MICROMETER), ("arcsecond", TO_ARCSECOND)):
        f = table.get(u, table.get(u.lower()))
        if f is not None:
            return canon, f
    return None


def pixel_size_value(text: str | float, *, default_unit: str = "micrometer") -> tuple[tuple[float, float], str] | None:
    """``0.25`` / ``"0.25um"`` / ``"0.25x0.3um"`` / ``"0.4arcsec"`` -> ((rows, cols), unit) in
    micrometer or arcsecond (a number without unit is in ``default_unit``); None where it is not a
    positive finite size with a length or angle unit.

    >>> pixel_size_value("250nm"), pixel_size_value(0.5), pixel_size_value("-1um"), pixel_size_value("nan")
    (((0.25, 0.25), 'micrometer'), ((0.5, 0.5), 'micrometer'), None, None)
    """
    import re

    if isinstance(text, bool):
        return None
    m = re.fullmatch(r"\s*([0-9.eE+-]+)(?:\s*[x,]\s*([0-9.eE+-]+))?\s*([^\d\s][^\s]*)?\s*", str(text))
    try:
        vals = (float(m.group(1)), float(m.group(2) or m.group(1))) if m else ()
    except ValueError:
        vals = ()
    conv = unit_factor(m.group(3) if m and m.group(3) else default_unit) if vals else None
    if not vals or conv is None or not all(np.isfinite(v) and v > 0 for v in vals):
        return None
    canon, f = conv
    return (vals[0] * f, vals[1] * f), canon
