"""lungcad.models.unet: the zoo's three checks, the classic layout and the candidate-stage set-up."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lungcad.models import build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("unet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_unet2d_classic_layout_and_count():
    model = build_uninitialized("unet2d-classic", input_shape=(512, 512, 1), classes=1)
    filters = [model.get_layer(f"enc{i}_conv2").filters for i in (1, 2, 3, 4)]
    assert filters + [model.get_layer("bottleneck_conv2").filters] == [32, 64, 128, 256, 512]
    assert tuple(model.get_layer("bottleneck_conv2").output.shape) == (None, 32, 32, 512)
    assert tuple(model.get_layer("dec1_upconv").output.shape) == (None, 512, 512, 32)
    # 4,711,648 in the encoder and bottleneck, 3,047,840 in the decoder, 33 in the 1x1 output
    assert model.count_params() == 7_759_521
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_candidate_unet_runs_on_any_size_divisible_by_16(tmp_path):
    model = build_model("unet2d", input_shape=(None, None, 3), classes=1, classifier_activation="sigmoid",
                        depth=4, base_filters=16)
    assert model.output_shape == (None, None, None, 1)
    rng = np.random.default_rng(0)
    for size in ((32, 32), (64, 48)):
        y = keras.ops.convert_to_numpy(model(rng.normal(size=(1, *size, 3)).astype("float32"), training=False))
        assert y.shape == (1, *size, 1) and np.all((y > 0) & (y < 1))
    backbone = build_model("unet2d", input_shape=(None, None, 3), include_top=False, depth=4, base_filters=16)
    assert backbone.output_shape == (None, None, None, 16)
    assert backbone.layers[-1].name == "dec1_relu2"


def test_unet2d_trains_compiled_on_two_sizes():
    """The candidate stage's U-Net, trained with the default (compiled) step."""
    model = build_model("unet2d", input_shape=(None, None, 1), classes=1, depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (8, 16, 16, 1)).astype("float32")
    y = np.zeros_like(x)
    y[:, 4:12, 4:12] = 1.0
    x += 2 * y
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    losses = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    pred = keras.ops.convert_to_numpy(model.predict(np.pad(x[:2], ((0, 0), (8, 8), (0, 16), (0, 0))), verbose=0))
    assert pred.shape == (2, 32, 32, 1)


def test_unet_rejects_sizes_not_divisible_by_2_to_the_depth():
    with pytest.raises(ValueError, match=r"divisible by 16; received input_shape=\(40, 40, 1\)"):
        build_model("unet2d", input_shape=(40, 40, 1), depth=4)
    with pytest.raises(ValueError, match=r"divisible by 8; received input_shape=\(16, 16, 20, 1\)"):
        build_model("unet3d", input_shape=(16, 16, 20, 1), depth=3)
    with pytest.raises(ValueError, match="expected pooling=None"):
        build_model("unet2d", include_top=False, pooling="avg")
