"""lungcad.io.dicom and discover under bad DICOM input (issue 20).

Each bad input is made from a small synthetic series (6 slices of 32 x 32) by changing one
element with pydicom, or bytes where pydicom will not write the value.  The promise tested:
``InputError`` is the only exception, its message names the file and says what is wrong, and
it comes at once (sizes are checked before anything is allocated).
"""
from __future__ import annotations

import importlib
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fuzz_inputs import bare_dataset
from lungcad.errors import InputError
from lungcad.io import discover, load_ct, write_dicom_multiframe, write_dicom_series
from lungcad.io.dicom_attributes import is_valid_uid
from lungcad.io.dicom_header import looks_like_dicom
from lungcad.io.dicom_slices import SliceHeader
from lungcad.io.dicom_stack import plan_stack
from lungcad.volume import CTVolume

io_discover = importlib.import_module("lungcad.io.discover")  # the module, not the function

SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-10.0, 20.0, -300.0)
UID = "1.2.826.0.1.3680043.8.498.2020"
#: A bad file must be refused within this (s): a guard on allocation, not a benchmark.
FAST_S = 2.0


def _volume(series_uid: str = UID, nz: int = 6) -> CTVolume:
    rng = np.random.default_rng(20)
    hu = rng.integers(-1000, 500, size=(nz, 32, 32)).astype(np.int16)
    return CTVolume(hu, SPACING, ORIGIN, patient_id="P20", series_uid=series_uid)


def _series(folder: Path, *, series_uid: str = UID, **kw) -> list[Path]:
    """The files of a 6-slice series, in slice order (IM00001.dcm is slice 0)."""
    return write_dicom_series(_volume(series_uid), folder, shuffle_names=False, **kw)


def _edit(path: Path, **elements) -> None:
    ds = pydicom.dcmread(path)
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path)


def _replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_bytes(data.replace(old, new))


def _refused(path: Path) -> InputError:
    """load_ct(path) raises InputError (nothing else) within FAST_S seconds, and lets no
    warning out."""
    t = time.perf_counter()
    with pytest.raises(InputError) as e, warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        load_ct(path)
    assert time.perf_counter() - t < FAST_S
    assert [str(w.message) for w in leaked] == []
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    return e.value


def _without_meta(path: Path, *, little: bool, implicit: bool) -> Path:
    """Rewrite a file as a bare data set (no preamble, no file meta) named without a suffix."""
    out = path.with_suffix("")
    out.write_bytes(bare_dataset(path, little=little, implicit=implicit))
    path.unlink()
    return out


# ------------------------------------------------------------------- one bad header value

_BAD_VALUES = {
    "pixel_spacing_zero": (dict(PixelSpacing=["0", "0"]), ["PixelSpacing must be positive"]),
    "pixel_spacing_nan": (dict(PixelSpacing=["nan", "0.8"]), ["PixelSpacing must be finite"]),
    "pixel_spacing_one_value": (dict(PixelSpacing="0.7"),
                                ["PixelSpacing must have 2 values", "found 1"]),
    "position_nan": (dict(ImagePositionPatient=["-10", "nan", "-295"]),
                     ["ImagePositionPatient must be finite"]),
    "position_two_values": (dict(ImagePositionPatient=["-10", "20"]),
                            ["ImagePositionPatient must have 3 values", "found 2"]),
    "position_huge": (dict(ImagePositionPatient=["1e300", "20", "-295"]),
                      ["ImagePositionPatient must be within"]),
    "orientation_three_values": (dict(ImageOrientationPatient=["1", "0", "0"]),
                                 ["ImageOrientationPatient must have 6 values", "found 3"]),
    "orientation_not_orthogonal": (dict(ImageOrientationPatient=["1", "0", "0", "0.1", "0.995",
                                                                 "0"]),
                                   ["must be orthogonal", "84.26 degrees apart"]),
    "orientation_not_unit": (dict(ImageOrientationPatient=["1", "0", "0", "0", "0.5", "0"]),
                             ["ImageOrientationPatient must hold two unit vectors", "0.5"]),
    "orientation_inf": (dict(ImageOrientationPatient=["1", "0", "0", "0", "inf", "0"]),
                        ["ImageOrientationPatient must be finite"]),
    "slope_nan": (dict(RescaleSlope="nan"), ["RescaleSlope must be a finite number"]),
    "slope_inf": (dict(RescaleSlope="inf"), ["RescaleSlope must be a finite number"]),
    "slope_zero": (dict(RescaleSlope="0"), ["RescaleSlope must be positive"]),
    "intercept_nan": (dict(RescaleIntercept="nan"), ["RescaleIntercept must be a finite number"]),
    "intercept_minus_inf": (dict(RescaleIntercept="-inf"), ["RescaleIntercept must be a finite number"]),
    "frames_65536": (dict(NumberOfFrames=65536),
                     ["pixel data holds 2048 bytes", "NumberOfFrames", "65536"]),
    "frames_2_to_32": (dict(NumberOfFrames=4294967296),
                       ["pixel data holds 2048 bytes", "4294967296"]),
    "frames_zero": (dict(NumberOfFrames=0), ["NumberOfFrames must be an integer of at least 1"]),
    "rows_too_few": (dict(Rows=16), ["pixel data holds 2048 bytes", "16 x 32 x 1 x 1 x 16"]),
    "bits_allocated_8": (dict(BitsAllocated=8), ["pixel data holds 2048 bytes", "= 1024 bytes"]),
    "series_uid_formula": (dict(SeriesInstanceUID='=HYPERLINK("http://x")'),
                           ["SeriesInstanceUID", "HYPERLINK", "is not a valid DICOM UID"]),
    "series_uid_leading_zero": (dict(SeriesInstanceUID="1.2.03.4"),
                                ["SeriesInstanceUID '1.2.03.4' is not a valid DICOM UID"]),
    "series_uid_too_long": (dict(SeriesInstanceUID="1." + "2" * 70),
                            ["SeriesInstanceUID", "is not a valid DICOM UID"]),
    "study_uid_letters": (dict(StudyInstanceUID="1.2.abc"),
                          ["StudyInstanceUID '1.2.abc' is not a valid DICOM UID"]),
    "sop_uid_empty_component": (dict(SOPInstanceUID="1..2"),
                                ["SOPInstanceUID '1..2' is not a valid DICOM UID"]),
}


@pytest.mark.parametrize("elements, words", _BAD_VALUES.values(), ids=_BAD_VALUES.keys())
def test_bad_value_refused_naming_the_file(tmp_path, elements, words):
    files = _series(tmp_path)
    bad = files[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it writes these values
        _edit(bad, **elements)
    e = _refused(tmp_path)
    assert e.path == str(bad)
    for w in words:
        assert w in e.problem
    # not the old misleading messages
    assert "localizer" not in e.problem and "mixed" not in e.problem
    assert "TypeError" not in e.problem and "OverflowError" not in e.problem
    # discover reports that file and goes on with the others
    errors: list = []
    (s,) = discover(tmp_path, errors=errors)
    assert [p for p, _ in errors] == [bad] and s.n_slices == 5


@pytest.mark.parametrize("old, new, words", [
    (b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ",
     ["corrupt DICOM header", "Modality", "NotImplementedError", "Unknown Value Representation"]),
    (b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00FD",
     ["corrupt DICOM header", "Modality", "BytesLengthException"]),
    (b"0.7\\0.8", b"abc\\def", ["PixelSpacing must be numbers", "abc"]),
], ids=["unknown_vr", "bytes_length", "pixel_spacing_text"])
def test_bytes_pydicom_cannot_parse_refused(tmp_path, old, new, words):
    bad = _series(tmp_path)[3]
    _replace_bytes(bad, old, new)
    e = _refused(tmp_path)
    assert e.path == str(bad)
    for w in words:
        assert w in e.problem


def test_negative_pixel_spacing_in_every_file_is_not_mixed(tmp_path):
    files = _series(tmp_path)
    for f in files:
        _edit(f, PixelSpacing=["-0.7", "-0.8"])
    e = _refused(tmp_path)
    assert e.path == str(files[0])
    assert "PixelSpacing must be positive" in e.problem and "-0.7\\-0.8" in e.problem
    assert "mixed" not in e.problem
    assert "and 5 more file(s)" in e.problem  # once, not once per file


def test_one_value_pixel_spacing_reported_once(tmp_path):
    files = _series(tmp_path)
    for f in files:
        _edit(f, PixelSpacing="0.7")
    errors: list = []
    assert discover(tmp_path, errors=errors) == []
    ((path, message),) = errors
    assert path == files[0]
    assert message.startswith("PixelSpacing must have 2 values; found 1 (0.7)")
    assert f"and 5 more file(s) in {tmp_path} with the same problem" in message
    e = _refused(tmp_path)
    assert "DSfloat" not in e.problem and "subscriptable" not in e.problem


@pytest.mark.parametrize("elements, words", [
    (dict(RescaleSlope="1e300"), ["HU from ", "e+30", "RescaleSlope 1e+300",
                                  "beyond the int16 range"]),
    (dict(RescaleSlope="1e308"), ["HU from inf to inf", "beyond the int16 range"]),
    (dict(RescaleIntercept="1e6"), ["RescaleIntercept 1e+06", "beyond the int16 range"]),
    (dict(RescaleSlope="40", RescaleIntercept="-1024"), ["RescaleSlope 40", "beyond the int16"]),
], ids=["slope_1e300", "slope_1e308", "intercept_1e6", "slope_40"])
def test_hu_beyond_int16_refused(tmp_path, elements, words):
    bad = _series(tmp_path)[4]
    _edit(bad, **elements)
    e = _refused(tmp_path)
    assert e.path == str(bad)
    for w in words:
        assert w in e.problem


def test_compressed_single_frame_claiming_65536_frames(tmp_path):
    bad = _series(tmp_path, compress="rle")[1]
    _edit(bad, NumberOfFrames=65536)
    e = _refused(tmp_path)
    assert e.path == str(bad)
    assert "NumberOfFrames is 65536 but the compressed pixel data holds 1 fragment(s)" in e.problem


def test_multiframe_frame_with_nan_position(tmp_path):
    f = write_dicom_multiframe(_volume(), tmp_path / "mf.dcm")
    ds = pydicom.dcmread(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about a DS of "nan"
        ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient = [
            "nan", "20", "-292.5"]
        ds.save_as(f)
    e = _refused(f)
    assert e.path == str(f)
    assert "frame 4: ImagePositionPatient must be finite numbers; found nan\\20\\-292.5" \
        in e.problem


def _slice(z: float, pixel_spacing=(0.7, 0.8)) -> SliceHeader:
    return SliceHeader(path=Path(f"s{z:g}.dcm"), frame=None, position=np.array([0.0, 0.0, z]),
                       orientation=np.array([1.0, 0, 0, 0, 1, 0]), rows=32, cols=32,
                       pixel_spacing=pixel_spacing)


def test_plan_stack_checks_spacings_of_slice_headers_made_elsewhere():
    with pytest.raises(InputError, match="ImagePositionPatient must be finite and within"):
        plan_stack([_slice(-1e308), _slice(1e308), _slice(1.5e308)], source="x")
    with pytest.raises(InputError, match="PixelSpacing must be positive") as e:
        plan_stack([_slice(0.0, (-0.7, -0.8)), _slice(2.5, (-0.7, -0.8))], source="x")
    assert e.value.path == "s0.dcm"
    plan = plan_stack([_slice(0.0), _slice(2.5), _slice(5.0)], source="x")
    assert plan.spacing == (2.5, 0.7, 0.8)


# ----------------------------------------------------------------- warnings, not errors

@pytest.mark.parametrize("thickness", ["-2.5", "0"])
def test_slice_thickness_not_positive_is_a_warning(tmp_path, thickness):
    vol = _volume()
    files = _series(tmp_path)
    for f in files:
        _edit(f, SliceThickness=thickness)
    got = load_ct(tmp_path)
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.spacing, SPACING, atol=1e-6)  # from the positions
    assert got.meta["slice_thickness"] is None
    (w,) = got.meta["warnings"]
    assert f"SliceThickness {thickness} is not positive" in w
    assert "the slice spacing comes from the slice positions" in w
    assert f"6 files, the first {files[0]}" in w
    (s,) = discover(tmp_path)
    assert s.slice_thickness == pytest.approx(2.5) and s.warnings == [w]


def test_control_characters_in_patient_id_escaped_with_a_warning(tmp_path):
    for f in _series(tmp_path):
        _edit(f, PatientID="A\x00B\x1b[31m")
    got = load_ct(tmp_path)
    assert got.patient_id == "A\\x00B\\x1b[31m"
    assert got.patient_id.isprintable()
    (w,) = [w for w in got.meta["warnings"] if "PatientID" in w]
    assert "PatientID holds control characters; read as 'A\\x00B\\x1b[31m' (6 files" in w
    # pydicom's own word about the escape character is kept, once
    assert any("unknown escape sequence" in w for w in got.meta["warnings"])
    assert all(w.isprintable() for w in got.meta["warnings"])


def test_pydicom_warnings_go_to_the_scan_warnings_not_stderr(tmp_path, capfd):
    vol = _volume()
    files = _series(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            _edit(f, SpecificCharacterSet="ISO_IR 999")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        got = load_ct(tmp_path)
        (s,) = discover(tmp_path)
    assert [str(w.message) for w in leaked] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    np.testing.assert_array_equal(got.hu, vol.hu)
    (w,) = got.meta["warnings"]  # once for the series, not once per file or per reading
    assert "Unknown encoding 'ISO_IR 999'" in w and "6 files" in w
    assert s.warnings == [w]


# ------------------------------------------------------------- no preamble, big endian

@pytest.mark.parametrize("little, implicit", [(False, False), (True, True), (True, False)],
                         ids=["explicit_big_endian", "implicit_little_endian",
                              "explicit_little_endian"])
def test_data_sets_without_preamble_are_read(tmp_path, little, implicit):
    vol = _volume()
    files = [_without_meta(f, little=little, implicit=implicit) for f in _series(tmp_path)]
    assert all(f.suffix == "" and looks_like_dicom(f) for f in files)
    (s,) = discover(tmp_path)
    assert s.n_slices == 6 and s.series_uid == UID
    got = load_ct(tmp_path)
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.origin, ORIGIN, atol=1e-6)


@pytest.fixture
def big_endian_rt_plan(tmp_path) -> Path:
    src = get_testdata_file("ExplVR_BigEndNoMeta.dcm", download=False)
    assert src is not None, "pydicom's test file ExplVR_BigEndNoMeta.dcm is not installed (pydicom ships it)"
    dst = tmp_path / "plan" / "IMG0001"  # no suffix: recognised from its first bytes
    dst.parent.mkdir()
    shutil.copyfile(src, dst)
    return dst


def test_big_endian_file_without_preamble_is_reported_not_skipped(big_endian_rt_plan):
    f = big_endian_rt_plan
    assert looks_like_dicom(f)
    errors: list = []
    skipped: list = []
    assert discover(f.parent, errors=errors, skipped=skipped) == []
    ((path, message),) = errors
    assert path == f and "without an image" in message and "Modality RTPLAN" in message
    assert "Plan Storage" in message
    assert [p for p, _ in skipped] == [f]
    e = _refused(f.parent)
    assert e.path == str(f) and "without an image" in e.problem
    e = _refused(f)
    assert e.path == str(f) and "Modality RTPLAN" in e.problem


def test_non_image_object_beside_a_series_is_listed_as_skipped(tmp_path, big_endian_rt_plan):
    _series(big_endian_rt_plan.parent)
    errors: list = []
    skipped: list = []
    (s,) = discover(big_endian_rt_plan.parent, errors=errors, skipped=skipped)
    assert s.n_slices == 6 and errors == []
    assert [p for p, _ in skipped] == [big_endian_rt_plan]
    assert load_ct(big_endian_rt_plan.parent).shape == (6, 32, 32)


# ------------------------------------------------------------- discover never breaks out

def test_discover_goes_on_past_a_file_pydicom_cannot_parse(tmp_path):
    _series(tmp_path / "a", series_uid=UID + ".1")
    bad = _series(tmp_path / "b", series_uid=UID + ".2")[0]
    _replace_bytes(bad, b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ")
    _series(tmp_path / "c", series_uid=UID + ".3")
    errors: list = []
    found = discover(tmp_path, errors=errors)
    assert [(s.series_uid, s.n_slices) for s in found] == [
        (UID + ".1", 6), (UID + ".2", 5), (UID + ".3", 6)]
    ((path, message),) = errors
    assert path == bad and "NotImplementedError" in message


def test_discover_goes_on_past_a_header_reader_that_raises(tmp_path, monkeypatch):
    _series(tmp_path / "a", series_uid=UID + ".1")
    bad = _series(tmp_path / "b", series_uid=UID + ".2")[2]
    real = io_discover.read_header

    def read_header(path):
        if Path(path) == bad:
            raise RuntimeError("a bug in the header reader")
        return real(path)

    monkeypatch.setattr(io_discover, "read_header", read_header)
    errors: list = []
    found = discover(tmp_path, errors=errors)
    assert [(s.series_uid, s.n_slices) for s in found] == [(UID + ".1", 6), (UID + ".2", 5)]
    ((path, message),) = errors
    assert path == bad
    assert "RuntimeError: a bug in the header reader" in message and "bug in lungcad" in message


@pytest.mark.parametrize("uid, valid", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0", True), ("1.0.2", True), ("1." + "2" * 62, True),
    ("", False), ("1..2", False), ("1.02", False), (".1", False), ("1.", False),
    ("1.2.a", False), ("=HYPERLINK(1)", False), ("1." + "2" * 63, False), ("1.2 ", False),
])
def test_is_valid_uid(uid, valid):
    assert is_valid_uid(uid) is valid
