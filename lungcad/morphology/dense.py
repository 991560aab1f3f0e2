"""A second, classical source of candidates: compact dense blobs in the lung.

The U-Net misses many calcified nodules (granulomas): small, round and denser than soft
tissue, they look to it like the end of a vessel or a rib.  The FPR network scores them as
nodules when a candidate is put on them, so the gap is one of candidates, and a classical
rule closes it: a blob of smoothed HU >= ``min_hu`` that is

* small: no wider than ``max_diameter_mm`` along any axis, and at least ``min_diameter_mm``
  across (equivalent sphere);
* compact: its longest principal axis at most ``max_elongation`` times its shortest
  in-plane one (a contrast-filled vessel is a tube);
* in the lung: it touches the lung mask, and at least ``min_air_fraction`` of a shell
  ``shell_mm`` thick around it is lung density (below -500 HU).  An isolated nodule's shell
  is nearly all lung, a juxta-pleural one's about half; a rib, the spine, calcium in the
  aorta or the heart, and a calcified lymph node in the mediastinum have none.

Blobs that a U-Net candidate already covers (its centre within the larger of the two
radii) are left out.  The rest join the table with the U-Net's highest probability
inside them as ``seg_prob``; the FPR network ranks them with the others.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lungcad.checks import check_spacing, check_volume
from lungcad.result import CANDIDATE_COLUMNS, table_text
from lungcad.volume import voxel_to_world

from .measure import EXTRA_COLUMNS, SOURCE_DENSE

#: HU below which a shell voxel counts as lung (air or aerated parenchyma).
LUNG_HU = -500.0


def _ball(radius_mm: float, sp: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / sp).astype(int), 0)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * sp[0]) ** 2 + (yy * sp[1]) ** 2 + (xx * sp[2]) ** 2 <= radius_mm ** 2 + 1e-9


def dense_blobs(hu, *, spacing_zyx, lung_mask, min_hu: float = 150.0, min_diameter_mm: float = 2.0,
                max_diameter_mm: float = 15.0, max_elongation: float = 3.0, shell_mm: float = 2.5,
                min_air_fraction: float = 0.35, smooth_mm: float = 0.6) -> pd.DataFrame:
    """The dense blobs of ``hu`` in the lung (module docstring), in voxel coordinates.

    Parameters
    ----------
    hu : ndarray (z, y, x)
        The scan in HU.
    spacing_zyx : (z, y, x) mm
    lung_mask : ndarray of bool, (z, y, x)
        Only blobs that touch it are looked at, inside its bounding box.
    min_hu : float
        Threshold on the scan smoothed in-plane with a Gaussian of ``smooth_mm``.

    Returns
    -------
    blobs : DataFrame
        ``z, y, x`` (voxel indices of the scan: the centre of mass of the blob's HU above
        ``min_hu``), ``diameter_mm`` (equivalent sphere), ``volume_mm3``, ``z_extent_mm``,
        ``n_slices``, ``peak_hu``, ``air_fraction``, and ``label``: the blob's id in ``labels``.
    labels : ndarray of int32
        The dense components, over ``box``.
    box : tuple of slices
        The lung mask's bounding box with room for the shell.
    """
    hu = check_volume("hu", hu)
    lung_mask = check_volume("lung_mask", lung_mask).astype(bool)
    if lung_mask.shape != hu.shape:
        raise ValueError(f"lung_mask: expected the shape of hu {hu.shape}. Received {lung_mask.shape}")
    sp = check_spacing(spacing_zyx).astype(float)
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in
                          ("z", "y", "x", "diameter_mm", "volume_mm3", "z_extent_mm", "n_slices",
                           "peak_hu", "air_fraction", "label")})
    found = ndimage.find_objects(lung_mask.astype(np.uint8))
    if not found or found[0] is None:
        return empty, np.zeros((0, 0, 0), np.int32), (slice(0, 0),) * 3
    pad = [int(np.ceil((shell_mm + 1.0) / s)) + 1 for s in sp]
    box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(found[0], pad, hu.shape))
    h = hu[box].astype(np.float32)
    if smooth_mm > 0:
        h = ndimage.gaussian_filter(h, sigma=(0.0, smooth_mm / sp[1], smooth_mm / sp[2]), truncate=2.5)
    dense = h >= min_hu
    labels, n = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return empty, labels, box
    ids = np.arange(1, n + 1)
    in_lung = np.zeros(n + 1, bool)
    in_lung[np.unique(labels[lung_mask[box] & dense])] = True
    objs = ndimage.find_objects(labels)
    ball = _ball(shell_mm, sp)
    voxel = float(np.prod(sp))
    rows = []
    for i, sl in zip(ids, objs):
        if sl is None or not in_lung[i]:
            continue
        ext = np.array([s.stop - s.start for s in sl]) * sp
        if ext.max() > max_diameter_mm:
            continue
        grow = tuple(slice(max(s.start - r, 0), min(s.stop + r, m))
                     for s, r, m in zip(sl, np.array(ball.shape) // 2, labels.shape))
        own = labels[grow] == i
        nvox = int(own.sum())
        diameter = (6.0 * nvox * voxel / np.pi) ** (1.0 / 3.0)
        if diameter < min_diameter_mm:
            continue
        pts = np.argwhere(own) * sp
        if len(pts) >= 4:
            cov = np.cov(pts.T) + np.diag((sp ** 2) / 12.0)   # a voxel's own extent
            ev = np.linalg.eigvalsh(cov)
            if np.sqrt(ev[-1] / max(ev[0], 1e-9)) > max_elongation:
                continue
        shell = ndimage.binary_dilation(own, structure=ball) & ~ndimage.binary_dilation(own)
        if not shell.any():
            continue
        air = float((h[grow][shell] < LUNG_HU).mean())
        if air < min_air_fraction:
            continue
        w = h[grow][own] - min_hu + 1.0
        c = (np.argwhere(own) * w[:, None]).sum(0) / w.sum() + np.array([g.start for g in grow])
        rows.append({"z": c[0], "y": c[1], "x": c[2], "diameter_mm": diameter, "volume_mm3": nvox * voxel,
                     "z_extent_mm": ext[0], "n_slices": int(sl[0].stop - sl[0].start),
                     "peak_hu": float(h[grow][own].max()), "air_fraction": air, "label": int(i)})
    if not rows:
        return empty, labels, box
    out = pd.DataFrame(rows)
    offset = np.array([b.start for b in box], float)
    out[["z", "y", "x"]] = out[["z", "y", "x"]].to_numpy(float) + offset
    return out, labels, box


def add_dense_candidates(table: pd.DataFrame, hu, prob, *, spacing_zyx, origin_xyz, direction=None,
                         lung_mask, series_uid: str = "", max_added: int = 50, min_hu: float = 150.0,
                         smooth_mm: float = 0.6, min_diameter_mm: float = 2.0, max_diameter_mm: float = 15.0,
                         max_elongation: float = 3.0, shell_mm: float = 2.5,
                         min_air_fraction: float = 0.35) -> pd.DataFrame:
    """``table`` (the U-Net's candidates) with the dense blobs it does not cover appended.

    The blob keywords are :func:`dense_blobs`'s.  At most ``max_added`` blobs are added
    (0 = off: ``table`` as it is), the densest (highest ``peak_hu``) first; ``seg_prob`` and
    ``probability`` are the U-Net's highest probability inside the blob (``prob``, aligned
    with ``hu``), and ``source`` is :data:`SOURCE_DENSE`.  A blob counts as covered, and is
    left out, when a candidate's centre lies within the larger of the two radii, or 3 mm.
    """
    if max_added <= 0:
        return table
    sp = check_spacing(spacing_zyx).astype(float)
    blobs, labels, box = dense_blobs(hu, spacing_zyx=sp, lung_mask=lung_mask, min_hu=min_hu, smooth_mm=smooth_mm,
                                     min_diameter_mm=min_diameter_mm, max_diameter_mm=max_diameter_mm,
                                     max_elongation=max_elongation, shell_mm=shell_mm,
                                     min_air_fraction=min_air_fraction)
    if len(blobs) == 0:
        return table
    zyx = blobs[["z", "y", "x"]].to_numpy(float)
    if len(table):
        tz = table[["z", "y", "x"]].to_numpy(float)
        d = np.sqrt((((zyx[:, None, :] - tz[None, :, :]) * sp) ** 2).sum(-1))
        reach = np.maximum(blobs["diameter_mm"].to_numpy(float)[:, None],
                           table["diameter_mm"].to_numpy(float)[None, :]) / 2.0
        covered = (d < np.maximum(reach, 3.0)).any(axis=1)
        blobs, zyx = blobs[~covered], zyx[~covered]
    if len(blobs) == 0:
        return table
    order = np.argsort(-blobs["peak_hu"].to_numpy(float), kind="stable")[:max_added]
    blobs, zyx = blobs.iloc[order].reset_index(drop=True), zyx[order]
    # each blob's own bounding box: ndimage.maximum(prob, labels, index) sorts the whole box
    ids = blobs["label"].to_numpy(int)
    objs = ndimage.find_objects(labels, max_label=int(ids.max()))
    pmax = np.array([float(np.max(prob[box][objs[i - 1]][labels[objs[i - 1]] == i], initial=0.0)) for i in ids])
    xyz = np.atleast_2d(voxel_to_world(zyx, spacing=sp, origin=origin_xyz, direction=direction))
    add = pd.DataFrame({
        "seriesuid": table_text(series_uid), "coordX": xyz[:, 0], "coordY": xyz[:, 1], "coordZ": xyz[:, 2],
        "z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2],
        "diameter_mm": np.maximum(blobs["diameter_mm"].to_numpy(float), 3.0),
        "probability": np.asarray(pmax, float), "seg_prob": np.asarray(pmax, float),
        "volume_mm3": blobs["volume_mm3"].to_numpy(float), "z_extent_mm": blobs["z_extent_mm"].to_numpy(float),
        "n_slices": blobs["n_slices"].to_numpy(int), "source": SOURCE_DENSE})
    add = add[CANDIDATE_COLUMNS + EXTRA_COLUMNS]
    if len(table) == 0:
        return add.reset_index(drop=True)
    return pd.concat([table, add], ignore_index=True)
