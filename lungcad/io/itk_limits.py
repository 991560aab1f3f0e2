"""What every ITK/NIfTI file is held to, shared by the MetaImage checks, the NIfTI checks and the
SimpleITK reader: the most voxels a header may claim, how close to orthonormal a direction must
be, and how much is read at a time.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MAX_VOXELS", "ORTHONORMAL_TOL"]

#: The most voxels a header may claim (1024^3); checked before anything is allocated.
MAX_VOXELS = 2**30
#: How far the direction cosines may be from orthonormal (max |D^T D - I|).
ORTHONORMAL_TOL = 1e-3
_CHUNK = 1 << 20


def _dims_text(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def _orthonormal(m: np.ndarray) -> bool:
    if not np.all(np.isfinite(m)) or np.abs(m).max() > 2:
        return False
    return bool(np.abs(m.T @ m - np.eye(m.shape[0])).max() <= ORTHONORMAL_TOL)
