"""Cold start (issue 13): the first run compiles each kernel once, not once per call site.

Numba compiles one machine-code version per argument *types*, and a literal constant passed
from one kernel to another (``0``, or a loop counter that starts at 0), or a read-only array
where another call passes a writable one, is a type of its own: the register-blocked
micro-kernels, seconds of compiling each, were compiled 28 times for the built-in unet instead
of 6. A fresh process with an empty cache runs every convolution route that shares them, with
writable and read-only weights and biases, and counts the versions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROUTES = r"""
import json, sys
import numpy as np
from numba.core.registry import CPUDispatcher
from hirestile.kernels import bf16, conv

rng = np.random.default_rng(0)
def arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)

def ro(a):
    a = a.copy()
    a.setflags(write=False)
    return a

for make in (lambda a: a, ro):                                  # writable, then read-only weights
    for ci, co in ((3, 16), (3, 20), (32, 32), (16, 64)):       # blocked (2), wino4 (2)
        conv.conv2d(arr(13, 12, ci), make(arr(3, 3, ci, co)), make(arr(co)), act=1)
    conv.conv_transpose2d(arr(5, 6, 32), make(arr(2, 2, 32, 16)), make(arr(16)), stride=2)   # paired
    conv.conv_transpose2d(arr(5, 6, 32), make(arr(1, 1, 32, 16)), make(arr(16)), stride=2)   # blocked
    bf16.conv2d(arr(13, 12, 3), make(arr(3, 3, 3, 16)), make(arr(16)), act=1)   # bf16 pairs
    bf16.conv2d(arr(13, 12, 3), make(arr(3, 3, 3, 20)), make(arr(20)), act=1)
    bf16.conv2d(arr(13, 12, 32), make(arr(3, 3, 32, 32)), make(arr(32)), act=1)  # bf16 wino2
    bf16.conv_transpose2d(arr(5, 6, 32), make(arr(2, 2, 32, 16)), make(arr(16)), stride=2, out_shape=(10, 12))
    bf16.round_bf16(make(arr(40)))
versions = {}
for name, mod in list(sys.modules.items()):
    if name.startswith("hirestile.kernels"):
        for k, v in vars(mod).items():
            if isinstance(v, CPUDispatcher) and v.signatures:
                versions[v.py_func.__module__.rsplit(".", 1)[1] + "." + k] = [str(s) for s in v.signatures]
print(json.dumps(versions))
"""


def test_each_kernel_compiles_once(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_OPT": "0"}   # types, not speed
    r = subprocess.run([sys.executable, "-c", ROUTES], capture_output=True, text=True, check=False,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    versions = json.loads(r.stdout)
    assert {"_conv_mk.g6x4", "_conv_mk.d8x1", "_conv_blocked._row", "_conv_wino._gemm"} <= set(versions)
    twice = {k: v for k, v in versions.items() if len(v) > 1}
    assert not twice, json.dumps(twice, indent=1)
