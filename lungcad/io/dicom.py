"""DICOM reading: the headers of one CT series (or multi-frame file) to a CTVolume.

The rules live beside the code that checks them:

* what one file must hold (rules a-f, from the header alone): :mod:`lungcad.io.dicom_header`,
  with :mod:`lungcad.io.dicom_attributes` (the values), :mod:`lungcad.io.dicom_slices` (the
  frames of a multi-frame file) and :mod:`lungcad.io.dicom_pixel_checks` (the pixel data's
  size);
* how a set of slices becomes a volume (rules 1-5): :mod:`lungcad.io.dicom_stack`;
* the rescale to HU (rule 6) and the decoding: :mod:`lungcad.io.dicom_decode`.

Decoders' messages: what pydicom's decoders raise, and what GDCM/OpenJPEG print to stderr
while decoding compressed data, become one line of the InputError or of the scan's warnings
(``pixel decoder: ...``); nothing is printed raw (:mod:`lungcad.io.c_library_output` collects
what C libraries print).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

from lungcad.errors import InputError
from lungcad.io.c_library_output import _c_library_output
from lungcad.io.dicom_decode import _DecodeFailure, _is_compressed, _read_pydicom, _read_simpleitk
from lungcad.io.dicom_header import DicomFileHeader
from lungcad.io.dicom_source import DicomSource, SourceImage, build_source
from lungcad.io.dicom_stack import StackPlan, _resample_z, plan_stack
from lungcad.volume import CTVolume

__all__ = ["load_dicom_stack", "check_geometry_present", "series_warnings"]


def check_geometry_present(headers: Sequence[DicomFileHeader]) -> None:
    """Images that cannot be placed in the patient frame make the series unusable."""
    for h in headers:
        if h.has_image and not h.slices:
            raise InputError(h.path, "an image without ImagePositionPatient, "
                             "ImageOrientationPatient or PixelSpacing: it cannot be placed in "
                             "the patient (a secondary capture or screenshot?)")


def series_warnings(headers: Sequence[DicomFileHeader]) -> list[str]:
    """The warnings of a series' files, one line each: ``"<file>: <warning>"`` when one file
    has it, ``"<warning> (<n> files, the first <file>)"`` when several have."""
    by_text: dict[str, list[Path]] = {}
    for h in headers:
        for w in h.warnings:
            by_text.setdefault(w, []).append(h.path)
    return [f"{paths[0]}: {w}" if len(paths) == 1 else f"{w} ({len(paths)} files, the first "
            f"{min(paths)})" for w, paths in by_text.items()]


def _new_decode_notes(headers: Sequence[DicomFileHeader], notes: list[str]) -> list[str]:
    """The decoding warnings that the headers did not already give."""
    seen = {w for h in headers for w in h.warnings}
    return [n for n in dict.fromkeys(notes) if n.split(": ", 1)[-1] not in seen]


def dicom_source(plan: StackPlan, by_path: dict[Path, DicomFileHeader],
                 grid_z_mm=None) -> DicomSource:
    """What outputs that refer to the source series need (``volume.meta["dicom"]``): each
    kept image in the order of the planes, and the first file's attributes."""
    images = []
    for s, z in zip(plan.slices, plan.positions):
        h = by_path[s.path]
        images.append(SourceImage(
            sop_instance_uid=h.sop_instance_uid, sop_class_uid=h.sop_class,
            position_xyz=tuple(float(v) for v in s.position), z_mm=float(z),
            frame=None if s.frame is None else s.frame + 1))
    first = by_path[plan.slices[0].path]
    return build_source(first.attributes, images, rows=plan.slices[0].rows,
                        columns=plan.slices[0].cols, pixel_spacing=plan.slices[0].pixel_spacing,
                        orientation=plan.slices[0].orientation,
                        slice_thickness=first.slice_thickness, multiframe=first.multiframe,
                        grid_z_mm=grid_z_mm)


def load_dicom_stack(headers: Sequence[DicomFileHeader], *, source: str | os.PathLike,
                     patient_id: str | None = None) -> CTVolume:
    """Build a CTVolume from the headers of one series (single-frame files or one
    multi-frame file), reading each file's pixel data once.

    Raises
    ------
    InputError
        Not CT, a geometry rule broken (see :func:`plan_stack`), or pixel data that neither
        pydicom nor SimpleITK can decode (the message names the file).
    """
    if not headers:
        raise InputError(source, "no DICOM files in this series")
    modalities = sorted({h.modality or "(none)" for h in headers})
    if modalities != ["CT"]:
        raise InputError(source, f"not a CT series: Modality is {', '.join(modalities)}; "
                         f"lungcad reads CT only")
    by_path = {h.path: h for h in headers}
    check_geometry_present(headers)
    slices = [s for h in headers for s in h.slices]
    plan = plan_stack(slices, source=source)
    reader = "pydicom"
    decode_notes: list[str] = []
    printed: list[str] = []
    compressed = any(_is_compressed(h.transfer_syntax) for h in headers)
    failure: _DecodeFailure | None = None
    fallback: InputError | None = None
    # the list ``printed`` is filled when the block ends, so errors are raised after it
    with _c_library_output(printed) if compressed else contextlib.nullcontext():
        try:
            vol, n_pad, n_low = _read_pydicom(plan, by_path, decode_notes)
        except _DecodeFailure as e:
            failure = e
        # GDCM is tried for a compressed file that pydicom's decoders failed on, not for one
        # that lacks an element the pixels need (a header problem GDCM cannot mend; GDCM's
        # own parser allocated 1.2 GB for such a 4 KB fuzzed RLE file)
        if (failure is not None and _is_compressed(by_path[failure.path].transfer_syntax)
                and not isinstance(failure.cause, (AttributeError, KeyError))):
            try:
                vol, n_pad, n_low = _read_simpleitk(plan, by_path)
                reader = "simpleitk"
            except InputError as e2:
                fallback = e2
    if failure is not None and reader == "pydicom":
        e, ts = failure, by_path[failure.path].transfer_syntax
        if fallback is None:
            raise InputError(e.path, f"corrupt pixel data ({e})") from e.cause
        said = f"; the decoder printed: {printed[-1]}" if printed else ""
        raise InputError(e.path, f"cannot decode the compressed pixel data ({ts}): pydicom "
                         f"says {e}; {fallback.problem}{said}") from e.cause
    decode_notes.extend(f"pixel decoder: {line}" for line in printed)
    positions = plan.positions
    meta_z: dict[str, Any] = {"resampled_z": False}
    grid = None
    if plan.resample:
        vol, grid = _resample_z(vol, positions, plan.spacing[0])  # the grid starts at the origin
        meta_z = {"resampled_z": True, "original_positions_mm": [round(float(p), 4)
                                                                 for p in positions]}
    first = headers[0]
    meta = {
        "reader": reader,
        "format": "dicom-multiframe" if first.multiframe else "dicom",
        "n_files": len(headers),
        "modality": "CT",
        "series_description": first.series_description,
        "study_description": first.study_description,
        "study_uid": first.study_uid,
        "kernel": first.kernel,
        "slice_thickness": first.slice_thickness,
        "manufacturer": first.manufacturer,
        "kvp": first.kvp,
        "transfer_syntax": first.transfer_syntax,
        "source_path": str(source),
        "dropped": plan.dropped,
        "clipped_voxels": int(n_low),
        "padding_voxels": int(n_pad),
        **meta_z,
        "warnings": series_warnings(headers) + _new_decode_notes(headers, decode_notes),
        "dicom": dicom_source(plan, by_path, grid),
    }
    pid = patient_id if patient_id is not None else first.patient_id
    return CTVolume(hu=vol, spacing=plan.spacing, origin=plan.origin, direction=plan.direction,
                    patient_id=pid, series_uid=first.series_uid, meta=meta)
