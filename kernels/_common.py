"""Argument checks shared by the kernel modules (private).

Every public kernel takes float32 arrays, optional ``out`` buffers and
``int or (int, int)`` window attributes; these helpers check them the same
way everywhere.
"""

from __future__ import annotations

import numpy as np


def as_f32(x, name="x", ndim=None):
    """``x`` as a C-contiguous float32 array (no copy when it already is one).

    Raises ValueError for another dtype, or for another number of dimensions
    than ``ndim`` (3 means an HWC image).
    """
    x = np.asarray(x)
    if x.dtype != np.float32 or (ndim is not None and x.ndim != ndim):
        what = "a float32 (h, w, C) array" if ndim == 3 else "float32"
        raise ValueError(f"{name} must be {what}, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def out_array(out, shape, dtype=np.float32):
    """``out`` checked to be a C-contiguous ``dtype`` array of ``shape``, or a new one."""
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype \
            or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    return out


def pair(v, name="value"):
    """``int or (int, int)`` as a pair of positive ints."""
    if isinstance(v, (int, np.integer)):
        v = (v, v)
    a, b = int(v[0]), int(v[1])
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return a, b


def valid_size(n, k, s, d):
    """Outputs of a valid sliding window (kernel k, stride s, dilation d) over n inputs."""
    span = n - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else 0
