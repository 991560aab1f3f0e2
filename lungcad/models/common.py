"""Pieces every family of the zoo shares.

- :func:`layer_kit`: the Keras layer classes for 2D or 3D inputs, so that one
  builder serves both.
- :func:`check_input_shape`, :func:`check_top_args`: input checks whose errors
  say what was expected and what was received.
- :func:`conv`: a convolution whose strided form pads symmetrically, as the
  papers do, instead of TensorFlow's one-sided ``"same"``.
- :func:`head`: the classifier top, or the (pooled) backbone output.
- :func:`load_weights`: weights from a ``.keras`` or ``.weights.h5`` file,
  checked against the architecture first.
"""
from __future__ import annotations

import os
import zipfile
from collections import Counter
from types import SimpleNamespace

import keras
from keras import layers

POOLINGS = (None, "avg", "max")

_KITS = {
    2: SimpleNamespace(
        dims=2, conv=layers.Conv2D, conv_transpose=layers.Conv2DTranspose,
        zero_pad=layers.ZeroPadding2D, max_pool=layers.MaxPooling2D,
        global_avg=layers.GlobalAveragePooling2D, global_max=layers.GlobalMaxPooling2D),
    3: SimpleNamespace(
        dims=3, conv=layers.Conv3D, conv_transpose=layers.Conv3DTranspose,
        zero_pad=layers.ZeroPadding3D, max_pool=layers.MaxPooling3D,
        global_avg=layers.GlobalAveragePooling3D, global_max=layers.GlobalMaxPooling3D),
}


def layer_kit(dims: int) -> SimpleNamespace:
    """Return the layer classes (conv, pools, padding, ...) for 2D or 3D inputs.

    Parameters
    ----------
    dims : {2, 3}
        Number of spatial dimensions.

    Returns
    -------
    types.SimpleNamespace
        Attributes ``dims, conv, conv_transpose, zero_pad, max_pool, global_avg,
        global_max``.
    """
    if dims not in _KITS:
        raise ValueError(f"dims must be 2 or 3; received dims={dims!r}")
    return _KITS[dims]


def check_input_shape(input_shape, *, dims: int, model: str, min_size: int = 1,
                      multiple_of: int = 1, fixed: bool = False) -> tuple:
    """Validate a channels_last input shape (without the batch axis).

    Parameters
    ----------
    input_shape : sequence
        ``(H, W, C)`` for ``dims=2`` or ``(D, H, W, C)`` for ``dims=3``.  Spatial
        sizes may be ``None`` unless ``fixed``; the channel count must be known.
    dims : {2, 3}
        Number of spatial dimensions the model expects.
    model : str
        Model name, used in the error messages.
    min_size : int, optional
        Smallest spatial size the architecture accepts (its last feature map
        must keep at least one pixel).
    multiple_of : int, optional
        Every known spatial size must be a multiple of this (U-Net: ``2**depth``).
    fixed : bool, optional
        True when the architecture flattens its features, so that every spatial
        size must be known.

    Returns
    -------
    tuple
        The shape, with ints and ``None``.

    Raises
    ------
    ValueError
        Saying the expected form and the received shape.
    """
    form = "(height, width, channels)" if dims == 2 else "(depth, height, width, channels)"
    try:
        shape = tuple(None if s is None else int(s) for s in input_shape)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{model}: input_shape must be a tuple {form}; "
                         f"received input_shape={input_shape!r}") from e
    if len(shape) != dims + 1:
        raise ValueError(f"{model}: expected a {dims}D channels_last input_shape {form} "
                         f"({dims + 1} values); received input_shape={input_shape!r}")
    if shape[-1] is None or shape[-1] < 1:
        raise ValueError(f"{model}: expected a known, positive channel count (last value); "
                         f"received input_shape={input_shape!r}")
    spatial = shape[:-1]
    if fixed and any(s is None for s in spatial):
        raise ValueError(f"{model}: this configuration flattens its features and needs fixed "
                         f"spatial sizes; received input_shape={input_shape!r}")
    for s in spatial:
        if s is None:
            continue
        if s < min_size:
            raise ValueError(f"{model}: input too small; expected every spatial size >= {min_size}, "
                             f"received input_shape={input_shape!r}")
        if s % multiple_of:
            raise ValueError(f"{model}: expected every spatial size to be divisible by {multiple_of}; "
                             f"received input_shape={input_shape!r}")
    return shape


def resolve_activation(classifier_activation, classes: int, model: str):
    """Turn ``"auto"`` into ``"softmax"`` (several classes) or ``"sigmoid"`` (one class).

    ``None`` and ``"linear"`` give logits.  A softmax over one class is the
    constant 1, so it is refused.
    """
    if classifier_activation == "auto":
        return "sigmoid" if classes == 1 else "softmax"
    if classifier_activation == "softmax" and classes == 1:
        raise ValueError(f"{model}: a softmax over one class always outputs 1; expected "
                         "classifier_activation='sigmoid' (or 'auto', None) with classes=1, "
                         "received classifier_activation='softmax'")
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except ValueError as e:
            raise ValueError(f"{model}: unknown classifier_activation; expected a Keras activation "
                             f"name, 'auto' or None, received {classifier_activation!r}") from e
    return classifier_activation


def check_top_args(*, include_top: bool, pooling, classes, model: str) -> None:
    """Check ``include_top``, ``pooling`` and ``classes`` together."""
    if pooling not in POOLINGS:
        raise ValueError(f"{model}: expected pooling in {POOLINGS}; received pooling={pooling!r}")
    if include_top and pooling is not None:
        raise ValueError(f"{model}: pooling applies to the backbone only; expected pooling=None with "
                         f"include_top=True, received pooling={pooling!r}")
    if include_top and (int(classes) != classes or classes < 1):
        raise ValueError(f"{model}: expected classes to be a positive integer; received classes={classes!r}")


def conv(x, kit: SimpleNamespace, filters: int, kernel: int, *, name: str, stride: int = 1,
         use_bias: bool = True, activation=None, kernel_initializer="glorot_uniform"):
    """A convolution with "same" output size ``ceil(n / stride)`` and symmetric padding.

    A stride-1 convolution uses ``padding="same"``.  A strided one with a kernel
    larger than one pads ``kernel // 2`` on both sides (layer ``{name}_pad``) and
    then runs with ``padding="valid"``, so that its geometry matches the papers
    and every backend.
    """
    if stride > 1 and kernel > 1:
        x = kit.zero_pad(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return kit.conv(filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
                    activation=activation, kernel_initializer=kernel_initializer, name=name)(x)


def pool_features(x, kit: SimpleNamespace, pooling):
    """Apply the backbone's optional global pooling (``None``, ``"avg"`` or ``"max"``)."""
    if pooling == "avg":
        return kit.global_avg(name="avg_pool")(x)
    if pooling == "max":
        return kit.global_max(name="max_pool")(x)
    return x


def head(features, kit: SimpleNamespace, *, include_top: bool, pooling, classes: int,
         classifier_activation, dropout: float = 0.0):
    """The classifier top: global average pooling, optional dropout, dense ``predictions``.

    With ``include_top=False`` it returns ``features``, optionally pooled to a
    vector, so that a task head can be put on the backbone.
    """
    if not include_top:
        return pool_features(features, kit, pooling)
    x = kit.global_avg(name="avg_pool")(features)
    if dropout:
        x = layers.Dropout(dropout, name="top_dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def _describe(shapes: list[tuple]) -> str:
    total = sum(_size(s) for s in shapes)
    return f"{len(shapes)} arrays, {total:,} values"


def _size(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _h5_shapes(h5file) -> list[tuple]:
    """Shapes of every variable array stored in a Keras weights HDF5 file (optimizer excluded)."""
    import h5py

    shapes = []

    def visit(path, obj):
        if isinstance(obj, h5py.Dataset) and not path.startswith("optimizer"):
            shapes.append(tuple(obj.shape))

    with h5py.File(h5file, "r") as f:
        f.visititems(visit)
    return shapes


def _mismatch(model: keras.Model, path: str, expected: list[tuple], received: list[tuple]) -> str:
    missing = Counter(expected) - Counter(received)
    extra = Counter(received) - Counter(expected)
    detail = []
    if missing:
        detail.append(f"shapes missing from the file: {sorted(missing.elements())[:3]}")
    if extra:
        detail.append(f"shapes not in the model: {sorted(extra.elements())[:3]}")
    return (f"weights file {path} does not match model '{model.name}': expected "
            f"{_describe(expected)}, received {_describe(received)}"
            + (f" ({'; '.join(detail)})" if detail else ""))


def load_weights(model: keras.Model, weights: str | os.PathLike) -> keras.Model:
    """Load ``weights`` into ``model`` after checking that they fit its architecture.

    Parameters
    ----------
    model : keras.Model
        A built model.
    weights : str or os.PathLike
        A ``.keras`` model file (loaded with ``safe_mode=True``; its weights are
        copied in order) or a ``.weights.h5`` file written by
        ``model.save_weights``.

    Returns
    -------
    keras.Model
        ``model``, with the weights loaded.

    Raises
    ------
    ValueError
        The file is missing, of another kind, or holds weights of another
        architecture (the message gives the expected and received arrays).
    """
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: expected an existing .keras or .weights.h5 file, "
                         f"received {path!r}")
    expected = [tuple(int(s) for s in w.shape) for w in model.weights]
    if path.endswith(".keras"):
        try:
            source = keras.saving.load_model(path, compile=False, safe_mode=True)
        except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"weights file {path} could not be read as a .keras model: {e}") from e
        received = [tuple(int(s) for s in w.shape) for w in source.weights]
        if received != expected:
            raise ValueError(_mismatch(model, path, expected, received))
        model.set_weights(source.get_weights())
        return model
    if path.endswith(".weights.h5"):
        try:
            received = _h5_shapes(path)
        except OSError as e:
            raise ValueError(f"weights file {path} is not a readable HDF5 file: {e}") from e
        if Counter(received) != Counter(expected):
            raise ValueError(_mismatch(model, path, expected, received))
        try:
            model.load_weights(path)
        except (ValueError, KeyError) as e:
            raise ValueError(f"weights file {path} does not match model '{model.name}' "
                             f"(expected {_describe(expected)}): {e}") from e
        return model
    raise ValueError(f"weights must be None or a path ending in .keras or .weights.h5; received {path!r}")

