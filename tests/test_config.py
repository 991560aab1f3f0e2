"""Pipeline configuration: TOML <-> dataclasses, overrides, validation."""
from pathlib import Path

import pytest

from lungcad.config import PipelineConfig, load_config
from lungcad.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_default_toml_equals_code_defaults():
    a = PipelineConfig.from_toml(REPO / "pipelines" / "default.toml").to_dict()
    b = PipelineConfig().to_dict()
    a.pop("base_dir"), b.pop("base_dir")
    assert a == b


def test_every_pipeline_file_loads():
    files = sorted((REPO / "pipelines").glob("*.toml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert cfg.morphology.threshold > 0


def test_override_changes_one_field_and_the_hash():
    cfg = PipelineConfig()
    new = cfg.with_overrides({"fpr.batch_size": 4})
    assert new.fpr.batch_size == 4 and cfg.fpr.batch_size == 32
    assert new.hash() != cfg.hash()
    assert new.morphology == cfg.morphology


def test_weights_resolution(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[fpr]\nweights = "models/my_fpr.keras"\n')
    cfg = load_config(toml)
    assert cfg.resolve_weights(cfg.fpr.weights) == tmp_path / "models" / "my_fpr.keras"
    assert cfg.resolve_weights(cfg.candidates.weights).name == "segmenter.keras"


@pytest.mark.parametrize("text,match", [
    ("[fpr]\npatch_size = 'big'\n", "expected an integer"),
    ("[morphology]\nthreshold = true\n", "expected a number"),
    ("[nonsense]\na = 1\n", "unknown pipeline section"),
    ("[fpr]\npatchsize = 3\n", "unknown key 'patchsize'"),
    ("[candidates]\nwindow_hu = [1]\n", "list of 2"),
    ("[fpr\n", "not valid TOML"),
    ("[fpr]\ntta = 3\n", r"tta: expected one of \(1, 2, 4, 8\)"),
    ("[morphology]\nz_overlap = 1.5\n", r"z_overlap: expected a fraction from 0 \(off\) to 1"),
    ("[morphology]\nz_overlap_min_mm = -1.0\n", r"z_overlap_min_mm: expected a width >= 0 in mm"),
    ("[morphology]\nweak_threshold = 1.5\n", r"weak_threshold: expected a level from 0 \(off\) to 1"),
    ("[morphology]\nweak_threshold = -0.1\n", r"weak_threshold: expected a level from 0 \(off\) to 1"),
    ("[morphology]\nsplit_threshold = 2\n", r"split_threshold: expected a level from 0 \(off\) to 1"),
    ("[morphology]\nsplit_min_mm = -3.0\n", r"split_min_mm: expected a width >= 0 in mm"),
    ("[fpr]\nsuppress_within = 1.5\n", r"suppress_within: expected a fraction of the diameter from 0 \(off\) to 1"),
    ("[fpr]\ntta_top = -5\n", r"tta_top: expected a number of candidates >= 0"),
    ("[fpr]\ntta_top = 2.5\n", r"\[fpr\] tta_top: expected an integer"),
    ("[aggregate]\ncalibration = [0.0, 1.0]\n", r"\[aggregate\] calibration: expected a finite scale > 0"),
    ("[aggregate]\ncalibration = [-0.5, 1.0]\n", r"\[aggregate\] calibration: expected a finite scale > 0"),
    ("[aggregate]\ncalibration = [0.5]\n", r"\[aggregate\] calibration: expected a list of 2 numbers"),
])
def test_bad_files_name_the_problem(tmp_path, text, match):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(toml)


def test_aggregate_calibration_reads_as_two_floats(tmp_path):
    toml = tmp_path / "cal.toml"
    toml.write_text("[aggregate]\ncalibration = [0.5, -1]\n")
    cfg = load_config(toml)
    assert cfg.aggregate.calibration == (0.5, -1.0)
    assert cfg.hash() != PipelineConfig().hash()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
