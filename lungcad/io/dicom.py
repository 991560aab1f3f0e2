"""DICOM reading: headers, slice geometry, and a CT series (or multi-frame file) to a CTVolume.

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
f. Not errors, but warnings: a SliceThickness that is not a positive number is ignored (the
   slice spacing comes from the positions).  Control characters in PatientID and the other
   text fields are escaped as ``\\xNN`` (a NUL becomes the four characters ``\\x00``); padding
   NULs and spaces at either end are stripped without a word.

The rules for turning a set of slices into a volume (see :func:`plan_stack`):

1. Localizer and scout images are dropped: ImageType contains LOCALIZER or SCOUT, or the
   ImageOrientationPatient differs (by more than 1 degree) from the majority of the slices.
2. All remaining slices must have the same Rows and Columns, else :class:`InputError`.
   PixelSpacing must be positive and the same for all of them.
3. The slice normal is cross(row direction, column direction).  It must lie within 1 degree of
   the patient z axis (an axial series; flipped or rotated rows and columns are fine), and the
   slice positions must advance along the normal (no gantry-tilt shear); else :class:`InputError`.
4. Slices are sorted by ImagePositionPatient . normal, never by file name or InstanceNumber.
   Slices at the same position are duplicates: the one with the lowest InstanceNumber is
   kept and the others dropped.
5. The slice spacing is the median gap, which must be finite and positive.  A gap above 3 x the
   median means missing slices (:class:`InputError`).  Gaps that differ from the median by more
   than 1 % are resampled by linear interpolation onto a uniform grid of the median spacing
   (``meta["resampled_z"]``).  A volume of more than :data:`MAX_SERIES_VOXELS` voxels is
   refused before it is allocated.
6. HU = stored x RescaleSlope + RescaleIntercept, computed in float64 (or exactly in int32 for
   small integer rescales).  The HU of every pixel that is not padding must lie within int16,
   else :class:`InputError` (a wrong rescale).  Pixels equal to PixelPaddingValue (or inside
   the padding range) and every HU below -1024 become -1024 (``meta["clipped_voxels"]``).

Decoders' messages: what pydicom's decoders raise, and what GDCM/OpenJPEG print to stderr
while decoding compressed data, become one line of the InputError or of the scan's warnings
(``pixel decoder: ...``); nothing is printed raw.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lungcad.errors import InputError
from lungcad.volume import CTVolume

__all__ = ["DicomFileHeader", "SliceHeader", "StackPlan", "read_header", "looks_like_dicom",
           "plan_stack", "load_dicom_stack", "check_geometry_present", "is_valid_uid", "uid_name",
           "series_warnings", "HU_AIR", "HEADER_TAGS"]

#: The HU that padding and every value below it become.
HU_AIR = -1024
#: Angle (degrees) within which two orientations count as equal, and the slice normal as axial.
MAX_ANGLE_DEG = 1.0
#: Relative deviation of a gap from the median above which the series is resampled along z.
IRREGULAR_GAP = 0.01
#: Gaps longer than this many median gaps mean missing slices.
MAX_GAP_RATIO = 3.0
#: Two slices closer than this (mm) along the normal are at the same position.
DUPLICATE_TOL_MM = 0.01
#: Threads that read pixel data of one series.
READ_THREADS = 4
#: How far from 1 the length of an ImageOrientationPatient direction may be.
UNIT_TOL = 1e-2
#: The largest |cosine| between the row and column directions (about 0.06 degree from 90).
ORTHOGONAL_TOL = 1e-3
#: The largest Rows or Columns accepted.
MAX_IMAGE_SIDE = 16384
#: The largest PixelSpacing (mm) accepted.
MAX_PIXEL_SPACING_MM = 100.0
#: The largest |ImagePositionPatient| coordinate (mm) accepted.
MAX_ABS_POSITION_MM = 1e6
#: The most voxels of one volume (2**32 int16 voxels: 8 GiB), checked before allocating.
MAX_SERIES_VOXELS = 2 ** 32

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
]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_VR_NAMES = {vr.encode() for vr in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV")}


@dataclass
class SliceHeader:
    """The geometry and rescale of one 2-D image: a single-frame file or one frame."""

    path: Path
    frame: int | None
    position: np.ndarray  # ImagePositionPatient, mm (x, y, z)
    orientation: np.ndarray  # ImageOrientationPatient, 6 direction cosines
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x), mm
    image_type: tuple[str, ...] = ()
    slope: float = 1.0
    intercept: float = 0.0
    instance: int | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} frame {self.frame + 1}"

    def is_localizer(self) -> bool:
        return any(w in t for t in self.image_type for w in _LOCALIZER_WORDS)


@dataclass
class DicomFileHeader:
    """What one DICOM file says about its series, read without the pixel data.

    ``warnings`` are problems that do not stop the reading (pydicom's warnings, an ignored
    SliceThickness, escaped control characters), without the file name.
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

    @property
    def multiframe(self) -> bool:
        return self.n_frames > 1

    @property
    def has_image(self) -> bool:
        """False for DICOM objects without pixel data: DICOMDIR, SR, RTSTRUCT, ..."""
        return self.n_frames > 0


@dataclass
class StackPlan:
    """How the slices of a series become a volume: which slices, in which order, where."""

    slices: list[SliceHeader]  # kept, sorted along the normal
    positions: np.ndarray  # mm along the normal, ascending
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]
    direction: np.ndarray
    dropped: list[dict[str, str]]
    resample: bool


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


def is_valid_uid(uid: str) -> bool:
    """True for a valid DICOM UID: digits in components separated by dots, no leading zero in
    a component except "0" itself, at most 64 characters (PS3.5 section 9.1)."""
    return 0 < len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def uid_name(uid: str) -> str:
    """The name of a well-known UID ("CT Image Storage"), else the UID itself (escaped).
    Unlike ``pydicom.uid.UID(uid).name`` it never warns about an invalid UID."""
    entry = pydicom.uid.UID_dictionary.get(uid)
    return entry[0] if entry else _escape_controls(uid)


# ----------------------------------------------------------------- values of one header

def _get(ds, name: str, default=None):
    el = ds.get(name, default)
    return default if el is None or el == "" else el


def _values(value) -> list:
    """A DICOM value as a list of its values ([] when absent)."""
    if value is None or (isinstance(value, str) and value == ""):
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _shown(value, limit: int = 60) -> str:
    """A value as it appears in a message: backslash-separated, escaped, cut at ``limit``."""
    text = _escape_controls("\\".join(str(v) for v in _values(value)))
    return text if len(text) <= limit else text[:limit] + "..."


def _numbers(value, name: str, n: int) -> np.ndarray:
    """Exactly ``n`` finite numbers from ``value``, else ValueError saying what is wrong."""
    vals = _values(value)
    if len(vals) != n:
        raise ValueError(f"{name} must have {n} values; found {len(vals)} ({_shown(value)})")
    what = "a number" if n == 1 else "numbers"
    try:
        out = np.array([float(v) for v in vals], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be {what}; found {_shown(value)}") from None
    if not np.isfinite(out).all():
        raise ValueError(f"{name} must be {'a finite number' if n == 1 else 'finite numbers'}; "
                         f"found {_shown(value)}")
    return out


def _number(value, name: str, default: float | None) -> float | None:
    """One finite number, or ``default`` when absent."""
    if not _values(value):
        return default
    return float(_numbers(value, name, 1)[0])


def _integer(value, name: str, default: int | None, *, low: int = 1,
             high: int | None = None) -> int | None:
    """One integer in [low, high], or ``default`` when absent."""
    x = _number(value, name, None)
    if x is None:
        return default
    if not x.is_integer() or x < low or (high is not None and x > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be an integer {bound}; found {_shown(value)}")
    return int(x)


def _position(value, name: str = "ImagePositionPatient") -> np.ndarray:
    ipp = _numbers(value, name, 3)
    if np.abs(ipp).max() > MAX_ABS_POSITION_MM:
        raise ValueError(f"{name} must be within {MAX_ABS_POSITION_MM:g} mm of the origin; "
                         f"found {_shown(value)}")
    return ipp


def _orientation(value) -> np.ndarray:
    iop = _numbers(value, "ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    with np.errstate(over="ignore", invalid="ignore"):   # 1e300: inf, and refused below
        nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(nr - 1) > UNIT_TOL or abs(nc - 1) > UNIT_TOL:
        raise ValueError(f"ImageOrientationPatient must hold two unit vectors (row and column "
                         f"directions); their lengths are {nr:.4g} and {nc:.4g} "
                         f"({_shown(value)})")
    cos = float(row @ col) / (nr * nc)
    if abs(cos) > ORTHOGONAL_TOL:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        raise ValueError(f"ImageOrientationPatient row and column directions must be "
                         f"orthogonal; they are {angle:.2f} degrees apart ({_shown(value)})")
    return iop


def _pixel_spacing(value) -> tuple[float, float]:
    ps = _numbers(value, "PixelSpacing", 2)
    if (ps <= 0).any():
        raise ValueError(f"PixelSpacing must be positive (mm between rows and between "
                         f"columns); found {_shown(value)}")
    if (ps > MAX_PIXEL_SPACING_MM).any():
        raise ValueError(f"PixelSpacing must be at most {MAX_PIXEL_SPACING_MM:g} mm; found "
                         f"{_shown(value)}")
    return float(ps[0]), float(ps[1])


def _rescale(slope_value, intercept_value) -> tuple[float, float]:
    slope = _number(slope_value, "RescaleSlope", 1.0)
    intercept = _number(intercept_value, "RescaleIntercept", 0.0)
    if slope <= 0:
        raise ValueError(f"RescaleSlope must be positive; found {_shown(slope_value)}")
    return slope, intercept


def _escape_controls(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped as ``\\xNN``/``\\uNNNN``."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o < 0xE000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _clean_text(value, name: str, notes: list[str]) -> str:
    """A text value with padding stripped and control characters escaped (noted)."""
    text = "\\".join(str(v) for v in _values(value)).strip(" \x00")
    clean = _escape_controls(text)
    if clean != text:
        notes.append(f"{name} holds control characters; read as '{clean}'")
    return clean


def _uid(ds, name: str) -> str:
    """A UID element ("" when absent); ValueError when it is not a valid UID."""
    uid = "\\".join(str(v) for v in _values(_get(ds, name))).strip(" \x00")
    if uid and not is_valid_uid(uid):
        raise ValueError(f"{name} {_shown(uid, 80)!r} is not a valid DICOM UID (digits and "
                         f"dots, no leading zeros, at most 64 characters)")
    return uid


def _image_type(value) -> tuple[str, ...]:
    return tuple(str(t).strip().upper() for t in _values(value))


def _items(container, name: str) -> list:
    """The items of the sequence ``name`` in ``container`` ([] when absent or empty)."""
    if container is None or name not in container:
        return []
    value = container[name].value
    if not isinstance(value, pydicom.sequence.Sequence):
        raise ValueError(f"{name} is not a sequence (VR {container[name].VR})")
    return list(value)


def _first_in_groups(groups: Sequence, seq_name: str, attr: str):
    """``attr`` from the first group (per-frame, then shared) whose ``seq_name`` has it."""
    for g in groups:
        items = _items(g, seq_name)
        if not items:
            continue
        item = items[0]
        if attr in item and item[attr].value not in (None, ""):
            return item[attr].value
    return None


def _frames_from_functional_groups(ds, n_frames: int, path: Path, rows: int,
                                   cols: int) -> list[SliceHeader]:
    shared_items = _items(ds, "SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    if len(per_frame) != n_frames:
        raise ValueError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for "
                         f"NumberOfFrames {n_frames}")
    out = []
    for i, pf in enumerate(per_frame):
        groups = (pf, shared)
        try:
            ipp = _first_in_groups(groups, "PlanePositionSequence", "ImagePositionPatient")
            iop = _first_in_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _first_in_groups(groups, "PixelMeasuresSequence", "PixelSpacing")
            if ipp is None or iop is None or ps is None:
                raise ValueError("no ImagePositionPatient, ImageOrientationPatient or "
                                 "PixelSpacing in its functional groups")
            slope, intercept = _rescale(
                _first_in_groups(groups, "PixelValueTransformationSequence", "RescaleSlope"),
                _first_in_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept"))
            ftype = _first_in_groups(groups, "CTImageFrameTypeSequence", "FrameType")
            out.append(SliceHeader(
                path=path, frame=i, position=_position(ipp), orientation=_orientation(iop),
                rows=rows, cols=cols, pixel_spacing=_pixel_spacing(ps),
                image_type=_image_type(ftype if ftype is not None else _get(ds, "ImageType")),
                slope=slope, intercept=intercept, instance=i + 1))
        except ValueError as e:
            raise ValueError(f"frame {i + 1}: {e}") from None
    return out


def _frames_classic(ds, n_frames: int, path: Path, rows: int, cols: int) -> list[SliceHeader]:
    """Frames of a classic multi-frame image: one IPP (frame 0) plus offsets along the normal
    from GridFrameOffsetVector, else SpacingBetweenSlices, else SliceThickness."""
    ipp = _position(ds.ImagePositionPatient)
    iop = _orientation(ds.ImageOrientationPatient)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    offsets = _get(ds, "GridFrameOffsetVector")
    if offsets is not None and len(_values(offsets)) == n_frames:
        offs = _numbers(offsets, "GridFrameOffsetVector", n_frames)
    else:
        step = None
        for name in ("SpacingBetweenSlices", "SliceThickness"):
            step = _number(_get(ds, name), name, None)
            if step:
                break
        if not step:
            raise ValueError("a classic multi-frame image needs GridFrameOffsetVector, "
                             "SpacingBetweenSlices or SliceThickness to place its frames")
        offs = np.arange(n_frames) * step
    if np.abs(offs).max() > MAX_ABS_POSITION_MM:
        raise ValueError(f"frame offsets of up to {np.abs(offs).max():g} mm; expected at most "
                         f"{MAX_ABS_POSITION_MM:g} mm")
    ps = _pixel_spacing(ds.PixelSpacing)
    image_type = _image_type(_get(ds, "ImageType"))
    slope, intercept = _rescale(_get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept"))
    return [SliceHeader(path=path, frame=i, position=ipp + o * normal, orientation=iop,
                        rows=rows, cols=cols, pixel_spacing=ps, image_type=image_type,
                        slope=slope, intercept=intercept, instance=i + 1)
            for i, o in enumerate(offs)]


@dataclass(frozen=True)
class _Codestream:
    """What the start of one compressed fragment says about its frame (see
    :func:`_read_codestream`); ``None`` for a size that it does not give."""

    rows: int | None = None
    cols: int | None = None
    samples: int | None = None
    precision: int | None = None
    segments: tuple[int, ...] = ()  # RLE: the byte length of each segment
    problem: str = ""


@dataclass
class _PixelData:
    """Where and how the pixel data element of a file is stored (read from its header)."""

    length: int | None  # bytes of native pixel data; None when encapsulated
    fragments: int = 0  # encapsulated: fragments after the Basic Offset Table
    offsets: int = 0  # encapsulated: entries of the Basic Offset Table
    # encapsulated, a format whose frames say their size: the first fragments' codestreams
    codestreams: tuple[_Codestream, ...] = ()


def _check_pixel_data(ds, pixels: _PixelData | None, *, rows: int, cols: int,
                      n_frames: int) -> None:
    """The pixel data's size must match what the header claims (rule b)."""
    if pixels is None:  # deflated data set: pydicom checks when it decodes
        return
    if pixels.length is None:
        if pixels.fragments < n_frames:
            raise ValueError(f"NumberOfFrames is {n_frames} but the compressed pixel data holds "
                             f"{pixels.fragments} fragment(s); each frame needs at least one")
        if pixels.offsets and pixels.offsets != n_frames:
            raise ValueError(f"NumberOfFrames is {n_frames} but the Basic Offset Table of the "
                             f"compressed pixel data has {pixels.offsets} entries")
        _check_codestreams(ds, pixels, rows=rows, cols=cols, n_frames=n_frames)
        return
    bits, spp = _bits_and_samples(ds)
    n_bits = rows * cols * n_frames * spp * bits
    if str(_get(ds, "PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        n_bits = n_bits * 2 // 3  # two chroma samples shared by each pair of pixels
    expected = (n_bits + 7) // 8
    if pixels.length not in (expected, expected + 1):
        raise ValueError(
            f"the pixel data holds {pixels.length} bytes but Rows x Columns x NumberOfFrames x "
            f"SamplesPerPixel x BitsAllocated / 8 = {rows} x {cols} x {n_frames} x {spp} x "
            f"{bits} / 8 = {expected} bytes")


def _bits_and_samples(ds) -> tuple[int, int]:
    bits = _integer(_get(ds, "BitsAllocated"), "BitsAllocated", None, high=64)
    if bits is None:
        raise ValueError("an image without BitsAllocated")
    if bits != 1 and bits % 8:
        raise ValueError(f"BitsAllocated must be 1 or a multiple of 8; found {bits}")
    spp = _integer(_get(ds, "SamplesPerPixel"), "SamplesPerPixel", 1, high=4)
    return bits, spp


def _check_codestreams(ds, pixels: _PixelData, *, rows: int, cols: int, n_frames: int) -> None:
    """Compressed frames must be of the size the header claims (rule b), so that a few bytes
    claiming 16384 x 16384 pixels are refused before a decoder allocates them.

    JPEG, JPEG-LS and JPEG 2000 codestreams state their rows, columns and components; an RLE
    frame states its segments, and a segment of n bytes decodes to at most 64 (n + 1) bytes
    (PackBits: 2 bytes give at most 128).  With one fragment per frame, the first
    :data:`MAX_CHECKED_FRAMES` frames are checked; otherwise the first frame.
    """
    if not pixels.codestreams:
        return
    bits, spp = _bits_and_samples(ds)
    checked = pixels.codestreams if pixels.fragments == n_frames else pixels.codestreams[:1]
    for k, c in enumerate(checked):
        where = f"frame {k + 1} of the compressed pixel data" if n_frames > 1 else \
            "the compressed pixel data"
        if c.problem:
            raise ValueError(f"{where}: {c.problem}")
        if c.segments:  # RLE
            if bits not in (8, 16, 32, 64) or len(c.segments) != spp * bits // 8:
                raise ValueError(f"{where} has {len(c.segments)} RLE segment(s); SamplesPerPixel "
                                 f"{spp} x BitsAllocated {bits} / 8 needs {spp * bits // 8}")
            small = min(c.segments)
            if rows * cols > 64 * (small + 1):
                raise ValueError(f"{where} has an RLE segment of {small} bytes, which decodes to "
                                 f"at most {64 * (small + 1)} bytes, but Rows x Columns = "
                                 f"{rows} x {cols} needs {rows * cols}")
            continue
        if c.rows is not None and c.rows != 0 and (c.rows, c.cols) != (rows, cols):
            raise ValueError(f"{where} is an image of {c.rows} x {c.cols} pixels but Rows x "
                             f"Columns say {rows} x {cols}")
        if c.samples is not None and c.samples != spp:
            raise ValueError(f"{where} has {c.samples} component(s) but SamplesPerPixel is {spp}")
        if c.precision is not None and c.precision > bits:
            raise ValueError(f"{where} has {c.precision}-bit samples but BitsAllocated is {bits}")


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
    _uid(ds, "SOPInstanceUID")  # checked, not kept
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
    return DicomFileHeader(
        path=path, sop_class=str(_get(ds, "SOPClassUID", "")).strip(" \x00"),
        modality=_clean_text(_get(ds, "Modality"), "Modality", notes),
        patient_id=_clean_text(_get(ds, "PatientID"), "PatientID", notes),
        study_uid=study_uid, series_uid=series_uid,
        series_description=_clean_text(_get(ds, "SeriesDescription"), "SeriesDescription",
                                       notes),
        study_description=_clean_text(_get(ds, "StudyDescription"), "StudyDescription", notes),
        kernel=kernel, manufacturer=_clean_text(_get(ds, "Manufacturer"), "Manufacturer", notes),
        kvp=kvp, slice_thickness=thickness, n_frames=n_frames, transfer_syntax=ts,
        padding=padding, slices=slices, warnings=notes)


def _transfer_syntax(ds) -> str:
    """The TransferSyntaxUID of the file meta ("" when there is none)."""
    fm = getattr(ds, "file_meta", None)
    return str(fm.get("TransferSyntaxUID", "") or "").strip(" \x00") if fm is not None else ""


def _encoding_syntax(ds) -> str:
    """The uncompressed transfer syntax that a data set without file meta was read in."""
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _optional_positive(value, name: str, notes: list[str], consequence: str) -> float | None:
    """A positive number, or None (with a note when the value is there but is not one)."""
    if not _values(value):
        return None
    try:
        x = _number(value, name, None)
    except ValueError as e:
        notes.append(f"{e}; {consequence}")
        return None
    if x <= 0:
        notes.append(f"{name} {_shown(value)} is not positive; {consequence}")
        return None
    return x


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


_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR"}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0"


def _inspect_pixel_data(fh, ds) -> tuple[str, _PixelData | None]:
    """Why a file read with ``stop_before_pixels`` is incomplete ("" when it looks whole),
    and its pixel data element (None for a data set without one, or a deflated one).

    ``fh`` stands where pydicom stopped: at the PixelData element of an image.
    """
    fm = getattr(ds, "file_meta", None)
    media_class = str(fm.get("MediaStorageSOPClassUID", "")) if fm is not None else ""
    sop_class = str(ds.get("SOPClassUID", "") or media_class).strip(" \x00")
    if not sop_class:
        return "no SOPClassUID (the file ends inside its header, or is not a DICOM object)", None
    if sop_class == _DICOMDIR_CLASS:
        return "", None
    name = uid_name(sop_class)
    is_image = "Image Storage" in name
    if "Rows" not in ds:
        return (f"{name} without Rows/Columns (the file ends inside its header)" if is_image
                else ""), None
    if _transfer_syntax(ds) == _DEFLATED:
        return "", None  # fh is not where the (inflated) data set stopped
    start = fh.tell()
    head = fh.read(12)
    size = os.fstat(fh.fileno()).st_size
    if len(head) < 8:
        return f"no pixel data: the file ends after {start} bytes", None
    implicit, little = ds.original_encoding
    if little is None:
        little = head[:4] == b"\xe0\x7f\x10\x00"
    order = "little" if little else "big"
    if head[:4] != (b"\xe0\x7f\x10\x00" if little else b"\x7f\xe0\x00\x10"):
        return f"no pixel data element where the header ends (offset {start})", None
    if not implicit and head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return f"the pixel data element is cut at offset {start}", None
        length, data_start = int.from_bytes(head[8:12], order), start + 12
    elif not implicit:
        length, data_start = int.from_bytes(head[6:8], order), start + 8
    else:
        length, data_start = int.from_bytes(head[4:8], order), start + 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed)
        return _inspect_fragments(fh, data_start, size,
                                  _CODESTREAM_KINDS.get(_transfer_syntax(ds) or ""))
    if data_start + length > size:
        return (f"pixel data of {length} bytes declared, {size - data_start} bytes present "
                f"({size} bytes in the file)"), None
    return "", _PixelData(length=length)


def _inspect_fragments(fh, pos: int, size: int,
                       kind: str | None = None) -> tuple[str, _PixelData | None]:
    """Walk the items of encapsulated pixel data from ``pos``: the Basic Offset Table, then
    the fragments, then the sequence delimiter (item headers only; nothing is decoded).  For a
    format whose frames say their size (``kind``), read the start of the first
    :data:`MAX_CHECKED_FRAMES` fragments (:func:`_read_codestream`)."""
    n_items = n_offsets = 0
    codestreams: list[_Codestream] = []
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return "compressed pixel data without its end (sequence delimiter missing)", None
        tag, length = head[:4], int.from_bytes(head[4:8], "little")
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM:
            return (f"compressed pixel data: tag {tag.hex()} at offset {pos} where an item "
                    f"or the sequence delimiter belongs"), None
        if length == 0xFFFFFFFF or pos + 8 + length > size:
            return (f"compressed pixel data cut: an item of {length} bytes at offset {pos}, "
                    f"{size} bytes in the file"), None
        if n_items == 0:
            n_offsets = length // 4
        elif kind is not None and len(codestreams) < MAX_CHECKED_FRAMES:
            codestreams.append(_read_codestream(fh, pos + 8, length, kind))
        n_items += 1
        pos += 8 + length
    if n_items == 0:
        return "compressed pixel data without a Basic Offset Table item", None
    return "", _PixelData(length=None, fragments=n_items - 1, offsets=n_offsets,
                          codestreams=tuple(codestreams))


#: The compressed transfer syntaxes whose frames say their size, and how.
_CODESTREAM_KINDS = {
    "1.2.840.10008.1.2.5": "rle",
    **{f"1.2.840.10008.1.2.4.{n}": "jpeg" for n in (50, 51, 57, 70, 80, 81)},
    **{f"1.2.840.10008.1.2.4.{n}": "j2k" for n in (90, 91, 92, 93, 201, 202, 203)},
}
#: Compressed frames whose size is checked before decoding (each costs a few small reads).
MAX_CHECKED_FRAMES = 4096
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
             0xF7}  # SOF0-15 without DHT/JPG/DAC, and JPEG-LS SOF55
_JPEG_NO_LENGTH = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def _read_codestream(fh, pos: int, length: int, kind: str) -> _Codestream:
    """The sizes that the compressed frame starting at ``pos`` (``length`` bytes of fragment)
    states: an RLE header's segments, a JPEG/JPEG-LS frame header, a JPEG 2000 SIZ marker."""
    fh.seek(pos)
    if kind == "rle":
        head = fh.read(64)
        if len(head) < 64 or length < 64:
            return _Codestream(problem=f"an RLE fragment of {length} bytes, shorter than its "
                               f"64-byte header")
        n, *offsets = np.frombuffer(head, dtype="<u4").tolist()
        if not 1 <= n <= 15:
            return _Codestream(problem=f"an RLE header with {n} segments; expected 1 to 15")
        ends = offsets[:n] + [length]
        if offsets[0] != 64 or any(b <= a for a, b in zip(ends, ends[1:])):
            return _Codestream(problem=f"RLE segment offsets {offsets[:n]} are not increasing "
                               f"from 64 within the {length}-byte fragment")
        return _Codestream(segments=tuple(b - a for a, b in zip(ends, ends[1:])))
    if kind == "j2k":
        head = fh.read(min(length, 4096))
        if head[4:8] == b"jP  ":  # a JP2 file: the codestream is in its jp2c box
            at = head.find(b"jp2c")
            head = head[at + 4:] if at >= 0 else b""
        if head[:4] != b"\xff\x4f\xff\x51" or len(head) < 41:
            return _Codestream(problem="not a JPEG 2000 codestream (no SOC and SIZ markers at "
                               "its start)")
        x, y, x0, y0, tw, th, tx0, ty0 = np.frombuffer(head[8:40], dtype=">u4").tolist()
        comps = int.from_bytes(head[40:42], "big")
        if not (x0 < x and y0 < y and tw and th and tx0 <= x0 and ty0 <= y0
                and tx0 + tw > x0 and ty0 + th > y0 and 1 <= comps <= 16384):
            return _Codestream(problem=f"a JPEG 2000 SIZ marker that is not consistent (image "
                               f"{x0}..{x} x {y0}..{y}, tiles {tw} x {th} from {tx0}, {ty0}, "
                               f"{comps} components)")
        ssiz = head[42] if len(head) > 42 else 0
        return _Codestream(rows=y - y0, cols=x - x0, samples=comps, precision=(ssiz & 0x7F) + 1)
    # JPEG and JPEG-LS: the markers up to the frame header
    end = pos + length
    head = fh.read(2)
    if head != b"\xff\xd8":
        return _Codestream(problem="not a JPEG codestream (no SOI marker at its start)")
    p = pos + 2
    for _ in range(256):
        fh.seek(p)
        seg = fh.read(10)
        while seg[:2] == b"\xff\xff":  # fill bytes
            p += 1
            seg = seg[1:] + fh.read(1)
        if len(seg) < 4 or seg[0] != 0xFF or p + 4 > end:
            break
        marker = seg[1]
        if marker in _JPEG_NO_LENGTH:
            p += 2
            continue
        if marker in _JPEG_SOF:
            if len(seg) < 10:
                break
            return _Codestream(rows=int.from_bytes(seg[5:7], "big"),
                               cols=int.from_bytes(seg[7:9], "big"), samples=seg[9],
                               precision=seg[4])
        if marker == 0xDA:  # start of scan before any frame header
            break
        p += 2 + int.from_bytes(seg[2:4], "big")
    return _Codestream(problem="a JPEG codestream without a frame header (SOF) before its data")


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # let dcmread raise the OSError
    return head[128:132] == b"DICM"


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return (a[:3] @ b[:3] > math.cos(math.radians(MAX_ANGLE_DEG))
            and a[3:] @ b[3:] > math.cos(math.radians(MAX_ANGLE_DEG)))


def plan_stack(slices: Sequence[SliceHeader], *, source: str | os.PathLike) -> StackPlan:
    """Check and order the slices of one series (rules 1-5 of the module docstring).

    Parameters
    ----------
    slices : the SliceHeaders of every image of the series
    source : the folder or file named in errors

    Raises
    ------
    InputError
        Fewer than two slices, mixed image sizes, a PixelSpacing that is not positive or not
        the same for all slices, gantry tilt or a non-axial series, missing slices, a slice
        spacing that is not a positive finite number.
    """
    dropped: list[dict[str, str]] = []
    imgs = []
    for s in slices:
        if s.is_localizer():
            dropped.append({"image": s.label, "reason": "localizer (ImageType "
                            + "\\".join(s.image_type) + ")"})
        else:
            imgs.append(s)
    if imgs:
        # The majority orientation; images with another one are localizers or reformats.
        counts: list[tuple[np.ndarray, int]] = []
        for s in imgs:
            for i, (o, n) in enumerate(counts):
                if _same_orientation(o, s.orientation):
                    counts[i] = (o, n + 1)
                    break
            else:
                counts.append((s.orientation, 1))
        major = max(counts, key=lambda t: t[1])[0]
        kept = []
        for s in imgs:
            if _same_orientation(major, s.orientation):
                kept.append(s)
            else:
                dropped.append({"image": s.label, "reason": "localizer (orientation "
                                + ",".join(f"{v:g}" for v in s.orientation) + ")"})
        imgs = kept
    if len(imgs) < 2:
        what = "no image" if not imgs else "one slice"
        raise InputError(source, f"{what} to build a volume from (found {len(slices)} image(s), "
                         f"{len(dropped)} localizer(s)); a CT series needs at least 2 axial slices")
    sizes = sorted({(s.rows, s.cols) for s in imgs})
    if len(sizes) > 1:
        raise InputError(source, f"mixed image sizes in one series (Rows x Columns: "
                         f"{', '.join(f'{r}x{c}' for r, c in sizes)}); expected one size")
    for s in imgs:  # read_header checks these; SliceHeaders made elsewhere may not be checked
        if not (np.isfinite(s.position).all() and np.abs(s.position).max() <= MAX_ABS_POSITION_MM):
            raise InputError(s.path, f"ImagePositionPatient must be finite and within "
                             f"{MAX_ABS_POSITION_MM:g} mm of the origin; found "
                             f"{', '.join(f'{v:g}' for v in s.position)}")
    pss = np.array([s.pixel_spacing for s in imgs], dtype=float)
    if not (np.isfinite(pss).all() and (pss > 0).all()):
        bad = next(s for s in imgs if not (np.isfinite(s.pixel_spacing).all()
                                           and min(s.pixel_spacing) > 0))
        raise InputError(bad.path, f"PixelSpacing must be positive finite mm; found "
                         f"{bad.pixel_spacing[0]:g}\\{bad.pixel_spacing[1]:g}")
    if np.ptp(pss, axis=0).max() > 1e-3 * pss.max():
        raise InputError(source, f"mixed PixelSpacing in one series "
                         f"({sorted({tuple(p) for p in pss.tolist()})}); expected one spacing")
    row_dir = np.asarray(major[:3], dtype=float)
    col_dir = np.asarray(major[3:], dtype=float)
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    if abs(row_dir @ col_dir) > 1e-3:
        raise InputError(source, f"ImageOrientationPatient rows and columns are not orthogonal "
                         f"({major.tolist()})")
    normal = np.cross(row_dir, col_dir)
    tilt = math.degrees(math.acos(min(1.0, abs(normal[2]))))
    if tilt > MAX_ANGLE_DEG:
        raise InputError(source, f"not an axial series: the slice normal "
                         f"({normal[0]:.3f}, {normal[1]:.3f}, {normal[2]:.3f}) is {tilt:.1f} "
                         f"degrees from the patient z axis (gantry tilt or a coronal/sagittal "
                         f"series); expected axial slices within {MAX_ANGLE_DEG:g} degree")
    pos = np.array([s.position @ normal for s in imgs])
    order = np.lexsort((np.array([s.instance if s.instance is not None else 0 for s in imgs]),
                        pos))
    imgs = [imgs[i] for i in order]
    pos = pos[order]
    keep = [0]
    for i in range(1, len(imgs)):
        if pos[i] - pos[keep[-1]] < DUPLICATE_TOL_MM:
            dropped.append({"image": imgs[i].label,
                            "reason": f"duplicate position {pos[i]:.3f} mm (same as "
                                      f"{imgs[keep[-1]].label})"})
        else:
            keep.append(i)
    imgs = [imgs[i] for i in keep]
    pos = pos[keep]
    if len(imgs) < 2:
        raise InputError(source, f"one slice position only ({pos[0]:.2f} mm; the other "
                         f"{len(dropped)} image(s) were duplicates or localizers); a CT series "
                         f"needs at least 2 slices")
    # Gantry tilt stored as a shear: positions that drift in-plane as z advances.
    d = imgs[-1].position - imgs[0].position
    along = float(d @ normal)
    drift = float(np.linalg.norm(d - along * normal))
    if drift > math.tan(math.radians(MAX_ANGLE_DEG)) * abs(along) + 0.1:
        raise InputError(source, f"gantry tilt: slice positions drift {drift:.1f} mm in-plane "
                         f"over {abs(along):.1f} mm along the slice normal "
                         f"({math.degrees(math.atan2(drift, abs(along))):.1f} degrees); "
                         f"expected slices stacked along the normal")
    gaps = np.diff(pos)
    median = float(np.median(gaps))
    if not (np.isfinite(gaps).all() and median > 0):
        raise InputError(source, f"the slice spacing from ImagePositionPatient is not a positive "
                         f"finite number (median gap {median:g} mm)")
    worst = int(np.argmax(gaps))
    if gaps[worst] > MAX_GAP_RATIO * median:
        raise InputError(source, f"missing slices: a gap of {gaps[worst]:.2f} mm between the "
                         f"slices at {pos[worst]:.2f} and {pos[worst + 1]:.2f} mm along the slice "
                         f"normal, {gaps[worst] / median:.1f} x the median spacing {median:.2f} mm")
    resample = bool(np.max(np.abs(gaps - median)) > IRREGULAR_GAP * median)
    n_out = (int(math.floor((pos[-1] - pos[0]) / median + 1e-6)) + 1) if resample else len(imgs)
    if n_out * imgs[0].rows * imgs[0].cols > MAX_SERIES_VOXELS:
        raise InputError(source, f"a volume of {n_out} x {imgs[0].rows} x {imgs[0].cols} voxels, "
                         f"more than lungcad reads ({MAX_SERIES_VOXELS} voxels)")
    direction = np.column_stack([row_dir, col_dir, normal])
    origin = tuple(float(v) for v in imgs[0].position)
    spacing = (median, float(pss[0][0]), float(pss[0][1]))
    return StackPlan(slices=imgs, positions=pos, spacing=spacing, origin=origin,
                     direction=direction, dropped=dropped, resample=resample)


# ---------------------------------------------------------------------------- pixel data

def _decode_file(path: Path) -> np.ndarray:
    """The stored pixel values of one file: (rows, cols) or (frames, rows, cols)."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(_Bounded(fh), force=not _has_preamble(path))
        if not _transfer_syntax(ds):  # a data set without file meta: as it was encoded
            ds.file_meta.TransferSyntaxUID = _encoding_syntax(ds)
        return ds.pixel_array


_INT16 = np.iinfo(np.int16)


def _to_hu(raw: np.ndarray, *, slope: float, intercept: float,
           padding: tuple[float, float] | None, where: str | os.PathLike = ""
           ) -> tuple[np.ndarray, int, int]:
    """int16 HU of one image, the number of padding pixels and of all pixels set to air.

    Raises InputError (naming ``where``) when the HU of a pixel that is not padding lie
    outside int16: a RescaleSlope or RescaleIntercept that cannot be right.
    """
    if (float(slope).is_integer() and float(intercept).is_integer() and 1 <= slope <= 64
            and abs(intercept) <= 2 ** 20 and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2):
        hu = raw.astype(np.int32)  # exact and fast (no overflow): the usual slope 1
        if slope != 1:
            hu *= int(slope)
        hu += int(intercept)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below
            hu = np.rint(raw.astype(np.float64) * slope + intercept)
    pad = None
    n_pad = 0
    if padding is not None:
        pad = (raw >= padding[0]) & (raw <= padding[1])
        n_pad = int(pad.sum())
    image = hu if not n_pad else hu[~pad]
    if image.size:
        lo, hi = image.min(), image.max()
        if not (lo >= _INT16.min and hi <= _INT16.max):  # also false for NaN
            raise InputError(where, f"HU from {float(lo):.6g} to {float(hi):.6g} (stored values "
                             f"x RescaleSlope {slope:g} + RescaleIntercept {intercept:g}), "
                             f"beyond the int16 range {_INT16.min}..{_INT16.max}: the rescale "
                             f"cannot be right")
    low = hu < HU_AIR
    if n_pad:
        low |= pad
    hu[low] = HU_AIR
    return hu.astype(np.int16), n_pad, int(low.sum())


def _is_compressed(ts: str) -> bool:
    if not ts:
        return False
    entry = pydicom.uid.UID_dictionary.get(ts)
    if entry is None or entry[1] != "Transfer Syntax":  # a private transfer syntax: let GDCM try
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the UID was checked by read_header
        return bool(pydicom.uid.UID(ts).is_compressed)


def _read_pydicom(plan: StackPlan, headers: dict[Path, DicomFileHeader],
                  notes: list[str] | None = None) -> tuple[np.ndarray, int, int]:
    """Decode the planned slices with pydicom, each file once.

    Single-frame files are decoded on a small thread pool, in slice order, and each is turned
    into HU as soon as it arrives, so that only a few raw slices are held at a time.
    pydicom's warnings while decoding are appended to ``notes`` (never printed).
    """
    decode = _guarded(lambda p: _decode_file(p))  # looked up at call time (tests patch it)
    # The filters are process-wide, so this also catches the warnings of the pool's threads.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if plan.slices[0].frame is not None:  # one multi-frame file
                path = plan.slices[0].path
                frames = decode(path)
                n = headers[path].n_frames
                if frames.ndim != 3 or len(frames) != n:
                    raise InputError(path, f"pixel data of shape {frames.shape}; the header says "
                                     f"{n} frames of {plan.slices[0].rows}x{plan.slices[0].cols}")
                return _assemble(plan, headers, lambda s, _raw: frames[s.frame])
            paths = [s.path for s in plan.slices]
            with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(paths)))) as pool:
                return _assemble(plan, headers, lambda s, raw: raw, raws=pool.map(decode, paths))
        finally:
            if notes is not None:
                notes.extend(f"pydicom, decoding the pixel data: {w}"
                             for w in _library_warnings(caught))


class _DecodeFailure(Exception):
    """A file whose pixel data pydicom could not decode."""

    def __init__(self, path: Path, cause: Exception):
        # decoders' messages run over several lines (pydicom lists each plugin's failure)
        super().__init__(f"{type(cause).__name__}: {_shown(' '.join(str(cause).split()), 400)}")
        self.path = path
        self.cause = cause


def _guarded(fn: Callable[[Path], np.ndarray]) -> Callable[[Path], np.ndarray]:
    def run(p: Path) -> np.ndarray:
        try:
            return fn(p)
        except MemoryError as e:
            raise InputError(p, f"not enough memory to decode the pixel data "
                             f"({p.stat().st_size} bytes in the file)") from e
        except Exception as e:  # any decoder failure: re-raised below with the file named
            raise _DecodeFailure(p, e) from e
    return run


def _assemble(plan: StackPlan, headers: dict[Path, DicomFileHeader],
              get: Callable[[SliceHeader, Any], np.ndarray], raws=None
              ) -> tuple[np.ndarray, int, int]:
    """HU volume of the planned slices; ``get(slice, raws[k])`` gives a slice's raw pixels."""
    s0 = plan.slices[0]
    out = np.empty((len(plan.slices), s0.rows, s0.cols), dtype=np.int16)
    n_pad = n_low = 0
    items = raws if raws is not None else [None] * len(plan.slices)
    for k, (s, item) in enumerate(zip(plan.slices, items)):
        raw = np.asarray(get(s, item))
        if raw.shape != (s.rows, s.cols):
            raise InputError(s.path, f"pixel data of shape {raw.shape}; the header says "
                             f"{s.rows}x{s.cols}")
        out[k], p, low = _to_hu(raw, slope=s.slope, intercept=s.intercept,
                                padding=headers[s.path].padding, where=s.path)
        n_pad += p
        n_low += low
    return out, n_pad, n_low


def _read_simpleitk(plan: StackPlan, headers: dict[Path, DicomFileHeader]
                    ) -> tuple[np.ndarray, int, int]:
    """Decode with SimpleITK (GDCM), in the planned order; GDCM applies the rescale."""
    import SimpleITK as sitk

    files = list(dict.fromkeys(s.path for s in plan.slices))
    display = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's warnings would go to stderr raw
    try:
        if plan.slices[0].frame is None:
            # GDCM only: left to probe, the other ImageIOs read a corrupt DICOM file as their own
            # format and allocate what it seems to claim (1.2 GB for a 4 KB fuzzed RLE file)
            reader = sitk.ImageSeriesReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileNames([str(p) for p in files])
            arr = sitk.GetArrayFromImage(reader.Execute())
            if arr.ndim != 3 or len(arr) != len(files):
                raise InputError(files[0].parent, f"SimpleITK/GDCM read {arr.shape} voxels from "
                                 f"{len(files)} files; expected one slice per file")
            by_file = {p: arr[i] for i, p in enumerate(files)}
            get = lambda s: by_file[s.path]  # noqa: E731
        else:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(files[0]), imageIO="GDCMImageIO"))
            n = headers[files[0]].n_frames
            if arr.ndim != 3 or len(arr) != n:
                raise InputError(files[0], f"SimpleITK/GDCM read {arr.shape} voxels; the header "
                                 f"says {n} frames")
            get = lambda s: arr[s.frame]  # noqa: E731
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(files[0].parent, f"SimpleITK/GDCM cannot read the pixel data "
                         f"either ({last})") from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(display)
    s0 = plan.slices[0]
    out = np.empty((len(plan.slices), s0.rows, s0.cols), dtype=np.int16)
    n_pad = n_low = 0
    for k, s in enumerate(plan.slices):
        hu = np.asarray(get(s), dtype=np.float64)
        pad_hu = headers[s.path].padding
        # GDCM returns rescaled values: find padding in HU.
        padding = None if pad_hu is None else tuple(
            sorted(v * s.slope + s.intercept for v in pad_hu))
        if hu.shape != (s.rows, s.cols):
            raise InputError(s.path, f"pixel data of shape {hu.shape} from SimpleITK; the "
                             f"header says {s.rows}x{s.cols}")
        out[k], p, low = _to_hu(hu, slope=1.0, intercept=0.0, padding=padding, where=s.path)
        n_pad += p
        n_low += low
    return out, n_pad, n_low


def _resample_z(vol: np.ndarray, positions: np.ndarray, spacing: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of slices at ``positions`` onto a uniform grid from the first."""
    n = int(math.floor((positions[-1] - positions[0]) / spacing + 1e-6)) + 1
    grid = positions[0] + spacing * np.arange(n)
    out = np.empty((n,) + vol.shape[1:], dtype=np.int16)
    hi = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lo = hi - 1
    for k in range(n):
        a, b = lo[k], hi[k]
        t = (grid[k] - positions[a]) / (positions[b] - positions[a])
        t = min(max(t, 0.0), 1.0)
        if t < 1e-9:
            out[k] = vol[a]
        elif t > 1 - 1e-9:
            out[k] = vol[b]
        else:
            out[k] = np.rint((1 - t) * vol[a].astype(np.float32)
                             + t * vol[b].astype(np.float32)).astype(np.int16)
    return out, grid


_C_OUTPUT_LOCK = threading.Lock()
#: The most lines of C library output kept as warnings of one series.
_C_OUTPUT_LINES = 5


@contextlib.contextmanager
def _c_library_output(into: list[str]):
    """Collect what C libraries write to file descriptor 2 inside the block (GDCM and the
    OpenJPEG inside it print decoding errors there, whatever SimpleITK's warning display
    says) into ``into``, one escaped line each (duplicates dropped, at most
    :data:`_C_OUTPUT_LINES`), instead of letting it reach the user's terminal raw.

    File descriptors are shared by the whole process: what another thread writes to stderr
    meanwhile lands in ``into`` too (it is not lost).  One block runs at a time.
    """
    with _C_OUTPUT_LOCK:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to protect
            yield into
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield into
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read(1 << 16).decode("utf-8", "replace")
                lines = [_escape_controls(" ".join(ln.split())) for ln in text.splitlines()]
                for line in dict.fromkeys(ln for ln in lines if ln):
                    if len(into) < _C_OUTPUT_LINES:
                        into.append(line[:300])


def check_geometry_present(headers: Sequence[DicomFileHeader]) -> None:
    """Images that cannot be placed in the patient frame make the series unusable."""
    for h in headers:
        if h.has_image and not h.slices:
            raise InputError(h.path, "an image without ImagePositionPatient, "
                             "ImageOrientationPatient or PixelSpacing: it cannot be placed in "
                             "the patient (a secondary capture or screenshot?)")


def series_warnings(headers: Sequence[DicomFileHeader]) -> list[str]:
    """The warnings of a series' files, one line each: ``"<file>: <warning>"`` when one file
    has it, ``"<warning> (<n> files, the first <file>)"`` when several have."""
    by_text: dict[str, list[Path]] = {}
    for h in headers:
        for w in h.warnings:
            by_text.setdefault(w, []).append(h.path)
    return [f"{paths[0]}: {w}" if len(paths) == 1 else f"{w} ({len(paths)} files, the first "
            f"{min(paths)})" for w, paths in by_text.items()]


def _new_decode_notes(headers: Sequence[DicomFileHeader], notes: list[str]) -> list[str]:
    """The decoding warnings that the headers did not already give."""
    seen = {w for h in headers for w in h.warnings}
    return [n for n in dict.fromkeys(notes) if n.split(": ", 1)[-1] not in seen]


def load_dicom_stack(headers: Sequence[DicomFileHeader], *, source: str | os.PathLike,
                     patient_id: str | None = None) -> CTVolume:
    """Build a CTVolume from the headers of one series (single-frame files or one
    multi-frame file), reading each file's pixel data once.

    Raises
    ------
    InputError
        Not CT, a geometry rule broken (see :func:`plan_stack`), or pixel data that neither
        pydicom nor SimpleITK can decode (the message names the file).
    """
    if not headers:
        raise InputError(source, "no DICOM files in this series")
    modalities = sorted({h.modality or "(none)" for h in headers})
    if modalities != ["CT"]:
        raise InputError(source, f"not a CT series: Modality is {', '.join(modalities)}; "
                         f"lungcad reads CT only")
    by_path = {h.path: h for h in headers}
    check_geometry_present(headers)
    slices = [s for h in headers for s in h.slices]
    plan = plan_stack(slices, source=source)
    reader = "pydicom"
    decode_notes: list[str] = []
    printed: list[str] = []
    compressed = any(_is_compressed(h.transfer_syntax) for h in headers)
    failure: _DecodeFailure | None = None
    fallback: InputError | None = None
    # the list ``printed`` is filled when the block ends, so errors are raised after it
    with _c_library_output(printed) if compressed else contextlib.nullcontext():
        try:
            vol, n_pad, n_low = _read_pydicom(plan, by_path, decode_notes)
        except _DecodeFailure as e:
            failure = e
        # GDCM is tried for a compressed file that pydicom's decoders failed on, not for one
        # that lacks an element the pixels need (a header problem GDCM cannot mend; GDCM's
        # own parser allocated 1.2 GB for such a 4 KB fuzzed RLE file)
        if (failure is not None and _is_compressed(by_path[failure.path].transfer_syntax)
                and not isinstance(failure.cause, (AttributeError, KeyError))):
            try:
                vol, n_pad, n_low = _read_simpleitk(plan, by_path)
                reader = "simpleitk"
            except InputError as e2:
                fallback = e2
    if failure is not None and reader == "pydicom":
        e, ts = failure, by_path[failure.path].transfer_syntax
        if fallback is None:
            raise InputError(e.path, f"corrupt pixel data ({e})") from e.cause
        said = f"; the decoder printed: {printed[-1]}" if printed else ""
        raise InputError(e.path, f"cannot decode the compressed pixel data ({ts}): pydicom "
                         f"says {e}; {fallback.problem}{said}") from e.cause
    decode_notes.extend(f"pixel decoder: {line}" for line in printed)
    positions = plan.positions
    meta_z: dict[str, Any] = {"resampled_z": False}
    if plan.resample:
        vol, _ = _resample_z(vol, positions, plan.spacing[0])  # the grid starts at the origin
        meta_z = {"resampled_z": True, "original_positions_mm": [round(float(p), 4)
                                                                 for p in positions]}
    first = headers[0]
    meta = {
        "reader": reader,
        "format": "dicom-multiframe" if first.multiframe else "dicom",
        "n_files": len(headers),
        "modality": "CT",
        "series_description": first.series_description,
        "study_description": first.study_description,
        "study_uid": first.study_uid,
        "kernel": first.kernel,
        "slice_thickness": first.slice_thickness,
        "manufacturer": first.manufacturer,
        "kvp": first.kvp,
        "transfer_syntax": first.transfer_syntax,
        "source_path": str(source),
        "dropped": plan.dropped,
        "clipped_voxels": int(n_low),
        "padding_voxels": int(n_pad),
        **meta_z,
        "warnings": series_warnings(headers) + _new_decode_notes(headers, decode_notes),
    }
    pid = patient_id if patient_id is not None else first.patient_id
    return CTVolume(hu=vol, spacing=plan.spacing, origin=plan.origin, direction=plan.direction,
                    patient_id=pid, series_uid=first.series_uid, meta=meta)
