"""lungcad.models.dcgan: the canonical counts, shapes in 2-D and 3-D, the conditional variant, round trips."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lungcad.models import build_model, list_models
from zoo_cases import build_uninitialized, fresh_keras_session  # noqa: F401 (fresh_keras_session: autouse)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _trainable(model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def test_canonical_parameter_counts():
    """Radford et al. as the PyTorch DCGAN tutorial builds it: noise 100, 64 filters, 64x64x3."""
    generator = build_uninitialized("dcgan-generator")
    discriminator = build_uninitialized("dcgan-discriminator")
    assert _trainable(generator) == 3_576_704
    assert _trainable(discriminator) == 2_765_568
    # Keras also counts the batch-norm moving means and variances: 2 * (512 + 256 + 128 + 64) in G,
    # 2 * (128 + 256 + 512) in D
    assert generator.count_params() == 3_576_704 + 1_920
    assert discriminator.count_params() == 2_765_568 + 1_792
    assert generator.input_shape == (None, 100) and generator.output_shape == (None, 64, 64, 3)
    assert tuple(generator.get_layer("project").output.shape) == (None, 4, 4, 512)
    assert discriminator.output_shape == (None, 1)
    assert tuple(discriminator.get_layer("block4_lrelu").output.shape) == (None, 4, 4, 512)
    assert not any("bias" in w.path for w in generator.weights + discriminator.weights)
    assert "block1_bn" not in [layer.name for layer in discriminator.layers]  # no BN on D's input


@pytest.mark.parametrize("dims, image, first", [(2, (16, 16, 1), (4, 4, 16)), (2, (32, 16, 2), (8, 4, 16)),
                                                (3, (8, 8, 8, 1), (4, 4, 4, 8))])
def test_small_shapes_and_outputs(dims, image, first):
    suffix = "-3d" if dims == 3 else ""
    generator = build_model(f"dcgan-generator{suffix}", input_shape=(16,), output_shape=image, base_filters=8)
    discriminator = build_model(f"dcgan-discriminator{suffix}", input_shape=image, base_filters=8)
    assert tuple(generator.get_layer("project").output.shape) == (None, *first)
    noise = np.random.default_rng(0).normal(size=(3, 16)).astype("float32")
    fake = keras.ops.convert_to_numpy(generator(noise, training=False))
    assert fake.shape == (3, *image)
    assert np.all(np.abs(fake) <= 1.0)  # tanh
    score = keras.ops.convert_to_numpy(discriminator(fake, training=False))
    assert score.shape == (3, 1) and np.all((score > 0) & (score < 1))
    features = build_model(f"dcgan-discriminator{suffix}", input_shape=image, base_filters=8, include_top=False,
                           pooling="avg")
    n_steps = int(math.log2(min(image[:-1]) / 4))
    assert features.output_shape == (None, 8 * 2 ** (n_steps - 1))


def test_conditional_variant_takes_diameter_and_type():
    generator = build_model("cdcgan-generator", input_shape=(16,), output_shape=(16, 16, 1), base_filters=8)
    discriminator = build_model("cdcgan-discriminator", input_shape=(16, 16, 1), base_filters=8)
    assert [tuple(t.shape) for t in generator.inputs] == [(None, 16), (None, 4)]
    assert [tuple(t.shape) for t in discriminator.inputs] == [(None, 16, 16, 1), (None, 4)]
    assert tuple(discriminator.get_layer("image_condition").output.shape) == (None, 16, 16, 5)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2, 16)).astype("float32")
    condition = np.array([[0.6, 1, 0, 0], [0.2, 0, 0, 1]], "float32")  # diameter / 10 mm, one-hot type
    fake = keras.ops.convert_to_numpy(generator([noise, condition], training=False))
    assert fake.shape == (2, 16, 16, 1)
    assert tuple(discriminator([fake, condition], training=False).shape) == (2, 1)
    other = keras.ops.convert_to_numpy(generator([noise, condition[::-1]], training=False))
    assert not np.allclose(other, fake)  # the condition changes the sample
    generator3d = build_model("cdcgan-generator-3d", input_shape=(16,), output_shape=(8, 8, 8, 1), base_filters=8,
                              condition_dim=2)
    assert generator3d.output_shape == (None, 8, 8, 8, 1)


def test_bad_shapes_say_what_was_expected():
    with pytest.raises(ValueError, match=r"expected spatial sizes of at least 8.*received \(9, 9, 1\)"):
        build_model("dcgan-generator", output_shape=(9, 9, 1))
    with pytest.raises(ValueError, match=r"noise shape"):
        build_model("dcgan-generator", input_shape=(10, 10))
    with pytest.raises(ValueError, match="fixes dims=2"):
        build_model("dcgan-discriminator", dims=3)


@pytest.mark.parametrize("name, kwargs, inputs", [
    ("dcgan-generator", {"input_shape": (16,), "output_shape": (16, 16, 1)}, [(16,)]),
    ("dcgan-discriminator", {"input_shape": (16, 16, 1)}, [(16, 16, 1)]),
    ("cdcgan-generator-3d", {"input_shape": (16,), "output_shape": (8, 8, 8, 1)}, [(16,), (4,)]),
    ("cdcgan-discriminator", {"input_shape": (16, 16, 1)}, [(16, 16, 1), (4,)]),
])
def test_save_load_round_trip(name, kwargs, inputs, tmp_path):
    model = build_model(name, base_filters=8, **kwargs)
    rng = np.random.default_rng(1)
    for variable in model.non_trainable_weights:  # statistics that the reload must restore
        variable.assign(rng.uniform(0.5, 1.5, tuple(variable.shape)).astype("float32"))
    x = [rng.normal(size=(2, *shape)).astype("float32") for shape in inputs]
    x = x[0] if len(x) == 1 else x
    before = keras.ops.convert_to_numpy(model(x, training=False))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)), before)
    assert loaded.name == name


def test_every_dcgan_name_builds():
    names = list_models("dcgan")
    assert len(names) == 8
    for name in names:
        model = build_uninitialized(name, base_filters=4, **({"output_shape": (8, 8, 1)} if name.endswith("generator")
                                                             else {"output_shape": (8, 8, 8, 1)} if "generator" in name
                                                             else {"input_shape": (8, 8, 1)} if not name.endswith("3d")
                                                             else {"input_shape": (8, 8, 8, 1)}))
        assert model.name == name
