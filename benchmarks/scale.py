"""Scaling of ``hirestile segment`` with image size: throughput, peak memory, time split.

Each size runs in a fresh process (so peak RSS is that run's own) on a synthetic
histology slide written chunk by chunk (``hirestile example histology``), with a
small random-weight UNet (base 8, depth 4) unless ``--model`` names another.

    python benchmarks/scale.py                       # 2048^2, 8192^2, 16384^2
    python benchmarks/scale.py --sizes 2048,4096     # pick sizes
    python benchmarks/scale.py --huge                # adds 40960^2 (4.3 GB input; ~30 min on 2 cores)

Prints per size: tiles, wall seconds, MP/s, peak RSS, and where the time went
(read = reader thread busy, compute = main thread normalising and in the executor, write =
writer thread busy, idle = main thread waiting), plus the two targets of the
scheduler issue: peak RSS of the largest run within 1.2x of the smallest, and
compute busy >= 90% of wall.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    """Run one segment job in this process and print its statistics as JSON."""
    from hirestile.cli import load_model_cli
    from hirestile.models.unet import unet
    from hirestile.scheduler import segment_to_zarr

    model = (unet(in_channels=3, classes=2, base=8, depth=4, seed=0, name="unet-b8d4") if args.model == "small"
             else load_model_cli(args.model))
    stats = segment_to_zarr(args.input, model, args.output, tile=args.tile, threads=args.threads, overwrite=True,
                            progress=False)
    print(json.dumps({k: getattr(stats, k) for k in (
        "tiles_total", "wall", "read", "compute", "write", "idle", "finish", "peak_rss", "out_pixels",
        "read_redundancy", "compute_redundancy", "tile")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,8192,16384", help="comma-separated square sizes")
    p.add_argument("--huge", action="store_true", help="add 40960 x 40960")
    p.add_argument("--model", default="small", help="'small' (random UNet base 8, depth 4) or a model name/file")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="/tmp/hirestile-bench")
    p.add_argument("--keep", action="store_true", help="keep the inputs and outputs")
    p.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.input, args.output = args.child
        return child(args)

    from hirestile import ome
    from hirestile.examples import write_example

    sizes = [int(s) for s in args.sizes.split(",") if s] + ([40960] if args.huge else [])
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    print(f"model {args.model}, tile {args.tile}, threads {args.threads or os.cpu_count()}", flush=True)
    for n in sizes:
        src = os.path.join(args.workdir, f"slide{n}.zarr")
        if not os.path.exists(os.path.join(src, "zarr.json")):
            t = time.perf_counter()
            write_example("histology", src, size=n, pyramid=False, progress=False)
            print(f"  wrote {n}x{n} input in {time.perf_counter() - t:.0f} s", flush=True)
        out = os.path.join(args.workdir, f"out{n}.zarr")
        cmd = [sys.executable, __file__, "--child", src, out, "--model", args.model, "--tile", str(args.tile)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"size {n} failed:\n{r.stderr}")
        s = json.loads(r.stdout.strip().splitlines()[-1])
        s["size"] = n
        rows.append(s)
        w = s["wall"]
        print(f"{n:>6}^2  {s['tiles_total']:>5} tiles  {w:8.1f} s  {s['out_pixels'] / 1e6 / w:6.2f} MP/s  "
              f"peak RSS {s['peak_rss'] / 2**20:7.0f} MiB  read {100 * s['read'] / w:4.1f}%  "
              f"compute {100 * s['compute'] / w:4.1f}%  write {100 * s['write'] / w:4.1f}%  "
              f"idle {100 * s['idle'] / w:4.1f}%  redundancy {s['compute_redundancy']:.2f}", flush=True)
        if not args.keep:
            ome.remove_output(out)
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss"] / rows[0]["peak_rss"]
        print(f"peak RSS {rows[-1]['size']}^2 / {rows[0]['size']}^2 = {ratio:.2f} (target <= 1.2)")
        if rows[0]["size"] <= 2 * args.tile:
            print(f"  note: at tile {args.tile} the {rows[0]['size']}^2 image has no interior tile (every window "
                  "lacks the halo on two sides), so this ratio also measures tile geometry, not only image "
                  f"size; --tile {rows[0]['size'] // 4} compares interior tiles on both")
    busy = min(r["compute"] / r["wall"] for r in rows)
    print(f"lowest compute share {100 * busy:.1f}% of wall (target >= 90%)")


if __name__ == "__main__":
    main()
