"""Detection quality with the shipped weights: phantoms never seen in training, and real CT.

These guard the figures reported in docs/results.md and the README's results table; a regression in
any stage or in the weights fails here.
"""

import numpy as np
import pandas as pd
import pytest

from lungcad.metrics import froc
from lungcad.io import discover, load_series
from lungcad.pipeline import Pipeline
from lungcad.synthetic import generate_phantom

# Guarded levels (see docs/results.md): measured with the shipped weights, minus a margin.
PHANTOM_MIN_CPM = 0.80              # measured 0.857 (FPR round 6; round 5: 0.837); issue 5 target: 0.8
PETCT_MIN_SERIES_IN_TOP3 = 4        # measured 4 (ranks 0, 0, 0, 1 with FPR rounds 5 and 6); issue 5 target: 4
PETCT_MAX_RANK = 2                  # the same, said as a rank
PETCT_MIN_PATIENT_PROB = 0.55       # measured A0001 0.95/0.88, A0002 0.82/0.78 with the shipped
                                    # [aggregate] calibration; target: 0.5
PETCT_MIN_TUMOUR_SPAN = 0.8         # the tumour's longest candidate spans >= this share of its
                                    # annotated slices: measured 26/9, 18/11, 12/10, 13/8 slices
                                    # (linking by centroid distance alone: 4/9, 6/11, 5/10, 5/8)
LIDC_MIN_HITS_ANY = 3
LIDC_MIN_HITS_IN_TOP10 = 3          # measured 3 (first hits at ranks 2, 1, 0); issue 5 target: 3
LIDC_MIN_HITS_IN_TOP3 = 3           # the same ranks; issue 19 target: each in the top 3
VALIDATION4_MIN_CPM = 0.70          # the first 4 patients of the validation family (7 nodules):
                                    # measured 0.796 with FPR round 5 (all 12: 0.652 with rounds 5 and 6;
                                    # round 4: 0.562)
EDGE_MAX_PER_SERIES = 2             # candidates > 0.5 within 3 mm of the mask's medial border
                                    # (spine, mediastinum): measured 2, 0, 0, 0 (PET-CT) and 0
                                    # (LIDC) with the fifth FPR round (3, 3, 0, 0 and 1 before);
                                    # issue 19 target: at most 1
FPR_MIN_AUC = 0.90                  # measured 0.957 (nodules vs vessel crossings, one view per patch)


@pytest.fixture(scope="module")
def pipeline():
    p = Pipeline()
    p.load_models()
    return p


def in_boxes(candidates: pd.DataFrame, boxes: pd.DataFrame, slice_mm: float) -> np.ndarray:
    """Which candidates lie inside an annotated box (± 10 mm) on an annotated slice."""
    inside = np.zeros(len(candidates), dtype=bool)
    for b in boxes.itertuples():
        inside |= ((abs(candidates["coordX"] - b.center_x_mm) <= b.width_mm / 2 + 10)
                   & (abs(candidates["coordY"] - b.center_y_mm) <= b.height_mm / 2 + 10)
                   & (abs(candidates["coordZ"] - b.z_mm) <= slice_mm / 2 + 0.01)).to_numpy()
    return inside


def tumour_rank(candidates: pd.DataFrame, boxes: pd.DataFrame, slice_mm: float) -> int | None:
    """Rank (0-based) of the first candidate inside an annotated box (± 10 mm) on an annotated slice."""
    hits = np.flatnonzero(in_boxes(candidates, boxes, slice_mm))
    return int(hits[0]) if len(hits) else None


def medial_border_candidates(candidates: pd.DataFrame, mask: np.ndarray, spacing) -> int:
    """Candidates above 0.5 within 3 mm of the lung mask's border, on its medial side (within
    45 % of the lungs' half-width of their midline, in the candidate's slice)."""
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    n = 0
    for c in candidates[candidates["probability"] > 0.5].itertuples():
        z, y, x = (int(round(v)) for v in (c.z, c.y, c.x))
        if (inside if mask[z, y, x] else outside)[z, y, x] > 3.0:
            continue
        xs = np.flatnonzero(mask[z].any(axis=0))
        n += bool(len(xs)) and abs(x - 0.5 * (xs[0] + xs[-1])) < 0.45 * 0.5 * (xs[-1] - xs[0])
    return n


def test_fresh_phantoms_froc(pipeline):
    anns, cands, uids = [], [], []
    for seed in range(4):
        ph = generate_phantom(seed=880000 + seed, shape=(None, 256, 256))
        result = pipeline.run(ph.volume)
        uids.append(ph.volume.series_uid)
        anns.append(ph.lesions.loc[ph.lesions["diameter_mm"] >= 3.0,
                                   ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]])
        cands.append(result.candidates)
    res = froc(pd.concat(anns), pd.concat(cands), seriesuids=uids, n_bootstrap=0)
    assert res.n_nodules >= 4
    assert res.cpm >= PHANTOM_MIN_CPM, f"CPM {res.cpm:.3f}, sensitivities {res.sensitivities}"


def test_lung_pet_ct_dx_tumours_rank_high(pipeline, petct_dir):
    boxes = pd.read_csv(petct_dir / "annotations_index.csv")
    series = discover(petct_dir)
    assert len(series) == 4
    in_top3, probs, ranks, spans, edges = 0, {}, [], [], []
    for s in series:
        vol = load_series(s)
        prep = pipeline.prepare(vol)
        result = pipeline.finish(vol, prep)
        edges.append(medial_border_candidates(result.candidates, prep.lung.mask, vol.spacing))
        b = boxes[boxes["series_instance_uid"] == s.series_uid]
        rank = tumour_rank(result.candidates, b, vol.spacing[0])
        in_top3 += rank is not None and rank < 3
        ranks.append(rank)
        probs[s.series_uid] = result.cancer_probability
        # a mass on thick slices is one candidate, not pieces (morphology's z_overlap)
        inside = result.candidates[in_boxes(result.candidates, b, vol.spacing[0])]
        spans.append((int(inside["n_slices"].max()) if len(inside) else 0, b["z_mm"].nunique()))
    assert in_top3 >= PETCT_MIN_SERIES_IN_TOP3, f"{in_top3} of 4 series have the tumour in the top 3: {ranks}"
    assert all(r is not None and r <= PETCT_MAX_RANK for r in ranks), f"tumour ranks {ranks}"
    assert min(probs.values()) >= PETCT_MIN_PATIENT_PROB, f"cancer probabilities {probs}"
    assert all(n >= PETCT_MIN_TUMOUR_SPAN * annotated for n, annotated in spans), \
        f"(slices of the tumour's longest candidate, annotated slices): {spans}"
    assert max(edges) <= EDGE_MAX_PER_SERIES, f"candidates on the medial mask border: {edges}"


@pytest.fixture(scope="module")
def lidc_run(pipeline, lidc_dir):
    """LIDC-IDRI-0003 through the shipped pipeline, once for the tests of this module:
    ``(volume, prepared, result)``."""
    vol = load_series(discover(lidc_dir)[0])
    prep = pipeline.prepare(vol)
    return vol, prep, pipeline.finish(vol, prep)


def test_lidc_0003_reference_lesions_are_found(lidc_run, lidc_dir):
    """Each lesion marked by all four readers is hit (within its radius) by a candidate.

    Issue 5 asks for each within the top 10: with the shipped weights they are at ranks
    2, 1 and 0 (docs/results.md).
    """
    cons = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    cons = cons[cons["n_readers"] >= 4]
    vol, prep, result = lidc_run
    cands = result.candidates
    assert medial_border_candidates(cands, prep.lung.mask, vol.spacing) <= 1
    xyz = cands[["coordX", "coordY", "coordZ"]].to_numpy()
    ranks = []
    for n in cons.itertuples():
        d = np.linalg.norm(xyz - [n.x_mm, n.y_mm, n.z_mm], axis=1)
        hit = np.flatnonzero(d <= n.mean_max_axial_diam_mm / 2)
        ranks.append(int(hit[0]) if len(hit) else None)
    assert len(ranks) == 3
    assert sum(r is not None for r in ranks) >= LIDC_MIN_HITS_ANY, f"first-hit ranks {ranks}"
    assert sum(r is not None and r < 10 for r in ranks) >= LIDC_MIN_HITS_IN_TOP10, f"first-hit ranks {ranks}"
    assert sum(r is not None and r < 3 for r in ranks) >= LIDC_MIN_HITS_IN_TOP3, f"first-hit ranks {ranks}"


#: The types that agree with the readers' median LIDC texture rating (1 non-solid/ground glass ..
#: 3 part-solid .. 5 solid); a median calcification rating other than 6 (absent) asks for calcified.
TEXTURE_AGREES = {1: {"ground-glass"}, 2: {"ground-glass", "part-solid"}, 3: {"part-solid"},
                  4: {"part-solid", "solid"}, 5: {"solid"}}


def test_lidc_0003_reported_lesions_are_measured_as_the_readers_did(lidc_run, lidc_dir):
    """Each 4-reader lesion is a reported nodule whose axial long axis lies within the range of
    the four readers' largest axial diameters (from their XML contours) +/- 2 mm, and whose type
    agrees with their texture and calcification ratings.

    Measured (docs/results.md; LIDC-0003 chose nothing, it is a check): long axes 30.8, 10.5 and
    13.6 mm against readers' 28.0-35.5, 11.9-14.8 and 14.3-15.6 mm (the second and third below
    the readers' range, within its 2 mm margin); types part-solid (texture ratings 3, 5, 4, 4),
    solid (5, 5, 4, 5) and solid (5, 5, 5, 5), no calcification rated.
    """
    from lungcad.io.lidc import KIND_NODULE, read_lidc_xml

    vol, _, result = lidc_run
    reads = read_lidc_xml(next(lidc_dir.rglob("*.xml")), vol)
    reads = reads[reads["kind"] == KIND_NODULE]
    cons = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    cons = cons[cons["n_readers"] >= 4]
    cands = result.candidates
    rep = cands[cands["nodule_id"].notna()]
    assert result.reported["n"] == len(rep) >= 3
    rows = []
    for n in cons.itertuples():
        centre = np.array([n.x_mm, n.y_mm, n.z_mm])
        mine = reads[np.linalg.norm(reads[["coordX", "coordY", "coordZ"]].to_numpy() - centre, axis=1)
                     < max(5.0, n.mean_max_axial_diam_mm / 2)]
        assert mine["reader"].nunique() == 4, mine
        d = np.linalg.norm(rep[["coordX", "coordY", "coordZ"]].to_numpy() - centre, axis=1)
        hit = rep.iloc[int(np.argmin(d))]
        assert d.min() <= n.mean_max_axial_diam_mm / 2, f"lesion {n.cluster_id} is not a reported nodule"
        lo, hi = mine["diameter_mm"].min(), mine["diameter_mm"].max()
        rows.append((n.cluster_id, round(hit["long_axis_mm"], 2), round(lo, 2), round(hi, 2), hit["nodule_type"],
                     mine["texture"].tolist(), mine["calcification"].tolist()))
        assert lo - 2.0 <= hit["long_axis_mm"] <= hi + 2.0, rows[-1]
        calcified = float(np.median(mine["calcification"])) != 6.0
        want = {"calcified"} if calcified else TEXTURE_AGREES[int(round(float(np.median(mine["texture"]))))]
        assert hit["nodule_type"] in want, rows[-1]
    print(rows)


def test_validation_family_first_patients(pipeline, tmp_path):
    """The generalisation protocol's validation family (randomised domain, the training ranges):
    its first 4 patients, scored by the protocol's own command."""
    from lungcad.protocol import score_family

    r = score_family("validation", tmp_path, pipeline=pipeline, patients=4, n_bootstrap=0)
    assert r["scans"]["failed"] == 0 and r["froc"]["n_nodules"] == 7
    assert r["froc"]["cpm"] >= VALIDATION4_MIN_CPM, r["froc"]


def test_fpr_ranks_nodules_above_vessel_crossings(pipeline):
    """The shipped FPR network scores phantom lesions above the vessel crossings beside them."""
    from lungcad.fpr import extract_patches, patch_spacing
    from lungcad.train import roc_auc

    cfg = pipeline.config.fpr
    pos, neg = [], []
    for seed in range(3):
        ph = generate_phantom(seed=870000 + seed, shape=(None, 256, 256), n_nodules=4)
        vol = ph.volume
        for table, sink in ((ph.lesions[ph.lesions["diameter_mm"] >= 4.0], pos), (ph.distractors.head(12), neg)):
            if len(table) == 0:
                continue
            d = table["diameter_mm"].to_numpy(float)
            scales = patch_spacing(d, patch_size=cfg.patch_size, patch_mm=cfg.patch_mm, fit_fraction=cfg.fit_fraction)
            patches = extract_patches(vol.hu, table[["coordX", "coordY", "coordZ"]].to_numpy(float),
                                      spacing_zyx=vol.spacing, origin_xyz=vol.origin, direction=vol.direction,
                                      scales_mm=scales, patch_size=cfg.patch_size, window_hu=cfg.window_hu,
                                      views=pipeline.fpr_views)
            out = pipeline.classifier.predict_on_batch(
                {"patch": patches, "scale": np.log2(scales)[:, None].astype(np.float32)})
            sink.extend(np.asarray(out["nodule"]).reshape(-1).tolist())
    assert len(pos) >= 6 and len(neg) >= 12
    auc = roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    assert auc >= FPR_MIN_AUC, f"nodule-vs-vessel AUC {auc:.3f}"
