"""``lungcad train gan``: train a DCGAN on lesion patches, sample it, or dump the real patches.

::

    lungcad train gan --synthetic 40 --epochs 20 --out runs/gan/g.keras            # axial, 64 px, [-1, 1]
    lungcad train gan --views orthogonal --synthetic 40 --real-patches 4096 --out runs/gan/g.keras
    lungcad train gan --sample 2000 --generator runs/gan/g.keras --out fake.npz     # for --gan-positives
    lungcad train gan --dump-real 2000 --synthetic 40 --synthetic-seed 5000 --out real.npz
    lungcad evaluate kid real.npz fake.npz

``--views orthogonal`` trains on what the FPR network takes: the lesion patches of
``lungcad train fpr``'s own training batches (:func:`lungcad.train.gan_data.fpr_lesion_patches`;
the pipeline's ``[fpr]`` patch size, spacing and window), so the samples can be FPR positives.
The ``.npz`` files hold ``patches`` ``(N, *FPR input shape)`` in [0, 1].
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lungcad.errors import InputError


def _error(message: str) -> int:
    print(f"lungcad train gan: error: {message}", file=sys.stderr)
    return 2


def fpr_input_shape(config, backbone: str | None = None) -> tuple[int, ...]:
    """The ``patch`` shape of the pipeline's FPR network (``backbone`` overriding ``[fpr] backbone``)."""
    from lungcad.fpr import patch_shape, views_for

    return patch_shape(views_for(backbone or config.fpr.backbone), config.fpr.patch_size)


def load_patches(path, shape: tuple[int, ...] | None = None, *, flag: str = "patches",
                 against: str = "the FPR network's input") -> np.ndarray:
    """The ``patches`` array of a ``.npz`` file, checked: present, in [0, 1], and of ``shape`` per patch.

    InputError (one line on the command line) otherwise.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{flag}: file not found (write one with `lungcad train gan --sample N` "
                            f"or `--dump-real N`)")
    try:
        with np.load(p) as data:
            if "patches" not in data.files:
                raise InputError(p, f"{flag}: expected an array 'patches' in the .npz; found {data.files}")
            patches = data["patches"].astype(np.float32)
    except (OSError, ValueError) as e:
        raise InputError(p, f"{flag}: not a readable .npz file ({e})") from e
    if shape is not None and tuple(patches.shape[1:]) != tuple(shape):
        raise InputError(p, f"{flag}: patches of shape {tuple(shape)} expected ({against}); received "
                            f"{tuple(patches.shape[1:])} (a generator trained with --views orthogonal makes "
                            f"the FPR input)")
    if len(patches) == 0:
        raise InputError(p, f"{flag}: no patches in the file")
    if patches.min() < 0.0 or patches.max() > 1.0:
        raise InputError(p, f"{flag}: values in [0, 1] expected (the FPR input); received "
                            f"[{patches.min():.3g}, {patches.max():.3g}]")
    return patches


def _npz_out(args) -> Path | None:
    out = Path(args.out) if args.out else None
    return out if out is not None and out.suffix == ".npz" else None


def run_gan(args, config, settings, model_kwargs, gather_cases) -> int:
    """The ``gan`` task: ``--sample`` / ``--dump-real`` write an .npz; otherwise train."""
    if args.sample is not None and args.dump_real is not None:
        return _error("--sample and --dump-real are two runs: give one")
    if args.sample is not None:
        return _sample(args, config)
    if args.dump_real is not None:
        return _dump_real(args, config, gather_cases)
    if args.generator:
        return _error("--generator goes with --sample N")
    if args.views == "orthogonal":
        return _train_orthogonal(args, config, settings, model_kwargs, gather_cases)
    return _train_axial(args, settings, model_kwargs)


def _sample(args, config) -> int:
    from lungcad.pipeline import load_keras_model
    from lungcad.train.gan import sample_patches

    out = _npz_out(args)
    if args.sample < 1 or not args.generator or out is None:
        return _error("--sample N (N >= 1) needs --generator FILE.keras and --out FILE.npz")
    generator = load_keras_model(args.generator)
    expected, made = fpr_input_shape(config), tuple(generator.output_shape[1:])
    if made != expected:
        return _error(f"--generator {args.generator} makes patches of shape {made}; the pipeline's FPR network "
                      f"takes {expected} (train the GAN with --views orthogonal)")
    try:
        patches = sample_patches(generator, args.sample, seed=args.seed)
    except ValueError as e:
        return _error(f"--generator {args.generator}: {e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, patches=patches)
    print(f"lungcad train gan: {out} ({len(patches)} generated patches of shape {made}, seed {args.seed})")
    return 0


def _real_fpr_patches(args, config, gather_cases, n: int):
    from lungcad.train.gan_data import fpr_lesion_patches

    if args.patch is not None and args.patch != config.fpr.patch_size:
        raise ValueError(f"--patch {args.patch}: orthogonal patches have the pipeline's [fpr] patch_size "
                         f"({config.fpr.patch_size}); leave --patch out")
    cases, data_info = gather_cases(args)
    patches = fpr_lesion_patches(cases, config=config, n=n, seed=args.seed,
                                 batch_size=args.batch_size or 32)
    return patches, data_info


def _dump_real(args, config, gather_cases) -> int:
    import argparse

    out = _npz_out(args)
    if args.dump_real < 1 or out is None:
        return _error("--dump-real N (N >= 1) needs --out FILE.npz and a data source (e.g. --synthetic N)")
    try:
        patches, data_info = _real_fpr_patches(args, config, gather_cases, args.dump_real)
    except (argparse.ArgumentTypeError, ValueError) as e:
        return _error(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, patches=patches)
    print(f"lungcad train gan: {out} ({len(patches)} real lesion patches of shape {tuple(patches.shape[1:])} "
          f"from {data_info['n_scans']} scans)")
    return 0


def _train_orthogonal(args, config, settings, model_kwargs, gather_cases) -> int:
    import argparse

    if args.real_patches < 1:
        return _error(f"--real-patches must be >= 1. Received {args.real_patches}")
    try:
        patches, data_info = _real_fpr_patches(args, config, gather_cases, args.real_patches)
    except (argparse.ArgumentTypeError, ValueError) as e:
        return _error(str(e))
    f = config.fpr
    preprocessing = {"range": [-1.0, 1.0], "view": "orthogonal", "fpr_input": list(patches.shape[1:]),
                     "patch_size": f.patch_size, "patch_mm": f.patch_mm, "fit_fraction": f.fit_fraction,
                     "window_hu": list(f.window_hu), "to_fpr_input": "(x + 1) / 2",
                     "sampler": "lungcad.train.gan_data.fpr_lesion_patches (FPR training batches, augmented)"}
    return _fit(args, settings, model_kwargs, 2.0 * patches - 1.0, preprocessing,
                {**data_info, "views": "orthogonal"})


def _train_axial(args, settings, model_kwargs) -> int:
    from lungcad.cli.train import _json_arg
    from lungcad.train.gan_data import phantom_patches

    if not args.synthetic or args.backgrounds:
        return _error("the axial view trains on --synthetic N phantoms (--backgrounds: use --views orthogonal)")
    patch = args.patch or 64
    seeds = range(args.synthetic_seed, args.synthetic_seed + args.synthetic)
    patches, lesions = phantom_patches(seeds, patch_size=patch, fov_mm=float(patch),
                                       phantom_kwargs=_json_arg(args.phantom_kwargs, "--phantom-kwargs"))
    return _fit(args, settings, model_kwargs, patches, None,
                {"source": "synthetic", "seeds": [seeds[0], seeds[-1]], "n_lesions": int(len(lesions)),
                 "views": "axial"})


def _fit(args, settings, model_kwargs, images, preprocessing, data_info) -> int:
    from lungcad.train.gan import train_gan

    run_dir = Path(args.run_dir or "runs/gan")
    out = Path(args.out or run_dir / "gan_generator.keras")
    card = train_gan(images, run_dir=run_dir, out=out, epochs=args.epochs, batch_size=settings.batch_size,
                     sample_every=args.sample_every, time_limit_min=args.time_limit, resume=args.resume,
                     seed=args.seed, learning_rate=settings.learning_rate,
                     settings=settings, data_info=data_info, preprocessing=preprocessing,
                     **{"base_filters": args.base_filters or 64, **model_kwargs})
    print(f"lungcad train gan: {out} ({card['data']['n_patches']} patches of shape "
          f"{tuple(images.shape[1:])}, {card['training']['epochs_run']} epochs)")
    return 0
