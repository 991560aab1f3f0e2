"""Argument checks that the stage functions share: volumes, spacings, distances.

Each raises a ValueError that names the argument, says what was expected and what was
received (``spacing: expected 3 positive values in mm, (z, y, x). Received spacing=...``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_bool", "check_distance", "check_int", "check_number", "check_spacing", "check_volume"]


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


# ---------------------------------------------------------------- options of library calls
# These raise lungcad.errors.OptionError (a ValueError) naming the keyword, so that the CLI
# can say the same with its flag.

def check_int(keyword: str, value, *, minimum: int | None = None, optional: bool = False):
    """``value`` as an int (not a bool) >= ``minimum``; None passes when ``optional``."""
    from lungcad.errors import OptionError

    if value is None and optional:
        return None
    need = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionError(keyword, need, value)
    if minimum is not None and value < minimum:
        raise OptionError(keyword, need, value)
    return int(value)


def check_number(keyword: str, value, *, minimum: float = 0.0) -> float:
    """``value`` as a finite float >= ``minimum``."""
    from lungcad.errors import OptionError

    need = f"a number >= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionError(keyword, need, value)
    if not np.isfinite(value) or value < minimum:
        raise OptionError(keyword, need, value)
    return float(value)


def check_bool(keyword: str, value) -> bool:
    """``value`` as a bool (True or False, not a truthy object)."""
    from lungcad.errors import OptionError

    if not isinstance(value, (bool, np.bool_)):
        raise OptionError(keyword, "True or False", value)
    return bool(value)
