"""False-positive reduction: a cube around each candidate -> zoo backbone -> two heads.

Patches are sampled in world space (LPS mm) around each candidate, so that the
network sees the same physical size whatever the scan's voxel size.  Nodules are
seen at ``patch_mm`` per voxel; a candidate too large to fit ``fit_fraction`` of
the cube (a mass) is seen at a coarser spacing so that the whole lesion fits, and
the spacing used is a second input of the network, so it still knows the size.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lungcad.candidates import window
from lungcad.volume import world_to_voxel

NODULE = "nodule"
MALIGNANCY = "malignancy"


def patch_spacing(diameters_mm, *, patch_size: int = 32, patch_mm: float = 1.0,
                  fit_fraction: float = 0.7) -> np.ndarray:
    """The isotropic spacing (mm per voxel) at which each candidate's patch is sampled."""
    d = np.nan_to_num(np.asarray(diameters_mm, dtype=float), nan=0.0)
    return np.maximum(patch_mm, d / (fit_fraction * patch_size))


def extract_patches(hu: np.ndarray, centres_xyz, *, spacing, origin, direction=None,
                    scales_mm, patch_size: int = 32, window_hu=(-1000.0, 400.0),
                    rotation=None) -> np.ndarray:
    """Sample isotropic cubes (N, P, P, P, 1), float32 in [0, 1], around world centres.

    Parameters
    ----------
    hu : ndarray (z, y, x)
    centres_xyz : array (N, 3), world mm (x, y, z)
    spacing, origin, direction : the volume geometry (see :mod:`lungcad.volume`)
    scales_mm : array (N,), the spacing of each cube in mm per voxel
    patch_size : int
    rotation : array (N, 3, 3), optional
        World-frame rotations applied to the sampling grid (training augmentation).

    The cube's axes are world z, y, x; outside the scan is air.
    """
    centres = np.atleast_2d(np.asarray(centres_xyz, dtype=float))
    n = len(centres)
    scales = np.broadcast_to(np.asarray(scales_mm, dtype=float), (n,))
    out = np.empty((n, patch_size, patch_size, patch_size, 1), dtype=np.float32)
    r = (np.arange(patch_size) - (patch_size - 1) / 2.0)
    gz, gy, gx = np.meshgrid(r, r, r, indexing="ij")
    offsets = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)      # (P^3, xyz) in voxels
    w = window(hu, window_hu)
    for i in range(n):
        off = offsets * scales[i]
        if rotation is not None:
            off = off @ np.asarray(rotation[i]).T
        zyx = world_to_voxel(centres[i] + off, spacing=spacing, origin=origin, direction=direction)
        vals = ndimage.map_coordinates(w, zyx.T, order=1, mode="constant", cval=0.0, prefilter=False)
        out[i, ..., 0] = vals.reshape(patch_size, patch_size, patch_size)
    return out


def build_fpr_model(*, backbone: str = "wrn3d", patch_size: int = 32, backbone_kwargs=None,
                    head_units: int = 64, dropout: float = 0.3, name: str = "fpr"):
    """A zoo backbone with two sigmoid heads: ``nodule`` and ``malignancy``.

    Inputs are ``patch`` (P, P, P, 1) and ``scale`` (1,): log2 of the patch spacing in mm.
    Any 3-D zoo backbone works (``backbone`` names it, ``backbone_kwargs`` configure it).
    """
    import keras

    from lungcad.models import build_model

    patch = keras.Input((patch_size, patch_size, patch_size, 1), name="patch")
    scale = keras.Input((1,), name="scale")
    body = build_model(backbone, input_shape=(patch_size, patch_size, patch_size, 1),
                       include_top=False, pooling="avg", name=f"{name}_backbone",
                       **dict(backbone_kwargs or {}))
    feats = body(patch)
    x = keras.layers.Concatenate(name="features")([feats, scale])
    x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    nod = keras.layers.Dense(1, activation="sigmoid", name=NODULE)(x)
    mal = keras.layers.Dense(1, activation="sigmoid", name=MALIGNANCY)(x)
    return keras.Model({"patch": patch, "scale": scale}, {NODULE: nod, MALIGNANCY: mal}, name=name)


def classify_candidates(volume, candidates: pd.DataFrame, *, model, patch_size: int = 32,
                        patch_mm: float = 1.0, fit_fraction: float = 0.7,
                        window_hu=(-1000.0, 400.0), batch_size: int = 32) -> pd.DataFrame:
    """Add ``nodule_prob``, ``malignancy_prob`` and ``patch_mm`` to a candidate table.

    ``probability`` becomes the nodule probability (the LUNA16 score); the
    segmentation score stays in ``seg_prob``.  ``model`` is a Keras model as built by
    :func:`build_fpr_model`, or any callable taking ``{"patch", "scale"}`` and
    returning ``{"nodule", "malignancy"}``.  The table is returned sorted by probability.
    """
    out = candidates.copy()
    if len(out) == 0:
        for col in ("nodule_prob", "malignancy_prob", "patch_mm"):
            out[col] = pd.Series(dtype=float)
        return out
    scales = patch_spacing(out["diameter_mm"].to_numpy(), patch_size=patch_size, patch_mm=patch_mm,
                           fit_fraction=fit_fraction)
    nod = np.empty(len(out), dtype=np.float32)
    mal = np.empty(len(out), dtype=np.float32)
    centres = out[["coordX", "coordY", "coordZ"]].to_numpy(float)
    for s in range(0, len(out), batch_size):
        e = min(s + batch_size, len(out))
        patches = extract_patches(volume.hu, centres[s:e], spacing=volume.spacing, origin=volume.origin,
                                  direction=volume.direction, scales_mm=scales[s:e],
                                  patch_size=patch_size, window_hu=window_hu)
        pred = _predict(model, {"patch": patches, "scale": np.log2(scales[s:e])[:, None].astype(np.float32)})
        nod[s:e] = np.asarray(pred[NODULE], dtype=np.float32).reshape(-1)
        mal[s:e] = np.asarray(pred[MALIGNANCY], dtype=np.float32).reshape(-1)
    out["nodule_prob"] = nod.astype(float)
    out["malignancy_prob"] = mal.astype(float)
    out["patch_mm"] = scales
    out["probability"] = out["nodule_prob"]
    return out.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def _predict(model, inputs):
    if hasattr(model, "predict_on_batch"):
        return model.predict_on_batch(inputs)
    return model(inputs)
