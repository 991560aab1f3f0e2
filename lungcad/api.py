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
    from lungcad.config import PipelineConfig, load_config
    from lungcad.io import load_series
    from lungcad.outputs import OutputDir, render_crops, safe_id
    from lungcad.pipeline import Pipeline, versions

    log = log or _PrintLog()
    t_start = time.time()
    if isinstance(pipeline, Pipeline):
        pipe = pipeline
    else:
        cfg = pipeline if isinstance(pipeline, PipelineConfig) else load_config(pipeline)
        if batch_size:
            cfg = cfg.with_overrides({"candidates.batch_size": batch_size, "fpr.batch_size": batch_size})
        pipe = Pipeline(cfg)
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
    if pending:
        pipe.load_models()
    done = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pending), unit="scan", desc="lungcad detect", file=sys.stdout)
    for s in pending:
        sid = safe_id(s.patient_id, s.series_uid)
        stage = "io"
        try:
            volume = load_series(s)
            stage = "pipeline"
            result = pipe.run(volume, input_path=str(s.path))
            stage = "outputs"
            crops = render_crops(volume, result.candidates, top_n=3)
            out.write_scan(result, crops=crops)
            done += 1
            if not bar:
                log.info(f"done  {s.patient_id}  {s.series_uid}  P(cancer)={result.cancer_probability:.3f}  "
                         f"candidates={len(result.candidates)}  {sum(result.timings.values()):.1f}s")
        except LungcadError as e:
            failures += 1
            st = e.stage if isinstance(e, StageError) else stage
            out.write_error(sid, path=str(s.path), stage=st, message=str(e),
                            patient_id=s.patient_id, series_uid=s.series_uid)
            log.error(f"lungcad detect: error: {e}" if isinstance(e, StageError) or str(s.path) in str(e)
                      else f"lungcad detect: error: {s.path}: {e}", e)
        except MemoryError as e:
            failures += 1
            out.write_error(sid, path=str(s.path), stage=stage, message="out of memory",
                            patient_id=s.patient_id, series_uid=s.series_uid)
            log.error(f"lungcad detect: error: {s.path}: out of memory in stage {stage}", e)
        finally:
            volume = result = None
            gc.collect()
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    run_info = {
        "command": " ".join(sys.argv),
        "input": str(input_path),
        "shard": {"num_shards": num_shards, "shard_index": shard_index},
        "config": pipe.config.to_dict(),
        "config_hash": pipe.config.hash(),
        "versions": versions(),
        "this_run": {"done": done, "failed": failures, "skipped": skipped,
                     "seconds": round(time.time() - t_start, 2)},
        "not_chosen": [{"patient_id": s.patient_id, "series_uid": s.series_uid, "path": str(s.path)}
                       for s in not_chosen],
    }
    summary = out.finalize(run_info=run_info)
    summary = {**summary, "done": done, "failed": failures, "skipped": skipped}
    log.info(f"{done} done, {failures} failed, {skipped} skipped; results in {output_dir}")
    return summary
