"""DCGAN generator and discriminator (Radford et al., 2016), 2D or 3D, optionally conditional.

The canonical configuration is the one of the PyTorch DCGAN tutorial: noise of
100, 64 base filters, 4x4 kernels with stride 2, no convolution bias, batch
norm everywhere except the generator's output and the discriminator's input,
64x64x3 images.  The generator projects the noise to a 4x4 map of
``8 * base_filters`` channels (a "valid" transposed convolution with a 4x4
kernel) and doubles the size with stride-2 transposed convolutions, halving the
channels, down to ``base_filters`` and a tanh output; the discriminator mirrors
it with stride-2 convolutions and LeakyReLU(0.2), and a "valid" 4x4 convolution
to one logit.  At 64x64x3 the generator has 3,576,704 trainable parameters and
the discriminator 2,765,568 (Keras also counts batch norm's moving statistics).

The conditional variant (Han et al., 2019, "3D Multi-Conditional GAN") takes a
second input ``condition`` of ``condition_dim`` values (e.g. the diameter in mm,
scaled, and a one-hot nodule type): the generator concatenates it to the noise,
the discriminator repeats it over the image grid as extra input channels.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from lungcad.models.common import check_top_args, layer_kit, pool_features, resolve_activation


def _levels(output_shape, *, dims: int, model: str) -> tuple[tuple, int]:
    """Spatial size of the first (smallest) map and the number of stride-2 steps to the image."""
    shape = tuple(output_shape)
    if len(shape) != dims + 1 or any(s is None or int(s) != s or s < 1 for s in shape):
        raise ValueError(f"{model}: expected a fixed channels_last shape of {dims + 1} positive sizes; "
                         f"received {shape!r}")
    spatial = shape[:-1]
    steps = int(math.log2(min(spatial) / 4)) if min(spatial) >= 8 else 0
    if steps < 1 or any(s % (2 ** steps) for s in spatial):
        raise ValueError(f"{model}: expected spatial sizes of at least 8 that are 4 * 2**n times the smallest "
                         f"map (e.g. 64 = 4 * 2**4); received {shape!r}")
    return tuple(s // 2 ** steps for s in spatial), steps


def dcgan_generator(*, output_shape=None, base_filters: int = 64, condition_dim: int = 0, dims: int = 2,
                    input_shape=(100,), classes=None, include_top: bool = True, pooling=None,
                    classifier_activation="auto", name: str = "dcgan_generator") -> keras.Model:
    """Build the DCGAN generator: noise (and condition) to an image in [-1, 1].

    Layers are named ``project`` (the first transposed convolution), ``project_bn``,
    ``project_relu``, ``block{i}_{deconv,bn,relu}`` and ``output_deconv``,
    ``output_activation``.

    Parameters
    ----------
    output_shape : tuple, optional
        The image's channels_last shape; default ``(64, 64, 3)`` in 2D and
        ``(32, 32, 32, 1)`` in 3D.  Spatial sizes are ``4 * 2**n`` times the
        first map's size (n >= 1).
    base_filters : int, optional
        Channels of the last hidden layer; each smaller map has twice as many.
    condition_dim : int, optional
        Size of the condition vector (0: unconditional, one input ``noise``).
    dims : {2, 3}
    input_shape : tuple, optional
        The noise's shape, ``(100,)`` by default.
    classes : int, optional
        Output channels; default (None) the last entry of ``output_shape``.
    include_top : bool, optional
        False: the model ends at the last hidden ReLU.
    pooling : {None, "avg", "max"}, optional
        Global pooling of that map when ``include_top=False``.
    classifier_activation : str or None, optional
        ``"auto"``: tanh.  None: linear.
    name : str, optional
    """
    kit = layer_kit(dims)
    if output_shape is None:
        output_shape = (64, 64, 3) if dims == 2 else (32, 32, 32, 1)
    if classes is not None and classes != output_shape[-1]:
        output_shape = (*output_shape[:-1], int(classes))
    first, steps = _levels(output_shape, dims=dims, model=name)
    if len(tuple(input_shape)) != 1 or not input_shape[0] or input_shape[0] < 1:
        raise ValueError(f"{name}: expected the noise shape (n,); received input_shape={input_shape!r}")
    if int(condition_dim) != condition_dim or condition_dim < 0:
        raise ValueError(f"{name}: expected condition_dim >= 0; received condition_dim={condition_dim!r}")
    activation = "tanh" if classifier_activation == "auto" else classifier_activation

    noise = keras.Input(tuple(input_shape), name="noise")
    inputs = [noise]
    x = noise
    if condition_dim:
        condition = keras.Input((int(condition_dim),), name="condition")
        inputs.append(condition)
        x = layers.Concatenate(name="noise_condition")([noise, condition])
    x = layers.Reshape((1,) * dims + (x.shape[-1],), name="noise_map")(x)
    filters = base_filters * 2 ** (steps - 1)
    x = kit.conv_transpose(filters, first, padding="valid", use_bias=False, name="project")(x)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    for i in range(1, steps):
        filters //= 2
        x = kit.conv_transpose(filters, 4, strides=2, padding="same", use_bias=False, name=f"block{i}_deconv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
    if include_top:
        x = kit.conv_transpose(output_shape[-1], 4, strides=2, padding="same", use_bias=False,
                               name="output_deconv")(x)
        x = layers.Activation(activation or "linear", name="output_activation")(x)
    else:
        x = pool_features(x, kit, pooling)
    return keras.Model(inputs if condition_dim else noise, x, name=name)


def dcgan_discriminator(*, base_filters: int = 64, condition_dim: int = 0, dims: int = 2, input_shape=None,
                        classes: int = 1, include_top: bool = True, pooling=None, classifier_activation="auto",
                        name: str = "dcgan_discriminator") -> keras.Model:
    """Build the DCGAN discriminator: an image (and condition) to the probability that it is real.

    Layers are named ``block{i}_{conv,bn,lrelu}`` (no ``block1_bn``: no batch norm
    on the input) and ``predictions_conv``, ``predictions_flatten``, ``predictions``.

    Parameters
    ----------
    base_filters : int, optional
        Channels of the first convolution; each halving of the size doubles them.
    condition_dim : int, optional
        Size of the condition vector (0: unconditional); it is repeated over the
        grid and concatenated to the image's channels.
    dims : {2, 3}
    input_shape : tuple, optional
        The image's shape, default ``(64, 64, 3)`` in 2D and ``(32, 32, 32, 1)`` in 3D.
    classes : int, optional
        Output units (1: real or fake).
    include_top : bool, optional
        False: the model ends at the last LeakyReLU (the features).
    pooling : {None, "avg", "max"}, optional
    classifier_activation : str or None, optional
        ``"auto"``: sigmoid for one class.  None: logits (what :class:`lungcad.train.gan.GAN` trains).
    name : str, optional
    """
    kit = layer_kit(dims)
    if input_shape is None:
        input_shape = (64, 64, 3) if dims == 2 else (32, 32, 32, 1)
    check_top_args(include_top=include_top, pooling=pooling, classes=classes, model=name)
    last, steps = _levels(input_shape, dims=dims, model=name)
    head_activation = resolve_activation(classifier_activation, classes, name)

    image = keras.Input(tuple(input_shape), name="image")
    x = image
    if condition_dim:
        condition = keras.Input((int(condition_dim),), name="condition")
        grid = layers.RepeatVector(math.prod(input_shape[:-1]), name="condition_repeat")(condition)
        grid = layers.Reshape((*input_shape[:-1], int(condition_dim)), name="condition_grid")(grid)
        x = layers.Concatenate(name="image_condition")([image, grid])
    filters = base_filters
    for i in range(1, steps + 1):
        x = kit.conv(filters, 4, strides=2, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        if i > 1:
            x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"block{i}_lrelu")(x)
        filters *= 2
    if include_top:
        x = kit.conv(classes, last, padding="valid", use_bias=False, name="predictions_conv")(x)
        x = layers.Flatten(name="predictions_flatten")(x)
        x = layers.Activation(head_activation or "linear", name="predictions")(x)
    else:
        x = pool_features(x, kit, pooling)
    return keras.Model([image, condition] if condition_dim else image, x, name=name)
