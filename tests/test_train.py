"""Tests of lungcad.train and ``lungcad train``: data sources, datasets, and real tiny trainings."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungcad.candidates import prepare_slices
from lungcad.config import PipelineConfig
from lungcad.volume import CTVolume

keras = pytest.importorskip("keras")

from lungcad.train import cases as C  # noqa: E402
from lungcad.train.fpr_batches import FPRDataset  # noqa: E402
from lungcad.train.segmenter_batches import SegmenterDataset  # noqa: E402
from lungcad.train.sources import dsb2017, lidc, luna16, phantoms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Tiny phantoms: 320 mm field of view at 2.5 mm pixels, 8 mm slices (about 45 x 128 x 128).
TINY = '{"shape": [null, 128, 128], "spacing": [8.0, 2.5, 2.5]}'
LESION_HU, LUNG_HU = 30, -850


def toy_case(seed: int, *, diameter: float = 12.0, spacing=(2.5, 1.5, 1.5)) -> C.Case:
    """Two elliptic lungs in soft tissue, one bright sphere in the left lung, one known negative."""
    rng = np.random.default_rng(seed)
    hu = np.full((40, 160, 160), 40, np.int16)
    _, yy, xx = np.mgrid[:40, :160, :160]
    lung = (((yy - 80) / 60.0) ** 2 + ((xx - 45) / 30.0) ** 2 < 1) | \
           (((yy - 80) / 60.0) ** 2 + ((xx - 115) / 30.0) ** 2 < 1)
    hu[lung] = LUNG_HU
    hu = (hu + rng.normal(0, 10, hu.shape)).astype(np.int16)
    vol = CTVolume(hu, spacing=spacing, origin=(-120.0, -120.0, 0.0), patient_id=f"toy{seed}")
    centre = vol.voxel_to_world([20, 80 + rng.integers(-10, 10), 45])
    les = C.lesion_table([{"coordX": centre[0], "coordY": centre[1], "coordZ": centre[2],
                           "diameter_mm": diameter, "nodule": 1.0, "malignancy": 0.8}])
    mask = C.sphere_mask(vol, les)
    vol.hu[mask] = LESION_HU
    neg = vol.voxel_to_world([20, 80, 115])
    negs = C.negative_table([{"coordX": neg[0], "coordY": neg[1], "coordZ": neg[2], "diameter_mm": 5.0}])
    return C.Case(vol, les, negs, lesion_mask=mask, lung_mask=lung)


@pytest.fixture(scope="module")
def toys():
    return [toy_case(i) for i in range(3)]


def _ref(pid: str, i: int) -> C.CaseRef:
    return C.CaseRef(patient_id=pid, loader=lambda: None, description=f"scan {i}")


# ------------------------------------------------------------------------------ split

def test_split_by_patient_has_no_overlap_and_keeps_scans_together():
    refs = [_ref(f"P{i:02d}", 0) for i in range(10)] + [_ref("P03", 1), _ref("P07", 1)]
    train, val = C.split_by_patient(refs, val_fraction=0.3, seed=4)
    tp, vp = {c.patient_id for c in train}, {c.patient_id for c in val}
    assert tp.isdisjoint(vp)
    assert len(vp) == 3 and len(tp) == 7
    assert len(train) + len(val) == len(refs)
    for pid in ("P03", "P07"):       # both scans of a patient on the same side
        assert sum(c.patient_id == pid for c in train) in (0, 2)
    again = C.split_by_patient(refs, val_fraction=0.3, seed=4)[1]
    assert [c.patient_id for c in again] == [c.patient_id for c in val]
    assert {c.patient_id for c in C.split_by_patient(refs, val_fraction=0.3, seed=5)[1]} != vp


def test_split_edge_cases():
    refs = [_ref("A", 0), _ref("B", 0)]
    assert C.split_by_patient(refs, val_fraction=0.0)[1] == []
    train, val = C.split_by_patient(refs, val_fraction=0.01)     # at least one patient
    assert len(val) == 1 and len(train) == 1
    assert C.split_by_patient([_ref("A", 0), _ref("A", 1)], val_fraction=0.5)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        C.split_by_patient(refs, val_fraction=1.0)


# ------------------------------------------------------------------------ sphere targets

def test_sphere_mask_on_thick_slices_keeps_small_nodules():
    vol = CTVolume(np.zeros((20, 100, 100), np.int16), spacing=(5.0, 0.7, 0.7), origin=(0.0, 0.0, 0.0))
    # a 6 mm nodule centred between slices 10 and 11 (z = 52.5 mm)
    les = C.lesion_table([{"coordX": 35.0, "coordY": 35.0, "coordZ": 52.5, "diameter_mm": 6.0,
                           "nodule": 1.0, "malignancy": np.nan}])
    m = C.sphere_mask(vol, les)
    assert sorted(set(np.nonzero(m)[0])) == [10, 11]
    area = m[10].sum() * 0.7 * 0.7               # the slab holds the full 6 mm cross-section
    assert area == pytest.approx(np.pi * 9.0, rel=0.15)
    # a 20 mm sphere on 1 mm slices: the volume of a sphere grown by half a slice in z
    vol = CTVolume(np.zeros((40, 60, 60), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    les = C.lesion_table([{"coordX": 30.0, "coordY": 30.0, "coordZ": 20.0, "diameter_mm": 20.0,
                           "nodule": 1.0, "malignancy": np.nan}])
    n = C.sphere_mask(vol, les).sum()
    assert 4 / 3 * np.pi * 1000 < n < 4 / 3 * np.pi * 1000 * 1.25


# ------------------------------------------------------------------------ segmenter data

def test_segmenter_dataset_shapes_balance_and_alignment(toys):
    ds = SegmenterDataset(toys, tile=64, batch_size=10, steps=20, positive_fraction=0.6, seed=3)
    n_pos = n = 0
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (10, 64, 64, 3) and x.dtype == np.float32
        assert y.shape == (10, 64, 64, 1) and y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert 0.0 <= x.min() and x.max() <= 1.0
        has = y.reshape(10, -1).max(axis=1) > 0
        n_pos += int(has.sum())
        n += 10
        for b in np.flatnonzero(has):        # the label sits on the bright lesion after flips,
            t = y[b, ..., 0] > 0               # rotations and scaling
            cy, cx = np.argwhere(t).mean(axis=0).round().astype(int)
            lesion = (LESION_HU + 1000) / 1400.0
            assert x[b, cy, cx, 1] > lesion - 0.15
            assert np.median(x[b, ..., 1][t]) > lesion - 0.15   # edges mix lesion and lung
            ring = (np.abs(np.arange(64)[:, None] - cy) < 20) & (np.abs(np.arange(64)[None, :] - cx) < 20) & ~t
            assert x[b, ..., 1][ring].mean() < x[b, ..., 1][t].mean() - 0.2
    assert n_pos / n == pytest.approx(0.6, abs=0.01)
    # a new epoch gives new tiles; validation data (no augmentation) does not change
    x0 = ds[0][0]
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][0], x0)
    val = SegmenterDataset(toys, tile=64, batch_size=4, steps=2, augment=False, seed=3)
    v0 = val[1][0]
    val.on_epoch_end()
    np.testing.assert_array_equal(val[1][0], v0)


def test_dataset_workers_prepare_the_same_cases_in_order(toys):
    """With workers > 1 the cases are read and prepared by a thread pool: the same entries in
    the same order, so batches do not depend on the number of workers."""
    refs = [C.CaseRef(patient_id=c.patient_id, loader=lambda c=c: c) for c in toys]
    one = SegmenterDataset(refs, tile=64, batch_size=4, steps=2, augment=False, seed=1)
    many = SegmenterDataset(refs, tile=64, batch_size=4, steps=2, augment=False, seed=1, workers=3)
    assert many.pool.workers == 3 and one.pool.workers == 1
    assert [e.patient_id for e in many.pool.entries] == [c.patient_id for c in toys]
    for a, b in zip(one.pool.entries, many.pool.entries):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(one[1][0], many[1][0])


def test_segmenter_tiles_are_prepare_slices_crops(toys):
    """Without augmentation a tile is a crop of what inference feeds the U-Net."""
    case = toys[0]
    ds = SegmenterDataset([case], tile=64, batch_size=2, steps=1, augment=False, margin_mm=10.0)
    ent = ds.pool.entries[0]
    from lungcad.train.batching import lung_box_of

    box, _ = lung_box_of(case, margin_mm=10.0)
    ref, _ = prepare_slices(case.volume.hu[:, box[1], box[2]], spacing_zyx=case.volume.spacing,
                            context_slices=1, pixel_mm=1.25, window_hu=(-1000.0, 400.0), tile=1)
    lo = max(box[0].start - 1, 0)          # the dataset keeps one slice of context below the box
    img, tgt, unknown = ds._tile(ent, 20 - lo, 60, 70, np.random.default_rng(0))
    assert not unknown
    np.testing.assert_allclose(img, ref[20, 28:92, 38:102], atol=2e-3)
    assert tgt.shape == (64, 64) and tgt.sum() > 0       # the lesion (y 80 +- 10, x 45 at 1.5 mm) is there


def test_segmenter_tiles_avoid_lesions_of_unknown_label():
    """A lesion whose nodule status is unknown (a real lesion of a background scan and its
    exclusion zone) is shown to the segmenter neither as lesion nor as background: no tile
    reaches it, whatever the augmentation."""
    case = toy_case(5)
    vol = case.volume
    centre = vol.voxel_to_world([20, 80, 115])              # in the right lung
    zone = C.lesion_table([{"coordX": centre[0], "coordY": centre[1], "coordZ": centre[2],
                            "diameter_mm": 12.0, "nodule": np.nan, "malignancy": np.nan}])
    vol.hu[C.sphere_mask(vol, zone)] = 1500                 # windowed to 1.0: nothing else is
    case.lesions = C.lesion_table(pd.concat([case.lesions, zone], ignore_index=True))
    assert case.unknown_target().sum() == C.sphere_mask(vol, zone).sum() > 0
    assert toy_case(0).unknown_target() is None
    ds = SegmenterDataset([case], tile=32, batch_size=8, steps=25, positive_fraction=0.25, seed=2)
    assert ds.pool.entries[0].unknown is not None
    seen = 0
    for i in range(len(ds)):
        x, y = ds[i]
        assert x[..., 1].max() < 0.99                       # never the unknown lesion
        seen += int((y.reshape(8, -1).max(axis=1) > 0).sum())
    assert seen == pytest.approx(0.25 * 8 * 25, abs=1)      # the known lesion is still shown
    # without the rule, the same tiles would have reached it
    ds.pool.entries[0].unknown = None
    assert max(ds[i][0][..., 1].max() for i in range(len(ds))) >= 0.99


# ------------------------------------------------------------------------------ FPR data

def test_fpr_dataset_shapes_balance_weights_and_alignment(toys):
    ds = FPRDataset(toys, batch_size=16, steps=30, seed=2)
    targets, kinds = [], []
    for i in range(len(ds)):
        x, y, w = ds[i]
        assert x["patch"].shape == (16, 32, 32, 32, 1) and x["patch"].dtype == np.float32
        assert x["scale"].shape == (16, 1) and x["scale"].dtype == np.float32
        assert y["nodule"].shape == (16, 1) and y["malignancy"].shape == (16, 1)
        assert w["nodule"].shape == (16,) and w["malignancy"].shape == (16,)
        assert not any(np.isnan(v).any() for v in (*y.values(), *w.values()))
        pos = y["nodule"][:, 0] == 1
        assert pos.sum() == 8                                   # 1:1 in every batch
        np.testing.assert_array_equal(w["malignancy"], pos.astype(np.float32))  # lesions only
        np.testing.assert_allclose(y["malignancy"][pos, 0], 0.8)
        p = x["patch"][..., 0]
        centre = p[:, 14:18, 14:18, 14:18].mean(axis=(1, 2, 3))
        # a 12 mm lesion at 1 mm per voxel, jittered by at most 2 mm: its core stays centred
        assert np.all(centre[pos] > (LESION_HU + 1000) / 1400.0 - 0.15)
        np.testing.assert_allclose(x["scale"][pos, 0], 0.0, atol=1e-6)   # 12 mm nodules: 1 mm/voxel
        targets.append(y["nodule"][:, 0])
        kinds += list(ds.samples(i)["kind"])
    assert np.mean(np.concatenate(targets)) == 0.5
    counts = pd.Series(kinds).value_counts()
    assert counts["known"] > 0 and counts["random"] > 0 and "hard" not in counts


def test_fpr_dataset_orthogonal_views_and_benign_negatives(toys):
    ds = FPRDataset(toys, batch_size=16, steps=3, seed=2, views="orthogonal", negatives_benign=True)
    for i in range(len(ds)):
        x, y, w = ds[i]
        assert x["patch"].shape == (16, 32, 32, 3)
        pos = y["nodule"][:, 0] == 1
        # every sample teaches the malignancy head: lesions their label, the rest "not malignant"
        np.testing.assert_array_equal(w["malignancy"], np.ones(16, np.float32))
        np.testing.assert_array_equal(y["malignancy"][~pos, 0], 0.0)
        np.testing.assert_allclose(y["malignancy"][pos, 0], 0.8)
        # the three views cross at the lesion: its core is bright in each
        centre = x["patch"][:, 14:18, 14:18, :].mean(axis=(1, 2))
        assert np.all(centre[pos] > (LESION_HU + 1000) / 1400.0 - 0.15)


def test_random_lung_points_stay_in_or_next_to_the_lungs(toys):
    from lungcad.train.batching import random_lung_points

    lung = toys[0].lung_mask
    pts = random_lung_points(lung, np.random.default_rng(0), n=500, reach=2)
    assert pts.shape == (500, 3)
    near = ndimage.binary_dilation(lung, structure=np.ones((1, 5, 5), bool))
    assert near[tuple(pts.T)].all()
    assert lung[tuple(pts.T)].mean() > 0.8                 # mostly lung, some border
    assert len(random_lung_points(np.zeros((4, 8, 8), bool), np.random.default_rng(0))) == 0


def test_fpr_dataset_masses_get_coarser_patches_and_hard_negatives():
    case = toy_case(7, diameter=50.0, spacing=(5.0, 1.5, 1.5))
    hard = {case.patient_id: pd.DataFrame({"coordX": [20.0], "coordY": [0.0], "coordZ": [50.0],
                                           "diameter_mm": [8.0], "probability": [0.9]})}
    ds = FPRDataset([case], batch_size=8, steps=10, augment=False, seed=1, hard_negatives=hard)
    s = pd.concat([ds.samples(i) for i in range(10)])
    assert (s["kind"] == "hard").sum() > 0
    x, y, _ = ds[0]
    scale = x["scale"][y["nodule"][:, 0] == 1, 0]
    np.testing.assert_allclose(scale, np.log2(50.0 / (0.7 * 32)), rtol=1e-5)


def test_fpr_dataset_drops_hard_negatives_on_the_case_s_own_lesions():
    """Hard-negative tables are by patient id, which the draws of one real background share:
    a mistake mined on one draw that lies on a lesion of another draw is not taught as a
    non-nodule there (the margin of hard_negatives: max(1.5 r, r + 5 mm))."""
    case = toy_case(7)
    les = case.lesions.iloc[0]
    r = les["diameter_mm"] / 2
    hard = {case.patient_id: pd.DataFrame({
        "coordX": [les["coordX"] + 0.5 * r, les["coordX"] + r + 3.0, 20.0],
        "coordY": [les["coordY"], les["coordY"], 0.0], "coordZ": [les["coordZ"], les["coordZ"], 50.0],
        "diameter_mm": [6.0, 6.0, 8.0], "probability": [0.95, 0.9, 0.8]})}
    ds = FPRDataset([case], batch_size=8, steps=2, augment=False, seed=1, hard_negatives=hard)
    kept = ds.pool.entries[0].hard
    assert len(kept) == 1 and kept["coordX"].iloc[0] == 20.0


def test_hard_negatives_are_kept_by_scan_for_draws_of_one_patient():
    """Two draws of one real background share the patient id (one side of the split) but are two
    scans: mining keeps each draw's own mistakes, and each draw's batches use its own."""
    import dataclasses

    from lungcad.train.cases import case_key
    from lungcad.train.fit_fpr import mine_hard_negatives

    base = toy_case(9)
    draws = [dataclasses.replace(base, source=f"background:toy#draw{d}") for d in range(2)]
    draws[1] = dataclasses.replace(draws[1], volume=dataclasses.replace(base.volume, hu=base.volume.hu.copy()))
    zz, yy, xx = np.mgrid[:40, :160, :160]
    blob = ((zz - 12) * 2.5) ** 2 + ((yy - 80) * 1.5) ** 2 + ((xx - 40) * 1.5) ** 2 <= 6.0 ** 2
    draws[1].volume.hu[blob] = LESION_HU                      # a mistake only the second draw has
    assert case_key(draws[0]) != case_key(draws[1]) and draws[0].patient_id == draws[1].patient_id

    config = PipelineConfig().with_overrides({"fpr.backbone": "wrn2d"})
    _, hard = mine_hard_negatives(draws, soft_tissue_segmenter, config=config, max_per_case=8)
    assert set(hard) == {case_key(d) for d in draws}
    ds = FPRDataset(draws, batch_size=8, steps=2, augment=False, seed=1, hard_negatives=hard)
    tables = [e.hard for e in ds.pool.entries]
    seen0 = {tuple(np.round(r, 1)) for r in tables[0][["coordX", "coordY", "coordZ"]].to_numpy(float)}
    only1 = [tuple(np.round(r, 1)) for r in tables[1][["coordX", "coordY", "coordZ"]].to_numpy(float)
             if tuple(np.round(r, 1)) not in seen0]
    assert len(only1) == 1                                    # the second draw's own mistake
    z, y, x = base.volume.origin[2] + 12 * 2.5, base.volume.origin[1] + 80 * 1.5, base.volume.origin[0] + 40 * 1.5
    assert np.linalg.norm(np.subtract(only1[0], (x, y, z))) < 3.0


# -------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_lesion_loss_weighs_lesion_pixels_by_balance(balance):
    from lungcad.train.losses import LesionLoss, lesion_loss

    y = np.zeros((2, 10, 10, 1), np.float32)
    y[0, :2, :5] = 1.0                          # 10 lesion pixels, 90 background; tile 2 empty
    p = np.full(y.shape, 0.5, np.float32)
    ln2 = np.log(2.0)
    dice0 = 1.0 - (2 * 5 + 1) / (10 + 50 + 1)
    expect0 = ln2 + (10 / 90) ** (1 - balance) * ln2 + 0.5 * dice0
    got = float(LesionLoss(balance=balance)(y, p))
    assert got == pytest.approx((expect0 + ln2) / 2, rel=1e-5)
    if balance == 1.0:
        assert float(keras.ops.mean(lesion_loss(y, p))) == pytest.approx(got, rel=1e-6)


# ------------------------------------------------------------------------ patient labels

def test_apply_patient_labels():
    vol = CTVolume(np.zeros((4, 8, 8), np.int16), spacing=(1, 1, 1), origin=(0, 0, 0), patient_id="p")
    les = C.lesion_table([{"coordX": 1, "coordY": 1, "coordZ": 1, "diameter_mm": 5, "nodule": 1,
                           "malignancy": np.nan},
                          {"coordX": 5, "coordY": 5, "coordZ": 2, "diameter_mm": 12, "nodule": 1,
                           "malignancy": np.nan}])
    case = C.Case(vol, les)
    pos = dsb2017.apply_patient_labels(case, 1.0)
    assert pos.patient_label == 1.0
    assert pos.lesions["malignancy"].tolist()[1] == 1.0 and math.isnan(pos.lesions["malignancy"][0])
    neg = dsb2017.apply_patient_labels(case, 0.0)
    assert neg.lesions["malignancy"].tolist() == [0.0, 0.0]
    cands = pd.DataFrame({"coordX": [1.0, 2.0, 3.0, 4.0], "coordY": 0.0, "coordZ": 0.0,
                          "diameter_mm": 6.0, "probability": [0.2, 0.9, 0.5, 0.7]})
    weak = dsb2017.apply_patient_labels(C.Case(vol), 1.0, weak_candidates=cands)
    assert weak.lesions[["coordX", "malignancy"]].values.tolist() == [[2.0, 1.0]]
    assert math.isnan(weak.lesions["nodule"][0])               # does not train the nodule head
    weak0 = dsb2017.apply_patient_labels(C.Case(vol), 0.0, weak_candidates=cands)
    assert weak0.lesions["coordX"].tolist() == [2.0, 4.0, 3.0] and (weak0.lesions["malignancy"] == 0).all()


def test_hard_negatives_keep_clear_of_lesions(toys):
    from lungcad.train.fit_fpr import hard_negatives

    case = toys[0]
    c = case.lesions.iloc[0]
    cands = pd.DataFrame({"coordX": [c.coordX + 2, c.coordX + 9, c.coordX + 40], "coordY": c.coordY,
                          "coordZ": c.coordZ, "diameter_mm": 5.0, "probability": [0.9, 0.8, 0.7]})
    out = hard_negatives(case, cands)
    assert out["coordX"].tolist() == [c.coordX + 40]          # r + 5 mm = 11 mm is too close



def soft_tissue_segmenter(x):
    """A toy "U-Net": soft tissue in the centre slice of the input."""
    return (x[..., 1:2] > 0.5).astype(np.float32) * 0.9


def test_mining_ranks_hard_negatives_by_an_fpr_network(toys):
    """Bootstrapping: with an FPR network the hard negatives are the non-lesions it scores
    highest (its mistakes), in that order, rather than the U-Net's most probable ones."""
    from lungcad.train.fit_fpr import mine_hard_negatives

    case = toy_case(7)
    zz, yy, xx = np.mgrid[:40, :160, :160]
    for (z, y, x), r in zip([(20, 50, 115), (20, 110, 115), (12, 80, 40), (28, 60, 50)], [6, 4, 3, 5]):
        blob = ((zz - z) * 2.5) ** 2 + ((yy - y) * 1.5) ** 2 + ((xx - x) * 1.5) ** 2 <= (r * 1.5) ** 2
        case.volume.hu[blob] = LESION_HU - 10 * r            # non-lesions of different brightness

    def darkest_first(inputs):                               # an "FPR" that prefers dimmer patches
        centre = inputs["patch"][:, 12:20, 12:20].reshape(len(inputs["patch"]), -1).mean(axis=1)
        nod = (1.0 - centre)[:, None].astype(np.float32)
        return {"nodule": nod, "malignancy": np.full_like(nod, 0.5)}

    config = PipelineConfig().with_overrides({"fpr.backbone": "wrn2d"})
    by_unet = mine_hard_negatives([case], soft_tissue_segmenter, config=config, max_per_case=3)[1]["toy7"]
    mined, hard = mine_hard_negatives([case], soft_tissue_segmenter, config=config, max_per_case=3,
                                      classifier=darkest_first)
    cands, hard = mined["toy7"], hard["toy7"]
    assert len(hard) == 3 and "nodule_prob" in hard
    assert hard["probability"].tolist() == sorted(hard["probability"], reverse=True)
    assert np.allclose(hard["probability"], hard["nodule_prob"])
    # they are the three best-scored candidates that are not the lesion
    les = case.lesions.iloc[0][["coordX", "coordY", "coordZ"]].to_numpy(float)
    far = cands[np.linalg.norm(cands[["coordX", "coordY", "coordZ"]].to_numpy(float) - les, axis=1) > 11]
    assert np.allclose(hard["probability"], far["probability"].nlargest(3))
    assert not np.allclose(by_unet[["coordX", "coordY", "coordZ"]].to_numpy(float),
                           hard[["coordX", "coordY", "coordZ"]].to_numpy(float))


def test_mining_cache_reuses_candidates_of_the_same_networks_and_scan(tmp_path):
    """--mining-cache: a second run with the same key and scan reads the candidates back without
    running the segmenter; another key, or a scan with other voxels, runs it again."""
    from lungcad.train.fit_fpr import mine_hard_negatives, mining_cache_key

    case = toy_case(8)
    calls = []

    def segmenter(x):
        calls.append(len(x))
        return soft_tissue_segmenter(x)

    config = PipelineConfig().with_overrides({"fpr.backbone": "wrn2d"})
    seg_file = tmp_path / "seg.bin"
    seg_file.write_bytes(b"weights one")
    key = mining_cache_key(config, seg_file)
    cache = tmp_path / "cache"
    mined1, hard1 = mine_hard_negatives([case], segmenter, config=config, max_per_case=3,
                                        cache_dir=cache, cache_key=key)
    n_first = len(calls)
    assert n_first > 0 and len(list(cache.glob("candidates-*.json"))) == 1
    assert len(mined1["toy8"]) > 0

    mined2, hard2 = mine_hard_negatives([case], segmenter, config=config, max_per_case=3,
                                        cache_dir=cache, cache_key=key)
    assert len(calls) == n_first                      # read back, the segmenter did not run
    pd.testing.assert_frame_equal(mined2["toy8"], mined1["toy8"], check_dtype=False)
    pd.testing.assert_frame_equal(hard2["toy8"].reset_index(drop=True),
                                  hard1["toy8"].reset_index(drop=True), check_dtype=False)

    seg_file.write_bytes(b"weights two")              # other networks: another key
    other = mining_cache_key(config, seg_file)
    assert other != key
    assert mining_cache_key(config.with_overrides({"morphology.threshold": 0.3}), seg_file) != other
    mine_hard_negatives([case], segmenter, config=config, max_per_case=3, cache_dir=cache, cache_key=other)
    assert len(calls) > n_first
    n_second = len(calls)
    case.volume.hu[0, 0, 0] += 1                      # another scan under the same patient id
    mine_hard_negatives([case], segmenter, config=config, max_per_case=3, cache_dir=cache, cache_key=key)
    assert len(calls) > n_second and len(list(cache.glob("candidates-*.json"))) == 3


# --------------------------------------------------------------------------- data sources

def test_luna16_cases(tmp_path, toys):
    from lungcad.io import write_itk

    case = toys[1]
    uid = "1.2.3.4"
    vol = CTVolume(case.volume.hu, spacing=case.volume.spacing, origin=case.volume.origin,
                   patient_id=uid, series_uid=uid)
    write_itk(vol, tmp_path / "subset0" / f"{uid}.mhd")
    les = case.lesions.iloc[0]
    pd.DataFrame({"seriesuid": [uid], "coordX": [les.coordX], "coordY": [les.coordY], "coordZ": [les.coordZ],
                  "diameter_mm": [12.0]}).to_csv(tmp_path / "annotations.csv", index=False)
    far = case.volume.voxel_to_world([20, 80, 115])
    exc = case.volume.voxel_to_world([10, 60, 115])
    pd.DataFrame({"seriesuid": [uid, uid, uid, uid, "other"],
                  "coordX": [les.coordX + 3, far[0], exc[0] + 1, les.coordX, 0.0],
                  "coordY": [les.coordY, far[1], exc[1], les.coordY, 0.0],
                  "coordZ": [les.coordZ, far[2], exc[2], les.coordZ, 0.0],
                  "class": [0, 0, 0, 1, 0]}).to_csv(tmp_path / "candidates_V2.csv", index=False)
    pd.DataFrame({"seriesuid": [uid], "coordX": [exc[0]], "coordY": [exc[1]], "coordZ": [exc[2]],
                  "diameter_mm": [6.0]}).to_csv(tmp_path / "annotations_excluded.csv", index=False)
    refs = luna16.luna16_cases(tmp_path)
    assert [r.patient_id for r in refs] == [uid]
    c = refs[0].load()
    assert len(c.lesions) == 1 and math.isnan(c.lesions["malignancy"][0]) and c.lesions["nodule"][0] == 1
    assert len(c.negatives) == 1                       # near the nodule and near the excluded: dropped
    np.testing.assert_allclose(c.negatives[["coordX", "coordY", "coordZ"]].values[0], far, atol=1e-3)
    target = c.segmentation_target()
    assert target.sum() == case.lesion_mask.sum()      # the sphere of the annotated diameter


def test_synth_dir_cases(tmp_path):
    from lungcad.synthetic import synth_dataset

    lesions = synth_dataset(tmp_path, patients=1, seed=3, layout="luna16", size=128, slice_mm=8.0,
                            n_nodules=2, n_masses=0)
    refs = phantoms.synth_dir_cases(tmp_path)
    assert len(refs) == 1
    case = refs[0].load()
    big = lesions[lesions["diameter_mm"] >= 3.0]
    assert int((case.lesions["nodule"] == 1).sum()) == len(big)
    np.testing.assert_allclose(np.sort(case.lesions["malignancy"].dropna()), np.sort(big["malignancy_prob"]))
    assert len(case.negatives) > 0 and case.patient_label in (0.0, 1.0)


@pytest.mark.real
def test_lidc_cases_real(lidc_dir):
    refs = lidc.lidc_cases(lidc_dir)
    assert len(refs) == 1 and refs[0].patient_id == "LIDC-IDRI-0003"
    case = refs[0].load()
    les = case.lesions.sort_values("diameter_mm", ascending=False).reset_index(drop=True)
    assert len(les) == 3                                  # the lesions of >= 3 of the 4 readers
    assert les["diameter_mm"][0] == pytest.approx(31.0, abs=3.0)
    assert les["malignancy"][0] == pytest.approx((4.25 - 1) / 4, abs=0.01)   # ratings 5, 5, 3, 4
    assert les["malignancy"].between(0, 1).all()


# ------------------------------------------------------------------------- trainings (CLI)

def _train(args: list[str], cwd: Path, *, log_level: str | None = "3") -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": log_level}
    if log_level is None:                  # as a user runs it: the CLI's own default applies
        del env["TF_CPP_MIN_LOG_LEVEL"]
    return subprocess.run([sys.executable, "-m", "lungcad", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


TINY_DATA = ["--synthetic", "2", "--synthetic-seed", "5", "--phantom-kwargs", TINY, "--val-fraction", "0.5",
             "--steps-per-epoch", "2", "--val-steps", "1", "--batch-size", "4", "--no-progress"]
CARD_FIELDS = {"name", "task", "created", "command", "lungcad_version", "keras_version", "backend", "python",
               "parameters", "architecture", "preprocessing", "data", "seed", "training", "metrics", "file"}


@pytest.fixture(scope="module")
def segmenter_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    r = _train(["segmenter", *TINY_DATA, "--epochs", "2", "--tile", "64", "--depth", "2", "--base-filters", "4",
                "--out", str(d / "segmenter.keras"), "--run-dir", str(d / "run")], cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_cli_train_segmenter(segmenter_run):
    d = segmenter_run
    model = keras.saving.load_model(d / "segmenter.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(0).random((2, 48, 80, 3), dtype=np.float32)
    y = np.asarray(model.predict(x, verbose=0))
    assert y.shape == (2, 48, 80, 1) and 0 <= y.min() and y.max() <= 1
    card = json.loads((d / "segmenter.card.json").read_text())
    assert CARD_FIELDS <= set(card)
    assert card["command"].startswith("lungcad train segmenter --synthetic 2")
    assert card["parameters"] == model.count_params()
    assert card["architecture"]["depth"] == 2 and card["architecture"]["base_filters"] == 4
    assert card["data"]["n_patients_train"] == 1 and card["data"]["n_patients_val"] == 1
    assert card["data"]["sources"][0]["seeds"] == [5, 6]
    assert card["backend"] == "tensorflow" and card["training"]["epochs_done"] == 2
    assert {"val_loss", "val_dice", "final_loss", "final_val_loss"} <= set(card["metrics"])
    log = pd.read_csv(d / "run" / "log.csv")
    assert log["epoch"].tolist() == [0, 1] and {"loss", "val_loss", "dice", "val_dice"} <= set(log)
    assert (d / "run" / "best.keras").is_file() and (d / "run" / "last.keras").is_file()
    assert card["file"]["bytes"] == (d / "segmenter.keras").stat().st_size


def test_cli_train_segmenter_resume(segmenter_run, tmp_path):
    """--resume goes on from epoch 2 of the checkpoint (in-process, through the same CLI code)."""
    from lungcad.cli import main

    d = segmenter_run
    run2 = tmp_path / "run"
    run2.mkdir()
    for name in ("last.keras", "best.keras", "state.json", "log.csv"):
        (run2 / name).write_bytes((d / "run" / name).read_bytes())
    rc = main(["train", "segmenter", *TINY_DATA, "--epochs", "3", "--tile", "64", "--depth", "2",
               "--base-filters", "4", "--out", str(tmp_path / "s.keras"), "--run-dir", str(run2), "--resume"])
    assert rc == 0
    log = pd.read_csv(run2 / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2]
    card = json.loads((tmp_path / "s.card.json").read_text())
    assert card["training"]["resumed_from"] == 2 and card["training"]["epochs_done"] == 3
    cmds = card["training"]["commands"]           # both runs, so that the model can be reproduced
    assert [(c["from_epoch"], c["to_epoch"]) for c in cmds] == [(0, 2), (2, 3)]
    assert cmds[0]["command"].startswith("lungcad train segmenter") and "--resume" not in cmds[0]["command"]



def test_cli_train_init_weights_fine_tunes(segmenter_run, tmp_path, capsys):
    """--init-weights starts from a trained file of the same network (the card names it with
    its sha256); a file of another network is one clear error, and so is a missing one."""
    from lungcad.cli import main
    from lungcad.train.model_card import sha256

    init = segmenter_run / "segmenter.keras"
    args = ["train", "segmenter", *TINY_DATA, "--epochs", "1", "--tile", "64", "--depth", "2",
            "--learning-rate", "1e-12"]
    rc = main([*args, "--base-filters", "4", "--init-weights", str(init), "--out", str(tmp_path / "ft.keras"),
               "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    card = json.loads((tmp_path / "ft.card.json").read_text())
    assert card["training"]["init_weights"] == {"path": str(init), "sha256": sha256(init)}
    before = keras.saving.load_model(init, safe_mode=True, compile=False)
    after = keras.saving.load_model(tmp_path / "ft.keras", safe_mode=True, compile=False)
    kernels = [(a, b) for a, b in zip(before.weights, after.weights) if a.path.endswith("kernel")]
    assert kernels and all(np.allclose(np.asarray(a), np.asarray(b), atol=1e-6) for a, b in kernels)
    capsys.readouterr()
    rc = main([*args, "--base-filters", "8", "--init-weights", str(init), "--out", str(tmp_path / "x.keras"),
               "--run-dir", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert rc == 1 and str(init) in err and "do not fit the network being trained" in err
    assert main([*args, "--init-weights", str(tmp_path / "none.keras"), "--out", str(tmp_path / "y.keras")]) == 2
    assert "none.keras: file not found" in capsys.readouterr().err


def test_cli_train_time_limit_stops_after_the_epoch_past_it(tmp_path, capsys):
    """--time-limit MIN ends training after the first epoch that ends past MIN minutes (a batch
    job's wall time): the best weights are written with their card, which says so."""
    from lungcad.cli import main

    args = ["train", "segmenter", *TINY_DATA, "--epochs", "5", "--tile", "64", "--depth", "2",
            "--base-filters", "4"]
    rc = main([*args, "--time-limit", "1e-6", "--out", str(tmp_path / "s.keras"), "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    card = json.loads((tmp_path / "s.card.json").read_text())
    assert card["training"]["epochs_done"] == 1 and card["training"]["stopped_by_time_limit"] is True
    assert card["training"]["time_limit_min"] == 1e-6
    assert len(pd.read_csv(tmp_path / "run" / "log.csv")) == 1
    capsys.readouterr()
    assert main([*args, "--time-limit", "0", "--out", str(tmp_path / "x.keras")]) == 2
    assert "time_limit_min: expected a positive number of minutes" in capsys.readouterr().err


def test_cli_train_fpr(tmp_path):
    r = _train(["fpr", *TINY_DATA, "--epochs", "2", "--model", "wrn3d", "--depth", "10", "--width", "1",
                "--out", str(tmp_path / "fpr.keras"), "--run-dir", str(tmp_path / "run")], cwd=tmp_path,
               log_level=None)
    assert r.returncode == 0, r.stderr[-3000:]
    # the backend's import-time and device-probing log lines are hidden, as for detect
    noise = ("All log messages before absl", "oneDNN", "cudart_stub", "cuInit", "cpu_feature_guard")
    assert not [ln for ln in r.stderr.splitlines() if any(n in ln for n in noise)], r.stderr[-2000:]
    # the default pipeline's backbone is another one: the command says what a pipeline needs
    assert '[fpr] backbone = "wrn3d"' in r.stdout
    model = keras.saving.load_model(tmp_path / "fpr.keras", safe_mode=True, compile=False)
    x = {"patch": np.zeros((3, 32, 32, 32, 1), np.float32), "scale": np.zeros((3, 1), np.float32)}
    y = model.predict(x, verbose=0)
    assert set(y) == {"nodule", "malignancy"} and y["nodule"].shape == (3, 1)
    card = json.loads((tmp_path / "fpr.card.json").read_text())
    assert CARD_FIELDS <= set(card)
    assert card["architecture"]["backbone_kwargs"]["depth"] == 10
    assert {"val_nodule_auc", "final_val_loss", "final_val_nodule_auc"} <= set(card["metrics"])
    assert card["parameters"] == model.count_params()
    assert len(pd.read_csv(tmp_path / "run" / "log.csv")) == 2
    # no optimizer state in the shipped file: it is about 4 bytes per parameter
    assert card["file"]["bytes"] < 4 * card["parameters"] * 1.3 + 200_000


def test_cli_train_fpr_on_a_2d_backbone(tmp_path, segmenter_run):
    """The pipeline's [fpr] backbone (wrn2d by default) is trained unless --model says otherwise;
    a 2-D one learns from orthogonal views.  A second round starts from those weights and
    ranks the U-Net's candidates with them for its hard negatives (bootstrapping)."""
    r = _train(["fpr", *TINY_DATA, "--epochs", "1", "--depth", "10", "--width", "1",
                "--out", str(tmp_path / "fpr2d.keras"), "--run-dir", str(tmp_path / "run")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[fpr] backbone =" not in r.stdout              # it is the pipeline's backbone already
    from lungcad.fpr import model_backbone, model_views

    model = keras.saving.load_model(tmp_path / "fpr2d.keras", safe_mode=True, compile=False)
    assert (model_backbone(model), model_views(model)) == ("wrn2d", "orthogonal")
    card = json.loads((tmp_path / "fpr2d.card.json").read_text())
    assert card["architecture"]["views"] == "orthogonal"
    assert card["architecture"]["inputs"]["patch"] == [32, 32, 3]
    bad = _train(["fpr", *TINY_DATA, "--epochs", "1", "--model", "unet2d", "--out", str(tmp_path / "x.keras")],
                 cwd=tmp_path)
    assert bad.returncode == 2 and "segmentation network" in bad.stderr and "Traceback" not in bad.stderr
    from lungcad.cli import main

    first, seg = tmp_path / "fpr2d.keras", segmenter_run / "segmenter.keras"
    rc = main(["train", "fpr", *TINY_DATA, "--epochs", "1", "--depth", "10", "--width", "1",
               "--init-weights", str(first), "--segmenter", str(seg), "--mine-fpr", str(first),
               "--max-hard-per-case", "4", "--out", str(tmp_path / "round2.keras"),
               "--run-dir", str(tmp_path / "run2"), "--mining-cache", str(tmp_path / "mined")])
    assert rc == 0
    assert len(list((tmp_path / "mined").glob("candidates-*.json"))) == 2     # one per mined scan
    card2 = json.loads((tmp_path / "round2.card.json").read_text())
    assert card2["training"]["init_weights"]["path"] == str(first)
    assert card2["data"]["hard_negatives_ranked_by"]["path"] == str(first)
    assert card2["data"]["mined_scans"] == 2
    # --mine-fpr ranks the candidates of a segmenter, and must be an FPR network
    assert main(["train", "fpr", *TINY_DATA, "--epochs", "1", "--mine-fpr", str(first),
                 "--out", str(tmp_path / "x.keras")]) == 2
    assert main(["train", "fpr", *TINY_DATA, "--epochs", "1", "--segmenter", str(seg), "--mine-fpr", str(seg),
                 "--out", str(tmp_path / "x.keras")]) == 2
    assert main(["train", "fpr", *TINY_DATA, "--epochs", "1", "--mining-cache", str(tmp_path / "m"),
                 "--out", str(tmp_path / "x.keras")]) == 2                # keeps a segmenter's candidates


def test_cli_train_rejects_bad_options(tmp_path):
    from lungcad.cli import main

    assert main(["train", "segmenter", "--epochs", "1", "--out", str(tmp_path / "x.keras")]) == 2   # no data
    assert main(["train", "segmenter", "--synthetic", "1", "--tile", "60",
                 "--out", str(tmp_path / "x.keras")]) == 2
    assert main(["train", "fpr", "--synthetic", "1", "--model-kwargs", "[1]",
                 "--out", str(tmp_path / "x.keras")]) == 2


def test_randomized_training_phantoms_draw_their_own_thickness_and_families_are_refused(tmp_path):
    """--phantom-kwargs '{"domain": "randomized"}': the domain draws the slice thickness and pixel
    size (held-out bands left out), not the fixed training protocol; an evaluation family's folder
    is refused as training data."""
    import json as _json

    from lungcad.errors import InputError
    from lungcad.synthetic.scan_plan import draw_domain_factors
    from lungcad.train.sources.phantoms import SLICE_PROTOCOLS, phantom_protocol, synth_dir_cases, synthetic_cases

    seed = 5
    case = synthetic_cases(1, seed=seed, phantom_kwargs={"domain": "randomized", "vessel_density": 0.3})[0].load()
    want = draw_domain_factors(seed, domain="randomized", shape=phantom_protocol(seed)["shape"])
    assert case.volume.spacing == pytest.approx(tuple(want["spacing"]))
    assert case.volume.spacing[0] not in [s for s, _ in SLICE_PROTOCOLS]
    (tmp_path / "lesions.csv").write_text("lesion_id,patient_id,seriesuid\n")
    (tmp_path / "domain.json").write_text(_json.dumps({"domain": "randomized", "seed": 950000}))
    with pytest.raises(InputError, match="evaluation family"):
        synth_dir_cases(tmp_path)


def test_cli_train_help_shows_only_defaults_that_say_something(capsys):
    from lungcad.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "made on the fly (default: 0)" in text                  # a real default is still shown
    assert "(default 1e-3; gan 2e-4)" in text and "2e-4) (default" not in text
