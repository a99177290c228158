"""Streaming (bands down column strips) vs overlap-tile ``hirestile segment``, zarr -> zarr.

Issue 12 (a): the same job run both ways with the same kernels, interleaved round by round so
drift on a shared machine hits both alike. Each run is its own process, so its peak RSS is its
own; the plan's expected peak (``hirestile plan``'s figure) is printed beside it.

    python benchmarks/pipeline.py                          # UNet-16 and UNet-32 at 8192^2
    python benchmarks/pipeline.py --sizes 4096 --bases 16 --rounds 1     # a quick look
    python benchmarks/pipeline.py --sizes 8192,16384 --rounds 2
    python benchmarks/pipeline.py --huge                   # (d) 40960^2 x 3, UNet-16, default mode only

Random-weight UNets (hirestile.models.unet: BN, ReLU, max-pool, 2x2 transposed conv, depth 4)
on the synthetic histology slide (``hirestile example histology``). Prints per run: tile (band x
strip when streamed), compute redundancy (computed / needed FLOPs), wall, MP/s, peak RSS and the
plan's expected peak, then per configuration the median streaming / overlap-tile throughput
ratio (target >= 1.15) and the streamed redundancy (target <= 1.03).

``--peers`` adds, in the same rounds, (b) OpenVINO (f32 hint) and ONNX Runtime full-frame on a
2048^2 image in RAM (their best case: no I/O; ``fullframe.py``'s children, same architecture),
printed as end-to-end hirestile throughput over theirs, and (c) MONAI's sliding window
(roi 512, overlap 0.25, gaussian blending) with ONNX Runtime as its predictor over the same
slide, zarr -> zarr, with its wall time, peak RSS and, on a 2048^2 crop, how far its blended
output is from the network's full-frame output (which hirestile's equals to float32 rounding):
max |logit| error, pixels with a logit off by more than 1e-4, labels that differ.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    """One segment job in this process; its statistics and the plan's memory figure as JSON."""
    from hirestile.models.unet import unet
    from hirestile.scheduler import segment_to_zarr
    from hirestile.stream import keep_freed_memory

    keep_freed_memory()     # before the random init's temporaries, as `hirestile segment` does before its run
    model = unet(in_channels=3, classes=2, base=args.base, depth=4, seed=0, name=f"unet{args.base}")
    stream = {"stream": True, "tile": False, "default": None}[args.mode]
    stats = segment_to_zarr(args.input, model, args.output, overwrite=True, progress=False, stream=stream)
    res = {k: getattr(stats, k) for k in ("wall", "compute", "read", "write", "peak_rss", "out_pixels",
                                          "compute_redundancy", "read_redundancy", "tile", "stream")}
    res["planned"] = stats.planned_rss      # the run's own plan (hirestile plan's figure for its input)
    print(json.dumps(res))


MONAI = r"""
import json, resource, sys, time
import numpy as np, torch, zarr
src, out, base, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(2)
from hirestile.models.training.torch_unet import UNet
torch.manual_seed(0)
net = UNet(in_channels=3, classes=2, base=base, depth=4).eval()
torch.onnx.export(net, torch.zeros(1, 3, 64, 64), path, opset_version=17, dynamo=False, input_names=["x"],
                  output_names=["y"], dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
import onnxruntime as ort
from monai.inferers import sliding_window_inference
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
predictor = lambda t: torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])
def window(x):
    with torch.no_grad():
        return sliding_window_inference(torch.from_numpy(x)[None], roi_size=(512, 512), sw_batch_size=1,
                                        predictor=predictor, overlap=0.25, mode="gaussian")[0].numpy()
t0 = time.perf_counter()
a = zarr.open(src, mode="r")
a = a["0"] if isinstance(a, zarr.Group) else a
x = a[...].astype(np.float32) / 255.0            # (3, H, W) uint8, as hirestile's contract scales it
y = window(x)
z = zarr.create_array(out, shape=y.shape, chunks=(y.shape[0], 256, 256), dtype="float16", overwrite=True)
z[...] = torch.softmax(torch.from_numpy(y), 0).numpy().astype(np.float16)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
crop = np.ascontiguousarray(x[:, :2048, :2048])
full = sess.run(None, {"x": crop[None]})[0][0]
blend = window(crop)
print(json.dumps({"wall": wall, "peak_rss": peak, "pixels": int(y.shape[1] * y.shape[2]),
                  "err": float(np.abs(blend - full).max() / np.abs(full).max()),
                  "differ": float((np.abs(blend - full) > 1e-4).any(0).mean()),
                  "labels_differ": float((blend.argmax(0) != full.argmax(0)).mean())}))
"""


def peers(src: str, n: int, base: int, workdir: str) -> dict[str, dict]:
    """(b) OpenVINO f32 and ONNX Runtime full-frame on 2048^2 in RAM; (c) MONAI over the slide."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fullframe import run_child
    got = {e: run_child(e, base, 2048, 2, workdir) for e in ("ov32", "onnxruntime")}
    res = subprocess.run([sys.executable, "-c", MONAI, src, os.path.join(workdir, f"monai-{n}-{base}.zarr"),
                          str(base), os.path.join(workdir, f"monai-{base}.onnx")], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"MONAI run failed:\n{res.stderr[-2000:]}")
    got["monai"] = json.loads(res.stdout.strip().splitlines()[-1])
    return got


def cpu_name() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16") if f" {f} " in info)
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model} ({flags or 'no AVX flags read'}), {os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8192", help="comma-separated square sizes")
    p.add_argument("--bases", default="16,32", help="UNet base widths")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/hirestile-bench")
    p.add_argument("--peers", action="store_true",
                   help="also OpenVINO f32 / ONNX Runtime full-frame (2048^2 in RAM) and MONAI + ORT over the slide")
    p.add_argument("--modes", default="stream,tile",
                   help="which executions to run: stream, tile, default (the plan's choice), comma-separated")
    p.add_argument("--huge", action="store_true",
                   help="(d) only: 40960 x 40960 x 3 through UNet-16 in the default mode (the plan's choice: "
                        "streamed bands), wall time and peak RSS (writes a 4.7 GB input once, ~2-5 min)")
    p.add_argument("--child", nargs=4, metavar=("IN", "OUT", "MODE", "BASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.input, args.output, args.mode, base = args.child
        args.base = int(base)
        return child(args)

    from hirestile import ome
    from hirestile.examples import write_example

    print(cpu_name(), flush=True)
    if args.huge:
        args.sizes, args.bases, args.modes, args.rounds = "40960", "16", "default", 1
    modes = [m for m in ("stream", "tile", "default") if m in args.modes.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    ratios: dict[tuple[int, int], list[float]] = {}
    for n in [int(s) for s in args.sizes.split(",") if s]:
        src = os.path.join(args.workdir, f"slide{n}.zarr")
        if not os.path.exists(os.path.join(src, "zarr.json")):
            t = time.perf_counter()
            write_example("histology", src, size=n, pyramid=False, progress=False)
            print(f"wrote the {n}x{n} input in {time.perf_counter() - t:.0f} s", flush=True)
        for base in [int(b) for b in args.bases.split(",") if b]:
            for r in range(args.rounds):
                got = {}
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    out = os.path.join(args.workdir, f"pipe-{n}-{base}-{mode}.zarr")
                    cmd = [sys.executable, __file__, "--child", src, out, mode, str(base)]
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode != 0:
                        sys.exit(f"{mode} run failed:\n{res.stderr}")
                    s = json.loads(res.stdout.strip().splitlines()[-1])
                    got[mode] = s
                    ome.remove_output(out)
                    if mode == "default":
                        mode = "stream" if s["stream"] else "tile"
                    print(f"{n:>6}^2 UNet-{base:<3} {mode:>6}  tile {s['tile'][0]}x{s['tile'][1]:<6} redundancy "
                          f"{s['compute_redundancy']:.3f}  {s['wall']:7.1f} s  {s['out_pixels'] / 1e6 / s['wall']:5.2f} "
                          f"MP/s  peak RSS {s['peak_rss'] / 2**20:6.0f} MiB (plan {s['planned'] / 2**20:6.0f})  "
                          f"[compute {s['compute']:.1f} s, reader {s['read']:.1f} s, writer {s['write']:.1f} s]",
                          flush=True)
                if "tile" in got and "stream" in got:
                    ratios.setdefault((n, base), []).append(got["tile"]["wall"] / got["stream"]["wall"])
                    print(f"          streaming / overlap-tile throughput {ratios[(n, base)][-1]:.2f}x", flush=True)
                if args.peers:
                    best = got.get("default", got.get("tile", got.get("stream")))   # the default mode when it ran
                    hs = best["out_pixels"] / 1e6 / best["wall"]
                    pr = peers(src, n, base, args.workdir)
                    for e in ("ov32", "onnxruntime"):
                        print(f"          {e:>11} full-frame 2048^2 in RAM {pr[e]['mps']:5.2f} MP/s  peak "
                              f"{pr[e]['peak_mb']:6.0f} MiB  -> hirestile end to end / {e} "
                              f"{hs / pr[e]['mps']:.2f}x", flush=True)
                    mo = pr["monai"]
                    print(f"          MONAI sliding window + ORT, zarr -> zarr {mo['wall']:7.1f} s  "
                          f"{mo['pixels'] / 1e6 / mo['wall']:5.2f} MP/s  peak RSS {mo['peak_rss'] / 2**20:6.0f} MiB  "
                          f"-> hirestile / MONAI {mo['wall'] / best['wall']:.2f}x; on 2048^2 its blended "
                          f"logits differ from full-frame by {mo['err']:.1e} x max|logit|, "
                          f"{100 * mo['differ']:.1f}% of pixels by > 1e-4, {100 * mo['labels_differ']:.3f}% of labels", flush=True)
    for (n, base), rs in ratios.items():
        print(f"{n}^2 UNet-{base}: median streaming / overlap-tile {statistics.median(rs):.2f}x over {len(rs)} "
              "round(s) (target >= 1.15)")


if __name__ == "__main__":
    main()
