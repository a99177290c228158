"""The model at its own pixel size: resampling inside the graph against a pre-resampled copy (issue 16).

The slide of ``benchmarks/masks.py`` (histology tissue islands on glass, OME-Zarr) declared at
0.25 µm/px, level 0 only, so no level is within 10% of the model's pixel size. For each model
pixel size asked (0.5 µm/px: average 2x2; 0.4 µm/px: bilinear x 5/8), two runs of the built-in
``unet`` (probabilities, default tile), each in its own child process, interleaved round by round:

* **in-graph**: ``resample.resampled(unet, plan)`` on level 0 -- what ``segment`` does; every tile
  reads its level-0 window and resamples it inside the graph, nothing else is written;
* **pre-resampled**: ``unet`` on a copy resampled beforehand (the same resampling layers run
  full-frame, rounded to uint8 and written as OME-Zarr, as a separate resize step would); the
  time to make that copy is reported apart and not counted in the run.

    python benchmarks/resample.py                     # 4096^2, 3 rounds, 0.5 and 0.4 µm/px
    python benchmarks/resample.py --size 2048 --rounds 1 --model-pixel-size 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from masks import cpu, write_slide  # the same virtual slide and CPU line

PIXEL = 0.25                          # µm/px of the slide's level 0

CHILD = r"""
import json, sys
from hirestile.loading import load_model
from hirestile.resample import plan_resampling, resampled
from hirestile.scheduler import segment_to_zarr
inp, out, pixel, target = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
model = load_model("unet")
if pixel:
    model = resampled(model, plan_resampling((pixel, pixel), (target, target)))
s = segment_to_zarr(inp, model, out, overwrite=True, progress=False)
print(json.dumps({"wall": s.wall, "peak_rss": s.peak_rss, "tiles": s.tiles_total, "compute": s.compute}))
"""

# the resampling kernels (average pooling, bilinear) compiled and cached before the first round
WARM = r"""
import sys, numpy as np, hirestile
from hirestile.loading import load_model
from hirestile.resample import plan_resampling, resampled
for t in sys.argv[1:]:
    m = resampled(load_model("unet"), plan_resampling((0.25, 0.25), (float(t), float(t))))
    hirestile.predict(m, np.zeros((3, 96, 96), np.uint8))
"""


def child(inp: str, out: str, pixel: float, target: float, tries: int = 3) -> dict:
    """One run in its own process; a run that fails (a working tree being edited under it) is
    said and run again, up to ``tries`` times."""
    for k in range(tries):
        p = subprocess.run([sys.executable, "-c", CHILD, inp, out, str(pixel), str(target)],
                           capture_output=True, text=True, check=False)
        if p.returncode == 0:
            return json.loads(p.stdout.strip().splitlines()[-1])
        print(f"  (a run failed, {'again' if k + 1 < tries else 'giving up'}: "
              f"{(p.stderr.strip().splitlines() or ['?'])[-1]})")
    raise SystemExit(1)


def pre_resample(slide: str, out: str, target: float) -> tuple[float, tuple[int, int]]:
    """Write the slide resampled to ``target`` µm/px (uint8 OME-Zarr) with the same layers; return
    the seconds it took and its size."""
    import hirestile
    from hirestile.io import open_image
    from hirestile.model import Model
    from hirestile.ome import write_image
    from hirestile.resample import plan_resampling

    t0 = time.perf_counter()
    plan = plan_resampling((PIXEL, PIXEL), (target, target))
    with open_image(slide) as img:
        x = img.read((0, img.height), (0, img.width)).astype(np.float32)
    y = hirestile.predict(Model.from_graph(plan.graph(3)), x)
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    write_image(out, read=lambda r, c: y[:, r[0]:r[1], c[0]:c[1]], shape=y.shape, dtype=np.dtype(np.uint8),
                name="pre-resampled", progress=False)
    return time.perf_counter() - t0, y.shape[1:]


def declare(slide: str, pixel: float) -> None:
    """Keep level 0 only and declare its pixel size in µm."""
    import zarr

    g = zarr.open_group(slide, mode="r+")
    attrs = dict(g.attrs)
    ms = attrs["ome"]["multiscales"][0]
    ms["datasets"] = ms["datasets"][:1]
    for ax in ms["axes"]:
        if ax["name"] in ("y", "x"):
            ax["unit"] = "micrometer"
    tr = ms["datasets"][0]["coordinateTransformations"][0]
    tr["scale"] = [1.0, pixel, pixel]
    g.attrs.put(attrs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-pixel-size", type=float, nargs="+", default=[0.5, 0.4])
    a = ap.parse_args(argv)
    from hirestile.resample import plan_resampling

    with tempfile.TemporaryDirectory() as d:
        slide = os.path.join(d, "slide.zarr")
        write_slide(slide, a.size)
        declare(slide, PIXEL)
        subprocess.run([sys.executable, "-m", "hirestile", "warmup", "--model", "unet"], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-c", WARM, *map(str, a.model_pixel_size)], check=True, capture_output=True)
        print(f"slide {a.size}^2 at {PIXEL} µm/px; {cpu()}")
        for target in a.model_pixel_size:
            plan = plan_resampling((PIXEL, PIXEL), (target, target))
            pre = os.path.join(d, f"pre-{target}.zarr")
            secs, hw = pre_resample(slide, pre, target)
            print(f"model at {target} µm/px: {plan.describe()} -> {hw[0]} x {hw[1]} px; "
                  f"writing the pre-resampled copy took {secs:.1f} s (not counted below)")
            modes = {"in-graph": (slide, PIXEL), "pre-resampled": (pre, 0.0)}
            res: dict[str, list[dict]] = {m: [] for m in modes}
            for r in range(a.rounds):
                for mode, (inp, pixel) in modes.items():
                    x = child(inp, os.path.join(d, f"out-{mode}.zarr"), pixel, target)
                    res[mode].append(x)
                    print(f"  round {r}: {mode:<13} {x['wall']:6.1f} s (compute {x['compute']:5.1f} s), "
                          f"peak RSS {x['peak_rss'] / 2**20:5.0f} MiB, {x['tiles']} tiles")
            ratio = statistics.median(g["wall"] / p["wall"] for g, p in zip(res["in-graph"], res["pre-resampled"]))
            print(f"  in-graph / pre-resampled wall time: {ratio:.2f}x (median of {a.rounds} rounds)")
            import zarr
            g, p = (zarr.open_group(os.path.join(d, f"out-{m}.zarr"), mode="r")["0"][...].astype(np.float32)
                    for m in modes)
            print(f"  outputs: max |probability difference| {np.abs(g - p).max():.3g} (the copy is rounded to "
                  f"uint8), same argmax on {100 * (g.argmax(0) == p.argmax(0)).mean():.2f}% of pixels")


if __name__ == "__main__":
    main()
