"""Reading and writing CT scans: DICOM series and files, ITK/NIfTI files, LIDC XML reads."""
from lungcad.io.writers import ITK_SUFFIXES, write_dicom_multiframe, write_dicom_series, write_itk

__all__ = ["ITK_SUFFIXES", "write_dicom_multiframe", "write_dicom_series", "write_itk"]
