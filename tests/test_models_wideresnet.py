"""lungcad.models.wideresnet: the zoo's three checks, WRN-28-10's count and the FPR backbone use."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lungcad.models import build_model
from zoo_cases import ZooModelChecks, zoo_fixture

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("wideresnet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_wrn_28_10_parameter_count_on_cifar10():
    model = build_model("wrn-28-10", input_shape=(32, 32, 3), classes=10)
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    # The authors' reference implementation (PyTorch, no conv biases) has 36,479,194 parameters;
    # Keras also counts the 17,952 batch-norm moving means and variances.
    assert trainable == 36_479_194
    assert model.count_params() == 36_497_146
    assert abs(model.count_params() - 36_479_194) / 36_479_194 < 0.005
    assert tuple(model.get_layer("final_relu").output.shape) == (None, 8, 8, 640)
    assert len([layer for layer in model.layers if layer.name.endswith("_conv2")]) == 12  # 3 stages x 4 blocks


def test_wrn_generic_name_equals_the_preset():
    preset = build_model("wrn-28-10", input_shape=(32, 32, 3), classes=10)
    generic = build_model("wrn2d", input_shape=(32, 32, 3), classes=10, depth=28, width=10)
    assert generic.count_params() == preset.count_params()


def test_wrn_rejects_bad_depth_and_fixed_preset_keywords():
    with pytest.raises(ValueError, match=r"expected depth = 6n \+ 4.*received depth=12"):
        build_model("wrn2d", depth=12)
    with pytest.raises(ValueError, match="wrn-28-10 fixes depth=28; received depth=16"):
        build_model("wrn-28-10", depth=16)


def test_wrn3d_backbone_with_two_heads_trains_compiled():
    """The false-positive-reduction set-up of the pipeline, trained with the default (compiled) step."""
    backbone = build_model("wrn3d", include_top=False, pooling="avg", input_shape=(32, 32, 32, 1),
                           depth=10, width=2)
    assert backbone.output_shape == (None, 128)
    assert backbone.get_layer("conv1").kernel.shape == (3, 3, 3, 1, 16)
    assert tuple(backbone.get_layer("final_relu").output.shape) == (None, 8, 8, 8, 128)
    # the same backbone on 16^3 patches (None sizes) keeps the training step small
    backbone = build_model("wrn3d", include_top=False, pooling="avg", input_shape=(None, None, None, 1),
                           depth=10, width=2)
    features = backbone.output
    nodule = keras.layers.Dense(1, activation="sigmoid", name="nodule")(features)
    malignancy = keras.layers.Dense(1, activation="sigmoid", name="malignancy")(features)
    model = keras.Model(backbone.input, {"nodule": nodule, "malignancy": malignancy})
    rng = np.random.default_rng(0)
    bright = (np.arange(8) % 2).astype("float32")
    x = (rng.normal(0, 0.3, (8, 16, 16, 16, 1)) + (2 * bright - 1).reshape(8, 1, 1, 1, 1)).astype("float32")
    y = {"nodule": bright[:, None], "malignancy": bright[:, None]}
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(3e-4),
                  loss={"nodule": "binary_crossentropy", "malignancy": "binary_crossentropy"})
    losses = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0).history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
