"""Keras ``PyDataset``s that feed the two networks, with augmentation and class balance.

* :class:`SegmenterDataset`: 2.5D tiles for the candidate U-Net.  Each case is prepared
  once with :func:`lungcad.candidates.prepare_slices`, the function inference uses, over
  its lung box; the lesion mask goes through the same function, so image and target are
  resampled identically.  Tiles of ``tile`` x ``tile`` pixels (at ``pixel_mm``) are cut
  with ``positive_fraction`` of them holding a lesion pixel.
* :class:`FPRDataset`: cubes for the false-positive classifier, cut by
  :func:`lungcad.fpr.extract_patches`, the function inference uses, at the spacing
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
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from lungcad.candidates import context_indices, prepare_slices
from lungcad.fpr import MALIGNANCY, NODULE, extract_patches, patch_shape, patch_spacing
from lungcad.train.data import Case, CaseLike, drop_near
from lungcad.volume import voxel_to_world, world_to_voxel

try:  # keras is imported here, after the CLI set KERAS_BACKEND
    import keras

    _PyDataset = keras.utils.PyDataset
except ImportError as _e:  # pragma: no cover - keras is a dependency
    raise ImportError("lungcad.train needs keras >= 3") from _e


# --------------------------------------------------------------------------- helpers

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


# ----------------------------------------------------------------------- segmenter data

@dataclass
class _SegEntry:
    patient_id: str
    image: np.ndarray          # (z, Y, X) float16, windowed [0, 1], at pixel_mm, no padding
    target: np.ndarray         # (z, Y, X) uint8 0/1
    z_range: tuple[int, int]   # slices of the lung box inside ``image`` (tile centres)
    components: list[np.ndarray]  # per lesion: (n, 3) int (z, y, x) pixels of its target
    unknown: np.ndarray | None = None  # (z, Y, X) uint8: 1 where the label is unknown (no tile there)


class SegmenterDataset(_PyDataset):
    """Batches ``(x, y)`` for the candidate U-Net.

    ``x`` is ``(batch, tile, tile, 2c+1)`` float32 in [0, 1] (the input of
    :func:`lungcad.candidates.predict_probability_map`), ``y`` is ``(batch, tile, tile, 1)``
    float32 in {0, 1}: the lesion mask resampled the same way.

    Parameters
    ----------
    cases : sequence of Case or CaseRef
    context_slices, pixel_mm, window_hu : the candidate stage's preprocessing (take them
        from :class:`lungcad.config.CandidatesConfig`)
    margin_mm, threshold_hu : the lung box (from :class:`lungcad.config.LungMaskConfig`)
    tile : int
        Tile size in pixels (a multiple of the U-Net's ``2**depth``).
    batch_size, steps : batches of ``batch_size`` tiles, ``steps`` batches per epoch
    positive_fraction : float
        Share of tiles that contain a lesion pixel (rounded per batch).
    augment : bool
        Random geometry and intensity changes; without, the data is deterministic.
    seed : int
    max_cases_in_memory : int, optional
    """

    def __init__(self, cases: Sequence[CaseLike], *, context_slices: int = 1, pixel_mm: float = 1.25,
                 window_hu=(-1000.0, 400.0), margin_mm: float = 10.0, threshold_hu: float = -320.0,
                 tile: int = 128, batch_size: int = 16, steps: int = 100, positive_fraction: float = 0.6,
                 augment: bool = True, seed: int = 0, max_cases_in_memory: int | None = None,
                 verbose: bool = False, **kwargs):
        super().__init__(**kwargs)
        if tile < 16 or batch_size < 1 or steps < 1:
            raise ValueError(f"tile >= 16, batch_size >= 1 and steps >= 1 expected. Received "
                             f"tile={tile}, batch_size={batch_size}, steps={steps}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction: expected a value in [0, 1]. Received {positive_fraction}")
        self.context_slices = int(context_slices)
        self.pixel_mm = float(pixel_mm)
        self.window_hu = tuple(float(v) for v in window_hu)
        self.margin_mm = float(margin_mm)
        self.threshold_hu = float(threshold_hu)
        self.tile = int(tile)
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.positive_fraction = float(positive_fraction)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.pool = _CasePool(cases, self._prepare, max_in_memory=max_cases_in_memory, seed=self.seed,
                              verbose=verbose, workers=self.workers)

    # ---- preparation ------------------------------------------------------------------
    def _prepare(self, case: Case) -> _SegEntry:
        vol = case.volume
        box, _ = lung_box_of(case, margin_mm=self.margin_mm, threshold_hu=self.threshold_hu)
        c = self.context_slices
        z0, z1 = box[0].start or 0, box[0].stop if box[0].stop is not None else vol.shape[0]
        lo, hi = max(z0 - c, 0), min(z1 + c, vol.shape[0])
        kw = dict(spacing_zyx=vol.spacing, context_slices=0, pixel_mm=self.pixel_mm, tile=1)
        img, _ = prepare_slices(vol.hu[lo:hi, box[1], box[2]], window_hu=self.window_hu, **kw)
        tgt = case.segmentation_target()[lo:hi, box[1], box[2]].astype(np.float32)
        # the target goes through the same resampling; window (0, 1) leaves 0/1 values as they are
        tmap, _ = prepare_slices(tgt, window_hu=(0.0, 1.0), **kw)
        target = (tmap[..., 0] >= 0.5).astype(np.uint8)
        comps = []
        if target.any():
            lab, n = ndimage.label(target)
            for i, sl in enumerate(ndimage.find_objects(lab), start=1):
                if sl is None:
                    continue
                pts = np.argwhere(lab[sl] == i) + np.array([s.start for s in sl])
                if len(pts) > 4000:
                    pts = pts[np.random.default_rng([self.seed, i]).choice(len(pts), 4000, replace=False)]
                comps.append(pts.astype(np.int32))
        unknown = case.unknown_target() if hasattr(case, "unknown_target") else None
        if unknown is not None:
            umap, _ = prepare_slices(unknown[lo:hi, box[1], box[2]].astype(np.float32), window_hu=(0.0, 1.0), **kw)
            unknown = (umap[..., 0] > 0.0).astype(np.uint8) if (umap[..., 0] > 0.0).any() else None
        return _SegEntry(case.patient_id, img[..., 0].astype(np.float16), target,
                         (z0 - lo, z0 - lo + (z1 - z0)), comps, unknown)

    # ---- PyDataset ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        if self.augment:
            self.epoch += 1
            if self.pool.rotating:
                self.pool.load(self.epoch)

    def __getitem__(self, index: int):
        if index < 0 or index >= self.steps:
            raise IndexError(f"batch index {index} out of range [0, {self.steps})")
        rng = sample_rng(self.seed, self.epoch if self.augment else 0, index)
        entries = self.pool.entries
        with_lesion = [i for i, e in enumerate(entries) if e.components]
        n_pos = int(round(self.positive_fraction * self.batch_size)) if with_lesion else 0
        kinds = np.array([True] * n_pos + [False] * (self.batch_size - n_pos))
        rng.shuffle(kinds)
        T, C = self.tile, 2 * self.context_slices + 1
        x = np.empty((self.batch_size, T, T, C), dtype=np.float32)
        y = np.empty((self.batch_size, T, T, 1), dtype=np.float32)
        for b, positive in enumerate(kinds):
            # a tile that would show a lesion of unknown label is drawn again (up to 20 times)
            for _ in range(20):
                if positive:
                    ent = entries[with_lesion[rng.integers(len(with_lesion))]]
                    comp = ent.components[rng.integers(len(ent.components))]
                    zc, yc, xc = comp[rng.integers(len(comp))]
                    reach = max(T / 2.0 - 12.0, 0.0)
                    yc = yc + rng.uniform(-reach, reach)
                    xc = xc + rng.uniform(-reach, reach)
                else:
                    ent = entries[rng.integers(len(entries))]
                    zc = rng.integers(ent.z_range[0], max(ent.z_range[1], ent.z_range[0] + 1))
                    yc = rng.uniform(0, ent.image.shape[1])
                    xc = rng.uniform(0, ent.image.shape[2])
                img, tgt, unknown = self._tile(ent, int(zc), float(yc), float(xc), rng)
                if not unknown:
                    break
            x[b], y[b, ..., 0] = img, tgt
        return x, y

    def _tile(self, ent: _SegEntry, zc: int, yc: float, xc: float, rng
              ) -> tuple[np.ndarray, np.ndarray, bool]:
        """The image and target tile, and whether it shows any pixel of unknown label."""
        T, c = self.tile, self.context_slices
        zs = context_indices(ent.image.shape[0], c)[zc]
        if self.augment:
            if rng.random() < 0.5:
                zs = zs[::-1]
            angle = rng.integers(4) * (np.pi / 2) + np.deg2rad(rng.uniform(-15.0, 15.0))
            scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            flip = 1.0 if rng.random() < 0.5 else -1.0
            ca, sa = np.cos(angle), np.sin(angle)
            A = scale * np.array([[ca, -sa], [sa, ca]]) @ np.diag([1.0, flip])
        else:
            A = np.eye(2)
        r = np.arange(T) - T / 2.0
        gy, gx = np.meshgrid(r, r, indexing="ij")
        src = A @ np.stack([gy.ravel(), gx.ravel()])
        if self.augment:
            coords = src + np.array([[yc], [xc]])
        else:   # an exact crop
            coords = np.round(src) + np.array([[round(yc)], [round(xc)]])
        img = np.empty((T, T, len(zs)), dtype=np.float32)
        for k, z in enumerate(zs):
            img[..., k] = ndimage.map_coordinates(ent.image[z].astype(np.float32), coords, order=1,
                                                  mode="constant", cval=0.0,
                                                  prefilter=False).reshape(T, T)
        tgt = ndimage.map_coordinates(ent.target[zc].astype(np.float32), coords, order=1,
                                      mode="constant", cval=0.0, prefilter=False).reshape(T, T)
        tgt = (tgt >= 0.5).astype(np.float32)
        unknown = False
        if ent.unknown is not None:
            unknown = any(ndimage.map_coordinates(ent.unknown[z], coords, order=0, mode="constant",
                                                  cval=0, prefilter=False).any() for z in set(zs))
        if self.augment:
            jitter_intensity(img, rng)
        return img, tgt, unknown


# ----------------------------------------------------------------------------- FPR data

@dataclass
class _FPREntry:
    patient_id: str
    hu: np.ndarray
    spacing: tuple
    origin: tuple
    direction: np.ndarray
    positives: pd.DataFrame     # coordX..Z, diameter_mm, nodule, malignancy
    negatives: pd.DataFrame     # coordX..Z, diameter_mm (known negatives, NaN diameter allowed)
    hard: pd.DataFrame          # coordX..Z, diameter_mm (hard negatives)
    random_points: np.ndarray   # (n, 3) world xyz of lung points away from lesions


#: Share of each kind of negative in a batch (renormalised over the kinds a data set has).
NEGATIVE_MIX = {"known": 0.25, "hard": 0.6, "random": 0.15}


class FPRDataset(_PyDataset):
    """Batches ``(inputs, targets, sample_weights)`` for the FPR network.

    * ``inputs``: ``{"patch": (B, P, P, P, 1) float32 in [0, 1], "scale": (B, 1) float32}``
      (``views="orthogonal"``: patches (B, P, P, 3), see :func:`lungcad.fpr.extract_patches`),
      the scale being log2 of the patch spacing in mm, as in :func:`lungcad.fpr.classify_candidates`;
    * ``targets``: ``{"nodule": (B, 1), "malignancy": (B, 1)}`` float32;
    * ``sample_weights``: ``{"nodule": (B,), "malignancy": (B,)}`` float32.  The malignancy
      head learns from lesions with a known malignancy only (weight 0 elsewhere, and the
      target is then 0 rather than NaN); the nodule head from every sample whose nodule
      status is known (weak DSB2017 candidates have weight 0 there).  With
      ``negatives_benign`` the negatives also teach the malignancy head (target 0,
      weight 1): it then reads as the probability of a *malignant lesion*, and the
      false positives that pass FPR add little to the patient's noisy-OR.

    Half of each batch (``positive_fraction``) are lesions, the rest negatives drawn by
    :data:`NEGATIVE_MIX` from known negatives (``case.negatives``: phantom distractors,
    LUNA16 class-0 candidates), hard negatives (``hard_negatives``: {patient id: table}
    of segmenter candidates that hit no lesion) and random points of the lung mask
    farther than radius + 10 mm from every lesion.  Negatives with no diameter get one
    drawn from 3-30 mm (80 %) or 30-80 mm (20 %), so that the coarse patch scale of masses
    is not by itself a sign of a lesion.

    Parameters
    ----------
    cases : sequence of Case or CaseRef
    patch_size, patch_mm, fit_fraction, window_hu : the FPR stage's preprocessing
        (from :class:`lungcad.config.FPRConfig`)
    batch_size, steps, positive_fraction, augment, seed, max_cases_in_memory : as for
        :class:`SegmenterDataset`
    hard_negatives : dict, optional
    """

    def __init__(self, cases: Sequence[CaseLike], *, patch_size: int = 32, patch_mm: float = 1.0,
                 fit_fraction: float = 0.7, window_hu=(-1000.0, 400.0), batch_size: int = 32,
                 steps: int = 100, positive_fraction: float = 0.5, augment: bool = True, seed: int = 0,
                 hard_negatives: dict[str, pd.DataFrame] | None = None,
                 max_cases_in_memory: int | None = None, margin_mm: float = 10.0,
                 threshold_hu: float = -320.0, verbose: bool = False, views: str = "cube",
                 negatives_benign: bool = False, **kwargs):
        super().__init__(**kwargs)
        patch_shape(views, 4)   # raises for an unknown kind of view
        self.views = views
        self.negatives_benign = bool(negatives_benign)
        if batch_size < 2 or steps < 1 or patch_size < 4:
            raise ValueError(f"batch_size >= 2, steps >= 1 and patch_size >= 4 expected. Received "
                             f"batch_size={batch_size}, steps={steps}, patch_size={patch_size}")
        self.patch_size = int(patch_size)
        self.patch_mm = float(patch_mm)
        self.fit_fraction = float(fit_fraction)
        self.window_hu = tuple(float(v) for v in window_hu)
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.positive_fraction = float(positive_fraction)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.hard_negatives = dict(hard_negatives or {})
        self.margin_mm = float(margin_mm)
        self.threshold_hu = float(threshold_hu)
        self.pool = _CasePool(cases, self._prepare, max_in_memory=max_cases_in_memory, seed=self.seed,
                              verbose=verbose, workers=self.workers)
        self._index()

    # ---- preparation ------------------------------------------------------------------
    def _prepare(self, case: Case) -> _FPREntry:
        vol = case.volume
        les = case.lesions
        pos = les[(les["nodule"] == 1) | les["malignancy"].notna()].reset_index(drop=True)
        _, lung = lung_box_of(case, margin_mm=self.margin_mm, threshold_hu=self.threshold_hu)
        rng = np.random.default_rng([self.seed, 5, zlib.crc32(case.patient_id.encode())])
        pts = random_lung_points(lung, rng, n=4000)
        xyz = voxel_to_world(pts.astype(float), spacing=vol.spacing, origin=vol.origin,
                             direction=vol.direction) if len(pts) else np.zeros((0, 3))
        rand = pd.DataFrame(np.atleast_2d(xyz).reshape(-1, 3), columns=["coordX", "coordY", "coordZ"])
        rand["diameter_mm"] = math.nan
        rand = drop_near(rand, les, margin_mm=10.0)
        hard = self.hard_negatives.get(case.patient_id)
        hard = (hard[["coordX", "coordY", "coordZ", "diameter_mm"]].reset_index(drop=True)
                if hard is not None and len(hard) else pd.DataFrame(columns=["coordX", "coordY", "coordZ",
                                                                              "diameter_mm"]))
        return _FPREntry(case.patient_id, np.asarray(vol.hu), vol.spacing, vol.origin,
                         np.asarray(vol.direction, float), pos, case.negatives.reset_index(drop=True),
                         hard, rand[["coordX", "coordY", "coordZ"]].to_numpy(float))

    def _index(self) -> None:
        ents = self.pool.entries
        self._pos = [(i, j) for i, e in enumerate(ents) for j in range(len(e.positives))]
        self._neg = {
            "known": [(i, j) for i, e in enumerate(ents) for j in range(len(e.negatives))],
            "hard": [(i, j) for i, e in enumerate(ents) for j in range(len(e.hard))],
            "random": [(i, j) for i, e in enumerate(ents) for j in range(len(e.random_points))],
        }
        kinds = [k for k in NEGATIVE_MIX if self._neg[k]]
        if not kinds and not self._pos:
            raise ValueError("the FPR dataset found neither lesions nor negatives in its cases")
        w = np.array([NEGATIVE_MIX[k] for k in kinds], dtype=float)
        self._neg_kinds = kinds
        self._neg_p = w / w.sum() if len(w) else w

    # ---- PyDataset ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        if self.augment:
            self.epoch += 1
            if self.pool.rotating:
                self.pool.load(self.epoch)
                self._index()

    def samples(self, index: int) -> pd.DataFrame:
        """The samples of batch ``index`` before augmentation: case, kind, centre, diameter,
        targets and weights (what :meth:`__getitem__` turns into patches)."""
        rng = sample_rng(self.seed, self.epoch if self.augment else 0, index)
        return self._draw(rng)

    def _draw(self, rng) -> pd.DataFrame:
        B = self.batch_size
        n_pos = int(round(self.positive_fraction * B)) if self._pos else 0
        if not self._neg_kinds:
            n_pos = B
        ents = self.pool.entries
        rows = []
        for _ in range(n_pos):
            i, j = self._pos[rng.integers(len(self._pos))]
            p = ents[i].positives.iloc[j]
            nod, mal = p["nodule"], p["malignancy"]
            rows.append((i, "lesion", p["coordX"], p["coordY"], p["coordZ"], p["diameter_mm"],
                         0.0 if math.isnan(nod) else float(nod), 0.0 if math.isnan(nod) else 1.0,
                         0.0 if math.isnan(mal) else float(mal), 0.0 if math.isnan(mal) else 1.0))
        for _ in range(B - n_pos):
            kind = self._neg_kinds[rng.choice(len(self._neg_kinds), p=self._neg_p)]
            i, j = self._neg[kind][rng.integers(len(self._neg[kind]))]
            e = ents[i]
            if kind == "random":
                x, y, z = e.random_points[j]
                d = math.nan
            else:
                t = e.negatives if kind == "known" else e.hard
                x, y, z, d = (float(t[c].iloc[j]) for c in ("coordX", "coordY", "coordZ", "diameter_mm"))
            if math.isnan(d):
                d = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0)) if rng.random() < 0.8
                                 else rng.uniform(np.log(30.0), np.log(80.0))))
            rows.append((i, kind, x, y, z, d, 0.0, 1.0, 0.0, 1.0 if self.negatives_benign else 0.0))
        order = rng.permutation(len(rows))
        cols = ["case", "kind", "coordX", "coordY", "coordZ", "diameter_mm", "nodule", "nodule_weight",
                "malignancy", "malignancy_weight"]
        return pd.DataFrame([rows[k] for k in order], columns=cols)

    def __getitem__(self, index: int):
        if index < 0 or index >= self.steps:
            raise IndexError(f"batch index {index} out of range [0, {self.steps})")
        rng = sample_rng(self.seed, self.epoch if self.augment else 0, index)
        s = self._draw(rng)
        P, B = self.patch_size, len(s)
        centres = s[["coordX", "coordY", "coordZ"]].to_numpy(float)
        diam = s["diameter_mm"].to_numpy(float)
        rot = np.repeat(np.eye(3)[None], B, axis=0)
        if self.augment:
            sigma = np.maximum(1.0, 0.04 * diam)
            centres = centres + np.clip(rng.normal(0.0, 1.0, (B, 3)), -2.0, 2.0) * sigma[:, None]
            diam = diam * np.exp(rng.uniform(-0.2, 0.2, B))
            rot = np.stack([_random_rotation(rng) for _ in range(B)])
        scales = patch_spacing(diam, patch_size=P, patch_mm=self.patch_mm, fit_fraction=self.fit_fraction)
        patches = np.empty((B, *patch_shape(self.views, P)), dtype=np.float32)
        ents = self.pool.entries
        for b in range(B):
            patches[b] = self._patch(ents[int(s["case"].iloc[b])], centres[b], scales[b], rot[b])
            if self.augment:
                jitter_intensity(patches[b], rng)
        inputs = {"patch": patches, "scale": np.log2(scales).astype(np.float32)[:, None]}
        targets = {NODULE: s["nodule"].to_numpy(np.float32)[:, None],
                   MALIGNANCY: s["malignancy"].to_numpy(np.float32)[:, None]}
        weights = {NODULE: s["nodule_weight"].to_numpy(np.float32),
                   MALIGNANCY: s["malignancy_weight"].to_numpy(np.float32)}
        return inputs, targets, weights

    def _patch(self, e: _FPREntry, centre: np.ndarray, scale: float, rotation: np.ndarray) -> np.ndarray:
        """:func:`extract_patches` on a crop of the volume that holds the whole rotated cube."""
        sp = np.asarray(e.spacing, dtype=float)
        half_mm = (self.patch_size / 2.0 + 1.0) * scale * math.sqrt(3.0)
        c = world_to_voxel(centre, spacing=e.spacing, origin=e.origin, direction=e.direction)
        ext = np.ceil(half_mm / sp).astype(int) + 2
        shape = np.array(e.hu.shape)
        lo = np.clip(np.floor(c).astype(int) - ext, 0, shape)
        hi = np.clip(np.floor(c).astype(int) + ext + 1, 0, shape)
        if np.any(hi - lo < 2):   # the cube lies outside the scan: it is all air
            return np.zeros(patch_shape(self.views, self.patch_size), dtype=np.float32)
        crop = e.hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        origin = voxel_to_world(lo.astype(float), spacing=e.spacing, origin=e.origin, direction=e.direction)
        return extract_patches(crop, centre[None], spacing_zyx=e.spacing, origin_xyz=origin, direction=e.direction,
                               scales_mm=[scale], patch_size=self.patch_size, window_hu=self.window_hu,
                               rotation=rotation[None], views=self.views)[0]


def _random_rotation(rng) -> np.ndarray:
    """A rotation about world z (any angle), small tilts (+-15 degrees) and random flips."""
    phi = rng.uniform(0, 2 * np.pi)
    a, b = np.deg2rad(rng.uniform(-15, 15, 2))
    rz = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    flips = np.diag(np.where(rng.random(3) < 0.5, -1.0, 1.0))
    return rz @ rx @ ry @ flips
