"""Adversarial training of a generator and a discriminator with ``model.fit`` (TensorFlow or JAX).

>>> from lungcad.models import build_model
>>> gan = GAN(build_model("dcgan-generator", input_shape=(16,), output_shape=(16, 16, 1), base_filters=8),
...           build_model("dcgan-discriminator", input_shape=(16, 16, 1), base_filters=8,
...                       classifier_activation=None))
>>> gan.compile()
>>> history = gan.fit(patches, batch_size=32, epochs=1)    # patches in [-1, 1]

Losses (Goodfellow et al. 2014; Salimans et al. 2016):

- the discriminator minimises the binary cross-entropy of real patches against
  the target ``real_label`` (0.9: one-sided label smoothing) and of generated
  patches against 0;
- the generator minimises the non-saturating loss ``-log D(G(z))`` (the
  cross-entropy of its samples against the label 1).

Both players are updated from the same batch, simultaneously (gradients taken
against the same discriminator), by one optimizer over the union of their
weights: Adam keeps its moments per variable, so this is two Adams with the
same settings (Radford et al.: learning rate 2e-4, beta_1 0.5), and the
Keras trainer's single optimizer state serves both backends.  A frozen player
(``discriminator.trainable = False``) is not updated.  The data is the real
images, or ``(images, conditions)`` for the conditional variant (the generator
is then sampled with the batch's conditions).

The backend-specific code of the project lives here: ``tf.GradientTape`` for
TensorFlow and a stateless ``jax.value_and_grad`` step for JAX.
"""
from __future__ import annotations

import keras
from keras import ops


class GAN(keras.Model):
    """Two players, one ``fit``; ``d_loss``, ``g_loss`` and ``d_real`` / ``d_fake`` (mean scores) logged.

    Parameters
    ----------
    generator : keras.Model
        Noise (and condition) to image.
    discriminator : keras.Model
        Image (and condition) to one score per sample.
    real_label : float, optional
        Target of real images for the discriminator (one-sided smoothing; 1 disables it).
    from_logits : bool, optional
        True (default) when the discriminator outputs logits (``classifier_activation=None``).
    seed : int, optional
        Seed of the noise.
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, *, real_label: float = 0.9,
                 from_logits: bool = True, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.5 < real_label <= 1.0:
            raise ValueError(f"expected 0.5 < real_label <= 1; received real_label={real_label!r}")
        self.generator = generator
        self.discriminator = discriminator
        self.real_label = float(real_label)
        self.from_logits = bool(from_logits)
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.conditional = len(generator.inputs) > 1
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # both players are built; fit has no need to trace ``call`` on the data
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_real", "d_fake")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer=None, **kwargs):
        """Adam(2e-4, beta_1=0.5) unless an optimizer is given; no loss (the step has its own)."""
        if optimizer is None:
            optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=False):
        """The generator: noise (and conditions) to images."""
        return self.generator(inputs, training=training)

    def sample(self, n: int, conditions=None, *, seed: int = 0):
        """``n`` generated images (numpy), from noise of the given seed."""
        noise = keras.random.normal((n, self.latent_dim), seed=seed)
        inputs = [noise, ops.convert_to_tensor(conditions, "float32")] if self.conditional else noise
        return ops.convert_to_numpy(self.generator(inputs, training=False))

    def score(self, images, conditions=None):
        """Mean probability that the discriminator gives ``images`` of being real."""
        out = self.discriminator([images, conditions] if self.conditional else images, training=False)
        return float(ops.mean(ops.sigmoid(out) if self.from_logits else out))

    # ---- the pieces both backends share ---------------------------------------------------------

    def _split(self, data):
        if isinstance(data, (tuple, list)):
            images = data[0]
            conditions = data[1] if self.conditional and len(data) > 1 else None
        else:
            images, conditions = data, None
        if self.conditional and conditions is None:
            raise ValueError("a conditional GAN expects (images, conditions) batches; received images only")
        return images, conditions

    def _cross_entropy(self, target, score):
        return ops.mean(ops.binary_crossentropy(ops.full_like(score, target), score, from_logits=self.from_logits))

    def _player_losses(self, d_real, d_fake, d_fake_for_g):
        d_loss = self._cross_entropy(self.real_label, d_real) + self._cross_entropy(0.0, d_fake)
        g_loss = self._cross_entropy(1.0, d_fake_for_g)
        return d_loss, g_loss

    def _inputs_of(self, x, conditions):
        return [x, conditions] if conditions is not None else x

    def _mean_scores(self, d_real, d_fake):
        prob = ops.sigmoid if self.from_logits else (lambda t: t)
        return ops.mean(prob(d_real)), ops.mean(prob(d_fake))

    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        if keras.backend.backend() == "tensorflow":
            return self._tf_train_step(*args)
        raise NotImplementedError(f"GAN.train_step: expected the tensorflow or jax backend; received "
                                  f"{keras.backend.backend()!r}")

    # ---- TensorFlow ----------------------------------------------------------------------------

    def _tf_train_step(self, data):
        import tensorflow as tf

        images, conditions = self._split(data)
        noise = keras.random.normal((ops.shape(images)[0], self.latent_dim), seed=self.seed_generator)
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            fake = self.generator(self._inputs_of(noise, conditions), training=True)
            d_real = self.discriminator(self._inputs_of(images, conditions), training=True)
            d_fake = self.discriminator(self._inputs_of(fake, conditions), training=True)
            d_loss, g_loss = self._player_losses(d_real, d_fake, d_fake)
        grads = (tape.gradient(g_loss, g_vars) if g_vars else []) + (tape.gradient(d_loss, d_vars) if d_vars else [])
        del tape
        if grads:
            self.optimizer.apply(grads, g_vars + d_vars)
        values = dict(zip(self.trackers, (d_loss, g_loss, *self._mean_scores(d_real, d_fake))))
        for name, tracker in self.trackers.items():
            tracker.update_state(values[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    # ---- JAX (stateless) -----------------------------------------------------------------------

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        images, conditions = self._split(data)
        t_pos = {id(v): i for i, v in enumerate(self.trainable_variables)}
        n_pos = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        pick = lambda values, pos, variables: [values[pos[id(v)]] for v in variables]  # noqa: E731
        g_t = pick(trainable, t_pos, self.generator.trainable_variables)
        d_t = pick(trainable, t_pos, self.discriminator.trainable_variables)
        g_n = pick(non_trainable, n_pos, self.generator.non_trainable_variables)
        d_n = pick(non_trainable, n_pos, self.discriminator.non_trainable_variables)
        seed_index = n_pos[id(self.seed_generator.state)]
        with keras.StatelessScope(state_mapping=[(self.seed_generator.state, non_trainable[seed_index])]) as scope:
            noise = keras.random.normal((images.shape[0], self.latent_dim), seed=self.seed_generator)
            seed_value = scope.get_current_value(self.seed_generator.state)

        def loss_fn(g_t, d_t, g_n, d_n):
            fake, g_n = self.generator.stateless_call(g_t, g_n, self._inputs_of(noise, conditions), training=True)
            d_real, d_n = self.discriminator.stateless_call(d_t, d_n, self._inputs_of(images, conditions), training=True)
            d_fake, d_n = self.discriminator.stateless_call(d_t, d_n, self._inputs_of(jax.lax.stop_gradient(fake),
                                                                                conditions), training=True)
            # the generator's loss through a discriminator whose weights get no gradient from it
            d_fake_for_g, _ = self.discriminator.stateless_call(jax.lax.stop_gradient(d_t), d_n,
                                                                self._inputs_of(fake, conditions), training=True)
            d_loss, g_loss = self._player_losses(d_real, d_fake, d_fake_for_g)
            return d_loss + g_loss, (d_loss, g_loss, d_real, d_fake, g_n, d_n)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (_, (d_loss, g_loss, d_real, d_fake, g_n, d_n)), (g_grads, d_grads) = grad_fn(g_t, d_t, g_n, d_n)
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        new_trainable = list(trainable)
        if g_vars or d_vars:
            updated, optimizer_vars = self.optimizer.stateless_apply(
                optimizer_vars, list(g_grads) + list(d_grads), g_t + d_t)
            for variable, value in zip(g_vars + d_vars, updated):
                new_trainable[t_pos[id(variable)]] = value
        new_non_trainable = list(non_trainable)
        for variable, value in zip(self.generator.non_trainable_variables + self.discriminator.non_trainable_variables,
                                   list(g_n) + list(d_n)):
            new_non_trainable[n_pos[id(variable)]] = value
        new_non_trainable[seed_index] = seed_value
        values = dict(zip(self.trackers, (d_loss, g_loss, *self._mean_scores(d_real, d_fake))))
        new_metrics, logs, start = [], {}, 0
        for name, tracker in self.trackers.items():
            own = metrics_vars[start:start + len(tracker.variables)]
            start += len(tracker.variables)
            own = tracker.stateless_update_state(own, values[name])
            logs[name] = tracker.stateless_result(own)
            new_metrics += list(own)
        return logs, (new_trainable, new_non_trainable, optimizer_vars, new_metrics)


# ---- the training run: checkpoints, CSV log, sample grids, model card --------------------------

def save_grid(images, path, *, columns: int = 8) -> None:
    """Write a grid of images in [-1, 1] (first channel) as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    images = np.asarray(images)[..., 0]
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows), squeeze=False)
    for ax, i in zip(axes.ravel(), range(rows * columns)):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=-1, vmax=1)
    fig.savefig(path, dpi=64)
    plt.close(fig)


class _GanRun(keras.callbacks.Callback):
    """Per epoch: the two players' checkpoints; every ``sample_every`` epochs a grid; the time limit."""

    def __init__(self, gan, run_dir, *, sample_every: int, time_limit_min, n_samples: int = 32):
        super().__init__()
        import time

        self.gan, self.run_dir, self.sample_every = gan, run_dir, max(int(sample_every), 1)
        self.deadline = None if time_limit_min is None else time.monotonic() + 60.0 * time_limit_min
        self.noise = keras.random.normal((n_samples, gan.latent_dim), seed=12345)

    def on_epoch_end(self, epoch, logs=None):
        import time

        self.gan.generator.save(self.run_dir / "generator.keras")
        self.gan.discriminator.save(self.run_dir / "discriminator.keras")
        if (epoch + 1) % self.sample_every == 0 and not self.gan.conditional:
            samples = ops.convert_to_numpy(self.gan.generator(self.noise, training=False))
            save_grid(samples, self.run_dir / f"samples_epoch{epoch + 1:03d}.png")
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.model.stop_training = True


def train_gan(images, *, run_dir, out, epochs: int = 20, batch_size: int = 64, sample_every: int = 5,
              time_limit_min=None, resume: bool = False, seed: int = 0, latent_dim: int = 100,
              base_filters: int = 64, learning_rate: float = 2e-4, data_info=None, settings=None,
              preprocessing=None) -> dict:
    """Train a DCGAN on ``images`` (N, P, P, C) in [-1, 1]; write the generator to ``out`` and its card.

    ``run_dir`` holds ``generator.keras`` / ``discriminator.keras`` (each epoch), ``log.csv`` and
    ``samples_epochNNN.png``; ``resume`` goes on from them.  ``preprocessing`` replaces the card's
    (default: the axial view, lung window).  Returns the card.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from lungcad.models import build_model
    from lungcad.train.model_card import make_card

    run_dir, out = Path(run_dir), Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(images.shape[1:])
    log = run_dir / "log.csv"
    initial_epoch = 0
    keras.utils.set_random_seed(seed)
    if resume and (run_dir / "generator.keras").is_file():
        generator = keras.saving.load_model(run_dir / "generator.keras", safe_mode=True)
        discriminator = keras.saving.load_model(run_dir / "discriminator.keras", safe_mode=True)
        initial_epoch = len(pd.read_csv(log)) if log.is_file() else 0
    else:
        generator = build_model("dcgan-generator", input_shape=(latent_dim,), output_shape=shape,
                                base_filters=base_filters)
        discriminator = build_model("dcgan-discriminator", input_shape=shape, base_filters=base_filters,
                                    classifier_activation=None)
    gan = GAN(generator, discriminator, seed=seed)
    gan.compile(keras.optimizers.Adam(learning_rate, beta_1=0.5))
    callbacks = [keras.callbacks.CSVLogger(str(log), append=initial_epoch > 0),
                 _GanRun(gan, run_dir, sample_every=sample_every, time_limit_min=time_limit_min)]
    history = gan.fit(images, batch_size=batch_size, epochs=epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=0).history
    out.parent.mkdir(parents=True, exist_ok=True)
    generator.save(out)
    from lungcad.train.settings import TrainSettings

    settings = settings or TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                         seed=seed, time_limit_min=time_limit_min)
    card = make_card(name=out.stem, task="gan", model=generator,
                     architecture={"model": "dcgan-generator", "noise": latent_dim, "output_shape": list(shape),
                                   "base_filters": base_filters, "discriminator_parameters":
                                       int(discriminator.count_params())},
                     preprocessing=preprocessing or {"range": [-1.0, 1.0], "window_hu": [-1000.0, 400.0],
                                                     "view": "axial"},
                     data={"n_patches": int(len(images)), **(data_info or {})}, settings=settings,
                     fit_info={"epochs_run": len(history.get("d_loss", [])), "initial_epoch": initial_epoch},
                     metrics={k: float(v[-1]) for k, v in history.items() if v}, command=None)
    out.with_suffix("").with_suffix(".card.json").write_text(json.dumps(card, indent=2, default=str))
    return card


def sample_patches(generator, n: int, *, seed: int = 0, batch_size: int = 256):
    """``n`` patches of an unconditional generator, mapped from its tanh range to [0, 1] (float32 numpy).

    [0, 1] is the range of the FPR network's windowed input: a generator trained on
    ``2 x - 1`` of FPR patches (``lungcad train gan --views orthogonal``) gives FPR positives.
    """
    import numpy as np

    if len(generator.inputs) != 1:
        raise ValueError("expected an unconditional generator (one noise input); received "
                         f"{len(generator.inputs)} inputs")
    latent = int(generator.inputs[0].shape[-1])
    noise = keras.random.normal((int(n), latent), seed=seed)
    out = generator.predict(noise, batch_size=batch_size, verbose=0)
    return np.clip((np.asarray(out, np.float32) + 1.0) / 2.0, 0.0, 1.0)
