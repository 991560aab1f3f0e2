"""Where each image of a DICOM file lies: :class:`SliceHeader` (the geometry and rescale of one
2-D image), and the frames of a multi-frame file, placed from its functional groups (enhanced
CT) or from one ImagePositionPatient and offsets along the normal (classic multi-frame).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungcad.io.dicom_attributes import MAX_ABS_POSITION_MM, _first_in_groups, _get, \
    _image_type, _items, _number, _numbers, _orientation, _pixel_spacing, _position, _rescale, \
    _values

__all__ = ["SliceHeader"]

_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")


@dataclass
class SliceHeader:
    """The geometry and rescale of one 2-D image: a single-frame file or one frame."""

    path: Path
    frame: int | None
    position: np.ndarray  # ImagePositionPatient, mm (x, y, z)
    orientation: np.ndarray  # ImageOrientationPatient, 6 direction cosines
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x), mm
    image_type: tuple[str, ...] = ()
    slope: float = 1.0
    intercept: float = 0.0
    instance: int | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} frame {self.frame + 1}"

    def is_localizer(self) -> bool:
        return any(w in t for t in self.image_type for w in _LOCALIZER_WORDS)


def _frames_from_functional_groups(ds, n_frames: int, path: Path, rows: int,
                                   cols: int) -> list[SliceHeader]:
    shared_items = _items(ds, "SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    if len(per_frame) != n_frames:
        raise ValueError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for "
                         f"NumberOfFrames {n_frames}")
    out = []
    for i, pf in enumerate(per_frame):
        groups = (pf, shared)
        try:
            ipp = _first_in_groups(groups, "PlanePositionSequence", "ImagePositionPatient")
            iop = _first_in_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _first_in_groups(groups, "PixelMeasuresSequence", "PixelSpacing")
            if ipp is None or iop is None or ps is None:
                raise ValueError("no ImagePositionPatient, ImageOrientationPatient or "
                                 "PixelSpacing in its functional groups")
            slope, intercept = _rescale(
                _first_in_groups(groups, "PixelValueTransformationSequence", "RescaleSlope"),
                _first_in_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept"))
            ftype = _first_in_groups(groups, "CTImageFrameTypeSequence", "FrameType")
            out.append(SliceHeader(
                path=path, frame=i, position=_position(ipp), orientation=_orientation(iop),
                rows=rows, cols=cols, pixel_spacing=_pixel_spacing(ps),
                image_type=_image_type(ftype if ftype is not None else _get(ds, "ImageType")),
                slope=slope, intercept=intercept, instance=i + 1))
        except ValueError as e:
            raise ValueError(f"frame {i + 1}: {e}") from None
    return out


def _frames_classic(ds, n_frames: int, path: Path, rows: int, cols: int) -> list[SliceHeader]:
    """Frames of a classic multi-frame image: one IPP (frame 0) plus offsets along the normal
    from GridFrameOffsetVector, else SpacingBetweenSlices, else SliceThickness."""
    ipp = _position(ds.ImagePositionPatient)
    iop = _orientation(ds.ImageOrientationPatient)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    offsets = _get(ds, "GridFrameOffsetVector")
    if offsets is not None and len(_values(offsets)) == n_frames:
        offs = _numbers(offsets, "GridFrameOffsetVector", n_frames)
    else:
        step = None
        for name in ("SpacingBetweenSlices", "SliceThickness"):
            step = _number(_get(ds, name), name, None)
            if step:
                break
        if not step:
            raise ValueError("a classic multi-frame image needs GridFrameOffsetVector, "
                             "SpacingBetweenSlices or SliceThickness to place its frames")
        offs = np.arange(n_frames) * step
    if np.abs(offs).max() > MAX_ABS_POSITION_MM:
        raise ValueError(f"frame offsets of up to {np.abs(offs).max():g} mm; expected at most "
                         f"{MAX_ABS_POSITION_MM:g} mm")
    ps = _pixel_spacing(ds.PixelSpacing)
    image_type = _image_type(_get(ds, "ImageType"))
    slope, intercept = _rescale(_get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept"))
    return [SliceHeader(path=path, frame=i, position=ipp + o * normal, orientation=iop,
                        rows=rows, cols=cols, pixel_spacing=ps, image_type=image_type,
                        slope=slope, intercept=intercept, instance=i + 1)
            for i, o in enumerate(offs)]
