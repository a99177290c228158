"""Full-frame UNet: hirestile vs PyTorch channels_last vs ONNX Runtime vs OpenVINO (megapixels/s, peak RSS).

OpenVINO runs the same ONNX export twice: ``ov32`` with ``INFERENCE_PRECISION_HINT=f32``
and ``ovdef`` as installed (default precision: bf16 on CPUs with AVX512_BF16 / AMX);
``hsf2x2`` is hirestile fp32 with its 3x3 convs on Winograd F(2x2) instead of F(4x4) (``conv.WINO4``);
``hsblk16`` is hirestile fp32 with its 16 -> 16 3x3 convs on the register-blocked direct route
(``conv.WINO_MIN = 512``, the default before session 14; now they take Winograd F(4x4));
``hsregion`` is hirestile fp32 with the whole frame as one region whatever its memory
(``stream=False``; ``hirestile`` itself runs what :func:`hirestile.api.predict_bands` picks:
from session 17, one streamed band of the whole frame at 2048^2, which takes a third less memory);
``hsbf16region`` is ``hsbf16`` as one region;
``hsbf16`` is hirestile with ``precision="bf16"`` (its line names the instruction path), compared
with OpenVINO's default and with hirestile fp32: speed ratios, max error and the share of equal
labels (argmax over the whole image) against hirestile fp32;
``INFERENCE_NUM_THREADS`` = threads, latency hint, one stream. Each child prints the
instruction set its engine used (OpenVINO: the convolution primitives and precisions of
the compiled model). ``--engines`` picks the engines; PyTorch is the accuracy reference
(max err / max|ref| of the hirestile and OpenVINO outputs against it).

Each (engine, base, size) run happens in its own child process so its peak RSS is
its own; it times the first full-size call after a 64^2 warm-up (one-shot: fresh memory
included) and a second call (steady state, as when images come one after another); the
engines are interleaved round by round so drift on this machine hits
them alike, and the ratios are taken per round (median). Odd rounds run the engines in
reverse order: a first call's fresh memory costs 0.1-2 ms per MB on this VM depending on
what ran just before (memory another process has just freed is cheap to take again), so no
engine always follows the same one.

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
    isa = "torch cpu capability " + torch.backends.cpu.get_cpu_capability()
elif engine in ("onnxruntime", "ov32", "ovdef"):
    torch.onnx.export(net, torch.zeros(1, 3, 64, 64), path, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
    if engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        isa = "onnxruntime " + ort.__version__ + " MLAS (cpuid dispatch)"
        def run(a):
            return sess.run(None, {"x": a[None]})[0][0]
    else:
        import collections, openvino as ov
        core = ov.Core()
        m = core.read_model(path)
        m.reshape({0: [1, 3, size, size]})   # static shape, as a user would compile it
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if engine == "ov32":
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        cm = core.compile_model(m, "CPU", cfg)
        prims = collections.Counter()
        for op in cm.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) in ("Convolution", "Deconvolution"):
                prims[rt["primitiveType"].astype(str) + "/" + rt["runtimePrecision"].astype(str)] += 1
        isa = "openvino " + ov.__version__.split("-")[0] + " " + ", ".join(f"{k} x{v}" for k, v in prims.items())
        req = cm.create_infer_request()
        def run(a):
            if a.shape[1] != size:
                return None                      # the warm-up below: compiled for one size
            return req.infer({0: a[None]}, share_inputs=True)[0][0]
else:
    import numba
    numba.set_num_threads(threads)
    import hirestile
    from hirestile.models.unet import unet
    sd = {k: v.numpy() for k, v in net.state_dict().items() if "num_batches" not in k}
    m = unet(in_channels=3, classes=2, base=base, depth=4, state=sd)
    precision = "bf16" if engine in ("hsbf16", "hsbf16region") else "fp32"
    if engine == "hsf2x2":                   # 3x3 convs on Winograd F(2x2) instead of F(4x4)
        from hirestile.kernels import conv
        conv.WINO4 = False
    if engine == "hsblk16":                  # 16 -> 16 3x3 convs on the blocked direct route
        from hirestile.kernels import conv
        conv.WINO_MIN = 512
    stream = False if engine in ("hsregion", "hsbf16region") else None     # one region, or what predict picks
    def run(a):
        return hirestile.predict(m, a, precision=precision, stream=stream)
    import llvmlite.binding as ll
    from hirestile.executor import precision_label
    f = ll.get_host_cpu_features()
    isa = "numba LLVM " + ll.get_host_cpu_name() + " " + " ".join(
        k for k in ("avx512f", "avx512bf16", "avx2") if f.get(k, False)) + ", " + precision_label(precision)
    if os.environ.get("NUMBA_CPU_NAME"):     # compiled for another CPU than this one (the AVX2 proxy)
        isa = "numba LLVM " + os.environ["NUMBA_CPU_NAME"] + " " + os.environ.get("NUMBA_CPU_FEATURES", "") + \
            " (NUMBA_CPU_NAME), " + precision_label(precision)
    from hirestile.api import predict_bands
    bands = None if stream is False else predict_bands(m.analyze((size, size), precision))
    isa += ", one region" if bands is None else f", streamed bands {bands[0]}x{bands[1]}"
run(x[:, :64, :64])  # warm-up: compile / load
t0 = time.perf_counter(); c0 = time.process_time()
y = run(x)
wall = time.perf_counter() - t0; cpu = time.process_time() - c0
t1 = time.perf_counter()
run(x)                # a second call: steady state (each engine's memory already touched)
wall2 = time.perf_counter() - t1
np.save(path + ".npy", y[:, ::97, ::89])
np.save(path + ".labels.npy", y.argmax(0).astype(np.uint8))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall": wall, "wall2": wall2, "cpu_util": cpu / wall, "peak_mb": peak / 1024, "base_mb": rss0 / 1024,
                  "isa": isa}))
"""

ENGINES = ("hirestile", "torch", "onnxruntime", "ov32", "ovdef", "hsbf16", "hsf2x2", "hsblk16", "hsregion", "hsbf16region")
LABEL = {"hirestile": "hirestile", "torch": "torch CL", "onnxruntime": "ORT", "ov32": "OV f32",
         "ovdef": "OV default", "hsbf16": "hs bf16", "hsf2x2": "hs F(2x2)", "hsblk16": "hs blk16", "hsregion": "hs 1 region",
         "hsbf16region": "hs bf16 1 region"}


def run_child(engine: str, base: int, size: int, threads: int, tmp: str) -> dict:
    path = os.path.join(tmp, f"{engine}_{base}_{size}.onnx")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", CHILD, engine, str(base), str(size), str(threads), path],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} base {base} {size}^2 failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["mps"] = size * size / 1e6 / res["wall"]
    res["mps2"] = size * size / 1e6 / res["wall2"]
    res["sample"] = path + ".npy"
    return res


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--bases", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="comma list of " + ", ".join(ENGINES) + " (hirestile and torch always run)")
    args = ap.parse_args(argv)
    import numpy as np
    import importlib.util
    need = {"onnxruntime": "onnxruntime", "ov32": "openvino", "ovdef": "openvino"}
    engines = ["hirestile", "torch"]
    for e in args.engines.split(","):
        if e in ENGINES and e not in engines:
            if importlib.util.find_spec(need.get(e, "numpy")) is None:
                print(f"skipping {e}: {need[e]} is not installed (pip install -e .[bench])")
            else:
                engines.append(e)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.bases:
            for size in args.sizes:
                per = {e: [] for e in engines}
                for k in range(args.rounds):     # odd rounds backwards: no engine always follows the same one
                    for e in engines if k % 2 == 0 else engines[::-1]:
                        per[e].append(run_child(e, base, size, args.threads, tmp))
                ref = np.load(per["torch"][-1]["sample"])
                errs = {e: float(np.abs(np.load(per[e][-1]["sample"]) - ref).max() / np.abs(ref).max())
                        for e in engines if e != "torch"}
                med = {e: statistics.median(r["mps"] for r in per[e]) for e in engines}
                # ratio: hirestile speed / peer speed, per round, median (> 1: hirestile faster)
                ratio = {e: statistics.median(h["mps"] / o["mps"] for h, o in zip(per["hirestile"], per[e]))
                         for e in engines if e != "hirestile"}
                row = dict(base=base, size=size, **{f"{e}_mps": med[e] for e in engines},
                           **{f"{e}_peak_mb": max(r["peak_mb"] for r in per[e]) for e in engines},
                           **{f"{e}_cpu": statistics.median(r["cpu_util"] for r in per[e]) for e in engines},
                           **{f"vs_{e}": ratio[e] for e in ratio},
                           **{f"{e}_isa": per[e][-1]["isa"] for e in engines},
                           **{f"{e}_err": errs[e] for e in errs},
                           rel_err=errs["hirestile"])
                if "onnxruntime" in ratio:
                    row["vs_ort"] = ratio["onnxruntime"]
                if "hsbf16" in engines:     # bf16: against OpenVINO's default and hirestile fp32
                    fp = np.load(per["hirestile"][-1]["sample"])
                    lab = np.load(per["hirestile"][-1]["sample"][:-4] + ".labels.npy")
                    for e in ("hsbf16", "ovdef"):
                        if e in engines:
                            row[f"{e}_err_fp32"] = float(np.abs(np.load(per[e][-1]["sample"]) - fp).max()
                                                         / np.abs(fp).max())
                            row[f"{e}_labels_fp32"] = float(
                                (np.load(per[e][-1]["sample"][:-4] + ".labels.npy") == lab).mean())
                    for e in ("ovdef", "hirestile"):
                        if e in engines:
                            row[f"bf16_vs_{e}"] = statistics.median(
                                b["mps"] / o["mps"] for b, o in zip(per["hsbf16"], per[e]))
                rows.append(row)
                print(f"UNet-{base} {size}^2 (MP/s, peak MB, cpu/wall):", flush=True)
                for e in engines:
                    extra = "" if e == "hirestile" else f"  hirestile is {ratio[e]:.2f}x"
                    err = "" if e == "torch" else f"  max err/max|ref| vs torch {errs[e]:.1e}"
                    print(f"  {LABEL[e]:10s} {med[e]:7.3f}  {row[e + '_peak_mb']:6.0f}  "
                          f"{row[e + '_cpu']:.2f}{extra}{err}  [{row[e + '_isa']}]", flush=True)
                # every hirestile variant against OpenVINO in its precision, round by round
                for peer, mine in (("ov32", ("hirestile", "hsf2x2", "hsblk16", "hsregion")),
                                   ("ovdef", ("hsbf16", "hsbf16region"))):
                    for e in (e for e in mine if e in engines and peer in engines):
                        rr = " ".join(f"{h['mps'] / o['mps']:.2f}" for h, o in zip(per[e], per[peer]))
                        r2 = " ".join(f"{h['mps2'] / o['mps2']:.2f}" for h, o in zip(per[e], per[peer]))
                        print(f"  {LABEL[e]} / {LABEL[peer]} per round: {rr} (first call); {r2} (second call)",
                              flush=True)
                for e in engines:           # steady state: the same call again in the same process
                    print(f"  second call {LABEL[e]:10s} {statistics.median(r['mps2'] for r in per[e]):7.3f} MP/s",
                          flush=True)
                if "hsbf16" in engines:
                    vs = ", ".join(f"{row[f'bf16_vs_{e}']:.2f}x {LABEL[e]}" for e in ("ovdef", "hirestile")
                                   if f"bf16_vs_{e}" in row)
                    acc = "; ".join(f"{LABEL[e]} max err/max|fp32| {row[f'{e}_err_fp32']:.1e}, labels equal "
                                    f"{100 * row[f'{e}_labels_fp32']:.2f} %" for e in ("hsbf16", "ovdef")
                                    if f"{e}_err_fp32" in row)
                    print(f"  bf16: hs bf16 is {vs}; vs hirestile fp32: {acc}", flush=True)
    return rows


if __name__ == "__main__":
    main()
