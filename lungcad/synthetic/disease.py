"""Lung disease that is not a nodule, for the randomised domains of the phantom generator.

Every disease is drawn per patient with its probability and severity from
:data:`lungcad.synthetic.domain.RANDOMIZED` ``.disease`` (:func:`draw_disease`), and painted in
world millimetres on the fine grid, after the vessels and airways and before the lesions
(:func:`paint_disease`), so that it does not depend on the voxel size:

``emphysema``
    Clustered low-attenuation areas (-1000 to -950 HU), likelier toward the apex.
``reticulation``
    Fibrosis: a fine net of lines in a subpleural, basal band, with honeycombing (clustered
    subpleural cysts with walls) in half of the patients.
``consolidation``
    Dense lobar or segmental regions; the bronchi through them stay air (air bronchograms).
``atelectasis``
    A dependent (posterior, basal) density, and plate-like bands.
``effusion``
    A dependent crescent of fluid (0-20 HU) in the posterior costophrenic region, one side or
    both, that displaces the lung.
``pleural_plaques``
    Flat plaques on the chest wall and the diaphragm, calcified or not.
``scars``
    Linear scars running to the pleura.
``bronchial_wall_thickening``
    Thicker walls of the bronchi (applied when the airways are painted).
``mucus_plugging``
    Bronchi of one region filled with soft tissue, and tree-in-bud clusters at the periphery.
``granulomas``
    Calcified granulomas, 2-8 mm: benign *lesions*, added to the lesion table as calcified
    nodules (:func:`granuloma_specs`), whose malignancy is 0.02.

Labels: consolidation, atelectasis, emphysema, fibrosis, scars and mucus keep the lung's labels
(the lung mask counts them as lung); effusion and the plaques are ``BODY``, outside the lung.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lungcad.synthetic.anatomy import AIRWAY_FLAG, BODY, BONE, LUNG, MEDIASTINUM, OUTSIDE, VESSEL
from lungcad.synthetic.domain import RANDOMIZED, Band, band_uniform
from lungcad.synthetic.lesion_specs import LesionSpec
from lungcad.synthetic.raster import SmoothField, label_lut, paint, paint_capsules

DISEASES = ("emphysema", "reticulation", "consolidation", "atelectasis", "effusion", "pleural_plaques", "scars",
            "bronchial_wall_thickening", "mucus_plugging", "granulomas")

_F = AIRWAY_FLAG
#: Lung parenchyma and its vessels, not the airways (their lumens stay air: air bronchograms).
_PAR = label_lut([LUNG, VESSEL])
_LUNGISH = label_lut([LUNG, VESSEL, LUNG | _F, VESSEL | _F])
_LUMEN = label_lut([b | _F for b in (BODY, MEDIASTINUM, LUNG, VESSEL)])
_WALL = (BODY, BONE, OUTSIDE)


def _ri(rng, b: Band) -> int:
    return int(rng.integers(int(b.lo), int(b.hi) + 1))


def _r(x, n=2):
    return round(float(x), n)


def draw_disease(rng: np.random.Generator, *, force: Mapping[str, bool] | None = None) -> dict:
    """Which diseases one patient has, and how severe: ``{name: params dict or None}``.

    ``force`` maps names of :data:`DISEASES` to True (always) or False (never); the presence of
    every disease is drawn in any case, so that forcing one does not change the others.
    """
    force = dict(force or {})
    unknown = set(force) - set(DISEASES)
    if unknown:
        raise ValueError(f"disease expected names among {DISEASES}. Received {sorted(unknown)}")
    D = RANDOMIZED.disease
    p = {"emphysema": D.emphysema_p, "reticulation": D.reticulation_p, "consolidation": D.consolidation_p,
         "atelectasis": D.atelectasis_p, "effusion": D.effusion_p, "pleural_plaques": D.pleural_plaques_p,
         "scars": D.scars_p, "bronchial_wall_thickening": D.bronchial_wall_thickening_p,
         "mucus_plugging": D.mucus_plugging_p, "granulomas": D.granulomas_p}
    on = {n: bool(rng.random() < p[n]) for n in DISEASES}
    on.update({n: bool(v) for n, v in force.items()})
    bu = band_uniform
    out = {}
    for n in DISEASES:
        if not on[n]:
            out[n] = None
        elif n == "emphysema":
            out[n] = {"fraction": _r(bu(rng, D.emphysema_fraction), 4),
                      "upper_weight": _r(bu(rng, D.emphysema_upper_weight), 3)}
        elif n == "reticulation":
            out[n] = {"depth_mm": _r(bu(rng, D.reticulation_depth_mm)),
                      "height_mm": _r(bu(rng, D.reticulation_height_mm)), "hu": _r(bu(rng, D.reticulation_hu), 1),
                      "honeycombing": bool(rng.random() < D.honeycombing_p), "cysts": int(rng.integers(15, 60))}
        elif n == "consolidation":
            out[n] = {"regions": [{"size_mm": _r(bu(rng, D.consolidation_mm)), "hu": _r(bu(rng, D.consolidation_hu), 1)}
                                  for _ in range(_ri(rng, D.consolidations))]}
        elif n == "atelectasis":
            out[n] = {"depth_mm": _r(bu(rng, D.atelectasis_depth_mm)), "hu": _r(bu(rng, D.atelectasis_hu), 1),
                      "plates": _ri(rng, D.atelectasis_plates)}
        elif n == "effusion":
            side = ("right", "left", "both")[int(rng.integers(3))]
            out[n] = {"side": side, "depth_mm": [_r(bu(rng, D.effusion_depth_mm)) for _ in range(2)],
                      "hu": _r(bu(rng, D.effusion_hu), 1)}
        elif n == "pleural_plaques":
            out[n] = {"plaques": [{"size_mm": _r(bu(rng, D.plaque_mm)),
                                   "thickness_mm": _r(bu(rng, D.plaque_thickness_mm)),
                                   "calcified": (c := bool(rng.random() < D.plaque_calcified_p)),
                                   "hu": _r(bu(rng, D.plaque_calcified_hu if c else D.plaque_hu), 1),
                                   "diaphragm": bool(rng.random() < 0.3)}
                                  for _ in range(_ri(rng, D.plaques))]}
        elif n == "scars":
            out[n] = {"scars": [{"length_mm": _r(bu(rng, D.scar_length_mm)), "radius_mm": _r(bu(rng, D.scar_radius_mm)),
                                 "hu": _r(bu(rng, D.scar_hu), 1)} for _ in range(_ri(rng, D.scars))]}
        elif n == "bronchial_wall_thickening":
            out[n] = {"factor": _r(bu(rng, D.bronchial_wall_factor), 3)}
        elif n == "mucus_plugging":
            out[n] = {"fraction": _r(bu(rng, D.mucus_fraction), 3), "hu": _r(bu(rng, D.mucus_hu), 1),
                      "tree_in_bud_clusters": _ri(rng, D.tree_in_bud_clusters)}
        else:  # granulomas
            k = _ri(rng, D.granulomas)
            out[n] = {"diameters_mm": [_r(bu(rng, D.granuloma_mm)) for _ in range(k)],
                      "juxta_pleural": [bool(rng.random() < 0.3) for _ in range(k)]}
    return out


def describe_drawn(dis: dict) -> dict:
    """The drawn diseases, JSON-ready (absent ones as False)."""
    return {n: (dis.get(n) or False) for n in DISEASES}


def granuloma_specs(dis: dict) -> list:
    """The calcified granulomas as lesion specs: round calcified nodules (malignancy 0.02)."""
    g = dis.get("granulomas")
    if not g:
        return []
    return [LesionSpec("nodule", "calcified", "juxta-pleural" if jp else "isolated", "round", float(d))
            for d, jp in zip(g["diameters_mm"], g["juxta_pleural"])]


# ---- painting ---------------------------------------------------------------------------------

class _Sampler:
    """Coarse-grid maps (distance to the chest wall) read at the fine grid's voxels."""

    def __init__(self, ctx):
        c, f = ctx.coarse, ctx.fine
        cs = np.asarray(c.spacing, dtype=float)

        def idx(world, o, s, n):
            return np.clip(np.rint((np.asarray(world, dtype=float) - o) / s).astype(np.intp), 0, n - 1)

        self.iz = idx(f.z, c.origin[2], cs[0], c.shape[0])
        self.iy = idx(f.y, c.origin[1], cs[1], c.shape[1])
        self.ix = idx(f.x, c.origin[0], cs[2], c.shape[2])
        self.d_wall = ctx.d_wall

    def wall(self, k: int) -> np.ndarray:
        return self.d_wall[self.iz[k]][np.ix_(self.iy, self.ix)].astype(np.float32)


def _lung_points(rng, ctx, n: int, where=None, tries: int = 40) -> np.ndarray:
    """Up to ``n`` random world points in the lung (coarse lung voxels, jittered, that the fine
    labels confirm), optionally restricted by a coarse boolean mask ``where``."""
    m = ctx.coarse_labels == LUNG
    z0, z1 = ctx.z_range
    zc = ctx.coarse.z
    m &= ((zc >= z0 + 3.0) & (zc <= z1 - 3.0))[:, None, None]
    if where is not None:
        m &= where
    idx = np.flatnonzero(m)
    out = []
    if len(idx) == 0:
        return np.zeros((0, 3))
    for k in rng.choice(idx, size=min(len(idx), n * tries // 4 + n), replace=len(idx) < n):
        p = ctx.coarse.to_world(np.array(np.unravel_index(k, m.shape), dtype=float))
        p = p + rng.uniform(-0.5, 0.5, 3) * np.asarray(ctx.coarse.spacing[::-1])
        if ctx.in_lung(p):
            out.append(p)
            if len(out) >= n:
                break
    return np.asarray(out).reshape(-1, 3)


def _wall_point(ctx, p):
    """The pleura nearest to lung point ``p``: (point on the boundary, unit normal toward the
    wall), or None."""
    ci = tuple(np.clip(np.rint(ctx.coarse.to_index(p)).astype(int), 0, np.array(ctx.coarse.shape) - 1))
    q = ctx.coarse.to_world(ctx.i_wall[(slice(None),) + ci].astype(float))
    n = q - p
    nn = float(np.linalg.norm(n))
    if nn < 1e-6:
        return None
    n /= nn
    cs = max(ctx.coarse.spacing)
    b = ctx.ray_to(p, n, _WALL, max_mm=nn + 3.0 * cs)
    return None if b is None else (b, n)


def _orthonormal(n):
    n = np.asarray(n, dtype=float) / np.linalg.norm(n)
    t = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    t /= np.linalg.norm(t)
    return t, np.cross(n, t), n


def paint_ellipsoid(grid, hu, lab, centre, axes, radii, value, *, hu_allowed=None, label=None,
                    label_allowed=None) -> None:
    """Paint a solid ellipsoid (world ``centre``, three orthonormal ``axes`` with their ``radii``
    in mm) with a partial-volume edge about one voxel wide."""
    c = np.asarray(centre, dtype=float)
    axes = np.asarray(axes, dtype=float)
    radii = np.asarray(radii, dtype=float)
    edge = grid.edge_mm
    ext = np.sqrt(((axes * radii[:, None]) ** 2).sum(axis=0)) + edge
    sl = grid.box(c - ext, c + ext)
    if sl is None:
        return
    zc, yc, xc = grid.coords(sl)
    dx = (xc - np.float32(c[0]))[None, None, :]
    dy = (yc - np.float32(c[1]))[None, :, None]
    dz = (zc - np.float32(c[2]))[:, None, None]
    q = np.zeros((len(zc), len(yc), len(xc)), dtype=np.float32)
    for ax, r in zip(axes, radii):
        t = dx * np.float32(ax[0] / r) + dy * np.float32(ax[1] / r) + dz * np.float32(ax[2] / r)
        q += t * t
    d = (np.sqrt(q) - 1.0) * np.float32(radii.min())      # approximate signed distance (mm)
    occ = np.clip(0.5 - d / edge, 0.0, 1.0).astype(np.float32)
    paint(hu, lab, sl, occ, value, hu_allowed=hu_allowed, label=label, label_allowed=label_allowed)


def paint_disease(rng: np.random.Generator, dis: dict, ctx, hu: np.ndarray, lab: np.ndarray, *, z_apex: float,
                  lung_height_mm: float, x_mid: float, airways=None) -> None:
    """Paint the diseases of ``dis`` (from :func:`draw_disease`) into the fine volume, in place.

    ``ctx`` is the lesion :class:`~lungcad.synthetic.lesion_placement.PlacementContext` (coarse labels,
    distance to the chest wall, the fine grid and labels); ``z_apex`` the world z of the lung
    apex, ``lung_height_mm`` the apex-to-recess height, ``x_mid`` the world x of the midline;
    ``airways`` (a, b, lumen radius a, radius b), world mm, for mucus plugging.
    """
    fine = ctx.fine
    H = float(lung_height_mm)
    smp = _Sampler(ctx)
    em, ret, atel, eff = (dis.get(n) for n in ("emphysema", "reticulation", "atelectasis", "effusion"))
    # 3-D solid shapes first, then the slice-wise fields, the effusion last (it displaces the lung)
    for reg in (dis.get("consolidation") or {}).get("regions", []):
        _consolidation(rng, ctx, hu, lab, reg)
    if atel:
        _plates(rng, ctx, hu, lab, atel, z_apex, H)
    for sc in (dis.get("scars") or {}).get("scars", []):
        _scar(rng, ctx, hu, lab, sc)
    if dis.get("mucus_plugging"):
        _mucus(rng, ctx, hu, lab, dis["mucus_plugging"], airways)
    if ret and ret["honeycombing"]:
        _honeycombing(rng, ctx, hu, lab, ret, z_apex, H)
    fields = {}
    if em:
        fields["em_c"] = SmoothField(rng, fine, cell_mm=22.0)
        fields["em_f"] = SmoothField(rng, fine, cell_mm=4.0)
        fields["em_v"] = SmoothField(rng, fine, cell_mm=3.0)
        em_thr = _emphysema_threshold(em, fields, fine, lab, z_apex, H)
    if ret:
        fields["net"] = SmoothField(rng, fine, cell_mm=5.0)
    if eff:
        fields["eff"] = SmoothField(rng, fine, cell_mm=8.0)
    ps = fine.spacing[1]
    xs = fine.x
    left = (xs >= x_mid)[None, :]
    for k, z in enumerate(fine.z):
        w = float(z) - z_apex
        if w > 5.0 or w < -H - 5.0:
            continue
        hk, lk = hu[k], lab[k]
        par = _PAR[lk]
        if not par.any():
            continue
        if em:
            score = _emphysema_score(em, fields, float(z), w, H)
            m = par & (lk == LUNG) & (score > em_thr)
            if m.any():
                lo, hi = RANDOMIZED.disease.emphysema_hu.lo, RANDOMIZED.disease.emphysema_hu.hi
                val = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.clip(fields["em_v"].slice(float(z)), -1.0, 1.0)
                hk[m] = val[m]
        if ret and w < -H + ret["height_mm"]:
            dw = smp.wall(k)
            zone = par & (dw < ret["depth_mm"])
            if zone.any():
                wt = np.clip(1.0 - dw / ret["depth_mm"], 0.0, 1.0) * \
                    float(np.clip((-H + ret["height_mm"] - w) / 30.0, 0.0, 1.0))
                lines = np.abs(fields["net"].slice(float(z))) < 0.14
                a = np.where(zone, wt * (0.25 + 0.65 * lines), 0.0).astype(np.float32)
                hk += a * (np.float32(ret["hu"]) - hk)
        if atel and w < -0.4 * H:
            d_post = _depth_from_back(par, ps)
            a = np.clip(1.0 - d_post / atel["depth_mm"], 0.0, 1.0) ** 0.7 * \
                float(np.clip((-0.4 * H - w) / 40.0, 0.0, 1.0))
            a = np.where(par, a, 0.0).astype(np.float32)
            hk += a * (np.float32(atel["hu"]) - hk)
        if eff:
            lungish = _LUNGISH[lk]
            tex = None
            for si, side in enumerate(("right", "left")):
                if eff["side"] not in (side, "both"):
                    continue
                D = eff["depth_mm"][si]
                L = 2.0 * D + 40.0
                d = D * float(np.sqrt(np.clip(1.0 - (w + H) / L, 0.0, 1.0)))
                if d <= 0.0:
                    continue
                m = lungish & (left if side == "left" else ~left)
                zone = m & (_depth_from_back(m, ps) < d)
                if zone.any():
                    if tex is None:
                        tex = fields["eff"].slice(float(z))
                    hk[zone] = np.float32(eff["hu"]) + 3.0 * tex[zone]
                    lk[zone] = BODY
    for pl in (dis.get("pleural_plaques") or {}).get("plaques", []):
        _plaque(rng, ctx, hu, lab, pl)


def _depth_from_back(mask: np.ndarray, ps: float) -> np.ndarray:
    """Distance (mm) of each pixel from the most posterior pixel of ``mask`` in its column
    (rows grow posteriorly); +inf in columns without any."""
    ny = mask.shape[0]
    has = mask.any(axis=0)
    back = ny - 1 - np.argmax(mask[::-1], axis=0)
    rows = np.arange(ny, dtype=np.float32)[:, None]
    d = (back[None, :].astype(np.float32) - rows) * np.float32(ps)
    return np.where(has[None, :] & (d >= 0), d, np.float32(np.inf))


def _emphysema_score(em, fields, z, w, H):
    zeta = float(np.clip((w + H) / H, 0.0, 1.0))
    return 0.6 * fields["em_c"].slice(z) + 0.8 * fields["em_f"].slice(z) + \
        1.5 * np.log(em["upper_weight"]) * zeta


def _emphysema_threshold(em, fields, fine, lab, z_apex, H) -> float:
    """The score above which the drawn fraction of the lung parenchyma is emphysematous."""
    vals = []
    step = max(1, fine.shape[0] // 40)
    for k in range(0, fine.shape[0], step):
        m = lab[k] == LUNG
        if m.any():
            z = float(fine.z[k])
            vals.append(_emphysema_score(em, fields, z, z - z_apex, H)[m][::7])
    if not vals:
        return np.inf
    return float(np.quantile(np.concatenate(vals), 1.0 - em["fraction"]))


def _consolidation(rng, ctx, hu, lab, reg) -> None:
    pts = _lung_points(rng, ctx, 1, where=ctx.d_wall >= 5.0)
    if not len(pts):
        return
    R = 0.5 * reg["size_mm"]
    c = pts[0]
    cen = [c] + [c + _unit(rng) * R * rng.uniform(0.3, 0.6) for _ in range(int(rng.integers(4, 8)))]
    rad = [0.6 * R] + [R * float(rng.uniform(0.4, 0.65)) for _ in cen[1:]]
    cen = np.asarray(cen)
    paint_capsules(ctx.fine, hu, lab, cen, cen, rad, rad, reg["hu"], hu_allowed=_PAR)


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _plates(rng, ctx, hu, lab, atel, z_apex, H) -> None:
    """Plate-like atelectasis: thin discs in the lower lungs, their plane near-vertical."""
    zc = ctx.coarse.z[:, None, None]
    lower = (zc - z_apex < -0.45 * H) & (ctx.d_wall >= 8.0)
    for c in _lung_points(rng, ctx, atel["plates"], where=lower):
        th = rng.uniform(-0.7, 0.7)
        n = np.array([np.sin(th), np.cos(th), rng.uniform(-0.4, 0.4)])
        a1, a2, a3 = _orthonormal(n)
        paint_ellipsoid(ctx.fine, hu, lab, c, [a1, a2, a3],
                        [rng.uniform(15.0, 35.0), rng.uniform(6.0, 14.0), rng.uniform(1.0, 2.0)],
                        float(rng.uniform(-150.0, 20.0)), hu_allowed=_PAR)


def _scar(rng, ctx, hu, lab, sc) -> None:
    pts = _lung_points(rng, ctx, 1, where=(ctx.d_wall >= 5.0) & (ctx.d_wall <= 40.0))
    if not len(pts):
        return
    wp = _wall_point(ctx, pts[0])
    if wp is None:
        return
    b, n = wp
    L = sc["length_mm"]
    bend = _unit(rng) * 0.15 * L
    a = b - n * L + bend
    mid = 0.5 * (a + b) + 0.5 * bend
    pts3 = np.array([a, mid, b + n * 1.0])
    r = sc["radius_mm"]
    paint_capsules(ctx.fine, hu, lab, pts3[:-1], pts3[1:], [0.7 * r, r], [r, 1.3 * r], sc["hu"], hu_allowed=_PAR)


def _honeycombing(rng, ctx, hu, lab, ret, z_apex, H) -> None:
    """Clustered subpleural cysts with walls, in the basal zone."""
    D = RANDOMIZED.disease
    zc = ctx.coarse.z[:, None, None]
    zone = (ctx.d_wall <= 0.5 * ret["depth_mm"] + 3.0) & (zc - z_apex < -H + 0.7 * ret["height_mm"])
    seeds = _lung_points(rng, ctx, int(rng.integers(2, 5)), where=zone)
    if not len(seeds):
        return
    cand = _lung_points(rng, ctx, 6 * ret["cysts"], where=zone)
    if not len(cand):
        return
    near = np.min(np.linalg.norm(cand[:, None, :] - seeds[None], axis=2), axis=1) < 25.0
    cand = cand[near][: ret["cysts"]]
    for c in cand:
        r = 0.5 * band_uniform(rng, D.honeycomb_cyst_mm)
        w = float(rng.uniform(0.8, 1.6))
        paint_capsules(ctx.fine, hu, lab, c, c, r + w, r + w, ret["hu"] + 200.0, hu_allowed=_PAR)
        paint_capsules(ctx.fine, hu, lab, c, c, r, r, -1000.0, hu_allowed=_PAR)


def _mucus(rng, ctx, hu, lab, mp, airways) -> None:
    if airways is not None:
        a, b, ra, rb = airways
        small = np.nonzero(np.maximum(ra, rb) < 3.0)[0]
        if len(small):
            c = 0.5 * (a[small[int(rng.integers(len(small)))]] + b[small[int(rng.integers(len(small)))]])
            mid = 0.5 * (a[small] + b[small])
            reg = small[np.linalg.norm(mid - c, axis=1) < 60.0]
            pick = reg[rng.random(len(reg)) < mp["fraction"]]
            if len(pick):
                paint_capsules(ctx.fine, hu, lab, a[pick], b[pick], ra[pick], rb[pick], mp["hu"],
                               hu_allowed=_LUMEN)
    # tree-in-bud: small branching opacities with buds, a few mm under the pleura
    for c in _lung_points(rng, ctx, mp["tree_in_bud_clusters"], where=(ctx.d_wall >= 3.0) & (ctx.d_wall <= 15.0)):
        for _ in range(int(rng.integers(3, 7))):
            p0 = c + rng.uniform(-8.0, 8.0, 3)
            d = _unit(rng)
            p1 = p0 + d * rng.uniform(3.0, 5.0)
            t1, t2, _ = _orthonormal(d)
            ends = [p1 + (d * np.cos(0.6) + s * t1 * np.sin(0.6)) * rng.uniform(2.0, 4.0) for s in (-1.0, 1.0)]
            r = float(rng.uniform(0.7, 1.2))
            seg_a = np.array([p0, p1, p1])
            seg_b = np.array([p1, ends[0], ends[1]])
            paint_capsules(ctx.fine, hu, lab, seg_a, seg_b, r, r, mp["hu"], hu_allowed=_PAR)
            buds = np.array(ends)
            rb_ = float(rng.uniform(1.0, 1.8))
            paint_capsules(ctx.fine, hu, lab, buds, buds, rb_, rb_, mp["hu"], hu_allowed=_PAR)


def _plaque(rng, ctx, hu, lab, pl) -> None:
    """A flat plaque centred on the pleura: it thickens the wall into the lung (label BODY)."""
    cs = max(ctx.coarse.spacing)
    border = ctx.d_wall <= 1.6 * cs
    for p in _lung_points(rng, ctx, 12, where=border):
        wp = _wall_point(ctx, p)
        if wp is None:
            continue
        b, n = wp
        if pl["diaphragm"] != (n[2] < -0.6):
            continue
        a1, a2, a3 = _orthonormal(n)
        r = 0.5 * pl["size_mm"]
        paint_ellipsoid(ctx.fine, hu, lab, b, [a1, a2, a3], [r, r * rng.uniform(0.5, 1.0), 0.5 * pl["thickness_mm"]],
                        pl["hu"], hu_allowed=_LUNGISH if not pl["calcified"] else label_lut([LUNG, VESSEL, BODY]),
                        label=BODY, label_allowed=_LUNGISH)
        return
