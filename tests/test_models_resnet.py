"""lungcad.models.resnet: the zoo's three checks for the v1 ResNets, Keras' parameter counts, layout.

The pre-activation (v2) ResNets have their three checks in ``test_models_resnet_v2.py``.
"""
from __future__ import annotations

import math

import keras
import pytest

from lungcad.models import build_model, list_models
from lungcad.models.resnet import resnet
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("resnet", [n for n in list_models("resnet") if not n.endswith("v2")])


class TestRegisteredModels(ZooModelChecks):
    pass


def _trainable(model):
    return sum(math.prod(w.shape) for w in model.trainable_weights)


# Keras applications' figures at 224x224x3 and 1000 classes (count_params: batch-norm
# moving statistics included).
@pytest.mark.parametrize("name, count", [
    ("resnet50", 25_636_712), ("resnet101", 44_707_176), ("resnet152", 60_419_944),
    ("resnet50v2", 25_613_800), ("resnet101v2", 44_675_560), ("resnet152v2", 60_380_648)])
def test_resnet_parameter_counts_equal_keras_applications(name, count):
    model = build_uninitialized(name, input_shape=(224, 224, 3), classes=1000)
    assert model.count_params() == count
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, 7, 7, 2048)


@pytest.mark.parametrize("name, torchvision, conv_biases, count", [
    ("resnet18", 11_689_512, 4_800, 11_703_912), ("resnet34", 21_797_672, 8_512, 21_823_208)])
def test_basic_block_resnets_match_the_torchvision_layout(name, torchvision, conv_biases, count):
    # Same layout as torchvision's ResNet-18/34, plus the Keras v1 convention of a bias on every
    # convolution (one per batch-normalized channel) and the batch-norm moving statistics.
    model = build_uninitialized(name, input_shape=(224, 224, 3), classes=1000)
    assert _trainable(model) == torchvision + conv_biases
    assert model.count_params() == torchvision + 3 * conv_biases == count


def test_resnet_layer_names_and_downsampling():
    model = build_uninitialized("resnet50", input_shape=(64, 64, 3), classes=10, base_filters=8)
    shapes = {name: tuple(model.get_layer(name).output.shape[1:]) for name in (
        "conv1", "pool1", "stage1_block1_add", "stage2_block1_conv2", "stage3_block6_out", "stage4_block3_out")}
    assert shapes == {"conv1": (32, 32, 8), "pool1": (16, 16, 8), "stage1_block1_add": (16, 16, 32),
                      "stage2_block1_conv2": (8, 8, 16), "stage3_block6_out": (4, 4, 128),
                      "stage4_block3_out": (2, 2, 256)}
    # projection shortcuts only where the shape changes: the first block of each stage
    shortcuts = [layer.name for layer in model.layers if layer.name.endswith("_shortcut_conv")]
    assert shortcuts == [f"stage{s}_block1_shortcut_conv" for s in (1, 2, 3, 4)]


def test_resnet_v2_is_pre_activated():
    model = build_uninitialized("resnet50v2", input_shape=(32, 32, 3), classes=10, base_filters=8)
    names = [layer.name for layer in model.layers]
    assert "conv1_bn" not in names and names[-4:] == ["post_bn", "post_relu", "avg_pool", "predictions"]
    assert names.index("stage1_block2_preact_bn") < names.index("stage1_block2_conv1")
    assert model.get_layer("stage1_block1_conv1").use_bias is False
    assert model.get_layer("stage1_block1_conv3").use_bias is True


def test_resnet_builder_in_3d():
    with keras.StatelessScope():
        model = resnet(dims=3, blocks=(1, 1, 1, 1), block="basic", base_filters=4, input_shape=(32, 48, 64, 1),
                       classes=2, name="resnet10_3d")
    assert model.get_layer("conv1").kernel.shape == (7, 7, 7, 1, 4)
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, 1, 2, 2, 32)
    assert model.output_shape == (None, 2)


def test_resnet_rejects_inputs_smaller_than_32():
    with pytest.raises(ValueError, match=r"resnet50: input too small; expected every spatial size >= 32, "
                                         r"received input_shape=\(16, 16, 3\)"):
        build_model("resnet50", input_shape=(16, 16, 3))
