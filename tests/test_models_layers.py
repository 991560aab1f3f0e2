"""lungcad.models.layers: local response normalization against a direct computation."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lungcad.models import LocalResponseNormalization

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _lrn_reference(a, size, alpha, beta, bias):
    out = np.empty_like(a)
    channels = a.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + size // 2 + 1)
        out[..., c] = a[..., c] / (bias + alpha * np.sum(a[..., lo:hi] ** 2, axis=-1)) ** beta
    return out


@pytest.mark.parametrize("shape", [(2, 3, 4, 7), (1, 2, 2, 2, 3)])
def test_lrn_matches_the_paper_formula(shape):
    a = np.random.default_rng(0).normal(0, 3, size=shape).astype("float32")
    layer = LocalResponseNormalization(size=5, alpha=0.01, beta=0.75, bias=2.0)
    got = keras.ops.convert_to_numpy(layer(a))
    np.testing.assert_allclose(got, _lrn_reference(a, 5, 0.01, 0.75, 2.0), rtol=1e-5)


def test_lrn_paper_defaults_barely_change_small_activations():
    layer = LocalResponseNormalization()
    a = np.ones((1, 1, 1, 8), dtype="float32")
    # every channel of the window: 2 + 1e-4 * (3 to 5 ones) -> a / (2.0003..2.0005) ** 0.75
    got = keras.ops.convert_to_numpy(layer(a))[0, 0, 0]
    np.testing.assert_allclose(got[0], 1 / (2 + 3e-4) ** 0.75, rtol=1e-6)
    np.testing.assert_allclose(got[4], 1 / (2 + 5e-4) ** 0.75, rtol=1e-6)


def test_lrn_config_round_trip_and_compiled_model(tmp_path):
    inputs = keras.Input((4, 4, 6))
    model = keras.Model(inputs, LocalResponseNormalization(size=3, alpha=0.5, beta=0.5, bias=1.0, name="lrn")(inputs))
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 6)).astype("float32")
    eager = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-5)  # compiled
    model.save(tmp_path / "lrn.keras")
    loaded = keras.saving.load_model(tmp_path / "lrn.keras", safe_mode=True)
    assert loaded.get_layer("lrn").get_config()["size"] == 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), eager, atol=1e-6)


def test_lrn_rejects_even_windows():
    with pytest.raises(ValueError, match="odd positive integer; received size=4"):
        LocalResponseNormalization(size=4)
