"""``lungcad train segmenter|fpr``: train the pipeline's networks and write them with a model card.

Examples::

    lungcad train segmenter --synthetic 40 --synthetic-seed 1000 --epochs 12
    lungcad train fpr --luna16 /data/luna16 --segmenter lungcad/weights/segmenter.keras
    lungcad train fpr --lidc /data/LIDC-IDRI --dsb /data/dsb2017 --dsb-labels stage1_labels.csv

Several data sources can be given together; their cases are pooled and split into
training and validation *by patient*.  The preprocessing comes from the pipeline file
(``--pipeline``, default: the built-in pipeline), and the trained file goes where that
pipeline's weights point unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TASKS = ("segmenter", "fpr", "gan")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something: not None, not a flag's False, and not when
    the help already tells it (defaults that depend on the task)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def add_parser(sub, parents):
    p = sub.add_parser(
        "train", parents=parents, help="train the candidate U-Net, the FPR network or a lesion-patch GAN",
        description="Train the candidate U-Net (segmenter) or the false-positive-reduction network "
                    "(fpr) on synthetic phantoms, LUNA16, LIDC-IDRI and/or DSB2017 data, with a "
                    "validation split by patient, checkpoints, early stopping and a CSV log; write "
                    "the .keras file and its model card (<name>.card.json). `train gan` trains a DCGAN "
                    "on lesion patches (see the gan options), or writes its samples or real patches "
                    "to an .npz (--sample, --dump-real).",
        formatter_class=_DefaultsHelp)
    p.add_argument("task", choices=TASKS, help="which network to train")
    d = p.add_argument_group("data (at least one source)")
    d.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="N synthetic phantoms made on the fly")
    d.add_argument("--synthetic-seed", type=int, default=0, metavar="S",
                   help="phantom seeds are S, S+1, ..., S+N-1")
    d.add_argument("--full-size", action="store_true",
                   help="make phantoms at 512x512 (default: the same field of view at --phantom-pixel-mm)")
    d.add_argument("--phantom-pixel-mm", type=float, default=1.0,
                   help="in-plane pixel of the phantoms when not --full-size")
    d.add_argument("--mass-fraction", type=float, default=2 / 3,
                   help="share of phantoms with a 30-70 mm mass (most touch the mediastinum or hilum)")
    d.add_argument("--cache-dir", metavar="DIR",
                   help="keep generated phantoms here (.npz) so that later runs read them back")
    d.add_argument("--phantom-kwargs", metavar="JSON", default=None,
                   help="extra keywords for lungcad.synthetic.generate_phantom, e.g. '{\"n_nodules\": 3}'")
    d.add_argument("--synthetic-dir", metavar="DIR", help="phantoms written by `lungcad synth`")
    d.add_argument("--luna16", metavar="DIR", help="LUNA16 folder: subset*/*.mhd, annotations.csv, "
                                                   "candidates_V2.csv [, annotations_excluded.csv]")
    d.add_argument("--lidc", metavar="DIR", help="LIDC-IDRI series folders with their XML reads")
    d.add_argument("--dsb", metavar="DIR", help="DSB2017 folder (stage1/<patient>/*.dcm); needs --dsb-labels")
    d.add_argument("--dsb-labels", metavar="CSV",
                   help="DSB2017 stage1_labels.csv (id,cancer): patient labels, used as weak malignancy "
                        "labels (see lungcad.train.sources.dsb2017.apply_patient_labels)")
    d.add_argument("--backgrounds", metavar="DIR",
                   help="real CT scans without reads (any folder; DICOM, .mhd, NIfTI): lesions are inserted "
                        "with each scan's blur and noise, and hard negatives mined from its anatomy. Series "
                        "beside or below annotations (LIDC XML, annotations.csv, Annotation/) are refused")
    d.add_argument("--background-lesions", type=int, default=4, metavar="N",
                   help="lesions inserted into each draw of a background")
    d.add_argument("--background-draws", type=int, default=3, metavar="N",
                   help="cases made from each background (different lesions, seeds [--seed, scan, draw])")
    d.add_argument("--background-negatives", type=int, default=24, metavar="N",
                   help="hard negatives from the real anatomy per draw")
    d.add_argument("--exclusions", metavar="CSV",
                   help="known lesions of the backgrounds to keep 30 mm from (series,coordX,coordY,coordZ,"
                        "diameter_mm; series is a SeriesInstanceUID or folder name), besides the package's "
                        "table and DIR/exclusions.csv")
    d.add_argument("--max-cases", type=int, metavar="N", help="use at most N scans of each folder source")
    d.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="evaluate on N fresh phantoms at the end (metrics go into the model card)")
    d.add_argument("--holdout-seed", type=int, default=900000, metavar="S",
                   help="first seed of the held-out phantoms (keep it out of the training seeds)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--steps-per-epoch", type=int, default=100)
    t.add_argument("--val-steps", type=int, default=10, help="validation batches per epoch")
    t.add_argument("--batch-size", type=int, help="tiles (segmenter, default 16) or patches (fpr, default 32)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of patients held out for validation")
    t.add_argument("--learning-rate", type=float, help="Adam's learning rate (default 1e-3; gan 2e-4)")
    t.add_argument("--patience", type=int, default=6, help="early stopping patience in epochs")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, split and sampling")
    t.add_argument("--workers", type=int, default=1, help="data loading threads")
    t.add_argument("--max-cases-in-memory", type=int, metavar="N",
                   help="hold N scans in memory and draw a new subset each epoch (default: all)")
    t.add_argument("--pipeline", metavar="FILE", help="pipeline TOML whose preprocessing to train for")
    t.add_argument("--out", metavar="FILE", help="the .keras file to write (default: the pipeline's weights)")
    t.add_argument("--run-dir", metavar="DIR", help="checkpoints and log.csv (default: runs/<task>)")
    t.add_argument("--resume", action="store_true", help="go on from the checkpoint in --run-dir")
    t.add_argument("--init-weights", metavar="FILE",
                   help="start from the weights of this .keras file of the same network (fine-tuning) "
                        "instead of random ones; the card records the file and its sha256")
    t.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop after the first epoch that ends past MIN minutes of training, keeping the best "
                        "weights (fit a batch job's wall time; --resume goes on later)")
    t.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    t.add_argument("--no-progress", action="store_true", help="one line per epoch instead of progress bars")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="zoo model (segmenter, default unet2d) or FPR backbone (default: the pipeline's "
                        "[fpr] backbone; a 2-D one is trained on orthogonal views)")
    m.add_argument("--depth", type=int, help="U-Net depth (default 4) or WRN depth (default 10)")
    m.add_argument("--base-filters", type=int, help="U-Net filters of the first level (default 16)")
    m.add_argument("--width", type=int, help="WRN width factor (default 1)")
    m.add_argument("--model-kwargs", metavar="JSON", help="more family keywords, e.g. '{\"batch_norm\": false}'")
    m.add_argument("--tile", type=int, default=128, help="segmenter: training tile in pixels")
    m.add_argument("--balance", type=float, default=0.5,
                   help="segmenter: weight of lesion pixels in the loss, (background/lesion pixels) ** "
                        "BALANCE; 0 plain cross-entropy, 1 each tile's lesion as heavy as its background")
    m.add_argument("--positive-fraction", type=float,
                   help="share of lesion samples (segmenter tiles default 0.6, fpr patches default 0.5)")
    m.add_argument("--segmenter", metavar="FILE",
                   help="fpr: a segmenter .keras file (or 'pipeline' for the pipeline's) whose "
                        "candidates give hard negatives and DSB weak labels")
    m.add_argument("--max-hard-per-case", type=int, default=24, help="fpr: hard negatives kept per scan")
    m.add_argument("--mine-fpr", metavar="FILE",
                   help="fpr: rank each scan's non-lesion candidates by this FPR .keras file (or 'pipeline' "
                        "for the pipeline's) and keep the ones it scores highest as hard negatives "
                        "(bootstrapping: teach the mistakes of an earlier network); default: by U-Net score")
    m.add_argument("--mine-cases", type=int, metavar="N",
                   help="fpr: mine hard negatives on N scans drawn with the seed (default: all)")
    m.add_argument("--mining-cache", metavar="DIR",
                   help="fpr: keep each scan's mined candidates in DIR (keyed by the networks' sha256, the "
                        "pipeline settings and the scan's voxels) and reuse them in later runs")
    m.add_argument("--malignancy-weight", type=float, default=0.5, help="fpr: weight of the malignancy loss")
    m.add_argument("--negatives-benign", action="store_true",
                   help="fpr: candidates that are not lesions teach the malignancy head too (target 0), so "
                        "that it reads as the probability of a malignant lesion")
    m.add_argument("--gan-positives", metavar="NPZ",
                   help="fpr: a .npz whose 'patches' array holds generated lesion patches of the FPR input's "
                        "shape, in [0, 1]; --gan-ratio of each training batch's lesions are drawn from it")
    m.add_argument("--gan-ratio", type=float, default=0.0, metavar="R",
                   help="fpr: share of each training batch's lesion patches replaced by generated ones")
    g = p.add_argument_group("gan (lungcad.cli.train_gan)")
    g.add_argument("--views", choices=["axial", "orthogonal"], default="axial",
                   help="gan: train on axial lesion patches of --synthetic phantoms (1 channel, --patch mm field "
                        "of view), or on exactly the FPR network's input: the lesion patches of `train fpr`'s own "
                        "training batches (the pipeline's [fpr] patch size and views, e.g. 32x32x3), from any "
                        "data source, whose samples --gan-positives takes")
    g.add_argument("--patch", type=int,
                   help="gan --views axial: patch size in pixels and mm of field of view, 64 when not given "
                        "(--views orthogonal takes the pipeline's [fpr] patch_size)")
    g.add_argument("--real-patches", type=int, default=4096, metavar="N",
                   help="gan --views orthogonal: augmented lesion patches drawn to train on")
    g.add_argument("--sample-every", type=int, default=5, metavar="K",
                   help="gan: write a PNG grid of generated patches every K epochs")
    g.add_argument("--sample", type=int, metavar="N",
                   help="gan: instead of training, write N patches of --generator to --out FILE.npz (key "
                        "'patches', the FPR input's shape, in [0, 1]: what --gan-positives reads; seed --seed)")
    g.add_argument("--generator", metavar="FILE", help="gan --sample: the generator .keras file")
    g.add_argument("--dump-real", type=int, metavar="N",
                   help="gan: instead of training, write N real lesion patches of the data sources, as "
                        "--views orthogonal trains on them, to --out FILE.npz (for `lungcad evaluate kid`)")
    p.set_defaults(func=run)
    return p


def _json_arg(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{flag}: expected a JSON object. Received {text!r} ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{flag}: expected a JSON object. Received {text!r}")
    return value


def _set_backend(backend: str | None) -> None:
    if backend:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != backend:
            raise argparse.ArgumentTypeError(
                f"--backend {backend}: Keras is already loaded with the {loaded.backend.backend()} backend")
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def gather_cases(args) -> tuple[list, dict]:
    """The cases of every data source on the command line, and their description for the card."""
    from lungcad.train.sources import backgrounds, dsb2017, lidc, luna16, phantoms

    cases, sources = [], []
    if args.synthetic:
        pk = _json_arg(args.phantom_kwargs, "--phantom-kwargs")
        cases += phantoms.synthetic_cases(args.synthetic, seed=args.synthetic_seed, full_size=args.full_size,
                                          pixel_mm=args.phantom_pixel_mm, mass_fraction=args.mass_fraction,
                                          phantom_kwargs=pk, cache_dir=args.cache_dir)
        sources.append({"source": "synthetic", "n": args.synthetic,
                        "seeds": [args.synthetic_seed, args.synthetic_seed + args.synthetic - 1],
                        "full_size": bool(args.full_size),
                        "pixel_mm": None if args.full_size else args.phantom_pixel_mm,
                        "slice_protocols_mm": dict(phantoms.SLICE_PROTOCOLS), "mass_fraction": args.mass_fraction,
                        "phantom_kwargs": pk})
    if args.synthetic_dir:
        found = phantoms.synth_dir_cases(args.synthetic_dir, max_cases=args.max_cases)
        cases += found
        sources.append({"source": "synthetic-dir", "path": str(args.synthetic_dir), "n": len(found)})
    if args.luna16:
        found = luna16.luna16_cases(args.luna16, max_cases=args.max_cases)
        cases += found
        sources.append({"source": "luna16", "path": str(args.luna16), "n": len(found)})
    if args.lidc:
        found = lidc.lidc_cases(args.lidc, max_cases=args.max_cases)
        cases += found
        sources.append({"source": "lidc-idri", "path": str(args.lidc), "n": len(found), "min_readers": 3,
                        "malignancy_target": "(mean rating - 1) / 4"})
    if args.backgrounds:
        report: list = []
        found = backgrounds.background_cases(args.backgrounds, draws=args.background_draws,
                                             lesions_per_draw=args.background_lesions,
                                             negatives_per_draw=args.background_negatives, seed=args.seed,
                                             exclusions=args.exclusions, max_cases=args.max_cases, report=report)
        cases += found
        # ``report`` fills in as the draws load, before the card is written
        sources.append({"source": "backgrounds", "path": str(args.backgrounds), "n": len(found),
                        "exclusions": str(args.exclusions) if args.exclusions else None,
                        "lesions_per_draw": args.background_lesions,
                        "negatives_per_draw": args.background_negatives, "scans": report})
    elif args.exclusions:
        raise argparse.ArgumentTypeError("--exclusions goes with --backgrounds DIR")
    if args.dsb:
        if not args.dsb_labels:
            raise argparse.ArgumentTypeError("--dsb needs --dsb-labels (stage1_labels.csv)")
        found = dsb2017.dsb2017_cases(args.dsb, args.dsb_labels, max_cases=args.max_cases)
        cases += found
        sources.append({"source": "dsb2017", "path": str(args.dsb), "labels": str(args.dsb_labels),
                        "n": len(found), "weak_labels": "top candidate of the segmenter (label 1) / "
                                                         "top 3 candidates malignancy 0 (label 0)"})
    elif args.dsb_labels:
        labels = dsb2017.read_patient_labels(args.dsb_labels)
        cases = dsb2017.with_patient_labels(cases, labels)
        sources.append({"source": "patient-labels", "labels": str(args.dsb_labels),
                        "matched": sum(c.patient_id in labels for c in cases)})
    if not cases:
        raise argparse.ArgumentTypeError("no training data: give --synthetic N, --synthetic-dir, "
                                         "--luna16, --lidc, --backgrounds and/or --dsb with --dsb-labels")
    return cases, {"sources": sources, "n_scans": len(cases),
                   "n_patients": len({c.patient_id for c in cases})}


def run(args) -> int:
    try:
        _set_backend(args.backend)
        model_kwargs = _json_arg(args.model_kwargs, "--model-kwargs")
    except argparse.ArgumentTypeError as e:
        print(f"lungcad train: error: {e}", file=sys.stderr)
        return 2
    from lungcad.cli import load_backend

    if not load_backend("train", debug=args.debug):
        return 1
    from lungcad.config import load_config
    from lungcad.train import TrainSettings
    from lungcad.train.sources import phantoms

    config = load_config(args.pipeline)
    verbose = 2 if (args.no_progress or not sys.stdout.isatty()) else 1
    settings = TrainSettings(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, val_steps=args.val_steps,
        batch_size=args.batch_size or (16 if args.task == "segmenter" else 32),
        learning_rate=args.learning_rate or (2e-4 if args.task == "gan" else 1e-3),
        patience=args.patience, val_fraction=args.val_fraction,
        seed=args.seed, workers=args.workers, max_cases_in_memory=args.max_cases_in_memory, verbose=verbose,
        init_weights=args.init_weights, time_limit_min=args.time_limit)
    if args.task == "gan":
        from lungcad.cli.train_gan import run_gan

        return run_gan(args, config, settings, model_kwargs, gather_cases)
    try:
        settings.check()
        cases, data_info = gather_cases(args)
    except (argparse.ArgumentTypeError, ValueError) as e:
        print(f"lungcad train: error: {e}", file=sys.stderr)
        return 2
    holdout = (phantoms.synthetic_cases(args.holdout, seed=args.holdout_seed, full_size=args.full_size,
                                        pixel_mm=args.phantom_pixel_mm, mass_fraction=args.mass_fraction,
                                        phantom_kwargs=_json_arg(args.phantom_kwargs, "--phantom-kwargs"),
                                        cache_dir=args.cache_dir)
               if args.holdout else None)
    if holdout:
        overlap = {c.patient_id for c in holdout} & {c.patient_id for c in cases}
        if overlap:
            print(f"lungcad train: error: --holdout-seed {args.holdout_seed} reuses training phantoms "
                  f"({len(overlap)} in common); pick seeds outside the training range", file=sys.stderr)
            return 2
        data_info["holdout"] = {"source": "synthetic", "n": args.holdout,
                                "seeds": [args.holdout_seed, args.holdout_seed + args.holdout - 1]}
    if args.task == "segmenter":
        return _run_segmenter(args, config, settings, cases, data_info, holdout, model_kwargs)
    return _run_fpr(args, config, settings, cases, data_info, holdout, model_kwargs)


def _default_out(config, ref: str) -> Path:
    return config.resolve_weights(ref)


def _report(result, task: str) -> None:
    m = result.card["metrics"]
    keys = [k for k in ("val_loss", "val_dice", "val_nodule_auc", "val_malignancy_auc") if k in m]
    summary = ", ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m[k], (int, float)))
    print(f"lungcad train {task}: wrote {result.out} and {result.card_path}"
          + (f" ({summary})" if summary else ""))
    if "holdout" in m:
        print(f"lungcad train {task}: held-out: " + json.dumps(m["holdout"], default=str))


def _run_segmenter(args, config, settings, cases, data_info, holdout, model_kwargs) -> int:
    from lungcad.train import train_segmenter

    kw = dict(model_kwargs)
    if args.depth is not None:
        kw["depth"] = args.depth
    if args.base_filters is not None:
        kw["base_filters"] = args.base_filters
    if args.width is not None:
        print("lungcad train: error: --width is an FPR (WideResNet) option", file=sys.stderr)
        return 2
    depth = int(kw.get("depth", 4))
    if args.tile < 16 or args.tile % (2 ** depth):
        print(f"lungcad train: error: --tile must be >= 16 and a multiple of 2**depth = {2 ** depth}. "
              f"Received {args.tile}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else _default_out(config, config.candidates.weights)
    result = train_segmenter(
        cases, config=config, settings=settings, model=args.model or "unet2d", model_kwargs=kw,
        tile=args.tile, positive_fraction=0.6 if args.positive_fraction is None else args.positive_fraction,
        balance=args.balance,
        out=out, run_dir=Path(args.run_dir or "runs/segmenter"), resume=args.resume, holdout=holdout,
        data_info=data_info)
    _report(result, "segmenter")
    return 0


def _run_fpr(args, config, settings, cases, data_info, holdout, model_kwargs) -> int:
    from lungcad.pipeline import load_keras_model
    from lungcad.train import train_fpr

    kw = dict(model_kwargs)
    if args.depth is not None:
        kw["depth"] = args.depth
    if args.width is not None:
        kw["width"] = args.width
    if args.base_filters is not None:
        print("lungcad train: error: --base-filters is a segmenter (U-Net) option", file=sys.stderr)
        return 2
    from lungcad.fpr import views_for
    backbone = args.model or config.fpr.backbone
    try:
        views_for(backbone)
    except ValueError as e:
        print(f"lungcad train: error: --model: {e}", file=sys.stderr)
        return 2
    segmenter = None
    if args.segmenter:
        seg_path = (config.resolve_weights(config.candidates.weights) if args.segmenter == "pipeline"
                    else Path(args.segmenter))
        segmenter = load_keras_model(seg_path)
        data_info["hard_negatives_from"] = str(seg_path)
    ranker = None
    if args.mine_fpr:
        if segmenter is None:
            print("lungcad train: error: --mine-fpr ranks the candidates of --segmenter: give both",
                  file=sys.stderr)
            return 2
        rank_path = (config.resolve_weights(config.fpr.weights) if args.mine_fpr == "pipeline"
                     else Path(args.mine_fpr))
        ranker = load_keras_model(rank_path)
        from lungcad.fpr import model_patch_shape, model_views, patch_shape
        from lungcad.train.model_card import sha256

        views = model_views(ranker)
        if views is None or model_patch_shape(ranker) != patch_shape(views, config.fpr.patch_size):
            print(f"lungcad train: error: --mine-fpr {rank_path}: not an FPR network that takes the pipeline's "
                  f"{config.fpr.patch_size}-pixel patches", file=sys.stderr)
            return 2
        data_info["hard_negatives_ranked_by"] = {"path": str(rank_path), "sha256": sha256(rank_path)}
    gan_positives = None
    if args.gan_positives:
        from lungcad.cli.train_gan import fpr_input_shape, load_patches

        gan_positives = load_patches(args.gan_positives, fpr_input_shape(config, backbone), flag="--gan-positives")
        data_info["gan_positives"] = {"path": str(args.gan_positives), "n": int(len(gan_positives))}
    mining_key = ""
    if args.mining_cache:
        if segmenter is None:
            print("lungcad train: error: --mining-cache keeps the candidates of --segmenter: give both",
                  file=sys.stderr)
            return 2
        from lungcad.train.fit_fpr import mining_cache_key

        files = [seg_path] + ([rank_path] if ranker is not None else [])
        mining_key = mining_cache_key(config, *files)
        data_info["mining_cache"] = str(args.mining_cache)
    out = Path(args.out) if args.out else _default_out(config, config.fpr.weights)
    result = train_fpr(
        cases, config=config, settings=settings, backbone=args.model, backbone_kwargs=kw,
        malignancy_weight=args.malignancy_weight, segmenter=segmenter,
        max_hard_per_case=args.max_hard_per_case, mine_cases=args.mine_cases, mine_classifier=ranker,
        positive_fraction=0.5 if args.positive_fraction is None else args.positive_fraction,
        negatives_benign=args.negatives_benign, gan_ratio=args.gan_ratio,
        gan_positives=gan_positives, mining_cache=args.mining_cache, mining_key=mining_key,
        out=out, run_dir=Path(args.run_dir or "runs/fpr"), resume=args.resume, holdout=holdout,
        data_info=data_info)
    _report(result, "fpr")
    if backbone != config.fpr.backbone:
        print(f"lungcad train fpr: these weights hold a {backbone!r} backbone: a pipeline that uses them "
              f"needs [fpr] backbone = \"{backbone}\" and [fpr] weights = \"{out}\"")
    return 0
