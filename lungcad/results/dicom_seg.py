"""The DICOM SEG of a scan: the reported nodules and the lung mask, by highdicom.

:func:`render_seg` writes ``dicom/<sid>/seg.dcm``, a BINARY Segmentation on the source's
slices (one SEG frame per source image and segment where the segment is present; each frame
references its source image, and the SEG the source series):

* segment 1, ``Lungs``: ``result.lung_mask`` (Anatomical Structure / Lung, SCT 39607008);
* then ``nodule k``: the voxels of ``result.nodule_labels == k``, one per reported nodule
  (Morphologically Abnormal Structure / Nodule, SCT 27925004, in the Lung), tracked as
  ``nodule k`` like the SR's measurement group.  A reported nodule without a voxel (the
  measure stage found no segmentation) has no segment, and ``result.meta["output_notes"]``
  says so.

Both are AUTOMATIC, identified as lungcad with its version and, as parameters, the weights'
sha256 and the config hash (the lung mask's family is Morphological Operations, the nodules'
Artificial Intelligence).

A classic multi-frame CT Image source (CT Image Storage with NumberOfFrames, its frames
placed by GridFrameOffsetVector) gets no SEG (OutputSkipped): highdicom places SEG frames on
single-frame or enhanced multi-frame sources.  Its SR is written.

When the reader resampled uneven slice gaps onto a uniform grid, each source image takes its
nearest resampled plane (a note in ``result.meta["output_notes"]`` says so).
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage

from lungcad.errors import OutputSkipped
from lungcad.results.dicom_common import ALGORITHM_NAME, MANUFACTURER, algorithm_parameters, \
    algorithm_version, dataset_bytes, dicom_source, library_warnings, output_key, output_uid, \
    reported_nodules, source_datasets

__all__ = ["render_seg", "SEG_SERIES_NUMBER", "NEAREST_PLANE_NOTE"]

#: The SeriesNumber of lungcad's SEG series.
SEG_SERIES_NUMBER = 9902
NEAREST_PLANE_NOTE = ("DICOM SEG: the volume was resampled across uneven slice gaps; each "
                      "source slice took its nearest resampled plane")


def _mask(array, shape, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.shape != tuple(shape):
        raise OutputSkipped("seg", f"the {what} has the shape {a.shape}, not the volume's "
                                   f"{tuple(shape)}")
    return a


def render_seg(volume, result) -> dict[str, bytes]:
    """The DICOM SEG of ``result`` (a scan of ``volume``): ``{"dicom/<sid>/seg.dcm": bytes}``.

    Raises
    ------
    lungcad.errors.OutputSkipped
        The input is not DICOM, its source lacks an attribute the SEG needs (named), or the
        result has no lung mask and no nodule segmentation to write.
    """
    src = dicom_source(volume, "seg")
    if src.multiframe and src.images[0].sop_class_uid == CTImageStorage:
        raise OutputSkipped("seg", "the source is a classic multi-frame CT Image (one "
                                   "ImagePositionPatient, frames by GridFrameOffsetVector); a "
                                   "SEG is made on single-frame or enhanced multi-frame sources")
    nodules = reported_nodules(result)
    shape = volume.shape
    layers, descriptions = [], []
    version = algorithm_version(result)
    params = algorithm_parameters(result)

    def algorithm(family):
        return hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=family,
                                                  version=version, parameters=params or None)

    lung = getattr(result, "lung_mask", None)
    if lung is not None:
        layers.append(_mask(lung, shape, "lung mask").astype(bool))
        descriptions.append(dict(
            segment_label="Lungs", segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_identification=algorithm(codes.cid7162.MorphologicalOperations),
            tracking_id="lungs", tracking_uid=output_uid(result, "lungs")))
    labels = getattr(result, "nodule_labels", None)
    if len(nodules) and labels is None:
        raise OutputSkipped("seg", f"the result has {len(nodules)} reported nodule(s) but no "
                                   f"nodule segmentation (nodule_labels)")
    if len(nodules):
        labels = _mask(labels, shape, "nodule label volume")
    empty = []
    for nid in nodules["nodule_id"]:
        nid = int(nid)
        layer = labels == nid
        if not layer.any():   # the measure stage found no segmentation for it
            empty.append(nid)
            continue
        layers.append(layer)
        descriptions.append(dict(
            segment_label=f"nodule {nid}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule, anatomic_regions=[codes.SCT.Lung],
            algorithm_identification=algorithm(codes.cid7162.ArtificialIntelligence),
            tracking_id=f"nodule {nid}", tracking_uid=output_uid(result, f"nodule {nid}")))
    if not layers:
        raise OutputSkipped("seg", "the result has no lung mask and no segmented nodule")
    planes = src.plane_of_image()
    for note in ([NEAREST_PLANE_NOTE] if src.resampled else []) + (
            [f"DICOM SEG: no segment for nodule(s) {', '.join(map(str, empty))}, whose "
             f"segmentation is empty"] if empty else []):
        notes = result.meta.setdefault("output_notes", [])
        if note not in notes:
            notes.append(note)
    if src.multiframe:   # the frames in file order
        order = np.argsort([im.frame or 0 for im in src.images], kind="stable")
        planes = np.asarray(planes)[order]
    # Segment-major in memory, (source image, y, x, segment) as a view: highdicom's overlap
    # check sums over the segment axis, which is 5 x faster over planes than along a row.
    by_segment = np.empty((len(layers), len(planes)) + tuple(shape[1:]), dtype=np.uint8)
    for i, layer in enumerate(layers):
        np.take(layer, planes, axis=0, out=by_segment[i].view(bool))
    stacked = np.moveaxis(by_segment, 0, -1)
    segments = [hd.seg.SegmentDescription(segment_number=i + 1,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          **d) for i, d in enumerate(descriptions)]
    with library_warnings(result, "seg"):
        seg = hd.seg.Segmentation(
            source_images=source_datasets(src, volume), pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=output_uid(result, "seg series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=output_uid(result, "seg", by_segment, nodules),
            instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME, software_versions=version,
            device_serial_number="0", content_label="LUNGCAD",
            content_description="lungcad: lungs and reported nodules (research use)")
        seg.SeriesDescription = "lungcad segmentation (research use)"
        return {output_key(result, "seg.dcm"): dataset_bytes(seg)}
