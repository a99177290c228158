"""Bundled example images, built from scikit-image's offline sample data.

``histology``: ``skimage.data.immunohistochemistry()`` (512 x 512 RGB, IHC
stained colon tissue), written as (3, H, W) uint8. ``astronomy``:
``skimage.data.hubble_deep_field()`` (872 x 1000 RGB) as single-channel uint8
luminance, written as (H, W), the 8-bit display form the ``unet-astro`` model
knows.

Larger sizes tile the sample by mirroring (so no seams appear), warp it gently
so the copies differ, and vary it smoothly across the image (stain strength per channel for histology, sky level
for astronomy), so a 40k x 40k example is not one patch repeated verbatim.
Pixels are a pure function of their global position, so the image is written
chunk by chunk and never held in memory.

Examples
--------
>>> ex = EXAMPLES["histology"]
>>> block = ex.pixels((0, 4), (510, 514))
>>> block.shape, block.dtype
((3, 4, 4), dtype('uint8'))
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from .errors import InputError
from .ome import write_image


def mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """Source index of global position ``i`` when a length-``n`` axis is tiled by mirroring."""
    m = np.mod(i, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _smooth(ys: np.ndarray, xs: np.ndarray, period: float, phase: float) -> np.ndarray:
    """A slow, position-only field in [-1, 1]."""
    return (np.sin(2 * np.pi * ys[:, None] / period + phase)
            * np.cos(2 * np.pi * xs[None, :] / (1.37 * period) + 2 * phase))


@dataclass(frozen=True)
class Example:
    """One example image family: how to load its sample and vary it."""

    name: str
    description: str
    default_size: int
    load: Callable[[], np.ndarray]
    vary: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

    @cached_property
    def sample(self) -> np.ndarray:
        return self.load()

    @property
    def channels(self) -> int | None:
        return self.sample.shape[0] if self.sample.ndim == 3 else None

    def pixels(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The example's pixels on a global region, (C, h, w) or (h, w), uint8."""
        s = self.sample
        h, w = s.shape[-2:]
        ys, xs = np.arange(*rows), np.arange(*cols)
        # a gentle smooth warp (slope < 0.4, so no folds) keeps mirrored copies from repeating exactly
        wy = ys[:, None] + 30 * np.sin(2 * np.pi * xs[None, :] / 731) + 20 * np.sin(2 * np.pi * ys[:, None] / 1130)
        wx = xs[None, :] + 30 * np.sin(2 * np.pi * ys[:, None] / 617) + 20 * np.cos(2 * np.pi * xs[None, :] / 977)
        iy = mirror_index(np.rint(wy).astype(np.int64), h)
        ix = mirror_index(np.rint(wx).astype(np.int64), w)
        return self.vary(s[..., iy, ix], ys, xs)


def _histology() -> np.ndarray:
    from skimage import data
    return np.ascontiguousarray(data.immunohistochemistry().transpose(2, 0, 1))


def _vary_histology(block: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    od = -np.log((block.astype(np.float32) + 1) / 256)                 # optical density
    for c in range(3):
        od[c] *= 1 + 0.18 * _smooth(ys, xs, 1700.0, 1.1 * c).astype(np.float32)
    return np.clip(256 * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)


def _astronomy() -> np.ndarray:
    from skimage import data
    rgb = data.hubble_deep_field().astype(np.float32)
    return (rgb @ np.float32([0.2125, 0.7154, 0.0721])).round().astype(np.uint8)


def _vary_astronomy(block: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    sky = 4.0 * (1 + _smooth(ys, xs, 2600.0, 0.4))
    return np.clip(block + sky, 0, 255).round().astype(np.uint8)


EXAMPLES = {
    "histology": Example("histology", "IHC-stained colon tissue (skimage immunohistochemistry), RGB uint8",
                         1024, _histology, _vary_histology),
    "astronomy": Example("astronomy", "Hubble deep field (skimage hubble_deep_field), grey uint8",
                         1024, _astronomy, _vary_astronomy),
}


def parse_size(text: str | int | None, default: int, *, option: str = "--size") -> tuple[int, int]:
    """``"4096"`` -> (4096, 4096); ``"3000x5000"`` -> (3000, 5000); errors name ``option``."""
    if text is None:
        return (default, default)
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise InputError(f"{option} {text!r} is not a positive size; give {option} HxW or {option} N, "
                         f"e.g. {option} 3000x5000 or {option} 4096")
    return (vals[0], vals[-1])


def write_example(name: str, path: str, *, size: str | int | None = None, pyramid: bool = True,
                  progress: bool | None = None) -> tuple[int, ...]:
    """Write example ``name`` to ``path`` as OME-Zarr 0.5; returns the stored shape.

    Examples
    --------
    >>> import tempfile, os, zarr
    >>> p = os.path.join(tempfile.mkdtemp(), "ex.zarr")
    >>> write_example("astronomy", p, size=300, progress=False)
    (300, 300)
    >>> zarr.open_group(p)["0"].dtype
    dtype('uint8')
    """
    ex = EXAMPLES.get(name)
    if ex is None:
        raise InputError(f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}")
    h, w = parse_size(size, ex.default_size)
    shape = ((ex.channels,) if ex.channels else ()) + (h, w)
    write_image(path, read=ex.pixels, shape=shape, dtype=np.dtype(np.uint8), name=f"{name} example",
                pyramid=pyramid, progress=progress, desc=f"example {name}")
    return shape


__all__ = ["EXAMPLES", "Example", "write_example", "parse_size", "mirror_index"]
