"""DICOM file headers: what one file says about its series, read without the pixel data.

What one file must hold (checked by :func:`read_header`, from the header alone, before any
pixel data is read or any array allocated; else :class:`InputError` naming the file):

a. pydicom can parse the header.  Every exception pydicom raises while parsing or converting
   a value (unknown VR, bad lengths, undecodable values...) becomes an InputError.  pydicom's
   warnings are captured, never printed: they go to the scan's warnings
   (``DicomFileHeader.warnings``, then ``volume.meta["warnings"]``).
b. An image has Rows and Columns (1 to :data:`MAX_IMAGE_SIDE`), BitsAllocated, and a
   NumberOfFrames that is a positive integer (1 when absent).  Native pixel data holds exactly
   Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8 bytes (plus one
   padding byte); compressed pixel data holds at least one fragment per frame and a Basic
   Offset Table, when there is one, of one entry per frame.  A compressed frame must be of
   the claimed size, read from its first bytes: a JPEG, JPEG-LS or JPEG 2000 codestream
   states the same Rows, Columns and SamplesPerPixel, an RLE frame has one segment per byte
   of a pixel, each long enough to decode to Rows x Columns bytes (the first
   :data:`MAX_CHECKED_FRAMES` frames), so that a few bytes cannot make a decoder allocate
   gigabytes.  The TransferSyntaxUID, when it is a known UID, is one of a transfer syntax.
c. ImagePositionPatient: 3 finite values within :data:`MAX_ABS_POSITION_MM`.
   ImageOrientationPatient: 6 finite values; the row and column directions have unit length
   within :data:`UNIT_TOL` and are orthogonal within :data:`ORTHOGONAL_TOL` (cosine).
   PixelSpacing: 2 finite values, positive, at most :data:`MAX_PIXEL_SPACING_MM`.  (For a
   multi-frame file, each frame's.)
d. RescaleSlope (1 when absent) one finite positive value; RescaleIntercept (0 when absent) one
   finite value; PixelPaddingValue and PixelPaddingRangeLimit one integer each.
e. SOP, Series and Study Instance UIDs, when present, are valid DICOM UIDs (digits in
   components separated by dots, no leading zero in a component but "0" itself, at most 64
   characters).  An invalid one is refused: the UIDs that outputs carry are never rewritten.
   An invalid FrameOfReferenceUID is a warning and is not kept: only the DICOM SR and SEG
   need it, and they are skipped.
f. Not errors, but warnings: a SliceThickness that is not a positive number is ignored (the
   slice spacing comes from the positions).  Control characters in PatientID and the other
   text fields are escaped as ``\\xNN`` (a NUL becomes the four characters ``\\x00``); padding
   NULs and spaces at either end are stripped without a word.

The values are read and checked by :mod:`lungcad.io.dicom_attributes`, the frames of a
multi-frame file placed by :mod:`lungcad.io.dicom_slices`, and the pixel data of rule b checked
by :mod:`lungcad.io.dicom_pixel_checks`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from lungcad.errors import InputError
from lungcad.io.dicom_attributes import _clean_text, _encoding_syntax, _escape_controls, \
    _first_in_groups, _get, _image_type, _integer, _items, _optional_positive, _orientation, \
    _pixel_spacing, _position, _rescale, _shown, _transfer_syntax, _uid, _values, is_valid_uid
from lungcad.io.dicom_pixel_checks import _check_pixel_data, _inspect_pixel_data, _PixelData
from lungcad.io.dicom_slices import SliceHeader, _frames_classic, _frames_from_functional_groups
from lungcad.io.dicom_source import SOURCE_ATTRIBUTES, source_attributes

__all__ = ["DicomFileHeader", "read_header", "looks_like_dicom", "HEADER_TAGS"]

#: The largest Rows or Columns accepted.
MAX_IMAGE_SIDE = 16384

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesDescription", "StudyDescription", "SeriesNumber", "ImageType",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "PixelRepresentation", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation",
    "ConvolutionKernel", "Manufacturer", "KVP",
    "GridFrameOffsetVector", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    # kept for the outputs that refer to the source (DICOM SR and SEG): lungcad.io.dicom_source
    *(t for t in SOURCE_ATTRIBUTES if t not in (
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription",
        "StudyDescription", "SeriesNumber", "Modality", "Manufacturer")),
]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")
_VR_NAMES = {vr.encode() for vr in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV")}


@dataclass
class DicomFileHeader:
    """What one DICOM file says about its series, read without the pixel data.

    ``warnings`` are problems that do not stop the reading (pydicom's warnings, an ignored
    SliceThickness, escaped control characters), without the file name.  ``sop_instance_uid``
    and ``attributes`` (the :data:`~lungcad.io.dicom_source.SOURCE_ATTRIBUTES` present) are
    what outputs that refer to the source need.
    """

    path: Path
    sop_class: str
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    series_description: str
    study_description: str
    kernel: str
    manufacturer: str
    kvp: float | None
    slice_thickness: float | None
    n_frames: int
    transfer_syntax: str
    padding: tuple[float, float] | None
    slices: list[SliceHeader] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sop_instance_uid: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def multiframe(self) -> bool:
        return self.n_frames > 1

    @property
    def has_image(self) -> bool:
        """False for DICOM objects without pixel data: DICOMDIR, SR, RTSTRUCT, ..."""
        return self.n_frames > 0


def looks_like_dicom(path: Path) -> bool:
    """True for a file with the DICM preamble, a DICOM file-name suffix, or that starts with a
    group 0002 or 0008 tag, little or big endian, explicit or implicit VR (a DICOM data set
    written without preamble)."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        if int.from_bytes(head[:2], order) not in (0x0002, 0x0008):
            continue
        if head[4:6] in _VR_NAMES:  # explicit VR
            return True
        if int.from_bytes(head[4:8], order) < 1024:  # implicit VR: a short first value
            return True
    return False


def _header_from_dataset(ds, path: Path, pixels: _PixelData | None,
                         notes: list[str]) -> DicomFileHeader:
    """The header of one parsed file (rules b-f of the module docstring).

    Raises ValueError with the problem; :func:`read_header` names the file.
    """
    ts = _transfer_syntax(ds) or _encoding_syntax(ds)
    if "Rows" not in ds or "Columns" not in ds:
        # Not an image (DICOMDIR, structured report, RT structure set, presentation state...).
        return DicomFileHeader(
            path=path, sop_class=_clean_text(_get(ds, "SOPClassUID"), "SOPClassUID", notes),
            modality=_clean_text(_get(ds, "Modality"), "Modality", notes),
            patient_id=_clean_text(_get(ds, "PatientID"), "PatientID", notes),
            study_uid=_clean_text(_get(ds, "StudyInstanceUID"), "StudyInstanceUID", notes),
            series_uid=_clean_text(_get(ds, "SeriesInstanceUID"), "SeriesInstanceUID", notes),
            series_description=_clean_text(_get(ds, "SeriesDescription"), "SeriesDescription",
                                           notes),
            study_description="", kernel="", manufacturer="", kvp=None, slice_thickness=None,
            n_frames=0, transfer_syntax=ts, padding=None, slices=[], warnings=notes)
    rows = _integer(_get(ds, "Rows"), "Rows", None, high=MAX_IMAGE_SIDE)
    cols = _integer(_get(ds, "Columns"), "Columns", None, high=MAX_IMAGE_SIDE)
    if rows is None or cols is None:
        raise ValueError("an image with empty Rows or Columns")
    n_frames = _integer(_get(ds, "NumberOfFrames"), "NumberOfFrames", 1)
    _check_pixel_data(ds, pixels, rows=rows, cols=cols, n_frames=n_frames)
    sop_instance_uid = _uid(ds, "SOPInstanceUID")
    try:
        frame_uid = _uid(ds, "FrameOfReferenceUID")
    except ValueError as e:  # only the SR and SEG need it: they are skipped, the scan is read
        notes.append(f"{e}; ignored")
        frame_uid = ""
    for name, value in (("SOPClassUID", _get(ds, "SOPClassUID")), ("TransferSyntaxUID", ts)):
        text = str(value or "").strip(" \x00")
        if text and not is_valid_uid(text):
            raise ValueError(f"{name} {_shown(text, 80)!r} is not a valid DICOM UID")
    entry = pydicom.uid.UID_dictionary.get(ts)
    if entry is not None and entry[1] != "Transfer Syntax":
        raise ValueError(f"TransferSyntaxUID {ts} is not a transfer syntax (it is the UID of "
                         f"{entry[0]})")
    series_uid = _uid(ds, "SeriesInstanceUID")
    study_uid = _uid(ds, "StudyInstanceUID")
    pad = _integer(_get(ds, "PixelPaddingValue"), "PixelPaddingValue", None, low=-(2 ** 31))
    padding = None
    if pad is not None:
        limit = _integer(_get(ds, "PixelPaddingRangeLimit"), "PixelPaddingRangeLimit", pad,
                         low=-(2 ** 31))
        padding = (float(min(pad, limit)), float(max(pad, limit)))
    kernel = _clean_text(_get(ds, "ConvolutionKernel"), "ConvolutionKernel", notes)
    thickness_value = _get(ds, "SliceThickness")
    if "PerFrameFunctionalGroupsSequence" in ds:
        slices = _frames_from_functional_groups(ds, n_frames, path, rows, cols)
        groups = _items(ds, "PerFrameFunctionalGroupsSequence")[:1] \
            + _items(ds, "SharedFunctionalGroupsSequence")[:1]
        kernel = kernel or _clean_text(_first_in_groups(groups, "CTReconstructionSequence",
                                                        "ConvolutionKernel"),
                                       "ConvolutionKernel", notes)
        if not _values(thickness_value):
            thickness_value = _first_in_groups(groups, "PixelMeasuresSequence",
                                               "SliceThickness")
    elif "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds \
            or "PixelSpacing" not in ds:
        # No patient geometry (e.g. a secondary capture): list it, but it cannot be stacked.
        slices = []
    elif n_frames > 1:
        slices = _frames_classic(ds, n_frames, path, rows, cols)
    else:
        slope, intercept = _rescale(_get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept"))
        try:
            instance = _integer(_get(ds, "InstanceNumber"), "InstanceNumber", None,
                                low=-(2 ** 31))
        except ValueError as e:
            notes.append(f"{e}; ignored")
            instance = None
        slices = [SliceHeader(path=path, frame=None, position=_position(ds.ImagePositionPatient),
                              orientation=_orientation(ds.ImageOrientationPatient),
                              rows=rows, cols=cols, pixel_spacing=_pixel_spacing(ds.PixelSpacing),
                              image_type=_image_type(_get(ds, "ImageType")), slope=slope,
                              intercept=intercept, instance=instance)]
    thickness = _optional_positive(thickness_value, "SliceThickness", notes,
                                   "ignored: the slice spacing comes from the slice positions")
    kvp = _optional_positive(_get(ds, "KVP"), "KVP", notes, "ignored")
    header = DicomFileHeader(
        path=path, sop_class=str(_get(ds, "SOPClassUID", "")).strip(" \x00"),
        modality=_clean_text(_get(ds, "Modality"), "Modality", notes),
        patient_id=_clean_text(_get(ds, "PatientID"), "PatientID", notes),
        study_uid=study_uid, series_uid=series_uid,
        series_description=_clean_text(_get(ds, "SeriesDescription"), "SeriesDescription",
                                       notes),
        study_description=_clean_text(_get(ds, "StudyDescription"), "StudyDescription", notes),
        kernel=kernel, manufacturer=_clean_text(_get(ds, "Manufacturer"), "Manufacturer", notes),
        kvp=kvp, slice_thickness=thickness, n_frames=n_frames, transfer_syntax=ts,
        padding=padding, slices=slices, warnings=notes, sop_instance_uid=sop_instance_uid)
    source_notes: list[str] = []   # the fields above have noted their own control characters
    header.attributes = source_attributes(ds, lambda v, name: _clean_text(v, name, source_notes))
    header.attributes.pop("FrameOfReferenceUID", None)
    if frame_uid:
        header.attributes["FrameOfReferenceUID"] = frame_uid
    notes.extend(n for n in dict.fromkeys(source_notes) if n not in notes)
    return header


def read_header(path: str | os.PathLike) -> DicomFileHeader:
    """Read the header of one DICOM file (no pixel data), checking rules a-f of the module
    docstring.

    A valid DICOM object without an image (DICOMDIR, SR, ...) gives a header with
    ``has_image`` False.

    Raises
    ------
    InputError
        The only exception: the file is not DICOM, is truncated or corrupt, or holds a value
        that breaks a rule (the message names the file, the element and the value).
    """
    path = Path(path)
    ds, pixels, notes = _parse_header(path)
    try:
        return _header_from_dataset(ds, path, pixels, notes)
    except ValueError as e:
        raise InputError(path, str(e)) from e


def _parse_header(path: Path) -> tuple[Any, _PixelData | None, list[str]]:
    """The pydicom boundary of :func:`read_header`: the parsed data set (every value converted),
    what its pixel data element looks like, and pydicom's warnings."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise InputError(path, f"cannot open the file ({e.strerror or e})") from e
    with fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(_Bounded(fh), stop_before_pixels=True,
                                 specific_tags=HEADER_TAGS, force=not _has_preamble(path))
            _convert_all(ds)
            fm = getattr(ds, "file_meta", None)
            if fm is not None:
                _convert_all(fm)
        except _ElementError as e:
            raise InputError(path, f"corrupt DICOM header: {e}") from e.__cause__
        except InvalidDicomError as e:
            raise InputError(path, f"not a valid DICOM file ({e})") from e
        except OSError as e:
            raise InputError(path, f"cannot read the file ({e.strerror or e})") from e
        except Exception as e:  # noqa: BLE001 - pydicom, parsing untrusted bytes, raises many
            # kinds (NotImplementedError for an unknown VR, BytesLengthException, struct.error,
            # ValueError, KeyError, OverflowError...); each is a fault of this file.
            raise InputError(path, f"corrupt DICOM header ({type(e).__name__}: "
                             f"{_shown(str(e), 200)})") from e
        try:
            # pydicom stops silently at the end of a truncated file: check what is left.
            problem, pixels = _inspect_pixel_data(fh, ds)
        except OSError as e:
            raise InputError(path, f"cannot read the file ({e.strerror or e})") from e
    if problem:
        raise InputError(path, f"truncated or corrupt DICOM file: {problem}")
    return ds, pixels, _library_warnings(caught)


class _Bounded:
    """A binary file whose ``read(n)`` never asks for more than the bytes left in it.

    pydicom reads each element's value with ``read(length)``, and Python allocates ``length``
    bytes before it finds the file short: a corrupt length of 4 GiB in a 3 KB file would
    allocate 4 GiB (and fail with MemoryError under a memory limit).  Clamped, the read
    returns what is there and pydicom reports the element as cut short.
    """

    def __init__(self, fh):
        self._fh = fh
        self._size = os.fstat(fh.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n >= 0:
            n = max(0, min(n, self._size - self._fh.tell()))
        return self._fh.read(n)

    def __getattr__(self, name):
        return getattr(self._fh, name)


class _ElementError(Exception):
    """pydicom could not convert the value of one element."""

    def __init__(self, tag, cause: Exception):
        name = pydicom.datadict.keyword_for_tag(tag) or str(pydicom.tag.Tag(tag))
        super().__init__(f"cannot decode {name} ({type(cause).__name__}: "
                         f"{_shown(str(cause), 200)})")


def _convert_all(ds) -> None:
    """Convert every raw element now, recursing into sequences (pydicom converts on first
    access), so that a value pydicom cannot decode fails inside the pydicom boundary."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except Exception as e:  # noqa: BLE001 - see _parse_header
            raise _ElementError(tag, e) from e
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item)


def _library_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The text of the UserWarnings caught from a library (deduplicated, in order).  Other
    categories (deprecations, numpy's RuntimeWarnings) concern lungcad's code, not the scan:
    they are issued again as they were."""
    out: list[str] = []
    for w in caught:
        if issubclass(w.category, UserWarning):
            text = _escape_controls(" ".join(str(w.message).split()))
            if text not in out:
                out.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # let dcmread raise the OSError
    return head[128:132] == b"DICM"
