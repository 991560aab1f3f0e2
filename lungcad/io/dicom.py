"""DICOM reading: headers, slice geometry, and a CT series (or multi-frame file) to a CTVolume.

The rules for turning a set of slices into a volume (see :func:`plan_stack`):

1. Localizer and scout images are dropped: ImageType contains LOCALIZER or SCOUT, or the
   ImageOrientationPatient differs (by more than 1 degree) from the majority of the slices.
2. All remaining slices must have the same Rows and Columns, else :class:`InputError`.
3. The slice normal is cross(row direction, column direction).  It must lie within 1 degree of
   the patient z axis (an axial series; flipped or rotated rows and columns are fine), and the
   slice positions must advance along the normal (no gantry-tilt shear); else :class:`InputError`.
4. Slices are sorted by ImagePositionPatient . normal, never by file name or InstanceNumber.
   Slices at the same position are duplicates: the one with the lowest InstanceNumber is
   kept and the others dropped.
5. The slice spacing is the median gap.  A gap above 3 x the median means missing slices
   (:class:`InputError`).  Gaps that differ from the median by more than 1 % are resampled by
   linear interpolation onto a uniform grid of the median spacing (``meta["resampled_z"]``).
6. HU = stored x RescaleSlope + RescaleIntercept.  Pixels equal to PixelPaddingValue (or inside
   the padding range) and every HU below -1024 become -1024 (``meta["clipped_voxels"]``).
"""
from __future__ import annotations

import math
import os
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
           "plan_stack", "load_dicom_stack", "check_geometry_present", "HU_AIR", "HEADER_TAGS"]

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

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesDescription", "StudyDescription", "SeriesNumber", "ImageType",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "PixelRepresentation", "BitsAllocated", "ConvolutionKernel", "Manufacturer", "KVP",
    "GridFrameOffsetVector", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")


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
    """What one DICOM file says about its series, read without the pixel data."""

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
    group 0002/0008 tag (a DICOM data set written without preamble)."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[2:4] in (
        b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00", b"\x12\x00")


def _get(ds, name: str, default=None):
    el = ds.get(name, default)
    return default if el is None or el == "" else el


def _float(value, default: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else default
    return None if value is None else float(value)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _first_in_groups(groups: Sequence, seq_name: str, attr: str):
    """``attr`` from the first group (per-frame, then shared) whose ``seq_name`` has it."""
    for g in groups:
        if g is None or seq_name not in g or not g[seq_name].value:
            continue
        item = g[seq_name].value[0]
        if attr in item and item[attr].value not in (None, ""):
            return item[attr].value
    return None


def _frames_from_functional_groups(ds, path: Path, n_frames: int) -> list[SliceHeader]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
        and ds.SharedFunctionalGroupsSequence else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n_frames:
        raise ValueError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for "
                         f"NumberOfFrames {n_frames}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    out = []
    for i, pf in enumerate(per_frame):
        groups = (pf, shared)
        ipp = _first_in_groups(groups, "PlanePositionSequence", "ImagePositionPatient")
        iop = _first_in_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _first_in_groups(groups, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise ValueError(f"frame {i + 1} has no ImagePositionPatient, "
                             f"ImageOrientationPatient or PixelSpacing in its functional groups")
        slope = _float(_first_in_groups(groups, "PixelValueTransformationSequence",
                                        "RescaleSlope"), 1.0)
        intercept = _float(_first_in_groups(groups, "PixelValueTransformationSequence",
                                            "RescaleIntercept"), 0.0)
        ftype = _first_in_groups(groups, "CTImageFrameTypeSequence", "FrameType")
        image_type = tuple(str(t).upper() for t in (ftype or _get(ds, "ImageType", []) or []))
        out.append(SliceHeader(path=path, frame=i, position=np.array([float(v) for v in ipp]),
                               orientation=np.array([float(v) for v in iop]), rows=rows,
                               cols=cols, pixel_spacing=(float(ps[0]), float(ps[1])),
                               image_type=image_type, slope=slope, intercept=intercept,
                               instance=i + 1))
    return out


def _frames_classic(ds, path: Path, n_frames: int) -> list[SliceHeader]:
    """Frames of a classic multi-frame image: one IPP (frame 0) plus offsets along the normal
    from GridFrameOffsetVector, else SpacingBetweenSlices, else SliceThickness."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    offsets = _get(ds, "GridFrameOffsetVector")
    if offsets is not None and len(offsets) == n_frames:
        offs = np.array([float(v) for v in offsets])
    else:
        step = _float(_get(ds, "SpacingBetweenSlices")) or _float(_get(ds, "SliceThickness"))
        if not step:
            raise ValueError("a classic multi-frame image needs GridFrameOffsetVector, "
                             "SpacingBetweenSlices or SliceThickness to place its frames")
        offs = np.arange(n_frames) * step
    ps = ds.PixelSpacing
    image_type = tuple(str(t).upper() for t in (_get(ds, "ImageType", []) or []))
    return [SliceHeader(path=path, frame=i, position=ipp + o * normal, orientation=iop,
                        rows=int(ds.Rows), cols=int(ds.Columns),
                        pixel_spacing=(float(ps[0]), float(ps[1])), image_type=image_type,
                        slope=_float(_get(ds, "RescaleSlope"), 1.0),
                        intercept=_float(_get(ds, "RescaleIntercept"), 0.0), instance=i + 1)
            for i, o in enumerate(offs)]


def _header_from_dataset(ds, path: Path) -> DicomFileHeader:
    if "Rows" not in ds or "Columns" not in ds:
        # Not an image (DICOMDIR, structured report, RT structure set, presentation state...).
        fm = getattr(ds, "file_meta", None)
        return DicomFileHeader(
            path=path, sop_class=str(_get(ds, "SOPClassUID", "")),
            modality=_text(_get(ds, "Modality")), patient_id=_text(_get(ds, "PatientID")),
            study_uid=_text(_get(ds, "StudyInstanceUID")),
            series_uid=_text(_get(ds, "SeriesInstanceUID")),
            series_description=_text(_get(ds, "SeriesDescription")), study_description="",
            kernel="", manufacturer="", kvp=None, slice_thickness=None, n_frames=0,
            transfer_syntax=str(fm.get("TransferSyntaxUID", "")) if fm is not None else "",
            padding=None, slices=[])
    n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    pad = _get(ds, "PixelPaddingValue")
    padding = None
    if pad is not None:
        limit = _get(ds, "PixelPaddingRangeLimit", pad)
        padding = (float(min(pad, limit)), float(max(pad, limit)))
    kernel = _text(_get(ds, "ConvolutionKernel"))
    thickness = _float(_get(ds, "SliceThickness"))
    if "PerFrameFunctionalGroupsSequence" in ds:
        slices = _frames_from_functional_groups(ds, path, n_frames)
        groups = [ds.SharedFunctionalGroupsSequence[0]] if "SharedFunctionalGroupsSequence" in ds \
            and ds.SharedFunctionalGroupsSequence else []
        groups = [ds.PerFrameFunctionalGroupsSequence[0]] + groups
        kernel = kernel or _text(_first_in_groups(groups, "CTReconstructionSequence",
                                                  "ConvolutionKernel"))
        thickness = thickness or _float(_first_in_groups(groups, "PixelMeasuresSequence",
                                                         "SliceThickness"))
    elif "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds \
            or "PixelSpacing" not in ds:
        # No patient geometry (e.g. a secondary capture): list it, but it cannot be stacked.
        slices = []
    elif n_frames > 1:
        slices = _frames_classic(ds, path, n_frames)
    else:
        ps = ds.PixelSpacing
        image_type = tuple(str(t).upper() for t in (_get(ds, "ImageType", []) or []))
        inst = _get(ds, "InstanceNumber")
        slices = [SliceHeader(path=path, frame=None,
                              position=np.array([float(v) for v in ds.ImagePositionPatient]),
                              orientation=np.array([float(v) for v in ds.ImageOrientationPatient]),
                              rows=int(ds.Rows), cols=int(ds.Columns),
                              pixel_spacing=(float(ps[0]), float(ps[1])), image_type=image_type,
                              slope=_float(_get(ds, "RescaleSlope"), 1.0),
                              intercept=_float(_get(ds, "RescaleIntercept"), 0.0),
                              instance=None if inst is None else int(inst))]
    fm = getattr(ds, "file_meta", None)
    ts = str(fm.get("TransferSyntaxUID", "")) if fm is not None else ""
    return DicomFileHeader(
        path=path, sop_class=str(_get(ds, "SOPClassUID", "")), modality=_text(_get(ds, "Modality")),
        patient_id=_text(_get(ds, "PatientID")), study_uid=_text(_get(ds, "StudyInstanceUID")),
        series_uid=_text(_get(ds, "SeriesInstanceUID")),
        series_description=_text(_get(ds, "SeriesDescription")),
        study_description=_text(_get(ds, "StudyDescription")), kernel=kernel,
        manufacturer=_text(_get(ds, "Manufacturer")), kvp=_float(_get(ds, "KVP")),
        slice_thickness=thickness, n_frames=n_frames, transfer_syntax=ts, padding=padding,
        slices=slices)


def read_header(path: str | os.PathLike) -> DicomFileHeader:
    """Read the header of one DICOM file (no pixel data).

    A valid DICOM object without an image (DICOMDIR, SR, ...) gives a header with
    ``has_image`` False.

    Raises
    ------
    InputError
        The file is not DICOM, or is truncated or corrupt.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            # pydicom warns about each oddity of a damaged file; we report the damage once.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=HEADER_TAGS,
                                 force=not _has_preamble(path))
            # pydicom stops silently at the end of a truncated file: check what is left.
            problem = _truncation(fh, ds)
        if problem:
            raise InputError(path, f"truncated or corrupt DICOM file: {problem}")
        return _header_from_dataset(ds, path)
    except InvalidDicomError as e:
        raise InputError(path, f"not a valid DICOM file ({e})") from e
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            OverflowError) as e:
        raise InputError(path, f"corrupt DICOM header ({type(e).__name__}: {e})") from e


_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _truncation(fh, ds) -> str:
    """Why a file read with ``stop_before_pixels`` is incomplete ("" when it looks whole).

    ``fh`` stands where pydicom stopped: at the PixelData element of an image.
    """
    fm = getattr(ds, "file_meta", None)
    media_class = str(fm.get("MediaStorageSOPClassUID", "")) if fm is not None else ""
    sop_class = str(ds.get("SOPClassUID", "") or media_class)
    if not sop_class:
        return "no SOPClassUID (the file ends inside its header, or is not a DICOM object)"
    if sop_class == _DICOMDIR_CLASS:
        return ""
    name = pydicom.uid.UID(sop_class).name
    is_image = "Image Storage" in name
    if "Rows" not in ds:
        return f"{name} without Rows/Columns (the file ends inside its header)" if is_image else ""
    start = fh.tell()
    head = fh.read(12)
    size = os.fstat(fh.fileno()).st_size
    if len(head) < 8:
        return f"no pixel data: the file ends after {start} bytes"
    little = head[:4] == b"\xe0\x7f\x10\x00"
    if not little and head[:4] != b"\x7f\xe0\x00\x10":
        return f"no pixel data element where the header ends (offset {start})"
    order = "little" if little else "big"
    if head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return f"the pixel data element is cut at offset {start}"
        length, data_start = int.from_bytes(head[8:12], order), start + 12
    else:
        length, data_start = int.from_bytes(head[4:8], order), start + 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed): must end with a sequence delimiter
        fh.seek(max(data_start, size - 4096))
        if _SEQ_DELIMITER not in fh.read():
            return "compressed pixel data without its end (sequence delimiter missing)"
        return ""
    if data_start + length > size:
        return (f"pixel data of {length} bytes declared, {size - data_start} bytes present "
                f"({size} bytes in the file)")
    return ""


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # let dcmread raise the OSError
    return head[128:132] == b"DICM"


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    c = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, c)))


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
        Fewer than two slices, mixed image sizes, gantry tilt or a non-axial series,
        missing slices.
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
    pss = np.array([s.pixel_spacing for s in imgs])
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
    worst = int(np.argmax(gaps))
    if gaps[worst] > MAX_GAP_RATIO * median:
        raise InputError(source, f"missing slices: a gap of {gaps[worst]:.2f} mm between the "
                         f"slices at {pos[worst]:.2f} and {pos[worst + 1]:.2f} mm along the slice "
                         f"normal, {gaps[worst] / median:.1f} x the median spacing {median:.2f} mm")
    resample = bool(np.max(np.abs(gaps - median)) > IRREGULAR_GAP * median)
    direction = np.column_stack([row_dir, col_dir, normal])
    origin = tuple(float(v) for v in imgs[0].position)
    spacing = (median, float(pss[0][0]), float(pss[0][1]))
    return StackPlan(slices=imgs, positions=pos, spacing=spacing, origin=origin,
                     direction=direction, dropped=dropped, resample=resample)


# ---------------------------------------------------------------------------- pixel data

def _decode_file(path: Path) -> np.ndarray:
    """The stored pixel values of one file: (rows, cols) or (frames, rows, cols)."""
    ds = pydicom.dcmread(path, force=not _has_preamble(path))
    return ds.pixel_array


def _to_hu(raw: np.ndarray, *, slope: float, intercept: float,
           padding: tuple[float, float] | None) -> tuple[np.ndarray, int, int]:
    """int16 HU of one image, the number of padding pixels and of all pixels set to air."""
    if float(slope).is_integer() and float(intercept).is_integer() and raw.dtype.kind in "iu":
        hu = raw.astype(np.int32)  # exact and fast: the usual slope 1, intercept -1024
        if slope != 1:
            hu *= int(slope)
        hu += int(intercept)
    else:
        hu = np.rint(raw.astype(np.float64) * slope + intercept)
    low = hu < HU_AIR
    n_pad = 0
    if padding is not None:
        pad = (raw >= padding[0]) & (raw <= padding[1])
        n_pad = int(pad.sum())
        if n_pad:
            low |= pad
    hu[low] = HU_AIR
    np.minimum(hu, np.iinfo(np.int16).max, out=hu)
    return hu.astype(np.int16), n_pad, int(low.sum())


def _is_compressed(ts: str) -> bool:
    if not ts:
        return False
    try:
        return bool(pydicom.uid.UID(ts).is_compressed)
    except ValueError:  # a private transfer syntax: let GDCM try
        return True


def _read_pydicom(plan: StackPlan, headers: dict[Path, DicomFileHeader]
                  ) -> tuple[np.ndarray, int, int]:
    """Decode the planned slices with pydicom, each file once.

    Single-frame files are decoded on a small thread pool, in slice order, and each is turned
    into HU as soon as it arrives, so that only a few raw slices are held at a time.
    """
    decode = _guarded(lambda p: _decode_file(p))  # looked up at call time (tests patch it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header oddities were met (and judged) by read_header
        if plan.slices[0].frame is not None:  # one multi-frame file
            frames = decode(plan.slices[0].path)
            return _assemble(plan, headers, lambda s, _raw: frames[s.frame])
        paths = [s.path for s in plan.slices]
        with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(paths)))) as pool:
            return _assemble(plan, headers, lambda s, raw: raw, raws=pool.map(decode, paths))


class _DecodeFailure(Exception):
    """A file whose pixel data pydicom could not decode."""

    def __init__(self, path: Path, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.path = path
        self.cause = cause


def _guarded(fn: Callable[[Path], np.ndarray]) -> Callable[[Path], np.ndarray]:
    def run(p: Path) -> np.ndarray:
        try:
            return fn(p)
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
                                padding=headers[s.path].padding)
        n_pad += p
        n_low += low
    return out, n_pad, n_low


def _read_simpleitk(plan: StackPlan, headers: dict[Path, DicomFileHeader]
                    ) -> tuple[np.ndarray, int, int]:
    """Decode with SimpleITK (GDCM), in the planned order; GDCM applies the rescale."""
    import SimpleITK as sitk

    files = list(dict.fromkeys(s.path for s in plan.slices))
    try:
        if plan.slices[0].frame is None:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(p) for p in files])
            arr = sitk.GetArrayFromImage(reader.Execute())
            by_file = {p: arr[i] for i, p in enumerate(files)}
            get = lambda s: by_file[s.path]  # noqa: E731
        else:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(files[0])))
            get = lambda s: arr[s.frame]  # noqa: E731
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(files[0].parent, f"SimpleITK/GDCM cannot read the pixel data "
                         f"either ({last})") from e
    s0 = plan.slices[0]
    out = np.empty((len(plan.slices), s0.rows, s0.cols), dtype=np.int16)
    n_pad = n_low = 0
    for k, s in enumerate(plan.slices):
        hu = np.asarray(get(s), dtype=np.float64)
        pad_hu = headers[s.path].padding
        # GDCM returns rescaled values: find padding in HU.
        padding = None if pad_hu is None else tuple(
            sorted(v * s.slope + s.intercept for v in pad_hu))
        out[k], p, low = _to_hu(hu, slope=1.0, intercept=0.0, padding=padding)
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


def check_geometry_present(headers: Sequence[DicomFileHeader]) -> None:
    """Images that cannot be placed in the patient frame make the series unusable."""
    for h in headers:
        if h.has_image and not h.slices:
            raise InputError(h.path, "an image without ImagePositionPatient, "
                             "ImageOrientationPatient or PixelSpacing: it cannot be placed in "
                             "the patient (a secondary capture or screenshot?)")


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
    try:
        vol, n_pad, n_low = _read_pydicom(plan, by_path)
    except _DecodeFailure as e:
        h = by_path[e.path]
        if not _is_compressed(h.transfer_syntax):
            raise InputError(e.path, f"corrupt pixel data ({e})") from e.cause
        try:
            vol, n_pad, n_low = _read_simpleitk(plan, by_path)
        except InputError as e2:
            raise InputError(e.path, f"cannot decode the compressed pixel data "
                             f"({h.transfer_syntax}): pydicom says {e}; {e2.problem}") from e.cause
        reader = "simpleitk"
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
    }
    pid = patient_id if patient_id is not None else first.patient_id
    return CTVolume(hu=vol, spacing=plan.spacing, origin=plan.origin, direction=plan.direction,
                    patient_id=pid, series_uid=first.series_uid, meta=meta)
