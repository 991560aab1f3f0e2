"""FPR stage plumbing: patch geometry in world space, scales, and the two heads."""
import numpy as np
import pandas as pd
import pytest

from lungcad.fpr import classify_candidates, extract_patches, patch_spacing, suppress_inside
from lungcad.volume import CTVolume


def blob_volume(direction=np.eye(3)):
    spacing = (2.5, 0.7, 0.8)
    hu = np.full((40, 120, 110), -900, np.int16)
    vol = CTVolume(hu, spacing, origin=(-40.0, 20.0, -300.0), direction=direction, series_uid="s1")
    k, j, i = 20, 60, 50
    hu[k - 1:k + 2, j - 4:j + 5, i - 4:i + 5] = 60           # ~ 7 x 6 x 7 mm block
    return vol, vol.voxel_to_world([k, j, i])


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])])
def test_patch_is_centred_on_the_world_position(direction):
    vol, centre = blob_volume(direction)
    p = extract_patches(vol.hu, centre[None], spacing_zyx=vol.spacing, origin_xyz=vol.origin,
                        direction=vol.direction, scales_mm=[1.0], patch_size=16, views="cube")
    assert p.shape == (1, 16, 16, 16, 1)
    bright = np.argwhere(p[0, ..., 0] > 0.5)
    np.testing.assert_allclose(bright.mean(axis=0), [7.5, 7.5, 7.5], atol=1.0)


def test_masses_are_seen_at_a_coarser_scale():
    s = patch_spacing([5.0, 20.0, 60.0], patch_size=32, patch_mm=1.0, fit_fraction=0.7)
    assert s[0] == 1.0 and s[1] == 1.0
    assert s[2] == pytest.approx(60.0 / (0.7 * 32))


def test_rotation_by_identity_changes_nothing():
    vol, centre = blob_volume()
    kw = dict(spacing_zyx=vol.spacing, origin_xyz=vol.origin, scales_mm=[1.0], patch_size=12, views="cube")
    a = extract_patches(vol.hu, centre[None], **kw)
    b = extract_patches(vol.hu, centre[None], rotation=np.eye(3)[None], **kw)
    np.testing.assert_array_equal(a, b)


def toy_classifier(inputs):
    """Nodule = density at the cube centre; malignancy = coarser scale means larger."""
    p = inputs["patch"]
    c = p.shape[1] // 2
    centre = p[:, c - 1:c + 1, c - 1:c + 1, c - 1:c + 1, 0].mean(axis=(1, 2, 3))
    return {"nodule": centre[:, None], "malignancy": np.clip(inputs["scale"] / 3.0, 0, 1)}


def test_classify_candidates_adds_columns_and_ranks():
    vol, centre = blob_volume()
    empty_place = vol.voxel_to_world([20, 100, 95])
    cands = pd.DataFrame({"seriesuid": "s1", "coordX": [empty_place[0], centre[0]],
                          "coordY": [empty_place[1], centre[1]], "coordZ": [empty_place[2], centre[2]],
                          "z": 0.0, "y": 0.0, "x": 0.0, "diameter_mm": [6.0, 6.0],
                          "probability": [0.9, 0.8], "seg_prob": [0.9, 0.8]})
    out = classify_candidates(vol, cands, model=toy_classifier, patch_size=16, batch_size=1, tta=1)
    assert list(out.columns[:len(cands.columns)]) == list(cands.columns)
    assert {"nodule_prob", "malignancy_prob", "patch_mm"} <= set(out.columns)
    assert out.iloc[0]["coordX"] == pytest.approx(centre[0])          # the blob ranks first now
    assert out.iloc[0]["nodule_prob"] > 0.5 > out.iloc[1]["nodule_prob"]
    assert (out["probability"] == out["nodule_prob"]).all()
    assert out["seg_prob"].tolist() == [0.8, 0.9]                      # kept, not removed


def test_classify_candidates_empty_table():
    vol, _ = blob_volume()
    cands = pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "probability"])
    out = classify_candidates(vol, cands, model=toy_classifier)
    assert len(out) == 0 and "nodule_prob" in out.columns


def test_tta_rotations_are_the_eight_turns_and_mirrors_about_z():
    from lungcad.inference import tta_rotations

    rots = tta_rotations(8)
    np.testing.assert_array_equal(rots[0], np.eye(3))
    assert len({r.tobytes() for r in rots}) == 8                       # all different
    for r in rots:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)     # rigid
        assert r[2, 2] in (1.0, -1.0) and not r[2, :2].any()           # z stays the z axis
    assert [len(tta_rotations(n)) for n in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(ValueError, match="tta"):
        tta_rotations(3)


def right_half_classifier(inputs):
    """Nodule = 1 when the bright voxels of the cube's centre slice lie right of centre
    (world +x) by over 2 voxels: not invariant to a turn about z, so it shows which views
    were seen."""
    p = inputs["patch"][..., 0]
    c = (p.shape[1] - 1) / 2
    mid = p[:, p.shape[1] // 2] > 0.5
    cols = np.arange(p.shape[1])[None, None, :]
    centroid = (mid * cols).sum(axis=(1, 2)) / np.maximum(mid.sum(axis=(1, 2)), 1)
    right = (mid.any(axis=(1, 2)) & (centroid > c + 2)).astype(np.float32)
    return {"nodule": right[:, None], "malignancy": right[:, None]}


def test_classify_candidates_averages_the_test_time_views():
    vol, blob = blob_volume()
    # the candidate sits 5 mm left of the blob (-x): the blob is right of centre in the plain view,
    # ahead/behind or left of it once the grid is turned by 90, 180 or 270 degrees
    cands = pd.DataFrame({"seriesuid": "s1", "coordX": [blob[0] - 5.0], "coordY": [blob[1]],
                          "coordZ": [blob[2]], "diameter_mm": [6.0], "probability": [0.9]})
    got = {n: classify_candidates(vol, cands, model=right_half_classifier, patch_size=24, tta=n)
           for n in (1, 2, 4, 8)}
    assert got[1]["nodule_prob"][0] == pytest.approx(1.0)
    assert got[2]["nodule_prob"][0] == pytest.approx(0.5)     # plain + one turn
    assert got[4]["nodule_prob"][0] == pytest.approx(0.25)    # one of four turns
    assert got[8]["nodule_prob"][0] == pytest.approx(0.25)    # mirroring z keeps x
    np.testing.assert_allclose(got[8]["malignancy_prob"], got[8]["nodule_prob"])
    # a turn-invariant network (density at the centre) scores the same with and without
    one, eight = (classify_candidates(vol, cands.assign(coordX=blob[0]), model=toy_classifier,
                                      patch_size=16, tta=n)["nodule_prob"][0] for n in (1, 8))
    assert one == pytest.approx(eight, abs=0.02) and one > 0.5


def test_orthogonal_views_tell_a_sphere_from_a_vessel():
    """The three planes through the centre: a sphere is a disc in each, a vessel along
    world z is a disc in the axial view and a stripe in the coronal and sagittal views."""
    spacing = (1.0, 1.0, 1.0)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    sphere = np.where((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2 <= 6 ** 2, 40, -900).astype(np.int16)
    vessel = np.where((yy - 24) ** 2 + (xx - 24) ** 2 <= 3 ** 2, 40, -900).astype(np.int16)
    centre = np.array([[24.0, 24.0, 24.0]])
    kw = dict(spacing_zyx=spacing, origin_xyz=(0.0, 0.0, 0.0), scales_mm=[1.0], patch_size=24, views="orthogonal")
    s = extract_patches(sphere, centre, **kw)
    v = extract_patches(vessel, centre, **kw)
    assert s.shape == v.shape == (1, 24, 24, 3)
    area = (s[0] > 0.5).sum(axis=(0, 1))
    assert np.all(np.abs(area - np.pi * 36) < 0.2 * np.pi * 36), area
    vessel_area = (v[0] > 0.5).sum(axis=(0, 1))
    assert vessel_area[0] < 40 and vessel_area[1] == vessel_area[2] >= 24 * 5
    # the views are planes of the cube: axial = the cube's centre slice, rows y and columns x
    cube = extract_patches(sphere, centre - [[0.0, 0.0, 0.5]], spacing_zyx=spacing, origin_xyz=(0.0, 0.0, 0.0),
                           scales_mm=[1.0], patch_size=24, views="cube")[0, ..., 0]
    np.testing.assert_allclose(s[0, :, :, 0], cube[12], atol=1e-6)


def test_views_follow_the_backbone():
    from lungcad.fpr import patch_shape, views_for

    assert views_for("wrn3d") == "cube" and views_for("resnet18-3d") == "cube"
    assert views_for("wrn2d") == "orthogonal" and views_for("resnet18") == "orthogonal"
    with pytest.raises(ValueError, match="unknown FPR backbone 'nope'"):
        views_for("nope")
    with pytest.raises(ValueError, match="segmentation network"):
        views_for("unet3d")
    assert patch_shape("cube", 8) == (8, 8, 8, 1) and patch_shape("orthogonal", 8) == (8, 8, 3)
    with pytest.raises(ValueError, match="views must be one of"):
        patch_shape("sideways", 8)


@pytest.mark.parametrize("backbone, kwargs, patch", [("wrn2d", {"depth": 10, "width": 1}, (16, 16, 3)),
                                                     ("resnet18", {"base_filters": 4}, (32, 32, 3)),
                                                     ("resnet18-3d", {"base_filters": 4}, (32, 32, 32, 1))])
def test_fpr_model_on_any_zoo_backbone(backbone, kwargs, patch):
    from lungcad.fpr import build_fpr_model, model_backbone, model_views

    model = build_fpr_model(backbone=backbone, patch_size=patch[0], backbone_kwargs=kwargs)
    assert model_backbone(model) == backbone
    assert model_views(model) == ("cube" if len(patch) == 4 else "orthogonal")
    vol, centre = blob_volume()
    cands = pd.DataFrame({"seriesuid": "s1", "coordX": [centre[0]], "coordY": [centre[1]],
                          "coordZ": [centre[2]], "z": 0.0, "y": 0.0, "x": 0.0, "diameter_mm": [6.0],
                          "probability": [0.9]})
    out = classify_candidates(vol, cands, model=model, patch_size=patch[0], tta=1)
    assert out["nodule_prob"].between(0, 1).all() and out["malignancy_prob"].between(0, 1).all()


def test_tta_top_gives_the_test_time_views_to_the_top_of_a_plain_pass():
    """With tta_top = k, every candidate is scored on its plain patch, and the k that score
    highest there are scored again on all the views (their mean replaces the plain score)."""
    vol, blob = blob_volume()
    empty = vol.voxel_to_world([20, 100, 95])
    # a and b sit 5 mm left of the blob (plain view 1.0, mean of 8 views 0.25); c sees nothing
    cands = pd.DataFrame({"seriesuid": "s1", "coordX": [blob[0] - 5.0, empty[0], blob[0] - 5.0],
                          "coordY": [blob[1], empty[1], blob[1] + 0.5], "coordZ": [blob[2], empty[2], blob[2]],
                          "diameter_mm": [6.0, 6.0, 6.0], "probability": [0.9, 0.8, 0.7], "name": ["a", "c", "b"]})

    def scores(**kw):
        out = classify_candidates(vol, cands, model=right_half_classifier, patch_size=24, tta=8, **kw)
        return dict(zip(out["name"], out["nodule_prob"].round(6)))

    assert scores() == {"a": 0.25, "b": 0.25, "c": 0.0}
    assert scores(tta_top=3) == scores(tta_top=50) == scores()
    assert scores(tta_top=1) == {"a": 0.25, "b": 1.0, "c": 0.0}     # a: first of the tie, views averaged
    assert scores(tta_top=0) == scores(tta_top=None) == scores()    # 0 = all, as [fpr] tta_top = 0
    with pytest.raises(ValueError, match="tta_top"):
        scores(tta_top=-1)


def test_suppress_inside_drops_the_parts_of_a_larger_higher_scored_finding():
    """Down the table by probability, a candidate whose centre lies within half the diameter of
    a kept, larger candidate that scores higher goes; a smaller one scoring higher stays, one
    just outside stays, and a dropped candidate drops nothing itself (greedy, like NMS)."""
    t = pd.DataFrame({
        "coordX": [0.0, 8.0, -8.0, 0.0, 15.0, 27.0, 0.0],
        "coordY": [0.0, 0.0, 0.0, 21.0, 0.0, 0.0, -100.0],
        "coordZ": [0.0] * 7,
        "diameter_mm": [40.0, 10.0, 5.0, 6.0, 30.0, 5.0, 4.0],
        "probability": [0.9, 0.6, 0.95, 0.5, 0.8, 0.7, 0.3],
        "name": ["mass", "lobe", "small-higher", "outside", "big-lobe", "near-big-lobe", "far"],
    })
    kept = suppress_inside(t, within=0.5)
    assert list(kept["name"]) == ["small-higher", "mass", "near-big-lobe", "outside", "far"]
    assert list(kept.index) == list(range(5))
    assert kept["probability"].is_monotonic_decreasing
    # a wider reach takes in the candidate 21 mm off the 40 mm mass (and the one 27 mm off)
    assert list(suppress_inside(t, within=0.7)["name"]) == ["small-higher", "mass", "far"]
    assert len(suppress_inside(t, within=0.0)) == len(t)
    assert len(suppress_inside(t.iloc[:0], within=0.5)) == 0
    with pytest.raises(ValueError, match="within: expected a fraction of the diameter >= 0"):
        suppress_inside(t, within=-1.0)
