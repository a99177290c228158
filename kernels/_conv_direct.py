"""General direct convolution kernels (private; see :mod:`hirestile.kernels.conv`).

Every route here sums one output element in the same fixed order, wherever
the element sits in the window and however many threads run:

    acc = 0;  for ky: for kx: for ci (of the element's group): acc += x * w
    y = act(acc + bias)

Vectorisation is over output channels (and, by blocking, over independent
output pixels), never across one element's sum, so no remainder path can
reorder it.  ``fastmath={"contract"}`` lets LLVM fuse ``acc + x * w`` into one
FMA; it does so for every element alike (the fusion is decided per
instruction pair, and the pair is the same for every pixel).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FM = {"contract"}
PB = 8  # output pixels per register/L1 block of the generic direct route


@njit(inline="always")
def _act(v, act, alpha):
    if act == 1:
        return v if v > 0.0 else np.float32(0.0)
    if act == 2:
        return v if v >= 0.0 else v * alpha
    return v


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv2d_direct(x, w, bias, out, sy, sx, dy, dx, groups, act, alpha):
    """Generic direct conv: any kernel, stride, dilation, groups."""
    Ho, Wo, Co = out.shape
    kh, kw, cig, _ = w.shape
    cog = Co // groups
    nblk = (Wo + PB - 1) // PB
    alpha32 = np.float32(alpha)
    for r in prange(Ho):
        acc = np.empty((PB, Co), np.float32)
        for b in range(nblk):
            c0 = b * PB
            nb = min(PB, Wo - c0)
            acc[:, :] = 0.0
            for ky in range(kh):
                iy = r * sy + ky * dy
                for kx in range(kw):
                    for g in range(groups):
                        for ci in range(cig):
                            cc = g * cig + ci
                            for p in range(nb):
                                a = x[iy, (c0 + p) * sx + kx * dx, cc]
                                for j in range(cog):
                                    acc[p, g * cog + j] += a * w[ky, kx, ci, g * cog + j]
            for p in range(nb):
                for co in range(Co):
                    out[r, c0 + p, co] = _act(acc[p, co] + bias[co], act, alpha32)
    return out


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv2d_depthwise(x, w, bias, out, sy, sx, dy, dx, act, alpha):
    """Depthwise conv (groups == Ci, Co = m * Ci): vectorised over channels.

    Output channel co reads input channel co // m; one term per (ky, kx), in
    the same order as :func:`conv2d_direct`.
    """
    Ho, Wo, Co = out.shape
    kh, kw, _, _ = w.shape
    m = Co // x.shape[2]
    alpha32 = np.float32(alpha)
    for r in prange(Ho):
        acc = np.empty(Co, np.float32)
        for c in range(Wo):
            acc[:] = 0.0
            for ky in range(kh):
                iy = r * sy + ky * dy
                for kx in range(kw):
                    ix = c * sx + kx * dx
                    if m == 1:
                        for co in range(Co):
                            acc[co] += x[iy, ix, co] * w[ky, kx, 0, co]
                    else:
                        for co in range(Co):
                            acc[co] += x[iy, ix, co // m] * w[ky, kx, 0, co]
            for co in range(Co):
                out[r, c, co] = _act(acc[co] + bias[co], act, alpha32)
    return out


@njit(parallel=True, cache=True, nogil=True, fastmath=FM)
def conv_transpose2d_direct(x, w, bias, out, sy, sx, dy, dx, groups, ty, tx, act, alpha):
    """Transposed conv as a gather: out[r, c] sums x[iy, ix] @ w[ky, kx] over
    every (ky, kx) with r + ty - dy*ky = sy*iy, iy in [0, Hi) (same for columns).

    Order per element: ky, kx, ci ascending, then + bias, then activation.
    """
    Ho, Wo, Co = out.shape
    Hi, Wi, Ci = x.shape
    kh, kw, _, cog = w.shape
    cig = Ci // groups
    alpha32 = np.float32(alpha)
    for r in prange(Ho):
        acc = np.empty(Co, np.float32)
        for c in range(Wo):
            acc[:] = 0.0
            for ky in range(kh):
                t = r + ty - dy * ky
                if t < 0 or t % sy != 0:
                    continue
                iy = t // sy
                if iy >= Hi:
                    continue
                for kx in range(kw):
                    u = c + tx - dx * kx
                    if u < 0 or u % sx != 0:
                        continue
                    ix = u // sx
                    if ix >= Wi:
                        continue
                    for g in range(groups):
                        for ci in range(cig):
                            cc = g * cig + ci
                            a = x[iy, ix, cc]
                            for j in range(cog):
                                acc[g * cog + j] += a * w[ky, kx, cc, j]
            for co in range(Co):
                out[r, c, co] = _act(acc[co] + bias[co], act, alpha32)
    return out
