"""``lungcad merge OUT1 OUT2 ... -o OUT``: join the output folders of several shards."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub, parents):
    p = sub.add_parser(
        "merge", parents=parents, help="join the output folders of several detect shards",
        description="Copy the per-scan results (scans/*.json, crops, dicom/ and viewers/ files, errors) "
                    "of several `lungcad detect` output folders into one, and rebuild candidates.csv, patients.csv, "
                    "errors.csv, report.html and run.json there. A scan found in several folders "
                    "is taken once; an error superseded by a success in another folder is dropped.")
    p.add_argument("dirs", nargs="+", metavar="OUT", help="output folders of `lungcad detect` shards")
    p.add_argument("-o", "--output", required=True, help="merged output folder (created if missing; "
                                                         "may be one of the inputs)")
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from lungcad.results.merge import merge_outputs

    summary = merge_outputs(args.dirs, args.output)
    counts = summary["counts"]
    for sid in summary["conflicts"]:
        print(f"lungcad merge: warning: scan {sid} differs between folders; kept the first copy",
              file=sys.stderr)
    if not args.quiet:
        print(f"merged {len(args.dirs)} folder(s) into {args.output}: {counts['done']} scan(s) done, "
              f"{counts['failed']} failed, {counts['candidates']} candidate(s) "
              f"({summary['copied_scans']} scan(s) and {summary['copied_errors']} error(s) copied)")
    return 0
