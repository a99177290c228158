"""Kernel benchmarks: hirestile.kernels.conv vs PyTorch (channels_last), ONNX Runtime and
OpenVINO (fp32 hint and default precision), interleaved.

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

Peers (``pip install -e .[bench]``): per layer, a one-layer ONNX model (Conv or
ConvTranspose, NCHW, fixed shape) is run by ONNX Runtime (``intra_op_num_threads``)
and by OpenVINO with ``INFERENCE_PRECISION_HINT=f32`` and as installed (default
precision: bf16 on CPUs with AVX512_BF16 / AMX), ``INFERENCE_NUM_THREADS`` = threads,
latency hint. Each engine gets its input in its own layout (not timed); the ratio
columns are peer time / hirestile time per interleaved round (median), > 1 means
hirestile is faster. ``--peers torch,ort,ov32,ovdef`` picks them. The CPU features
each engine uses are printed first (OpenVINO: the primitive and precision it picked
per layer, in the table's last column).

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
    p.add_argument("--base", type=int, default=32,
                   help="UNet base width of the layer table (default 32; 16 halves every width)")
    p.add_argument("--only", default="", help="comma list of substrings of layer names")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--accuracy", action="store_true", help="also print per-layer accuracy")
    p.add_argument("--no-unet", dest="unet", action="store_false",
                   help="skip the full-frame network section (run by default)")
    p.add_argument("--unet-reps", type=int, default=2, help="timed runs per engine (default 2)")
    p.add_argument("--bf16-probe", action="store_true",
                   help="bf16 design probe: rounding by bit manipulation and its cost, vdpbf16ps "
                        "from Numba (benchmarks/README.md)")
    p.add_argument("--peers", default="torch,ort,ov32,ovdef",
                   help="comma list of peers: torch, ort, ov32 (OpenVINO f32 hint), ovdef "
                        "(OpenVINO default precision), wino2 (hirestile's Winograd F(2x2) route "
                        "on the layers that take F(4x4); the same call elsewhere)")
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

def make_layer(kind, n, ci, co, k, s, rng, peers=frozenset({"torch"}), threads=2):
    """Operands for one layer whose output is n x n: the hirestile callable and
    {peer: callable} for the peers asked."""
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
        out2 = np.empty_like(out)

        def wino2():                  # the F(2x2) route on a layer that takes F(4x4)
            conv.WINO4 = False
            try:
                conv.conv2d(x, w, b, stride=s, out=out2)
            finally:
                conv.WINO4 = True
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
    fns, prims = peer_callables(kind, ci, co, k, s, w, b, x, peers, threads)
    if "torch" in peers:
        fns["torch"] = theirs
    if "wino2" in peers:
        fns["wino2"] = wino2 if route == "wino4" else ours
    return ours, fns, flops, route, prims


PEER_NAMES = {"torch": "torch", "ort": "ORT", "ov32": "OV f32", "ovdef": "OV def", "wino2": "F(2x2)"}


def engine_features(peers):
    """One line per engine: the instruction set it dispatches to on this CPU."""
    lines = []
    try:
        import llvmlite.binding as ll
        feats = ll.get_host_cpu_features()
        isa = [f for f in ("avx512f", "avx512bf16", "avx512vnni", "amx-bf16", "avx2", "fma")
               if feats.get(f, False)]
        lines.append(f"hirestile/numba: LLVM cpu {ll.get_host_cpu_name()}, {' '.join(isa)}")
        if os.environ.get("NUMBA_CPU_NAME"):    # compiled for another CPU (the AVX2 proxy)
            lines[-1] = (f"hirestile/numba: compiled for {os.environ['NUMBA_CPU_NAME']} "
                         f"{os.environ.get('NUMBA_CPU_FEATURES', '')} (NUMBA_CPU_NAME) on a {ll.get_host_cpu_name()}")
    except Exception as e:  # noqa: BLE001 - informational only
        lines.append(f"hirestile/numba: ? ({e})")
    if "torch" in peers:
        import torch
        lines.append(f"torch {torch.__version__}: cpu capability "
                     f"{torch.backends.cpu.get_cpu_capability()}, mkldnn "
                     f"{torch.backends.mkldnn.is_available()}")
    if "ort" in peers:
        import onnxruntime as ort
        lines.append(f"onnxruntime {ort.__version__}: {ort.get_device()} (MLAS, dispatch by cpuid)")
    if peers & {"ov32", "ovdef"}:
        import openvino as ov
        core = ov.Core()
        lines.append(f"openvino {ov.__version__}: CPU capabilities "
                     f"{core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}, default "
                     f"precision {core.get_property('CPU', 'INFERENCE_PRECISION_HINT')}")
    return lines


def onnx_layer(kind, ci, co, k, s, w, b, hin):
    """A one-layer ONNX model (NCHW, fixed shape) with the layer's weights."""
    from onnx import TensorProto, helper, numpy_helper
    if kind == "conv":
        wt = np.ascontiguousarray(w.transpose(3, 2, 0, 1))             # (Co, Ci, k, k)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k],
                                strides=[s, s])
        hout = (hin - k) // s + 1
    else:
        wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1))             # (Ci, Co, k, k)
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k],
                                strides=[s, s])
        hout = hin * s
    g = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, hin, hin])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, hout, hout])],
        [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def ov_compile(model_bytes, threads, f32):
    import openvino as ov
    core = ov.Core()
    m = core.read_model(model_bytes, b"")
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
           "NUM_STREAMS": 1}
    if f32:
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    cm = core.compile_model(m, "CPU", cfg)
    prim = ""
    for op in cm.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        t = rt["layerType"].astype(str) if "layerType" in rt else ""
        if t in ("Convolution", "Deconvolution"):
            prim = f"{rt['primitiveType'].astype(str)}/{rt['runtimePrecision'].astype(str)}"
    return cm, prim


def peer_callables(kind, ci, co, k, s, w, b, x, peers, threads):
    """{peer: callable} running the same layer on each peer engine, and OpenVINO's primitives."""
    fns, prims = {}, []
    xn = np.ascontiguousarray(x.transpose(2, 0, 1)[None])               # NCHW for ONNX engines
    if peers & {"ort", "ov32", "ovdef"}:
        mb = onnx_layer(kind, ci, co, k, s, w, b, x.shape[0])
    if "ort" in peers:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(mb, so, providers=["CPUExecutionProvider"])
        fns["ort"] = lambda: sess.run(None, {"x": xn})
    for p, f32 in (("ov32", True), ("ovdef", False)):
        if p in peers:
            cm, prim = ov_compile(mb, threads, f32)
            req = cm.create_infer_request()
            fns[p] = (lambda req=req: req.infer({0: xn}, share_inputs=True, share_outputs=True))
            prims.append(prim)
    return fns, prims


def unet_layers(base):
    """UNET_LAYERS for another base width: every channel count times base/32 (input 3
    and the 2-class head stay), names renamed to match."""
    if base == 32:
        return UNET_LAYERS

    def sc(c):
        return c if c in (2, 3) else c * base // 32
    rows = []
    for name, kind, n0, ci, co, k, s in UNET_LAYERS:
        tag, _, rest = name.partition(" ")
        rest = rest.split(" ")
        rows.append((" ".join([tag, f"{sc(ci)}-{sc(co)}"] + rest[1:]), kind, n0, sc(ci), sc(co), k, s))
    return rows


def bench_layers(args):
    rng = np.random.default_rng(0)
    only = [o for o in args.only.split(",") if o]
    import importlib.util
    need = {"torch": "torch", "ort": "onnxruntime", "ov32": "openvino", "ovdef": "openvino",
            "wino2": "numba"}
    peers = []
    for p in args.peers.split(","):
        if p and p not in need:
            raise SystemExit(f"unknown peer {p!r}: choose from {', '.join(need)}")
        if p and importlib.util.find_spec(need[p]) is None:
            print(f"# skipping {p}: {need[p]} is not installed (pip install -e .[bench])")
        elif p:
            peers.append(p)
    pset = set(peers)
    for line in engine_features(pset):
        print("#", line)
    hdr = " ".join(f"{PEER_NAMES[p]:>7s}" for p in peers)
    print(f"{'layer':15s} {'out':>9s} {'route':8s} {'hirestile':>9s} | GF/s {hdr} | ratio {hdr} | "
          f"cpu% h   OV prim f32 / def")
    ratios = {p: [] for p in peers}
    for name, kind, n0, ci, co, k, s in unet_layers(args.base):
        if only and not any(o in name for o in only):
            continue
        n = max(2 * s, int(round(n0 * args.scale / 2)) * 2)
        ours, fns, flops, route, prims = make_layer(kind, n, ci, co, k, s, rng, pset, args.threads)
        fns = {p: fns[p] for p in peers}
        ours()
        for f in fns.values():
            f()  # warm up: compile / cache load, page-in, primitive creation
        th, ch, tp = [], [], {p: [] for p in peers}
        for _ in range(args.reps):
            a, c = timed(ours)
            th.append(a)
            ch.append(c / a)
            for p, f in fns.items():
                tp[p].append(timed(f)[0])
        th = np.array(th)
        gf = " ".join(f"{flops / np.median(tp[p]) / 1e9:7.1f}" for p in peers)
        rs = []
        for p in peers:
            r = float(np.median(np.array(tp[p]) / th))
            ratios[p].append(r)
            rs.append(f"{r:7.2f}")
        print(f"{name:15s} {n:4d}x{n:<4d} {route:8s} {flops / np.median(th) / 1e9:9.1f} | "
              f"     {gf} |       {' '.join(rs)} | {100 * np.median(ch) / args.threads:4.0f}   "
              f"{' / '.join(prims)}", flush=True)
        del ours, fns
    if any(ratios.values()):
        gm = ", ".join(f"{PEER_NAMES[p]} {np.exp(np.mean(np.log(r))):.2f}"
                       for p, r in ratios.items() if r)
        print(f"geometric mean ratio (peer time / hirestile time): {gm}; "
              f"peak RSS {peak_rss_mib():.0f} MiB")


def bench_accuracy(args):
    """Per-layer error of hirestile and of torch float32 against a float64 torch conv,
    max |y - ref| / max |ref|, on a 96 x 96 output (random N(0,1) input, He-scaled weights)."""
    import torch
    from hirestile.kernels import conv
    rng = np.random.default_rng(2)
    print(f"\n{'layer':15s} {'route':8s} {'hirestile':>10s} {'torch f32':>10s} {'wino2':>10s}   "
          "(max err / max|ref| vs float64; wino2: the F(2x2) route where F(4x4) runs)")
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
            if route == "wino4":
                conv.WINO4 = False
                try:
                    y2 = conv.conv2d(x, w, b, stride=s)
                finally:
                    conv.WINO4 = True
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
        e2 = f"{np.abs(y2 - ref).max() / m:10.2e}" if route == "wino4" else f"{'':10s}"
        print(f"{name:15s} {route:8s} {np.abs(y - ref).max() / m:10.2e} "
              f"{np.abs(yt - ref).max() / m:10.2e} {e2}")


# ----------------------------------------------------------------------------- FULL-FRAME NETWORK

def bench_unet(args):
    """Full-frame UNet (base 16 and 32; 1024^2 and 2048^2, times --scale): hirestile vs
    PyTorch channels_last vs ONNX Runtime, each run in its own process (see fullframe.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fullframe import main as fullframe_main
    sizes = [max(64, int(round(s * args.scale / 16)) * 16) for s in (1024, 2048)]
    fullframe_main(["--sizes", *map(str, sizes), "--bases", "16", "32", "--rounds", str(args.unet_reps),
                    "--threads", str(args.threads)])


# ----------------------------------------------------------------------------- bf16 design probe

def bench_bf16_probe(args):
    """bf16 mode design probe (issue 13; the mode itself: ``precision="bf16"``): (1) round-to-nearest-even
    float32 -> bf16 by bit manipulation in Numba, checked against a NumPy twin, and its cost
    as a separate pass next to a fp32 conv layer; (2) AVX512_BF16 ``vdpbf16ps`` reached
    from Numba through an @intrinsic that calls LLVM's llvm.x86.avx512bf16.dpbf16ps.512,
    checked against a float64 pair dot (skipped where the CPU lacks avx512bf16)."""
    import llvmlite.binding as ll
    from hirestile.kernels import conv
    from hirestile.kernels._conv_simd import vload, vstore, vzero
    from numba import njit, prange

    @njit(parallel=True, nogil=True)
    def round_bits(u, o):
        for i in prange(u.shape[0]):
            v = u[i]
            o[i] = (v + np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1))) \
                & np.uint32(0xFFFF0000)

    def round_bf16(a, out):
        round_bits(a.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint32))

    def ref_bf16(a):
        u = a.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(1 << 16) * 10).astype(np.float32)
    y = np.empty_like(x)
    round_bf16(x, y)
    print(f"\nbf16 probe: Numba rounding == NumPy bit twin: "
          f"{np.array_equal(y.view(np.uint32), ref_bf16(x).view(np.uint32))}")
    if ll.get_host_cpu_features().get("avx512bf16", False):
        from hirestile.kernels._bf16_simd import vdp as vdpbf16   # the bf16 mode's intrinsic

        @njit
        def dot_pairs(a, b):
            out = np.empty(16, np.float32)
            vstore(out, 0, vdpbf16(vzero(), vload(a, 0), vload(b, 0)))
            return out

        a32 = ref_bf16(rng.standard_normal(32).astype(np.float32))
        b32 = ref_bf16(rng.standard_normal(32).astype(np.float32))

        def pack(v):  # 32 bf16 (upper halves) in the bits of 16 float32
            return (v.view(np.uint32) >> 16).astype(np.uint16).view(np.float32).copy()
        got = dot_pairs(pack(a32), pack(b32))
        want = a32[0::2].astype(np.float64) * b32[0::2] + a32[1::2].astype(np.float64) * b32[1::2]
        asm = dot_pairs.inspect_asm(dot_pairs.signatures[0])
        print(f"bf16 probe: vdpbf16ps in the Numba kernel's assembly: {'vdpbf16ps' in asm}; "
              f"max |result - float64 pair dot| = {float(np.abs(got - want).max()):.1e}")
    else:
        print("bf16 probe: this CPU has no avx512bf16: vdpbf16ps part skipped")
    for ci, co, n in [(16, 16, 1024), (32, 32, 1024), (64, 64, 512)]:
        n = max(16, int(n * args.scale) // 2 * 2)
        xi = rng.standard_normal((n + 2, n + 2, ci)).astype(np.float32)
        w = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
        w.setflags(write=False)
        b, out, xr = np.zeros(co, np.float32), np.empty((n, n, co), np.float32), np.empty_like(xi)

        def f(xi=xi, w=w, b=b, out=out):
            conv.conv2d(xi, w, b, out=out, act=1)

        def g(xi=xi, xr=xr):
            round_bf16(xi, xr)
        f(), g()
        tf, tg = [], []
        for _ in range(args.reps):
            tf.append(timed(f)[0])
            tg.append(timed(g)[0])
        print(f"bf16 probe: {ci}-{co} at {n}^2: fp32 conv {np.median(tf) * 1e3:.1f} ms, separate "
              f"rounding pass over its input {np.median(tg) * 1e3:.2f} ms = "
              f"{100 * np.median(np.array(tg) / np.array(tf)):.1f} % of the conv")


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
    if args.bf16_probe:
        bench_bf16_probe(args)
    if args.unet:
        bench_unet(args)


if __name__ == "__main__":
    main()
