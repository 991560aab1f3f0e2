"""From a nodule probability map to the candidate table.

The candidate U-Net works slice by slice, so this stage does too:

1. :func:`threshold` the probability map;
2. :func:`dilate` then :func:`erode` it (a closing) with structuring elements sized in mm;
3. :func:`components_2d`: connected components in each slice, as 2-D detections;
4. :func:`merge_by_distance`: detections of one slice whose centroids are closer than D mm
   become one (a nodule that the network split into several blobs);
5. :func:`merge_z`: detections in neighbouring slices whose in-plane centroids are within
   R mm link into one 3-D candidate, and so do those whose footprints overlap by a given
   fraction of the smaller one and are both large (:func:`overlap_links`: a mass on thick
   slices);
6. with ``weak_threshold``, :func:`weak_components` adds faint blobs: per-slice components of
   the map at that lower level that share no pixel with the first threshold's foreground, in
   their slice or at the same place in the slices just above and below.  A 4 mm nodule on 5 mm slices fills a slice to less
   than half, and the U-Net answers 0.2-0.4 there; these blobs go through steps 4-5 on
   their own (they never join a candidate of the first threshold) and come after them;
7. with ``split_threshold``, :func:`split_components` labels the large components of the first
   threshold again at that higher level: a nodule that the map joins to the hilum stands apart
   there, and the parts go through steps 4-5 among themselves and become candidates next to
   the whole component's (measured on their own, so that they may share its voxels);
8. :func:`extract_candidates` measures each 3-D candidate and returns the candidate table;
9. :func:`add_dense_candidates` (:mod:`.dense`, the pipeline's ``[dense]``) appends a second,
   classical source: compact dense blobs in the lung that no candidate covers (calcified
   nodules, which the U-Net misses).

Every distance is in millimetres; voxel indices stay inside the functions or travel in
tables next to the spacing that gives them meaning.

Measurements of a 3-D candidate (see :func:`extract_candidates`):

* ``support``: the candidate's voxels grown by one voxel in 3-D (26-connected: the ring
  around it in each slice and the slices just above and below it), without the voxels of
  other candidates.  Below-threshold probabilities there carry the partial-volume
  information that a thresholded mask throws away.
* centre: the probability-weighted centroid over the support.
* ``volume_mm3``: the sum of the probabilities over the support times the voxel volume
  (a "soft" volume).  For a map whose values are the fraction of each voxel inside the
  lesion, this is the lesion's volume whatever the slice thickness.
* ``diameter_mm``: the equivalent-sphere diameter ``(6 V / pi) ** (1/3)``.  On thick slices
  the largest in-plane diameter depends on where the slices cut the lesion: a 6 mm sphere
  whose centre lies between two 5 mm slices shows 3.3 mm in each, so it is not used.
* ``probability`` and ``seg_prob``: the largest probability inside the candidate.

A lesion thinner than a slice (a 6 mm nodule on 8 mm slices) can lie wholly inside one slice;
where it lies within that slice cannot be measured, and its centre is the slice's centre.  On
5 mm slices a nodule of 6 mm or more always spans two slices and its centre comes out within
1 mm (see ``tests/test_morphology.py``).

The modules: :mod:`.components` (steps 1-3: threshold, closing, 2-D components),
:mod:`.merge` (step 4), :mod:`.zlink` (step 5), :mod:`.levels` (steps 6-7: weak and split
components), :mod:`.measure` (the measurements of a 3-D candidate) and :mod:`.extract`
(step 8: :func:`extract_candidates`, which runs them in order), :mod:`.dense` (step 9).
"""
from __future__ import annotations

from .components import DETECTION_COLUMNS, components_2d, dilate, erode, structuring_element, threshold
from .dense import add_dense_candidates, dense_blobs
from .extract import extract_candidates
from .levels import split_components, weak_components
from .measure import EXTRA_COLUMNS
from .merge import merge_by_distance
from .zlink import merge_z, overlap_links

__all__ = ["threshold", "structuring_element", "dilate", "erode", "components_2d", "weak_components",
           "split_components", "merge_by_distance", "merge_z", "overlap_links", "extract_candidates", "EXTRA_COLUMNS",
           "add_dense_candidates", "dense_blobs",
           "DETECTION_COLUMNS"]
