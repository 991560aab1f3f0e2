"""Custom layers of the zoo, serializable so that ``.keras`` files load with ``safe_mode=True``."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="lungcad")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels (Krizhevsky et al., 2012).

    Each activation is divided by a power of the summed squares of its
    neighbours along the channel axis (channels_last)::

        b[..., c] = a[..., c] / (k + alpha * sum_{j in window(c)} a[..., j] ** 2) ** beta

    The window holds ``size`` channels centred on ``c`` and is clipped at the
    first and last channel.  As in the AlexNet paper (and unlike Caffe), ``alpha``
    is not divided by ``size``.

    Parameters
    ----------
    size : int, optional
        Number of channels in the window (odd, ``n`` in the paper).  Default 5.
    alpha : float, optional
        Scale of the sum of squares.  Default 1e-4.
    beta : float, optional
        Exponent.  Default 0.75.
    bias : float, optional
        Additive constant ``k``.  Default 2.0.
    **kwargs
        Passed to :class:`keras.layers.Layer` (``name``, ``dtype``, ...).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, bias: float = 2.0,
                 **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1 or size % 2 == 0:
            raise ValueError(f"LocalResponseNormalization size must be an odd positive integer; "
                             f"received size={size!r}")
        if bias <= 0 or alpha < 0 or beta < 0:
            raise ValueError("LocalResponseNormalization expects bias > 0, alpha >= 0 and beta >= 0; "
                             f"received bias={bias!r}, alpha={alpha!r}, beta={beta!r}")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = float(bias)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError("LocalResponseNormalization needs a known number of channels (last axis); "
                             f"received input shape {tuple(input_shape)}")
        self._channels = int(input_shape[-1])
        super().build(input_shape)

    def call(self, inputs):
        half = self.size // 2
        squares = ops.square(inputs)
        padding = [(0, 0)] * (len(inputs.shape) - 1) + [(half, half)]
        padded = ops.pad(squares, padding)
        window_sum = padded[..., 0:self._channels]
        for offset in range(1, self.size):
            window_sum = window_sum + padded[..., offset:offset + self._channels]
        return inputs / ops.power(self.bias + self.alpha * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, alpha=self.alpha, beta=self.beta, bias=self.bias)
        return config
