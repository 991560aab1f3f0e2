"""ITK and NIfTI files (``.mhd``/``.raw``, ``.mha``, ``.nii``, ``.nii.gz``) read with SimpleITK.

SimpleITK gives origin, spacing and direction in the LPS patient frame for every format
(it converts NIfTI's RAS for us).  These files carry no patient or series identifiers, so the
file stem stands for both: LUNA16 names each ``.mhd`` by its SeriesInstanceUID.

Every file is checked before SimpleITK reads it (:mod:`lungcad.io.metaimage_checks`,
:mod:`lungcad.io.nifti_checks`), and every problem is an
:class:`~lungcad.errors.InputError` that names the file and what is wrong.  Nothing else
leaves :func:`read_itk_info` or :func:`load_itk`.  SimpleITK is told which reader to use
(``MetaImageIO`` or ``NiftiImageIO``, from the suffix), so a file is never read as another
format because of its content.

MetaImage (``.mhd``, ``.mha``)
    The header, the data files it names and their sizes: see :mod:`lungcad.io.metaimage_checks`.

NIfTI (``.nii``, ``.nii.gz``; single-file NIfTI-1: SimpleITK's reader does not read NIfTI-2)
    The header, the gzip stream and the NaN and infinite values: see
    :mod:`lungcad.io.nifti_checks`.

Every format, after SimpleITK has read the header
    3-D, one component; spacing finite and positive; origin finite; direction finite and
    orthonormal.

HU
    A float image with any NaN or infinite voxel is refused (with the count), whatever the
    format.  Values are
    rounded; any value outside int16 (-32768 .. 32767) is refused; values below -1024 HU
    (e.g. -3024 outside the field of view in many LUNA16 scans) become -1024 and are counted
    in ``meta["clipped_voxels"]``.

SimpleITK's messages
    ITK's warnings go to a logger installed here, never to stderr.  Those raised while one of
    this module's functions reads a file become one-line entries of the scan's
    ``meta["warnings"]`` (e.g. "unexpected scales in sform"); others are logged on the
    ``lungcad.io.itk`` logger.  SimpleITK's exceptions become one-line InputErrors.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from lungcad.errors import InputError
from lungcad.io.c_library_output import _c_library_output
from lungcad.io.dicom_decode import HU_AIR
from lungcad.io.itk_limits import _dims_text, _orthonormal
from lungcad.io.metaimage_checks import _check_compressed, _metaimage_plan
from lungcad.io.nifti_checks import _nifti_check
from lungcad.io.write_volume import ITK_SUFFIXES
from lungcad.volume import CTVolume

__all__ = ["is_itk_file", "itk_stem", "read_itk_info", "load_itk", "capture_sitk_messages"]

log = logging.getLogger(__name__)

_HU_MIN, _HU_MAX = int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max)

_METAIMAGE_SUFFIXES = (".mhd", ".mha")


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


# --------------------------------------------------------------------------------------------
# SimpleITK at its boundary: its messages and its exceptions
# --------------------------------------------------------------------------------------------

_local = threading.local()
_logger_lock = threading.Lock()
_itk_logger = None  # kept for the life of the process: ITK holds a pointer to it


def _one_line(text: str) -> str:
    """ITK's multi-line message as one line, without source locations and object addresses."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    lines = [ln for ln in lines
             if not re.match(r"^(WARNING|ERROR|Debug)\s*:?\s*In\s+\S+, line \d+$", ln)
             and not ln.startswith("Exception thrown in SimpleITK")]
    if not lines:
        return ""
    text = lines[-1] if len(lines) > 3 else " ".join(lines)
    text = re.sub(r"^(ITK ERROR|ITK WARNING)\s*:\s*", "", text)
    text = re.sub(r"^[A-Za-z0-9_]+\s*\(0x[0-9a-fA-F]+\)\s*:\s*", "", text)
    return text


def _sitk():
    """SimpleITK, with ITK's output window replaced once by a logger that never prints."""
    import SimpleITK as sitk

    global _itk_logger
    if _itk_logger is None:
        with _logger_lock:
            if _itk_logger is None:
                class _Logger(sitk.LoggerBase):
                    def _route(self, text):
                        msg = _one_line(text)
                        if not msg:
                            return
                        sink = getattr(_local, "messages", None)
                        if sink is not None:
                            sink.append(msg)
                        else:
                            log.warning("SimpleITK: %s", msg)

                    def DisplayText(self, t):
                        self._route(t)

                    def DisplayErrorText(self, t):
                        self._route(t)

                    def DisplayWarningText(self, t):
                        self._route(t)

                    def DisplayGenericOutputText(self, t):
                        self._route(t)

                    def DisplayDebugText(self, t):
                        log.debug("SimpleITK: %s", _one_line(t))

                logger = _Logger()
                logger.SetAsGlobalITKLogger()
                _itk_logger = logger
    return sitk


@contextlib.contextmanager
def capture_sitk_messages() -> Iterator[list[str]]:
    """Collect the ITK/SimpleITK warnings raised in this thread inside the ``with`` block.

    Yields a list that receives one line per message (source locations and object addresses
    removed, duplicates dropped on exit).  Messages are never printed.  Other readers (DICOM
    through SimpleITK) can use it to put SimpleITK's warnings into a scan's warnings.
    """
    _sitk()
    outer = getattr(_local, "messages", None)
    sink: list[str] = []
    _local.messages = sink
    try:
        yield sink
    finally:
        _local.messages = outer
        unique = list(dict.fromkeys(sink))
        sink[:] = unique
        if outer is not None:
            outer.extend(unique)


def _sitk_error(e: BaseException) -> str:
    return _one_line(str(e)) or type(e).__name__


# --------------------------------------------------------------------------------------------
# Checks of a file, then SimpleITK
# --------------------------------------------------------------------------------------------

def _check_file(path: Path, *, deep: bool) -> tuple[str, list[str]]:
    """Check ``path`` before SimpleITK reads it; the ImageIO to use and any warnings."""
    name = path.name.lower()
    if not name.endswith(ITK_SUFFIXES):
        raise InputError(path, f"not an ITK image file; expected a name ending in one of "
                         f"{', '.join(ITK_SUFFIXES)}")
    if not path.is_file():
        raise InputError(path, "file not found")
    if name.endswith(_METAIMAGE_SUFFIXES):
        chunks, warnings = _metaimage_plan(path)
        if deep:
            for c in chunks:
                if c.compressed:
                    _check_compressed(path, c)
        return "MetaImageIO", warnings
    return "NiftiImageIO", _nifti_check(path, deep=deep)


def _printed(lines: list[str]) -> list[str]:
    """What ITK's C++ code wrote straight to stderr (MetaIO, VNL), as scan warnings."""
    if not lines:
        return []
    return [f"ITK printed: {' | '.join(lines)[:300]}"]


def _read_information(path: Path, reader) -> dict:
    """Geometry from ``reader`` after ReadImageInformation, checked."""
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(path, f"cannot read the image header ({_sitk_error(e)})") from e
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim != 3 or reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"expected a 3-D single-component CT image. Received {dim}-D "
                         f"size {size} with {reader.GetNumberOfComponents()} component(s)")
    spacing = tuple(float(s) for s in reader.GetSpacing()[::-1])
    origin = tuple(float(o) for o in reader.GetOrigin())
    direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"spacing (z, y, x) {spacing} mm is not finite and positive")
    if not all(math.isfinite(o) for o in origin):
        raise InputError(path, f"origin {origin} is not finite")
    if not _orthonormal(direction):
        raise InputError(path, f"direction {direction.round(4).tolist()} is not orthonormal")
    return {
        "shape": tuple(int(s) for s in size[::-1]),
        "spacing": spacing,
        "origin": origin,
        "direction": direction,
    }


def _reader(path: Path, imageio: str):
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.SetImageIO(imageio)
    return reader


def read_itk_info(path: str | os.PathLike) -> dict:
    """Shape (z, y, x), spacing (z, y, x) mm, origin (x, y, z) mm and direction, header only.

    Checks the header, the data files it names (inside the header's folder) and their sizes
    (see the module docstring); a compressed stream is not decompressed here.

    Returns
    -------
    dict with ``shape``, ``spacing``, ``origin``, ``direction`` (3x3) and ``warnings``
    (a list of one-line strings).

    Raises
    ------
    InputError
        Any problem of the file: unreadable or inconsistent header, a data file outside the
        header's folder or of the wrong size, not a 3-D single-component image, a geometry
        that is not finite, positive and orthonormal.
    """
    path = Path(path)
    imageio, warnings = _check_file(path, deep=False)
    printed: list[str] = []
    with _c_library_output(printed), capture_sitk_messages() as messages:
        info = _read_information(path, _reader(path, imageio))
    info["warnings"] = warnings + [f"SimpleITK: {m}" for m in messages] + _printed(printed)
    return info


def _to_hu(path: Path, arr: np.ndarray) -> tuple[np.ndarray, int]:
    """int16 HU and the count of voxels below -1024 that became -1024."""
    if arr.dtype.kind not in "iuf":
        raise InputError(path, f"pixel type {arr.dtype} is not a real number type")
    if arr.dtype.kind == "f":
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise InputError(path, f"{n_bad} voxel(s) are NaN or infinite; expected HU values")
        arr = np.rint(arr)
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < _HU_MIN or hi > _HU_MAX:
            raise InputError(path, f"values from {lo:g} to {hi:g} do not fit in int16 "
                             f"({_HU_MIN} to {_HU_MAX}); expected CT values in HU")
    low = arr < HU_AIR
    n_low = int(np.count_nonzero(low))
    if n_low:
        arr = np.where(low, HU_AIR, arr)
    return arr.astype(np.int16, copy=False), n_low


def load_itk(path: str | os.PathLike) -> CTVolume:
    """Load an ITK/NIfTI CT image in HU.

    Values are rounded to int16; values below -1024 HU (e.g. -3024 outside the field of view
    in many LUNA16 scans) become -1024, and their count is ``meta["clipped_voxels"]``.
    ``patient_id`` and ``series_uid`` are the file stem.  ``meta["warnings"]`` holds what was
    odd but usable (SimpleITK's warnings among them).

    Raises
    ------
    InputError
        Any problem of the file (see the module docstring for the rules): nothing else leaves.
    """
    path = Path(path)
    imageio, warnings = _check_file(path, deep=True)
    reader = _reader(path, imageio)
    printed: list[str] = []
    with _c_library_output(printed), capture_sitk_messages() as messages:
        info = _read_information(path, reader)
        try:
            img = reader.Execute()
        except RuntimeError as e:
            raise InputError(path, f"cannot read the image data ({_sitk_error(e)})") from e
    sitk = _sitk()
    try:
        hu, n_low = _to_hu(path, sitk.GetArrayFromImage(img))
    except MemoryError as e:
        raise InputError(path, f"too large to load ({_dims_text(info['shape'])} voxels)") from e
    if hu.shape != info["shape"]:
        raise InputError(path, f"SimpleITK read {hu.shape} voxels but the header says "
                         f"{info['shape']}")
    warnings = warnings + [f"SimpleITK: {m}" for m in messages] + _printed(printed)
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
        "warnings": warnings,
    }
    return CTVolume(hu=hu, spacing=info["spacing"], origin=info["origin"],
                    direction=info["direction"], patient_id=stem, series_uid=stem, meta=meta)
