"""Training cases from real CT backgrounds without reads (any folder), with lesions inserted by
:func:`lungcad.synthetic.insertion.insert_lesions` (several draws per scan) and hard negatives
mined from their anatomy (:mod:`lungcad.synthetic.background_negatives`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.train.cases import NEGATIVE_COLUMNS, Case, CaseRef, drop_near, lesion_table, negative_table
from lungcad.train.sources.phantoms import _synthetic_lesions

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
