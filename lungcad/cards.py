"""Model cards: the ``<name>.card.json`` beside each ``<name>.keras`` file.

Training writes the card (:func:`lungcad.train.model_card.make_card`): what the network is,
how it was made, how good it is, and the preprocessing its weights hold for.  Loading
the weights reads it back to check that preprocessing against the pipeline
(:func:`lungcad.pipeline.check_fpr_model`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lungcad.errors import InputError

__all__ = ["card_path_for", "read_card", "weights_sha256"]


def weights_sha256(path) -> str:
    """The SHA-256 (hex) of a file: how a card, the scan JSON and the DICOM SR name a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path_for(weights) -> Path:
    """``segmenter.keras`` -> ``segmenter.card.json``, in the same folder."""
    out = Path(weights)
    return out.with_name(out.name[: -len(".keras")] + ".card.json" if out.name.endswith(".keras")
                         else out.name + ".card.json")


def read_card(weights) -> dict | None:
    """The model card of a weights file, or None when there is none beside it.

    Raises InputError, naming the card, when it is there but is not a JSON object.
    """
    path = card_path_for(weights)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"model card is not readable JSON ({e}); restore the card that "
                               f"training wrote beside the weights") from e
    if not isinstance(card, dict):
        raise InputError(path, f"model card: expected a JSON object. Received {type(card).__name__}")
    return card
