"""One synthetic patient: :func:`generate_phantom` and the :class:`Phantom` it returns.

How a phantom is made:

1. Geometry of the scan (field of view, pixel size, slice step) and of the patient (body,
   thoracic cavity, lungs, mediastinum, heart, spine, ribs...), drawn from the seed.
2. A coarse (about 3 mm) label volume of the thorax, used to spread the targets of the
   vessel trees and to find places for the lesions.
3. The fine volume, painted in world millimetres: axial cross-sections, great vessels, ribs,
   pulmonary vessel trees, trachea and bronchi, then the lesions.  For thick slices the fine
   volume has an odd number of sub-slices per slice, at most 2 mm (or 1.25 pixels) apart.
4. The scanner: the sub-slices are averaged into each slice (partial volume), then in-plane
   blur, an optional sharp-kernel edge enhancement, and correlated noise.

Labels are those of the sub-slice at each slice centre.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungcad.synthetic import disease as _disease
from lungcad.synthetic import domain as _dom
from lungcad.synthetic import scanner as _scanner
from lungcad.synthetic.anatomy import (AIRWAY, AIRWAY_FLAG, BODY, BONE, LESION, LUNG, MEDIASTINUM, ORGANS, OUTSIDE,
                                       VESSEL, Anatomy, Tubes, body_extent, central_airways, draw_anatomy,
                                       draw_anatomy_domain, draw_body_half_width, great_vessels, paint_slice, ribs)
from lungcad.synthetic.lesions import (LESION_COLUMNS, LesionGeometry, PlacementContext, build_geometry,
                                       draw_specs, malignancy_probability, paint_lesion, place)
from lungcad.synthetic.raster import Grid, SmoothField as _Texture, label_lut, paint_capsules
from lungcad.synthetic.scanner import acquire, draw_scanner, slice_profile
from lungcad.synthetic.vessels import Tree, bronchi_along, find_distractors, grow_tree, sample_points
from lungcad.volume import CTVolume

LABELS = {"outside": OUTSIDE, "body": BODY, "bone": BONE, "mediastinum": MEDIASTINUM, "lung": LUNG,
          "vessel": VESSEL, "airway": AIRWAY, "lesion": LESION}

#: Columns of the distractor table (vessel crossings and bifurcations: not lesions).
DISTRACTOR_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "z", "y", "x", "diameter_mm", "kind"]

#: Slice steps (mm) drawn when none is given, and their probabilities.
SLICE_STEPS = (1.0, 1.25, 2.5, 5.0, 8.0)
_STEP_P = np.array([0.15, 0.2, 0.25, 0.25, 0.15])
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
        One row per lesion (:data:`~lungcad.synthetic.lesions.LESION_COLUMNS`).  ``coordX/Y/Z``
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


# ---- helpers --------------------------------------------------------------------------------

@dataclass
class _Frame:
    """Patient frame origin in world mm: body centre (cx, cy) and the lung apex height."""

    cx: float
    cy: float
    z_apex: float

    def to_world(self, uvw) -> np.ndarray:
        return np.asarray(uvw, dtype=float) + np.array([self.cx, self.cy, self.z_apex])


def _check_shape(shape) -> tuple:
    """(slices or None, rows, columns), with at least 32 rows and columns."""
    if len(shape) != 3:
        raise ValueError(f"shape expected (slices or None, rows, columns). Received shape={shape}")
    nz, ny, nx = shape
    if ny is None or nx is None or int(ny) < 32 or int(nx) < 32:
        raise ValueError(f"shape needs at least 32 rows and columns. Received shape={shape}")
    return nz, int(ny), int(nx)


def _draw_geometry(rng, shape, spacing, slice_mm):
    """Shape (z, y, x), spacing (z, y, x) and the field of view of the scan."""
    nz, ny, nx = _check_shape(shape)
    A = draw_body_half_width(rng)
    fov = float(np.clip(2.0 * A + rng.uniform(12.0, 70.0), 300.0, 460.0))
    if spacing is None:
        ps = fov / min(ny, nx)
        if slice_mm is not None:
            step = float(slice_mm)
        elif nz is not None:
            ok = [(s, p) for s, p in zip(SLICE_STEPS, _STEP_P) if 200.0 <= int(nz) * s <= 480.0]
            if ok:
                steps, p = zip(*ok)
                p = np.array(p) / np.sum(p)
                step = float(steps[int(rng.choice(len(steps), p=p))])
            else:
                step = float(np.clip(340.0 / int(nz), 0.5, 10.0))
        else:
            step = float(SLICE_STEPS[int(rng.choice(len(SLICE_STEPS), p=_STEP_P))])
        spacing = (step, ps, ps)
    else:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing expected 3 positive mm values (z, y, x). Received spacing={spacing}")
        if slice_mm is not None:
            spacing = (float(slice_mm),) + spacing[1:]
    if spacing[0] <= 0:
        raise ValueError(f"slice_mm must be > 0. Received slice_mm={slice_mm}")
    if abs(spacing[1] - spacing[2]) > 1e-6:
        raise ValueError(f"in-plane spacing must be square. Received spacing={spacing}")
    fov = min(ny, nx) * spacing[1]
    if fov < 250.0:
        raise ValueError(f"the field of view (rows x pixel size) must be at least 250 mm to hold a chest. "
                         f"Received {min(ny, nx)} x {spacing[1]:.3f} mm = {fov:.0f} mm")
    if nz is None:
        nz = max(8, int(round(float(rng.uniform(300.0, 380.0)) / spacing[0])))
    nz = int(nz)
    if nz < 4:
        raise ValueError(f"shape needs at least 4 slices. Received shape={shape}")
    return (nz, ny, nx), spacing, min(A, 0.5 * fov - 14.0)


def _targets(rng, coarse: Grid, labels: np.ndarray, frame: _Frame, u_m: float, side: int, n: int) -> np.ndarray:
    lung = labels == LUNG
    xs = coarse.x - frame.cx
    side_mask = (xs >= u_m) if side > 0 else (xs < u_m)
    idx = np.flatnonzero(lung & side_mask[None, None, :])
    if len(idx) < 4:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, len(idx) * 4), replace=len(idx) < n)
    zyx = np.stack(np.unravel_index(pick, labels.shape), axis=-1).astype(float)
    zyx += rng.uniform(-0.5, 0.5, zyx.shape)
    return coarse.to_world(zyx)


def _paint_tubes(grid, hu, lab, tubes: Tubes, frame: _Frame, *, hu_allowed, label, label_allowed, r_scale=1.0,
                 r_add=0.0, value=None):
    if len(tubes.a) == 0:
        return
    paint_capsules(grid, hu, lab, frame.to_world(tubes.a), frame.to_world(tubes.b),
                   np.maximum(tubes.ra * r_scale + r_add, 0.3), np.maximum(tubes.rb * r_scale + r_add, 0.3),
                   tubes.hu if value is None else value, hu_allowed=hu_allowed, label=label,
                   label_allowed=label_allowed)


_F = AIRWAY_FLAG
_LUT_GREAT = label_lut([BODY, MEDIASTINUM, LUNG])
_LUT_SHEATH = label_lut([MEDIASTINUM, LUNG])
_LUT_BODY = label_lut([BODY])
_LUT_BONE = label_lut([BONE])
_LUT_VESSEL_HU = label_lut([MEDIASTINUM, LUNG, VESSEL])
_LUT_VESSEL_LAB = label_lut([LUNG, VESSEL])
_AIRWAY_BASE = [BODY, MEDIASTINUM, LUNG, VESSEL]
_LUT_AIRWAY = label_lut(_AIRWAY_BASE + [b | _F for b in _AIRWAY_BASE])


def _paint_airways(grid, hu, lab, a, b, ra, rb, wall, hu_wall):
    """Airway walls, then lumens; every voxel drawn keeps its label with the airway flag set."""
    if len(a) == 0:
        return
    wall = np.broadcast_to(np.asarray(wall, dtype=float), (len(a),))
    paint_capsules(grid, hu, lab, a, b, ra + wall, rb + wall, hu_wall, hu_allowed=_LUT_AIRWAY,
                   label_allowed=_LUT_AIRWAY, flag=_F)
    paint_capsules(grid, hu, lab, a, b, ra, rb, -1000.0, hu_allowed=_LUT_AIRWAY, label_allowed=_LUT_AIRWAY,
                   flag=_F)


def _bridges(t: Tubes, an: Anatomy, step_mm: float = 4.0) -> Tubes:
    """Mediastinal tissue around the great vessels: capsules from points along each vessel to
    the midline, with the vessel radius plus a sheath, so that the vessels sit inside the
    mediastinum instead of floating in the lung."""
    out = Tubes.empty()
    for a, b, ra, rb in zip(t.a, t.b, t.ra, t.rb):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / step_mm)) + 1)
        for f in np.linspace(0.0, 1.0, n):
            p = a + f * (b - a)
            r = ra + f * (rb - ra) + an.sheath
            q = np.array([an.u_m, p[1], p[2]])
            out.add([p, q], [r, r], an.hu["med_fill"], "bridge")
    return out


def _paint_anatomy(an: Anatomy, grid: Grid, frame: _Frame, great: Tubes, cent: Tubes, bones: tuple | None,
                   texture: _Texture | None, org: np.ndarray | None = None):
    """Cross-sections slice by slice, then the great vessels and central airways wrapped in
    mediastinal tissue, then ribs and clavicles.  Returns (hu float32, labels uint8); the
    :data:`ORGANS` codes go to ``org`` when given."""
    hu = np.empty(grid.shape, dtype=np.float32)
    lab = np.empty(grid.shape, dtype=np.uint8)
    u = grid.x - np.float32(frame.cx)
    v = grid.y - np.float32(frame.cy)
    for k, z in enumerate(grid.z):
        paint_slice(an, u, v, float(z) - frame.z_apex, hu[k], lab[k],
                    None if texture is None else texture.slice(float(z)), None if org is None else org[k])
    sheath = an.hu["med_fill"]
    _paint_tubes(grid, hu, lab, _bridges(great, an), frame, hu_allowed=_LUT_SHEATH, label=MEDIASTINUM,
                 label_allowed=_LUT_SHEATH, value=sheath)
    _paint_tubes(grid, hu, lab, cent, frame, hu_allowed=_LUT_SHEATH, label=MEDIASTINUM,
                 label_allowed=_LUT_SHEATH, r_add=an.trachea[3] + 0.6 * an.sheath, value=sheath)
    _paint_tubes(grid, hu, lab, great, frame, hu_allowed=_LUT_GREAT, label=MEDIASTINUM, label_allowed=_LUT_GREAT)
    if bones is not None:
        bone, cart = bones
        _paint_tubes(grid, hu, lab, bone, frame, hu_allowed=_LUT_BODY, label=BONE, label_allowed=_LUT_BODY)
        _paint_tubes(grid, hu, lab, bone, frame, hu_allowed=_LUT_BONE, label=None, label_allowed=None,
                     r_add=-1.5, value=an.hu["marrow"])
        _paint_tubes(grid, hu, lab, cart, frame, hu_allowed=_LUT_BODY, label=None, label_allowed=None)
    return hu, lab


def _contacts(labels: np.ndarray, sl, mask: np.ndarray, spacing, mm: float = 2.0) -> set:
    """Label values within ``mm`` of a mask (at least one voxel along every axis)."""
    r = [max(1, int(np.ceil(mm / s - 1e-6))) for s in spacing]
    lo = [max(s.start - ri, 0) for s, ri in zip(sl, r)]
    hi = [min(s.stop + ri, n) for s, ri, n in zip(sl, r, labels.shape)]
    big = np.zeros([h - l for l, h in zip(lo, hi)], dtype=bool)
    big[tuple(slice(s.start - l, s.stop - l) for s, l in zip(sl, lo))] = mask
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    ball = (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= \
        max(mm, max(spacing) + 1e-6) ** 2
    dil = ndi.binary_dilation(big, structure=ball) & ~big
    return set(np.unique(labels[tuple(slice(l, h) for l, h in zip(lo, hi))][dil]).tolist())


def _final_location(intended: str, touch: set, in_hilar_band: bool) -> str:
    wall = bool(touch & {BODY, BONE})
    med = MEDIASTINUM in touch
    vessel = VESSEL in touch
    if intended in ("hilar", "mediastinal") and med:
        return intended
    if intended == "juxta-pleural" and wall:
        return intended
    if intended == "juxta-vascular" and vessel and not wall and not med:
        return intended
    if med:
        return "hilar" if in_hilar_band else "mediastinal"
    if wall:
        return "juxta-pleural"
    return "isolated"


# ---- the generator ------------------------------------------------------------------------------

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
        :func:`~lungcad.synthetic.lesions.draw_specs`).
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


def _draw_domain(rng, domain, shape, spacing, slice_mm, *, contrast=None, noise_hu=None, psf_mm=None):
    """Scanner, anatomy and scan geometry of a randomised phantom, the first draws of its seed."""
    sc = _draw_scanner_domain(rng, domain, contrast=contrast, noise_hu=noise_hu, psf_mm=psf_mm)
    an = draw_anatomy_domain(rng, domain=domain, contrast=sc.contrast,
                             blood_hu=sc.blood_hu if sc.contrast and sc.blood_hu > 0 else None)
    shape, spacing, sc, plan = _draw_geometry_domain(rng, an, sc, shape, spacing, slice_mm)
    return sc, an, shape, spacing, plan


def draw_domain_factors(seed: int, *, domain: str, shape=(None, 512, 512), spacing=None,
                        slice_mm: float | None = None) -> dict:
    """The factors :func:`generate_phantom` would draw for ``seed`` in a randomised ``domain``
    (anatomy, scan range and field of view, scanner), without painting anything: cheap.

    Returns a JSON-ready dict: ``anatomy`` (as in ``volume.meta["anatomy"]``), ``scanner``
    (the scanner's meta), ``shape`` and ``spacing``.
    """
    if _dom.check_domain(domain) == "default":
        raise ValueError("draw_domain_factors expected domain 'randomized' or 'shifted'. Received 'default'")
    rng = np.random.default_rng(seed)
    sc, an, shape, spacing, plan = _draw_domain(rng, domain, shape, spacing, slice_mm)
    return {"anatomy": {**an.ext.factors, **plan["factors"]}, "scanner": sc.meta(), "shape": list(shape),
            "spacing": list(spacing)}


def _organs_at(org: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Organ codes where the final labels agree: the heart in the mediastinum, the abdominal
    organs in the body (not where a vessel, the oesophagus, a bone or a lesion was drawn over)."""
    org = np.ascontiguousarray(org)
    heart = org == ORGANS["heart"]
    org[heart & (labels != MEDIASTINUM)] = 0
    org[~heart & (labels != BODY)] = 0
    return org


def _thicker_walls(airways, n_central: int, factor: float):
    """Bronchial wall thickening: the walls of the bronchi (not the trachea and main bronchi)
    ``factor`` times thicker."""
    a, b, ra, rb, wall = airways
    wall = wall.copy()
    wall[n_central:] *= factor
    return a, b, ra, rb, wall


def _draw_scanner_domain(rng, domain: str, *, contrast, noise_hu, psf_mm):
    """The scanner of a randomised domain, with the arguments that force a part of it."""
    sc = _scanner.draw_scanner_domain(rng, domain)
    if contrast is not None and bool(contrast) != sc.contrast:
        blood = _dom.band_uniform(rng, _dom.RANDOMIZED.acquisition.contrast_blood_hu) if contrast else 0.0
        sc = dataclasses.replace(sc, contrast=bool(contrast), blood_hu=blood)
    if noise_hu is not None:
        sc = dataclasses.replace(sc, noise_hu=float(noise_hu))
    if psf_mm is not None:
        sc = dataclasses.replace(sc, psf_mm=float(psf_mm))
    return sc


def _draw_geometry_domain(rng, an: Anatomy, sc, shape, spacing, slice_mm):
    """Shape, spacing and scan plan of a randomised scan: a field of view that fits the body
    (arms and breasts included; cut at the sides with ``fov_cut_p``), the slice increment and
    thickness of the scanner (``slice_mm`` or ``spacing[0]`` force both), and the scan range:
    from the apex or from the neck, to the upper abdomen or to the lung bases."""
    R = _dom.RANDOMIZED.anatomy
    nz, ny, nx = _check_shape(shape)
    half, front, back = body_extent(an)
    fov = 2.0 * max(half, front + 8.0, back + 70.0 if an.table else back) + float(rng.uniform(10.0, 50.0))
    cut = _dom.band_uniform(rng, R.fov_cut_mm) if rng.random() < R.fov_cut_p else 0.0
    if cut > 0.0:
        fov = min(fov, 2.0 * (an.A - cut))
    fov = float(np.clip(fov, 250.0, R.fov_max_mm))
    thickness, inc = sc.slice_thickness_mm, sc.increment_mm
    if spacing is None:
        ps = fov / min(ny, nx)
        if slice_mm is not None:
            thickness = inc = float(slice_mm)
    else:
        spacing = tuple(float(x) for x in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing expected 3 positive mm values (z, y, x). Received spacing={spacing}")
        if abs(spacing[1] - spacing[2]) > 1e-6:
            raise ValueError(f"in-plane spacing must be square. Received spacing={spacing}")
        ps = spacing[1]
        thickness = inc = float(slice_mm if slice_mm is not None else spacing[0])
        if min(ny, nx) * ps < 250.0:
            raise ValueError(f"the field of view (rows x pixel size) must be at least 250 mm to hold a chest. "
                             f"Received {min(ny, nx)} x {ps:.3f} mm = {min(ny, nx) * ps:.0f} mm")
    if not inc > 0:
        raise ValueError(f"slice_mm must be > 0. Received slice_mm={slice_mm}")
    sc = dataclasses.replace(sc, slice_thickness_mm=float(thickness), increment_mm=float(inc))
    neck = bool(rng.random() < R.start_at_neck_p)
    bases = bool(rng.random() < R.stop_at_bases_p)
    top = _dom.band_uniform(rng, R.neck_mm if neck else R.top_margin_mm)          # above the apex
    bottom = -an.H + (_dom.band_uniform(rng, R.bases_cut_mm) if bases
                      else -_dom.band_uniform(rng, R.abdomen_mm))                   # w of the last slice
    if nz is None:
        nz = max(8, int(round((top - bottom) / inc)) + 1)
    nz = int(nz)
    if nz < 4:
        raise ValueError(f"shape needs at least 4 slices. Received shape={shape}")
    fov_r = 0.5 * min(ny, nx) * ps
    plan = {"thickness_mm": float(thickness), "top_w": top, "bottom_w": bottom, "anchor": "bottom" if bases else "top",
            "fov_r": fov_r,
            "factors": {"fov_mm": round(2.0 * fov_r, 2), "fov_cut_mm": round(cut, 2), "start_at_neck": neck,
                        "stop_at_bases": bases, "scan_top_above_apex_mm": round(top, 2),
                        "scan_bottom_w_mm": round(bottom, 2)}}
    return (nz, ny, nx), (float(inc), float(ps), float(ps)), sc, plan


def _scan_centre(rng, an: Anatomy, ny: int, nx: int, ps: float):
    """In-plane origin (x, y) of the scan and the body centre (cx, cy) in it, world mm."""
    ox = -0.5 * nx * ps + float(rng.uniform(-10.0, 10.0))
    oy = -0.5 * ny * ps + float(rng.uniform(-10.0, 10.0))
    cx = ox + 0.5 * nx * ps + float(rng.uniform(-8.0, 8.0))
    cy = oy + 0.5 * ny * ps - 0.5 * (an.Bp - an.Ba) + float(rng.uniform(-8.0, 8.0)) - 6.0
    return ox, oy, cx, cy


def _place_scan_domain(rng, an: Anatomy, shape, spacing, plan):
    """World origin, patient frame and field-of-view mask of a randomised scan.  With the
    number of slices given, the scan keeps its start (its end when it stops at the bases)."""
    nz, ny, nx = shape
    step, ps = spacing[0], spacing[1]
    ox, oy, cx, cy = _scan_centre(rng, an, ny, nx, ps)
    oz = float(rng.uniform(-450.0, 50.0))
    length = (nz - 1) * step
    z_apex = oz + length - plan["top_w"] if plan["anchor"] == "top" else oz - plan["bottom_w"]
    fov_r = plan["fov_r"] * float(rng.uniform(0.97, 1.0))
    xs = ps * np.arange(nx) - 0.5 * (nx - 1) * ps
    ys = ps * np.arange(ny) - 0.5 * (ny - 1) * ps
    fov_mask = (xs[None, :] ** 2 + ys[:, None] ** 2) <= fov_r ** 2
    return (ox, oy, oz), _Frame(cx, cy, z_apex), fov_mask


def _place_scan(rng, an: Anatomy, shape, spacing):
    """World origin of the scan, the patient frame in it, and the field-of-view mask."""
    nz, ny, nx = shape
    step, ps = spacing[0], spacing[1]
    ox, oy, cx, cy = _scan_centre(rng, an, ny, nx, ps)
    length = (nz - 1) * step
    oz = float(rng.uniform(-450.0, 50.0))
    top = oz + length
    if length >= an.H + 40.0:
        z_apex = top - float(rng.uniform(10.0, min(45.0, length - an.H - 25.0)))
    else:  # the scan covers part of the lungs (or just all of them)
        lo, hi = sorted((length - an.H - 10.0, 10.0))
        z_apex = top - float(rng.uniform(lo, hi))
    fov_r = 0.5 * min(ny, nx) * ps * float(rng.uniform(0.97, 1.0))
    xs = ps * np.arange(nx) - 0.5 * (nx - 1) * ps
    ys = ps * np.arange(ny) - 0.5 * (ny - 1) * ps
    fov_mask = (xs[None, :] ** 2 + ys[:, None] ** 2) <= fov_r ** 2
    return (ox, oy, oz), _Frame(cx, cy, z_apex), fov_mask


def _grow_trees(rng, an: Anatomy, coarse: Grid, clab, frame: _Frame, vessel_density: float) -> list[Tree]:
    """Arteries from each hilum and veins from the left atrium, filling each lung."""
    lung_vox = float(np.prod(coarse.spacing)) * 1e-6
    trees: list[Tree] = []
    xs_c = coarse.x - frame.cx
    for side in (-1, 1):
        side_mask = (xs_c >= an.u_m) if side > 0 else (xs_c < an.u_m)
        vol_l = float(((clab == LUNG) & side_mask[None, None, :]).sum()) * lung_vox
        n_t = int(np.clip(vessel_density * 1000.0 * vol_l, 40, 6000))
        for kind, root, r_root in (("artery", frame.to_world(an.hilum(side)), float(rng.uniform(6.0, 8.0))),
                                   ("vein", frame.to_world(an.atrium(side)), float(rng.uniform(5.0, 7.0)))):
            tg = _targets(rng, coarse, clab, frame, an.u_m, side, n_t)
            if len(tg) < 4:
                continue
            trees.append(grow_tree(rng, root, tg, r_root=r_root, r_min=float(rng.uniform(0.35, 0.5)),
                                   kind=kind, side=side, first_step=float(rng.uniform(0.3, 0.45))))
    return trees


def _airway_tree(an: Anatomy, cent: Tubes, trees: list[Tree], frame: _Frame):
    """Trachea and main bronchi, their link to each hilum, and the bronchi beside the arteries:
    (a, b, lumen radius at a, at b, wall thickness), world mm."""
    aw_a, aw_b = [frame.to_world(cent.a)], [frame.to_world(cent.b)]
    aw_ra, aw_rb = [cent.ra], [cent.rb]
    for tr in trees:
        if tr.kind != "artery":
            continue
        ba, bb, la, lb = bronchi_along(tr, side_vector=(0.0, 1.0, 0.0))
        if len(ba) == 0:
            continue
        start = frame.to_world(an.bronchus_hilum(tr.side))
        aw_a += [start[None, :], ba]
        aw_b += [ba[:1], bb]
        aw_ra += [np.array([0.6 * an.trachea[2]]), la]
        aw_rb += [np.array([la[0]]), lb]
    a, b = np.vstack(aw_a), np.vstack(aw_b)
    ra, rb = np.concatenate(aw_ra), np.concatenate(aw_rb)
    wall = np.maximum(0.5, 0.2 * np.maximum(ra, rb))
    wall[: len(cent.a)] = an.trachea[3]
    return a, b, ra, rb, wall


def _placement_context(an: Anatomy, coarse: Grid, clab, fine: Grid, lab, trees, frame: _Frame) -> PlacementContext:
    pts, rad, ti, si = sample_points(trees, step_mm=1.5, r_min=1.0)
    dirs = np.zeros_like(pts)
    for t_i, tr in enumerate(trees):
        m = ti == t_i
        d = tr.b[si[m]] - tr.a[si[m]]
        dirs[m] = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    wall_like = np.isin(clab, [BODY, BONE, OUTSIDE])
    d_wall, i_wall = ndi.distance_transform_edt(~wall_like, sampling=coarse.spacing, return_indices=True)
    d_med, i_med = ndi.distance_transform_edt(clab != MEDIASTINUM, sampling=coarse.spacing, return_indices=True)
    z_car = frame.z_apex + an.w_car
    return PlacementContext(coarse=coarse, coarse_labels=clab, d_wall=d_wall, i_wall=i_wall, d_med=d_med,
                            i_med=i_med, fine=fine, fine_labels=lab,
                            z_range=(float(fine.z[0]), float(fine.z[-1])),
                            hilar_z=(z_car - 60.0, z_car + 10.0), vessel_pts=pts, vessel_r=rad, vessel_dir=dirs)


def _place_and_paint_lesions(rng, specs, ctx: PlacementContext, fine: Grid, hu, lab, *, contrast: bool,
                             pass_ctx: bool = False):
    """Place each lesion (shrinking it, then moving it, when it does not fit) and draw it.

    Returns ([(spec, geometry, drawn info)], number not placed).
    """
    drawn = []
    not_placed = 0
    lung_allowed = [LUNG, VESSEL, LUNG | _F, VESSEL | _F]
    for spec in specs:
        result = None
        for attempt in range(6):
            geom0 = build_geometry(rng, spec, np.zeros(3), contrast=contrast, **({"ctx": ctx} if pass_ctx else {}))
            c = place(rng, ctx, spec, geom0.extent / (0.5 * spec.diameter_mm))
            if c is not None:
                result = (spec, _translate(geom0, c))
                break
            if attempt in (2, 4):
                new_loc = "juxta-pleural" if spec.location != "juxta-pleural" else "isolated"
                spec = dataclasses.replace(spec, location=new_loc)
            else:
                lo = 30.0 if spec.kind == "mass" else 3.0 if spec.diameter_mm >= 3.0 else 1.0
                spec = dataclasses.replace(spec, diameter_mm=max(lo, 0.85 * spec.diameter_mm))
        if result is None:
            not_placed += 1
            continue
        spec, geom = result
        allowed = lung_allowed + ([MEDIASTINUM, MEDIASTINUM | _F] if spec.location in ("hilar", "mediastinal")
                                  else [])
        info = paint_lesion(fine, hu, lab, geom, allowed=allowed)
        if info is None:
            not_placed += 1
            continue
        ctx.placed.append((info["centre"], geom.extent))
        drawn.append((spec, geom, info))
    return drawn, not_placed


def _lesion_table(rng, drawn, labels, sample, origin, spacing, hilar_z, pid: str, uid: str) -> pd.DataFrame:
    """One row per drawn lesion; the location is checked against the labels around it.
    ``sample``: the fine sub-slice index of each slice."""
    rows = []
    for k, (spec, geom, info) in enumerate(drawn):
        c = info["centre"]
        zyx = _world_to_voxel(c, origin, spacing)
        sl = info["sl"]
        ks = np.nonzero((sample >= sl[0].start) & (sample < sl[0].stop))[0]
        keep = [int(sample[j]) for j in ks]
        touch = set()
        if keep:
            cz = slice(int(ks[0]), int(ks[-1]) + 1)
            cmask = info["mask"][[i - sl[0].start for i in keep]]
            if cmask.any():
                touch = _contacts(labels, (cz, sl[1], sl[2]), cmask, spacing)
        location = _final_location(spec.location, touch, hilar_z[0] <= c[2] <= hilar_z[1]) \
            if touch else spec.location
        d_eq = float((6.0 * info["volume_mm3"] / np.pi) ** (1.0 / 3.0))
        p = malignancy_probability(d_eq, spec.texture, spec.shape)
        rows.append({"lesion_id": k + 1, "patient_id": pid, "seriesuid": uid, "coordX": c[0], "coordY": c[1],
                     "coordZ": c[2], "z": zyx[0], "y": zyx[1], "x": zyx[2], "diameter_mm": d_eq,
                     "intended_diameter_mm": spec.diameter_mm, "volume_mm3": info["volume_mm3"],
                     "kind": spec.kind, "texture": spec.texture, "location": location, "shape": spec.shape,
                     "malignancy_prob": p, "malignant": int(rng.random() < p)})
    return pd.DataFrame(rows, columns=LESION_COLUMNS)


def _distractor_table(rng, trees, ctx: PlacementContext, drawn, origin, spacing, uid: str) -> pd.DataFrame:
    """Vessel bifurcations and crossings inside the scanned lungs, away from the lesions."""
    rows = []
    lung_lut = label_lut([LUNG, VESSEL, LUNG | _F, VESSEL | _F])
    z0, z1 = ctx.z_range
    for xyz, diam, kind in find_distractors(trees, r_min=1.0, rng=rng):
        if not (z0 <= xyz[2] <= z1) or not lung_lut[ctx.fine_label(xyz)]:
            continue
        if any(np.linalg.norm(xyz - info["centre"]) < geom.extent + 5.0 for _, geom, info in drawn):
            continue
        zyx = _world_to_voxel(xyz, origin, spacing)
        rows.append({"seriesuid": uid, "coordX": xyz[0], "coordY": xyz[1], "coordZ": xyz[2],
                     "z": zyx[0], "y": zyx[1], "x": zyx[2], "diameter_mm": diam, "kind": kind})
    return pd.DataFrame(rows, columns=DISTRACTOR_COLUMNS)


def _translate(g: LesionGeometry, c) -> LesionGeometry:
    c = np.asarray(c, dtype=float)
    return dataclasses.replace(g, centre=g.centre + c, spheres=[(p + c, r) for p, r in g.spheres],
                               spikes=[(a + c, b + c, r0, r1) for a, b, r0, r1 in g.spikes],
                               halo=[(p + c, r) for p, r in g.halo],
                               core=None if g.core is None else (g.core[0] + c, g.core[1]))


def _world_to_voxel(xyz, origin, spacing) -> np.ndarray:
    return ((np.asarray(xyz, dtype=float) - np.asarray(origin)) / np.asarray(spacing[::-1]))[::-1]


def _series_uid(seed: int) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["lungcad-synthetic", "series", str(int(seed))]))
