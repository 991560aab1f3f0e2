"""Nodule measurements (lungcad.measurements): the calipers on shapes of known size, the
research-only category table, and segmentations from the shipped U-Net on phantoms with known
lesions (docs/results.md has the figures these guard)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungcad.measurements import (MEASURE_COLUMNS, SOFT_VOLUME, ProbabilityCrop, axial_axes, classify,
                                  lungrads_research_category, measure_nodules, measure_one,
                                  patient_lungrads_research, round_size)
from lungcad.result import ScanResult

# Phantom lesions: (texture, diameter mm), round, isolated (seed 5, 256 x 256).
LESIONS = [("solid", 6.0), ("solid", 10.0), ("ground-glass", 12.0), ("part-solid", 14.0), ("calcified", 8.0),
           ("solid", 20.0)]
# Guarded levels on 2.5 mm slices (the issue's: volume within 15 %, mean diameter within 1 mm, for
# lesions of 6 mm and up).  Measured at the morphology candidates' centres (docs/results.md).
THIN_VOLUME_REL = 0.15
THIN_MEAN_MM = 1.0
# Measured on 2.5 mm slices: volume -8 % .. +3 %, mean diameter -0.7 .. -0.1 mm (5 lesions).
# On 5 mm slices, measured (docs/results.md): volume -8 % .. +13 %, mean diameter -1.9 .. +0.6 mm for
# the non-calcified lesions, the types right but the calcified one's (it reads solid); guarded with
# a margin.
THICK_VOLUME_REL = 0.35
THICK_MEAN_MM = 2.5


def ellipsoid_field(spacing, semi_axes_mm, *, shape_mm=(40.0, 40.0, 40.0), sub=3, lung=-850.0, body=40.0):
    """HU of an axis-aligned partial-volume ellipsoid (semi-axes z, y, x in mm) at the centre."""
    sp = np.asarray(spacing, float)
    shape = tuple(int(round(n / s)) for n, s in zip(shape_mm, sp))
    c = (np.asarray(shape) - 1) / 2.0
    off = (np.arange(sub) + 0.5) / sub - 0.5
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    acc = np.zeros(shape, np.float32)
    for oz in off:
        for oy in off:
            for ox in off:
                r2 = sum((((gi + o - ci) * s) / a) ** 2 for gi, o, ci, s, a in
                         zip(g, (oz, oy, ox), c, sp, semi_axes_mm))
                acc += r2 <= 1.0
    frac = acc / sub ** 3
    return (lung + frac * (body - lung)).astype(np.int16), frac, c


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
def test_axes_of_an_ellipsoid(spacing):
    """An ellipsoid of axes 16 x 10 mm in-plane (12 mm in z): long 16, short 10 within 0.4 mm."""
    hu, frac, c = ellipsoid_field(spacing, (6.0, 5.0, 8.0))
    axes = axial_axes(hu, frac >= 0.5, level=-405.0, spacing_zyx=spacing)
    assert axes.long_mm == pytest.approx(16.0, abs=0.4)
    assert axes.short_mm == pytest.approx(10.0, abs=0.4)
    assert axes.mean_mm == round_size((axes.long_mm + axes.short_mm) / 2)
    assert abs(axes.slice_index - c[0]) <= 1


def test_measure_nodules_on_a_sphere_reports_and_labels():
    """Two candidates on one 12 mm sphere and one on nothing: the probable ones are reported in
    order, the one below min_probability is not; morphology's volume moves to soft_volume_mm3."""
    sp = (1.25, 0.7, 0.7)
    hu, frac, c = ellipsoid_field(sp, (6.0, 6.0, 6.0))
    prob = (frac > 0).astype(np.float32)
    table = pd.DataFrame({"seriesuid": ["s"] * 3, "coordX": [0.0] * 3, "coordY": [0.0] * 3, "coordZ": [0.0] * 3,
                          "z": [c[0], c[0], 2.0], "y": [c[1], c[1], 2.0], "x": [c[2], c[2], 2.0],
                          "diameter_mm": [12.0, 12.0, 4.0], "probability": [0.9, 0.4, 0.7],
                          "volume_mm3": [1000.0, 900.0, 30.0]})
    m = measure_nodules(table, hu, ProbabilityCrop(prob), None, spacing_zyx=sp, origin_xyz=(0.0, 0.0, 0.0))
    t = m.candidates
    assert set(MEASURE_COLUMNS) <= set(t.columns) and t[SOFT_VOLUME].tolist() == [1000.0, 900.0, 30.0]
    assert t["nodule_id"].tolist()[0] == 1.0 and np.isnan(t["nodule_id"].iloc[1]) and t["nodule_id"].iloc[2] == 2.0
    assert t["volume_mm3"].iloc[0] == pytest.approx(4 / 3 * np.pi * 6.0 ** 3, rel=0.05)
    assert t["mean_axis_mm"].iloc[0] == pytest.approx(12.0, abs=0.5)
    assert t["nodule_type"].iloc[0] == "solid" and t["lungrads_research"].iloc[0] == "4A"
    assert t["nodule_type"].iloc[1] is None and np.isnan(t["volume_mm3"].iloc[1])
    world = t[["seg_centroid_x", "seg_centroid_y", "seg_centroid_z"]].iloc[0].to_numpy(float)
    assert world == pytest.approx(np.asarray(c)[::-1] * np.asarray(sp)[::-1], abs=0.1)
    assert m.labels.dtype == np.int16 and set(np.unique(m.labels)) <= {0, 1, 2} and (m.labels == 1).sum() > 0
    assert m.reported["n"] == 2 and m.reported["lungrads_research"] == "4A"
    assert "research only" in m.reported["note"]
    none = measure_nodules(table, hu, prob, None, spacing_zyx=sp, origin_xyz=(0, 0, 0), min_probability=0.95)
    assert none.reported["n"] == 0 and none.reported["lungrads_research"] == "1" and not none.labels.any()


def test_type_from_hu():
    """Solid, ground glass, a solid core in ground glass, and a calcified one."""
    sp = (1.0, 0.7, 0.7)
    _, frac, c = ellipsoid_field(sp, (7.0, 7.0, 7.0))
    inside = frac >= 0.5
    r = np.sqrt(sum(((g - ci) * s) ** 2 for g, ci, s in zip(np.indices(frac.shape), c, sp)))
    assert classify(np.where(inside, 30, -850), inside).type == "solid"
    assert classify(np.where(inside, -600, -850), inside).type == "ground-glass"
    part = classify(np.where(r <= 3.5, 30, np.where(inside, -600, -850)), inside)
    assert part.type == "part-solid" and 0.4 <= part.solid_share < 0.8
    assert classify(np.where(r <= 5.0, 600, np.where(inside, 30, -850)), inside).type == "calcified"


@pytest.mark.parametrize("kind, size, solid, cat", [
    ("solid", 5.9, None, "2"), ("solid", 6.0, None, "3"), ("solid", 7.9, None, "3"), ("solid", 8.0, None, "4A"),
    ("solid", 14.9, None, "4A"), ("solid", 15.0, None, "4B"),
    ("part-solid", 5.9, 3.0, "2"), ("part-solid", 6.0, 5.9, "3"), ("part-solid", 9.0, 6.0, "4A"),
    ("part-solid", 12.0, 7.9, "4A"), ("part-solid", 12.0, 8.0, "4B"),
    ("ground-glass", 29.9, None, "2"), ("ground-glass", 30.0, None, "3"), ("calcified", 20.0, None, "1")])
def test_research_category_follows_lung_rads_v2022_baseline(kind, size, solid, cat):
    assert lungrads_research_category(kind, size, solid) == cat


def test_patient_category_and_rounding():
    assert patient_lungrads_research([]) == "1"
    assert patient_lungrads_research(["2", "4A", "3", None]) == "4A"
    assert patient_lungrads_research(["4B", "4A"]) == "4B"
    assert round_size(5.95) == 6.0 and round_size(5.94) == 5.9 and round_size(7.96) == 8.0


def test_old_scan_json_reads_without_the_new_fields():
    old = {"series_uid": "1.2", "patient_id": "P", "cancer_probability": 0.1,
           "candidates": [{"seriesuid": "1.2", "coordX": 1.0, "coordY": 2.0, "coordZ": 3.0, "z": 1, "y": 2, "x": 3,
                           "diameter_mm": 5.0, "probability": 0.9, "volume_mm3": 60.0}],
           "candidate_columns": ["seriesuid", "coordX", "coordY", "coordZ", "z", "y", "x", "diameter_mm",
                                 "probability", "volume_mm3"]}
    r = ScanResult.from_dict(old)
    assert r.reported == {} and r.nodule_labels is None and r.lung_mask is None
    assert "reported" in r.to_dict() and "nodule_labels" not in r.to_dict()


# ------------------------------------------------------------------ the shipped U-Net on phantoms

@pytest.fixture(scope="module")
def segmenter():
    from lungcad.pipeline import Pipeline

    return Pipeline()


def phantom_measurements(pipe, slice_mm):
    """Each lesion of a phantom measured at the morphology candidate nearest its centre."""
    from lungcad.pipeline import candidate_stage, lung_stage, morphology_stage
    from lungcad.synthetic import generate_phantom

    les = [dict(kind="nodule", texture=t, location="isolated", shape="round", diameter_mm=d) for t, d in LESIONS]
    ph = generate_phantom(seed=5, shape=(None, 256, 256), slice_mm=slice_mm, lesions=les)
    vol = ph.volume
    lm, box = lung_stage(vol, pipe.config)
    prob = candidate_stage(vol, pipe.segmenter, box, pipe.config)
    table = morphology_stage(vol, prob, lm.mask, pipe.config)
    crop = ProbabilityCrop(prob, box)
    rows = []
    for r in ph.lesions.itertuples():
        d = np.linalg.norm(table[["coordX", "coordY", "coordZ"]].to_numpy() - [r.coordX, r.coordY, r.coordZ], axis=1)
        assert d.min() <= r.diameter_mm / 2, f"{r.texture} {r.diameter_mm:.1f} mm: no candidate on it"
        cand = table.iloc[int(d.argmin())]
        m = measure_one(vol.hu, crop, lm.mask, spacing_zyx=vol.spacing,
                        centre_zyx=(cand["z"], cand["y"], cand["x"]), diameter_mm=cand["diameter_mm"])
        rows.append({"texture": r.texture, "diameter_mm": r.diameter_mm, "volume_true": r.volume_mm3,
                     "volume_rel": m["volume_mm3"] / r.volume_mm3 - 1, "mean_err": m["mean_axis_mm"] - r.diameter_mm,
                     "long_axis_mm": m["long_axis_mm"], "type": m["nodule_type"],
                     "category": m["lungrads_research"]})
    return pd.DataFrame(rows)


def test_phantom_lesions_on_2_5_mm_slices(segmenter):
    """Volume within 15 % and mean diameter (the mean of long and short axes) within 1 mm of the
    drawn lesion's equivalent-sphere diameter, for the round lesions of 6 mm and up, and the type
    right.  Calcified lesions are left out of the size check: the calcium blooms in the blur of
    the scanner and reads larger (category 1 whatever the size)."""
    got = phantom_measurements(segmenter, 2.5)
    print(got.round(3).to_string())
    sized = got[(got["diameter_mm"] >= 6.0) & (got["texture"] != "calcified")]
    assert len(sized) == 5
    assert (sized["volume_rel"].abs() <= THIN_VOLUME_REL).all(), sized
    assert (sized["mean_err"].abs() <= THIN_MEAN_MM).all(), sized
    assert (got["type"] == got["texture"]).all(), got


def test_phantom_lesions_on_5_mm_slices(segmenter):
    """On 5 mm slices the partial volume across slices dilutes a small nodule's density: measured
    (docs/results.md) volume -8 % .. +13 % and mean diameter -1.9 .. +0.6 mm for the non-calcified
    lesions (6-20 mm), and the 8 mm calcified one reads solid (its calcium averaged with the lung
    of a 5 mm slice).  Guarded: volume within 35 %, mean diameter within 2.5 mm, and the types of
    the lesions of 12 mm and up right."""
    got = phantom_measurements(segmenter, 5.0)
    print(got.round(3).to_string())
    sized = got[(got["diameter_mm"] >= 6.0) & (got["texture"] != "calcified")]
    assert (sized["volume_rel"].abs() <= THICK_VOLUME_REL).all(), sized
    assert (sized["mean_err"].abs() <= THICK_MEAN_MM).all(), sized
    big = got[got["diameter_mm"] >= 12.0]
    assert (big["type"] == big["texture"]).all(), big
