"""lungcad.models.lenet: the zoo's three checks, the parameter count and the input-size check."""
from __future__ import annotations

import pytest

from lungcad.models import build_model
from zoo_cases import (ZooModelChecks, build_uninitialized,  # noqa: F401 (fresh_keras_session: autouse)
                        fresh_keras_session, zoo_fixture)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("lenet")


class TestRegisteredModels(ZooModelChecks):
    pass


def test_lenet5_parameter_count():
    # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850 (full C3 connections, no trainable pooling)
    model = build_uninitialized("lenet5", input_shape=(32, 32, 1), classes=10)
    assert model.count_params() == 61_706
    assert [model.get_layer(n).count_params() for n in ("c1", "c3", "c5", "f6", "predictions")] == \
        [156, 2_416, 48_120, 10_164, 850]


def test_lenet5_rejects_inputs_smaller_than_32():
    with pytest.raises(ValueError, match=r"expected every spatial size >= 32.*\(28, 28, 1\)"):
        build_model("lenet5", input_shape=(28, 28, 1))
