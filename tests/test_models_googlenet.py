"""lungcad.models.googlenet: the zoo's three checks, parameter counts and the auxiliary classifiers."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lungcad.models import build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("googlenet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_googlenet_parameter_counts_at_224():
    # Table 1 of the paper with biases and no batch norm: stem 124,416 + nine inception
    # modules 5,849,136 + classifier 1,025,000.
    model = build_uninitialized("googlenet", input_shape=(224, 224, 3), classes=1000)
    assert model.count_params() == 6_998_552
    assert model.get_layer("inception3a_concat").output.shape[1:] == (28, 28, 256)
    assert model.get_layer("inception4e_concat").output.shape[1:] == (14, 14, 832)
    assert model.get_layer("inception5b_concat").output.shape[1:] == (7, 7, 1024)
    assert sum(model.get_layer(n).count_params() for n in
               ("inception3a_1x1", "inception3a_3x3_reduce", "inception3a_3x3", "inception3a_5x5_reduce",
                "inception3a_5x5", "inception3a_pool_proj")) == 163_696
    # Each auxiliary classifier: 1x1 conv to 128, fc 2048 -> 1024, fc 1024 -> 1000.
    with_aux = build_uninitialized("googlenet", input_shape=(224, 224, 3), classes=1000, aux_classifiers=True)
    assert with_aux.count_params() == 6_998_552 + 3_188_840 + 3_190_888 == 13_378_280


def test_googlenet_auxiliary_outputs(tmp_path):
    model = build_model("googlenet", input_shape=(65, 65, 3), classes=4, aux_classifiers=True)
    assert model.output_names == ["predictions", "aux1_predictions", "aux2_predictions"]
    assert [tuple(t.shape) for t in model.outputs] == [(None, 4)] * 3
    # 65 -> inception4a at 5x5 -> the 5x5/3 average pooling leaves 1x1x128 for aux*_fc
    assert tuple(model.get_layer("aux1_flatten").output.shape) == (None, 128)
    model.save(tmp_path / "aux.keras")
    loaded = keras.saving.load_model(tmp_path / "aux.keras", safe_mode=True)
    assert loaded.output_names == model.output_names
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored), keras.ops.convert_to_numpy(saved))


def test_googlenet_auxiliary_classifiers_need_room_and_a_top():
    with pytest.raises(ValueError, match=r">= 65.*\(64, 64, 3\)"):
        build_model("googlenet", input_shape=(64, 64, 3), aux_classifiers=True)
    with pytest.raises(ValueError, match="include_top=True"):
        build_model("googlenet", input_shape=(96, 96, 3), aux_classifiers=True, include_top=False)
    with pytest.raises(ValueError, match=r">= 32.*\(31, 64, 3\)"):
        build_model("googlenet", input_shape=(31, 64, 3))
