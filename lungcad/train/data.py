"""Training data: every source becomes the same kind of *case*.

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
of hundreds of scans can be split by patient and sampled without holding every volume in
memory.  The sources:

* :func:`synthetic_cases`: phantoms of :mod:`lungcad.synthetic`, made from a seed range
  with a mix of acquisition protocols (thin and 5/8 mm slices, 0.6-0.9 mm pixels of a
  512-pixel field of view) and with masses that touch the mediastinum;
* :func:`luna16_cases`: ``subset*/*.mhd`` with ``annotations.csv`` (lesions),
  ``candidates_V2.csv`` (class-0 rows are negatives) and ``annotations_excluded.csv``
  (findings that are neither: negatives near them are dropped);
* :func:`lidc_cases`: LIDC-IDRI series folders with their XML reads; the lesions are the
  consensus of at least 3 readers and the malignancy target is ``(mean rating - 1) / 4``;
* :func:`dsb2017_cases` and :func:`apply_patient_labels`: DSB2017 ``stage1_labels.csv``
  patient labels, turned into weak lesion labels (see :func:`apply_patient_labels`);
* :func:`background_cases`: real CT scans without reads (any folder), with lesions inserted
  by :func:`lungcad.synthetic.insertion.insert_lesions` (several draws per scan) and hard
  negatives mined from their anatomy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from lungcad.atomic import atomic_path
from lungcad.errors import InputError
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


# ----------------------------------------------------------------------------- geometry

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


# ---------------------------------------------------------------------------- splitting

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


# ---------------------------------------------------------------------------- synthetic

#: Acquisition protocols of the training phantoms: (slice spacing mm, probability).
#: Close to the generator's own mix (1-2.5 mm for LUNA16-like scans), with a little more
#: weight on the 5 and 8 mm slices of scans like the Lung-PET-CT-Dx series; 1 mm slices
#: are left to 1.25 mm, which the 2.5D U-Net sees alike and which is faster to make.
SLICE_PROTOCOLS = ((1.25, 0.3), (2.5, 0.25), (5.0, 0.28), (8.0, 0.17))


def phantom_protocol(seed: int, *, full_size: bool = False, pixel_mm: float = 1.0,
                     slice_mm: float | None = None) -> dict:
    """The acquisition a training phantom of ``seed`` is made with: ``shape`` and ``spacing``.

    The field of view is that of a 512-pixel scan with 0.6-0.9 mm pixels (307-461 mm) and
    the slice spacing is drawn from :data:`SLICE_PROTOCOLS` (or fixed by ``slice_mm``).  With
    ``full_size`` the phantom is made at 512 x 512; otherwise at the same field of view with
    ``pixel_mm`` pixels, which is faster, and still finer than the 1.25 mm the U-Net sees.
    The number of slices is left to the generator (it covers the chest).
    """
    rng = np.random.default_rng([int(seed), 7])
    native = float(rng.uniform(0.6, 0.9))
    fov = 512 * native
    if slice_mm is None:
        sl = [s for s, _ in SLICE_PROTOCOLS]
        p = np.array([q for _, q in SLICE_PROTOCOLS], dtype=float)
        slice_mm = float(rng.choice(sl, p=p / p.sum()))
    n_xy = 512 if full_size else int(round(fov / pixel_mm))
    n_xy += n_xy % 2
    px = fov / n_xy
    return {"shape": (None, n_xy, n_xy), "spacing": (float(slice_mm), px, px)}


def phantom_case(phantom, *, source: str = "synthetic") -> Case:
    """A :class:`Case` from a :class:`lungcad.synthetic.Phantom`.

    The segmentation target is the phantom's voxel mask of lesions.  Lesions of 3 mm and
    more are positives with the malignancy target ``malignancy_prob``: the probability the
    generator drew the ``malignant`` flag from, so the head learns the risk itself rather
    than one noisy draw of it.  Micro-nodules (< 3 mm) have ``nodule`` and ``malignancy``
    NaN: neither positives nor negatives, as in LUNA16.  Negatives are the phantom's
    distractors (vessel crossings and bifurcations).
    """
    from lungcad.synthetic import LABELS

    vol = phantom.volume
    return Case(volume=vol, lesions=_synthetic_lesions(phantom.lesions),
                negatives=negative_table(phantom.distractors[NEGATIVE_COLUMNS]
                                         if len(phantom.distractors) else None),
                lesion_mask=np.asarray(phantom.labels) == LABELS["lesion"],
                lung_mask=np.asarray(phantom.lung_mask(), dtype=bool),
                patient_label=float(phantom.cancer), source=source)


def _synthetic_lesions(les: pd.DataFrame) -> pd.DataFrame:
    if len(les) == 0:
        return lesion_table()
    big = les["diameter_mm"].to_numpy(float) >= 3.0
    mal = les["malignancy_prob"].to_numpy(float) if "malignancy_prob" in les else \
        les["malignant"].to_numpy(float)
    return lesion_table(pd.DataFrame({
        "coordX": les["coordX"].to_numpy(float), "coordY": les["coordY"].to_numpy(float),
        "coordZ": les["coordZ"].to_numpy(float), "diameter_mm": les["diameter_mm"].to_numpy(float),
        "nodule": np.where(big, 1.0, np.nan), "malignancy": np.where(big, mal, np.nan)}))


def phantom_patient_id(seed: int) -> str:
    """The patient id of the training phantom of ``seed``."""
    return f"SYN-{int(seed)}"


def synthetic_cases(n: int, *, seed: int = 0, full_size: bool = False, pixel_mm: float = 1.0,
                    slice_mm: float | None = None, mass_fraction: float = 2 / 3,
                    phantom_kwargs: dict | None = None, cache_dir: str | Path | None = None
                    ) -> list[CaseRef]:
    """``n`` phantoms with seeds ``seed, seed + 1, ...``, each made when it is loaded.

    Each seed gets its own protocol (:func:`phantom_protocol`).  A share ``mass_fraction``
    of the phantoms get a mass (30-70 mm, most touching the mediastinum or hilum, as the
    generator places them), against about 30 % by the generator's own draw, because masses
    are what a threshold-based pipeline loses.  With ``phantom_kwargs={"domain": "randomized"}``
    (and no ``slice_mm``) the generator draws the slice thickness and the pixel size from the
    domain's ranges; only the matrix size comes from the protocol.  ``phantom_kwargs`` go to
    :func:`lungcad.synthetic.generate_phantom` and override these choices.  With
    ``cache_dir``, a phantom is generated once and read back from an ``.npz`` file there
    (the segmenter and FPR trainings then share their phantoms).
    """
    if int(n) < 0:
        raise ValueError(f"n: expected a number of phantoms >= 0. Received {n!r}")
    refs = []
    randomized = (phantom_kwargs or {}).get("domain", "default") != "default"
    for s in range(int(seed), int(seed) + int(n)):
        kw = phantom_protocol(s, full_size=full_size, pixel_mm=pixel_mm, slice_mm=slice_mm)
        if randomized and slice_mm is None:
            # a randomised domain draws the slice thickness, the increment and the pixel size
            # itself (lungcad.synthetic.domain, held-out bands left out); keep the matrix only
            kw = {"shape": kw["shape"]}
        rng = np.random.default_rng([s, 11])
        kw["n_masses"] = int(rng.random() < mass_fraction)
        kw.update(phantom_kwargs or {})
        kw["patient_id"] = phantom_patient_id(s)

        def load(s=s, kw=kw):
            return _cached_phantom_case(s, kw, cache_dir)
        refs.append(CaseRef(patient_id=phantom_patient_id(s), loader=load, source="synthetic",
                            description=f"phantom seed {s}"))
    return refs


def _cached_phantom_case(seed: int, kw: dict, cache_dir) -> Case:
    from lungcad.synthetic import generate_phantom

    if cache_dir is None:
        return phantom_case(generate_phantom(seed=seed, **kw), source=f"synthetic:{seed}")
    import hashlib
    import io
    import json

    gen = hashlib.sha256()
    for src in sorted((Path(__file__).resolve().parents[1] / "synthetic").glob("*.py")):
        gen.update(src.read_bytes())            # a changed generator makes new phantoms
    key = hashlib.sha256(json.dumps({"seed": seed, **kw, "generator": gen.hexdigest()}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"phantom-{seed}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            vol = CTVolume(hu=z["hu"], spacing=tuple(z["spacing"]), origin=tuple(z["origin"]),
                           direction=z["direction"], patient_id=str(z["patient_id"]),
                           series_uid=str(z["series_uid"]))
            shape = vol.shape
            lesion_mask = np.unpackbits(z["lesion_mask"])[:np.prod(shape)].reshape(shape).astype(bool)
            lung_mask = np.unpackbits(z["lung_mask"])[:np.prod(shape)].reshape(shape).astype(bool)
            lesions = pd.read_csv(io.StringIO(str(z["lesions"])))
            negatives = pd.read_csv(io.StringIO(str(z["negatives"])))
            label = float(z["patient_label"])
        return Case(volume=vol, lesions=lesion_table(lesions), negatives=negative_table(negatives),
                    lesion_mask=lesion_mask, lung_mask=lung_mask, patient_label=label,
                    source=f"synthetic:{seed}")
    case = phantom_case(generate_phantom(seed=seed, **kw), source=f"synthetic:{seed}")
    v = case.volume
    with atomic_path(path, suffix=".npz") as tmp:          # np.savez adds .npz to other names
        np.savez(tmp, hu=v.hu, spacing=np.asarray(v.spacing), origin=np.asarray(v.origin),
                 direction=np.asarray(v.direction), patient_id=v.patient_id, series_uid=v.series_uid,
                 lesion_mask=np.packbits(case.lesion_mask), lung_mask=np.packbits(case.lung_mask),
                 lesions=case.lesions.to_csv(index=False), negatives=case.negatives.to_csv(index=False),
                 patient_label=case.patient_label)
    return case


def _refuse_evaluation_family(root: Path) -> None:
    """An evaluation family of the generalisation protocol (lungcad.protocol) is never trained on."""
    import json

    from lungcad.synthetic import domain

    for name in ("family.json", "domain.json"):
        f = root / name
        if not f.is_file():
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f, f"unreadable: {e}") from e
        if name == "family.json" or d.get("domain") == "shifted" or \
                d.get("seed") in (domain.VALIDATION_SEED, domain.SHIFTED_SEED):
            raise InputError(root, "holds an evaluation family of the generalisation protocol "
                                   f"({f.name}: domain {d.get('domain')}, seed {d.get('seed')}); it is never trained on")


def synth_dir_cases(root: str | Path, *, max_cases: int | None = None) -> list[CaseRef]:
    """Cases of a folder written by ``lungcad synth`` (any layout: dicom, luna16, dsb2017).

    The scans are found with :func:`lungcad.io.discover`; the truth comes from the folder's
    ``lesions.csv`` (the full lesion table: positives >= 3 mm with ``malignancy_prob`` as
    malignancy target, micro-nodules neither), ``distractors.csv`` (negatives) and
    ``labels.csv`` or ``stage1_labels.csv`` (patient labels).  The segmentation target is a
    sphere of each lesion's equivalent diameter (no voxel masks are written to disk).
    """
    from lungcad.io import discover

    root = Path(root)
    les_path = root / "lesions.csv"
    if not les_path.is_file():
        raise InputError(root, "no lesions.csv: expected a folder written by `lungcad synth`")
    _refuse_evaluation_family(root)
    lesions = pd.read_csv(les_path, dtype={"seriesuid": str, "patient_id": str})
    dist_path = root / "distractors.csv"
    dist = pd.read_csv(dist_path, dtype={"seriesuid": str}) if dist_path.is_file() else pd.DataFrame(
        columns=["seriesuid"] + NEGATIVE_COLUMNS)
    labels: dict[str, float] = {}
    for name in ("labels.csv", "stage1_labels.csv"):
        if (root / name).is_file():
            df = pd.read_csv(root / name, dtype=str)
            id_col = "patient_id" if "patient_id" in df else "id"
            labels.update(zip(df[id_col], df["cancer"].astype(float)))
    refs = []
    for info in discover(root, errors=[]):
        if not info.usable:
            continue
        uid = str(info.series_uid)
        sel = lesions[lesions["seriesuid"] == uid]
        pid = str(sel["patient_id"].iloc[0]) if len(sel) else str(info.patient_id)

        def load(info=info, sel=sel, pid=pid, uid=uid):
            from lungcad.io import load_series

            vol = load_series(info)
            vol.patient_id, vol.series_uid = pid, uid
            neg = dist[dist["seriesuid"] == uid]
            return Case(volume=vol, lesions=_synthetic_lesions(sel),
                        negatives=negative_table(neg[NEGATIVE_COLUMNS] if len(neg) else None),
                        patient_label=labels.get(pid, math.nan), source=f"synthetic-dir:{info.path}")
        refs.append(CaseRef(patient_id=pid, loader=load, source="synthetic-dir", description=str(info.path)))
        if max_cases is not None and len(refs) >= max_cases:
            break
    if not refs:
        raise InputError(root, "no usable CT series found")
    return refs


# ------------------------------------------------------------------------------ LUNA16

def read_luna16_tables(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``annotations.csv``, class-0 rows of ``candidates_V2.csv`` (or ``candidates.csv``) and
    ``annotations_excluded.csv`` of a LUNA16 folder; the last two are empty when absent.

    They are looked for in ``root`` and in ``root/CSVFILES`` and ``root/evaluationScript/annotations``
    (the layouts LUNA16 was published in).
    """
    root = Path(root)

    def find(*names):
        for sub in ("", "CSVFILES", "evaluationScript/annotations", "annotations"):
            for name in names:
                p = root / sub / name
                if p.is_file():
                    return p
        return None

    ann_path = find("annotations.csv")
    if ann_path is None:
        raise InputError(root, "no annotations.csv: expected a LUNA16 folder with subset*/*.mhd "
                               "and annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)")
    ann = _read_csv(ann_path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    cand_path = find("candidates_V2.csv", "candidates.csv")
    if cand_path is not None:
        cand = _read_csv(cand_path, ["seriesuid", "coordX", "coordY", "coordZ", "class"])
        neg = cand[cand["class"] == 0].drop(columns="class")
        neg["diameter_mm"] = math.nan
    else:
        neg = pd.DataFrame(columns=["seriesuid"] + NEGATIVE_COLUMNS)
    exc_path = find("annotations_excluded.csv")
    exc = (_read_csv(exc_path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
           if exc_path is not None else pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ",
                                                              "diameter_mm"]))
    return ann, neg, exc


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read CSV: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"expected columns {columns}. Missing {missing}; "
                               f"found {list(df.columns)}")
    df = df[columns].copy()
    df["seriesuid"] = df["seriesuid"].astype(str)
    return df


def luna16_cases(root: str | Path, *, max_cases: int | None = None,
                 malignancy: pd.DataFrame | None = None) -> list[CaseRef]:
    """Cases of a LUNA16 folder (``subset*/<seriesuid>.mhd``; any ``*.mhd`` under ``root``).

    Lesions are the rows of ``annotations.csv``; negatives the class-0 rows of
    ``candidates_V2.csv`` that lie farther than the radius + 5 mm from every annotated and
    every excluded finding (``annotations_excluded.csv``: neither positive nor negative).
    LUNA16 has no malignancy, so the target is NaN unless ``malignancy`` (columns
    seriesuid, coordX, coordY, coordZ, malignancy) gives one for a lesion within its radius.
    The patient id is the series UID (LUNA16 has one scan per patient).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder: expected a LUNA16 folder with subset*/*.mhd")
    ann, neg, exc = read_luna16_tables(root)
    files = sorted(root.glob("subset*/*.mhd")) or sorted(root.rglob("*.mhd"))
    if not files:
        raise InputError(root, "no .mhd scans: expected subset*/<seriesuid>.mhd")
    if max_cases is not None:
        files = files[:int(max_cases)]
    refs = []
    for f in files:
        uid = f.stem
        a, n, e = (t[t["seriesuid"] == uid] for t in (ann, neg, exc))

        def load(f=f, uid=uid, a=a, n=n, e=e):
            from lungcad.io import load_ct

            vol = load_ct(f)
            vol.series_uid = vol.series_uid or uid
            vol.patient_id = uid
            les = lesion_table(pd.DataFrame({
                "coordX": a["coordX"], "coordY": a["coordY"], "coordZ": a["coordZ"],
                "diameter_mm": a["diameter_mm"], "nodule": 1.0, "malignancy": math.nan}))
            if malignancy is not None and len(les):
                les = _attach_malignancy(les, malignancy[malignancy["seriesuid"].astype(str) == uid])
            negs = negative_table(n[NEGATIVE_COLUMNS])
            negs = drop_near(negs, pd.concat([a, e], ignore_index=True), margin_mm=5.0)
            negs = negs[_in_volume(vol, negs[["coordX", "coordY", "coordZ"]].to_numpy(float))]
            return Case(volume=vol, lesions=les, negatives=negs.reset_index(drop=True),
                        source=f"luna16:{f.parent.name}/{f.name}")
        refs.append(CaseRef(patient_id=uid, loader=load, source="luna16", description=str(f)))
    return refs


def _attach_malignancy(lesions: pd.DataFrame, mal: pd.DataFrame) -> pd.DataFrame:
    out = lesions.copy()
    if len(mal) == 0:
        return out
    b = mal[["coordX", "coordY", "coordZ"]].to_numpy(float)
    for i, row in out.iterrows():
        d = np.linalg.norm(b - np.array([row.coordX, row.coordY, row.coordZ]), axis=1)
        j = int(np.argmin(d))
        if d[j] <= max(row.diameter_mm / 2.0, 3.0):
            out.loc[i, "malignancy"] = float(mal["malignancy"].iloc[j])
    return out


# ------------------------------------------------------------------------------- LIDC

def lidc_cases(root: str | Path, *, min_readers: int = 3, max_cases: int | None = None
               ) -> list[CaseRef]:
    """Cases of LIDC-IDRI folders: every CT series with an LIDC XML file beside its slices.

    Lesions are the consensus nodules marked by at least ``min_readers`` of the readers
    (:func:`lungcad.io.lidc_consensus`: the LUNA16 reference standard), with the malignancy
    target ``(mean rating - 1) / 4`` in [0, 1].  Findings of fewer readers and non-nodule
    marks are neither positives nor negatives (as in LUNA16).
    """
    from lungcad.io import discover

    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such folder: expected LIDC-IDRI series folders with their XML reads")
    series = [s for s in discover(root, errors=[]) if s.usable]
    refs = []
    for s in series:
        folder = Path(s.path) if Path(s.path).is_dir() else Path(s.path).parent
        xmls = sorted(folder.glob("*.xml"))
        if not xmls:
            continue

        def load(s=s, xmls=xmls):
            from lungcad.io import load_series
            from lungcad.io.lidc import lidc_consensus, read_lidc_xml

            vol = load_series(s)
            reads = pd.concat([read_lidc_xml(x, vol) for x in xmls], ignore_index=True)
            if "seriesuid" in reads and s.series_uid:
                reads = reads[reads["seriesuid"].astype(str) == str(s.series_uid)]
            cons = lidc_consensus(reads, min_readers=min_readers)
            mal = (cons["malignancy"].astype(float) - 1.0) / 4.0 if "malignancy" in cons else math.nan
            les = lesion_table(pd.DataFrame({
                "coordX": cons["coordX"], "coordY": cons["coordY"], "coordZ": cons["coordZ"],
                "diameter_mm": cons["diameter_mm"], "nodule": 1.0,
                "malignancy": np.clip(mal, 0.0, 1.0)}) if len(cons) else None)
            return Case(volume=vol, lesions=les, source=f"lidc:{s.path}")
        refs.append(CaseRef(patient_id=s.patient_id or s.series_uid, loader=load, source="lidc",
                            description=str(s.path)))
        if max_cases is not None and len(refs) >= max_cases:
            break
    if not refs:
        raise InputError(root, "no CT series with an LIDC XML file beside its slices")
    return refs


# ------------------------------------------------------------------------------ DSB2017

def read_patient_labels(path: str | Path) -> dict[str, float]:
    """DSB2017 ``stage1_labels.csv`` (columns ``id,cancer``) as {patient id: 0.0 or 1.0}."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read labels CSV: {e}") from e
    id_col = "id" if "id" in df else ("patient_id" if "patient_id" in df else None)
    lab_col = "cancer" if "cancer" in df else ("label" if "label" in df else None)
    if id_col is None or lab_col is None:
        raise InputError(path, f"expected columns id,cancer (DSB2017 stage1_labels.csv). "
                               f"Found {list(df.columns)}")
    labels = pd.to_numeric(df[lab_col], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise InputError(path, f"cancer labels must be 0 or 1; row {int(np.flatnonzero(bad)[0]) + 2} "
                               f"has {df[lab_col][bad].iloc[0]!r}")
    return dict(zip(df[id_col].astype(str), labels.astype(float)))


def apply_patient_labels(case: Case, label: float, *, weak_candidates: pd.DataFrame | None = None
                         ) -> Case:
    """Turn a patient-level cancer label into lesion-level malignancy targets.

    DSB2017 labels say whether the patient was diagnosed with cancer within a year, not
    which nodule.  The rule used here:

    * label 0: no lesion of the patient is malignant, so every lesion whose malignancy is
      unknown gets target 0;
    * label 1: when no lesion has a known malignancy, the *top lesion* gets target 1 (a weak
      label): the largest annotated lesion, or when there is none, the most probable
      candidate of ``weak_candidates`` (the current segmenter's candidates), which is
      added with ``nodule`` NaN (its nodule status is unknown, so it does not train the
      nodule head).  Other lesions keep NaN (they do not train the malignancy head);
    * label 0 without annotations: the top 3 candidates of ``weak_candidates`` are added as
      lesions with malignancy 0 and ``nodule`` NaN.

    Returns a new case with ``patient_label`` set.
    """
    if math.isnan(label):
        return case
    les = case.lesions.copy()
    cands = weak_candidates if weak_candidates is not None else pd.DataFrame()
    if label == 0:
        les.loc[les["malignancy"].isna(), "malignancy"] = 0.0
        if len(les) == 0 and len(cands):
            top = cands.sort_values("probability", ascending=False).head(3)
            les = lesion_table(pd.DataFrame({
                "coordX": top["coordX"], "coordY": top["coordY"], "coordZ": top["coordZ"],
                "diameter_mm": top["diameter_mm"], "nodule": math.nan, "malignancy": 0.0}))
    elif label == 1 and not les["malignancy"].notna().any():
        if len(les):
            les.loc[les["diameter_mm"].idxmax(), "malignancy"] = 1.0
        elif len(cands):
            top = cands.sort_values("probability", ascending=False).head(1)
            les = lesion_table(pd.DataFrame({
                "coordX": top["coordX"], "coordY": top["coordY"], "coordZ": top["coordZ"],
                "diameter_mm": top["diameter_mm"], "nodule": math.nan, "malignancy": 1.0}))
    return Case(volume=case.volume, lesions=les.reset_index(drop=True), negatives=case.negatives,
                lesion_mask=case.lesion_mask, lung_mask=case.lung_mask, patient_label=float(label),
                source=case.source)


def dsb2017_cases(root: str | Path, labels: str | Path | dict, *, max_cases: int | None = None
                  ) -> list[CaseRef]:
    """Labelled patients of a DSB2017 folder (``stage1/<patient>/*.dcm`` or ``<patient>/``).

    Only patients listed in the labels are returned (the stage-1 test patients have none).
    A case carries its patient label; lesions come from :func:`apply_patient_labels` when
    FPR training mines candidates with a segmenter (see :func:`lungcad.train.fpr.train_fpr`).
    """
    from lungcad.io import choose_series, discover

    root = Path(root)
    labels = labels if isinstance(labels, dict) else read_patient_labels(labels)
    scan_root = root / "stage1" if (root / "stage1").is_dir() else root
    if not scan_root.is_dir():
        raise InputError(root, "not a folder: expected DSB2017 stage1/<patient>/*.dcm")
    refs = []
    for pid in sorted(p.name for p in scan_root.iterdir() if p.is_dir()):
        if pid not in labels:
            continue

        def load(pid=pid):
            from lungcad.io import load_series

            found = choose_series(discover(scan_root / pid, errors=[]))
            if not found:
                raise InputError(scan_root / pid, "no usable CT series")
            info = next(iter(found.values()))
            vol = load_series(info)
            vol.patient_id = pid
            case = Case(volume=vol, source=f"dsb2017:{pid}")
            case.patient_label = float(labels[pid])
            return case
        refs.append(CaseRef(patient_id=pid, loader=load, source="dsb2017",
                            description=str(scan_root / pid)))
        if max_cases is not None and len(refs) >= max_cases:
            break
    if not refs:
        raise InputError(root, "no patient folder of the labels CSV was found")
    return refs


def with_patient_labels(cases: Iterable[CaseLike], labels: dict[str, float]) -> list[CaseLike]:
    """Attach patient labels (by patient id) to cases of any source; see
    :func:`apply_patient_labels` for how they become lesion targets."""
    out = []
    for c in cases:
        lab = labels.get(c.patient_id)
        if lab is None:
            out.append(c)
            continue
        if isinstance(c, Case):
            out.append(apply_patient_labels(c, lab))
        else:
            out.append(CaseRef(patient_id=c.patient_id, source=c.source, description=c.description,
                               loader=lambda c=c, lab=lab: apply_patient_labels(c.load(), lab)))
    return out


# --------------------------------------------------------------------------- backgrounds

#: Files that mark a folder as annotated (LIDC XML reads, LUNA16 tables, Lung-PET-CT-Dx boxes):
#: series found beside them, or below a folder holding them, are kept for evaluation.
ANNOTATION_MARKERS = ("*.xml", "annotations*.csv", "Annotation", "annotations_index.csv")


def _annotated(folder: Path, root: Path) -> Path | None:
    """The first annotation marker in ``folder``, a folder above it within ``root``, or the
    folder just above ``root`` (the data set's own folder, where its tables usually lie)."""
    root = root.resolve()
    cur = folder.resolve()
    top = root.parent
    while True:
        for pat in ANNOTATION_MARKERS:
            hit = next(iter(sorted(cur.glob(pat))), None)
            if hit is not None:
                return hit
        if cur == top or cur == cur.parent or (cur != root and root not in cur.parents):
            return None
        cur = cur.parent


def background_exclusions(root: str | Path, extra: str | Path | None = None) -> pd.DataFrame:
    """The known lesions to keep away from in a folder of backgrounds: the package's table
    (:func:`lungcad.synthetic.exclusions.default_exclusions`), ``root/exclusions.csv`` when
    present, and ``extra`` (a CSV path)."""
    from lungcad.synthetic.exclusions import default_exclusions, read_exclusions

    tables = [default_exclusions()]
    own = Path(root) / "exclusions.csv"
    if own.is_file():
        tables.append(read_exclusions(own))
    if extra is not None:
        tables.append(read_exclusions(extra))
    return pd.concat(tables, ignore_index=True)


class _Background:
    """One background scan, loaded once and shared by its draws: volume, lung mask, host PSF
    and noise, and a pool of mined hard negatives."""

    def __init__(self, info, exclusions: pd.DataFrame, n_pool: int, seed: int):
        import threading

        self.info, self.exclusions, self.n_pool, self.seed = info, exclusions, n_pool, seed
        self._lock = threading.Lock()
        self._value = None

    def get(self):
        with self._lock:
            if self._value is None:
                from lungcad.io import load_series
                from lungcad.lungmask import segment_lungs
                from lungcad.synthetic.background_negatives import mine_background_negatives
                from lungcad.synthetic.host_scanner import estimate_host_noise, estimate_host_psf

                vol = load_series(self.info)
                lung = segment_lungs(vol.hu, spacing_zyx=vol.spacing, direction=vol.direction).mask
                psf, noise = estimate_host_psf(vol), estimate_host_noise(vol)
                pool = mine_background_negatives(vol, lung, rng=np.random.default_rng([self.seed, 3]),
                                                 n=self.n_pool, exclude_xyz_mm=self.exclusions)
                self._value = (vol, lung, psf, noise, pool)
            return self._value


def background_cases(root: str | Path, *, draws: int = 3, lesions_per_draw: int = 4,
                     negatives_per_draw: int = 24, seed: int = 0, exclusions: str | Path | None = None,
                     max_cases: int | None = None, exclude_radius_mm: float = 30.0,
                     report: list | None = None) -> list[CaseRef]:
    """Cases of real CT backgrounds: ``draws`` cases per scan, each with ``lesions_per_draw``
    lesions inserted (:func:`lungcad.synthetic.insertion.insert_lesions`, seed
    ``[seed, scan index, draw]``) and ``negatives_per_draw`` hard negatives from the scan's
    anatomy (:func:`~lungcad.synthetic.background_negatives.mine_background_negatives`, 10 mm or more from
    the inserted lesions).

    Every CT series found under ``root`` (:func:`lungcad.io.discover`: DICOM, .mhd, NIfTI) is
    used.  Known lesions (:func:`background_exclusions`) are kept ``exclude_radius_mm`` from
    inserted lesions and hard negatives; in the case they are lesion rows with ``nodule`` and
    ``malignancy`` NaN (neither positives nor negatives) whose ``diameter_mm`` is that of the
    exclusion zone (the lesion's diameter + 2 ``exclude_radius_mm``), so that random negatives
    keep away from them too.  A scan without reads is unknown, not healthy: the patient label
    is NaN.  The draws of a scan share its patient id, so they stay on one side of the split.

    A series beside or below annotations (:data:`ANNOTATION_MARKERS`: LIDC XML, LUNA16
    ``annotations.csv``, Lung-PET-CT-Dx ``Annotation/``) is refused: annotated scans are for
    evaluation, not backgrounds.

    ``report``, when a list, receives one dict per scan (folder, series UID, patient id, the
    draws' seeds), updated with the inserted lesions and mined negatives as the draws load:
    the model card's record of which real scans went into training.

    Raises
    ------
    InputError
        ``root`` is not a folder, holds no usable CT series, or holds annotated series.
    """
    from lungcad.io import discover

    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder: expected a folder of CT scans to insert lesions into")
    if int(draws) < 1 or int(lesions_per_draw) < 0 or int(negatives_per_draw) < 0:
        raise ValueError(f"draws >= 1, lesions_per_draw >= 0 and negatives_per_draw >= 0 expected. Received "
                         f"draws={draws}, lesions_per_draw={lesions_per_draw}, "
                         f"negatives_per_draw={negatives_per_draw}")
    from lungcad.synthetic.exclusions import exclusions_for

    table = background_exclusions(root, exclusions)
    series = [s for s in discover(root, errors=[]) if s.usable]
    if max_cases is not None:
        series = series[:int(max_cases)]
    if not series:
        raise InputError(root, "no usable CT series found for --backgrounds")
    for s in series:
        folder = Path(s.path) if Path(s.path).is_dir() else Path(s.path).parent
        hit = _annotated(folder, root)
        if hit is not None:
            raise InputError(s.path, f"this series lies beside or below annotations ({hit}): annotated scans "
                                     f"are kept for evaluation and are not used as backgrounds; point "
                                     f"--backgrounds at a folder of scans without reads")
    refs = []
    for si, s in enumerate(series):
        path = Path(s.path)
        try:
            rel = str(path.relative_to(root))
        except ValueError:
            rel = path.name
        names = [path.name, path.stem, rel, root.name if path == root else ""]
        ex = exclusions_for(table, series_uid=str(s.series_uid), names=names)
        pid = str(s.patient_id or s.series_uid)
        rec = {"folder": rel if rel != "." else root.name, "path": str(path), "series_uid": str(s.series_uid),
               "patient_id": pid, "draws": int(draws), "seeds": [[int(seed), si, d] for d in range(int(draws))],
               "exclusions": ex.round(2).to_dict("records"), "draws_loaded": 0, "inserted_lesions": 0,
               "mined_negatives": 0}
        if report is not None:
            report.append(rec)
        bg = _Background(s, ex, n_pool=max(3 * int(negatives_per_draw), 8), seed=int(seed) * 1000 + si)
        for d in range(int(draws)):
            def load(bg=bg, ex=ex, si=si, d=d, rec=rec, pid=pid, rel=rel):
                from lungcad.synthetic.insertion import insert_lesions

                vol, lung, psf, noise, pool = bg.get()
                rng = np.random.default_rng([int(seed), si, d])
                new, les, mask = insert_lesions(vol, rng=rng, n=int(lesions_per_draw), exclude_xyz_mm=ex,
                                                exclude_radius_mm=exclude_radius_mm, lung_mask=lung, psf=psf,
                                                noise=noise)
                new.patient_id = pid
                lesions = _synthetic_lesions(les)
                negs = drop_near(negative_table(pool[NEGATIVE_COLUMNS] if len(pool) else None), lesions,
                                 margin_mm=10.0)
                if len(negs) > int(negatives_per_draw):
                    negs = negs.iloc[np.sort(rng.choice(len(negs), int(negatives_per_draw), replace=False))]
                zones = lesion_table(pd.DataFrame({
                    "coordX": ex["coordX"], "coordY": ex["coordY"], "coordZ": ex["coordZ"],
                    "diameter_mm": np.nan_to_num(ex["diameter_mm"].to_numpy(float)) + 2.0 * exclude_radius_mm,
                    "nodule": math.nan, "malignancy": math.nan}) if len(ex) else None)
                rec["draws_loaded"] += 1
                rec["inserted_lesions"] += int(len(les))
                rec["mined_negatives"] += int(len(negs))
                rec.setdefault("host_psf", psf.to_dict())
                rec.setdefault("host_noise", noise.to_dict())
                return Case(volume=new, lesions=lesion_table(pd.concat([lesions, zones], ignore_index=True)
                                                             if zones is not None else lesions),
                            negatives=negs.reset_index(drop=True), lesion_mask=mask, lung_mask=lung,
                            source=f"background:{rel}#draw{d}")
            refs.append(CaseRef(patient_id=pid, loader=load, source="backgrounds",
                                description=f"{path} draw {d}"))
    return refs
