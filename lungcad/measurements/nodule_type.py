"""A nodule's type from the HU inside its segmentation: solid, part-solid, ground-glass or
calcified, and the solid component of a part-solid one.

* **calcified**: at least :data:`CALCIFIED_FRACTION` of the nodule at or above
  :data:`CALCIFIED_HU` (bone-like density through a good part of it: a diffuse, central, laminated
  or popcorn pattern, the benign ones; a speck at the rim is not enough);
* the **solid component**: the voxels at or above :data:`SOLID_HU` (soft tissue; ground glass lies
  below it), its largest connected part; its share of the nodule's diameter
  ``(V_solid / V) ** (1/3)`` (equivalent spheres) decides:
  **solid** from :data:`SOLID_SHARE`, **ground-glass** below :data:`GROUND_GLASS_SHARE`, and
  **part-solid** between.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TYPES = ("solid", "part-solid", "ground-glass", "calcified")
#: HU from which a voxel is calcium-dense, and the share of the nodule that must be.
CALCIFIED_HU = 350.0
CALCIFIED_FRACTION = 0.10
#: HU from which a voxel is solid (soft tissue); ground glass lies below.
SOLID_HU = -300.0
#: Shares of the nodule's diameter (equivalent spheres) the solid component must reach for a solid
#: nodule, and stay below for a ground-glass one.
SOLID_SHARE = 0.80
GROUND_GLASS_SHARE = 0.40


#: The in-plane cross that takes specks of noise off the solid component.
_PLANAR_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)


@dataclass
class NoduleType:
    """``type`` (one of :data:`TYPES`), the solid component's mask (bool, the nodule's grid),
    its share of the diameter, and the calcium-dense fraction."""

    type: str
    solid_mask: np.ndarray
    solid_share: float
    calcified_fraction: float


def classify(hu: np.ndarray, mask: np.ndarray) -> NoduleType:
    """The type of the nodule ``mask`` (bool) from ``hu`` (same grid)."""
    vals = hu[mask].astype(np.float32)
    n = len(vals)
    if n == 0:
        return NoduleType("solid", np.zeros_like(mask), 0.0, 0.0)
    calc = float((vals >= CALCIFIED_HU).mean())
    solid = mask & (hu >= SOLID_HU)
    if solid.any():
        solid = ndimage.binary_opening(solid, _PLANAR_CROSS) if solid.sum() > 27 else solid
    lab, k = ndimage.label(solid)
    if k > 1:
        sizes = np.bincount(lab.ravel())[1:]
        solid = lab == (int(np.argmax(sizes)) + 1)
    share = float((solid.sum() / n) ** (1.0 / 3.0))
    if calc >= CALCIFIED_FRACTION:
        kind = "calcified"
    elif share >= SOLID_SHARE:
        kind = "solid"
    elif share < GROUND_GLASS_SHARE:
        kind = "ground-glass"
    else:
        kind = "part-solid"
    return NoduleType(kind, solid, share, calc)
