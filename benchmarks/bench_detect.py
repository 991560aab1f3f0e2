"""``lungcad detect`` as a whole process, against a pinned reference network timed in the same run.

Two synthetic scans of 512 x 512 slices, written once by ``lungcad synth`` into a cache folder
(``$LUNGCAD_BENCH_CACHE``, default ``~/.cache/lungcad/bench``): 300 slices at 1 mm and 60 slices
at 5 mm.  Each repeat is a fresh ``lungcad detect SCAN -o OUT --overwrite`` process with the
shipped weights and the default outputs, so start-up, imports, model loading, reading and the
outputs are all in its wall time.  Its rows:

- ``wall``: the whole process, with ``peak_rss_mb`` (the child's own, from ``wait4``),
  ``scans_per_hour`` (one process per scan, as a Slurm array runs it) and ``ratio``, the wall
  time over the reference's time for the scan's slices;
- one row per timing of the scan's JSON: ``read``, the pipeline stages, ``outputs``;
- ``outside stages``: the wall time less the pipeline stages (start-up, imports, model loading,
  reading, outputs and the tables), with ``start-up`` (the wall time less the batch's own
  seconds in ``run.json``) and ``batch overhead`` (those seconds less the scan's timings:
  model loading, discovery, writing) beside it.

The reference, pinned so that its ratio holds across machines: the classic 2-D U-Net (4
poolings, 32 -> 512 filters, two 3 x 3 ReLU convolutions per level, no batch norm, 2 x 2
transposed convolutions up, a 1 x 1 sigmoid output; ``build_model("unet2d-classic")``),
input 512 x 512 x 1, batch 4, float32, random weights, forward passes only over
``REFERENCE_SLICES`` slices, timed after one warm-up batch in a process of its own, and scaled
to the scan's slice count.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LUNGCAD_BENCH_CACHE", Path.home() / ".cache" / "lungcad" / "bench"))
SCANS = {  # name: (slices, slice step mm, seed)
    "300 x 512 x 512 at 1 mm": (300, 1.0, 23001),
    "60 x 512 x 512 at 5 mm": (60, 5.0, 23005),
}
REFERENCE_SLICES = 60
REFERENCE_BATCH = 4

_REFERENCE_CODE = f"""
import json, time
import numpy as np
import keras
from lungcad.models import build_model
model = build_model("unet2d-classic", input_shape=(512, 512, 1), batch_norm=False)
x = np.random.default_rng(0).random(({REFERENCE_BATCH}, 512, 512, 1), dtype=np.float32)
model.predict_on_batch(x)                      # warm-up: graph tracing
t0 = time.perf_counter()
for _ in range({REFERENCE_SLICES} // {REFERENCE_BATCH}):
    model.predict_on_batch(x)
print(json.dumps({{"seconds": time.perf_counter() - t0, "parameters": model.count_params(),
                  "backend": keras.backend.backend()}}))
"""


def lungcad_cmd() -> list[str]:
    return [sys.executable, "-m", "lungcad"]


def scan_dir(name: str) -> Path:
    """The cached scan ``name`` of :data:`SCANS`, written by ``lungcad synth`` if missing."""
    slices, step, seed = SCANS[name]
    folder = CACHE / f"synth_{slices}x512_{step:g}mm_seed{seed}"
    if not (folder / ".complete").exists():
        subprocess.run(lungcad_cmd() + ["synth", str(folder), "--patients", "1", "--seed", str(seed),
                                        "--slices", str(slices), "--slice-mm", str(step), "--size", "512",
                                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        (folder / ".complete").write_text("")
    return folder


def _popen_wait4(cmd, env=None):
    """Run ``cmd``; ``(wall s, the child's own peak RSS MiB, stdout)`` (``os.wait4`` on its pid)."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env={**os.environ, **(env or {})},
                                cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def reference_seconds(repeats: int) -> tuple[float, list[float], dict]:
    """Median seconds of the reference over :data:`REFERENCE_SLICES` slices, each repeat a fresh process."""
    times, info = [], {}
    for _ in range(repeats):
        _, _, out = _popen_wait4([sys.executable, "-c", _REFERENCE_CODE])
        info = json.loads(out.strip().splitlines()[-1])
        times.append(info["seconds"])
    return statistics.median(times), times, info


def detect_once(scan: Path, out: Path, extra: list[str]) -> dict:
    """One ``lungcad detect`` process: its wall time, peak RSS and the timings it wrote."""
    wall, rss, _ = _popen_wait4(lungcad_cmd() + ["detect", str(scan), "-o", str(out), "--overwrite",
                                                 "--no-progress", "--quiet"] + extra)
    run = json.loads((out / "run.json").read_text())
    (scan_json,) = sorted((out / "scans").glob("*.json"))
    timings = json.loads(scan_json.read_text())["timings"]
    return {"wall": wall, "rss": rss, "timings": timings, "batch_s": float(run["this_run"]["seconds"])}


def main(repeats: int = 3, extra: list[str] | None = None) -> list[dict]:
    extra = list(extra or [])
    ref_median, ref_times, ref_info = reference_seconds(repeats)
    per_slice = ref_median / REFERENCE_SLICES
    rows = [{"name": f"reference U-Net 32->512, {REFERENCE_SLICES} slices, batch {REFERENCE_BATCH}",
             "median_s": ref_median, "runs_s": [round(t, 2) for t in ref_times],
             "per_slice_s": round(per_slice, 4), "parameters": ref_info.get("parameters"),
             "backend": ref_info.get("backend")}]
    with tempfile.TemporaryDirectory(prefix="lungcad-bench-") as tmp:
        for name, (slices, _, _) in SCANS.items():
            scan = scan_dir(name)
            runs = [detect_once(scan, Path(tmp) / f"{slices}_{i}", extra) for i in range(repeats)]
            wall = statistics.median(r["wall"] for r in runs)
            reference = per_slice * slices
            rows.append({"name": f"detect {name}: wall", "median_s": wall,
                         "runs_s": [round(r["wall"], 2) for r in runs],
                         "peak_rss_mb": round(max(r["rss"] for r in runs)),
                         "scans_per_hour": round(3600.0 / wall, 1),
                         "reference_s": round(reference, 2), "ratio": round(wall / reference, 4)})
            keys = list(runs[0]["timings"])
            for key in keys:
                rows.append({"name": f"detect {name}: {key}",
                             "median_s": statistics.median(r["timings"].get(key, 0.0) for r in runs)})
            stages = [k for k in keys if k not in ("read", "outputs")]
            rows.append({"name": f"detect {name}: outside stages",
                         "median_s": statistics.median(r["wall"] - sum(r["timings"][k] for k in stages)
                                                       for r in runs)})
            rows.append({"name": f"detect {name}: start-up",
                         "median_s": statistics.median(r["wall"] - r["batch_s"] for r in runs)})
            rows.append({"name": f"detect {name}: batch overhead",
                         "median_s": statistics.median(r["batch_s"] - sum(r["timings"].values())
                                                       for r in runs)})
    return rows
