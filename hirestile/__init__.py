"""hirestile: exact tiled inference of convolutional segmentation networks.

>>> import hirestile
>>> m = hirestile.load_model("net.onnx")            # doctest: +SKIP
>>> y = hirestile.predict(m, x)                      # doctest: +SKIP
>>> y2 = hirestile.predict(m, x, tile=(256, 256))    # doctest: +SKIP
"""
import os as _os

import numba as _numba

# Parallel kernels may be called from several threads (Dask, the scheduler's
# pools); numba's default workqueue layer aborts then, so ask for a thread-safe one.
if "NUMBA_THREADING_LAYER" not in _os.environ:
    _numba.config.THREADING_LAYER = "threadsafe"

from hirestile.api import analyze, from_torch, load_model, predict, tile_memory  # noqa: E402
from hirestile.errors import HirestileError, InputError, ModelError, NotTileableError, OutputError  # noqa: E402
from hirestile.dask_api import instances, measure, segment  # noqa: E402

__all__ = ["analyze", "from_torch", "load_model", "predict", "tile_memory", "segment", "instances", "measure", "HirestileError",
           "InputError", "ModelError", "NotTileableError", "OutputError"]
from hirestile.version import __version__  # noqa: E402,F401  (hirestile.__version__)
