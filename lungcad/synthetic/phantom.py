"""One synthetic patient: :func:`generate_phantom` and the :class:`Phantom` it returns.

How a phantom is made:

1. Geometry of the scan (field of view, pixel size, slice step) and of the patient (body,
   thoracic cavity, lungs, mediastinum, heart, spine, ribs...), drawn from the seed
   (:mod:`lungcad.synthetic.scan_plan`, :mod:`lungcad.synthetic.anatomy`).
2. A coarse (about 3 mm) label volume of the thorax, used to spread the targets of the
   vessel trees and to find places for the lesions.
3. The fine volume, painted in world millimetres (:mod:`lungcad.synthetic.anatomy_volume`):
   axial cross-sections, great vessels, ribs, pulmonary vessel trees, trachea and bronchi,
   then the lesions (:mod:`lungcad.synthetic.phantom_lesions`).  For thick slices the fine
   volume has an odd number of sub-slices per slice, at most 2 mm (or 1.25 pixels) apart.
4. The scanner: the sub-slices are averaged into each slice (partial volume), then in-plane
   blur, an optional sharp-kernel edge enhancement, and correlated noise.

Labels are those of the sub-slice at each slice centre.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungcad.synthetic import disease as _disease
from lungcad.synthetic import domain as _dom
from lungcad.synthetic import scanner as _scanner
from lungcad.synthetic.anatomy import (AIRWAY, AIRWAY_FLAG, BODY, BONE, LESION, LUNG, MEDIASTINUM, OUTSIDE, VESSEL,
                                       draw_anatomy)
from lungcad.synthetic.anatomy_tubes import central_airways, great_vessels, ribs
from lungcad.synthetic.anatomy_volume import (_LUT_VESSEL_HU, _LUT_VESSEL_LAB, _airway_tree, _grow_trees, _organs_at,
                                              _paint_airways, _paint_anatomy, _thicker_walls)
from lungcad.synthetic.lesion_specs import draw_specs
from lungcad.synthetic.phantom_lesions import (_distractor_table, _lesion_table, _place_and_paint_lesions,
                                               _placement_context)
from lungcad.synthetic.raster import Grid, SmoothField as _Texture, paint_capsules
from lungcad.synthetic.scan_plan import _draw_domain, _draw_geometry, _place_scan, _place_scan_domain
from lungcad.synthetic.scanner import acquire, draw_scanner, slice_profile
from lungcad.volume import CTVolume

_F = AIRWAY_FLAG

LABELS = {"outside": OUTSIDE, "body": BODY, "bone": BONE, "mediastinum": MEDIASTINUM, "lung": LUNG,
          "vessel": VESSEL, "airway": AIRWAY, "lesion": LESION}

GENERATOR_VERSION = "1"


@dataclass
class Phantom:
    """A synthetic chest CT with its ground truth.

    Attributes
    ----------
    volume : CTVolume
        HU int16 (z, y, x), spacing, origin, identity direction, ids; ``meta`` holds the
        scanner settings (JSON-ready).
    labels : ndarray of uint8 (z, y, x)
        :data:`LABELS` values.  ``airway`` covers the lumen and wall of the trachea and bronchi.
    lesions : DataFrame
        One row per lesion (:data:`~lungcad.synthetic.lesion_specs.LESION_COLUMNS`).  ``coordX/Y/Z``
        is the centre of mass of the drawn lesion (world mm, LPS), ``z, y, x`` the same in
        fractional voxel indices, ``diameter_mm`` the equivalent-sphere diameter of the drawn
        volume (partial-volume weighted), ``intended_diameter_mm`` the size asked for.
    distractors : DataFrame
        Vessel bifurcations and crossings inside the lungs (:data:`DISTRACTOR_COLUMNS`).
    cancer : int
        1 if any lesion is malignant.
    fov_mask : ndarray of bool (y, x)
        Pixels inside the circular reconstruction field of view.
    lung_region : ndarray of bool (z, y, x)
        The anatomical lungs without lesions: parenchyma, intrapulmonary vessels and bronchi
        (consolidation and atelectasis included; pleural effusion and plaques are not lung).
    organs : ndarray of uint8 (z, y, x)
        :data:`ORGANS` codes (heart, liver, spleen, stomach with its gas), 0 elsewhere.
    """

    volume: CTVolume
    labels: np.ndarray
    lesions: pd.DataFrame
    distractors: pd.DataFrame
    cancer: int
    fov_mask: np.ndarray
    lung_region: np.ndarray
    organs: np.ndarray | None = None

    def lung_mask(self) -> np.ndarray:
        """The mask a lung segmentation should produce: the lungs with all their lesions,
        including juxta-pleural nodules and masses that touch the mediastinum or the hilum."""
        return self.lung_region | (self.labels == LESION)


def generate_phantom(*, seed: int, shape=(None, 512, 512), spacing=None, slice_mm: float | None = None,
                     n_nodules: int | None = None, n_masses: int | None = None, n_micronodules: int | None = None,
                     lesions=None, nodule_diameter_mm=(3.0, 30.0), mass_diameter_mm=(30.0, 70.0),
                     contrast: bool | None = None, noise_hu: float | None = None, psf_mm: float | None = None,
                     kernel: str | None = None, vessel_density: float = 1.0, patient_id: str | None = None,
                     series_uid: str | None = None, domain: str = "default", disease=None) -> Phantom:
    """Generate one synthetic chest CT with known anatomy and lesions.

    Parameters
    ----------
    seed : int
        Everything is drawn from ``numpy.random.default_rng(seed)``; the same arguments give
        the same volume.
    shape : (slices, rows, columns)
        ``slices`` None: as many as cover the chest (300-380 mm) at the slice step.
    spacing : (z, y, x) mm, optional
        Default: drawn per patient.  In-plane, a field of view of 300-460 mm that fits the
        patient (0.6-0.9 mm for 512 columns, about 1.2-1.8 mm for 256); the slice step from
        1, 1.25, 2.5, 5 and 8 mm (among those that give 200-480 mm when ``slices`` is given).
    slice_mm : float, optional
        Force the slice step, keeping the in-plane draw.
    n_nodules, n_masses, n_micronodules : int, optional
        Force the number of lesions of each kind (otherwise drawn, see
        :func:`~lungcad.synthetic.lesion_specs.draw_specs`).
    lesions : list of dict, optional
        Exactly these lesions; each dict may give ``kind``, ``texture``, ``location``,
        ``shape`` and ``diameter_mm`` (the rest is drawn).  Overrides the counts.
    nodule_diameter_mm, mass_diameter_mm : (min, max)
        Ranges of the drawn diameters.
    contrast : bool, optional
        Contrast-enhanced blood (150-280 HU); drawn with probability 0.5 by default.
    noise_hu, psf_mm, kernel : optional
        Scanner noise (drawn 8-30 HU for a soft kernel, 15-40 HU for a sharp one), in-plane
        PSF sigma (0.4-1.0 mm), "soft" or "sharp" (30 % sharp).
    vessel_density : float
        Scales the number of vessel branches (1 is about 1000 terminal branches per litre of
        lung, for the arteries and again for the veins).
    patient_id, series_uid : str, optional
    domain : {"default", "randomized", "shifted"}
        :mod:`lungcad.synthetic.domain`.  ``"default"`` is the generator of version 1, byte for
        byte.  The randomised domains draw the anatomy (:func:`~lungcad.synthetic.anatomy.draw_anatomy_domain`),
        the scan range and field of view, the scanner
        (:func:`~lungcad.synthetic.scanner.draw_scanner_domain`) and the lung disease
        (:mod:`lungcad.synthetic.disease`) from :data:`~lungcad.synthetic.domain.RANDOMIZED`,
        respecting :data:`~lungcad.synthetic.domain.HELD_OUT`; ``slice_mm`` (or ``spacing``)
        then forces the slice increment and thickness together, and ``kernel`` is ignored.
        The drawn factors are in ``volume.meta`` (``domain``, ``anatomy``, ``disease`` and the
        scanner's keys).
    disease : dict, optional
        Randomised domains only: ``{name: True/False}`` forces a disease of
        :data:`~lungcad.synthetic.disease.DISEASES` on or off; the others are drawn.

    Returns
    -------
    Phantom

    Notes
    -----
    A lesion that finds no place (for example a 70 mm mass in a scan that covers only part of
    the chest) is shrunk, then moved elsewhere, and left out as a last resort; the number left
    out is in ``volume.meta["lesions_not_placed"]``.
    """
    _dom.check_domain(domain)
    if disease is not None and domain == "default":
        raise ValueError("disease applies to the randomised domains. Received disease with domain='default'")
    rng = np.random.default_rng(seed)
    plan = None
    if domain == "default":
        shape, spacing, half_width = _draw_geometry(rng, shape, spacing, slice_mm)
        an = draw_anatomy(rng, A=half_width, contrast=contrast)
        sc = draw_scanner(rng, noise_hu=noise_hu, psf_mm=psf_mm, kernel=kernel)
        specs = draw_specs(rng, n_nodules=n_nodules, n_masses=n_masses, n_micronodules=n_micronodules,
                           lesions=lesions, nodule_diameter_mm=nodule_diameter_mm,
                           mass_diameter_mm=mass_diameter_mm)
        origin, frame, fov_mask = _place_scan(rng, an, shape, spacing)
        dis = {}
    else:
        sc, an, shape, spacing, plan = _draw_domain(rng, domain, shape, spacing, slice_mm, contrast=contrast,
                                                    noise_hu=noise_hu, psf_mm=psf_mm)
        dis = _disease.draw_disease(rng, force=disease)
        spec_kw = dict(n_nodules=n_nodules, n_masses=n_masses, n_micronodules=n_micronodules, lesions=lesions,
                       nodule_diameter_mm=nodule_diameter_mm, mass_diameter_mm=mass_diameter_mm)
        if "domain" in inspect.signature(draw_specs).parameters:
            spec_kw["domain"] = domain
        specs = draw_specs(rng, **spec_kw) + _disease.granuloma_specs(dis)
        origin, frame, fov_mask = _place_scan_domain(rng, an, shape, spacing, plan)
    nz, ny, nx = shape
    step, ps = spacing[0], spacing[1]
    great = great_vessels(an, rng)
    cent = central_airways(an)
    bones = ribs(an, rng)

    # coarse thorax (whole lungs, whatever the scan covers) for vessel targets and lesion placement
    cs = max(3.0, ps)
    margin = 0.0 if plan is None else plan["thickness_mm"]
    z_lo = min(origin[2] - margin, frame.z_apex - an.H - 30.0)
    z_hi = max(origin[2] + (nz - 1) * step + margin, frame.z_apex + 30.0)
    coarse = Grid((origin[0], origin[1], z_lo), (cs, cs, cs),
                  (int((z_hi - z_lo) / cs) + 1, int(ny * ps / cs) + 1, int(nx * ps / cs) + 1))
    _, clab = _paint_anatomy(an, coarse, frame, great, cent, None, None)
    _paint_airways(coarse, np.zeros(coarse.shape, np.float32), clab, frame.to_world(cent.a), frame.to_world(cent.b),
                   cent.ra, cent.rb, an.trachea[3], 0.0)
    clab &= np.uint8(0xFF ^ _F)
    trees = _grow_trees(rng, an, coarse, clab, frame, vessel_density)

    # the fine volume: default, an odd number of sub-slices per slice, the centre one at the slice
    # position; randomised, sub-slices at most a third of the slice thickness apart, one thickness
    # beyond the first and the last slice, for the slice profile
    fine_max = 1.25 * max(1.6, ps)
    if plan is None:
        f = 1
        while step / f > fine_max:
            f += 2
        dzf = step / f
        fine = Grid((origin[0], origin[1], origin[2] - 0.5 * (f - 1) * dzf), (dzf, ps, ps), (nz * f, ny, nx))
        sample = f // 2 + f * np.arange(nz)
    else:
        th = plan["thickness_mm"]
        dzf = min(fine_max, th / 3.0)
        n_f = int(np.ceil(((nz - 1) * step + 2.0 * th) / dzf)) + 1
        fine = Grid((origin[0], origin[1], origin[2] - th), (dzf, ps, ps), (n_f, ny, nx))
        slice_z = origin[2] + step * np.arange(nz)
        sample = np.clip(np.rint((slice_z - (origin[2] - th)) / dzf).astype(int), 0, n_f - 1)
    org = np.empty(fine.shape, dtype=np.uint8)
    hu, lab = _paint_anatomy(an, fine, frame, great, cent, bones, _Texture(rng, fine), org)
    for tr in trees:
        value = an.hu["blood"] if tr.kind == "artery" else an.hu["vein"]
        paint_capsules(fine, hu, lab, tr.a, tr.b, tr.ra, tr.rb, value, hu_allowed=_LUT_VESSEL_HU,
                       label=VESSEL, label_allowed=_LUT_VESSEL_LAB)
    airways = _airway_tree(an, cent, trees, frame)
    if dis.get("bronchial_wall_thickening"):
        airways = _thicker_walls(airways, len(cent.a), dis["bronchial_wall_thickening"]["factor"])
    _paint_airways(fine, hu, lab, *airways, an.hu["airway_wall"])
    ctx = _placement_context(an, coarse, clab, fine, lab, trees, frame)
    if plan is not None:
        _disease.paint_disease(rng, dis, ctx, hu, lab, z_apex=frame.z_apex, lung_height_mm=an.H,
                               x_mid=frame.cx + an.u_m, airways=airways[:4])
    drawn, not_placed = _place_and_paint_lesions(rng, specs, ctx, fine, hu, lab, contrast=an.contrast,
                                                 pass_ctx=plan is not None)

    # labels at the slice centres, lung region, airway flag resolved
    labels = np.ascontiguousarray(lab[sample])
    base = labels & np.uint8(0xFF ^ _F)
    lung_region = (base == LUNG) | (base == VESSEL)
    flagged = (labels & _F) != 0
    labels = np.where(flagged & (base != LESION), np.uint8(AIRWAY), base).astype(np.uint8)
    labels[~np.broadcast_to(fov_mask, labels.shape)] = OUTSIDE
    lung_region &= fov_mask[None]
    organs = _organs_at(org[sample], labels)
    del org

    uid = series_uid or _series_uid(seed)
    pid = patient_id or f"SYN-{seed}"
    vol_spacing = (step, ps, ps)
    lesion_df = _lesion_table(rng, drawn, labels, sample, origin, vol_spacing, ctx.hilar_z, pid, uid)
    distractors = _distractor_table(rng, trees, ctx, drawn, origin, vol_spacing, uid)

    # the scanner
    del ctx
    if plan is None:
        img = slice_profile(hu, f)
        del hu, lab
        acquire(img, labels, sc, pixel_mm=ps, rng=rng)
    else:
        img = _scanner.reconstruct_slices(hu, fine.z.astype(float), slice_z, plan["thickness_mm"])
        del hu, lab
        _scanner.acquire_domain(img, labels, organs, sc, pixel_mm=ps, spacing=vol_spacing, rng=rng)
    np.clip(img, -1024.0, 3071.0, out=img)
    out = np.rint(img).astype(np.int16)
    del img
    out[:, ~fov_mask] = -1024
    thickness = step if plan is None else plan["thickness_mm"]
    meta = {"synthetic": True, "generator": "lungcad.synthetic", "generator_version": GENERATOR_VERSION,
            "seed": int(seed), "contrast": bool(an.contrast), "slice_thickness": thickness,
            "kernel": "LUNG" if sc.kernel == "sharp" else "STANDARD", "kvp": 120,
            "manufacturer": "lungcad synthetic", "lesions_not_placed": not_placed, **sc.meta()}
    if plan is not None:
        meta.update({"domain": domain, "spacing_between_slices": step,
                     "anatomy": {**an.ext.factors, **plan["factors"]},
                     "disease": _disease.describe_drawn(dis)})
    volume = CTVolume(hu=out, spacing=vol_spacing, origin=origin, direction=np.eye(3), patient_id=pid,
                      series_uid=uid, meta=meta)
    cancer = int(lesion_df["malignant"].sum() > 0) if len(lesion_df) else 0
    return Phantom(volume=volume, labels=labels, lesions=lesion_df, distractors=distractors, cancer=cancer,
                   fov_mask=fov_mask, lung_region=lung_region, organs=organs)


def _series_uid(seed: int) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["lungcad-synthetic", "series", str(int(seed))]))
