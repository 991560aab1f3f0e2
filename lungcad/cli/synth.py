"""``lungcad synth OUT --patients N --seed S``: write synthetic chest CT patients.

A thin shell over :func:`lungcad.synthetic.synth_dataset`.  One line per patient written on
stdout; a progress bar when stdout is a terminal.
"""
from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}")
    return value


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "synth", parents=parents, help="write synthetic chest CT patients with known lesions",
        description="Generate synthetic chest CT phantoms (body, ribs, spine, mediastinum, heart, lungs "
                    "with vessel trees and airways, nodules and masses of known position, size, type and "
                    "malignancy) and write them as DICOM series or in the LUNA16 or DSB2017 layout, with "
                    "annotations.csv, lesions.csv and labels.csv.")
    p.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--patients", type=_positive_int, required=True, help="number of patients")
    p.add_argument("--seed", type=int, required=True, help="data-set seed (same seed, same data)")
    p.add_argument("--layout", choices=["dicom", "luna16", "dsb2017"], default="dicom",
                   help="dicom: OUT/<patient>/<series>/*.dcm; luna16: OUT/subsetK/<uid>.mhd; "
                        "dsb2017: OUT/stage1/<patient>/*.dcm (default: dicom)")
    p.add_argument("--size", type=_positive_int, default=512, help="rows and columns per slice (default 512)")
    p.add_argument("--slices", type=_positive_int, default=None,
                   help="slices per scan (default: enough to cover the chest at the slice step)")
    p.add_argument("--slice-mm", type=_positive_float, default=None,
                   help="slice step in mm (default: drawn per patient from 1, 1.25, 2.5, 5, 8)")
    p.add_argument("--compress", choices=["rle", "jpeg2000"], default=None,
                   help="lossless DICOM compression (DICOM layouts only)")
    p.add_argument("--cases", choices=["random", "demo"], default="random",
                   help="random: every patient drawn; demo: cycle through a patient with a mass touching "
                        "the mediastinum, one with small nodules, and a benign one (default: random)")
    p.add_argument("--domain", choices=["default", "randomized", "shifted"], default="default",
                   help="default: the generator as it was (same seed, same volume); randomized: every "
                        "nuisance factor drawn from the ranges of lungcad.synthetic.domain, the held-out "
                        "bands left out (training); shifted: the held-out bands (evaluation only). "
                        "OUT/domain.json records the ranges (default: default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungcad.synthetic import synth_dataset

    def report(info: dict) -> None:
        sz, sy, sx = info["spacing_mm"]
        nz, ny, nx = info["shape"]
        print(f"{info['patient_id']}  {info['seriesuid']}  {nz}x{ny}x{nx}  "
              f"spacing {sz:g}x{sy:.3f}x{sx:.3f} mm  lesions {info['lesions']}  cancer {info['cancer']}  "
              f"{info['path']}", flush=True)

    try:
        lesions = synth_dataset(args.out, patients=args.patients, seed=args.seed, layout=args.layout,
                                size=args.size, slices=args.slices, slice_mm=args.slice_mm,
                                compress=args.compress, cases=args.cases, domain=args.domain,
                                progress=sys.stdout.isatty() and not args.no_progress, on_patient=report)
    except ValueError as e:
        print(f"lungcad synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.patients} patients, {len(lesions)} lesions to {args.out}", flush=True)
    return 0
