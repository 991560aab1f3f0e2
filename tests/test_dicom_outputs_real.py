"""DICOM SR and SEG (issue 22) of the real TCIA series in ../shared/data/real (LIDC-IDRI-0003 and
the Lung-PET-CT-Dx series; read there, never copied): dciodvfy reports no error, dsrdump reads
the SR, highdicom reads both back with every SR point within 0.5 mm of its nodule's
coordX/Y/Z and every SEG segment's centroid within 0.5 mm of its seg_centroid_x/y/z, and
both reference every source instance.

The nodules are spheres at the readers' lesions (LIDC's 4-reader consensus, Lung-PET-CT-Dx's
tumour boxes) in a hand-made ScanResult (tests/dicom_checks.py), so that no network runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dicom_checks import check_outputs, hand_result, write_outputs
from lungcad.io import discover, load_series
from lungcad.results.dicom_seg import render_seg
from lungcad.results.dicom_sr import render_sr


def _lung_mask(vol) -> np.ndarray:
    """Air-like voxels inside the middle of the field of view: a cheap stand-in."""
    nz, ny, nx = vol.shape
    mask = np.zeros(vol.shape, bool)
    box = (slice(None), slice(ny // 6, 5 * ny // 6), slice(nx // 8, 7 * nx // 8))
    mask[box] = vol.hu[box] < -400
    return mask


def _render_and_check(vol, centres, radii, out):
    result = hand_result(vol, centres, radii, lung_mask=_lung_mask(vol))
    files = {**render_sr(vol, result), **render_seg(vol, result)}
    assert not vol.meta["dicom"].resampled and "output_notes" not in result.meta
    check_outputs(vol, result, write_outputs(files, out))
    return result


def test_lidc_0003(lidc_dir, tmp_path):
    vol = load_series(discover(lidc_dir)[0])
    cons = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    cons = cons[cons["n_readers"] == 4]
    assert len(cons) == 3
    centres = cons[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    radii = (cons["mean_max_axial_diam_mm"].to_numpy(float) / 2).tolist()
    result = _render_and_check(vol, centres, radii, tmp_path)
    assert vol.meta["dicom"].attributes.get("PatientName", "") == ""   # empty there: type 2
    assert len(result.candidates.dropna(subset=["nodule_id"])) == 3


@pytest.mark.parametrize("patient", ["Lung_Dx-A0001", "Lung_Dx-A0002"])
def test_lung_pet_ct_dx(petct_dir, tmp_path, patient):
    """One series per patient (A0001's InstanceNumber runs against z; A0002 has 8 mm slices)."""
    series = sorted((s for s in discover(petct_dir / patient)), key=lambda s: s.series_uid)
    vol = load_series(series[0])
    ann = pd.read_csv(petct_dir / "annotations_index.csv")
    ann = ann[ann["series_instance_uid"] == vol.series_uid]
    if ann.empty:   # the boxes are drawn on one of the two kernels; both share the geometry
        ann = pd.read_csv(petct_dir / "annotations_index.csv")
        ann = ann[ann["patient_id"] == patient]
    assert len(ann)
    mid = ann.iloc[len(ann) // 2]
    centre = (mid["center_x_mm"], mid["center_y_mm"], mid["z_mm"])
    radius = min(15.0, max(6.0, min(mid["width_mm"], mid["height_mm"]) / 2))
    _render_and_check(vol, [centre], [radius], tmp_path)
