"""Timing helpers shared by the benchmarks: median of repeats and peak memory."""
from __future__ import annotations

import resource
import statistics
import time


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_time(fn, repeats: int, *, warmup: int = 1) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median, all)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
