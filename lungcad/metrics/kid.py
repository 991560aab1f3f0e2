"""Kernel inception distance (Binkowski et al., 2018) on the features of any Keras backbone.

KID is the unbiased estimate of the squared maximum mean discrepancy between
the feature distributions of two image sets, with the cubic polynomial kernel
``k(x, y) = (x . y / d + 1) ** 3`` (``d`` the feature size), averaged over
random subsets of equal size.  It is 0 in expectation when both sets come from
one distribution (it can be slightly negative) and grows as they differ.
"""
from __future__ import annotations

import numpy as np


def mmd2_polynomial(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two feature sets ``(m, d)`` and ``(n, d)`` with the cubic polynomial kernel."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"expected two (n, d) feature arrays of one d and at least 2 rows; "
                         f"received shapes {x.shape} and {y.shape}")
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID's mean and standard deviation over ``subsets`` random subsets (of at most ``subset_size``) of each set."""
    real = np.asarray(real)
    fake = np.asarray(fake)
    size = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = [mmd2_polynomial(real[rng.choice(len(real), size, replace=False)],
                              fake[rng.choice(len(fake), size, replace=False)]) for _ in range(int(subsets))]
    return float(np.mean(values)), float(np.std(values))


def kernel_inception_distance(real_images, fake_images, backbone, *, subsets: int = 100, subset_size: int = 1000,
                              batch_size: int = 64, seed: int = 0) -> dict:
    """KID between two image sets on the (flattened) outputs of ``backbone``, a Keras model.

    Parameters
    ----------
    real_images, fake_images : array_like
        Image batches of the backbone's input shape, preprocessed as it expects.
    backbone : keras.Model
        The feature extractor, e.g. the FPR network's backbone (pooled features).
    subsets, subset_size : int, optional
        Random subsets averaged over, and their size (capped by the smaller set).

    Returns
    -------
    dict
        ``kid`` (mean), ``kid_std``, ``n_real``, ``n_fake``, ``subset_size``, ``subsets``.
    """
    def features(images):
        out = backbone.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0)
        return np.asarray(out).reshape(len(images), -1)

    real, fake = features(real_images), features(fake_images)
    kid, std = kid_from_features(real, fake, subsets=subsets, subset_size=subset_size, seed=seed)
    return {"kid": kid, "kid_std": std, "n_real": len(real), "n_fake": len(fake),
            "subset_size": min(subset_size, len(real), len(fake)), "subsets": int(subsets)}


def feature_backbone(model):
    """The feature extractor of a Keras model: an FPR network's nested backbone (pooled features,
    :func:`lungcad.fpr.build_fpr_model`), or any model with one input as it is."""
    from lungcad.fpr import BACKBONE_PREFIX, model_backbone

    name = model_backbone(model)
    if name is not None:
        return model.get_layer(f"{BACKBONE_PREFIX}{name}")
    if len(model.inputs) != 1:
        raise ValueError(f"expected an FPR network or a one-input feature model; {model.name!r} has "
                         f"{len(model.inputs)} inputs")
    return model
