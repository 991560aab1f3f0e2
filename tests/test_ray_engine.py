"""`lungcad detect --engine ray` (lungcad.ray_engine) on a local Ray with two CPUs."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray  # the "ray" extra; the "test" extra, which CI installs, pulls it in too

import lungcad.api as api
from lungcad.cli import import_keras, main
import lungcad.ray_engine as ray_engine
from lungcad.config import WEIGHTS_DIR, PipelineConfig
from lungcad.io import write_dicom_series, write_itk
from lungcad.pipeline import Pipeline
from lungcad.engines import Ray
from lungcad.synthetic import generate_phantom
from lungcad.volume import CTVolume
from crashing_segmenter import KillsOnLongScans
from test_cli_detect import small_patient


@pytest.fixture(scope="module")
def local_ray():
    # the workers import tests/crashing_segmenter.py
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    for i in range(2):
        small_patient(root, 100 + i, f"P{i}")
    return root


@pytest.fixture(scope="module")
def keras_loaded():
    import_keras()


def truncated_mhd(folder):
    """A scan that discovery accepts (its header is fine) but that cannot be read: the
    .raw pixel data is cut short, so it fails inside a Ray read task."""
    v = CTVolume(np.zeros((10, 64, 64), np.int16), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0),
                 patient_id="BAD", series_uid="1.2.826.0.1.3680043.99.666")
    mhd = write_itk(v, folder / "bad.mhd")
    raw = folder / "bad.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    return mhd


def test_ray_outputs_equal_the_serial_engine(tmp_path, scans, local_ray, keras_loaded, monkeypatch):
    # weights of one's own, which the workers get from the driver: they are deleted as soon as
    # the driver has read them, before any actor starts
    own = tmp_path / "own"
    own.mkdir()
    for name in ("segmenter.keras", "fpr.keras"):
        shutil.copy(WEIGHTS_DIR / name, own / name)
    toml = tmp_path / "own.toml"
    toml.write_text('[candidates]\nweights = "own/segmenter.keras"\n[fpr]\nweights = "own/fpr.keras"\n')
    serial, par = tmp_path / "serial", tmp_path / "ray"
    s1 = api.detect(scans, serial, pipeline=toml)
    read = ray_engine.weight_files

    def read_then_delete(config, **kw):
        files = read(config, **kw)
        assert sorted(files) == ["classifier", "segmenter"]
        shutil.rmtree(own)
        return files

    monkeypatch.setattr(ray_engine, "weight_files", read_then_delete)
    s2 = api.detect(scans, par, engine=Ray(actors=1), pipeline=toml)
    assert not own.exists()
    assert (s1["done"], s1["failed"]) == (s2["done"], s2["failed"]) == (2, 0)
    c1, c2 = pd.read_csv(serial / "candidates.csv"), pd.read_csv(par / "candidates.csv")
    assert len(c1) > 0
    pd.testing.assert_frame_equal(c1, c2, check_exact=False, rtol=1e-5, atol=1e-6)
    p1, p2 = pd.read_csv(serial / "patients.csv"), pd.read_csv(par / "patients.csv")
    pd.testing.assert_frame_equal(p1, p2, check_exact=False, rtol=1e-5, atol=1e-6)
    assert sorted(p2["patient_id"]) == ["P0", "P1"]
    names = lambda d, pat: sorted(p.relative_to(d).as_posix() for p in d.glob(pat))  # noqa: E731
    assert names(serial, "scans/*.json") == names(par, "scans/*.json") and len(names(par, "scans/*.json")) == 2
    assert names(serial, "crops/**/*.png") == names(par, "crops/**/*.png") != []
    assert pd.read_csv(par / "errors.csv").empty
    assert (par / "report.html").is_file()
    run = json.loads((par / "run.json").read_text())
    assert run["engine"]["name"] == "ray" and run["counts"]["done"] == 2
    (node,) = run["engine"]["nodes"]                    # which node did what: here, the one local node
    assert (node["scans_read"], node["scans_networks"]) == (2, 2) and node["node_id"]
    assert not list(par.rglob("*.tmp*"))
    # resume: a second run finds both scans done and starts no Ray work
    s3 = api.detect(scans, par, engine=Ray(), pipeline=toml)
    assert (s3["done"], s3["skipped"], s3["failed"]) == (0, 2, 0)


def test_a_bad_scan_is_one_error_row_the_rest_is_done_and_the_exit_code_says_so(tmp_path, scans, local_ray,
                                                                               keras_loaded, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(scans / "P0", mixed / "good")
    (mixed / "bad").mkdir(parents=True)
    bad = truncated_mhd(mixed / "bad")
    out = tmp_path / "out"
    code = main(["detect", str(mixed), "-o", str(out), "--engine", "ray", "--ray-actors", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    errs = pd.read_csv(out / "errors.csv")
    assert len(errs) == 1
    assert errs.loc[0, "path"] == str(bad) and errs.loc[0, "stage"] == "io"
    assert "needs 81920 bytes of MET_SHORT but bad.raw holds 1000" in errs.loc[0, "message"]   # a truncated .raw
    error_lines = [ln for ln in err.splitlines() if "lungcad detect: error:" in ln]
    assert len(error_lines) == 1 and str(bad) in error_lines[0]
    assert list(pd.read_csv(out / "patients.csv")["patient_id"]) == ["P0"]
    run = json.loads((out / "run.json").read_text())
    assert run["this_run"]["done"] == 1 and run["this_run"]["failed"] == 1


def test_a_scan_that_kills_its_actor_is_retried_a_bounded_number_of_times_then_gets_an_error_row(
        tmp_path, scans, local_ray, keras_loaded):
    root = tmp_path / "in"
    shutil.copytree(scans / "P0", root / "P0")                   # 40 slices
    long = generate_phantom(seed=107, shape=(72, 128, 128))      # its lung box has more than 41
    long.volume.patient_id, long.volume.series_uid = "LONG", "1.2.826.0.1.3680043.99.107"
    write_dicom_series(long.volume, root / "LONG" / "ct", seed=107)
    deaths = tmp_path / "deaths.txt"
    # one U-Net batch holds a chunk of the lung box, so the segmenter sees the box's length
    cfg = PipelineConfig().with_overrides({"candidates.batch_size": 128})
    pipe = Pipeline(cfg, segmenter=KillsOnLongScans(41, deaths))
    out = tmp_path / "out"
    s = api.detect(root, out, pipeline=pipe, engine=Ray(actors=1, retries=1))
    assert (s["done"], s["failed"]) == (1, 1)
    assert len(deaths.read_text().splitlines()) == 2                  # the first try and one retry
    errs = pd.read_csv(out / "errors.csv")
    assert len(errs) == 1 and "LONG" in errs.loc[0, "path"]
    assert "the Ray worker running this scan died 2 time(s)" in errs.loc[0, "message"]
    assert list(pd.read_csv(out / "patients.csv")["patient_id"]) == ["P0"]
    with pytest.raises(api.OptionError, match="retries must be an integer >= 0. Received -1"):
        api.detect(root, tmp_path / "o2", engine=Ray(retries=-1))
    assert not (tmp_path / "o2").exists()


def test_engine_ray_without_ray_installed_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)        # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(["detect", str(tmp_path), "-o", str(tmp_path / "out"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "pip install 'lungcad[ray]'" in lines[0] and lines[0].startswith("lungcad detect: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--ray-actors", "0"), ("--ray-retries", "-1"),
                                        ("--ray-gpus-per-actor", "-0.5")])
def test_bad_ray_flags_are_one_clear_line(tmp_path, capsys, flag, value):
    code = main(["detect", str(tmp_path), "-o", str(tmp_path / "out"), "--engine", "ray", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lungcad detect: error:") and flag in lines[0]
    assert not (tmp_path / "out").exists()


def test_weight_files_ship_only_what_the_workers_lack(tmp_path):
    shutil.copy(WEIGHTS_DIR / "fpr.keras", tmp_path / "mine.keras")
    cfg = PipelineConfig().with_overrides({"fpr.weights": str(tmp_path / "mine.keras")})
    files = ray_engine.weight_files(cfg)
    assert list(files) == ["classifier"]                        # the builtin segmenter is everywhere
    assert files["classifier"] == ("mine.keras", (WEIGHTS_DIR / "fpr.keras").read_bytes())
    assert ray_engine.weight_files(cfg, skip=["classifier"]) == {}
    assert ray_engine.weight_files(PipelineConfig()) == {}
    (tmp_path / "mine.keras").unlink()
    with pytest.raises(api.LungcadError, match="mine.keras: cannot read the classifier weights"):
        ray_engine.weight_files(cfg)
