"""PNG crops of the top candidates in three planes, each detection circled."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from lungcad.results.tables import number
from lungcad.volume import CTVolume

PLANES = ("axial", "coronal", "sagittal")
#: Lung window (level, width) in HU.
LUNG_WINDOW = (-600.0, 1500.0)


def _top(candidates: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` most probable candidates (stable on ties), the order crops are numbered in."""
    if candidates is None or len(candidates) == 0 or n <= 0:
        return candidates.iloc[:0] if candidates is not None else pd.DataFrame()
    p = pd.to_numeric(candidates["probability"], errors="coerce").fillna(-np.inf)
    order = np.argsort(-p.to_numpy(float), kind="mergesort")
    return candidates.iloc[order[:n]]


def _axis_sign(direction: np.ndarray, axis_xyz: int) -> float:
    v = float(direction[axis_xyz, axis_xyz])
    return -1.0 if v < -0.5 else 1.0


def render_crops(volume: CTVolume, candidates: pd.DataFrame, *, top_n: int = 3, size_mm: float = 64.0,
                 image_px: int = 192, window: tuple[float, float] = LUNG_WINDOW) -> dict[str, bytes]:
    """PNG crops of the top candidates in three planes, with each detection circled.

    Parameters
    ----------
    volume : CTVolume
    candidates : DataFrame
        Candidate table (``coordX/Y/Z`` world mm, or voxel ``z, y, x``, ``diameter_mm``,
        ``probability``).
    top_n : int
        How many candidates, by descending probability.
    size_mm : float
        Side of the square field of view, in mm, centred on the candidate.
    image_px : int
        Side of each PNG in pixels.
    window : (level, width)
        Display window in HU (default: lung window L -600 / W 1500).

    Returns
    -------
    dict
        ``"<rank>_<plane>"`` (rank 0 is the most probable; plane axial, coronal or
        sagittal) -> PNG bytes.  Pixels are square in mm whatever the voxel spacing, so
        the coronal and sagittal views of thick slices are not squashed.  Axial is shown
        in radiological convention (patient right on the left, anterior up); coronal
        and sagittal with the head up.  A circle of the candidate's diameter marks it
        (10 mm when the diameter is unknown).
    """
    if size_mm <= 0 or image_px < 16:
        raise ValueError(f"size_mm must be > 0 and image_px >= 16. Received size_mm={size_mm}, "
                         f"image_px={image_px}")
    out: dict[str, bytes] = {}
    for rank, (_, row) in enumerate(_top(candidates, top_n).iterrows()):
        centre = _centre_zyx(volume, row)
        if centre is None:
            continue
        d = number(row.get("diameter_mm"))
        diameter = d if not np.isnan(d) and d > 0 else 10.0
        for plane in PLANES:
            out[f"{rank}_{plane}"] = _render_plane(volume, centre, plane, diameter=diameter,
                                                   size_mm=size_mm, image_px=image_px, window=window)
    return out


def _centre_zyx(volume: CTVolume, row) -> np.ndarray | None:
    xyz = np.array([number(row.get(c)) for c in ("coordX", "coordY", "coordZ")])
    if np.isfinite(xyz).all():
        return volume.world_to_voxel(xyz)
    zyx = np.array([number(row.get(c)) for c in ("z", "y", "x")])
    return zyx if np.isfinite(zyx).all() else None


# plane -> (fixed array axis, row array axis, column array axis, world axis increasing upwards?)
_PLANE_AXES = {"axial": (0, 1, 2, False), "coronal": (1, 0, 2, True), "sagittal": (2, 0, 1, True)}


def _render_plane(volume: CTVolume, centre_zyx: np.ndarray, plane: str, *, diameter: float,
                  size_mm: float, image_px: int, window: tuple[float, float]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fixed, ra, ca, up = _PLANE_AXES[plane]
    shape = volume.shape
    sp = volume.spacing                                  # (z, y, x)
    sign = [_axis_sign(volume.direction, 2 - a) for a in range(3)]   # per array axis z, y, x
    half = size_mm / 2.0
    k = int(np.clip(round(float(centre_zyx[fixed])), 0, shape[fixed] - 1))

    def span(a):
        lo = max(0, int(math.floor(centre_zyx[a] - half / sp[a])) - 1)
        hi = min(shape[a], int(math.ceil(centre_zyx[a] + half / sp[a])) + 2)
        return lo, hi

    (r0, r1), (c0, c1) = span(ra), span(ca)
    level, width = window
    fig = Figure(figsize=(1, 1), dpi=image_px, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("black")
    ax.set_axis_off()
    if r1 > r0 and c1 > c0:
        index = [slice(None)] * 3
        index[fixed] = k
        index[ra] = slice(r0, r1)
        index[ca] = slice(c0, c1)
        img = np.asarray(volume.hu[tuple(index)], dtype=np.float32)   # rows ra, columns ca

        def mm(a, i):
            return sign[a] * (i - centre_zyx[a]) * sp[a]

        extent = (mm(ca, c0 - 0.5), mm(ca, c1 - 0.5), mm(ra, r1 - 0.5), mm(ra, r0 - 0.5))
        ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, extent=extent,
                  origin="upper", interpolation="bilinear", aspect="equal")
    ax.set_xlim(-half, half)
    ax.set_ylim((-half, half) if up else (half, -half))
    ax.add_patch(Circle((0.0, 0.0), diameter / 2.0, fill=False, edgecolor="red", linewidth=1.2))
    ax.text(0.03, 0.97, plane, transform=ax.transAxes, color="white", fontsize=5, va="top", ha="left")
    ax.text(0.97, 0.03, f"{size_mm:g} mm", transform=ax.transAxes, color="white", fontsize=5,
            va="bottom", ha="right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=image_px, facecolor="black", metadata={"Software": None})
    return buf.getvalue()
