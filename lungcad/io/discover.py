"""Finding CT scans in a directory tree, choosing one per patient, and loading them.

:func:`discover` walks a tree and returns one :class:`SeriesInfo` per series: DICOM files are
grouped by SeriesInstanceUID (not by folder), each multi-frame DICOM file and each ITK/NIfTI
file is a series of its own.  :func:`load_ct` loads one scan from a folder or a file.

A file that cannot be read never stops :func:`discover`: it is reported (once per folder and
problem) and the walk goes on.  DICOM objects without an image (DICOMDIR, reports, RT plans)
are not scans: they are listed in ``skipped``, and reported as errors only when nothing else
was found.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungcad.errors import InputError
from lungcad.io.dicom import check_geometry_present, load_dicom_stack, series_warnings
from lungcad.io.dicom_attributes import uid_name
from lungcad.io.dicom_header import DicomFileHeader, looks_like_dicom, read_header
from lungcad.io.dicom_stack import plan_stack
from lungcad.io.itk import is_itk_file, itk_stem, load_itk, read_itk_info
from lungcad.volume import CTVolume

__all__ = ["SeriesInfo", "discover", "choose_series", "kernel_rank", "load_series", "load_ct"]

log = logging.getLogger(__name__)

# Files that belong to ITK images or are obviously not images: never opened.
_SKIP_SUFFIXES = (".raw", ".zraw", ".img", ".xml", ".csv", ".txt", ".json", ".md", ".png",
                  ".jpg", ".jpeg", ".gif", ".html", ".pdf", ".py", ".zip", ".gz", ".tar",
                  ".npy", ".npz", ".h5", ".keras", ".toml", ".yaml", ".yml", ".log")


@dataclass
class SeriesInfo:
    """One scan found by :func:`discover`.

    Attributes
    ----------
    path : the series folder (the common folder of its files) or the file itself
    files : the DICOM files of the series, sorted by name ([] for ITK files)
    format : ``"dicom"``, ``"dicom-multiframe"`` or ``"itk"``
    patient_id, study_uid, series_uid, series_description, modality : from the headers
        (for ITK files, patient_id and series_uid are the file stem and modality is "CT")
    n_slices : axial slices after dropping localizers and duplicates
    shape : (z, y, x) of the volume that :func:`load_series` returns
    spacing : (z, y, x) mm
    kernel : ConvolutionKernel ("" when absent)
    slice_thickness : SliceThickness in mm (the z spacing when absent)
    problem : "" or why this series cannot be loaded (missing slices, not axial, ...)
    warnings : problems of its files that do not stop the reading (see
        :func:`lungcad.io.dicom.series_warnings`); :func:`load_series` puts them in
        ``volume.meta["warnings"]``
    """

    path: Path
    files: list[Path]
    format: str
    patient_id: str
    study_uid: str
    series_uid: str
    series_description: str
    modality: str
    n_slices: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    kernel: str = ""
    slice_thickness: float | None = None
    problem: str = ""
    warnings: list[str] = field(default_factory=list)
    headers: list[DicomFileHeader] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the per-file headers)."""
        return {
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "format": self.format,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "series_description": self.series_description,
            "modality": self.modality,
            "n_slices": self.n_slices,
            "shape": list(self.shape),
            "spacing": [None if math.isnan(s) else round(s, 6) for s in self.spacing],
            "kernel": self.kernel,
            "slice_thickness": self.slice_thickness,
            "problem": self.problem,
            "warnings": list(self.warnings),
        }

    @property
    def usable(self) -> bool:
        """A CT series with a valid geometry of at least two slices."""
        return self.modality == "CT" and not self.problem and self.n_slices >= 2


# ------------------------------------------------------------------------------ discover

def _report(errors: list | None, path: Path, message: str) -> None:
    if errors is not None:
        errors.append((path, message))
    else:
        warnings.warn(f"{path}: {message}", stacklevel=3)


def _itk_series(path: Path) -> SeriesInfo:
    info = read_itk_info(path)
    stem = itk_stem(path)
    return SeriesInfo(path=path, files=[], format="itk", patient_id=stem, study_uid="",
                      series_uid=stem, series_description="", modality="CT",
                      n_slices=info["shape"][0], shape=info["shape"], spacing=info["spacing"],
                      kernel="", slice_thickness=info["spacing"][0])


def _dicom_series(headers: list[DicomFileHeader], *, fallback_patient: str) -> SeriesInfo:
    first = headers[0]
    files = sorted(h.path for h in headers)
    folder = Path(os.path.commonpath([str(f.parent) for f in files]))
    slices = [s for h in headers for s in h.slices]
    problem = ""
    try:
        check_geometry_present(headers)
        plan = plan_stack(slices, source=folder)
        n = (int(math.floor((plan.positions[-1] - plan.positions[0]) / plan.spacing[0] + 1e-6)) + 1
             if plan.resample else len(plan.slices))
        s0 = plan.slices[0]
        shape = (n, s0.rows, s0.cols)
        spacing = plan.spacing
        n_slices = len(plan.slices)
    except InputError as e:
        problem = e.problem if e.path == str(folder) else str(e)
        images = [s for s in slices if not s.is_localizer()] or slices
        rows = max((s.rows for s in images), default=0)
        cols = max((s.cols for s in images), default=0)
        ps = images[0].pixel_spacing if images else (math.nan, math.nan)
        shape = (len(images), rows, cols)
        spacing = (math.nan, float(ps[0]), float(ps[1]))
        n_slices = len(images)
    modalities = sorted({h.modality for h in headers})
    return SeriesInfo(
        path=first.path if first.multiframe else folder, files=files,
        format="dicom-multiframe" if first.multiframe else "dicom",
        patient_id=first.patient_id or fallback_patient, study_uid=first.study_uid,
        series_uid=first.series_uid, series_description=first.series_description,
        modality="/".join(m or "(none)" for m in modalities), n_slices=n_slices, shape=shape,
        spacing=spacing, kernel=first.kernel,
        slice_thickness=first.slice_thickness if first.slice_thickness else
        (None if math.isnan(spacing[0]) else spacing[0]),
        problem=problem, warnings=series_warnings(headers), headers=headers)


def _sop_class_name(uid: str) -> str:
    """The SOP class for a message: its name and UID, escaped and cut at 80 characters (a
    DICOM object without an image need not hold a valid UID)."""
    name = uid_name(uid) if uid else "-"
    text = name if name == uid else f"{name}, {uid}"
    return text if len(text) <= 80 else text[:80] + "..."


def _patient_from_path(path: Path, root: Path) -> str:
    """A patient id for files without PatientID: the first folder below ``root``."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return path.parent.name
    return rel.parts[0] if len(rel.parts) > 1 else root.name


def discover(root: str | os.PathLike, *, errors: list | None = None,
             skipped: list | None = None) -> list[SeriesInfo]:
    """Find every scan under ``root``.

    Parameters
    ----------
    root : a folder (walked recursively) or one file (a DICOM file or an ITK/NIfTI image)
    errors : list, optional
        Problems with single files are appended as ``(path, message)``: files that look like
        DICOM (DICM preamble, a ``.dcm`` name, or a data set without preamble, either byte
        order) but cannot be read, and unreadable ITK files.  Files of one folder with the same
        problem give one entry (the first file, and how many more).  When nothing is found,
        the DICOM objects without an image are errors too.  Without a list they are issued as
        warnings.  Other files (XML, CSV, LICENSE, ``.raw``) are skipped silently.
    skipped : list, optional
        DICOM objects without an image (DICOMDIR, SR, RT plans...), as ``(path, reason)``.

    Returns
    -------
    list of SeriesInfo, sorted by patient id, then series uid.  Series of every modality are
    listed (check ``modality``); series that cannot be stacked have ``problem`` set.

    Raises
    ------
    InputError
        ``root`` does not exist, or ``root`` is a single file that is not a readable scan.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such file or folder")
    if root.is_file():
        if is_itk_file(root):
            return [_itk_series(root)]
        h = read_header(root)
        if not h.has_image:
            raise InputError(root, f"a DICOM file without an image (Modality {h.modality or '-'}, "
                             f"SOP class {_sop_class_name(h.sop_class)}); expected a CT image")
        return [_dicom_series([h], fallback_patient=root.parent.name)]

    groups: dict[tuple, list[DicomFileHeader]] = defaultdict(list)
    fallback: dict[tuple, str] = {}
    found: list[SeriesInfo] = []
    no_image: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        problems: dict[str, list[Path]] = {}  # message -> the files of this folder with it
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            low = name.lower()
            if is_itk_file(path):
                try:
                    found.append(_itk_series(path))
                except InputError as e:
                    _report(errors, path, e.problem)
                continue
            if low.endswith(_SKIP_SUFFIXES) or not path.is_file() or not looks_like_dicom(path):
                continue
            try:
                h = read_header(path)
            except InputError as e:
                problems.setdefault(e.problem, []).append(path)
                continue
            except Exception as e:  # noqa: BLE001 - a bug in read_header must not stop the batch
                log.exception("reading the header of %s", path)
                problems.setdefault(f"lungcad failed to read this header ({type(e).__name__}: "
                                    f"{e}); this is a bug in lungcad, please report it",
                                    []).append(path)
                continue
            if not h.has_image:  # DICOMDIR, structured reports, RT structures: not scans
                reason = (f"a DICOM object without an image (Modality {h.modality or '-'}, "
                          f"SOP class {_sop_class_name(h.sop_class)}); not a scan")
                no_image.append((path, reason))
                log.info("skipped %s: %s", path, reason)
                continue
            if h.multiframe:
                key = ("multiframe", str(path))
            elif h.series_uid:
                key = ("uid", h.series_uid)
            else:
                key = ("folder", str(path.parent))
            groups[key].append(h)
            fallback.setdefault(key, _patient_from_path(path, root))
        for message, paths in problems.items():
            more = (f" (and {len(paths) - 1} more file(s) in {paths[0].parent} with the same "
                    f"problem)" if len(paths) > 1 else "")
            _report(errors, paths[0], message + more)
    for key, headers in groups.items():
        found.append(_dicom_series(headers, fallback_patient=fallback[key]))
    if skipped is not None:
        skipped.extend(no_image)
    if not found:
        for path, reason in no_image:
            _report(errors, path, f"{reason}, and no scan was found beside it")
    found.sort(key=lambda s: (s.patient_id, s.series_uid, str(s.path)))
    return found


# ------------------------------------------------------------------------- choose series

# Lower is softer.  Numbers for kernels named by a number (Siemens B30f, Br40, I26f; Canon
# FC13) come from that number; named kernels are placed on the same scale.
_NAMED_KERNELS = {
    # GE
    "SOFT": 10, "STANDARD": 20, "STND": 20, "DETAIL": 45, "CHEST": 50, "LUNG": 70,
    "BONE": 75, "BONEPLUS": 80, "EDGE": 90,
    # Philips (single letters; YA/YB/YC... are iDose variants of the standard kernels)
    "A": 15, "B": 20, "UB": 20, "C": 30, "D": 60, "E": 65, "YA": 30, "YB": 35, "YC": 40,
    "YD": 60, "L": 70,
}
_UNKNOWN_KERNEL = 50


def kernel_rank(kernel: str) -> int:
    """Sharpness rank of a reconstruction kernel: lower is softer.

    * GE: SOFT 10 < STANDARD 20 < DETAIL 45 < CHEST 50 < LUNG 70 < BONE 75 < BONEPLUS 80 < EDGE 90.
    * Philips: A 15 < B 20 < C 30 < D 60 < E 65 < L (lung) 70.
    * Siemens (``B30f``, ``Br40d``, ``I50f``, ``Bl57``...), Canon/Toshiba (``FC13``) and others
      named by a number: the number (B30f = 30 soft, B70f = 70 sharp).
    * Unknown or empty: 50.
    """
    k = (kernel or "").split("\\")[0].strip().upper()
    if not k:
        return _UNKNOWN_KERNEL
    if k in _NAMED_KERNELS:
        return _NAMED_KERNELS[k]
    m = re.search(r"(\d+)", k)
    if m:
        return int(m.group(1))
    for name, rank in _NAMED_KERNELS.items():
        if len(name) > 2 and name in k:
            return rank
    return _UNKNOWN_KERNEL


def _choice_key(s: SeriesInfo) -> tuple:
    thickness = s.slice_thickness if s.slice_thickness else s.spacing[0]
    return (round(float(thickness), 2), kernel_rank(s.kernel), -s.n_slices, s.series_uid)


def choose_series(series: list[SeriesInfo]) -> dict[str, SeriesInfo]:
    """The default series for each patient when a patient has several.

    Among the usable CT series of a patient (modality CT, at least 2 slices, a valid geometry):
    the thinnest slices (SliceThickness, else the z spacing; equal to 0.01 mm), then the softest
    reconstruction kernel (:func:`kernel_rank`), then the most slices, then the smallest series
    UID so that the choice is deterministic.  A patient without a usable series is left out.

    Returns
    -------
    dict mapping patient_id to the chosen SeriesInfo, in patient order.
    """
    by_patient: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        if s.usable:
            by_patient[s.patient_id].append(s)
    return {pid: min(by_patient[pid], key=_choice_key) for pid in sorted(by_patient)}


# ---------------------------------------------------------------------------------- load

def load_series(info: SeriesInfo) -> CTVolume:
    """Load one series found by :func:`discover`.

    Raises
    ------
    InputError
        Not CT, a broken geometry, or unreadable pixel data (see :mod:`lungcad.io.dicom`).
    """
    if info.format == "itk":
        return load_itk(info.path)
    vol = load_dicom_stack(info.headers, source=info.path, patient_id=info.patient_id)
    return vol


def load_ct(path: str | os.PathLike, *, series_uid: str | None = None) -> CTVolume:
    """Load one CT scan in HU.

    Parameters
    ----------
    path : a DICOM series folder (searched recursively), a multi-frame DICOM file (Enhanced CT
        or classic), or a ``.mhd``/``.mha``/``.nii``/``.nii.gz`` file
    series_uid : which series to load when a folder holds several (ignored for a file); by
        default the one :func:`choose_series` picks (thinnest slices, then softest kernel,
        then most slices).  With a list of :class:`SeriesInfo` from :func:`discover` at hand,
        :func:`load_series` loads one without reading the headers again.

    Returns
    -------
    CTVolume, with ``meta`` giving reader, n_files, modality, series_description, study_uid,
    kernel, slice_thickness, manufacturer, kvp, source_path, dropped, clipped_voxels,
    resampled_z and, for DICOM, warnings (see :mod:`lungcad.io.dicom` for the rules).

    Raises
    ------
    InputError
        The only exception for bad input.  The path does not exist; a folder without DICOM or
        ITK images; a corrupt file or a header value that breaks a rule of
        :mod:`lungcad.io.dicom` (the file named); not CT; one slice; mixed image sizes; gantry
        tilt or non-axial; missing slices; a series_uid that is not there; a folder with
        several patients and no series_uid.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file():
        if is_itk_file(p):
            return load_itk(p)
        h = read_header(p)
        if not h.has_image:
            raise InputError(p, f"a DICOM file without an image (Modality {h.modality or '-'}, "
                             f"SOP class {_sop_class_name(h.sop_class)}); expected a CT image")
        if not h.multiframe:
            raise InputError(p, "a single-frame DICOM file holds one slice; give the folder of "
                             "the series (or a multi-frame file)")
        return load_dicom_stack([h], source=p)
    errors: list = []
    found = discover(p, errors=errors)
    if errors:
        bad, message = errors[0]
        more = f" (and {len(errors) - 1} more unreadable file(s))" if len(errors) > 1 else ""
        raise InputError(bad, f"{message}{more}")
    if not found:
        raise InputError(p, "no DICOM series or .mhd/.mha/.nii image found in this folder")
    if series_uid is not None:
        match = [s for s in found if s.series_uid == series_uid]
        if not match:
            raise InputError(p, f"no series with SeriesInstanceUID {series_uid}; found "
                             f"{', '.join(s.series_uid for s in found)}")
        return load_series(match[0])
    if len(found) == 1:
        return load_series(found[0])
    patients = sorted({s.patient_id for s in found})
    if len(patients) > 1:
        raise InputError(p, f"the folder holds {len(patients)} patients "
                         f"({', '.join(patients[:5])}{', ...' if len(patients) > 5 else ''}); "
                         f"give one patient's folder, or use discover() for a batch")
    chosen = choose_series(found)
    if not chosen:
        reasons = "; ".join(f"{s.series_uid or s.path}: {s.problem or 'modality ' + s.modality}"
                            for s in found)
        raise InputError(p, f"none of the {len(found)} series is a usable CT series ({reasons})")
    vol = load_series(chosen[patients[0]])
    vol.meta["chosen_from"] = [s.series_uid for s in found]
    return vol
