"""The one batching inferer (lungcad.inference.predict_batched) that both networks run through."""
import numpy as np
import pytest

from lungcad.inference import predict_batched


def small_model(keras):
    a = keras.Input((6, 6, 2), name="patch")
    b = keras.Input((1,), name="scale")
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(a)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, b])
    return keras.Model({"patch": a, "scale": b},
                       {"nodule": keras.layers.Dense(1, activation="sigmoid", name="nodule")(x),
                        "malignancy": keras.layers.Dense(1, activation="sigmoid", name="malignancy")(x)})


class Counting:
    """A Keras model seen through predict_on_batch, recording the batch sizes it is given."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def predict_on_batch(self, x):
        self.sizes.append(len(next(iter(x.values()))) if isinstance(x, dict) else len(x))
        return self.model.predict_on_batch(x)


def test_a_keras_model_sees_full_batches_only_and_the_padding_changes_no_row():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    model = small_model(keras)
    x = {"patch": rng.random((11, 6, 6, 2), dtype=np.float32), "scale": rng.random((11, 1), dtype=np.float32)}
    seen = Counting(model)
    out = predict_batched(seen, x, batch_size=4)
    assert seen.sizes == [4, 4, 4]
    assert set(out) == {"nodule", "malignancy"} and out["nodule"].shape == (11, 1)
    assert out["nodule"].dtype == np.float32
    one_by_one = [model.predict_on_batch({k: v[i:i + 1] for k, v in x.items()})["nodule"] for i in range(11)]
    np.testing.assert_allclose(out["nodule"], np.concatenate(one_by_one), atol=1e-6)


def test_a_plain_array_and_a_callable_model():
    calls = []

    def toy(x):
        calls.append(len(x))
        return x[..., :1] * 2.0

    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    out = predict_batched(toy, x, batch_size=4)
    assert calls == [4, 4, 2]                     # a callable is not padded
    np.testing.assert_array_equal(out, x[:, :1] * 2.0)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_batch_size_is_checked(bad):
    with pytest.raises(ValueError, match="batch_size"):
        predict_batched(lambda x: x, np.zeros((2, 1)), batch_size=bad)


def test_inputs_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        predict_batched(lambda x: x, {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, batch_size=2)
