"""What the DICOM SR and the DICOM SEG of a scan share: the source series they refer to, the
reported nodules, the algorithm's identification, the UIDs of the new objects.

The source series is :class:`lungcad.io.dicom_source.DicomSource`, kept by the DICOM reader
in ``volume.meta["dicom"]``.  From it, :func:`source_datasets` makes the header of each source
image (no pixel data) as highdicom wants it; the SR and SEG copy the patient and study from
them and reference each source instance.

Required of the source (else :class:`lungcad.errors.OutputSkipped` naming the attribute):
StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, and each image's SOPInstanceUID
and SOPClassUID.  The patient and study attributes of type 2 (PatientID, PatientName,
PatientBirthDate, PatientSex, StudyDate, StudyTime, StudyID, AccessionNumber,
ReferringPhysicianName) and Manufacturer are written empty when the source lacks them, as
DICOM allows; a missing SliceThickness takes the slice spacing.

UIDs of the objects written: :func:`output_uid`, ``2.25.<integer>`` (PS3.5 B.2) derived from
the source series, the output kind and a digest of what is written, so that the same scan
with the same result gets the same UIDs and a changed result new ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungcad import __version__
from lungcad.errors import OutputSkipped
from lungcad.io.dicom_source import DicomSource
from lungcad.results.folder import safe_id

__all__ = ["ALGORITHM_NAME", "MANUFACTURER", "algorithm_parameters", "algorithm_version",
           "dataset_bytes", "dicom_source", "library_warnings", "output_key", "output_uid", "reported_nodules", "source_datasets"]

ALGORITHM_NAME = "lungcad"
MANUFACTURER = "lungcad open-source project"
#: The private coding scheme of lungcad's own concepts (PS3.3 8.2: "99" + a name).
LUNGCAD_SCHEME = "99LUNGCAD"

_TYPE2_DEFAULTS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                   "Manufacturer")


def dicom_source(volume, output: str) -> DicomSource:
    """The source series of ``volume``, checked for what an SR or SEG needs.

    Raises OutputSkipped(output, reason) for a volume not read from DICOM, and for a source
    that lacks a required attribute (the reason names it)."""
    meta = getattr(volume, "meta", None) or {}
    src = meta.get("dicom")
    if not isinstance(src, DicomSource):
        fmt = meta.get("format") or "not DICOM"
        raise OutputSkipped(output, f"the input is not DICOM ({fmt}); a DICOM {output.upper()} "
                                    f"refers to the source DICOM instances")
    series = src.attributes.get("SeriesInstanceUID") or volume.series_uid
    for name, value in (("StudyInstanceUID", src.study_uid), ("SeriesInstanceUID", series),
                        ("FrameOfReferenceUID", src.frame_of_reference_uid)):
        if not value:
            raise OutputSkipped(output, f"the source series has no {name}")
    for name, attr in (("SOPInstanceUID", "sop_instance_uid"), ("SOPClassUID", "sop_class_uid")):
        missing = [i for i, im in enumerate(src.images) if not getattr(im, attr)]
        if missing:
            raise OutputSkipped(output, f"{len(missing)} of the {len(src.images)} source images "
                                        f"have no {name}")
    if len(src.images) == 0:
        raise OutputSkipped(output, "the source series has no images")
    return src


def source_datasets(src: DicomSource, volume) -> list[Dataset]:
    """The headers of the source images (no pixel data): one per single-frame image in plane
    order, or the one multi-frame image (its frames in file order)."""
    a = src.attributes
    thickness = src.slice_thickness or float(volume.spacing[0])
    first = src.images[0]
    series = a.get("SeriesInstanceUID") or volume.series_uid
    charset = _charset(a)

    def common(sop_class: str, sop_uid: str) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        for name in _TYPE2_DEFAULTS:
            setattr(ds, name, a.get(name, ""))
        for name in ("PatientAge", "StudyDescription", "ManufacturerModelName",
                     "InstitutionName", "BodyPartExamined"):
            if a.get(name):
                setattr(ds, name, a[name])
        ds.StudyInstanceUID = src.study_uid
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = a.get("SeriesNumber") or None
        ds.Modality = a.get("Modality") or "CT"
        ds.FrameOfReferenceUID = src.frame_of_reference_uid
        ds.PositionReferenceIndicator = a.get("PositionReferenceIndicator", "")
        ds.Rows, ds.Columns = src.rows, src.columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        return ds

    if src.multiframe:
        ds = common(first.sop_class_uid, first.sop_instance_uid)
        frames = sorted(src.images, key=lambda im: im.frame or 0)
        ds.NumberOfFrames = len(frames)
        measures = Dataset()
        measures.PixelSpacing = list(src.pixel_spacing)
        measures.SliceThickness = thickness
        orient = Dataset()
        orient.ImageOrientationPatient = list(src.orientation)
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        shared.PlaneOrientationSequence = [orient]
        ds.SharedFunctionalGroupsSequence = [shared]
        per_frame = []
        for im in frames:
            pos = Dataset()
            pos.ImagePositionPatient = list(im.position_xyz)
            item = Dataset()
            item.PlanePositionSequence = [pos]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
        return [ds]
    out = []
    for im in src.images:
        ds = common(im.sop_class_uid, im.sop_instance_uid)
        ds.ImagePositionPatient = list(im.position_xyz)
        ds.ImageOrientationPatient = list(src.orientation)
        ds.PixelSpacing = list(src.pixel_spacing)
        ds.SliceThickness = thickness
        out.append(ds)
    return out


def _charset(attributes: dict[str, str]) -> str:
    """The character set of the values (decoded text): Latin-1 when it holds them all, else
    UTF-8."""
    try:
        "".join(attributes.values()).encode("latin-1")
        return "ISO_IR 100"
    except UnicodeEncodeError:
        return "ISO_IR 192"


def reported_nodules(result) -> pd.DataFrame:
    """The reported nodules of ``result`` (rows with a ``nodule_id``), by ``nodule_id``."""
    c = result.candidates
    if c is None or "nodule_id" not in c.columns or len(c) == 0:
        cols = list(getattr(c, "columns", []))
        return pd.DataFrame(columns=cols + ([] if "nodule_id" in cols else ["nodule_id"]))
    ids = pd.to_numeric(c["nodule_id"], errors="coerce")
    rows = c.loc[ids.notna()].copy()
    rows["nodule_id"] = ids[ids.notna()].astype(int)
    return rows.sort_values("nodule_id", kind="stable").reset_index(drop=True)


def algorithm_version(result) -> str:
    return str((result.versions or {}).get("lungcad") or __version__)


def weights_sha256(result) -> dict[str, str]:
    """The sha256 of each network's weights file that ``result`` ran with: from
    ``result.versions["weights"]`` when the pipeline recorded it, else the file the config
    names (``builtin:`` or an absolute path) hashed now; "unknown" when it cannot be found."""
    recorded = (result.versions or {}).get("weights")
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v.get("sha256") if isinstance(v, dict) else v)
                for k, v in recorded.items()}
    from lungcad.cards import weights_sha256 as file_sha256
    from lungcad.config import WEIGHTS_DIR

    out = {}
    for role, section in (("segmenter", "candidates"), ("fpr", "fpr")):
        ref = str(((result.config or {}).get(section) or {}).get("weights") or "")
        if not ref:
            continue
        path = WEIGHTS_DIR / ref.split(":", 1)[1] if ref.startswith("builtin:") else Path(ref)
        out[role] = file_sha256(path) if path.is_absolute() and path.is_file() else "unknown"
    return out


def algorithm_parameters(result) -> dict[str, str]:
    """The algorithm's parameters as the outputs record them: the weights' sha256 and the
    config hash."""
    out = {f"{role} weights sha256": sha for role, sha in weights_sha256(result).items()}
    if result.config_hash:
        out["config hash"] = str(result.config_hash)
    return out


def output_key(result, name: str) -> str:
    """``dicom/<sid>/<name>``, relative to the output folder."""
    return f"dicom/{safe_id(result.patient_id, result.series_uid)}/{name}"


def output_uid(result, kind: str, *content: Any) -> str:
    """A ``2.25.`` UID of the output ``kind`` of this scan and this ``content``."""
    parts = [str(result.series_uid), kind, algorithm_version(result), str(result.config_hash),
             *(_digest(c) for c in content)]
    return generate_uid(prefix=None, entropy_srcs=parts)


def _digest(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    if isinstance(value, pd.DataFrame):
        return hashlib.sha256(value.to_csv(index=False).encode("utf-8", "backslashreplace")
                              ).hexdigest()
    return str(value)


@contextlib.contextmanager
def library_warnings(result, output: str):
    """highdicom's and pydicom's UserWarnings while ``output`` is made go into the scan's
    warnings (``"<output>: <text>"``), not to stderr; the one about a single-component
    PatientName (copied from the source as it is) is dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        text = " ".join(str(w.message).split())
        if "intended person name" in text:
            continue
        line = f"{output}: {text[:300]}"
        if line not in result.warnings:
            result.warnings.append(line)


def dataset_bytes(ds) -> bytes:
    """A data set as the bytes of a DICOM file (preamble, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
