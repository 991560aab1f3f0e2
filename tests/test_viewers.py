"""Files for viewers (issue 22): 3D Slicer markups, NIfTI masks on the input's grid, grand-challenge
points; and how a scan's outputs are chosen (``--outputs``), skipped, noted and written."""
from __future__ import annotations

import gzip
import json
import logging
import struct

import numpy as np
import pytest

from lungcad.errors import OptionError, OutputSkipped
from lungcad.results import kinds
from lungcad.results.folder import safe_id
from lungcad.results.kinds import DEFAULT_OUTPUTS, OUTPUT_KINDS, check_outputs, render_files
from lungcad.results.viewers import SLICER_SCHEMA, render_gc, render_masks, render_slicer, reported_nodules
from reported_results import ODD_DIRECTION, chest, reported_result


@pytest.fixture(scope="module")
def scan():
    vol = chest(direction=ODD_DIRECTION)
    return vol, reported_result(vol)


def one(files: dict[str, bytes], name: str, result) -> bytes:
    key = f"viewers/{safe_id(result.patient_id, result.series_uid)}/{name}"
    assert key in files, sorted(files)
    return files[key]


# ----------------------------------------------------------------------------- the three formats

def test_slicer_markups_are_one_lps_control_point_per_reported_nodule(scan):
    vol, result = scan
    files = render_slicer(vol, result)
    doc = json.loads(one(files, "nodules.mrk.json", result))
    assert doc["@schema"] == SLICER_SCHEMA and len(doc["markups"]) == 1
    m = doc["markups"][0]
    assert m["type"] == "Fiducial" and m["coordinateSystem"] == "LPS" and m["coordinateUnits"] == "mm"
    points = m["controlPoints"]
    assert [p["id"] for p in points] == ["1", "2"]              # the third candidate is not reported
    cands = result.candidates
    for p, (_, row) in zip(points, cands.iloc[:2].iterrows()):
        assert np.allclose(p["position"], row[["coordX", "coordY", "coordZ"]].to_numpy(float), atol=1e-3)
        assert p["positionStatus"] == "defined" and len(p["orientation"]) == 9
    assert points[0]["label"] == "N1 p=0.93 12.1 mm"            # probability and size (mean axis)
    assert "part-solid" in points[1]["description"] and "research only" in points[1]["description"]
    assert m["lastUsedControlPointNumber"] == 2


def test_grand_challenge_multiple_points_are_world_coordinates_and_probabilities(scan):
    vol, result = scan
    doc = json.loads(one(render_gc(vol, result), "nodules.gc.json", result))
    assert doc["type"] == "Multiple points" and doc["version"] == {"major": 1, "minor": 0}
    assert [p["probability"] for p in doc["points"]] == [0.93, 0.71]
    for p, (_, row) in zip(doc["points"], result.candidates.iterrows()):
        assert np.allclose(p["point"], row[["coordX", "coordY", "coordZ"]].to_numpy(float), atol=1e-3)


def _nifti_header(data: bytes) -> dict:
    """The fields of a NIfTI-1 header that place the voxels in the world, read by hand (not by
    the library that wrote it)."""
    raw = gzip.decompress(data)
    assert struct.unpack("<i", raw[:4])[0] == 348 and raw[344:348] == b"n+1\x00"
    dim = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    sform_code = struct.unpack("<h", raw[254:256])[0]
    srow = np.array(struct.unpack("<12f", raw[280:328]), float).reshape(3, 4)
    offset = int(struct.unpack("<f", raw[108:112])[0])
    return {"dim": dim[1:1 + dim[0]], "datatype": datatype, "sform_code": sform_code, "srow": srow,
            "voxels": raw[offset:]}


def test_masks_overlay_the_input_in_world_coordinates(scan):
    vol, result = scan
    files = render_masks(vol, result)
    lung_h = _nifti_header(one(files, "lung.nii.gz", result))
    nod_h = _nifti_header(one(files, "nodules.nii.gz", result))
    for h in (lung_h, nod_h):
        assert h["dim"] == vol.shape[::-1] and h["datatype"] == 2 and h["sform_code"] > 0   # uint8
        # NIfTI's world is RAS: a viewer puts voxel (i, j, k) at srow @ (i, j, k, 1), which must be
        # the LPS position of that voxel with x and y negated
        for k, j, i in [(0, 0, 0), (39, 95, 111), (20, 40, 30)]:
            lps = vol.voxel_to_world(np.array([k, j, i], float))
            ras = h["srow"] @ np.array([i, j, k, 1.0])
            assert np.allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-3), (k, j, i)
    labels = np.frombuffer(nod_h["voxels"], np.uint8).reshape(vol.shape)
    assert np.array_equal(labels, result.nodule_labels)
    lung = np.frombuffer(lung_h["voxels"], np.uint8).reshape(vol.shape)
    assert np.array_equal(lung.astype(bool), result.lung_mask)
    for _, row in reported_nodules(result.candidates).iterrows():
        z, y, x = vol.world_to_voxel(row[["coordX", "coordY", "coordZ"]].to_numpy(float))
        assert labels[int(round(z)), int(round(y)), int(round(x))] == row["nodule_id"]


def test_masks_read_back_with_the_input_geometry_by_simpleitk(scan, tmp_path):
    """As Slicer and grand-challenge read them (ITK)."""
    import SimpleITK as sitk

    vol, result = scan
    path = tmp_path / "nodules.nii.gz"
    path.write_bytes(one(render_masks(vol, result), "nodules.nii.gz", result))
    img = sitk.ReadImage(str(path))
    assert np.allclose(img.GetSpacing(), vol.spacing_xyz) and np.allclose(img.GetOrigin(), vol.origin, atol=1e-4)
    assert np.allclose(np.reshape(img.GetDirection(), (3, 3)), vol.direction, atol=1e-5)
    row = result.candidates.iloc[1]
    idx = img.TransformPhysicalPointToIndex([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
    assert img.GetPixel(idx) == 2


def test_masks_without_a_segmentation_of_the_reported_nodules_are_skipped(scan):
    vol, result = scan
    bare = reported_result(vol)
    bare.nodule_labels = None
    with pytest.raises(OutputSkipped, match="no segmentation"):
        render_masks(vol, bare)
    none = reported_result(vol, n_reported=0)
    none.nodule_labels = None
    labels = _nifti_header(one(render_masks(vol, none), "nodules.nii.gz", none))["voxels"]
    assert not any(labels)
    assert json.loads(one(render_slicer(vol, none), "nodules.mrk.json", none))["markups"][0]["controlPoints"] == []


# ----------------------------------------------------------------------------- choosing the outputs

@pytest.mark.parametrize("value,expected", [
    (None, DEFAULT_OUTPUTS), ("gc,csv", ("csv", "gc")), (" slicer , masks ", ("slicer", "masks")),
    (["json", "json"], ("json",)), (list(OUTPUT_KINDS), OUTPUT_KINDS)])
def test_check_outputs(value, expected):
    assert check_outputs(value) == expected


@pytest.mark.parametrize("value", ["csv,pdf", "", ",", 3, ["csv", 1]])
def test_a_bad_outputs_choice_is_an_option_error_naming_the_keyword(tmp_path, value):
    from lungcad.api import detect

    with pytest.raises(OptionError) as e:
        detect(tmp_path, tmp_path / "out", outputs=value)
    assert e.value.keyword == "outputs" and not (tmp_path / "out").exists()


def test_the_cli_says_a_bad_outputs_choice_with_its_flag(tmp_path, capsys):
    from lungcad.cli import main

    assert main(["detect", str(tmp_path), "-o", str(tmp_path / "out"), "--outputs", "csv,pdf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lungcad detect: error: --outputs must be ") and "unknown: pdf" in err


def test_sr_and_seg_of_an_input_that_is_not_dicom_are_noted_without_a_warning(scan):
    vol, result = scan
    r = reported_result(vol)
    files = render_files(vol, r, OUTPUT_KINDS)
    sid = safe_id(r.patient_id, r.series_uid)
    assert sorted(files) == [f"viewers/{sid}/{n}" for n in
                             ("lung.nii.gz", "nodules.gc.json", "nodules.mrk.json", "nodules.nii.gz")]
    notes = r.meta["outputs"]
    assert notes["sr"].startswith("not written: the input is not DICOM") and notes["seg"] == notes["sr"]
    assert {notes[k] for k in ("slicer", "masks", "gc")} == {"written"}
    assert r.warnings == []


def test_an_output_that_a_dicom_scan_cannot_have_is_one_warning_line(scan, monkeypatch):
    vol, _ = scan
    dicom = chest()
    dicom.meta["format"] = "dicom"
    r = reported_result(dicom)
    called = []

    def no_sr(volume, result):
        called.append("sr")
        raise OutputSkipped("sr", "the source lacks StudyInstanceUID (0020,000D)")

    def seg(volume, result):
        return {f"dicom/{safe_id(result.patient_id, result.series_uid)}/seg.dcm": b"DICM"}

    real = kinds._renderer
    monkeypatch.setattr(kinds, "_renderer", lambda kind: {"sr": no_sr, "seg": seg}.get(kind) or real(kind))
    files = render_files(dicom, r, ("csv", "sr", "seg", "gc"))
    assert called == ["sr"] and len(files) == 2
    assert r.meta["outputs"] == {"sr": "skipped: the source lacks StudyInstanceUID (0020,000D)",
                                 "seg": "written", "gc": "written"}
    assert r.warnings == ["no sr output: the source lacks StudyInstanceUID (0020,000D)"]


def test_an_attribute_that_stops_both_sr_and_seg_is_one_warning_line(monkeypatch):
    dicom = chest()
    dicom.meta["format"] = "dicom"
    r = reported_result(dicom)

    def missing(kind):
        def render(volume, result):
            raise OutputSkipped(kind, "the source lacks FrameOfReferenceUID (0020,0052)")
        return render

    monkeypatch.setattr(kinds, "_renderer", lambda kind: missing(kind))
    assert render_files(dicom, r, ("sr", "seg")) == {}
    assert r.meta["outputs"] == {"sr": "skipped: the source lacks FrameOfReferenceUID (0020,0052)",
                                 "seg": "skipped: the source lacks FrameOfReferenceUID (0020,0052)"}
    assert r.warnings == ["no sr or seg output: the source lacks FrameOfReferenceUID (0020,0052)"]


def test_a_renderer_that_cannot_be_imported_is_skipped_with_the_reason(scan, monkeypatch):
    vol, _ = scan
    r = reported_result(vol)
    monkeypatch.setitem(kinds.RENDERERS, "gc", ("lungcad.results.no_such_module", "render_gc"))
    assert render_files(vol, r, ("gc",)) == {}
    assert r.meta["outputs"]["gc"].startswith("skipped: lungcad.results.no_such_module.render_gc cannot be imported")
    assert len(r.warnings) == 1


# ----------------------------------------------------------------------------- the folder

def test_files_are_written_before_the_json_listed_in_it_and_stale_ones_removed(scan, tmp_path, monkeypatch):
    from lungcad.results import atomic, folder

    vol, result = scan
    out = folder.OutputDir(tmp_path)
    r = reported_result(vol)
    files = render_files(vol, r, ("slicer", "masks", "gc"))
    written = []
    real = atomic.atomic_write_bytes
    monkeypatch.setattr(atomic, "atomic_write_bytes", lambda p, d: (written.append(p.name), real(p, d))[1])
    sid = out.write_scan(r, files={**files, f"dicom/{safe_id(r.patient_id, r.series_uid)}/sr.dcm": b"DICM"})
    assert written[-1] == f"{sid}.json" and len(written) == 6
    listed = json.loads(out.scan_path(sid).read_text())["files"]
    assert listed == sorted(listed) and len(listed) == 5 and all((tmp_path / p).is_file() for p in listed)
    # a rerun of the scan with fewer outputs leaves no file of the first run behind
    out.write_scan(r, files={k: v for k, v in files.items() if k.endswith(".mrk.json")})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
                  and p.parts[-3] in ("viewers", "dicom")) == [f"viewers/{sid}/nodules.mrk.json"]
    assert not (tmp_path / "dicom" / sid).exists()
    for bad in ("../x.json", f"viewers/{sid}/../../x", "viewers/other_id/x.json", f"scans/{sid}/x",
                f"viewers/{sid}/.x"):
        with pytest.raises(ValueError):
            out.write_scan(r, files={bad: b"x"})


def test_finalize_writes_only_the_chosen_tables_and_merge_copies_the_files(scan, tmp_path):
    from lungcad.results.folder import OutputDir
    from lungcad.results.merge import merge_outputs

    vol, _ = scan
    a = OutputDir(tmp_path / "a")
    r = reported_result(vol)
    sid = a.write_scan(r, files=render_files(vol, r, ("slicer", "gc")))
    a.finalize(outputs=OUTPUT_KINDS)
    assert (a.root / "candidates.csv").is_file() and (a.root / "report.html").is_file()
    run = a.finalize(run_info={"outputs": ["json", "slicer", "gc"]}, outputs=("json", "slicer", "gc"))
    assert not (a.root / "candidates.csv").exists() and not (a.root / "patients.csv").exists()
    assert not (a.root / "report.html").exists() and (a.root / "errors.csv").is_file()
    assert run["outputs"] == ["json", "slicer", "gc"] and "viewers/" in run["files"]
    merged = merge_outputs([a.root], tmp_path / "m")
    assert merged["copied_scans"] == 1 and merged["outputs"] == ["json", "slicer", "gc"]
    assert sorted(p.name for p in (tmp_path / "m" / "viewers" / sid).iterdir()) == ["nodules.gc.json",
                                                                                   "nodules.mrk.json"]
    assert (tmp_path / "m" / "viewers" / sid / "nodules.gc.json").read_bytes() == \
        (a.root / "viewers" / sid / "nodules.gc.json").read_bytes()


def test_a_skipped_output_is_a_warning_record_naming_the_scan(scan, tmp_path, caplog):
    from types import SimpleNamespace

    from lungcad.results.folder import OutputDir
    from lungcad.scan_job import ScanJob

    vol, _ = scan
    r = reported_result(vol)
    r.meta["outputs"] = {"sr": "skipped: no StudyInstanceUID", "seg": "not written: the input is not DICOM",
                         "gc": "written"}
    job = ScanJob(SimpleNamespace(patient_id=r.patient_id, series_uid=r.series_uid, path="/in/p22"),
                  outputs=("csv", "json", "sr", "seg", "gc"))
    with caplog.at_level(logging.INFO, logger="lungcad"):
        job.write(OutputDir(tmp_path), r, {}, {})
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings == ["/in/p22: no sr output: no StudyInstanceUID"]
