"""``lungcad detect``: the batch command over a folder (or list) of CT scans."""
from __future__ import annotations

import os
import sys

from lungcad.errors import OptionError


def add_parser(sub, parents):
    p = sub.add_parser(
        "detect", parents=parents, help="find nodules and score patients in a folder of CT scans",
        description="Run the lungcad pipeline on every CT series found under INPUT and write "
                    "candidates.csv, patients.csv, scans/*.json, report.html, run.json and errors.csv "
                    "(and the outputs --outputs chooses) into OUTPUT. Scans already done are skipped "
                    "(resume), unless --overwrite.")
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
    p.add_argument("--outputs", metavar="LIST",
                   help="comma-separated outputs to write, of csv,json,html,sr,seg,slicer,masks,gc "
                        "(default csv,json,html,sr,seg; sr and seg only for DICOM inputs; the per-scan "
                        "JSON, errors.csv and run.json are always written)")
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


#: the flag of each keyword of :func:`lungcad.api.detect` and :class:`lungcad.engines.Ray`,
#: to say an :class:`OptionError` in the CLI's words
FLAGS = {"batch_size": "--batch-size", "num_shards": "--num-shards", "shard_index": "--shard-index",
         "series_uids": "--series-uid", "pipeline": "--pipeline", "outputs": "--outputs",
         "address": "--ray-address",
         "actors": "--ray-actors", "gpus": "--ray-gpus-per-actor", "retries": "--ray-retries"}


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """The shard from the flags, else from Slurm array or Kubernetes Indexed Job variables
    (:func:`lungcad.api.detect` checks the range)."""
    env = os.environ
    if num_shards is None:
        num_shards = int(env.get("SLURM_ARRAY_TASK_COUNT") or env.get("LUNGCAD_NUM_SHARDS") or 1)
    if shard_index is None:
        idx = env.get("SLURM_ARRAY_TASK_ID") or env.get("JOB_COMPLETION_INDEX") or 0
        shard_index = int(idx)
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_MIN" in env:
            shard_index -= int(env["SLURM_ARRAY_TASK_MIN"])
    return num_shards, shard_index


def _set_backend(args) -> None:
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _usage(e: OptionError) -> int:
    flag = FLAGS.get(e.keyword, e.keyword)
    print(f"lungcad detect: error: {flag} must be {e.requirement}. Received {e.received}", file=sys.stderr)
    return 2


def run(args) -> int:
    from lungcad.engines import Ray, Serial

    try:
        num_shards, shard_index = shard_from_env(args.num_shards, args.shard_index)
    except ValueError as e:
        print(f"lungcad detect: error: the shard from the environment is not an integer: {e}", file=sys.stderr)
        return 2
    try:
        engine = (Ray(address=args.ray_address, actors=args.ray_actors, gpus=args.ray_gpus_per_actor,
                      **({} if args.ray_retries is None else {"retries": args.ray_retries}))
                  if args.engine == "ray" else Serial())
        from lungcad.api import check_options

        check_options(args.input, args.output, batch_size=args.batch_size, num_shards=num_shards,
                      shard_index=shard_index, series_uids=args.series_uid, outputs=args.outputs)
    except OptionError as e:
        return _usage(e)
    _set_backend(args)
    from lungcad.cli import load_backend

    if not load_backend("detect", debug=args.debug):
        return 1
    from lungcad.api import detect

    try:
        summary = detect(args.input, args.output, pipeline=args.pipeline, engine=engine,
                         batch_size=args.batch_size, num_shards=num_shards, shard_index=shard_index,
                         all_series=args.all_series, series_uids=args.series_uid, overwrite=args.overwrite,
                         progress=(not args.no_progress and not args.quiet and sys.stdout.isatty()),
                         outputs=args.outputs)
    except OptionError as e:
        return _usage(e)
    return 1 if summary["failed"] else 0
