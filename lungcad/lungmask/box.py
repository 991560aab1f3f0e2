"""Boxes around a lung mask: :func:`lung_box`, the box the U-Net searches, and the box a
failed lung mask falls back to (the body's).  Spacings are (z, y, x) in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lungcad.checks import check_distance, check_spacing, check_volume

from .grid import SLICEWISE, upsample


def lung_box(mask, *, spacing_zyx, margin_mm: float = 10.0) -> tuple[slice, slice, slice]:
    """Bounding box of a mask with a margin in mm, as slices into the same volume.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    margin_mm : float, optional
        Added on every side (rounded up to whole voxels per axis), clipped to the volume.

    Returns
    -------
    tuple of three slices (z, y, x)
        The whole volume when ``mask`` is empty.
    """
    mask = check_volume("mask", mask)
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    margin_mm = check_distance("margin_mm", margin_mm)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(math.ceil(margin_mm / sp[axis] - 1e-9))
        out.append(slice(max(0, int(idx[0]) - m), min(mask.shape[axis], int(idx[-1]) + 1 + m)))
    return tuple(out)


def fallback_box(hu: np.ndarray, body: np.ndarray, sp: np.ndarray, fy: int, fx: int,
                 threshold_hu: float) -> tuple[tuple[slice, slice, slice], str]:
    """The box that replaces an implausible lung mask, and its name for the warning: the
    body's bounding box (its edge at the scan's resolution, near the coarse ``body``), or the
    whole volume when there is no body."""
    if body.any():
        near = upsample(ndimage.binary_dilation(body, structure=SLICEWISE), fy, fx,
                        hu.shape)
        return lung_box(near & (hu >= threshold_hu), spacing_zyx=sp, margin_mm=0.0), \
            "the body's bounding box"
    return tuple(slice(0, s) for s in hu.shape), "the whole volume (no body found)"
