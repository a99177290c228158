"""Moving values between HWC windows (private): the executor's concat.

Copies are exact, so nothing here touches the exactness contract; what matters is speed
(2 threads, 16-lane vectors) on the large full-resolution skips of a UNet, which NumPy's
strided copy moves one 64-byte pixel slice at a time on one thread.
"""

from __future__ import annotations

from numba import njit, prange

from ._common import flat
from ._conv_simd import sfence, vload, vstore, vstore_nt


@njit(parallel=True, cache=True, nogil=True)
def _copy_channels(sf, sp, cs, df, dp, cd, c0, h, w, nt):
    """dst[r, c, c0:c0 + cs] = src[r, c, :] for r < h, c < w; src: flat, rows sp pixels of cs
    channels apart; dst: flat, rows dp pixels of cd channels apart. ``nt``: whole 64-byte
    lines (the caller checked the alignment) written with non-temporal stores."""
    cv = cs - cs % 16
    for r in prange(h):
        s0 = r * sp * cs
        d0 = r * dp * cd + c0
        for c in range(w):
            s = s0 + c * cs
            d = d0 + c * cd
            if nt:
                for k in range(0, cv, 16):
                    vstore_nt(df, d + k, vload(sf, s + k))
            else:
                for k in range(0, cv, 16):
                    vstore(df, d + k, vload(sf, s + k))
            for k in range(cv, cs):
                df[d + k] = sf[s + k]
        if nt:
            sfence()


# outputs from this size on are written with non-temporal stores: they would not stay in the
# caches anyway (L3 is 32 MiB per Zen 4 CCD), and a normal store first reads the line it
# overwrites (read for ownership). 64 MiB measured better than 16 MiB (whole UNet-16 at
# 2048^2, CPU time 2.17-2.24 s vs 2.23-2.28 s, 2-core Zen 4)
NT_BYTES = 64 << 20


def streaming(dst, c0=0, cs=None):
    """True when the vector stores of ``c0 .. c0 + cs`` channels of every pixel of the packed
    window ``dst`` fall on whole 64-byte lines and ``dst`` is at least ``NT_BYTES``: the
    kernels may then write them non-temporally."""
    h, w, cd = dst.shape
    cs = cd - c0 if cs is None else cs
    return bool(h * w * cd * 4 >= NT_BYTES and dst.ctypes.data % 64 == 0 and cd % 16 == 0
                and c0 % 16 == 0 and cs % 16 == 0)


def copy_channels(src, dst, c0):
    """``dst[:, :, c0:c0 + C] = src`` for packed (h, w, C) / (h, w, Cd) float32 windows
    (``_common.packed``: C-contiguous, or windows of rows of wider buffers)."""
    h, w, cs = src.shape
    if h == 0 or w == 0 or cs == 0:
        return dst
    sf, sp = flat(src)
    df, dp = flat(dst)
    _copy_channels(sf, sp, cs, df, dp, dst.shape[2], c0, h, w, streaming(dst, c0, cs))
    return dst
