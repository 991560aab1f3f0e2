"""NIfTI files (``.nii``, ``.nii.gz``; single-file NIfTI-1: SimpleITK's reader does not read
NIfTI-2) checked before SimpleITK reads them.  Every problem is an
:class:`~lungcad.errors.InputError` that names the file and what is wrong.

* A ``.nii.gz`` must be a complete gzip stream: :func:`load_itk` reads it to the end (a file
  cut short, a bad CRC or corrupt data are refused); :func:`read_itk_info` decompresses the
  header only.
* ``sizeof_hdr`` and magic ``n+1`` valid; ``dim`` positive; ``datatype`` a real scalar type
  and ``bitpix`` its size; ``vox_offset`` a whole number >= 352; ``vox_offset`` + voxels x
  bytes <= the (decompressed) size.  Bytes after the image data are recorded as a warning.
* :func:`load_itk` counts NaN and infinite values in the stored data of a float image
  (ITK's NIfTI reader silently turns them into 0) and refuses the file if there are any.
* ``pixdim`` of x, y, z finite and positive (niftilib silently makes a NaN or 0 spacing
  1 mm); quaternion and offsets finite when ``qform_code`` > 0, ``srow_*`` finite when
  ``sform_code`` > 0; ``scl_slope`` and ``scl_inter`` finite.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.io.itk_limits import _CHUNK, MAX_VOXELS, _dims_text

_TRAILING_LIMIT = 16 << 20       # bytes after a NIfTI's image data before it is refused

#: NIfTI datatype code -> (name, bits) for the real scalar types.
_NIFTI_TYPES = {
    2: ("uint8", 8), 4: ("int16", 16), 8: ("int32", 32), 16: ("float32", 32),
    64: ("float64", 64), 256: ("int8", 8), 512: ("uint16", 16), 768: ("uint32", 32),
    1024: ("int64", 64), 1280: ("uint64", 64),
}
_NIFTI_OTHER = {1: "binary", 32: "complex64", 128: "RGB24", 1536: "float128",
                1792: "complex128", 2048: "complex256", 2304: "RGBA32"}


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------

def _is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _nifti_parse(path: Path, raw: bytes) -> dict:
    """Check a NIfTI-1 header; its sizes, data offset, bytes needed and numpy dtype."""
    if raw[:2] == b"\x1f\x8b" and not _is_gzip_name(path):
        raise InputError(path, "gzip-compressed data in a file named .nii; name it .nii.gz")
    if len(raw) < 348:
        raise InputError(path, f"truncated: {len(raw)} bytes, less than a NIfTI header (348)")
    for e in "<>":
        sizeof_hdr = struct.unpack(e + "i", raw[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise InputError(path, "not a NIfTI file (sizeof_hdr is neither 348 nor 540)")
    if len(raw) < 352 and sizeof_hdr == 348:
        raise InputError(path, f"truncated: {len(raw)} bytes, less than a NIfTI-1 header and "
                         "its 4-byte extender (352)")
    if sizeof_hdr == 540:
        raise InputError(path, "a NIfTI-2 file; SimpleITK's NIfTI reader reads NIfTI-1 only "
                         "(convert it, e.g. with nibabel, to NIfTI-1)")
    magic = raw[344:348]
    if magic == b"ni1\x00":
        raise InputError(path, "the NIfTI header says the data are in a separate .img file; "
                         "lungcad reads single-file NIfTI (.nii, .nii.gz)")
    if magic != b"n+1\x00":
        raise InputError(path, f"not a NIfTI-1 file (magic {magic!r}, expected b'n+1\\x00')")
    dim = struct.unpack(e + "8h", raw[40:56])
    datatype, bitpix = struct.unpack(e + "2h", raw[70:74])
    pixdim = struct.unpack(e + "8f", raw[76:108])
    vox_offset = struct.unpack(e + "f", raw[108:112])[0]
    slope, inter = struct.unpack(e + "2f", raw[112:120])
    qform_code, sform_code = struct.unpack(e + "2h", raw[252:256])
    quatern = struct.unpack(e + "6f", raw[256:280])
    srow = struct.unpack(e + "12f", raw[280:328])

    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"dim[0] is {ndim}; expected 1 to 7 dimensions")
    sizes = dim[1:ndim + 1]
    if min(sizes) < 1:
        raise InputError(path, f"dim {_dims_text(sizes)} has a size below 1")
    n_vox = math.prod(sizes)
    if n_vox > MAX_VOXELS:
        raise InputError(path, f"dim {_dims_text(sizes)} is {n_vox} voxels, more than "
                         f"lungcad's limit of {MAX_VOXELS}")
    if datatype not in _NIFTI_TYPES:
        kind = _NIFTI_OTHER.get(datatype)
        raise InputError(path, f"datatype {datatype}" + (f" ({kind})" if kind else "")
                         + " is not a real scalar type; expected a CT image")
    tname, bits = _NIFTI_TYPES[datatype]
    if bitpix != bits:
        raise InputError(path, f"bitpix is {bitpix} but datatype {datatype} ({tname}) has "
                         f"{bits} bits")
    if not math.isfinite(vox_offset) or vox_offset < 352 or vox_offset != int(vox_offset):
        raise InputError(path, f"vox_offset {vox_offset} is not a whole number of bytes from 352 "
                         "on (after the 348-byte header and its 4-byte extender)")
    for i, axis in zip(range(1, min(3, ndim) + 1), "xyz"):
        if not math.isfinite(pixdim[i]) or pixdim[i] <= 0:
            raise InputError(path, f"pixdim[{i}] (the {axis} spacing) is {pixdim[i]:g}; expected "
                             "a finite positive size in mm")
    for key, v in (("scl_slope", slope), ("scl_inter", inter)):
        if not math.isfinite(v):
            raise InputError(path, f"{key} is {v}; expected a finite number")
    if qform_code > 0 and not (all(math.isfinite(v) for v in quatern)
                               and math.isfinite(pixdim[0])):
        raise InputError(path, "the qform (quatern_b/c/d, qoffset, pixdim[0]) holds NaN or "
                         "infinite values")
    if sform_code > 0 and not all(math.isfinite(v) for v in srow):
        raise InputError(path, "the sform (srow_x/y/z) holds NaN or infinite values")
    for key, code in (("qform_code", qform_code), ("sform_code", sform_code)):
        if not 0 <= code <= 5:   # NIfTI's xform codes: unknown, scanner, aligned, talairach, mni, template
            raise InputError(path, f"{key} is {code}; expected a NIfTI xform code (0-5)")
    if sform_code > 0:
        m = np.array(srow, dtype=float).reshape(3, 4)[:, :3]
        sv = np.linalg.svd(m, compute_uv=False)
        if not sv[-1] > 1e-6 * max(sv[0], 1e-12):
            raise InputError(path, "the sform (srow_x/y/z) is singular: it maps the voxels to "
                             "a plane or a line, so they have no position in the patient")
    return {"sizes": sizes, "type": tname, "offset": int(vox_offset),
            "need": int(vox_offset) + n_vox * bits // 8,
            "dtype": np.dtype(tname).newbyteorder(e)}


class _NonFinite:
    """Counts NaN and infinite values of a float image fed as consecutive byte pieces."""

    def __init__(self, h: dict):
        self.start, self.end, self.dtype = h["offset"], h["need"], h["dtype"]
        self.active = self.dtype.kind == "f"
        self.carry = b""
        self.count = 0

    def feed(self, pos: int, buf: bytes) -> None:
        if not self.active:
            return
        lo, hi = max(pos, self.start), min(pos + len(buf), self.end)
        if hi <= lo:
            return
        part = self.carry + buf[lo - pos:hi - pos]
        n = len(part) // self.dtype.itemsize * self.dtype.itemsize
        values = np.frombuffer(part[:n], dtype=self.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.carry = part[n:]


def _nifti_size_check(path: Path, h: dict, total: int, warnings: list[str]) -> None:
    if total < h["need"]:
        raise InputError(path, f"dim {_dims_text(h['sizes'])} needs "
                         f"{h['need'] - h['offset']} bytes of {h['type']} after vox_offset "
                         f"{h['offset']} but {path.name} holds {max(0, total - h['offset'])} "
                         "(truncated, or a wrong dim)")
    if total > h["need"]:
        warnings.append(f"{path.name}: {total - h['need']} bytes after the image data that dim "
                        f"{_dims_text(h['sizes'])} describes")


def _nifti_check(path: Path, *, deep: bool) -> list[str]:
    warnings: list[str] = []
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            gzipped = _is_gzip_name(path) and magic == b"\x1f\x8b"
            if _is_gzip_name(path) and not gzipped:
                warnings.append(f"{path.name} is named .nii.gz but is not gzip-compressed")
            with (gzip.GzipFile(fileobj=fh) if gzipped else contextlib.nullcontext(fh)) as src:
                head = src.read(540)
                h = _nifti_parse(path, head)
                if not deep:
                    if gzipped:
                        return warnings
                    total = os.fstat(fh.fileno()).st_size
                else:
                    # read to the end: a gzip stream cut short or corrupt fails here, and
                    # NaN/Inf voxels are counted (ITK's NIfTI reader turns them into 0)
                    nonfinite = _NonFinite(h)
                    nonfinite.feed(0, head)
                    total = len(head)
                    limit = h["need"] + _TRAILING_LIMIT
                    while True:
                        buf = src.read(_CHUNK)
                        if not buf:
                            break
                        nonfinite.feed(total, buf)
                        total += len(buf)
                        if total > limit:
                            raise InputError(path, f"more than {_TRAILING_LIMIT} bytes after the "
                                             "image data that dim describes")
    except EOFError as e:
        raise InputError(path, "truncated: the gzip stream ends early (the file was cut short)"
                         ) from e
    except (zlib.error, gzip.BadGzipFile) as e:
        raise InputError(path, f"corrupt gzip data ({e})") from e
    except OSError as e:
        raise InputError(path, f"cannot read the file ({e.strerror or e})") from e
    _nifti_size_check(path, h, total, warnings)
    if deep and nonfinite.count:
        raise InputError(path, f"{nonfinite.count} voxel(s) are NaN or infinite; expected HU "
                         "values")
    return warnings
