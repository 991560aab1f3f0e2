"""What a training run is asked to do and what it gives back: :class:`TrainSettings` (the
options that do not depend on the network) and :class:`TrainResult`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


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
