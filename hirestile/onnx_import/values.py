"""What an ONNX value is while importing: a constant (a NumPy array), or one of the
classes here (shape value, image tensor, pending crop, half a GroupNorm, comparison,
poisoned output), and the exceptions by which handlers say they cannot map a node.
"""
from __future__ import annotations

from dataclasses import dataclass

from hirestile.errors import ModelError


@dataclass(eq=False)
class Sym:
    """Integers that depend on the image size: one array per probe (None where the probe died)."""

    vals: list
    sources: frozenset = frozenset()


@dataclass(eq=False)
class Act:
    """An image tensor: the hirestile tensor ``name``."""

    name: str


@dataclass(eq=False)
class Crop:
    """A pending slice of image tensor ``src``: channel bounds and, per spatial axis,
    per-probe (n, offset, size) triples, or None where the axis is not cut."""

    src: str
    base: str
    ch: tuple[int, int] | None
    axes: list
    sources: frozenset = frozenset()
    done: str | None = None


@dataclass(eq=False)
class Grouped:
    """An image tensor reshaped to (1, G, -1) (the first half of an exported GroupNorm)."""

    src: str
    groups: int
    node: str
    normed: tuple | None = None  # (scale, bias, eps) after InstanceNormalization


@dataclass(eq=False)
class Cmp:
    """``act > c`` / ``act < c`` (only consumed by the softplus-threshold ``Where``)."""

    act: str
    op: str
    value: float


@dataclass(eq=False)
class Poison:
    """The output of a node that could not be imported (already reported)."""


class _Unsupported(Exception):
    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class _NoSizeLeft(ModelError):
    """Every probe size died: the importer retries with probes at every residue."""


class _Reported(_Unsupported):
    """Unsupported, and already recorded against the node responsible."""


_IMAGE = (Act, Crop, Grouped, Cmp)
