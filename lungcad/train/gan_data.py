"""2-D nodule patches for the GAN, cut from synthetic phantoms with the FPR's own patch sampler.

Each lesion of a phantom gives its axial view (channel 0 of
:func:`lungcad.fpr.extract_patches` with ``views="orthogonal"``), at a spacing
in mm per pixel so that the patch's field of view is ``fov_mm`` wide, scaled
from [0, 1] (the lung window) to [-1, 1], the generator's tanh range.  The
conditions (:func:`conditions_of`) are the diameter in units of 10 mm and a
one-hot type (solid, part-solid, ground-glass).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungcad.fpr import extract_patches

TYPES = ("solid", "part-solid", "ground-glass")


def conditions_of(lesions: pd.DataFrame) -> np.ndarray:
    """``(n, 4)`` float32: diameter / 10 mm, then one-hot of :data:`TYPES` (a calcified lesion: all zero).

    The four values are the ``condition`` input of the registry's ``cdcgan-*`` networks.
    """
    diameter = lesions["diameter_mm"].to_numpy(float)[:, None] / 10.0
    texture = lesions["texture"].astype(str).to_numpy()
    onehot = (texture[:, None] == np.array(TYPES)[None, :]).astype(float)
    return np.concatenate([diameter, onehot], axis=1).astype(np.float32)


def lesion_patches(volume, lesions: pd.DataFrame, *, patch_size: int = 64, fov_mm: float = 64.0) -> np.ndarray:
    """Axial patches ``(n, P, P, 1)`` in [-1, 1] around ``lesions`` (world ``coordX/Y/Z``) of a CT volume."""
    if len(lesions) == 0:
        return np.zeros((0, patch_size, patch_size, 1), np.float32)
    centres = lesions[["coordX", "coordY", "coordZ"]].to_numpy(float)
    views = extract_patches(volume.hu, centres, spacing_zyx=volume.spacing, origin_xyz=volume.origin,
                            direction=getattr(volume, "direction", None),
                            scales_mm=np.full(len(centres), fov_mm / patch_size), patch_size=patch_size,
                            views="orthogonal")
    return (2.0 * views[..., :1] - 1.0).astype(np.float32)


def phantom_patches(seeds, *, patch_size: int = 64, fov_mm: float = 64.0, phantom_kwargs=None):
    """Patches and lesion table of the phantoms of ``seeds`` (:func:`lungcad.synthetic.generate_phantom`)."""
    from lungcad.synthetic import generate_phantom

    patches, tables = [], []
    for seed in seeds:
        phantom = generate_phantom(seed=int(seed), **(phantom_kwargs or {}))
        lesions = phantom.lesions.reset_index(drop=True)
        patches.append(lesion_patches(phantom.volume, lesions, patch_size=patch_size, fov_mm=fov_mm))
        tables.append(lesions.assign(seed=int(seed)))
    return (np.concatenate(patches) if patches else np.zeros((0, patch_size, patch_size, 1), np.float32),
            pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())
