"""The long fuzz campaign of issue 20: the mutators of ``tests/test_fuzz.py`` as a plain loop.

    python benchmarks/fuzz_campaign.py --examples 100000 --seed 20 --out fuzz-out --workers 2

Input ``i`` is made by ``tests/fuzz_inputs.py`` from a NumPy generator seeded with
``(seed, i)``, so every input can be made again alone (``--only i``) whatever the number of
workers.  Each worker process writes each input into its own fresh folder and runs
``fuzz_harness.run_case`` on it (discover, read_header/read_itk_info, load_series/load_itk,
load_ct).  The parent watches the workers: one that dies (a crash in C code) or is stuck on an
input for more than twice the hang limit is killed, its input recorded with a reproducer, and
restarted at its next input.

Written under ``--out``:

* ``summary.json``: inputs run; outcomes by kind (loaded fine, InputError, each other
  exception type and each broken promise); the same per seed family; time per input (mean,
  median, p99, max) and the slowest inputs; every escape with its reproducer; the most common
  InputError messages.  Rewritten every 30 s, so an interrupted campaign leaves its counts.
* ``repro/<index>-<what>/``: the files of each input that broke a promise (at most
  ``--keep`` per kind), with ``WHAT.txt`` (the mutations and the report).
* ``work/``: the workers' folders and their per-input ``results.jsonl``.

Worker processes run with an address-space limit (``--memory-mb``), so that an input that
makes lungcad allocate gigabytes fails (and is reported) instead of starving the machine.
``--traced-mb 64`` also traces Python and numpy allocations and reports any input whose peak
is above 64 MiB (the inputs are a few KB), at about four times the cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing as mp
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

#: Seed families and their share of the inputs (the test's shares of examples).
FAMILIES = {"synthetic_dicom": 0.4, "pydicom_files": 0.25, "metaimage": 0.2, "nifti": 0.15}


def _family_names(fi) -> dict[str, tuple[str, ...]]:
    return {"synthetic_dicom": fi.SYNTH_DICOM, "pydicom_files": fi.PYDICOM_FILES,
            "metaimage": fi.METAIMAGE, "nifti": fi.NIFTI}


def make_case(i: int, seed: int, seeds: dict, outside: Path):
    """Input ``i`` of the campaign ``seed``: (family, case)."""
    import numpy as np

    import fuzz_inputs as fi

    d = fi.NumpyDraws(np.random.default_rng([seed, i]))
    family = list(FAMILIES)[int(np.searchsorted(np.cumsum(list(FAMILIES.values())),
                                                d.integer(0, 999) / 1000, side="right"))]
    names = [n for n in _family_names(fi)[family] if n in seeds]
    return family, fi.mutate(seeds[d.choice(names)], d, outside=outside)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]


def _keep(folder: Path, dest: Path, what: str) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    if folder.is_dir():
        shutil.copytree(folder, dest)
    else:
        dest.mkdir(parents=True)
    (dest / "WHAT.txt").write_text(what)


# ----------------------------------------------------------------------------------- worker

def worker(lane: int, lanes: int, start: int, args: dict) -> None:
    """Run inputs start, start + lanes, ... below ``examples``."""
    out = Path(args["out"])
    home = out / "work" / f"w{lane}"
    home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=home / "lungcad.log", level=logging.WARNING, force=True)
    if args["memory_mb"]:
        limit = args["memory_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import fuzz_inputs as fi
    from fuzz_harness import run_case

    seeds = fi.build_seeds(home / "seeds")
    outside = fi.plant_sentinels(home / "outside")
    kept: collections.Counter = collections.Counter()
    with open(home / "results.jsonl", "a") as results:
        for i in range(start, args["examples"], lanes):
            (home / "current").write_text(str(i))
            try:
                family, case = make_case(i, args["seed"], seeds, outside)
                folder = fi.write_case(case, home / "case")
            except Exception as e:  # noqa: BLE001 - a bug of the mutators: count it, go on
                row = {"i": i, "family": "?", "seed": "?", "kind": "escape",
                       "key": "bug in the mutators", "where": "make_case",
                       "error": f"bug in the mutators: {type(e).__name__}: {e}"[:300],
                       "seconds": None, "violations": []}
                results.write(json.dumps(row) + "\n")
                results.flush()
                continue
            o = run_case(folder, case, outside=outside, hang_s=args["hang_s"],
                         traced_mb=args["traced_mb"])
            row = {"i": i, "family": family, "seed": case.seed, "kind": o.kind, "key": o.key,
                   "where": o.where, "error": o.error[:300], "seconds": round(o.seconds, 5),
                   "violations": [v[:300] for v in o.violations]}
            if not o.ok:
                kept[o.key] += 1
                if kept[o.key] <= args["keep"]:
                    dest = out / "repro" / f"{i:07d}-{_slug(o.key)}"
                    _keep(folder, dest, f"input {i} of --seed {args['seed']}\n"
                          f"{case.describe()}\n\n{o.report()}\n")
                    row["reproducer"] = str(dest)
            results.write(json.dumps(row) + "\n")
            results.flush()
    (home / "current").write_text("done")


# ----------------------------------------------------------------------------------- parent

class Campaign:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.rows: dict[int, dict] = {}
        self.offsets: dict[int, int] = {}
        self.started = time.time()

    def _read_results(self) -> None:
        for lane in range(self.args.workers):
            path = self.out / "work" / f"w{lane}" / "results.jsonl"
            if not path.exists():
                continue
            with open(path) as fh:
                fh.seek(self.offsets.get(lane, 0))
                while True:
                    line = fh.readline()
                    if not line.endswith("\n"):
                        break
                    row = json.loads(line)
                    self.rows[row["i"]] = row
                self.offsets[lane] = fh.tell() - (len(line) if line else 0)

    def _lost(self, lane: int, i: int, key: str, detail: str) -> None:
        """Record input ``i`` of a worker that crashed or hung, with its reproducer."""
        folder = self.out / "work" / f"w{lane}" / "case"
        dest = self.out / "repro" / f"{i:07d}-{_slug(key)}"
        _keep(folder, dest, f"input {i} of --seed {self.args.seed}\n{key}: {detail}\n")
        self.rows[i] = {"i": i, "family": "?", "seed": "?", "kind": "escape", "key": key,
                        "where": "", "error": f"{key}: {detail}", "seconds": None,
                        "violations": [],
                        "reproducer": str(dest)}
        print(f"  {key} at input {i}: {detail} (reproducer {dest})", flush=True)

    def summary(self) -> dict:
        rows = sorted(self.rows.values(), key=lambda r: r["i"])
        outcomes = collections.Counter(r["key"] for r in rows)
        other = collections.Counter(r["error"].split(":")[0] for r in rows if r["kind"] == "escape")
        by_family: dict = collections.defaultdict(collections.Counter)
        violations = collections.Counter()
        for r in rows:
            by_family[r["family"]][r["key"]] += 1
            for v in r["violations"]:
                violations[v.split(":")[0]] += 1
        secs = [r["seconds"] for r in rows if r["seconds"] is not None]
        slowest = sorted((r for r in rows if r["seconds"] is not None),
                         key=lambda r: -r["seconds"])[:10]
        messages = collections.Counter(
            re.sub(r"\d+(\.\d+)?", "N", re.sub(r"^\S+: ", "", r["error"]))[:120]
            for r in rows if r["kind"] == "InputError" and r["error"])
        bad = [r for r in rows if r["kind"] == "escape" or r["violations"]]
        wall = time.time() - self.started
        return {
            "command": " ".join([Path(sys.executable).name] + sys.argv),
            "seed": self.args.seed, "examples": self.args.examples, "workers": self.args.workers,
            "hang_s": self.args.hang_s, "memory_mb": self.args.memory_mb,
            "traced_mb": self.args.traced_mb,
            "commit": _commit(), "wall_s": round(wall, 1),
            "inputs_run": len(rows),
            "seconds_per_input_wall": round(wall / max(1, len(rows)), 5),
            "outcomes_by_kind": {
                "loaded": sum(r["kind"] == "loaded" and not r["violations"] for r in rows),
                "InputError": sum(r["kind"] == "InputError" and not r["violations"]
                                  for r in rows),
                "other_exceptions": dict(other.most_common()),
                "broken_promises_without_exception": sum(
                    r["kind"] != "escape" and bool(r["violations"]) for r in rows),
            },
            "outcomes": dict(outcomes.most_common()),
            "violations": dict(violations.most_common()),
            "by_family": {f: dict(c.most_common()) for f, c in sorted(by_family.items())},
            "seconds": {} if not secs else {
                "mean": round(statistics.fmean(secs), 5), "median": round(statistics.median(secs), 5),
                "p99": round(sorted(secs)[int(0.99 * (len(secs) - 1))], 5),
                "max": round(max(secs), 3)},
            "slowest": [{k: r[k] for k in ("i", "seed", "seconds", "key")} for r in slowest],
            "escapes_and_broken_promises": len(bad),
            "escapes": [{k: r.get(k) for k in ("i", "seed", "key", "where", "error",
                                               "violations", "reproducer")} for r in bad[:200]],
            "top_input_errors": dict(messages.most_common(25)),
            "reproduce_one": f"python benchmarks/fuzz_campaign.py --seed {self.args.seed} "
                             f"--only INDEX --out DIR",
        }

    def write_summary(self) -> dict:
        s = self.summary()
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(s, indent=2))
        tmp.replace(self.out / "summary.json")
        return s

    def run(self) -> dict:
        a = self.args
        ctx = mp.get_context("spawn")
        conf = {"out": str(self.out), "seed": a.seed, "examples": a.examples,
                "hang_s": a.hang_s, "memory_mb": a.memory_mb, "traced_mb": a.traced_mb,
                "keep": a.keep}
        procs: dict[int, mp.Process] = {}
        busy: dict[int, tuple[int, float]] = {}  # lane -> (input, since)

        def start(lane: int, first: int) -> None:
            if first >= a.examples:
                return
            p = ctx.Process(target=worker, args=(lane, a.workers, first, conf), daemon=True)
            p.start()
            procs[lane] = p

        for lane in range(a.workers):
            start(lane, lane)
        last_print = last_write = time.time()
        while procs:
            time.sleep(0.5)
            self._read_results()
            now = time.time()
            for lane, p in list(procs.items()):
                cur = self.out / "work" / f"w{lane}" / "current"
                text = cur.read_text().strip() if cur.exists() else ""
                if text.isdigit():
                    i = int(text)
                    if busy.get(lane, (None,))[0] != i:
                        busy[lane] = (i, now)
                    stuck = now - busy[lane][1] > 2 * a.hang_s + 30 and i not in self.rows
                else:
                    i, stuck = None, False
                if not p.is_alive() or stuck:
                    if stuck:
                        p.kill()
                    p.join()
                    del procs[lane]
                    self._read_results()
                    if text == "done" and not stuck:
                        continue
                    if i is None:  # died while starting
                        raise SystemExit(f"worker {lane} failed to start (exit {p.exitcode}); "
                                         f"see {self.out / 'work' / f'w{lane}'}")
                    if i not in self.rows:
                        self._lost(lane, i, "hang (worker killed)" if stuck else
                                   f"crash (worker exit {p.exitcode})",
                                   f"input {i} ran {now - busy[lane][1]:.0f} s" if stuck else
                                   "the worker process died on this input")
                    cur.unlink(missing_ok=True)
                    busy.pop(lane, None)
                    start(lane, i + a.workers)
            if now - last_print > 10 and self.rows:
                n = len(self.rows)
                rate = n / max(1e-9, now - self.started)
                counts = collections.Counter(r["key"] for r in self.rows.values())
                print(f"{n}/{a.examples} inputs, {rate:.1f}/s, ETA "
                      f"{(a.examples - n) / max(rate, 1e-9) / 60:.1f} min: "
                      f"{dict(counts.most_common(6))}", flush=True)
                last_print = now
            if now - last_write > 30:
                self.write_summary()
                last_write = now
        return self.write_summary()


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_one(args) -> int:
    """Make input ``--only`` again, run it here and print what happened."""
    import fuzz_inputs as fi
    from fuzz_harness import run_case

    home = Path(args.out) / f"only-{args.only}"
    seeds = fi.build_seeds(home / "seeds")
    outside = fi.plant_sentinels(home / "outside")
    family, case = make_case(args.only, args.seed, seeds, outside)
    folder = fi.write_case(case, home / "case")
    o = run_case(folder, case, outside=outside, hang_s=args.hang_s, traced_mb=args.traced_mb)
    print(f"input {args.only} ({family}) in {folder}\n{case.describe()}\n{o.report()}")
    return 0 if o.ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100_000, help="inputs to run")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--out", required=True, help="folder for summary.json, repro/ and work/")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--hang-s", type=float, default=30.0, help="hang limit of one input (s)")
    ap.add_argument("--memory-mb", type=int, default=4096,
                    help="address-space limit of each worker (0: none): an input that makes "
                         "lungcad allocate more fails with MemoryError, which is reported")
    ap.add_argument("--traced-mb", type=float, default=None,
                    help="trace Python/numpy allocations and report an input whose peak is "
                         "above this (MiB); about 4x slower")
    ap.add_argument("--keep", type=int, default=20, help="reproducers kept per kind")
    ap.add_argument("--only", type=int, help="make and run this one input, then stop")
    args = ap.parse_args(argv)
    if args.only is not None:
        return run_one(args)
    out = Path(args.out)
    if (out / "work").exists():
        shutil.rmtree(out / "work")
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    s = Campaign(args).run()
    print(json.dumps({k: s[k] for k in ("inputs_run", "outcomes_by_kind", "violations",
                                         "seconds", "escapes_and_broken_promises")}, indent=2))
    print(f"{s['inputs_run']} inputs in {time.time() - t:.0f} s; summary in {out / 'summary.json'}")
    return 0 if s["escapes_and_broken_promises"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
