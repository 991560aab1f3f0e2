"""The lesions of a phantom: what placement knows of the painted anatomy, each lesion placed
(shrunk, then moved, when it does not fit) and painted, and the two tables of the ground
truth: the lesions (their final location checked against the labels around them) and the
distractors (vessel crossings and bifurcations, which are not lesions).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungcad.synthetic.anatomy import AIRWAY_FLAG, BODY, BONE, LUNG, MEDIASTINUM, OUTSIDE, VESSEL, Anatomy
from lungcad.synthetic.lesion_placement import PlacementContext, place
from lungcad.synthetic.lesion_render import paint_lesion
from lungcad.synthetic.lesion_shapes import LesionGeometry, build_geometry
from lungcad.synthetic.lesion_specs import LESION_COLUMNS, malignancy_probability
from lungcad.synthetic.raster import Grid, label_lut
from lungcad.synthetic.scan_plan import _Frame
from lungcad.synthetic.vessels import find_distractors, sample_points

_F = AIRWAY_FLAG

#: Columns of the distractor table (vessel crossings and bifurcations: not lesions).
DISTRACTOR_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "z", "y", "x", "diameter_mm", "kind"]


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
