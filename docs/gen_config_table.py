"""Write the README's configuration table from lungcad/config.py.

    python docs/gen_config_table.py          # rewrite the table in README.md
    python docs/gen_config_table.py --check  # exit 1 if README.md's table is out of date

The table lies between the two marker comments ``<!-- config-table:start -->`` and
``<!-- config-table:end -->``.  Its rows come from :func:`lungcad.config.markdown_table`:
the dataclass defaults and the docstring under each field, the one place a field is
described.  tests/test_docs.py fails when the README's table differs from it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


def split_readme(text: str) -> tuple[str, str, str]:
    """``(before, table, after)``: the README around and between the markers (markers in
    ``before`` and ``after``).  Raises ValueError when the markers are missing or out of order."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"README.md must hold {START} and then {END} around the configuration table")
    i += len(START)
    return text[:i], text[i:j], text[j:]


def render(text: str) -> str:
    """``text`` (the README) with the table between the markers regenerated."""
    from lungcad.config import markdown_table

    before, _, after = split_readme(text)
    return before + "\n" + markdown_table() + after


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if the table is out of date")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md: the configuration table is out of date; run python docs/gen_config_table.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
