"""The input contract a model declares: channels, normalisation and pad-to rule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Map a raw (C, h, w) block of any numeric dtype to the float32 the network takes.

        Pointwise and position-independent, so tiles and the whole image agree.
        """
        x = raw.astype(np.float32, copy=True)
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
