"""ITK and NIfTI files (``.mhd``/``.raw``, ``.mha``, ``.nii``, ``.nii.gz``) read with SimpleITK.

SimpleITK gives origin, spacing and direction in the LPS patient frame for every format
(it converts NIfTI's RAS for us).  These files carry no patient or series identifiers, so the
file stem stands for both: LUNA16 names each ``.mhd`` by its SeriesInstanceUID.

Every file is checked here before SimpleITK reads it, and every problem is an
:class:`~lungcad.errors.InputError` that names the file and what is wrong.  Nothing else
leaves :func:`read_itk_info` or :func:`load_itk`.  SimpleITK is told which reader to use
(``MetaImageIO`` or ``NiftiImageIO``, from the suffix), so a file is never read as another
format because of its content.

MetaImage (``.mhd``, ``.mha``)
    The text header (``Key = Value`` lines, ended by ``ElementDataFile``) is parsed here, with
    MetaIO's own rules: ``=`` or ``:`` separate key and value, keys are case-sensitive.  A line
    that is not ``Key = Value``, an empty value, a line over 499 characters, or a key spelt like
    ``ElementDataFile`` in another case is refused, because MetaIO would read such a header
    differently from the way it looks.

    * **Data files named inside the header** (``ElementDataFile``, each line after ``LIST``,
      each file of a ``name%03d.raw min max step`` pattern) must lie in the folder of the header
      or below it.  An absolute path (``/etc/passwd``, ``~/x``, ``C:\\x``), a name with a
      ``..`` component or with control characters is refused before anything is opened.
      ``..`` is refused even where the normalised path would stay inside, because the kernel
      resolves ``..`` after following symlinks.  Symlinks inside the input tree are followed
      as usual: the rule is about the text written in the file.  ``LOCAL`` (data after the
      header, ``.mha``) is always fine.  A data file must be a regular file.
    * ``NDims`` is 3; ``DimSize`` three positive integers, at most :data:`MAX_VOXELS` voxels;
      ``ElementType`` a scalar type (``MET_UCHAR`` ... ``MET_DOUBLE``);
      ``ElementNumberOfChannels`` 1; ``ElementSpacing`` (or ``ElementSize``) present, finite and
      positive; ``Offset``/``Origin``/``Position`` finite; ``TransformMatrix``/``Rotation``/
      ``Orientation`` finite and orthonormal within :data:`ORTHONORMAL_TOL`;
      ``BinaryData`` true.
    * **Sizes before reading.**  Uncompressed: the bytes after ``HeaderSize`` equal
      prod(DimSize) x bytes per element exactly (``HeaderSize = -1``: at least that many).
      Compressed: ``CompressedDataSize`` equals the bytes stored, and :func:`load_itk` checks
      that the zlib stream ends exactly where prod(DimSize) x bytes per element are out.
      The multi-file forms must name exactly one file per slice (per volume for ``LIST 3D``),
      each newline-terminated in a ``LIST``; a pattern needs whole numbers, a step >= 1 and one
      ``%d``-like conversion (MetaIO would divide by a zero step, or pass ``%s`` to printf).
      A data file ``x.raw`` that is missing is looked for as ``x.raw.gz`` (as MetaIO does).

NIfTI (``.nii``, ``.nii.gz``; single-file NIfTI-1: SimpleITK's reader does not read NIfTI-2)
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
import gzip
import logging
import math
import os
import re
import stat
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lungcad.errors import InputError
from lungcad.io.c_library_output import _c_library_output
from lungcad.io.dicom_decode import HU_AIR
from lungcad.io.write_volume import ITK_SUFFIXES
from lungcad.volume import CTVolume

__all__ = ["is_itk_file", "itk_stem", "read_itk_info", "load_itk", "capture_sitk_messages",
           "MAX_VOXELS", "ORTHONORMAL_TOL"]

log = logging.getLogger(__name__)

#: The most voxels a header may claim (1024^3); checked before anything is allocated.
MAX_VOXELS = 2**30
#: How far the direction cosines may be from orthonormal (max |D^T D - I|).
ORTHONORMAL_TOL = 1e-3

_HU_MIN, _HU_MAX = int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max)
_HEADER_LIMIT = 1 << 16          # a MetaImage header (and a LIST) must end within 64 KiB
_LINE_LIMIT = 499                # MetaIO reads a value with getline(..., 500)
_MAX_LIST_FILES = 100_000
_TRAILING_LIMIT = 16 << 20       # bytes after a NIfTI's image data before it is refused
_CHUNK = 1 << 20

_METAIMAGE_SUFFIXES = (".mhd", ".mha")

#: Bytes per element of MetaIO's scalar ElementTypes (metaTypes.h: MET_LONG is 32-bit).
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}
#: NIfTI datatype code -> (name, bits) for the real scalar types.
_NIFTI_TYPES = {
    2: ("uint8", 8), 4: ("int16", 16), 8: ("int32", 32), 16: ("float32", 32),
    64: ("float64", 64), 256: ("int8", 8), 512: ("uint16", 16), 768: ("uint32", 32),
    1024: ("int64", 64), 1280: ("uint64", 64),
}
_NIFTI_OTHER = {1: "binary", 32: "complex64", 128: "RGB24", 1536: "float128",
                1792: "complex128", 2048: "complex256", 2304: "RGBA32"}

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_C_SPACE = " \t\n\v\f\r"  # C's isspace; Python's str.split() also splits on \x1c-\x1f


def _words(text: str) -> list[str]:
    return [w for w in re.split(f"[{_C_SPACE}]+", text) if w]


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
# Small helpers
# --------------------------------------------------------------------------------------------

def _dims_text(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def _orthonormal(m: np.ndarray) -> bool:
    if not np.all(np.isfinite(m)) or np.abs(m).max() > 2:
        return False
    return bool(np.abs(m.T @ m - np.eye(m.shape[0])).max() <= ORTHONORMAL_TOL)


def _file_size(path: Path, name: str, what: str) -> int:
    try:
        st = os.stat(name)
    except OSError as e:
        raise InputError(path, f"{what} {os.path.basename(name)} cannot be read "
                         f"({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, f"{what} {os.path.basename(name)} is not a regular file")
    return int(st.st_size)


# --------------------------------------------------------------------------------------------
# MetaImage
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Chunk:
    """One stretch of stored pixel data that MetaIO will read."""

    file: str                 # the path MetaIO opens
    offset: int               # where the data start; -1: the last ``nbytes`` of the file
    nbytes: int               # uncompressed bytes it must give
    compressed: bool
    stored: int               # bytes stored (compressed size, or what follows ``offset``)


@dataclass(frozen=True)
class _MetaHeader:
    fields: dict[str, str]
    data_offset: int          # file position just after the ElementDataFile line


def _lines_after(path: Path, offset: int, n: int) -> list[bytes]:
    """Up to ``n`` lines after ``offset`` (the file names of a LIST), split on newlines."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read(n * (_LINE_LIMIT + 2))
    except OSError as e:
        raise InputError(path, f"cannot read the LIST ({e.strerror or e})") from e
    return text.split(b"\n", n)


#: MetaImage keys whose number of values depends on NDims: MetaIO reads them only after it.
_AFTER_NDIMS = frozenset({"DimSize", "ElementSpacing", "ElementSize", "Offset", "Position", "Origin",
                          "TransformMatrix", "Rotation", "Orientation", "CenterOfRotation"})


def _metaimage_header(path: Path) -> _MetaHeader:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_LIMIT + 1)
    except OSError as e:
        raise InputError(path, f"cannot read the header ({e.strerror or e})") from e
    if not head:
        raise InputError(path, "empty file")
    fields: dict[str, str] = {}
    pos, lineno = 0, 0
    while True:
        if pos >= min(len(head), _HEADER_LIMIT):
            if len(head) > _HEADER_LIMIT:
                raise InputError(path, f"no ElementDataFile in the first {_HEADER_LIMIT} bytes; "
                                 "not a MetaImage header?")
            raise InputError(path, "the header ends without ElementDataFile; "
                             "not a complete MetaImage header")
        end = head.find(b"\n", pos)
        if end < 0 and len(head) > _HEADER_LIMIT:
            raise InputError(path, f"no ElementDataFile in the first {_HEADER_LIMIT} bytes; "
                             "not a MetaImage header?")
        nxt = len(head) if end < 0 else end + 1
        raw = head[pos:nxt].rstrip(b"\n")
        lineno += 1
        pos = nxt
        if len(raw) > _LINE_LIMIT:
            raise InputError(path, f"header line {lineno} is longer than {_LINE_LIMIT} "
                             "characters (MetaIO's limit); not a MetaImage header?")
        text = raw.decode("latin-1").rstrip("\r")
        if "\r" in text or "\x00" in text:
            raise InputError(path, f"header line {lineno} holds a carriage return or NUL byte "
                             "inside it; not a MetaImage header?")
        if not text.strip():
            continue
        m = re.match(r"^\s*([^=:]*)[=:](.*)$", text)
        if m is None or not m.group(1).strip():
            shown = text.strip()[:40]
            raise InputError(path, f"header line {lineno} is not 'Key = Value' "
                             f"(received {shown!r}); not a MetaImage header?")
        # MetaIO trims blanks around a key, skips separators and blanks (space, tab) before a
        # value, and strips trailing blanks and non-printables off it.  Other white space
        # (older MetaIO versions skip it too) is left in, and so refused below.
        key = m.group(1).strip(" \t")
        value = re.sub(r"[\x00-\x20\x7f-\xff]+$", "", m.group(2).lstrip(" \t=:"))
        if not re.fullmatch(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?", key):
            raise InputError(path, f"header line {lineno}: the key {key!r} is not printable "
                             "ASCII; not a MetaImage header?")
        if not value:
            raise InputError(path, f"{key} has no value (line {lineno}); MetaIO would take the "
                             "next line as its value")
        if key == "ElementDataFile":
            fields[key] = value
            return _MetaHeader(fields, nxt)
        if key.lower() == "elementdatafile":
            raise InputError(path, f"'{key}' (line {lineno}) must be spelt ElementDataFile")
        if key in fields:
            # MetaIO reads the first, a checker the last: one header, two meanings
            raise InputError(path, f"the key {key} is given twice (line {lineno})")
        if key in _AFTER_NDIMS and "NDims" not in fields:
            raise InputError(path, f"{key} (line {lineno}) comes before NDims; MetaIO needs "
                             "NDims first to read it")
        fields[key] = value


def _numbers(path: Path, fields: dict, key: str, n: int, *, integer=False) -> list[float] | None:
    if key not in fields:
        return None
    words = _words(fields[key])
    if len(words) != n or not all(_NUMBER.match(w) for w in words):
        raise InputError(path, f"{key} needs {n} finite number(s). Received {fields[key]!r}")
    vals = [float(w) for w in words]
    if not all(math.isfinite(v) for v in vals):
        raise InputError(path, f"{key} needs {n} finite number(s). Received {fields[key]!r}")
    if integer and not all(v.is_integer() for v in vals):
        raise InputError(path, f"{key} needs {n} integer(s). Received {fields[key]!r}")
    return vals


def _flag(fields: dict, key: str, default: bool) -> bool:
    v = fields.get(key)
    return default if v is None else v[:1] in ("T", "t", "1")


def _data_file(path: Path, name_text: str, what: str) -> str:
    """The path MetaIO opens for ``name_text`` written in ``path``; refuses one outside."""
    name = os.fsdecode(name_text.encode("latin-1"))
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError(path, f"{what} {name!r} holds control characters")
    if name.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise InputError(path, f"{what} {name!r} is an absolute path; lungcad reads only data "
                         f"files in the folder of {path.name} (a header may not point at other "
                         "files)")
    parts = re.split(r"[/\\]+", name)
    if ".." in parts:
        raise InputError(path, f"{what} {name!r} leaves the folder of {path.name} ('..'); "
                         "lungcad reads only data files in that folder or below it")
    folder = os.path.dirname(os.fspath(path))
    full = os.path.join(folder, name)
    base = os.path.abspath(folder or os.curdir)
    if os.path.commonpath([base, os.path.abspath(full)]) != base:
        raise InputError(path, f"{what} {name!r} leaves the folder of {path.name}")
    return full


def _metaimage_plan(path: Path) -> tuple[list[_Chunk], list[str]]:
    """Check a MetaImage header and its data files' sizes; the chunks MetaIO will read."""
    hdr = _metaimage_header(path)
    f = hdr.fields
    warnings: list[str] = []
    ndims = _numbers(path, f, "NDims", 1, integer=True)
    if ndims is None:
        raise InputError(path, "no NDims in the header")
    if ndims[0] != 3:
        raise InputError(path, f"NDims is {int(ndims[0])}; expected a 3-D CT image")
    dims = _numbers(path, f, "DimSize", 3, integer=True)
    if dims is None:
        raise InputError(path, "no DimSize in the header")
    dims = [int(d) for d in dims]
    if min(dims) < 1:
        raise InputError(path, f"DimSize {_dims_text(dims)} has a size below 1")
    n_vox = math.prod(dims)
    if n_vox > MAX_VOXELS:
        raise InputError(path, f"DimSize {_dims_text(dims)} is {n_vox} voxels, more than "
                         f"lungcad's limit of {MAX_VOXELS}")
    etype = f.get("ElementType")
    if etype is None:
        raise InputError(path, "no ElementType in the header")
    if etype not in _MET_SIZES:
        raise InputError(path, f"ElementType {etype!r} is not a scalar MetaImage type; expected "
                         f"one of {', '.join(_MET_SIZES)}")
    channels = _numbers(path, f, "ElementNumberOfChannels", 1, integer=True) or [1.0]
    if channels[0] != 1:
        raise InputError(path, f"ElementNumberOfChannels is {int(channels[0])}; a CT image has "
                         "one value per voxel")
    if not _flag(f, "BinaryData", True):
        raise InputError(path, "BinaryData = False (text pixel data) is not supported")
    spacing = _numbers(path, f, "ElementSpacing", 3)
    size = _numbers(path, f, "ElementSize", 3)
    for key, vals in (("ElementSpacing", spacing), ("ElementSize", size)):
        if vals is not None and min(vals) <= 0:
            raise InputError(path, f"{key} must be positive mm. Received {f[key]!r}")
    if spacing is None and size is None:
        raise InputError(path, "no ElementSpacing in the header: the voxel size is unknown")
    for key in ("Offset", "Origin", "Position", "ImagePosition", "CenterOfRotation"):
        _numbers(path, f, key, 3)
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        vals = _numbers(path, f, key, 9)
        if vals is not None and not _orthonormal(np.array(vals).reshape(3, 3)):
            raise InputError(path, f"{key} is not orthonormal (a rotation or flip). "
                             f"Received {f[key]!r}")
    header_size = _numbers(path, f, "HeaderSize", 1, integer=True)
    header_size = 0 if header_size is None else int(header_size[0])
    if not -1 <= header_size < 2**31:
        raise InputError(path, f"HeaderSize is {header_size}; expected -1 or a size from 0 to "
                         "2^31 - 1 bytes")
    compressed = _flag(f, "CompressedData", False)
    csize = _numbers(path, f, "CompressedDataSize", 1, integer=True)
    csize = None if csize is None or csize[0] == 0 else int(csize[0])
    if csize is not None and csize < 0:
        raise InputError(path, f"CompressedDataSize is {csize}")
    elem = _MET_SIZES[etype]
    what = f"of {etype}"

    value = f["ElementDataFile"]
    words = _words(value)
    # (file, elements in it) for every data file, in the order MetaIO reads them
    if value in ("LOCAL", "Local", "local"):
        files = [(os.fspath(path), n_vox)]
        local = True
    elif value.startswith("LIST"):
        local = False
        if words[0] != "LIST" or len(words) > 2:
            raise InputError(path, f"ElementDataFile {value!r}: expected LIST, LIST 2D or LIST 3D")
        file_dim = 2
        if len(words) == 2:
            m = re.match(r"^([123])[dD]?$", words[1])
            if m is None:
                raise InputError(path, f"ElementDataFile {value!r}: expected LIST, LIST 2D or "
                                 "LIST 3D")
            file_dim = int(m.group(1))
        per_file = math.prod(dims[:file_dim])
        n_files = math.prod(dims[file_dim:])
        if n_files > _MAX_LIST_FILES:
            raise InputError(path, f"LIST of {n_files} files is more than {_MAX_LIST_FILES}")
        lines = _lines_after(path, hdr.data_offset, n_files)
        names = []
        for i in range(n_files):
            # MetaIO skips a last line without a newline: every name must end in one
            if i >= len(lines) - 1:
                raise InputError(path, f"ElementDataFile LIST names {len(names)} file(s) but "
                                 f"DimSize {_dims_text(dims)} needs {n_files} (one per line, "
                                 "each ended by a newline)")
            raw = lines[i].decode("latin-1")
            name = re.sub(r"[\s\x00-\x1f\x7f-\xff]+$", "", raw)
            if not name or name != raw.rstrip() or name[:1].isspace():
                raise InputError(path, f"line {i + 1} of the LIST ({raw.strip()[:40]!r}) is not "
                                 "a plain file name")
            names.append(name)
        files = [(_data_file(path, n, "the LIST entry"), per_file) for n in names]
    elif "%" in value:
        local = False
        if len(words) >= 5:
            fmt, nums = " ".join(words[:-3]), words[-3:]
        else:
            fmt, nums = words[0], words[1:]
        if not all(re.match(r"^\d+$", w) for w in nums):
            raise InputError(path, f"ElementDataFile {value!r}: the numbers after the pattern "
                             "must be whole numbers (min max step)")
        if not re.match(r"^[^%]*%0?\d{0,2}[diu][^%]*$", fmt):
            raise InputError(path, f"ElementDataFile pattern {fmt!r}: expected one %d (or "
                             "%03d ...) and no other %")
        dz = dims[2]
        lo, hi, step = 1, dz, 1
        if len(nums) >= 1:
            lo = int(nums[0])
            hi = lo + dz - 1
        if len(nums) >= 2:
            hi = int(nums[1])
            step = (hi - lo) // dz if hi >= lo else 0
        if len(nums) >= 3:
            step = int(nums[2])
        if step < 1 or hi < lo:
            raise InputError(path, f"ElementDataFile {value!r}: needs min <= max and a step of at "
                             f"least 1 (received min {lo}, max {hi}, step {step})")
        numbers = list(range(lo, hi + 1, step))[:dz]
        if len(numbers) != dz:
            raise InputError(path, f"ElementDataFile {value!r} names {len(numbers)} file(s) but "
                             f"DimSize {_dims_text(dims)} needs {dz}, one per slice")
        per_file = dims[0] * dims[1]
        files = [(_data_file(path, fmt % i, "the file"), per_file) for i in numbers]
    else:
        local = False
        full = _data_file(path, value, "ElementDataFile")
        chosen = None
        for ext in ("", ".gz", ".Z"):  # MetaIO's own fallbacks, in its order
            if os.path.exists(full + ext):
                chosen = full + ext
                break
        if chosen is None:
            raise InputError(path, f"ElementDataFile {value} is not in the folder of {path.name}")
        if chosen.endswith(".Z") and chosen != full:
            raise InputError(path, f"{os.path.basename(chosen)}: .Z (LZW) data is not supported")
        if chosen != full:
            compressed = True
        files = [(chosen, n_vox)]

    if compressed and header_size != 0:
        raise InputError(path, "HeaderSize together with CompressedData is not supported")
    if compressed and csize is not None and len(files) > 1:
        raise InputError(path, "CompressedDataSize cannot describe several data files")
    if compressed and local and csize is None:
        raise InputError(path, "CompressedData in the .mha itself needs CompressedDataSize")

    chunks = []
    for name, n_el in files:
        nbytes = n_el * elem
        total = _file_size(path, name, "data file")
        if local:
            start = header_size if header_size > 0 else hdr.data_offset
        else:
            start = header_size if header_size > 0 else 0
        if header_size > 0:
            label = f"{os.path.basename(name)} after its HeaderSize of {header_size}"
        else:
            label = f"{path.name} after its header" if local else os.path.basename(name)
        dims_label = (_dims_text(dims) if n_el == n_vox
                      else f"{_dims_text(dims)} ({n_el} voxels per file)")
        if header_size == -1:
            if total < nbytes:
                raise InputError(path, f"DimSize {dims_label} needs {nbytes} bytes {what} but "
                                 f"{os.path.basename(name)} holds {total}")
            chunks.append(_Chunk(name, -1, nbytes, False, nbytes))
            continue
        if start > total:
            raise InputError(path, f"HeaderSize {start} is beyond the end of "
                             f"{os.path.basename(name)} ({total} bytes)")
        stored = total - start
        if compressed:
            if csize is not None and csize != stored:
                raise InputError(path, f"CompressedDataSize is {csize} but {label} holds "
                                 f"{stored} bytes")
            chunks.append(_Chunk(name, start, nbytes, True, stored))
        else:
            if stored != nbytes:
                raise InputError(path, f"DimSize {dims_label} needs {nbytes} bytes {what} but "
                                 f"{label} holds {stored}")
            chunks.append(_Chunk(name, start, nbytes, False, stored))
    return chunks, warnings


def _check_compressed(path: Path, chunk: _Chunk) -> None:
    """The zlib (or gzip) stream of ``chunk`` ends exactly after ``chunk.nbytes`` bytes."""
    name = os.path.basename(chunk.file)
    d = zlib.decompressobj(47)  # zlib or gzip header, as MetaIO's inflateInit2(47)
    out = 0
    try:
        with open(chunk.file, "rb") as fh:
            fh.seek(chunk.offset)
            remaining = chunk.stored
            while remaining > 0 and not d.eof:
                buf = fh.read(min(_CHUNK, remaining))
                if not buf:
                    break
                remaining -= len(buf)
                while True:
                    piece = d.decompress(buf, _CHUNK)
                    out += len(piece)
                    if out > chunk.nbytes:
                        raise InputError(path, f"the compressed data in {name} give more than the "
                                         f"{chunk.nbytes} bytes DimSize and ElementType need")
                    buf = d.unconsumed_tail
                    if d.eof or (not buf and len(piece) < _CHUNK):
                        break
    except zlib.error as e:
        raise InputError(path, f"the compressed data in {name} are corrupt ({e})") from e
    except OSError as e:
        raise InputError(path, f"cannot read {name} ({e.strerror or e})") from e
    if not d.eof:
        raise InputError(path, f"truncated: the compressed data in {name} end early "
                         f"({out} of {chunk.nbytes} bytes)")
    if out != chunk.nbytes:
        raise InputError(path, f"the compressed data in {name} give {out} bytes but DimSize and "
                         f"ElementType need {chunk.nbytes}")
    extra = len(d.unused_data) + remaining
    if extra:
        raise InputError(path, f"{extra} bytes follow the end of the compressed data in {name}")


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
