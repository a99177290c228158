"""The object pass (hirestile.objects) on a generated slide: objects found, time split, peak RSS.

A synthetic class map is written band by band (never whole): nuclei (class 1, discs of
radius 3-9 px on a jittered 20 px lattice, ~1 per 400 px^2) and thin stroma fibres
(class 2, long wavy lines crossing many tiles), and an RGB image for intensities.
Each size runs in a fresh process, so the peak RSS is the object pass's own.

    python benchmarks/objects.py                        # 4096^2 and 8192^2
    python benchmarks/objects.py --sizes 16384          # the issue's slide size (~10 min on 2 cores)
    python benchmarks/objects.py --sizes 4096 --geojson # + outlines and a GeoJSON export
    python benchmarks/objects.py --segment              # + the segmentation (small UNet) of the same
                                                        #   slide first, for the time ratio
    python benchmarks/objects.py --dask                 # + the Dask path (hirestile.instances(...,
                                                        #   table=True) -> to_zarr + the table) on the
                                                        #   same inputs, in its own process

Prints per size: objects, seconds in pass 1 (label + measure), union-find, pass 2
(relabel + write), exports, peak RSS before the pass (the process with its imports and
inputs open) and at the end. With --dask also the Dask path's wall time (labels stored to
zarr and the Parquet table, Dask's threaded scheduler on all cores), its peak RSS, its ratio
to the CLI pass, and whether its labels and table equal the CLI pass's (they must, bit for bit).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def classmap_band(y0: int, y1: int, x0: int, x1: int, seed: int = 0) -> np.ndarray:
    """Rows [y0, y1) x cols [x0, x1) of the synthetic class map (the same pixels whatever the window)."""
    S = 20
    yy, xx = np.mgrid[y0:y1, x0:x1]
    out = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cy, cx = yy // S, xx // S
    for dy in (-1, 0, 1):                               # a pixel can lie in a neighbour cell's disc
        for dx in (-1, 0, 1):
            ny, nx = cy + dy, cx + dx
            h = (ny * 73856093) ^ (nx * 19349663) ^ seed
            h = (h * 2654435761) & 0xFFFFFFFF
            jy, jx, r = (h % 7) - 3, ((h >> 3) % 7) - 3, 3 + (h >> 6) % 7
            keep = ((h >> 9) % 4) != 0                  # 3 in 4 cells hold a nucleus
            d2 = (yy - (ny * S + S // 2 + jy)) ** 2 + (xx - (nx * S + S // 2 + jx)) ** 2
            out[keep & (d2 <= r * r)] = 1
    fib = np.abs(np.sin(xx / 311.0 + 3 * np.sin(yy / 977.0)) * 40 - ((yy * 0.37) % 40 - 20)) < 0.8
    out[fib & (out == 0)] = 2
    return out


def write_inputs(d: str, n: int) -> tuple[str, str]:
    from hirestile import ome

    cm_path, img_path = os.path.join(d, "classes.zarr"), os.path.join(d, "img.zarr")
    g = ome.new_group(cm_path, {"manifest": {"job": {"output": "labels"}, "classes": ["bg", "nucleus", "stroma"]}})
    arr = ome.create_array(g, "0", ome.choose_layout("labels", classes=3, out_hw=(n, n), tile=1024), np.uint8,
                           dimension_names=["y", "x"])
    for y0 in range(0, n, 1024):
        for x0 in range(0, n, 1024):
            arr[y0:min(y0 + 1024, n), x0:min(x0 + 1024, n)] = classmap_band(y0, min(y0 + 1024, n), x0,
                                                                            min(x0 + 1024, n))
    ome.finalize(g, ome=ome.ome_metadata(kind="labels", classes=("bg", "nucleus", "stroma"), name="cm", levels=1))

    def read(rows, cols):
        c = classmap_band(rows[0], rows[1], cols[0], cols[1])
        base = np.array([[230, 230, 230], [80, 40, 140], [220, 120, 160]], np.uint8)[c]
        return np.ascontiguousarray(np.moveaxis(base, -1, 0))
    ome.write_image(img_path, read=read, shape=(3, n, n), dtype=np.uint8, name="img", pyramid=False,
                    progress=False, block=1024)
    return cm_path, img_path


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (ru_maxrss would include the parent's, kept across exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    from hirestile.io import open_image
    from hirestile.objects import instances
    from hirestile.objects_export import export

    rss0 = peak_rss()
    with open_image(args.image) as img:
        res = instances(args.classmap, args.out, image=img, tile=args.tile, outlines=args.geojson,
                        overwrite=True, progress=False)
    t = time.perf_counter()
    export(res, table=args.out + ".parquet", geojson=(args.out + ".geojson") if args.geojson else None)
    res.times["exports"] = time.perf_counter() - t
    print(json.dumps({"objects": res.count, "times": res.times, "rss_before": rss0,
                      "peak_rss": peak_rss()}))


def dask_child(args: argparse.Namespace) -> None:
    """The Dask path on the same inputs: instance labels stored to zarr and the table, one graph."""
    import dask
    import pyarrow.parquet as pq

    import hirestile

    rss0 = peak_rss()
    t = time.perf_counter()
    labels, table = hirestile.instances(args.classmap, table=True, image=args.image, chunks=args.tile)
    store = labels.to_zarr(args.out, compute=False, overwrite=True)
    _, tab = dask.compute(store, table)
    pq.write_table(tab, args.out + ".parquet")
    wall = time.perf_counter() - t
    print(json.dumps({"objects": tab.num_rows, "wall": wall, "rss_before": rss0, "peak_rss": peak_rss(),
                      "workers": dask.config.get("num_workers", None) or os.cpu_count()}))


def same_output(cli_out: str, dask_out: str, tile: int) -> bool:
    """The CLI pass's and the Dask path's labels and tables are equal (band by band, never whole)."""
    import pyarrow.parquet as pq
    import zarr

    a, b = zarr.open_group(cli_out, mode="r")["0"], zarr.open_array(dask_out, mode="r")
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not all(np.array_equal(a[y:y + tile], b[y:y + tile]) for y in range(0, a.shape[0], tile)):
        return False
    return pq.read_table(cli_out + ".parquet").equals(pq.read_table(dask_out + ".parquet"))


def run_child(*cmd: str) -> dict:
    r = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def segment_time(img_path: str, d: str, tile: int) -> float:
    code = ("import sys, time; from hirestile.models.unet import unet; from hirestile.scheduler import segment_to_zarr;"
            "m = unet(in_channels=3, classes=3, base=8, depth=4, seed=0, name='unet-b8d4');"
            "s = segment_to_zarr(sys.argv[1], m, sys.argv[2], tile=int(sys.argv[3]), kind='labels', overwrite=True,"
            " progress=False); print(s.wall)")
    r = subprocess.run([sys.executable, "-c", code, img_path, os.path.join(d, "seg.zarr"), str(tile)],
                       capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4096,8192")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--geojson", action="store_true", help="trace outlines and write a GeoJSON too")
    p.add_argument("--segment", action="store_true", help="also time the segmentation of the same slide")
    p.add_argument("--dask", action="store_true", help="also time the Dask path on the same inputs")
    p.add_argument("--child", nargs=3, metavar=("CLASSMAP", "IMAGE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--dask-child", nargs=3, metavar=("CLASSMAP", "IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child or args.dask_child:
        args.classmap, args.image, args.out = args.child or args.dask_child
        (child if args.child else dask_child)(args)
        return
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
            cm, img = write_inputs(d, n)
            s = run_child("--child", cm, img, os.path.join(d, "inst.zarr"), "--tile", str(args.tile),
                          *(["--geojson"] if args.geojson else []))
            tt = s["times"]
            total = sum(tt.values())
            split = ", ".join(f"{k} {v:.1f} s" for k, v in tt.items())
            line = (f"{n}x{n}: {s['objects']:,} objects in {total:.1f} s ({n * n / 1e6 / total:.1f} MP/s; {split}); "
                    f"peak RSS {s['peak_rss'] / 2**20:,.0f} MiB (before the pass {s['rss_before'] / 2**20:,.0f} MiB)")
            if args.segment:
                seg = segment_time(img, d, args.tile)
                line += f"; segmentation {seg:.1f} s -> object pass adds {100 * total / seg:.0f}%"
            print(line, flush=True)
            if args.dask:
                q = run_child("--dask-child", cm, img, os.path.join(d, "dask.zarr"), "--tile", str(args.tile))
                same = same_output(os.path.join(d, "inst.zarr"), os.path.join(d, "dask.zarr"), args.tile)
                print(f"{n}x{n} Dask path ({q['workers']} threads, {args.tile}^2 blocks): {q['objects']:,} objects in "
                      f"{q['wall']:.1f} s ({n * n / 1e6 / q['wall']:.1f} MP/s), {q['wall'] / total:.2f}x the CLI pass; "
                      f"peak RSS {q['peak_rss'] / 2**20:,.0f} MiB (before {q['rss_before'] / 2**20:,.0f} MiB); "
                      f"labels and table equal to the CLI pass's: {same}", flush=True)


if __name__ == "__main__":
    main()
