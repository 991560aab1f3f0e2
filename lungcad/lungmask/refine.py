"""The closings of one lung: holes filled, the in-plane disc closing that keeps
juxta-pleural nodules, the ball closing that keeps masses against the chest wall, the
mediastinum or the hilum, and the rule that drops what rises into the lung from below
(the liver dome, the spleen, the stomach, the base of the heart).  Spacings are (z, y, x)
in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .grid import CROSS_SLICEWISE, block_majority, close_disc, crop_box, dilate_disc, fill_holes

MAX_HOLE_MM2 = 1000.0      # largest hole filled in a slice (a disc of 36 mm)
GAIN_MARGIN_MM = 2.0       # margin around what the ball closing adds


def ball_closing_gain(lung: np.ndarray, sp: np.ndarray, radius_mm: float,
                      grid_mm: float) -> np.ndarray:
    """Voxels that a closing of ``lung`` by a ball of ``radius_mm`` adds (on a grid_mm grid).

    A closing by a ball adds what the ball cannot reach from outside the lung: a lesion that
    bulges into the lung and is narrower than the ball, whether it comes from the chest wall,
    the mediastinum or the hilum.  The heart, the mediastinum and the diaphragm, whose
    surfaces curve more gently than the ball, stay out.  It is computed with two Euclidean
    distance transforms on a coarse grid, and an opening drops the one-cell rims that the
    grid leaves along smooth surfaces.
    """
    f = tuple(max(1, int(round(grid_mm / s))) for s in sp)
    gsp = sp * np.array(f)
    c = block_majority(lung, f)
    pad = int(math.ceil(radius_mm / gsp.min())) + 1
    cp = np.pad(c, pad)
    reach = ndimage.distance_transform_edt(~cp, sampling=gsp) <= radius_mm
    closed = ndimage.distance_transform_edt(reach, sampling=gsp) > radius_mm
    gain = (closed & ~cp)[pad:-pad, pad:-pad, pad:-pad]
    gain = ndimage.binary_opening(gain, structure=CROSS_SLICEWISE)
    up = np.repeat(np.repeat(np.repeat(gain, f[0], 0), f[1], 1), f[2], 2)
    return up[:lung.shape[0], :lung.shape[1], :lung.shape[2]]



def lung_beneath(lung: np.ndarray, superior_is_high: bool) -> np.ndarray:
    """True where some voxel of ``lung`` lies beneath (toward the feet) in the same column."""
    m = lung if superior_is_high else lung[::-1]
    below = np.zeros_like(m)
    np.logical_or.accumulate(m[:-1], axis=0, out=below[1:])
    return below if superior_is_high else below[::-1]


def drop_subphrenic(added: np.ndarray, beneath: np.ndarray) -> np.ndarray:
    """The parts of ``added`` (holes filled, ball-closing gain) that are not organs below the lung.

    The liver dome, the spleen, the stomach and the base of the heart bulge up into the lungs
    from below: seen through the lung, they are holes in its slices, and narrower than the ball
    of the mass closing near their tops.  What sets them apart from a nodule or a mass is what
    lies beneath: an organ rises from the abdomen, so no lung lies under it, while lung lies
    beneath a lesion inside the lung or against the mediastinum.  Each 3-D component of
    ``added`` is kept whole when lung lies beneath at least half of its voxels, and dropped
    whole otherwise.
    """
    lab, n = ndimage.label(added)
    if n == 0:
        return added
    total = np.bincount(lab.ravel(), minlength=n + 1)
    under = np.bincount(lab.ravel(), weights=beneath.ravel(), minlength=n + 1)
    keep = under * 2 >= total
    keep[0] = False
    return keep[lab]


def refine_lung(lung: np.ndarray, allowed: np.ndarray, sp: np.ndarray, *, closing_mm: float,
                mass_mm: float, mass_grid_mm: float, superior_is_high: bool = True) -> np.ndarray:
    """Hole filling, in-plane closing and ball closing of one lung (see module doc)."""
    pad_mm = mass_mm + 2 * float(sp.max())
    pad = (int(math.ceil(mass_mm / sp[0])) + 1,) + tuple(int(math.ceil(pad_mm / s))
                                                         for s in sp[1:])
    box = crop_box(lung, pad)
    m = lung[box]
    ok = allowed[box]
    beneath = lung_beneath(m, superior_is_high)
    # vessels and nodules inside the lung; a larger hole is the top of the diaphragm's dome or
    # of the heart, seen through the lung (a mass that size is the ball closing's business)
    holes = fill_holes(m, slicewise=True, max_size=int(MAX_HOLE_MM2 / (sp[1] * sp[2]))) & ~m
    m = m | drop_subphrenic(holes, beneath)
    if closing_mm > 0:
        # in-plane, on the lung's own slices and bounding box (with a margin)
        inner = crop_box(m, (0,) + tuple(int(math.ceil(closing_mm / s)) + 1 for s in sp[1:]))
        m[inner] |= close_disc(m[inner], closing_mm, sp) & ok[inner]
    if mass_mm > 0:
        gain = ball_closing_gain(m, sp, mass_mm, mass_grid_mm)
        # the gain is known to a grid cell: a margin keeps the lesion's edge
        gain = dilate_disc(gain, GAIN_MARGIN_MM, sp) & ok & ~m
        m |= drop_subphrenic(gain, beneath)
    m = fill_holes(m, slicewise=False)
    out = np.zeros_like(lung)
    out[box] = m
    return out


