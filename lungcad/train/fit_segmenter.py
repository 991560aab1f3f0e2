"""Training the candidate U-Net (``lungcad train segmenter``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import keras

from lungcad.config import PipelineConfig
from lungcad.train.cases import CaseLike, split_by_patient
from lungcad.train.detection import detect_candidates, match_candidates
from lungcad.train.fit_loop import fit, write_outputs
from lungcad.train.losses import LesionLoss, dice
from lungcad.train.model_card import last_metrics, make_card
from lungcad.train.segmenter_batches import SegmenterDataset
from lungcad.train.settings import TrainResult, TrainSettings

#: U-Net family keywords of the shipped segmenter.
DEFAULT_UNET = {"depth": 4, "base_filters": 16}


def build_segmenter(*, context_slices: int = 1, model: str = "unet2d", **model_kwargs):
    """The candidate U-Net of the zoo: ``(None, None, 2c+1)`` in, a sigmoid map out."""
    from lungcad.models import build_model

    kw = {**DEFAULT_UNET, **model_kwargs}
    return build_model(model, input_shape=(None, None, 2 * int(context_slices) + 1), classes=1,
                       classifier_activation="sigmoid", name="segmenter", **kw)


def set_output_prior(model, *, prior: float, layer: str = "predictions") -> None:
    """Start the sigmoid output at ``prior`` (bias = logit of the prior, as in RetinaNet), so
    that the first steps do not spend themselves on the rarity of lesion pixels."""
    try:
        out = model.get_layer(layer)
    except ValueError:
        return
    weights = out.get_weights()
    if len(weights) == 2:
        weights[1][...] = np.log(prior / (1.0 - prior))
        out.set_weights(weights)


def segmenter_datasets(train_cases, val_cases, *, config: PipelineConfig, settings: TrainSettings,
                       tile: int, positive_fraction: float):
    """The training and validation :class:`SegmenterDataset` for a pipeline config."""
    c, lm = config.candidates, config.lungmask
    common = dict(context_slices=c.context_slices, pixel_mm=c.pixel_mm, window_hu=c.window_hu,
                  margin_mm=lm.margin_mm, threshold_hu=lm.threshold_hu, tile=tile,
                  batch_size=settings.batch_size, positive_fraction=positive_fraction,
                  verbose=settings.verbose == 1)
    train = SegmenterDataset(train_cases, steps=settings.steps_per_epoch, augment=True, seed=settings.seed,
                             max_cases_in_memory=settings.max_cases_in_memory, workers=settings.workers,
                             **common)
    val = (SegmenterDataset(val_cases, steps=settings.val_steps, augment=False, seed=settings.seed + 1,
                            max_cases_in_memory=settings.max_cases_in_memory, **common)
           if val_cases else None)
    return train, val


def evaluate_segmenter(model, cases: Sequence[CaseLike], *, config: PipelineConfig | None = None
                       ) -> dict:
    """Per-lesion recall of the candidate stage on ``cases`` (LUNA16 hit rule).

    Runs the pipeline's lung mask, U-Net and morphology on each case and counts a lesion
    as found when a candidate lies within its radius.  Returns recall overall and by size
    (< 10 mm, 10-30 mm, > 30 mm), false-positive candidates per scan and the number of
    candidates per scan.
    """
    config = config or PipelineConfig()
    rows, fps, n_cands = [], [], []
    for ref in cases:
        case = ref.load()
        les = case.lesions[case.lesions["nodule"] == 1]
        cands = detect_candidates(case.volume, model, config)
        hit, fp = match_candidates(cands, les)
        rows += [{"diameter_mm": d, "hit": bool(h)} for d, h in zip(les["diameter_mm"], hit)]
        fps.append(int(fp.sum()))
        n_cands.append(len(cands))
    df = pd.DataFrame(rows, columns=["diameter_mm", "hit"])
    out = {"n_scans": len(fps), "n_lesions": int(len(df)),
           "recall": float(df["hit"].mean()) if len(df) else None,
           "fp_per_scan": float(np.mean(fps)) if fps else None,
           "candidates_per_scan": float(np.mean(n_cands)) if n_cands else None}
    for name, lo, hi in (("recall_lt10mm", 0, 10), ("recall_10_30mm", 10, 30), ("recall_gt30mm", 30, 1e9)):
        sel = df[(df["diameter_mm"] >= lo) & (df["diameter_mm"] < hi)]
        out[name] = float(sel["hit"].mean()) if len(sel) else None
        out[name.replace("recall", "n")] = int(len(sel))
    return out


def train_segmenter(cases: Sequence[CaseLike], *, config: PipelineConfig | None = None,
                    settings: TrainSettings | None = None, model: str = "unet2d",
                    model_kwargs: dict | None = None, tile: int = 128, positive_fraction: float = 0.6,
                    balance: float = 0.5,
                    out: str | Path | None = None, run_dir: str | Path = "runs/segmenter",
                    resume: bool = False, holdout: Sequence[CaseLike] | None = None,
                    data_info: dict | None = None, command: str | None = None) -> TrainResult:
    """Train the candidate U-Net and write it with its model card.

    Parameters
    ----------
    cases : Case or CaseRef objects (see :mod:`lungcad.train.cases`)
    config : the pipeline whose candidate preprocessing the network is trained for
        (the default pipeline when None)
    settings : epochs, steps, batch size, seed... (:class:`TrainSettings`)
    model, model_kwargs : zoo name and family keywords (default U-Net depth 4, 16 filters)
    tile : training tile in pixels at ``config.candidates.pixel_mm``
    positive_fraction : share of tiles with a lesion
    balance : weight of lesion pixels against background in the loss (:class:`LesionLoss`)
    out : the ``.keras`` file to write (and ``<name>.card.json`` beside it); None writes none
    run_dir : checkpoints, ``state.json`` and ``log.csv``
    resume : go on from the checkpoint in ``run_dir``
    holdout : cases never trained on, for the card's held-out recall
    data_info : description of the data for the card
    command : the command line for the card (default: ``sys.argv``)
    """
    config = config or PipelineConfig()
    settings = settings or TrainSettings()
    settings.check()
    keras.utils.set_random_seed(settings.seed)
    kw = {**DEFAULT_UNET, **(model_kwargs or {})}
    depth = int(kw.get("depth", 4))
    if tile % (2 ** depth):
        raise ValueError(f"tile: expected a multiple of 2**depth = {2 ** depth}. Received tile={tile}")
    train_cases, val_cases = split_by_patient(cases, val_fraction=settings.val_fraction, seed=settings.seed)
    train_ds, val_ds = segmenter_datasets(train_cases, val_cases, config=config, settings=settings,
                                          tile=tile, positive_fraction=positive_fraction)

    def build():
        return build_segmenter(context_slices=config.candidates.context_slices, model=model, **kw)

    def build_for_training():
        net = build()
        set_output_prior(net, prior=0.02)
        return net

    def compile_model(m, optimizer=None):
        m.compile(optimizer=optimizer or keras.optimizers.Adam(settings.learning_rate),
                  loss=LesionLoss(balance=balance), metrics=[dice])

    net, history, info = fit(build=build_for_training, compile_model=compile_model, train_data=train_ds,
                             val_data=val_ds, settings=settings, run_dir=Path(run_dir), resume=resume,
                             command=command)
    metrics = last_metrics(history, info["best_epoch"])
    if val_ds is not None:
        ev = net.evaluate(val_ds, verbose=0, return_dict=True)
        metrics["val_loss"] = float(ev["loss"])
        metrics["val_dice"] = float(ev.get("dice", np.nan))
    if holdout:
        metrics["holdout"] = evaluate_segmenter(net, holdout, config=config)
    c = config.candidates
    data = dict(data_info or {})
    data.update({"n_patients_train": len({x.patient_id for x in train_cases}),
                 "n_patients_val": len({x.patient_id for x in val_cases}),
                 "val_patients": sorted({x.patient_id for x in val_cases}),
                 "n_holdout": len(holdout or [])})
    card = make_card(
        name="segmenter", task="candidate segmentation (2.5D U-Net, sigmoid lesion map)", model=net,
        architecture={"zoo_model": model, **kw, "input_channels": 2 * c.context_slices + 1},
        preprocessing={"context_slices": c.context_slices, "pixel_mm": c.pixel_mm,
                       "window_hu": list(c.window_hu), "tile": c.tile, "training_tile": tile,
                       "positive_fraction": positive_fraction, "lung_box_margin_mm": config.lungmask.margin_mm,
                       "loss": {"name": "lesion_loss", "balance": balance, "dice_weight": 0.5}},
        data=data, settings=settings, fit_info=info, metrics=metrics, command=command)
    out_path, card_path = write_outputs(net, card, Path(out) if out else None, build=build)
    return TrainResult(model=net, card=card, history=history, out=out_path, card_path=card_path,
                       extra={"train_patients": sorted({x.patient_id for x in train_cases}),
                              "val_patients": sorted({x.patient_id for x in val_cases})})
