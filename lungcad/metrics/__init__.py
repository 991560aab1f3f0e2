"""Evaluation: the LUNA16 FROC of detections, and patient-level metrics of cancer probabilities.

======================  ==============================================================
module                  what it holds
======================  ==============================================================
``metrics.files``       readers of annotations, candidates, labels and predictions; CSV and JSON writers
``metrics.froc``        :func:`froc`: the LUNA16 rules (see its docstring), :class:`FrocResult`
``metrics.curve``       the FROC curve from sorted hits and false positives; :func:`sensitivity_at`
``metrics.bootstrap``   the FROC's confidence intervals, a bootstrap over scans
``metrics.patients``    the one :func:`roc_auc` and :func:`log_loss`, :func:`patient_metrics`, calibration bins
``metrics.plots``       the FROC curve and the reliability diagram as PNG
======================  ==============================================================
"""
from lungcad.metrics.curve import sensitivity_at
from lungcad.metrics.files import (ANNOTATION_COLUMNS, CANDIDATE_EVAL_COLUMNS, read_annotations, read_candidates,
                                   read_excluded, read_labels, read_predictions, read_seriesuids, write_csv,
                                   write_json)
from lungcad.metrics.froc import (DEFAULT_EXCLUDED_DIAMETER_MM, FROC_POINTS, NODULE_COLUMNS, FrocResult, format_froc,
                                  froc)
from lungcad.metrics.patients import (format_patient_metrics, join_patients, log_loss, patient_metrics,
                                      roc_auc)
from lungcad.metrics.plots import plot_calibration, plot_froc

__all__ = ["ANNOTATION_COLUMNS", "CANDIDATE_EVAL_COLUMNS", "DEFAULT_EXCLUDED_DIAMETER_MM", "FROC_POINTS",
           "NODULE_COLUMNS", "FrocResult", "format_froc", "format_patient_metrics", "froc", "join_patients",
           "log_loss", "patient_metrics", "plot_calibration", "plot_froc", "read_annotations", "read_candidates",
           "read_excluded", "read_labels", "read_predictions", "read_seriesuids", "roc_auc", "sensitivity_at",
           "write_csv", "write_json"]
