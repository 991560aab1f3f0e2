"""What ``lungcad detect`` leaves behind: the output folder and everything written into it.

======================  ==============================================================
module                  what it holds
======================  ==============================================================
``results.atomic``      the one writer: temporary file, fsync, rename (every file lungcad writes)
``results.folder``      :class:`OutputDir`: the layout, per-scan files, resume, ``finalize``
``results.tables``      ``candidates.csv``, ``patients.csv``, ``errors.csv``; spreadsheet-safe cells
``results.crops``       PNG crops of the nodules shown in three planes, and their overview slices
``results.report``      ``report.html``
``results.merge``       ``lungcad merge``: join the folders of several shards
``results.kinds``       the outputs ``--outputs`` chooses; the per-scan renderers run for a scan
``results.viewers``     3D Slicer markups, NIfTI masks, grand-challenge points
``results.dicom_sr``    DICOM SR (TID 1500), for DICOM inputs
``results.dicom_seg``   DICOM SEG, for DICOM inputs
======================  ==============================================================

:class:`lungcad.result.ScanResult` (what one scan produces) is the contract these modules
write; it lives below them, beside the pipeline.
"""
from lungcad.results.atomic import atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from lungcad.results.crops import render_crops
from lungcad.results.folder import OutputDir, read_json, safe_id, scan_files
from lungcad.results.merge import merge_outputs
from lungcad.results.report import render_report
from lungcad.results.tables import (CANDIDATES_CSV_LEAD, ERRORS_CSV_COLUMNS, PATIENTS_CSV_COLUMNS, candidates_table,
                                    cell_value, csv_text, escape_controls, patients_table, safe_cell, safe_table)

__all__ = ["CANDIDATES_CSV_LEAD", "ERRORS_CSV_COLUMNS", "PATIENTS_CSV_COLUMNS", "OutputDir", "atomic_path",
           "atomic_write_bytes", "atomic_write_text", "candidates_table", "cell_value", "csv_text",
           "escape_controls", "merge_outputs", "patients_table", "read_json", "remove_stale_temp_files",
           "render_crops", "render_report", "safe_cell", "safe_id", "safe_table", "scan_files"]
