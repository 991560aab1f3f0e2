"""The measurements of 3-D candidates (the support, the probability-weighted centre, the
soft volume, the equivalent-sphere diameter, the extent; see :mod:`lungcad.morphology`),
and the columns they add to the candidate table (:data:`EXTRA_COLUMNS`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

#: Columns that :func:`extract_candidates` adds to :data:`lungcad.result.CANDIDATE_COLUMNS`.
#: ``source`` says where a candidate came from: :data:`SOURCE_UNET` (a component of the
#: U-Net's map) or :data:`SOURCE_DENSE` (a dense blob, :func:`add_dense_candidates`).
EXTRA_COLUMNS = ["seg_prob", "volume_mm3", "z_extent_mm", "n_slices", "source"]
SOURCE_UNET = "unet"
SOURCE_DENSE = "dense"


_NEIGHBOURS = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1)
                        for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)])


#: The halo's cost per candidate voxel over the maximum filter's per box voxel (about 2.5 us
#: against 15 ns on the benchmark machine): above one candidate voxel in 150, the filter wins
#: (the 300-slice benchmark scan's 296 k voxels in a 25 M box: 0.74 -> 0.38 s).
_HALO_COST = 150


def _support(own: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Voxel coordinates and candidate ids of the candidates grown by one voxel (26-connected);
    an empty voxel next to several candidates takes the largest id."""
    coords = np.nonzero(own)
    ids = own[coords]
    if ids.size * _HALO_COST > own.size:
        # dense maps: a separable 3 x 3 x 3 maximum over the whole box is cheaper
        grown = ndimage.maximum_filter(own, size=3, mode="constant", cval=0)
        support = np.where(own > 0, own, grown)
        where = np.nonzero(support)
        return where, support[where]
    shape = np.array(own.shape)
    pts = np.stack(coords, axis=1)
    halo = (pts[:, None, :] + _NEIGHBOURS[None, :, :]).reshape(-1, 3)
    hid = np.repeat(ids, len(_NEIGHBOURS))
    ok = np.all((halo >= 0) & (halo < shape), axis=1)
    halo, hid = halo[ok], hid[ok]
    empty = own[tuple(halo.T)] == 0
    halo, hid = halo[empty], hid[empty]
    flat = np.ravel_multi_index(tuple(halo.T), own.shape)
    order = np.lexsort((hid, flat))
    flat, hid = flat[order], hid[order]
    last = np.r_[flat[1:] != flat[:-1], True]
    flat, hid = flat[last], hid[last]
    hz = np.unravel_index(flat, own.shape)
    where = tuple(np.concatenate([c, h]) for c, h in zip(coords, hz))
    return where, np.concatenate([ids, hid])


def measure_candidates(cand_map: np.ndarray, n_cand: int, prob: np.ndarray, sp: np.ndarray,
                       mask) -> pd.DataFrame:
    """Centre, soft volume, diameter and extent of candidates 1..n_cand (module docstring).

    The support of a candidate is its voxels grown by one voxel in 3-D (8-connected in-plane,
    and the slices just above and below), without the voxels of other candidates; where two
    grown candidates meet, the voxel goes to one of them.
    """
    boxes = ndimage.find_objects(cand_map, max_label=n_cand)
    lo = [max(0, min(b[a].start for b in boxes if b is not None) - 1) for a in range(3)]
    hi = [min(cand_map.shape[a], max(b[a].stop for b in boxes if b is not None) + 1)
          for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    own = cand_map[box]
    where, sid = _support(own)
    p = np.clip(prob[box][where].astype(float), 0.0, 1.0)
    wsum = np.bincount(sid, weights=p, minlength=n_cand + 1)[1:]
    # a candidate without probability mass (all zero) is located by its own voxels
    is_own = (own[where] == sid).astype(float)
    w = np.where(wsum[sid - 1] > 0, p, is_own)
    wtot = np.bincount(sid, weights=w, minlength=n_cand + 1)[1:]
    centre = [np.bincount(sid, weights=w * (c + o), minlength=n_cand + 1)[1:] / wtot
              for c, o in zip(where, lo)]
    volume = wsum * float(np.prod(sp))
    ow = np.nonzero(own)
    pmax = np.full(n_cand + 1, -np.inf)
    np.maximum.at(pmax, own[ow], prob[box][ow].astype(float))
    pmax = pmax[1:]
    kmin = np.array([b[0].start if b is not None else 0 for b in boxes])
    kmax = np.array([b[0].stop - 1 if b is not None else -1 for b in boxes])
    n_slices = kmax - kmin + 1
    table = pd.DataFrame({
        "z": centre[0], "y": centre[1], "x": centre[2],
        "diameter_mm": (6.0 * volume / np.pi) ** (1.0 / 3.0),
        "seg_prob": np.asarray(pmax, float), "volume_mm3": volume,
        "z_extent_mm": n_slices * float(sp[0]), "n_slices": n_slices.astype(int),
    })
    present = np.array([b is not None for b in boxes])
    if mask is not None:
        touches = np.zeros(n_cand + 1, bool)
        touches[np.unique(own[mask[box] & (own > 0)])] = True
        present &= touches[1:]
    return table[present].reset_index(drop=True)
