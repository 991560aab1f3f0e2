"""LeNet-5 (LeCun et al., 1998): C1-S2-C3-S4-C5-F6-output."""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import check_input_shape, check_top_args, layer_kit, pool_features, resolve_activation


def lenet5(*, input_shape=(32, 32, 1), classes: int = 10, include_top: bool = True, pooling=None,
           classifier_activation="auto", name: str = "lenet5", activation: str = "tanh") -> keras.Model:
    """Build LeNet-5.

    C1 (6 maps, 5x5), S2 (2x2 average pooling), C3 (16 maps, 5x5, every C3 map
    sees all six S2 maps: the sparse connection table of the paper is not
    used), S4, C5 (120 maps, 5x5), F6 (84 units) and the output layer.  At
    32x32x1 with 10 classes it has 61,706 parameters.

    Parameters
    ----------
    input_shape : tuple, optional
        ``(H, W, C)``, every spatial size at least 32 (C5 needs a 5x5 map).
    classes : int, optional
        Output units.
    include_top : bool, optional
        False: the model ends at C5 (a task head goes on top).
    pooling : {None, "avg", "max"}, optional
        Global pooling of the C5 maps when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.
    activation : str, optional
        Activation of C1, C3, C5 and F6 (the paper's squashing function is tanh).

    Returns
    -------
    keras.Model
    """
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    shape = check_input_shape(input_shape, dims=2, model=name, min_size=32, fixed=include_top)
    head_activation = resolve_activation(classifier_activation, classes, name)
    inputs = keras.Input(shape, name="input")
    x = layers.Conv2D(6, 5, activation=activation, name="c1")(inputs)
    x = layers.AveragePooling2D(2, name="s2")(x)
    x = layers.Conv2D(16, 5, activation=activation, name="c3")(x)
    x = layers.AveragePooling2D(2, name="s4")(x)
    x = layers.Conv2D(120, 5, activation=activation, name="c5")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(84, activation=activation, name="f6")(x)
        outputs = layers.Dense(classes, activation=head_activation, name="predictions")(x)
    else:
        outputs = pool_features(x, layer_kit(2), pooling)
    return keras.Model(inputs, outputs, name=name)
