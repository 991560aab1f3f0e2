"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), with its two towers as grouped convolutions."""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import check_input_shape, check_top_args, layer_kit, pool_features, resolve_activation
from lungcad.models.layers import LocalResponseNormalization

# Smallest input whose last pooled map keeps one pixel: 67 -> conv1 15 -> pool 7 -> pool 3 -> pool 1.
MIN_SIZE = 67


def alexnet(*, input_shape=(227, 227, 3), classes: int = 1000, include_top: bool = True, pooling=None,
            classifier_activation="auto", name: str = "alexnet", fc_units: int = 4096,
            dropout: float = 0.5) -> keras.Model:
    """Build AlexNet: five convolutions, local response normalization, three dense layers.

    The two GPU towers of the paper are grouped convolutions (``groups=2``) in
    conv2, conv4 and conv5, which only see the maps of their own tower, as in
    the original.  At 227x227x3 with 1000 classes it has 60,965,224 parameters.

    Parameters
    ----------
    input_shape : tuple, optional
        ``(H, W, C)``, every spatial size at least 67.
    classes : int, optional
        Output units.
    include_top : bool, optional
        False: the model ends at pool5.
    pooling : {None, "avg", "max"}, optional
        Global pooling of pool5 when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.
    fc_units : int, optional
        Units of fc6 and fc7 (4096 in the paper).
    dropout : float, optional
        Dropout rate after fc6 and fc7.

    Returns
    -------
    keras.Model
    """
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    shape = check_input_shape(input_shape, dims=2, model=name, min_size=MIN_SIZE, fixed=include_top)
    head_activation = resolve_activation(classifier_activation, classes, name)
    inputs = keras.Input(shape, name="input")
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inputs)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", groups=2, activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", groups=2, activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", groups=2, activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        for i in (6, 7):
            x = layers.Dense(fc_units, activation="relu", name=f"fc{i}")(x)
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        outputs = layers.Dense(classes, activation=head_activation, name="predictions")(x)
    else:
        outputs = pool_features(x, layer_kit(2), pooling)
    return keras.Model(inputs, outputs, name=name)
