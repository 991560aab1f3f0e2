"""False-positive reduction: a cube around each candidate -> zoo backbone -> two heads.

Patches are sampled in world space (LPS mm) around each candidate, so that the
network sees the same physical size whatever the scan's voxel size.  Nodules are
seen at ``patch_mm`` per voxel; a candidate too large to fit ``fit_fraction`` of
the cube (a mass) is seen at a coarser spacing so that the whole lesion fits, and
the spacing used is a second input of the network, so it still knows the size.

The backbone is any classifier of the zoo (``[fpr] backbone`` in the pipeline file).
A 3-D backbone sees the cube (``views="cube"``: (P, P, P, 1)); a 2-D backbone sees
2.5-D orthogonal views (``views="orthogonal"``: the axial, coronal and sagittal planes
through the candidate's centre as the three channels of a (P, P, 3) image).

Test-time augmentation (``tta``): the network also sees each candidate with its sampling
grid turned about world z by 90, 180 and 270 degrees and mirrored head-to-feet
(:func:`tta_rotations`), the transforms it was trained under, and the probabilities are
averaged.  A nodule looks the same in every view and a vessel or a fissure does not, so
the average ranks them apart better than one view does (``[fpr] tta`` in the pipeline).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.distance import cdist

from lungcad.candidates import window
from lungcad.inference import predict_batched, tta_rotations
from lungcad.volume import world_to_voxel

NODULE = "nodule"
MALIGNANCY = "malignancy"
VIEWS = ("cube", "orthogonal")
#: the nested backbone model of :func:`build_fpr_model` is named this prefix + the zoo name
BACKBONE_PREFIX = "backbone_"
#: The ``[fpr]`` keys that shape what the network sees: its weights hold only for these values.
#: Training records them in the model card's ``preprocessing`` (:func:`lungcad.train.train_fpr`),
#: and loading the weights checks them against the pipeline (:func:`lungcad.pipeline.check_fpr_model`).
PREPROCESSING = ("patch_size", "patch_mm", "fit_fraction", "window_hu")


def views_for(backbone: str) -> str:
    """``"cube"`` for a 3-D zoo backbone, ``"orthogonal"`` for a 2-D one.

    Raises ValueError for an unknown name and for a segmentation network (U-Net),
    which has no pooled features to put heads on.
    """
    from lungcad.models.registry import REGISTRY, list_models

    spec = REGISTRY.get(backbone)
    if spec is None:
        raise ValueError(f"unknown FPR backbone {backbone!r}; expected a zoo classifier, one of "
                         f"{[n for n in list_models() if REGISTRY[n].family != 'unet']}")
    if spec.family == "unet":
        raise ValueError(f"FPR backbone {backbone!r} is a segmentation network; expected a zoo classifier "
                         f"(e.g. wrn3d, resnet18-3d, or a 2-D one such as wrn2d or resnet18 on orthogonal views)")
    return "cube" if spec.dims == 3 else "orthogonal"


def patch_shape(views: str, patch_size: int) -> tuple[int, ...]:
    """The network's ``patch`` input shape for a kind of view."""
    if views == "cube":
        return (patch_size, patch_size, patch_size, 1)
    if views == "orthogonal":
        return (patch_size, patch_size, 3)
    raise ValueError(f"views must be one of {VIEWS}. Received {views!r}")


def model_patch_shape(model) -> tuple | None:
    """The shape (without the batch axis) of a built FPR Keras model's ``patch`` input, or None."""
    inputs = getattr(model, "input", None)
    patch = inputs.get("patch") if isinstance(inputs, dict) else None
    return None if patch is None else tuple(patch.shape[1:])


def model_views(model) -> str | None:
    """The views a built FPR Keras model takes (from its ``patch`` input), or None if unknown."""
    shape = model_patch_shape(model)
    if shape is None:
        return None
    return "cube" if len(shape) == 4 else "orthogonal" if len(shape) == 3 else None


def model_backbone(model) -> str | None:
    """The zoo name of an FPR model's backbone, as :func:`build_fpr_model` recorded it."""
    for layer in getattr(model, "layers", []):
        if layer.name.startswith(BACKBONE_PREFIX):
            return layer.name[len(BACKBONE_PREFIX):]
    return None


def patch_spacing(diameters_mm, *, patch_size: int = 32, patch_mm: float = 1.0,
                  fit_fraction: float = 0.7) -> np.ndarray:
    """The isotropic spacing (mm per voxel) at which each candidate's patch is sampled."""
    d = np.nan_to_num(np.asarray(diameters_mm, dtype=float), nan=0.0)
    return np.maximum(patch_mm, d / (fit_fraction * patch_size))


def extract_patches(hu: np.ndarray, centres_xyz, *, spacing_zyx, origin_xyz, direction=None,
                    scales_mm, patch_size: int = 32, window_hu=(-1000.0, 400.0),
                    rotation=None, views: str = "orthogonal") -> np.ndarray:
    """Sample isotropic cubes (N, P, P, P, 1), or orthogonal views (N, P, P, 3), float32
    in [0, 1], around world centres.

    Parameters
    ----------
    hu : ndarray (z, y, x)
    centres_xyz : array (N, 3), world mm (x, y, z)
    spacing_zyx : (z, y, x) mm, the voxel spacing
    origin_xyz : (x, y, z) mm, the world position (LPS) of voxel (0, 0, 0)
    direction : 3x3, optional
        Columns are the world directions of the x, y, z index axes (identity when None);
        see :mod:`lungcad.volume`.
    scales_mm : array (N,), the spacing of each cube in mm per voxel
    patch_size : int
    rotation : array (N, 3, 3), optional
        World-frame rotations applied to the sampling grid (training augmentation).
    views : ``"cube"`` or ``"orthogonal"``
        The orthogonal views are the planes through the centre: channel 0 axial
        (rows world y, columns world x), 1 coronal (z, x), 2 sagittal (z, y).  The default
        is what the shipped network (``[fpr] backbone = "wrn2d"``) takes.

    The cube's axes are world z, y, x; outside the scan is air.
    """
    return _sample_patches(window(hu, window_hu), centres_xyz, spacing_zyx=spacing_zyx,
                           origin_xyz=origin_xyz, direction=direction, scales_mm=scales_mm,
                           patch_size=patch_size, rotation=rotation, views=views)


def _sample_patches(w: np.ndarray, centres_xyz, *, spacing_zyx, origin_xyz, direction, scales_mm, patch_size: int,
                    rotation, views: str) -> np.ndarray:
    """:func:`extract_patches` from an already windowed volume ``w``."""
    centres = np.atleast_2d(np.asarray(centres_xyz, dtype=float))
    n = len(centres)
    scales = np.broadcast_to(np.asarray(scales_mm, dtype=float), (n,))
    P = int(patch_size)
    out = np.empty((n, *patch_shape(views, P)), dtype=np.float32)
    offsets = _grid_offsets(views, P)                                      # (M, xyz) in voxels
    for i in range(n):
        off = offsets * scales[i]
        if rotation is not None:
            off = off @ np.asarray(rotation[i]).T
        zyx = world_to_voxel(centres[i] + off, spacing=spacing_zyx, origin=origin_xyz, direction=direction)
        vals = ndimage.map_coordinates(w, zyx.T, order=1, mode="constant", cval=0.0, prefilter=False)
        if views == "cube":
            out[i, ..., 0] = vals.reshape(P, P, P)
        else:
            out[i] = vals.reshape(3, P, P).transpose(1, 2, 0)
    return out


def _grid_offsets(views: str, P: int) -> np.ndarray:
    """Sampling offsets (xyz, in units of the patch spacing) of a cube or of three planes."""
    r = np.arange(P) - (P - 1) / 2.0
    if views == "cube":
        gz, gy, gx = np.meshgrid(r, r, r, indexing="ij")
        return np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    a, b = np.meshgrid(r, r, indexing="ij")              # rows, columns of each view
    a, b, zero = a.ravel(), b.ravel(), np.zeros(P * P)
    axial = np.stack([b, a, zero], axis=1)               # rows y, columns x, at z = centre
    coronal = np.stack([b, zero, a], axis=1)             # rows z, columns x, at y = centre
    sagittal = np.stack([zero, b, a], axis=1)            # rows z, columns y, at x = centre
    return np.concatenate([axial, coronal, sagittal])


def build_fpr_model(*, backbone: str = "wrn2d", patch_size: int = 32, backbone_kwargs=None,
                    head_units: int = 64, dropout: float = 0.3, name: str = "fpr"):
    """A zoo backbone with two sigmoid heads: ``nodule`` and ``malignancy``.

    Inputs are ``patch`` and ``scale`` (1,): log2 of the patch spacing in mm.  Any zoo
    classifier works (``backbone`` names it, ``backbone_kwargs`` configure it): a 3-D one
    takes the cube (P, P, P, 1), a 2-D one the orthogonal views (P, P, 3) (:func:`views_for`).
    The defaults are the shipped pipeline's ``[fpr] backbone`` and ``patch_size``.
    The nested backbone model is named ``backbone_<zoo name>`` so that a loaded file
    tells which backbone it holds (:func:`model_backbone`).
    """
    import keras

    from lungcad.models import build_model

    shape = patch_shape(views_for(backbone), patch_size)
    patch = keras.Input(shape, name="patch")
    scale = keras.Input((1,), name="scale")
    body = build_model(backbone, input_shape=shape, include_top=False, pooling="avg",
                       name=f"{BACKBONE_PREFIX}{backbone}", **dict(backbone_kwargs or {}))
    feats = body(patch)
    x = keras.layers.Concatenate(name="features")([feats, scale])
    x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    nod = keras.layers.Dense(1, activation="sigmoid", name=NODULE)(x)
    mal = keras.layers.Dense(1, activation="sigmoid", name=MALIGNANCY)(x)
    return keras.Model({"patch": patch, "scale": scale}, {NODULE: nod, MALIGNANCY: mal}, name=name)


def classify_candidates(volume, candidates: pd.DataFrame, *, model, patch_size: int = 32,
                        patch_mm: float = 1.0, fit_fraction: float = 0.7,
                        window_hu=(-1000.0, 400.0), batch_size: int = 32,
                        views: str | None = None, tta: int = 8, tta_top: int | None = 200) -> pd.DataFrame:
    """Add ``nodule_prob``, ``malignancy_prob`` and ``patch_mm`` to a candidate table.

    ``probability`` becomes the nodule probability (the LUNA16 score); the
    segmentation score stays in ``seg_prob``.  ``model`` is a Keras model as built by
    :func:`build_fpr_model`, or any callable taking ``{"patch", "scale"}`` and
    returning ``{"nodule", "malignancy"}``.  ``views`` is the kind of patch the model
    takes; None reads it from a Keras model's input (a cube for other callables).
    ``tta`` is the number of test-time views (:func:`tta_rotations`) whose nodule and
    malignancy probabilities are averaged; 1 is the plain patch.  With ``tta_top``, every
    candidate is first scored on the plain patch, and only the ``tta_top`` that score
    highest get all ``tta`` views (a cascade: the averaging matters for the candidates that
    compete for the top ranks, and costs ``tta`` times as much); 0 or None gives them to all,
    as ``[fpr] tta_top = 0`` does.  The keyword defaults are the shipped pipeline's ``[fpr]``
    section, so a bare call scores as ``lungcad detect`` does.
    The table is returned sorted by probability.
    """
    rotations = tta_rotations(tta)
    if tta_top is not None and (int(tta_top) != tta_top or tta_top < 0):
        raise ValueError(f"tta_top: expected None or an integer >= 0 (0 = all). Received {tta_top!r}")
    views = views or model_views(model) or "cube"
    out = candidates.copy()
    if len(out) == 0:
        for col in ("nodule_prob", "malignancy_prob", "patch_mm"):
            out[col] = pd.Series(dtype=float)
        return out
    scales = patch_spacing(out["diameter_mm"].to_numpy(), patch_size=patch_size, patch_mm=patch_mm,
                           fit_fraction=fit_fraction)
    centres = out[["coordX", "coordY", "coordZ"]].to_numpy(float)
    w = window(volume.hu, window_hu)          # once per scan, not once per batch

    def score(idx, rots):
        nod = np.empty(len(idx), dtype=np.float32)
        mal = np.empty(len(idx), dtype=np.float32)
        r = len(rots)
        for s in range(0, len(idx), batch_size):
            sel = idx[s:s + batch_size]
            n = len(sel)
            # every view of the batch in one sampling call and one network call, view-major:
            # (views x candidates) patches, then the mean per candidate
            patches = _sample_patches(w, np.tile(centres[sel], (r, 1)),
                                      spacing_zyx=volume.spacing, origin_xyz=volume.origin, direction=volume.direction,
                                      scales_mm=np.tile(scales[sel], r), patch_size=patch_size,
                                      rotation=np.repeat(rots, n, axis=0), views=views)
            log_scale = np.log2(np.tile(scales[sel], r))[:, None].astype(np.float32)
            pred = predict_batched(model, {"patch": patches, "scale": log_scale}, batch_size=batch_size * r)
            nod[s:s + n] = np.asarray(pred[NODULE], dtype=np.float32).reshape(r, n).mean(axis=0)
            mal[s:s + n] = np.asarray(pred[MALIGNANCY], dtype=np.float32).reshape(r, n).mean(axis=0)
        return nod, mal

    everyone = np.arange(len(out))
    if not tta_top or len(rotations) == 1 or tta_top >= len(out):
        nod, mal = score(everyone, rotations)
    else:
        nod, mal = score(everyone, rotations[:1])
        top = np.argsort(-nod, kind="stable")[:int(tta_top)]
        if len(top):
            nod[top], mal[top] = score(top, rotations)
    out["nodule_prob"] = nod.astype(float)
    out["malignancy_prob"] = mal.astype(float)
    out["patch_mm"] = scales
    out["probability"] = out["nodule_prob"]
    return out.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def suppress_inside(candidates: pd.DataFrame, *, within: float = 0.5) -> pd.DataFrame:
    """Drop the candidates that lie inside a larger one that scores higher (non-maximum
    suppression by containment).

    Going down the table by ``probability``, a candidate is dropped when its centre lies
    closer than ``within`` times the ``diameter_mm`` of a kept candidate that is larger and
    scores at least as high: it is a part of that finding (one lobe of a mass, or the high
    core of a component that also joins the hilum) and would otherwise take a rank of its
    own.  A smaller candidate that scores higher stays, and so does the larger one.  Distances
    are in world mm (``coordX, coordY, coordZ``).  ``within = 0`` drops nothing.

    Returns the kept rows, sorted by descending ``probability``, with a fresh index.
    """
    if not (np.isfinite(within) and within >= 0):
        raise ValueError(f"within: expected a fraction of the diameter >= 0. Received within={within!r}")
    out = candidates.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
    if len(out) < 2 or within == 0:
        return out
    xyz = out[["coordX", "coordY", "coordZ"]].to_numpy(float)
    d = out["diameter_mm"].to_numpy(float)
    # covers[i, j]: i (earlier, so at least as probable) is larger than j and holds j's centre
    dist = cdist(xyz, xyz)
    covers = (d[:, None] > d[None, :]) & (dist < within * d[:, None])
    covers &= np.triu(np.ones(covers.shape, dtype=bool), k=1)
    keep = np.ones(len(out), dtype=bool)
    for j in np.flatnonzero(covers.any(axis=0)):       # few rows have a possible cover
        if (covers[:j, j] & keep[:j]).any():
            keep[j] = False
    return out[keep].reset_index(drop=True)
