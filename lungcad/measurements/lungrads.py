"""A research-only category per nodule and per patient, after the baseline-screening categories
of Lung-RADS v2022 (American College of Radiology), from a nodule's size and type.

**Research only, not a clinical reading.**  Lung-RADS is assigned by a radiologist who has seen
the whole scan, the prior scans and the features this cannot judge (perifissural and
juxtapleural nodules, airway nodules, growth, suspicious features of category 4X, other
findings); this is what the table below gives from a measured size and a measured type alone.

Size is the mean of the axial long and short axes, rounded to 0.1 mm (Lung-RADS v2022); for a
part-solid nodule also the solid component's mean diameter.  Baseline screening:

============  ==============================================  ========
type          size (mm)                                       category
============  ==============================================  ========
calcified     benign pattern (diffuse, central, popcorn, ...)  1
solid         < 6                                             2
solid         6 to < 8                                        3
solid         8 to < 15                                       4A
solid         >= 15                                           4B
part-solid    total < 6                                       2
part-solid    total >= 6, solid component < 6                 3
part-solid    solid component 6 to < 8                        4A
part-solid    solid component >= 8                            4B
ground-glass  < 30                                            2
ground-glass  >= 30                                           3
============  ==============================================  ========

A patient's category is the highest of its nodules', and 1 when there is none.
"""
from __future__ import annotations

import math

#: The categories, lowest first.
CATEGORIES = ("1", "2", "3", "4A", "4B")
#: Said with every category, in the scan JSON and the report.
RESEARCH_NOTE = "research only, not a clinical reading"


def lungrads_research_category(nodule_type: str, mean_mm: float, solid_mm: float | None = None) -> str:
    """The research-only baseline category (text, one of :data:`CATEGORIES`) of one nodule.

    ``mean_mm``: the mean of the axial long and short axes (mm, rounded to 0.1); ``solid_mm``:
    the solid component's mean diameter (mm), for a part-solid nodule.
    """
    if nodule_type == "calcified":
        return "1"
    size = float(mean_mm)
    if not math.isfinite(size):
        raise ValueError(f"mean_mm must be a finite size in mm. Received {mean_mm!r}")
    if nodule_type == "solid":
        return "2" if size < 6.0 else "3" if size < 8.0 else "4A" if size < 15.0 else "4B"
    if nodule_type == "part-solid":
        solid = 0.0 if solid_mm is None or not math.isfinite(float(solid_mm)) else float(solid_mm)
        if size < 6.0:
            return "2"
        return "3" if solid < 6.0 else "4A" if solid < 8.0 else "4B"
    if nodule_type == "ground-glass":
        return "2" if size < 30.0 else "3"
    raise ValueError(f"nodule_type expected one of solid, part-solid, ground-glass, calcified. "
                     f"Received {nodule_type!r}")


def patient_lungrads_research(categories) -> str:
    """The highest of a patient's nodule categories; ``"1"`` when there is none."""
    cats = [str(c) for c in categories if isinstance(c, str) and c in CATEGORIES]
    return max(cats, key=CATEGORIES.index) if cats else "1"
