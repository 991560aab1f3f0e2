"""Lesions of a phantom, where they go: what placement knows of the anatomy already drawn
(:class:`PlacementContext`), a centre for each location (:func:`place`: isolated,
juxta-pleural, juxta-vascular, hilar, mediastinal), and the parts of a lesion that depend on
the anatomy around it (:func:`contextualize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lungcad.synthetic import domain as _dom
from lungcad.synthetic.anatomy import AIRWAY_FLAG, LUNG, MEDIASTINUM, VESSEL, BODY, BONE, OUTSIDE
from lungcad.synthetic.lesion_shapes import LesionGeometry, _converging_vessels, _copy
from lungcad.synthetic.lesion_specs import LesionSpec
from lungcad.synthetic.raster import Grid, label_lut

_LUNG_SET = (LUNG, VESSEL, LUNG | AIRWAY_FLAG, VESSEL | AIRWAY_FLAG)


@dataclass
class PlacementContext:
    """What lesion placement needs to know about the anatomy already drawn."""

    coarse: Grid
    coarse_labels: np.ndarray
    d_wall: np.ndarray          # mm from each coarse voxel to the nearest body/bone/outside voxel
    i_wall: np.ndarray          # index (3, ...) of that voxel
    d_med: np.ndarray           # mm to the nearest mediastinum voxel
    i_med: np.ndarray
    fine: Grid
    fine_labels: np.ndarray
    z_range: tuple[float, float]      # lesions must lie within (world z)
    hilar_z: tuple[float, float]      # the hilar band (world z)
    vessel_pts: np.ndarray            # (M, 3) points along vessels
    vessel_r: np.ndarray
    vessel_dir: np.ndarray            # (M, 3) unit direction of the vessel at each point
    placed: list = field(default_factory=list)   # [(centre, extent)]

    def __post_init__(self):
        from scipy.spatial import cKDTree

        big = self.vessel_r >= 1.5
        self._big_pts = self.vessel_pts[big]
        self._big_r = self.vessel_r[big]
        self._kd_big = cKDTree(self._big_pts) if len(self._big_pts) else None
        self._lung_lut = label_lut(_LUNG_SET)

    def fine_label(self, xyz) -> int:
        idx = np.rint(self.fine.to_index(xyz)).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.array(self.fine.shape)):
            return OUTSIDE
        return int(self.fine_labels[tuple(idx)])

    def in_lung(self, xyz) -> bool:
        return bool(self._lung_lut[self.fine_label(xyz)])

    def fits(self, c, ext) -> bool:
        z0, z1 = self.z_range
        if not (z0 + ext + 1.0 <= c[2] <= z1 - ext - 1.0):
            return False
        return all(np.linalg.norm(c - pc) >= ext + pe + 6.0 for pc, pe in self.placed)

    def vessel_clearance(self, c) -> float:
        if self._kd_big is None:
            return np.inf
        idx = self._kd_big.query_ball_point(c, r=40.0)
        if not idx:
            return np.inf
        idx = np.asarray(idx)
        return float(np.min(np.linalg.norm(self._big_pts[idx] - c, axis=1) - self._big_r[idx]))

    def fractions(self, c, radius: float) -> tuple[float, float, float]:
        """Fractions of a ball (coarse grid) in the lung, in the mediastinum, and elsewhere."""
        sl = self.coarse.box(c - radius, c + radius)
        if sl is None:
            return 0.0, 0.0, 1.0
        zc, yc, xc = self.coarse.coords(sl)
        ball = ((zc - c[2]) ** 2)[:, None, None] + ((yc - c[1]) ** 2)[None, :, None] + \
            ((xc - c[0]) ** 2)[None, None, :] <= radius * radius
        n = int(ball.sum())
        if n == 0:
            return 1.0, 0.0, 0.0
        lab = self.coarse_labels[sl][ball]
        f_lung = float((lab == LUNG).sum()) / n
        f_med = float((lab == MEDIASTINUM).sum()) / n
        return f_lung, f_med, 1.0 - f_lung - f_med

    def ray_to(self, start, direction, stop_labels, max_mm: float) -> np.ndarray | None:
        """First point from ``start`` along ``direction`` whose fine label is in ``stop_labels``."""
        step = 0.25 * min(self.fine.spacing)
        ts = np.arange(0.0, max_mm, step)
        pts = start[None, :] + ts[:, None] * direction[None, :]
        idx = np.rint(self.fine.to_index(pts)).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(self.fine.shape)), axis=1)
        if not inside.any():
            return None
        idx = np.clip(idx, 0, np.array(self.fine.shape) - 1)
        lab = self.fine_labels[idx[:, 0], idx[:, 1], idx[:, 2]]
        hit = np.isin(lab, list(stop_labels)) & inside
        k = np.nonzero(hit)[0]
        return None if len(k) == 0 else pts[k[0]]


def _coarse_xyz(ctx: PlacementContext, flat_idx):
    zyx = np.stack(np.unravel_index(flat_idx, ctx.coarse.shape), axis=-1)
    return ctx.coarse.to_world(zyx)


def place(rng: np.random.Generator, ctx: PlacementContext, spec: LesionSpec, ext_factor: float,
          *, tries: int = 60) -> np.ndarray | None:
    """A world centre for a lesion of ``spec``, or None when no place fits."""
    R = 0.5 * spec.diameter_mm
    ext = R * ext_factor
    cs = max(ctx.coarse.spacing)
    lung = ctx.coarse_labels == LUNG
    z_world = ctx.coarse.z[:, None, None]
    z0, z1 = ctx.z_range
    zok = (z_world >= z0 + ext + 1.0) & (z_world <= z1 - ext - 1.0)
    loc = spec.location
    if loc == "juxta-vascular":
        ok = (ctx.vessel_r >= 1.2) & (ctx.vessel_r <= 4.5)
        cand = np.nonzero(ok)[0]
        for k in rng.permutation(cand)[:tries * 4]:
            p, rv, d = ctx.vessel_pts[k], ctx.vessel_r[k], ctx.vessel_dir[k]
            if ctx.fine_label(p) not in (VESSEL,):
                continue
            m = np.cross(d, rng.normal(size=3))
            m /= max(np.linalg.norm(m), 1e-6)
            c = p + m * (R + 0.3 * rv)
            ci = np.rint(ctx.coarse.to_index(c)).astype(int)
            if np.any(ci < 0) or np.any(ci >= np.array(ctx.coarse.shape)):
                continue
            ci = tuple(ci)
            if ctx.d_wall[ci] < R + 4.0 or ctx.d_med[ci] < R + 4.0:
                continue
            if ctx.in_lung(c) and ctx.fits(c, ext):
                return c
        return None
    if loc == "isolated":
        cand = np.flatnonzero(lung & zok & (ctx.d_wall >= R + 5.0) & (ctx.d_med >= R + 5.0))
        for k in rng.permutation(cand)[:tries * 3]:
            c = _coarse_xyz(ctx, k) + rng.uniform(-0.5, 0.5, 3) * np.asarray(ctx.coarse.spacing[::-1])
            if ctx.in_lung(c) and ctx.fits(c, ext) and ctx.vessel_clearance(c) >= R + 1.0:
                return c
        return None
    if loc == "juxta-pleural":
        cand = np.flatnonzero(lung & zok & (ctx.d_wall <= 1.6 * cs) & (ctx.d_med >= R + 10.0))
        stop, idx_arr = (BODY, BONE, OUTSIDE), ctx.i_wall
        depth = (0.55, 0.75)
    else:  # hilar or mediastinal
        band = (z_world >= ctx.hilar_z[0]) & (z_world <= ctx.hilar_z[1])
        sel = band if loc == "hilar" else np.ones_like(band)
        cand = np.flatnonzero(lung & zok & sel & (ctx.d_med <= 1.6 * cs))
        stop, idx_arr = (MEDIASTINUM,), ctx.i_med
        depth = (0.6, 0.8)
    for k in rng.permutation(cand)[:tries]:
        zyx = np.unravel_index(k, ctx.coarse.shape)
        p = ctx.coarse.to_world(np.array(zyx, dtype=float))
        q = ctx.coarse.to_world(idx_arr[(slice(None),) + zyx].astype(float))
        n = q - p
        nn = np.linalg.norm(n)
        if nn < 1e-6:
            continue
        n /= nn
        b = ctx.ray_to(p - 2.0 * cs * n, n, stop, max_mm=6.0 * cs)
        if b is None:
            continue
        c = b - n * R * float(rng.uniform(*depth))
        if not (ctx.in_lung(c) and ctx.fits(c, ext)):
            continue
        if R >= 4.0:
            f_lung, f_med, f_other = ctx.fractions(c, R)
            if loc == "juxta-pleural" and (f_lung < 0.65 or f_med > 0.02):
                continue
            if loc in ("hilar", "mediastinal") and (f_lung < 0.55 or f_other > 0.12):
                continue
        return c
    return None


def contextualize(rng: np.random.Generator, geom: LesionGeometry, spec: LesionSpec,
                  ctx: PlacementContext) -> LesionGeometry:
    """Add what depends on the anatomy around a placed lesion (world centre ``geom.centre``).

    For a "convergent" lesion: its converging vessels are re-drawn from the patient's own
    vessels 4-30 mm from its surface (those that lie in the lung; the random ones are kept when
    fewer than 3 are found), and a pleural tag runs to the nearest pleura, with the pleura
    pulled in (a small soft-tissue triangle labelled body), when that pleura is at most
    ``LesionRanges.retraction_max_mm`` from the surface.  Other shapes are returned unchanged,
    without a random draw.
    """
    if geom.pending_context is not None:
        geom = _copy(geom, pending_context=None)
    if spec.shape != "convergent":
        return geom
    L = _dom.RANDOMIZED.lesions
    c = np.asarray(geom.centre, dtype=float)
    R = 0.5 * spec.diameter_mm
    contrast = any(lab == VESSEL and hu_v > 100.0 for *_, hu_v, lab in geom.extras)
    # vessels: toward the patient's vessels around
    if len(ctx.vessel_pts):
        dist = np.linalg.norm(ctx.vessel_pts - c, axis=1)
        cand = np.nonzero((dist > R + 4.0) & (dist < R + 30.0) & (ctx.vessel_r >= 0.8))[0]
        chosen = []          # [(unit direction, offset of the vessel point)]
        n_max = int(L.convergent_vessels.hi)
        for k in rng.permutation(cand):
            p = ctx.vessel_pts[k]
            u = (p - c) / dist[k]
            if ctx.in_lung(p) and all(float(u @ v) < 0.8 for v, _ in chosen):
                chosen.append((u, p - c))
                if len(chosen) >= n_max:
                    break
        if len(chosen) >= int(L.convergent_vessels.lo):
            keep = [e for e in geom.extras if e[5] != VESSEL]
            geom = _copy(geom, extras=keep)
            ends = [e for _, e in chosen]
            _converging_vessels(rng, geom, R, contrast, ends=ends)
    # pleural retraction
    ci = np.rint(ctx.coarse.to_index(c)).astype(int)
    if np.any(ci < 0) or np.any(ci >= np.array(ctx.coarse.shape)):
        return geom
    ci = tuple(ci)
    q = ctx.coarse.to_world(ctx.i_wall[(slice(None),) + ci].astype(float))
    n = q - c
    nn = float(np.linalg.norm(n))
    if nn < 1e-6:
        return geom
    n /= nn
    b = ctx.ray_to(c, n, (BODY, BONE, OUTSIDE), max_mm=nn + 4.0 * max(ctx.coarse.spacing) + 10.0)
    if b is None:
        return geom
    gap = float(np.linalg.norm(b - c)) - R
    if not 3.0 <= gap <= L.retraction_max_mm:
        return geom
    extras = list(geom.extras)
    tag_r = float(rng.uniform(0.8, 1.4))
    extras.append((n * 0.7 * R, b - c + n * 1.0, tag_r, 0.6, float(rng.uniform(-150.0, 0.0)), None))
    depth = min(8.0, 0.5 * gap)
    extras.append((b - c - n * depth, b - c + n * 2.0, 0.5, float(rng.uniform(2.5, 4.5)),
                   float(rng.uniform(-80.0, 20.0)), BODY))
    return _copy(geom, extras=extras)
