"""lungcad.models.wideresnet: the zoo's three checks, WRN-28-10's count and the FPR backbone use."""
from __future__ import annotations

import math

import keras
import pytest

from lungcad.models import build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("wideresnet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_wrn_28_10_parameter_count_on_cifar10():
    model = build_uninitialized("wrn-28-10", input_shape=(32, 32, 3), classes=10)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    # The authors' reference implementation (PyTorch, no conv biases) has 36,479,194 parameters;
    # Keras also counts the 17,952 batch-norm moving means and variances.
    assert trainable == 36_479_194
    assert model.count_params() == 36_497_146
    assert abs(model.count_params() - 36_479_194) / 36_479_194 < 0.005
    assert tuple(model.get_layer("final_relu").output.shape) == (None, 8, 8, 640)
    assert len([layer for layer in model.layers if layer.name.endswith("_conv2")]) == 12  # 3 stages x 4 blocks


def test_wrn_generic_name_equals_the_preset():
    preset = build_uninitialized("wrn-28-10", input_shape=(32, 32, 3), classes=10)
    generic = build_uninitialized("wrn2d", input_shape=(32, 32, 3), classes=10, depth=28, width=10)
    assert generic.count_params() == preset.count_params()


def test_wrn_rejects_bad_depth_and_fixed_preset_keywords():
    with pytest.raises(ValueError, match=r"expected depth = 6n \+ 4.*received depth=12"):
        build_model("wrn2d", depth=12)
    with pytest.raises(ValueError, match="wrn-28-10 fixes depth=28; received depth=16"):
        build_model("wrn-28-10", depth=16)


def test_wrn3d_backbone_carries_two_heads():
    """The false-positive-reduction set-up of the pipeline: a pooled 3D backbone and two heads."""
    backbone = build_uninitialized("wrn3d", include_top=False, pooling="avg", input_shape=(32, 32, 32, 1),
                           depth=10, width=2)
    assert backbone.output_shape == (None, 128)
    assert backbone.get_layer("conv1").kernel.shape == (3, 3, 3, 1, 16)
    assert tuple(backbone.get_layer("final_relu").output.shape) == (None, 8, 8, 8, 128)
    features = backbone.output
    heads = {name: keras.layers.Dense(1, activation="sigmoid", name=name)(features)
             for name in ("nodule", "malignancy")}
    model = keras.Model(backbone.input, heads)
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {"nodule": (None, 1), "malignancy": (None, 1)}
    assert model.count_params() == backbone.count_params() + 2 * 129
