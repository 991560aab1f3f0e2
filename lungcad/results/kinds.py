"""The outputs that ``lungcad detect --outputs`` chooses, and the per-scan files of each kind.

============  ==================================================================  ==============
kind          what                                                                inputs
============  ==================================================================  ==============
``csv``       ``candidates.csv`` and ``patients.csv`` (rebuilt by finalize)       every input
``json``      ``scans/<id>.json``: always written (resume, finalize and merge     every input
              are built on it), so naming it or not changes nothing
``html``      ``report.html`` and the PNG images it shows (``crops/<id>/``)       every input
``sr``        ``dicom/<id>/sr.dcm``, a DICOM SR (:mod:`lungcad.results.dicom_sr`)  DICOM only
``seg``       ``dicom/<id>/seg.dcm``, a DICOM SEG (:mod:`lungcad.results.dicom_seg`)  DICOM only
``slicer``    ``viewers/<id>/nodules.mrk.json``, 3D Slicer markups               every input
``masks``     ``viewers/<id>/lung.nii.gz`` and ``nodules.nii.gz``                every input
``gc``        ``viewers/<id>/nodules.gc.json``, grand-challenge "Multiple points"  every input
============  ==================================================================  ==============

``errors.csv`` and ``run.json`` are always written.  A per-scan renderer is
``fn(volume, result) -> {path relative to the output folder: bytes}``; one that cannot make its
output for this scan raises :class:`~lungcad.errors.OutputSkipped`, which is one warning line of
the scan (the scan is not failed; SR and SEG stopped by the same missing attribute share the line).  Each chosen per-scan kind gets a note in
``result.meta["outputs"]``: ``"written"``, ``"skipped: <reason>"`` (with a warning line) or, for SR
and SEG of an input that is not DICOM, ``"not written: <why>"`` (no warning: nothing is wrong).
"""
from __future__ import annotations

import importlib

from lungcad.errors import OptionError, OutputSkipped

__all__ = ["DEFAULT_OUTPUTS", "DICOM_ONLY", "FILE_FOLDERS", "OUTPUT_KINDS", "RENDERERS", "check_outputs",
           "is_dicom", "render_files"]

OUTPUT_KINDS = ("csv", "json", "html", "sr", "seg", "slicer", "masks", "gc")
DEFAULT_OUTPUTS = ("csv", "json", "html", "sr", "seg")
#: kinds made only from a DICOM input
DICOM_ONLY = ("sr", "seg")
#: kind -> (module, function) of its per-scan renderer, imported when the kind is chosen
RENDERERS = {
    "sr": ("lungcad.results.dicom_sr", "render_sr"),
    "seg": ("lungcad.results.dicom_seg", "render_seg"),
    "slicer": ("lungcad.results.viewers", "render_slicer"),
    "masks": ("lungcad.results.viewers", "render_masks"),
    "gc": ("lungcad.results.viewers", "render_gc"),
}
#: the folders of per-scan files: ``<folder>/<id>/<name>``
FILE_FOLDERS = ("dicom", "viewers")

_REQUIREMENT = f"a comma-separated list of {', '.join(OUTPUT_KINDS)} (default {','.join(DEFAULT_OUTPUTS)})"


def check_outputs(value, keyword: str = "outputs") -> tuple[str, ...]:
    """The chosen kinds, in the order of :data:`OUTPUT_KINDS`: ``None`` is
    :data:`DEFAULT_OUTPUTS`; a string is split on commas; a list or tuple holds kinds.  An
    :class:`OptionError` naming ``keyword`` for an unknown kind or an empty choice."""
    if value is None:
        return DEFAULT_OUTPUTS
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise OptionError(keyword, _REQUIREMENT, value)
    if not all(isinstance(v, str) for v in items):
        raise OptionError(keyword, _REQUIREMENT, value)
    chosen = {v.strip() for v in items} - {""}
    unknown = sorted(chosen - set(OUTPUT_KINDS))
    if unknown:
        raise OptionError(keyword, f"{_REQUIREMENT}; unknown: {', '.join(unknown)}", value)
    if not chosen:
        raise OptionError(keyword, f"{_REQUIREMENT}, not empty", value)
    return tuple(k for k in OUTPUT_KINDS if k in chosen)


def is_dicom(volume) -> bool:
    """True when ``volume`` was read from DICOM (a series or a multi-frame file)."""
    return str((getattr(volume, "meta", None) or {}).get("format", "")).startswith("dicom")


def _renderer(kind: str):
    module, name = RENDERERS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:      # a module, or a package it needs (highdicom), that is not installed
        raise OutputSkipped(kind, f"{module}.{name} cannot be imported ({e})") from e


def render_files(volume, result, outputs) -> dict[str, bytes]:
    """The per-scan files of the chosen ``outputs`` for one scan: ``{relative path: bytes}``.

    Each chosen per-scan kind gets its note in ``result.meta["outputs"]`` (see the module
    docstring); an :class:`OutputSkipped` is also one line of ``result.warnings``.  Any other
    exception of a renderer passes (the caller makes it the scan's error)."""
    files: dict[str, bytes] = {}
    notes = result.meta.setdefault("outputs", {})
    skipped: dict[str, list[str]] = {}      # reason -> the kinds it stops: one warning line each
    for kind in check_outputs(outputs):
        if kind not in RENDERERS:
            continue
        if kind in DICOM_ONLY and not is_dicom(volume):
            fmt = (getattr(volume, "meta", None) or {}).get("format") or "not DICOM"
            notes[kind] = (f"not written: the input is not DICOM (format {fmt}); "
                           f"DICOM SR and SEG are made only for DICOM inputs")
            continue
        try:
            got = _renderer(kind)(volume, result)
        except OutputSkipped as e:
            reason = " ".join(str(e.reason).split())
            notes[kind] = f"skipped: {reason}"
            skipped.setdefault(reason, []).append(kind)
            continue
        for path, data in got.items():
            if not isinstance(path, str) or not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"the {kind} renderer must return {{str: bytes}}. Received "
                                f"{type(path).__name__}: {type(data).__name__}")
            if path in files:
                raise ValueError(f"the {kind} renderer writes {path!r}, which another output writes too")
            files[path] = bytes(data)
        notes[kind] = "written"
    for reason, stopped in skipped.items():
        line = f"no {' or '.join(stopped)} output: {reason}"
        if line not in result.warnings:
            result.warnings.append(line)
    return files
