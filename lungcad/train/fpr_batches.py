"""Batches of patches for the false-positive classifier: :class:`FPRDataset`, a Keras
``PyDataset`` (the common ground of both trainings' datasets: :mod:`lungcad.train.batching`).

Cubes are cut by :func:`lungcad.fpr.extract_patches`, the function inference uses, at the
spacing :func:`lungcad.fpr.patch_spacing` picks.  Half of each batch are lesions, half
non-nodules (known negatives, hard negatives of a segmenter, random lung points).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from lungcad.fpr import MALIGNANCY, NODULE, extract_patches, patch_shape, patch_spacing
from lungcad.train.batching import (_CasePool, _PyDataset, jitter_intensity, lung_box_of, random_lung_points,
                                    sample_rng)
from lungcad.train.cases import Case, CaseLike, case_key, drop_near, off_lesions
from lungcad.volume import voxel_to_world, world_to_voxel


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
    LUNA16 class-0 candidates), hard negatives (``hard_negatives``: {scan key: table} of
    segmenter candidates that hit no lesion, by :func:`lungcad.train.cases.case_key` or by
    patient id for all of a patient's scans) and random points of the lung mask
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
                 negatives_benign: bool = False, gan_positives: np.ndarray | None = None,
                 gan_ratio: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        patch_shape(views, 4)   # raises for an unknown kind of view
        if gan_positives is not None and tuple(gan_positives.shape[1:]) != patch_shape(views, patch_size):
            raise ValueError(f"generated positives of shape {patch_shape(views, patch_size)} (the FPR patches) "
                             f"expected; received {tuple(gan_positives.shape[1:])}")
        if not 0.0 <= gan_ratio <= 1.0:
            raise ValueError(f"0 <= gan_ratio <= 1 expected; received gan_ratio={gan_ratio!r}")
        #: Generated lesion patches (N, *patch shape) in [0, 1]; ``gan_ratio`` of each batch's lesions
        #: are replaced by draws from them (training only, nodule target 1, no malignancy label).
        self.gan_positives = None if gan_positives is None else np.asarray(gan_positives, np.float32)
        self.gan_ratio = float(gan_ratio)
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
        hard = self.hard_negatives.get(case_key(case), self.hard_negatives.get(case.patient_id))
        if hard is not None and len(hard):
            # a table given by patient id serves every scan of the patient (the draws of one real
            # background): another scan's mistakes may sit on this one's lesions
            hard = off_lesions(hard, les)
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
        if self.gan_positives is not None and self.gan_ratio > 0 and self.augment:
            lesions = np.flatnonzero(s["kind"].to_numpy() == "lesion")
            pick = lesions[:int(round(self.gan_ratio * len(lesions)))]
            patches[pick] = self.gan_positives[rng.integers(len(self.gan_positives), size=len(pick))]
            s.loc[pick, ["kind", "nodule", "nodule_weight", "malignancy", "malignancy_weight"]] = \
                ["generated", 1.0, 1.0, 0.0, 0.0]
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
