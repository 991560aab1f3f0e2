"""Batches of 2.5D tiles for the candidate U-Net: :class:`SegmenterDataset`, a Keras
``PyDataset`` (the common ground of both trainings' datasets: :mod:`lungcad.train.batching`).

Each case is prepared once with :func:`lungcad.candidates.prepare_slices`, the function
inference uses, over its lung box; the lesion mask goes through the same function, so image
and target are resampled identically.  Tiles of ``tile`` x ``tile`` pixels (at ``pixel_mm``)
are cut with ``positive_fraction`` of them holding a lesion pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from lungcad.candidates import context_indices, prepare_slices
from lungcad.train.batching import _CasePool, _PyDataset, jitter_intensity, lung_box_of, sample_rng
from lungcad.train.cases import Case, CaseLike


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
