"""DICOM SR (TID 1500) and DICOM SEG of a scan (issue 22), on phantoms written as DICOM: what the
reader keeps of the source, dciodvfy and dsrdump on each object, highdicom reading them back
(SR points and SEG centroids within 0.5 mm of the candidate table), the references to the
source, and the inputs that get no SR or SEG.  The ScanResults are made by hand
(tests/dicom_checks.py), so these tests need no network."""
from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest

from dicom_checks import check_outputs, dciodvfy_errors, dsrdump, hand_result, seg_centroids, \
    sr_points, write_outputs
from lungcad.errors import OutputSkipped
from lungcad.io import load_ct, write_dicom_multiframe, write_dicom_series, write_itk
from lungcad.io.dicom_source import DicomSource
from lungcad.pipeline import _is_plain
from lungcad.results.dicom_seg import NEAREST_PLANE_NOTE, render_seg
from lungcad.results.dicom_sr import render_sr
from lungcad.results.folder import safe_id
from lungcad.volume import CTVolume

SPACING = (2.5, 0.8, 0.8)
ORIGIN = (-30.0, -40.0, -120.0)


def phantom(nz=28, ny=80, nx=96, patient_id="PH-1") -> CTVolume:
    """Air, a body, two lungs, two nodules of +40 HU."""
    z, y, x = np.indices((nz, ny, nx))
    hu = np.full((nz, ny, nx), -1000, np.int16)
    hu[((y - ny / 2) / (0.45 * ny)) ** 2 + ((x - nx / 2) / (0.48 * nx)) ** 2 < 1] = 30
    for cx in (0.3 * nx, 0.7 * nx):
        hu[((y - ny / 2) / (0.3 * ny)) ** 2 + ((x - cx) / (0.15 * nx)) ** 2 < 1] = -850
    return CTVolume(hu=hu, spacing=SPACING, origin=ORIGIN, patient_id=patient_id)


CENTRES = [(-30 + 28 * 0.8 + 0.3, -40 + 40 * 0.8 - 0.2, -120 + 12 * 2.5 + 0.7),
           (-30 + 66 * 0.8, -40 + 36 * 0.8, -120 + 17 * 2.5 - 0.4)]
RADII = [4.0, 3.0]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    files = write_dicom_series(phantom(), folder, seed=3, reverse_instance_numbers=True,
                               patient_name="Doe^Jane")
    return folder, files


def test_the_reader_keeps_what_sr_and_seg_need(series):
    folder, files = series
    vol = load_ct(folder)
    src = vol.meta["dicom"]
    assert isinstance(src, DicomSource) and not src.resampled
    by_z = sorted((float(d.ImagePositionPatient[2]), d) for d in
                  (pydicom.dcmread(f, stop_before_pixels=True) for f in files))
    assert [im.sop_instance_uid for im in src.images] == [d.SOPInstanceUID for _, d in by_z]
    assert [im.z_mm for im in src.images] == pytest.approx([z for z, _ in by_z])
    first = by_z[0][1]
    assert {im.sop_class_uid for im in src.images} == {first.SOPClassUID}
    for name in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID",
                 "StudyDate", "StudyTime", "StudyID", "Manufacturer", "SeriesInstanceUID"):
        assert src.attributes[name] == str(first.get(name)), name
    assert "AccessionNumber" not in src.attributes   # empty in the files: type 2, left empty
    # the per-slice lists stay out of the scan's JSON (Pipeline.finish copies plain values)
    assert not _is_plain(src)
    assert "dicom" not in {k for k, v in vol.meta.items() if _is_plain(v)}


def test_sr_and_seg_of_a_phantom_pass_the_checkers_and_read_back(series, tmp_path):
    folder, files = series
    vol = load_ct(folder)
    result = hand_result(vol, CENTRES, RADII)
    out = {**render_sr(vol, result), **render_seg(vol, result)}
    sid = safe_id(result.patient_id, result.series_uid)
    assert sorted(out) == [f"dicom/{sid}/seg.dcm", f"dicom/{sid}/sr.dcm"]
    paths = write_outputs(out, tmp_path)
    check_outputs(vol, result, paths)
    # the algorithm is identified: name, version, the weights' sha256
    text = dsrdump(paths["sr.dcm"])
    from lungcad.results.dicom_common import weights_sha256

    shas = weights_sha256(result)
    assert set(shas) == {"segmenter", "fpr"} and all(len(s) == 64 for s in shas.values())
    sr = pydicom.dcmread(paths["sr.dcm"])
    params = [i.TextValue for i in _walk(sr) if i.get("ValueType") == "TEXT"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert any(shas["fpr"] in p for p in params) and any(shas["segmenter"] in p for p in params)
    assert '"Algorithm Name")="lungcad"' in text and "Patient cancer probability" in text
    # each SEG frame references the source image at its own position
    seg = pydicom.dcmread(paths["seg.dcm"])
    src = {im.sop_instance_uid: im.position_xyz for im in vol.meta["dicom"].images}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx(src[ref], abs=1e-3)
    assert seg.PatientName == "Doe^Jane" and seg.SegmentSequence[0].SegmentLabel == "Lungs"


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_rotated_flipped_series(tmp_path):
    """Rows and columns turned 30 degrees about z, and mirrored so that the slice normal
    (row x column) points to the feet: the planes run against the files' z.  A writer that
    mixed up the axes or the order of the source slices would not pass."""
    c, s_ = np.cos(np.pi / 6), np.sin(np.pi / 6)
    direction = np.array([[-c, -s_, 0.0], [-s_, c, 0.0], [0.0, 0.0, 1.0]])
    vol0 = phantom(nz=24)
    vol0 = CTVolume(hu=vol0.hu, spacing=SPACING, origin=(20.0, -70.0, -120.0),
                    direction=direction, patient_id="ROT")
    write_dicom_series(vol0, tmp_path / "in", seed=9, reverse_instance_numbers=True)
    vol = load_ct(tmp_path / "in")
    np.testing.assert_allclose(vol.direction[:, :2], direction[:, :2], atol=1e-6)
    assert vol.direction[2, 2] == pytest.approx(-1)   # row x column points to the feet
    centres = [vol.voxel_to_world(np.array([9.3, 38.2, 30.6])),
               vol.voxel_to_world(np.array([15.0, 42.0, 66.4]))]
    result = hand_result(vol, centres, RADII)
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path / "out")
    check_outputs(vol, result, paths)


def test_zero_reported_nodules_give_a_report_and_the_lung_segment(series, tmp_path):
    folder, _ = series
    vol = load_ct(folder)
    result = hand_result(vol, [], [])
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path)
    for p in paths.values():
        assert dciodvfy_errors(p) == []
    assert "Patient cancer probability" in dsrdump(paths["sr.dcm"])
    assert sr_points(paths["sr.dcm"]) == {}
    cents, seg = seg_centroids(paths["seg.dcm"])
    assert list(cents) == ["Lungs"] and len(seg.SegmentSequence) == 1
    expect = vol.voxel_to_world(np.argwhere(result.lung_mask).astype(float)).mean(axis=0)
    assert np.linalg.norm(cents["Lungs"] - expect) < 0.5


def test_uneven_gaps_source_slices_take_the_nearest_plane(tmp_path):
    vol0 = phantom(nz=20)
    files = write_dicom_series(vol0, tmp_path / "in", seed=5)
    moved = files[9]
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.9
    ds.save_as(moved)
    vol = load_ct(tmp_path / "in")
    assert vol.meta["resampled_z"] and vol.meta["dicom"].resampled
    result = hand_result(vol, CENTRES[:1], RADII[:1])
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path / "out")
    assert result.meta["output_notes"] == [NEAREST_PLANE_NOTE]
    check_outputs(vol, result, paths, tol_mm=0.5)
    seg = pydicom.dcmread(paths["seg.dcm"])
    z = sorted({float(i.PlanePositionSequence[0].ImagePositionPatient[2])
                for i in seg.PerFrameFunctionalGroupsSequence})
    assert any(abs(v - float(ds.ImagePositionPatient[2])) < 1e-3 for v in z)   # the moved one
    src_z = {im.z_mm for im in vol.meta["dicom"].images}
    assert all(min(abs(v - s) for s in src_z) < 1e-3 for v in z)   # on the source slices


def test_enhanced_multiframe_source_with_shuffled_frames(tmp_path):
    vol0 = phantom(nz=16)
    order = np.random.default_rng(2).permutation(16)
    path = write_dicom_multiframe(vol0, tmp_path / "mf.dcm", enhanced=True, frame_order=order)
    vol = load_ct(path)
    src = vol.meta["dicom"]
    assert src.multiframe and [im.frame for im in src.images] == list(np.argsort(order) + 1)
    result = hand_result(vol, [CENTRES[0]], [RADII[0]])
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path / "out")
    for p in paths.values():
        assert dciodvfy_errors(p) == []
    cents, _ = seg_centroids(paths["seg.dcm"])
    row = result.candidates.iloc[0]
    d = cents["nodule 1"] - row[["seg_centroid_x", "seg_centroid_y", "seg_centroid_z"]].to_numpy(float)
    assert np.linalg.norm(d) < 0.5


def test_a_reported_nodule_without_voxels_has_no_segment_and_a_note(series, tmp_path):
    folder, _ = series
    vol = load_ct(folder)
    result = hand_result(vol, CENTRES, RADII)
    result.nodule_labels[result.nodule_labels == 1] = 0
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path)
    assert dciodvfy_errors(paths["seg.dcm"]) == []
    cents, seg = seg_centroids(paths["seg.dcm"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lungs", "nodule 2"]
    assert result.meta["output_notes"] == [
        "DICOM SEG: no segment for nodule(s) 1, whose segmentation is empty"]
    assert set(sr_points(paths["sr.dcm"])) == {"nodule 1", "nodule 2"}   # the SR keeps its point


def test_classic_multiframe_gets_an_sr_and_no_seg(tmp_path):
    path = write_dicom_multiframe(phantom(nz=8), tmp_path / "mf.dcm", enhanced=False)
    vol = load_ct(path)
    result = hand_result(vol, [], [])
    assert "sr.dcm" in write_outputs(render_sr(vol, result), tmp_path / "out")
    with pytest.raises(OutputSkipped, match="classic multi-frame") as e:
        render_seg(vol, result)
    assert e.value.output == "seg"


def test_non_dicom_input_gets_no_sr_or_seg(tmp_path):
    path = write_itk(phantom(nz=16), tmp_path / "scan.mhd")
    vol = load_ct(path)
    assert "dicom" not in vol.meta
    result = hand_result(vol, [CENTRES[0]], [RADII[0]])
    for render, kind in ((render_sr, "sr"), (render_seg, "seg")):
        with pytest.raises(OutputSkipped) as e:
            render(vol, result)
        assert e.value.output == kind and "not DICOM" in e.value.reason


@pytest.mark.parametrize("attribute", ["FrameOfReferenceUID", "StudyInstanceUID"])
def test_a_missing_required_attribute_skips_naming_it(tmp_path, attribute):
    files = write_dicom_series(phantom(nz=8), tmp_path / "in", seed=1)
    for f in files:
        ds = pydicom.dcmread(f)
        delattr(ds, attribute)
        ds.save_as(f)
    vol = load_ct(tmp_path / "in")
    result = hand_result(vol, [], [])
    for render, kind in ((render_sr, "sr"), (render_seg, "seg")):
        with pytest.raises(OutputSkipped) as e:
            render(vol, result)
        assert e.value.output == kind and attribute in e.value.reason
        assert str(e.value).count("\n") == 0


def test_an_invalid_frame_of_reference_uid_is_a_warning_and_skips_them(tmp_path):
    files = write_dicom_series(phantom(nz=8), tmp_path / "in", seed=1)
    for f in files:
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # pydicom's word about the invalid UI
            ds.FrameOfReferenceUID = "1.2.03.x"
            ds.save_as(f)
    vol = load_ct(tmp_path / "in")
    assert [w for w in vol.meta["warnings"] if "FrameOfReferenceUID" in w and "8 files" in w]
    with pytest.raises(OutputSkipped, match="FrameOfReferenceUID"):
        render_sr(vol, hand_result(vol, [], []))


def test_a_utf8_patient_name_is_kept(tmp_path):
    files = write_dicom_series(phantom(nz=16), tmp_path / "in", seed=1)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.save_as(f)
    vol = load_ct(tmp_path / "in")
    result = hand_result(vol, [CENTRES[0]], [RADII[0]])
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path / "out")
    check_outputs(vol, result, paths)
    for p in paths.values():
        assert str(pydicom.dcmread(p).PatientName) == "Yamada^Tarou=山田^太郎"


def test_type_2_attributes_missing_are_written_empty(tmp_path):
    files = write_dicom_series(phantom(nz=16), tmp_path / "in", seed=1)
    for f in files:
        ds = pydicom.dcmread(f)
        for name in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "StudyID", "AccessionNumber", "ReferringPhysicianName", "Manufacturer"):
            if name in ds:
                delattr(ds, name)
        ds.save_as(f)
    vol = load_ct(tmp_path / "in")
    result = hand_result(vol, [CENTRES[0]], [RADII[0]])
    paths = write_outputs({**render_sr(vol, result), **render_seg(vol, result)}, tmp_path / "out")
    check_outputs(vol, result, paths)
    assert pydicom.dcmread(paths["sr.dcm"]).PatientName == ""
