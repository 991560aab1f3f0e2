"""The output folder of ``lungcad detect``: per-scan files, the tables, the report.

Layout of an output folder::

    OUTPUT/
      scans/<id>.json          one per scan done (ScanResult.to_dict() plus its crop list)
      crops/<id>/<n>_<plane>.png   crops of the top nodules (axial, coronal, sagittal)
      errors/<id>.json         one per scan that failed
      candidates.csv           rebuilt from scans/*.json by finalize()
      patients.csv             rebuilt from scans/*.json
      errors.csv               rebuilt from errors/*.json
      report.html              rebuilt; opens from disk (relative links to crops/)
      run.json                 the manifest of the last run

Per-scan files are written atomically (:mod:`lungcad.atomic`: a temporary file in the same
folder, fsync, then ``os.replace``), crops before the JSON, so that the JSON's existence means the
scan is complete.  A killed run loses nothing it finished, and :meth:`OutputDir.finalize`
rebuilds the tables from whatever is on disk, sorted, so the same set of scans always
gives byte-identical CSVs, whatever the order they were written in.

``<id>`` is :func:`safe_id` of the PatientID and SeriesInstanceUID: only
``[A-Za-z0-9._-]``, so nothing read from a DICOM header can leave the output folder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import html
import io
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcad import __version__
from lungcad import atomic as _atomic
from lungcad.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temp_files  # noqa: F401  re-exported
from lungcad.errors import InputError
from lungcad.result import ScanResult, table_records, table_text
from lungcad.volume import CTVolume

#: First columns of candidates.csv: the LUNA16 submission format, then ours.
CANDIDATES_CSV_LEAD = ["seriesuid", "coordX", "coordY", "coordZ", "probability",
                       "patient_id", "diameter_mm", "nodule_prob", "malignancy_prob", "z", "y", "x"]
PATIENTS_CSV_COLUMNS = ["patient_id", "seriesuid", "cancer_probability", "n_candidates",
                        "top_nodule_prob", "top_malignancy_prob", "top_coordX", "top_coordY",
                        "top_coordZ", "top_diameter_mm", "lung_volume_ml", "input_path"]
ERRORS_CSV_COLUMNS = ["path", "stage", "message", "patient_id", "seriesuid"]
#: printf format of every float in the CSVs (same values -> same bytes).
FLOAT_FORMAT = "%.6g"
PLANES = ("axial", "coronal", "sagittal")
#: Lung window (level, width) in HU.
LUNG_WINDOW = (-600.0, 1500.0)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_CROP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NUMERIC = ["coordX", "coordY", "coordZ", "probability", "diameter_mm", "nodule_prob",
            "malignancy_prob", "z", "y", "x"]


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
    return sorted((f for f in (Path(root) / "scans").glob("*.json") if _SID.match(f.stem)),
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
        if not isinstance(sid, str) or not _SID.match(sid):
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
        return ScanResult.from_dict(_read_json(self.scan_path(sid)))

    def write_scan(self, result: ScanResult, *, crops: dict[str, bytes] | None = None) -> str:
        """Write one scan: its crops, then ``scans/<id>.json``; drop a stale ``errors/<id>.json``.

        Parameters
        ----------
        result : ScanResult
        crops : dict of name -> PNG bytes, optional
            From :func:`render_crops`; written as ``crops/<id>/<name>.png``.  Crops left
            from an earlier run of the same scan that are not in ``crops`` are removed.

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
            if not isinstance(name, str) or not _CROP_NAME.match(name):
                raise ValueError(f"crop names must match {_CROP_NAME.pattern}. Received {name!r}")
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
        d = result.to_dict()
        d["safe_id"] = sid
        d["crops"] = [f"crops/{sid}/{n}.png" for n in names]
        _atomic.atomic_write_text(self.scan_path(sid), _dump_json(d))
        with contextlib.suppress(FileNotFoundError):
            self.error_path(sid).unlink()
        return sid

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
            if not _SID.match(f.stem) or f.stem in done_ids:
                continue
            e = _read_json(f)
            if str(e.get("path", "")) in done_paths:
                continue
            out.append({c: str(e.get(c, "") or "") for c in ERRORS_CSV_COLUMNS} | {"safe_id": f.stem})
        out.sort(key=lambda e: (e["path"], e["patient_id"], e["seriesuid"], e["stage"], e["safe_id"]))
        return out

    # -- the tables, the report, the manifest

    def finalize(self, *, run_info: dict[str, Any] | None = None,
                 problems: list | None = None) -> dict[str, Any]:
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

        Returns
        -------
        dict
            The content of ``run.json``, with ``counts`` (``done``, ``failed``,
            ``skipped``, ``patients``, ``candidates``) computed from the folder.
        """
        run_info = dict(run_info or {})
        for folder in [self.root, self.scans_dir, self.errors_dir, *self.crops_dir.glob("*/")]:
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
        _atomic.atomic_write_text(self.root / "candidates.csv", csv_text(cands))
        _atomic.atomic_write_text(self.root / "patients.csv", csv_text(patients))
        _atomic.atomic_write_text(self.root / "errors.csv", csv_text(errs))
        _atomic.atomic_write_text(self.root / "report.html", render_report(scans, errors, root=self.root))

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
               "files": ["candidates.csv", "patients.csv", "errors.csv", "report.html", "run.json",
                         "scans/", "crops/", "errors/"],
               "finalized_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if len(hashes) > 1:
            run["warning"] = (f"the scans in this folder were made with {len(hashes)} different "
                              f"configs ({', '.join(hashes)}); rerun with --overwrite to make them one")
        _atomic.atomic_write_text(self.root / "run.json", _dump_json(run))
        return run


def _scan_record(f: Path) -> dict[str, Any]:
    d = _read_json(f)
    for k in ("series_uid", "patient_id", "cancer_probability", "candidates"):
        if k not in d:
            raise InputError(f, f"not a lungcad scan result: no '{k}'. Delete it and run "
                                f"`lungcad detect` again to redo this scan")
    if not isinstance(d["candidates"], list) or not all(isinstance(c, dict) for c in d["candidates"]):
        raise InputError(f, "not a lungcad scan result: 'candidates' is not a list of records. Delete it "
                            "and run `lungcad detect` again to redo this scan")
    d.setdefault("safe_id", f.stem)
    return d


def _read_json(path: Path) -> dict[str, Any]:
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


def csv_text(df: pd.DataFrame) -> str:
    """``df`` as the CSV text of lungcad's tables (no index, FLOAT_FORMAT, "\\n" line ends),
    its text made safe to open in a spreadsheet (:func:`safe_table`)."""
    buf = io.StringIO()
    safe_table(df).to_csv(buf, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return buf.getvalue()


# ----------------------------------------------------------------------------- text safe to open

#: A cell that starts with one of these is a formula to a spreadsheet (OWASP, CSV injection);
#: a leading quote is added too, so that :func:`cell_value` can undo :func:`safe_cell` exactly.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """``text`` with each control character (C0 and DEL: NUL, ESC, newlines, tabs) written as a
    visible ``\\xNN`` escape, so that a value read from a header can neither hide in nor break
    a table cell, a log line or a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_cell(value):
    """One table value made safe to open: text that a spreadsheet would run as a formula
    (starting ``= + - @``, a tab or a carriage return, or a quote) gets a leading ``'``, as
    OWASP advises, and control characters are escaped (:func:`escape_controls`).  Values that
    are not text (numbers, None, NaN) are returned as they are; valid UIDs (digits and dots)
    never change."""
    if not isinstance(value, str):
        return value
    text = table_text(value)
    prefix = "'" if text.startswith(FORMULA_START) else ""
    return prefix + escape_controls(text)


def cell_value(text):
    """The value a text cell of lungcad's CSVs was written from: the quote that
    :func:`safe_cell` adds removed (control characters stay escaped).  For readers that join
    on a text column, such as patient ids."""
    return text[1:] if isinstance(text, str) and text.startswith("'") else text


def safe_table(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with :func:`safe_cell` applied to its text columns.  Columns are chosen by
    dtype: numeric and boolean columns are left alone, so that -86.6 stays a number."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_datetime64_any_dtype(col.dtype):
            continue
        out[c] = col.map(safe_cell)
    return out


def _sorted_candidates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records by descending probability (stable: equal probabilities keep their order)."""
    return sorted(records, key=lambda r: -_num_or(r.get("probability"), -math.inf))


def candidates_table(scans: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``candidates.csv`` from per-scan dicts (:meth:`OutputDir.load_scans`).

    Columns: :data:`CANDIDATES_CSV_LEAD`, then every other candidate column in
    alphabetical order.  Rows: by seriesuid, then patient_id, then descending probability.
    """
    rows, extra = [], set()
    for d in scans:
        for rec in d.get("candidates") or []:
            r = {k: table_text(v) for k, v in rec.items()}
            r["seriesuid"] = table_text(d["series_uid"])
            r["patient_id"] = table_text(d["patient_id"])
            extra.update(r)
            rows.append(r)
    cols = CANDIDATES_CSV_LEAD + sorted(str(c) for c in extra - set(CANDIDATES_CSV_LEAD))
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    df["seriesuid"] = df["seriesuid"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if len(df):
        df = df.sort_values(["seriesuid", "patient_id", "probability", "coordZ", "coordY", "coordX"],
                            ascending=[True, True, False, True, True, True], kind="mergesort",
                            na_position="last").reset_index(drop=True)
    return df


def _num(v) -> float:
    """A finite float, or NaN for None, text, booleans and non-finite numbers."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return np.nan
    x = float(v)
    return x if math.isfinite(x) else np.nan


def patients_table(scans: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``patients.csv``: one per scan, with its top candidate.

    The top candidate is the one with the highest ``probability``; ``top_nodule_prob``
    is its ``nodule_prob`` (its ``probability`` when the pipeline has no FPR stage).
    """
    rows = []
    for d in scans:
        cands = _sorted_candidates(list(d.get("candidates") or []))
        top = cands[0] if cands else {}
        nod = _num(top.get("nodule_prob"))
        rows.append({
            "patient_id": str(d["patient_id"]), "seriesuid": str(d["series_uid"]),
            "cancer_probability": _num(d.get("cancer_probability")),
            "n_candidates": len(cands),
            "top_nodule_prob": nod if not np.isnan(nod) else _num(top.get("probability")),
            "top_malignancy_prob": _num(top.get("malignancy_prob")),
            "top_coordX": _num(top.get("coordX")), "top_coordY": _num(top.get("coordY")),
            "top_coordZ": _num(top.get("coordZ")), "top_diameter_mm": _num(top.get("diameter_mm")),
            "lung_volume_ml": _num(d.get("lung_volume_ml")),
            "input_path": str(d.get("input_path", "") or ""),
        })
    df = pd.DataFrame(table_records(rows), columns=PATIENTS_CSV_COLUMNS)
    if len(df):
        df = df.sort_values(["patient_id", "seriesuid"], kind="mergesort").reset_index(drop=True)
    return df


# ----------------------------------------------------------------------------- crops

def _top(candidates: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` most probable candidates (stable on ties), the order crops are numbered in."""
    if candidates is None or len(candidates) == 0 or n <= 0:
        return candidates.iloc[:0] if candidates is not None else pd.DataFrame()
    p = pd.to_numeric(candidates["probability"], errors="coerce").fillna(-np.inf)
    order = np.argsort(-p.to_numpy(float), kind="mergesort")
    return candidates.iloc[order[:n]]


def _axis_sign(direction: np.ndarray, axis_xyz: int) -> float:
    v = float(direction[axis_xyz, axis_xyz])
    return -1.0 if v < -0.5 else 1.0


def render_crops(volume: CTVolume, candidates: pd.DataFrame, *, top_n: int = 3, size_mm: float = 64.0,
                 image_px: int = 192, window: tuple[float, float] = LUNG_WINDOW) -> dict[str, bytes]:
    """PNG crops of the top candidates in three planes, with each detection circled.

    Parameters
    ----------
    volume : CTVolume
    candidates : DataFrame
        Candidate table (``coordX/Y/Z`` world mm, or voxel ``z, y, x``, ``diameter_mm``,
        ``probability``).
    top_n : int
        How many candidates, by descending probability.
    size_mm : float
        Side of the square field of view, in mm, centred on the candidate.
    image_px : int
        Side of each PNG in pixels.
    window : (level, width)
        Display window in HU (default: lung window L -600 / W 1500).

    Returns
    -------
    dict
        ``"<rank>_<plane>"`` (rank 0 is the most probable; plane axial, coronal or
        sagittal) -> PNG bytes.  Pixels are square in mm whatever the voxel spacing, so
        the coronal and sagittal views of thick slices are not squashed.  Axial is shown
        in radiological convention (patient right on the left, anterior up); coronal
        and sagittal with the head up.  A circle of the candidate's diameter marks it
        (10 mm when the diameter is unknown).
    """
    if size_mm <= 0 or image_px < 16:
        raise ValueError(f"size_mm must be > 0 and image_px >= 16. Received size_mm={size_mm}, "
                         f"image_px={image_px}")
    out: dict[str, bytes] = {}
    for rank, (_, row) in enumerate(_top(candidates, top_n).iterrows()):
        centre = _centre_zyx(volume, row)
        if centre is None:
            continue
        d = _num(row.get("diameter_mm"))
        diameter = d if not np.isnan(d) and d > 0 else 10.0
        for plane in PLANES:
            out[f"{rank}_{plane}"] = _render_plane(volume, centre, plane, diameter=diameter,
                                                   size_mm=size_mm, image_px=image_px, window=window)
    return out


def _centre_zyx(volume: CTVolume, row) -> np.ndarray | None:
    xyz = np.array([_num(row.get(c)) for c in ("coordX", "coordY", "coordZ")])
    if np.isfinite(xyz).all():
        return volume.world_to_voxel(xyz)
    zyx = np.array([_num(row.get(c)) for c in ("z", "y", "x")])
    return zyx if np.isfinite(zyx).all() else None


# plane -> (fixed array axis, row array axis, column array axis, world axis increasing upwards?)
_PLANE_AXES = {"axial": (0, 1, 2, False), "coronal": (1, 0, 2, True), "sagittal": (2, 0, 1, True)}


def _render_plane(volume: CTVolume, centre_zyx: np.ndarray, plane: str, *, diameter: float,
                  size_mm: float, image_px: int, window: tuple[float, float]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fixed, ra, ca, up = _PLANE_AXES[plane]
    shape = volume.shape
    sp = volume.spacing                                  # (z, y, x)
    sign = [_axis_sign(volume.direction, 2 - a) for a in range(3)]   # per array axis z, y, x
    half = size_mm / 2.0
    k = int(np.clip(round(float(centre_zyx[fixed])), 0, shape[fixed] - 1))

    def span(a):
        lo = max(0, int(math.floor(centre_zyx[a] - half / sp[a])) - 1)
        hi = min(shape[a], int(math.ceil(centre_zyx[a] + half / sp[a])) + 2)
        return lo, hi

    (r0, r1), (c0, c1) = span(ra), span(ca)
    level, width = window
    fig = Figure(figsize=(1, 1), dpi=image_px, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("black")
    ax.set_axis_off()
    if r1 > r0 and c1 > c0:
        index = [slice(None)] * 3
        index[fixed] = k
        index[ra] = slice(r0, r1)
        index[ca] = slice(c0, c1)
        img = np.asarray(volume.hu[tuple(index)], dtype=np.float32)   # rows ra, columns ca

        def mm(a, i):
            return sign[a] * (i - centre_zyx[a]) * sp[a]

        extent = (mm(ca, c0 - 0.5), mm(ca, c1 - 0.5), mm(ra, r1 - 0.5), mm(ra, r0 - 0.5))
        ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, extent=extent,
                  origin="upper", interpolation="bilinear", aspect="equal")
    ax.set_xlim(-half, half)
    ax.set_ylim((-half, half) if up else (half, -half))
    ax.add_patch(Circle((0.0, 0.0), diameter / 2.0, fill=False, edgecolor="red", linewidth=1.2))
    ax.text(0.03, 0.97, plane, transform=ax.transAxes, color="white", fontsize=5, va="top", ha="left")
    ax.text(0.97, 0.03, f"{size_mm:g} mm", transform=ax.transAxes, color="white", fontsize=5,
            va="bottom", ha="right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=image_px, facecolor="black", metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- report

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
section.patient{border-top:2px solid #888;margin-top:2em;padding-top:0.5em}
.crops{display:flex;gap:6px;flex-wrap:wrap;margin:0.3em 0 1em}
.crops figure{margin:0}
.crops img{width:192px;height:192px;image-rendering:auto;background:#000}
.crops figcaption{font-size:12px;color:#555;text-align:center}
.warn{color:#a05a00}.fail{color:#b00020}.small{font-size:13px;color:#555}
"""


def _e(v) -> str:
    """Escape anything taken from input files for HTML (text and attribute values)."""
    return html.escape(escape_controls("" if v is None else str(v)), quote=True)


def _f(v, fmt: str = ".3f", none: str = "") -> str:
    x = _num(v)
    return none if np.isnan(x) else format(x, fmt)


def render_report(scans: list[dict[str, Any]], errors: list[dict[str, Any]], *, root: Path | None = None,
                  top_n: int = 3) -> str:
    """The HTML report: a summary table, one section per patient, and the failed scans.

    Every string from the scans (PatientID, UIDs, paths, messages) is escaped, and the
    images are relative ``crops/...`` links, so the file opens from disk with no server.
    """
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(scans, key=lambda d: (str(d["patient_id"]), str(d["series_uid"]), d["safe_id"])):
        by_patient.setdefault(str(d["patient_id"]), []).append(d)
    anchors = {pid: f"patient-{i}" for i, pid in enumerate(by_patient)}
    n_cands = sum(len(d.get("candidates") or []) for d in scans)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width,initial-scale=1">',
         "<title>lungcad report</title>", f"<style>{_CSS}</style></head><body>",
         "<h1>lungcad report</h1>",
         f'<p class="small">{len(by_patient)} patient(s), {len(scans)} scan(s) done, '
         f"{len(errors)} failed, {n_cands} candidate(s). lungcad {_e(__version__)}. "
         "Research software: not a medical device.</p>"]

    h.append("<h2>Summary</h2>")
    if scans:
        h.append("<table><tr><th>Patient</th><th>Series</th><th>Cancer probability</th>"
                 "<th>Candidates</th><th>Top nodule prob.</th><th>Top nodule diameter (mm)</th></tr>")
        summary = sorted(scans, key=lambda d: (-_num_or(d.get("cancer_probability"), -1.0),
                                               str(d["patient_id"]), str(d["series_uid"])))
        for d in summary:
            cands = _sorted_candidates(list(d.get("candidates") or []))
            top = cands[0] if cands else {}
            nod = top.get("nodule_prob", top.get("probability"))
            h.append(f'<tr><td><a href="#{anchors[str(d["patient_id"])]}">{_e(d["patient_id"])}</a></td>'
                     f'<td><a href="#scan-{_e(d["safe_id"])}">{_e(d["series_uid"])}</a></td>'
                     f'<td class="num">{_f(d.get("cancer_probability"))}</td>'
                     f'<td class="num">{len(cands)}</td><td class="num">{_f(nod)}</td>'
                     f'<td class="num">{_f(top.get("diameter_mm"), ".1f")}</td></tr>')
        h.append("</table>")
    else:
        h.append("<p>No scan was done.</p>")

    if errors:
        h.append(f'<h2 class="fail">Failed scans ({len(errors)})</h2>')
        h.append("<table><tr><th>Path</th><th>Stage</th><th>Message</th><th>Patient</th><th>Series</th></tr>")
        for e in errors:
            h.append(f"<tr><td>{_e(e['path'])}</td><td>{_e(e['stage'])}</td><td>{_e(e['message'])}</td>"
                     f"<td>{_e(e['patient_id'])}</td><td>{_e(e['seriesuid'])}</td></tr>")
        h.append("</table>")

    for pid, group in by_patient.items():
        h.append(f'<section class="patient" id="{anchors[pid]}"><h2>Patient {_e(pid)}</h2>')
        for d in group:
            h.extend(_scan_section(d, root=root, top_n=top_n))
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"


def _num_or(v, default: float) -> float:
    x = _num(v)
    return default if np.isnan(x) else x


def _scan_section(d: dict[str, Any], *, root: Path | None, top_n: int) -> list[str]:
    sid = d["safe_id"]
    h = [f'<h3 id="scan-{_e(sid)}">Series {_e(d["series_uid"])}</h3>',
         f'<p><b>Cancer probability: {_f(d.get("cancer_probability"))}</b>'
         f' &middot; {len(d.get("candidates") or [])} candidate(s)'
         + (f' &middot; lung volume {_f(d.get("lung_volume_ml"), ".0f")} ml' if d.get("lung_volume_ml") else "")
         + "</p>",
         f'<p class="small">Input: {_e(d.get("input_path", ""))}</p>']
    for w in d.get("warnings") or []:
        h.append(f'<p class="warn">Warning: {_e(w)}</p>')
    crops = [c for c in (d.get("crops") or []) if isinstance(c, str)]
    ranks_with_crops = set()
    for c in crops:
        m = re.match(r"^crops/[A-Za-z0-9._-]+/(\d+)_[a-z]+\.png$", c)
        if m:
            ranks_with_crops.add(int(m.group(1)))
    cands = _sorted_candidates(list(d.get("candidates") or []))
    shown = cands[:max(top_n, max(ranks_with_crops, default=-1) + 1)]
    if not shown:
        h.append("<p>No nodule candidate.</p>")
        return h
    h.append("<table><tr><th>#</th><th>x (mm)</th><th>y (mm)</th><th>z (mm)</th><th>Diameter (mm)</th>"
             "<th>Probability</th><th>Nodule prob.</th><th>Malignancy prob.</th></tr>")
    for i, c in enumerate(shown):
        cells = [_f(c.get("coordX"), ".1f"), _f(c.get("coordY"), ".1f"), _f(c.get("coordZ"), ".1f"),
                 _f(c.get("diameter_mm"), ".1f"), _f(c.get("probability")), _f(c.get("nodule_prob")),
                 _f(c.get("malignancy_prob"))]
        h.append(f"<tr><td>{i + 1}</td>" + "".join(f'<td class="num">{v}</td>' for v in cells) + "</tr>")
    h.append("</table>")
    for i, c in enumerate(shown):
        figs = []
        for plane in PLANES:
            rel = f"crops/{sid}/{i}_{plane}.png"
            if rel in crops and (root is None or (root / rel).is_file()):
                figs.append(f'<figure><img src="{_e(rel)}" alt="{_e(plane)} crop of candidate {i + 1}">'
                            f"<figcaption>{_e(plane)}</figcaption></figure>")
        if figs:
            h.append(f'<p class="small">Candidate {i + 1}: ({_f(c.get("coordX"), ".1f")}, '
                     f'{_f(c.get("coordY"), ".1f")}, {_f(c.get("coordZ"), ".1f")}) mm, '
                     f'diameter {_f(c.get("diameter_mm"), ".1f")} mm, probability {_f(c.get("probability"))}</p>')
            h.append('<div class="crops">' + "".join(figs) + "</div>")
    return h


# ----------------------------------------------------------------------------- merge

def merge_outputs(dirs: list, out) -> dict[str, Any]:
    """Join the output folders of several shards into ``out`` and rebuild its tables.

    Copies ``scans/*.json`` with their crops, and ``errors/*.json``, into ``out``.  A
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
    taken: dict[str, Path] = {f.stem: target.root for f in target._scan_files()}
    conflicts, copied_scans, copied_errors = [], 0, 0
    others = [d for d in sources if d.resolve() != out_res]
    for d in others:
        for f in sorted((d / "scans").glob("*.json")) if (d / "scans").is_dir() else []:
            sid = f.stem
            if not _SID.match(sid):
                continue
            data = f.read_bytes()
            if sid in taken:
                if _strip_timings(data) != _strip_timings((taken[sid] / "scans" / f.name).read_bytes()):
                    conflicts.append(sid)
                continue
            src_crops = d / "crops" / sid
            for png in sorted(src_crops.glob("*.png")) if src_crops.is_dir() else []:
                if _CROP_NAME.match(png.stem):
                    _atomic.atomic_write_bytes(target.crops_dir / sid / png.name, png.read_bytes())
            _atomic.atomic_write_bytes(target.scans_dir / f.name, data)
            with contextlib.suppress(FileNotFoundError):
                target.error_path(sid).unlink()
            taken[sid] = d
            copied_scans += 1
    for d in others:
        for f in sorted((d / "errors").glob("*.json")) if (d / "errors").is_dir() else []:
            sid = f.stem
            if not _SID.match(sid) or sid in taken or target.error_path(sid).exists():
                continue
            _atomic.atomic_write_bytes(target.errors_dir / f.name, f.read_bytes())
            copied_errors += 1

    shard_runs = []
    for d in sources:
        rj = d / "run.json"
        if rj.is_file():
            with contextlib.suppress(InputError):
                shard_runs.append(_read_json(rj))
    first = shard_runs[0] if shard_runs else {}
    skipped = sum(int((r.get("counts") or {}).get("skipped", 0) or 0) for r in shard_runs)
    seconds = [r.get("total_time_s") for r in shard_runs if isinstance(r.get("total_time_s"), (int, float))]
    run_info = {"command": "merge", "merged_from": [str(d) for d in sources],
                "config": first.get("config"), "config_hash": first.get("config_hash"),
                "versions": first.get("versions"), "skipped": skipped,
                "total_time_s": round(sum(seconds), 2) if seconds else None}
    run = target.finalize(run_info=run_info)
    return {**run, "copied_scans": copied_scans, "copied_errors": copied_errors, "conflicts": conflicts}


def _strip_timings(data: bytes):
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return data
    if isinstance(d, dict):
        d.pop("timings", None)
    return d


__all__ = ["CANDIDATES_CSV_LEAD", "PATIENTS_CSV_COLUMNS", "ERRORS_CSV_COLUMNS", "OutputDir",
           "atomic_write_bytes", "atomic_write_text", "candidates_table", "merge_outputs",
           "cell_value", "escape_controls", "patients_table", "remove_stale_temp_files", "render_crops",
           "render_report", "safe_cell", "safe_id", "safe_table"]
