"""Training cases from the phantoms of :mod:`lungcad.synthetic`.

* :func:`synthetic_cases`: phantoms made from a seed range with a mix of acquisition
  protocols (thin and 5/8 mm slices, 0.6-0.9 mm pixels of a 512-pixel field of view) and with
  masses that touch the mediastinum, optionally cached as ``.npz`` files;
* :func:`synth_dir_cases`: a folder written by ``lungcad synth`` (any layout), refusing the
  evaluation families of the generalisation protocol.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.results.atomic import atomic_path
from lungcad.errors import InputError
from lungcad.train.cases import NEGATIVE_COLUMNS, Case, CaseRef, lesion_table, negative_table
from lungcad.volume import CTVolume

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
    for src in sorted((Path(__file__).resolve().parents[2] / "synthetic").glob("*.py")):
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
