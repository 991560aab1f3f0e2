"""The DICOM SR of a scan: a TID 1500 Measurement Report (Comprehensive 3D SR), by highdicom.

:func:`render_sr` writes ``dicom/<sid>/sr.dcm``.  Its content:

* one TID 1410 measurement group per reported nodule (a row of the candidate table with a
  ``nodule_id``), tracked as ``nodule <id>``, whose region is a 3-D point (SCOORD3D POINT) at
  the nodule's ``coordX, coordY, coordZ`` in the source's frame of reference (LPS mm); finding
  type Nodule (SCT 27925004), site Lung (SCT 39607008); its measurements, each in UCUM units:
  long axis (SCT 103339001) and short axis (SCT 103340004) in mm, their mean (Diameter, SCT
  81827009, derivation Mean) in mm, the volume (SCT 118565006) in mm3, the solid component
  of a part-solid nodule in mm, and the nodule and malignancy probabilities (unit ``1``);
  its qualitative evaluations, the type and the research-only Lung-RADS-v2022-style category
  (lungcad's coding scheme ``99LUNGCAD``; the category's meaning says that it is not a
  clinical reading);
* one TID 1501 group for the patient (``patient``): the cancer probability, and the patient's
  research-only category when the result has one;
* the algorithm (TID 4019) in every group: name ``lungcad``, its version, and as parameters
  the sha256 of the segmenter's and the FPR network's weights and the config hash;
  the observer is the device ``lungcad``;
* the evidence: every source instance (CurrentRequestedProcedureEvidenceSequence), and the
  patient and study of the source, so that the SR joins the source study.

A value that is missing (NaN) is left out, never written as a number.  Zero reported nodules
give a valid report with the patient group only.
"""
from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from lungcad.results.dicom_common import ALGORITHM_NAME, LUNGCAD_SCHEME, MANUFACTURER, \
    algorithm_parameters, algorithm_version, dataset_bytes, dicom_source, library_warnings, \
    output_key, output_uid, reported_nodules, source_datasets

__all__ = ["render_sr", "SR_SERIES_NUMBER", "CONCEPTS"]

#: The SeriesNumber of lungcad's SR series.
SR_SERIES_NUMBER = 9901

MM = CodedConcept("mm", "UCUM", "millimeter")
MM3 = CodedConcept("mm3", "UCUM", "cubic millimeter")
NO_UNITS = CodedConcept("1", "UCUM", "no units")


def _own(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, LUNGCAD_SCHEME, meaning)


#: lungcad's own concepts (coding scheme ``99LUNGCAD``), by the column they come from.
CONCEPTS = {
    "nodule_prob": _own("NODULE-P", "Nodule probability (lungcad)"),
    "malignancy_prob": _own("MALIGNANCY-P", "Malignancy probability (lungcad)"),
    "cancer_probability": _own("CANCER-P", "Patient cancer probability (lungcad)"),
    "solid_component_mm": _own("SOLID-DIAM", "Solid component diameter"),
    "nodule_type": _own("NODULE-TYPE", "Nodule type"),
    "lungrads_research": _own("LR-RESEARCH",
                              "Lung-RADS v2022-style category, research only"),
}
_TYPES = {"solid": "Solid", "part-solid": "Part-solid", "ground-glass": "Ground-glass",
          "calcified": "Calcified"}


def _category(text: str) -> CodedConcept:
    return _own(f"LR-{text}", f"Category {text} (research only, not a clinical reading)")


def _type(text: str) -> CodedConcept:
    key = str(text).strip().lower()
    return _own(f"TYPE-{key.upper()}", _TYPES.get(key, key.capitalize() or "Unknown"))


def _number(row, name: str) -> float | None:
    v = row.get(name) if hasattr(row, "get") else None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(row, name: str) -> str:
    v = row.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _measurements(row) -> list:
    specs = [
        ("long_axis_mm", codes.SCT.LongAxis, MM, None),
        ("short_axis_mm", codes.SCT.ShortAxis, MM, None),
        ("mean_axis_mm", codes.SCT.Diameter, MM, codes.SCT.Mean),
        ("volume_mm3", codes.SCT.Volume, MM3, None),
        ("solid_component_mm", CONCEPTS["solid_component_mm"], MM, None),
        ("nodule_prob", CONCEPTS["nodule_prob"], NO_UNITS, None),
        ("malignancy_prob", CONCEPTS["malignancy_prob"], NO_UNITS, None),
    ]
    out = []
    for column, name, unit, derivation in specs:
        value = _number(row, column)
        if value is None:
            continue
        out.append(hd.sr.Measurement(name=name, value=value, unit=unit, derivation=derivation))
    return out


def _evaluations(row) -> list:
    out = []
    if t := _text(row, "nodule_type"):
        out.append(hd.sr.QualitativeEvaluation(CONCEPTS["nodule_type"], _type(t)))
    if c := _text(row, "lungrads_research"):
        out.append(hd.sr.QualitativeEvaluation(CONCEPTS["lungrads_research"], _category(c)))
    return out


def render_sr(volume, result) -> dict[str, bytes]:
    """The DICOM SR of ``result`` (a scan of ``volume``): ``{"dicom/<sid>/sr.dcm": bytes}``.

    Raises
    ------
    lungcad.errors.OutputSkipped
        The input is not DICOM, or its source lacks an attribute the SR needs (named).
    """
    src = dicom_source(volume, "sr")
    with library_warnings(result, "sr"):
        return {output_key(result, "sr.dcm"): dataset_bytes(_make_sr(src, volume, result))}


def _make_sr(src, volume, result):
    evidence = source_datasets(src, volume)
    nodules = reported_nodules(result)
    params = algorithm_parameters(result)
    version = algorithm_version(result)
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=version,
        parameters=[f"{k}: {v}" for k, v in params.items()] or None)
    frame_uid = src.frame_of_reference_uid
    groups = []
    for _, row in nodules.iterrows():
        nid = int(row["nodule_id"])
        point = [[float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]]
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid(result, f"nodule {nid}"), identifier=f"nodule {nid}"),
            referenced_region=hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=_array(point),
                frame_of_reference_uid=frame_uid),
            finding_type=codes.SCT.Nodule, finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=algorithm,
            measurements=_measurements(row) or None,
            qualitative_evaluations=_evaluations(row) or None))
    patient = []
    if _finite(result.cancer_probability):
        patient.append(hd.sr.Measurement(
            name=CONCEPTS["cancer_probability"], value=float(result.cancer_probability),
            unit=NO_UNITS))
    category = str((getattr(result, "reported", None) or {}).get("lungrads_research") or "")
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=output_uid(result, "patient"),
                                                     identifier="patient"),
        algorithm_id=algorithm, measurements=patient or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            CONCEPTS["lungrads_research"], _category(category))] if category else None))
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(result, "device"), name=ALGORITHM_NAME,
            manufacturer_name=MANUFACTURER, model_name=f"{ALGORITHM_NAME} {version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0],
        series_instance_uid=output_uid(result, "sr series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=output_uid(result, "sr", nodules, result.cancer_probability, params),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False)
    sr.SeriesDescription = "lungcad nodules (research use)"
    return sr


def _array(points):
    return np.asarray(points, dtype=float)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False

