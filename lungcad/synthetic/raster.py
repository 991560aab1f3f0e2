"""Rasterization primitives for the phantom generator: a world-space grid, capsules and
painting with partial-volume edges.

Every shape is described in world millimetres (x, y, z, LPS) and drawn only inside its own
bounding box, so that the cost of a structure scales with its size and not with the volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Grid:
    """Voxel centres of a regular axis-aligned grid (identity direction).

    Attributes
    ----------
    origin : (x, y, z) mm, world position of voxel (0, 0, 0)
    spacing : (z, y, x) mm
    shape : (z, y, x)
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @cached_property
    def x(self) -> np.ndarray:
        return (self.origin[0] + self.spacing[2] * np.arange(self.shape[2])).astype(np.float32)

    @cached_property
    def y(self) -> np.ndarray:
        return (self.origin[1] + self.spacing[1] * np.arange(self.shape[1])).astype(np.float32)

    @cached_property
    def z(self) -> np.ndarray:
        return (self.origin[2] + self.spacing[0] * np.arange(self.shape[0])).astype(np.float32)

    @cached_property
    def edge_mm(self) -> float:
        """Width of the anti-aliased edge: the geometric mean voxel size."""
        return float(np.prod(self.spacing) ** (1.0 / 3.0))

    def box(self, lo_xyz, hi_xyz) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the voxels whose centres lie in [lo, hi]; None if empty."""
        out = []
        for axis, dim in ((2, 0), (1, 1), (0, 2)):
            o, s, n = self.origin[axis], self.spacing[dim], self.shape[dim]
            i0 = max(math.ceil((float(lo_xyz[axis]) - o) / s), 0)
            i1 = min(math.floor((float(hi_xyz[axis]) - o) / s) + 1, n)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (z, y, x) 1-D coordinate arrays of the voxels in ``sl``."""
        return self.z[sl[0]], self.y[sl[1]], self.x[sl[2]]

    def to_index(self, xyz) -> np.ndarray:
        """Fractional (z, y, x) indices of world points (N, 3) or (3,)."""
        xyz = np.asarray(xyz, dtype=float)
        ijk = (xyz - np.asarray(self.origin)) / np.asarray(self.spacing[::-1])
        return ijk[..., ::-1]

    def to_world(self, zyx) -> np.ndarray:
        zyx = np.asarray(zyx, dtype=float)
        return np.asarray(self.origin) + zyx[..., ::-1] * np.asarray(self.spacing[::-1])


def capsule_distance(grid: Grid, sl, a, b, ra: float, rb: float):
    """Signed distance (mm) to a tapered capsule from ``a`` to ``b`` (world xyz) in box ``sl``.

    Returns the signed distance (negative inside) and the radius along the axis at each voxel,
    both float32 arrays of the box shape.
    """
    ax, ay, az = float(a[0]), float(a[1]), float(a[2])
    ex, ey, ez = float(b[0]) - ax, float(b[1]) - ay, float(b[2]) - az
    qz = grid.z[sl[0]] - np.float32(az)
    qy = grid.y[sl[1]] - np.float32(ay)
    qx = grid.x[sl[2]] - np.float32(ax)
    l2 = ex * ex + ey * ey + ez * ez
    q2 = (qz * qz)[:, None, None] + ((qy * qy)[:, None] + (qx * qx)[None, :])[None]
    if l2 < 1e-8:
        d = np.sqrt(q2, out=q2)
        d -= np.float32(ra)
        return d, None
    inv = 1.0 / l2
    s = (qz * np.float32(ez * inv))[:, None, None] + \
        ((qy * np.float32(ey * inv))[:, None] + (qx * np.float32(ex * inv))[None, :])[None]
    t = np.minimum(np.maximum(s, np.float32(0.0)), np.float32(1.0))
    # |q - t e|^2 = |q|^2 + l2 * t * (t - 2 s)
    s *= np.float32(-2.0)
    s += t
    s *= t
    s *= np.float32(l2)
    q2 += s
    np.maximum(q2, np.float32(0.0), out=q2)
    d = np.sqrt(q2, out=q2)
    r = t
    r *= np.float32(rb - ra)
    r += np.float32(ra)
    d -= r
    return d, r


def occupancy_from_distance(d: np.ndarray, edge_mm: float, thin_radius: float | None = None) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] from a signed distance field (mm), in place.

    A linear ramp one ``edge_mm`` wide across the surface.  For structures thinner than the
    voxel (``thin_radius`` < edge/2) the ramp would overstate their cross-section; it is scaled
    down so that the integrated occupancy matches the true area.
    """
    d *= np.float32(-1.0 / edge_mm)
    d += np.float32(0.5)
    np.minimum(d, np.float32(1.0), out=d)
    np.maximum(d, np.float32(0.0), out=d)
    if thin_radius is not None and thin_radius < 0.5 * edge_mm:
        d *= np.float32((2.0 * thin_radius / (thin_radius + 0.5 * edge_mm)) ** 2)
    return d


def label_lut(labels_allowed) -> np.ndarray:
    """A 256-entry boolean lookup table that is True for the allowed label values."""
    lut = np.zeros(256, dtype=bool)
    lut[list(labels_allowed)] = True
    return lut


def paint(hu: np.ndarray, labels: np.ndarray, sl, occ: np.ndarray, value, *,
          hu_allowed: np.ndarray | None = None, label: int | None = None,
          label_allowed: np.ndarray | None = None, keep_brighter=None, flag: int | None = None) -> np.ndarray:
    """Blend ``value`` into ``hu[sl]`` with weight ``occ`` and set ``label`` where occ >= 0.5.

    Parameters
    ----------
    hu, labels : the volumes, modified in place
    sl : box of index slices
    occ : float32 occupancy of the box (modified: zeroed where painting is not allowed)
    value : scalar or array of the box shape: the HU of the structure
    hu_allowed, label_allowed : boolean lookup tables over label values (see :func:`label_lut`)
    keep_brighter : bool array of the box shape, optional
        Where True, the structure does not darken what is there (ground glass over vessels).
    flag : int, optional
        Instead of replacing the label, OR this bit into it (the old label stays readable).

    Returns
    -------
    ndarray of bool: the voxels that received ``label`` (all False when ``label`` is None).
    """
    h = hu[sl]
    lab = labels[sl]
    if hu_allowed is not None:
        occ *= hu_allowed[lab]
    if keep_brighter is not None:
        v = np.asarray(value, dtype=np.float32)
        v = np.where(keep_brighter, np.maximum(v, h), v)
        v -= h
    else:
        v = np.float32(value) - h if np.ndim(value) == 0 else np.asarray(value, dtype=np.float32) - h
    v *= occ
    h += v
    if label is None and flag is None:
        return np.zeros(occ.shape, dtype=bool)
    m = occ >= 0.5
    if label_allowed is not None:
        m &= label_allowed[lab]
    if flag is not None:
        lab[m] |= np.uint8(flag)
    else:
        lab[m] = label
    return m


def paint_capsules(grid: Grid, hu: np.ndarray, labels: np.ndarray, a, b, ra, rb, value, *,
                   hu_allowed=None, label=None, label_allowed=None, edge_mm=None, flag=None) -> None:
    """Paint many capsules (arrays of endpoints (N, 3), radii (N,), HU (N,) or scalar)."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    ra = np.broadcast_to(np.asarray(ra, dtype=float), (len(a),))
    rb = np.broadcast_to(np.asarray(rb, dtype=float), (len(a),))
    value = np.broadcast_to(np.asarray(value, dtype=float), (len(a),))
    edge = grid.edge_mm if edge_mm is None else edge_mm
    rmax = np.maximum(ra, rb) + edge
    lo = (np.minimum(a, b) - rmax[:, None]).tolist()
    hi = (np.maximum(a, b) + rmax[:, None]).tolist()
    a_l, b_l, ra_l, rb_l, v_l = a.tolist(), b.tolist(), ra.tolist(), rb.tolist(), value.tolist()
    for i in range(len(a_l)):
        sl = grid.box(lo[i], hi[i])
        if sl is None:
            continue
        d, _ = capsule_distance(grid, sl, a_l[i], b_l[i], ra_l[i], rb_l[i])
        occ = occupancy_from_distance(d, edge, thin_radius=0.5 * (ra_l[i] + rb_l[i]))
        paint(hu, labels, sl, occ, v_l[i], hu_allowed=hu_allowed, label=label,
              label_allowed=label_allowed, flag=flag)


def _lerp_index(n_out: int, n_in: int, pos: np.ndarray):
    """Indices and weights of linear interpolation at fractional input positions ``pos``."""
    pos = np.clip(pos, 0.0, n_in - 1.000001)
    i0 = np.floor(pos).astype(np.intp)
    return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)


class SmoothField:
    """A smooth random field of unit standard deviation over ``grid``, with features about
    ``cell_mm`` across, evaluated one axial slice at a time (``slice(z)``, world z in mm)."""

    def __init__(self, rng: np.random.Generator, grid: Grid, cell_mm: float = 7.0):
        n = [max(4, int(np.ceil(e / cell_mm)) + 3) for e in
             (grid.shape[0] * grid.spacing[0], grid.shape[1] * grid.spacing[1], grid.shape[2] * grid.spacing[2])]
        lo = ndi.gaussian_filter(rng.standard_normal(n).astype(np.float32), 1.2, mode="wrap")
        lo /= max(float(lo.std()), 1e-6)
        self.lo = lo
        self.cell = cell_mm
        self.z0 = float(grid.z[0]) - cell_mm
        self.iy = _lerp_index(grid.shape[1], n[1], np.arange(grid.shape[1]) * grid.spacing[1] / cell_mm + 1.0)
        self.ix = _lerp_index(grid.shape[2], n[2], np.arange(grid.shape[2]) * grid.spacing[2] / cell_mm + 1.0)

    def slice(self, z: float) -> np.ndarray:
        p = float(np.clip((z - self.z0) / self.cell, 0.0, self.lo.shape[0] - 1.000001))
        i = int(p)
        f = np.float32(p - i)
        s = self.lo[i] * (1.0 - f) + self.lo[min(i + 1, self.lo.shape[0] - 1)] * f
        x0, x1, fx = self.ix
        sx = s[:, x0] * (1.0 - fx) + s[:, x1] * fx
        y0, y1, fy = self.iy
        return sx[y0] * (1.0 - fy)[:, None] + sx[y1] * fy[:, None]
