"""``lungcad evaluate``: the LUNA16 FROC of a candidate file, and patient-level metrics.

    lungcad evaluate froc --annotations A --candidates C [--excluded E] [--seriesuids S]
                          [--plot froc.png] [--json out.json] [--nodules nodules.csv]
                          [--bootstrap N] [--seed K]
    lungcad evaluate patients --labels L --predictions P [--plot calib.png] [--json out.json]
    lungcad evaluate family validation|shifted --out DIR [--pipeline FILE] [--patients N]
    lungcad evaluate kid REAL.npz FAKE.npz [--backbone FPR.keras] [--subsets K] [--subset-size M]
"""
from __future__ import annotations

import argparse


def add_parser(sub, parents):
    p = sub.add_parser(
        "evaluate", help="LUNA16 FROC of candidates, or log-loss/AUC of patient probabilities",
        description="Evaluate lungcad outputs the way the field does: the LUNA16 FROC and CPM of "
                    "candidates.csv, or the log-loss and ROC AUC of patients.csv against labels.")
    kinds = p.add_subparsers(dest="evaluate_command", metavar="WHAT", required=True)

    f = kinds.add_parser(
        "froc", parents=parents, help="LUNA16 FROC and CPM of a candidate file",
        description="Sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan and their "
                    "mean (CPM), by the rules of the official LUNA16 evaluation script, with a "
                    "bootstrap confidence interval over scans.")
    f.add_argument("--annotations", required=True,
                   help="LUNA16 annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)")
    f.add_argument("--candidates", required=True,
                   help="candidates (seriesuid,coordX,coordY,coordZ,probability), e.g. lungcad's candidates.csv")
    f.add_argument("--excluded", help="LUNA16 annotations_excluded.csv: hits on these are ignored")
    f.add_argument("--seriesuids", help="the scans evaluated, one UID a line (LUNA16 seriesuids.csv); "
                                        "default: every scan in the annotations or the candidates")
    f.add_argument("--max-candidates", type=int, default=100,
                   help="candidates kept per scan, most probable first (default 100, as LUNA16; 0: all)")
    f.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap samples for the 95%% CI (default 1000; 0: none)")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    f.add_argument("--plot", help="write the FROC curve to this PNG")
    f.add_argument("--json", help="write the results to this JSON file")
    f.add_argument("--nodules", metavar="CSV",
                   help="write one row per nodule to this CSV: found or not, the probability and rank "
                        "of the candidate that hits it, the FP/scan rate from which it counts, and the "
                        "distance (mm) and probability of the nearest candidate (what a miss is)")
    f.set_defaults(func=run_froc)

    q = kinds.add_parser(
        "patients", parents=parents, help="log-loss, ROC AUC and calibration of cancer probabilities",
        description="Compare patient cancer probabilities (lungcad patients.csv, or id,cancer) with "
                    "labels (DSB2017 stage1_labels.csv id,cancer, or patient_id,cancer).")
    q.add_argument("--labels", required=True, help="labels CSV: id,cancer or patient_id,cancer")
    q.add_argument("--predictions", required=True,
                   help="predictions CSV: lungcad patients.csv, or id,cancer (a DSB2017 submission)")
    q.add_argument("--id-col", help="patient id column in both files (default: patient_id or id)")
    q.add_argument("--label-col", help="label column (default: cancer or label)")
    q.add_argument("--prob-col", help="probability column (default: cancer_probability, cancer or probability)")
    q.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    q.add_argument("--plot", help="write the calibration plot to this PNG")
    q.add_argument("--json", help="write the results to this JSON file")
    q.set_defaults(func=run_patients)

    g = kinds.add_parser(
        "family", parents=parents, help="write, detect and score a phantom family of the generalisation protocol",
        description="The generalisation protocol (lungcad.protocol): write the validation family (small "
                    "phantoms from the training ranges; choose networks and settings on it) or the shifted "
                    "family (full-size phantoms from the bands held out of training; never choose on it), "
                    "run lungcad detect over it, and score the FROC with a bootstrap CI and the patient AUC. "
                    "Writes OUT/data, OUT/detect and OUT/results.json (with the commit and the weights' sha256).")
    g.add_argument("family", choices=["validation", "shifted"])
    g.add_argument("--out", required=True, metavar="DIR", help="working folder (reused: phantoms and detect resume)")
    g.add_argument("--pipeline", metavar="FILE", help="pipeline TOML (default: the shipped pipeline)")
    g.add_argument("--patients", type=int, help="score only the first N patients (a quick look, not the family)")
    g.add_argument("--size", type=int, help="rows and columns (default: the family's)")
    g.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap samples (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=run_family)

    k = kinds.add_parser(
        "kid", parents=parents, help="kernel inception distance of two patch sets on the FPR backbone",
        description="KID (Binkowski et al. 2018: unbiased MMD^2, cubic kernel) between the 'patches' of two "
                    ".npz files (lungcad train gan --dump-real / --sample), on the pooled features of the FPR "
                    "network's backbone; the mean and standard deviation over random subsets.")
    k.add_argument("real", metavar="REAL.npz", help="real patches (key 'patches', the FPR input, in [0, 1])")
    k.add_argument("fake", metavar="FAKE.npz", help="generated patches, of the same shape")
    k.add_argument("--backbone", metavar="FILE",
                   help="an FPR .keras file whose backbone gives the features (default: the pipeline's [fpr] "
                        "weights), or any one-input feature model")
    k.add_argument("--pipeline", metavar="FILE", help="pipeline TOML (default: the shipped pipeline)")
    k.add_argument("--subsets", type=int, default=100, metavar="K", help="random subsets (default 100)")
    k.add_argument("--subset-size", type=int, default=1000, metavar="M",
                   help="patches per subset, capped by the smaller set (default 1000)")
    k.add_argument("--seed", type=int, default=0, help="seed of the subsets (default 0)")
    k.add_argument("--json", help="write the results to this JSON file")
    k.set_defaults(func=run_kid)
    return p


def run_kid(args: argparse.Namespace) -> int:
    from lungcad.cli import load_backend
    from lungcad.cli.train_gan import load_patches

    if args.subsets < 1 or args.subset_size < 2:
        return _usage(args, f"--subsets >= 1 and --subset-size >= 2 expected. Received {args.subsets}, "
                            f"{args.subset_size}")
    real = load_patches(args.real, flag="REAL")
    fake = load_patches(args.fake, real.shape[1:], flag="FAKE", against=f"those of {args.real}")
    if min(len(real), len(fake)) < 2:
        return _usage(args, f"at least 2 patches in each file expected; received {len(real)} and {len(fake)}")
    if not load_backend("evaluate", debug=args.debug):
        return 1
    from lungcad.config import load_config
    from lungcad.errors import InputError
    from lungcad.metrics.kid import feature_backbone, kernel_inception_distance
    from lungcad.metrics import write_json
    from lungcad.pipeline import load_keras_model

    if args.backbone:
        path = args.backbone
    else:
        config = load_config(args.pipeline)
        path = config.resolve_weights(config.fpr.weights)
    try:
        backbone = feature_backbone(load_keras_model(path))
    except ValueError as e:
        raise InputError(path, str(e)) from e
    if tuple(backbone.input_shape[1:]) != tuple(real.shape[1:]):
        raise InputError(path, f"the backbone takes patches of shape {tuple(backbone.input_shape[1:])}; "
                               f"the files hold {tuple(real.shape[1:])}")
    r = kernel_inception_distance(real, fake, backbone, subsets=args.subsets, subset_size=args.subset_size,
                                  seed=args.seed)
    print(f"KID {r['kid']:.6f} +- {r['kid_std']:.6f} (std over {r['subsets']} subsets of {r['subset_size']}); "
          f"{r['n_real']} real, {r['n_fake']} generated patches of shape {tuple(real.shape[1:])}; "
          f"features: {backbone.name} of {path}")
    if args.json:
        write_json({**r, "inputs": {"real": args.real, "fake": args.fake, "backbone": str(path)}}, args.json)
        print(f"results: {args.json}")
    return 0


def run_family(args: argparse.Namespace) -> int:
    import sys

    from lungcad.errors import InputError
    from lungcad.protocol import format_result, score_family

    if args.bootstrap < 0:
        return _usage(args, f"--bootstrap must be >= 0. Received {args.bootstrap}")
    try:
        r = score_family(args.family, args.out, pipeline=args.pipeline, patients=args.patients, size=args.size,
                         n_bootstrap=args.bootstrap, seed=args.seed,
                         progress=sys.stdout.isatty() and not args.no_progress)
    except ValueError as e:
        raise InputError(None, str(e)) from e
    print(format_result(r))
    print(f"results: {args.out}/results.json")
    return 1 if r["scans"]["failed"] else 0


def _usage(args, message: str) -> int:
    import sys

    print(f"lungcad evaluate {args.evaluate_command}: error: {message}", file=sys.stderr)
    return 2


def run_froc(args: argparse.Namespace) -> int:
    from lungcad.metrics import (format_froc, froc, plot_froc, read_annotations, read_candidates,
                                 read_excluded, read_seriesuids, write_csv, write_json)
    from lungcad.errors import InputError

    if args.bootstrap < 0:
        return _usage(args, f"--bootstrap must be >= 0. Received {args.bootstrap}")
    if args.max_candidates < 0:
        return _usage(args, f"--max-candidates must be >= 0. Received {args.max_candidates}")
    ann = read_annotations(args.annotations)
    cand = read_candidates(args.candidates)
    exc = read_excluded(args.excluded) if args.excluded else None
    uids = read_seriesuids(args.seriesuids) if args.seriesuids else None
    try:
        result = froc(ann, cand, excluded=exc, seriesuids=uids, max_candidates_per_scan=args.max_candidates,
                      n_bootstrap=args.bootstrap, seed=args.seed)
    except ValueError as e:
        raise InputError(None, str(e)) from e
    print(format_froc(result))
    if args.plot:
        plot_froc(result, args.plot)
        print(f"FROC plot: {args.plot}")
    if args.nodules:
        missed = int((~result.nodules["found"]).sum())
        write_csv(result.nodules, args.nodules)
        print(f"nodules: {args.nodules} ({missed} of {len(result.nodules)} not found)")
    if args.json:
        d = result.to_dict()
        d["inputs"] = {"annotations": args.annotations, "candidates": args.candidates,
                       "excluded": args.excluded, "seriesuids": args.seriesuids,
                       "max_candidates_per_scan": args.max_candidates}
        write_json(d, args.json)
        print(f"results: {args.json}")
    return 0


def run_patients(args: argparse.Namespace) -> int:
    from lungcad.metrics import (format_patient_metrics, patient_metrics, plot_calibration,
                                 read_labels, read_predictions, write_json)
    from lungcad.errors import InputError

    if args.bins < 1:
        return _usage(args, f"--bins must be >= 1. Received {args.bins}")
    labels = read_labels(args.labels)
    preds = read_predictions(args.predictions)
    try:
        m = patient_metrics(labels, preds, id_col=args.id_col, label_col=args.label_col,
                            prob_col=args.prob_col, n_bins=args.bins)
    except ValueError as e:
        raise InputError(None, str(e)) from e
    print(format_patient_metrics(m))
    if args.plot:
        plot_calibration(m, args.plot)
        print(f"calibration plot: {args.plot}")
    if args.json:
        write_json({**m, "inputs": {"labels": args.labels, "predictions": args.predictions}}, args.json)
        print(f"results: {args.json}")
    return 0
