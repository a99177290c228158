"""``segment --mask auto`` against no mask on a virtual slide with about 60% glass (issue 16).

The slide: bright, slightly noisy glass with elliptical tissue islands drawn from the
histology example (``hirestile example histology``'s pixels), written as an OME-Zarr
pyramid. The mask skips whole tiles, and the default tile can span the slide's width, so
the masked run sets ``--tile`` (512); it is compared with unmasked runs at the default tile
and at the same tile. Each run is its own child process (``hirestile segment``, built-in ``unet``), so
its peak RSS is its own; the two modes are interleaved round by round so that drift on
the machine hits them alike, and the time ratio is taken per round (median). The kernels
are compiled before the first round (``hirestile warmup``).

    python benchmarks/masks.py                      # 4096^2, 2 rounds, masked tile 512
    python benchmarks/masks.py --size 2048 --rounds 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys
from hirestile.scheduler import segment_to_zarr
inp, out, mask, tile = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = segment_to_zarr(inp, "unet", out, overwrite=True, progress=False, mask=None if mask == "none" else mask,
                    tile=tile or None)
print(json.dumps({"wall": s.wall, "peak_rss": s.peak_rss, "tiles": s.tiles_total, "computed": s.tiles_computed,
                  "notes": s.notes}))
"""

# tissue islands: (centre y, centre x, radius y, radius x) as fractions of the slide
ISLANDS = ((0.33, 0.30, 0.27, 0.22), (0.70, 0.68, 0.23, 0.25))


def tissue(ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Whether pixels (ys x xs) lie on tissue."""
    y, x = ys[:, None] / size, xs[None, :] / size
    inside = np.zeros((len(ys), len(xs)), bool)
    for cy, cx, ry, rx in ISLANDS:
        inside |= ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return inside


def write_slide(path: str, size: int) -> float:
    """Write the slide; return its glass fraction."""
    from hirestile.examples import EXAMPLES
    from hirestile.ome import write_image

    ex = EXAMPLES["histology"]

    def read(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        rng = np.random.default_rng(rows[0] * 100003 + cols[0])
        out = rng.integers(228, 246, (3, rows[1] - rows[0], cols[1] - cols[0])).astype(np.uint8)
        on = tissue(np.arange(*rows), np.arange(*cols), size)
        if on.any():
            out[:, on] = ex.pixels(rows, cols)[:, on]
        return out

    write_image(path, read=read, shape=(3, size, size), dtype=np.dtype(np.uint8), name="glass slide",
                progress=False)
    step = max(1, size // 1024)
    return 1.0 - float(tissue(np.arange(0, size, step), np.arange(0, size, step), size).mean())


def cpu() -> str:
    name = flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    fl = line.split(":", 1)[1].split()
                    flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in fl)
    except OSError:
        pass
    return f"{name or '?'} ({flags or 'no AVX2/AVX-512 flags'}), {os.cpu_count()} logical CPUs"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tile", type=int, default=512, help="tile of the masked run (and of one unmasked run)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        slide = os.path.join(d, "slide.zarr")
        glass = write_slide(slide, a.size)
        subprocess.run([sys.executable, "-m", "hirestile", "warmup", "--model", "unet"], check=True,
                       capture_output=True)
        print(f"slide {a.size}^2, {100 * glass:.0f}% glass; {cpu()}")
        # the mask skips whole tiles: the default tile may span the slide, so masked runs set --tile
        modes = [("none", 0), ("none", a.tile), ("auto", a.tile)]
        res: dict[tuple[str, int], list[dict]] = {m: [] for m in modes}
        for r in range(a.rounds):
            for mode, tile in modes:
                p = subprocess.run([sys.executable, "-c", CHILD, slide, os.path.join(d, f"out-{mode}.zarr"), mode,
                                    str(tile)], check=True, capture_output=True, text=True)
                res[mode, tile].append(json.loads(p.stdout.strip().splitlines()[-1]))
                x = res[mode, tile][-1]
                print(f"round {r}: mask {mode:<4} tile {tile or 'default':>7}: {x['wall']:7.1f} s, peak RSS "
                      f"{x['peak_rss'] / 2**20:5.0f} MiB, {x['computed']} of {x['tiles']} tiles computed")
        masked = res["auto", a.tile]
        for base in modes[:2]:
            ratio = statistics.median(n["wall"] / m["wall"] for n, m in zip(res[base], masked))
            print(f"no mask (tile {base[1] or 'default'}) / --mask auto (tile {a.tile}) wall time: {ratio:.2f}x "
                  f"(median of {a.rounds} rounds); peak RSS {max(x['peak_rss'] for x in res[base]) / 2**20:.0f} "
                  f"vs {max(x['peak_rss'] for x in masked) / 2**20:.0f} MiB")
        print(masked[-1]["notes"][-1])


if __name__ == "__main__":
    main()
