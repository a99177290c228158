"""First use: ``hirestile.warmup`` compiles or loads the kernels before a timed run, says so, and
covers every kernel version the run needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hirestile.examples import write_example
from hirestile.warmup import COMPILING, Warmup

from clihelp import cli

COLD_TIMEOUT = 600        # a cold compile on a loaded 2-core runner


def cold_cli(*args, **kw) -> subprocess.CompletedProcess:
    """clihelp.cli with room for a compile from an empty cache."""
    return subprocess.run([sys.executable, "-m", "hirestile", *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=COLD_TIMEOUT, **kw)


def test_summary_lines():
    assert Warmup(48.24, compiled=44, loaded=0).summary() == \
        "kernels: compiled in 48.2 s (first use; cached for later runs)"
    assert Warmup(0.93, compiled=0, loaded=8).summary() == "kernels: loaded from cache in 0.9 s"
    assert "NOT cached" in Warmup(50.0, compiled=3, loaded=0, saved=False).summary()
    assert Warmup(0.01, compiled=0, loaded=0).summary().startswith("kernels: already loaded")


def relu_onnx(path) -> None:
    """A one-op network (3 channels in and out): one kernel to compile, in seconds."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "h", "w"]) for n in ("x", "y")]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", io[:1], io[1:])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_cli_says_compiling_on_first_use_only(tmp_path):
    """An empty Numba cache: segment says it compiles (stderr is a pipe, not a terminal) and
    reports the compile apart from the run; the second run loads the kernels silently."""
    relu_onnx(tmp_path / "tiny.onnx")
    write_example("histology", str(tmp_path / "slide.zarr"), size="96x80", progress=False)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    args = ("segment", "slide.zarr", "--model", "tiny.onnx", "-o", "out.zarr", "--overwrite")

    first = cold_cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    wrote = [i for i, ln in enumerate(lines) if ln.startswith("wrote out.zarr")]
    assert lines.count(f"hirestile: {COMPILING}") == 1 and wrote, first.stderr
    assert lines.index(f"hirestile: {COMPILING}") < wrote[0]              # said before the run, not after
    assert lines[-1].startswith("kernels: compiled in ") and lines[-1].endswith(
        "(first use; cached for later runs)"), first.stderr

    second = cli(*args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr, second.stderr
    assert second.stderr.splitlines()[-1].startswith("kernels: loaded from cache in "), second.stderr

    warm = cli("warmup", "--model", "tiny.onnx", cwd=tmp_path, env=env)
    assert warm.returncode == 0 and "compiling" not in warm.stderr, warm.stderr
    assert warm.stdout.startswith("tiny.onnx: kernels: loaded from cache in ")
    assert f"cache: {tmp_path / 'numba'}" in warm.stdout

    both = cold_cli("warmup", "--model", "tiny.onnx", "--precision", "fp32", "bf16", cwd=tmp_path, env=env)
    assert both.returncode == 0, both.stderr
    fp32, bf16 = both.stdout.splitlines()
    assert fp32.startswith("tiny.onnx (fp32): kernels: loaded from cache in "), both.stdout
    assert bf16.startswith("tiny.onnx (bf16): kernels: "), both.stdout     # bf16's rounding: compiled or loaded


def test_cli_warmup_builtin():
    r = cold_cli("warmup", "--model", "unet")        # the machine's own cache: compiles at most once
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("unet: kernels: ") and "Traceback" not in r.stderr
    bad = cli("warmup", "--model", "no-such-model")
    assert bad.returncode == 3 and bad.stderr.startswith("hirestile: error: ")


COVERS = """
import json, sys
from hirestile import load_model
from hirestile.scheduler import segment_to_zarr
from hirestile.warmup import warmup
from hirestile.worker import worker_info

def versions():   # kernel versions in memory, compiled here, loaded from the cache
    return {k: worker_info()[k] for k in ("signatures", "compiled", "loaded")}

m = load_model("unet")
warmup(m)
before = versions()
for stream in (True, False):       # bands down column strips, then overlap tiles
    segment_to_zarr(sys.argv[1], m, sys.argv[2], tile=256, progress=False, stream=stream, overwrite=True)
print(json.dumps([before, versions()]))
"""


def test_warmup_covers_a_real_run(tmp_path):
    """In a fresh process, after the warm-up on its 48 x 48 image, segment runs with interior
    and border tiles of 256 x 256 (streamed and overlap-tile) compile and load no kernel version:
    the warm-up covered them all (built-in unet: Winograd, dot and blocked convolutions,
    transposed convolution, pooling)."""
    write_example("histology", str(tmp_path / "slide.zarr"), size="600x700", progress=False)
    r = subprocess.run([sys.executable, "-c", COVERS, tmp_path / "slide.zarr", tmp_path / "out.zarr"],
                       capture_output=True, text=True, check=False, timeout=COLD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    before, after = json.loads(r.stdout)
    assert after == before
    assert before["signatures"] > 0 and before["compiled"] + before["loaded"] > 0
