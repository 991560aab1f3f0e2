"""DICOM attribute values of one header, read and checked: numbers (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, the rescale), UIDs, text, sequences, the transfer syntax.

Each check raises ValueError saying what is wrong (the element and its value);
:func:`lungcad.io.dicom_header.read_header` turns it into an InputError naming the file (rules
c-f of :mod:`lungcad.io.dicom_header`).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pydicom

__all__ = ["is_valid_uid", "uid_name"]

#: How far from 1 the length of an ImageOrientationPatient direction may be.
UNIT_TOL = 1e-2
#: The largest |cosine| between the row and column directions (about 0.06 degree from 90).
ORTHOGONAL_TOL = 1e-3
#: The largest PixelSpacing (mm) accepted.
MAX_PIXEL_SPACING_MM = 100.0
#: The largest |ImagePositionPatient| coordinate (mm) accepted.
MAX_ABS_POSITION_MM = 1e6

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str) -> bool:
    """True for a valid DICOM UID: digits in components separated by dots, no leading zero in
    a component except "0" itself, at most 64 characters (PS3.5 section 9.1)."""
    return 0 < len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def uid_name(uid: str) -> str:
    """The name of a well-known UID ("CT Image Storage"), else the UID itself (escaped).
    Unlike ``pydicom.uid.UID(uid).name`` it never warns about an invalid UID."""
    entry = pydicom.uid.UID_dictionary.get(uid)
    return entry[0] if entry else _escape_controls(uid)


# ----------------------------------------------------------------- values of one header

def _get(ds, name: str, default=None):
    el = ds.get(name, default)
    return default if el is None or el == "" else el


def _values(value) -> list:
    """A DICOM value as a list of its values ([] when absent)."""
    if value is None or (isinstance(value, str) and value == ""):
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _shown(value, limit: int = 60) -> str:
    """A value as it appears in a message: backslash-separated, escaped, cut at ``limit``."""
    text = _escape_controls("\\".join(str(v) for v in _values(value)))
    return text if len(text) <= limit else text[:limit] + "..."


def _numbers(value, name: str, n: int) -> np.ndarray:
    """Exactly ``n`` finite numbers from ``value``, else ValueError saying what is wrong."""
    vals = _values(value)
    if len(vals) != n:
        raise ValueError(f"{name} must have {n} values; found {len(vals)} ({_shown(value)})")
    what = "a number" if n == 1 else "numbers"
    try:
        out = np.array([float(v) for v in vals], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be {what}; found {_shown(value)}") from None
    if not np.isfinite(out).all():
        raise ValueError(f"{name} must be {'a finite number' if n == 1 else 'finite numbers'}; "
                         f"found {_shown(value)}")
    return out


def _number(value, name: str, default: float | None) -> float | None:
    """One finite number, or ``default`` when absent."""
    if not _values(value):
        return default
    return float(_numbers(value, name, 1)[0])


def _integer(value, name: str, default: int | None, *, low: int = 1,
             high: int | None = None) -> int | None:
    """One integer in [low, high], or ``default`` when absent."""
    x = _number(value, name, None)
    if x is None:
        return default
    if not x.is_integer() or x < low or (high is not None and x > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be an integer {bound}; found {_shown(value)}")
    return int(x)


def _position(value, name: str = "ImagePositionPatient") -> np.ndarray:
    ipp = _numbers(value, name, 3)
    if np.abs(ipp).max() > MAX_ABS_POSITION_MM:
        raise ValueError(f"{name} must be within {MAX_ABS_POSITION_MM:g} mm of the origin; "
                         f"found {_shown(value)}")
    return ipp


def _orientation(value) -> np.ndarray:
    iop = _numbers(value, "ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    with np.errstate(over="ignore", invalid="ignore"):   # 1e300: inf, and refused below
        nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(nr - 1) > UNIT_TOL or abs(nc - 1) > UNIT_TOL:
        raise ValueError(f"ImageOrientationPatient must hold two unit vectors (row and column "
                         f"directions); their lengths are {nr:.4g} and {nc:.4g} "
                         f"({_shown(value)})")
    cos = float(row @ col) / (nr * nc)
    if abs(cos) > ORTHOGONAL_TOL:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        raise ValueError(f"ImageOrientationPatient row and column directions must be "
                         f"orthogonal; they are {angle:.2f} degrees apart ({_shown(value)})")
    return iop


def _pixel_spacing(value) -> tuple[float, float]:
    ps = _numbers(value, "PixelSpacing", 2)
    if (ps <= 0).any():
        raise ValueError(f"PixelSpacing must be positive (mm between rows and between "
                         f"columns); found {_shown(value)}")
    if (ps > MAX_PIXEL_SPACING_MM).any():
        raise ValueError(f"PixelSpacing must be at most {MAX_PIXEL_SPACING_MM:g} mm; found "
                         f"{_shown(value)}")
    return float(ps[0]), float(ps[1])


def _rescale(slope_value, intercept_value) -> tuple[float, float]:
    slope = _number(slope_value, "RescaleSlope", 1.0)
    intercept = _number(intercept_value, "RescaleIntercept", 0.0)
    if slope <= 0:
        raise ValueError(f"RescaleSlope must be positive; found {_shown(slope_value)}")
    return slope, intercept


def _escape_controls(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped as ``\\xNN``/``\\uNNNN``."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o < 0xE000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _clean_text(value, name: str, notes: list[str]) -> str:
    """A text value with padding stripped and control characters escaped (noted)."""
    text = "\\".join(str(v) for v in _values(value)).strip(" \x00")
    clean = _escape_controls(text)
    if clean != text:
        notes.append(f"{name} holds control characters; read as '{clean}'")
    return clean


def _uid(ds, name: str) -> str:
    """A UID element ("" when absent); ValueError when it is not a valid UID."""
    uid = "\\".join(str(v) for v in _values(_get(ds, name))).strip(" \x00")
    if uid and not is_valid_uid(uid):
        raise ValueError(f"{name} {_shown(uid, 80)!r} is not a valid DICOM UID (digits and "
                         f"dots, no leading zeros, at most 64 characters)")
    return uid


def _image_type(value) -> tuple[str, ...]:
    return tuple(str(t).strip().upper() for t in _values(value))


def _items(container, name: str) -> list:
    """The items of the sequence ``name`` in ``container`` ([] when absent or empty)."""
    if container is None or name not in container:
        return []
    value = container[name].value
    if not isinstance(value, pydicom.sequence.Sequence):
        raise ValueError(f"{name} is not a sequence (VR {container[name].VR})")
    return list(value)


def _first_in_groups(groups: Sequence, seq_name: str, attr: str):
    """``attr`` from the first group (per-frame, then shared) whose ``seq_name`` has it."""
    for g in groups:
        items = _items(g, seq_name)
        if not items:
            continue
        item = items[0]
        if attr in item and item[attr].value not in (None, ""):
            return item[attr].value
    return None


def _transfer_syntax(ds) -> str:
    """The TransferSyntaxUID of the file meta ("" when there is none)."""
    fm = getattr(ds, "file_meta", None)
    return str(fm.get("TransferSyntaxUID", "") or "").strip(" \x00") if fm is not None else ""


def _encoding_syntax(ds) -> str:
    """The uncompressed transfer syntax that a data set without file meta was read in."""
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _optional_positive(value, name: str, notes: list[str], consequence: str) -> float | None:
    """A positive number, or None (with a note when the value is there but is not one)."""
    if not _values(value):
        return None
    try:
        x = _number(value, name, None)
    except ValueError as e:
        notes.append(f"{e}; {consequence}")
        return None
    if x <= 0:
        notes.append(f"{name} {_shown(value)} is not positive; {consequence}")
        return None
    return x
