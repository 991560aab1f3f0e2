"""A corpus of bad and odd inputs (issue 20) beside one good scan, for the batch tests.

Every case is derived from one small series written by ``lungcad synth`` (DICOM), or from
that series written as ``.mhd``/``.nii.gz``: one header field is broken, or the file is cut.
Each case lives in its own folder of the corpus, with its own PatientID and
SeriesInstanceUID, so that ``lungcad detect`` chooses every one of them.

:func:`build_corpus` writes it and returns the :class:`Case` list that says, for each case,
what the batch must do with it.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom

from fuzz_inputs import lenient_pydicom
from lungcad.io import load_ct, write_itk
from lungcad.synthetic import synth_dataset

#: The good series of the corpus: one synthetic patient, 32 slices of 128 x 128.
SYNTH = dict(patients=1, seed=7, size=128, slices=32, slice_mm=2.5)
UID_ROOT = "1.2.826.0.1.3680043.8.498.20"


#: The cases of :func:`build_corpus`, in its order (the good scan first), so that tests can be
#: parametrized over them before the corpus is written.
NAMES = ("good", "pixelspacing_zero", "pixelspacing_negative", "pixelspacing_one_value",
         "rescaleslope_1e300", "rescaleslope_nan", "rescaleslope_inf", "slicethickness_negative",
         "seriesuid_formula", "patientid_nul", "orientation_not_orthonormal", "orientation_three_values",
         "position_nan", "not_ct", "numberofframes_65536", "corrupt_file", "mhd_negative_spacing",
         "mhd_dimsize_smaller", "mhd_dimsize_bigger", "mhd_datafile_parent", "mhd_datafile_absolute",
         "niigz_cut_in_half")
#: The cases that must be done (the others must fail, each with one error).
SUCCEED = ("good", "slicethickness_negative", "patientid_nul")


@dataclass
class Case:
    """One input of the corpus.

    name : the case's folder under the corpus root
    path : the folder or file that its one error line must name
    words : regex of the words that say what is wrong (searched in that line)
    succeeds : the scan must be done (with ``warning`` in its warnings, when given)
    in_info : ``lungcad info`` (headers only) must report it; False: it may need the pixel
        data, so info reports it at most once; None: info must not report it
    not_words : regex that the line must not match (the misleading messages of issue 20)
    """

    name: str
    path: Path
    words: str = ""
    succeeds: bool = False
    warning: str = ""
    in_info: bool | None = True
    not_words: str = r"Traceback|TypeError|ValueError|OverflowError|KeyError|IndexError|unexpected"


def synth_series(root: Path) -> Path:
    """The folder of the one DICOM series that ``lungcad synth`` writes under ``root``."""
    synth_dataset(root, layout="dicom", **SYNTH)
    (series,) = {f.parent for f in root.rglob("*.dcm")}
    return series


def copy_series(src: Path, dst: Path, k: int, edit=None, *, patient_id: str | None = None) -> Path:
    """``src`` copied to ``dst`` with its own PatientID, series and SOP instance UIDs, and
    ``edit(ds, i)`` applied to each file (i: the file's rank by name)."""
    dst.mkdir(parents=True)
    series_uid = f"{UID_ROOT}.{k}"
    with lenient_pydicom():
        for i, f in enumerate(sorted(src.glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            ds.PatientID = patient_id if patient_id is not None else dst.name
            ds.PatientName = dst.name
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{i + 1}"
            if edit is not None:
                edit(ds, i)
            ds.save_as(dst / f.name)
    return dst


def _set(keyword: str, value):
    def edit(ds, i):
        setattr(ds, keyword, value)
    return edit


def _mhd(volume, folder: Path, name: str, **header) -> Path:
    """``volume`` as ``folder/name.mhd`` + ``.raw``, with header lines replaced by ``header``."""
    mhd = write_itk(volume, folder / f"{name}.mhd")
    text = mhd.read_text()
    for key, value in header.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, f"no {key} line in {mhd}"
    mhd.write_text(text)
    return mhd


def build_corpus(root: Path, *, outside: Path) -> list[Case]:
    """Write the corpus under ``root`` (``outside``: a folder beside it, where the file that a
    hostile ``ElementDataFile`` points to is put) and return its cases, the good scan first."""
    root, outside = Path(root), Path(outside)
    src = synth_series(root.parent / f"{root.name}-synth")
    cases: list[Case] = []

    good = root / "good"
    shutil.copytree(src, good)
    cases.append(Case("good", good, succeeds=True, in_info=None))

    def dicom(name, edit=None, **kw):
        d = copy_series(src, root / name, len(cases), edit, patient_id=kw.pop("patient_id", None))
        cases.append(Case(name, d, **kw))

    dicom("pixelspacing_zero", _set("PixelSpacing", ["0", "0"]), words=r"PixelSpacing")
    dicom("pixelspacing_negative", _set("PixelSpacing", ["-0.7", "-0.7"]), words=r"PixelSpacing",
          not_words=Case.not_words + r"|mixed")
    dicom("pixelspacing_one_value", _set("PixelSpacing", "0.7"), words=r"PixelSpacing")
    dicom("rescaleslope_1e300", _set("RescaleSlope", "1e300"), words=r"RescaleSlope|HU", in_info=False)
    dicom("rescaleslope_nan", _set("RescaleSlope", "NaN"), words=r"RescaleSlope")
    dicom("rescaleslope_inf", _set("RescaleSlope", "Inf"), words=r"RescaleSlope")
    dicom("slicethickness_negative", _set("SliceThickness", "-2.5"), succeeds=True,
          warning=r"SliceThickness", in_info=None)
    dicom("seriesuid_formula", _set("SeriesInstanceUID", '=HYPERLINK("http://x");1.2.3'),
          words=r"SeriesInstanceUID|UID")
    dicom("patientid_nul", patient_id="PAT\x00NUL", succeeds=True, in_info=None)
    dicom("orientation_not_orthonormal", _set("ImageOrientationPatient", ["1", "0", "0", "0.5", "1", "0"]),
          words=r"ImageOrientationPatient", not_words=Case.not_words + r"|localizer")
    dicom("orientation_three_values", _set("ImageOrientationPatient", ["1", "0", "0"]),
          words=r"ImageOrientationPatient", not_words=Case.not_words + r"|localizer")
    dicom("position_nan", _set("ImagePositionPatient", ["0", "NaN", "-100"]), words=r"ImagePositionPatient")
    dicom("not_ct", _set("Modality", "MR"), words=r"not a CT|Modality MR", in_info=None)

    # one single-frame file that claims 65,536 frames (checked before anything is allocated)
    frames = root / "numberofframes_65536"
    frames.mkdir()
    with lenient_pydicom():
        ds = pydicom.dcmread(sorted(src.glob("*.dcm"))[0])
        ds.PatientID = ds.PatientName = frames.name
        ds.SeriesInstanceUID = f"{UID_ROOT}.{len(cases)}"
        ds.NumberOfFrames = 65536
        ds.save_as(frames / "frames.dcm")
    cases.append(Case(frames.name, frames / "frames.dcm", words=r"NumberOfFrames|frames", in_info=False))

    corrupt = root / "corrupt_file"
    corrupt.mkdir()
    (corrupt / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    cases.append(Case(corrupt.name, corrupt / "broken.dcm",
                      words=r"(?i)corrupt|truncated|not a DICOM|cannot read"))

    # the same scan as MetaImage and NIfTI files, broken
    volume = load_ct(src)
    spacing = " ".join(f"{s:g}" for s in volume.spacing[::-1])
    nx, ny, nz = volume.shape[::-1]

    def itk(name, words, *, in_info=True, not_words=Case.not_words, **header):
        folder = root / name
        folder.mkdir()
        mhd = _mhd(volume, folder, name, **header)
        cases.append(Case(name, mhd, words=words, in_info=in_info, not_words=not_words))
        return mhd

    itk("mhd_negative_spacing", r"ElementSpacing|spacing", ElementSpacing="-" + spacing.replace(" ", " -"))
    itk("mhd_dimsize_smaller", r"DimSize", in_info=False, DimSize=f"{nx} {ny} {nz // 2}")
    itk("mhd_dimsize_bigger", r"DimSize", in_info=False, DimSize=f"{nx} {ny} {nz * 2}",
        not_words=Case.not_words + r"|No such file")
    # ElementDataFile pointing out of the .mhd's folder, at a real file of the right size that
    # would load as a scan: a relative path that climbs out, and an absolute one
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.raw"
    write_itk(volume, outside / "secret.mhd")
    for name, target in (("mhd_datafile_parent", None), ("mhd_datafile_absolute", secret)):
        folder = root / name
        rel = target or Path(os.path.relpath(secret, folder))
        mhd = itk(name, r"ElementDataFile", ElementDataFile=rel.as_posix())
        mhd.with_suffix(".raw").unlink()         # the only pixel data is the file outside
    (outside / "secret.mhd").unlink()

    cut = root / "niigz_cut_in_half"
    cut.mkdir()
    nii = write_itk(volume, cut / "niigz_cut_in_half.nii.gz")
    data = nii.read_bytes()
    nii.write_bytes(data[:len(data) // 2])
    cases.append(Case(cut.name, nii, words=r"(?i)truncat|incomplete|decompress|corrupt|cut short|end of",
                      in_info=False))
    assert tuple(c.name for c in cases) == NAMES
    assert tuple(c.name for c in cases if c.succeeds) == SUCCEED
    return cases
