"""Synthetic astronomical images with exact source masks.

A scene is rendered in electrons: point sources (stars) through a Moffat or
Gaussian PSF, extended galaxies with Sersic profiles convolved with the same
PSF, a sky background with a gentle gradient, Poisson noise on sky + sources
and Gaussian read noise, and now and then a few cosmic-ray hits (which are
*not* sources). The ground truth is exact: a pixel is "source" where the
noise-free source flux exceeds ``k`` times the background noise,

    mask = sources > k * sigma

with ``sources`` the noise-free source image (sky excluded) and ``sigma`` the
background noise standard deviation, both in the linear units of the output.

The image then takes one of three forms real data come in:

``"float"``
    float32 fluxes, sky subtracted (mostly) or not; noise sigma spread
    log-uniformly over ``sigma_range`` (default 3e-4 .. 3e-2).
``"uint16"``
    raw integer ADU with a bias pedestal and the sky left in, noise 20 .. 650
    ADU (``unet-astro``'s contract divides by 65535: 3e-4 .. 1e-2).
``"display8"``
    an 8-bit display rendering (asinh stretch with a random black point and
    saturation, then optional JPEG), like the colour composites many public
    images are (scikit-image's ``hubble_deep_field``). The mask is still the
    linear one: a monotonic stretch does not move the k-sigma boundary.

Everything is drawn from one ``numpy.random.Generator``: the same seed gives
the same sample.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import gamma, gammaincinv

__all__ = ["AstroSample", "make_astro", "STYLES"]

STYLES = ("float", "uint16", "display8")
_STYLE_P = (0.4, 0.25, 0.35)


@dataclass(frozen=True)
class AstroSample:
    """One synthetic sky patch.

    Attributes
    ----------
    image : ndarray (H, W)
        What a telescope pipeline would hand over: float32, uint16 or uint8
        (see the module docstring for the styles).
    mask : ndarray of bool (H, W)
        ``sources > k * sigma``.
    sources : ndarray of float32 (H, W)
        Noise-free source flux, sky excluded, in the linear units of ``sigma``.
    sigma : float
        Background noise standard deviation (sky Poisson + read noise).
    k : float
        The detection threshold in units of ``sigma``.
    style : str
        ``"float"``, ``"uint16"`` or ``"display8"``.
    """

    image: np.ndarray
    mask: np.ndarray
    sources: np.ndarray
    sigma: float
    k: float
    style: str


def _loguniform(rng: np.random.Generator, lo: float, hi: float, size: int | None = None) -> np.ndarray | float:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _psf_kernel(rng: np.random.Generator, half: int = 48) -> tuple[np.ndarray, float]:
    """A normalised PSF stamp of size ``2 * half + 1`` and its FWHM in pixels.

    Moffat (70 %) or Gaussian, slightly elliptical, supersampled 3x, with the
    outer quarter of the stamp tapered to zero so that even the brightest star
    has no hard edge.
    """
    fwhm = float(_loguniform(rng, 1.4, 6.0))
    q = rng.uniform(0.85, 1.0)
    pa = rng.uniform(0, np.pi)
    sub = 3
    t = (np.arange((2 * half + 1) * sub) + 0.5) / sub - (half + 0.5)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    u = xx * np.cos(pa) + yy * np.sin(pa)
    v = (-xx * np.sin(pa) + yy * np.cos(pa)) / q
    r2 = u * u + v * v
    if rng.random() < 0.7:  # Moffat
        beta = rng.uniform(2.0, 5.0)
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        p = (1 + r2 / alpha**2) ** (-beta)
    else:  # Gaussian
        s = fwhm / 2.3548
        p = np.exp(-0.5 * r2 / s**2)
    p *= np.clip((half - np.sqrt(xx * xx + yy * yy)) / (0.25 * half), 0, 1) ** 2
    n = 2 * half + 1
    p = p.reshape(n, sub, n, sub).mean(axis=(1, 3))
    return (p / p.sum()).astype(np.float64), fwhm


def _sersic_stamp(flux: float, re: float, n: float, q: float, pa: float,
                  dy: float, dx: float, floor: float) -> np.ndarray:
    """A Sersic galaxy of total ``flux`` on a stamp centred at sub-pixel offset (dy, dx).

    The stamp reaches out to where the surface brightness drops below ``floor``
    (capped at 96 pixels), so no visible edge is cut off.
    """
    b = gammaincinv(2 * n, 0.5)
    ie = flux * b ** (2 * n) / (2 * np.pi * q * re * re * n * np.exp(b) * gamma(2 * n))
    reach = re * (1 + max(np.log(ie / floor), 0) / b) ** n if ie > floor else re
    half = int(min(np.ceil(reach + 3), 96))
    sub = 2
    t = (np.arange((2 * half + 1) * sub) + 0.5) / sub - (half + 0.5)
    yy, xx = np.meshgrid(t - dy, t - dx, indexing="ij")
    u = xx * np.cos(pa) + yy * np.sin(pa)
    v = (-xx * np.sin(pa) + yy * np.cos(pa)) / q
    r = np.sqrt(u * u + v * v)
    img = np.exp(-b * ((r / re) ** (1 / n) - 1))
    size = 2 * half + 1
    img = img.reshape(size, sub, size, sub).mean(axis=(1, 3))
    s = img.sum()
    return img * (flux / s) if s > 0 else img


def _add_stamp(canvas: np.ndarray, stamp: np.ndarray, cy: int, cx: int) -> None:
    """Add ``stamp`` centred at integer (cy, cx), clipped to the canvas."""
    h = stamp.shape[0] // 2
    y0, x0 = cy - h, cx - h
    y1, x1 = y0 + stamp.shape[0], x0 + stamp.shape[1]
    H, W = canvas.shape
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = stamp.shape[0] - max(0, y1 - H)
    sx1 = stamp.shape[1] - max(0, x1 - W)
    if sy1 <= sy0 or sx1 <= sx0:
        return
    canvas[max(0, y0):min(H, y1), max(0, x0):min(W, x1)] += stamp[sy0:sy1, sx0:sx1]


def _power_law(rng: np.random.Generator, lo: float, hi: float, slope: float, size: int) -> np.ndarray:
    """Draw ``size`` values from dN/dF ~ F**-(slope+1) between lo and hi (many faint, few bright)."""
    u = rng.random(size)
    a = -slope
    return (lo**a + u * (hi**a - lo**a)) ** (1 / a)


def _jpeg(img8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


def make_astro(
    shape: tuple[int, int] = (128, 128),
    *,
    rng: np.random.Generator | int | None = None,
    k: float = 1.5,
    style: str | None = None,
    sigma_range: tuple[float, float] = (3e-4, 3e-2),
) -> AstroSample:
    """Render one synthetic sky patch with its exact source mask.

    Parameters
    ----------
    shape : (int, int)
        Patch size in pixels.
    rng : Generator or int, optional
        Random generator or seed; the same seed gives the same sample.
    k : float
        Mask threshold in units of the background noise sigma.
    style : {"float", "uint16", "display8"}, optional
        Output form; drawn at random (40 / 25 / 35 %) when not given.
    sigma_range : (float, float)
        Range of the background noise for the ``"float"`` style, in output units.

    Returns
    -------
    AstroSample

    Examples
    --------
    >>> s = make_astro((64, 64), rng=0, style="float")
    >>> s.image.dtype, s.mask.shape, bool((s.mask == (s.sources > s.k * s.sigma)).all())
    (dtype('float32'), (64, 64), True)
    """
    rng = np.random.default_rng(rng)
    H, W = shape
    if style is None:
        style = str(rng.choice(STYLES, p=_STYLE_P))
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")

    # ---- noise model, in electrons
    sky_e = float(_loguniform(rng, 20, 5000))
    rn = float(rng.uniform(2, 10))
    sig_e = float(np.sqrt(sky_e + rn * rn))

    # ---- sources, in electrons (fluxes in units of sig_e); galaxies and stars
    # are laid down unconvolved, then one FFT convolution applies the PSF
    psf, fwhm = _psf_kernel(rng)
    margin = 32
    raw = np.zeros((H + 2 * margin, W + 2 * margin))
    area = raw.size / (128 * 128)
    n_gal = rng.poisson(float(_loguniform(rng, 5, 60)) * area)
    fluxes = _power_law(rng, 8.0, 1e5, rng.uniform(0.5, 1.0), n_gal) * sig_e
    for f in fluxes:
        re = float(_loguniform(rng, 0.6, 10.0)) * (1 + 2 * (f > 2000 * sig_e) * rng.random())
        n = float(rng.uniform(0.5, 4.0))
        q = float(rng.uniform(0.2, 1.0))
        pa = float(rng.uniform(0, np.pi))
        cy, cx = rng.uniform(0, raw.shape[0]), rng.uniform(0, raw.shape[1])
        iy, ix = int(cy), int(cx)
        _add_stamp(raw, _sersic_stamp(f, re, n, q, pa, cy - iy - 0.5, cx - ix - 0.5, 0.02 * sig_e), iy, ix)
    n_star = rng.poisson(float(_loguniform(rng, 1, 20)) * area)
    fluxes = _power_law(rng, 4.0, 1e5, rng.uniform(0.4, 0.9), n_star) * sig_e
    for f in fluxes:  # bilinear deposit of a point at a sub-pixel position
        cy, cx = rng.uniform(0, raw.shape[0] - 1), rng.uniform(0, raw.shape[1] - 1)
        iy, ix = int(cy), int(cx)
        fy, fx = cy - iy, cx - ix
        raw[iy:iy + 2, ix:ix + 2] += f * np.outer([1 - fy, fy], [1 - fx, fx])
    src = np.maximum(fftconvolve(raw, psf, mode="same"), 0)[margin:margin + H, margin:margin + W]

    # ---- sky with a gentle gradient, noise
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    grad = rng.normal(0, 0.02, 3)
    sky = sky_e * (1 + grad[0] * (yy - 0.5) + grad[1] * (xx - 0.5) + grad[2] * (yy - 0.5) * (xx - 0.5))
    counts = rng.poisson(np.maximum(sky + src, 0)).astype(np.float64) + rng.normal(0, rn, (H, W))
    if rng.random() < 0.3:  # cosmic-ray hits: sharp, not sources
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, H), rng.integers(0, W)
            length = int(rng.integers(1, 6))
            ang = rng.uniform(0, np.pi)
            amp = float(_loguniform(rng, 10, 500)) * sig_e
            for t in range(length):
                yy_, xx_ = int(y + t * np.sin(ang)), int(x + t * np.cos(ang))
                if 0 <= yy_ < H and 0 <= xx_ < W:
                    counts[yy_, xx_] += amp

    # ---- output form
    if style == "float":
        sigma = float(_loguniform(rng, *sigma_range))
        g = sigma / sig_e
        pedestal = 0.0 if rng.random() < 0.9 else sky_e
        image = ((counts - pedestal) * g).astype(np.float32)
        sources = src * g
    elif style == "uint16":
        sigma_adu = float(_loguniform(rng, 20, 650))
        gain = sig_e / sigma_adu  # electrons per ADU
        bias = float(rng.uniform(0, 2000))
        adu = np.clip(np.round(counts / gain + bias), 0, 65535)
        image = adu.astype(np.uint16)
        sigma = sigma_adu / 65535
        sources = src / gain / 65535
    else:  # display8: asinh stretch, black point, saturation, 8 bits, JPEG
        lin = (counts - sky) / sig_e  # sky-subtracted, in sigma units
        soft = float(_loguniform(rng, 1.0, 20.0))  # stretch softening in sigma units
        black = float(rng.uniform(-3.0, -0.5))  # black point in sigma units
        white = float(_loguniform(rng, 50, 1e4))  # saturation in sigma units
        f = lambda v: np.arcsinh((v - black) / soft)  # noqa: E731
        disp = np.clip(f(lin) / f(white), 0, 1) * 255
        img8 = np.round(disp).astype(np.uint8)
        if rng.random() < 0.6:
            img8 = _jpeg(img8, int(rng.integers(50, 96)))
        image = img8
        sigma = 1.0
        sources = src / sig_e
    sources = sources.astype(np.float32)
    mask = sources > np.float32(k * sigma)
    return AstroSample(image=image, mask=mask, sources=sources, sigma=float(sigma), k=float(k), style=style)
