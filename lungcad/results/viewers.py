"""Files for viewers, for every input kind: 3D Slicer markups, NIfTI masks, grand-challenge points.

Each renderer is ``fn(volume, result) -> {path relative to the output folder: bytes}``
(:mod:`lungcad.results.kinds`), under ``viewers/<id>/`` with ``<id>`` the scan's
:func:`~lungcad.results.folder.safe_id`:

- :func:`render_slicer`: ``nodules.mrk.json``, a markups fiducial list (Slicer's markups JSON
  schema v1.0.3), coordinate system LPS in mm, one control point per reported nodule, labelled
  ``N<k>`` with its probability and size;
- :func:`render_masks`: ``lung.nii.gz`` (1 inside the lung mask) and ``nodules.nii.gz`` (label
  k = ``nodule_id`` k), on the scan's voxel grid with its spacing, origin and direction, so
  that they overlay the input in any viewer (Slicer, ITK-SNAP, 3D Slicer, MITK, FSLeyes);
- :func:`render_gc`: ``nodules.gc.json``, grand-challenge's "Multiple points" with the world
  coordinates (LPS mm, as grand-challenge reads its .mha images) and the probabilities.

The reported nodules are the rows of the candidate table with a ``nodule_id`` (1..n), the same
set as every other output (the pipeline's ``[reported]`` section chooses them).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.errors import OutputSkipped
from lungcad.results.tables import number

__all__ = ["SLICER_SCHEMA", "render_gc", "render_masks", "render_slicer", "reported_nodules", "viewer_dir"]

SLICER_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                 "Resources/Schema/markups-schema-v1.0.3.json#")
#: A control point's orientation as Slicer writes it in LPS (the identity of its RAS frame).
_LPS_ORIENTATION = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
RESEARCH_NOTE = "research only, not a clinical reading"


def viewer_dir(result) -> str:
    """``viewers/<id>``: the folder of a scan's viewer files, relative to the output folder."""
    from lungcad.results.folder import safe_id

    return f"viewers/{safe_id(result.patient_id, result.series_uid)}"


def reported_nodules(candidates: pd.DataFrame | None) -> pd.DataFrame:
    """The reported nodules of a candidate table: rows with a finite ``nodule_id`` and finite
    world coordinates, sorted by ``nodule_id`` (an empty frame when the table has no
    ``nodule_id`` column)."""
    if candidates is None or len(candidates) == 0 or "nodule_id" not in candidates:
        return pd.DataFrame(columns=list(candidates.columns) if candidates is not None else [])
    ids = pd.to_numeric(candidates["nodule_id"], errors="coerce")
    xyz = candidates[["coordX", "coordY", "coordZ"]].apply(pd.to_numeric, errors="coerce")
    keep = np.isfinite(ids.to_numpy(float)) & np.isfinite(xyz.to_numpy(float)).all(axis=1)
    rows = candidates[keep].copy()
    rows["nodule_id"] = ids[keep].astype(int)
    return rows.sort_values("nodule_id", kind="mergesort")


def size_mm(row) -> float:
    """A nodule's size: the mean of its long and short axes (``mean_axis_mm``), else its
    equivalent-sphere ``diameter_mm``; NaN when neither is known."""
    for col in ("mean_axis_mm", "diameter_mm"):
        v = number(row.get(col))
        if math.isfinite(v):
            return v
    return float("nan")


def _point(row) -> list[float]:
    return [round(float(row[c]), 3) for c in ("coordX", "coordY", "coordZ")]


def _label(row) -> str:
    size = size_mm(row)
    text = f"N{int(row['nodule_id'])} p={number(row.get('probability')):.2f}"
    return text + (f" {size:.1f} mm" if math.isfinite(size) else "")


def _description(row) -> str:
    parts = []
    for col, name, fmt in (("probability", "nodule probability", ".3f"),
                           ("malignancy_prob", "malignancy probability", ".3f"),
                           ("long_axis_mm", "long axis mm", ".1f"), ("short_axis_mm", "short axis mm", ".1f"),
                           ("mean_axis_mm", "mean axis mm", ".1f"), ("diameter_mm", "diameter mm", ".1f"),
                           ("volume_mm3", "volume mm3", ".0f")):
        v = number(row.get(col))
        if math.isfinite(v):
            parts.append(f"{name} {v:{fmt}}")
    kind = row.get("nodule_type")
    if isinstance(kind, str) and kind:
        parts.append(f"type {kind}")
    cat = row.get("lungrads_research")
    if isinstance(cat, str) and cat:
        parts.append(f"Lung-RADS-style category {cat} ({RESEARCH_NOTE})")
    return "; ".join(parts)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def render_slicer(volume, result) -> dict[str, bytes]:
    """``viewers/<id>/nodules.mrk.json``: a 3D Slicer markups fiducial list of the reported
    nodules (LPS, mm), each control point labelled ``N<k> p=<probability> <size> mm``, with
    its measurements in the description.  Drag it onto Slicer beside the scan."""
    nodules = reported_nodules(result.candidates)
    points = [{"id": str(int(r["nodule_id"])), "label": _label(r), "description": _description(r),
               "associatedNodeID": "", "position": _point(r), "orientation": list(_LPS_ORIENTATION),
               "selected": True, "locked": True, "visibility": True, "positionStatus": "defined"}
              for _, r in nodules.iterrows()]
    markup = {"type": "Fiducial", "name": f"lungcad nodules {result.patient_id}",
              "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
              "fixedNumberOfControlPoints": False, "labelFormat": "N%d",
              "lastUsedControlPointNumber": len(points), "controlPoints": points, "measurements": [],
              "display": {"visibility": True, "opacity": 1.0, "color": [1.0, 0.2, 0.2],
                          "selectedColor": [1.0, 0.2, 0.2], "activeColor": [0.4, 1.0, 0.0],
                          "propertiesLabelVisibility": False, "pointLabelsVisibility": True,
                          "textScale": 3.0, "glyphType": "Sphere3D", "glyphScale": 3.0, "glyphSize": 5.0,
                          "useGlyphScale": True}}
    return {f"{viewer_dir(result)}/nodules.mrk.json": _json_bytes({"@schema": SLICER_SCHEMA, "markups": [markup]})}


def render_gc(volume, result) -> dict[str, bytes]:
    """``viewers/<id>/nodules.gc.json``: grand-challenge's "Multiple points" of the reported
    nodules: world coordinates (LPS mm) and each nodule's probability."""
    nodules = reported_nodules(result.candidates)
    points = []
    for _, r in nodules.iterrows():
        p = number(r.get("probability"))
        points.append({"name": f"nodule {int(r['nodule_id'])}", "point": _point(r),
                       "probability": round(p, 6) if math.isfinite(p) else 0.0})
    doc = {"name": "lung nodules", "type": "Multiple points", "points": points,
           "version": {"major": 1, "minor": 0}}
    return {f"{viewer_dir(result)}/nodules.gc.json": _json_bytes(doc)}


def _on_grid(array: np.ndarray, volume, dtype) -> "object":
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype))       # (z, y, x) -> x, y, z
    img.SetSpacing([float(s) for s in volume.spacing_xyz])
    img.SetOrigin([float(o) for o in volume.origin])
    img.SetDirection([float(v) for v in np.asarray(volume.direction, float).reshape(-1)])
    return img


def _nifti(img) -> bytes:
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="lungcad-nii-") as d:
        path = Path(d) / "mask.nii.gz"
        sitk.WriteImage(img, str(path), True)
        return path.read_bytes()


def _mask_array(result, name: str, volume):
    a = getattr(result, name, None)
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != tuple(volume.shape):
        raise ValueError(f"ScanResult.{name} has shape {a.shape}, the scan {tuple(volume.shape)}")
    return a


def render_masks(volume, result) -> dict[str, bytes]:
    """``viewers/<id>/lung.nii.gz`` (uint8: 1 in the lung mask) and ``viewers/<id>/nodules.nii.gz``
    (label k = ``nodule_id`` k, 0 elsewhere), on the scan's grid with its geometry.

    Taken from ``result.lung_mask`` and ``result.nodule_labels`` (arrays on the volume grid,
    not kept in the scan JSON).  A scan with reported nodules but no ``nodule_labels``, or no
    lung mask, raises :class:`OutputSkipped`."""
    lung = _mask_array(result, "lung_mask", volume)
    labels = _mask_array(result, "nodule_labels", volume)
    n = len(reported_nodules(result.candidates))
    if lung is None:
        raise OutputSkipped("masks", "the scan has no lung mask")
    if labels is None:
        if n:
            raise OutputSkipped("masks", f"the {n} reported nodule(s) have no segmentation")
        labels = np.zeros(volume.shape, np.uint8)
    top = int(labels.max()) if labels.size else 0
    if int(labels.min(initial=0)) < 0:
        raise ValueError("ScanResult.nodule_labels has negative labels")
    base = viewer_dir(result)
    return {f"{base}/lung.nii.gz": _nifti(_on_grid(lung.astype(bool), volume, np.uint8)),
            f"{base}/nodules.nii.gz": _nifti(_on_grid(labels, volume, np.uint8 if top <= 255 else np.uint16))}
