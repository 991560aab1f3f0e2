"""Nodule measurements: each reported nodule's 3-D segmentation, volume, axial long and short
axes (Lung-RADS v2022 / Fleischner), type, solid component and a research-only Lung-RADS-style
category per nodule and per patient (**research only, not a clinical reading**).

* :mod:`~lungcad.measurements.segment`: the segmentation, from the U-Net map (where) and the HU
  (the border, at half the step from the lung to the nodule);
* :mod:`~lungcad.measurements.axes`: the axial long and short axes and their mean;
* :mod:`~lungcad.measurements.nodule_type`: solid, part-solid, ground-glass or calcified;
* :mod:`~lungcad.measurements.lungrads`: the research-only baseline category;
* :mod:`~lungcad.measurements.measure`: the stage, :func:`measure_nodules`, on a candidate table.
"""
from lungcad.measurements.axes import AxialAxes, axial_axes, round_size
from lungcad.measurements.lungrads import (CATEGORIES, RESEARCH_NOTE, lungrads_research_category,
                                           patient_lungrads_research)
from lungcad.measurements.measure import (MEASURE_COLUMNS, SOFT_VOLUME, Measured, ProbabilityCrop, measure_nodules,
                                          measure_one, reported_rows)
from lungcad.measurements.nodule_type import TYPES, NoduleType, classify
from lungcad.measurements.segment import NoduleMask, binary_volume_mm3, partial_volume_mm3, segment_nodule

__all__ = ["AxialAxes", "axial_axes", "round_size", "CATEGORIES", "RESEARCH_NOTE", "lungrads_research_category",
           "patient_lungrads_research", "MEASURE_COLUMNS", "SOFT_VOLUME", "Measured", "ProbabilityCrop",
           "measure_nodules", "measure_one", "reported_rows", "TYPES", "NoduleType", "classify", "NoduleMask",
           "binary_volume_mm3", "partial_volume_mm3", "segment_nodule"]
