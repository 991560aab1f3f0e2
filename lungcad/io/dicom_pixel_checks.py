"""The pixel data element of a DICOM file, checked before anything is decoded (rule b of
:mod:`lungcad.io.dicom_header`): where it starts and whether the file holds all of it, the
items of encapsulated (compressed) pixel data and their Basic Offset Table, and the size that
each compressed frame states in its first bytes (RLE segments, JPEG and JPEG-LS frame headers,
JPEG 2000 SIZ markers), against Rows, Columns, NumberOfFrames, SamplesPerPixel and
BitsAllocated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lungcad.io.dicom_attributes import _get, _integer, _transfer_syntax, uid_name


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
