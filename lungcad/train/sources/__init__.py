"""Where training cases come from: one module per source family, each giving
:class:`~lungcad.train.cases.CaseRef` objects that load their :class:`~lungcad.train.cases.Case`
on demand.

* :mod:`~lungcad.train.sources.phantoms`: :func:`synthetic_cases`, phantoms of
  :mod:`lungcad.synthetic` made from a seed range, and :func:`synth_dir_cases`, a folder
  written by ``lungcad synth``;
* :mod:`~lungcad.train.sources.luna16`: :func:`luna16_cases`, ``subset*/*.mhd`` with
  ``annotations.csv`` (lesions), ``candidates_V2.csv`` (class-0 rows are negatives) and
  ``annotations_excluded.csv`` (findings that are neither: negatives near them are dropped);
* :mod:`~lungcad.train.sources.lidc`: :func:`lidc_cases`, LIDC-IDRI series folders with their
  XML reads; the lesions are the consensus of at least 3 readers and the malignancy target is
  ``(mean rating - 1) / 4``;
* :mod:`~lungcad.train.sources.dsb2017`: :func:`dsb2017_cases` and :func:`apply_patient_labels`:
  DSB2017 ``stage1_labels.csv`` patient labels, turned into weak lesion labels;
* :mod:`~lungcad.train.sources.backgrounds`: :func:`background_cases`, real CT scans without
  reads (any folder), with lesions inserted by :func:`lungcad.synthetic.insertion.insert_lesions`
  (several draws per scan) and hard negatives mined from their anatomy.

The functions are exported by :mod:`lungcad.train`.
"""
