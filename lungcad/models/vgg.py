"""VGG16 and VGG19 (Simonyan and Zisserman, 2015)."""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import check_input_shape, check_top_args, layer_kit, pool_features, resolve_activation

#: Convolutions per block (64, 128, 256, 512, 512 filters) of the two registered depths.
VGG_BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_FILTERS = (64, 128, 256, 512, 512)


def vgg(*, convs_per_block=VGG_BLOCKS[16], input_shape=(224, 224, 3), classes: int = 1000,
        include_top: bool = True, pooling=None, classifier_activation="auto", name: str = "vgg16",
        fc_units: int = 4096, dropout: float = 0.5) -> keras.Model:
    """Build a VGG network: five blocks of 3x3 convolutions, each closed by 2x2 max pooling.

    Layers are named ``block{b}_conv{c}``, ``block{b}_pool``, ``fc1``, ``fc2`` and
    ``predictions``.  At 224x224x3 with 1000 classes VGG16 has 138,357,544
    parameters and VGG19 143,667,240.

    Parameters
    ----------
    convs_per_block : sequence of 5 int
        Number of convolutions in each block (``VGG_BLOCKS[16]`` or ``VGG_BLOCKS[19]``).
    input_shape : tuple, optional
        ``(H, W, C)``, every spatial size at least 32 (five 2x2 poolings).
    classes : int, optional
        Output units.
    include_top : bool, optional
        False: the model ends at ``block5_pool``.
    pooling : {None, "avg", "max"}, optional
        Global pooling of ``block5_pool`` when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.
    fc_units : int, optional
        Units of fc1 and fc2 (4096 in the paper).
    dropout : float, optional
        Dropout rate after fc1 and fc2 (0.5 in the paper).

    Returns
    -------
    keras.Model
    """
    if len(convs_per_block) != len(BLOCK_FILTERS):
        raise ValueError(f"{name}: expected {len(BLOCK_FILTERS)} blocks in convs_per_block; "
                         f"received {convs_per_block!r}")
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    shape = check_input_shape(input_shape, dims=2, model=name, min_size=2 ** len(BLOCK_FILTERS),
                              fixed=include_top)
    head_activation = resolve_activation(classifier_activation, classes, name)
    inputs = keras.Input(shape, name="input")
    x = inputs
    for b, (n_convs, filters) in enumerate(zip(convs_per_block, BLOCK_FILTERS), start=1):
        for c in range(1, n_convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{b}_conv{c}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        for i in (1, 2):
            x = layers.Dense(fc_units, activation="relu", name=f"fc{i}")(x)
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        outputs = layers.Dense(classes, activation=head_activation, name="predictions")(x)
    else:
        outputs = pool_features(x, layer_kit(2), pooling)
    return keras.Model(inputs, outputs, name=name)
