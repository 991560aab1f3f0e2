"""GoogLeNet / Inception v1 (Szegedy et al., 2015), with its two optional auxiliary classifiers."""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import (check_input_shape, check_top_args, conv, head, layer_kit,
                                   resolve_activation)
from lungcad.models.layers import LocalResponseNormalization

#: Table 1 of the paper: module name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
#: ``"pool3"`` and ``"pool4"`` are the 3x3/2 max poolings between the groups.
INCEPTION_V1 = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    "pool3",
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    "pool4",
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)
#: The auxiliary classifiers sit on the outputs of these modules.
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}
# Without auxiliary classifiers the input is divided by 32; with them, the map
# after inception4a (input / 16, rounded up) must hold their 5x5 average pooling.
MIN_SIZE = 32
MIN_SIZE_AUX = 65


def _inception(x, spec):
    name, n1, r3, n3, r5, n5, proj = spec

    def relu_conv(t, filters, kernel, suffix):
        return layers.Conv2D(filters, kernel, padding="same", activation="relu", name=f"{name}_{suffix}")(t)

    branches = [
        relu_conv(x, n1, 1, "1x1"),
        relu_conv(relu_conv(x, r3, 1, "3x3_reduce"), n3, 3, "3x3"),
        relu_conv(relu_conv(x, r5, 1, "5x5_reduce"), n5, 5, "5x5"),
        relu_conv(layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x), proj, 1,
                  "pool_proj"),
    ]
    return layers.Concatenate(name=f"{name}_concat")(branches)


def _aux_classifier(x, prefix, classes, activation):
    x = layers.AveragePooling2D(5, strides=3, name=f"{prefix}_avgpool")(x)
    x = layers.Conv2D(128, 1, activation="relu", name=f"{prefix}_conv")(x)
    x = layers.Flatten(name=f"{prefix}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{prefix}_fc")(x)
    x = layers.Dropout(0.7, name=f"{prefix}_dropout")(x)
    return layers.Dense(classes, activation=activation, name=f"{prefix}_predictions")(x)


def googlenet(*, input_shape=(224, 224, 3), classes: int = 1000, include_top: bool = True, pooling=None,
              classifier_activation="auto", name: str = "googlenet", aux_classifiers: bool = False,
              dropout: float = 0.4) -> keras.Model:
    """Build GoogLeNet (Inception v1) as in Table 1 of the paper.

    Stem (conv1 7x7/2, pool1, lrn1, conv2_reduce, conv2 3x3, lrn2, pool2), nine
    inception modules with 1x1 reductions, global average pooling, dropout and
    the classifier.  Convolutions have biases and no batch normalization, as in
    the paper.  At 224x224x3 with 1000 classes it has 6,998,552 parameters, and
    13,378,280 with the auxiliary classifiers.

    Parameters
    ----------
    input_shape : tuple, optional
        ``(H, W, C)``, spatial sizes at least 32, or at least 65 and fixed with
        the auxiliary classifiers.
    classes : int, optional
        Output units of every classifier.
    include_top : bool, optional
        False: the model ends at inception5b.
    pooling : {None, "avg", "max"}, optional
        Global pooling of inception5b when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.
    aux_classifiers : bool, optional
        Add the two auxiliary classifiers (on inception4a and inception4d).  The
        model then has three outputs: ``[predictions, aux1_predictions,
        aux2_predictions]``; the paper weights the auxiliary losses by 0.3.
    dropout : float, optional
        Dropout rate before the main classifier (0.4 in the paper).

    Returns
    -------
    keras.Model
    """
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    if aux_classifiers and not include_top:
        raise ValueError(f"{name}: the auxiliary classifiers are outputs of the full model; expected "
                         "include_top=True with aux_classifiers=True, received include_top=False")
    shape = check_input_shape(input_shape, dims=2, model=name,
                              min_size=MIN_SIZE_AUX if aux_classifiers else MIN_SIZE, fixed=aux_classifiers)
    head_activation = resolve_activation(classifier_activation, classes, name)
    kit = layer_kit(2)
    inputs = keras.Input(shape, name="input")
    x = conv(inputs, kit, 64, 7, stride=2, activation="relu", name="conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = layers.Conv2D(64, 1, activation="relu", name="conv2_reduce")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    aux_outputs = []
    for spec in INCEPTION_V1:
        if isinstance(spec, str):
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=spec)(x)
            continue
        x = _inception(x, spec)
        if aux_classifiers and spec[0] in AUX_AFTER:
            aux_outputs.append(_aux_classifier(x, AUX_AFTER[spec[0]], classes, head_activation))
    outputs = head(x, kit, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=head_activation, dropout=dropout)
    return keras.Model(inputs, [outputs, *aux_outputs] if aux_outputs else outputs, name=name)
