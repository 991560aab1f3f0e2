"""Training the false-positive-reduction network (``lungcad train fpr``).

The network is :func:`lungcad.fpr.build_fpr_model`: the zoo backbone of the pipeline's
``[fpr] backbone`` (by default a 2-D WideResNet, ``wrn2d``, on three orthogonal views; a 3-D
one such as ``wrn3d`` sees a cube) with two heads.  The ``nodule`` head learns lesions
against non-nodules; the ``malignancy`` head learns the malignancy target of lesions only
(sample weight 0 elsewhere).  When a segmenter is given, its candidates on the training
scans that hit no lesion become *hard negatives*, and DSB2017 patient labels become weak
lesion labels (:func:`lungcad.train.sources.dsb2017.apply_patient_labels`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import keras

from lungcad.config import PipelineConfig
from lungcad.metrics import roc_auc
from lungcad.fpr import (MALIGNANCY, NODULE, PREPROCESSING, build_fpr_model, model_views, patch_shape,
                         views_for)
from lungcad.models.registry import REGISTRY
from lungcad.pipeline import fpr_stage
from lungcad.train.cases import Case, CaseLike, CaseRef, case_key, off_lesions, split_by_patient
from lungcad.train.detection import detect_candidates, match_candidates
from lungcad.train.fit_loop import fit, write_outputs
from lungcad.train.fpr_batches import FPRDataset
from lungcad.train.model_card import last_metrics, make_card
from lungcad.train.settings import TrainResult, TrainSettings
from lungcad.train.sources.dsb2017 import apply_patient_labels

#: Backbone keywords of a WideResNet when none are given (WRN-10-1).  The shipped classifier
#: is a WRN-16-2 (its card's command passes --depth 16 --width 2).
DEFAULT_WRN = {"depth": 10, "width": 1, "dropout": 0.0}


def mine_hard_negatives(cases: Sequence[CaseLike], segmenter, *, config: PipelineConfig,
                        max_per_case: int = 24, classifier=None, verbose: bool = False,
                        cache_dir: str | Path | None = None, cache_key: str = ""
                        ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Candidates of the segmenter on each case and, among them, the hard negatives
    (:func:`hard_negatives`): the candidates by patient id (for the weak labels), the hard
    negatives by scan (:func:`lungcad.train.cases.case_key`: the draws of one real background
    are one patient but different scans).  One case is in memory at a time.

    With a ``classifier`` (an FPR network) the candidates are scored by it, as the pipeline
    does, and the hard negatives are the non-lesions it finds most nodule-like: the mistakes
    of that network (bootstrapping).  Otherwise they are ranked by the U-Net's score.

    With a ``cache_dir`` each case's candidates are kept there as JSON (table schema: the
    dtypes too), under a name made of ``cache_key`` (what identifies the networks and settings:
    see :func:`mining_cache_key`)
    and the case's voxels and geometry, and read back by a later run instead of running the
    networks again.
    """
    mined, hard = {}, {}
    it = cases
    if verbose:
        from tqdm.auto import tqdm

        it = tqdm(cases, desc="mining candidates", unit="case", leave=False)
    for ref in it:
        case = ref.load()
        cached = None if cache_dir is None else _mining_cache_file(cache_dir, cache_key, case)
        if cached is not None and cached.is_file():
            cands = pd.read_json(cached, orient="table")
        else:
            cands = detect_candidates(case.volume, segmenter, config)
            if classifier is not None:
                cands = fpr_stage(case.volume, cands, classifier, config)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp")
                cands.reset_index(drop=True).to_json(tmp, orient="table", index=False, double_precision=15)
                tmp.replace(cached)
        mined[case.patient_id] = cands
        hard[case_key(case)] = hard_negatives(case, cands, max_per_case=max_per_case)
        del case
    return mined, hard


def mining_cache_key(config: PipelineConfig, *weight_files: str | Path) -> str:
    """What the mined candidates depend on: the sha256 of each network file and the pipeline's
    settings (:meth:`PipelineConfig.hash`)."""
    from lungcad.train.model_card import sha256

    return "\n".join([*(sha256(Path(f)) for f in weight_files), config.hash()])


def _mining_cache_file(cache_dir: str | Path, key: str, case: Case) -> Path:
    import hashlib

    v = case.volume
    h = hashlib.sha256(key.encode())
    h.update(np.ascontiguousarray(v.hu).tobytes())
    h.update(repr((v.hu.shape, str(v.hu.dtype), v.spacing, v.origin,
                   np.asarray(v.direction, float).round(6).tolist())).encode())
    return Path(cache_dir) / f"candidates-{h.hexdigest()[:32]}.json"


def hard_negatives(case: Case, candidates: pd.DataFrame, *, max_per_case: int = 24) -> pd.DataFrame:
    """Candidates of a case that hit no lesion, with a safety margin, the most probable first.

    A candidate is dropped when it lies within ``max(1.5 r, r + 5 mm)`` of a lesion of
    radius r, so that fragments of a lesion are not taught as non-nodules.  Cases whose
    lesions are not all known (DSB2017 patients) give none.
    """
    if not math.isnan(case.patient_label) and not (case.lesions["nodule"] == 1).any():
        return candidates.iloc[0:0]
    c = off_lesions(candidates, case.lesions)
    return c.sort_values("probability", ascending=False).head(int(max_per_case)).reset_index(drop=True)


def _with_weak_labels(cases: Sequence[CaseLike], mined: dict[str, pd.DataFrame]) -> list[CaseLike]:
    out = []
    for c in cases:
        cands = mined.get(c.patient_id)
        if cands is None:
            out.append(c)
        elif isinstance(c, Case):
            out.append(apply_patient_labels(c, c.patient_label, weak_candidates=cands)
                       if not math.isnan(c.patient_label) else c)
        else:
            def load(c=c, cands=cands):
                case = c.load()
                return (apply_patient_labels(case, case.patient_label, weak_candidates=cands)
                        if not math.isnan(case.patient_label) else case)
            out.append(CaseRef(patient_id=c.patient_id, loader=load, source=c.source,
                               description=c.description))
    return out


def fpr_datasets(train_cases, val_cases, *, config: PipelineConfig, settings: TrainSettings,
                 hard: dict[str, pd.DataFrame] | None, positive_fraction: float = 0.5,
                 negatives_benign: bool = False, gan_positives=None, gan_ratio: float = 0.0):
    """The training and validation :class:`FPRDataset` for a pipeline config."""
    f, lm = config.fpr, config.lungmask
    common = dict(patch_size=f.patch_size, patch_mm=f.patch_mm, fit_fraction=f.fit_fraction,
                  window_hu=f.window_hu, views=views_for(f.backbone), batch_size=settings.batch_size,
                  hard_negatives=hard, negatives_benign=negatives_benign,
                  positive_fraction=positive_fraction, margin_mm=lm.margin_mm,
                  threshold_hu=lm.threshold_hu, max_cases_in_memory=settings.max_cases_in_memory,
                  verbose=settings.verbose == 1)
    train = FPRDataset(train_cases, steps=settings.steps_per_epoch, augment=True, seed=settings.seed,
                       workers=settings.workers, gan_positives=gan_positives, gan_ratio=gan_ratio, **common)
    val = (FPRDataset(val_cases, steps=settings.val_steps, augment=False, seed=settings.seed + 1, **common)
           if val_cases else None)
    return train, val


def predict_dataset(model, data: FPRDataset) -> pd.DataFrame:
    """Predictions and targets of every sample of a (non-augmented) dataset."""
    rows = []
    for i in range(len(data)):
        x, y, w = data[i]
        p = model.predict_on_batch(x)
        s = data.samples(i)
        s["nodule_prob"] = np.asarray(p[NODULE], dtype=float).reshape(-1)
        s["malignancy_prob"] = np.asarray(p[MALIGNANCY], dtype=float).reshape(-1)
        rows.append(s)
    return pd.concat(rows, ignore_index=True)


def evaluate_fpr(model, cases: Sequence[CaseLike], *, config: PipelineConfig | None = None,
                 steps: int = 20, batch_size: int = 32, seed: int = 12345, segmenter=None) -> dict:
    """Held-out quality of the FPR network.

    * patch level: ROC AUC of the nodule head for lesions against each kind of negative
      (known negatives such as vessel crossings, random lung points) and all together;
      ROC AUC of the malignancy head among lesions with a binary malignancy label;
    * with ``segmenter``: the whole pipeline on each case (:class:`lungcad.pipeline.Pipeline`):
      candidate-level AUC (candidates within a lesion's radius against the others), the
      share of lesions hit within the top 3 and top 10 candidates, and the patient-level
      AUC of the cancer probability against the phantoms' cancer labels.
    """
    config = config or PipelineConfig()
    f = config.fpr
    loaded = [c.load() for c in cases]
    data = FPRDataset(loaded, patch_size=f.patch_size, patch_mm=f.patch_mm, fit_fraction=f.fit_fraction,
                      window_hu=f.window_hu, views=model_views(model) or views_for(f.backbone),
                      batch_size=batch_size, steps=steps, augment=False, seed=seed,
                      margin_mm=config.lungmask.margin_mm, threshold_hu=config.lungmask.threshold_hu)
    pred = predict_dataset(model, data)
    out: dict = {"n_scans": len(loaded), "n_patches": int(len(pred))}
    les = pred[pred["kind"] == "lesion"]
    out["patch_auc"] = roc_auc(pred["nodule"], pred["nodule_prob"])
    for kind in ("known", "random"):
        neg = pred[pred["kind"] == kind]
        out[f"patch_auc_vs_{kind}"] = roc_auc(np.r_[np.ones(len(les)), np.zeros(len(neg))],
                                              np.r_[les["nodule_prob"], neg["nodule_prob"]])
    mal = les[les["malignancy_weight"] > 0]
    out["malignancy_auc"] = roc_auc(mal["malignancy"], mal["malignancy_prob"]) if len(mal) else None
    if segmenter is not None:
        out.update(_pipeline_metrics(loaded, segmenter=segmenter, classifier=model, config=config))
    return out


def _pipeline_metrics(cases: Sequence[Case], *, segmenter, classifier, config) -> dict:
    from lungcad.pipeline import Pipeline

    pipe = Pipeline(config, segmenter=segmenter, classifier=classifier)
    labels, probs, scores, hits, top3, top10, n_les = [], [], [], [], 0, 0, 0
    for case in cases:
        res = pipe.run(case.volume)
        cands = res.candidates
        les = case.lesions[case.lesions["nodule"] == 1]
        hit, fp = match_candidates(cands, les)
        scores += list(cands["probability"]) if len(cands) else []
        hits += list(~fp) if len(cands) else []
        n_les += len(les)
        for k, store in ((3, "top3"), (10, "top10")):
            h, _ = match_candidates(cands.head(k), les)
            if store == "top3":
                top3 += int(h.sum())
            else:
                top10 += int(h.sum())
        labels.append(case.patient_label)
        probs.append(res.cancer_probability)
    lab = np.asarray(labels, dtype=float)
    ok = ~np.isnan(lab)
    return {"candidate_auc": roc_auc(np.asarray(hits, float), scores) if scores else None,
            "lesions_in_top3": top3 / n_les if n_les else None,
            "lesions_in_top10": top10 / n_les if n_les else None,
            "patient_auc": roc_auc(lab[ok], np.asarray(probs)[ok]) if ok.sum() else None,
            "patient_probabilities": [round(float(p), 4) for p in probs],
            "patient_labels": [None if math.isnan(v) else int(v) for v in lab]}


def train_fpr(cases: Sequence[CaseLike], *, config: PipelineConfig | None = None,
              settings: TrainSettings | None = None, backbone: str | None = None,
              backbone_kwargs: dict | None = None, head_units: int = 64, dropout: float = 0.3,
              malignancy_weight: float = 0.5, segmenter=None, max_hard_per_case: int = 24,
              mine_cases: int | None = None, mine_classifier=None,
              positive_fraction: float = 0.5, negatives_benign: bool = False,
              gan_positives=None, gan_ratio: float = 0.0,
              mining_cache: str | Path | None = None, mining_key: str = "",
              out: str | Path | None = None,
              run_dir: str | Path = "runs/fpr", resume: bool = False,
              holdout: Sequence[CaseLike] | None = None, data_info: dict | None = None,
              command: str | None = None) -> TrainResult:
    """Train the FPR network (nodule and malignancy heads) and write it with its model card.

    Parameters
    ----------
    cases : Case or CaseRef objects (see :mod:`lungcad.train.cases`)
    config : the pipeline whose FPR preprocessing the network is trained for
    settings : epochs, steps, batch size, seed... (:class:`TrainSettings`)
    backbone, backbone_kwargs : the zoo backbone (default: the config's ``[fpr] backbone``;
        a WideResNet defaults to depth 10, width 1).  A 2-D backbone is trained on
        orthogonal views, a 3-D one on cubes.
    head_units, dropout : the heads of :func:`lungcad.fpr.build_fpr_model`
    malignancy_weight : weight of the malignancy loss against the nodule loss
    segmenter : a candidate U-Net; its candidates give hard negatives and weak labels
    max_hard_per_case : hard negatives kept per scan
    negatives_benign : negatives teach the malignancy head too (target 0), see :class:`FPRDataset`
    mine_cases : run the segmenter on this many scans (drawn with the seed) rather than all:
        the U-Net over whole scans is the slow part of mining on a CPU
    mine_classifier : an earlier FPR network that ranks the mined candidates, so that the
        hard negatives are its highest-scored false positives (see :func:`mine_hard_negatives`)
    mining_cache, mining_key : keep the mined candidates in this folder and reuse them when the
        key (:func:`mining_cache_key` of the networks' files) and the scan are the same
    out : the ``.keras`` file to write (and ``<name>.card.json`` beside it); None writes none
    run_dir, resume, holdout, data_info, command : as for
        :func:`lungcad.train.fit_segmenter.train_segmenter`; with a segmenter the held-out
        metrics include the whole pipeline's candidate and patient AUC
    """
    config = config or PipelineConfig()
    settings = settings or TrainSettings(batch_size=32)
    settings.check()
    keras.utils.set_random_seed(settings.seed)
    if backbone is not None and backbone != config.fpr.backbone:
        config = config.with_overrides({"fpr.backbone": backbone})
    backbone = config.fpr.backbone
    views = views_for(backbone)               # ValueError for an unknown or unsuitable backbone
    family_defaults = DEFAULT_WRN if REGISTRY[backbone].family == "wideresnet" else {}
    bkw = {**family_defaults, **(backbone_kwargs or {})}
    if settings.max_cases_in_memory is None:
        # every case is held for training anyway: load (or generate) each once, for mining too
        cases = [c.load() for c in cases]
    hard: dict[str, pd.DataFrame] = {}
    if segmenter is not None:
        to_mine = list(cases)
        if mine_cases is not None and mine_cases < len(to_mine):
            pick = np.random.default_rng([settings.seed, 17]).choice(len(to_mine), int(mine_cases), replace=False)
            to_mine = [to_mine[i] for i in sorted(pick)]
        mined, hard = mine_hard_negatives(to_mine, segmenter, config=config, max_per_case=max_hard_per_case,
                                          classifier=mine_classifier, verbose=settings.verbose == 1,
                                          cache_dir=mining_cache, cache_key=mining_key)
        cases = _with_weak_labels(cases, mined)
    n_hard = sum(len(h) for h in hard.values())
    train_cases, val_cases = split_by_patient(cases, val_fraction=settings.val_fraction, seed=settings.seed)
    train_ds, val_ds = fpr_datasets(train_cases, val_cases, config=config, settings=settings, hard=hard,
                                    positive_fraction=positive_fraction, negatives_benign=negatives_benign,
                                    gan_positives=gan_positives, gan_ratio=gan_ratio)
    f = config.fpr

    def build():
        return build_fpr_model(backbone=backbone, patch_size=f.patch_size, backbone_kwargs=bkw,
                               head_units=head_units, dropout=dropout)

    def compile_model(m, optimizer=None):
        m.compile(optimizer=optimizer or keras.optimizers.Adam(settings.learning_rate),
                  loss={NODULE: "binary_crossentropy", MALIGNANCY: "binary_crossentropy"},
                  loss_weights={NODULE: 1.0, MALIGNANCY: float(malignancy_weight)},
                  metrics={NODULE: [keras.metrics.AUC(name="auc")],
                           MALIGNANCY: [keras.metrics.AUC(name="auc")]})

    net, history, info = fit(build=build, compile_model=compile_model, train_data=train_ds,
                             val_data=val_ds, settings=settings, run_dir=Path(run_dir), resume=resume,
                             command=command)
    metrics = last_metrics(history, info["best_epoch"])
    if val_ds is not None:
        pred = predict_dataset(net, val_ds)
        metrics["val_nodule_auc"] = roc_auc(pred["nodule"], pred["nodule_prob"])
        mal = pred[pred["malignancy_weight"] > 0]
        metrics["val_malignancy_auc"] = roc_auc(mal["malignancy"], mal["malignancy_prob"]) if len(mal) else None
    if holdout:
        metrics["holdout"] = evaluate_fpr(net, holdout, config=config, segmenter=segmenter,
                                          seed=settings.seed + 2)
    data = dict(data_info or {})
    data.update({"n_patients_train": len({x.patient_id for x in train_cases}),
                 "n_patients_val": len({x.patient_id for x in val_cases}),
                 "val_patients": sorted({x.patient_id for x in val_cases}),
                 "hard_negatives": n_hard, "mined_scans": len(hard), "n_holdout": len(holdout or []),
                 "gan_ratio": gan_ratio, "n_gan_positives": 0 if gan_positives is None else len(gan_positives)})
    card = make_card(
        name="fpr", task="false-positive reduction: nodule and malignancy probabilities of a candidate",
        model=net,
        architecture={"backbone": backbone, "backbone_kwargs": bkw, "head_units": head_units,
                      "dropout": dropout, "views": views,
                      "inputs": {"patch": list(patch_shape(views, f.patch_size)), "scale": [1]},
                      "outputs": [NODULE, MALIGNANCY]},
        # the [fpr] keys the weights hold for, checked when they are loaded; then training's own
        preprocessing={**{k: _plain_value(getattr(f, k)) for k in PREPROCESSING},
                       "positive_fraction": positive_fraction,
                       "negatives_benign": bool(negatives_benign),
                       "malignancy_loss_weight": malignancy_weight},
        data=data, settings=settings, fit_info=info, metrics=metrics, command=command)
    out_path, card_path = write_outputs(net, card, Path(out) if out else None, build=build)
    return TrainResult(model=net, card=card, history=history, out=out_path, card_path=card_path,
                       extra={"train_patients": sorted({x.patient_id for x in train_cases}),
                              "val_patients": sorted({x.patient_id for x in val_cases})})


def _plain_value(v):
    """A config value as JSON writes it (a tuple such as window_hu becomes a list)."""
    return list(v) if isinstance(v, tuple) else v
