"""Hard negatives mined from the real anatomy of CT backgrounds: look-alikes that are not lesions.

:func:`mine_background_negatives` picks vessel crossings and bifurcations (bright blobs in
the lung), airway walls, and points of the lung mask's edge beside the spine and the
mediastinum and on the diaphragm, away from known lesions
(:mod:`lungcad.synthetic.exclusions`); :func:`montage` shows what was mined.

Coordinates are world mm (x, y, z), LPS; voxel indices appear only inside functions.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungcad.synthetic.exclusions import _exclusion_array
from lungcad.volume import CTVolume, voxel_to_world

__all__ = ["NEGATIVE_KINDS", "mine_background_negatives", "montage"]

#: Kinds of mined hard negatives and their default shares.
NEGATIVE_KINDS = {"vessel": 0.4, "airway-wall": 0.15, "spine-edge": 0.15, "mediastinal-edge": 0.15,
                  "diaphragm": 0.15}


def _boundary(mask: np.ndarray) -> np.ndarray:
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    return mask & ~ndi.binary_erosion(mask, structure=st, border_value=1)


def mine_background_negatives(volume: CTVolume, lung_mask: np.ndarray, *, rng: np.random.Generator,
                              n: int = 32, exclude_xyz_mm=None, min_distance_mm: float = 30.0,
                              kinds: Mapping[str, float] | None = None, min_separation_mm: float = 8.0
                              ) -> pd.DataFrame:
    """Hard negatives from the real anatomy of a scan: look-alikes that are not lesions.

    Kinds (:data:`NEGATIVE_KINDS`, shares in ``kinds``):

    * ``vessel``: bright blobs in the lung, local maxima of a difference of Gaussians
      (1.5 and 4 mm) above -500 HU: vessel crossings and bifurcations, which a tube alone
      does not make (a blob responds more than a tube), ranked by the response;
    * ``airway-wall``: tissue (> -600 HU) within 2 mm of airway lumen (the darkest 1 % of the
      lung after a 1 mm smoothing, between -960 and -900 HU; components of 30 voxels or more);
    * ``spine-edge`` and ``mediastinal-edge``: points of the lung mask's in-plane edge in its
      medial quarter (towards the midline between the lungs), posterior third (beside the
      spine) or not, where the tissue beyond the edge is dense (> -300 HU);
    * ``diaphragm``: points of the mask's edge whose neighbour below (the feet) is not lung.

    Every point is in the lung mask (the edge kinds on its edge), at least
    ``min_distance_mm`` plus the known lesion's radius from each point of ``exclude_xyz_mm``
    (world points or a table with coordX, coordY, coordZ[, diameter_mm]), and
    ``min_separation_mm`` from the others.  A scan without reads is unknown: look at what is
    mined (:func:`montage`).

    Returns
    -------
    DataFrame with coordX, coordY, coordZ (world mm), diameter_mm (NaN for edges), kind,
    score and z, y, x (voxel).
    """
    cols = ["coordX", "coordY", "coordZ", "diameter_mm", "kind", "score", "z", "y", "x"]
    lung = np.asarray(lung_mask, dtype=bool)
    if lung.shape != volume.shape:
        raise ValueError(f"lung_mask: expected the volume's shape {volume.shape}. Received {lung.shape}")
    kinds = dict(NEGATIVE_KINDS if kinds is None else kinds)
    unknown = set(kinds) - set(NEGATIVE_KINDS)
    if unknown:
        raise ValueError(f"kinds: expected among {sorted(NEGATIVE_KINDS)}. Received {sorted(unknown)}")
    if not lung.any() or n <= 0:
        return pd.DataFrame(columns=cols)
    sp = np.asarray(volume.spacing, dtype=float)
    box = ndi.find_objects(lung.astype(np.uint8))[0]
    off = np.array([b.start for b in box])
    m = lung[box]
    h = volume.hu[box].astype(np.float32)
    pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}   # kind -> (zyx, score, diam)

    if kinds.get("vessel", 0) > 0:
        s1 = ndi.gaussian_filter(h, 1.5 / sp)
        dog = s1 - ndi.gaussian_filter(h, 4.0 / sp)
        size = np.maximum(np.round(5.0 / sp).astype(int) | 1, 1)
        peak = (dog == ndi.maximum_filter(dog, size=tuple(size))) & m & (s1 > -500) & (dog > 50)
        zyx = np.argwhere(peak)
        sc = dog[peak]
        pools["vessel"] = (zyx, sc, np.full(len(zyx), 5.0))
    if kinds.get("airway-wall", 0) > 0:
        sm1 = ndi.gaussian_filter(h, 1.0 / sp)
        # airway lumen is the darkest air of the lung (partial volume makes it lighter on thick slices)
        lumen = (sm1 < min(-900.0, max(-960.0, float(np.percentile(sm1[m], 1.0))))) & m
        lab, nl = ndi.label(lumen)
        if nl:
            sizes = ndi.sum(lumen, lab, index=np.arange(1, nl + 1))
            lumen = np.isin(lab, 1 + np.flatnonzero(sizes >= 30))
            it = max(int(round(2.0 / sp[1])), 1)
            st = np.zeros((3, 3, 3), bool)
            st[1] = ndi.generate_binary_structure(2, 1)
            near = ndi.binary_dilation(lumen, structure=st, iterations=it)
            wall = near & ~lumen & m & (h > -600)
            zyx = np.argwhere(wall)
            pools["airway-wall"] = (zyx, h[wall], np.full(len(zyx), math.nan))
    edge_kinds = [k for k in ("spine-edge", "mediastinal-edge", "diaphragm") if kinds.get(k, 0) > 0]
    if edge_kinds:
        edge = _boundary(m)
        # the tissue beyond an in-plane edge: the densest HU within 2 mm outside the mask
        r = max(int(round(2.0 / sp[1])), 1)
        dense = ndi.maximum_filter(np.where(m, -1024.0, h), size=(1, 2 * r + 1, 2 * r + 1)) > -300
        zyx = np.argwhere(edge & dense)
        if len(zyx):
            # medial quarter per slice: distance from the midline between the lungs
            xs_world = voxel_to_world(zyx + off, spacing=volume.spacing, origin=volume.origin,
                                      direction=volume.direction)
            lx = np.full(m.shape[0], np.nan)
            hx = np.full(m.shape[0], np.nan)
            ly = np.full(m.shape[0], np.nan)
            hy = np.full(m.shape[0], np.nan)
            for k in np.unique(zyx[:, 0]):
                sel = zyx[:, 0] == k
                lx[k], hx[k] = xs_world[sel, 0].min(), xs_world[sel, 0].max()
                ly[k], hy[k] = xs_world[sel, 1].min(), xs_world[sel, 1].max()
            kz = zyx[:, 0]
            mid = 0.5 * (lx[kz] + hx[kz])
            half = np.maximum(0.5 * (hx[kz] - lx[kz]), 1.0)
            medial = np.abs(xs_world[:, 0] - mid) < 0.25 * half
            posterior = xs_world[:, 1] > hy[kz] - (hy[kz] - ly[kz]) / 3.0       # LPS: +y is posterior
            if "spine-edge" in edge_kinds:
                sel = medial & posterior
                pools["spine-edge"] = (zyx[sel], np.ones(sel.sum()), np.full(sel.sum(), math.nan))
            if "mediastinal-edge" in edge_kinds:
                sel = medial & ~posterior
                pools["mediastinal-edge"] = (zyx[sel], np.ones(sel.sum()), np.full(sel.sum(), math.nan))
        if "diaphragm" in edge_kinds:
            head_up = float(np.asarray(volume.direction)[2, 2]) >= 0
            below = np.zeros_like(m)
            if head_up:
                below[1:] = m[1:] & ~m[:-1]
            else:
                below[:-1] = m[:-1] & ~m[1:]
            hb = np.zeros_like(h)
            if head_up:
                hb[1:] = h[:-1]
            else:
                hb[:-1] = h[1:]
            dia = below & (hb > -300)
            zyx = np.argwhere(dia)
            pools["diaphragm"] = (zyx, np.ones(len(zyx)), np.full(len(zyx), math.nan))

    ex_xyz, ex_r = _exclusion_array(exclude_xyz_mm)
    shares = np.array([kinds[k] for k in pools], dtype=float)
    if len(pools) == 0 or shares.sum() <= 0:
        return pd.DataFrame(columns=cols)
    want = dict(zip(pools, np.floor(shares / shares.sum() * n).astype(int)))
    order = sorted(pools, key=lambda k: -kinds[k])
    for k in order[: int(n - sum(want.values()))]:
        want[k] += 1
    chosen: list[dict] = []
    chosen_xyz: list[np.ndarray] = []

    def take(kind, budget):
        zyx, sc, diam = pools[kind]
        if len(zyx) == 0 or budget <= 0:
            return 0
        if kind == "vessel":       # the strongest blobs first, with some randomness among the top
            top = np.argsort(-sc)[: max(8 * budget, 50)]
            idx = top[rng.permutation(len(top))]
            idx = idx[np.argsort(-sc[idx], kind="stable")]
        else:
            idx = rng.permutation(len(zyx))
        got = 0
        for i in idx[: 200 * budget]:
            p_zyx = zyx[i] + off
            xyz = volume.voxel_to_world(p_zyx.astype(float))
            if len(ex_xyz) and np.any(np.linalg.norm(ex_xyz - xyz, axis=1) < min_distance_mm + ex_r):
                continue
            if chosen_xyz and np.min(np.linalg.norm(np.asarray(chosen_xyz) - xyz, axis=1)) < min_separation_mm:
                continue
            chosen_xyz.append(xyz)
            chosen.append({"coordX": xyz[0], "coordY": xyz[1], "coordZ": xyz[2], "diameter_mm": diam[i],
                           "kind": kind, "score": float(sc[i]), "z": int(p_zyx[0]), "y": int(p_zyx[1]),
                           "x": int(p_zyx[2])})
            got += 1
            if got >= budget:
                break
        return got

    short = 0
    for k in order:
        short += want[k] - take(k, want[k])
    if short > 0:                     # fill from the kinds that have more
        for k in order:
            short -= take(k, short)
            if short <= 0:
                break
    return pd.DataFrame(chosen, columns=cols)


def montage(volume: CTVolume, points: pd.DataFrame, *, size_mm: float = 48.0, tile_px: int = 96,
            cols: int = 8, window_hu=(-1000.0, 400.0)) -> np.ndarray:
    """Axial crops (``size_mm`` square, resampled to ``tile_px``) centred on each point, as one
    uint8 image of ``cols`` columns; a small cross marks each centre."""
    n = len(points)
    rows = max(int(math.ceil(n / cols)), 1)
    out = np.zeros((rows * (tile_px + 4), cols * (tile_px + 4)), dtype=np.uint8)
    lo, hi = window_hu
    for t, row in enumerate(points.itertuples(index=False)):
        zyx = volume.world_to_voxel(np.array([row.coordX, row.coordY, row.coordZ], dtype=float))
        k = int(np.clip(round(zyx[0]), 0, volume.shape[0] - 1))
        r = np.linspace(-size_mm / 2, size_mm / 2, tile_px)
        yy = zyx[1] + r[:, None] / volume.spacing[1] + 0 * r[None, :]
        xx = zyx[2] + r[None, :] / volume.spacing[2] + 0 * r[:, None]
        img = ndi.map_coordinates(volume.hu[k].astype(np.float32), [yy, xx], order=1, cval=-1024.0)
        img = np.clip((img - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        c = tile_px // 2
        img[c, c - 6:c - 2] = img[c, c + 3:c + 7] = 255
        img[c - 6:c - 2, c] = img[c + 3:c + 7, c] = 255
        y0, x0 = (t // cols) * (tile_px + 4) + 2, (t % cols) * (tile_px + 4) + 2
        out[y0:y0 + tile_px, x0:x0 + tile_px] = img
    return out
