"""lungcad.io: DICOM/ITK writers and readers, discover, choose_series, and the real TCIA scans."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from lungcad.errors import InputError
from lungcad.io import (
    choose_series,
    discover,
    kernel_rank,
    load_ct,
    write_dicom_multiframe,
    write_dicom_series,
    write_itk,
)
from lungcad.io import dicom_decode as io_dicom_decode
from lungcad.volume import CTVolume

CUBE = (slice(5, 8), slice(10, 14), slice(20, 25))  # z, y, x of a bright cube
SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-10.0, 20.0, -300.0)


def make_volume(direction=None, *, nz=12, ny=40, nx=48, series_uid="", patient_id="P1",
                kernel="B40f", seed=0) -> CTVolume:
    """A small volume: noisy lung-like background, a body block, a bright cube."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, -700, size=(nz, ny, nx)).astype(np.int16)
    hu[:, 30:, :] = 40
    hu[CUBE] = 300
    hu[0, 0, 0] = -1024
    hu[-1, -1, -1] = 1500
    return CTVolume(hu, SPACING, ORIGIN, np.eye(3) if direction is None else direction,
                    patient_id=patient_id, series_uid=series_uid, meta={"kernel": kernel})


def assert_same_world_content(src: CTVolume, got: CTVolume, *, tol_mm=0.01):
    """Every voxel of ``src`` is found at the same world position in ``got`` with the same HU."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in src.shape], indexing="ij")
    zyx = np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()])
    world = src.voxel_to_world(zyx)
    idx = got.world_to_voxel(world)
    assert np.abs(idx - np.rint(idx)).max() * min(got.spacing) < tol_mm
    idx = np.rint(idx).astype(int)
    assert (idx >= 0).all() and (idx < np.array(got.shape)).all()
    np.testing.assert_array_equal(got.hu[idx[:, 0], idx[:, 1], idx[:, 2]], src.hu.ravel())
    # the world position of the cube's first voxel, both ways
    a = src.voxel_to_world((5, 10, 20))
    b = got.voxel_to_world(got.world_to_voxel(a).round())
    assert np.linalg.norm(a - b) < tol_mm


# ------------------------------------------------------------------------- round trips

def test_dicom_round_trip_shuffled_names_reversed_instances(tmp_path):
    vol = make_volume()
    files = write_dicom_series(vol, tmp_path, seed=3, shuffle_names=True,
                               reverse_instance_numbers=True)
    assert len(files) == 12
    # name order is not slice order, and InstanceNumber runs against z
    by_name = sorted(files)
    assert by_name != files
    inst = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert inst == list(range(12, 0, -1))
    got = load_ct(tmp_path)
    assert got.shape == vol.shape
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(got.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(got.direction, np.eye(3), atol=1e-9)
    assert got.patient_id == "P1"
    assert got.meta["reader"] == "pydicom"
    assert got.meta["n_files"] == 12
    assert got.meta["kernel"] == "B40f"
    assert got.meta["resampled_z"] is False
    assert got.meta["dropped"] == []
    assert got.meta["clipped_voxels"] == 0
    np.testing.assert_allclose(got.voxel_to_world((5, 10, 20)), [-10 + 16, 20 + 7, -300 + 12.5],
                               atol=0.01)


@pytest.mark.parametrize("direction", [
    np.diag([-1.0, -1.0, 1.0]),  # rows and columns flipped
    np.diag([1.0, -1.0, -1.0]),  # slice direction against the normal
    np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),  # rows and columns swapped
    np.array([[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]]),
], ids=["flip_xy", "flip_yz", "swap_xy", "rot_z"])
def test_dicom_round_trip_non_identity_direction(tmp_path, direction):
    vol = make_volume(direction)
    write_dicom_series(vol, tmp_path)
    got = load_ct(tmp_path)
    # the reader orders slices along the normal, so z may be reversed; world content is equal
    assert_same_world_content(vol, got)
    normal = np.cross(got.direction[:, 0], got.direction[:, 1])
    np.testing.assert_allclose(got.direction[:, 2], normal, atol=1e-9)


def test_rescale_and_field_of_view_padding(tmp_path):
    vol = make_volume()
    vol.hu[vol.hu > 1500] = 1500
    yy, xx = np.mgrid[:40, :48]
    fov = (yy - 20) ** 2 + (xx - 24) ** 2 < 22 ** 2
    write_dicom_series(vol, tmp_path, rescale_slope=0.5, rescale_intercept=-2048, fov_mask=fov,
                       padding_value=-2000)
    ds = pydicom.dcmread(next(tmp_path.iterdir()))
    assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -2048
    assert ds.PixelPaddingValue == -2000 and ds.PixelRepresentation == 1
    assert (ds.pixel_array[~fov] == -2000).all()
    got = load_ct(tmp_path)
    expect = vol.hu.copy()
    expect[:, ~fov] = -1024
    np.testing.assert_array_equal(got.hu, expect)
    outside = int((~fov).sum()) * 12
    assert got.meta["padding_voxels"] == outside
    assert got.meta["clipped_voxels"] == outside


def test_hu_below_air_is_clipped(tmp_path):
    vol = make_volume()
    vol.hu[:, :3, :] = -2048  # as outside the FOV of the LIDC scan
    write_dicom_series(vol, tmp_path, rescale_intercept=-3072)
    got = load_ct(tmp_path)
    assert (got.hu[:, :3, :] == -1024).all()
    assert got.meta["clipped_voxels"] == 12 * 3 * 48
    assert got.hu.min() == -1024


@pytest.mark.parametrize("compress", ["rle", "jpeg2000"])
def test_compressed_series(tmp_path, compress):
    vol = make_volume()
    write_dicom_series(vol, tmp_path, compress=compress)
    ts = pydicom.dcmread(next(tmp_path.iterdir()), stop_before_pixels=True).file_meta
    assert ts.TransferSyntaxUID.is_compressed
    got = load_ct(tmp_path)
    np.testing.assert_array_equal(got.hu, vol.hu)
    assert got.meta["transfer_syntax"] == str(ts.TransferSyntaxUID)


def _without_pydicom_decoders(monkeypatch) -> None:
    """Make pydicom's pixel decoding fail as it does for a transfer syntax it has no plugin for."""
    def no_decoder(path):
        raise NotImplementedError("no decoder for this transfer syntax (test)")

    monkeypatch.setattr(io_dicom_decode, "_decode_file", no_decoder)


def _recompress_jpeg_lossless(src: Path, dst: Path) -> None:
    """Rewrite each file of a series as JPEG Lossless (Process 14, SV1) with GDCM via SimpleITK:
    pydicom has no encoder for it, and this is what many archives send."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        img = sitk.ReadImage(str(f))                  # HU, with the file's tags as metadata
        out = sitk.Cast(img, sitk.sitkInt16)
        for key in img.GetMetaDataKeys():
            out.SetMetaData(key, img.GetMetaData(key))
        out.SetMetaData("0028|1052", "0")             # the pixels are HU now
        out.SetMetaData("0028|1053", "1")
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.KeepOriginalImageUIDOn()
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.SetFileName(str(dst / f.name))
        writer.Execute(out)


def test_jpeg_lossless_series(tmp_path, monkeypatch):
    vol = make_volume(np.diag([-1.0, -1.0, 1.0]))
    write_dicom_series(vol, tmp_path / "plain", rescale_intercept=-1024)
    _recompress_jpeg_lossless(tmp_path / "plain", tmp_path / "jpeg")
    meta = pydicom.dcmread(next((tmp_path / "jpeg").iterdir()), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"          # JPEG Lossless SV1
    got = load_ct(tmp_path / "jpeg")
    assert got.meta["reader"] == "pydicom" and got.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.origin, vol.origin, atol=0.01)
    np.testing.assert_allclose(got.direction, vol.direction, atol=1e-6)

    # and through the GDCM fallback, when pydicom has no decoder
    _without_pydicom_decoders(monkeypatch)
    again = load_ct(tmp_path / "jpeg")
    assert again.meta["reader"] == "simpleitk"
    np.testing.assert_array_equal(again.hu, vol.hu)


def test_simpleitk_reads_the_same_series(tmp_path):
    vol = make_volume(np.diag([-1.0, -1.0, 1.0]))
    write_dicom_series(vol, tmp_path, compress="rle", reverse_instance_numbers=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    img = reader.Execute()
    got = load_ct(tmp_path)
    np.testing.assert_allclose(img.GetOrigin(), got.origin, atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), got.spacing[::-1], atol=1e-6)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), got.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.int16), got.hu)


def test_gdcm_fallback_when_pydicom_cannot_decode(tmp_path, monkeypatch):
    vol = make_volume()
    write_dicom_series(vol, tmp_path, compress="rle")
    _without_pydicom_decoders(monkeypatch)
    got = load_ct(tmp_path)
    assert got.meta["reader"] == "simpleitk"
    np.testing.assert_array_equal(got.hu, vol.hu)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii", ".nii.gz"])
def test_itk_round_trip(tmp_path, suffix):
    d = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # rotated 90 degrees about z
    vol = make_volume(d)
    path = write_itk(vol, tmp_path / f"1.2.3.4{suffix}")
    if suffix == ".mhd":
        assert (tmp_path / "1.2.3.4.raw").is_file()
    got = load_ct(path)
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(got.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(got.direction, d, atol=1e-5)
    assert got.series_uid == got.patient_id == "1.2.3.4"
    assert_same_world_content(vol, got)


def test_itk_values_below_air_clipped(tmp_path):
    vol = make_volume()
    vol.hu[:, :, :4] = -3024  # outside the field of view in many LUNA16 .mhd files
    got = load_ct(write_itk(vol, tmp_path / "luna.mhd"))
    assert got.meta["clipped_voxels"] == 12 * 40 * 4
    assert (got.hu[:, :, :4] == -1024).all()
    np.testing.assert_array_equal(got.hu[:, :, 4:], vol.hu[:, :, 4:])


def test_nifti_stores_ras_and_reads_back_lps(tmp_path):
    import struct

    vol = make_volume()
    path = write_itk(vol, tmp_path / "scan.nii")
    header = path.read_bytes()[:348]
    assert struct.unpack("<i", header[:4])[0] == 348
    qoffset = struct.unpack("<3f", header[268:280])  # NIfTI-1 qoffset_x, _y, _z (RAS)
    np.testing.assert_allclose(qoffset, (-ORIGIN[0], -ORIGIN[1], ORIGIN[2]), atol=1e-4)
    np.testing.assert_allclose(load_ct(path).origin, ORIGIN, atol=1e-4)


def test_multiframe_enhanced_ct_with_shuffled_frames(tmp_path):
    vol = make_volume()
    order = np.random.default_rng(0).permutation(12)
    path = write_dicom_multiframe(vol, tmp_path / "enh.dcm", enhanced=True, frame_order=order)
    got = load_ct(path)
    assert got.meta["format"] == "dicom-multiframe"
    np.testing.assert_array_equal(got.hu, vol.hu)
    np.testing.assert_allclose(got.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(got.spacing, SPACING, atol=1e-6)
    assert got.meta["kernel"] == "B40f"


def test_multiframe_classic(tmp_path):
    vol = make_volume(np.diag([1.0, 1.0, -1.0]))
    path = write_dicom_multiframe(vol, tmp_path / "classic.dcm", enhanced=False)
    got = load_ct(path)
    assert_same_world_content(vol, got)
    # found by discover as one series of its own
    (s,) = discover(tmp_path)
    assert s.format == "dicom-multiframe" and s.shape == (12, 40, 48)


# ---------------------------------------------------------------- geometry repairs and drops

def _write_into(folder: Path, vol: CTVolume, prefix: str, **kw) -> None:
    """Write a series into ``folder`` beside others, with file names starting ``prefix``."""
    tmp = folder.parent / f".tmp_{prefix}"
    for f in write_dicom_series(vol, tmp, **kw):
        f.parent.joinpath(f.name).rename(folder / f"{prefix}{f.name}")
    tmp.rmdir()


def _positions(folder: Path) -> list[tuple[Path, float]]:
    out = []
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((f, float(ds.ImagePositionPatient[2])))
    return sorted(out, key=lambda t: t[1])


def test_one_missing_slice_is_resampled(tmp_path):
    vol = make_volume()
    write_dicom_series(vol, tmp_path)
    files = _positions(tmp_path)
    files[6][0].unlink()  # a gap of 2 x 2.5 mm
    got = load_ct(tmp_path)
    assert got.shape == (12, 40, 48)
    assert got.meta["resampled_z"] is True
    assert len(got.meta["original_positions_mm"]) == 11
    expect = np.rint((vol.hu[5].astype(float) + vol.hu[7]) / 2)
    np.testing.assert_array_equal(got.hu[6], expect.astype(np.int16))
    np.testing.assert_array_equal(got.hu[7:], vol.hu[7:])
    np.testing.assert_array_equal(got.hu[:6], vol.hu[:6])


def test_three_missing_slices_refused(tmp_path):
    vol = make_volume()
    write_dicom_series(vol, tmp_path)
    files = _positions(tmp_path)
    for f, _ in files[5:8]:
        f.unlink()
    with pytest.raises(InputError) as e:
        load_ct(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "missing slices" in msg
    assert "10.00 mm" in msg and "-290.00" in msg and "-280.00" in msg


def test_uneven_spacing_resampled_linearly(tmp_path):
    hu = np.repeat((np.arange(12) * 10).astype(np.int16)[:, None, None], 40 * 48).reshape(12, 40,
                                                                                          48)
    vol = CTVolume(hu, SPACING, ORIGIN, patient_id="U")
    write_dicom_series(vol, tmp_path)
    f, z = _positions(tmp_path)[5]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient[2] = z + 0.5  # slice 5 at 13.0 mm from the origin instead of 12.5
    ds.save_as(f)
    got = load_ct(tmp_path)
    assert got.meta["resampled_z"] is True
    assert got.shape == (12, 40, 48)
    assert got.spacing[0] == pytest.approx(2.5)
    # slice 5 (12.5 mm) is interpolated between 10.0 mm (value 40) and 13.0 mm (value 50)
    assert got.hu[5, 0, 0] == round(40 + 10 * 2.5 / 3)
    # slice 6 (15.0 mm) between 13.0 mm (50) and 15.0 (60) lands exactly on the latter
    assert got.hu[6, 0, 0] == 60
    assert got.meta["original_positions_mm"][5] == pytest.approx(-300 + 13.0)


def test_localizer_dropped(tmp_path):
    vol = make_volume(series_uid="1.2.826.0.1.3680043.8.498.1")
    write_dicom_series(vol, tmp_path)
    src = _positions(tmp_path)[0][0]
    ds = pydicom.dcmread(src)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "scout.dcm")
    got = load_ct(tmp_path)
    np.testing.assert_array_equal(got.hu, vol.hu)
    assert len(got.meta["dropped"]) == 1
    assert "localizer" in got.meta["dropped"][0]["reason"]
    assert "scout.dcm" in got.meta["dropped"][0]["image"]
    (s,) = discover(tmp_path)
    assert s.n_slices == 12


def test_duplicate_position_dropped(tmp_path):
    vol = make_volume()
    write_dicom_series(vol, tmp_path)
    src = _positions(tmp_path)[4][0]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "dup.dcm")
    got = load_ct(tmp_path)
    assert got.shape == (12, 40, 48)
    np.testing.assert_array_equal(got.hu, vol.hu)
    (d,) = got.meta["dropped"]
    assert "duplicate position" in d["reason"] and "-290.000" in d["reason"]


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("keep", [0.5, 150], ids=["truncated_pixels", "truncated_header"])
def test_corrupt_file_names_that_file(tmp_path, keep):
    write_dicom_series(make_volume(), tmp_path)
    bad = _positions(tmp_path)[3][0]
    data = bad.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    bad.write_bytes(data[:n])
    with pytest.raises(InputError) as e:
        load_ct(tmp_path)
    assert str(bad) in str(e.value)
    assert e.value.path == str(bad)


def test_image_without_geometry_refused(tmp_path):
    write_dicom_series(make_volume(), tmp_path)
    f = _positions(tmp_path)[2][0]
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)
    with pytest.raises(InputError, match="ImagePositionPatient") as e:
        load_ct(tmp_path)
    assert e.value.path == str(f)
    (s,) = discover(tmp_path)
    assert str(f) in s.problem and choose_series([s]) == {}


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "LICENSE").write_text("CC BY 4.0")
    (tmp_path / "reads.xml").write_text("<a/>")
    with pytest.raises(InputError, match="no DICOM") as e:
        load_ct(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_mr_series_refused(tmp_path):
    write_dicom_series(make_volume(), tmp_path, modality="MR")
    with pytest.raises(InputError, match="not a CT series: Modality is MR") as e:
        load_ct(tmp_path)
    assert str(tmp_path) in str(e.value)
    (s,) = discover(tmp_path)
    assert s.modality == "MR" and choose_series([s]) == {}


def test_one_slice_refused(tmp_path):
    vol = make_volume(nz=1)
    (f,) = write_dicom_series(vol, tmp_path)
    with pytest.raises(InputError, match="one slice") as e:
        load_ct(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(InputError, match="one slice") as e:
        load_ct(f)
    assert str(f) in str(e.value)


def test_mixed_sizes_refused(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_dicom_series(make_volume(series_uid=uid), tmp_path / "s", shuffle_names=False)
    small = make_volume(series_uid=uid, ny=30, nx=30)
    small.origin = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + 30.0)
    files = write_dicom_series(small, tmp_path / "t", shuffle_names=False)
    for i, f in enumerate(files[:2]):
        shutil.move(f, tmp_path / "s" / f"extra{i}.dcm")
    with pytest.raises(InputError, match="mixed image sizes") as e:
        load_ct(tmp_path / "s")
    assert "40x48" in str(e.value) and "30x30" in str(e.value)
    assert str(tmp_path / "s") in str(e.value)


def test_gantry_tilt_orientation_refused(tmp_path):
    a = math.radians(15)
    tilt = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    write_dicom_series(make_volume(tilt), tmp_path)
    with pytest.raises(InputError, match="not an axial series") as e:
        load_ct(tmp_path)
    assert "15.0 degrees" in str(e.value) and str(tmp_path) in str(e.value)


def test_gantry_tilt_shear_refused(tmp_path):
    write_dicom_series(make_volume(), tmp_path)
    for k, (f, _) in enumerate(_positions(tmp_path)):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + k * 0.67  # 15 degrees
        ds.GantryDetectorTilt = 15
        ds.save_as(f)
    with pytest.raises(InputError, match="gantry tilt") as e:
        load_ct(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_nonexistent_path(tmp_path):
    p = tmp_path / "nope"
    with pytest.raises(InputError, match="no such file") as e:
        load_ct(p)
    assert str(p) in str(e.value)
    with pytest.raises(InputError):
        discover(p)


def test_series_uid_selection(tmp_path):
    d = tmp_path / "scan"
    d.mkdir()
    _write_into(d, make_volume(series_uid="1.2.3.10", kernel="B70f"), "a")
    _write_into(d, make_volume(series_uid="1.2.3.20", kernel="B30f", seed=1), "b", seed=1)
    tmp_path = d
    assert load_ct(tmp_path).series_uid == "1.2.3.20"  # softer kernel by default
    assert load_ct(tmp_path, series_uid="1.2.3.10").meta["kernel"] == "B70f"
    with pytest.raises(InputError, match="1.2.3.99"):
        load_ct(tmp_path, series_uid="1.2.3.99")


# ------------------------------------------------------------------------------ discover

def test_discover_tree(tmp_path):
    # DSB2017-like patient folder with two series (two kernels) mixed in one folder
    a = tmp_path / "patA"
    a.mkdir()
    _write_into(a, make_volume(patient_id="A", series_uid="1.2.3.1", kernel="B70f"), "a", seed=1)
    _write_into(a, make_volume(patient_id="A", series_uid="1.2.3.2", kernel="B30f"), "b", seed=2)
    # rename so that the two series interleave by name
    for i, f in enumerate(sorted(a.iterdir(), key=lambda f: f.name[1:] + f.name[0])):
        f.rename(a / f"{i:03d}_{f.name}")
    assert len(list(a.iterdir())) == 24
    # TCIA-like patient/study/series, one series of 10 slices at 1.25 mm
    b = tmp_path / "patB" / "study" / "series"
    vb = make_volume(patient_id="B", series_uid="1.2.3.3", nz=10)
    vb.spacing = (1.25, 0.7, 0.8)
    write_dicom_series(vb, b)
    (b / "bad.dcm").write_bytes(next(b.iterdir()).read_bytes()[:300])  # truncated header
    # a DICOM object without an image (like a DICOMDIR or a report) is not a scan: skipped
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.PatientID = "B"
    sr.SeriesInstanceUID = generate_uid()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(b / "report.dcm", enforce_file_format=True)
    # LUNA16-like subset with an .mhd, and files to ignore
    write_itk(make_volume(nz=7), tmp_path / "subset0" / "1.3.6.1.99.mhd")
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX\n")
    (tmp_path / "LICENSE").write_text("text")
    errors: list = []
    found = discover(tmp_path, errors=errors)
    assert [(s.patient_id, s.series_uid, s.format, s.n_slices) for s in found] == [
        ("1.3.6.1.99", "1.3.6.1.99", "itk", 7),
        ("A", "1.2.3.1", "dicom", 12),
        ("A", "1.2.3.2", "dicom", 12),
        ("B", "1.2.3.3", "dicom", 10),
    ]
    assert len(errors) == 1 and errors[0][0] == b / "bad.dcm"
    sa = found[1]
    assert sa.path == a and len(sa.files) == 12 and sa.kernel == "B70f"
    assert sa.shape == (12, 40, 48)
    np.testing.assert_allclose(sa.spacing, (2.5, 0.7, 0.8))
    assert found[3].path == b and found[3].spacing[0] == pytest.approx(1.25)
    assert found[0].shape == (7, 40, 48)
    d = found[1].to_dict()
    assert d["shape"] == [12, 40, 48] and d["modality"] == "CT" and len(d["files"]) == 12
    chosen = choose_series(found)
    assert chosen["A"].series_uid == "1.2.3.2"  # B30f is softer than B70f
    assert chosen["B"].series_uid == "1.2.3.3"
    # a single file given directly
    (s,) = discover(tmp_path / "subset0" / "1.3.6.1.99.mhd")
    assert s.format == "itk"
    # several patients in one folder: load_ct asks for one
    (b / "bad.dcm").unlink()
    with pytest.raises(InputError, match="patients"):
        load_ct(tmp_path / "patA" / "..")


def test_choose_series_prefers_thinner_then_softer_then_more():
    def info(uid, thick, kernel, n):
        from lungcad.io import SeriesInfo
        return SeriesInfo(path=Path(uid), files=[], format="dicom", patient_id="P",
                          study_uid="", series_uid=uid, series_description="", modality="CT",
                          n_slices=n, shape=(n, 512, 512), spacing=(thick, 0.7, 0.7),
                          kernel=kernel, slice_thickness=thick)
    s = [info("1", 5.0, "B30f", 60), info("2", 1.0, "B70f", 300), info("3", 1.0, "B45f", 300),
         info("4", 1.0, "B45f", 310)]
    assert choose_series(s)["P"].series_uid == "4"
    assert choose_series(s[:3])["P"].series_uid == "3"
    assert choose_series(s[:2])["P"].series_uid == "2"


@pytest.mark.parametrize("soft,sharp", [
    ("B30f", "B70f"), ("B40f", "B70f"), ("Br40d", "Bl57d"), ("SOFT", "LUNG"),
    ("STANDARD", "BONE"), ("STANDARD", "LUNG"), ("B", "L"), ("A", "D"), ("B", "D"),
    ("FC13", "FC51"), ("I26f", "I70f"),
])
def test_kernel_rank(soft, sharp):
    assert kernel_rank(soft) < kernel_rank(sharp)


# ------------------------------------------------------------------------------ real scans

PETCT = {  # series folder -> (shape, spacing, kernel)
    "3.000000-5mm-41315": ((64, 512, 512), (5.0, 0.841797, 0.841797), "B"),
    "2.000000-5mm-40805": ((64, 512, 512), (5.0, 0.841797, 0.841797), "L"),
    "3.000000-ThoraxRoutine_8.0.0_B40f-10983": ((30, 512, 512), (8.0, 0.646484, 0.646484), "B40f"),
    "2.000000-ThoraxRoutine_8.0.0_B70f-62919": ((30, 512, 512), (8.0, 0.646484, 0.646484), "B70f"),
}


@pytest.fixture(scope="module")
def petct_series(petct_dir):
    errors: list = []
    found = discover(petct_dir, errors=errors)
    return found, errors


@pytest.fixture(scope="module")
def petct_volumes(petct_series):
    found, _ = petct_series
    return {s.path.name: load_ct(s.path) for s in found}


@pytest.fixture(scope="module")
def lidc_volume(lidc_dir):
    return load_ct(lidc_dir)


def _lung_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels below -400 HU not connected to the volume border: the lungs (and airways)."""
    import scipy.ndimage as ndi
    lab, n = ndi.label(hu < -400)
    border = np.unique(np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    sizes[border[border > 0] - 1] = 0
    return np.isin(lab, np.argsort(sizes)[::-1][:2] + 1)


def _check_hu_classes(vol: CTVolume):
    hu = vol.hu
    assert hu.min() == -1024
    air = np.median(hu[:, :16, :16])  # a corner, outside the body
    assert -1024 <= air <= -950, air
    sub = hu[:, ::2, ::2]  # every other row and column: enough, and 4 x faster
    lung = _lung_mask(sub)
    litres = lung.sum() * vol.voxel_volume_mm3 * 4 / 1e6
    assert 1.5 < litres < 8, litres
    assert -900 <= np.median(sub[lung]) <= -700, np.median(sub[lung])
    # soft tissue: the histogram peak above -50 HU (muscle, blood, organs) lies at 0..100 HU
    cnt, edges = np.histogram(hu, bins=np.arange(-50, 201, 5))
    peak = edges[np.argmax(np.convolve(cnt, np.ones(3) / 3, mode="same"))] + 2.5
    assert 0 <= peak <= 100, peak


@pytest.mark.real
def test_petct_discover_and_choice(petct_series):
    found, errors = petct_series
    assert errors == []
    assert len(found) == 4
    assert sorted({s.patient_id for s in found}) == ["Lung_Dx-A0001", "Lung_Dx-A0002"]
    assert all(s.modality == "CT" and s.format == "dicom" and not s.problem for s in found)
    chosen = choose_series(found)
    assert chosen["Lung_Dx-A0001"].kernel == "B"
    assert chosen["Lung_Dx-A0002"].kernel == "B40f"


@pytest.mark.real
@pytest.mark.parametrize("folder", sorted(PETCT))
def test_petct_series(petct_volumes, folder):
    vol = petct_volumes[folder]
    shape, spacing, kernel = PETCT[folder]
    assert vol.shape == shape
    np.testing.assert_allclose(vol.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.meta["kernel"] == kernel
    assert vol.meta["resampled_z"] is False and vol.meta["dropped"] == []
    z0, z1 = (-439.0, -124.0) if shape[0] == 64 else (80.0, 312.0)
    assert vol.origin[2] == pytest.approx(z0)
    assert vol.voxel_to_world((shape[0] - 1, 0, 0))[2] == pytest.approx(z1)
    _check_hu_classes(vol)


@pytest.mark.real
def test_petct_boxes_on_tumour(petct_dir, petct_volumes):
    boxes = pd.read_csv(petct_dir / "annotations_index.csv")
    assert len(boxes) == 38
    by_uid = {v.series_uid: v for v in petct_volumes.values()}
    for _, b in boxes.iterrows():
        vol = by_uid[b.series_instance_uid]
        z, y, x = vol.world_to_voxel((b.center_x_mm, b.center_y_mm, b.z_mm))
        assert abs(z - round(z)) < 1e-3  # on a slice
        z, y, x = int(round(z)), int(round(y)), int(round(x))
        assert 0 <= z < vol.shape[0] and 0 <= y < vol.shape[1] and 0 <= x < vol.shape[2]
        # the box corners map back to the pixel box of the XML
        _, r0, c0 = vol.world_to_voxel(
            (b.center_x_mm - b.width_mm / 2, b.center_y_mm - b.height_mm / 2, b.z_mm))
        assert abs(c0 - b.xmin_px) < 0.51 and abs(r0 - b.ymin_px) < 0.51
        assert np.median(vol.hu[z, y - 1:y + 2, x - 1:x + 2]) > -300, (b.dicom_file, z, y, x)


@pytest.mark.real
def test_lidc_volume(lidc_volume):
    vol = lidc_volume
    assert vol.shape == (140, 512, 512)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.820312, 0.820312), atol=1e-6)
    np.testing.assert_allclose(vol.origin, (-228.800003, -210.0, -379.0), atol=1e-6)
    assert vol.voxel_to_world((139, 0, 0))[2] == pytest.approx(-31.5)
    assert vol.series_uid.endswith("170706757615202213033480003264")
    assert vol.patient_id == "LIDC-IDRI-0003"
    assert vol.meta["kernel"] == "STANDARD" and vol.meta["manufacturer"] == "GE MEDICAL SYSTEMS"
    # about 21 % of the voxels lie outside the field of view at HU -2048 before clipping
    frac = vol.meta["clipped_voxels"] / vol.hu.size
    assert 0.18 < frac < 0.24, frac
    _check_hu_classes(vol)


@pytest.mark.real
def test_lidc_nodule_centres_on_tissue(lidc_dir, lidc_volume):
    table = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    assert len(table) == 4
    for _, r in table.iterrows():
        z, y, x = np.rint(lidc_volume.world_to_voxel((r.x_mm, r.y_mm, r.z_mm))).astype(int)
        assert 0 <= z < 140 and 0 <= y < 512 and 0 <= x < 512
        if r.n_readers >= 3:  # the reference lesions; cluster 4 is a 1-reader finding
            assert np.median(lidc_volume.hu[z, y - 1:y + 2, x - 1:x + 2]) > -300, r.cluster_id
