"""lungcad.models.alexnet: the zoo's three checks, the two towers and the parameter count."""
from __future__ import annotations

import pytest

from lungcad.models import LocalResponseNormalization, build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("alexnet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_alexnet_parameter_count_and_towers():
    model = build_uninitialized("alexnet", input_shape=(227, 227, 3), classes=1000)
    assert model.count_params() == 60_965_224
    # conv2, conv4 and conv5 see only the maps of their own tower: half the input channels
    assert tuple(model.get_layer("conv2").kernel.shape) == (5, 5, 48, 256)
    assert tuple(model.get_layer("conv4").kernel.shape) == (3, 3, 192, 384)
    assert tuple(model.get_layer("conv5").kernel.shape) == (3, 3, 192, 256)
    assert tuple(model.get_layer("conv3").kernel.shape) == (3, 3, 256, 384)
    assert tuple(model.get_layer("pool5").output.shape) == (None, 6, 6, 256)
    assert isinstance(model.get_layer("lrn1"), LocalResponseNormalization)
    assert model.get_layer("fc6").count_params() == 6 * 6 * 256 * 4096 + 4096


def test_alexnet_rejects_inputs_too_small():
    with pytest.raises(ValueError, match=r"expected every spatial size >= 67.*\(64, 64, 3\)"):
        build_model("alexnet", input_shape=(64, 64, 3))
