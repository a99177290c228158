"""Moving values between HWC windows (private): the executor's concat.

Copies are exact, so nothing here touches the exactness contract; what matters is speed
(2 threads, 16-lane vectors) on the large full-resolution skips of a UNet, which NumPy's
strided copy moves one 64-byte pixel slice at a time on one thread.
"""

from __future__ import annotations

from numba import njit, prange

from ._common import flat
from ._conv_simd import vload, vstore


@njit(parallel=True, cache=True, nogil=True)
def _copy_channels(sf, sp, cs, df, dp, cd, c0, h, w):
    """dst[r, c, c0:c0 + cs] = src[r, c, :] for r < h, c < w; src: flat, rows sp pixels of cs
    channels apart; dst: flat, rows dp pixels of cd channels apart."""
    cv = cs - cs % 16
    for r in prange(h):
        s0 = r * sp * cs
        d0 = r * dp * cd + c0
        for c in range(w):
            s = s0 + c * cs
            d = d0 + c * cd
            for k in range(0, cv, 16):
                vstore(df, d + k, vload(sf, s + k))
            for k in range(cv, cs):
                df[d + k] = sf[s + k]


def copy_channels(src, dst, c0):
    """``dst[:, :, c0:c0 + C] = src`` for packed (h, w, C) / (h, w, Cd) float32 windows
    (``_common.packed``: C-contiguous, or windows of rows of wider buffers)."""
    h, w, cs = src.shape
    if h == 0 or w == 0 or cs == 0:
        return dst
    sf, sp = flat(src)
    df, dp = flat(dst)
    _copy_channels(sf, sp, cs, df, dp, dst.shape[2], c0, h, w)
    return dst
