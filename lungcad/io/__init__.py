"""Reading and writing CT scans.

* :func:`load_ct`: a DICOM series folder, a multi-frame DICOM file, ``.mhd/.mha/.nii/.nii.gz``.
* :func:`discover`: every series in a tree (DSB2017, TCIA/LIDC and LUNA16 layouts), and
  :func:`choose_series`, the default series per patient.
* :func:`read_lidc_xml` and :func:`lidc_consensus`: LIDC-IDRI reads and their consensus.
* Writers: :func:`write_dicom_series`, :func:`write_dicom_multiframe`, :func:`write_itk`.
"""
from lungcad.io.discover import SeriesInfo, choose_series, discover, kernel_rank, load_ct, \
    load_series
from lungcad.io.lidc import lidc_consensus, read_lidc_xml
from lungcad.io.write_volume import ITK_SUFFIXES, write_dicom_multiframe, write_dicom_series, write_itk

__all__ = ["ITK_SUFFIXES", "SeriesInfo", "choose_series", "discover", "kernel_rank",
           "lidc_consensus", "load_ct", "load_series", "read_lidc_xml", "write_dicom_multiframe",
           "write_dicom_series", "write_itk"]
