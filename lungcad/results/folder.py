"""The output folder of ``lungcad detect``: per-scan files, the tables, the report.

Layout of an output folder::

    OUTPUT/
      scans/<id>.json          one per scan done (ScanResult.to_dict() plus its crop list)
      crops/<id>/<n>_<plane>.png   images of the nodules shown (axial, coronal, sagittal, overview)
      dicom/<id>/sr.dcm, seg.dcm   DICOM SR and SEG (--outputs sr,seg; DICOM inputs only)
      viewers/<id>/...         nodules.mrk.json, lung.nii.gz, nodules.nii.gz, nodules.gc.json
      errors/<id>.json         one per scan that failed
      candidates.csv           rebuilt from scans/*.json by finalize()
      patients.csv             rebuilt from scans/*.json
      errors.csv               rebuilt from errors/*.json
      report.html              rebuilt; opens from disk (relative links to crops/)
      run.json                 the manifest of the last run

Per-scan files are written atomically (:mod:`lungcad.results.atomic`: a temporary file in the same
folder, fsync, then ``os.replace``), crops and the other per-scan files before the JSON (which lists
them under ``"files"``), so that the JSON's existence means the scan is complete.  A killed run
loses nothing it finished, and :meth:`OutputDir.finalize` rebuilds the tables from whatever is on
disk, sorted, so the same set of scans always gives byte-identical CSVs, whatever the order they
were written in.

``<id>`` is :func:`safe_id` of the PatientID and SeriesInstanceUID: only
``[A-Za-z0-9._-]``, so nothing read from a DICOM header can leave the output folder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcad import __version__
from lungcad.errors import InputError
from lungcad.result import ScanResult, table_records
from lungcad.results import atomic as _atomic
from lungcad.results.kinds import FILE_FOLDERS, OUTPUT_KINDS, check_outputs
from lungcad.results.report import render_report
from lungcad.results.tables import ERRORS_CSV_COLUMNS, candidates_table, csv_text, patients_table

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: A scan id as :func:`safe_id` makes it: the stem of ``scans/<id>.json``, ``errors/<id>.json``, ``crops/<id>/``.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: The name of a crop, ``crops/<id>/<name>.png``.
CROP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The name of a per-scan file, ``<folder>/<id>/<name>`` (folder in :data:`FILE_FOLDERS`).
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- ids

def _clean(text: str, limit: int, *, keep_tail: bool) -> str:
    t = _UNSAFE.sub("_", str(text)).strip("._-")
    if len(t) > limit:
        t = t[-limit:] if keep_tail else t[:limit]
        t = t.strip("._-")
    return t


def safe_id(patient_id: str, series_uid: str) -> str:
    """A file-name-safe id for a scan: ``<patient>_<series>_<hash>``.

    Only ``[A-Za-z0-9._-]``, never a leading dot or dash, at most 116 characters.
    The parts are the sanitized PatientID (first 40 characters) and SeriesInstanceUID
    (last 64), and the hash is the first 10 hex digits of the SHA-256 of the raw ids,
    so two different (patient, series) pairs never share an id after sanitizing.
    A PatientID of ``../../etc`` gives ``etc_<series>_<hash>``.
    """
    raw = f"{patient_id}\x00{series_uid}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:10]
    parts = [_clean(patient_id, 40, keep_tail=False), _clean(series_uid, 64, keep_tail=True)]
    return "_".join([p for p in parts if p] + [digest])


def _finite(obj):
    """Plain JSON values, recursively: numpy scalars and arrays unwrapped, inf/NaN floats as None."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _dump_json(obj) -> str:
    # default=str: a value JSON cannot hold (a Path in a config) is written as text, not a crash
    return json.dumps(_finite(obj), indent=2, ensure_ascii=True, allow_nan=False, default=str) + "\n"


# ----------------------------------------------------------------------------- the folder

def scan_files(root) -> list[Path]:
    """The per-scan result files ``root/scans/*.json`` of an output folder, sorted by name
    (reads nothing, creates nothing)."""
    return sorted((f for f in (Path(root) / "scans").glob("*.json") if SAFE_ID.match(f.stem)),
                  key=lambda f: f.name)


class OutputDir:
    """The output folder of a detection run (see the module docstring for its layout).

    Parameters
    ----------
    root : path
        Created if missing.
    """

    def __init__(self, root):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(self.root, "the output path exists and is not a folder")
        for d in (self.scans_dir, self.errors_dir, self.crops_dir):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def scans_dir(self) -> Path:
        return self.root / "scans"

    @property
    def errors_dir(self) -> Path:
        return self.root / "errors"

    @property
    def crops_dir(self) -> Path:
        return self.root / "crops"

    @staticmethod
    def _check_sid(sid: str) -> str:
        if not isinstance(sid, str) or not SAFE_ID.match(sid):
            raise ValueError(f"not a safe scan id (expected safe_id(patient_id, series_uid): "
                             f"[A-Za-z0-9._-], no leading dot). Received {sid!r}")
        return sid

    def scan_path(self, sid: str) -> Path:
        return self.scans_dir / f"{self._check_sid(sid)}.json"

    def error_path(self, sid: str) -> Path:
        return self.errors_dir / f"{self._check_sid(sid)}.json"

    def scan_done(self, sid: str) -> bool:
        """True when the scan's ``scans/<id>.json`` exists (it is written last, atomically)."""
        return self.scan_path(sid).is_file()

    def read_scan(self, sid: str) -> ScanResult:
        """The :class:`ScanResult` stored in ``scans/<id>.json``."""
        return ScanResult.from_dict(read_json(self.scan_path(sid)))

    def write_scan(self, result: ScanResult, *, crops: dict[str, bytes] | None = None,
                   files: dict[str, bytes] | None = None) -> str:
        """Write one scan: its crops and files, then ``scans/<id>.json``; drop a stale
        ``errors/<id>.json``.

        Parameters
        ----------
        result : ScanResult
        crops : dict of name -> PNG bytes, optional
            From :func:`render_crops`; written as ``crops/<id>/<name>.png``.  Crops left
            from an earlier run of the same scan that are not in ``crops`` are removed.
        files : dict of relative path -> bytes, optional
            The scan's other files (:func:`lungcad.results.kinds.render_files`), each
            ``<folder>/<id>/<name>`` with ``<folder>`` one of :data:`FILE_FOLDERS`; listed in the
            JSON as ``"files"``.  Files of an earlier run of this scan not in ``files`` are removed.

        Returns
        -------
        str
            The scan's safe id.
        """
        sid = safe_id(result.patient_id, result.series_uid)
        # an overwrite first drops the old JSON: killed midway, the scan is redone on resume
        with contextlib.suppress(FileNotFoundError):
            self.scan_path(sid).unlink()
        crop_dir = self.crops_dir / sid
        names = []
        for name, data in sorted((crops or {}).items()):
            if not isinstance(name, str) or not CROP_NAME.match(name):
                raise ValueError(f"crop names must match {CROP_NAME.pattern}. Received {name!r}")
            if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == _PNG_SIGNATURE:
                raise ValueError(f"crop {name!r} must be PNG bytes. Received "
                                 f"{type(data).__name__} starting {bytes(data[:8])!r}")
            _atomic.atomic_write_bytes(crop_dir / f"{name}.png", bytes(data))
            names.append(name)
        if crop_dir.is_dir():
            # crops of an earlier run of this scan, and temporary files of a run killed mid-write
            keep = {f"{n}.png" for n in names}
            for f in crop_dir.glob("*.png"):
                if f.name not in keep:
                    f.unlink()
            _atomic.remove_stale_temp_files(crop_dir)
            if not names:
                with contextlib.suppress(OSError):
                    crop_dir.rmdir()
        written = self._write_files(sid, files or {})
        d = result.to_dict()
        d["safe_id"] = sid
        d["crops"] = [f"crops/{sid}/{n}.png" for n in names]
        d["files"] = written
        _atomic.atomic_write_text(self.scan_path(sid), _dump_json(d))
        with contextlib.suppress(FileNotFoundError):
            self.error_path(sid).unlink()
        return sid

    def check_file_path(self, sid: str, path) -> tuple[str, str]:
        """``(folder, name)`` of a per-scan file's relative path ``<folder>/<sid>/<name>``, or
        ValueError: nothing a renderer names can leave the scan's own folders."""
        parts = path.split("/") if isinstance(path, str) else []
        if len(parts) != 3 or parts[0] not in FILE_FOLDERS or parts[1] != sid or not FILE_NAME.match(parts[2]):
            raise ValueError(f"a scan's file must be <{'|'.join(FILE_FOLDERS)}>/{sid}/<name> with the name "
                             f"matching {FILE_NAME.pattern}. Received {path!r}")
        return parts[0], parts[2]

    def _write_files(self, sid: str, files: dict[str, bytes]) -> list[str]:
        """Write a scan's files (atomically) and remove those of an earlier run that are not
        among them; the sorted relative paths written."""
        keep: dict[str, set] = {f: set() for f in FILE_FOLDERS}
        checked = []
        for path, data in sorted(files.items()):
            folder, name = self.check_file_path(sid, path)
            if not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"file {path!r} must be bytes. Received {type(data).__name__}")
            checked.append((path, folder, name, bytes(data)))
        for path, folder, name, data in checked:
            _atomic.atomic_write_bytes(self.root / folder / sid / name, data)
            keep[folder].add(name)
        for folder in FILE_FOLDERS:
            d = self.root / folder / sid
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.is_file() and FILE_NAME.match(f.name) and f.name not in keep[folder]:
                    f.unlink()
            _atomic.remove_stale_temp_files(d)
            if not keep[folder]:
                with contextlib.suppress(OSError):
                    d.rmdir()
        return [p for p, *_ in checked]

    def write_error(self, sid: str, *, path: str, stage: str, message: str, patient_id: str = "",
                    series_uid: str = "") -> Path:
        """Record a failed scan in ``errors/<id>.json`` (atomically).

        A successful scan with the same id, or with ``path`` as its input path, supersedes
        the error: :meth:`finalize` leaves it out of ``errors.csv``.  An earlier
        ``scans/<id>.json`` is left in place.
        """
        payload = {"safe_id": self._check_sid(sid), "path": str(path), "stage": str(stage),
                   "message": str(message), "patient_id": str(patient_id or ""),
                   "seriesuid": str(series_uid or "")}
        return _atomic.atomic_write_text(self.error_path(sid), _dump_json(payload))

    # -- reading back

    def _scan_files(self) -> list[Path]:
        return scan_files(self.root)

    def load_scans(self, *, problems: list | None = None) -> list[dict[str, Any]]:
        """Every ``scans/*.json`` as a dict, sorted by id.

        A file that is not a lungcad scan result raises :class:`InputError`; with a
        ``problems`` list it is appended there instead (as the InputError) and left out.
        """
        out = []
        for f in self._scan_files():
            try:
                out.append(_scan_record(f))
            except InputError as e:
                if problems is None:
                    raise
                problems.append(e)
        return out

    def load_errors(self, scans: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Every ``errors/*.json`` not superseded by a successful scan, sorted."""
        scans = self.load_scans() if scans is None else scans
        done_ids = {d["safe_id"] for d in scans}
        done_paths = {str(d.get("input_path", "")) for d in scans} - {""}
        out = []
        for f in sorted(self.errors_dir.glob("*.json"), key=lambda f: f.name):
            if not SAFE_ID.match(f.stem) or f.stem in done_ids:
                continue
            e = read_json(f)
            if str(e.get("path", "")) in done_paths:
                continue
            out.append({c: str(e.get(c, "") or "") for c in ERRORS_CSV_COLUMNS} | {"safe_id": f.stem})
        out.sort(key=lambda e: (e["path"], e["patient_id"], e["seriesuid"], e["stage"], e["safe_id"]))
        return out

    # -- the tables, the report, the manifest

    def finalize(self, *, run_info: dict[str, Any] | None = None, problems: list | None = None,
                 outputs=OUTPUT_KINDS) -> dict[str, Any]:
        """Rebuild ``candidates.csv``, ``patients.csv``, ``errors.csv``, ``report.html`` and ``run.json``.

        Everything is rebuilt from the per-scan files on disk, so the tables cover every
        scan done in this folder by any run or shard, and the same scans always give the
        same bytes.

        Parameters
        ----------
        run_info : dict, optional
            Written into ``run.json`` as given (versions, config, command, ...).  Known keys:
            ``this_run`` (``{"done", "failed", "skipped", "seconds"}``), or ``skipped`` and
            ``total_time_s``.
        problems : list, optional
            Without it, a file in ``scans/`` that is not a readable scan result raises
            :class:`InputError` and nothing is written.  With it, each such file is appended
            to ``problems`` (as the InputError), gets a row in ``errors.csv`` (stage
            ``outputs``) and is left out of the other tables, so that a batch always ends
            with its tables and ``run.json``.
        outputs : kinds (:func:`lungcad.results.kinds.check_outputs`)
            Without ``csv``, no ``candidates.csv`` and ``patients.csv``; without ``html``, no
            ``report.html``; one left by an earlier run is removed, so that no table in the folder
            disagrees with its scans.  ``errors.csv`` and ``run.json`` are always written.

        Returns
        -------
        dict
            The content of ``run.json``, with ``counts`` (``done``, ``failed``,
            ``skipped``, ``patients``, ``candidates``) computed from the folder.
        """
        run_info = dict(run_info or {})
        outputs = check_outputs(outputs)
        per_scan = [d for f in FILE_FOLDERS for d in (self.root / f).glob("*/")]
        for folder in [self.root, self.scans_dir, self.errors_dir, *self.crops_dir.glob("*/"), *per_scan]:
            _atomic.remove_stale_temp_files(folder)
        bad: list[InputError] = []
        scans = self.load_scans(problems=None if problems is None else bad)
        errors = self.load_errors(scans)
        if bad:
            problems.extend(bad)
            errors = sorted(errors + [{"path": e.path or "", "stage": "outputs", "message": e.problem,
                                       "patient_id": "", "seriesuid": "", "safe_id": Path(e.path or "").stem}
                                      for e in bad],
                            key=lambda e: (e["path"], e["patient_id"], e["seriesuid"], e["stage"], e["safe_id"]))
        cands = candidates_table(scans)
        patients = patients_table(scans)
        errs = pd.DataFrame(table_records(errors), columns=ERRORS_CSV_COLUMNS)
        tables = {"candidates.csv": ("csv", lambda: csv_text(cands)),
                  "patients.csv": ("csv", lambda: csv_text(patients)),
                  "errors.csv": (None, lambda: csv_text(errs)),
                  "report.html": ("html", lambda: render_report(scans, errors, root=self.root))}
        made = []
        for name, (kind, text) in tables.items():
            if kind is None or kind in outputs:
                _atomic.atomic_write_text(self.root / name, text())
                made.append(name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()

        this_run = run_info.get("this_run") or {}
        skipped = this_run.get("skipped", run_info.get("skipped", 0))
        total = this_run.get("seconds", run_info.get("total_time_s"))
        hashes = sorted({d.get("config_hash", "") for d in scans} - {""})
        versions = run_info.get("versions") or next((d.get("versions") for d in scans if d.get("versions")), {})
        run = {"lungcad_version": __version__, **run_info,
               "versions": versions,
               "counts": {"done": len(scans), "failed": len(errors),
                          "skipped": int(skipped or 0),
                          "patients": int(patients["patient_id"].nunique()) if len(patients) else 0,
                          "candidates": int(len(cands))},
               "total_time_s": total,
               "scan_time_s": round(sum(float(v or 0.0) for d in scans
                                        for v in (d.get("timings") or {}).values()), 3),
               "config_hashes": hashes,
               "outputs": list(outputs),
               "files": made + ["run.json", "scans/", "crops/", "errors/"]
                        + [f"{f}/" for f in FILE_FOLDERS if (self.root / f).is_dir()],
               "finalized_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if len(hashes) > 1:
            run["warning"] = (f"the scans in this folder were made with {len(hashes)} different "
                              f"configs ({', '.join(hashes)}); rerun with --overwrite to make them one")
        _atomic.atomic_write_text(self.root / "run.json", _dump_json(run))
        return run


def _scan_record(f: Path) -> dict[str, Any]:
    d = read_json(f)
    for k in ("series_uid", "patient_id", "cancer_probability", "candidates"):
        if k not in d:
            raise InputError(f, f"not a lungcad scan result: no '{k}'. Delete it and run "
                                f"`lungcad detect` again to redo this scan")
    if not isinstance(d["candidates"], list) or not all(isinstance(c, dict) for c in d["candidates"]):
        raise InputError(f, "not a lungcad scan result: 'candidates' is not a list of records. Delete it "
                            "and run `lungcad detect` again to redo this scan")
    d.setdefault("safe_id", f.stem)
    return d


def read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(path, "no such file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable JSON file ({e}). Delete it and run again to redo "
                               f"this scan") from e
    if not isinstance(d, dict):
        raise InputError(path, f"expected a JSON object. Received {type(d).__name__}")
    return d
