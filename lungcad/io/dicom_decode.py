"""The pixel data of a planned DICOM series decoded to HU: with pydicom (single-frame files on a
small thread pool), or with SimpleITK/GDCM when pydicom's decoders fail on compressed data.

How stored values become HU (rule 6; rules 1-5, how the slices are chosen and ordered, are in
:mod:`lungcad.io.dicom_stack`):

6. HU = stored x RescaleSlope + RescaleIntercept, computed in float64 (or exactly in int32 for
   small integer rescales).  The HU of every pixel that is not padding must lie within int16,
   else :class:`InputError` (a wrong rescale).  Pixels equal to PixelPaddingValue (or inside
   the padding range) and every HU below -1024 become -1024 (``meta["clipped_voxels"]``).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom

from lungcad.errors import InputError
from lungcad.io.dicom_attributes import _encoding_syntax, _shown, _transfer_syntax
from lungcad.io.dicom_header import DicomFileHeader, _Bounded, _has_preamble, _library_warnings
from lungcad.io.dicom_slices import SliceHeader
from lungcad.io.dicom_stack import StackPlan

__all__ = ["HU_AIR"]

#: The HU that padding and every value below it become.
HU_AIR = -1024
#: Threads that read pixel data of one series.
READ_THREADS = 4


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
