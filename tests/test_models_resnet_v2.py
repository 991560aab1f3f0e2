"""lungcad.models.resnet: the zoo's three checks for the pre-activation (v2) ResNets."""
from __future__ import annotations

import pytest

from lungcad.models import list_models
from zoo_cases import ZooModelChecks, fresh_keras_session, zoo_fixture  # noqa: F401 (autouse)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

zoo = zoo_fixture("resnet", [n for n in list_models("resnet") if n.endswith("v2")])


class TestRegisteredModels(ZooModelChecks):
    pass
