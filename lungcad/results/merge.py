"""``lungcad merge``: join the output folders of several shards into one."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lungcad.errors import InputError, OptionError
from lungcad.results import atomic as _atomic
from lungcad.results.folder import CROP_NAME, SAFE_ID, OutputDir, read_json, scan_files
from lungcad.results.kinds import OUTPUT_KINDS, check_outputs


def merge_outputs(dirs: list, out) -> dict[str, Any]:
    """Join the output folders of several shards into ``out`` and rebuild its tables.

    Copies ``scans/*.json`` with their crops and the files their JSON lists (``dicom/<id>/``,
    ``viewers/<id>/``), and ``errors/*.json``, into ``out``; the tables and the report are those
    that the shards' runs chose (``run.json``'s ``outputs``; all when none says).  A
    scan present in several folders is taken once, from the first folder in ``dirs``
    (or from ``out`` when it is already there); if the copies differ other than in
    their timings, the scan is listed under ``conflicts``.  An error whose scan succeeded
    in any folder is dropped.  ``out`` may be one of ``dirs``.

    Returns
    -------
    dict
        The merged ``run.json`` (see :meth:`OutputDir.finalize`) plus ``merged_from``,
        ``copied_scans``, ``copied_errors`` and ``conflicts``.
    """
    sources = [Path(d) for d in dirs]
    if not sources:
        raise ValueError("merge_outputs needs at least one folder to merge")
    for d in sources:
        if not d.is_dir():
            raise InputError(d, "no such folder")
        if not (d / "scans").is_dir() and not (d / "errors").is_dir():
            raise InputError(d, "not a lungcad detect output folder (no scans/ or errors/ inside)")
    target = OutputDir(out)
    out_res = target.root.resolve()
    taken: dict[str, Path] = {f.stem: target.root for f in scan_files(target.root)}
    conflicts, copied_scans, copied_errors = [], 0, 0
    others = [d for d in sources if d.resolve() != out_res]
    for d in others:
        for f in sorted((d / "scans").glob("*.json")) if (d / "scans").is_dir() else []:
            sid = f.stem
            if not SAFE_ID.match(sid):
                continue
            data = f.read_bytes()
            if sid in taken:
                if _strip_timings(data) != _strip_timings((taken[sid] / "scans" / f.name).read_bytes()):
                    conflicts.append(sid)
                continue
            src_crops = d / "crops" / sid
            for png in sorted(src_crops.glob("*.png")) if src_crops.is_dir() else []:
                if CROP_NAME.match(png.stem):
                    _atomic.atomic_write_bytes(target.crops_dir / sid / png.name, png.read_bytes())
            for rel in _listed_files(target, sid, data):
                src = d / rel
                if src.is_file():
                    _atomic.atomic_write_bytes(target.root / rel, src.read_bytes())
            _atomic.atomic_write_bytes(target.scans_dir / f.name, data)
            with contextlib.suppress(FileNotFoundError):
                target.error_path(sid).unlink()
            taken[sid] = d
            copied_scans += 1
    for d in others:
        for f in sorted((d / "errors").glob("*.json")) if (d / "errors").is_dir() else []:
            sid = f.stem
            if not SAFE_ID.match(sid) or sid in taken or target.error_path(sid).exists():
                continue
            _atomic.atomic_write_bytes(target.errors_dir / f.name, f.read_bytes())
            copied_errors += 1

    shard_runs = []
    for d in sources:
        rj = d / "run.json"
        if rj.is_file():
            with contextlib.suppress(InputError):
                shard_runs.append(read_json(rj))
    first = shard_runs[0] if shard_runs else {}
    chosen = [r["outputs"] for r in shard_runs if isinstance(r.get("outputs"), list)]
    skipped = sum(int((r.get("counts") or {}).get("skipped", 0) or 0) for r in shard_runs)
    seconds = [r.get("total_time_s") for r in shard_runs if isinstance(r.get("total_time_s"), (int, float))]
    run_info = {"command": "merge", "merged_from": [str(d) for d in sources],
                "config": first.get("config"), "config_hash": first.get("config_hash"),
                "versions": first.get("versions"), "skipped": skipped,
                "total_time_s": round(sum(seconds), 2) if seconds else None}
    try:
        outputs = check_outputs(sorted({k for c in chosen for k in c})) if chosen else OUTPUT_KINDS
    except OptionError:          # a run.json of another lungcad version
        outputs = OUTPUT_KINDS
    run = target.finalize(run_info=run_info, outputs=outputs)
    return {**run, "copied_scans": copied_scans, "copied_errors": copied_errors, "conflicts": conflicts}


def _listed_files(target: OutputDir, sid: str, data: bytes) -> list[str]:
    """The per-scan files (``dicom/<id>/...``, ``viewers/<id>/...``) that a scan's JSON lists,
    those whose path is not one of that scan's left out."""
    try:
        listed = json.loads(data).get("files") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []
    out = []
    for rel in listed if isinstance(listed, list) else []:
        with contextlib.suppress(ValueError):
            target.check_file_path(sid, rel)
            out.append(rel)
    return out


def _strip_timings(data: bytes):
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return data
    if isinstance(d, dict):
        d.pop("timings", None)
    return d
