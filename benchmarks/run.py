"""Run every benchmark in this folder: ``python benchmarks/run.py [--repeats N] [--only NAME]``.

Each ``bench_*.py`` defines ``main(repeats: int) -> list[dict]``; a row has at least
``name``, ``median_s`` and, where measured, ``peak_rss_mb``.  Results are printed as
a table and written to ``benchmarks/results.json`` together with the machine they ran on.
Timings on shared machines are noisy: compare ratios measured in one run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
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
    args = ap.parse_args(argv)
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if args.only and name not in args.only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"== {path.name}", flush=True)
        for row in mod.main(repeats=args.repeats):
            rows.append({"bench": name, **row})
            extra = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("name", "median_s"))
            print(f"  {row['name']:<48} median {row['median_s']:.3f} s  {extra}", flush=True)
    out = {"machine": machine(), "repeats": args.repeats, "results": rows}
    (HERE / "results.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {HERE / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
