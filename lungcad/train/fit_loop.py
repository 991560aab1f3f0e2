"""The fit loop both trainings share: checkpoints, early stopping, resume and a time limit in a
run directory, and the shipped file with its model card.

A run directory holds::

    last.keras      the model after the latest epoch, with its optimizer state (resume)
    best.keras      the model of the best validation loss so far
    state.json      epochs done, best epoch and loss
    log.csv         the CSV training log, one row per epoch

The shipped file (``out``) is the best model without optimizer state, loadable with
``safe_mode=True`` on any backend, and next to it ``<name>.card.json``, its model card
(:mod:`lungcad.train.model_card`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import keras

from lungcad.results.atomic import atomic_path, atomic_write_text
from lungcad.cards import card_path_for
from lungcad.errors import InputError
from lungcad.train.model_card import _num, _plain, command_line, sha256
from lungcad.train.settings import TrainSettings


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
    """``model.save`` to ``path`` atomically (:func:`lungcad.results.atomic.atomic_path`)."""
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
