"""Steps 1-3 of :mod:`lungcad.morphology`: the threshold, the closing with structuring
elements sized in mm, and the per-slice connected components as a 2-D detection table
(:data:`DETECTION_COLUMNS`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lungcad.checks import check_distance, check_spacing, check_volume

#: Columns of a 2-D detection table (:func:`components_2d`, :func:`merge_by_distance`).
#: ``slice`` is the slice index; ``y`` and ``x`` the fractional row and column of the
#: probability-weighted centroid; ``y_mm`` and ``x_mm`` the same times the spacing (mm along
#: the index axes, used for distances); ``labels`` the component labels a detection is made of.
DETECTION_COLUMNS = ["slice", "y", "x", "y_mm", "x_mm", "n_pixels", "area_mm2", "prob_sum",
                     "max_prob", "mean_prob", "labels"]

# per-slice connectivity: 8-connected in-plane, no link across slices
_SLICE_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_SLICE_STRUCTURE[1] = True


def threshold(prob, *, level: float = 0.5) -> np.ndarray:
    """Voxels whose probability is at least ``level``.

    Parameters
    ----------
    prob : ndarray of float, (z, y, x)
    level : float, optional

    Returns
    -------
    ndarray of bool, same shape
    """
    if not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"level: expected a probability in [0, 1]. Received level={level!r}")
    return np.asarray(prob) >= level



def structuring_element(radius_mm: float, *, spacing_zyx, in_plane: bool = True) -> np.ndarray:
    """An ellipsoid (or, with ``in_plane=True``, a flat disc) of radius ``radius_mm``.

    It holds every voxel offset whose distance in mm from the centre is at most
    ``radius_mm``, with the spacing of each axis.  A radius shorter than the spacing gives a
    single voxel (the identity).

    Parameters
    ----------
    radius_mm : float
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    in_plane : bool, optional
        When True the element has one slice (z size 1): it works in each slice alone.

    Returns
    -------
    ndarray of bool, shape (nz, ny, nx), odd sizes
    """
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    radius_mm = check_distance("radius_mm", radius_mm)
    half = np.floor(radius_mm / sp + 1e-9).astype(int)
    if in_plane:
        half[0] = 0
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, sp))
    return dist2 <= radius_mm ** 2 + 1e-9


def _morph(op, mask, radius_mm, spacing_zyx, in_plane):
    mask = check_volume("mask", mask).astype(bool)
    se = structuring_element(radius_mm, spacing_zyx=spacing_zyx, in_plane=in_plane)
    if se.size == 1 or not mask.any():
        return mask.copy()
    # work on the bounding box of the foreground, padded by the element
    pad = np.array(se.shape) // 2
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], \
        np.nonzero(mask.any(axis=(0, 1)))[0]
    lo = [max(0, int(i[0]) - p - 1) for i, p in zip(idx, pad)]
    hi = [min(n, int(i[-1]) + p + 2) for i, n, p in zip(idx, mask.shape, pad)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = np.zeros_like(mask)
    # erosion treats the array border as background, which matches "outside is empty"
    out[box] = op(mask[box], structure=se, border_value=0)
    return out


def dilate(mask, *, radius_mm: float, spacing_zyx, in_plane: bool = True) -> np.ndarray:
    """Binary dilation by a disc (``in_plane=True``) or ellipsoid of ``radius_mm``.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    radius_mm : float
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    in_plane : bool, optional
        Dilate within each slice only (default), or in 3-D.

    Returns
    -------
    ndarray of bool
    """
    return _morph(ndimage.binary_dilation, mask, radius_mm, spacing_zyx, in_plane)


def erode(mask, *, radius_mm: float, spacing_zyx, in_plane: bool = True) -> np.ndarray:
    """Binary erosion by a disc (``in_plane=True``) or ellipsoid of ``radius_mm``.

    Voxels beyond the array border count as background.  See :func:`dilate`.
    """
    return _morph(ndimage.binary_erosion, mask, radius_mm, spacing_zyx, in_plane)


def label_slices(mask) -> tuple[np.ndarray, int]:
    """Per-slice connected components (8-connected in-plane): ``(labels, n)``, C order."""
    return ndimage.label(mask, structure=_SLICE_STRUCTURE)


def component_table(labels: np.ndarray, n: int, prob: np.ndarray, sp: np.ndarray) -> pd.DataFrame:
    """The 2-D detection table of components 1..n of ``labels``, weighted by ``prob``;
    ``sp`` is the spacing (z, y, x) in mm."""
    if n == 0:
        return empty_detections()
    flat = labels.ravel()
    sel = np.flatnonzero(flat)
    lab = flat[sel]
    z, y, x = np.unravel_index(sel, labels.shape)
    p = prob.ravel()[sel].astype(float)
    # a component whose probabilities are all zero still needs a centroid: use a tiny floor
    w = np.maximum(p, 1e-12)
    cnt = np.bincount(lab, minlength=n + 1)[1:]
    wsum = np.bincount(lab, weights=w, minlength=n + 1)[1:]
    psum = np.bincount(lab, weights=p, minlength=n + 1)[1:]
    cy = np.bincount(lab, weights=w * y, minlength=n + 1)[1:] / wsum
    cx = np.bincount(lab, weights=w * x, minlength=n + 1)[1:] / wsum
    zs = np.zeros(n + 1, dtype=int)
    zs[lab] = z
    pmax = np.full(n + 1, -np.inf)
    np.maximum.at(pmax, lab, p)
    return pd.DataFrame({
        "slice": zs[1:], "y": cy, "x": cx, "y_mm": cy * sp[1], "x_mm": cx * sp[2],
        "n_pixels": cnt, "area_mm2": cnt * sp[1] * sp[2], "prob_sum": psum,
        "max_prob": pmax[1:], "mean_prob": psum / cnt,
        "labels": [(i,) for i in range(1, n + 1)],
    })


def empty_detections() -> pd.DataFrame:
    """A 2-D detection table with no rows."""
    df = pd.DataFrame({c: pd.Series(dtype=float) for c in DETECTION_COLUMNS})
    df["slice"] = df["slice"].astype(int)
    df["n_pixels"] = df["n_pixels"].astype(int)
    df["labels"] = df["labels"].astype(object)
    return df


def components_2d(mask, prob, *, spacing_zyx) -> pd.DataFrame:
    """Connected components of ``mask`` in each slice (8-connected), as 2-D detections.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    prob : ndarray of float, (z, y, x)
        The probability map; it weights the centroids and gives ``max_prob``/``mean_prob``.
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.

    Returns
    -------
    pandas.DataFrame
        One row per component, with the columns :data:`DETECTION_COLUMNS`; ``labels`` holds
        the component's label in the per-slice labelling (numbered from 1 in C order).
    """
    mask = check_volume("mask", mask).astype(bool)
    prob = check_volume("prob", prob)
    if prob.shape != mask.shape:
        raise ValueError(f"prob: expected the shape of mask {mask.shape}. Received {prob.shape}")
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    labels, n = label_slices(mask)
    return component_table(labels, n, prob, sp)
