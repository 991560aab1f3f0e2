"""Write many phantom patients as a data set: DICOM series, or the LUNA16 or DSB2017 layout.

Layouts (``OUT`` is the output folder):

``dicom``
    ``OUT/<patient_id>/<series_uid>/*.dcm``, written the way scanners vary: shuffled file
    names, InstanceNumber sometimes against z, RescaleIntercept -1024, -1000 or 0 (signed
    pixels), pixel padding outside the circular field of view.  ``annotations.csv``
    (seriesuid, coordX, coordY, coordZ, diameter_mm: the lesions of at least 3 mm),
    ``lesions.csv`` (the full lesion table), ``labels.csv`` (patient_id, cancer),
    ``distractors.csv`` (vessel crossings and bifurcations).
``luna16``
    ``OUT/subset<k>/<seriesuid>.mhd`` + ``.raw`` (10 scans per subset); the patient id is the
    series UID, as in LUNA16.  ``annotations.csv`` holds every lesion of at least 3 mm,
    **masses over 30 mm included** (LUNA16 itself leaves them out; here the pipeline is
    trained and scored on them too).  ``annotations_excluded.csv`` holds what a hit on is
    neither counted nor penalised: the lesions below 3 mm.  The vessel crossings and
    bifurcations are *not* excluded: a detection there is a false positive, so the FROC is
    not flattered by look-alikes.  ``candidates_V2.csv`` (seriesuid, coordX, coordY,
    coordZ, class): class 1 at each lesion (and up to two jittered copies), class 0 at the
    distractors and at random lung points.  Some scans carry -3024 outside the field of view,
    as some LUNA16 scans do.  Plus ``lesions.csv``, ``labels.csv``, ``distractors.csv``.
``dsb2017``
    ``OUT/stage1/<patient_id>/*.dcm`` (flat, one series per patient, 32-hex-digit ids),
    ``OUT/stage1_labels.csv`` (id, cancer), ``lesions.csv`` and ``distractors.csv``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from lungcad.results.atomic import atomic_write_text
from lungcad.synthetic.lesion_specs import LESION_COLUMNS
from lungcad.synthetic.phantom import Phantom, generate_phantom
from lungcad.synthetic.phantom_lesions import DISTRACTOR_COLUMNS
from lungcad.volume import CTVolume

LAYOUTS = ("dicom", "luna16", "dsb2017")
#: ``cases`` presets: "random" draws every patient; "demo" cycles through a patient with a mass
#: touching the mediastinum, one with small nodules of several kinds, and a benign one.
CASES = ("random", "demo")

ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class"]

_DEMO = [
    [{"kind": "mass", "location": "mediastinal", "texture": "solid", "shape": "spiculated", "diameter_mm": 48.0},
     {"kind": "nodule", "texture": "solid", "location": "isolated", "diameter_mm": 9.0}],
    [{"kind": "nodule", "texture": "solid", "location": "juxta-pleural", "shape": "lobulated", "diameter_mm": 7.0},
     {"kind": "nodule", "texture": "part-solid", "location": "isolated", "diameter_mm": 14.0},
     {"kind": "nodule", "texture": "ground-glass", "location": "juxta-vascular", "diameter_mm": 10.0},
     {"kind": "nodule", "texture": "solid", "location": "isolated", "shape": "spiculated", "diameter_mm": 18.0}],
    [{"kind": "nodule", "texture": "calcified", "location": "isolated", "diameter_mm": 6.0},
     {"kind": "nodule", "texture": "calcified", "location": "juxta-pleural", "diameter_mm": 5.0}],
]


def patient_seeds(seed: int, patients: int) -> list[int]:
    """Independent per-patient seeds derived from the data-set seed."""
    children = np.random.SeedSequence(int(seed)).spawn(int(patients))
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def _dicom_variation(rng: np.random.Generator, fov_mask) -> dict:
    """Rescale parameters and padding as different scanners write them."""
    intercept = float(rng.choice([-1024.0, -1000.0, 0.0]))
    style = int(rng.integers(3))
    if style == 0:       # no padding: air outside the field of view (fov_mask not written)
        return {"rescale_intercept": intercept, "padding_value": None, "fov_mask": None}
    if style == 1:       # GE-like: stored -2000
        return {"rescale_intercept": intercept, "padding_value": -2000, "fov_mask": fov_mask}
    # padding at the stored value of -1024 HU
    return {"rescale_intercept": intercept, "padding_value": int(round(-1024.0 - intercept)), "fov_mask": fov_mask}


def _write_json(obj, path: Path) -> None:
    import json

    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _annotations(les: pd.DataFrame) -> pd.DataFrame:
    return les.loc[les["diameter_mm"] >= 3.0, ANNOTATION_COLUMNS].reset_index(drop=True)


def _candidates(ph: Phantom, rng: np.random.Generator, n_random: int = 40) -> pd.DataFrame:
    uid = ph.volume.series_uid
    rows = []
    for _, r in ph.lesions.iterrows():
        if r["diameter_mm"] < 3.0:
            continue
        rows.append((uid, r["coordX"], r["coordY"], r["coordZ"], 1))
        for _ in range(int(rng.integers(0, 3))):
            j = rng.normal(0.0, 0.15 * r["diameter_mm"], 3)
            rows.append((uid, r["coordX"] + j[0], r["coordY"] + j[1], r["coordZ"] + j[2], 1))
    for _, r in ph.distractors.iterrows():
        rows.append((uid, r["coordX"], r["coordY"], r["coordZ"], 0))
    sub = (2, 4, 4)
    lung = ph.lung_region[::sub[0], ::sub[1], ::sub[2]]
    idx = np.flatnonzero(lung)
    if len(idx):
        centres = ph.lesions[["coordX", "coordY", "coordZ"]].to_numpy(float)
        radii = 0.5 * ph.lesions["diameter_mm"].to_numpy(float)
        for k in rng.choice(idx, size=min(n_random, len(idx)), replace=False):
            zyx = np.array(np.unravel_index(k, lung.shape), dtype=float) * sub
            xyz = ph.volume.voxel_to_world(zyx)
            if len(centres) and np.any(np.linalg.norm(centres - xyz, axis=1) < radii + 5.0):
                continue
            rows.append((uid, *xyz, 0))
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def synth_dataset(out_dir, *, patients: int, seed: int, layout: str = "dicom", size: int = 512,
                  slices: int | None = None, slice_mm: float | None = None, compress: str | None = None,
                  cases: str = "random", progress: bool = False, domain: str = "default",
                  on_patient: Callable[[dict], None] | None = None, **phantom_kwargs) -> pd.DataFrame:
    """Generate ``patients`` phantoms and write them as a data set.

    Parameters
    ----------
    out_dir : path
        Created if needed.
    patients : int
    seed : int
        The data-set seed; each patient gets its own seed from it (:func:`patient_seeds`).
    layout : {"dicom", "luna16", "dsb2017"}
        See the module documentation.
    size : int
        Rows and columns of every slice.
    slices, slice_mm : optional
        Number of slices and slice step (default: drawn per patient, covering the chest).
    compress : {None, "rle", "jpeg2000"}
        DICOM pixel-data compression (DICOM layouts only).
    cases : {"random", "demo"}
        "demo" gives patient 0, 3, ... a 48 mm mass touching the mediastinum and a nodule,
        patient 1, 4, ... four small nodules of different kinds, patient 2, 5, ... two
        calcified (benign) nodules.
    progress : bool
        Show a tqdm progress bar.
    domain : {"default", "randomized", "shifted"}
        :mod:`lungcad.synthetic.domain`.  Each patient's drawn factors are in its volume's meta
        (the DICOM and MetaImage writers keep the scanner keys); ``OUT/domain.json`` holds the
        domain and every range (:func:`lungcad.synthetic.domain.describe`).  In the randomised
        domains the rescale intercept and padding come from the scanner draw.
    on_patient : callable, optional
        Called after each patient with a dict (patient_id, seriesuid, path, shape, spacing_mm,
        lesions, cancer).
    **phantom_kwargs
        Passed on to :func:`~lungcad.synthetic.generate_phantom` (for example ``n_masses``).

    Returns
    -------
    DataFrame
        The lesion table of all patients (also written as ``lesions.csv``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout expected one of {LAYOUTS}. Received layout={layout!r}")
    if cases not in CASES:
        raise ValueError(f"cases expected one of {CASES}. Received cases={cases!r}")
    if int(patients) < 1:
        raise ValueError(f"patients must be >= 1. Received patients={patients}")
    if compress is not None and layout == "luna16":
        raise ValueError("compress applies to DICOM layouts only. Received compress="
                         f"{compress!r} with layout='luna16'")
    from lungcad.io import write_dicom_series, write_itk
    from lungcad.synthetic import domain as _dom

    _dom.check_domain(domain)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"domain": domain, "seed": int(seed), "patients": int(patients), "ranges": _dom.describe(),
              "drawn": []}
    _write_json(report, out / "domain.json")
    seeds = patient_seeds(seed, patients)
    lesion_tables, dist_tables, label_rows, cand_tables = [], [], [], []
    it = range(int(patients))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synth", unit="patient")
    for i in it:
        ps = seeds[i]
        kw = dict(phantom_kwargs)
        if cases == "demo":
            kw["lesions"] = _DEMO[i % len(_DEMO)]
        uid = _uid(seed, i, "series")
        if layout == "dsb2017":
            pid = hashlib.sha1(f"lungcad-synthetic-{seed}-{i}".encode()).hexdigest()[:32]
        elif layout == "luna16":
            pid = uid
        else:
            pid = f"SYN{int(seed):04d}-{i:03d}"
        ph = generate_phantom(seed=ps, shape=(slices, size, size), slice_mm=slice_mm, patient_id=pid,
                              series_uid=uid, domain=domain, **kw)
        rng = np.random.default_rng([ps, 7])
        vol = ph.volume
        if layout == "luna16":
            hu = vol.hu
            if rng.random() < 0.3:
                hu = hu.copy()
                hu[:, ~ph.fov_mask] = -3024
            path = out / f"subset{i // 10}" / f"{uid}.mhd"
            write_itk(CTVolume(hu=hu, spacing=vol.spacing, origin=vol.origin, direction=vol.direction,
                               patient_id=pid, series_uid=uid, meta=vol.meta), path)
            cand_tables.append(_candidates(ph, rng))
        else:
            folder = out / "stage1" / pid if layout == "dsb2017" else out / pid / uid
            var = _dicom_variation(rng, ph.fov_mask)
            if domain != "default":
                var["rescale_intercept"] = float(vol.meta.get("rescale_intercept", var["rescale_intercept"]))
                pad = vol.meta.get("padding_value")
                if pad is not None and var["padding_value"] is not None:
                    var["padding_value"] = int(round(float(pad) - var["rescale_intercept"]))
            write_dicom_series(vol, folder, seed=ps, shuffle_names=True,
                               reverse_instance_numbers=bool(rng.random() < 0.5),
                               rescale_slope=1.0, compress=compress,
                               series_description=f"synthetic chest {vol.spacing[0]:g}mm", **var)
            path = folder
        lesion_tables.append(ph.lesions)
        report["drawn"].append({"patient_id": pid, "seriesuid": uid,
                                **{k: v for k, v in vol.meta.items() if k not in ("synthetic", "generator")}})
        dist_tables.append(ph.distractors)
        label_rows.append({"patient_id": pid, "cancer": ph.cancer})
        if on_patient is not None:
            on_patient({"patient_id": pid, "seriesuid": uid, "path": str(path), "shape": vol.shape,
                        "spacing_mm": vol.spacing, "lesions": len(ph.lesions), "cancer": ph.cancer})
        del ph, vol

    _write_json(report, out / "domain.json")
    lesions = pd.concat(lesion_tables, ignore_index=True) if lesion_tables else pd.DataFrame(columns=LESION_COLUMNS)
    dist = pd.concat(dist_tables, ignore_index=True) if dist_tables else pd.DataFrame(columns=DISTRACTOR_COLUMNS)
    labels = pd.DataFrame(label_rows, columns=["patient_id", "cancer"])
    _write_csv(lesions, out / "lesions.csv")
    _write_csv(dist, out / "distractors.csv")
    if layout == "dsb2017":
        _write_csv(labels.rename(columns={"patient_id": "id"}), out / "stage1_labels.csv")
        return lesions
    _write_csv(labels, out / "labels.csv")
    _write_csv(_annotations(lesions), out / "annotations.csv")
    if layout == "luna16":
        small = lesions.loc[lesions["diameter_mm"] < 3.0, ANNOTATION_COLUMNS]
        _write_csv(small, out / "annotations_excluded.csv")
        _write_csv(pd.concat(cand_tables, ignore_index=True), out / "candidates_V2.csv")
    return lesions


def _uid(seed: int, i: int, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["lungcad-synthetic-dataset", str(int(seed)), str(int(i)), what]))
