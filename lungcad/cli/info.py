"""``lungcad info PATH [--json]``: list the scans found under PATH with their geometry.

One line per series (or a JSON list with ``--json``) on stdout.  Each problem found on the way
(an unreadable file, or a series that cannot be loaded: missing slices, gantry tilt, ...) is
also one line on stderr, and then the exit code is 1; so is a PATH where no scan is found.
A series that is not CT is listed with its modality and is not a problem.  Text from headers
and file names is printed with its control characters escaped; library warnings are shown
with ``--debug`` only.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import traceback

from lungcad.errors import LungcadError


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "info", parents=parents, help="list the CT series under a folder, with their geometry",
        description="Walk PATH (a folder tree, a DICOM file, or a .mhd/.mha/.nii/.nii.gz file) "
                    "and list every series found: patient, series UID, description, modality, "
                    "slices, shape (z, y, x), spacing in mm, kernel. The series that "
                    "`lungcad detect` would pick for each patient is marked with '*'.")
    p.add_argument("path", metavar="PATH", help="folder or file to inspect")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.set_defaults(func=run)


def _fmt_spacing(spacing) -> str:
    return "x".join("?" if math.isnan(s) else f"{s:.4g}" for s in spacing)


def run(args: argparse.Namespace) -> int:
    from lungcad.scan_job import captured_warnings, one_line, unexpected_message
    from lungcad.io import choose_series, discover

    errors: list = []
    caught: list = []
    with captured_warnings(caught):
        try:
            series = discover(args.path, errors=errors)
            chosen = {id(s) for s in choose_series(series).values()}
        except LungcadError:
            raise
        except Exception as e:  # noqa: BLE001  a bug while reading: one line (the traceback with --debug)
            if args.debug:
                traceback.print_exc()
            print(one_line(f"lungcad info: error: {args.path}: {unexpected_message(e, 'io')}"), file=sys.stderr)
            return 1
    if args.debug:
        for w in caught:
            print(one_line(f"lungcad info: warning: {w}"), file=sys.stderr)
    if args.json:
        rows = []
        for s in series:
            d = s.to_dict()
            d.pop("files")
            d["n_files"] = len(s.files)
            d["default_choice"] = id(s) in chosen
            rows.append(d)
        print(json.dumps(rows, indent=2))
    else:
        for s in series:
            mark = "*" if id(s) in chosen else " "
            line = (f"{mark} {s.patient_id}  {s.series_uid}  "
                    f"\"{s.series_description}\"  {s.modality}  {s.n_slices} slices  "
                    f"shape {s.shape[0]}x{s.shape[1]}x{s.shape[2]}  "
                    f"spacing {_fmt_spacing(s.spacing)} mm  kernel {s.kernel or '-'}  "
                    f"{s.format}  {s.path}")
            if s.problem:
                line += f"  PROBLEM: {s.problem}"
            print(one_line(line))
    problems = list(errors) + [(s.path, s.problem) for s in series if s.problem]
    for path, message in problems:
        print(one_line(f"lungcad info: error: {path}: {message}"), file=sys.stderr)
    if not series and not problems:
        print(one_line(f"lungcad info: error: {args.path}: no scans found (no DICOM series, .mhd/.mha or "
                       f".nii/.nii.gz file)"), file=sys.stderr)
        return 1
    return 1 if problems else 0
