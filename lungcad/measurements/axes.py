"""Axial long and short axes, as Lung-RADS v2022 and the Fleischner Society measure them.

The long axis is the longest diameter of the nodule in an axial slice, on the slice where it is
longest; the short axis is the longest diameter perpendicular to it, on the same slice; the size
is their mean, rounded to 0.1 mm.

Each slice's outline is the sub-pixel contour (:func:`skimage.measure.find_contours`) of a field
at a level: the HU at the segmentation's threshold, or 0.5 of a binary mask, with everything
outside the mask (grown by a pixel) set below the level, so that only this nodule has an outline.
Distances are in mm, from the pixel spacing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Positions along the long axis at which the perpendicular chords are measured.
CHORD_SAMPLES = 200


@dataclass
class AxialAxes:
    """``long_mm``, ``short_mm``, their ``mean_mm`` (rounded to 0.1), the slice (index in the
    field given) and the long axis's two ends (row, column, fractional indices of that slice)."""

    long_mm: float
    short_mm: float
    mean_mm: float
    slice_index: int
    long_ends_yx: tuple

    @classmethod
    def none(cls) -> "AxialAxes":
        return cls(0.0, 0.0, 0.0, -1, ())


def outline_points(field: np.ndarray, mask: np.ndarray, level: float) -> list[np.ndarray]:
    """The contours (row, column arrays) of one slice's ``field`` at ``level``, inside ``mask``
    grown by one pixel."""
    grown = ndimage.binary_dilation(mask, iterations=1)
    low = np.float32(level) - np.float32(1.0)
    f = field.astype(np.float32)
    # inside the mask at least the level, around it below: the outline is this nodule's alone
    f = np.where(mask, np.maximum(f, np.float32(level) + 1e-3), np.where(grown, np.minimum(f, low + 0.5), low))
    f = np.pad(f, 1, constant_values=low)
    return [c - 1.0 for c in _find_contours(f, level) if len(c) >= 3]


def _find_contours(f, level):
    from skimage.measure import find_contours

    return find_contours(f, level)


def longest_chord(points_mm: np.ndarray) -> tuple[float, int, int]:
    """The longest distance between two points (mm) and their indices."""
    from scipy.spatial import ConvexHull, QhullError

    idx = np.arange(len(points_mm))
    if len(points_mm) >= 4:
        try:
            idx = ConvexHull(points_mm).vertices
        except QhullError:
            pass
    h = points_mm[idx]
    d2 = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return float(np.sqrt(d2[i, j])), int(idx[i]), int(idx[j])


def perpendicular_width(contours_mm: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> float:
    """The longest chord of the outline perpendicular to the segment ``a``-``b`` (mm): at each of
    :data:`CHORD_SAMPLES` positions along it, the span of the outline's crossings of the
    perpendicular line there."""
    u = (b - a) / max(np.linalg.norm(b - a), 1e-9)
    v = np.array([-u[1], u[0]])
    best = 0.0
    segs = [(c, np.roll(c, -1, axis=0)) for c in contours_mm]
    p0 = np.concatenate([s[0] for s in segs])
    p1 = np.concatenate([s[1] for s in segs])
    t0, t1 = (p0 - a) @ u, (p1 - a) @ u
    s0, s1 = (p0 - a) @ v, (p1 - a) @ v
    length = float(np.linalg.norm(b - a))
    for t in np.linspace(0.0, length, CHORD_SAMPLES + 2)[1:-1]:
        cross = (t0 - t) * (t1 - t) <= 0
        cross &= t0 != t1
        if cross.sum() < 2:
            continue
        w = (t - t0[cross]) / (t1[cross] - t0[cross])
        s = s0[cross] + w * (s1[cross] - s0[cross])
        best = max(best, float(s.max() - s.min()))
    return best


def axial_axes(field: np.ndarray, mask: np.ndarray, *, level: float, spacing_zyx) -> AxialAxes:
    """The long and short axes of the nodule ``mask`` (bool, z y x) whose outline is ``field``'s
    ``level`` (see the module's text); ``spacing_zyx`` in mm."""
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    best = AxialAxes.none()
    best_contours = None
    for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        contours = outline_points(field[k], mask[k], level)
        if not contours:
            continue
        mm = [c * [sy, sx] for c in contours]
        pts = np.concatenate(mm)
        if len(pts) < 2:
            continue
        long_mm, i, j = longest_chord(pts)
        if long_mm > best.long_mm:
            best = AxialAxes(long_mm, 0.0, 0.0, int(k), (tuple(pts[i] / [sy, sx]), tuple(pts[j] / [sy, sx])))
            best_contours = (mm, pts[i], pts[j])
    if best_contours is None:
        return best
    mm, a, b = best_contours
    short = min(perpendicular_width(mm, a, b), best.long_mm)
    best.short_mm = short
    best.mean_mm = round_size(0.5 * (best.long_mm + short))
    return best


def round_size(mm: float) -> float:
    """A size rounded to 0.1 mm, halves up (Lung-RADS v2022 rounds the mean diameter to the
    nearest tenth of a millimetre)."""
    return float(np.floor(float(mm) * 10.0 + 0.5 + 1e-9) / 10.0)
