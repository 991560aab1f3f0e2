"""Synthetic chest CT phantoms with known anatomy and lesions.

* :func:`generate_phantom`: one patient, a :class:`Phantom` (CT volume, label volume,
  lesion table, nodule look-alikes that are not lesions, patient cancer label).
* :func:`synth_dataset`: many patients written as DICOM series, or in the LUNA16 or
  DSB2017 layout, with the annotation and label CSV files.
* :func:`malignancy_probability`: the lesion malignancy model.
* Domains (:mod:`lungcad.synthetic.domain`): ``generate_phantom(domain="randomized")`` draws
  anatomy, scanner and lung disease (:mod:`lungcad.synthetic.disease`) from wide ranges;
  :func:`draw_domain_factors` gives a seed's factors without painting.

Everything is placed in world millimetres, so the anatomy does not depend on the voxel size,
and everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the
same volume, byte for byte.
"""
from lungcad.synthetic.anatomy import ORGANS
from lungcad.synthetic.disease import DISEASES
from lungcad.synthetic.domain import DOMAINS
from lungcad.synthetic.lesion_specs import LESION_COLUMNS, malignancy_probability
from lungcad.synthetic.phantom import LABELS, Phantom, generate_phantom
from lungcad.synthetic.phantom_lesions import DISTRACTOR_COLUMNS
from lungcad.synthetic.scan_plan import draw_domain_factors
from lungcad.synthetic.layouts import synth_dataset

__all__ = ["DISEASES", "DISTRACTOR_COLUMNS", "DOMAINS", "LABELS", "LESION_COLUMNS", "ORGANS", "Phantom",
           "draw_domain_factors", "generate_phantom", "malignancy_probability", "synth_dataset"]
