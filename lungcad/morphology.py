"""From a nodule probability map to the candidate table.

The candidate U-Net works slice by slice, so this stage does too:

1. :func:`threshold` the probability map;
2. :func:`dilate` then :func:`erode` it (a closing) with structuring elements sized in mm;
3. :func:`components_2d`: connected components in each slice, as 2-D detections;
4. :func:`merge_by_distance`: detections of one slice whose centroids are closer than D mm
   become one (a nodule that the network split into several blobs);
5. :func:`merge_z`: detections in neighbouring slices whose in-plane centroids are within
   R mm link into one 3-D candidate, and so do those whose footprints overlap by a given
   fraction of the smaller one and are both large (:func:`overlap_links`: a mass on thick
   slices);
6. with ``weak_threshold``, :func:`weak_components` adds faint blobs: per-slice components of
   the map at that lower level that share no pixel with the first threshold's foreground, in
   their slice or at the same place in the slices just above and below.  A 4 mm nodule on 5 mm slices fills a slice to less
   than half, and the U-Net answers 0.2-0.4 there; these blobs go through steps 4-5 on
   their own (they never join a candidate of the first threshold) and come after them;
7. with ``split_threshold``, :func:`split_components` labels the large components of the first
   threshold again at that higher level: a nodule that the map joins to the hilum stands apart
   there, and the parts go through steps 4-5 among themselves and become candidates next to
   the whole component's (measured on their own, so that they may share its voxels);
8. :func:`extract_candidates` measures each 3-D candidate and returns the candidate table.

Every distance is in millimetres; voxel indices stay inside the functions or travel in
tables next to the spacing that gives them meaning.

Measurements of a 3-D candidate (see :func:`extract_candidates`):

* ``support``: the candidate's voxels grown by one voxel in 3-D (26-connected: the ring
  around it in each slice and the slices just above and below it), without the voxels of
  other candidates.  Below-threshold probabilities there carry the partial-volume
  information that a thresholded mask throws away.
* centre: the probability-weighted centroid over the support.
* ``volume_mm3``: the sum of the probabilities over the support times the voxel volume
  (a "soft" volume).  For a map whose values are the fraction of each voxel inside the
  lesion, this is the lesion's volume whatever the slice thickness.
* ``diameter_mm``: the equivalent-sphere diameter ``(6 V / pi) ** (1/3)``.  On thick slices
  the largest in-plane diameter depends on where the slices cut the lesion: a 6 mm sphere
  whose centre lies between two 5 mm slices shows 3.3 mm in each, so it is not used.
* ``probability`` and ``seg_prob``: the largest probability inside the candidate.

A lesion thinner than a slice (a 6 mm nodule on 8 mm slices) can lie wholly inside one slice;
where it lies within that slice cannot be measured, and its centre is the slice's centre.  On
5 mm slices a nodule of 6 mm or more always spans two slices and its centre comes out within
1 mm (see ``tests/test_morphology.py``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from .checks import check_distance, check_spacing, check_volume
from .result import CANDIDATE_COLUMNS, empty_candidates, table_text
from .volume import voxel_to_world

__all__ = ["threshold", "structuring_element", "dilate", "erode", "components_2d", "weak_components",
           "split_components", "merge_by_distance", "merge_z", "overlap_links", "extract_candidates", "EXTRA_COLUMNS",
           "DETECTION_COLUMNS"]

#: Columns that :func:`extract_candidates` adds to :data:`lungcad.result.CANDIDATE_COLUMNS`.
EXTRA_COLUMNS = ["seg_prob", "volume_mm3", "z_extent_mm", "n_slices"]

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


_apply_threshold = threshold


def structuring_element(radius_mm: float, *, spacing, in_plane: bool = True) -> np.ndarray:
    """An ellipsoid (or, with ``in_plane=True``, a flat disc) of radius ``radius_mm``.

    It holds every voxel offset whose distance in mm from the centre is at most
    ``radius_mm``, with the spacing of each axis.  A radius shorter than the spacing gives a
    single voxel (the identity).

    Parameters
    ----------
    radius_mm : float
    spacing : (z, y, x) mm
    in_plane : bool, optional
        When True the element has one slice (z size 1): it works in each slice alone.

    Returns
    -------
    ndarray of bool, shape (nz, ny, nx), odd sizes
    """
    sp = check_spacing(spacing)
    radius_mm = check_distance("radius_mm", radius_mm)
    half = np.floor(radius_mm / sp + 1e-9).astype(int)
    if in_plane:
        half[0] = 0
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, sp))
    return dist2 <= radius_mm ** 2 + 1e-9


def _morph(op, mask, radius_mm, spacing, in_plane):
    mask = check_volume("mask", mask).astype(bool)
    se = structuring_element(radius_mm, spacing=spacing, in_plane=in_plane)
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


def dilate(mask, *, radius_mm: float, spacing, in_plane: bool = True) -> np.ndarray:
    """Binary dilation by a disc (``in_plane=True``) or ellipsoid of ``radius_mm``.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    radius_mm : float
    spacing : (z, y, x) mm
    in_plane : bool, optional
        Dilate within each slice only (default), or in 3-D.

    Returns
    -------
    ndarray of bool
    """
    return _morph(ndimage.binary_dilation, mask, radius_mm, spacing, in_plane)


def erode(mask, *, radius_mm: float, spacing, in_plane: bool = True) -> np.ndarray:
    """Binary erosion by a disc (``in_plane=True``) or ellipsoid of ``radius_mm``.

    Voxels beyond the array border count as background.  See :func:`dilate`.
    """
    return _morph(ndimage.binary_erosion, mask, radius_mm, spacing, in_plane)


def _label_slices(mask) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_SLICE_STRUCTURE)


def _component_table(labels: np.ndarray, n: int, prob: np.ndarray, sp: np.ndarray) -> pd.DataFrame:
    if n == 0:
        return _empty_detections()
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


def _empty_detections() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=float) for c in DETECTION_COLUMNS})
    df["slice"] = df["slice"].astype(int)
    df["n_pixels"] = df["n_pixels"].astype(int)
    df["labels"] = df["labels"].astype(object)
    return df


def components_2d(mask, prob, *, spacing) -> pd.DataFrame:
    """Connected components of ``mask`` in each slice (8-connected), as 2-D detections.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    prob : ndarray of float, (z, y, x)
        The probability map; it weights the centroids and gives ``max_prob``/``mean_prob``.
    spacing : (z, y, x) mm

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
    sp = check_spacing(spacing)
    labels, n = _label_slices(mask)
    return _component_table(labels, n, prob, sp)


def weak_components(prob, strong, *, level: float, spacing, dilation_mm: float = 1.0,
                    erosion_mm: float = 1.0) -> tuple[np.ndarray, int]:
    """Per-slice components of the map at a lower ``level`` that keep clear of ``strong``.

    ``prob >= level`` is closed like the main threshold (``dilation_mm``, ``erosion_mm``) and
    labelled per slice (8-connected); a component is dropped when it shares a pixel with
    ``strong`` (the foreground of the main threshold) in its own slice or in the slice just
    above or below, so a faint blob is never the rim or the cap of a stronger detection.

    Returns ``(labels, n)``: the kept components numbered 1..n in C order, 0 elsewhere.
    """
    prob = check_volume("prob", prob)
    strong = check_volume("strong", strong).astype(bool)
    if strong.shape != prob.shape:
        raise ValueError(f"strong: expected the shape of prob {prob.shape}. Received {strong.shape}")
    sp = check_spacing(spacing)
    fg = erode(dilate(threshold(prob, level=level), radius_mm=dilation_mm, spacing=sp),
               radius_mm=erosion_mm, spacing=sp)
    labels, n = _label_slices(fg)
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
                     spacing) -> tuple[np.ndarray, int]:
    """The parts at a higher ``level`` of the large per-slice components of ``labels``.

    A nodule that touches the hilum or a vessel trunk comes out of the first threshold as one
    component with them, and the candidate's centre lies between the two.  Inside a component at
    least ``min_diameter_mm`` across (the diameter of a disc of its area), the pixels with
    ``prob >= level`` are labelled again (8-connected, per slice).  Those parts are kept when the
    level splits the component (two parts or more) or leaves less than half of its area (one
    part, off its centre); a component that stays whole at the higher level gives nothing.

    Returns ``(labels, n)``: the kept parts numbered 1..n in C order, 0 elsewhere.
    """
    prob = check_volume("prob", prob)
    labels = check_volume("labels", labels)
    if labels.shape != prob.shape:
        raise ValueError(f"labels: expected the shape of prob {prob.shape}. Received {labels.shape}")
    if not 0.0 < float(level) <= 1.0:
        raise ValueError(f"level: expected a level in (0, 1]. Received {level!r}")
    sp = check_spacing(spacing)
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
    parts, m = _label_slices(inside)
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


class _UnionFind:
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
        return _empty_detections()
    d = dets2d.reset_index(drop=True)
    uf = _UnionFind(len(d))
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
    uf = _UnionFind(len(d))
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


def extract_candidates(prob, *, spacing, origin, direction=None, series_uid: str = "",
                       threshold: float = 0.4, dilation_mm: float = 1.0,
                       erosion_mm: float = 1.0, merge_distance_mm: float = 5.0,
                       z_merge_mm: float = 5.0, max_gap_slices: int = 1,
                       min_diameter_mm: float = 2.0, max_candidates: int | None = 1000,
                       mask=None, z_overlap: float = 0.5, z_overlap_min_mm: float = 10.0,
                       weak_threshold: float = 0.3, split_threshold: float = 0.9,
                       split_min_mm: float = 15.0) -> pd.DataFrame:
    """Turn a probability map into the candidate table.

    The keyword defaults are the shipped pipeline's ``[morphology]`` section
    (:class:`lungcad.config.MorphologyConfig`, ``pipelines/default.toml``;
    ``tests/test_defaults.py`` keeps them equal), so a bare call gives the candidates that
    ``lungcad detect`` gets from the same map and mask.  The plain algorithm is
    ``threshold=0.5, weak_threshold=0, split_threshold=0, max_candidates=None``.

    Parameters
    ----------
    prob : ndarray of float, (z, y, x)
        Nodule probability per voxel, aligned with the CT volume.
    spacing : (z, y, x) mm
    origin : (x, y, z) mm, world position of voxel (0, 0, 0)
    direction : 3x3, optional
        Columns are the world directions of the x, y, z index axes (identity when None).
    series_uid : str, optional
        Written to the ``seriesuid`` column.
    threshold : float, optional
        Probability at which a voxel is foreground.
    dilation_mm, erosion_mm : float, optional
        Radii of the in-plane dilation, then erosion, of the thresholded map.
    merge_distance_mm : float, optional
        Detections of one slice closer than this merge (:func:`merge_by_distance`).
    z_merge_mm : float, optional
        In-plane distance within which detections of neighbouring slices link (:func:`merge_z`).
    max_gap_slices : int, optional
        See :func:`merge_z`.
    min_diameter_mm : float, optional
        Candidates with a smaller ``diameter_mm`` are dropped.
    max_candidates : int or None, optional
        Keep only this many, the most probable (None: all).
    mask : ndarray of bool, optional
        A lung mask: candidates that do not overlap it are dropped.
    z_overlap : float, optional
        Detections of neighbouring slices also link when they share at least this fraction
        of the smaller one's pixels, when both are at least ``z_overlap_min_mm`` across
        (:func:`overlap_links`); 0 turns that off.
    z_overlap_min_mm : float, optional
    weak_threshold : float, optional
        A second, lower level (0 = off; at or above ``threshold`` there is nothing between
        the two, and no weak candidate): faint blobs that reach it but keep clear of the
        ``threshold`` foreground (:func:`weak_components`) become candidates of their own,
        merged and linked among themselves.  Their ``seg_prob`` is below ``threshold``, so they
        come after the others and are the first to go under ``max_candidates``.
    split_threshold : float, optional
        A higher level (0 = off; it must lie above ``threshold``): the per-slice components of
        the first threshold at least ``split_min_mm`` across are labelled again at this level
        (:func:`split_components`), and their parts, merged and linked among themselves, are
        candidates too, next to the whole component's.  A nodule joined to the hilum gets a
        candidate of its own.
    split_min_mm : float, optional

    Returns
    -------
    pandas.DataFrame
        :data:`lungcad.result.CANDIDATE_COLUMNS` plus :data:`EXTRA_COLUMNS`, sorted by
        descending ``probability``.  ``z, y, x`` are fractional voxel indices of the centre and
        ``coordX, coordY, coordZ`` its world position (LPS mm).  The measurements are
        described in the module docstring.
    """
    prob = check_volume("prob", prob)
    sp = check_spacing(spacing)
    if not 0.0 <= weak_threshold <= 1.0:
        raise ValueError(f"weak_threshold: expected a level from 0 (off) to 1. Received {weak_threshold!r}")
    if not 0.0 <= split_threshold <= 1.0:
        raise ValueError(f"split_threshold: expected a level from 0 (off) to 1. Received {split_threshold!r}")
    check_distance("split_min_mm", split_min_mm)
    if mask is not None:
        mask = check_volume("mask", mask).astype(bool)
        if mask.shape != prob.shape:
            raise ValueError(f"mask: expected the shape of prob {prob.shape}. "
                             f"Received {mask.shape}")
    if max_candidates is not None and (int(max_candidates) != max_candidates or max_candidates < 0):
        raise ValueError(f"max_candidates: expected None or an integer >= 0. "
                         f"Received max_candidates={max_candidates!r}")
    # the map is empty outside the lung box: work on the box around its foreground
    weak_on = 0.0 < weak_threshold < threshold
    crop = _foreground_box(prob, level=weak_threshold if weak_on else threshold, spacing=sp,
                           radius_mm=max(dilation_mm, erosion_mm))
    if crop is None:
        return empty_candidates(EXTRA_COLUMNS)
    offset = np.array([s.start for s in crop], dtype=float)
    prob = prob[crop]
    mask = mask[crop] if mask is not None else None
    fg = _apply_threshold(prob, level=threshold)
    fg = dilate(fg, radius_mm=dilation_mm, spacing=sp)
    fg = erode(fg, radius_mm=erosion_mm, spacing=sp)
    labels, n = _label_slices(fg)
    cand_map = np.zeros(labels.shape, dtype=np.int32)
    n_cand = 0

    def add(into: np.ndarray, first: int, labs: np.ndarray, n_labs: int, *, overlap: bool) -> int:
        """Steps 3-5 on one labelling: its candidates get the ids ``first + 1, ...`` in
        ``into``; returns how many there are."""
        dets = _component_table(labs, n_labs, prob, sp)
        if len(dets) == 0:
            return 0
        dets = merge_by_distance(dets, distance_mm=merge_distance_mm)
        links = (overlap_links(labs, dets, min_fraction=z_overlap, min_diameter_mm=z_overlap_min_mm)
                 if overlap and z_overlap else None)
        dets = merge_z(dets, radius_mm=z_merge_mm, max_gap_slices=max_gap_slices, links=links)
        return _paint_candidates(into, labs, n_labs, dets, first_id=first + 1)

    n_cand += add(cand_map, n_cand, labels, n, overlap=True)
    if weak_on:
        wlabels, wn = weak_components(prob, fg, level=weak_threshold, spacing=sp,
                                      dilation_mm=dilation_mm, erosion_mm=erosion_mm)
        n_cand += add(cand_map, n_cand, wlabels, wn, overlap=False)
    tables = [_measure(cand_map, n_cand, prob, sp, mask)] if n_cand else []
    if split_threshold > threshold:
        # the parts overlap their whole component's voxels: they are measured in a map of their own
        slabels, sn = split_components(prob, labels, n, level=split_threshold,
                                       min_diameter_mm=split_min_mm, spacing=sp)
        if sn:
            split_map = np.zeros(labels.shape, dtype=np.int32)
            n_split = add(split_map, 0, slabels, sn, overlap=True)
            if n_split:
                tables.append(_measure(split_map, n_split, prob, sp, mask))
    if not tables:
        return empty_candidates(EXTRA_COLUMNS)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    table = table[table["diameter_mm"] >= min_diameter_mm].copy()
    if len(table) == 0:
        return empty_candidates(EXTRA_COLUMNS)
    zyx = table[["z", "y", "x"]].to_numpy(dtype=float) + offset
    table["z"], table["y"], table["x"] = zyx[:, 0], zyx[:, 1], zyx[:, 2]
    xyz = np.atleast_2d(voxel_to_world(zyx, spacing=sp, origin=origin, direction=direction))
    table["coordX"], table["coordY"], table["coordZ"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    table["seriesuid"] = table_text(series_uid)
    table["probability"] = table["seg_prob"]
    table = table.sort_values("probability", ascending=False, kind="stable")
    if max_candidates is not None:
        table = table.head(int(max_candidates))
    return table[CANDIDATE_COLUMNS + EXTRA_COLUMNS].reset_index(drop=True)


def _foreground_box(prob: np.ndarray, *, level: float, spacing: np.ndarray, radius_mm: float):
    """The box around ``prob >= level`` with room for the closing and the one-voxel support
    (slices z, y, x), or None when nothing reaches ``level``.  Labelling, closing and measuring
    inside it give what they give on the whole volume: the component order (C order) and every
    neighbourhood are the same."""
    fg = threshold(prob, level=level)
    zs = np.flatnonzero(fg.any(axis=(1, 2)))
    if len(zs) == 0:
        return None
    ys = np.flatnonzero(fg.any(axis=(0, 2)))
    xs = np.flatnonzero(fg.any(axis=(0, 1)))
    margin = [2] + [int(np.ceil(radius_mm / float(spacing[a]))) + 2 for a in (1, 2)]
    return tuple(slice(max(int(i[0]) - m, 0), min(int(i[-1]) + m + 1, n))
                 for i, m, n in zip((zs, ys, xs), margin, prob.shape))


def _paint_candidates(cand_map: np.ndarray, labels: np.ndarray, n: int, dets: pd.DataFrame, *,
                      first_id: int) -> int:
    """Write candidate ids ``first_id, first_id + 1, ...`` of ``dets`` (rows of merged per-slice
    labels) into ``cand_map`` where ``labels`` has them; return how many candidates there are."""
    lut = np.zeros(n + 1, dtype=np.int32)
    for cand, labs in zip(dets["candidate"], dets["labels"]):
        lut[list(labs)] = cand + first_id
    at = np.flatnonzero(labels)                 # few pixels: index them, not the whole volume
    ids = lut[labels.reshape(-1)[at]]
    cand_map.reshape(-1)[at[ids > 0]] = ids[ids > 0]
    return int(dets["candidate"].max()) + 1


_NEIGHBOURS = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1)
                        for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)])


def _support(own: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Voxel coordinates and candidate ids of the candidates grown by one voxel (26-connected);
    an empty voxel next to several candidates takes the largest id."""
    coords = np.nonzero(own)
    ids = own[coords]
    if ids.size > 2_000_000:
        # dense maps: a separable 3 x 3 x 3 maximum over the whole box is cheaper
        grown = ndimage.maximum_filter(own, size=3, mode="constant", cval=0)
        support = np.where(own > 0, own, grown)
        where = np.nonzero(support)
        return where, support[where]
    shape = np.array(own.shape)
    pts = np.stack(coords, axis=1)
    halo = (pts[:, None, :] + _NEIGHBOURS[None, :, :]).reshape(-1, 3)
    hid = np.repeat(ids, len(_NEIGHBOURS))
    ok = np.all((halo >= 0) & (halo < shape), axis=1)
    halo, hid = halo[ok], hid[ok]
    empty = own[tuple(halo.T)] == 0
    halo, hid = halo[empty], hid[empty]
    flat = np.ravel_multi_index(tuple(halo.T), own.shape)
    order = np.lexsort((hid, flat))
    flat, hid = flat[order], hid[order]
    last = np.r_[flat[1:] != flat[:-1], True]
    flat, hid = flat[last], hid[last]
    hz = np.unravel_index(flat, own.shape)
    where = tuple(np.concatenate([c, h]) for c, h in zip(coords, hz))
    return where, np.concatenate([ids, hid])


def _measure(cand_map: np.ndarray, n_cand: int, prob: np.ndarray, sp: np.ndarray,
             mask) -> pd.DataFrame:
    """Centre, soft volume, diameter and extent of candidates 1..n_cand (module docstring).

    The support of a candidate is its voxels grown by one voxel in 3-D (8-connected in-plane,
    and the slices just above and below), without the voxels of other candidates; where two
    grown candidates meet, the voxel goes to one of them.
    """
    boxes = ndimage.find_objects(cand_map, max_label=n_cand)
    lo = [max(0, min(b[a].start for b in boxes if b is not None) - 1) for a in range(3)]
    hi = [min(cand_map.shape[a], max(b[a].stop for b in boxes if b is not None) + 1)
          for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    own = cand_map[box]
    where, sid = _support(own)
    p = np.clip(prob[box][where].astype(float), 0.0, 1.0)
    wsum = np.bincount(sid, weights=p, minlength=n_cand + 1)[1:]
    # a candidate without probability mass (all zero) is located by its own voxels
    is_own = (own[where] == sid).astype(float)
    w = np.where(wsum[sid - 1] > 0, p, is_own)
    wtot = np.bincount(sid, weights=w, minlength=n_cand + 1)[1:]
    centre = [np.bincount(sid, weights=w * (c + o), minlength=n_cand + 1)[1:] / wtot
              for c, o in zip(where, lo)]
    volume = wsum * float(np.prod(sp))
    ow = np.nonzero(own)
    pmax = np.full(n_cand + 1, -np.inf)
    np.maximum.at(pmax, own[ow], prob[box][ow].astype(float))
    pmax = pmax[1:]
    kmin = np.array([b[0].start if b is not None else 0 for b in boxes])
    kmax = np.array([b[0].stop - 1 if b is not None else -1 for b in boxes])
    n_slices = kmax - kmin + 1
    table = pd.DataFrame({
        "z": centre[0], "y": centre[1], "x": centre[2],
        "diameter_mm": (6.0 * volume / np.pi) ** (1.0 / 3.0),
        "seg_prob": np.asarray(pmax, float), "volume_mm3": volume,
        "z_extent_mm": n_slices * float(sp[0]), "n_slices": n_slices.astype(int),
    })
    present = np.array([b is not None for b in boxes])
    if mask is not None:
        touches = np.zeros(n_cand + 1, bool)
        touches[np.unique(own[mask[box] & (own > 0)])] = True
        present &= touches[1:]
    return table[present].reset_index(drop=True)
