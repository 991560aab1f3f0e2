"""Classical lung segmentation on Hounsfield units.

:func:`segment_lungs` works on a coarse copy of the scan (block means of about ``work_mm``
in-plane, native slices) and returns a mask on the scan's own grid:

0. A noisy scan (low dose, sharp kernel: noise above 60 HU, measured on neighbouring pixels
   in soft tissue) is first smoothed in-plane by a Gaussian of noise / 100 pixels (at most 3).
1. ``air``: block mean below ``threshold_hu`` (-320 HU).
2. The body, slice by slice: the largest non-air component after a 3 mm opening (which cuts it
   from the table), holes filled.  Air inside the body is candidate lung; the air around the
   patient and the padding outside the field of view are dropped.
3. The trachea and main bronchi: a 30-900 mm^2 air component near the body's midline in the
   upper slices, followed down slice by slice at the scan's own resolution (where the airway
   wall still parts it from a lung that touches it) while it stays small, stopping where a
   bronchus runs into a lung or 50 mm below the carina.  It is removed.
4. Gas in the stomach or bowel that thick slices merge with a lung base: pure gas (below
   ``gas_hu`` after a 5 mm mean) in pockets surrounded mostly by tissue.  It is removed.
5. The lungs: the largest 3-D components of the remaining air (two when the second holds at
   least 10 % of the first).  Lungs that touch at the anterior junction form one component;
   it is split by eroding it until it falls in two, then giving each voxel to the nearer part.
6. For each lung on its own:

   * holes of up to 10 cm^2 filled in each slice (vessels, nodules inside the lung; a larger
     hole is the top of the diaphragm's dome or of the heart, seen through the lung);
   * a closing in each slice by a disc of ``closing_mm`` (juxta-pleural nodules);
   * a closing by a ball of ``mass_mm`` radius, in 3-D on a ``mass_grid_mm`` grid: it adds
     what bulges into the lung and is narrower than the ball, whether it comes from the chest
     wall, the mediastinum or the hilum.  Masses of up to about twice ``mass_mm`` that
     replaced lung against the mediastinum are kept this way, while the heart, the
     mediastinum and the diaphragm, whose surfaces curve more gently than the ball, stay out.
     What it adds gets a margin of one grid cell, and only inside the body;
   * holes filled in 3-D;
   * what the hole filling and the ball closing add is kept only where lung lies beneath it:
     the liver dome, the spleen, the stomach and the base of the heart rise into the lungs
     from below, with no lung under them, while a nodule or a hilar mass has lung beneath.
7. The coarse mask is brought back to the scan's grid: each block takes its coarse value,
   except in the mask's outer ring of blocks, where the air pixels alone stay (unless a fill
   made the block).

When the result is empty or its volume is outside ``plausible_litres``, the mask falls back
to the body's bounding box (the whole volume if there is no body), with ``fallback=True``
and a warning.  The function does not raise for any 3-D input with a valid spacing.

The modules: :mod:`.segment` (:func:`segment_lungs`, :class:`LungMask`: the steps in order,
and the plausibility check), :mod:`.anatomy` (steps 0-5: noise, body, trachea, gas, the two
lungs), :mod:`.refine` (step 6: the closings of one lung), :mod:`.grid` (the coarse grid,
step 7, and the in-plane shapes) and :mod:`.box` (:func:`lung_box` and the fallback box).

Runtime (measured on a shared 2-core machine): about 4.5 s of CPU for 300 slices of 512 x 512,
2-3 s for LIDC-IDRI-0003 (140 slices), under 1 s for the 8 mm Lung-PET-CT-Dx series.
"""
from __future__ import annotations

from .box import lung_box
from .segment import LungMask, segment_lungs

__all__ = ["LungMask", "segment_lungs", "lung_box"]
