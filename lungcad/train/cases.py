"""Training cases: every training data source (:mod:`lungcad.train.sources`) gives the same kind.

A :class:`Case` is one scan with what training needs to know about it:

* ``volume``: the :class:`~lungcad.volume.CTVolume`;
* ``lesions``: one row per lesion, columns :data:`LESION_COLUMNS`: world centre
  ``coordX, coordY, coordZ`` (LPS mm), ``diameter_mm``, ``nodule`` (1 for an annotated
  lesion; NaN for a weakly labelled candidate whose nodule status is unknown) and
  ``malignancy`` (a target in [0, 1], or NaN when unknown);
* ``negatives``: world centres of known non-nodules (columns :data:`NEGATIVE_COLUMNS`;
  ``diameter_mm`` NaN when the source gives none);
* ``lesion_mask``: a boolean voxel mask of the lesions when the source has one (phantoms);
  otherwise the segmentation target is a sphere of the annotated diameter
  (:func:`sphere_mask`);
* ``patient_label``: the patient's cancer label (1/0) or NaN.

Sources give :class:`CaseRef` objects, which load their case on demand, so that a data set
of hundreds of scans can be split by patient (:func:`split_by_patient`) and sampled without
holding every volume in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from lungcad.volume import CTVolume, world_to_voxel

LESION_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm", "nodule", "malignancy"]
NEGATIVE_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm"]


def lesion_table(rows=None) -> pd.DataFrame:
    """A lesion table with :data:`LESION_COLUMNS` (float), from a DataFrame or records."""
    df = pd.DataFrame(rows if rows is not None else [], columns=LESION_COLUMNS)
    return df.astype(float).reset_index(drop=True)


def negative_table(rows=None) -> pd.DataFrame:
    """A negatives table with :data:`NEGATIVE_COLUMNS` (float)."""
    df = pd.DataFrame(rows if rows is not None else [], columns=NEGATIVE_COLUMNS)
    return df.astype(float).reset_index(drop=True)


@dataclass
class Case:
    """One training scan (see the module docstring for the fields)."""

    volume: CTVolume
    lesions: pd.DataFrame = field(default_factory=lesion_table)
    negatives: pd.DataFrame = field(default_factory=negative_table)
    lesion_mask: np.ndarray | None = None
    lung_mask: np.ndarray | None = None
    patient_label: float = math.nan
    source: str = ""

    def __post_init__(self):
        missing = [c for c in LESION_COLUMNS if c not in self.lesions]
        if missing:
            raise ValueError(f"Case.lesions: expected columns {LESION_COLUMNS}. Missing {missing}")
        missing = [c for c in NEGATIVE_COLUMNS if c not in self.negatives]
        if missing:
            raise ValueError(f"Case.negatives: expected columns {NEGATIVE_COLUMNS}. Missing {missing}")
        for name in ("lesion_mask", "lung_mask"):
            m = getattr(self, name)
            if m is not None and np.shape(m) != self.volume.shape:
                raise ValueError(f"Case.{name}: expected the volume's shape {self.volume.shape}. "
                                 f"Received {np.shape(m)}")

    @property
    def patient_id(self) -> str:
        return self.volume.patient_id

    def load(self) -> "Case":
        """A case is already loaded (so a list may mix cases and :class:`CaseRef`)."""
        return self

    def segmentation_target(self) -> np.ndarray:
        """Boolean (z, y, x) lesion mask: the voxel mask if known, else annotated spheres.

        With a voxel mask, nodules under 30 mm also get their sphere (:func:`sphere_mask`):
        on 5-8 mm slices a small nodule may fill no voxel to more than half, so a voxel
        mask leaves it out, and the network would learn to ignore it.
        """
        lesions = self.lesions[self.lesions["nodule"] == 1]
        if self.lesion_mask is None:
            return sphere_mask(self.volume, lesions)
        small = lesions[lesions["diameter_mm"] < 30.0]
        mask = np.asarray(self.lesion_mask, dtype=bool)
        return mask | sphere_mask(self.volume, small) if len(small) else mask

    def unknown_target(self) -> np.ndarray | None:
        """Boolean (z, y, x) spheres of the lesions whose nodule status is unknown (NaN),
        such as the known real lesions of a background scan and their exclusion zones; None
        when there are none.  The segmenter is taught neither "lesion" nor "background" there.
        """
        unknown = self.lesions[self.lesions["nodule"].isna() & self.lesions["diameter_mm"].notna()]
        return sphere_mask(self.volume, unknown) if len(unknown) else None


@dataclass
class CaseRef:
    """A case not loaded yet: ``loader()`` returns the :class:`Case`.

    ``patient_id`` is known without loading, so data can be split by patient first.
    """

    patient_id: str
    loader: Callable[[], Case]
    source: str = ""
    description: str = ""

    def load(self) -> Case:
        return self.loader()


CaseLike = Case | CaseRef


def sphere_mask(volume: CTVolume, lesions: pd.DataFrame) -> np.ndarray:
    """Voxels of ``volume`` inside spheres of the lesions' diameters, around their world centres.

    Each voxel stands for its slab of tissue: a voxel is marked when the sphere's largest
    cross-section within that voxel's slice slab (thickness = the z spacing) covers the
    voxel's in-plane centre.  On 5-8 mm slices this marks the lesion's silhouette in every
    slice that cuts it, as a reader sees it, and a small nodule between two slice centres
    is not lost.  At least the voxel nearest each centre is marked.
    """
    out = np.zeros(volume.shape, dtype=bool)
    if len(lesions) == 0:
        return out
    sp = np.asarray(volume.spacing, dtype=float)
    d = np.asarray(volume.direction, dtype=float)
    for row in lesions.itertuples(index=False):
        centre = np.array([row.coordX, row.coordY, row.coordZ], dtype=float)
        r = max(float(row.diameter_mm), 0.0) / 2.0
        c = world_to_voxel(centre, spacing=volume.spacing, origin=volume.origin, direction=d)
        ext = np.ceil(r / sp + 1).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - ext, 0)
        hi = np.minimum(np.floor(c).astype(int) + ext + 2, volume.shape)
        if np.any(hi <= lo):
            continue
        kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        # offsets in the index frame, in mm (x, y, z along the index axes)
        off = np.stack([(ii - c[2]) * sp[2], (jj - c[1]) * sp[1], (kk - c[0]) * sp[0]], axis=-1)
        # the world offset, expressed back in the index frame, is off itself for a rotation;
        # the slab is along the index z axis: shrink |dz| by half a slice (clipped at 0)
        dz = np.maximum(np.abs(off[..., 2]) - sp[0] / 2.0, 0.0)
        inside = off[..., 0] ** 2 + off[..., 1] ** 2 + dz ** 2 <= r * r
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside
        near = np.clip(np.round(c).astype(int), 0, np.array(volume.shape) - 1)
        out[tuple(near)] = True
    return out


def _in_volume(volume: CTVolume, xyz: np.ndarray) -> np.ndarray:
    if len(xyz) == 0:
        return np.zeros(0, dtype=bool)
    zyx = world_to_voxel(np.atleast_2d(xyz), spacing=volume.spacing, origin=volume.origin,
                         direction=volume.direction)
    shape = np.asarray(volume.shape)
    return np.all((zyx >= -0.5) & (zyx <= shape - 0.5), axis=1)


def case_key(case: Case) -> str:
    """What tells one loaded scan from another of the same patient: the patient id with the
    case's source (the draws of one real background share the patient id, so that a split by
    patient keeps them together, and differ in their source, ``background:<folder>#draw<d>``)."""
    return f"{case.patient_id}|{case.source}" if case.source else case.patient_id


def off_lesions(table: pd.DataFrame, lesions: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``table`` that may be taught as non-nodules: farther than ``max(1.5 r, r + 5 mm)``
    from every lesion of radius r, so that fragments of a lesion are not."""
    return drop_near(drop_near(table, lesions, margin_mm=5.0), lesions, scale=1.5)


def drop_near(table: pd.DataFrame, findings: pd.DataFrame, *, margin_mm: float = 0.0,
              scale: float = 1.0) -> pd.DataFrame:
    """Rows of ``table`` farther than ``scale * diameter/2 + margin_mm`` from every finding."""
    if len(table) == 0 or len(findings) == 0:
        return table.reset_index(drop=True)
    a = table[["coordX", "coordY", "coordZ"]].to_numpy(float)
    b = findings[["coordX", "coordY", "coordZ"]].to_numpy(float)
    r = np.nan_to_num(findings["diameter_mm"].to_numpy(float), nan=0.0) / 2.0 * scale + margin_mm
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    keep = np.all(dist > r[None, :], axis=1)
    return table[keep].reset_index(drop=True)


def split_by_patient(cases: Sequence[CaseLike], *, val_fraction: float, seed: int = 0
                     ) -> tuple[list[CaseLike], list[CaseLike]]:
    """Split cases into training and validation sets with no patient in both.

    Patients (not scans) are shuffled with ``seed`` and ``round(val_fraction * n_patients)``
    of them, at least one when ``val_fraction > 0`` and there are two or more patients,
    go to validation.  Every scan of a patient goes where the patient goes.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a number in [0, 1). Received {val_fraction!r}")
    patients = sorted({c.patient_id for c in cases})
    if val_fraction == 0 or len(patients) < 2:
        return list(cases), []
    n_val = min(max(1, int(round(val_fraction * len(patients)))), len(patients) - 1)
    rng = np.random.default_rng(seed)
    val_ids = set(rng.permutation(np.array(patients, dtype=object))[:n_val].tolist())
    train = [c for c in cases if c.patient_id not in val_ids]
    val = [c for c in cases if c.patient_id in val_ids]
    return train, val
