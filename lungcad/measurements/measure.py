"""The measure stage: the reported nodules of a candidate table, segmented and measured.

Which candidates are *reported* is the pipeline file's ``[reported]`` (probability at least
``min_probability``, at most ``max_nodules``, the most probable first), and every output uses
that one set.  Each reported row gets ``nodule_id`` (1..n in descending probability, its value in
the label volume) and its measurements (:data:`MEASURE_COLUMNS`); the other rows get empty cells.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lungcad.measurements.axes import axial_axes
from lungcad.measurements.lungrads import RESEARCH_NOTE, lungrads_research_category, patient_lungrads_research
from lungcad.measurements.nodule_type import SOLID_HU, classify
from lungcad.measurements.segment import partial_volume_mm3, segment_nodule
from lungcad.volume import voxel_to_world

#: The columns the measure stage adds to the candidate table (empty where a row is not reported).
MEASURE_COLUMNS = ["nodule_id", "volume_mm3", "long_axis_mm", "short_axis_mm", "mean_axis_mm", "nodule_type",
                   "solid_component_mm", "lungrads_research", "seg_centroid_x", "seg_centroid_y", "seg_centroid_z"]
#: The text columns among them; the others are numbers (NaN when empty).
TEXT_COLUMNS = ("nodule_type", "lungrads_research")
#: Morphology's ``volume_mm3`` (the U-Net map's soft volume) keeps its values under this name, since
#: ``volume_mm3`` is the measured volume of a reported nodule.
SOFT_VOLUME = "soft_volume_mm3"


class ProbabilityCrop:
    """The U-Net's probability map kept small until the measure stage: its lung box only
    (the map is zero outside it, docs/architecture.md), in steps of 1/255 (uint8).

    Call it with a box (three slices on the scan's grid) for the map there (float32, zero
    outside the lung box)."""

    def __init__(self, prob: np.ndarray, box=None):
        box = tuple(slice(0, n) for n in prob.shape) if box is None else tuple(box)
        self.shape = prob.shape
        self.box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, prob.shape))
        self.values = np.round(np.clip(prob[self.box], 0.0, 1.0) * 255.0).astype(np.uint8)

    def __call__(self, box) -> np.ndarray:
        out = np.zeros(tuple(s.stop - s.start for s in box), np.float32)
        src, dst = [], []
        for want, have in zip(box, self.box):
            lo, hi = max(want.start, have.start), min(want.stop, have.stop)
            if hi <= lo:
                return out
            src.append(slice(lo - have.start, hi - have.start))
            dst.append(slice(lo - want.start, hi - want.start))
        out[tuple(dst)] = self.values[tuple(src)].astype(np.float32) / 255.0
        return out


@dataclass
class Measured:
    """What :func:`measure_nodules` returns: the table with :data:`MEASURE_COLUMNS`, the label
    volume (int16 on the scan's grid: 0 background, k = ``nodule_id`` k) and the scan's
    ``reported`` summary (``ScanResult.reported``)."""

    candidates: pd.DataFrame
    labels: np.ndarray
    reported: dict = field(default_factory=dict)


def reported_rows(table: pd.DataFrame, *, min_probability: float = 0.5, max_nodules: int = 10) -> np.ndarray:
    """Positions (``iloc``) of the reported rows, the most probable first: ``probability`` at least
    ``min_probability``, at most ``max_nodules`` of them."""
    if len(table) == 0 or "probability" not in table:
        return np.zeros(0, int)
    p = pd.to_numeric(table["probability"], errors="coerce").to_numpy(float)
    idx = np.flatnonzero(p >= min_probability)
    idx = idx[np.argsort(-p[idx], kind="stable")]
    return idx[:max(int(max_nodules), 0)]


def measure_one(hu: np.ndarray, prob, lung_mask, *, spacing_zyx, centre_zyx, diameter_mm: float) -> dict:
    """One nodule's segmentation (:func:`~lungcad.measurements.segment.segment_nodule`) and
    measurements: a dict of the measure columns (without ``nodule_id`` and the centroid's world
    coordinates) plus ``"seg"`` (the :class:`~lungcad.measurements.segment.NoduleMask`) and
    ``"centroid_zyx"`` (fractional voxel indices on the scan's grid)."""
    seg = segment_nodule(hu, prob, lung_mask, spacing_zyx=spacing_zyx, centre_zyx=centre_zyx,
                         diameter_mm=diameter_mm)
    out = {c: math.nan for c in MEASURE_COLUMNS if c not in TEXT_COLUMNS and c != "nodule_id"
           and not c.startswith("seg_centroid")}
    out.update({c: None for c in TEXT_COLUMNS}, seg=seg, centroid_zyx=None)
    if seg.empty:
        return out
    h = hu[seg.box]
    axes = axial_axes(h, seg.mask, level=seg.threshold, spacing_zyx=spacing_zyx)
    kind = classify(h, seg.mask)
    solid_mm = math.nan
    if kind.type == "part-solid":
        solid_mm = (axial_axes(h, kind.solid_mask, level=SOLID_HU, spacing_zyx=spacing_zyx).mean_mm
                    if kind.solid_mask.any() else 0.0)
    cat = lungrads_research_category(kind.type, axes.mean_mm, solid_mm)
    zyx = np.argwhere(seg.mask).mean(axis=0) + [s.start for s in seg.box]
    out.update(volume_mm3=round(partial_volume_mm3(seg, spacing_zyx), 1), long_axis_mm=round(axes.long_mm, 2),
               short_axis_mm=round(axes.short_mm, 2), mean_axis_mm=axes.mean_mm, nodule_type=kind.type,
               solid_component_mm=solid_mm, lungrads_research=cat, centroid_zyx=zyx)
    return out


def measure_nodules(table: pd.DataFrame, hu: np.ndarray, prob, lung_mask: np.ndarray | None = None, *,
                    spacing_zyx, origin_xyz, direction=None, min_probability: float = 0.5,
                    max_nodules: int = 10) -> Measured:
    """Segment and measure the reported nodules of a candidate table.

    Parameters
    ----------
    table : the candidate table after the FPR stage (voxel centre ``z, y, x``, ``diameter_mm``,
        ``probability``), sorted by descending probability
    hu : int16 (z, y, x), the scan
    prob : the U-Net's probability map (an array the shape of ``hu``, or a :class:`ProbabilityCrop`)
    lung_mask : bool (z, y, x), optional
    spacing_zyx : (z, y, x) mm;  origin_xyz : (x, y, z) mm;  direction : 3x3, optional
    min_probability, max_nodules : the ``[reported]`` criteria (:func:`reported_rows`)

    Returns
    -------
    Measured
        The table (a copy) with :data:`MEASURE_COLUMNS` (morphology's ``volume_mm3`` moved to
        :data:`SOFT_VOLUME`), the label volume, and the ``reported`` summary.
    """
    out = table.copy()
    if "volume_mm3" in out and SOFT_VOLUME not in out:
        out = out.rename(columns={"volume_mm3": SOFT_VOLUME})
    for c in MEASURE_COLUMNS:
        out[c] = pd.Series([None] * len(out), index=out.index, dtype=object) if c in TEXT_COLUMNS else math.nan
    labels = np.zeros(hu.shape, np.int16)
    rows = reported_rows(out, min_probability=min_probability, max_nodules=max_nodules)
    cats = []
    for k, i in enumerate(rows, start=1):
        r = out.iloc[i]
        m = measure_one(hu, prob, lung_mask, spacing_zyx=spacing_zyx,
                        centre_zyx=(float(r["z"]), float(r["y"]), float(r["x"])),
                        diameter_mm=float(r["diameter_mm"]))
        seg, zyx = m.pop("seg"), m.pop("centroid_zyx")
        row = out.index[i]
        out.loc[row, "nodule_id"] = float(k)
        if zyx is None:
            continue
        view = labels[seg.box]
        view[seg.mask & (view == 0)] = k
        world = voxel_to_world(zyx, spacing=spacing_zyx, origin=origin_xyz, direction=direction)
        m.update(seg_centroid_x=float(world[0]), seg_centroid_y=float(world[1]), seg_centroid_z=float(world[2]))
        for c, v in m.items():
            out.loc[row, c] = v
        cats.append(m["lungrads_research"])
    reported = {"n": int(len(rows)), "lungrads_research": patient_lungrads_research(cats),
                "criteria": {"min_probability": float(min_probability), "max_nodules": int(max_nodules)},
                "note": RESEARCH_NOTE}
    return Measured(out, labels, reported)
