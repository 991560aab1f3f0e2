"""What both trainings share: settings, losses, the fit loop with checkpoints and resume,
held-out candidate detection, and the model card.

A run directory holds::

    last.keras      the model after the latest epoch, with its optimizer state (resume)
    best.keras      the model of the best validation loss so far
    state.json      epochs done, best epoch and loss
    log.csv         the CSV training log, one row per epoch

The shipped file (``out``) is the best model without optimizer state, loadable with
``safe_mode=True`` on any backend, and next to it ``<name>.card.json``, its model card.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import keras
from keras import ops

from lungcad import __version__
from lungcad.atomic import atomic_path, atomic_write_text
from lungcad.cards import card_path_for
from lungcad.config import PipelineConfig
from lungcad.errors import InputError


@dataclass
class TrainSettings:
    """Options of a training run that do not depend on the network.

    Attributes
    ----------
    epochs : total epochs (a resumed run goes on up to this number)
    steps_per_epoch, val_steps : batches per training epoch and per validation pass
    batch_size : samples per batch
    learning_rate : Adam's initial learning rate (halved when the validation loss stalls)
    patience : early stopping after this many epochs without a better validation loss
    val_fraction : share of *patients* held out for validation
    seed : seeds Keras (weights, dropout), the split and the data sampling
    workers : PyDataset worker threads
    max_cases_in_memory : load a new random subset of this many cases each epoch (None: all)
    verbose : Keras ``fit`` verbosity (1 a progress bar, 2 one line per epoch, 0 silent)
    init_weights : a ``.keras`` file of the same network to start from (fine-tuning) rather
        than new random weights; a resumed run starts from its checkpoint instead
    time_limit_min : stop after the first epoch that ends past this many minutes of training
        (a batch job's wall time); the best weights so far are kept, and ``--resume`` goes on
    """

    epochs: int = 20
    steps_per_epoch: int = 100
    val_steps: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 6
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 1
    max_cases_in_memory: int | None = None
    verbose: int = 1
    init_weights: str | None = None
    time_limit_min: float | None = None

    def check(self) -> None:
        for name in ("epochs", "steps_per_epoch", "val_steps", "batch_size", "workers"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1. Received {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected a positive number. Received {self.learning_rate!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a number in [0, 1). Received {self.val_fraction!r}")
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise ValueError(f"time_limit_min: expected a positive number of minutes. "
                             f"Received {self.time_limit_min!r}")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ValueError(f"init_weights: {self.init_weights}: file not found")


@dataclass
class TrainResult:
    """What a training function returns: the model (best weights), its card and the log."""

    model: Any
    card: dict
    history: pd.DataFrame
    out: Path | None = None
    card_path: Path | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------ losses, metrics

def _lesion_loss(y_true, y_pred, balance: float, dice_weight: float):
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
    axes = tuple(range(1, len(y_pred.shape)))
    n_pos = ops.sum(y_true, axis=axes)
    n_neg = ops.sum(1.0 - y_true, axis=axes)
    pos = ops.sum(-ops.log(p) * y_true, axis=axes) / ops.maximum(n_pos, 1.0)
    neg = ops.sum(-ops.log(1.0 - p) * (1.0 - y_true), axis=axes) / ops.maximum(n_neg, 1.0)
    # lesion pixels weigh (n_neg / n_pos) ** balance times a background pixel
    w = ops.power(ops.maximum(n_pos, 1.0) / ops.maximum(n_neg, 1.0), 1.0 - balance)
    has = ops.cast(n_pos > 0, y_pred.dtype)
    inter = ops.sum(y_true * y_pred, axis=axes)
    dice_t = (2.0 * inter + 1.0) / (n_pos + ops.sum(y_pred, axis=axes) + 1.0)
    return neg + w * pos + dice_weight * has * (1.0 - dice_t)


@keras.saving.register_keras_serializable(package="lungcad")
class LesionLoss(keras.losses.Loss):
    """Class-balanced cross-entropy plus soft Dice, per tile.

    * cross-entropy where a lesion pixel weighs ``(n_background / n_lesion) ** balance``
      times a background pixel of its tile.  ``balance=0`` is plain cross-entropy, which
      learns the masses first and predicts 0 on small nodules (there the sigmoid
      saturates and the Dice gradient vanishes); ``balance=1`` gives the lesion pixels of a
      tile as much weight as all its background, which finds every nodule but also fires
      on many vessels; ``0.5`` lies between;
    * ``dice_weight * (1 - soft Dice)`` on tiles that hold a lesion, for the overlap.
    """

    def __init__(self, balance: float = 0.5, dice_weight: float = 0.5, name: str = "lesion_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(balance) <= 1.0:
            raise ValueError(f"balance: expected a number in [0, 1]. Received {balance!r}")
        self.balance = float(balance)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return _lesion_loss(y_true, y_pred, self.balance, self.dice_weight)

    def get_config(self):
        return {**super().get_config(), "balance": self.balance, "dice_weight": self.dice_weight}


@keras.saving.register_keras_serializable(package="lungcad")
def lesion_loss(y_true, y_pred):
    """:class:`LesionLoss` with ``balance=1`` (the loss of checkpoints saved with a plain function)."""
    return _lesion_loss(y_true, y_pred, 1.0, 0.5)


@keras.saving.register_keras_serializable(package="lungcad")
def dice(y_true, y_pred):
    """Dice of the prediction thresholded at 0.5, over the batch (1 when both are empty)."""
    y_true = ops.cast(y_true >= 0.5, "float32")
    y_hat = ops.cast(y_pred >= 0.5, "float32")
    inter = ops.sum(y_true * y_hat)
    denom = ops.sum(y_true) + ops.sum(y_hat)
    return ops.where(denom > 0, 2.0 * inter / ops.maximum(denom, 1.0), 1.0)


# -------------------------------------------------------------------------- run directory

class TimeLimit(keras.callbacks.Callback):
    """Stops training after the first epoch that ends ``minutes`` after training began."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.t0: float | None = None          # set when training begins
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if time.perf_counter() - self.t0 >= self.seconds:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1


class RunState(keras.callbacks.Callback):
    """Saves ``last.keras`` and ``state.json`` after every epoch, and ``best.keras`` when the
    monitored validation loss improves (files are replaced atomically)."""

    def __init__(self, run_dir: Path, *, monitor: str = "val_loss", best: float = math.inf,
                 best_epoch: int = 0, commands: list | None = None, loss: str = "", val_data: str = ""):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.best = best
        self.best_epoch = best_epoch
        self.commands = list(commands or [])
        self.loss = loss
        self.val_data = val_data

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor, logs.get("loss"))
        improved = value is not None and np.isfinite(value) and value < self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
            _atomic_save(self.model, self.run_dir / "best.keras")
        _atomic_save(self.model, self.run_dir / "last.keras")
        state = {"epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch,
                 "monitor": self.monitor, "loss": self.loss, "val_data": self.val_data,
                 "commands": self.commands,
                 "logs": {k: float(v) for k, v in logs.items()}}
        atomic_write_text(self.run_dir / "state.json", json.dumps(state, indent=2))


def _atomic_save(model, path: Path) -> None:
    """``model.save`` to ``path`` atomically (:func:`lungcad.atomic.atomic_path`)."""
    with atomic_path(path, suffix=".keras") as tmp:      # Keras wants the .keras suffix
        model.save(tmp)


def loss_id(model) -> str:
    """A string naming a compiled model's loss and its settings (to tell when it changed)."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return ""
    if hasattr(loss, "get_config"):
        return json.dumps({"class": type(loss).__name__, **loss.get_config()}, sort_keys=True, default=str)
    return json.dumps(loss, sort_keys=True, default=lambda f: getattr(f, "__name__", str(f)))


def _data_id(data) -> str:
    """Batches x batch size x patients of a validation dataset (to tell when it changed)."""
    if data is None:
        return ""
    pool = getattr(data, "pool", None)
    patients = sorted(c.patient_id for c in pool.cases) if pool is not None else []
    return f"{len(data)}x{getattr(data, 'batch_size', '?')}:{','.join(patients)}"


def read_state(run_dir: Path) -> dict | None:
    """The run's ``state.json``, or None when there is no checkpoint to resume from."""
    p = Path(run_dir) / "state.json"
    if not p.is_file() or not (Path(run_dir) / "last.keras").is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(p, f"cannot read the run state ({e}); delete the run folder or start "
                            "without --resume") from e


def load_checkpoint(path: Path):
    """A checkpoint saved by :class:`RunState`, compiled, with its optimizer state."""
    import lungcad.models  # noqa: F401  registers the zoo's layers

    return keras.saving.load_model(path, compile=True, safe_mode=True)


def strip_for_inference(model, build: Callable[[], Any]):
    """A new, uncompiled model from ``build()`` with the weights of ``model``: no optimizer
    state in the saved file (a third of the size with Adam)."""
    clean = build()
    clean.set_weights(model.get_weights())
    return clean


def fit(*, build: Callable[[], Any], compile_model: Callable[[Any], None], train_data, val_data,
        settings: TrainSettings, run_dir: Path, resume: bool, command: str | None = None
        ) -> tuple[Any, pd.DataFrame, dict]:
    """Train with checkpoints, early stopping, a CSV log and resume; return the best model.

    ``build()`` makes a new model; ``compile_model(model, optimizer=None)`` compiles it (with
    a new optimizer when None).  With ``resume`` and a checkpoint in ``run_dir``, training
    goes on from the last finished epoch (up to ``settings.epochs``) with the optimizer and
    its state (learning rate, moments) of that epoch, and the loss of this call.  Early
    stopping restarts counting its patience when a run is resumed.

    Returns the model with the best validation weights, the training log and a dict
    ``{"epochs_done", "best_epoch", "best_monitor", "best_value", "resumed_from", "seconds",
    "commands"}``; ``commands`` lists the command of every run that trained this model (the
    first, then each resume), so that a resumed model can be reproduced.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(run_dir) if resume else None
    log_path = run_dir / "log.csv"
    if state is not None:
        model = load_checkpoint(run_dir / "last.keras")
        # the loss and metrics of this command, with the checkpoint's optimizer and its state
        compile_model(model, optimizer=model.optimizer)
        initial_epoch = int(state["epoch"])
        best, best_epoch = float(state.get("best", math.inf)), int(state.get("best_epoch", 0))
        if state.get("loss") != loss_id(model) or state.get("val_data") != _data_id(val_data):
            # another loss or other validation data: values do not compare with the best so far
            best = math.inf
        _trim_log(log_path, initial_epoch)
    else:
        for stale in ("last.keras", "best.keras", "state.json", "log.csv"):
            (run_dir / stale).unlink(missing_ok=True)
        model = build()
        if settings.init_weights is not None:
            load_initial_weights(model, settings.init_weights)
        compile_model(model)
        initial_epoch, best, best_epoch = 0, math.inf, 0
    commands = (list(state.get("commands", [])) if state is not None else []) + \
        [{"command": command if command is not None else command_line(), "from_epoch": initial_epoch,
          "to_epoch": settings.epochs}]
    for ds in (train_data,):
        if hasattr(ds, "epoch"):
            ds.epoch = initial_epoch
    has_val = val_data is not None
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        RunState(run_dir, monitor=monitor, best=best, best_epoch=best_epoch, commands=commands,
                 loss=loss_id(model), val_data=_data_id(val_data)),
        keras.callbacks.CSVLogger(str(log_path), append=state is not None),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=settings.patience, mode="min"),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                          patience=max(1, settings.patience // 2), min_lr=1e-5),
    ]
    limit = TimeLimit(settings.time_limit_min) if settings.time_limit_min else None
    if limit is not None:
        callbacks.append(limit)
    t0 = time.perf_counter()
    if initial_epoch < settings.epochs:
        model.fit(train_data, validation_data=val_data, epochs=settings.epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=settings.verbose)
    seconds = time.perf_counter() - t0
    state = read_state(run_dir) or {}
    best_path = run_dir / "best.keras"
    model = load_checkpoint(best_path) if best_path.is_file() else model
    history = pd.read_csv(log_path) if log_path.is_file() else pd.DataFrame()
    info = {"epochs_done": int(state.get("epoch", initial_epoch)),
            "best_epoch": int(state.get("best_epoch", 0)),
            "best_monitor": monitor, "best_value": _num(state.get("best")),
            "resumed_from": initial_epoch if resume and initial_epoch else None,
            "seconds": round(seconds, 1), "commands": state.get("commands", commands)}
    if limit is not None:
        info["time_limit_min"] = settings.time_limit_min
        info["stopped_by_time_limit"] = limit.stopped_epoch is not None and limit.stopped_epoch < settings.epochs
    if settings.init_weights is not None:
        info["init_weights"] = {"path": str(settings.init_weights),
                                "sha256": sha256(Path(settings.init_weights))}
    return model, history, info


def load_initial_weights(model, path) -> None:
    """Set ``model``'s weights to those of the ``.keras`` file ``path`` (fine-tuning).

    The file must hold the same network: the same layers with the same weight shapes, in
    the same order.  Anything else is an :class:`~lungcad.errors.InputError` naming the file.
    """
    from lungcad.pipeline import load_keras_model

    src = load_keras_model(path)
    theirs, ours = src.get_weights(), model.weights
    if len(theirs) != len(ours) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(theirs, ours)):
        first = next((f"{b.path}: {tuple(b.shape)} here, {tuple(a.shape)} there"
                      for a, b in zip(theirs, ours) if tuple(a.shape) != tuple(b.shape)),
                     f"{len(ours)} weight arrays here, {len(theirs)} there")
        raise InputError(path, f"its weights do not fit the network being trained ({first}); "
                               "--init-weights needs a file of the same architecture")
    model.set_weights(theirs)


def _trim_log(log_path: Path, epochs: int) -> None:
    """Drop log rows of epochs after the checkpoint (a run killed after logging, before saving)."""
    if not log_path.is_file():
        return
    try:
        df = pd.read_csv(log_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return
    if "epoch" in df and (df["epoch"] >= epochs).any():
        df[df["epoch"] < epochs].to_csv(log_path, index=False)


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------------- candidates

def detect_candidates(volume, segmenter, config: PipelineConfig, *, lung_mask=None) -> pd.DataFrame:
    """The candidate table that the pipeline's first stages (lung mask, U-Net, morphology)
    give for ``volume``: what the FPR network will be asked to classify."""
    from lungcad import lungmask
    from lungcad.pipeline import candidate_stage, lung_stage, morphology_stage

    if lung_mask is None:
        lm, box = lung_stage(volume, config)
        lung_mask = lm.mask
    else:
        box = lungmask.lung_box(lung_mask, spacing_zyx=volume.spacing, margin_mm=config.lungmask.margin_mm)
    prob = candidate_stage(volume, segmenter, box, config)
    return morphology_stage(volume, prob, lung_mask, config)


def match_candidates(candidates: pd.DataFrame, lesions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """LUNA16 hits: ``hit[j]`` is True when lesion j has a candidate within its radius;
    ``fp[i]`` is True when candidate i lies within the radius of no lesion."""
    if len(lesions) == 0:
        return np.zeros(0, dtype=bool), np.ones(len(candidates), dtype=bool)
    if len(candidates) == 0:
        return np.zeros(len(lesions), dtype=bool), np.zeros(0, dtype=bool)
    a = candidates[["coordX", "coordY", "coordZ"]].to_numpy(float)
    b = lesions[["coordX", "coordY", "coordZ"]].to_numpy(float)
    r = lesions["diameter_mm"].to_numpy(float) / 2.0
    within = np.linalg.norm(a[:, None] - b[None], axis=-1) <= r[None]
    return within.any(axis=0), ~within.any(axis=1)


# ----------------------------------------------------------------------------- model card

def command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as one shell-style line."""
    import shlex

    argv = sys.argv if argv is None else argv
    prog = "lungcad" if argv and (argv[0].endswith("lungcad") or argv[0].endswith("__main__.py")) else argv[0]
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]]) if argv else ""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_card(*, name: str, task: str, model, architecture: dict, preprocessing: dict, data: dict,
              settings: TrainSettings, fit_info: dict, metrics: dict, command: str | None) -> dict:
    """The model card: what the file is, how it was made, how good it is."""
    return {
        "name": name,
        "task": task,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "lungcad_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "parameters": int(model.count_params()),
        "architecture": architecture,
        "preprocessing": preprocessing,
        "data": data,
        "seed": settings.seed,
        "training": {**asdict(settings), **fit_info},
        "metrics": metrics,
    }


def write_outputs(model, card: dict, out: Path | None, *, build: Callable[[], Any]
                  ) -> tuple[Path | None, Path | None]:
    """Save the inference model (rebuilt by ``build()``, without optimizer state) to ``out``
    and its card next to it (atomically)."""
    if out is None:
        return None, None
    out = Path(out)
    if not out.name.endswith(".keras"):
        raise ValueError(f"out: expected a file name ending in .keras. Received {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = strip_for_inference(model, build)
    _atomic_save(clean, out)
    card = dict(card)
    card["file"] = {"name": out.name, "bytes": out.stat().st_size, "sha256": sha256(out)}
    cpath = card_path_for(out)
    atomic_write_text(cpath, json.dumps(_plain(card), indent=2) + "\n")
    return out, cpath


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def last_metrics(history: pd.DataFrame, best_epoch: int) -> dict:
    """Train/val values of the final epoch and of the best epoch, from the CSV log."""
    if len(history) == 0:
        return {}
    cols = [c for c in history.columns if c not in ("epoch",)]
    final = {f"final_{c}": _num(history[c].iloc[-1]) for c in cols}
    rows = history[history["epoch"] == best_epoch - 1] if "epoch" in history else history.iloc[0:0]
    best = {f"best_{c}": _num(rows[c].iloc[0]) for c in cols} if len(rows) else {}
    return {**final, **best}
