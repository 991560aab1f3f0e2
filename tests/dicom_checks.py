"""Helpers of the DICOM SR and SEG tests (tests/test_dicom_outputs*.py): the outside checkers
(dciodvfy of dicom3tools, dsrdump of dcmtk), reading the SR and SEG back with highdicom, and a
hand-made ScanResult with nodules (spheres at known places) and a lung mask on a volume's grid.

A checker that is not installed skips its test with the reason, and fails it under CI=true
(.ci/run installs both)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcad.result import ScanResult

#: Where a nodule's candidate-table point lies from its segmentation's centroid (mm), so that a
#: test that compared the SR with the centroid, or the SEG with the point, would fail.
POINT_OFFSET_MM = np.array([0.8, -0.6, 0.5])


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} not found (Debian package {package}: apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this does not skip")
    pytest.skip(reason)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (its warnings are not errors); fails the test
    unless dciodvfy recognised the object as an SR or a SEG (so it checked that IOD)."""
    exe = need_tool("dciodvfy", "dicom3tools")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    assert {"Comprehensive3DSR", "Segmentation"} & {ln.strip() for ln in lines}, \
        f"dciodvfy did not recognise {path} as an SR or SEG: {lines[:5]}"
    return [ln for ln in lines if ln.startswith("Error")]


def dsrdump(path: Path) -> str:
    """dsrdump's rendering of an SR; fails the test when dsrdump cannot read it."""
    exe = need_tool("dsrdump", "dcmtk")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"dsrdump failed on {path}: {run.stderr}"
    assert not [ln for ln in run.stderr.splitlines() if ln.startswith(("E:", "F:"))], run.stderr
    return run.stdout


def write_outputs(files: dict[str, bytes], out: Path) -> dict[str, Path]:
    paths = {}
    for key, data in files.items():
        p = out / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths[key.rsplit("/", 1)[-1]] = p
    return paths


def sphere_labels(volume, centres_xyz, radii_mm) -> np.ndarray:
    """int16 labels on the volume's grid: voxel centres within radius k of centre k get k."""
    labels = np.zeros(volume.shape, np.int16)
    sp = np.asarray(volume.spacing, float)
    for k, (c, r) in enumerate(zip(centres_xyz, radii_mm), start=1):
        zyx = volume.world_to_voxel(np.asarray(c, float))
        lo = np.maximum(np.floor(zyx - r / sp) - 1, 0).astype(int)
        hi = np.minimum(np.ceil(zyx + r / sp) + 2, volume.shape).astype(int)
        idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"),
                       axis=-1).reshape(-1, 3)
        world = volume.voxel_to_world(idx.astype(float))
        inside = idx[np.linalg.norm(world - np.asarray(c, float), axis=1) < r]
        labels[tuple(inside.T)] = k
    return labels


def hand_result(volume, centres_xyz, radii_mm, *, lung_mask=None) -> ScanResult:
    """A ScanResult as the measure stage makes it (issue 22's columns): one reported nodule per
    sphere, plus one candidate that is not reported; nodule_labels and lung_mask set."""
    labels = sphere_labels(volume, centres_xyz, radii_mm)
    rows = []
    for k, r in enumerate(radii_mm, start=1):
        idx = np.argwhere(labels == k).astype(float)
        assert len(idx), f"sphere {k} has no voxel"
        centroid = volume.voxel_to_world(idx).mean(axis=0)
        point = centroid + POINT_OFFSET_MM
        zyx = volume.world_to_voxel(point)
        rows.append(dict(
            seriesuid=volume.series_uid, coordX=point[0], coordY=point[1], coordZ=point[2],
            z=zyx[0], y=zyx[1], x=zyx[2], diameter_mm=2 * r, probability=0.95 - 0.1 * k,
            nodule_prob=0.95 - 0.1 * k, malignancy_prob=0.3, patient_id=volume.patient_id,
            nodule_id=k, volume_mm3=float(len(idx) * volume.voxel_volume_mm3),
            long_axis_mm=2 * r + 0.4, short_axis_mm=2 * r - 0.4, mean_axis_mm=2 * r,
            nodule_type=["solid", "part-solid", "ground-glass", "calcified"][(k - 1) % 4],
            solid_component_mm=(r if k == 2 else np.nan), lungrads_research=["3", "4A", "2", "4B"][(k - 1) % 4],
            seg_centroid_x=centroid[0], seg_centroid_y=centroid[1], seg_centroid_z=centroid[2]))
    c = volume.voxel_to_world(np.array(volume.shape, float) / 2)
    rows.append(dict(seriesuid=volume.series_uid, coordX=c[0], coordY=c[1], coordZ=c[2], z=0.0,
                     y=0.0, x=0.0, diameter_mm=4.0, probability=0.05, nodule_prob=0.05,
                     malignancy_prob=0.1, patient_id=volume.patient_id, nodule_id=np.nan))
    cands = pd.DataFrame(rows)
    if lung_mask is None:
        lung_mask = np.zeros(volume.shape, bool)
        nz, ny, nx = volume.shape
        lung_mask[nz // 8: nz - nz // 8, ny // 4: 3 * ny // 4, nx // 8: 7 * nx // 8] = True
    result = ScanResult(
        series_uid=volume.series_uid, patient_id=volume.patient_id, candidates=cands,
        cancer_probability=0.61,
        config={"candidates": {"weights": "builtin:segmenter.keras"},
                "fpr": {"weights": "builtin:fpr.keras"}},
        config_hash="0123456789abcdef", versions={"lungcad": "0.1.0"})
    result.nodule_labels = labels   # transient fields of issue 22 (part M)
    result.lung_mask = lung_mask
    result.reported = {"n": len(radii_mm), "lungrads_research": "4A" if radii_mm else "1"}
    return result


def sr_points(path: Path) -> dict[str, np.ndarray]:
    """The SR's 3-D points by tracking identifier, read with highdicom; checks each is in
    the SR's frame of reference."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    out = {}
    for g in sr.content.get_planar_roi_measurement_groups():
        roi = g.roi
        assert roi.graphic_type.value == "POINT"
        out[g.tracking_identifier] = (np.asarray(roi.value, float).reshape(3),
                                      roi.frame_of_reference_uid,
                                      {m.name.meaning: (m.value, m.unit.value)
                                       for m in g.get_measurements()},
                                      {q.name.meaning: q.value.value
                                       for q in g.get_qualitative_evaluations()})
    return out


def seg_centroids(path: Path) -> tuple[dict[str, np.ndarray], object]:
    """Each segment's centroid (world LPS mm) by label, from the SEG's frames read with
    highdicom: pixel (row r, column c) of a frame lies at IPP + c dc u + r dr w."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    u, w = iop[:3], iop[3:]
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ident = item if "SegmentIdentificationSequence" in item else shared  # one segment
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        rc = np.argwhere(pixels[i] > 0).astype(float)
        if not len(rc):
            continue
        world = ipp + rc[:, 1:2] * dc * u + rc[:, 0:1] * dr * w
        sums[number] = sums.get(number, 0) + world.sum(axis=0)
        counts[number] = counts.get(number, 0) + len(rc)
    labels = {n: seg.get_segment_description(n).segment_label for n in seg.segment_numbers}
    return {labels[n]: sums[n] / counts[n] for n in sums}, seg


def check_outputs(volume, result, paths: dict[str, Path], *, tol_mm: float = 0.5) -> None:
    """Everything issue 22 asks of the SR and the SEG of one scan."""
    sr_path, seg_path = paths["sr.dcm"], paths["seg.dcm"]
    for p in (sr_path, seg_path):
        assert dciodvfy_errors(p) == [], f"dciodvfy errors in {p}"
    text = dsrdump(sr_path)
    assert "Imaging Measurement Report" in text
    src = volume.meta["dicom"]
    reported = result.candidates.dropna(subset=["nodule_id"])
    points = sr_points(sr_path)
    assert set(points) == {f"nodule {int(k)}" for k in reported["nodule_id"]}
    for _, row in reported.iterrows():
        xyz, frame_uid, measures, evaluations = points[f"nodule {int(row['nodule_id'])}"]
        assert frame_uid == src.frame_of_reference_uid
        d = np.linalg.norm(xyz - row[["coordX", "coordY", "coordZ"]].to_numpy(float))
        assert d <= tol_mm, f"SR point of nodule {row['nodule_id']} is {d:.2f} mm from coordX/Y/Z"
        assert measures["Long axis"] == (pytest.approx(row["long_axis_mm"]), "mm")
        assert measures["Volume"] == (pytest.approx(row["volume_mm3"]), "mm3")
        assert f"LR-{row['lungrads_research']}" in evaluations.values()
    cents, seg = seg_centroids(seg_path)
    for _, row in reported.iterrows():
        label = f"nodule {int(row['nodule_id'])}"
        assert label in cents, f"no voxel of {label} in the SEG"
        d = np.linalg.norm(cents[label] - row[["seg_centroid_x", "seg_centroid_y",
                                                "seg_centroid_z"]].to_numpy(float))
        assert d <= tol_mm, f"SEG centroid of {label} is {d:.2f} mm from seg_centroid_x/y/z"
    assert "Lungs" in cents
    # both refer to the source: its study, frame of reference and every instance
    import highdicom as hd

    sr = hd.sr.srread(sr_path)
    uids = {im.sop_instance_uid for im in src.images}
    for ds in (sr, seg):
        assert ds.StudyInstanceUID == src.study_uid
        assert ds.PatientID == src.attributes.get("PatientID", "")
    evidence = {r.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == uids
    assert seg.FrameOfReferenceUID == src.frame_of_reference_uid
    referenced = {r.ReferencedSOPInstanceUID for se in seg.ReferencedSeriesSequence
                  for r in se.ReferencedInstanceSequence}
    assert referenced == uids
