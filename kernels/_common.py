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


def packed(a):
    """True when ``a`` is an (h, w, C) float32 array whose pixels and channels are packed
    (each ``a[r]`` contiguous) while its rows may lie further apart: C-contiguous, or a
    window ``buf[r0:r1, c0:c1]`` of a wider HWC buffer."""
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 3
            and a.strides[2] == 4 and a.strides[1] == 4 * a.shape[2]
            and (a.shape[0] < 2 or a.strides[0] >= a.strides[1] * a.shape[1]))


def as_window(x, name="x"):
    """``x`` as a float32 (h, w, C) array with packed pixels (see :func:`packed`): as it is
    when it already is one (a window of a wider buffer is read in place), else a
    C-contiguous copy. Raises ValueError for another dtype or number of dimensions."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 3:
        raise ValueError(f"{name} must be a float32 (h, w, C) array, got {x.dtype} {x.shape}")
    return x if packed(x) else np.ascontiguousarray(x)


def flat(a):
    """(flat 1-D view of the packed (h, w, C) array ``a`` from its first element, row pitch
    in pixels): element (r, c, ch) sits at ``r * pitch * C + c * C + ch``. The flat form
    lets one compiled kernel read and write C-contiguous arrays and windows of wider ones."""
    h, w, c = a.shape
    pitch = a.strides[0] // (4 * c) if h > 1 and c else w
    n = ((h - 1) * pitch + w) * c if h and w else 0
    return np.lib.stride_tricks.as_strided(a, (n,), (4,)), pitch


def out_array(out, shape, dtype=np.float32, window=False):
    """``out`` checked to be a C-contiguous ``dtype`` array of ``shape`` (with ``window``,
    also a packed window of a wider buffer, see :func:`packed`), or a new one."""
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype=dtype)
    ok = packed(out) if window else out.flags.c_contiguous if isinstance(out, np.ndarray) else False
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype or not ok:
        what = "float32 array (C-contiguous or a window of rows of a wider one)" if window else \
            f"C-contiguous {np.dtype(dtype).name} array"
        raise ValueError(f"out must be a {what} of shape {shape}, "
                         f"got {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
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
