"""Writers: a :class:`~lungcad.volume.CTVolume` to a DICOM series, a multi-frame DICOM file,
or an ITK/NIfTI file.

The DICOM writer makes files the way scanners write them, so that the readers are tested
against the same variations they meet in the wild: shuffled file names, InstanceNumber that
runs against z, rescale parameters other than (1, -1024), pixel padding outside the
reconstruction field of view, and RLE or JPEG 2000 compression.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from lungcad.volume import CTVolume

__all__ = ["write_dicom_series", "write_dicom_multiframe", "write_itk", "ITK_SUFFIXES"]

#: File name endings that :func:`write_itk` (and ``load_ct``) handle with SimpleITK.
ITK_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")

_COMPRESSION = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless}


def _ds(x: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters, full precision)."""
    return format_number_as_ds(float(x))


def _uid(*parts: Any) -> str:
    """A reproducible UID derived from ``parts``."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _stored_values(hu: np.ndarray, *, slope: float, intercept: float,
                   padding_value: int | None) -> tuple[np.ndarray, int]:
    """Stored pixel values for ``hu`` and the PixelRepresentation (0 unsigned, 1 signed)."""
    if slope <= 0:
        raise ValueError(f"rescale_slope must be > 0. Received rescale_slope={slope}")
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if padding_value is not None:
        lo, hi = min(lo, padding_value), max(hi, padding_value)
    if lo >= 0 and hi <= 65535:
        return stored.astype(np.uint16), 0
    if lo >= -32768 and hi <= 32767:
        return stored.astype(np.int16), 1
    raise ValueError(
        f"HU range {int(hu.min())}..{int(hu.max())} with rescale_slope={slope}, "
        f"rescale_intercept={intercept} and padding_value={padding_value} does not fit "
        f"16-bit stored values (expected stored values within -32768..65535)")


def _direction_vectors(volume: CTVolume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(volume.direction, dtype=float)
    return d[:, 0], d[:, 1], d[:, 2]


def _common_dataset(volume: CTVolume, *, sop_class: str, study_uid: str, series_uid: str,
                    frame_uid: str, patient_name: str | None, series_description: str,
                    modality: str, transfer_syntax: str) -> Dataset:
    """Patient, study, series, equipment and frame-of-reference modules."""
    meta = volume.meta or {}
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.TransferSyntaxUID = transfer_syntax
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "LUNGCAD"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = str(meta.get("manufacturer") or "lungcad synthetic")
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = str(meta.get("study_description") or "")
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "lungcad"
    ds.PatientName = (patient_name if patient_name is not None
                      else (volume.patient_id or "ANONYMOUS"))
    ds.PatientID = volume.patient_id or "ANONYMOUS"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(meta.get("series_number") or 1)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    return ds


def _ct_acquisition(ds: Dataset, volume: CTVolume) -> None:
    meta = volume.meta or {}
    ds.KVP = _ds(meta.get("kvp") or 120)
    ds.ConvolutionKernel = str(meta.get("kernel") or "STANDARD")
    ds.SliceThickness = _ds(meta.get("slice_thickness") or volume.spacing[0])
    ds.GantryDetectorTilt = "0"
    ds.RescaleType = "HU"


def _pixel_module(ds: Dataset, *, rows: int, cols: int, pixel_rep: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_rep


def _set_padding(ds: Dataset, padding_value: int | None, pixel_rep: int) -> None:
    if padding_value is not None:
        ds.add_new(0x00280120, "SS" if pixel_rep else "US", int(padding_value))


def _apply_fov(stored: np.ndarray, fov_mask: np.ndarray | None, padding_value: int | None,
               shape_yx: tuple[int, int]) -> np.ndarray:
    if fov_mask is None:
        return stored
    fov = np.asarray(fov_mask, dtype=bool)
    if fov.shape != shape_yx:
        raise ValueError(f"fov_mask must have the in-plane shape (y, x) = {shape_yx}. "
                         f"Received shape {fov.shape}")
    out = stored.copy()
    out[..., ~fov] = padding_value
    return out


def _finish(ds: Dataset, pixels: np.ndarray, compress: str | None) -> None:
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress is not None:
        ds.compress(_COMPRESSION[compress], np.ascontiguousarray(pixels),
                    generate_instance_uid=False)


def _check_options(compress: str | None, volume: CTVolume) -> None:
    if compress is not None and compress not in _COMPRESSION:
        raise ValueError(f"compress expected one of {sorted(_COMPRESSION)} or None. "
                         f"Received compress={compress!r}")
    if not isinstance(volume, CTVolume):
        raise TypeError(f"expected a CTVolume. Received {type(volume).__name__}")


def _padding_default(padding_value: int | None, fov_mask) -> int | None:
    # Like GE scanners: stored -2000 outside the field of view.
    if padding_value is None and fov_mask is not None:
        return -2000
    return padding_value


def write_dicom_series(volume: CTVolume, out_dir: str | os.PathLike, *, seed: int = 0,
                       shuffle_names: bool = True, reverse_instance_numbers: bool = False,
                       rescale_intercept: float = -1024, rescale_slope: float = 1.0,
                       padding_value: int | None = None, fov_mask: np.ndarray | None = None,
                       compress: str | None = None, series_description: str = "",
                       modality: str = "CT", study_uid: str | None = None,
                       patient_name: str | None = None) -> list[Path]:
    """Write ``volume`` as a series of single-frame CT Image Storage files.

    Parameters
    ----------
    volume : CTVolume
        ``hu`` (z, y, x) int16, with spacing, origin and direction.  ``volume.meta`` may give
        ``kernel``, ``kvp``, ``manufacturer``, ``slice_thickness`` and ``series_number``.
    out_dir : path
        Created if needed.  One file per slice, ``IM<number>.dcm``.
    seed : int
        Makes the file-name shuffle and the generated UIDs reproducible.
    shuffle_names : bool
        Number the files in a random order, so that name order is not slice order.
    reverse_instance_numbers : bool
        InstanceNumber 1 on the last slice (it then runs opposite to z, as in many scans).
    rescale_intercept, rescale_slope : float
        Stored value = round((HU - intercept) / slope).  The stored type is uint16 when all
        values fit, else int16.
    padding_value : int, optional
        Stored value written as PixelPaddingValue.  With ``fov_mask`` and no padding value,
        -2000 is used (as GE scanners do).
    fov_mask : ndarray of bool (y, x), optional
        Pixels inside the reconstruction field of view; the others are written as
        ``padding_value``.
    compress : {None, "rle", "jpeg2000"}
        Lossless compression of the pixel data (RLE is native in pydicom; JPEG 2000 needs
        pylibjpeg-openjpeg).
    series_description, modality, study_uid, patient_name
        Header values.  SeriesInstanceUID is ``volume.series_uid`` when set, else generated.

    Returns
    -------
    list of Path
        The files, in slice order (index z = 0 first).
    """
    _check_options(compress, volume)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(volume.hu)
    nz, ny, nx = hu.shape
    padding_value = _padding_default(padding_value, fov_mask)
    stored, pixel_rep = _stored_values(hu, slope=rescale_slope, intercept=rescale_intercept,
                                       padding_value=padding_value)
    stored = _apply_fov(stored, fov_mask, padding_value, (ny, nx))
    rng = np.random.default_rng(seed)
    names = rng.permutation(nz) + 1 if shuffle_names else np.arange(1, nz + 1)

    pid = volume.patient_id or "ANONYMOUS"
    study_uid = (study_uid or str((volume.meta or {}).get("study_uid") or "")
                 or _uid(seed, pid, "study"))
    series_uid = volume.series_uid or _uid(seed, pid, study_uid, series_description, "series")
    frame_uid = _uid(series_uid, "frame")
    row_dir, col_dir, slice_dir = _direction_vectors(volume)
    sz, sy, sx = volume.spacing
    origin = np.asarray(volume.origin, dtype=float)
    normal = np.cross(row_dir, col_dir)

    paths = []
    for k in range(nz):
        ds = _common_dataset(volume, sop_class=CTImageStorage, study_uid=study_uid,
                             series_uid=series_uid, frame_uid=frame_uid,
                             patient_name=patient_name, series_description=series_description,
                             modality=modality,
                             transfer_syntax=_COMPRESSION.get(compress, ExplicitVRLittleEndian))
        sop_uid = _uid(series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _ct_acquisition(ds, volume)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(nz - k if reverse_instance_numbers else k + 1)
        ipp = origin + k * sz * slice_dir
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        _pixel_module(ds, rows=ny, cols=nx, pixel_rep=pixel_rep)
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.RescaleSlope = _ds(rescale_slope)
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        _set_padding(ds, padding_value, pixel_rep)
        _finish(ds, stored[k], compress)
        path = out / f"IM{int(names[k]):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dicom_multiframe(volume: CTVolume, path: str | os.PathLike, *, enhanced: bool = True,
                           seed: int = 0, rescale_intercept: float = -1024,
                           rescale_slope: float = 1.0, compress: str | None = None,
                           series_description: str = "", modality: str = "CT",
                           frame_order: np.ndarray | None = None) -> Path:
    """Write ``volume`` as one multi-frame DICOM file.

    Parameters
    ----------
    enhanced : bool
        True: Enhanced CT Image Storage with shared and per-frame functional groups
        (plane position per frame).  False: a classic multi-frame CT Image Storage file with one
        ImagePositionPatient (frame 0) and a GridFrameOffsetVector of offsets along the slice
        normal.
    frame_order : ndarray of int, optional
        The slice index stored in each frame (a permutation of range(nz)); the default is
        slice order.  Only for ``enhanced=True``, where each frame carries its position.
    Other parameters are as for :func:`write_dicom_series`.
    """
    _check_options(compress, volume)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(volume.hu)
    nz, ny, nx = hu.shape
    order = np.arange(nz) if frame_order is None else np.asarray(frame_order, dtype=int)
    if sorted(order.tolist()) != list(range(nz)):
        raise ValueError(f"frame_order must be a permutation of range({nz}). Received {order}")
    if not enhanced and frame_order is not None:
        raise ValueError("frame_order needs enhanced=True: a classic multi-frame file stores "
                         "frames in slice order")
    stored, pixel_rep = _stored_values(hu, slope=rescale_slope, intercept=rescale_intercept,
                                       padding_value=None)
    pid = volume.patient_id or "ANONYMOUS"
    study_uid = str((volume.meta or {}).get("study_uid") or "") or _uid(seed, pid, "study")
    series_uid = volume.series_uid or _uid(seed, pid, study_uid, series_description, "series")
    sop_class = EnhancedCTImageStorage if enhanced else CTImageStorage
    ds = _common_dataset(volume, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
                         frame_uid=_uid(series_uid, "frame"), patient_name=None,
                         series_description=series_description, modality=modality,
                         transfer_syntax=_COMPRESSION.get(compress, ExplicitVRLittleEndian))
    sop_uid = _uid(series_uid, "multiframe", enhanced)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.NumberOfFrames = nz
    row_dir, col_dir, slice_dir = _direction_vectors(volume)
    sz, sy, sx = volume.spacing
    origin = np.asarray(volume.origin, dtype=float)
    iop = [_ds(v) for v in (*row_dir, *col_dir)]
    meta = volume.meta or {}
    if enhanced:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        ds.KVP = _ds(meta.get("kvp") or 120)
        ds.ContentQualification = "PRODUCT"
        ds.AcquisitionNumber = 1
        measures = Dataset()
        measures.PixelSpacing = [_ds(sy), _ds(sx)]
        measures.SliceThickness = _ds(meta.get("slice_thickness") or sz)
        orient = Dataset()
        orient.ImageOrientationPatient = iop
        transform = Dataset()
        transform.RescaleIntercept = _ds(rescale_intercept)
        transform.RescaleSlope = _ds(rescale_slope)
        transform.RescaleType = "HU"
        recon = Dataset()
        recon.ConvolutionKernel = str(meta.get("kernel") or "STANDARD")
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        shared.PlaneOrientationSequence = [orient]
        shared.PixelValueTransformationSequence = [transform]
        shared.CTReconstructionSequence = [recon]
        ds.SharedFunctionalGroupsSequence = [shared]
        per_frame = []
        for k in order:
            pos = Dataset()
            pos.ImagePositionPatient = [_ds(v) for v in origin + k * sz * slice_dir]
            ftype = Dataset()
            ftype.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
            item = Dataset()
            item.PlanePositionSequence = [pos]
            item.CTImageFrameTypeSequence = [ftype]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _ct_acquisition(ds, volume)
        ds.ImagePositionPatient = [_ds(v) for v in origin]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.RescaleSlope = _ds(rescale_slope)
        normal = np.cross(row_dir, col_dir)
        step = float(sz * (slice_dir @ normal))
        ds.GridFrameOffsetVector = [_ds(k * step) for k in range(nz)]
        ds.SpacingBetweenSlices = _ds(abs(step))
        ds.FrameIncrementPointer = 0x3004000C
    _pixel_module(ds, rows=ny, cols=nx, pixel_rep=pixel_rep)
    _finish(ds, stored[order], compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_itk(volume: CTVolume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as ``.mhd`` (+ ``.raw``), ``.mha``, ``.nii`` or ``.nii.gz`` with SimpleITK.

    Origin, spacing and direction are written in the LPS frame; for NIfTI, SimpleITK converts
    them to the RAS frame that the format stores, and converts back on reading.  NIfTI stores
    the geometry in float32, so positions come back within about 1e-4 mm.
    """
    import SimpleITK as sitk

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(ITK_SUFFIXES):
        raise ValueError(f"write_itk expected a file name ending in one of {ITK_SUFFIXES}. "
                         f"Received {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.hu, dtype=np.int16)))
    img.SetSpacing([float(s) for s in volume.spacing[::-1]])
    img.SetOrigin([float(o) for o in volume.origin])
    img.SetDirection([float(v) for v in np.asarray(volume.direction, dtype=float).ravel()])
    sitk.WriteImage(img, str(path), useCompression=name.endswith(".nii.gz"))
    return path
