"""Training and held-out batches for the built-in models, from the generators.

Sample ``i`` of a stream with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``, so a stream is reproducible whatever the
batch size or the order it is consumed in. Held-out sets use seeds that the
training streams never use (``HELDOUT_SEED``).
"""
from __future__ import annotations

import numpy as np

from hirestile.models.registry import get_spec
from hirestile.models.training.synth_astro import STYLES, make_astro
from hirestile.models.training.synth_histo import make_histo

__all__ = ["sample", "batch", "heldout", "HELDOUT_SEED"]

HELDOUT_SEED = 987_654_321


def sample(name: str, seed: int, index: int, size: int, **kw) -> tuple[np.ndarray, np.ndarray, str]:
    """One (raw image as (C, H, W), bool mask (H, W), kind) sample for model ``name``."""
    rng = np.random.default_rng([seed, index])
    spec = get_spec(name)
    if spec.name == "unet":
        s = make_histo((size, size), rng=rng, **kw)
        return np.moveaxis(s.image, -1, 0), s.mask, s.mode
    s = make_astro((size, size), rng=rng, **kw)
    return s.image[None], s.mask, s.style


def batch(name: str, seed: int, start: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised float32 inputs (n, C, size, size) and int64 labels (n, size, size)."""
    contract = get_spec(name).contract
    xs, ys = [], []
    for i in range(start, start + n):
        raw, mask, _ = sample(name, seed, i, size)
        xs.append(contract.normalize(raw))
        ys.append(mask.astype(np.int64))
    return np.stack(xs), np.stack(ys)


def heldout(name: str, n: int = 48, size: int = 256) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A fixed held-out set: ``n`` raw samples of ``size`` pixels, kinds balanced."""
    spec = get_spec(name)
    kinds = ("he", "ihc") if spec.name == "unet" else STYLES
    key = "mode" if spec.name == "unet" else "style"
    return [sample(name, HELDOUT_SEED, i, size, **{key: kinds[i % len(kinds)]}) for i in range(n)]
