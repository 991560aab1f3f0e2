"""One call for everything the CLI does: ``lungcad.api.detect(input, output, engine=...)``.

The CLI (``lungcad detect``) only parses its flags, calls :func:`detect` and sets the exit
code; a Python user gets the same outputs, resume, sharding and engines with one call::

    from lungcad.api import Ray, detect

    summary = detect("scans/", "out/")                          # one scan after another
    summary = detect("scans/", "out/", engine=Ray(actors=2))    # on Ray Data

Every option is checked once, before anything is read; a bad one is an
:class:`~lungcad.errors.OptionError` naming the keyword.  Progress and each scan's failure
are logged through ``logging.getLogger("lungcad")``: a scan done at INFO, a scan failed at
ERROR (with the exception, for a bug).  See docs/architecture.md, "Outputs and resume" and
"Scaling out".
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungcad.checks import check_bool, check_int
from lungcad.engines import Ray, Serial, check_engine
from lungcad.errors import InputError, LungcadError, OptionError, StageError  # noqa: F401  (users catch them here)
from lungcad.results.kinds import DEFAULT_OUTPUTS, check_outputs
from lungcad.scan_job import ScanJob, captured_warnings, done_line, one_line, report_error, unexpected_message
from lungcad.selection import resolve_inputs, select_series, shard

__all__ = ["Ray", "Serial", "detect", "make_pipeline", "resolve_inputs", "select_series", "shard"]

logger = logging.getLogger("lungcad")


@dataclass(frozen=True)
class Options:
    """The options of one :func:`detect` call, checked (:func:`check_options`)."""

    input_path: Path
    output_dir: Path
    batch_size: int | None = None
    num_shards: int = 1
    shard_index: int = 0
    all_series: bool = False
    series_uids: tuple[str, ...] = ()
    overwrite: bool = False
    progress: bool = False
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS


def _check_path(keyword: str, value) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise OptionError(keyword, "a path (str or os.PathLike)", value)
    return Path(value)


def check_options(input_path, output_dir, *, batch_size=None, num_shards=1, shard_index=0,
                  all_series=False, series_uids=(), overwrite=False, progress=False,
                  outputs=None) -> Options:
    """The :class:`Options` of a :func:`detect` call; an :class:`OptionError` naming the first
    keyword that is wrong."""
    num_shards = check_int("num_shards", num_shards, minimum=1)
    shard_index = check_int("shard_index", shard_index, minimum=0)
    if shard_index >= num_shards:
        raise OptionError("shard_index", f"in [0, {num_shards - 1}] for {num_shards} shard(s)", shard_index)
    if isinstance(series_uids, (str, bytes)):
        raise OptionError("series_uids", "a list of SeriesInstanceUIDs (not one string)", series_uids)
    try:
        uids = tuple(series_uids or ())
    except TypeError:
        raise OptionError("series_uids", "a list of SeriesInstanceUIDs", series_uids) from None
    if not all(isinstance(u, str) and u for u in uids):
        raise OptionError("series_uids", "a list of SeriesInstanceUIDs (non-empty strings)", series_uids)
    return Options(input_path=_check_path("input_path", input_path),
                   output_dir=_check_path("output_dir", output_dir),
                   batch_size=check_int("batch_size", batch_size, minimum=1, optional=True),
                   num_shards=num_shards, shard_index=shard_index,
                   all_series=check_bool("all_series", all_series), series_uids=uids,
                   overwrite=check_bool("overwrite", overwrite), progress=check_bool("progress", progress),
                   outputs=check_outputs(outputs))


def detect(input_path, output_dir, *, pipeline=None, engine: Serial | Ray | None = None,
           batch_size: int | None = None, num_shards: int = 1, shard_index: int = 0,
           all_series: bool = False, series_uids=(), overwrite: bool = False,
           progress: bool = False, outputs=None) -> dict[str, Any]:
    """Run the pipeline on every scan under ``input_path`` and write the outputs.

    A scan that fails, for any reason, gets a row in ``errors.csv`` and one ERROR record on
    the ``lungcad`` logger, and the batch goes on with the next scan; an input that does not
    exist or holds no scan is such a row too.  The tables and ``run.json`` are written at the
    end even when something stops the batch (an interrupt, a weights file that cannot be
    loaded).

    Parameters
    ----------
    input_path : path
        Folder tree, series folder, ``.mhd``/``.nii`` file, or a text file listing paths.
    output_dir : path
        Receives ``candidates.csv``, ``patients.csv``, ``scans/*.json``, ``report.html``,
        ``run.json`` and ``errors.csv``.
    pipeline : Pipeline, PipelineConfig, path to a TOML file, or None (the default).
    engine : Serial() (the default) or Ray(address=..., actors=..., gpus=..., retries=...)
        Where the scans run (:mod:`lungcad.engines`).
    batch_size : int, optional
        Slices per U-Net batch and patches per FPR batch (default: the pipeline's).
    num_shards, shard_index : int
        Run only this share of the scans (Slurm arrays, Kubernetes Indexed Jobs).
    all_series : bool
        Every CT series of a patient, not the one :func:`lungcad.io.choose_series` picks.
    series_uids : list of str
        Only these SeriesInstanceUIDs.
    overwrite : bool
        Redo scans whose results exist (default: skip them, i.e. resume).
    progress : bool
        A progress bar on stdout instead of a log record per scan.
    outputs : str or list of str, optional
        The outputs to write (:mod:`lungcad.results.kinds`): ``"csv,json,html,sr,seg,slicer,masks,gc"``
        or a list of those kinds; default ``csv,json,html,sr,seg`` (SR and SEG only for DICOM
        inputs).  The per-scan JSON, ``errors.csv`` and ``run.json`` are always written.

    Returns
    -------
    dict
        The run summary that is also written to ``run.json`` (counts of done, failed,
        skipped scans).

    Raises
    ------
    OptionError
        An option is invalid; it names the keyword.  Nothing has been read or written.
    RayNotInstalled
        ``engine=Ray(...)`` without the ``ray`` package.
    """
    opts = check_options(input_path, output_dir, batch_size=batch_size, num_shards=num_shards,
                         shard_index=shard_index, all_series=all_series, series_uids=series_uids,
                         overwrite=overwrite, progress=progress, outputs=outputs)
    engine = check_engine(engine)
    _check_pipeline_arg(pipeline)
    if isinstance(engine, Ray):
        from lungcad.ray_engine import import_ray
        import_ray()                      # RayNotInstalled before anything is read
    batch = start_batch(opts, pipeline)
    counts = {"done": 0, "failed": batch.input_failures}
    info = engine.describe()
    try:
        if batch.pending:
            if isinstance(engine, Ray):
                from lungcad.ray_engine import run_batch
                run_batch(batch, engine, counts, info)
            else:
                _run_serial(batch, counts)
    finally:
        summary = batch.finish(done=counts["done"], failures=counts["failed"], engine=info)
    return summary


def _run_serial(batch: "Batch", counts: dict[str, int]) -> None:
    """One scan after another in this process; ``counts`` kept up to date as each scan ends."""
    pipe, out = batch.pipe, batch.out
    pipe.load_models()
    bar = None
    if batch.options.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(batch.pending), unit="scan", desc="lungcad detect", file=sys.stdout)
    try:
        for s in batch.pending:
            job = ScanJob(s, outputs=batch.options.outputs)
            volume = prep = result = crops = files = None
            try:
                volume, prep = job.load(pipe)
                result, crops, files = job.networks(pipe, volume, prep)
                job.write(out, result, crops, files)
                counts["done"] += 1
                if not bar:
                    logger.info(done_line(result))
            except Exception as e:  # noqa: BLE001  whatever fails one scan is that scan's error row
                counts["failed"] += 1
                report_error(out, job.error(e), e)
            finally:
                volume = prep = result = crops = files = None
                gc.collect()
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()


@dataclass
class Batch:
    """A batch of scans resolved, selected, sharded and checked against what is already done:
    the part of :func:`detect` that every engine shares (:func:`start_batch`)."""

    options: Options
    pipe: Any                           #: the Pipeline
    out: Any                            #: the OutputDir
    pending: list                       #: the series of this shard not done yet
    skipped: int                        #: series of this shard done already (resume)
    not_chosen: list                    #: CT series that the choice of one per patient left out
    input_failures: int                 #: error rows written for inputs found unusable
    warnings: list = field(default_factory=list)   #: Python warnings met while discovering
    t_start: float = field(default_factory=time.time)

    def finish(self, *, done: int, failures: int, engine: dict | None = None) -> dict[str, Any]:
        """Write ``run.json`` and the tables (:meth:`OutputDir.finalize`) and return the summary.

        A result file of the folder that cannot be read (left by an earlier run) is one error
        record and an ``errors.csv`` row; it does not keep the tables from being written."""
        from lungcad.pipeline import versions

        o = self.options
        run_info = {
            "command": " ".join(sys.argv),
            "input": str(o.input_path),
            "shard": {"num_shards": o.num_shards, "shard_index": o.shard_index},
            "config": self.pipe.config.to_dict(),
            "config_hash": self.pipe.config.hash(),
            "outputs": list(o.outputs),
            "versions": versions(),
            "this_run": {"done": done, "failed": failures, "skipped": self.skipped,
                         "seconds": round(time.time() - self.t_start, 2)},
            "not_chosen": [{"patient_id": s.patient_id, "series_uid": s.series_uid, "path": str(s.path)}
                           for s in self.not_chosen],
        }
        if self.warnings:
            run_info["discovery_warnings"] = self.warnings
        if engine:
            run_info["engine"] = engine
        problems: list = []
        summary = self.out.finalize(run_info=run_info, problems=problems, outputs=o.outputs)
        for e in problems:
            logger.error(one_line(str(e)))
        failures += len(problems)
        summary = {**summary, "done": done, "failed": failures, "skipped": self.skipped}
        logger.info(one_line(f"{done} done, {failures} failed, {self.skipped} skipped; results in {o.output_dir}"))
        return summary


def _check_pipeline_arg(pipeline) -> None:
    from lungcad.config import PipelineConfig
    from lungcad.pipeline import Pipeline

    if pipeline is not None and not isinstance(pipeline, (Pipeline, PipelineConfig, str, os.PathLike)):
        raise OptionError("pipeline", "a Pipeline, a PipelineConfig, the path of a pipeline TOML file, or None",
                          pipeline)


def make_pipeline(pipeline=None, batch_size: int | None = None):
    """A :class:`Pipeline` from what :func:`detect` accepts as ``pipeline``."""
    from lungcad.config import PipelineConfig, load_config
    from lungcad.pipeline import Pipeline

    _check_pipeline_arg(pipeline)
    if isinstance(pipeline, Pipeline):
        return pipeline
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else load_config(pipeline)
    if batch_size:
        cfg = cfg.with_overrides({"candidates.batch_size": batch_size, "fpr.batch_size": batch_size})
    return Pipeline(cfg)


def start_batch(options: Options, pipeline=None) -> Batch:
    """Everything :func:`detect` does before the first scan: the pipeline, the output folder,
    the scans found, an error row for each bad input found on the way (shard 0 writes them;
    an input that does not exist or holds no scan is counted by every shard), and the scans
    of this shard that are not done yet.  Nothing found on the way stops the batch: a bug
    while discovering is one error row for the input, with its exception on the log record."""
    from lungcad.results.folder import OutputDir, safe_id

    o = options
    t_start = time.time()
    pipe = make_pipeline(pipeline, o.batch_size)
    out = OutputDir(o.output_dir)

    discovery_errors: list = []
    whole_input: list = []          # the input itself is unusable: every shard reports it
    caught: list = []
    with captured_warnings(caught):
        try:
            series = resolve_inputs(o.input_path, errors=discovery_errors)
        except InputError as e:
            series = []
            whole_input.append((e.path or str(o.input_path), e.problem))
        except Exception as e:  # noqa: BLE001  a bug while discovering: recorded, and the outputs still written
            series = []
            whole_input.append((str(o.input_path), unexpected_message(e, "io"), e))
        chosen, rejected, not_chosen = select_series(series, all_series=o.all_series, series_uids=o.series_uids)
    todo = shard(chosen, o.num_shards, o.shard_index)
    failures = 0
    # input problems found while discovering: each becomes an error row (shard 0 reports them)
    problems = whole_input + (discovery_errors if o.shard_index == 0 else [])
    for path, message, *exc in problems:
        out.write_error(safe_id("", str(path)), path=str(path), stage="io", message=message,
                        patient_id="", series_uid="")
        logger.error(one_line(f"{path}: {message}"), exc_info=exc[0] if exc else None)
        failures += 1
    if o.shard_index == 0:
        for s, reason, *exc in rejected:
            out.write_error(safe_id(s.patient_id, s.series_uid), path=str(s.path), stage="io",
                            message=reason, patient_id=s.patient_id, series_uid=s.series_uid)
            logger.error(one_line(f"{s.path}: {reason}"), exc_info=exc[0] if exc else None)
            failures += 1

    pending = [s for s in todo if o.overwrite or not out.scan_done(safe_id(s.patient_id, s.series_uid))]
    skipped = len(todo) - len(pending)
    if skipped:
        logger.info(f"{skipped} scan(s) already done in {o.output_dir}: skipped (use --overwrite to redo)")
    return Batch(options=o, pipe=pipe, out=out, pending=pending, skipped=skipped, not_chosen=not_chosen,
                 input_failures=failures, warnings=caught, t_start=t_start)
