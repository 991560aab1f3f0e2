"""Lesions inserted into real CT backgrounds.

A real scan without reads becomes training data with lesions of known truth:
:func:`insert_lesions` draws lesions with :mod:`lungcad.synthetic.lesion_specs` (solid,
part-solid, ground-glass, calcified; isolated or juxta-pleural), renders each on a fine grid
in world mm, integrates it over the host's voxels (the host's pixel and slice thickness are
its partial volume), blurs the lesion's contribution with the host PSF, and gives the
replaced tissue noise of the host's texture, scaled so that the noise level stays the
host's (:mod:`lungcad.synthetic.host_scanner` measures both).  Lesions go inside the host's
lung mask, away from known lesions (:mod:`lungcad.synthetic.exclusions`) and each other.
Hard negatives from the same scans: :mod:`lungcad.synthetic.background_negatives`.

Coordinates are world mm (x, y, z), LPS; voxel indices appear only inside functions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungcad.synthetic.exclusions import _exclusion_array
from lungcad.synthetic.host_scanner import HostNoise, HostPSF, estimate_host_noise, estimate_host_psf
from lungcad.synthetic.lesion_render import lesion_fields
from lungcad.synthetic.lesion_shapes import LesionGeometry, build_geometry
from lungcad.synthetic.lesion_specs import LESION_COLUMNS, complete_spec, malignancy_probability
from lungcad.synthetic.raster import Grid
from lungcad.volume import CTVolume

log = logging.getLogger(__name__)

__all__ = ["insert_lesions"]


def _index_frame(volume: CTVolume):
    """World <-> "index mm" (mm along the voxel axes, voxel (0,0,0) at 0), for any orthonormal
    direction.  Returns (to_frame(xyz), grid of the whole volume in that frame)."""
    d = np.asarray(volume.direction, dtype=float)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ValueError(f"insert_lesions: the direction matrix of series {volume.series_uid} is not "
                         f"orthonormal. Received {d.round(4).tolist()}")
    origin = np.asarray(volume.origin, dtype=float)

    def to_frame(xyz):
        return (np.asarray(xyz, dtype=float) - origin) @ d      # = D^T (p - o), row-wise

    grid = Grid(origin=(0.0, 0.0, 0.0), spacing=tuple(volume.spacing), shape=volume.shape)
    return to_frame, grid


def _geometry_in_frame(g: LesionGeometry, to_frame) -> LesionGeometry:
    return dataclasses.replace(
        g, centre=to_frame(g.centre),
        spheres=[(to_frame(c), r) for c, r in g.spheres],
        spikes=[(to_frame(a), to_frame(b), r0, r1) for a, b, r0, r1 in g.spikes],
        halo=[(to_frame(c), r) for c, r in g.halo],
        core=None if g.core is None else (to_frame(g.core[0]), g.core[1]))


def _render_on_host(geom_f: LesionGeometry, grid: Grid, *, thickness_mm: float, margin_mm: float,
                    fine_xy_mm: float = 0.35, fine_z_mm: float = 0.5):
    """Integrate a lesion (in the index frame) over the host's voxels.

    The lesion is rendered on a grid finer by whole factors (in-plane pixels of at most
    ``fine_xy_mm``, slices of at most ``fine_z_mm``); the in-plane pixels are box averages and
    each host slice averages the fine slices within ``thickness_mm`` of its centre (the slice
    profile).  Returns (host box slices, occupancy O, O * HU, O * keep-brighter), or None.
    """
    sz, sy, sx = grid.spacing
    ext = geom_f.extent + margin_mm
    c = geom_f.centre
    lo = np.floor((c - ext) / np.array([sx, sy, sz])).astype(int)          # x, y, z index
    hi = np.ceil((c + ext) / np.array([sx, sy, sz])).astype(int) + 1
    shape_xyz = np.array(grid.shape[::-1])
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape_xyz)
    if np.any(hi - lo < 1):
        return None
    nx, ny, nz = (hi - lo).tolist()
    fx, fy = max(int(math.ceil(sx / fine_xy_mm)), 1), max(int(math.ceil(sy / fine_xy_mm)), 1)
    fz = max(int(math.ceil(sz / fine_z_mm)), 1)
    dzf = sz / fz
    n_t = max(int(round(thickness_mm / dzf)), 1)        # fine slices in one slice profile
    nzf = (nz - 1) * fz + n_t
    z0f = lo[2] * sz - 0.5 * (n_t - 1) * dzf            # the first fine slice centre (frame mm)
    fine = Grid(origin=(lo[0] * sx - 0.5 * (fx - 1) * sx / fx, lo[1] * sy - 0.5 * (fy - 1) * sy / fy, z0f),
                spacing=(dzf, sy / fy, sx / fx), shape=(nzf, ny * fy, nx * fx))
    f = lesion_fields(fine, geom_f)
    if f is None:
        return None
    sl, occ, value, keep = f
    O_f = np.zeros(fine.shape, dtype=np.float32)
    OV_f = np.zeros(fine.shape, dtype=np.float32)
    OK_f = np.zeros(fine.shape, dtype=np.float32)
    O_f[sl] = occ
    OV_f[sl] = occ * value
    OK_f[sl] = occ * keep

    def integrate(a):
        a = a.reshape(nzf, ny, fy, nx, fx).mean(axis=(2, 4))
        cs = np.concatenate([np.zeros((1, ny, nx), np.float64), np.cumsum(a, axis=0, dtype=np.float64)])
        starts = np.arange(nz) * fz
        return ((cs[starts + n_t] - cs[starts]) / n_t).astype(np.float32)

    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, integrate(O_f), integrate(OV_f), integrate(OK_f)


def _distance_inside(mask: np.ndarray, spacing) -> tuple[np.ndarray, tuple]:
    """Distance (mm) from each lung voxel to the nearest non-lung voxel, on the lung's box."""
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    pad = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, mask.shape))
    return ndi.distance_transform_edt(mask[pad], sampling=spacing).astype(np.float32), pad


def _draw_given(rng: np.random.Generator, nodule_diameter_mm) -> dict:
    d = float(np.exp(rng.uniform(np.log(nodule_diameter_mm[0]), np.log(nodule_diameter_mm[1]))))
    return {"kind": "nodule", "diameter_mm": d,
            "location": "juxta-pleural" if rng.random() < 0.35 else "isolated"}


def insert_lesions(volume: CTVolume, *, rng: np.random.Generator, n: int = 3,
                   lesions: Sequence[Mapping[str, Any]] | None = None, exclude_xyz_mm=None,
                   exclude_radius_mm: float = 30.0, lung_mask: np.ndarray | None = None,
                   psf: HostPSF | None = None, noise: HostNoise | None = None,
                   nodule_diameter_mm=(4.0, 30.0), contrast: bool = False, texture: bool = True,
                   min_separation_mm: float = 10.0, max_tries: int = 300) -> tuple[CTVolume, pd.DataFrame, np.ndarray]:
    """Insert lesions into a real (or any) CT volume, with the host's blur and noise.

    Parameters
    ----------
    volume : the host scan
    rng : the random generator (the same seed and host give the same result)
    n : number of lesions when ``lesions`` is None: nodules of ``nodule_diameter_mm`` (log-uniform),
        35 % juxta-pleural, texture and shape drawn by :func:`~lungcad.synthetic.lesion_specs.complete_spec`
    lesions : list of dict, optional
        Exactly these lesions; each may give ``kind``, ``texture`` (solid, part-solid,
        ground-glass, calcified), ``location`` (``isolated`` or ``juxta-pleural``), ``shape``
        and ``diameter_mm``; the rest is drawn.
    exclude_xyz_mm : (N, 3) world points, or a table with coordX, coordY, coordZ[, diameter_mm]
        Known lesions: a lesion's centre stays farther than ``exclude_radius_mm`` + its radius
        + the known lesion's radius from each.
    lung_mask : bool (z, y, x), optional
        Default: :func:`lungcad.lungmask.segment_lungs`.  Lesions are clipped to it.
    psf, noise : the host's, optional (default: estimated)
    contrast : lesion enhancement as in a contrast-enhanced scan
    texture : the lesions' internal density variation (False: uniform lesions, for measurements)
    min_separation_mm : gap between inserted lesions (beyond their radii)
    max_tries : placement attempts per lesion; a lesion that finds no place is left out (logged)

    Returns
    -------
    (CTVolume, DataFrame, ndarray)
        The new volume (a copy; ``meta["inserted_lesions"]`` counts them), the lesion table
        (columns :data:`lungcad.synthetic.lesion_specs.LESION_COLUMNS`; ``diameter_mm`` is the
        equivalent-sphere diameter of the rendered, clipped volume) and the boolean lesion mask
        (voxels at least half filled).

    Notes
    -----
    With the host's image H, the lesion's occupancy O and HU L integrated over the host's
    voxels, and B the in-plane Gaussian of ``psf.blur_sigma_mm``, the new image is::

        H (1 - B*O) + B*(O L) + sqrt(1 - (1 - B*O)^2) N

    where N is noise of the host's level and texture: the host's noise is kept where the
    lesion does not replace tissue, and the sum keeps the noise variance the host's.
    Ground glass does not darken what is brighter in the host (vessels run through it).
    """
    from lungcad.lungmask import segment_lungs

    if lung_mask is None:
        lung_mask = segment_lungs(volume.hu, spacing_zyx=volume.spacing, direction=volume.direction).mask
    lung_mask = np.asarray(lung_mask, dtype=bool)
    if lung_mask.shape != volume.shape:
        raise ValueError(f"lung_mask: expected the volume's shape {volume.shape}. Received {lung_mask.shape}")
    if int(n) < 0:
        raise ValueError(f"n: expected a number of lesions >= 0. Received n={n!r}")
    psf = estimate_host_psf(volume) if psf is None else psf
    noise = estimate_host_noise(volume) if noise is None else noise
    given = [dict(g) for g in lesions] if lesions is not None else \
        [_draw_given(rng, nodule_diameter_mm) for _ in range(int(n))]
    for g in given:
        if g.get("location", "isolated") not in ("isolated", "juxta-pleural"):
            raise ValueError(f"insert_lesions: location expected 'isolated' or 'juxta-pleural'. "
                             f"Received location={g.get('location')!r}")
    hu = volume.hu.astype(np.float32)
    out_mask = np.zeros(volume.shape, dtype=bool)
    rows = []
    sp = np.asarray(volume.spacing, dtype=float)
    to_frame, grid = _index_frame(volume)
    if not lung_mask.any():
        log.warning("insert_lesions: empty lung mask in series %s; nothing inserted", volume.series_uid)
        new = dataclasses.replace(volume, hu=volume.hu.copy(), meta={**volume.meta, "inserted_lesions": 0})
        return new, pd.DataFrame(columns=LESION_COLUMNS), out_mask
    d_in, pad = _distance_inside(lung_mask, sp)
    off = np.array([p.start for p in pad])
    ex_xyz, ex_r = _exclusion_array(exclude_xyz_mm)
    placed: list[tuple[np.ndarray, float]] = []
    blur_px = (psf.blur_sigma_mm / sp[1], psf.blur_sigma_mm / sp[2])
    margin = 3.0 * psf.blur_sigma_mm + 2.0 * float(sp.max())
    for idx, g in enumerate(given):
        g = dict(g)
        g.setdefault("location", "isolated")
        spec = complete_spec(rng, g, nodule_diameter_mm=nodule_diameter_mm)
        R = 0.5 * spec.diameter_mm
        centre = _place(rng, spec, R, d_in, off, volume, lung_mask, hu, ex_xyz, ex_r, exclude_radius_mm,
                        placed, min_separation_mm, max_tries)
        if centre is None:
            log.warning("insert_lesions: no place for a %.1f mm %s %s lesion in series %s", spec.diameter_mm,
                        spec.location, spec.texture, volume.series_uid)
            continue
        geom = build_geometry(rng, spec, centre, contrast=contrast)
        if not texture:
            geom.texture_hu = 0.0
        r = _render_on_host(_geometry_in_frame(geom, to_frame), grid, thickness_mm=psf.slice_thickness_mm,
                            margin_mm=margin)
        if r is None:
            continue
        box, O, OV, OK = r
        O *= lung_mask[box]
        OV *= lung_mask[box]
        OK *= lung_mask[box]
        if float(O.sum()) <= 0:
            continue
        host = hu[box]
        with np.errstate(invalid="ignore", divide="ignore"):
            L = np.where(O > 0, OV / np.maximum(O, 1e-6), 0.0).astype(np.float32)
            kb = np.where(O > 0, OK / np.maximum(O, 1e-6), 0.0) > 0.5
        if kb.any():                                   # ground glass keeps the host's vessels
            smooth = ndi.gaussian_filter(host, (0.0, 0.7 / sp[1], 0.7 / sp[2]))
            L = np.where(kb, np.maximum(L, smooth), L)
        Ob = ndi.gaussian_filter(O, (0.0,) + blur_px, truncate=3.0) if psf.blur_sigma_mm > 0 else O.copy()
        Ab = ndi.gaussian_filter(O * L, (0.0,) + blur_px, truncate=3.0) if psf.blur_sigma_mm > 0 else O * L
        np.clip(Ob, 0.0, 1.0, out=Ob)
        gain = np.sqrt(np.clip(1.0 - (1.0 - Ob) ** 2, 0.0, 1.0)).astype(np.float32)
        N = noise.synthesize(O.shape, volume.spacing, rng)
        hu[box] = host * (1.0 - Ob) + Ab + gain * N
        m = O >= 0.5
        out_mask[box] |= m
        placed.append((np.asarray(centre, dtype=float), float(geom.extent)))
        vol_mm3 = float(O.sum()) * float(np.prod(sp))
        kk, jj, ii = np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij")
        w = O / O.sum()
        com_zyx = np.array([(w * kk).sum(), (w * jj).sum(), (w * ii).sum()])
        com = volume.voxel_to_world(com_zyx)
        d_eq = float((6.0 * vol_mm3 / np.pi) ** (1.0 / 3.0))
        p = malignancy_probability(d_eq, spec.texture, spec.shape)
        rows.append({"lesion_id": len(rows), "patient_id": volume.patient_id, "seriesuid": volume.series_uid,
                     "coordX": com[0], "coordY": com[1], "coordZ": com[2], "z": com_zyx[0], "y": com_zyx[1],
                     "x": com_zyx[2], "diameter_mm": d_eq, "intended_diameter_mm": spec.diameter_mm,
                     "volume_mm3": vol_mm3, "kind": spec.kind, "texture": spec.texture,
                     "location": spec.location, "shape": spec.shape, "malignancy_prob": p,
                     "malignant": bool(rng.random() < p)})
    info = np.iinfo(np.int16)
    new_hu = np.clip(np.rint(hu), info.min, info.max).astype(np.int16)
    meta = {**volume.meta, "inserted_lesions": len(rows), "host_psf": psf.to_dict(), "host_noise": noise.to_dict()}
    new = CTVolume(hu=new_hu, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                   patient_id=volume.patient_id, series_uid=volume.series_uid, meta=meta)
    return new, pd.DataFrame(rows, columns=LESION_COLUMNS), out_mask


def _place(rng, spec, R, d_in, off, volume, lung_mask, hu, ex_xyz, ex_r, exclude_radius_mm, placed,
           min_separation_mm, max_tries):
    """A world centre for a lesion of radius R, or None."""
    sp = np.asarray(volume.spacing, dtype=float)
    if spec.location == "juxta-pleural":
        cand = np.flatnonzero((d_in >= 0.3 * R) & (d_in <= 0.75 * R) & (d_in > 0))
    else:
        cand = np.flatnonzero(d_in >= R + 2.0)
    if len(cand) == 0:
        return None
    nz = volume.shape[0]
    ext_vox = np.ceil((R + 2.0) / sp).astype(int)
    for k in rng.choice(cand, size=min(max_tries, len(cand)), replace=False):
        zyx = np.array(np.unravel_index(k, d_in.shape)) + off
        if zyx[0] - ext_vox[0] < 1 or zyx[0] + ext_vox[0] > nz - 2:
            continue                                       # keep the lesion inside the scan in z
        c = volume.voxel_to_world(zyx + rng.uniform(-0.4, 0.4, 3))
        if len(ex_xyz) and np.any(np.linalg.norm(ex_xyz - c, axis=1) < exclude_radius_mm + R + ex_r):
            continue
        if any(np.linalg.norm(c - pc) < R + pe + min_separation_mm for pc, pe in placed):
            continue
        # what the lesion covers: the host's lung, not a large vessel or the heart
        lo = np.maximum(zyx - ext_vox, 0)
        hi = np.minimum(zyx + ext_vox + 1, volume.shape)
        sub = tuple(slice(a, b) for a, b in zip(lo, hi))
        kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        ball = ((kk - zyx[0]) * sp[0]) ** 2 + ((jj - zyx[1]) * sp[1]) ** 2 + ((ii - zyx[2]) * sp[2]) ** 2 <= R * R
        h, m = hu[sub][ball], lung_mask[sub][ball]
        if m.sum() == 0:
            continue
        if np.mean(h[m] > -400) > 0.15:
            continue
        if spec.location == "juxta-pleural":
            outside = h[~m]
            if len(outside) == 0 or np.mean(outside > -300) < 0.8:
                continue                                   # the edge must be the chest wall, not air
        return c
    return None
