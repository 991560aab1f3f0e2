"""Morphology and merging: probability maps of spheres with known centres and sizes.

The maps are partial-volume maps: each voxel holds the fraction of its volume inside the
sphere (4 x 4 x 4 sub-samples), which is what a U-Net trained on real scans approximates.
On 5 mm slices a 6 mm sphere then shows up in two slices with fractions that tell where
between them its centre is.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungcad.morphology import (EXTRA_COLUMNS, components_2d, dilate, erode, extract_candidates,
                                merge_by_distance, merge_z, overlap_links, structuring_element,
                                split_components, threshold, weak_components)
from lungcad.result import CANDIDATE_COLUMNS
from lungcad.volume import voxel_to_world, world_to_voxel

#: The plain algorithm these tests were written for: one threshold of 0.5, no weak or split
#: candidates, no cap.  extract_candidates' bare defaults are the shipped pipeline's
#: (tests/test_defaults.py); a test that means another value passes it and overrides these.
PLAIN = dict(threshold=0.5, min_diameter_mm=3.0, max_candidates=None, weak_threshold=0.0, split_threshold=0.0)


def extract_plain(prob, **kw):
    return extract_candidates(prob, **{**PLAIN, **kw})


SPACINGS = [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7), (5.0, 0.8, 0.8)]


def draw_ellipsoid(prob, spacing, centre_zyx_mm, semi_axes_mm, *, sub=4):
    """Max-composite a partial-volume ellipsoid into ``prob`` (in place); return it."""
    sp = np.asarray(spacing, float)
    c = np.asarray(centre_zyx_mm, float)
    ax = np.broadcast_to(np.asarray(semi_axes_mm, float), (3,))
    lo = np.maximum(0, np.floor((c - ax) / sp).astype(int) - 1)
    hi = np.minimum(prob.shape, np.ceil((c + ax) / sp).astype(int) + 2)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    off = (np.arange(sub) + 0.5) / sub - 0.5
    acc = np.zeros(grids[0].shape, np.float32)
    for oz in off:
        for oy in off:
            for ox in off:
                r2 = sum((((g + o) * s - cc) / a) ** 2
                         for g, o, s, cc, a in zip(grids, (oz, oy, ox), sp, c, ax))
                acc += r2 <= 1.0
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    prob[box] = np.maximum(prob[box], acc / sub ** 3)
    return prob


def match(table, world_xyz):
    """Index of the candidate nearest to a world point and its distance in mm."""
    d = np.linalg.norm(table[["coordX", "coordY", "coordZ"]].to_numpy() - np.asarray(world_xyz),
                       axis=1)
    return int(np.argmin(d)), float(d.min())


@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: "x".join(map(str, s)))
def test_spheres_come_out_at_their_centres_and_sizes(spacing):
    rng = np.random.default_rng(3)
    origin = (-150.0, -120.0, -300.0)
    shape = tuple(int(round(n / s)) for n, s in zip((100.0, 120.0, 120.0), spacing))
    prob = np.zeros(shape, np.float32)
    # (centre z, y, x in mm along the index axes, diameter) with sub-voxel offsets
    spheres = [((30.0, 30.0, 30.0), 6.0), ((30.0, 30.0, 80.0), 10.0),
               ((65.0, 80.0, 40.0), 18.0), ((60.0, 85.0, 95.0), 8.0)]
    truth = []
    for c, d in spheres:
        c = np.asarray(c) + rng.uniform(-1.5, 1.5, 3)
        draw_ellipsoid(prob, spacing, c, d / 2)
        truth.append((voxel_to_world(c / np.asarray(spacing), spacing=spacing, origin=origin), d))
    table = extract_plain(prob, spacing_zyx=spacing, origin_xyz=origin, series_uid="1.2.3")
    assert len(table) == len(spheres)
    assert set(table["seriesuid"]) == {"1.2.3"}
    found = set()
    for world, d in truth:
        i, dist = match(table, world)
        found.add(i)
        assert dist <= 1.0, (spacing, d, dist)
        assert table.loc[i, "diameter_mm"] == pytest.approx(d, rel=0.15)
        assert table.loc[i, "volume_mm3"] == pytest.approx(np.pi / 6 * d ** 3, rel=0.4)
        # z extent covers the sphere, to within one slice on each side
        assert d - spacing[0] <= table.loc[i, "z_extent_mm"] <= d + 2 * spacing[0]
    assert len(found) == len(spheres)
    # voxel columns agree with the world columns
    back = voxel_to_world(table[["z", "y", "x"]].to_numpy(), spacing=spacing, origin=origin)
    np.testing.assert_allclose(back, table[["coordX", "coordY", "coordZ"]].to_numpy(), atol=1e-6)


def test_table_columns_order_and_probability():
    sp = (2.5, 0.7, 0.7)
    shape = (40, 150, 150)
    # two spheres with different peak probabilities
    a = draw_ellipsoid(np.zeros(shape, np.float32), sp, (50, 30, 30), 5.0) * 0.7
    b = draw_ellipsoid(np.zeros(shape, np.float32), sp, (50, 70, 70), 5.0) * 0.95
    prob = np.maximum(a, b)
    table = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.3)
    assert list(table.columns) == CANDIDATE_COLUMNS + EXTRA_COLUMNS
    assert len(table) == 2
    assert table["probability"].tolist() == pytest.approx([0.95, 0.7], abs=1e-6)
    assert (table["seg_prob"] == table["probability"]).all()
    assert table.loc[0, "coordX"] == pytest.approx(70, abs=1.0)
    assert (table["source"] == "unet").all()


def test_empty_map_gives_empty_table_with_columns():
    table = extract_plain(np.zeros((5, 20, 20), np.float32), spacing_zyx=(1, 1, 1),
                          origin_xyz=(0, 0, 0))
    assert len(table) == 0
    assert list(table.columns) == CANDIDATE_COLUMNS + EXTRA_COLUMNS
    assert table["source"].dtype == object and table["z"].dtype == float


def test_nodule_split_into_blobs_in_one_slice_is_one_candidate():
    sp = (2.5, 0.7, 0.7)
    prob = np.zeros((30, 120, 120), np.float32)
    c = np.array([37.5, 42.0, 42.0])
    draw_ellipsoid(prob, sp, c, 6.0)
    k, j, i = np.round(c / sp).astype(int)
    # a cross-shaped gap of 4 pixels (2.8 mm) cuts the central slice into four blobs
    prob[k, j - 2:j + 2, :] = 0
    prob[k, :, i - 2:i + 2] = 0
    blobs = components_2d(threshold(prob[k:k + 1]), prob[k:k + 1], spacing_zyx=sp)
    assert len(blobs) == 4
    table = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0))
    assert len(table) == 1
    centre = table.loc[0, ["z", "y", "x"]].to_numpy(float) * sp
    assert np.linalg.norm(centre - c) <= 1.0
    assert table.loc[0, "diameter_mm"] == pytest.approx(12.0, rel=0.15)


def test_nodule_spanning_many_slices_is_one_candidate():
    sp = (1.0, 0.7, 0.7)
    prob = np.zeros((80, 100, 100), np.float32)
    c = np.array([40.0, 35.0, 35.0])
    draw_ellipsoid(prob, sp, c, (25.0, 6.0, 6.0))  # 50 mm long in z
    table = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0))
    assert len(table) == 1
    row = table.iloc[0]
    assert np.linalg.norm(row[["z", "y", "x"]].to_numpy(float) * sp - c) <= 1.0
    assert 48 <= row["n_slices"] <= 51
    assert row["z_extent_mm"] == pytest.approx(row["n_slices"] * 1.0)
    # equivalent-sphere diameter of a 50 x 12 x 12 mm ellipsoid
    assert row["diameter_mm"] == pytest.approx((50 * 12 * 12) ** (1 / 3), rel=0.15)


@pytest.mark.parametrize("spacing", SPACINGS[1:], ids=lambda s: "x".join(map(str, s)))
def test_two_nodules_15_mm_apart_stay_two(spacing):
    prob = np.zeros(tuple(int(n / s) for n, s in zip((80, 80, 80), spacing)), np.float32)
    a, b = np.array([40.0, 40.0, 32.5]), np.array([40.0, 40.0, 47.5])  # 15 mm apart in x
    draw_ellipsoid(prob, spacing, a, 4.0)
    draw_ellipsoid(prob, spacing, b, 4.0)
    table = extract_plain(prob, spacing_zyx=spacing, origin_xyz=(0, 0, 0))
    assert len(table) == 2
    got = sorted(table["x"] * spacing[2])
    assert got == pytest.approx([32.5, 47.5], abs=1.0)


def test_two_nodules_15_mm_apart_in_z_stay_two():
    sp = (2.5, 0.7, 0.7)
    prob = np.zeros((40, 80, 80), np.float32)
    draw_ellipsoid(prob, sp, (40.0, 28.0, 28.0), 4.0)
    draw_ellipsoid(prob, sp, (55.0, 28.0, 28.0), 4.0)
    table = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0))
    assert sorted(table["z"] * 2.5) == pytest.approx([40.0, 55.0], abs=1.0)


def test_non_identity_direction_gives_correct_world_coordinates():
    theta = np.deg2rad(30)
    direction = np.array([[np.cos(theta), -np.sin(theta), 0.0],
                          [np.sin(theta), np.cos(theta), 0.0],
                          [0.0, 0.0, -1.0]])  # rotated in-plane, slices run head to feet
    sp, origin = (2.5, 0.7, 0.7), (12.0, -40.0, 100.0)
    prob = np.zeros((40, 100, 100), np.float32)
    c_mm = np.array([51.3, 33.1, 40.2])
    draw_ellipsoid(prob, sp, c_mm, 5.0)
    table = extract_plain(prob, spacing_zyx=sp, origin_xyz=origin, direction=direction)
    assert len(table) == 1
    expected = voxel_to_world(c_mm / sp, spacing=sp, origin=origin, direction=direction)
    got = table.loc[0, ["coordX", "coordY", "coordZ"]].to_numpy(float)
    assert np.linalg.norm(got - expected) <= 1.0
    back = world_to_voxel(got, spacing=sp, origin=origin, direction=direction)
    np.testing.assert_allclose(back, table.loc[0, ["z", "y", "x"]].to_numpy(float), atol=1e-6)


def test_min_diameter_max_candidates_and_mask():
    sp = (1.0, 1.0, 1.0)
    prob = np.zeros((40, 80, 80), np.float32)
    draw_ellipsoid(prob, sp, (20, 20, 20), 1.0)    # 2 mm: below min_diameter_mm=3
    draw_ellipsoid(prob, sp, (20, 20, 60), 4.0)
    draw_ellipsoid(prob, sp, (20, 60, 40), 6.0)
    assert len(extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0))) == 2
    assert len(extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), min_diameter_mm=1.0)) == 3
    assert len(extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), max_candidates=1)) == 1
    mask = np.zeros(prob.shape, bool)
    mask[:, 40:, :] = True  # only the third sphere overlaps it
    t = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), mask=mask)
    assert len(t) == 1 and t.loc[0, "y"] == pytest.approx(60, abs=0.5)


def test_structuring_elements_are_sized_in_mm():
    se = structuring_element(2.0, spacing_zyx=(2.5, 0.5, 1.0))
    assert se.shape == (1, 9, 5)
    se3 = structuring_element(2.5, spacing_zyx=(2.5, 0.5, 1.0), in_plane=False)
    assert se3.shape == (3, 11, 5)
    assert structuring_element(0.4, spacing_zyx=(1, 1, 1)).sum() == 1
    point = np.zeros((9, 21, 21), bool)
    point[4, 10, 10] = True
    d = dilate(point, radius_mm=3.0, spacing_zyx=(1.0, 0.5, 0.5))
    assert d[4].sum() == structuring_element(3.0, spacing_zyx=(1, 0.5, 0.5)).sum()
    assert d[3].sum() == 0 and d[4, 10, 16] and not d[4, 10, 17]
    d3 = dilate(point, radius_mm=3.0, spacing_zyx=(1.0, 0.5, 0.5), in_plane=False)
    assert d3[1, 10, 10] and not d3[0, 10, 10]
    assert erode(d, radius_mm=3.0, spacing_zyx=(1.0, 0.5, 0.5)).sum() == 1
    # erosion treats the border as background
    assert not erode(np.ones((1, 5, 5), bool), radius_mm=1.0, spacing_zyx=(1, 1, 1))[0, 0, 2]


def test_components_and_distance_merge():
    sp = (1.0, 0.5, 0.5)
    mask = np.zeros((2, 100, 100), bool)
    yy, xx = np.mgrid[:100, :100]
    for cy, cx in [(20, 20), (20, 28), (70, 70)]:  # first two 4 mm apart
        mask[0] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
    mask[1] = mask[0]
    prob = mask.astype(np.float32)
    dets = components_2d(mask, prob, spacing_zyx=sp)
    assert len(dets) == 6
    s0 = dets[dets["slice"] == 0].sort_values(["y", "x"])
    assert s0[["y", "x"]].to_numpy() == pytest.approx(np.array([[20, 20], [20, 28], [70, 70]]))
    assert s0["x_mm"].tolist() == pytest.approx([10.0, 14.0, 35.0])
    assert s0["area_mm2"].tolist() == pytest.approx([29 * 0.25] * 3)
    merged = merge_by_distance(dets, distance_mm=5.0)
    assert len(merged) == 4
    m0 = merged[(merged["slice"] == 0) & (merged["n_pixels"] == 58)]
    assert len(m0) == 1
    assert m0.iloc[0][["y", "x"]].tolist() == pytest.approx([20.0, 24.0])
    assert len(m0.iloc[0]["labels"]) == 2
    assert len(merge_by_distance(dets, distance_mm=3.0)) == 6
    linked = merge_z(merged, radius_mm=5.0)
    assert linked["candidate"].nunique() == 2


def test_merge_z_gap_and_radius():
    dets = pd.DataFrame({"slice": [0, 1, 3, 4, 4], "y_mm": [10.0, 11.0, 11.0, 11.0, 30.0],
                         "x_mm": [10.0, 10.0, 10.0, 12.0, 30.0]})
    assert merge_z(dets, radius_mm=5.0)["candidate"].tolist() == [0, 0, 1, 1, 2]
    assert merge_z(dets, radius_mm=5.0, max_gap_slices=2)["candidate"].tolist() == [0, 0, 0, 0, 1]
    assert merge_z(dets, radius_mm=0.5)["candidate"].nunique() == 5
    with pytest.raises(ValueError, match="max_gap_slices: expected an integer >= 1"):
        merge_z(dets, radius_mm=5.0, max_gap_slices=0)


def disc(shape, spacing, centre_yx_mm, diameter_mm):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy * spacing[1] - centre_yx_mm[0]) ** 2
            + (xx * spacing[2] - centre_yx_mm[1]) ** 2) <= (diameter_mm / 2) ** 2


def one_blob_per_slice(*discs, spacing=(8.0, 0.8, 0.8), shape=(120, 120)):
    """Labels (slice k holds label k + 1) and the 2-D detection table of one disc per slice."""
    mask = np.stack([disc(shape, spacing, c, d) for c, d in discs])
    labels = mask * np.arange(1, len(discs) + 1)[:, None, None]
    return labels, components_2d(mask, mask.astype(np.float32), spacing_zyx=spacing)


def test_overlap_links_join_large_overlapping_slices_only():
    # 36 mm discs 9 mm apart in neighbouring slices: the centroids are too far apart for a
    # 5 mm link, the footprints share about 2/3 of their area
    labels, dets = one_blob_per_slice(((40.0, 40.0), 36.0), ((40.0, 49.0), 36.0))
    assert overlap_links(labels, dets, min_fraction=0.5, min_diameter_mm=10.0) == [(0, 1)]
    assert overlap_links(labels, dets, min_fraction=0.9, min_diameter_mm=10.0) == []
    assert merge_z(dets, radius_mm=5.0)["candidate"].nunique() == 2
    assert merge_z(dets, radius_mm=5.0, links=[(0, 1)])["candidate"].nunique() == 1
    # 36 mm discs 30 mm apart barely touch
    labels, dets = one_blob_per_slice(((40.0, 30.0), 36.0), ((40.0, 60.0), 36.0))
    assert overlap_links(labels, dets, min_fraction=0.5) == []
    # a 4 mm vessel cross-section lying on a 30 mm slice: wholly inside, but too small to link
    labels, dets = one_blob_per_slice(((40.0, 40.0), 30.0), ((40.0, 50.0), 4.0))
    assert overlap_links(labels, dets, min_fraction=0.5, min_diameter_mm=10.0) == []
    assert overlap_links(labels, dets, min_fraction=0.5, min_diameter_mm=0.0) == [(0, 1)]
    with pytest.raises(ValueError, match=r"min_fraction: expected a fraction in \(0, 1\]"):
        overlap_links(labels, dets, min_fraction=0.0)
    with pytest.raises(ValueError, match="links: expected row positions"):
        merge_z(dets, radius_mm=5.0, links=[(0, 2)])


def test_oblique_mass_on_thick_slices_is_one_candidate():
    """A 4 cm mass on 8 mm slices whose outline moves 9 mm from slice to slice (as the
    Lung-PET-CT-Dx A0002 tumour does) stays one candidate; the centroid rule alone splits it."""
    sp = (8.0, 0.8, 0.8)
    discs = [((60.0, 30.0 + 9.0 * k), d) for k, d in enumerate((24.0, 36.0, 40.0, 40.0, 36.0, 24.0))]
    prob = np.zeros((10, 150, 150), np.float32)
    prob[2:8] = 0.95 * np.stack([disc(prob.shape[1:], sp, c, d) for c, d in discs])
    one = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0))
    assert len(one) == 1
    assert one.loc[0, "n_slices"] == 6
    assert one.loc[0, "x"] * sp[2] == pytest.approx(30.0 + 9.0 * 2.5, abs=2.0)
    split = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), z_overlap=0.0)
    assert len(split) >= 3


def test_weak_components_keep_clear_of_the_strong_foreground():
    """Faint blobs become weak components unless they touch the strong foreground in their own
    slice or the slice just above or below (the rim or cap of a stronger detection)."""
    sp = (5.0, 0.8, 0.8)
    shape = (8, 100, 100)
    prob = np.zeros(shape, np.float32)
    strong = np.zeros(shape, bool)
    strong[3] = disc(shape[1:], sp, (20.0, 20.0), 10.0)
    prob[3][disc(shape[1:], sp, (20.0, 20.0), 14.0)] = 0.3           # the rim of the strong blob
    prob[3][strong[3]] = 0.9
    prob[4][disc(shape[1:], sp, (20.0, 20.0), 6.0)] = 0.3            # its cap, one slice down
    prob[6][disc(shape[1:], sp, (20.0, 20.0), 6.0)] = 0.3            # two slices down: clear of it
    prob[3][disc(shape[1:], sp, (60.0, 60.0), 4.0)] = 0.35           # a faint nodule far away
    labels, n = weak_components(prob, strong, level=0.25, spacing_zyx=sp)
    assert n == 2 and labels.max() == 2
    kept = {int(k) for k in np.nonzero(labels)[0]}
    assert kept == {3, 6} and labels[3, 75, 75] > 0 and labels[6, 25, 25] > 0
    assert labels[3][~disc(shape[1:], sp, (60.0, 60.0), 6.0)].max() == 0   # no rim kept
    assert weak_components(prob, strong, level=0.5, spacing_zyx=sp)[1] == 0


def test_weak_threshold_adds_faint_nodules_after_the_others():
    """A 4 mm nodule on 5 mm slices that the map shows at 0.3 is no candidate at threshold 0.4;
    with weak_threshold = 0.2 it is one, located at its centre and ranked after the strong ones,
    and the first to go under max_candidates.  The rim of a strong nodule adds nothing."""
    sp = (5.0, 0.7, 0.7)
    prob = np.zeros((12, 120, 120), np.float32)
    draw_ellipsoid(prob, sp, (30.0, 30.0, 30.0), 6.0)
    prob *= 0.95
    halo = dilate(prob > 0.4, radius_mm=3.0, spacing_zyx=sp) & (prob <= 0.4)
    prob[halo] = 0.25                                                   # a faint rim around it
    faint = np.zeros_like(prob)
    draw_ellipsoid(faint, sp, (27.5, 60.0, 60.0), 2.0)                  # centred on slice 5.5: 2 slices
    prob = np.maximum(prob, 0.3 * (faint > 0.2))
    off = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, min_diameter_mm=1.0)
    assert len(off) == 1
    on = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, min_diameter_mm=1.0,
                       weak_threshold=0.2)
    assert len(on) == 2
    assert on.loc[0, "seg_prob"] == pytest.approx(0.95, abs=0.01)
    assert on.loc[1, "seg_prob"] == pytest.approx(0.3)
    weak = on.loc[1]
    assert weak["y"] * sp[1] == pytest.approx(60.0, abs=0.7) and weak["x"] * sp[2] == pytest.approx(60.0, abs=0.7)
    assert weak["z"] * sp[0] == pytest.approx(27.5, abs=1.0) and weak["n_slices"] == 2
    capped = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, min_diameter_mm=1.0,
                           weak_threshold=0.2, max_candidates=1)
    assert capped.loc[0, "seg_prob"] > 0.9
    # at or above the threshold nothing lies between the two levels
    for level in (0.4, 0.6):
        same = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, min_diameter_mm=1.0,
                             weak_threshold=level)
        pd.testing.assert_frame_equal(same, off)
    with pytest.raises(ValueError, match="weak_threshold: expected a level from 0 \\(off\\) to 1"):
        extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, weak_threshold=-0.2)


def nodule_on_hilum(sp, shape=(16, 140, 160)):
    """A 20 mm nodule (0.97 inside) joined to a larger hilar structure that the map shows at 0.6:
    at threshold 0.4 they are one component in every slice they share."""
    prob = np.zeros(shape, np.float32)
    nodule = draw_ellipsoid(np.zeros(shape, np.float32), sp, (40.0, 50.0, 40.0), 10.0)
    hilum = draw_ellipsoid(np.zeros(shape, np.float32), sp, (40.0, 50.0, 72.0), (18.0, 14.0, 22.0))
    return np.maximum(0.97 * nodule, 0.6 * hilum)


def test_split_components_keep_the_parts_that_split_or_shrink_a_large_component():
    """Inside large components only: parts at the higher level are kept when there are two or
    more, or when one covers less than half of its component; a component that stays whole,
    and a small one, give nothing."""
    sp = (5.0, 0.8, 0.8)
    shape = (3, 120, 160)
    prob = np.zeros(shape, np.float32)
    prob[0][disc(shape[1:], sp, (40.0, 40.0), 30.0)] = 0.6            # large, one small core
    prob[0][disc(shape[1:], sp, (40.0, 34.0), 10.0)] = 0.95
    prob[1][disc(shape[1:], sp, (40.0, 40.0), 24.0)] = 0.95           # large, whole at 0.9
    prob[2][disc(shape[1:], sp, (40.0, 40.0), 30.0)] = 0.6            # large, two cores
    prob[2][disc(shape[1:], sp, (40.0, 30.0), 8.0)] = 0.95
    prob[2][disc(shape[1:], sp, (40.0, 50.0), 8.0)] = 0.95
    prob[2][disc(shape[1:], sp, (40.0, 100.0), 10.0)] = 0.6           # small: never split
    prob[2][disc(shape[1:], sp, (40.0, 100.0), 4.0)] = 0.95
    labels, n = ndimage.label(prob >= 0.4, structure=np.pad(np.ones((1, 3, 3), bool), ((1, 1), (0, 0), (0, 0))))
    parts, m = split_components(prob, labels, n, level=0.9, min_diameter_mm=15.0, spacing_zyx=sp)
    assert m == 3 and parts.max() == 3
    assert {int(k) for k in np.nonzero(parts)[0]} == {0, 2}
    assert parts[0][disc(shape[1:], sp, (40.0, 34.0), 9.0)].min() > 0
    assert parts[2][:, int(80 / sp[2]):].max() == 0                    # the small component: nothing
    assert len(np.unique(parts[2][parts[2] > 0])) == 2
    none, zero = split_components(prob, labels, n, level=0.9, min_diameter_mm=40.0, spacing_zyx=sp)
    assert zero == 0 and none.max() == 0
    with pytest.raises(ValueError, match=r"level: expected a level in \(0, 1\]"):
        split_components(prob, labels, n, level=0.0, min_diameter_mm=15.0, spacing_zyx=sp)


def test_split_threshold_gives_a_nodule_joined_to_the_hilum_its_own_candidate():
    """The joined component's centre lies far outside the nodule; with split_threshold = 0.9 the
    nodule also gets a candidate of its own, at its centre and about its size, next to the whole
    component's.  A level at or below threshold changes nothing."""
    sp = (5.0, 0.8, 0.8)
    prob = nodule_on_hilum(sp)
    centre = np.array([40.0, 50.0, 40.0])
    off = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4)
    assert len(off) == 1
    dist = lambda t: np.linalg.norm(t[["z", "y", "x"]].to_numpy(float) * sp - centre, axis=1)
    assert dist(off)[0] > 10.0                                           # outside the nodule
    on = extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, split_threshold=0.9)
    assert len(on) == 2
    near = dist(on)
    assert near.min() < 1.5
    own = on.iloc[int(np.argmin(near))]
    assert 14.0 < own["diameter_mm"] < 22.0 and own["seg_prob"] == pytest.approx(0.97, abs=0.01)
    whole = on.iloc[int(np.argmax(near))]
    np.testing.assert_allclose(whole[["z", "y", "x", "diameter_mm"]].to_numpy(float),
                               off.loc[0, ["z", "y", "x", "diameter_mm"]].to_numpy(float))
    for level in (0.3, 0.4):
        pd.testing.assert_frame_equal(
            extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), threshold=0.4, split_threshold=level), off)
    with pytest.raises(ValueError, match=r"split_threshold: expected a level from 0 \(off\) to 1"):
        extract_plain(prob, spacing_zyx=sp, origin_xyz=(0, 0, 0), split_threshold=1.5)


def test_empty_surroundings_change_nothing_but_the_indices():
    """The stage works on the box around the map's foreground: padding the map with empty
    space shifts the voxel indices by the padding and leaves the world positions and every
    measurement as they were."""
    sp = (2.5, 0.7, 0.7)
    prob = np.zeros((20, 60, 60), np.float32)
    draw_ellipsoid(prob, sp, (25.0, 20.0, 20.0), 5.0)
    draw_ellipsoid(prob, sp, (25.0, 21.0, 30.0), (4.0, 2.0, 2.0))
    prob[10][disc(prob.shape[1:], sp, (30.0, 12.0), 3.0)] = 0.32        # a weak blob
    kw = dict(spacing_zyx=sp, threshold=0.4, weak_threshold=0.3, min_diameter_mm=1.0)
    small = extract_plain(prob, origin_xyz=(0.0, 0.0, 0.0), **kw)
    pad = (7, 33, 21)
    big = np.pad(prob, [(p, 9) for p in pad])
    origin = tuple(-p * s for p, s in zip(pad[::-1], sp[::-1]))       # x, y, z of voxel (0, 0, 0)
    moved = extract_plain(big, origin_xyz=origin, **kw)
    assert len(small) == 3 and (small["seg_prob"] < 0.4).sum() == 1
    np.testing.assert_allclose(moved[["z", "y", "x"]].to_numpy() - pad, small[["z", "y", "x"]].to_numpy(),
                               atol=1e-9)
    cols = ["coordX", "coordY", "coordZ", "diameter_mm", "seg_prob", "volume_mm3", "n_slices"]
    np.testing.assert_allclose(moved[cols].to_numpy(float), small[cols].to_numpy(float), atol=1e-9)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match=r"spacing_zyx: expected 3 positive values"):
        extract_plain(np.zeros((2, 4, 4)), spacing_zyx=(1, 1), origin_xyz=(0, 0, 0))
    with pytest.raises(ValueError, match=r"expected a 3-D array"):
        extract_plain(np.zeros((4, 4)), spacing_zyx=(1, 1, 1), origin_xyz=(0, 0, 0))
    with pytest.raises(ValueError, match=r"radius_mm: expected a distance >= 0"):
        dilate(np.zeros((1, 3, 3), bool), radius_mm=-1, spacing_zyx=(1, 1, 1))
    with pytest.raises(ValueError, match=r"mask: expected the shape of prob"):
        extract_plain(np.zeros((2, 4, 4)), spacing_zyx=(1, 1, 1), origin_xyz=(0, 0, 0),
                      mask=np.zeros((2, 4, 5), bool))


def test_series_uid_that_utf8_cannot_hold_is_escaped():
    # a SeriesInstanceUID from a header decoded with surrogateescape
    prob = np.zeros((6, 40, 40), np.float32)
    prob[2:4, 18:23, 18:23] = 0.9
    table = extract_plain(prob, spacing_zyx=(2.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0),
                          series_uid="1.2.\udc80")
    assert len(table) == 1 and table["seriesuid"].tolist() == ["1.2.\\udc80"]


@pytest.mark.parametrize("fill", [0.002, 0.05])
def test_support_halo_and_maximum_filter_agree(monkeypatch, fill):
    """The support (candidates grown by one voxel, the largest id where grown candidates meet)
    is the same set of (voxel, id) by its halo path and by its maximum-filter path, on a
    sparse and a dense label map of touching and isolated candidates."""
    from lungcad.morphology import measure

    rng = np.random.default_rng(7)
    seeds = rng.random((30, 40, 50)) < fill
    own, n = ndimage.label(ndimage.binary_dilation(seeds, iterations=1), structure=np.ones((3, 3, 3)))
    own = own.astype(np.int32)
    own[own % 3 == 0] = 0            # drop some, so that others border on empty voxels
    own[3:10, 3:10, 3:14] = 0        # room for two candidates face to face, whose border
    own[5:8, 5:8, 5:8] = 1           # voxels (x = 8) are contested
    own[5:8, 5:8, 9:12] = n + 1
    results = []
    for cost in (1, 10**9):          # the halo always, then the filter always
        monkeypatch.setattr(measure, "_HALO_COST", cost)
        where, ids = measure._support(own)
        flat = np.ravel_multi_index(where, own.shape)
        order = np.argsort(flat)
        assert len(np.unique(flat)) == len(flat)      # each voxel once
        results.append((flat[order], ids[order]))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    # the contested column between the two face-to-face candidates went to the larger id
    grid = np.zeros(own.shape, np.int64)
    grid.flat[results[0][0]] = results[0][1]
    assert (grid[5:8, 5:8, 8] == n + 1).all()
    # and every support voxel is a candidate's or touches one (26-connected)
    near = ndimage.binary_dilation(own > 0, structure=np.ones((3, 3, 3)))
    assert near.flat[results[0][0]].all() and (grid > 0).sum() == near.sum()
