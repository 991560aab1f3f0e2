"""Hand-made scans with reported nodules, as the measurement stage (issue 22, part M) leaves them:
the candidate columns and ``reported`` of the scan JSON, and the arrays on the volume grid
(``nodule_labels``, ``lung_mask``) that are not kept in the JSON.  The viewer files, the report and
the --outputs plumbing are tested with these, independently of the measurements themselves."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lungcad.result import ScanResult
from lungcad.volume import CTVolume

#: a rotation about z by 30 degrees with the slice axis reversed: a geometry that an axis
#: mix-up in a writer would not survive
ODD_DIRECTION = np.array([[np.cos(np.pi / 6), -np.sin(np.pi / 6), 0.0],
                          [np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0],
                          [0.0, 0.0, -1.0]])
#: (z, y, x) voxel centres and radii (mm) of the nodules painted into :func:`chest`
NODULES = [((20, 40, 30), 6.0), ((14, 60, 80), 4.5), ((26, 30, 76), 3.0)]


def chest(*, direction=None, spacing=(2.0, 0.8, 0.9), origin=(-45.0, 20.0, -300.0),
          patient_id: str = "P22", series_uid: str = "1.2.826.0.1.22") -> CTVolume:
    """A small chest: body, two lungs, three dense nodules (:data:`NODULES`)."""
    shape = (40, 96, 112)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    cy, cx = shape[1] * spacing[1] / 2, shape[2] * spacing[2] / 2
    hu = np.full(shape, -1000, np.int16)
    hu[((y - cy) / (0.47 * shape[1] * spacing[1])) ** 2 + ((x - cx) / (0.48 * shape[2] * spacing[2])) ** 2 <= 1] = 40
    for side in (-1, 1):
        lung = (((y - cy) / 30.0) ** 2 + ((x - cx - side * 24.0) / 18.0) ** 2 + ((z - 40.0) / 36.0) ** 2) <= 1
        hu[lung] = -850
    for (k, j, i), r in NODULES:
        c = np.array([k, j, i]) * np.array(spacing)
        hu[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = 30
    return CTVolume(hu, spacing, origin=origin, direction=np.eye(3) if direction is None else direction,
                    patient_id=patient_id, series_uid=series_uid, meta={"format": "itk"})


def reported_result(volume: CTVolume, *, n_reported: int = 2) -> ScanResult:
    """A ScanResult of ``volume`` with three candidates at :data:`NODULES`, the first
    ``n_reported`` of them reported (``nodule_id`` 1..n and M's measurement columns; NaN or
    empty for the others), ``nodule_labels`` and ``lung_mask`` on the volume grid."""
    rows, labels = [], np.zeros(volume.shape, np.int16)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    sp = np.asarray(volume.spacing, float)
    for i, ((k, j, c), r) in enumerate(NODULES):
        world = volume.voxel_to_world(np.array([k, j, c], float))
        reported = i < n_reported
        rows.append({"seriesuid": volume.series_uid, "patient_id": volume.patient_id,
                     "coordX": world[0], "coordY": world[1], "coordZ": world[2], "z": k, "y": j, "x": c,
                     "diameter_mm": 2 * r, "probability": [0.93, 0.71, 0.22][i], "nodule_prob": [0.93, 0.71, 0.22][i],
                     "malignancy_prob": [0.64, 0.18, 0.05][i],
                     "nodule_id": i + 1 if reported else np.nan,
                     "volume_mm3": 4 / 3 * np.pi * r ** 3 if reported else np.nan,
                     "long_axis_mm": 2 * r + 0.6 if reported else np.nan,
                     "short_axis_mm": 2 * r - 0.4 if reported else np.nan,
                     "mean_axis_mm": round(2 * r + 0.1, 1) if reported else np.nan,
                     "nodule_type": ["solid", "part-solid", ""][i] if reported else "",
                     "solid_component_mm": [np.nan, 4.2, np.nan][i] if reported else np.nan,
                     "lungrads_research": ["4A", "3", ""][i] if reported else "",
                     "seg_centroid_x": world[0] if reported else np.nan,
                     "seg_centroid_y": world[1] if reported else np.nan,
                     "seg_centroid_z": world[2] if reported else np.nan})
        if reported:
            d2 = ((zz - k) * sp[0]) ** 2 + ((yy - j) * sp[1]) ** 2 + ((xx - c) * sp[2]) ** 2
            labels[d2 <= r * r] = i + 1
    result = ScanResult(series_uid=volume.series_uid, patient_id=volume.patient_id,
                        candidates=pd.DataFrame(rows), cancer_probability=0.58, input_path="/data/p22.nii.gz",
                        geometry=volume.geometry(), lung_volume_ml=3100.0, meta=dict(volume.meta))
    result.reported = {"n": n_reported, "lungrads_research": "4A" if n_reported else "1",
                       "criteria": {"min_probability": 0.5, "max_nodules": 10},
                       "note": "research only, not a clinical reading"}
    result.nodule_labels = labels
    result.lung_mask = volume.hu < -500
    return result


def add_reported_to_json(path, result: ScanResult) -> None:
    """Until ``ScanResult.to_dict`` writes ``reported`` (part M), put it into the scan JSON."""
    d = json.loads(path.read_text())
    if "reported" not in d:
        d["reported"] = result.reported
        path.write_text(json.dumps(d, indent=2))
