"""Argument checks that the stage functions share: volumes, spacings, distances.

Each raises a ValueError that names the argument, says what was expected and what was
received (``spacing: expected 3 positive values in mm, (z, y, x). Received spacing=...``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_distance", "check_spacing", "check_volume"]


def check_spacing(spacing, name: str = "spacing") -> np.ndarray:
    """``spacing`` as a float array of 3 finite positive values in mm, (z, y, x); ``name`` is
    the argument's name in the error (``spacing_zyx`` for the stage functions)."""
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise ValueError(f"{name}: expected 3 positive values in mm, (z, y, x). "
                         f"Received {name}={spacing!r}")
    return sp


def check_volume(name: str, arr) -> np.ndarray:
    """``arr`` as a 3-D array (z, y, x)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D array (z, y, x). Received shape {arr.shape}")
    return arr


def check_distance(name: str, value) -> float:
    """``value`` as a finite distance >= 0 in mm."""
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a distance >= 0 in mm. Received {name}={value!r}")
    return float(value)
