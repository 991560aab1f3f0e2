"""ResNet v1 (He et al., 2016) and pre-activation ResNet v2 (He et al., "Identity mappings", 2016).

One builder serves every depth, both versions and 2D or 3D inputs: the block
type and the number of blocks per stage are data (:data:`RESNET_LAYOUTS`).
:func:`residual_block` is also the block of the WideResNet.

The parameter layout is that of Keras applications, so that the counts equal
theirs: in v1 every convolution has a bias and is followed by batch
normalization; in v2 the blocks are pre-activated, only the last convolution of
a block and the projection shortcut have biases, the stem has no normalization
and a final ``post_bn`` closes the network.  Downsampling happens in the first
block of stages 2 to 4, on its 3x3 convolution (the "v1.5" placement, which
changes no parameter count).
"""
from __future__ import annotations

import keras
from keras import layers

from lungcad.models.common import (check_input_shape, check_top_args, conv, head, layer_kit,
                                   resolve_activation)

#: Convolutions of a block as (kernel, filter multiplier); the block's output has
#: ``stage filters * last multiplier`` channels.
BLOCK_TYPES = {
    "basic": ((3, 1), (3, 1)),
    "bottleneck": ((1, 1), (3, 1), (1, 4)),
}

#: Registered ResNets: block type and number of blocks in each of the four stages.
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: Filters of the four stages, in units of ``base_filters`` (64, 128, 256, 512 in the paper).
STAGE_MULTIPLIERS = (1, 2, 4, 8)
# conv1 (stride 2), pool1 (stride 2) and stages 2-4 (stride 2 each): the last map is input / 32.
MIN_SIZE = 32


def residual_block(x, kit, *, filters: int, convs, stride: int, project: bool, preact: bool,
                   prefix: str, conv_bias: bool | None = None, dropout: float = 0.0,
                   zero_init_last: bool = False):
    """One residual block, post-activation (v1) or pre-activation (v2, WideResNet).

    Parameters
    ----------
    x : KerasTensor
        Block input.
    kit : types.SimpleNamespace
        Layer classes from :func:`lungcad.models.common.layer_kit`.
    filters : int
        Filters of the stage; convolution ``i`` has ``filters * convs[i][1]``.
    convs : sequence of (int, int)
        (kernel, filter multiplier) of each convolution, see :data:`BLOCK_TYPES`.
    stride : int
        Stride of the first convolution whose kernel is larger than one.
    project : bool
        Use a 1x1 convolution as the shortcut (stride or channel change).
    preact : bool
        Batch norm and ReLU before the convolutions (v2) instead of after (v1).
    prefix : str
        Layer name prefix, e.g. ``"stage2_block1"``.
    conv_bias : bool or None, optional
        None: the Keras applications layout (v1 all convolutions, v2 the last one
        and the shortcut); True/False: every convolution with/without a bias.
    dropout : float, optional
        Dropout rate between the convolutions (WideResNet).
    zero_init_last : bool, optional
        Start the residual branch at zero (the last batch-norm scale in v1, the
        last convolution's kernel in v2), so that the block begins as the identity.

    Returns
    -------
    KerasTensor
    """
    out_filters = filters * convs[-1][1]
    if preact:
        y = layers.BatchNormalization(name=f"{prefix}_preact_bn")(x)
        y = layers.Activation("relu", name=f"{prefix}_preact_relu")(y)
        shortcut_input = y
    else:
        y = shortcut_input = x
    if project:
        shortcut = conv(shortcut_input, kit, out_filters, 1, stride=stride,
                        use_bias=True if conv_bias is None else conv_bias, name=f"{prefix}_shortcut_conv")
        if not preact:
            shortcut = layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(shortcut)
    else:
        shortcut = x
    strided = next(i for i, (kernel, _) in enumerate(convs) if kernel > 1 or i == len(convs) - 1)
    for i, (kernel, multiplier) in enumerate(convs):
        last = i == len(convs) - 1
        bias = (not preact or last) if conv_bias is None else conv_bias
        zero = zero_init_last and last
        y = conv(y, kit, filters * multiplier, kernel, stride=stride if i == strided else 1, use_bias=bias,
                 kernel_initializer="zeros" if zero and preact else "glorot_uniform", name=f"{prefix}_conv{i + 1}")
        if last and preact:
            break
        y = layers.BatchNormalization(gamma_initializer="zeros" if zero else "ones", name=f"{prefix}_bn{i + 1}")(y)
        if last:
            break
        y = layers.Activation("relu", name=f"{prefix}_relu{i + 1}")(y)
        if dropout:
            y = layers.Dropout(dropout, name=f"{prefix}_dropout{i + 1}")(y)
    y = layers.Add(name=f"{prefix}_add")([shortcut, y])
    if not preact:
        y = layers.Activation("relu", name=f"{prefix}_out")(y)
    return y


def resnet(*, blocks=RESNET_LAYOUTS[50][1], block: str = "bottleneck", preact: bool = False, dims: int = 2,
           base_filters: int = 64, zero_init_residual: bool = True, input_shape=None, classes: int = 1000,
           include_top: bool = True, pooling=None, classifier_activation="auto",
           name: str = "resnet50") -> keras.Model:
    """Build a ResNet (v1 or pre-activation v2) of any depth, in 2D or 3D.

    Layers: stem ``conv1`` (7x7/2; ``conv1_bn``, ``conv1_relu`` in v1) and
    ``pool1`` (3x3/2 max), then ``stage{s}_block{b}_{conv1,bn1,relu1,...,add}``
    with ``stage{s}_block1_shortcut_conv`` where the shape changes, ``post_bn`` /
    ``post_relu`` in v2, and ``avg_pool`` + ``predictions`` on top.

    Parameters
    ----------
    blocks : sequence of 4 int
        Blocks in each stage, e.g. ``(3, 4, 6, 3)`` for ResNet50.
    block : {"basic", "bottleneck"}
        Block type (two 3x3, or 1x1-3x3-1x1 with 4x expansion).
    preact : bool
        Pre-activation (v2) blocks.
    dims : {2, 3}
        2D images or 3D volumes.
    base_filters : int, optional
        Filters of the stem and of the first stage (64 in the paper); stages 2-4
        have 2, 4 and 8 times as many.  Smaller values give thin ResNets, e.g.
        for small 3D patches.
    zero_init_residual : bool, optional
        Initialize every residual branch to output zero (Goyal et al., 2017), so
        that each block starts as the identity.  Deep ResNets trained from
        scratch (the only way this project trains) are then stable from the
        first steps; the parameter count does not change.  False gives Keras'
        initialization.
    input_shape : tuple, optional
        Channels_last shape; spatial sizes at least 32 or None.  Default
        ``(224, 224, 3)`` in 2D and ``(64, 64, 64, 1)`` in 3D.
    classes : int, optional
        Output units.
    include_top : bool, optional
        False: the model ends at the last stage (``post_relu`` in v2).
    pooling : {None, "avg", "max"}, optional
        Global pooling of the backbone output when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: softmax, or sigmoid for one class; ``None``: logits.
    name : str, optional
        Model name.

    Returns
    -------
    keras.Model
    """
    if block not in BLOCK_TYPES:
        raise ValueError(f"{name}: expected block in {sorted(BLOCK_TYPES)}; received block={block!r}")
    if int(base_filters) != base_filters or base_filters < 1:
        raise ValueError(f"{name}: expected a positive integer base_filters; received base_filters={base_filters!r}")
    if len(blocks) != len(STAGE_MULTIPLIERS) or any(int(n) != n or n < 1 for n in blocks):
        raise ValueError(f"{name}: expected {len(STAGE_MULTIPLIERS)} positive block counts; received blocks={blocks!r}")
    kit = layer_kit(dims)
    if input_shape is None:
        input_shape = (224, 224, 3) if dims == 2 else (64, 64, 64, 1)
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    shape = check_input_shape(input_shape, dims=dims, model=name, min_size=MIN_SIZE)
    head_activation = resolve_activation(classifier_activation, classes, name)
    convs = BLOCK_TYPES[block]

    inputs = keras.Input(shape, name="input")
    x = conv(inputs, kit, base_filters, 7, stride=2, name="conv1")
    if not preact:
        x = layers.BatchNormalization(name="conv1_bn")(x)
        x = layers.Activation("relu", name="conv1_relu")(x)
    x = kit.zero_pad(1, name="pool1_pad")(x)
    x = kit.max_pool(3, strides=2, name="pool1")(x)
    channels = base_filters
    for s, (n_blocks, multiplier) in enumerate(zip(blocks, STAGE_MULTIPLIERS), start=1):
        filters = base_filters * multiplier
        for b in range(1, n_blocks + 1):
            stride = 2 if (b == 1 and s > 1) else 1
            out_channels = filters * convs[-1][1]
            x = residual_block(x, kit, filters=filters, convs=convs, stride=stride,
                               project=stride > 1 or channels != out_channels, preact=preact,
                               prefix=f"stage{s}_block{b}", zero_init_last=zero_init_residual)
            channels = out_channels
    if preact:
        x = layers.BatchNormalization(name="post_bn")(x)
        x = layers.Activation("relu", name="post_relu")(x)
    outputs = head(x, kit, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=head_activation)
    return keras.Model(inputs, outputs, name=name)
