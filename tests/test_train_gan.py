"""lungcad.train.gan (the two players' train step, TF and JAX) and lungcad.metrics.kid."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lungcad.metrics.kid import kernel_inception_distance, kid_from_features, mmd2_polynomial
from lungcad.models import build_model
from lungcad.train.gan import GAN
from zoo_cases import fresh_keras_session  # noqa: F401 (autouse)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = (8, 8, 1)


def _gan(seed=0, *, conditional=False, lr=2e-3):
    keras.utils.set_random_seed(seed)
    prefix = "cdcgan" if conditional else "dcgan"
    generator = build_model(f"{prefix}-generator", input_shape=(8,), output_shape=SIZE, base_filters=8)
    discriminator = build_model(f"{prefix}-discriminator", input_shape=SIZE, base_filters=8,
                                classifier_activation=None)
    gan = GAN(generator, discriminator, seed=seed)
    gan.compile(keras.optimizers.Adam(lr, beta_1=0.5))
    return gan


def _real(n=64, value=0.7, seed=0):
    rng = np.random.default_rng(seed)
    return (value + 0.05 * rng.normal(size=(n, *SIZE))).clip(-1, 1).astype("float32")


def test_discriminator_alone_learns_real_against_fixed_fakes():
    gan = _gan()
    gan.generator.trainable = False
    real = _real()
    fake_before = gan.sample(64, seed=1)
    gap_before = gan.score(real) - gan.score(fake_before)
    history = gan.fit(real, batch_size=32, epochs=15, verbose=0, shuffle=False).history
    gap_after = gan.score(real) - gan.score(gan.sample(64, seed=1))
    assert np.all(np.isfinite(history["d_loss"]))
    assert history["d_loss"][-1] < 0.8 * history["d_loss"][0], history["d_loss"]
    assert gap_after > 0.3 and gap_after > gap_before + 0.3, (gap_before, gap_after)
    np.testing.assert_array_equal(gan.sample(64, seed=1), fake_before)  # the frozen generator did not move


def test_generator_against_a_frozen_discriminator_raises_its_score():
    gan = _gan(1)
    real = _real()
    gan.generator.trainable = False  # first a discriminator that tells the two apart
    gan.fit(real, batch_size=32, epochs=20, verbose=0, shuffle=False)
    gan.generator.trainable, gan.discriminator.trainable = True, False
    gan.compile(keras.optimizers.Adam(5e-3, beta_1=0.5))  # the trainable weights changed
    d_weights = [keras.ops.convert_to_numpy(w) for w in gan.discriminator.weights]
    before = gan.score(gan.sample(64, seed=2))
    history = gan.fit(real, batch_size=32, epochs=20, verbose=0, shuffle=False).history
    after = gan.score(gan.sample(64, seed=2))
    assert after > before + 0.15, (before, after)
    assert history["g_loss"][-1] < 0.7 * history["g_loss"][0], history["g_loss"]
    for w, saved in zip(gan.discriminator.weights, d_weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), saved)


def test_the_whole_loop_moves_the_sample_mean_toward_the_data():
    gan = _gan(2)
    real = _real(128)
    before = float(gan.sample(128, seed=3).mean())
    history = gan.fit(real, batch_size=32, epochs=40, verbose=0).history
    after = float(gan.sample(128, seed=3).mean())
    assert set(history) >= {"d_loss", "g_loss", "d_real", "d_fake"}
    assert abs(after - 0.7) < 0.5 * abs(before - 0.7), (before, after)


def test_conditional_gan_takes_image_condition_batches():
    gan = _gan(3, conditional=True)
    conditions = np.tile(np.array([[0.5, 1, 0, 0]], "float32"), (32, 1))
    history = gan.fit(_real(32), conditions, batch_size=16, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["g_loss"])) and len(history["g_loss"]) == 2
    assert gan.sample(4, conditions[:4]).shape == (4, *SIZE)
    with pytest.raises(ValueError, match="expects \\(images, conditions\\)"):
        gan._split(_real(4))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, _ = kid_from_features(a, b, subsets=20, subset_size=100)
    shifted, _ = kid_from_features(a, b + 0.5, subsets=20, subset_size=100)
    far, _ = kid_from_features(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05
    assert shifted > 0.2 and far > 2 * shifted, (same, shifted, far)
    # unbiased: x against itself split in two halves is ~0, and the estimate is symmetric
    assert mmd2_polynomial(a, b) == pytest.approx(mmd2_polynomial(b, a))
    with pytest.raises(ValueError, match="expected two \\(n, d\\) feature arrays"):
        mmd2_polynomial(a, b[:, :3])


def test_kid_on_a_backbone():
    backbone = build_model("dcgan-discriminator", input_shape=SIZE, base_filters=4, include_top=False,
                           pooling="avg")
    result = kernel_inception_distance(_real(64, 0.7, 0), _real(64, -0.7, 1), backbone, subsets=5, subset_size=32)
    same = kernel_inception_distance(_real(64, 0.7, 0), _real(64, 0.7, 1), backbone, subsets=5, subset_size=32)
    assert (result["n_real"], result["n_fake"], result["subset_size"]) == (64, 64, 32)
    assert result["kid"] > 10 * abs(same["kid"]) and result["kid"] > 0


def test_phantom_patches_are_lesions_in_the_tanh_range():
    from lungcad.train.gan_data import conditions_of, phantom_patches

    patches, lesions = phantom_patches([3], patch_size=16, fov_mm=32.0,
                                       phantom_kwargs={"shape": (None, 96, 96), "n_nodules": 2, "n_masses": 0,
                                                       "n_micronodules": 0})
    assert patches.shape == (len(lesions), 16, 16, 1) and len(lesions) >= 2
    assert patches.min() >= -1.0 and patches.max() <= 1.0
    centre = patches[:, 6:10, 6:10].mean(axis=(1, 2, 3))
    border = np.concatenate([patches[:, :2], patches[:, -2:]], axis=1).mean(axis=(1, 2, 3))
    assert np.all(centre > border), (centre, border)  # a lesion (soft tissue) is brighter than the lung around it
    conditions = conditions_of(lesions)
    assert conditions.shape == (len(lesions), 4)
    np.testing.assert_allclose(conditions[:, 0], lesions["diameter_mm"] / 10.0, rtol=1e-6)
    assert np.all(conditions[:, 1:].sum(axis=1) <= 1)


def test_lungcad_train_gan_end_to_end(tmp_path):
    import json

    from lungcad.cli import main

    run_dir, out = tmp_path / "run", tmp_path / "g.keras"
    rc = main(["train", "gan", "--synthetic", "1", "--synthetic-seed", "3", "--patch", "16", "--epochs", "2",
               "--batch-size", "4", "--sample-every", "1", "--base-filters", "4", "--run-dir", str(run_dir),
               "--out", str(out), "--no-progress",
               "--phantom-kwargs", '{"shape": [null, 96, 96], "n_nodules": 3, "n_masses": 0, "n_micronodules": 0}'])
    assert rc == 0
    for name in ("generator.keras", "discriminator.keras", "log.csv", "samples_epoch001.png", "samples_epoch002.png"):
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    card = json.loads((tmp_path / "g.card.json").read_text())
    assert card["task"] == "gan" and card["data"]["n_patches"] == 3 and card["training"]["epochs_run"] == 2
    assert card["training"]["learning_rate"] == 2e-4              # the DCGAN's default, not train's 1e-3
    generator = keras.saving.load_model(out, safe_mode=True)
    assert generator.output_shape == (None, 16, 16, 1)
    # a learning rate that is given is the one used, 1e-3 too
    rc = main(["train", "gan", "--synthetic", "1", "--synthetic-seed", "3", "--patch", "16", "--epochs", "1",
               "--batch-size", "4", "--base-filters", "4", "--learning-rate", "1e-3", "--run-dir",
               str(tmp_path / "run2"), "--out", str(tmp_path / "g2.keras"), "--no-progress",
               "--phantom-kwargs", '{"shape": [null, 96, 96], "n_nodules": 3, "n_masses": 0, "n_micronodules": 0}'])
    assert rc == 0
    assert json.loads((tmp_path / "g2.card.json").read_text())["training"]["learning_rate"] == 1e-3


def test_gan_positives_replace_the_share_of_lesions_in_fpr_batches():
    from lungcad.fpr import MALIGNANCY, NODULE
    from lungcad.train.fpr_batches import FPRDataset
    from test_train import toy_case

    cases = [toy_case(i) for i in range(2)]
    generated = np.full((5, 16, 16, 3), 0.123, np.float32)
    for ratio, expected in ((1.0, 4), (0.5, 2), (0.0, 0)):
        ds = FPRDataset(cases, batch_size=8, steps=2, seed=1, views="orthogonal", patch_size=16,
                        gan_positives=generated, gan_ratio=ratio)
        inputs, targets, weights = ds[0]
        is_generated = np.all(inputs["patch"] == 0.123, axis=(1, 2, 3))
        assert is_generated.sum() == expected, ratio
        assert np.all(targets[NODULE][is_generated] == 1) and np.all(weights[MALIGNANCY][is_generated] == 0)
        assert (targets[NODULE][:, 0] == 1).sum() == 4  # the batch's share of positives is unchanged
    with pytest.raises(ValueError, match=r"generated positives of shape \(16, 16, 3\).*received \(16, 16, 1\)"):
        FPRDataset(cases, batch_size=8, steps=2, views="orthogonal", patch_size=16,
                   gan_positives=generated[..., :1], gan_ratio=0.5)


# ---- orthogonal mode, the sampler, --gan-positives and lungcad evaluate kid ------------------------------

PHANTOM = ('{"shape": [null, 128, 128], "spacing": [8.0, 2.5, 2.5], "n_nodules": 3, "n_masses": 0, '
           '"n_micronodules": 0}')
FPR_SHAPE = (32, 32, 3)  # the shipped pipeline's FPR input: [fpr] patch_size 32, wrn2d on orthogonal views


def _one_line_error(capsys, rc, expected_rc, *words):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert rc == expected_rc, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def orthogonal_run(tmp_path_factory):
    """A tiny orthogonal-mode GAN, 16 generated patches and 12 real ones as .npz files."""
    from lungcad.cli import main

    root = tmp_path_factory.mktemp("gan_orthogonal")
    generator = root / "g.keras"
    assert main(["train", "gan", "--views", "orthogonal", "--synthetic", "1", "--synthetic-seed", "3",
                 "--phantom-kwargs", PHANTOM, "--real-patches", "8", "--epochs", "1", "--batch-size", "4",
                 "--base-filters", "4", "--sample-every", "1", "--run-dir", str(root / "run"),
                 "--out", str(generator), "--no-progress"]) == 0
    fake, real = root / "fake.npz", root / "real.npz"
    assert main(["train", "gan", "--sample", "16", "--generator", str(generator), "--out", str(fake)]) == 0
    assert main(["train", "gan", "--dump-real", "12", "--synthetic", "1", "--synthetic-seed", "4",
                 "--phantom-kwargs", PHANTOM, "--out", str(real)]) == 0
    return root


def test_orthogonal_gan_trains_on_the_fpr_input_and_samples_fpr_positives(orthogonal_run):
    import json

    import keras

    generator = keras.saving.load_model(orthogonal_run / "g.keras", safe_mode=True)
    assert generator.output_shape == (None, *FPR_SHAPE)
    card = json.loads((orthogonal_run / "g.card.json").read_text())
    assert card["data"]["n_patches"] == 8 and card["data"]["views"] == "orthogonal"
    assert card["preprocessing"]["fpr_input"] == list(FPR_SHAPE)
    assert (orthogonal_run / "run" / "samples_epoch001.png").is_file()
    with np.load(orthogonal_run / "fake.npz") as data:
        fake = data["patches"]
    assert fake.shape == (16, *FPR_SHAPE) and fake.dtype == np.float32
    assert fake.min() >= 0.0 and fake.max() <= 1.0
    with np.load(orthogonal_run / "real.npz") as data:
        real = data["patches"]
    assert real.shape == (12, *FPR_SHAPE) and real.min() >= 0.0 and real.max() <= 1.0
    # lesions (soft tissue) are brighter at the centre of each view than the lung at the border, on average
    centre = real[:, 13:19, 13:19].mean(axis=(0, 1, 2))
    border = np.concatenate([real[:, :3], real[:, -3:]], axis=1).mean(axis=(0, 1, 2))
    assert np.all(centre > border + 0.1), (centre, border)


def test_the_sampler_checks_the_generator_against_the_fpr_input(tmp_path, capsys):
    from lungcad.cli import main

    generator = build_model("dcgan-generator", input_shape=(8,), output_shape=(16, 16, 1), base_filters=4)
    generator.save(tmp_path / "axial.keras")
    rc = main(["train", "gan", "--sample", "4", "--generator", str(tmp_path / "axial.keras"),
               "--out", str(tmp_path / "x.npz")])
    _one_line_error(capsys, rc, 2, "(16, 16, 1)", "(32, 32, 3)", "--views orthogonal")
    assert not (tmp_path / "x.npz").exists()
    rc = main(["train", "gan", "--sample", "4", "--out", str(tmp_path / "x.npz")])
    _one_line_error(capsys, rc, 2, "--generator")


def test_sampled_npz_is_taken_by_train_fpr_gan_positives(orthogonal_run, tmp_path, capsys):
    import json

    from lungcad.cli import main

    tiny = ["--synthetic", "2", "--synthetic-seed", "5", "--phantom-kwargs", PHANTOM, "--val-fraction", "0.5",
            "--steps-per-epoch", "2", "--val-steps", "1", "--batch-size", "4", "--no-progress", "--epochs", "1",
            "--depth", "10", "--width", "1"]
    rc = main(["train", "fpr", *tiny, "--gan-positives", str(orthogonal_run / "fake.npz"), "--gan-ratio", "0.5",
               "--out", str(tmp_path / "fpr.keras"), "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    card = json.loads((tmp_path / "fpr.card.json").read_text())
    assert card["data"]["gan_positives"]["n"] == 16
    bad = tmp_path / "bad.npz"
    np.savez(bad, patches=np.zeros((4, 16, 16, 1), np.float32))
    rc = main(["train", "fpr", *tiny, "--gan-positives", str(bad), "--gan-ratio", "0.5",
               "--out", str(tmp_path / "x.keras"), "--run-dir", str(tmp_path / "run2")])
    _one_line_error(capsys, rc, 1, "(32, 32, 3)", "(16, 16, 1)")


def test_lungcad_evaluate_kid(orthogonal_run, tmp_path, capsys):
    import re

    from lungcad.cli import main
    from lungcad.fpr import build_fpr_model

    keras.utils.set_random_seed(0)
    build_fpr_model(backbone="wrn2d", patch_size=32, backbone_kwargs={"depth": 10, "width": 1}).save(
        tmp_path / "fpr.keras")
    real, fake = str(orthogonal_run / "real.npz"), str(orthogonal_run / "fake.npz")
    capsys.readouterr()
    rc = main(["evaluate", "kid", real, fake, "--backbone", str(tmp_path / "fpr.keras"), "--subsets", "5",
               "--subset-size", "8", "--json", str(tmp_path / "kid.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    match = re.search(r"KID (-?[0-9.]+) \+- ([0-9.]+) \(std over 5 subsets of 8\); 12 real, 16 generated", out)
    assert match, out
    assert np.isfinite(float(match.group(1)))
    rc = main(["evaluate", "kid", real, str(tmp_path / "missing.npz"), "--backbone", str(tmp_path / "fpr.keras")])
    _one_line_error(capsys, rc, 1, "missing.npz", "not found")
    other = tmp_path / "other.npz"
    np.savez(other, patches=np.zeros((4, 16, 16, 3), np.float32))
    rc = main(["evaluate", "kid", real, str(other), "--backbone", str(tmp_path / "fpr.keras")])
    _one_line_error(capsys, rc, 1, "(32, 32, 3)", "(16, 16, 3)")
