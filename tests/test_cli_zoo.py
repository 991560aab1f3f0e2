"""lungcad.cli.zoo: ``lungcad zoo list`` and ``lungcad zoo summary`` (as a subprocess and in-process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungcad.cli import main

REPO = Path(__file__).resolve().parents[1]


def _lungcad(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "lungcad", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_zoo_list_prints_the_registry():
    from lungcad.models import list_models

    result = _lungcad("zoo", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "FAMILY", "DIMS", "INPUT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == list_models()
    assert rows["resnet50"][1:4] == ["resnet", "2D", "224,224,3"]
    assert rows["wrn3d"][1:4] == ["wideresnet", "3D", "32,32,32,1"]
    assert rows["unet2d"][1:4] == ["unet", "2D", "none,none,1"]


def test_zoo_summary_prints_layers_and_parameter_count():
    result = _lungcad("zoo", "summary", "lenet5", "--input-shape", "32,32,1", "--classes", "10")
    assert result.returncode == 0, result.stderr
    assert "c5 (Conv2D)" in result.stdout and "f6 (Dense)" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == \
        "lenet5: 61,706 parameters (61,706 trainable, 0 non-trainable), input 32,32,1"


def test_zoo_summary_of_a_backbone_with_family_options(capsys):
    code = main(["zoo", "summary", "wrn3d", "--input-shape", "32,32,32,1", "--no-top", "--pooling", "avg",
                 "--option", "depth=10", "--option", "width=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "final_relu" in out
    # WRN-10-2 in 3D without the classifier; 928 = batch-norm moving statistics of 464 channels
    assert out.rstrip().splitlines()[-1] == \
        "wrn3d: 883,952 parameters (883,024 trainable, 928 non-trainable), input 32,32,32,1"


@pytest.mark.parametrize("argv, message", [
    (["zoo", "summary", "resnet51"], "unknown model; expected one of ["),
    (["zoo", "summary", "vgg16", "--input-shape", "16,16,3"],
     "vgg16: input too small; expected every spatial size >= 32, received input_shape=(16, 16, 3)"),
    (["zoo", "summary", "resnet18", "--option", "width=3"], "unknown keyword"),
])
def test_zoo_summary_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lungcad zoo: error: ") and message in err


def test_zoo_bad_input_shape_syntax_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "summary", "vgg16", "--input-shape", "224x224x3"])
    assert exit_info.value.code == 2
    assert "expected comma-separated integers" in capsys.readouterr().err
