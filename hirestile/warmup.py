"""Compile, or load from Numba's on-disk cache, the kernels a model runs: :func:`warmup`.

hirestile's kernels are Numba functions compiled on first use (``cache=True``):
the first run on a machine compiles them (about half a minute on 2 cores) and writes
them to Numba's cache; later runs load them in about a second. :func:`warmup`
does that on a small image before a timed run, so that the run's throughput is
not the compiler's, and says when it compiles (``hirestile segment`` calls it;
``hirestile warmup`` runs it ahead of time).

What a run compiles: Numba compiles one machine-code version per argument
*types* (dtype, dimensions, layout, read-only), never per size or value, and the
executor calls each kernel with C-contiguous float32 windows, the read-only
weights and Python scalars whatever the tile's size or position; the route a
convolution takes depends on its channels and kernel shape only. So a small
image, run tiled, calls every kernel a real run calls, with the same types
(and the parallel twins of kernels that pick a serial version for small work):
after it, segment runs of 1500 to 2048 px images (tiles of 512 to 2048 px,
streamed and overlap-tile, every output kind, uint8 / uint16 / float32 inputs,
both built-in models) compiled and loaded nothing more (tests/test_warmup.py
checks both kinds of run).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["COMPILING", "Warmup", "warmup"]

#: what :func:`warmup` says (through ``say``) when a kernel starts compiling
COMPILING = ("compiling kernels on first use (about half a minute on 2 cores; later runs load them from "
             "the cache)...")

# square sample sizes tried in turn: the first the model takes is used
_SIZES = (48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Warmup:
    """What :func:`warmup` did.

    Attributes
    ----------
    seconds : float
        Wall time of the warm-up (compiling or loading, and the small run).
    compiled : int
        Kernel versions compiled (Numba on-disk cache misses).
    loaded : int
        Kernel versions loaded from Numba's on-disk cache.
    saved : bool
        Every compiled kernel was written to the on-disk cache (False when no
        cache directory was writable: the next run compiles again).
    cache_dir : str or None
        Where Numba keeps them: ``__pycache__`` beside the kernels when writable,
        else ``$NUMBA_CACHE_DIR`` when set, else a per-user folder (~/.cache).
    """

    seconds: float
    compiled: int
    loaded: int
    saved: bool = True
    cache_dir: str | None = None

    def summary(self) -> str:
        """One line for a run summary, e.g. ``kernels: loaded from cache in 0.9 s``."""
        if self.compiled:
            later = ("first use; cached for later runs" if self.saved else
                     "NOT cached: no writable cache directory; set NUMBA_CACHE_DIR")
            return f"kernels: compiled in {self.seconds:.1f} s ({later})"
        if self.loaded:
            return f"kernels: loaded from cache in {self.seconds:.1f} s"
        return f"kernels: already loaded ({self.seconds:.1f} s)"


def _saved(dispatchers: list[Any]) -> bool:
    """Whether each dispatcher that compiled wrote an on-disk cache index."""
    for d in dispatchers:
        cache = getattr(d, "_cache", None)
        index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)   # numba internals
        if index is not None and not os.path.exists(index):
            return False
    return True


def _cache_dir() -> str | None:
    """Numba's cache folder for the kernels (all of them live in one source folder)."""
    from .kernels import pool

    return getattr(pool._pool._cache, "cache_path", None)


def _twins() -> None:
    """Compile (or load) the parallel twin of each serial kernel the sample run called: kernels
    that pick one of two compiled versions by the size of their work (``kernels._move``'s channel
    copy runs on the calling thread under ``PARALLEL_BYTES``, on all threads above) only ever
    call the serial one on the small sample image; a real run calls both, with the same types."""
    from .kernels import _move

    for sig in _move._copy_channels_here.signatures:
        _move._copy_channels.compile(sig)


def _sample(model: Any) -> tuple[np.ndarray, int | None]:
    """A small image the model takes and an output tile that cuts it into 3 x 3 tiles
    (None: the model is not tileable, run it full-frame as the scheduler does)."""
    from .api import analyze
    from .errors import InputError

    c = model.contract.channels
    for s in _SIZES:
        try:
            rep = analyze(model, (s, s))
        except (InputError, ArithmeticError):
            continue
        _, oh, ow = rep.output_shape
        tile = max(1, min(oh, ow) // 3) if rep.tileable else None
        return np.full((c, s, s), 128, np.uint8), tile
    raise InputError(f"model {model.name!r} takes none of the sample sizes {_SIZES[0]}..{_SIZES[-1]} px; "
                     "cannot warm it up")


def warmup(model: Any, *, say: Callable[[str], None] | None = None, precision: str = "fp32") -> Warmup:
    """Compile (first use) or load (from Numba's cache) every kernel ``model`` runs.

    Runs the model tiled on a small image (48 x 48 px for the built-in models),
    which calls each kernel with the argument types a real run uses, so a run
    started afterwards neither compiles nor loads anything.

    Parameters
    ----------
    model : Model or str
        A :class:`hirestile.model.Model`, a built-in name or a model file.
    say : callable, optional
        Receives :data:`COMPILING` once, when the first kernel starts compiling
        (not at all when every kernel is loaded from the cache or already loaded).
    precision : {"fp32", "bf16"}
        The kernels of this precision (bf16 mode runs other convolution kernels).

    Returns
    -------
    Warmup
        ``seconds``, ``compiled`` and ``loaded`` kernel versions, and
        ``summary()``: ``"kernels: compiled in 48.2 s (first use; cached for later
        runs)"`` or ``"kernels: loaded from cache in 0.9 s"``.

    Examples
    --------
    >>> from hirestile.models.unet import unet
    >>> from hirestile.warmup import warmup
    >>> w = warmup(unet(in_channels=1, classes=2, base=4, depth=2))
    >>> w = warmup(unet(in_channels=1, classes=2, base=4, depth=2))   # the same kernels again
    >>> w.compiled, w.loaded
    (0, 0)
    >>> w.summary().startswith("kernels: already loaded")
    True
    """
    from numba.core import event

    from .api import as_model, predict
    from .worker import worker_info

    t0 = time.perf_counter()
    m = as_model(model)
    x, tile = _sample(m)
    compiling: dict[int, Any] = {}              # the dispatchers that compile, by id

    class _Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            if not compiling and say is not None:
                say(COMPILING)
            d = (ev.data or {}).get("dispatcher")
            compiling[id(d)] = d

        def on_end(self, ev: Any) -> None:
            pass

    before = worker_info()
    with event.install_listener("numba:compile", _Listener()):
        predict(m, x, tile=tile, precision=precision)
        _twins()
    after = worker_info()
    compiled, loaded = after["compiled"] - before["compiled"], after["loaded"] - before["loaded"]
    return Warmup(seconds=time.perf_counter() - t0, compiled=compiled, loaded=loaded,
                  saved=_saved(list(compiling.values())), cache_dir=_cache_dir())
