"""Run every benchmark in this folder: ``python benchmarks/run.py [--repeats N] [--only NAME]``.

Each ``bench_*.py`` defines ``main(repeats: int) -> list[dict]``; a row has at least
``name``, ``median_s`` and, where measured, ``peak_rss_mb``.  Results are printed as
a table and written to ``benchmarks/results.json`` (or ``--out``) together with the machine
they ran on and the date.  ``--detect-args`` passes options to every ``lungcad detect`` of
``bench_detect.py`` (e.g. ``"--backend jax --device gpu"``).  Timings on shared machines are
noisy: compare ratios measured in one run (``bench_detect.py``'s ``ratio``).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import os
import platform
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    info = {"node": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                        / 2**30, 1)}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", action="append", default=[], help="run only bench_NAME.py")
    ap.add_argument("--detect-args", default="", help="options for each `lungcad detect` of bench_detect")
    ap.add_argument("--out", type=Path, default=HERE / "results.json", help="the JSON file written")
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if args.only and name not in args.only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"== {path.name}", flush=True)
        kwargs = {"repeats": args.repeats}
        if "extra" in inspect.signature(mod.main).parameters:
            kwargs["extra"] = shlex.split(args.detect_args)
        for row in mod.main(**kwargs):
            rows.append({"bench": name, **row})
            extra = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("name", "median_s"))
            print(f"  {row['name']:<56} median {row['median_s']:8.3f} s  {extra}", flush=True)
    out = {"machine": machine(), "started": started, "repeats": args.repeats,
           "detect_args": args.detect_args, "results": rows}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
