"""Mutated scans for the fuzz test (``tests/test_fuzz.py``) and the long campaign
(``benchmarks/fuzz_campaign.py``), issue 20.

One set of mutators serves both.  A mutator takes its random choices from a :class:`Draws`:
:class:`HypothesisDraws` in the test (so that hypothesis can replay and shrink a failure),
:class:`NumpyDraws` in the campaign (a plain seeded loop).

* **Seeds** (:func:`build_seeds`): real files.  A 6-slice 32 x 32 CT series written by
  lungcad's own DICOM writer (plain, with padding, RLE, JPEG 2000, implicit VR without
  preamble, big endian without preamble), Enhanced and classic multi-frame CT files, small
  files of pydicom's own test data, and the same volume as ``.mhd``/``.raw``, ``.mha``
  (plain and zlib), ``.nii`` and ``.nii.gz``.
* **DICOM mutators** (:func:`mutate`): at the element level, from an index of where every
  element, sequence item and pixel-data fragment lies in the file (:func:`index_dicom`):
  set an element to values meant to break a rule (NaN, Inf, negative, text, wrong value
  counts, 65,536 frames, 65535 x 65535 pixels) or to random bytes of a random VR; delete,
  insert, change a VR, a tag or a length field.  At the byte level: bit flips, random bytes,
  truncation, runs of bytes inserted, deleted or repeated.  At the series level: a file
  deleted, duplicated, or a junk ``.dcm`` added.
* **MetaImage mutators**: header lines dropped, duplicated, reordered, recased or replaced
  (DimSize, ElementSpacing, ElementType, ElementDataFile, Offset, TransformMatrix, HeaderSize,
  compression...), data files cut or grown, and ``ElementDataFile`` pointed at sentinel files
  outside the case folder (``../outside/...``, absolute paths, ``LIST``, ``%03d`` patterns).
* **NIfTI mutators**: header fields (dim, pixdim, bitpix, datatype, vox_offset, scl_*,
  qform/sform, magic, sizeof_hdr), bytes and truncation, before or after gzip.

``tests/fuzz_harness.py`` runs lungcad's readers on a written case and judges the outcome.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
import pydicom.config
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from lungcad.io import write_dicom_multiframe, write_dicom_series, write_itk
from lungcad.volume import CTVolume

__all__ = ["Draws", "NumpyDraws", "HypothesisDraws", "Seed", "Case", "build_seeds",
           "plant_sentinels", "mutate", "write_case", "index_dicom", "SYNTH_DICOM",
           "PYDICOM_FILES", "METAIMAGE", "NIFTI", "SENTINEL_HU"]

#: What the sentinel files outside a case hold: a volume of this HU would mean lungcad read them.
SENTINEL_HU = 4321

SHAPE = (6, 32, 32)
SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-10.0, 20.0, -300.0)
SERIES_UID = "1.2.826.0.1.3680043.8.498.2020.1"

#: The synthetic DICOM seeds (series folders and multi-frame files).
SYNTH_DICOM = ("series", "series_padded", "series_rle", "series_j2k", "series_implicit_nometa",
               "series_bigendian_nometa", "enhanced", "enhanced_rle", "classic_multiframe")
#: pydicom's own test files used as seeds (those that are installed; each alone in a folder),
#: and "ct_small_series": CT_small.dcm as a 3-slice series.
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                 "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm",
                 "JPGExtended.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm",
                 "rtdose.dcm", "rtdose_rle.dcm", "liver_1frame.dcm", "image_dfl.dcm",
                 "SC_rgb_rle_2frame.dcm", "SC_rgb_small_odd.dcm", "badVR.dcm",
                 "UN_sequence.dcm", "rtplan.dcm", "reportsi.dcm", "nested_priv_SQ.dcm",
                 "empty_charset_LEI.dcm", "MR_truncated.dcm", "no_meta_group_length.dcm",
                 "meta_missing_tsyntax.dcm", "ct_small_series")
METAIMAGE = ("mhd", "mhd_zraw", "mha", "mha_z")
NIFTI = ("nii", "nii_gz", "nii_float")


# ============================================================================= random choices

class Draws:
    """Where a mutator takes its random choices from."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer from ``lo`` to ``hi`` inclusive (shrinks towards ``lo``)."""
        raise NotImplementedError

    def blob(self, n: int) -> bytes:
        raise NotImplementedError

    def choice(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        """True with probability ``p`` (shrinks towards False)."""
        return self.integer(0, 999) >= round(1000 * (1 - p))

    def real(self) -> float:
        """A float of any magnitude and sign (not NaN or Inf)."""
        return self.integer(-10**6, 10**6) / self.integer(1, 1000) * 10.0 ** self.integer(-3, 3)


class NumpyDraws(Draws):
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi, endpoint=True))

    def blob(self, n):
        return self.rng.bytes(n)


class HypothesisDraws(Draws):
    def __init__(self, data):
        from hypothesis import strategies as st

        self._data, self._st, self._cache = data, st, {}

    def integer(self, lo, hi):
        s = self._cache.get((lo, hi))
        if s is None:
            s = self._cache[(lo, hi)] = self._st.integers(lo, hi)
        return self._data.draw(s)

    def blob(self, n):
        return self._data.draw(self._st.binary(min_size=n, max_size=n))


# ===================================================================================== seeds

@dataclass
class Seed:
    """Real files that mutations start from.

    files : relative path -> bytes, as written into a case folder
    target : the file the loaders are given ("" for the folder: a DICOM series)
    mutable : the files that mutations touch
    """

    name: str
    kind: str  # "dicom", "metaimage" or "nifti"
    files: dict[str, bytes]
    target: str = ""
    mutable: tuple[str, ...] = ()
    slices: dict[str, bytes] = field(default_factory=dict)  # MetaImage: the volume's slices


@dataclass
class Case:
    """One mutated input: the files of a case folder and what was done to them."""

    seed: str
    kind: str
    files: dict[str, bytes]
    target: str
    notes: list[str] = field(default_factory=list)
    mutated: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.seed}: " + "; ".join(self.notes)


def _volume(series_uid: str = SERIES_UID) -> CTVolume:
    rng = np.random.default_rng(20)
    hu = rng.integers(-1000, 500, size=SHAPE).astype(np.int16)
    return CTVolume(hu, SPACING, ORIGIN, patient_id="FUZZ", series_uid=series_uid)


@contextlib.contextmanager
def lenient_pydicom():
    """Let pydicom write (and read back) values its validation refuses: NaN, 0, odd UIDs."""
    s = pydicom.config.settings
    old = s.reading_validation_mode, s.writing_validation_mode
    s.reading_validation_mode = s.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        s.reading_validation_mode, s.writing_validation_mode = old


def bare_dataset(path: Path, *, little: bool, implicit: bool) -> bytes:
    """The data set of ``path`` without preamble and file meta, in the given encoding."""
    ds = pydicom.dcmread(path)
    if not little:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = little, implicit
    write_dataset(buf, pydicom.Dataset(ds))
    return buf.getvalue()


def _read_all(paths: Sequence[Path], base: Path) -> dict[str, bytes]:
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in paths}


def _dicom_seeds(folder: Path) -> list[Seed]:
    vol = _volume()
    out = []

    def series(name, **kw):
        d = folder / name
        files = write_dicom_series(vol, d, shuffle_names=False, **kw)
        return d, files

    for name, kw in (("series", {}), ("series_rle", {"compress": "rle"}),
                     ("series_j2k", {"compress": "jpeg2000"})):
        d, files = series(name, **kw)
        data = _read_all(files, d)
        out.append(Seed(name, "dicom", data, "", tuple(data)))
    yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
    fov = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 15 ** 2
    d, files = series("series_padded", rescale_intercept=-1000, fov_mask=fov)
    data = _read_all(files, d)
    out.append(Seed("series_padded", "dicom", data, "", tuple(data)))
    d, files = series("series_src")
    for name, little, implicit in (("series_implicit_nometa", True, True),
                                   ("series_bigendian_nometa", False, False)):
        data = {f.stem: bare_dataset(f, little=little, implicit=implicit) for f in files}
        out.append(Seed(name, "dicom", data, "", tuple(data)))
    for name, kw in (("enhanced", {}), ("enhanced_rle", {"compress": "rle"}),
                     ("classic_multiframe", {"enhanced": False})):
        p = write_dicom_multiframe(vol, folder / name / "MF.dcm", **kw)
        out.append(Seed(name, "dicom", {"MF.dcm": p.read_bytes()}, "MF.dcm", ("MF.dcm",)))
    return out


def _pydicom_seeds(folder: Path) -> list[Seed]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "download failures" for files not installed
        for name in PYDICOM_FILES:
            if name == "ct_small_series":
                continue
            src = get_testdata_file(name, download=False)
            if src is None:
                continue
            out.append(Seed(name, "dicom", {name: Path(src).read_bytes()}, name, (name,)))
        src = get_testdata_file("CT_small.dcm", download=False)
    if src is not None:  # CT_small (a GE header) as a 3-slice series
        files = {}
        with lenient_pydicom():
            for k in range(3):
                ds = pydicom.dcmread(src)
                ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
                    float(ds.ImagePositionPatient[2]) + 5.0 * k]
                ds.InstanceNumber = k + 1
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES_UID}.9.{k}"
                p = folder / "ct_small_series" / f"CT{k}.dcm"
                p.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(p)
                files[p.name] = p.read_bytes()
        out.append(Seed("ct_small_series", "dicom", files, "", tuple(files)))
    return out


def _itk_seeds(folder: Path) -> list[Seed]:
    import SimpleITK as sitk

    vol = _volume()
    vol.direction = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
    out = []
    d = folder / "itk"
    d.mkdir(parents=True, exist_ok=True)
    write_itk(vol, d / "scan.mhd")
    write_itk(vol, d / "scan.mha")
    write_itk(vol, d / "scan.nii")
    write_itk(vol, d / "scan.nii.gz")
    img = sitk.GetImageFromArray(vol.hu)
    img.SetSpacing(vol.spacing[::-1])
    sitk.WriteImage(img, str(d / "z.mhd"), useCompression=True)
    sitk.WriteImage(img, str(d / "z.mha"), useCompression=True)
    fimg = sitk.GetImageFromArray(vol.hu.astype(np.float32))
    fimg.SetSpacing(vol.spacing[::-1])
    sitk.WriteImage(fimg, str(d / "float.nii"))
    # the slices of the volume, for LIST and %03d patterns that stay inside the case folder
    slices = {f"s{k + 1:03d}.raw": vol.hu[k].tobytes() for k in range(SHAPE[0])}
    raw = (d / "scan.raw").read_bytes()
    out.append(Seed("mhd", "metaimage", {"scan.mhd": (d / "scan.mhd").read_bytes(),
                                         "scan.raw": raw}, "scan.mhd", ("scan.mhd", "scan.raw")))
    out.append(Seed("mhd_zraw", "metaimage", {"z.mhd": (d / "z.mhd").read_bytes(),
                                              "z.zraw": (d / "z.zraw").read_bytes()},
                    "z.mhd", ("z.mhd", "z.zraw")))
    out.append(Seed("mha", "metaimage", {"scan.mha": (d / "scan.mha").read_bytes()}, "scan.mha",
                    ("scan.mha",)))
    out.append(Seed("mha_z", "metaimage", {"z.mha": (d / "z.mha").read_bytes()}, "z.mha",
                    ("z.mha",)))
    for s in out:
        s.slices = slices
    out.append(Seed("nii", "nifti", {"scan.nii": (d / "scan.nii").read_bytes()}, "scan.nii",
                    ("scan.nii",)))
    out.append(Seed("nii_gz", "nifti", {"scan.nii.gz": (d / "scan.nii.gz").read_bytes()},
                    "scan.nii.gz", ("scan.nii.gz",)))
    out.append(Seed("nii_float", "nifti", {"float.nii": (d / "float.nii").read_bytes()},
                    "float.nii", ("float.nii",)))
    return out


def build_seeds(folder: str | os.PathLike) -> dict[str, Seed]:
    """Write the seeds under ``folder`` (deterministic) and return them by name."""
    folder = Path(folder)
    seeds = _dicom_seeds(folder) + _pydicom_seeds(folder) + _itk_seeds(folder)
    return {s.name: s for s in seeds}


def plant_sentinels(outside: str | os.PathLike) -> Path:
    """Files outside every case folder, of the sizes a hostile header would need: a volume,
    its slices, and a NIfTI, all of :data:`SENTINEL_HU`."""
    outside = Path(outside)
    outside.mkdir(parents=True, exist_ok=True)
    vol = np.full(SHAPE, SENTINEL_HU, dtype=np.int16)
    vol.tofile(outside / "sentinel.raw")
    for k in range(SHAPE[0]):
        vol[k].tofile(outside / f"s{k + 1:03d}.raw")
    return outside


# ============================================================================ DICOM: index

_UNDEF = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_TS = 0x00020010
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD",
        "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
        "UL", "UN", "UR", "US", "UT", "UV")


@dataclass(frozen=True)
class Element:
    """Where one element (or sequence item, or pixel-data fragment) lies in a file."""

    tag: int
    vr: str
    start: int          # offset of its tag
    value_start: int
    length: int         # the value length as written (0xFFFFFFFF: undefined)
    end: int            # just after it (after its items and delimiter for an undefined length)
    length_at: int      # offset of its length field
    length_size: int    # 2 or 4
    implicit: bool
    little: bool
    enclosing: tuple[int, ...] = ()  # 4-byte defined lengths of the sequences/items around it
    depth: int = 0

    @property
    def name(self) -> str:
        if self.tag == _ITEM:
            return "item"
        return keyword_for_tag(self.tag) or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


def _dict_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" ")[0]
    except KeyError:
        return "UN"


class _Walker:
    def __init__(self, data: bytes):
        self.data = data
        self.out: list[Element] = []
        self.budget = 5000

    def elements(self, pos, end, implicit, little, enclosing, depth, *, meta=False) -> int:
        data, o = self.data, "<" if little else ">"
        end = min(end, len(data))
        while pos + 8 <= end and self.budget > 0:
            self.budget -= 1
            g, e = struct.unpack_from(o + "HH", data, pos)
            if g == 0xFFFE or (meta and g != 2):
                break
            tag = g << 16 | e
            if implicit:
                vr = _dict_vr(tag)
                la, ls, vs = pos + 4, 4, pos + 8
            else:
                vr = data[pos + 4:pos + 6].decode("latin-1")
                if vr in _LONG_VRS:
                    la, ls, vs = pos + 8, 4, pos + 12
                else:
                    la, ls, vs = pos + 6, 2, pos + 8
            if vs > end:
                break
            length = int.from_bytes(data[la:la + ls], "little" if little else "big")
            if length == _UNDEF or vr == "SQ":
                inner = enclosing + ((la,) if length != _UNDEF else ())
                stop = end if length == _UNDEF else min(end, vs + length)
                if tag == _PIXEL_DATA:
                    p = self.fragments(vs, stop, inner, depth)
                else:
                    p = self.items(vs, stop, implicit, little, inner, depth + 1)
                elem_end = p if length == _UNDEF else vs + length
            else:
                elem_end = vs + length
            self.out.append(Element(tag, vr, pos, vs, length, min(elem_end, len(data)), la, ls,
                                    implicit, little, enclosing, depth))
            if elem_end <= pos or elem_end > end:
                break
            pos = elem_end
        return pos

    def items(self, pos, end, implicit, little, enclosing, depth) -> int:
        data, o = self.data, "<" if little else ">"
        while pos + 8 <= end and self.budget > 0:
            self.budget -= 1
            g, e, length = struct.unpack_from(o + "HHI", data, pos)
            tag = g << 16 | e
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM:
                return pos
            self.out.append(Element(_ITEM, "item", pos, pos + 8, length, pos + 8, pos + 4, 4,
                                    implicit, little, enclosing, depth))
            if length == _UNDEF:
                p = self.elements(pos + 8, end, implicit, little, enclosing, depth)
                if p + 8 <= len(data) and struct.unpack_from(o + "HH", data, p) == (0xFFFE, 0xE00D):
                    p += 8
                if p <= pos:
                    return pos
                pos = p
            else:
                self.elements(pos + 8, pos + 8 + length, implicit, little,
                              enclosing + (pos + 4,), depth)
                pos += 8 + length
        return pos

    def fragments(self, pos, end, enclosing, depth) -> int:
        data = self.data
        while pos + 8 <= end and self.budget > 0:
            self.budget -= 1
            g, e, length = struct.unpack_from("<HHI", data, pos)
            tag = g << 16 | e
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM:
                return pos
            self.out.append(Element(_ITEM, "fragment", pos, pos + 8, length,
                                    min(pos + 8 + length, len(data)), pos + 4, 4, False, True,
                                    enclosing, depth + 1))
            pos += 8 + length
        return pos


def index_dicom(data: bytes) -> list[Element]:
    """Every element of a DICOM file (file meta, data set, nested items, fragments), as far as
    the bytes can be walked.  [] when the bytes do not look like DICOM."""
    w = _Walker(data)
    pos = 132 if data[128:132] == b"DICM" else 0
    if len(data) < pos + 8:
        return []
    implicit, little = False, True
    if int.from_bytes(data[pos:pos + 2], "little") == 2:
        pos = w.elements(pos, len(data), False, True, (), 0, meta=True)
        ts = next((data[e.value_start:e.value_start + e.length] for e in w.out if e.tag == _TS),
                  b"").strip(b" \x00").decode("latin-1")
        if ts.endswith(".99"):  # deflated: the data set is not walkable
            return w.out
        implicit = ts == pydicom.uid.ImplicitVRLittleEndian
        little = ts != pydicom.uid.ExplicitVRBigEndian
    else:
        little = int.from_bytes(data[pos:pos + 2], "little") in (2, 8)
        implicit = data[pos + 4:pos + 6].decode("latin-1") not in _VRS
    w.elements(pos, len(data), implicit, little, (), 0)
    return w.out


def _splice(data: bytes, start: int, end: int, new: bytes, el: Element | None,
            fix: bool) -> bytes:
    """``data`` with ``data[start:end]`` replaced by ``new``; the defined lengths of the
    sequences and items around ``el`` adjusted when ``fix``."""
    b = bytearray(data)
    b[start:end] = new
    delta = len(new) - (end - start)
    if fix and delta and el is not None:
        order = "little" if el.little else "big"
        for at in el.enclosing:
            old = int.from_bytes(b[at:at + 4], order)
            if old != _UNDEF:
                b[at:at + 4] = ((old + delta) % 2**32).to_bytes(4, order)
    return bytes(b)


def _encode_element(tag: int, vr: str, value: bytes, *, implicit: bool, little: bool) -> bytes:
    if tag >> 16 == 2:
        implicit, little = False, True
    o = "<" if little else ">"
    head = struct.pack(o + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(o + "I", len(value)) + value
    vrb = vr.encode("latin-1")[:2].ljust(2, b" ")
    if vr in _LONG_VRS:
        return head + vrb + b"\0\0" + struct.pack(o + "I", len(value)) + value
    value = value[:0xFFFE]
    return head + vrb + struct.pack(o + "H", len(value)) + value


# ========================================================================= DICOM: values

_NUMBER_TOKENS = ("0", "1", "-1", "2", "0.7", "2.5", "nan", "NaN", "inf", "-inf", "Infinity",
                  "1e308", "1e309", "-1e300", "1e-320", "65535", "65536", "4294967296",
                  "2147483648", "-2147483649", "1e20", "abc", "", " ", "1,5", "0x10", "+",
                  "--1", "1.5", "9" * 16, "1e5", "-0")
_INTS = (0, 1, 2, 3, 8, 12, 16, 24, 32, 64, 255, 256, 4096, 16384, 16385, 32767, 32768, 65535,
         65536, 2**31 - 1, 2**31, 2**32 - 1, -1, -32768)
_FLOATS = (0.0, 1.0, -1.0, 0.7, float("nan"), float("inf"), float("-inf"), 1e38, 1e300,
           -1e300, 5e-324, 3.5e38)
_UIDS = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
         "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.1.3.10", "1.2.840.10008.1.2",
         "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
         "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80",
         "1.2.840.10008.1.2.1.99", "1.2.3.4.5.6.7.8.9", "1.2.03", "1..2", "abc", "",
         "=HYPERLINK(\"http://x\")", "1." * 40 + "1", SERIES_UID, SERIES_UID + ".7")
_CODES = ("CT", "MR", "OT", "RTDOSE", "", "ORIGINAL\\PRIMARY\\AXIAL",
          "DERIVED\\SECONDARY\\LOCALIZER", "LOCALIZER", "SCOUT", "MONOCHROME2", "MONOCHROME1",
          "RGB", "YBR_FULL_422", "PALETTE COLOR", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87",
          "\\\\\\", "ct", "C T")
_TEXTS = ("P20", "", "=1+1", "@SUM(A1)", "-2+3", "\x00", "a\x00b", "\x1b[31mred", "\r\n",
          "\u00e9t\u00e9", "../../etc/passwd", "x" * 200, "\\", "\udcff")

#: Elements that the readers look at (and a few that they should not depend on).
TARGETS = ("Rows", "Columns", "NumberOfFrames", "PixelSpacing", "ImagePositionPatient",
           "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "SliceThickness",
           "SpacingBetweenSlices", "BitsAllocated", "BitsStored", "HighBit",
           "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
           "PlanarConfiguration", "PixelPaddingValue", "PixelPaddingRangeLimit",
           "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
           "TransferSyntaxUID", "MediaStorageSOPClassUID", "Modality", "PatientID",
           "ImageType", "InstanceNumber", "GridFrameOffsetVector", "ConvolutionKernel",
           "SeriesDescription", "KVP", "SpecificCharacterSet", "PixelData",
           "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
           "PlanePositionSequence", "PixelMeasuresSequence", "FrameType",
           "FileMetaInformationGroupLength")
_TARGET_TAGS = {tag_for_keyword(k): k for k in TARGETS}


def _count_for(tag: int, d: Draws) -> int:
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        vm = "1"
    expected = int(vm) if vm.isdigit() else 1
    return d.choice((expected, expected, expected, 0, 1, 2, 3, 4, 5, 6, 7, 9))


def _draw_text(d: Draws, tag: int, vr: str) -> str:
    if vr in ("DS", "IS"):
        values = []
        for _ in range(_count_for(tag, d)):
            values.append(d.choice(_NUMBER_TOKENS) if d.chance(0.8) else repr(d.real()))
        return "\\".join(values)
    if vr == "UI":
        return d.choice(_UIDS)
    if vr == "CS":
        return d.choice(_CODES)
    return d.choice(_TEXTS)


def _encode_text(text: str, vr: str, d: Draws) -> bytes:
    b = text.encode("utf-8", "surrogateescape")
    if len(b) % 2 and d.chance(0.9):
        b += b"\0" if vr == "UI" else b" "
    return b


_BINARY = {"US": ("H", 2**16), "SS": ("h", 2**16), "UL": ("I", 2**32), "SL": ("i", 2**32),
           "AT": ("I", 2**32), "FL": ("f", None), "FD": ("d", None), "UV": ("Q", 2**64),
           "SV": ("q", 2**64)}


def _encode_binary(vr: str, values: list, little: bool) -> bytes:
    fmt, mod = _BINARY[vr]
    o = "<" if little else ">"
    out = b""
    for v in values:
        if mod is None:
            out += struct.pack(o + fmt, float(v))
        else:
            u = int(v) % mod
            if fmt.islower() and u >= mod // 2:
                u -= mod
            out += struct.pack(o + fmt, u)
    return out


@dataclass(frozen=True)
class _Value:
    """A value drawn once, encoded for each file (its byte order)."""

    vr: str
    text: bytes | None = None
    numbers: tuple = ()
    raw: bytes | None = None

    def encode(self, little: bool) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.text is not None:
            return self.text
        return _encode_binary(self.vr, list(self.numbers), little)

    def shown(self) -> str:
        if self.raw is not None:
            return f"{len(self.raw)} random bytes"
        if self.text is not None:
            return repr(self.text.decode("latin-1"))[:60]
        return repr(self.numbers)[:60]


def _draw_value(d: Draws, tag: int) -> _Value:
    if d.chance(0.15):  # a random VR and random bytes
        vr = d.choice(_VRS + ("ZZ", "\0\0", "  ", "sq"))
        n = d.choice((0, 1, 2, 3, 4, 6, 8, 12, 64)) if d.chance(0.8) else d.integer(0, 300)
        return _Value(vr, raw=d.blob(n))
    vr = _dict_vr(tag)
    if vr in _BINARY:
        if d.chance(0.15):  # a wrong byte count
            return _Value(vr, raw=d.blob(d.choice((0, 1, 3, 5))))
        n = d.choice((1, 1, 1, 1, 0, 2, 3))
        if vr in ("FL", "FD"):
            return _Value(vr, numbers=tuple(d.choice(_FLOATS) for _ in range(n)))
        return _Value(vr, numbers=tuple(d.choice(_INTS) for _ in range(n)))
    if vr in ("OB", "OW", "OF", "OD", "OL", "UN", "SQ", "OV", "UT", "LT"):
        return _Value(vr, raw=d.blob(d.choice((0, 1, 2, 4, 8, 16, 100))))
    return _Value(vr, text=_encode_text(_draw_text(d, tag, vr), vr, d))


# ======================================================================== DICOM: mutators

Edit = Callable[[bytes], bytes]


def _pick_element(d: Draws, els: list[Element], *, targets_only: bool) -> Element | None:
    pool = [e for e in els if e.tag in _TARGET_TAGS] if targets_only else els
    return d.choice(pool) if pool else None


def _find(els: list[Element], tag: int, depth: int | None) -> list[Element]:
    return [e for e in els if e.tag == tag and (depth is None or e.depth == depth)]


def _edit_element(d: Draws, first: bytes) -> tuple[Edit, str] | None:
    """An element-level edit drawn against the file ``first`` (applied to every target file
    that has the same element)."""
    els = index_dicom(first)
    if not els:
        return None
    op = d.choice(("set", "set", "set", "set", "insert", "delete", "length", "vr", "tag"))
    if op == "insert":
        keyword = d.choice(("NumberOfFrames", "NumberOfFrames", "PixelPaddingValue",
                            "RescaleSlope", "GridFrameOffsetVector", "SpacingBetweenSlices",
                            "ImagePositionPatient", "SliceThickness", "Rows", "PixelData"))
        tag = tag_for_keyword(keyword)
        value = _draw_value(d, tag)

        def insert(data: bytes) -> bytes:
            els = index_dicom(data)
            if _find(els, tag, 0):
                el = _find(els, tag, 0)[0]
                new = _encode_element(tag, value.vr, value.encode(el.little), implicit=el.implicit,
                                      little=el.little)
                return _splice(data, el.start, el.end, new, el, True)
            top = [e for e in els if e.depth == 0 and e.tag >> 16 != 2]
            if not top:
                return data
            after = next((e for e in top if e.tag > tag), None)
            at = after.start if after is not None else top[-1].end
            ref = top[0]
            new = _encode_element(tag, value.vr, value.encode(ref.little), implicit=ref.implicit,
                                  little=ref.little)
            return _splice(data, at, at, new, None, False)
        return insert, f"insert {keyword} = {value.shown()}"
    el = _pick_element(d, els, targets_only=d.chance(0.85 if op == "set" else 0.5))
    if el is None:
        return None
    tag, depth, name = el.tag, el.depth, el.name
    fix = d.chance(0.9)
    which = d.integer(0, 3)  # which occurrence (items and fragments repeat)

    def each(fn: Callable[[bytes, Element], bytes]) -> Edit:
        def apply(data: bytes) -> bytes:
            found = _find(index_dicom(data), tag, depth)
            return fn(data, found[which % len(found)]) if found else data
        return apply

    if op == "set" and tag != _ITEM:
        value = _draw_value(d, tag)

        def set_(data, e):
            new = _encode_element(tag, value.vr, value.encode(e.little), implicit=e.implicit,
                                  little=e.little)
            return _splice(data, e.start, e.end, new, e, fix)
        return each(set_), f"set {name} ({value.vr}) = {value.shown()}"
    if op in ("set", "delete"):
        return each(lambda data, e: _splice(data, e.start, e.end, b"", e, fix)), f"delete {name}"
    if op == "length":
        choice = d.integer(0, 9)
        rnd = d.integer(0, 2**32 - 1)

        def length(data, e):
            size = e.length_size
            old = e.length
            new = (0, 1, old - 1, old + 1, old * 2, 0xFFFF, _UNDEF, 0x7FFFFFFF, old + 2, rnd)[choice]
            new %= 2 ** (8 * size)
            b = bytearray(data)
            b[e.length_at:e.length_at + size] = new.to_bytes(size, "little" if e.little else "big")
            return bytes(b)
        return each(length), f"length of {name} = choice {choice}"
    if op == "vr":
        vr = d.choice(_VRS + ("ZZ", "\0\0", "ob"))

        def set_vr(data, e):
            if e.implicit or e.tag == _ITEM:
                return data
            b = bytearray(data)
            b[e.start + 4:e.start + 6] = vr.encode("latin-1")[:2].ljust(2, b" ")
            return bytes(b)
        return each(set_vr), f"VR of {name} = {vr!r}"
    other = d.choice(list(_TARGET_TAGS) + [_ITEM, _SEQ_END, _PIXEL_DATA, 0xFFFFFFFF, 0x00000000])

    def set_tag(data, e):
        b = bytearray(data)
        o = "<" if e.little else ">"
        b[e.start:e.start + 4] = struct.pack(o + "HH", other >> 16, other & 0xFFFF)
        return bytes(b)
    return each(set_tag), f"tag of {name} = {other:08X}"


def _edit_bytes(d: Draws, data: bytes) -> tuple[bytes, str]:
    """One byte-level mutation of ``data``."""
    n = len(data)
    op = d.choice(("flip", "flip", "bytes", "truncate", "delete", "insert", "int", "repeat"))
    if n == 0:
        return d.blob(d.integer(0, 16)), "random bytes into an empty file"
    b = bytearray(data)
    if op == "flip":
        k = d.integer(1, 8)
        for _ in range(k):
            i = d.integer(0, n - 1)
            b[i] ^= 1 << d.integer(0, 7)
        return bytes(b), f"{k} bit flip(s)"
    if op == "bytes":
        k = d.integer(1, 8)
        for _ in range(k):
            b[d.integer(0, n - 1)] = d.integer(0, 255)
        return bytes(b), f"{k} random byte(s)"
    if op == "truncate":
        i = d.integer(0, n - 1)
        return bytes(b[:i]), f"cut at {i} of {n} bytes"
    if op == "delete":
        i, k = d.integer(0, n - 1), d.integer(1, 64)
        del b[i:i + k]
        return bytes(b), f"{k} bytes deleted at {i}"
    if op == "insert":
        i, k = d.integer(0, n), d.integer(1, 64)
        b[i:i] = d.blob(k) if d.chance(0.5) else bytes([d.integer(0, 255)]) * k
        return bytes(b), f"{k} bytes inserted at {i}"
    if op == "int":
        size = d.choice((2, 4))
        i = d.integer(0, max(0, n - size))
        v = d.choice((0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 0x10000, 0x8000, d.integer(0, 2**32 - 1)))
        b[i:i + size] = (v % 2 ** (8 * size)).to_bytes(size, d.choice(("little", "big")))
        return bytes(b[:n]), f"{size}-byte integer {v:#x} at {i}"
    i, k = d.integer(0, n - 1), d.integer(1, 256)
    b[i:i] = b[i:i + k] * d.integer(1, 4)
    return bytes(b), f"{k} bytes at {i} repeated"


def _mutate_dicom(seed: Seed, d: Draws) -> Case:
    files = dict(seed.files)
    names = sorted(seed.mutable)
    case = Case(seed.name, "dicom", files, seed.target)
    if len(names) > 1 and d.chance(0.1):  # the series, not its files
        op = d.choice(("drop", "duplicate", "junk"))
        name = d.choice(names)
        if op == "drop":
            del files[name]
            case.notes.append(f"{name} deleted")
        elif op == "duplicate":
            files["copy_" + name] = files[name]
            case.notes.append(f"{name} duplicated")
        else:
            files["junk.dcm"] = d.blob(d.choice((0, 1, 8, 132, 200)))
            case.notes.append("a junk .dcm added")
        case.mutated.append(name)
        if d.chance(0.5):
            return case
    names = [n for n in names if n in files]
    mode = d.choice(("one", "one", "one", "some", "all"))
    if mode == "one" or len(names) == 1:
        targets = [d.choice(names)]
    elif mode == "some":
        targets = sorted({d.choice(names) for _ in range(d.integer(2, 3))})
    else:
        targets = names
    for _ in range(d.integer(1, 3)):
        if d.chance(0.7):
            edit = _edit_element(d, files[targets[0]])
            if edit is None:
                continue
            fn, note = edit
            for t in targets:
                files[t] = fn(files[t])
            case.notes.append(f"{note} in {', '.join(targets) if len(targets) < 4 else 'all files'}")
        else:
            for t in targets:
                files[t], note = _edit_bytes(d, files[t])
                case.notes.append(f"{t}: {note}")
    case.mutated = sorted(set(case.mutated) | set(targets))
    return case


# =================================================================== MetaImage: mutators

_MET_TYPES = ("MET_UCHAR", "MET_CHAR", "MET_SHORT", "MET_USHORT", "MET_INT", "MET_UINT",
              "MET_LONG", "MET_ULONG", "MET_LONG_LONG", "MET_ULONG_LONG", "MET_FLOAT",
              "MET_DOUBLE", "MET_SHORT_ARRAY", "MET_STRING", "MET_NONE", "short", "MET_OTHER",
              "")


def _numbers_text(d: Draws, count: int, *, integer: bool) -> str:
    n = d.choice((count, count, count, 0, 1, 2, 4, 9, 10))
    out = []
    for _ in range(n):
        if d.chance(0.6):
            out.append(d.choice(("0", "1", "-1", "2", "6", "32", "0.5", "nan", "inf", "-inf",
                                 "1e308", "1e400", "100000", "4294967296", "2147483648",
                                 "1e-300", "abc", "1,5", "0x10", "+1", ".5", "1.")))
        else:
            v = d.real()
            out.append(str(int(v)) if integer else repr(v))
    return " ".join(out)


def _metaimage_value(d: Draws, key: str, seed: Seed, outside: Path) -> tuple[str, dict]:
    """A value for ``key`` and any files it needs in the case folder."""
    extra: dict[str, bytes] = {}
    if key in ("DimSize", "ElementSpacing", "ElementSize", "Offset", "Origin", "Position",
               "CenterOfRotation"):
        if key == "DimSize" and d.chance(0.3):
            return d.choice(("100000 100000 100000", "32 32 6", "32 32 7", "32 32 5",
                             "64 32 6", "32 32 0", "1024 1024 1024", "65536 65536 1",
                             "4294967296 1 1")), extra
        return _numbers_text(d, 3, integer=key == "DimSize"), extra
    if key in ("TransformMatrix", "Rotation", "Orientation"):
        if d.chance(0.4):
            return d.choice(("1 0 0 0 1 0 0 0 1", "0 1 0 1 0 0 0 0 1", "1 0 0 0 1 0 0 0 -1",
                             "2 0 0 0 2 0 0 0 2", "1 0 0 1 0 0 0 0 1", "0 0 0 0 0 0 0 0 0",
                             "0.7071 0.7071 0 -0.7071 0.7071 0 0 0 1")), extra
        return _numbers_text(d, 9, integer=False), extra
    if key == "ElementType":
        return d.choice(_MET_TYPES), extra
    if key in ("NDims", "ElementNumberOfChannels", "HeaderSize", "CompressedDataSize"):
        return d.choice(("3", "2", "4", "1", "0", "-1", "-2", "1000000", "2147483648",
                         "99999999999999999999", "nan", "abc", "3.5")), extra
    if key in ("BinaryData", "BinaryDataByteOrderMSB", "ElementByteOrderMSB", "CompressedData"):
        return d.choice(("True", "False", "1", "0", "maybe")), extra
    if key == "ObjectType":
        return d.choice(("Image", "Mesh", "Scene", "")), extra
    if key == "AnatomicalOrientation":
        return d.choice(("RAI", "LPS", "???", "RRR")), extra
    # ElementDataFile
    raw_name = next((n for n in seed.files if not n.endswith((".mhd", ".mha"))), "scan.raw")
    slices = seed.slices
    choice = d.integer(0, 19)
    abs_sentinel = str(outside.resolve() / "sentinel.raw")
    if choice in (0, 1):
        return raw_name, extra
    if choice == 2:
        return "LOCAL", extra
    if choice == 3:
        return "missing.raw", extra
    if choice == 4:
        return "../outside/sentinel.raw", extra
    if choice == 5:
        return abs_sentinel, extra
    if choice == 6:
        return "./" + raw_name, extra
    if choice == 7:
        return "sub/../" + raw_name, extra
    if choice in (8, 9):
        extra.update(slices)
        names = list(slices)
        if d.chance(0.4):
            k = d.integer(0, len(names) - 1)
            names[k] = d.choice(("../outside/" + names[k], str(outside.resolve() / names[k]),
                                 "missing.raw", "", " " + names[k], names[k] + "\r"))
        if d.chance(0.2):
            names = names[:d.integer(0, len(names))]
        return "LIST\n" + "\n".join(names) + ("\n" if d.chance(0.9) else ""), extra
    if choice in (10, 11):
        extra.update(slices)
        return d.choice(("s%03d.raw 1 6 1", "s%03d.raw 1 6", "s%03d.raw 1", "s%03d.raw 1 6 0",
                         "s%03d.raw 6 1 1", "s%d.raw 1 100000 1", "s%s.raw 1 6 1",
                         "s%n.raw 1 6 1", "s%03d%d.raw 1 6 1", "../outside/s%03d.raw 1 6 1",
                         str(outside.resolve()) + "/s%03d.raw 1 6 1")), extra
    return d.choice(("%s", "/dev/zero", "/proc/self/environ", "~/x.raw", "C:\\x.raw",
                     raw_name + "\x01", ".", "..", "sub", "scan.zraw", raw_name.upper(),
                     "../" + Path(raw_name).name, "\\\\server\\share\\x.raw",
                     "a" * 600)), extra


_METAIMAGE_KEYS = ("ObjectType", "NDims", "BinaryData", "BinaryDataByteOrderMSB",
                   "CompressedData", "CompressedDataSize", "TransformMatrix", "Offset",
                   "CenterOfRotation", "AnatomicalOrientation", "ElementSpacing", "DimSize",
                   "ElementType", "ElementDataFile", "HeaderSize", "ElementNumberOfChannels",
                   "ElementSize", "Origin", "Position", "Rotation", "Orientation",
                   "ElementByteOrderMSB")


def _mutate_metaimage(seed: Seed, d: Draws, outside: Path) -> Case:
    files = dict(seed.files)
    target = seed.target
    case = Case(seed.name, "metaimage", files, target, mutated=[target])
    data = files[target]
    cut = data.find(b"ElementDataFile")
    cut = data.find(b"\n", cut) + 1 if cut >= 0 else len(data)
    header, body = data[:cut], data[cut:]
    lines = header.decode("latin-1").splitlines()
    for _ in range(d.integer(1, 3)):
        op = d.choice(("set", "set", "set", "set", "drop", "dup", "swap", "junk", "case",
                       "bytes", "data"))
        keyed = [i for i, ln in enumerate(lines) if "=" in ln]
        if op == "set":
            key = d.choice(_METAIMAGE_KEYS)
            value, extra = _metaimage_value(d, key, seed, outside)
            files.update(extra)
            i = next((i for i in keyed if lines[i].split("=")[0].strip() == key), None)
            line = f"{key} = {value}"
            if i is None:
                # a new key goes before ElementDataFile (after it would be data)
                last = keyed[-1] if keyed and key != "ElementDataFile" else len(lines)
                lines.insert(last, line)
            else:
                lines[i] = line
            case.notes.append(f"{key} = {value[:60]!r}")
        elif op == "drop" and keyed:
            i = d.choice(keyed)
            case.notes.append(f"line {lines[i][:40]!r} dropped")
            del lines[i]
        elif op == "dup" and keyed:
            i = d.choice(keyed)
            lines.insert(d.integer(0, len(lines)), lines[i])
            case.notes.append(f"line {lines[i][:40]!r} duplicated")
        elif op == "swap" and len(lines) > 1:
            i, j = d.integer(0, len(lines) - 1), d.integer(0, len(lines) - 1)
            lines[i], lines[j] = lines[j], lines[i]
            case.notes.append(f"lines {i} and {j} swapped")
        elif op == "junk":
            junk = d.choice(("no equals sign", "x" * 600, "= 3", "Key =", "a\x00b = 1",
                             "NDims : 3", "DimSize=32 32 6", "\tNDims = 3", "ElementDataFile",
                             "elementdatafile = scan.raw", "NRRD0004"))
            lines.insert(d.integer(0, len(lines)), junk)
            case.notes.append(f"line {junk[:40]!r} inserted")
        elif op == "case" and keyed:
            i = d.choice(keyed)
            key, _, rest = lines[i].partition("=")
            lines[i] = key.upper() + "=" + rest if d.chance(0.5) else key.lower() + "=" + rest
            case.notes.append(f"key of line {i} recased")
        elif op == "bytes":
            header_b = ("\n".join(lines) + "\n").encode("latin-1")
            header_b, note = _edit_bytes(d, header_b)
            lines = header_b.decode("latin-1").splitlines()
            case.notes.append(f"header: {note}")
        elif op == "data":
            others = [n for n in seed.mutable if n != target and n in files]
            if others:  # a separate data file: cut, grown or deleted
                name = others[0]
                if d.chance(0.15):
                    files.pop(name, None)
                    case.notes.append(f"{name} deleted")
                else:
                    files[name], note = _edit_bytes(d, files[name])
                    case.notes.append(f"{name}: {note}")
                case.mutated.append(name)
            elif target.endswith(".mha"):  # the data after a LOCAL header
                body, note = _edit_bytes(d, body)
                case.notes.append(f"data: {note}")
    files[target] = ("\n".join(lines) + "\n").encode("latin-1") + body
    return case


# ======================================================================= NIfTI: mutators

_NIFTI_FIELDS = {  # name: (offset, struct format of one value, count)
    "sizeof_hdr": (0, "i", 1), "dim_info": (39, "b", 1), "dim": (40, "h", 8),
    "intent_code": (68, "h", 1), "datatype": (70, "h", 1), "bitpix": (72, "h", 1),
    "pixdim": (76, "f", 8), "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1), "xyzt_units": (123, "B", 1), "qform_code": (252, "h", 1),
    "sform_code": (254, "h", 1), "quatern": (256, "f", 6), "srow": (280, "f", 12),
    "magic": (344, "4s", 1), "extension": (348, "B", 4),
}
_NIFTI_INTS = (0, 1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 255, 256, 348, 352, 512, 540, 768, 1024,
               1280, 2304, 32767, -1, -32768, 100000, 2**31 - 1)
_NIFTI_FLOATS = (0.0, 1.0, -1.0, 0.7, 2.5, 352.0, 351.0, 352.5, 1e6, 1e30, float("nan"),
                 float("inf"), float("-inf"), 1e-40, 4096.0, 3e9)


def _nifti_edit_field(d: Draws, data: bytes) -> tuple[bytes, str]:
    if len(data) < 352:
        return data, "too short for a field edit"
    little = struct.unpack("<i", data[:4])[0] in (348, 540)
    o = "<" if little else ">"
    name = d.choice(list(_NIFTI_FIELDS))
    off, fmt, count = _NIFTI_FIELDS[name]
    i = d.integer(0, count - 1)
    size = struct.calcsize(fmt)
    at = off + i * size
    if fmt == "4s":
        value = d.choice((b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+1 ", d.blob(4)))
        packed = value
    elif fmt == "f":
        value = d.choice(_NIFTI_FLOATS) if d.chance(0.7) else d.real()
        packed = struct.pack(o + "f", value) if abs(value) < 3.4e38 or not np.isfinite(value) \
            else struct.pack(o + "f", float("inf"))
    else:
        value = d.choice(_NIFTI_INTS)
        bits = 8 * size
        u = value % 2**bits
        if fmt.islower() and u >= 2 ** (bits - 1):
            u -= 2**bits
        packed = struct.pack(o + fmt, u)
    b = bytearray(data)
    b[at:at + size] = packed
    return bytes(b), f"{name}[{i}] = {value!r}"


def _mutate_nifti(seed: Seed, d: Draws) -> Case:
    files = dict(seed.files)
    target = seed.target
    case = Case(seed.name, "nifti", files, target, mutated=[target])
    data = files[target]
    gz = target.endswith(".gz")
    raw = gzip.decompress(data) if gz else data
    before_gzip = not gz or d.chance(0.75)
    if before_gzip:
        for _ in range(d.integer(1, 3)):
            if d.chance(0.6):
                raw, note = _nifti_edit_field(d, raw)
            elif d.chance(0.5) and len(raw) > 352:  # bytes inside the header
                head, note = _edit_bytes(d, raw[:352])
                raw = head + raw[352:]
                note = "header: " + note
            else:
                raw, note = _edit_bytes(d, raw)
            case.notes.append(note)
        data = gzip.compress(raw, mtime=0) if gz else raw
    else:
        data = gzip.compress(raw, mtime=0)
        op = d.choice(("bytes", "bytes", "half", "append", "members"))
        if op == "bytes":
            data, note = _edit_bytes(d, data)
        elif op == "half":
            data, note = data[:len(data) // 2], "gzip stream cut in half"
        elif op == "append":
            data, note = data + d.blob(d.integer(1, 64)), "junk after the gzip stream"
        else:
            data, note = data + gzip.compress(raw[:d.integer(0, len(raw))], mtime=0), \
                "a second gzip member"
        case.notes.append("gzip: " + note)
    if d.chance(0.05):  # the name and the compression disagree
        data = gzip.decompress(data) if gz and before_gzip else gzip.compress(data, mtime=0)
        case.notes.append("compression swapped against the name")
    files[target] = data
    return case


def mutate(seed: Seed, d: Draws, *, outside: str | os.PathLike) -> Case:
    """A mutated copy of ``seed`` (its files and what was done to them)."""
    if seed.kind == "dicom":
        return _mutate_dicom(seed, d)
    if seed.kind == "metaimage":
        return _mutate_metaimage(seed, d, Path(outside))
    return _mutate_nifti(seed, d)


def write_case(case: Case, folder: str | os.PathLike) -> Path:
    """Write the files of ``case`` into ``folder`` (emptied first) and return it."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in case.files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return folder
