"""``lungcad detect``: the batch command over a folder (or list) of CT scans."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from lungcad.errors import InputError, LungcadError, StageError


def add_parser(sub, parents):
    p = sub.add_parser(
        "detect", parents=parents, help="find nodules and score patients in a folder of CT scans",
        description="Run the lungcad pipeline on every CT series found under INPUT and write "
                    "candidates.csv, patients.csv, scans/*.json, report.html, run.json and errors.csv "
                    "into OUTPUT. Scans already done are skipped (resume), unless --overwrite.")
    p.add_argument("input", help="a folder tree of scans, one series folder, a .mhd/.mha/.nii(.gz) file, "
                                 "or a text file listing such paths, one per line")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--pipeline", help="pipeline TOML file (default: the built-in default pipeline)")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    p.add_argument("--device", choices=["cpu", "gpu"], help="force the CPU, or allow the GPU (default)")
    p.add_argument("--batch-size", type=int, help="slices per U-Net batch and patches per FPR batch")
    p.add_argument("--num-shards", type=int, help="split the scans into this many shards "
                   "(default: $SLURM_ARRAY_TASK_COUNT, or 1)")
    p.add_argument("--shard-index", type=int, help="the shard this process runs, 0-based "
                   "(default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX, or 0)")
    p.add_argument("--all-series", action="store_true",
                   help="run every CT series of a patient (default: one per patient: the thinnest "
                        "slices, then the softest kernel)")
    p.add_argument("--series-uid", action="append", default=[],
                   help="run only this SeriesInstanceUID (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="redo scans whose results exist")
    p.add_argument("--engine", choices=["serial", "ray"], default="serial",
                   help="serial: one scan after another in this process (default); ray: Ray Data, "
                        "reading and lung masks as CPU tasks, the networks in actors "
                        "(needs pip install 'lungcad[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join ('auto', 'ray://HOST:10001'); "
                        "default: start a local Ray on this machine")
    p.add_argument("--ray-actors", type=int, default=1, metavar="N",
                   help="with --engine ray: actors that hold the networks (default 1)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, metavar="F",
                   help="with --engine ray: GPUs each actor reserves (default 0: the networks run on CPU)")
    p.add_argument("--ray-retries", type=int, default=None, metavar="N",
                   help="with --engine ray: times a scan whose actor died (killed, out of memory) is sent "
                        "to a new actor before it gets an error row (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)
    return p


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """Resolve the shard from the flags, else Slurm array or Kubernetes Indexed Job variables."""
    env = os.environ
    if num_shards is None:
        num_shards = int(env.get("SLURM_ARRAY_TASK_COUNT") or env.get("LUNGCAD_NUM_SHARDS") or 1)
    if shard_index is None:
        idx = env.get("SLURM_ARRAY_TASK_ID") or env.get("JOB_COMPLETION_INDEX") or 0
        shard_index = int(idx)
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_MIN" in env:
            shard_index -= int(env["SLURM_ARRAY_TASK_MIN"])
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise argparse.ArgumentTypeError(
            f"--shard-index must be in [0, {num_shards - 1}] for --num-shards {num_shards}. "
            f"Received shard index {shard_index}")
    return num_shards, shard_index


def _set_backend(args) -> None:
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(args) -> int:
    try:
        num_shards, shard_index = shard_from_env(args.num_shards, args.shard_index)
    except (argparse.ArgumentTypeError, ValueError) as e:
        print(f"lungcad detect: error: {e}", file=sys.stderr)
        return 2
    if args.batch_size is not None and args.batch_size < 1:
        print(f"lungcad detect: error: --batch-size must be >= 1. Received {args.batch_size}", file=sys.stderr)
        return 2
    engine = getattr(args, "engine", "serial")
    if engine == "ray":
        if args.ray_actors < 1:
            print(f"lungcad detect: error: --ray-actors must be >= 1. Received {args.ray_actors}", file=sys.stderr)
            return 2
        if args.ray_retries is not None and args.ray_retries < 0:
            print(f"lungcad detect: error: --ray-retries must be >= 0. Received {args.ray_retries}", file=sys.stderr)
            return 2
        if args.ray_gpus_per_actor < 0:
            print(f"lungcad detect: error: --ray-gpus-per-actor must be >= 0. Received {args.ray_gpus_per_actor}",
                  file=sys.stderr)
            return 2
        from lungcad.ray_engine import RayNotInstalled, import_ray

        try:
            import_ray()
        except RayNotInstalled as e:
            print(f"lungcad detect: error: {e}", file=sys.stderr)
            return 1
    _set_backend(args)
    from lungcad.cli import load_backend

    if not load_backend("detect", debug=args.debug):
        return 1
    kwargs = dict(pipeline=args.pipeline, batch_size=args.batch_size, num_shards=num_shards,
                  shard_index=shard_index, all_series=args.all_series, series_uids=args.series_uid,
                  overwrite=args.overwrite, log=_Log(quiet=args.quiet, debug=args.debug),
                  progress=(not args.no_progress and not args.quiet and sys.stdout.isatty()))
    if engine == "ray":
        from lungcad.ray_engine import detect_ray

        summary = detect_ray(args.input, args.output, address=args.ray_address, actors=args.ray_actors,
                             gpus_per_actor=args.ray_gpus_per_actor,
                             **({} if args.ray_retries is None else {"retries": args.ray_retries}), **kwargs)
    else:
        from lungcad.api import detect

        summary = detect(args.input, args.output, **kwargs)
    return 1 if summary["failed"] else 0


class _Log:
    """One line per event on stdout, errors on stderr; tracebacks only with --debug."""

    def __init__(self, *, quiet: bool, debug: bool):
        self.quiet, self.debug = quiet, debug

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def error(self, msg: str, exc: BaseException | None = None) -> None:
        if self.debug and exc is not None:
            traceback.print_exception(exc, file=sys.stderr)
        print(msg, file=sys.stderr, flush=True)
