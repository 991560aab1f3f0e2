"""Training the pipeline's networks: data sources, datasets, and the two training functions.

>>> from lungcad.train import synthetic_cases, train_segmenter, TrainSettings
>>> result = train_segmenter(synthetic_cases(40, seed=1000), out="segmenter.keras",
...                          settings=TrainSettings(epochs=12))

``lungcad train segmenter|fpr`` (:mod:`lungcad.cli.train`) is a thin shell over
:func:`train_segmenter` and :func:`train_fpr`.  Keras is imported by this package: set
``KERAS_BACKEND`` before importing it.
"""
from lungcad.evaluate import roc_auc  # the one ROC AUC (soft labels: >= 0.5 is a positive)
from lungcad.train.common import TrainResult, TrainSettings, detect_candidates, match_candidates
from lungcad.train.data import (Case, CaseRef, apply_patient_labels, background_cases, dsb2017_cases, lidc_cases, luna16_cases,
                                read_patient_labels, sphere_mask, split_by_patient, synth_dir_cases,
                                synthetic_cases, with_patient_labels)
from lungcad.train.datasets import FPRDataset, SegmenterDataset
from lungcad.train.fpr import evaluate_fpr, mine_hard_negatives, train_fpr
from lungcad.train.segmenter import build_segmenter, evaluate_segmenter, train_segmenter

__all__ = ["Case", "CaseRef", "FPRDataset", "SegmenterDataset", "TrainResult", "TrainSettings",
           "apply_patient_labels", "background_cases", "build_segmenter", "detect_candidates", "dsb2017_cases", "evaluate_fpr",
           "evaluate_segmenter", "lidc_cases", "luna16_cases", "match_candidates", "mine_hard_negatives",
           "read_patient_labels", "roc_auc", "sphere_mask", "split_by_patient", "synth_dir_cases",
           "synthetic_cases", "train_fpr", "train_segmenter", "with_patient_labels"]
