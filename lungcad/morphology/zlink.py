"""Step 5 of :mod:`lungcad.morphology`: 2-D detections linked across slices into 3-D
candidates, by in-plane centroid distance (:func:`merge_z`) or by overlapping footprints
(:func:`overlap_links`: a mass on thick slices).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungcad.checks import check_distance, check_volume

from .merge import UnionFind


def merge_z(dets2d: pd.DataFrame, *, radius_mm: float, max_gap_slices: int = 1,
            links=None) -> pd.DataFrame:
    """Link 2-D detections across slices into 3-D candidates.

    Detections in slices ``k`` and ``k + d`` with ``1 <= d <= max_gap_slices`` whose
    in-plane centroids are within ``radius_mm`` link; candidates are the connected groups of
    that graph.  ``max_gap_slices=1`` links neighbouring slices only; 2 also bridges one
    empty slice.  ``links`` adds edges of its own: pairs of row positions of ``dets2d``
    (:func:`overlap_links` gives the pairs whose footprints overlap).

    Parameters
    ----------
    dets2d : pandas.DataFrame
        A 2-D detection table (:func:`components_2d` or :func:`merge_by_distance`).
    radius_mm : float
    max_gap_slices : int, optional

    Returns
    -------
    pandas.DataFrame
        A copy of ``dets2d`` (index reset) with an integer column ``candidate``,
        numbered from 0 in order of first appearance.
    """
    radius_mm = check_distance("radius_mm", radius_mm)
    if isinstance(max_gap_slices, bool) or int(max_gap_slices) != max_gap_slices \
            or max_gap_slices < 1:
        raise ValueError(f"max_gap_slices: expected an integer >= 1. "
                         f"Received max_gap_slices={max_gap_slices!r}")
    d = dets2d.reset_index(drop=True).copy()
    if len(d) == 0:
        d["candidate"] = pd.Series(dtype=int)
        return d
    uf = UnionFind(len(d))
    by_slice = d.groupby("slice").indices
    pts = d[["y_mm", "x_mm"]].to_numpy()
    for k, idx in by_slice.items():
        for step in range(1, int(max_gap_slices) + 1):
            other = by_slice.get(k + step)
            if other is None:
                continue
            dist = np.sqrt(((pts[idx][:, None, :] - pts[other][None, :, :]) ** 2).sum(-1))
            ii, jj = np.nonzero(dist <= radius_mm)
            for a, b in zip(ii, jj):
                uf.union(int(idx[a]), int(other[b]))
    for a, b in (links if links is not None else ()):
        if not (0 <= a < len(d) and 0 <= b < len(d)):
            raise ValueError(f"links: expected row positions of dets2d (0..{len(d) - 1}). "
                             f"Received the pair ({a}, {b})")
        uf.union(int(a), int(b))
    d["candidate"] = uf.groups()
    return d


def overlap_links(labels: np.ndarray, dets2d: pd.DataFrame, *, min_fraction: float,
                  min_diameter_mm: float = 0.0) -> list[tuple[int, int]]:
    """Pairs of detections in neighbouring slices whose footprints overlap.

    Two detections of slices ``k`` and ``k + 1`` pair when the pixels they share in-plane
    are at least ``min_fraction`` of the smaller one's pixels and both are at least
    ``min_diameter_mm`` across (the diameter of a disc of their area).  A large lesion on
    thick slices moves its in-plane centroid by more than a small-nodule radius from one
    slice to the next (a 4 cm mass on 8 mm slices: 10 mm and more), yet each of its slices
    lies on the next one; this keeps such a lesion one candidate.  The size floor keeps a
    vessel's cross-section, which lies on a nodule's top or bottom slice, from joining the
    nodule (the centroid rule of :func:`merge_z` still decides for small detections).

    Parameters
    ----------
    labels : ndarray of int, (z, y, x)
        The per-slice component labels that ``dets2d`` was measured from.
    dets2d : pandas.DataFrame
        A 2-D detection table whose ``labels`` column lists each detection's labels.
    min_fraction : float in (0, 1]
    min_diameter_mm : float, optional

    Returns
    -------
    list of (int, int)
        Row positions in ``dets2d``, for :func:`merge_z`'s ``links``.
    """
    if not (0.0 < float(min_fraction) <= 1.0):
        raise ValueError(f"min_fraction: expected a fraction in (0, 1]. Received {min_fraction!r}")
    labels = check_volume("labels", labels)
    d = dets2d.reset_index(drop=True)
    if len(d) < 2:
        return []
    n_labels = int(labels.max())
    owner = np.full(n_labels + 1, -1, dtype=np.int64)
    for i, labs in enumerate(d["labels"]):
        owner[list(labs)] = i
    npix = d["n_pixels"].to_numpy(dtype=float)
    area = d["area_mm2"].to_numpy(dtype=float)
    min_area = np.pi * (check_distance("min_diameter_mm", min_diameter_mm) / 2.0) ** 2
    slices = set(d["slice"].astype(int))
    out = []
    for k in sorted(slices):
        if k + 1 not in slices:
            continue
        a, b = owner[labels[k]], owner[labels[k + 1]]
        both = (a >= 0) & (b >= 0)
        if not both.any():
            continue
        pairs, shared = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
        for (i, j), n in zip(pairs.T, shared):
            if n >= min_fraction * min(npix[i], npix[j]) and min(area[i], area[j]) >= min_area:
                out.append((int(i), int(j)))
    return out
