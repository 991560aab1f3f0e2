"""lungcad.models.vgg: the zoo's three checks, Keras' parameter counts and layer names."""
from __future__ import annotations

import pytest

from lungcad.models import build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("vgg")


class TestRegisteredModels(ZooModelChecks):
    pass


@pytest.mark.parametrize("name, count, last_conv", [("vgg16", 138_357_544, "block5_conv3"),
                                                    ("vgg19", 143_667_240, "block5_conv4")])
def test_vgg_parameter_counts_at_224(name, count, last_conv):
    model = build_uninitialized(name, input_shape=(224, 224, 3), classes=1000)
    assert model.count_params() == count
    assert tuple(model.get_layer(last_conv).output.shape) == (None, 14, 14, 512)
    assert [layer.name for layer in model.layers[-5:]] == ["fc1", "fc1_dropout", "fc2", "fc2_dropout",
                                                           "predictions"]


def test_vgg_rejects_16x16_input():
    with pytest.raises(ValueError, match=r"vgg16: input too small; expected every spatial size >= 32, "
                                         r"received input_shape=\(16, 16, 3\)"):
        build_model("vgg16", input_shape=(16, 16, 3))


def test_vgg_top_needs_a_fixed_size_but_the_backbone_does_not():
    with pytest.raises(ValueError, match="fixed spatial sizes"):
        build_uninitialized("vgg16", input_shape=(None, None, 3))
    backbone = build_uninitialized("vgg16", input_shape=(None, None, 3), include_top=False, pooling="avg")
    assert backbone.output_shape == (None, 512)
