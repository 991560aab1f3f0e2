"""The segmenter's loss and metric, registered with Keras (package ``lungcad``) so that
checkpoints load: :class:`LesionLoss` (class-balanced cross-entropy plus soft Dice),
:func:`lesion_loss` and :func:`dice`.
"""
from __future__ import annotations

import keras
from keras import ops


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
