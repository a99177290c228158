"""Kernel benchmarks: hirestile.kernels.conv vs PyTorch (channels_last), interleaved.

Usage::

    python benchmarks/kernels.py                   # UNet(base 32, depth 4) layers at 2048^2, then full-frame
    python benchmarks/kernels.py --scale 0.25      # same layers, spatial sizes / 4
    python benchmarks/kernels.py --threads 1 --reps 7 --only 32-32,64-64

Every row times one layer shape with both libraries in the same process,
alternating call by call (hirestile, torch, hirestile, torch, ...), and reports
median GFLOP/s of each, the median of the per-pair speed ratios (the only
number that survives the +-40 % drift of this shared machine), and each
library's CPU utilisation during its calls (process CPU time / wall / threads).
hirestile writes into a preallocated ``out`` (as the executor does); PyTorch
allocates its output per call, as it does in a model. Both compute the conv +
bias only (act=0): a fused ReLU would favour hirestile. FLOPs are the direct
count 2*Ho*Wo*Ci*Co*kh*kw/groups for every route (Winograd included).

The same run then compares full-frame networks (hirestile.predict vs PyTorch
channels_last vs ONNX Runtime; benchmarks/fullframe.py); ``--no-unet`` skips that.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np


# (name, kind, size at scale 1 (output side), Ci, Co, k, stride)
# UNet, base 32, depth 4, 2048^2 input: 3x3 same convs, 2x2 stride-2 up-convs, 1x1 head.
UNET_LAYERS = [
    ("enc0a 3-32", "conv", 2048, 3, 32, 3, 1),
    ("enc0b 32-32", "conv", 2048, 32, 32, 3, 1),
    ("enc1a 32-64", "conv", 1024, 32, 64, 3, 1),
    ("enc1b 64-64", "conv", 1024, 64, 64, 3, 1),
    ("enc2a 64-128", "conv", 512, 64, 128, 3, 1),
    ("enc2b 128-128", "conv", 512, 128, 128, 3, 1),
    ("enc3a 128-256", "conv", 256, 128, 256, 3, 1),
    ("enc3b 256-256", "conv", 256, 256, 256, 3, 1),
    ("bott 256-512", "conv", 128, 256, 512, 3, 1),
    ("bott 512-512", "conv", 128, 512, 512, 3, 1),
    ("up3 512-256 T", "convT", 256, 512, 256, 2, 2),
    ("dec3a 512-256", "conv", 256, 512, 256, 3, 1),
    ("up2 256-128 T", "convT", 512, 256, 128, 2, 2),
    ("dec2a 256-128", "conv", 512, 256, 128, 3, 1),
    ("up1 128-64 T", "convT", 1024, 128, 64, 2, 2),
    ("dec1a 128-64", "conv", 1024, 128, 64, 3, 1),
    ("up0 64-32 T", "convT", 2048, 64, 32, 2, 2),
    ("dec0a 64-32", "conv", 2048, 64, 32, 3, 1),
    ("head 32-2", "conv", 2048, 32, 2, 1, 1),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply spatial sizes (default 1)")
    p.add_argument("--reps", type=int, default=5, help="timed pairs per layer (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries")
    p.add_argument("--only", default="", help="comma list of substrings of layer names")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--accuracy", action="store_true", help="also print per-layer accuracy")
    p.add_argument("--no-unet", dest="unet", action="store_false",
                   help="skip the full-frame network section (run by default)")
    p.add_argument("--unet-reps", type=int, default=2, help="timed runs per engine (default 2)")
    return p.parse_args(argv)


def setup_threads(n):
    """Thread counts for Numba and PyTorch, before either runs a parallel region
    (they share one libgomp)."""
    import numba
    numba.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0


# ----------------------------------------------------------------------------- layers

def make_layer(kind, n, ci, co, k, s, rng):
    """Operands for one layer whose output is n x n: hirestile callables and torch callables."""
    import torch
    from hirestile.kernels import conv

    w = (rng.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci)).astype(np.float32)
    b = (0.1 * rng.standard_normal(co)).astype(np.float32)
    w.setflags(write=False)  # lets conv2d cache its packed / transformed weights
    tb = torch.from_numpy(b.copy())
    if kind == "conv":
        hi = (n - 1) * s + k
        x = rng.standard_normal((hi, hi, ci)).astype(np.float32)
        out = np.empty((n, n, co), np.float32)
        tx = torch.from_numpy(x).permute(2, 0, 1)[None]              # NCHW view, channels_last
        tw = torch.from_numpy(w.copy()).permute(3, 2, 0, 1).contiguous(
            memory_format=torch.channels_last)
        flops = 2.0 * n * n * ci * co * k * k

        def ours():
            conv.conv2d(x, w, b, stride=s, out=out)

        def theirs():
            torch.nn.functional.conv2d(tx, tw, tb, stride=s)
        route = conv._route(k, k, (s, s), (1, 1), 1, ci, co)
    else:  # transposed, kernel == stride: output n x n from n/s x n/s input
        hi = n // s
        x = rng.standard_normal((hi, hi, ci)).astype(np.float32)
        out = np.empty((n, n, co), np.float32)
        tx = torch.from_numpy(x).permute(2, 0, 1)[None]
        tw = torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1)))  # (Ci, Co, k, k)
        flops = 2.0 * hi * hi * ci * co * k * k

        def ours():
            conv.conv_transpose2d(x, w, b, stride=s, out_shape=(n, n), out=out)

        def theirs():
            torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=s)
        route = "convT"
    return ours, theirs, flops, route


def bench_layers(args):
    rng = np.random.default_rng(0)
    only = [o for o in args.only.split(",") if o]
    print(f"{'layer':15s} {'out':>9s} {'route':8s} {'hirestile':>10s} {'torch':>8s} "
          f"{'ratio':>6s} {'cpu% h/t':>9s}   (GFLOP/s; ratio = torch time / hirestile time)")
    ratios = []
    for name, kind, n0, ci, co, k, s in UNET_LAYERS:
        if only and not any(o in name for o in only):
            continue
        n = max(2 * s, int(round(n0 * args.scale / 2)) * 2)
        ours, theirs, flops, route = make_layer(kind, n, ci, co, k, s, rng)
        ours(), theirs()  # warm up: compile / cache load, page-in, oneDNN primitive
        th, tt, ch, ct = [], [], [], []
        for _ in range(args.reps):
            a, c = timed(ours)
            th.append(a)
            ch.append(c / a)
            a, c = timed(theirs)
            tt.append(a)
            ct.append(c / a)
        th, tt = np.array(th), np.array(tt)
        ratio = float(np.median(tt / th))
        ratios.append(ratio)
        print(f"{name:15s} {n:4d}x{n:<4d} {route:8s} {flops / np.median(th) / 1e9:10.1f} "
              f"{flops / np.median(tt) / 1e9:8.1f} {ratio:6.2f} "
              f"{100 * np.median(ch) / args.threads:4.0f}/{100 * np.median(ct) / args.threads:<4.0f}",
              flush=True)
        del ours, theirs
    if ratios:
        print(f"geometric mean ratio {np.exp(np.mean(np.log(ratios))):.2f}; "
              f"peak RSS {peak_rss_mib():.0f} MiB")


def bench_accuracy(args):
    """Per-layer error of hirestile and of torch float32 against a float64 torch conv,
    max |y - ref| / max |ref|, on a 96 x 96 output (random N(0,1) input, He-scaled weights)."""
    import torch
    from hirestile.kernels import conv
    rng = np.random.default_rng(2)
    print(f"\n{'layer':15s} {'route':8s} {'hirestile':>10s} {'torch f32':>10s}   "
          "(max err / max|ref| vs float64)")
    only = [o for o in args.only.split(",") if o]
    for name, kind, _, ci, co, k, s in UNET_LAYERS:
        if only and not any(o in name for o in only):
            continue
        n = 96
        w = (rng.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci)).astype(np.float32)
        b = (0.1 * rng.standard_normal(co)).astype(np.float32)
        if kind == "conv":
            x = rng.standard_normal(((n - 1) * s + k, (n - 1) * s + k, ci)).astype(np.float32)
            tw = torch.from_numpy(w).permute(3, 2, 0, 1)

            def f(tx, tw, tb):
                return torch.nn.functional.conv2d(tx, tw, tb, stride=s)
            y = conv.conv2d(x, w, b, stride=s)
            route = conv._route(k, k, (s, s), (1, 1), 1, ci, co)
        else:
            x = rng.standard_normal((n // s, n // s, ci)).astype(np.float32)
            tw = torch.from_numpy(w).permute(2, 3, 0, 1)

            def f(tx, tw, tb):
                return torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=s)
            y = conv.conv_transpose2d(x, w, b, stride=s, out_shape=(n, n))
            route = "convT"
        tx, tb = torch.from_numpy(x).permute(2, 0, 1)[None], torch.from_numpy(b)
        ref = f(tx.double(), tw.double(), tb.double())[0].permute(1, 2, 0).numpy()
        yt = f(tx.contiguous(memory_format=torch.channels_last), tw.contiguous(), tb)
        yt = yt[0].permute(1, 2, 0).numpy()
        m = np.abs(ref).max()
        print(f"{name:15s} {route:8s} {np.abs(y - ref).max() / m:10.2e} "
              f"{np.abs(yt - ref).max() / m:10.2e}")


# ----------------------------------------------------------------------------- FULL-FRAME NETWORK

def bench_unet(args):
    """Full-frame UNet (base 16 and 32; 1024^2 and 2048^2, times --scale): hirestile vs
    PyTorch channels_last vs ONNX Runtime, each run in its own process (see fullframe.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fullframe import main as fullframe_main
    sizes = [max(64, int(round(s * args.scale / 16)) * 16) for s in (1024, 2048)]
    fullframe_main(["--sizes", *map(str, sizes), "--bases", "16", "32", "--rounds", str(args.unet_reps),
                    "--threads", str(args.threads)])


def main(argv=None):
    args = parse_args(argv)
    setup_threads(args.threads)
    import numba
    import torch
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  python {sys.version.split()[0]}  numba "
          f"{numba.__version__}  torch {torch.__version__}  threads {args.threads}  "
          f"scale {args.scale}  cpus {os.cpu_count()}  loadavg {os.getloadavg()[0]:.1f}")
    if not args.no_layers:
        bench_layers(args)
    if args.accuracy:
        bench_accuracy(args)
    if args.unet:
        bench_unet(args)


if __name__ == "__main__":
    main()
