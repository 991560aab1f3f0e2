"""The lung mask's entry point: :func:`segment_lungs` and its result, :class:`LungMask`.

It runs the steps of the package docstring (:mod:`lungcad.lungmask`) in order, and checks
that the volume found is plausible; when it is not, the mask is the body's box
(:func:`lungcad.lungmask.box.fallback_box`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from lungcad.checks import check_spacing, check_volume

from .anatomy import body_and_inner_air, find_trachea, gas_pockets, noise_hu, two_lungs
from .box import fallback_box
from .grid import SLICEWISE, block_mean, block_median, fine_mask
from .refine import refine_lung

NOISY_HU = 60.0            # noise above which the scan is smoothed before the threshold


@dataclass
class LungMask:
    """The result of :func:`segment_lungs`.

    Attributes
    ----------
    mask : ndarray of bool, (z, y, x)
        Lung voxels, same shape as the input.
    volume_ml : float
        Volume of ``mask`` in millilitres.
    fallback : bool
        True when the segmentation failed and ``mask`` is the body's bounding box.
    warnings : list of str
        Human-readable problems (one line each), for the scan's result.
    info : dict
        Diagnostics: ``n_lungs`` found, ``trachea_found`` (and removed), ``gas_pockets_ml``
        (stomach or bowel gas cut off), ``work_spacing_mm`` (the coarse grid) and
        ``segmented_volume_ml`` (the volume found, before any fallback).
    """

    mask: np.ndarray
    volume_ml: float
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def segment_lungs(hu, *, spacing_zyx, direction=None, threshold_hu: float = -320.0,
                  plausible_litres: tuple[float, float] = (0.5, 12.0),
                  closing_mm: float = 12.0, mass_mm: float = 35.0, mass_grid_mm: float = 4.0,
                  gas_hu: float = -950.0,
                  work_mm: float = 2.0) -> LungMask:
    """Segment the lungs of a chest CT scan.

    Parameters
    ----------
    hu : ndarray, (z, y, x)
        Hounsfield units.  Values below -1024 (padding outside the field of view) count as air.
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    direction : 3x3, optional
        Columns are the world directions of the x, y, z index axes.  Only its last column is
        used, to know which end of the slice axis is the head (identity when None: the last
        slice is the most superior, as in DICOM series sorted by position).
    threshold_hu : float, optional
        Air/tissue threshold.
    plausible_litres : (float, float), optional
        A lung volume outside this range is a failure (fallback to the body box).
    closing_mm : float, optional
        Radius of the in-plane closing of each lung; it keeps juxta-pleural nodules up to about
        this diameter.
    mass_mm : float, optional
        Radius of the ball closing that keeps lesions bulging into the lung from the chest
        wall, the mediastinum or the hilum (``0`` turns it off).  Lesions up to about twice
        this size are kept whole.
    mass_grid_mm : float, optional
        Grid of the ball closing.
    gas_hu : float, optional
        Air darker than this is pure gas: lung is denser.  Pockets of it surrounded by tissue
        (stomach, bowel) are cut off from the lungs.
    work_mm : float, optional
        In-plane size of the coarse grid on which the morphology runs.

    Returns
    -------
    LungMask
    """
    hu = check_volume("hu", hu)
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    lo_l, hi_l = (float(v) for v in plausible_litres)
    if not 0 <= lo_l < hi_l:
        raise ValueError(f"plausible_litres: expected (low, high) with 0 <= low < high. "
                         f"Received {plausible_litres!r}")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    superior_is_high = bool(d[2, 2] >= 0)
    voxel_ml = float(np.prod(sp)) / 1000.0

    fy = max(1, int(round(work_mm / sp[1])))
    fx = max(1, int(round(work_mm / sp[2])))
    csp = np.array([sp[0], sp[1] * fy, sp[2] * fx])
    noise = noise_hu(hu)
    raw = hu
    smooth_px = 0.0
    if noise > NOISY_HU:
        # low dose and sharp kernels: a threshold on single pixels would speckle the body and
        # the lungs; an in-plane Gaussian brings the noise down first (edges at the
        # threshold, half-way between lung and tissue, do not move)
        smooth_px = min(3.0, noise / 100.0)
        hu = ndimage.gaussian_filter(np.nan_to_num(hu.astype(np.float32), nan=-1024.0),
                                     sigma=(0.0, smooth_px, smooth_px))
    coarse = block_mean(hu, fy, fx)
    air = coarse < threshold_hu
    body, inner = body_and_inner_air(air, csp)
    info: dict[str, Any] = {"work_spacing_mm": csp.round(3).tolist(), "noise_hu": round(noise, 1),
                            "smoothing_mm": round(smooth_px * float(sp[1]), 2)}
    trachea = find_trachea(hu, inner, body, csp, (fy, fx), superior_is_high)
    info["trachea_found"] = bool(trachea.any())
    if trachea.any():
        trachea = ndimage.binary_dilation(trachea, structure=SLICEWISE) & inner
    cand = inner & ~trachea
    # in a noisy scan, pure gas is judged by medians of the unsmoothed scan (see gas_pockets)
    gas = (gas_pockets(cand, block_median(raw, fy, fx), air, csp, gas_hu=gas_hu, robust=True) if smooth_px
           else gas_pockets(cand, coarse, air, csp, gas_hu=gas_hu))
    info["gas_pockets_ml"] = round(float(gas.sum()) * float(np.prod(csp)) / 1000.0, 1)
    cand &= ~gas

    lungs = two_lungs(cand, csp)
    n_lungs = int(lungs.max())
    info["n_lungs"] = n_lungs

    out = np.zeros(cand.shape, bool)
    if n_lungs:
        allowed = body & ~trachea
        for label in range(1, n_lungs + 1):
            one = lungs == label
            other = (lungs > 0) & ~one
            out |= refine_lung(one, allowed & ~other, csp, closing_mm=closing_mm,
                               mass_mm=mass_mm, mass_grid_mm=mass_grid_mm,
                               superior_is_high=superior_is_high)

    mask = fine_mask(out, lungs > 0, hu, fy, fx, threshold_hu)
    volume_ml = float(mask.sum()) * voxel_ml
    info["segmented_volume_ml"] = round(volume_ml, 1)
    warnings: list[str] = []
    if volume_ml == 0.0 or not lo_l * 1000 <= volume_ml <= hi_l * 1000:
        why = ("no lung found" if volume_ml == 0.0 else
               f"implausible lung volume {volume_ml / 1000:.2f} L "
               f"(expected {lo_l:g}-{hi_l:g} L)")
        mask = np.zeros(hu.shape, bool)
        box, where = fallback_box(hu, body, sp, fy, fx, threshold_hu)
        mask[box] = True
        warnings.append(f"lung mask: {why}; using {where} instead")
        return LungMask(mask=mask, volume_ml=float(mask.sum()) * voxel_ml, fallback=True,
                        warnings=warnings, info=info)
    return LungMask(mask=mask, volume_ml=volume_ml, fallback=False, warnings=warnings,
                    info=info)


