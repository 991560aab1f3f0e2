"""lungcad.io.itk under bad input (issue 20): MetaImage (.mhd/.mha) and NIfTI (.nii/.nii.gz).

Real small files are written with SimpleITK, then broken: header text edited, data cut or
extended, a gzip stream cut in half, data files named outside the header's folder (which
exist, with the right size, so that reading them would succeed).  Every case must raise
exactly :class:`InputError` that names the file and the problem, and print nothing on stderr
(SimpleITK writes from C++, hence ``capfd``).
"""
from __future__ import annotations

import gzip
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from lungcad.errors import InputError
from lungcad.io import discover, load_ct
from lungcad.io.itk import load_itk, read_itk_info

SHAPE = (6, 32, 32)                  # z, y, x
SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN = (-10.0, 20.0, 30.5)
DIRECTION = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
OUTSIDE_HU = 4321                    # what a file outside the input folder holds
NBYTES = int(np.prod(SHAPE)) * 2     # int16


def _hu() -> np.ndarray:
    hu = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 1900 - 1000).astype(np.int16)
    hu[0, 0, :5] = -1024
    hu[-1, -1, -1] = 1500
    return hu


def _image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION.ravel().tolist())
    return img


@dataclass
class Scans:
    root: Path        # tmp_path
    folder: Path      # root/a/in: the input folder with the good files
    abs_raw: Path     # root/elsewhere/abs.raw: a real file outside, of the right size


@pytest.fixture
def scans(tmp_path) -> Scans:
    folder = tmp_path / "a" / "in"
    folder.mkdir(parents=True)
    img = _image(_hu())
    sitk.WriteImage(img, str(folder / "scan.mhd"))
    sitk.WriteImage(img, str(folder / "scan.mha"))
    sitk.WriteImage(img, str(folder / "scanz.mha"), useCompression=True)
    sitk.WriteImage(img, str(folder / "scanz.mhd"), useCompression=True)
    sitk.WriteImage(img, str(folder / "scan.nii"))
    sitk.WriteImage(img, str(folder / "scan.nii.gz"), useCompression=True)
    outside = np.full(SHAPE, OUTSIDE_HU, dtype=np.int16)
    outside.tofile(tmp_path / "outside.raw")
    outside[0].tofile(tmp_path / "outside_slice.raw")
    (tmp_path / "elsewhere").mkdir()
    outside.tofile(tmp_path / "elsewhere" / "abs.raw")
    (tmp_path / "a" / "slices").mkdir()
    for k in range(SHAPE[0]):  # slice files beside the input folder, not in it
        outside[k].tofile(tmp_path / "a" / "slices" / f"s{k + 1:03d}.raw")
    return Scans(tmp_path, folder, tmp_path / "elsewhere" / "abs.raw")


# ---- builders of bad files ------------------------------------------------------------------

def _mhd(s: Scans, old: str, new: str, *, src="scan.mhd", name="bad.mhd") -> Path:
    data = (s.folder / src).read_bytes()
    assert old.encode() in data, old
    p = s.folder / name
    p.write_bytes(data.replace(old.encode(), new.encode(), 1))
    return p


def _datafile(s: Scans, value: str) -> Path:
    return _mhd(s, "ElementDataFile = scan.raw", f"ElementDataFile = {value}")


def _list(s: Scans, names: list[str], *, final_newline=True) -> Path:
    text = "LIST\n" + "\n".join(names) + ("\n" if final_newline else "")
    return _mhd(s, "ElementDataFile = scan.raw\n", f"ElementDataFile = {text}")


def _slices_inside(s: Scans) -> None:
    (s.folder / "slices").mkdir(exist_ok=True)
    for k in range(SHAPE[0]):
        _hu()[k].tofile(s.folder / "slices" / f"s{k + 1:03d}.raw")


def _raw_resized(s: Scans, delta: int) -> Path:
    raw = (s.folder / "scan.raw").read_bytes()
    (s.folder / "bad.raw").write_bytes(raw[:delta] if delta < 0 else raw + b"\0" * delta)
    return _datafile(s, "bad.raw")


def _with_header_size(s: Scans, size: int, prefix: int, extra: int = 0) -> Path:
    raw = (s.folder / "scan.raw").read_bytes()
    (s.folder / "bad.raw").write_bytes(b"H" * prefix + raw + b"\0" * extra)
    return _mhd(s, "ElementType = MET_SHORT\nElementDataFile = scan.raw",
                f"HeaderSize = {size}\nElementType = MET_SHORT\nElementDataFile = bad.raw")


def _cut(s: Scans, src: str, n: int, name: str) -> Path:
    data = (s.folder / src).read_bytes()
    p = s.folder / name
    p.write_bytes(data[:n] if n > 0 else data[:len(data) + n])
    return p


def _mha_compressed_cut_consistent(s: Scans) -> Path:
    data = (s.folder / "scanz.mha").read_bytes()
    head, _, body = data.partition(b"ElementDataFile = LOCAL\n")
    body = body[: len(body) - 100]
    old = [ln for ln in head.split(b"\n") if ln.startswith(b"CompressedDataSize")][0]
    head = head.replace(old, b"CompressedDataSize = %d" % len(body))
    p = s.folder / "bad.mha"
    p.write_bytes(head + b"ElementDataFile = LOCAL\n" + body)
    return p


def _mha_compressed_corrupt(s: Scans) -> Path:
    data = bytearray((s.folder / "scanz.mha").read_bytes())
    start = data.index(b"ElementDataFile = LOCAL\n") + 24
    mid = (start + len(data)) // 2
    data[mid:mid + 40] = bytes(40)
    p = s.folder / "bad.mha"
    p.write_bytes(bytes(data))
    return p


def _nii(s: Scans, edits: list[tuple[int, str, tuple]], *, gz=False, name=None) -> Path:
    data = bytearray((s.folder / "scan.nii").read_bytes())
    for off, fmt, vals in edits:
        data[off:off + struct.calcsize(fmt)] = struct.pack(fmt, *vals)
    p = s.folder / (name or ("bad.nii.gz" if gz else "bad.nii"))
    p.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return p


def _gz_bad_crc(s: Scans) -> Path:
    data = bytearray((s.folder / "scan.nii.gz").read_bytes())
    data[-8] ^= 0xFF  # the CRC32 of the trailer
    p = s.folder / "bad.nii.gz"
    p.write_bytes(bytes(data))
    return p


def _float_image(s: Scans, value: float, suffix: str, dtype=np.float32) -> Path:
    arr = _hu().astype(dtype)
    arr[2, 3, 4] = value
    p = s.folder / f"bad{suffix}"
    sitk.WriteImage(_image(arr), str(p))
    return p


def _nifti2(s: Scans) -> Path:
    """The same image as a NIfTI-2 file (540-byte header), which SimpleITK cannot read."""
    h1 = (s.folder / "scan.nii").read_bytes()
    h = bytearray(544)
    struct.pack_into("<i8s2h8q", h, 0, 540, b"n+2\0\r\n\x1a\n", 4, 16, 3, 32, 32, 6, 1, 1, 1, 1)
    struct.pack_into("<8dq2d", h, 104, *struct.unpack("<8f", h1[76:108]), 544, 1.0, 0.0)
    struct.pack_into("<2i6d12d", h, 344, 1, 1, *struct.unpack("<6f", h1[256:280]),
                     *struct.unpack("<12f", h1[280:328]))
    p = s.folder / "bad.nii"
    p.write_bytes(bytes(h) + _hu().tobytes())
    return p


def _nrrd_disguised(s: Scans) -> Path:
    p = s.folder / "bad.mhd"
    p.write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32 6\nencoding: raw\n"
                 f"endian: little\ndata file: {s.abs_raw}\n")
    return p


NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Case:
    build: Callable[[Scans], Path]
    words: tuple[str, ...]
    info: bool = True  # read_itk_info must refuse it too (header-level problem)


CASES: dict[str, Case] = {
    # -- paths from inside the header (security)
    "dotdot_outside": Case(lambda s: _datafile(s, "../../outside.raw"),
                           ("'../../outside.raw'", "leaves the folder of bad.mhd")),
    "absolute": Case(lambda s: _datafile(s, str(s.abs_raw)), ("absolute path", "abs.raw")),
    "absolute_colon_separator": Case(
        lambda s: _mhd(s, "ElementDataFile = scan.raw", f"ElementDataFile:{s.abs_raw}"),
        ("absolute path",)),
    "tilde": Case(lambda s: _datafile(s, "~/outside.raw"), ("absolute path",)),
    "dotdot_that_normalises_inside": Case(lambda s: _datafile(s, "sub/../scan.raw"),
                                          ("'..'",)),
    "backslash_dotdot": Case(lambda s: _datafile(s, "..\\..\\outside.raw"), ("'..'",)),
    "miscased_key_before_the_real_one": Case(
        lambda s: _mhd(s, "ElementDataFile = scan.raw",
                       "elementdatafile = ../../outside.raw\nElementDataFile = scan.raw"),
        ("must be spelt ElementDataFile",)),
    "empty_value_swallows_next_line": Case(
        lambda s: _mhd(s, "ElementDataFile = scan.raw",
                       "Comment =\nElementDataFile = ../../outside.raw"),
        ("Comment has no value",)),
    "pattern_outside": Case(lambda s: _datafile(s, "../slices/s%03d.raw 1 6 1"), ("'..'",)),
    "pattern_absolute": Case(
        lambda s: _datafile(s, f"{s.root}/a/slices/s%03d.raw 1 6 1"), ("absolute path",)),
    "pattern_format_string": Case(lambda s: _datafile(s, "s%s%n.raw 1 6 1"), ("one %d",)),
    "pattern_step_zero": Case(  # MetaIO divides by this step: SIGFPE if it were let through
        lambda s: (_slices_inside(s), _datafile(s, "slices/s%03d.raw 1 5"))[1], ("step",)),
    "pattern_too_few_files": Case(
        lambda s: (_slices_inside(s), _datafile(s, "slices/s%03d.raw 1 3 1"))[1],
        ("names 3 file(s)", "needs 6")),
    "list_outside": Case(lambda s: _list(s, ["../../outside_slice.raw"] * SHAPE[0]),
                         ("LIST entry", "leaves the folder")),
    "list_absolute": Case(lambda s: _list(s, [str(s.root / "outside_slice.raw")] * SHAPE[0]),
                          ("LIST entry", "absolute path")),
    "list_too_short": Case(
        lambda s: (_slices_inside(s), _list(s, [f"slices/s{k:03d}.raw" for k in range(1, 6)]))[1],
        ("names 5 file(s)", "needs 6")),
    "list_last_line_without_newline": Case(
        lambda s: (_slices_inside(s),
                   _list(s, [f"slices/s{k:03d}.raw" for k in range(1, 7)],
                         final_newline=False))[1],
        ("names 5 file(s)", "needs 6")),
    # found by fuzzing: C and Python disagree on what white space is
    "key_with_a_control_character": Case(lambda s: _mhd(s, "NDims = 3", "NDims\x1e= 3"),
                                         ("not printable ASCII",)),
    "number_with_a_control_character": Case(
        lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32\x1c 32 6"),
        ("DimSize needs 3 finite number(s)",)),
    "datafile_after_a_vertical_tab": Case(
        lambda s: _mhd(s, "ElementDataFile = scan.raw", "ElementDataFile =\x0bscan.raw"),
        ("control characters",)),
    "nrrd_disguised_as_mhd": Case(_nrrd_disguised, ("not 'Key = Value'",)),
    # -- sizes
    "dimsize_smaller_than_data": Case(
        lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 32 3"),
        ("DimSize 32x32x3 needs 6144 bytes of MET_SHORT but scan.raw holds 12288",)),
    "dimsize_bigger_than_data": Case(
        lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 32 60"),
        ("DimSize 32x32x60 needs 122880 bytes of MET_SHORT but scan.raw holds 12288",)),
    "raw_truncated": Case(lambda s: _raw_resized(s, -100),
                          ("needs 12288 bytes of MET_SHORT but bad.raw holds 12188",)),
    "raw_extended": Case(lambda s: _raw_resized(s, 10),
                         ("needs 12288 bytes of MET_SHORT but bad.raw holds 12298",)),
    "element_type_int": Case(lambda s: _mhd(s, "MET_SHORT", "MET_INT"),
                             ("needs 24576 bytes of MET_INT but scan.raw holds 12288",)),
    "element_type_unknown": Case(lambda s: _mhd(s, "MET_SHORT", "MET_FOO"),
                                 ("ElementType 'MET_FOO'",)),
    "element_type_vector": Case(lambda s: _mhd(s, "MET_SHORT", "MET_SHORT_ARRAY"),
                                ("not a scalar",)),
    "channels": Case(lambda s: _mhd(s, "ElementType", "ElementNumberOfChannels = 3\nElementType"),
                     ("ElementNumberOfChannels is 3",)),
    "ndims_2": Case(lambda s: _mhd(s, "NDims = 3", "NDims = 2"), ("NDims is 2",)),
    "dimsize_fraction": Case(lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 32.5 6"),
                             ("DimSize needs 3 integer(s)",)),
    "dimsize_zero": Case(lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 0 6"),
                         ("below 1",)),
    "dimsize_huge": Case(lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 100000 100000 100000"),
                         ("more than lungcad's limit",)),
    "headersize_and_extra_bytes": Case(lambda s: _with_header_size(s, 100, 100, 10),
                                       ("bad.raw after its HeaderSize of 100 holds 12298",)),
    "header_line_too_long": Case(lambda s: _mhd(s, "NDims = 3", "Comment = " + "x" * 600
                                                + "\nNDims = 3"),
                                 ("longer than 499 characters",)),
    "headersize_beyond_the_file": Case(
        lambda s: _mhd(s, "ElementType", "HeaderSize = 20000\nElementType"),
        ("HeaderSize 20000 is beyond the end of scan.raw",)),
    "data_file_missing": Case(lambda s: _datafile(s, "nothere.raw"),
                              ("ElementDataFile nothere.raw is not in the folder",)),
    "data_file_is_a_folder": Case(lambda s: ((s.folder / "sub").mkdir(), _datafile(s, "sub"))[1],
                                  ("not a regular file",)),
    "header_without_datafile": Case(lambda s: _mhd(s, "ElementDataFile = scan.raw", ""),
                                    ("without ElementDataFile",)),
    "binary_data_false": Case(lambda s: _mhd(s, "BinaryData = True", "BinaryData = False"),
                              ("BinaryData = False",)),
    # -- geometry
    "spacing_negative": Case(
        lambda s: _mhd(s, "ElementSpacing = 0.69999999999999996", "ElementSpacing = -0.7"),
        ("ElementSpacing must be positive mm",)),
    "spacing_zero": Case(
        lambda s: _mhd(s, "ElementSpacing = 0.69999999999999996", "ElementSpacing = 0"),
        ("ElementSpacing must be positive mm",)),
    "spacing_nan": Case(
        lambda s: _mhd(s, "ElementSpacing = 0.69999999999999996", "ElementSpacing = nan"),
        ("ElementSpacing needs 3 finite number(s)",)),
    "spacing_missing": Case(
        lambda s: _mhd(s, "ElementSpacing = 0.69999999999999996 0.80000000000000004 2.5\n", ""),
        ("no ElementSpacing",)),
    "transform_not_orthonormal": Case(
        lambda s: _mhd(s, "TransformMatrix = 0 1 0 -1 0 0 0 0 1",
                       "TransformMatrix = 0 1 0 -2 0 0 0 0 1"),
        ("TransformMatrix is not orthonormal",)),
    "transform_nan": Case(
        lambda s: _mhd(s, "TransformMatrix = 0 1 0 -1 0 0 0 0 1",
                       "TransformMatrix = 0 1 0 nan 0 0 0 0 1"),
        ("TransformMatrix needs 9 finite number(s)",)),
    "offset_inf": Case(lambda s: _mhd(s, "Offset = -10 20 30.5", "Offset = -10 inf 30.5"),
                       ("Offset needs 3 finite number(s)",)),
    # -- .mha and compressed MetaImage
    "mha_truncated": Case(lambda s: _cut(s, "scan.mha", -100, "bad.mha"),
                          ("needs 12288 bytes of MET_SHORT but bad.mha after its header holds "
                           "12188",)),
    "mha_compressed_truncated": Case(lambda s: _cut(s, "scanz.mha", -100, "bad.mha"),
                                     ("CompressedDataSize is",)),
    "mha_compressed_truncated_consistent": Case(
        _mha_compressed_cut_consistent, ("truncated", "compressed data in bad.mha end early"),
        info=False),
    "mha_compressed_corrupt": Case(_mha_compressed_corrupt, ("compressed data in bad.mha",),
                                   info=False),
    "mha_compressed_without_size": Case(
        lambda s: _mhd(s, "CompressedDataSize", "CompressedDataSizeX", src="scanz.mha",
                       name="bad.mha"),
        ("needs CompressedDataSize",)),
    "zraw_dimsize_bigger": Case(
        lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 32 12", src="scanz.mhd"),
        ("give 12288 bytes but DimSize and ElementType need 24576",), info=False),
    "zraw_dimsize_smaller": Case(
        lambda s: _mhd(s, "DimSize = 32 32 6", "DimSize = 32 32 3", src="scanz.mhd"),
        ("give more than the 6144 bytes",), info=False),
    "mhd_key_twice": Case(lambda s: _mhd(s, "NDims = 3", "NDims = 3\nNDims = 3"),
                          ("the key NDims is given twice",)),
    "mhd_spacing_before_ndims": Case(lambda s: _mhd(s, "NDims = 3", "ElementSpacing = 1 1 1\nNDims = 3"),
                                     ("ElementSpacing (line", "comes before NDims")),
    # -- NIfTI
    "niigz_cut_in_half": Case(
        lambda s: _cut(s, "scan.nii.gz", (s.folder / "scan.nii.gz").stat().st_size // 2,
                       "bad.nii.gz"),
        ("truncated: the gzip stream ends early",), info=False),
    "niigz_without_trailer": Case(lambda s: _cut(s, "scan.nii.gz", -8, "bad.nii.gz"),
                                  ("truncated",), info=False),
    "niigz_bad_crc": Case(_gz_bad_crc, ("corrupt gzip data", "CRC"), info=False),
    "niigz_dim_bigger": Case(lambda s: _nii(s, [(40, "<4h", (3, 32, 32, 12))], gz=True),
                             ("dim 32x32x12 needs 24576 bytes of int16",), info=False),
    "nii_truncated": Case(lambda s: _cut(s, "scan.nii", -100, "bad.nii"),
                          ("needs 12288 bytes of int16 after vox_offset 352 but bad.nii holds "
                           "12188",)),
    "nii_dim_bigger": Case(lambda s: _nii(s, [(40, "<4h", (3, 32, 32, 12))]),
                           ("dim 32x32x12 needs 24576 bytes",)),
    "nii_pixdim_nan": Case(lambda s: _nii(s, [(80, "<f", (NAN,))]), ("pixdim[1]", "x spacing")),
    "nii_pixdim_zero": Case(lambda s: _nii(s, [(88, "<f", (0.0,))]), ("pixdim[3]", "z spacing")),
    "nii_pixdim_negative": Case(lambda s: _nii(s, [(84, "<f", (-0.8,))]), ("pixdim[2]",)),
    "nii_scl_slope_nan": Case(lambda s: _nii(s, [(112, "<f", (NAN,))]), ("scl_slope is nan",)),
    "nii_sform_nan": Case(lambda s: _nii(s, [(254, "<h", (1,)), (280, "<f", (NAN,))]),
                          ("sform",)),
    "nii_qform_inf": Case(lambda s: _nii(s, [(252, "<h", (1,)), (268, "<f", (INF,))]),
                          ("qform",)),
    "nii_sform_singular": Case(lambda s: _nii(s, [(254, "<h", (1,)), (280, "<4f", (0.0, 0.0, 0.0, 5.0))]),
                               ("sform", "singular")),
    "nii_xform_code_invalid": Case(lambda s: _nii(s, [(254, "<h", (352,))]),
                                   ("sform_code is 352", "xform code")),
    "nii_bad_magic": Case(lambda s: _nii(s, [(344, "4s", (b"xxxx",))]), ("not a NIfTI-1 file",)),
    "nii_bad_sizeof_hdr": Case(lambda s: _nii(s, [(0, "<i", (1234,))]), ("not a NIfTI file",)),
    "nii_complex": Case(lambda s: _nii(s, [(70, "<2h", (32, 64))]),
                        ("complex64", "not a real scalar type")),
    "nii_bitpix_mismatch": Case(lambda s: _nii(s, [(72, "<h", (8,))]),
                                ("bitpix is 8 but datatype 4 (int16) has 16 bits",)),
    "nii_vox_offset_inside_header": Case(lambda s: _nii(s, [(108, "<f", (100.0,))]),
                                         ("vox_offset",)),
    "nii_separate_img": Case(lambda s: _nii(s, [(344, "4s", (b"ni1\0",))]), ("separate .img",)),
    "nii2_not_readable_by_simpleitk": Case(_nifti2, ("a NIfTI-2 file",)),
    "nii_gzip_named_nii": Case(lambda s: _cut(s, "scan.nii.gz", 10**9, "bad.nii"),
                               ("gzip-compressed data in a file named .nii",)),
    # -- HU
    "mhd_float_nan_voxel": Case(lambda s: _float_image(s, NAN, ".mhd"),
                                ("1 voxel(s) are NaN or infinite",), info=False),
    "nii_float_inf_voxel": Case(lambda s: _float_image(s, INF, ".nii"),
                                ("1 voxel(s) are NaN or infinite",), info=False),
    "mha_above_int16": Case(lambda s: _float_image(s, 40000.0, ".mha"),
                            ("do not fit in int16",), info=False),
    "nii_int32_below_int16": Case(lambda s: _float_image(s, -40000, ".nii", np.int32),
                                  ("do not fit in int16",), info=False),
    "nii_scl_slope_huge": Case(lambda s: _nii(s, [(112, "<f", (1e30,))]),
                               ("do not fit in int16",), info=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_is_one_input_error(scans, capfd, name):
    case = CASES[name]
    path = case.build(scans)
    capfd.readouterr()
    with pytest.raises(InputError) as ei:
        load_itk(path)
    err = ei.value
    assert type(err) is InputError
    msg = str(err)
    assert err.path == str(path) and msg.startswith(f"{path}: ")
    for word in case.words:
        assert word in msg, (word, msg)
    assert "\n" not in msg
    assert "No such file or directory" not in msg
    # the public entry for a file, and read_itk_info for header-level problems
    with pytest.raises(InputError) as ei2:
        load_ct(path)
    assert type(ei2.value) is InputError and str(ei2.value) == msg
    if case.info:
        with pytest.raises(InputError) as ei3:
            read_itk_info(path)
        assert type(ei3.value) is InputError and str(ei3.value) == msg
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


def test_outside_file_would_load_if_it_were_inside(scans):
    """The files the security cases point at are real scans: reading them would succeed."""
    (scans.folder / "outside.raw").write_bytes((scans.root / "outside.raw").read_bytes())
    vol = load_itk(_datafile(scans, "outside.raw"))
    assert (vol.hu == OUTSIDE_HU).all()
    for k in range(SHAPE[0]):
        (scans.folder / f"o{k}.raw").write_bytes(
            (scans.root / "a" / "slices" / f"s{k + 1:03d}.raw").read_bytes())
    vol = load_itk(_list(scans, [f"o{k}.raw" for k in range(SHAPE[0])]))
    assert (vol.hu == OUTSIDE_HU).all()


def test_load_ct_and_discover_on_a_folder_name_the_bad_file(scans):
    bad = _datafile(scans, "../../outside.raw")
    errors: list = []
    found = discover(scans.folder, errors=errors)
    assert bad in [p for p, _ in errors]
    assert any("leaves the folder" in m for p, m in errors if p == bad)
    assert "bad" not in {s.series_uid for s in found} and "scan" in {s.series_uid for s in found}
    only = scans.root / "only"
    only.mkdir()
    (only / "bad.mhd").write_bytes(bad.read_bytes())
    with pytest.raises(InputError) as ei:
        load_ct(only)
    assert "bad.mhd" in str(ei.value) and "leaves the folder" in str(ei.value)


@pytest.mark.parametrize("name", ["scan.mhd", "scan.mha", "scanz.mha", "scanz.mhd", "scan.nii",
                                  "scan.nii.gz"])
def test_good_file_round_trip(scans, capfd, name):
    path = scans.folder / name
    vol = load_itk(path)
    np.testing.assert_array_equal(vol.hu, _hu())
    assert vol.hu.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, SPACING_XYZ[::-1], atol=1e-6)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(vol.direction, DIRECTION, atol=1e-6)
    assert vol.meta["clipped_voxels"] == 0 and vol.meta["warnings"] == []
    info = read_itk_info(path)
    assert info["shape"] == SHAPE and info["warnings"] == []
    np.testing.assert_allclose(info["spacing"], SPACING_XYZ[::-1], atol=1e-6)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("size", [100, -1])
def test_header_size_skips_a_prefix(scans, size):
    np.testing.assert_array_equal(load_itk(_with_header_size(scans, size, 100)).hu, _hu())


def test_values_below_air_clipped_and_counted(scans):
    arr = _hu()
    arr[:, :, :3] = -3024
    sitk.WriteImage(_image(arr), str(scans.folder / "luna.mhd"))
    vol = load_itk(scans.folder / "luna.mhd")
    assert vol.meta["clipped_voxels"] == 6 * 32 * 3
    assert (vol.hu[:, :, :3] == -1024).all()
    np.testing.assert_array_equal(vol.hu[:, :, 3:], arr[:, :, 3:])


def test_float_image_rounded_to_hu(scans):
    arr = _hu().astype(np.float32) + 0.3
    sitk.WriteImage(_image(arr), str(scans.folder / "f.nii.gz"), useCompression=True)
    np.testing.assert_array_equal(load_itk(scans.folder / "f.nii.gz").hu, _hu())


@pytest.mark.parametrize("form", ["LIST", "LIST 2D", "pattern", "pattern_one_word"])
def test_multi_file_forms_inside_the_folder_load(scans, form):
    _slices_inside(scans)
    names = [f"slices/s{k:03d}.raw" for k in range(1, 7)]
    if form.startswith("LIST"):
        path = _mhd(scans, "ElementDataFile = scan.raw\n",
                    f"ElementDataFile = {form}\n" + "".join(n + "\n" for n in names))
    elif form == "pattern":
        path = _datafile(scans, "slices/s%03d.raw 1 6 1")
    else:
        path = _datafile(scans, "slices/s%03d.raw")
    np.testing.assert_array_equal(load_itk(path).hu, _hu())


def test_symlinks_in_the_input_tree_are_followed(scans):
    """A symlink farm: the .mhd and its .raw are links to files stored elsewhere."""
    farm = scans.root / "farm"
    farm.mkdir()
    os.symlink(scans.folder / "scan.mhd", farm / "scan.mhd")
    os.symlink(scans.folder / "scan.raw", farm / "scan.raw")
    np.testing.assert_array_equal(load_itk(farm / "scan.mhd").hu, _hu())
    # a data file that is a link inside the folder, pointing outside it, is fine too
    os.symlink(scans.root / "outside.raw", scans.folder / "linked.raw")
    assert (load_itk(_datafile(scans, "linked.raw")).hu == OUTSIDE_HU).all()


def test_claimed_size_is_checked_before_anything_is_allocated(scans):
    path = _mhd(scans, "DimSize = 32 32 6", "DimSize = 1024 1024 1000")  # 2 GB of MET_SHORT
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="needs 2097152000 bytes of MET_SHORT"):
        load_itk(path)
    assert time.perf_counter() - t0 < 1.0


def test_simpleitk_warning_goes_to_the_scan_warnings_not_stderr(scans, capfd):
    path = _nii(scans, [(280, "<4f", (0.0, 0.8, 0.7, 10.0))], name="skew.nii")
    capfd.readouterr()
    vol = load_itk(path)
    assert any("unexpected scales in sform" in w for w in vol.meta["warnings"])
    assert all("\n" not in w and "0x" not in w for w in vol.meta["warnings"])
    np.testing.assert_array_equal(vol.hu, _hu())
    assert capfd.readouterr().err == ""


def test_simpleitk_warnings_are_kept_per_thread(scans, capfd):
    from concurrent.futures import ThreadPoolExecutor

    skew = _nii(scans, [(280, "<4f", (0.0, 0.8, 0.7, 10.0))], name="skew.nii")
    paths = [skew, scans.folder / "scan.nii"] * 8
    with ThreadPoolExecutor(4) as pool:
        vols = list(pool.map(load_itk, paths))
    for p, v in zip(paths, vols):
        has = any("unexpected scales in sform" in w for w in v.meta["warnings"])
        assert has == (p == skew)
    assert capfd.readouterr().err == ""


def test_simpleitk_error_is_one_line_and_silent(scans, capfd):
    """A skewed sform and no qform: ITK refuses it; the message is one line, stderr is empty."""
    path = _nii(scans, [(252, "<2h", (0, 1)), (280, "<4f", (0.0, 0.8, 0.7, 10.0))])
    capfd.readouterr()
    with pytest.raises(InputError) as ei:
        load_itk(path)
    msg = str(ei.value)
    assert type(ei.value) is InputError and msg.startswith(f"{path}: ")
    assert "orthonormal" in msg and "\n" not in msg and "0x" not in msg
    assert capfd.readouterr().err == ""


def test_not_an_itk_suffix_is_refused(scans):
    p = scans.folder / "scan.nrrd"
    p.write_text("NRRD0004\n")
    with pytest.raises(InputError, match="not an ITK image file"):
        load_itk(p)
    with pytest.raises(InputError, match="file not found"):
        load_itk(scans.folder / "missing.mhd")
