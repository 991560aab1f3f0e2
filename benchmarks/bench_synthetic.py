"""Time :func:`lungcad.synthetic.generate_phantom` at 512x512x300 and 256x256x120.

Run with the others by ``python benchmarks/run.py`` (or ``--only synthetic``).  Each
repeat uses another seed (the same seeds every time).  Issue 2's target is under 30 s for
512 x 512 x 300 on 2 CPU cores.
"""
from __future__ import annotations

import statistics
import time

from _util import peak_rss_mb

SIZES = [(300, 512, 512), (120, 256, 256)]


def main(repeats: int = 3, seed: int = 0) -> list[dict]:
    from lungcad.synthetic import generate_phantom

    rows = []
    for shape in SIZES:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            generate_phantom(seed=seed + r, shape=shape)
            times.append(time.perf_counter() - t0)
        rows.append({"name": f"phantom {shape[2]}x{shape[1]}x{shape[0]}", "median_s": statistics.median(times),
                     "peak_rss_mb": round(peak_rss_mb())})
    return rows
