"""Time :func:`lungcad.synthetic.generate_phantom` at 512x512x300 and 256x256x120.

Usage::

    python benchmarks/bench_synthetic.py [--runs 3] [--seed 0]

Prints the median wall time of ``--runs`` runs per size (each run a different seed, the same
seeds every time).  The target is under 30 s for 512 x 512 x 300 on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from lungcad.synthetic import generate_phantom

SIZES = [(300, 512, 512), (120, 256, 256)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"cpus available: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}")
    for shape in SIZES:
        times = []
        for r in range(args.runs):
            t0 = time.perf_counter()
            ph = generate_phantom(seed=args.seed + r, shape=shape)
            times.append(time.perf_counter() - t0)
            print(f"  {shape[2]}x{shape[1]}x{shape[0]} seed {args.seed + r}: {times[-1]:.2f} s "
                  f"(spacing {ph.volume.spacing[0]:g}x{ph.volume.spacing[1]:.3f} mm, {len(ph.lesions)} lesions)",
                  flush=True)
        print(f"{shape[2]}x{shape[1]}x{shape[0]}: median {statistics.median(times):.2f} s over {args.runs} runs",
              flush=True)


if __name__ == "__main__":
    main()
