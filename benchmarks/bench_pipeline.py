"""Time each pipeline stage, and the whole scan, with the shipped weights.

Cases: a full-size synthetic phantom (512 x 512, 1.25 mm slices) and, when present,
the real LIDC-IDRI-0003 scan from ../shared/data/real.  Reports the median of the
repeats per stage and the process's peak memory.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from _util import peak_rss_mb

REAL = Path(os.environ.get("LUNGCAD_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


def cases():
    from lungcad.synthetic import generate_phantom

    yield "phantom 512x512, 1.25 mm slices", generate_phantom(seed=4242, shape=(240, 512, 512),
                                                              spacing=(1.25, 0.7, 0.7)).volume
    lidc = REAL / "lidc-idri" / "LIDC-IDRI-0003"
    if lidc.is_dir():
        from lungcad.io import load_ct
        series = next(p.parent for p in lidc.rglob("*.dcm"))
        yield "LIDC-IDRI-0003 (140 x 512 x 512)", load_ct(series)


def main(repeats: int = 3) -> list[dict]:
    from lungcad.pipeline import Pipeline

    pipe = Pipeline()
    pipe.load_models()
    rows = []
    for name, vol in cases():
        pipe.run(vol)                                    # warm-up: graph tracing
        per_stage: dict[str, list[float]] = {}
        totals = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = pipe.run(vol)
            totals.append(time.perf_counter() - t0)
            for k, v in res.timings.items():
                per_stage.setdefault(k, []).append(v)
        for k, v in per_stage.items():
            rows.append({"name": f"{name}: {k}", "median_s": statistics.median(v)})
        rows.append({"name": f"{name}: whole scan", "median_s": statistics.median(totals),
                     "peak_rss_mb": round(peak_rss_mb())})
    return rows
