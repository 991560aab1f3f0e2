"""Step 8 of :mod:`lungcad.morphology`: :func:`extract_candidates` runs the steps in order
on the box around the map's foreground and returns the candidate table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungcad.checks import check_distance, check_spacing, check_volume
from lungcad.result import CANDIDATE_COLUMNS, empty_candidates, table_text
from lungcad.volume import voxel_to_world

from .components import component_table, dilate, erode, label_slices
from .components import threshold as _apply_threshold   # the name ``threshold`` is a keyword here
from .levels import split_components, weak_components
from .measure import EXTRA_COLUMNS, SOURCE_UNET, measure_candidates
from .merge import merge_by_distance
from .zlink import merge_z, overlap_links


def extract_candidates(prob, *, spacing_zyx, origin_xyz, direction=None, series_uid: str = "",
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
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    origin_xyz : (x, y, z) mm
        World position (LPS) of the centre of voxel (0, 0, 0).
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
    sp = check_spacing(spacing_zyx, "spacing_zyx")
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
    crop = _foreground_box(prob, level=weak_threshold if weak_on else threshold, spacing_zyx=sp,
                           radius_mm=max(dilation_mm, erosion_mm))
    if crop is None:
        return empty_candidates(EXTRA_COLUMNS)
    offset = np.array([s.start for s in crop], dtype=float)
    prob = prob[crop]
    mask = mask[crop] if mask is not None else None
    fg = _apply_threshold(prob, level=threshold)
    fg = dilate(fg, radius_mm=dilation_mm, spacing_zyx=sp)
    fg = erode(fg, radius_mm=erosion_mm, spacing_zyx=sp)
    labels, n = label_slices(fg)
    cand_map = np.zeros(labels.shape, dtype=np.int32)
    n_cand = 0

    def add(into: np.ndarray, first: int, labs: np.ndarray, n_labs: int, *, overlap: bool) -> int:
        """Steps 3-5 on one labelling: its candidates get the ids ``first + 1, ...`` in
        ``into``; returns how many there are."""
        dets = component_table(labs, n_labs, prob, sp)
        if len(dets) == 0:
            return 0
        dets = merge_by_distance(dets, distance_mm=merge_distance_mm)
        links = (overlap_links(labs, dets, min_fraction=z_overlap, min_diameter_mm=z_overlap_min_mm)
                 if overlap and z_overlap else None)
        dets = merge_z(dets, radius_mm=z_merge_mm, max_gap_slices=max_gap_slices, links=links)
        return _paint_candidates(into, labs, n_labs, dets, first_id=first + 1)

    n_cand += add(cand_map, n_cand, labels, n, overlap=True)
    if weak_on:
        wlabels, wn = weak_components(prob, fg, level=weak_threshold, spacing_zyx=sp,
                                      dilation_mm=dilation_mm, erosion_mm=erosion_mm)
        n_cand += add(cand_map, n_cand, wlabels, wn, overlap=False)
    tables = [measure_candidates(cand_map, n_cand, prob, sp, mask)] if n_cand else []
    if split_threshold > threshold:
        # the parts overlap their whole component's voxels: they are measured in a map of their own
        slabels, sn = split_components(prob, labels, n, level=split_threshold,
                                       min_diameter_mm=split_min_mm, spacing_zyx=sp)
        if sn:
            split_map = np.zeros(labels.shape, dtype=np.int32)
            n_split = add(split_map, 0, slabels, sn, overlap=True)
            if n_split:
                tables.append(measure_candidates(split_map, n_split, prob, sp, mask))
    if not tables:
        return empty_candidates(EXTRA_COLUMNS)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    table = table[table["diameter_mm"] >= min_diameter_mm].copy()
    if len(table) == 0:
        return empty_candidates(EXTRA_COLUMNS)
    zyx = table[["z", "y", "x"]].to_numpy(dtype=float) + offset
    table["z"], table["y"], table["x"] = zyx[:, 0], zyx[:, 1], zyx[:, 2]
    xyz = np.atleast_2d(voxel_to_world(zyx, spacing=sp, origin=origin_xyz, direction=direction))
    table["coordX"], table["coordY"], table["coordZ"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    table["seriesuid"] = table_text(series_uid)
    table["probability"] = table["seg_prob"]
    table["source"] = SOURCE_UNET
    table = table.sort_values("probability", ascending=False, kind="stable")
    if max_candidates is not None:
        table = table.head(int(max_candidates))
    return table[CANDIDATE_COLUMNS + EXTRA_COLUMNS].reset_index(drop=True)


def _foreground_box(prob: np.ndarray, *, level: float, spacing_zyx: np.ndarray, radius_mm: float):
    """The box around ``prob >= level`` with room for the closing and the one-voxel support
    (slices z, y, x), or None when nothing reaches ``level``.  Labelling, closing and measuring
    inside it give what they give on the whole volume: the component order (C order) and every
    neighbourhood are the same."""
    fg = _apply_threshold(prob, level=level)
    zs = np.flatnonzero(fg.any(axis=(1, 2)))
    if len(zs) == 0:
        return None
    ys = np.flatnonzero(fg.any(axis=(0, 2)))
    xs = np.flatnonzero(fg.any(axis=(0, 1)))
    margin = [2] + [int(np.ceil(radius_mm / float(spacing_zyx[a]))) + 2 for a in (1, 2)]
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
