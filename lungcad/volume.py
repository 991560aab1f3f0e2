"""The CT volume that every stage receives, and voxel <-> world conversion.

Conventions (see docs/architecture.md):

* ``hu`` is an int16 array in (z, y, x) order: slice, row, column.
* ``spacing`` is in millimetres in (z, y, x) order.
* ``origin`` is the world position, in mm, of voxel (0, 0, 0) in (x, y, z) order,
  in the DICOM patient frame (LPS: x to the patient's left, y to posterior, z to head).
* ``direction`` is the 3x3 matrix whose columns are the world unit vectors of the
  column (x), row (y) and slice (z) index axes, as in SimpleITK (``GetDirection``
  reshaped row-major).  For a plain axial DICOM series it is the identity.

So for a voxel index (k, j, i) = (z, y, x)::

    world_xyz = origin + direction @ (np.array([i, j, k]) * spacing_xyz)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CTVolume:
    """A CT scan in Hounsfield units with its geometry and identifiers."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    patient_id: str = ""
    series_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.hu = np.asarray(self.hu)
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (z, y, x). Received shape {self.hu.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(
                f"spacing (z, y, x) and origin (x, y, z) need 3 values each. "
                f"Received spacing={self.spacing}, origin={self.origin}")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be finite and positive mm. Received spacing={self.spacing}")
        if not all(math.isfinite(o) for o in self.origin):
            raise ValueError(f"origin must be finite mm. Received origin={self.origin}")
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.isfinite(self.direction).all():
            raise ValueError(f"direction must be finite. Received {self.direction.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)

    @property
    def spacing_xyz(self) -> np.ndarray:
        return np.array(self.spacing[::-1], dtype=float)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def voxel_to_world(self, zyx) -> np.ndarray:
        """See :func:`voxel_to_world`."""
        return voxel_to_world(zyx, spacing=self.spacing, origin=self.origin, direction=self.direction)

    def world_to_voxel(self, xyz) -> np.ndarray:
        """See :func:`world_to_voxel`."""
        return world_to_voxel(xyz, spacing=self.spacing, origin=self.origin, direction=self.direction)

    def geometry(self) -> dict[str, Any]:
        """A JSON-ready description of the geometry."""
        return {
            "shape_zyx": list(self.shape),
            "spacing_zyx_mm": list(self.spacing),
            "origin_xyz_mm": list(self.origin),
            "direction": self.direction.round(6).tolist(),
        }


def voxel_to_world(zyx, *, spacing, origin, direction=None) -> np.ndarray:
    """Convert voxel indices (z, y, x), possibly fractional, to world mm (x, y, z), LPS.

    Parameters
    ----------
    zyx : array_like, shape (3,) or (N, 3)
    spacing : (z, y, x) mm
    origin : (x, y, z) mm
    direction : 3x3, optional (identity when None)

    Returns
    -------
    ndarray of shape (3,) or (N, 3): world x, y, z in mm.
    """
    zyx = np.asarray(zyx, dtype=float)
    single = zyx.ndim == 1
    ijk = np.atleast_2d(zyx)[:, ::-1] * np.asarray(spacing, dtype=float)[::-1]
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    xyz = ijk @ d.T + np.asarray(origin, dtype=float)
    return xyz[0] if single else xyz


def world_to_voxel(xyz, *, spacing, origin, direction=None) -> np.ndarray:
    """Convert world mm (x, y, z), LPS, to fractional voxel indices (z, y, x).

    The inverse of :func:`voxel_to_world`; round the result to index an array.
    """
    xyz = np.asarray(xyz, dtype=float)
    single = xyz.ndim == 1
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    ijk = (np.atleast_2d(xyz) - np.asarray(origin, dtype=float)) @ np.linalg.inv(d).T
    zyx = (ijk / np.asarray(spacing, dtype=float)[::-1])[:, ::-1]
    return zyx[0] if single else zyx
