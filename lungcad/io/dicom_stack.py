"""Series assembly: the slices of one DICOM series checked and ordered into the plan of a
volume (localizers and duplicates dropped, sorted along the normal), and irregular gaps
resampled.

The rules for turning a set of slices into a volume (see :func:`plan_stack`):

1. Localizer and scout images are dropped: ImageType contains LOCALIZER or SCOUT, or the
   ImageOrientationPatient differs (by more than 1 degree) from the majority of the slices.
2. All remaining slices must have the same Rows and Columns, else :class:`InputError`.
   PixelSpacing must be positive and the same for all of them.
3. The slice normal is cross(row direction, column direction).  It must lie within 1 degree of
   the patient z axis (an axial series; flipped or rotated rows and columns are fine), and the
   slice positions must advance along the normal (no gantry-tilt shear); else :class:`InputError`.
4. Slices are sorted by ImagePositionPatient . normal, never by file name or InstanceNumber.
   Slices at the same position are duplicates: the one with the lowest InstanceNumber is
   kept and the others dropped.
5. The slice spacing is the median gap, which must be finite and positive.  A gap above 3 x the
   median means missing slices (:class:`InputError`).  Gaps that differ from the median by more
   than 1 % are resampled by linear interpolation onto a uniform grid of the median spacing
   (``meta["resampled_z"]``).  A volume of more than :data:`MAX_SERIES_VOXELS` voxels is
   refused before it is allocated.

Rule 6, the rescale to HU, is applied while decoding (:mod:`lungcad.io.dicom_decode`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lungcad.errors import InputError
from lungcad.io.dicom_attributes import MAX_ABS_POSITION_MM
from lungcad.io.dicom_slices import SliceHeader

__all__ = ["StackPlan", "plan_stack"]

#: Angle (degrees) within which two orientations count as equal, and the slice normal as axial.
MAX_ANGLE_DEG = 1.0
#: Relative deviation of a gap from the median above which the series is resampled along z.
IRREGULAR_GAP = 0.01
#: Gaps longer than this many median gaps mean missing slices.
MAX_GAP_RATIO = 3.0
#: Two slices closer than this (mm) along the normal are at the same position.
DUPLICATE_TOL_MM = 0.01
#: The most voxels of one volume (2**32 int16 voxels: 8 GiB), checked before allocating.
MAX_SERIES_VOXELS = 2 ** 32


@dataclass
class StackPlan:
    """How the slices of a series become a volume: which slices, in which order, where."""

    slices: list[SliceHeader]  # kept, sorted along the normal
    positions: np.ndarray  # mm along the normal, ascending
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]
    direction: np.ndarray
    dropped: list[dict[str, str]]
    resample: bool


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return (a[:3] @ b[:3] > math.cos(math.radians(MAX_ANGLE_DEG))
            and a[3:] @ b[3:] > math.cos(math.radians(MAX_ANGLE_DEG)))


def plan_stack(slices: Sequence[SliceHeader], *, source: str | os.PathLike) -> StackPlan:
    """Check and order the slices of one series (rules 1-5 of the module docstring).

    Parameters
    ----------
    slices : the SliceHeaders of every image of the series
    source : the folder or file named in errors

    Raises
    ------
    InputError
        Fewer than two slices, mixed image sizes, a PixelSpacing that is not positive or not
        the same for all slices, gantry tilt or a non-axial series, missing slices, a slice
        spacing that is not a positive finite number.
    """
    dropped: list[dict[str, str]] = []
    imgs = []
    for s in slices:
        if s.is_localizer():
            dropped.append({"image": s.label, "reason": "localizer (ImageType "
                            + "\\".join(s.image_type) + ")"})
        else:
            imgs.append(s)
    if imgs:
        # The majority orientation; images with another one are localizers or reformats.
        counts: list[tuple[np.ndarray, int]] = []
        for s in imgs:
            for i, (o, n) in enumerate(counts):
                if _same_orientation(o, s.orientation):
                    counts[i] = (o, n + 1)
                    break
            else:
                counts.append((s.orientation, 1))
        major = max(counts, key=lambda t: t[1])[0]
        kept = []
        for s in imgs:
            if _same_orientation(major, s.orientation):
                kept.append(s)
            else:
                dropped.append({"image": s.label, "reason": "localizer (orientation "
                                + ",".join(f"{v:g}" for v in s.orientation) + ")"})
        imgs = kept
    if len(imgs) < 2:
        what = "no image" if not imgs else "one slice"
        raise InputError(source, f"{what} to build a volume from (found {len(slices)} image(s), "
                         f"{len(dropped)} localizer(s)); a CT series needs at least 2 axial slices")
    sizes = sorted({(s.rows, s.cols) for s in imgs})
    if len(sizes) > 1:
        raise InputError(source, f"mixed image sizes in one series (Rows x Columns: "
                         f"{', '.join(f'{r}x{c}' for r, c in sizes)}); expected one size")
    for s in imgs:  # read_header checks these; SliceHeaders made elsewhere may not be checked
        if not (np.isfinite(s.position).all() and np.abs(s.position).max() <= MAX_ABS_POSITION_MM):
            raise InputError(s.path, f"ImagePositionPatient must be finite and within "
                             f"{MAX_ABS_POSITION_MM:g} mm of the origin; found "
                             f"{', '.join(f'{v:g}' for v in s.position)}")
    pss = np.array([s.pixel_spacing for s in imgs], dtype=float)
    if not (np.isfinite(pss).all() and (pss > 0).all()):
        bad = next(s for s in imgs if not (np.isfinite(s.pixel_spacing).all()
                                           and min(s.pixel_spacing) > 0))
        raise InputError(bad.path, f"PixelSpacing must be positive finite mm; found "
                         f"{bad.pixel_spacing[0]:g}\\{bad.pixel_spacing[1]:g}")
    if np.ptp(pss, axis=0).max() > 1e-3 * pss.max():
        raise InputError(source, f"mixed PixelSpacing in one series "
                         f"({sorted({tuple(p) for p in pss.tolist()})}); expected one spacing")
    row_dir = np.asarray(major[:3], dtype=float)
    col_dir = np.asarray(major[3:], dtype=float)
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    if abs(row_dir @ col_dir) > 1e-3:
        raise InputError(source, f"ImageOrientationPatient rows and columns are not orthogonal "
                         f"({major.tolist()})")
    normal = np.cross(row_dir, col_dir)
    tilt = math.degrees(math.acos(min(1.0, abs(normal[2]))))
    if tilt > MAX_ANGLE_DEG:
        raise InputError(source, f"not an axial series: the slice normal "
                         f"({normal[0]:.3f}, {normal[1]:.3f}, {normal[2]:.3f}) is {tilt:.1f} "
                         f"degrees from the patient z axis (gantry tilt or a coronal/sagittal "
                         f"series); expected axial slices within {MAX_ANGLE_DEG:g} degree")
    pos = np.array([s.position @ normal for s in imgs])
    order = np.lexsort((np.array([s.instance if s.instance is not None else 0 for s in imgs]),
                        pos))
    imgs = [imgs[i] for i in order]
    pos = pos[order]
    keep = [0]
    for i in range(1, len(imgs)):
        if pos[i] - pos[keep[-1]] < DUPLICATE_TOL_MM:
            dropped.append({"image": imgs[i].label,
                            "reason": f"duplicate position {pos[i]:.3f} mm (same as "
                                      f"{imgs[keep[-1]].label})"})
        else:
            keep.append(i)
    imgs = [imgs[i] for i in keep]
    pos = pos[keep]
    if len(imgs) < 2:
        raise InputError(source, f"one slice position only ({pos[0]:.2f} mm; the other "
                         f"{len(dropped)} image(s) were duplicates or localizers); a CT series "
                         f"needs at least 2 slices")
    # Gantry tilt stored as a shear: positions that drift in-plane as z advances.
    d = imgs[-1].position - imgs[0].position
    along = float(d @ normal)
    drift = float(np.linalg.norm(d - along * normal))
    if drift > math.tan(math.radians(MAX_ANGLE_DEG)) * abs(along) + 0.1:
        raise InputError(source, f"gantry tilt: slice positions drift {drift:.1f} mm in-plane "
                         f"over {abs(along):.1f} mm along the slice normal "
                         f"({math.degrees(math.atan2(drift, abs(along))):.1f} degrees); "
                         f"expected slices stacked along the normal")
    gaps = np.diff(pos)
    median = float(np.median(gaps))
    if not (np.isfinite(gaps).all() and median > 0):
        raise InputError(source, f"the slice spacing from ImagePositionPatient is not a positive "
                         f"finite number (median gap {median:g} mm)")
    worst = int(np.argmax(gaps))
    if gaps[worst] > MAX_GAP_RATIO * median:
        raise InputError(source, f"missing slices: a gap of {gaps[worst]:.2f} mm between the "
                         f"slices at {pos[worst]:.2f} and {pos[worst + 1]:.2f} mm along the slice "
                         f"normal, {gaps[worst] / median:.1f} x the median spacing {median:.2f} mm")
    resample = bool(np.max(np.abs(gaps - median)) > IRREGULAR_GAP * median)
    n_out = (int(math.floor((pos[-1] - pos[0]) / median + 1e-6)) + 1) if resample else len(imgs)
    if n_out * imgs[0].rows * imgs[0].cols > MAX_SERIES_VOXELS:
        raise InputError(source, f"a volume of {n_out} x {imgs[0].rows} x {imgs[0].cols} voxels, "
                         f"more than lungcad reads ({MAX_SERIES_VOXELS} voxels)")
    direction = np.column_stack([row_dir, col_dir, normal])
    origin = tuple(float(v) for v in imgs[0].position)
    spacing = (median, float(pss[0][0]), float(pss[0][1]))
    return StackPlan(slices=imgs, positions=pos, spacing=spacing, origin=origin,
                     direction=direction, dropped=dropped, resample=resample)


def _resample_z(vol: np.ndarray, positions: np.ndarray, spacing: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of slices at ``positions`` onto a uniform grid from the first."""
    n = int(math.floor((positions[-1] - positions[0]) / spacing + 1e-6)) + 1
    grid = positions[0] + spacing * np.arange(n)
    out = np.empty((n,) + vol.shape[1:], dtype=np.int16)
    hi = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lo = hi - 1
    for k in range(n):
        a, b = lo[k], hi[k]
        t = (grid[k] - positions[a]) / (positions[b] - positions[a])
        t = min(max(t, 0.0), 1.0)
        if t < 1e-9:
            out[k] = vol[a]
        elif t > 1 - 1e-9:
            out[k] = vol[b]
        else:
            out[k] = np.rint((1 - t) * vol[a].astype(np.float32)
                             + t * vol[b].astype(np.float32)).astype(np.int16)
    return out, grid
