"""Training the pipeline's networks: data sources (:mod:`lungcad.train.sources`), Keras datasets,
and the two training functions.

>>> from lungcad.train import synthetic_cases, train_segmenter, TrainSettings
>>> result = train_segmenter(synthetic_cases(40, seed=1000), out="segmenter.keras",
...                          settings=TrainSettings(epochs=12))

``lungcad train segmenter|fpr`` (:mod:`lungcad.cli.train`) is a thin shell over
:func:`train_segmenter` and :func:`train_fpr`.  Keras is imported by this package: set
``KERAS_BACKEND`` before importing it.
"""
from lungcad.metrics import roc_auc  # the one ROC AUC (soft labels: >= 0.5 is a positive)
from lungcad.train.cases import Case, CaseRef, sphere_mask, split_by_patient
from lungcad.train.detection import detect_candidates, match_candidates
from lungcad.train.fit_fpr import evaluate_fpr, mine_hard_negatives, train_fpr
from lungcad.train.fit_segmenter import build_segmenter, evaluate_segmenter, train_segmenter
from lungcad.train.fpr_batches import FPRDataset
from lungcad.train.segmenter_batches import SegmenterDataset
from lungcad.train.settings import TrainResult, TrainSettings
from lungcad.train.sources.backgrounds import background_cases
from lungcad.train.sources.dsb2017 import apply_patient_labels, dsb2017_cases, read_patient_labels, with_patient_labels
from lungcad.train.sources.lidc import lidc_cases
from lungcad.train.sources.luna16 import luna16_cases
from lungcad.train.sources.phantoms import synth_dir_cases, synthetic_cases

__all__ = ["Case", "CaseRef", "FPRDataset", "SegmenterDataset", "TrainResult", "TrainSettings",
           "apply_patient_labels", "background_cases", "build_segmenter", "detect_candidates", "dsb2017_cases", "evaluate_fpr",
           "evaluate_segmenter", "lidc_cases", "luna16_cases", "match_candidates", "mine_hard_negatives",
           "read_patient_labels", "roc_auc", "sphere_mask", "split_by_patient", "synth_dir_cases",
           "synthetic_cases", "train_fpr", "train_segmenter", "with_patient_labels"]
