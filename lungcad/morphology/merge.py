"""Step 4 of :mod:`lungcad.morphology`: the detections of one slice whose centroids are
closer than a distance in mm become one; and the union-find that it and
:mod:`.zlink` group with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungcad.checks import check_distance

from .components import DETECTION_COLUMNS, empty_detections


class UnionFind:
    """Disjoint sets over 0..n-1; a union keeps the smaller root."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> np.ndarray:
        """Group index per element, numbered 0.. in order of first appearance."""
        roots = np.array([self.find(i) for i in range(len(self.parent))], dtype=int)
        _, first, inv = np.unique(roots, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        return order[inv]


def merge_by_distance(dets2d: pd.DataFrame, *, distance_mm: float) -> pd.DataFrame:
    """Merge the detections of each slice whose centroids are closer than ``distance_mm``.

    Merging is transitive (single linkage).  A merged detection has the probability-weighted
    centroid of its parts, their summed pixels, area and probability, their largest
    probability, and the union of their ``labels``.

    Parameters
    ----------
    dets2d : pandas.DataFrame
        A 2-D detection table (:func:`components_2d`).
    distance_mm : float

    Returns
    -------
    pandas.DataFrame
        A 2-D detection table, ordered by slice.
    """
    distance_mm = check_distance("distance_mm", distance_mm)
    if len(dets2d) == 0:
        return empty_detections()
    d = dets2d.reset_index(drop=True)
    uf = UnionFind(len(d))
    for _, idx in d.groupby("slice").indices.items():
        if len(idx) < 2:
            continue
        pts = d.loc[idx, ["y_mm", "x_mm"]].to_numpy()
        dist = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        ii, jj = np.nonzero(np.triu(dist < distance_mm, k=1))
        for a, b in zip(ii, jj):
            uf.union(int(idx[a]), int(idx[b]))
    group = uf.groups()
    n_groups = int(group.max()) + 1

    def total(col):
        return np.bincount(group, weights=d[col].to_numpy(float), minlength=n_groups)

    w = np.maximum(d["prob_sum"].to_numpy(float), 1e-12)
    wsum = np.bincount(group, weights=w, minlength=n_groups)
    centre = {c: np.bincount(group, weights=w * d[c].to_numpy(float), minlength=n_groups) / wsum
              for c in ("y", "x", "y_mm", "x_mm")}
    npix = total("n_pixels")
    psum = total("prob_sum")
    pmax = np.full(n_groups, -np.inf)
    np.maximum.at(pmax, group, d["max_prob"].to_numpy(float))
    first = np.unique(group, return_index=True)[1]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    labels = [tuple(sorted(lab for i in part for lab in d["labels"].iat[i]))
              for part in np.split(order, bounds)]
    out = pd.DataFrame({
        "slice": d["slice"].to_numpy()[first].astype(int), **centre,
        "n_pixels": npix.astype(int), "area_mm2": total("area_mm2"), "prob_sum": psum,
        "max_prob": pmax, "mean_prob": np.where(npix > 0, psum / np.maximum(npix, 1), 0.0),
        "labels": labels,
    }, columns=DETECTION_COLUMNS)
    return out.sort_values("slice", kind="stable").reset_index(drop=True)
