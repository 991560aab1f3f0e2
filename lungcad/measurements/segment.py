"""One nodule's 3-D segmentation, from the U-Net map and the HU around its candidate.

The U-Net map says where the nodule is but draws it too large (on phantoms its 0.5 level holds
about twice the lesion's volume), so it only *gates*: the HU draw the border.

1. A box around the candidate centre, ``max(1.5 d, d + 16 mm)`` wide (d: the candidate's
   diameter; at most 120 mm), and in it the *gate*: the component of ``prob >= gate_level`` at
   the centre, grown by ``gate_grow_mm``, inside the lung mask (so the chest wall stays out; the
   mask's closing keeps juxta-pleural nodules in it).
2. The lung level ``hu_lung``: the median HU of the lung outside the gate (below -500 HU).
3. A loose region, HU at least ``hu_lung + 150``, connected to the centre, and the *plateau*
   ``hu_edge``: the 75th percentile of the HU within 1.5 mm (or a pixel) of the centre, at most
   100 HU (a calcified nodule's border is that of its soft-tissue rim).  The border lies at half
   the step, ``(hu_lung + hu_edge) / 2`` (half maximum: the scanner's blur moves it neither in
   nor out), holes filled.
4. A solid centre with ground glass around it (HU below -300, beyond a voxel of the solid part,
   at least half its volume) is part-solid: the plateau is then the ground glass's median, and
   the border that of the ground glass.
5. An in-plane opening of radius ``min(open_mm, d / 4)``, at least a pixel, and the component at
   the centre: the vessels thinner than about twice that radius come off.  Then a 3-D opening of
   a quarter of the nodule's diameter (at most 4 mm; vessels across the slices, stalks), kept only
   when it keeps 70 % of the region.

Every distance is in mm; voxels stay inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: HU a loose region starts above the lung (step 3).
LOOSE_ABOVE_LUNG_HU = 150.0
#: The lung level when the box has no lung to measure it (HU).
DEFAULT_LUNG_HU = -850.0
#: The plateau used for the border is at most this (HU): a calcified nodule's border is that of its
#: soft-tissue rim.
SOLID_PLATEAU_HU = 100.0
#: Below this HU a plateau is ground glass; a solid centre with ground glass around it, at least
#: GLASS_SHARE of the solid part's volume (beyond a voxel of it), is part-solid.
GLASS_BELOW_HU = -300.0
GLASS_SHARE = 0.5
#: The 3-D opening's radius: this share of the nodule's diameter (the smaller of the candidate's and
#: the region's equivalent-sphere one), at most ADAPTIVE_OPEN_MAX_MM.
ADAPTIVE_OPEN = 0.25
ADAPTIVE_OPEN_MAX_MM = 4.0
#: ... kept only when it keeps at least this share of the region (a vessel is a small part of it).
ADAPTIVE_KEEP = 0.7
#: The plateau at the centre: this percentile of the HU within 1.5 mm (or a pixel) of it.
CENTRE_PERCENTILE = 75.0


@dataclass
class NoduleMask:
    """A nodule's segmentation on a box of the scan's grid.

    ``mask`` is bool on ``box`` (three slices, z y x, of the scan's grid); ``fraction`` the
    partial-volume fraction of each voxel of the box (0 lung .. 1 nodule plateau), used for the
    volume; ``threshold`` the HU of the border, ``hu_lung`` and ``hu_edge`` the two levels it lies
    between."""

    mask: np.ndarray
    box: tuple
    fraction: np.ndarray
    threshold: float
    hu_lung: float
    hu_edge: float

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


def box_around(centre_zyx, half_mm: float, spacing_zyx, shape) -> tuple:
    """Slices (z, y, x) of the voxels within ``half_mm`` of a voxel centre, clipped to ``shape``."""
    c = np.asarray(centre_zyx, float)
    h = half_mm / np.asarray(spacing_zyx, float)
    lo = np.maximum(np.floor(c - h).astype(int), 0)
    hi = np.minimum(np.ceil(c + h).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def ball(radius_mm: float, spacing_zyx, *, planar: bool = False) -> np.ndarray:
    """A ball (or, ``planar``, an axial disc) of ``radius_mm`` as a structuring element."""
    sp = np.asarray(spacing_zyx, float)
    r = np.floor(radius_mm / sp + 1e-9).astype(int)
    if planar:
        r[0] = 0
    grids = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, sp)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def component_at(mask: np.ndarray, centre_zyx, spacing_zyx, *, reach_mm: float = 3.0) -> np.ndarray:
    """The connected component of ``mask`` at a voxel centre: the one holding it, or else the
    largest one within ``reach_mm`` of it.  Empty when there is none."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    c = np.clip(np.round(np.asarray(centre_zyx)).astype(int), 0, np.array(mask.shape) - 1)
    k = lab[tuple(c)]
    if k == 0:
        sp = np.asarray(spacing_zyx, float)
        grids = np.meshgrid(*[(np.arange(n_) - c_) * s for n_, c_, s in zip(mask.shape, centre_zyx, sp)],
                            indexing="ij")
        near = (sum(g ** 2 for g in grids) <= reach_mm ** 2) & (lab > 0)
        if not near.any():
            return np.zeros_like(mask)
        counts = np.bincount(lab[near])
        k = int(np.argmax(counts))
    return lab == k


def segment_nodule(hu: np.ndarray, prob, lung_mask: np.ndarray | None, *, spacing_zyx, centre_zyx,
                   diameter_mm: float, gate_level: float = 0.5, gate_grow_mm: float = 1.0,
                   open_mm: float = 1.5) -> NoduleMask:
    """Segment the nodule of one candidate (see the module's text for the steps).

    Parameters
    ----------
    hu : int16 (z, y, x), the scan
    prob : callable ``prob(box) -> float32`` on the box, or an array the shape of ``hu``
        The U-Net's probability map.
    lung_mask : bool (z, y, x), optional
    spacing_zyx : (z, y, x) mm
    centre_zyx : the candidate's centre, fractional voxel indices (z, y, x)
    diameter_mm : the candidate's diameter (mm), which sizes the box
    gate_level, gate_grow_mm, open_mm : see steps 1 and 5
    """
    sp = np.asarray(spacing_zyx, float)
    d = max(float(diameter_mm), 3.0)
    half = min(max(0.75 * d, 0.5 * d + 8.0), 60.0)
    box = box_around(centre_zyx, half, sp, hu.shape)
    h = hu[box].astype(np.float32)
    p = prob(box) if callable(prob) else np.asarray(prob[box], np.float32)
    c = np.asarray(centre_zyx, float) - [s.start for s in box]
    lung = np.ones(h.shape, bool) if lung_mask is None else lung_mask[box]

    # 1. the gate: where the U-Net sees this nodule, a little grown, inside the lung
    gate = component_at(p >= gate_level, c, sp, reach_mm=max(3.0, d / 4))
    if not gate.any():                      # the map has nothing here: a sphere of the candidate's size
        gate = _sphere(h.shape, c, sp, d / 2 + 1.0)
    gate = ndimage.binary_dilation(gate, ball(gate_grow_mm, sp)) & lung

    # 2. the lung around it
    around = lung & ~gate & (h < -500.0)
    hu_lung = float(np.median(h[around])) if around.sum() >= 20 else DEFAULT_LUNG_HU

    # 3. the loose region, and the plateau at its centre
    reach = max(2.0, d / 4)
    loose = _fill_holes(component_at(gate & (h >= hu_lung + LOOSE_ABOVE_LUNG_HU), c, sp, reach_mm=reach))
    empty = NoduleMask(np.zeros(h.shape, bool), box, np.zeros(h.shape, np.float32), np.nan, hu_lung, np.nan)
    if not loose.any():
        return empty
    centre_ball = _sphere(h.shape, c, sp, max(1.5, 1.01 * float(sp[1:].max()))) & loose
    hu_centre = float(np.percentile(h[centre_ball if centre_ball.any() else loose], CENTRE_PERCENTILE))
    hu_edge = min(max(hu_centre, hu_lung + 2 * LOOSE_ABOVE_LUNG_HU), SOLID_PLATEAU_HU)
    region = _fill_holes(component_at(loose & (h >= 0.5 * (hu_lung + hu_edge)), c, sp, reach_mm=reach))

    # 4. a solid centre in ground glass (part-solid): the border is the ground glass's
    if hu_edge >= GLASS_BELOW_HU and region.any():
        # a voxel beyond the solid part: not its blur, nor its partial volume in z
        away = ~ndimage.binary_dilation(region, ndimage.generate_binary_structure(3, 1))
        glass = loose & away & (h < GLASS_BELOW_HU)
        if glass.sum() >= GLASS_SHARE * region.sum():
            hu_edge = max(float(np.median(h[glass])), hu_lung + 2 * LOOSE_ABOVE_LUNG_HU)
            region = _fill_holes(component_at(loose & (h >= 0.5 * (hu_lung + hu_edge)), c, sp, reach_mm=reach))
    threshold = 0.5 * (hu_lung + hu_edge)

    # 5. vessels off: an axial opening, and the component at the centre again; then a 3-D
    #    opening scaled to the nodule (vessels running across the slices, thicker stalks)
    pixel = float(sp[1:].max())
    r_open = max(min(open_mm, d / 4), 1.01 * pixel)
    if d >= 4.0 * pixel:
        opened = ndimage.binary_opening(region, ball(r_open, sp, planar=True))
        opened = component_at(opened, c, sp, reach_mm=max(2.0, d / 4))
        if opened.sum() >= 0.5 * region.sum():
            region = opened
    d_region = (6.0 * region.sum() * float(np.prod(sp)) / np.pi) ** (1.0 / 3.0)
    r3 = min(ADAPTIVE_OPEN * min(d_region, d), ADAPTIVE_OPEN_MAX_MM)
    if r3 >= 1.01 * pixel:
        opened = ndimage.binary_opening(region, ball(r3, sp))
        opened = component_at(opened, c, sp, reach_mm=max(2.0, d / 4))
        if opened.sum() >= ADAPTIVE_KEEP * region.sum():     # more off: it cut the nodule itself
            region = opened
    if not region.any():
        return empty
    fraction = np.clip((h - hu_lung) / (hu_edge - hu_lung), 0.0, 1.0).astype(np.float32)
    return NoduleMask(region, box, fraction, threshold, hu_lung, hu_edge)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3-D and in each axial slice."""
    out = ndimage.binary_fill_holes(mask)
    for k in range(out.shape[0]):
        if out[k].any():
            out[k] = ndimage.binary_fill_holes(out[k])
    return out


def _sphere(shape, centre, spacing, radius_mm: float) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def partial_volume_mm3(seg: NoduleMask, spacing_zyx) -> float:
    """The nodule's volume (mm^3): the partial-volume fraction summed over its mask grown by one
    voxel in each direction, so that the border voxels count by how much of them the nodule fills,
    those just below the threshold as well as those just above it."""
    if seg.empty:
        return 0.0
    shell = ndimage.binary_dilation(seg.mask, ndimage.generate_binary_structure(3, 1))
    return float(seg.fraction[shell].sum() * float(np.prod(spacing_zyx)))


def binary_volume_mm3(seg: NoduleMask, spacing_zyx) -> float:
    """The volume (mm^3) of the mask's voxels."""
    return float(seg.mask.sum() * float(np.prod(spacing_zyx)))
