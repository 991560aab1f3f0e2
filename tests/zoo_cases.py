"""The three checks every registered model passes, shared by the ``test_models_<family>.py`` files.

Each family's test file runs :class:`ZooModelChecks` over its registry names:

1. output shapes at two input shapes (the classifier and its feature map at the
   smallest, the ``include_top=False`` backbone at the other), and a real
   forward pass;
2. a ``.keras`` round trip loaded with ``safe_mode=True`` gives identical
   predictions;
3. a short fit on a tiny synthetic problem lowers the loss.

The model of a name is built once (a class-scoped fixture) and shared by the
three checks; the Keras session is cleared between models.  Each case runs the
real architecture of its registry name (every block and layer) on small
inputs; where a family keyword only sets a width (``base_filters``,
``fc_units``) it is made small, so that the tests stay fast on a CPU.
``shapes`` maps input shapes to the backbone's output shape
(``include_top=False, pooling=None``, batch axis excluded), worked out by hand
from the architecture.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

from lungcad.models import build_model, list_models, model_info

if keras.backend.backend() == "jax" and "JAX_THREEFRY_PARTITIONABLE" not in os.environ:
    # Keras draws every initial weight with jax.random; with JAX's default "partitionable"
    # threefry, compiling that draw for each new weight shape makes building a model on a
    # CPU about three times slower (GoogLeNet 24 s instead of 12 s, measured here).  Only
    # the random streams change.
    import jax

    jax.config.update("jax_threefry_partitionable", False)


@dataclass(frozen=True)
class Case:
    shapes: dict  # input shape -> backbone feature shape; the first is the smallest and is run
    kwargs: dict = field(default_factory=dict)
    segmentation: bool = False
    optimizer: str = "adam"  # of the short fit: "adam" or "sgd"
    learning_rate: float = 3e-4
    steps: int = 4  # full-batch steps
    batch: int = 16  # samples of the toy problem
    # Backends whose fit runs the compiled train step; the others run it eagerly.  On a CPU,
    # compiling a 50-150-layer train step costs far more than the few steps run here; run
    # eagerly, the members of a family also share JAX's per-operation compilations.
    compiled_on: frozenset = frozenset({"jax"})


# ResNets with base_filters=8: the last stage has 8 * 8 filters, times 4 in bottleneck blocks;
# the feature map is ceil(input / 32).
_BASIC = {(32, 32, 3): (1, 1, 64), (64, 40, 3): (2, 2, 64)}
_BOTTLENECK = {(32, 32, 3): (1, 1, 256), (64, 40, 3): (2, 2, 256)}
_THIN = {"base_filters": 8}
# Zero-initialized residual branches make the loss of every ResNet fall from the first SGD step.
_RESNET_FIT = {"optimizer": "sgd", "learning_rate": 0.01, "steps": 3, "compiled_on": frozenset()}

CASES = {
    # C5 of a 32x32 input is 1x1x120; each extra 4 pixels of input add one pixel to C5.
    "lenet5": Case({(32, 32, 1): (1, 1, 120), (40, 36, 1): (3, 2, 120)}),
    # 67 -> conv1 15 -> pool1 7 -> pool2 3 -> pool5 1; 99 -> 23 -> 11 -> 5 -> 2.
    # Run eagerly, TensorFlow compiles a grouped convolution at every call: compiled on both.
    "alexnet": Case({(67, 67, 3): (1, 1, 256), (99, 67, 3): (2, 1, 256)}, {"fc_units": 32, "dropout": 0.0},
                    learning_rate=1e-3, compiled_on=frozenset({"jax", "tensorflow"})),
    # Five 2x2 poolings: floor(input / 32).  Without batch norm, VGG's 16-19 layers start
    # slowly (its authors initialised VGG16 from VGG11): a longer fit.
    "vgg16": Case({(32, 32, 3): (1, 1, 512), (64, 96, 3): (2, 3, 512)}, {"fc_units": 32, "dropout": 0.0},
                  steps=7, batch=4),
    "vgg19": Case({(32, 32, 3): (1, 1, 512), (64, 96, 3): (2, 3, 512)}, {"fc_units": 32, "dropout": 0.0},
                  steps=7, batch=4),
    # Stride 32 with "same" padding: ceil(input / 32); inception5b has 1024 channels.
    "googlenet": Case({(32, 32, 3): (1, 1, 1024), (64, 40, 3): (2, 2, 1024)}, {"dropout": 0.0},
                      learning_rate=1e-3),
    "resnet18": Case(_BASIC, _THIN, **_RESNET_FIT),
    "resnet34": Case(_BASIC, _THIN, **_RESNET_FIT),
    "resnet50": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet101": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet152": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet50v2": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet101v2": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet152v2": Case(_BOTTLENECK, _THIN, **_RESNET_FIT),
    "resnet18-3d": Case({(32, 32, 32, 1): (1, 1, 1, 64), (64, 32, 40, 1): (2, 1, 2, 64)}, _THIN, **_RESNET_FIT),
    # WRN-10-2: stride 4, last stage 64 * width channels.
    "wrn2d": Case({(8, 8, 3): (2, 2, 128), (32, 20, 3): (8, 5, 128)}, {"depth": 10, "width": 2}),
    "wrn3d": Case({(8, 8, 8, 1): (2, 2, 2, 64), (16, 12, 8, 1): (4, 3, 2, 64)}, {"depth": 10, "width": 1}),
    # The real WRN-28-10 (36.5 M parameters) on 8x8 inputs, to keep its 28 layers fast.
    "wrn-28-10": Case({(8, 8, 3): (2, 2, 640), (12, 16, 3): (3, 4, 640)}, batch=8),
    # U-Nets keep the input's size; without the top they end with base_filters channels.
    "unet2d": Case({(16, 16, 1): (16, 16, 8), (32, 48, 2): (32, 48, 8)},
                   {"depth": 4, "base_filters": 8, "batch_norm": True, "dropout": 0.2}, segmentation=True,
                   learning_rate=3e-3),
    "unet2d-classic": Case({(16, 16, 1): (16, 16, 32), (48, 32, 1): (48, 32, 32)}, segmentation=True,
                           learning_rate=1e-3),
    "unet3d": Case({(8, 8, 8, 1): (8, 8, 8, 4), (16, 8, 24, 1): (16, 8, 24, 4)},
                   {"depth": 2, "base_filters": 4}, segmentation=True, learning_rate=3e-3),
}
# The GAN networks have no classifier to run the three checks on; tests/test_models_dcgan.py checks them
# (shapes, round trip, parameter counts) and tests/test_train_gan.py their training.  Input -> output shapes:
for _prefix in ("dcgan", "cdcgan"):
    CASES[f"{_prefix}-generator"] = Case({(16,): (16, 16, 1)}, {"base_filters": 8, "output_shape": (16, 16, 1)})
    CASES[f"{_prefix}-discriminator"] = Case({(16, 16, 1): (1,)}, {"base_filters": 8})
    CASES[f"{_prefix}-generator-3d"] = Case({(16,): (8, 8, 8, 1)}, {"base_filters": 8, "output_shape": (8, 8, 8, 1)})
    CASES[f"{_prefix}-discriminator-3d"] = Case({(8, 8, 8, 1): (1,)}, {"base_filters": 8})


def smallest(name: str) -> tuple:
    """The smallest input shape of a case (the one the save/load and fit tests use)."""
    return next(iter(CASES[name].shapes))


def toy_problem(name: str, n: int | None = None, seed: int = 0):
    """A tiny learnable problem for a case: bright vs dark inputs, or a bright square to segment.

    Returns
    -------
    x : ndarray, float32, shape (n, *input_shape)
    y : ndarray
        Class labels (n,) for a classifier; a binary mask (n, *spatial, 1) for a U-Net.
    """
    shape = smallest(name)
    n = CASES[name].batch if n is None else n
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(n, *shape)).astype("float32")
    if CASES[name].segmentation:
        y = np.zeros((n, *shape[:-1], 1), dtype="float32")
        for i in range(n):
            lo = [int(rng.integers(0, s // 2)) for s in shape[:-1]]
            box = tuple(slice(a, a + s // 2) for a, s in zip(lo, shape[:-1]))
            y[(i, *box, 0)] = 1.0
        x += 2.0 * y
        return x, y
    labels = (np.arange(n) % 2).astype("int32")
    x += np.where(labels == 1, 1.0, -1.0).astype("float32").reshape((n,) + (1,) * len(shape))
    return x, labels


def build_uninitialized(name: str, **kwargs) -> keras.Model:
    """Build a registered model without drawing its initial weights (inside ``keras.StatelessScope``).

    Enough for parameter counts, shapes and layer names, and much faster for
    the full-size models: JAX compiles one random draw per new weight shape.
    """
    with keras.StatelessScope():
        return build_model(name, **kwargs)


#: Per family, the layer whose input is the backbone's output inside the full model.
FEATURE_LAYER = {"lenet": "flatten", "alexnet": "flatten", "vgg": "flatten", "googlenet": "avg_pool",
                 "resnet": "avg_pool", "wideresnet": "avg_pool", "unet": "predictions"}


def zoo_fixture(family: str, names=None):
    """A class-scoped fixture over the family's registry names (or ``names``): ``(name, model)``.

    The model is the full classifier (two classes; one output channel for a
    U-Net) at the case's smallest input, built once for the three checks.
    """

    @pytest.fixture(scope="class", params=list_models(family) if names is None else list(names))
    def zoo(request):
        name = request.param
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        case = CASES[name]
        model = build_model(name, input_shape=smallest(name), classes=1 if case.segmentation else 2,
                            **case.kwargs)
        yield name, model
        del model
        keras.backend.clear_session()

    return zoo


@pytest.fixture(autouse=True)
def fresh_keras_session(request):
    """Clear Keras' global state, and collect earlier models, before a test that builds its own.

    Test modules import this fixture to use it; the three checks share the
    class-scoped ``zoo`` model and leave the clearing to it.
    """
    if "zoo" not in request.fixturenames:
        keras.backend.clear_session()
    yield


def _randomize_statistics(model, rng):
    """Give the non-trainable variables (batch-norm statistics) values that a reload must restore."""
    for variable in model.non_trainable_weights:
        shape = tuple(variable.shape)
        value = rng.uniform(0.5, 1.5, shape) if "variance" in variable.path else rng.normal(0, 0.1, shape)
        variable.assign(value.astype("float32"))


class ZooModelChecks:
    """Shapes, save/load round trip and learning, in this order, for the fixture ``zoo``."""

    def test_output_shapes(self, zoo):
        name, model = zoo
        case = CASES[name]
        (first, first_features), (second, second_features) = case.shapes.items()
        expected = (None, *first[:-1], 1) if case.segmentation else (None, 2)
        assert model.output_shape == expected
        feature_layer = model.get_layer(FEATURE_LAYER[model_info(name)["family"]])
        assert tuple(feature_layer.input.shape) == (None, *first_features)
        x = toy_problem(name)[0]  # the fit's shapes: JAX compiles each operation once for all three checks
        y = keras.ops.convert_to_numpy(model(x, training=False))
        assert y.shape == (len(x), *expected[1:])
        if case.segmentation:
            assert np.all((y > 0) & (y < 1))
        else:
            np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)
        backbone = build_uninitialized(name, input_shape=second, include_top=False, **case.kwargs)
        assert backbone.output_shape == (None, *second_features)

    def test_save_load_round_trip(self, zoo, tmp_path):
        name, model = zoo
        rng = np.random.default_rng(1)
        _randomize_statistics(model, rng)
        x = toy_problem(name, seed=1)[0]
        before = keras.ops.convert_to_numpy(model(x, training=False))
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        after = keras.ops.convert_to_numpy(loaded(x, training=False))
        assert loaded.name == model.name
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
        for saved, restored in zip(model.weights, loaded.weights, strict=True):
            assert saved.path == restored.path
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored), keras.ops.convert_to_numpy(saved))
        np.testing.assert_allclose(after, before, atol=1e-6)

    def test_short_fit_lowers_loss(self, zoo):
        """A few full-batch steps on the toy problem (eagerly or compiled: see ``Case.compiled_on``)."""
        name, model = zoo
        case = CASES[name]
        keras.utils.set_random_seed(0)
        x, y = toy_problem(name)
        optimizer = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[case.optimizer]
        model.compile(optimizer=optimizer(case.learning_rate),
                      loss="binary_crossentropy" if case.segmentation else "sparse_categorical_crossentropy",
                      run_eagerly=keras.backend.backend() not in case.compiled_on)
        losses = model.fit(x, y, batch_size=len(x), epochs=case.steps, shuffle=False, verbose=0).history["loss"]
        assert np.all(np.isfinite(losses)), losses
        assert losses[-1] < 0.9 * losses[0], losses
