"""One call for everything the CLI does: ``lungcad.api.detect(input, output)``.

The CLI (``lungcad detect``) is a thin shell over :func:`detect`; a Python user gets
the same outputs, resume and sharding with one call.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

from lungcad.errors import InputError, LungcadError, StageError

LIST_SUFFIXES = {".txt", ".lst", ".list"}


class _PrintLog:
    def info(self, msg):
        print(msg, flush=True)

    def error(self, msg, exc=None):
        print(msg, file=sys.stderr, flush=True)


def resolve_inputs(input_path, *, errors: list | None = None):
    """Every series under ``input_path`` (a tree, a series folder, an image file, or a list file).

    Problems that do not stop the batch (a corrupt file, a listed path that does not
    exist) are appended to ``errors`` as ``(path, message)``.  A top-level path that
    does not exist raises :class:`InputError`.
    """
    from lungcad.io import discover

    errors = [] if errors is None else errors
    p = Path(input_path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(p, f"cannot read the list of scans: {e}") from e
        found = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line) if Path(line).is_absolute() else p.parent / line
            if not q.exists():
                errors.append((str(q), "listed in " + str(p) + " but no such file or folder"))
                continue
            n_err = len(errors)
            series = discover(q, errors=errors)
            if not series and len(errors) == n_err:
                errors.append((str(q), "no DICOM series or image file found here"))
            found.extend(series)
        return _unique(found)
    n_err = len(errors)
    series = discover(p, errors=errors)
    if not series and len(errors) == n_err:
        raise InputError(p, "no CT scan found (no DICOM series, .mhd/.mha or .nii/.nii.gz file)")
    return _unique(series)


def _unique(series):
    seen, out = set(), []
    for s in series:
        key = (s.series_uid, str(s.path))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def select_series(series, *, all_series: bool = False, series_uids=()):
    """Split discovered series into (to run, rejected as (series, reason), not chosen).

    Non-CT series, and series that cannot be stacked (missing slices, tilt, ...), are
    rejected with the reason.  By default one series per patient is chosen by
    :func:`lungcad.io.choose_series` (the thinnest slices, then the softest kernel).
    """
    from lungcad.io import choose_series

    rejected, ct = [], []
    for s in series:
        modality = (s.modality or "CT").upper()
        if modality != "CT":
            rejected.append((s, f"not a CT series (Modality {modality}); lungcad reads chest CT only"))
        elif s.problem:
            rejected.append((s, s.problem))
        else:
            ct.append(s)
    if series_uids:
        wanted = set(series_uids)
        chosen = [s for s in ct if s.series_uid in wanted]
    elif all_series:
        chosen = ct
    else:
        chosen = list(choose_series(ct).values())
    chosen_ids = {id(s) for s in chosen}
    not_chosen = [s for s in ct if id(s) not in chosen_ids]
    chosen.sort(key=lambda s: (str(s.patient_id), str(s.series_uid), str(s.path)))
    return chosen, rejected, not_chosen


def shard(items: list, num_shards: int, shard_index: int) -> list:
    """The deterministic share of ``items`` (already sorted) for one shard."""
    return [x for i, x in enumerate(items) if i % num_shards == shard_index]


def detect(input_path, output_dir, *, pipeline=None, batch_size: int | None = None,
           num_shards: int = 1, shard_index: int = 0, all_series: bool = False,
           series_uids=(), overwrite: bool = False, progress: bool = False,
           log=None) -> dict[str, Any]:
    """Run the pipeline on every scan under ``input_path`` and write the outputs.

    Parameters
    ----------
    input_path : path
        Folder tree, series folder, ``.mhd``/``.nii`` file, or a text file listing paths.
    output_dir : path
        Receives ``candidates.csv``, ``patients.csv``, ``scans/*.json``, ``report.html``,
        ``run.json`` and ``errors.csv``.
    pipeline : Pipeline, PipelineConfig, path to a TOML file, or None (the default).

    Returns
    -------
    dict
        The run summary that is also written to ``run.json`` (counts of done, failed,
        skipped scans).
    """
    log = log or _PrintLog()
    batch = start_batch(input_path, output_dir, pipeline=pipeline, batch_size=batch_size,
                        num_shards=num_shards, shard_index=shard_index, all_series=all_series,
                        series_uids=series_uids, overwrite=overwrite, log=log)
    pipe, out, pending = batch.pipe, batch.out, batch.pending
    if pending:
        pipe.load_models()
    done, failures = 0, batch.failures
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pending), unit="scan", desc="lungcad detect", file=sys.stdout)
    for s in pending:
        job = ScanJob(s)
        try:
            volume, prep = job.load(pipe)
            result, crops = job.networks(pipe, volume, prep)
            job.write(out, result, crops)
            done += 1
            if not bar:
                log.info(done_line(result))
        except (LungcadError, MemoryError) as e:
            failures += 1
            report_error(out, log, job.error(e), e)
        finally:
            volume = prep = result = crops = None
            gc.collect()
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return batch.finish(done=done, failures=failures, log=log)


class Batch:
    """A batch of scans resolved, selected, sharded and checked against what is already done;
    the part of :func:`detect` that any engine shares (the Ray engine too)."""

    def __init__(self, *, input_path, output_dir, pipe, out, pending, skipped, not_chosen, failures,
                 num_shards, shard_index, t_start):
        self.input_path, self.output_dir = input_path, output_dir
        self.pipe, self.out, self.pending = pipe, out, pending
        self.skipped, self.not_chosen, self.failures = skipped, not_chosen, failures
        self.num_shards, self.shard_index, self.t_start = num_shards, shard_index, t_start

    def finish(self, *, done: int, failures: int, log, engine: dict | None = None) -> dict[str, Any]:
        """Write ``run.json`` and the tables (:meth:`OutputDir.finalize`) and return the summary."""
        from lungcad.pipeline import versions

        run_info = {
            "command": " ".join(sys.argv),
            "input": str(self.input_path),
            "shard": {"num_shards": self.num_shards, "shard_index": self.shard_index},
            "config": self.pipe.config.to_dict(),
            "config_hash": self.pipe.config.hash(),
            "versions": versions(),
            "this_run": {"done": done, "failed": failures, "skipped": self.skipped,
                         "seconds": round(time.time() - self.t_start, 2)},
            "not_chosen": [{"patient_id": s.patient_id, "series_uid": s.series_uid, "path": str(s.path)}
                           for s in self.not_chosen],
        }
        if engine:
            run_info["engine"] = engine
        summary = self.out.finalize(run_info=run_info)
        summary = {**summary, "done": done, "failed": failures, "skipped": self.skipped}
        log.info(f"{done} done, {failures} failed, {self.skipped} skipped; results in {self.output_dir}")
        return summary


def make_pipeline(pipeline=None, batch_size: int | None = None):
    """A :class:`Pipeline` from what :func:`detect` accepts as ``pipeline``."""
    from lungcad.config import PipelineConfig, load_config
    from lungcad.pipeline import Pipeline

    if isinstance(pipeline, Pipeline):
        return pipeline
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else load_config(pipeline)
    if batch_size:
        cfg = cfg.with_overrides({"candidates.batch_size": batch_size, "fpr.batch_size": batch_size})
    return Pipeline(cfg)


def start_batch(input_path, output_dir, *, pipeline=None, batch_size=None, num_shards=1, shard_index=0,
                all_series=False, series_uids=(), overwrite=False, log=None) -> Batch:
    """Everything :func:`detect` does before the first scan: the pipeline, the output folder,
    the scans found, an error row for each bad input found on the way (shard 0 writes them),
    and the scans of this shard that are not done yet."""
    from lungcad.outputs import OutputDir, safe_id

    log = log or _PrintLog()
    t_start = time.time()
    pipe = make_pipeline(pipeline, batch_size)
    out = OutputDir(output_dir)

    discovery_errors: list = []
    series = resolve_inputs(input_path, errors=discovery_errors)
    chosen, rejected, not_chosen = select_series(series, all_series=all_series, series_uids=series_uids)
    todo = shard(chosen, num_shards, shard_index)
    failures = 0
    # input problems found while discovering: each becomes an error row (shard 0 reports them)
    if shard_index == 0:
        for path, message in discovery_errors:
            out.write_error(safe_id("", str(path)), path=str(path), stage="io", message=message,
                            patient_id="", series_uid="")
            log.error(f"lungcad detect: error: {path}: {message}")
            failures += 1
        for s, reason in rejected:
            out.write_error(safe_id(s.patient_id, s.series_uid), path=str(s.path), stage="io",
                            message=reason, patient_id=s.patient_id, series_uid=s.series_uid)
            log.error(f"lungcad detect: error: {s.path}: {reason}")
            failures += 1

    pending = [s for s in todo if overwrite or not out.scan_done(safe_id(s.patient_id, s.series_uid))]
    skipped = len(todo) - len(pending)
    if skipped:
        log.info(f"{skipped} scan(s) already done in {output_dir}: skipped (use --overwrite to redo)")
    return Batch(input_path=input_path, output_dir=output_dir, pipe=pipe, out=out, pending=pending,
                 skipped=skipped, not_chosen=not_chosen, failures=failures, num_shards=num_shards,
                 shard_index=shard_index, t_start=t_start)


class ScanJob:
    """One scan's work, in the steps that an engine may run in different processes:
    :meth:`load` (reading and the lung mask: CPU only), :meth:`networks` (the rest of the
    pipeline and the crops) and :meth:`write`.  Each step records the stage it is in, so that
    :meth:`error` reports a failure under the stage where it happened."""

    def __init__(self, series):
        from lungcad.outputs import safe_id

        self.series = series
        self.sid = safe_id(series.patient_id, series.series_uid)
        self.stage = "io"

    def load(self, pipe):
        """``(volume, prepared)``: the scan read, and :meth:`Pipeline.prepare` of it."""
        from lungcad.io import load_series

        self.stage = "io"
        volume = load_series(self.series)
        self.stage = "pipeline"
        return volume, pipe.prepare(volume)

    def networks(self, pipe, volume, prep):
        """``(result, crops)``: :meth:`Pipeline.finish` and the PNG crops of the top candidates."""
        from lungcad.outputs import render_crops

        self.stage = "pipeline"
        result = pipe.finish(volume, prep, input_path=str(self.series.path))
        self.stage = "outputs"
        return result, render_crops(volume, result.candidates, top_n=3)

    def write(self, out, result, crops) -> None:
        self.stage = "outputs"
        out.write_scan(result, crops=crops)

    def error(self, exc: BaseException, *, unexpected: bool = False) -> dict[str, str] | None:
        """The error row of a failure of this scan (``stage``, ``message``, ...) and its one
        log line (``line``); None for an exception that is a bug rather than a scan's fault,
        unless ``unexpected`` (then the exception's type and text are the message)."""
        s, path = self.series, str(self.series.path)
        if isinstance(exc, LungcadError):
            stage = exc.stage if isinstance(exc, StageError) else self.stage
            message = str(exc)
            line = (f"lungcad detect: error: {exc}" if isinstance(exc, StageError) or path in message
                    else f"lungcad detect: error: {path}: {exc}")
        elif isinstance(exc, MemoryError):
            stage, message = self.stage, "out of memory"
            line = f"lungcad detect: error: {path}: out of memory in stage {self.stage}"
        elif unexpected:
            stage, message = self.stage, f"{type(exc).__name__}: {exc}"
            line = f"lungcad detect: error: {path}: {message} (in stage {self.stage})"
        else:
            return None
        return {"sid": self.sid, "path": path, "stage": stage, "message": message,
                "patient_id": s.patient_id, "series_uid": s.series_uid, "line": line}


def report_error(out, log, row: dict[str, str], exc: BaseException | None = None) -> None:
    """Write one scan's error row (:meth:`ScanJob.error`) and log its line."""
    out.write_error(row["sid"], path=row["path"], stage=row["stage"], message=row["message"],
                    patient_id=row["patient_id"], series_uid=row["series_uid"])
    log.error(row["line"], exc)


def done_line(result) -> str:
    """The log line of a scan done."""
    return (f"done  {result.patient_id}  {result.series_uid}  P(cancer)={result.cancer_probability:.3f}  "
            f"candidates={len(result.candidates)}  {sum(result.timings.values()):.1f}s")
