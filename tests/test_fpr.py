"""FPR stage plumbing: patch geometry in world space, scales, and the two heads."""
import numpy as np
import pandas as pd
import pytest

from lungcad.fpr import classify_candidates, extract_patches, patch_spacing
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
    p = extract_patches(vol.hu, centre[None], spacing=vol.spacing, origin=vol.origin,
                        direction=vol.direction, scales_mm=[1.0], patch_size=16)
    assert p.shape == (1, 16, 16, 16, 1)
    bright = np.argwhere(p[0, ..., 0] > 0.5)
    np.testing.assert_allclose(bright.mean(axis=0), [7.5, 7.5, 7.5], atol=1.0)


def test_masses_are_seen_at_a_coarser_scale():
    s = patch_spacing([5.0, 20.0, 60.0], patch_size=32, patch_mm=1.0, fit_fraction=0.7)
    assert s[0] == 1.0 and s[1] == 1.0
    assert s[2] == pytest.approx(60.0 / (0.7 * 32))


def test_rotation_by_identity_changes_nothing():
    vol, centre = blob_volume()
    kw = dict(spacing=vol.spacing, origin=vol.origin, scales_mm=[1.0], patch_size=12)
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
    out = classify_candidates(vol, cands, model=toy_classifier, patch_size=16, batch_size=1)
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
