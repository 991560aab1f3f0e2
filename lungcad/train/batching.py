"""Keras ``PyDataset``s that feed the two networks, with augmentation and class balance.

* :class:`~lungcad.train.segmenter_batches.SegmenterDataset`: 2.5D tiles for the candidate
  U-Net.  Each case is prepared once with :func:`lungcad.candidates.prepare_slices`, the function inference uses, over
  its lung box; the lesion mask goes through the same function, so image and target are
  resampled identically.  Tiles of ``tile`` x ``tile`` pixels (at ``pixel_mm``) are cut
  with ``positive_fraction`` of them holding a lesion pixel.
* :class:`~lungcad.train.fpr_batches.FPRDataset`: cubes for the false-positive classifier,
  cut by :func:`lungcad.fpr.extract_patches`, the function inference uses, at the spacing
  :func:`lungcad.fpr.patch_spacing` picks.  Half of each batch are lesions, half
  non-nodules (known negatives, hard negatives of a segmenter, random lung points).

Augmentation (``augment=True``), drawn per sample from a generator seeded by
``(seed, epoch, batch index)`` so that a run is reproducible whatever the worker order:

* geometry: flips, 90-degree and small (+-15 degree) rotations, scaling, and for the
  FPR a random rotation about z with small tilts, centre jitter (1-2 mm) and diameter
  jitter (which changes the patch scale of masses);
* intensity: a HU offset (+-28 HU) and contrast (+-5 %), and Gaussian noise.

The geometry of image and target is changed by one resampling of both, so a lesion's
label stays on its image.  Without augmentation a dataset is deterministic (validation).

Cases are loaded (phantoms are generated) once, when the dataset is made.  With
``max_cases_in_memory`` smaller than the number of cases, a new random subset is loaded
at the end of each epoch instead (for data sets such as LUNA16 that do not fit in memory).

This module holds what the two share: the Keras base class, the case pool, the per-batch
generator, the intensity augmentation, lung boxes and random lung points.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from lungcad.train.cases import Case, CaseLike


try:  # keras is imported here, after the CLI set KERAS_BACKEND
    import keras

    _PyDataset = keras.utils.PyDataset
except ImportError as _e:  # pragma: no cover - keras is a dependency
    raise ImportError("lungcad.train needs keras >= 3") from _e


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one batch: independent of worker order and of other batches."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def jitter_intensity(x: np.ndarray, rng: np.random.Generator, *, offset: float = 0.02,
                     contrast: float = 0.05, noise: float = 0.02) -> np.ndarray:
    """HU offset, contrast and Gaussian noise on windowed [0, 1] data (in place, clipped).

    With the default window of 1400 HU, ``offset=0.02`` is +-28 HU and ``noise=0.02`` a
    standard deviation of up to 28 HU.
    """
    a = 1.0 + rng.uniform(-contrast, contrast)
    b = rng.uniform(-offset, offset)
    x *= a
    x += b
    sigma = rng.uniform(0.0, noise)
    if sigma > 0:
        x += rng.normal(0.0, sigma, size=x.shape).astype(x.dtype)
    np.clip(x, 0.0, 1.0, out=x)
    return x


def lung_box_of(case: Case, *, margin_mm: float, threshold_hu: float = -320.0):
    """The lung box (3 slices) of a case and its lung mask, as inference computes them."""
    from lungcad.lungmask import lung_box, segment_lungs

    mask = case.lung_mask
    if mask is None:
        mask = segment_lungs(case.volume.hu, spacing_zyx=case.volume.spacing, threshold_hu=threshold_hu).mask
    return lung_box(mask, spacing_zyx=case.volume.spacing, margin_mm=margin_mm), np.asarray(mask, bool)


def random_lung_points(lung: np.ndarray, rng: np.random.Generator, *, n: int = 4000,
                       reach: int = 2) -> np.ndarray:
    """Up to ``n`` random voxels (z, y, x) of the lungs and of the tissue just around them.

    A voxel qualifies when it, or a voxel ``reach`` pixels away along a row or a column, is
    in the lung mask: that adds the pleura, the mediastinal border and the hilum, where
    masses touch the lung.  Drawn by rejection inside the lungs' bounding box, so the cost
    does not grow with the size of the scan.
    """
    lung = np.asarray(lung, dtype=bool)
    if not lung.any():
        return np.zeros((0, 3), dtype=np.int64)
    box = ndimage.find_objects(lung.astype(np.uint8))[0]
    lo = np.array([max(b.start - (reach if i else 0), 0) for i, b in enumerate(box)])
    hi = np.array([min(b.stop + (reach if i else 0), sz) for i, (b, sz) in enumerate(zip(box, lung.shape))])
    out, tries = [], 0
    while sum(len(o) for o in out) < n and tries < 20:
        tries += 1
        cand = rng.integers(lo, hi, size=(4 * n, 3))
        z, y, x = cand.T
        ok = lung[z, y, x].copy()
        for dy, dx in ((reach, 0), (-reach, 0), (0, reach), (0, -reach)):
            yy = np.clip(y + dy, 0, lung.shape[1] - 1)
            xx = np.clip(x + dx, 0, lung.shape[2] - 1)
            ok |= lung[z, yy, xx]
        out.append(cand[ok])
    pts = np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)
    return pts[:n]


class _CasePool:
    """The cases a dataset holds in memory, prepared by ``prepare(case) -> entry``."""

    def __init__(self, cases: Sequence[CaseLike], prepare: Callable, *, max_in_memory: int | None,
                 seed: int, verbose: bool, workers: int = 1):
        if len(cases) == 0:
            raise ValueError("a training dataset needs at least one case. Received none")
        self.cases = list(cases)
        self.prepare = prepare
        self.max_in_memory = max_in_memory
        self.seed = seed
        self.verbose = verbose
        self.workers = max(int(workers), 1)
        self.entries: list = []
        self.load(0)

    @property
    def rotating(self) -> bool:
        return self.max_in_memory is not None and self.max_in_memory < len(self.cases)

    def load(self, epoch: int) -> None:
        if self.rotating:
            rng = np.random.default_rng([self.seed, epoch, 99])
            idx = sorted(rng.choice(len(self.cases), size=self.max_in_memory, replace=False).tolist())
        else:
            idx = range(len(self.cases))
        todo = [self.cases[i] for i in idx]

        def one(c):
            return self.prepare(c.load())

        if self.workers > 1 and len(todo) > 1:
            # reading .npz files, making phantoms and resampling release the GIL for most of their time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.workers) as ex:
                it = ex.map(one, todo)          # results in the order of ``todo``
                self.entries = list(self._progress(it, len(todo)))
        else:
            self.entries = [one(c) for c in self._progress(todo, len(todo))]

    def _progress(self, it, total: int):
        if not self.verbose:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc="preparing cases", unit="case", leave=False)
