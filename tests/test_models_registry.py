"""lungcad.models.registry and common: names, one signature, bad input, weights files."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from lungcad.models import REGISTRY, build_model, list_models, model_info
from zoo_cases import CASES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(input_shape=(32, 32, 3), classes=3, base_filters=4)


@pytest.fixture(autouse=True)
def fresh_session():
    keras.backend.clear_session()
    yield


def test_registry_names_and_info():
    names = list_models()
    for expected in ("lenet5", "alexnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet34", "resnet50",
                     "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2", "wrn2d", "wrn3d",
                     "wrn-28-10", "unet2d", "unet2d-classic", "unet3d", "resnet18-3d"):
        assert expected in names
    assert list_models("vgg") == ["vgg16", "vgg19"]
    info = model_info("wrn3d")
    assert (info["family"], info["dims"], info["input_shape"]) == ("wideresnet", 3, (32, 32, 32, 1))
    assert info["family_kwargs"] == {"depth": 28, "width": 10, "dropout": 0.3}
    assert model_info("unet2d-classic")["fixed"] == {"dims": 2, "depth": 4, "base_filters": 32}
    # wrn3d, unet3d, resnet18-3d and the four 3-D DCGAN networks
    assert [model_info(n)["dims"] for n in list_models()].count(3) == 7


@pytest.mark.parametrize("name", list_models())
def test_registry_entries_are_consistent(name):
    info = model_info(name)
    # a generator's input is its noise vector
    assert len(info["input_shape"]) == (1 if name.endswith(("generator", "generator-3d")) else info["dims"] + 1)
    assert info["fixed"].get("dims", info["dims"]) == info["dims"]
    assert "dims" not in info["family_kwargs"]  # the name fixes 2D or 3D
    assert info["description"]
    # every family has its test file with the three checks
    assert (Path(__file__).parent / f"test_models_{info['family']}.py").is_file()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model; expected one of \[.*'resnet50'.*\], received 'resnet51'"):
        build_model("resnet51")
    with pytest.raises(ValueError, match="unknown family"):
        list_models("transformer")


def test_names_are_case_insensitive_and_name_sets_the_model_name():
    model = build_model("ResNet18", name="my_backbone", **SMALL)
    assert model.name == "my_backbone"
    assert build_model("resnet18", **SMALL).name == "resnet18"


def test_bad_keywords_and_shapes_say_expected_and_received():
    with pytest.raises(ValueError, match=r"resnet18: unknown keyword; expected one of \['base_filters', "
                                         r"'zero_init_residual'\], received 'width'"):
        build_model("resnet18", width=2)
    with pytest.raises(ValueError, match="resnet18 fixes block='basic'; received block='bottleneck'"):
        build_model("resnet18", block="bottleneck")
    with pytest.raises(ValueError, match=r"expected a 2D channels_last input_shape .* received input_shape=\(32, 32\)"):
        build_model("resnet18", input_shape=(32, 32))
    with pytest.raises(ValueError, match=r"expected a 3D channels_last input_shape"):
        build_model("wrn3d", input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="known, positive channel count"):
        build_model("resnet18", input_shape=(32, 32, None))
    with pytest.raises(ValueError, match=r"expected pooling in \(None, 'avg', 'max'\); received pooling='mean'"):
        build_model("resnet18", include_top=False, pooling="mean", **{k: v for k, v in SMALL.items() if k != "classes"})
    with pytest.raises(ValueError, match="expected pooling=None with include_top=True"):
        build_model("resnet18", pooling="avg", **SMALL)
    with pytest.raises(ValueError, match="softmax over one class"):
        build_model("resnet18", input_shape=(32, 32, 3), classes=1, classifier_activation="softmax", base_filters=4)
    with pytest.raises(ValueError, match="unknown classifier_activation"):
        build_model("resnet18", classifier_activation="sofmax", **SMALL)


def test_classifier_activation_auto_none_and_pooling():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    one = build_model("resnet18", input_shape=(32, 32, 3), classes=1, base_filters=4)
    assert one.get_layer("predictions").activation.__name__ == "sigmoid"
    logits = build_model("resnet18", classifier_activation=None, **SMALL)
    assert logits.get_layer("predictions").activation.__name__ == "linear"
    for pooling in ("avg", "max"):
        pooled = build_model("resnet18", input_shape=(None, None, 3), include_top=False, pooling=pooling,
                             base_filters=4)
        assert pooled.output_shape == (None, 32)
        assert keras.ops.convert_to_numpy(pooled(x)).shape == (2, 32)


def test_weights_files_load_and_round_trip(tmp_path):
    source = build_model("lenet5", input_shape=(32, 32, 1), classes=10)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    expected = keras.ops.convert_to_numpy(source(x))
    source.save_weights(tmp_path / "lenet.weights.h5")
    source.save(tmp_path / "lenet.keras")
    for path in (tmp_path / "lenet.weights.h5", str(tmp_path / "lenet.keras")):
        model = build_model("lenet5", input_shape=(32, 32, 1), classes=10, weights=path)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-6)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_mismatching_weights_say_expected_and_received(tmp_path, suffix):
    other = build_model("lenet5", input_shape=(32, 32, 1), classes=5)
    path = tmp_path / f"other{suffix}"
    if suffix == ".keras":
        other.save(path)
    else:
        other.save_weights(path)
    # the same arrays but for the classifier: 84 x 10 expected, 84 x 5 received
    with pytest.raises(ValueError, match=r"does not match model 'lenet5': expected 10 arrays, 61,706 values, "
                                         r"received 10 arrays, 61,281 values \(shapes missing from the file: "
                                         r"\[\(10,\), \(84, 10\)\]; shapes not in the model: \[\(5,\), \(84, 5\)\]\)"):
        build_model("lenet5", input_shape=(32, 32, 1), classes=10, weights=path)
    with pytest.raises(ValueError, match=r"does not match model 'wrn2d': expected 39 arrays, .* received 10 arrays"):
        build_model("wrn2d", input_shape=(8, 8, 3), depth=10, width=1, weights=path)


def test_missing_or_unknown_weights_files(tmp_path):
    with pytest.raises(ValueError, match="weights file not found"):
        build_model("resnet18", weights=tmp_path / "none.keras", **SMALL)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected .*\.keras or \.weights\.h5|ending in \.keras or \.weights\.h5"):
        build_model("resnet18", weights=tmp_path / "w.npz", **SMALL)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="could not be read"):
        build_model("resnet18", weights=tmp_path / "broken.keras", **SMALL)


def test_every_registered_model_has_a_test_case():
    assert sorted(CASES) == sorted(list_models())


def test_registry_objects_are_the_specs():
    assert set(REGISTRY) == set(list_models())
    assert REGISTRY["vgg19"].fixed["convs_per_block"] == (2, 2, 4, 4, 4)
