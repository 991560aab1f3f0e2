"""``lungcad calibrate --labels L OUT [OUT ...]``: fit ``[aggregate] calibration`` to labelled patients."""
from __future__ import annotations

import argparse


def add_parser(sub, parents):
    p = sub.add_parser(
        "calibrate", parents=parents, help="fit the patient cancer probability's calibration to labels",
        description="Read the scan results of `lungcad detect` output folders, recompute each patient's "
                    "cancer probability without calibration, fit the two numbers of [aggregate] "
                    "calibration (a logistic recalibration, Platt scaling: it keeps the order of the "
                    "patients and so the ROC AUC) to the labels, report the log-loss before and after, "
                    "and print the pipeline TOML lines that use it. Fit on patients of their own: "
                    "judged on the patients it was fitted on, a calibration looks better than it is.")
    p.add_argument("dirs", nargs="+", metavar="OUT", help="output folders of `lungcad detect`")
    p.add_argument("--labels", required=True, help="labels CSV: id,cancer or patient_id,cancer")
    p.add_argument("--id-col", help="patient id column of the labels (default: patient_id or id)")
    p.add_argument("--label-col", help="label column (default: cancer or label)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="recompute the noisy-OR over the top K candidates instead of the runs' [aggregate] top_k")
    p.add_argument("--p-leak", type=float, metavar="P",
                   help="recompute the noisy-OR with this leak instead of the runs' [aggregate] p_leak")
    p.add_argument("--plot", help="write the calibration plot of the fitted probabilities to this PNG")
    p.add_argument("--json", help="write the fit, its figures and each patient's probabilities to this JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from lungcad.calibration import fit_results, format_fit
    from lungcad.metrics import patient_metrics, plot_calibration, read_labels, write_json

    import sys

    if args.top_k is not None and args.top_k < 0:
        print(f"lungcad calibrate: error: --top-k must be >= 0. Received {args.top_k}", file=sys.stderr)
        return 2
    if args.p_leak is not None and not 0.0 <= args.p_leak <= 1.0:
        print(f"lungcad calibrate: error: --p-leak must be in [0, 1]. Received {args.p_leak}", file=sys.stderr)
        return 2
    labels = read_labels(args.labels)
    fit = fit_results(labels, args.dirs, id_col=args.id_col, label_col=args.label_col,
                      top_k=args.top_k, p_leak=args.p_leak)
    print(format_fit(fit))
    if args.plot:
        pts = pd.DataFrame(fit["patients"])
        m = patient_metrics(pts.rename(columns={"cancer": "label"})[["patient_id", "label"]],
                            pts.rename(columns={"calibrated": "probability"})[["patient_id", "probability"]])
        plot_calibration(m, args.plot, title=f"Fitted calibration: n={m['n']}, log-loss {m['log_loss']:.3f}")
        print(f"calibration plot: {args.plot}")
    if args.json:
        write_json({**fit, "calibration": list(fit["calibration"]),
                    "inputs": {"labels": args.labels, "results": list(args.dirs)}}, args.json)
        print(f"results: {args.json}")
    return 0
