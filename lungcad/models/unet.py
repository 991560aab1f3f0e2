"""U-Net (Ronneberger, Fischer and Brox, 2015) in 2D or 3D, of any depth.

Encoder level ``i`` (1 = full resolution) has two 3x3 convolutions with
``base_filters * 2**(i - 1)`` filters, then 2x2 max pooling; the bottleneck has
``base_filters * 2**depth``; decoder level ``i`` up-samples with a 2x2 transposed
convolution, concatenates the skip connection of encoder level ``i`` and applies
two 3x3 convolutions.  Convolutions are "same"-padded, so that the output has
the input's size, which must be divisible by ``2**depth`` (spatial sizes may be
None: the model then runs on any such size).
"""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import check_input_shape, layer_kit, resolve_activation


def _double_conv(x, kit, filters: int, prefix: str, batch_norm: bool):
    for i in (1, 2):
        x = kit.conv(filters, 3, padding="same", use_bias=not batch_norm, name=f"{prefix}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def unet(*, depth: int = 4, base_filters: int = 32, batch_norm: bool = True, dropout: float = 0.0, dims: int = 2,
         input_shape=None, classes: int = 1, include_top: bool = True, pooling=None,
         classifier_activation="auto", name: str = "unet") -> keras.Model:
    """Build a U-Net.

    Layers are named ``enc{i}_conv{1,2}`` (with ``enc{i}_bn{1,2}``,
    ``enc{i}_relu{1,2}``), ``enc{i}_pool``, ``bottleneck_conv{1,2}``,
    ``bottleneck_dropout``, ``dec{i}_upconv``, ``dec{i}_concat``,
    ``dec{i}_conv{1,2}`` and ``predictions``.  ``depth=4, base_filters=32`` is
    the classic 32 -> 512 layout.

    Parameters
    ----------
    depth : int, optional
        Number of poolings (encoder levels).
    base_filters : int, optional
        Filters of the first level; they double at each level down.
    batch_norm : bool, optional
        Batch normalization after every 3x3 convolution (which then has no bias).
    dropout : float, optional
        Dropout rate at the end of the bottleneck (0 disables it).
    dims : {2, 3}
        2D images or 3D volumes.
    input_shape : tuple, optional
        Channels_last shape; spatial sizes divisible by ``2**depth``, or None.
        Default ``(None, None, 1)`` in 2D and ``(None, None, None, 1)`` in 3D.
    classes : int, optional
        Output channels of the final 1x1 convolution.
    include_top : bool, optional
        True: the final 1x1 convolution ``predictions`` to ``classes`` channels;
        False: the model ends at the last decoder feature map (``dec1_relu2``).
    pooling : None
        Must be None: a U-Net outputs maps, not vectors.
    classifier_activation : str or None, optional
        ``"auto"``: softmax over the channels, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.

    Returns
    -------
    keras.Model
    """
    if int(depth) != depth or depth < 1:
        raise ValueError(f"{name}: expected a positive integer depth; received depth={depth!r}")
    if int(base_filters) != base_filters or base_filters < 1:
        raise ValueError(f"{name}: expected a positive integer base_filters; received base_filters={base_filters!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: expected 0 <= dropout < 1; received dropout={dropout!r}")
    if pooling is not None:
        raise ValueError(f"{name}: a U-Net outputs feature maps; expected pooling=None, received pooling={pooling!r}")
    if include_top and (int(classes) != classes or classes < 1):
        raise ValueError(f"{name}: expected classes to be a positive integer; received classes={classes!r}")
    kit = layer_kit(dims)
    if input_shape is None:
        input_shape = (None,) * dims + (1,)
    factor = 2 ** int(depth)
    shape = check_input_shape(input_shape, dims=dims, model=name, min_size=factor, multiple_of=factor)
    head_activation = resolve_activation(classifier_activation, classes, name)

    inputs = keras.Input(shape, name="input")
    x = inputs
    skips = []
    for level in range(1, int(depth) + 1):
        x = _double_conv(x, kit, base_filters * 2 ** (level - 1), f"enc{level}", batch_norm)
        skips.append(x)
        x = kit.max_pool(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, kit, base_filters * factor, "bottleneck", batch_norm)
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in range(int(depth), 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = kit.conv_transpose(filters, 2, strides=2, name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        x = _double_conv(x, kit, filters, f"dec{level}", batch_norm)
    if include_top:
        x = kit.conv(classes, 1, activation=head_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name)
