"""The model card a training writes beside its network: what the file is, how it was made
(the command, the versions, the settings), how good it is; and the helpers it is made with.
"""
from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

import keras

from lungcad import __version__
from lungcad.cards import weights_sha256
from lungcad.train.settings import TrainSettings


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as one shell-style line."""
    import shlex

    argv = sys.argv if argv is None else argv
    prog = "lungcad" if argv and (argv[0].endswith("lungcad") or argv[0].endswith("__main__.py")) else argv[0]
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]]) if argv else ""


def sha256(path: Path) -> str:
    """The SHA-256 of a file (:func:`lungcad.cards.weights_sha256`)."""
    return weights_sha256(path)


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


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
