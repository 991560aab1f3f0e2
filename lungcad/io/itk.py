"""ITK and NIfTI files (``.mhd``/``.raw``, ``.mha``, ``.nii``, ``.nii.gz``) read with SimpleITK.

SimpleITK gives origin, spacing and direction in the LPS patient frame for every format
(it converts NIfTI's RAS for us).  These files carry no patient or series identifiers, so the
file stem stands for both: LUNA16 names each ``.mhd`` by its SeriesInstanceUID.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.io.dicom import HU_AIR
from lungcad.io.writers import ITK_SUFFIXES
from lungcad.volume import CTVolume

__all__ = ["is_itk_file", "itk_stem", "read_itk_info", "load_itk"]


def is_itk_file(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.mhd``, ``.mha``, ``.nii`` or ``.nii.gz``."""
    return Path(path).name.lower().endswith(ITK_SUFFIXES)


def itk_stem(path: str | os.PathLike) -> str:
    """The file name without its ITK suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suf in sorted(ITK_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(path).stem


def _sitk_error(e: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def read_itk_info(path: str | os.PathLike) -> dict:
    """Shape (z, y, x), spacing (z, y, x), origin and direction from the header only.

    Raises
    ------
    InputError
        Unreadable header, or not a 3-D single-component image.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(path, f"cannot read the image header ({_sitk_error(e)})") from e
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim != 3 or reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"expected a 3-D single-component CT image. Received {dim}-D "
                         f"size {size} with {reader.GetNumberOfComponents()} component(s)")
    return {
        "shape": tuple(int(s) for s in size[::-1]),
        "spacing": tuple(float(s) for s in reader.GetSpacing()[::-1]),
        "origin": tuple(float(o) for o in reader.GetOrigin()),
        "direction": np.array(reader.GetDirection(), dtype=float).reshape(3, 3),
    }


def load_itk(path: str | os.PathLike) -> CTVolume:
    """Load an ITK/NIfTI CT image in HU.

    Values are rounded to int16; values below -1024 HU (e.g. -3024 outside the field of view
    in many LUNA16 scans) become -1024, and their count is ``meta["clipped_voxels"]``.
    ``patient_id`` and ``series_uid`` are the file stem.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    info = read_itk_info(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(path, f"cannot read the image data ({_sitk_error(e)})") from e
    arr = sitk.GetArrayFromImage(img)
    low = arr < HU_AIR
    n_low = int(low.sum())
    if arr.dtype != np.int16 or n_low:
        arr = np.clip(np.rint(arr.astype(np.float64)) if arr.dtype.kind == "f" else arr,
                      HU_AIR, np.iinfo(np.int16).max).astype(np.int16)
    stem = itk_stem(path)
    meta = {
        "reader": "simpleitk",
        "format": "itk",
        "n_files": 1,
        "modality": "CT",
        "series_description": "",
        "study_uid": "",
        "kernel": "",
        "slice_thickness": info["spacing"][0],
        "manufacturer": "",
        "kvp": None,
        "source_path": str(path),
        "dropped": [],
        "clipped_voxels": n_low,
        "resampled_z": False,
    }
    return CTVolume(hu=arr, spacing=info["spacing"], origin=info["origin"],
                    direction=info["direction"], patient_id=stem, series_uid=stem, meta=meta)
