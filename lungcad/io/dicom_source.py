"""What a DICOM SR and a DICOM SEG need of their source series: :class:`DicomSource`.

The DICOM reader (:func:`lungcad.io.dicom.load_dicom_stack`) keeps it in
``volume.meta["dicom"]``: each kept source image (a single-frame file, or one frame of a
multi-frame file) in the order of the volume's z planes, with its SOPInstanceUID,
SOPClassUID, ImagePositionPatient and position along the slice normal; the series' geometry
(Rows, Columns, PixelSpacing, ImageOrientationPatient, SliceThickness); and the patient,
study and series attributes (PatientID, PatientName, StudyInstanceUID, FrameOfReferenceUID,
...), as the first file of the series gives them.

A :class:`DicomSource` is not a plain value, so :class:`lungcad.pipeline.Pipeline` leaves it
out of the scan's JSON (the per-slice lists, and the patient's name and birth date, stay out
of it).  Text values are kept as the files hold them, padding stripped; a value with control
characters is kept escaped (``\\xNN``), as the reader's warnings say.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["DicomSource", "SourceImage", "SOURCE_ATTRIBUTES", "source_attributes"]

#: The patient, study, series and equipment attributes kept from the first file of a series
#: (those a derived SR or SEG copies, or needs to place itself in the source's study).
SOURCE_ATTRIBUTES = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "BodyPartExamined",
    "SpecificCharacterSet",
)


@dataclass(frozen=True)
class SourceImage:
    """One source image of a z plane: a single-frame file (``frame`` None) or frame
    ``frame`` (1-based) of a multi-frame file."""

    sop_instance_uid: str
    sop_class_uid: str
    position_xyz: tuple[float, float, float]  # ImagePositionPatient, mm (LPS)
    z_mm: float  # ImagePositionPatient . slice normal, mm
    frame: int | None = None


@dataclass
class DicomSource:
    """The source series of a volume read from DICOM, for outputs that refer to it.

    ``images`` are in the order of the volume's z planes when ``resampled`` is False (one per
    plane); when the reader resampled uneven gaps onto a uniform grid, they are the source
    slices in ascending ``z_mm`` and ``plane_of_image`` gives each one's nearest plane.
    """

    attributes: dict[str, str]
    images: list[SourceImage]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    orientation: tuple[float, ...]  # ImageOrientationPatient, 6 direction cosines
    slice_thickness: float | None
    multiframe: bool = False
    resampled: bool = False
    grid_z_mm: list[float] = field(default_factory=list)  # the planes' z_mm when resampled

    @property
    def study_uid(self) -> str:
        return self.attributes.get("StudyInstanceUID", "")

    @property
    def frame_of_reference_uid(self) -> str:
        return self.attributes.get("FrameOfReferenceUID", "")

    def plane_of_image(self) -> np.ndarray:
        """The index of the volume's z plane nearest to each source image (the identity
        when the volume was not resampled)."""
        if not self.resampled or not self.grid_z_mm:
            return np.arange(len(self.images))
        grid = np.asarray(self.grid_z_mm, dtype=float)
        z = np.array([im.z_mm for im in self.images], dtype=float)
        return np.abs(z[:, None] - grid[None, :]).argmin(axis=1)

    def __repr__(self) -> str:  # the lists are long; a log line shows the summary
        return (f"DicomSource({len(self.images)} images, study {self.study_uid or '-'}, "
                f"frame of reference {self.frame_of_reference_uid or '-'})")


def source_attributes(ds, clean) -> dict[str, str]:
    """The :data:`SOURCE_ATTRIBUTES` of a parsed data set as text (absent: not in the dict).

    ``clean(value, name)`` turns a value into text (the reader's ``_clean_text``, which strips
    padding and escapes control characters, with a note)."""
    out: dict[str, str] = {}
    for name in SOURCE_ATTRIBUTES:
        if name in ds and ds[name].value not in (None, ""):
            text = clean(ds[name].value, name)
            if text:
                out[name] = text
    return out


def build_source(attributes: dict[str, str], images: Sequence[SourceImage], *, rows: int,
                 columns: int, pixel_spacing, orientation, slice_thickness: float | None,
                 multiframe: bool, grid_z_mm: Sequence[float] | None) -> DicomSource:
    """A :class:`DicomSource`; ``grid_z_mm`` are the planes' positions when resampled."""
    return DicomSource(attributes=dict(attributes), images=list(images), rows=int(rows),
                       columns=int(columns),
                       pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
                       orientation=tuple(float(v) for v in orientation),
                       slice_thickness=None if slice_thickness is None else float(slice_thickness),
                       multiframe=bool(multiframe), resampled=grid_z_mm is not None,
                       grid_z_mm=[] if grid_z_mm is None else [float(v) for v in grid_z_mm])
