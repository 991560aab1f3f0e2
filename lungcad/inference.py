"""Running a network over many inputs: full batches, and the test-time views beside them.

Both stages with a network use :func:`predict_batched`: the U-Net over the slices of a scan
(:mod:`lungcad.candidates`) and the FPR network over the patches of its candidates
(:mod:`lungcad.fpr`).  A Keras model sees full batches only, the last one padded with
zeros, so that its compiled predict step is traced once per input shape rather than once
per batch size, and the rows of a batch never change what a row's output is.  Anything else
that is callable (the toy models of the tests) is called on batches as they come.

:func:`tta_rotations` gives the test-time transforms of the FPR patches (turns about z,
mirrored in z), the transforms the network was trained under.  See docs/architecture.md,
"The stages".
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TTA_CHOICES", "predict_batched", "tta_rotations"]

#: the numbers of test-time views that :func:`tta_rotations` gives
TTA_CHOICES = (1, 2, 4, 8)


def _length(inputs) -> int:
    if isinstance(inputs, dict):
        sizes = {len(v) for v in inputs.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs: expected arrays of one length. Received lengths {sorted(sizes)}")
        return sizes.pop()
    return len(inputs)


def _rows(inputs, lo: int, hi: int):
    if isinstance(inputs, dict):
        return {k: v[lo:hi] for k, v in inputs.items()}
    return inputs[lo:hi]


def _pad(inputs, n: int, size: int):
    def pad(v):
        v = np.asarray(v)
        return v if n == size else np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])

    return {k: pad(v) for k, v in inputs.items()} if isinstance(inputs, dict) else pad(inputs)


def _as_float(out, n: int):
    if isinstance(out, dict):
        return {k: np.asarray(v, dtype=np.float32)[:n] for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [np.asarray(v, dtype=np.float32)[:n] for v in out]
    return np.asarray(out, dtype=np.float32)[:n]


def _join(parts: list):
    first = parts[0]
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [np.concatenate([p[i] for p in parts]) for i in range(len(first))]
    return np.concatenate(parts)


def predict_batched(model, inputs, *, batch_size: int) -> Any:
    """``model`` over ``inputs`` in batches of ``batch_size``, as float32.

    Parameters
    ----------
    model : keras.Model or callable
        A Keras model is run with ``predict_on_batch`` on full batches (the last padded with
        zeros, its padding cut off again); any other callable is called on each batch.
    inputs : array or dict of arrays
        The rows to run, along axis 0 (a dict for a model with named inputs; every array of
        it has the same length).
    batch_size : int
        Rows per call, >= 1.

    Returns
    -------
    array, dict or list of arrays
        The model's outputs for the rows of ``inputs``, in their order, as float32.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1. Received batch_size={batch_size!r}")
    n = _length(inputs)
    keras_model = hasattr(model, "predict_on_batch")
    parts = []
    for lo in range(0, max(n, 1), batch_size):
        hi = min(lo + batch_size, n)
        rows = _rows(inputs, lo, hi)
        if keras_model:
            parts.append(_as_float(model.predict_on_batch(_pad(rows, hi - lo, batch_size)), hi - lo))
        else:
            parts.append(_as_float(model(rows), hi - lo))
    return _join(parts)


def tta_rotations(n: int) -> np.ndarray:
    """The first ``n`` (1, 2, 4 or 8) test-time transforms of the sampling grid, world-frame
    3 x 3 matrices stacked as (n, 3, 3): the identity, turns about z by 90, 180 and 270
    degrees, then the same four mirrored in z."""
    if n not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}. Received {n!r}")
    out = []
    for flip_z in (1.0, -1.0):
        for k in range(4):
            c, s = np.cos(k * np.pi / 2), np.sin(k * np.pi / 2)
            turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            out.append(np.round(turn @ np.diag([1.0, 1.0, flip_z]), 12))
    return np.stack(out[:n])
