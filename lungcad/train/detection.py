"""Candidates on training and held-out scans: what the pipeline's first stages give
(:func:`detect_candidates`, for hard-negative mining and evaluation), and which of them hit a
lesion, LUNA16's way (:func:`match_candidates`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungcad.config import PipelineConfig


def detect_candidates(volume, segmenter, config: PipelineConfig, *, lung_mask=None) -> pd.DataFrame:
    """The candidate table that the pipeline's first stages (lung mask, U-Net, morphology)
    give for ``volume``: what the FPR network will be asked to classify."""
    from lungcad import lungmask
    from lungcad.pipeline import candidate_stage, lung_stage, morphology_stage

    if lung_mask is None:
        lm, box = lung_stage(volume, config)
        lung_mask = lm.mask
    else:
        box = lungmask.lung_box(lung_mask, spacing_zyx=volume.spacing, margin_mm=config.lungmask.margin_mm)
    prob = candidate_stage(volume, segmenter, box, config)
    return morphology_stage(volume, prob, lung_mask, config)


def match_candidates(candidates: pd.DataFrame, lesions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """LUNA16 hits: ``hit[j]`` is True when lesion j has a candidate within its radius;
    ``fp[i]`` is True when candidate i lies within the radius of no lesion."""
    if len(lesions) == 0:
        return np.zeros(0, dtype=bool), np.ones(len(candidates), dtype=bool)
    if len(candidates) == 0:
        return np.zeros(len(lesions), dtype=bool), np.zeros(0, dtype=bool)
    a = candidates[["coordX", "coordY", "coordZ"]].to_numpy(float)
    b = lesions[["coordX", "coordY", "coordZ"]].to_numpy(float)
    r = lesions["diameter_mm"].to_numpy(float) / 2.0
    within = np.linalg.norm(a[:, None] - b[None], axis=-1) <= r[None]
    return within.any(axis=0), ~within.any(axis=1)
