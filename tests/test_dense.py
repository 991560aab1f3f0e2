"""The dense-blob candidates (lungcad.morphology.dense): calcified nodules in the lung are
found, ribs, calcium in the aorta, contrast-filled vessels and noise are not, and the
pipeline passes them to the FPR network beside the U-Net's."""
import numpy as np
import pandas as pd
import pytest

from lungcad.config import ConfigError, DenseConfig, PipelineConfig
from lungcad.morphology import add_dense_candidates, dense_blobs, extract_candidates
from lungcad.pipeline import Pipeline
from lungcad.volume import CTVolume, voxel_to_world

SP = np.array([1.25, 0.8, 0.8])
SHAPE = (48, 150, 150)
ORIGIN = (-60.0, -60.0, -30.0)


def _grid():
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SP)], indexing="ij")


def chest():
    """A block of lung (-850 HU) with a chest wall of soft tissue (40 HU) for x > 95 mm."""
    z, y, x = _grid()
    hu = np.full(SHAPE, -850.0, np.float32)
    hu[x > 95.0] = 40.0
    return hu, (z, y, x), hu < -500


def ball(grid, centre, radius):
    z, y, x = grid
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def test_a_calcified_nodule_in_the_lung_is_found_at_its_centre():
    hu, g, lung = chest()
    centre = (30.0, 60.0, 50.0)
    hu[ball(g, centre, 3.0)] = 600.0                 # a 6 mm granuloma
    mask = lung | ball(g, centre, 3.0)                # the mask's hole filling takes it in
    blobs, labels, box = dense_blobs(hu, spacing_zyx=SP, lung_mask=mask)
    assert len(blobs) == 1
    got = blobs[["z", "y", "x"]].to_numpy(float)[0] * SP
    assert np.linalg.norm(got - centre) < 0.8
    assert 4.5 < blobs["diameter_mm"].iloc[0] < 7.0
    assert blobs["air_fraction"].iloc[0] > 0.9
    assert labels.shape == tuple(b.stop - b.start for b in box)


def test_a_juxta_pleural_one_is_found_and_a_rib_is_not():
    hu, g, lung = chest()
    jp = (20.0, 50.0, 95.0)                            # its centre on the pleura
    hu[ball(g, jp, 3.0)] = 500.0
    hu[ball(g, (20.0, 90.0, 106.0), 4.0)] = 500.0     # a rib's cross-section in the chest wall
    hu[ball(g, (40.0, 90.0, 97.0), 3.0)] = 500.0      # ... and one whose edge touches the lung mask
    blobs, _, _ = dense_blobs(hu, spacing_zyx=SP, lung_mask=lung)
    assert len(blobs) == 1
    # the shell rule is what keeps the second rib out (30 % of its shell is lung)
    assert len(dense_blobs(hu, spacing_zyx=SP, lung_mask=lung, min_air_fraction=0.0)[0]) == 2
    got = blobs[["z", "y", "x"]].to_numpy(float)[0] * SP
    assert np.linalg.norm(got - jp) < 1.5
    assert 0.35 <= blobs["air_fraction"].iloc[0] < 0.8


def test_vessels_large_masses_and_noise_are_not_blobs():
    hu, g, lung = chest()
    z, y, x = g
    # a contrast-filled vessel (300 HU, 3 mm across, 12 mm long) along y
    hu[((z - 20.0) ** 2 + (x - 40.0) ** 2 <= 1.5 ** 2) & (np.abs(y - 40.0) <= 6.0)] = 300.0
    hu[ball(g, (40.0, 90.0, 40.0), 9.0)] = 200.0       # an 18 mm dense mass: the U-Net's business
    hu[ball(g, (10.0, 100.0, 70.0), 0.6)] = 800.0      # a speck under 2 mm
    rng = np.random.default_rng(0)
    noisy = hu + rng.normal(0.0, 120.0, hu.shape).astype(np.float32)
    for vol in (hu, noisy):
        blobs, _, _ = dense_blobs(vol, spacing_zyx=SP, lung_mask=lung)
        assert len(blobs) == 0, blobs


def test_blobs_outside_the_lung_mask_are_not_looked_at():
    hu, g, lung = chest()
    hu[ball(g, (30.0, 60.0, 50.0), 3.0)] = 600.0
    blobs, _, _ = dense_blobs(hu, spacing_zyx=SP, lung_mask=np.zeros(SHAPE, bool))
    assert len(blobs) == 0
    far = np.zeros(SHAPE, bool)
    far[:5, :10, :10] = True
    assert len(dense_blobs(hu, spacing_zyx=SP, lung_mask=far)[0]) == 0


def _table(zyx, diameter, prob=0.9):
    zyx = np.atleast_2d(np.asarray(zyx, float))
    xyz = np.atleast_2d(voxel_to_world(zyx, spacing=SP, origin=ORIGIN))
    return pd.DataFrame({"seriesuid": "s", "coordX": xyz[:, 0], "coordY": xyz[:, 1], "coordZ": xyz[:, 2],
                         "z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2], "diameter_mm": diameter,
                         "probability": prob, "seg_prob": prob, "volume_mm3": 100.0, "z_extent_mm": 5.0,
                         "n_slices": 4, "source": "unet"})


def test_added_candidates_skip_covered_blobs_and_carry_the_unet_probability():
    hu, g, lung = chest()
    a, b, c = (30.0, 60.0, 50.0), (15.0, 30.0, 30.0), (45.0, 100.0, 60.0)
    for centre, h in ((a, 600.0), (b, 400.0), (c, 900.0)):
        hu[ball(g, centre, 3.0)] = h
    mask = lung | (hu > 0)
    prob = np.zeros(SHAPE, np.float32)
    prob[ball(g, b, 2.0)] = 0.2                       # the U-Net saw b faintly
    covered = _table(np.array(a) / SP + [0.0, 1.0, 0.0], 6.0)   # a U-Net candidate 0.8 mm from a
    out = add_dense_candidates(covered, hu, prob, spacing_zyx=SP, origin_xyz=ORIGIN, lung_mask=mask,
                               series_uid="s")
    assert len(out) == 3 and list(out.columns) == list(extract_candidates(
        prob, spacing_zyx=SP, origin_xyz=ORIGIN).columns)
    new = out.iloc[1:]
    # the densest first: c (900 HU), then b
    assert np.allclose(new[["z", "y", "x"]].to_numpy(float) * SP, [c, b], atol=0.8)
    assert new["seg_prob"].tolist() == pytest.approx([0.0, 0.2])
    assert np.array_equal(new["probability"], new["seg_prob"])
    xyz = voxel_to_world(new[["z", "y", "x"]].to_numpy(float), spacing=SP, origin=ORIGIN)
    assert np.allclose(new[["coordX", "coordY", "coordZ"]].to_numpy(float), xyz)
    assert (new["seriesuid"] == "s").all() and (new["diameter_mm"] >= 3.0).all()
    assert out["source"].tolist() == ["unet", "dense", "dense"]
    one = add_dense_candidates(covered, hu, prob, spacing_zyx=SP, origin_xyz=ORIGIN, lung_mask=mask, max_added=1)
    assert len(one) == 2 and np.allclose(one.iloc[1][["z", "y", "x"]].to_numpy(float) * SP, c, atol=0.8)
    off = add_dense_candidates(covered, hu, prob, spacing_zyx=SP, origin_xyz=ORIGIN, lung_mask=mask, max_added=0)
    assert off is covered
    empty = extract_candidates(np.zeros(SHAPE, np.float32), spacing_zyx=SP, origin_xyz=ORIGIN)
    assert len(add_dense_candidates(empty, hu, prob, spacing_zyx=SP, origin_xyz=ORIGIN, lung_mask=mask)) == 3


def test_the_pipeline_hands_a_granuloma_the_unet_missed_to_the_fpr():
    hu, g, lung = chest()
    centre = (30.0, 60.0, 50.0)
    hu[ball(g, centre, 3.0)] = 600.0
    body = np.full((SHAPE[0], SHAPE[1] + 40, SHAPE[2] + 40), -1000.0, np.float32)
    body[:, 20:-20, 20:-20] = hu
    body[:, 20:-20, 10:20] = 40.0                      # a chest wall on the other side too
    body[:, 10:20, 10:-10] = 40.0
    body[:, -20:-10, 10:-10] = 40.0
    vol = CTVolume(body.astype(np.int16), tuple(SP), origin=ORIGIN, series_uid="1.2.3.dense")

    def blind(x):                                      # a U-Net that sees nothing
        return np.zeros(x.shape[:-1] + (1,), np.float32)

    def dense_centre(inputs):
        p = inputs["patch"]
        c = p.shape[1] // 2
        v = p[:, c - 1:c + 1, c - 1:c + 1, 0].reshape(len(p), -1).mean(axis=1)
        return {"nodule": (v > 0.8).astype(np.float32)[:, None], "malignancy": np.full((len(p), 1), 0.1, np.float32)}

    found = Pipeline(PipelineConfig(), segmenter=blind, classifier=dense_centre).run(vol)
    t = found.candidates
    assert len(t) >= 1
    want = vol.voxel_to_world((np.array(centre) + [0.0, 20 * SP[1], 20 * SP[2]]) / SP)
    top = t.sort_values("probability", ascending=False).iloc[0]
    assert np.linalg.norm(top[["coordX", "coordY", "coordZ"]].to_numpy(float) - want) < 1.0
    assert top["probability"] == 1.0
    assert top["source"] == "dense"
    off = Pipeline(PipelineConfig().with_overrides({"dense.max_added": 0}), segmenter=blind,
                   classifier=dense_centre).run(vol)
    assert len(off.candidates) == 0


@pytest.mark.parametrize("key, value", [("max_added", -1), ("max_added", 2.5), ("min_air_fraction", 1.5),
                                        ("shell_mm", -1.0), ("max_elongation", 0.5)])
def test_bad_dense_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=rf"\[dense\] {key}"):
        DenseConfig(**{key: value})
