"""The report's PNG images of each nodule shown: crops in three planes, each detection circled,
and an overview axial slice of the whole chest with the nodule circled and labelled.

The nodules shown (:func:`shown_candidates`) are the reported ones (rows with a ``nodule_id``,
in its order) or, when a scan reports none, its top candidates by probability; image
``<i>_<plane>`` is of the i-th of them (0-based), and ``report.html`` finds it by that name."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from lungcad.results.tables import by_probability, number
from lungcad.volume import CTVolume

PLANES = ("axial", "coronal", "sagittal")
#: Side of the overview image in pixels.
OVERVIEW_PX = 384
#: Lung window (level, width) in HU.
LUNG_WINDOW = (-600.0, 1500.0)


def shown_candidates(records: list[dict], top_n: int = 3) -> list[dict]:
    """The candidates that the report shows, in the order their images are numbered: the
    reported nodules (a finite ``nodule_id``), by ``nodule_id``; when there is none, the
    ``top_n`` most probable candidates (stable on ties)."""
    reported = [r for r in records if np.isfinite(number(r.get("nodule_id")))]
    if reported:
        return sorted(reported, key=lambda r: number(r.get("nodule_id")))
    return by_probability(list(records))[:max(0, top_n)]


def _records(candidates: pd.DataFrame | None) -> list[dict]:
    if candidates is None or len(candidates) == 0:
        return []
    return candidates.replace({np.nan: None}).to_dict(orient="records")


def _axis_sign(direction: np.ndarray, axis_xyz: int) -> float:
    v = float(direction[axis_xyz, axis_xyz])
    return -1.0 if v < -0.5 else 1.0


def render_crops(volume: CTVolume, candidates: pd.DataFrame, *, top_n: int = 3, size_mm: float = 64.0,
                 image_px: int = 192, window: tuple[float, float] = LUNG_WINDOW,
                 overview: bool = False, overview_px: int = OVERVIEW_PX) -> dict[str, bytes]:
    """PNG crops of the nodules shown (:func:`shown_candidates`) in three planes, with each
    detection circled, and with ``overview`` an axial slice of the whole chest through each.

    Parameters
    ----------
    volume : CTVolume
    candidates : DataFrame
        Candidate table (``coordX/Y/Z`` world mm, or voxel ``z, y, x``, ``diameter_mm``,
        ``probability``).
    top_n : int
        How many candidates, by descending probability, when the table reports no nodule.
    size_mm : float
        Side of the square field of view, in mm, centred on the candidate.
    image_px : int
        Side of each PNG in pixels.
    window : (level, width)
        Display window in HU (default: lung window L -600 / W 1500).
    overview : bool
        Also ``"<rank>_overview"``: the whole axial slice through the nodule, ``overview_px``
        pixels square, the nodule circled and labelled (``N<nodule_id>``, or ``#<rank + 1>``).

    Returns
    -------
    dict
        ``"<rank>_<plane>"`` (rank 0 is the first nodule shown; plane axial, coronal or
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
    for rank, row in enumerate(shown_candidates(_records(candidates), top_n)):
        centre = _centre_zyx(volume, row)
        if centre is None:
            continue
        diameter = _diameter(row)
        for plane in PLANES:
            out[f"{rank}_{plane}"] = _render_plane(volume, centre, plane, diameter=diameter,
                                                   size_mm=size_mm, image_px=image_px, window=window)
        if overview:
            k = number(row.get("nodule_id"))
            label = f"N{int(k)}" if np.isfinite(k) else f"#{rank + 1}"
            out[f"{rank}_overview"] = render_overview(volume, centre, label=label, diameter=diameter,
                                                      image_px=overview_px, window=window)
    return out


def _diameter(row) -> float:
    """The size a nodule is circled with: its long axis, else its diameter, else 10 mm."""
    for col in ("long_axis_mm", "diameter_mm"):
        d = number(row.get(col))
        if np.isfinite(d) and d > 0:
            return d
    return 10.0


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


def render_overview(volume: CTVolume, centre_zyx: np.ndarray, *, label: str, diameter: float,
                    image_px: int = OVERVIEW_PX, window: tuple[float, float] = LUNG_WINDOW) -> bytes:
    """The whole axial slice through ``centre_zyx`` (voxel indices z, y, x) as a PNG, square
    pixels in mm, radiological convention (patient right on the left, anterior up) like the
    axial crop; the nodule circled (a ring a little wider than ``diameter`` mm, so that a small
    nodule stays visible at this scale) and labelled ``label``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    nz, ny, nx = volume.shape
    sp = volume.spacing
    sign_y, sign_x = _axis_sign(volume.direction, 1), _axis_sign(volume.direction, 0)
    k = int(np.clip(round(float(centre_zyx[0])), 0, nz - 1))
    my, mx = (ny - 1) / 2.0, (nx - 1) / 2.0

    def mm_y(j):
        return sign_y * (j - my) * sp[1]

    def mm_x(i):
        return sign_x * (i - mx) * sp[2]

    half = max(ny * sp[1], nx * sp[2]) / 2.0
    level, width = window
    fig = Figure(figsize=(1, 1), dpi=image_px, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("black")
    ax.set_axis_off()
    ax.imshow(np.asarray(volume.hu[k], dtype=np.float32), cmap="gray", vmin=level - width / 2,
              vmax=level + width / 2, extent=(mm_x(-0.5), mm_x(nx - 0.5), mm_y(ny - 0.5), mm_y(-0.5)),
              origin="upper", interpolation="bilinear", aspect="equal")
    ax.set_xlim(-half, half)
    ax.set_ylim(half, -half)
    cx, cy = mm_x(float(centre_zyx[2])), mm_y(float(centre_zyx[1]))
    r = max(diameter / 2.0 + 4.0, 0.03 * 2 * half)
    ax.add_patch(Circle((cx, cy), r, fill=False, edgecolor="red", linewidth=1.0))
    ax.text(cx + 0.75 * r, cy - 0.75 * r, label, color="yellow", fontsize=4, fontweight="bold",
            va="bottom", ha="left")
    ax.text(0.02, 0.98, f"axial z={k}", transform=ax.transAxes, color="white", fontsize=3, va="top", ha="left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=image_px, facecolor="black", metadata={"Software": None})
    return buf.getvalue()
