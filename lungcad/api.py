"""One call for everything the CLI does: ``lungcad.api.detect(input, output)``.

The CLI (``lungcad detect``) is a thin shell over :func:`detect`; a Python user gets
the same outputs, resume and sharding with one call.
"""
from __future__ import annotations

import gc
import sys
import time
import warnings
from contextlib import contextmanager
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
    exist) are appended to ``errors`` as ``(path, message)``, or ``(path, message,
    exception)`` for a bug met while reading a listed path.  A top-level path that
    does not exist, or holds no scan, raises :class:`InputError`.
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
            series = _discover(q, errors)
            if not series and len(errors) == n_err:
                errors.append((str(q), "no DICOM series or image file found here"))
            found.extend(series)
        return _unique(found)
    n_err = len(errors)
    series = discover(p, errors=errors)
    if not series and len(errors) == n_err:
        raise InputError(p, "no CT scan found (no DICOM series, .mhd/.mha or .nii/.nii.gz file)")
    return _unique(series)


def _discover(path, errors: list) -> list:
    """:func:`lungcad.io.discover` of one listed path; whatever stops it (an input error, or a
    bug: then with the exception as a third item, for ``--debug``) is one entry of ``errors``."""
    from lungcad.io import discover

    try:
        return discover(path, errors=errors)
    except InputError as e:
        errors.append((e.path or str(path), e.problem))
    except Exception as e:  # noqa: BLE001  a bug while reading one listed path: the others go on
        errors.append((str(path), unexpected_message(e, "io"), e))
    return []


def unexpected_message(exc: BaseException, stage: str) -> str:
    """The one-line message of an exception that is not a :class:`LungcadError`: a bug in lungcad
    or a library's surprise, not a problem lungcad knows how to name."""
    text = " ".join(str(exc).split())
    return (f"unexpected {type(exc).__name__}{': ' + text if text else ''} (in stage {stage}; "
            f"a bug in lungcad: run with --debug for the traceback and report it)")


@contextmanager
def captured_warnings(into: list):
    """Python warnings issued inside the block (pydicom's, numpy's, ...) appended to ``into`` as
    ``"Category: message"`` lines, each once, instead of being printed to stderr.  The warning
    filters in force decide, as ever, which warnings are issued."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:
            for w in caught:
                line = f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                if line not in into:
                    into.append(line)


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
    :func:`lungcad.io.choose_series` (the thinnest slices, then the softest kernel); should
    that fail on a patient's series (a bug), they are rejected as ``(series, reason,
    exception)`` and the other patients are chosen as usual.
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
        chosen = []
        by_patient: dict = {}
        for s in ct:
            by_patient.setdefault(s.patient_id, []).append(s)
        for group in by_patient.values():
            try:
                chosen.extend(choose_series(group).values())
            except Exception as e:  # noqa: BLE001  a bug in choosing: this patient's series fail, not the batch
                rejected.extend((s, unexpected_message(e, "io"), e) for s in group)
        failed = {id(r[0]) for r in rejected}
        ct = [s for s in ct if id(s) not in failed]
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

    A scan that fails, for any reason, gets a row in ``errors.csv`` and one line on the log's
    error stream, and the batch goes on with the next scan; an input that does not exist or
    holds no scan is such a row too.  The tables and ``run.json`` are written at the end even
    when something stops the batch (an interrupt, a weights file that cannot be loaded).

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
    done, failures = 0, batch.failures
    bar = None
    try:
        if pending:
            pipe.load_models()
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
            except Exception as e:  # noqa: BLE001  whatever fails one scan is that scan's error row
                failures += 1
                report_error(out, log, job.error(e, unexpected=True), e)
            finally:
                volume = prep = result = crops = None
                gc.collect()
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
        summary = batch.finish(done=done, failures=failures, log=log)
    return summary


class Batch:
    """A batch of scans resolved, selected, sharded and checked against what is already done;
    the part of :func:`detect` that any engine shares (the Ray engine too)."""

    def __init__(self, *, input_path, output_dir, pipe, out, pending, skipped, not_chosen, failures,
                 num_shards, shard_index, t_start, warnings=()):
        self.input_path, self.output_dir = input_path, output_dir
        self.pipe, self.out, self.pending = pipe, out, pending
        self.skipped, self.not_chosen, self.failures = skipped, not_chosen, failures
        self.num_shards, self.shard_index, self.t_start = num_shards, shard_index, t_start
        self.warnings = list(warnings)

    def finish(self, *, done: int, failures: int, log, engine: dict | None = None) -> dict[str, Any]:
        """Write ``run.json`` and the tables (:meth:`OutputDir.finalize`) and return the summary.

        A result file of the folder that cannot be read (left by an earlier run) is one error
        line and an ``errors.csv`` row; it does not keep the tables from being written."""
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
        if self.warnings:
            run_info["discovery_warnings"] = self.warnings
        if engine:
            run_info["engine"] = engine
        problems: list = []
        summary = self.out.finalize(run_info=run_info, problems=problems)
        for e in problems:
            log.error(one_line(f"lungcad detect: error: {e}"))
        failures += len(problems)
        summary = {**summary, "done": done, "failed": failures, "skipped": self.skipped}
        log.info(one_line(f"{done} done, {failures} failed, {self.skipped} skipped; results in {self.output_dir}"))
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
    the scans found, an error row for each bad input found on the way (shard 0 writes them;
    an input that does not exist or holds no scan is counted by every shard), and the scans
    of this shard that are not done yet.  Nothing found on the way stops the batch: a bug
    while discovering is one error row for the input, with its traceback under ``--debug``."""
    from lungcad.outputs import OutputDir, safe_id

    log = log or _PrintLog()
    t_start = time.time()
    pipe = make_pipeline(pipeline, batch_size)
    out = OutputDir(output_dir)

    discovery_errors: list = []
    whole_input: list = []          # the input itself is unusable: every shard reports it
    caught: list = []
    with captured_warnings(caught):
        try:
            series = resolve_inputs(input_path, errors=discovery_errors)
        except InputError as e:
            series = []
            whole_input.append((e.path or str(input_path), e.problem))
        except Exception as e:  # noqa: BLE001  a bug while discovering: recorded, and the outputs still written
            series = []
            whole_input.append((str(input_path), unexpected_message(e, "io"), e))
        chosen, rejected, not_chosen = select_series(series, all_series=all_series, series_uids=series_uids)
    todo = shard(chosen, num_shards, shard_index)
    failures = 0
    # input problems found while discovering: each becomes an error row (shard 0 reports them)
    problems = whole_input + (discovery_errors if shard_index == 0 else [])
    for path, message, *exc in problems:
        out.write_error(safe_id("", str(path)), path=str(path), stage="io", message=message,
                        patient_id="", series_uid="")
        log.error(one_line(f"lungcad detect: error: {path}: {message}"), *exc)
        failures += 1
    if shard_index == 0:
        for s, reason, *exc in rejected:
            out.write_error(safe_id(s.patient_id, s.series_uid), path=str(s.path), stage="io",
                            message=reason, patient_id=s.patient_id, series_uid=s.series_uid)
            log.error(one_line(f"lungcad detect: error: {s.path}: {reason}"), *exc)
            failures += 1

    pending = [s for s in todo if overwrite or not out.scan_done(safe_id(s.patient_id, s.series_uid))]
    skipped = len(todo) - len(pending)
    if skipped:
        log.info(f"{skipped} scan(s) already done in {output_dir}: skipped (use --overwrite to redo)")
    return Batch(input_path=input_path, output_dir=output_dir, pipe=pipe, out=out, pending=pending,
                 skipped=skipped, not_chosen=not_chosen, failures=failures, num_shards=num_shards,
                 shard_index=shard_index, t_start=t_start, warnings=caught)


class ScanJob:
    """One scan's work, in the steps that an engine may run in different processes:
    :meth:`load` (reading and the lung mask: CPU only), :meth:`networks` (the rest of the
    pipeline and the crops) and :meth:`write`.  Each step records the stage it is in, so that
    :meth:`error` reports a failure under the stage where it happened.  Python warnings issued
    by a step (a library's) go into the scan's warnings, not to stderr."""

    def __init__(self, series):
        from lungcad.outputs import safe_id

        self.series = series
        self.sid = safe_id(series.patient_id, series.series_uid)
        self.stage = "io"

    def load(self, pipe):
        """``(volume, prepared)``: the scan read, and :meth:`Pipeline.prepare` of it."""
        from lungcad.io import load_series

        caught: list = []
        with captured_warnings(caught):
            self.stage = "io"
            volume = load_series(self.series)
            self.stage = "pipeline"
            prep = pipe.prepare(volume)
        prep.warnings.extend(w for w in caught if w not in prep.warnings)
        return volume, prep

    def networks(self, pipe, volume, prep):
        """``(result, crops)``: :meth:`Pipeline.finish` and the PNG crops of the top candidates."""
        from lungcad.outputs import render_crops

        caught: list = []
        with captured_warnings(caught):
            self.stage = "pipeline"
            result = pipe.finish(volume, prep, input_path=str(self.series.path))
            self.stage = "outputs"
            crops = render_crops(volume, result.candidates, top_n=3)
        result.warnings.extend(w for w in caught if w not in result.warnings)
        return result, crops

    def write(self, out, result, crops) -> None:
        self.stage = "outputs"
        out.write_scan(result, crops=crops)

    def error(self, exc: BaseException, *, unexpected: bool = False) -> dict[str, str] | None:
        """The error row of a failure of this scan (``stage``, ``message``, ...) and its one
        log line (``line``, which names the scan's path); None for an exception that is a bug
        rather than a scan's fault, unless ``unexpected`` (then the message names the
        exception's type and text, and says that it is a bug)."""
        s, path = self.series, str(self.series.path)
        if isinstance(exc, LungcadError):
            stage = exc.stage if isinstance(exc, StageError) else self.stage
            message = str(exc)
        elif isinstance(exc, MemoryError):
            stage, message = self.stage, f"out of memory in stage {self.stage}"
        elif unexpected:
            stage, message = self.stage, unexpected_message(exc, self.stage)
        else:
            return None
        line = message if message.startswith(path) else f"{path}: {message}"
        return {"sid": self.sid, "path": path, "stage": stage, "message": message,
                "patient_id": s.patient_id, "series_uid": s.series_uid,
                "line": one_line(f"lungcad detect: error: {line}")}


def report_error(out, log, row: dict[str, str], exc: BaseException | None = None) -> None:
    """Write one scan's error row (:meth:`ScanJob.error`) and log its line."""
    out.write_error(row["sid"], path=row["path"], stage=row["stage"], message=row["message"],
                    patient_id=row["patient_id"], series_uid=row["series_uid"])
    log.error(row["line"], exc)


def one_line(text: str) -> str:
    """``text`` as one log line: control characters from headers or file names (newlines,
    NUL, terminal escapes) written as visible escapes."""
    from lungcad.outputs import escape_controls

    return escape_controls(str(text))


def done_line(result) -> str:
    """The log line of a scan done."""
    return one_line(f"done  {result.patient_id}  {result.series_uid}  P(cancer)={result.cancer_probability:.3f}  "
                    f"candidates={len(result.candidates)}  {sum(result.timings.values()):.1f}s")
