"""Steps 6-7 of :mod:`lungcad.morphology`: the map at a second, lower level (weak
components: faint blobs clear of the first threshold's foreground) and at a third, higher
one (split components: the parts of large components).
"""
from __future__ import annotations

import numpy as np

from lungcad.checks import check_distance, check_spacing, check_volume

from .components import dilate, erode, label_slices, threshold


def weak_components(prob, strong, *, level: float, spacing_zyx, dilation_mm: float = 1.0,
                    erosion_mm: float = 1.0) -> tuple[np.ndarray, int]:
    """Per-slice components of the map at a lower ``level`` that keep clear of ``strong``.

    ``prob >= level`` is closed like the main threshold (``dilation_mm``, ``erosion_mm``) and
    labelled per slice (8-connected); a component is dropped when it shares a pixel with
    ``strong`` (the foreground of the main threshold) in its own slice or in the slice just
    above or below, so a faint blob is never the rim or the cap of a stronger detection.

    ``spacing_zyx`` is the voxel spacing (z, y, x) in mm.

    Returns ``(labels, n)``: the kept components numbered 1..n in C order, 0 elsewhere.
    """
    prob = check_volume("prob", prob)
    strong = check_volume("strong", strong).astype(bool)
    if strong.shape != prob.shape:
        raise ValueError(f"strong: expected the shape of prob {prob.shape}. Received {strong.shape}")
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    fg = erode(dilate(threshold(prob, level=level), radius_mm=dilation_mm, spacing_zyx=sp),
               radius_mm=erosion_mm, spacing_zyx=sp)
    labels, n = label_slices(fg)
    if n == 0:
        return labels, 0
    # the labelled pixels are few: work on them, not on the whole volume
    at = np.flatnonzero(labels)
    lab = labels.reshape(-1)[at]
    k = at // (labels.shape[1] * labels.shape[2])
    inplane = at % (labels.shape[1] * labels.shape[2])
    flat_strong = strong.reshape(strong.shape[0], -1)
    near = flat_strong[k, inplane].copy()
    near[k > 0] |= flat_strong[k[k > 0] - 1, inplane[k > 0]]
    last = k < strong.shape[0] - 1
    near[last] |= flat_strong[k[last] + 1, inplane[last]]
    drop = np.zeros(n + 1, dtype=bool)
    drop[lab[near]] = True
    drop[0] = True
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[~drop] = np.arange(1, int((~drop).sum()) + 1, dtype=np.int32)
    out = np.zeros(labels.shape, dtype=np.int32)
    out.reshape(-1)[at] = remap[lab]
    return out, int((~drop).sum())


def split_components(prob, labels, n: int, *, level: float, min_diameter_mm: float,
                     spacing_zyx) -> tuple[np.ndarray, int]:
    """The parts at a higher ``level`` of the large per-slice components of ``labels``.

    A nodule that touches the hilum or a vessel trunk comes out of the first threshold as one
    component with them, and the candidate's centre lies between the two.  Inside a component at
    least ``min_diameter_mm`` across (the diameter of a disc of its area), the pixels with
    ``prob >= level`` are labelled again (8-connected, per slice).  Those parts are kept when the
    level splits the component (two parts or more) or leaves less than half of its area (one
    part, off its centre); a component that stays whole at the higher level gives nothing.

    ``spacing_zyx`` is the voxel spacing (z, y, x) in mm.

    Returns ``(labels, n)``: the kept parts numbered 1..n in C order, 0 elsewhere.
    """
    prob = check_volume("prob", prob)
    labels = check_volume("labels", labels)
    if labels.shape != prob.shape:
        raise ValueError(f"labels: expected the shape of prob {prob.shape}. Received {labels.shape}")
    if not 0.0 < float(level) <= 1.0:
        raise ValueError(f"level: expected a level in (0, 1]. Received {level!r}")
    sp = check_spacing(spacing_zyx, "spacing_zyx")
    min_area = np.pi * (check_distance("min_diameter_mm", min_diameter_mm) / 2.0) ** 2
    empty = np.zeros(labels.shape, dtype=np.int32)
    if n == 0:
        return empty, 0
    area = np.bincount(labels.reshape(-1), minlength=n + 1).astype(float) * sp[1] * sp[2]
    big = area >= min_area
    big[0] = False
    if not big.any():
        return empty, 0
    at = np.flatnonzero(big[labels.reshape(-1)])       # the pixels of large components
    inside = np.zeros(labels.shape, dtype=bool)
    inside.reshape(-1)[at] = prob.reshape(-1)[at] >= level
    parts, m = label_slices(inside)
    if m == 0:
        return empty, 0
    at = np.flatnonzero(parts)
    part, parent = parts.reshape(-1)[at], labels.reshape(-1)[at]
    owner = np.zeros(m + 1, dtype=np.int64)
    owner[part] = parent                               # a part lies in one component
    n_parts = np.bincount(owner[1:], minlength=n + 1)
    covered = np.bincount(parent, minlength=n + 1).astype(float) * sp[1] * sp[2]
    keep_comp = (n_parts >= 2) | (covered < 0.5 * area)
    keep = keep_comp[owner]
    keep[0] = False
    remap = np.zeros(m + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out = empty
    out.reshape(-1)[at] = remap[part]
    return out, int(keep.sum())
