"""Synthetic stained tissue with exact nucleus masks.

The scene is built in stain concentrations and turned into colour with the
Beer-Lambert law, the way brightfield microscopy forms an image:

    OD = H * h_vec + E * e_vec + D * d_vec,    RGB = illumination * 10 ** (-OD)

* **Nuclei**: ellipses with a wobbly outline (a few random Fourier modes),
  elongated ones in stroma-like areas, packed ones in epithelium-like clusters,
  small dark round ones (lymphocytes). Each nucleus has a smooth occupancy
  (1 inside, 0 outside, 0.5 on the outline); the hematoxylin it holds is its
  occupancy times its own darkness times a chromatin texture (granules,
  nucleoli, a darker rim for vesicular nuclei).
* **Background**: fibrous stroma texture, cytoplasm, empty lumen/glass; in
  ``"he"`` mode eosin dominates; in ``"ihc"`` mode a light hematoxylin
  counterstain plus DAB (brown) in epithelium-like regions with membranous
  lines between cells and, in some images, DAB-positive nuclei.
  Red blood cells (eosin-dense discs) are decoys: not nuclei.
* **Acquisition**: random stain vectors around scikit-image's H/E/DAB,
  illumination tint, Gaussian blur, sensor noise, 8-bit quantisation, JPEG.

The ground truth is exact: ``mask = occupancy > 0.5`` where ``occupancy`` is the
noise-free union (pointwise max) of the nuclei occupancies, before any blur.
Everything is drawn from one ``numpy.random.Generator``: the same seed gives
the same sample.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["HistoSample", "make_histo", "MODES", "STAINS"]

MODES = ("he", "ihc")

# Optical-density stain vectors (rows: hematoxylin, eosin, DAB), normalised; the
# same values scikit-image's rgb_from_hed uses.
STAINS = np.array([[0.65, 0.70, 0.29],
                   [0.07, 0.99, 0.11],
                   [0.27, 0.57, 0.78]])
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)


@dataclass(frozen=True)
class HistoSample:
    """One synthetic tissue patch.

    Attributes
    ----------
    image : ndarray of uint8 (H, W, 3)
        The RGB image (blurred, noisy, quantised, maybe JPEG-compressed).
    mask : ndarray of bool (H, W)
        ``occupancy > 0.5``: the exact nucleus pixels.
    occupancy : ndarray of float32 (H, W)
        Noise-free nucleus occupancy in [0, 1] (0.5 on each outline).
    clean : ndarray of float32 (H, W, 3)
        The noise-free RGB image in [0, 1] (before blur, noise and JPEG).
    mode : str
        ``"he"`` or ``"ihc"``.
    """

    image: np.ndarray
    mask: np.ndarray
    occupancy: np.ndarray
    clean: np.ndarray
    mode: str


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return n / (n.std() + 1e-12)


def _fibres(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Streaky, oriented texture (collagen fibres), unit standard deviation."""
    ang = rng.uniform(0, np.pi)
    long_, short = rng.uniform(4, 12), rng.uniform(0.6, 1.5)
    r = int(np.ceil(3 * long_))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    ker = np.exp(-0.5 * ((u / long_) ** 2 + (v / short) ** 2))
    from scipy.signal import fftconvolve

    big = rng.standard_normal((shape[0] + 2 * r, shape[1] + 2 * r))
    n = fftconvolve(big, ker, mode="valid")
    return n / (n.std() + 1e-12)


def _region(rng: np.random.Generator, shape: tuple[int, int], frac: float, scale: float) -> np.ndarray:
    """A smooth soft region map in [0, 1] covering about ``frac`` of the patch."""
    n = _smooth_noise(rng, shape, scale)
    thr = np.quantile(n, 1 - frac) if 0 < frac < 1 else (-np.inf if frac >= 1 else np.inf)
    return np.clip((n - thr) * 3 + 0.5, 0, 1)


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int], epi: np.ndarray,
                  tissue: np.ndarray) -> list[tuple[float, float, float, float, float, int]]:
    """Centres and shapes (cy, cx, a, b, angle, kind) of the nuclei; kind 0 stroma, 1 epithelium, 2 lymphocyte.

    Epithelial nuclei mostly follow a smooth orientation field (palisading).
    """
    H, W = shape
    size = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))  # magnification jitter
    density = float(np.exp(rng.uniform(np.log(0.03), 0.0)))
    out: list[tuple[float, float, float, float, float, int]] = []
    centres: list[tuple[float, float, float]] = []
    tries = int(600 * density * H * W / (128 * 128))
    vy, vx = _smooth_noise(rng, shape, 20.0), _smooth_noise(rng, shape, 20.0)
    orient = np.arctan2(vy, vx)
    aligned = rng.random() < 0.6
    for _ in range(tries):
        cy, cx = rng.uniform(-8, H + 8), rng.uniform(-8, W + 8)
        iy, ix = int(np.clip(cy, 0, H - 1)), int(np.clip(cx, 0, W - 1))
        if rng.random() > tissue[iy, ix]:
            continue
        e = epi[iy, ix]
        u = rng.random()
        if u < 0.12:  # lymphocyte: small, round, dark
            kind, a = 2, rng.uniform(2.5, 4.0) * size
            b = a * rng.uniform(0.8, 1.0)
        elif rng.random() < e:  # epithelial: larger, oval, packed
            kind, a = 1, rng.uniform(4.5, 11.0) * size
            b = a * rng.uniform(0.35, 0.9)
        else:  # stromal: elongated, sparse
            if rng.random() < 0.6:
                continue
            kind, a = 0, rng.uniform(4.0, 10.0) * size
            b = a * rng.uniform(0.2, 0.55)
        # keep nuclei mostly apart (some touching / slight overlap allowed)
        r_eff = 0.5 * (a + b)
        ok = True
        for (py, px, pr) in centres:
            if (py - cy) ** 2 + (px - cx) ** 2 < (0.85 * (pr + r_eff)) ** 2:
                ok = False
                break
        if not ok:
            continue
        centres.append((cy, cx, r_eff))
        ang = orient[iy, ix] + rng.normal(0, 0.25) if (kind == 1 and aligned) else rng.uniform(0, np.pi)
        out.append((cy, cx, a, b, ang, kind))
    return out


def _jpeg(rgb8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def make_histo(
    shape: tuple[int, int] = (128, 128),
    *,
    rng: np.random.Generator | int | None = None,
    mode: str | None = None,
) -> HistoSample:
    """Render one synthetic stained tissue patch with its exact nucleus mask.

    Parameters
    ----------
    shape : (int, int)
        Patch size in pixels (about 0.25 - 0.6 um per pixel).
    rng : Generator or int, optional
        Random generator or seed; the same seed gives the same sample.
    mode : {"he", "ihc"}, optional
        H&E or immunohistochemistry (DAB + hematoxylin); drawn at random when
        not given.

    Returns
    -------
    HistoSample

    Examples
    --------
    >>> s = make_histo((64, 64), rng=0)
    >>> s.image.dtype, s.image.shape, bool((s.mask == (s.occupancy > 0.5)).all())
    (dtype('uint8'), (64, 64, 3), True)
    """
    rng = np.random.default_rng(rng)
    H, W = shape
    if mode is None:
        mode = str(rng.choice(MODES))
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    # ---- layout: tissue vs empty glass/lumen, epithelium vs stroma
    tissue = _region(rng, shape, rng.uniform(0.75, 1.0), rng.uniform(8, 20))
    epi_frac = rng.uniform(0.0, 0.8) if mode == "he" else rng.uniform(0.2, 0.95)
    epi = _region(rng, shape, epi_frac, rng.uniform(10, 25)) * tissue
    nuclei = _place_nuclei(rng, shape, epi, tissue)

    # ---- nuclei: occupancy and hematoxylin content
    occ = np.zeros(shape)
    nuc_h = np.zeros(shape)
    nuc_d = np.zeros(shape)
    edge = rng.uniform(0.6, 2.0)  # outline softness, pixels
    pale_epi = rng.random() < (0.6 if mode == "ihc" else 0.25)  # pale epithelial nuclei (vesicular)
    h_lo, h_hi = sorted(rng.uniform(0.25, 1.4, 2))
    dab_pos = rng.uniform(0.2, 0.9) if (mode == "ihc" and rng.random() < 0.25) else 0.0
    grain = _smooth_noise(rng, shape, rng.uniform(0.6, 1.4))
    for cy, cx, a, b, ang, kind in nuclei:
        r = int(np.ceil(a * 1.35 + 3))
        y0, y1 = max(0, int(cy) - r), min(H, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(W, int(cx) + r + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        theta = np.arctan2(v / b, u / a)
        wob = np.ones_like(theta)
        for m in range(2, 6):
            wob += rng.normal(0, 0.045 / (m - 1) ** 0.5) * np.cos(m * theta + rng.uniform(0, 2 * np.pi))
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wob  # 1 on the outline
        o = np.clip((1 - rho) * b / edge + 0.5, 0, 1)
        dark = rng.uniform(h_lo, h_hi) * (1.6 if kind == 2 else 1.0)
        if kind == 1 and pale_epi:
            dark *= rng.uniform(0.3, 0.8)
        tex = 1 + rng.uniform(0.1, 0.45) * grain[y0:y1, x0:x1]
        if rng.random() < 0.35:  # vesicular: pale centre, dark rim
            tex *= 0.55 + 0.8 * np.clip(rho, 0, 1) ** 3
        if rng.random() < 0.3:  # a nucleolus
            ny, nx = rng.normal(0, 0.25 * b, 2)
            tex += 1.2 * np.exp(-0.5 * ((dy - ny) ** 2 + (dx - nx) ** 2) / (0.18 * b + 0.5) ** 2)
        h = o * dark * np.clip(tex, 0.2, None)
        occ[y0:y1, x0:x1] = np.maximum(occ[y0:y1, x0:x1], o)
        nuc_h[y0:y1, x0:x1] = np.maximum(nuc_h[y0:y1, x0:x1], h)
        if dab_pos and rng.random() < dab_pos:
            nuc_d[y0:y1, x0:x1] = np.maximum(nuc_d[y0:y1, x0:x1], o * rng.uniform(0.3, 1.0))

    # ---- background stains
    fib = _fibres(rng, shape)
    cyto = _smooth_noise(rng, shape, rng.uniform(1.0, 3.0))
    if len(nuclei) >= 2:  # cell membranes: lines halfway between neighbouring nuclei
        tree = cKDTree(np.array([(n[0], n[1]) for n in nuclei]))
        pts = np.stack(np.mgrid[0:H, 0:W], -1).reshape(-1, 2) + 0.5
        d, _ = tree.query(pts, k=2)
        membrane = np.exp(-0.5 * ((d[:, 1] - d[:, 0]) / rng.uniform(0.8, 1.8)) ** 2).reshape(shape)
    else:
        membrane = np.zeros(shape)
    stroma = tissue * (1 - epi)
    rbc = np.zeros(shape)
    if rng.random() < 0.4:  # red blood cells: eosin-dense discs, not nuclei
        for _ in range(rng.integers(1, 15)):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            rr = rng.uniform(2.5, 4.0)
            yy, xx = np.mgrid[0:H, 0:W] + 0.5
            rbc = np.maximum(rbc, np.clip((rr - np.hypot(yy - cy, xx - cx)) / 0.8 + 0.5, 0, 1))
        rbc *= 1 - occ
    if mode == "he":
        e_lvl = rng.uniform(0.15, 0.7)
        E = e_lvl * (stroma * np.clip(1 + 0.35 * fib, 0.1, None) + epi * np.clip(0.8 + 0.2 * cyto, 0.1, None))
        E += rbc * rng.uniform(0.8, 1.6)
        Hc = rng.uniform(0.02, 0.15) * tissue * np.clip(1 + 0.3 * cyto, 0, None)
        D = np.zeros(shape)
    else:
        E = rng.uniform(0.0, 0.06) * tissue + rbc * rng.uniform(0.3, 0.8)
        Hc = rng.uniform(0.03, 0.14) * tissue * np.clip(1 + 0.35 * fib, 0, None)
        d_lvl = rng.uniform(0.2, 1.0) if rng.random() < 0.85 else 0.0
        D = d_lvl * epi * np.clip(0.75 + 0.25 * cyto + rng.uniform(0.3, 1.0) * membrane, 0, None)
        D += rng.uniform(0.0, 0.08) * stroma * np.clip(1 + 0.5 * fib, 0, None)
        D *= 1 - rng.uniform(0.35, 0.95) * occ  # cytoplasmic / membranous DAB mostly spares the nucleus
        D += nuc_d
    Hfield = Hc * (1 - occ) + nuc_h
    stains = STAINS + rng.normal(0, 0.05, STAINS.shape)
    stains = np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True)
    od = (Hfield[..., None] * stains[0] + E[..., None] * stains[1] + D[..., None] * stains[2]) * rng.uniform(0.8, 1.3)
    illum = rng.uniform(0.86, 1.0) * (1 + rng.normal(0, 0.02, 3))
    clean = np.clip(illum * 10.0 ** (-od), 0, 1)

    # ---- acquisition
    img = clean
    sigma_blur = rng.uniform(0, 1.4) if rng.random() < 0.8 else 0.0
    if sigma_blur > 0.05:
        img = ndi.gaussian_filter(img, (sigma_blur, sigma_blur, 0))
    img = img + rng.normal(0, rng.uniform(0.0, 0.025), img.shape)
    gamma = np.exp(rng.normal(0, 0.12))
    img = np.clip(img, 0, 1) ** gamma
    img8 = np.round(img * 255).astype(np.uint8)
    if rng.random() < 0.7:
        img8 = _jpeg(img8, int(rng.integers(40, 96)))
    occupancy = occ.astype(np.float32)
    return HistoSample(image=img8, mask=occupancy > 0.5, occupancy=occupancy,
                       clean=clean.astype(np.float32), mode=mode)
