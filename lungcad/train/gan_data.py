"""2-D nodule patches for the GAN, cut from synthetic phantoms with the FPR's own patch sampler.

Each lesion of a phantom gives its axial view (channel 0 of
:func:`lungcad.fpr.extract_patches` with ``views="orthogonal"``), at a spacing
in mm per pixel so that the patch's field of view is ``fov_mm`` wide, scaled
from [0, 1] (the lung window) to [-1, 1], the generator's tanh range.  The
conditions (:func:`conditions_of`) are the diameter in units of 10 mm and a
one-hot type (solid, part-solid, ground-glass).

:func:`fpr_lesion_patches` gives instead exactly what the FPR network is fed in
training: the lesion patches of ``lungcad train fpr``'s own training batches
(:func:`lungcad.train.fit_fpr.fpr_datasets`, all positives: the pipeline's
``[fpr]`` patch size, spacing and window, the backbone's views, augmentation
included), in [0, 1], so that a generator trained on them (after ``2 x - 1``)
makes patches that ``--gan-positives`` takes.
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


def fpr_lesion_patches(cases, *, config, n: int, seed: int = 0, batch_size: int = 32) -> np.ndarray:
    """``n`` lesion patches ``(n, *FPR input shape)`` in [0, 1], as ``lungcad train fpr`` feeds them.

    They are the lesions of the FPR training dataset of ``config`` built on ``cases`` with every
    sample a lesion (``positive_fraction=1``; augmented: rotation, centre, size and intensity
    jitter), batch after batch of seed ``seed``.  ValueError when the cases hold no lesion.
    """
    from lungcad.train.fit_fpr import fpr_datasets
    from lungcad.train.settings import TrainSettings

    n, batch_size = int(n), max(int(batch_size), 2)
    if n < 1:
        raise ValueError(f"expected a number of patches >= 1; received {n}")
    steps = -(-n // batch_size)
    settings = TrainSettings(batch_size=batch_size, steps_per_epoch=steps, seed=seed, verbose=0)
    data, _ = fpr_datasets(cases, [], config=config, settings=settings, hard=None, positive_fraction=1.0)
    out = []
    for index in range(steps):
        lesion = data.samples(index)["kind"].to_numpy() == "lesion"
        if not lesion.any():
            raise ValueError("the cases hold no lesion to cut patches around")
        out.append(data[index][0]["patch"][lesion])
    return np.concatenate(out)[:n].astype(np.float32)
