"""The README is the manual: short, generated where it can drift, and true to the CLI."""
import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from lungcad import config
from lungcad.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
MAX_README_LINES = 400


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_config_table", REPO / "docs" / "gen_config_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positional_choices(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            return set(action.choices) if action.choices else None
    return None


def test_readme_is_under_400_lines():
    n = len(README.splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; history goes to docs/results.md and CHANGELOG.md"


def test_config_table_is_the_generated_one():
    _, table, _ = _gen_module().split_readme(README)
    assert table.strip() == config.markdown_table().strip(), \
        "README.md's configuration table is out of date: run python docs/gen_config_table.py"


def test_every_config_field_has_a_docstring():
    docs = config.field_docs()
    default = config.PipelineConfig()
    missing = [f"[{sec.name}] {f.name}"
               for sec in dataclasses.fields(config.PipelineConfig) if sec.name not in ("name", "base_dir")
               for f in dataclasses.fields(getattr(default, sec.name))
               if not docs.get(type(getattr(default, sec.name)).__name__, {}).get(f.name)]
    assert not missing, f"fields without a docstring in lungcad/config.py: {missing}"


def test_config_table_lists_every_key_with_its_default():
    table = config.markdown_table()
    d = config.PipelineConfig().to_dict()
    d.pop("base_dir")
    for section, values in d.items():
        if not isinstance(values, dict):
            assert f"| `{section}` |" in table
            continue
        for key, value in values.items():
            row = next((r for r in table.splitlines() if r.startswith(f"| `[{section}] {key}` |")), None)
            assert row is not None, f"[{section}] {key} is not in the table"
            cell = row.split(" | ")[1].strip("`")
            shown = {"true": True, "false": False}.get(cell, cell)
            if isinstance(value, list):
                assert [float(v) for v in cell.strip("[]").split(",")] == value, row
            elif isinstance(value, str):
                assert cell == f'"{value}"', row
            else:
                assert type(value)(shown) == value, row


def test_gen_config_table_check_passes():
    assert _gen_module().main(["--check"]) == 0


def test_readme_commands_in_tables_exist():
    parser = build_parser()
    commands = _subparsers(parser)
    seen = 0
    for row in _table_rows(README):
        for cmd, arg in re.findall(r"`lungcad ([a-z][a-z-]*)(?: ([A-Za-z][\w-]*))?", row):
            seen += 1
            assert cmd in commands, f"`lungcad {cmd}` in the README is not a command of `lungcad --help`: {row}"
            sub = commands[cmd]
            subs = _subparsers(sub)
            if subs and arg:
                assert arg in subs, f"`lungcad {cmd} {arg}` is not a command of `lungcad {cmd} --help`"
            choices = None if subs else _positional_choices(sub)
            if choices and arg and arg.islower():
                assert arg in choices, f"`lungcad {cmd} {arg}`: expected one of {sorted(choices)}"
    assert seen >= 5


def test_detect_options_table_matches_the_parser():
    detect = _subparsers(build_parser())["detect"]
    flags = {s for a in detect._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    header = next(i for i, line in enumerate(README.splitlines()) if line.startswith("| option of `lungcad detect`"))
    rows = []
    for line in README.splitlines()[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    documented = {f for r in rows for f in re.findall(r"(--[a-z][a-z-]*)", r.split(" | ")[0])}
    assert documented == flags, (f"detect options missing from the README table: {sorted(flags - documented)}; "
                                 f"in the table but not in the CLI: {sorted(documented - flags)}")


def test_readme_links_to_docs_exist():
    links = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", README)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"
    for path in re.findall(r"`(docs/[\w./-]+\.(?:md|py))`", README):
        assert (REPO / path).is_file(), f"README names {path}, which does not exist"


def test_readme_names_no_issue_number():
    bad = [line for line in README.splitlines() if re.search(r"\bissues? #?\d+|#\d+\b", line, re.IGNORECASE)]
    assert not bad, f"README lines that reference an issue number: {bad}"


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in ci if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 1, ".ci/run should run one install-and-test command line"
    command = commands[0]
    assert f"\n{command}\n" in README, "the README's test command and .ci/run differ: keep them equal"


def test_readme_main_command_runs_detect_on_the_sample_data():
    line = ("python3 -m venv .venv && .venv/bin/pip install -e . && "
            ".venv/bin/lungcad detect sample_data/ -o out/")
    assert f"\n{line}\n" in README
    assert (REPO / "sample_data").is_dir()


@pytest.mark.parametrize("doc", ["docs/architecture.md", "docs/results.md", "CHANGELOG.md"])
def test_docs_exist_and_have_a_title(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    assert text.startswith("# ")


def test_no_docstring_cites_design_md():
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "lungcad").rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "DESIGN.md" in line]
    assert not hits, f"DESIGN.md is not in the repository; cite docs/architecture.md: {hits}"
