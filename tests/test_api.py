"""The public API: where users import it from, detect's options checked once and by keyword,
logging through the ``lungcad`` logger, and the size rule of the package's modules."""
import logging
from pathlib import Path

import pytest

import lungcad
from lungcad.errors import OptionError

PACKAGE = Path(lungcad.__file__).parent


def test_the_public_api_is_where_users_import_it_from():
    from lungcad.api import Ray, Serial, detect
    from lungcad.cli import COMMANDS, build_parser
    from lungcad.io import discover, load_ct
    from lungcad.models import build_model
    from lungcad.pipeline import Pipeline

    for f in (detect, discover, load_ct, build_model):
        assert callable(f)
    assert Pipeline().config is not None
    assert Serial() == Serial() and Ray(actors=2).actors == 2
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    assert {"info", "detect", "synth", "train", "evaluate", "zoo", "merge", "calibrate"} <= set(COMMANDS)


@pytest.mark.parametrize("kwargs,keyword", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"num_shards": 0}, "num_shards"),
    ({"num_shards": 2, "shard_index": 2}, "shard_index"),
    ({"shard_index": -1}, "shard_index"),
    ({"shard_index": True}, "shard_index"),
    ({"series_uids": "1.2.3"}, "series_uids"),
    ({"series_uids": [""]}, "series_uids"),
    ({"all_series": "yes"}, "all_series"),
    ({"overwrite": 1}, "overwrite"),
    ({"progress": None}, "progress"),
    ({"engine": "ray"}, "engine"),
    ({"pipeline": 3}, "pipeline"),
])
def test_detect_refuses_a_bad_option_by_its_keyword_before_writing_anything(tmp_path, kwargs, keyword):
    from lungcad.api import detect

    out = tmp_path / "out"
    with pytest.raises(OptionError) as e:
        detect(tmp_path, out, **kwargs)
    assert e.value.keyword == keyword and str(e.value).startswith(f"{keyword} must be ")
    assert isinstance(e.value, ValueError)
    assert not out.exists()


@pytest.mark.parametrize("kwargs,keyword", [
    ({"actors": 0}, "actors"), ({"actors": 1.5}, "actors"), ({"gpus": -0.5}, "gpus"),
    ({"gpus": float("nan")}, "gpus"), ({"retries": -1}, "retries"), ({"num_cpus": 0}, "num_cpus"),
    ({"address": ""}, "address"),
])
def test_the_ray_engine_checks_its_options_when_it_is_made(kwargs, keyword):
    from lungcad.engines import Ray

    with pytest.raises(OptionError) as e:
        Ray(**kwargs)
    assert e.value.keyword == keyword


def test_input_and_output_paths_must_be_paths(tmp_path):
    from lungcad.api import detect

    with pytest.raises(OptionError, match="input_path must be"):
        detect(None, tmp_path / "o")
    with pytest.raises(OptionError, match="output_dir must be"):
        detect(tmp_path, 7)


def test_the_library_logs_through_the_lungcad_logger_and_prints_nothing(tmp_path, caplog, capsys):
    from lungcad.api import detect

    missing = tmp_path / "no-such-folder"
    with caplog.at_level(logging.INFO, logger="lungcad"):
        summary = detect(missing, tmp_path / "out")
    assert summary["failed"] == 1 and summary["done"] == 0
    records = [r for r in caplog.records if r.name == "lungcad"]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(missing) in errors[0].getMessage()
    assert "no such file or folder" in errors[0].getMessage()
    assert not errors[0].getMessage().startswith("lungcad detect")     # the CLI adds its prefix
    assert any(r.levelno == logging.INFO and "0 done, 1 failed" in r.getMessage() for r in records)
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "out" / "errors.csv").is_file()


def test_the_cli_shows_the_records_as_its_lines(tmp_path, capsys):
    from lungcad.cli import main

    missing = tmp_path / "no-such-folder"
    code = main(["detect", str(missing), "-o", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines() == [f"lungcad detect: error: {missing}: no such file or folder"]
    assert "0 done, 1 failed, 0 skipped" in out
    code = main(["detect", str(missing), "-o", str(tmp_path / "out2"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert not logging.getLogger("lungcad").handlers        # main() takes its handler away again


@pytest.mark.parametrize("argv,flag", [
    (["--batch-size", "0"], "--batch-size"), (["--num-shards", "2", "--shard-index", "5"], "--shard-index"),
    (["--engine", "ray", "--ray-actors", "0"], "--ray-actors"),
])
def test_the_cli_says_an_option_error_with_its_flag(tmp_path, capsys, argv, flag):
    from lungcad.cli import main

    code = main(["detect", str(tmp_path), "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"lungcad detect: error: {flag} must be ")
    assert not (tmp_path / "out").exists()


def test_no_module_of_the_package_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"modules over 500 lines (split them by what they do): {long}"
