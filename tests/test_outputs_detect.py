"""``lungcad detect --outputs``, end to end with toy networks (issue 22): the viewer files of a NIfTI
input, SR/SEG noted as not made for it without a warning, a DICOM input whose SR cannot be made
(one warning line, the scan done), resume, a rerun with fewer outputs, and the Ray engine's
``ScanJob`` path.  The measurement stage (part M) is stood in for by :func:`stand_in_for_m`
when the pipeline does not report nodules itself."""
from __future__ import annotations

import json

import numpy as np
import pytest

import lungcad.api as api
from lungcad.errors import OutputSkipped
from lungcad.io.write_volume import write_dicom_series, write_itk
from lungcad.pipeline import Pipeline
from lungcad.results import kinds
from test_pipeline import toy_chest, toy_classifier, toy_segmenter

ALL = "csv,json,html,sr,seg,slicer,masks,gc"


def stand_in_for_m(result, volume, *, min_probability=0.5, max_nodules=10):
    """What the measurement stage adds, where the pipeline has none yet: ``nodule_id`` 1..n for
    the candidates with probability >= 0.5 (descending), a ball of each one's diameter as its
    label, the lung mask left to ScanJob."""
    c = result.candidates
    if "nodule_id" in c:
        return result
    p = c["probability"].to_numpy(float)
    order = [i for i in np.argsort(-p, kind="mergesort") if p[i] >= min_probability][:max_nodules]
    c["nodule_id"] = np.nan
    labels = np.zeros(volume.shape, np.int16)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    sp = np.asarray(volume.spacing)
    for k, i in enumerate(order, start=1):
        c.loc[c.index[i], "nodule_id"] = k
        row = c.iloc[i]
        r = max(float(row["diameter_mm"]) / 2, 2.0)
        labels[((zz - row["z"]) * sp[0]) ** 2 + ((yy - row["y"]) * sp[1]) ** 2 + ((xx - row["x"]) * sp[2]) ** 2
               <= r * r] = k
    result.nodule_labels = labels
    return result


@pytest.fixture
def toy(monkeypatch):
    pipe = Pipeline(segmenter=toy_segmenter, classifier=toy_classifier)
    finish = pipe.finish
    monkeypatch.setattr(pipe, "finish", lambda volume, prep, **kw: stand_in_for_m(finish(volume, prep, **kw), volume))
    monkeypatch.setattr(api, "make_pipeline", lambda pipeline=None, batch_size=None: pipe)
    return pipe


@pytest.fixture(scope="module")
def nifti_input(tmp_path_factory):
    vol, _ = toy_chest()
    root = tmp_path_factory.mktemp("nii")
    write_itk(vol, root / "toy.nii.gz")
    return root


def test_every_output_of_a_nifti_input_then_resume_then_fewer_outputs(tmp_path, toy, nifti_input, caplog):
    import logging

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="lungcad"):
        summary = api.detect(nifti_input, out, outputs=ALL)
    assert summary["done"] == 1 and summary["failed"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]     # not DICOM: nothing is wrong
    (scan_json,) = (out / "scans").glob("*.json")
    d = json.loads(scan_json.read_text())
    sid = d["safe_id"]
    assert d["files"] == [f"viewers/{sid}/{n}" for n in
                          ("lung.nii.gz", "nodules.gc.json", "nodules.mrk.json", "nodules.nii.gz")]
    assert all((out / f).is_file() for f in d["files"])
    notes = d["meta"]["outputs"]
    assert notes["sr"].startswith("not written: the input is not DICOM (format itk)") and notes["seg"] == notes["sr"]
    assert d["warnings"] == [] or not any("output" in w for w in d["warnings"])
    reported = [c for c in d["candidates"] if c.get("nodule_id") is not None]
    assert len(reported) >= 2
    gc = json.loads((out / f"viewers/{sid}/nodules.gc.json").read_text())
    assert len(gc["points"]) == len(reported)
    assert sorted(p.name for p in (out / "crops" / sid).iterdir()) == sorted(
        f"{i}_{v}.png" for i in range(len(reported)) for v in ("axial", "coronal", "sagittal", "overview"))
    html = (out / "report.html").read_text()
    assert f'src="crops/{sid}/0_overview.png"' in html and "Nodule 1" in html
    assert json.loads((out / "run.json").read_text())["outputs"] == ALL.split(",")

    again = api.detect(nifti_input, out, outputs=ALL)
    assert again["skipped"] == 1 and again["done"] == 0

    fewer = api.detect(nifti_input, out, outputs="json,gc", overwrite=True)
    assert fewer["done"] == 1
    d = json.loads(scan_json.read_text())
    assert d["files"] == [f"viewers/{sid}/nodules.gc.json"] and d["crops"] == []
    assert sorted(p.name for p in (out / "viewers" / sid).iterdir()) == ["nodules.gc.json"]
    assert not (out / "crops" / sid).exists()
    assert not (out / "candidates.csv").exists() and not (out / "report.html").exists()
    assert (out / "errors.csv").is_file() and (out / "run.json").is_file()


def test_a_dicom_input_whose_sr_cannot_be_made_is_done_with_one_warning_line(tmp_path, toy, monkeypatch, capsys):
    from lungcad.cli import main

    vol, _ = toy_chest()
    vol.series_uid = "1.2.826.0.1.3680043.10.22.1"
    write_dicom_series(vol, tmp_path / "in" / "TOY")
    real = kinds._renderer

    def no_sr(volume, result):
        assert volume.meta["format"] == "dicom"
        raise OutputSkipped("sr", "the source series has no StudyInstanceUID")

    def seg(volume, result):
        from lungcad.results.folder import safe_id

        return {f"dicom/{safe_id(result.patient_id, result.series_uid)}/seg.dcm": b"\0" * 128 + b"DICM"}

    monkeypatch.setattr(kinds, "_renderer", lambda kind: {"sr": no_sr, "seg": seg}.get(kind) or real(kind))
    code = main(["detect", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress",
                 "--outputs", "sr,seg,gc"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.splitlines() == [f"lungcad detect: warning: {tmp_path / 'in' / 'TOY'}: no sr output: "
                                f"the source series has no StudyInstanceUID"]
    (scan_json,) = (tmp_path / "out" / "scans").glob("*.json")
    d = json.loads(scan_json.read_text())
    assert d["meta"]["outputs"] == {"sr": "skipped: the source series has no StudyInstanceUID",
                                    "seg": "written", "gc": "written"}
    assert "no sr output: the source series has no StudyInstanceUID" in d["warnings"]
    assert [f.split("/")[0] for f in d["files"]] == ["dicom", "viewers"]


def test_the_ray_engines_steps_carry_the_files_as_bytes(toy, nifti_input, tmp_path):
    """What the Ray actor returns (``ScanJob.networks``) pickles with its files and without the
    arrays on the volume grid, and the driver's ``ScanJob.write`` writes it."""
    import pickle

    from lungcad.results.folder import OutputDir
    from lungcad.scan_job import ScanJob
    from lungcad.selection import resolve_inputs

    (series,) = resolve_inputs(nifti_input)
    job = ScanJob(series, outputs=("json", "masks"))
    volume, prep = job.load(toy)
    result, crops, files = pickle.loads(pickle.dumps(job.networks(toy, volume, prep)))
    assert crops == {} and sorted(f.rsplit("/", 1)[1] for f in files) == ["lung.nii.gz", "nodules.nii.gz"]
    assert getattr(result, "nodule_labels", None) is None and getattr(result, "lung_mask", None) is None
    ScanJob(series, outputs=("json", "masks")).write(OutputDir(tmp_path), result, crops, files)
    assert sorted(p.name for p in (tmp_path / "viewers").rglob("*.nii.gz")) == ["lung.nii.gz", "nodules.nii.gz"]
