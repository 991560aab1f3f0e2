"""MetaImage files (``.mhd``/``.raw``, ``.mha``) checked before SimpleITK reads them: the text
header, the data files it names, and their sizes.  Every problem is an
:class:`~lungcad.errors.InputError` that names the file and what is wrong.

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
"""
from __future__ import annotations

import math
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.io.itk_limits import _CHUNK, MAX_VOXELS, _dims_text, _orthonormal

_HEADER_LIMIT = 1 << 16          # a MetaImage header (and a LIST) must end within 64 KiB
_LINE_LIMIT = 499                # MetaIO reads a value with getline(..., 500)
_MAX_LIST_FILES = 100_000

#: Bytes per element of MetaIO's scalar ElementTypes (metaTypes.h: MET_LONG is 32-bit).
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_C_SPACE = " \t\n\v\f\r"  # C's isspace; Python's str.split() also splits on \x1c-\x1f


def _words(text: str) -> list[str]:
    return [w for w in re.split(f"[{_C_SPACE}]+", text) if w]


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
