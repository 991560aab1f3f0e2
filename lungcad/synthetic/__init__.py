"""Synthetic chest CT phantoms with known anatomy and lesions.

* :func:`generate_phantom`: one patient, a :class:`Phantom` (CT volume, label volume,
  lesion table, nodule look-alikes that are not lesions, patient cancer label).
* :func:`synth_dataset`: many patients written as DICOM series, or in the LUNA16 or
  DSB2017 layout, with the annotation and label CSV files.
* :func:`malignancy_probability`: the lesion malignancy model.

Everything is placed in world millimetres, so the anatomy does not depend on the voxel size,
and everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the
same volume, byte for byte.
"""
from lungcad.synthetic.lesions import LESION_COLUMNS, malignancy_probability
from lungcad.synthetic.phantom import DISTRACTOR_COLUMNS, LABELS, Phantom, generate_phantom
from lungcad.synthetic.dataset import synth_dataset

__all__ = ["DISTRACTOR_COLUMNS", "LABELS", "LESION_COLUMNS", "Phantom", "generate_phantom",
           "malignancy_probability", "synth_dataset"]
