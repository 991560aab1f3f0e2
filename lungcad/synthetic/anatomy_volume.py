"""A phantom's anatomy painted into a 3-D grid (world mm): the axial cross-sections of
:mod:`lungcad.synthetic.anatomy_slices` slice by slice, the tubes of
:mod:`lungcad.synthetic.anatomy_tubes` wrapped in mediastinal tissue, the pulmonary vessel
trees (:mod:`lungcad.synthetic.vessels`) and the airways beside the arteries, and the organ
codes the final labels agree with.
"""
from __future__ import annotations

import numpy as np

from lungcad.synthetic.anatomy import AIRWAY_FLAG, BODY, BONE, LUNG, MEDIASTINUM, ORGANS, VESSEL, Anatomy
from lungcad.synthetic.anatomy_slices import paint_slice
from lungcad.synthetic.anatomy_tubes import Tubes
from lungcad.synthetic.raster import Grid, SmoothField as _Texture, label_lut, paint_capsules
from lungcad.synthetic.scan_plan import _Frame
from lungcad.synthetic.vessels import Tree, bronchi_along, grow_tree


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


def _thicker_walls(airways, n_central: int, factor: float):
    """Bronchial wall thickening: the walls of the bronchi (not the trachea and main bronchi)
    ``factor`` times thicker."""
    a, b, ra, rb, wall = airways
    wall = wall.copy()
    wall[n_central:] *= factor
    return a, b, ra, rb, wall


def _organs_at(org: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Organ codes where the final labels agree: the heart in the mediastinum, the abdominal
    organs in the body (not where a vessel, the oesophagus, a bone or a lesion was drawn over)."""
    org = np.ascontiguousarray(org)
    heart = org == ORGANS["heart"]
    org[heart & (labels != MEDIASTINUM)] = 0
    org[~heart & (labels != BODY)] = 0
    return org
