"""Full-frame UNet: hirestile vs PyTorch channels_last vs ONNX Runtime (megapixels/s, peak RSS).

Each (engine, base, size) run happens in its own child process so its peak RSS is
its own; the engines are interleaved round by round so drift on this machine hits
them alike, and the ratios are taken per round (median).

    python benchmarks/fullframe.py                  # base 16 and 32, 1024^2 and 2048^2
    python benchmarks/fullframe.py --sizes 512 --bases 16 --rounds 1   # quick look

``benchmarks/kernels.py`` calls :func:`main` for its full-frame section.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
engine, base, size, threads, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import torch
torch.set_num_threads(threads)
from hirestile.models.training.torch_unet import UNet
torch.manual_seed(0)
net = UNet(in_channels=3, classes=2, base=base, depth=4).eval()
with torch.no_grad():
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2); mod.running_var.uniform_(0.5, 2.0)
x = np.random.default_rng(0).random((3, size, size), np.float32)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if engine == "torch":
    net = net.to(memory_format=torch.channels_last)
    def run(a):
        with torch.no_grad():
            return net(torch.from_numpy(a)[None].contiguous(memory_format=torch.channels_last))[0].numpy()
elif engine == "onnxruntime":
    import onnxruntime as ort
    torch.onnx.export(net, torch.zeros(1, 3, 64, 64), path, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    def run(a):
        return sess.run(None, {"x": a[None]})[0][0]
else:
    import numba
    numba.set_num_threads(threads)
    import hirestile
    from hirestile.models.unet import unet
    sd = {k: v.numpy() for k, v in net.state_dict().items() if "num_batches" not in k}
    m = unet(in_channels=3, classes=2, base=base, depth=4, state=sd)
    def run(a):
        return hirestile.predict(m, a)
run(x[:, :64, :64])  # warm-up: compile / load
t0 = time.perf_counter(); c0 = time.process_time()
y = run(x)
wall = time.perf_counter() - t0; cpu = time.process_time() - c0
np.save(path + ".npy", y[:, ::97, ::89])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall": wall, "cpu_util": cpu / wall, "peak_mb": peak / 1024, "base_mb": rss0 / 1024}))
"""

ENGINES = ("hirestile", "torch", "onnxruntime")


def run_child(engine: str, base: int, size: int, threads: int, tmp: str) -> dict:
    path = os.path.join(tmp, f"{engine}_{base}_{size}.onnx")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", CHILD, engine, str(base), str(size), str(threads), path],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} base {base} {size}^2 failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["mps"] = size * size / 1e6 / res["wall"]
    res["sample"] = path + ".npy"
    return res


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--bases", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import numpy as np
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.bases:
            for size in args.sizes:
                per = {e: [] for e in ENGINES}
                for _ in range(args.rounds):
                    for e in ENGINES:
                        per[e].append(run_child(e, base, size, args.threads, tmp))
                ref = np.load(per["torch"][-1]["sample"])
                err = float(np.abs(np.load(per["hirestile"][-1]["sample"]) - ref).max() / np.abs(ref).max())
                med = {e: statistics.median(r["mps"] for r in per[e]) for e in ENGINES}
                ratio_t = statistics.median(h["mps"] / t["mps"] for h, t in zip(per["hirestile"], per["torch"]))
                ratio_o = statistics.median(h["mps"] / o["mps"] for h, o in zip(per["hirestile"], per["onnxruntime"]))
                row = dict(base=base, size=size, **{f"{e}_mps": med[e] for e in ENGINES},
                           **{f"{e}_peak_mb": max(r["peak_mb"] for r in per[e]) for e in ENGINES},
                           **{f"{e}_cpu": statistics.median(r["cpu_util"] for r in per[e]) for e in ENGINES},
                           vs_torch=ratio_t, vs_ort=ratio_o, rel_err=err)
                rows.append(row)
                print(f"UNet-{base} {size}^2: hirestile {med['hirestile']:.3f} MP/s "
                      f"(peak {row['hirestile_peak_mb']:.0f} MB, cpu {row['hirestile_cpu']:.2f}) | "
                      f"torch CL {med['torch']:.3f} MP/s (peak {row['torch_peak_mb']:.0f} MB, cpu {row['torch_cpu']:.2f}) | "
                      f"ORT {med['onnxruntime']:.3f} MP/s (peak {row['onnxruntime_peak_mb']:.0f} MB) | "
                      f"ratio vs torch {ratio_t:.2f}x, vs ORT {ratio_o:.2f}x | max err/max|ref| {err:.1e}",
                      flush=True)
    return rows


if __name__ == "__main__":
    main()
