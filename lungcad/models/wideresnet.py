"""Wide residual networks WRN-d-k (Zagoruyko and Komodakis, 2016), CIFAR layout, 2D or 3D.

``conv1`` (3x3, 16 filters), three stages of ``(d - 4) / 6`` pre-activation
basic blocks with ``16k``, ``32k`` and ``64k`` filters (strides 1, 2, 2) and
dropout between the two convolutions of each block, then ``final_bn`` /
``final_relu``, global average pooling and the classifier.  No convolution has
a bias, as in the authors' reference code.  WRN-28-10 on CIFAR-10 (32x32x3,
10 classes) has 36,479,194 trainable parameters, plus 17,952 batch-norm
moving statistics: ``count_params()`` gives 36,497,146.
"""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import (check_input_shape, check_top_args, conv, head, layer_kit,
                                   resolve_activation)
from lungcad.models.resnet import BLOCK_TYPES, residual_block

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def wide_resnet(*, depth: int = 28, width: int = 10, dropout: float = 0.3, dims: int = 2, input_shape=None,
                classes: int = 10, include_top: bool = True, pooling=None, classifier_activation="auto",
                name: str = "wrn") -> keras.Model:
    """Build WRN-``depth``-``width`` in 2D or 3D.

    Layers are named ``conv1``, ``stage{s}_block{b}_{preact_bn,conv1,bn1,relu1,
    dropout1,conv2,shortcut_conv,add}``, ``final_bn``, ``final_relu``,
    ``avg_pool``, ``predictions``.

    Parameters
    ----------
    depth : int, optional
        Total depth d; ``(d - 4)`` must be a positive multiple of 6 (10, 16, 22, 28, 40, ...).
    width : int, optional
        Widening factor k.
    dropout : float, optional
        Dropout rate between the convolutions of each block (0 disables it).
    dims : {2, 3}
        2D images or 3D volumes (e.g. CT patches).
    input_shape : tuple, optional
        Channels_last shape; spatial sizes at least 4 or None.  Default
        ``(32, 32, 3)`` in 2D and ``(32, 32, 32, 1)`` in 3D.
    classes : int, optional
        Output units.
    include_top : bool, optional
        False: the model ends at ``final_relu``.
    pooling : {None, "avg", "max"}, optional
        Global pooling of ``final_relu`` when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.

    Returns
    -------
    keras.Model
    """
    if int(depth) != depth or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"{name}: expected depth = 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); "
                         f"received depth={depth!r}")
    if int(width) != width or width < 1:
        raise ValueError(f"{name}: expected a positive integer width; received width={width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: expected 0 <= dropout < 1; received dropout={dropout!r}")
    kit = layer_kit(dims)
    if input_shape is None:
        input_shape = (32, 32, 3) if dims == 2 else (32, 32, 32, 1)
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    shape = check_input_shape(input_shape, dims=dims, model=name, min_size=4)
    head_activation = resolve_activation(classifier_activation, classes, name)
    blocks_per_stage = (int(depth) - 4) // 6

    inputs = keras.Input(shape, name="input")
    x = conv(inputs, kit, STAGE_WIDTHS[0], 3, use_bias=False, name="conv1")
    channels = STAGE_WIDTHS[0]
    for s, (base, stage_stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES), start=1):
        filters = base * int(width)
        for b in range(1, blocks_per_stage + 1):
            stride = stage_stride if b == 1 else 1
            x = residual_block(x, kit, filters=filters, convs=BLOCK_TYPES["basic"], stride=stride,
                               project=stride > 1 or channels != filters, preact=True,
                               prefix=f"stage{s}_block{b}", conv_bias=False, dropout=dropout)
            channels = filters
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.Activation("relu", name="final_relu")(x)
    outputs = head(x, kit, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=head_activation)
    return keras.Model(inputs, outputs, name=name)
