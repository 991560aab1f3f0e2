"""The coarse grid and the in-plane shapes that the lung mask works with.

Structuring elements, the octagon discs of the in-plane dilation and closing, hole filling,
crop boxes, and the trips between the scan's grid and the coarse one (block means and
majorities, upsampling, the fine edge of the final mask).  Radii are in mm, spacings
(z, y, x) in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)
SLICEWISE = np.zeros((3, 3, 3), dtype=bool)
SLICEWISE[1] = EIGHT

CROSS = ndimage.generate_binary_structure(2, 1)[None]
SQUARE = np.ones((1, 3, 3), dtype=bool)
CROSS_SLICEWISE = np.zeros((3, 3, 3), dtype=bool)
CROSS_SLICEWISE[1] = ndimage.generate_binary_structure(2, 1)


def disk(radius_px_y: float, radius_px_x: float) -> np.ndarray:
    """A filled ellipse (2-D, bool) of the given radii in pixels along y and x."""
    ry, rx = max(radius_px_y, 0.0), max(radius_px_x, 0.0)
    hy, hx = int(math.floor(ry + 1e-9)), int(math.floor(rx + 1e-9))
    yy, xx = np.ogrid[-hy:hy + 1, -hx:hx + 1]
    return (yy / max(ry, 1e-9)) ** 2 + (xx / max(rx, 1e-9)) ** 2 <= 1.0 + 1e-9


def octagon_steps(radius_mm: float, sp: np.ndarray) -> tuple[int, int]:
    """Cross and square steps whose succession approximates a disc of ``radius_mm``."""
    n = int(round(radius_mm / float(min(sp[1], sp[2]))))
    squares = int(round(n * (math.sqrt(2.0) - 1.0)))
    return n - squares, squares


def dilate_disc(m: np.ndarray, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """In-plane dilation by an octagon of ``radius_mm`` (fast: 3 x 3 steps)."""
    crosses, squares = octagon_steps(radius_mm, sp)
    out = m
    if crosses:
        out = ndimage.binary_dilation(out, structure=CROSS, iterations=crosses)
    if squares:
        # a (2s+1)^2 square in one separable pass
        out = ndimage.maximum_filter(out, size=(1, 2 * squares + 1, 2 * squares + 1),
                                     mode="constant", cval=0)
    return out if out is not m else m.copy()


def close_disc(m: np.ndarray, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """In-plane closing by an octagon of ``radius_mm``; the array border does not erode."""
    crosses, squares = octagon_steps(radius_mm, sp)
    r = crosses + squares + 1
    mp = np.pad(m, ((0, 0), (r, r), (r, r)))
    grown = dilate_disc(mp, radius_mm, sp)
    if squares:
        grown = ndimage.minimum_filter(grown, size=(1, 2 * squares + 1, 2 * squares + 1),
                                       mode="constant", cval=0)
    if crosses:
        grown = ndimage.binary_erosion(grown, structure=CROSS, iterations=crosses)
    return grown[:, r:-r, r:-r]


def block_mean(hu: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean over fy x fx in-plane blocks (edge blocks padded with -1024 HU, i.e. air).

    Values below -1024 (padding outside the field of view) count as -1024; NaN as air.
    """
    z, y, x = hu.shape
    ny, nx = -(-y // fy), -(-x // fx)
    if (ny * fy, nx * fx) != (y, x):
        padded = np.full((z, ny * fy, nx * fx), -1024, dtype=hu.dtype)
        padded[:, :y, :x] = hu
        hu = padded
    acc_type = np.int32 if hu.dtype.kind in "iub" and hu.dtype.itemsize <= 2 else np.float64
    acc = np.zeros((z, ny, nx), acc_type)
    for i in range(fy):
        for j in range(fx):
            block = hu[:, i::fy, j::fx]
            if acc_type is np.float64:
                block = np.nan_to_num(block.astype(np.float64), nan=-1024.0)
            acc += np.maximum(block, -1024)
    out = acc.astype(np.float32)
    out /= fy * fx
    return out


def block_median(hu: np.ndarray, fy: int, fx: int, *, chunk: int = 16) -> np.ndarray:
    """Median over fy x fx in-plane blocks, with :func:`block_mean`'s padding and floor
    (-1024 HU; NaN as air), a few slices at a time.  Unlike the mean it is not lifted where
    noise in air is clipped at the floor."""
    z, y, x = hu.shape
    ny, nx = -(-y // fy), -(-x // fx)
    out = np.empty((z, ny, nx), np.float32)
    for k in range(0, z, chunk):
        part = np.full((min(chunk, z - k), ny * fy, nx * fx), -1024.0, np.float32)
        part[:, :y, :x] = np.nan_to_num(np.asarray(hu[k:k + chunk], np.float32), nan=-1024.0)
        np.maximum(part, -1024.0, out=part)
        blocks = part.reshape(len(part), ny, fy, nx, fx).transpose(0, 1, 3, 2, 4).reshape(len(part), ny, nx, -1)
        out[k:k + len(part)] = np.median(blocks, axis=-1)
    return out


def block_majority(m: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """3-D block reduction: True where at least half of each f-block is True (zero-padded)."""
    shape = tuple(-(-n // k) * k for n, k in zip(m.shape, f))
    if shape != m.shape:
        padded = np.zeros(shape, bool)
        padded[tuple(slice(0, n) for n in m.shape)] = m
        m = padded
    blocks = m.reshape(shape[0] // f[0], f[0], shape[1] // f[1], f[1], shape[2] // f[2], f[2])
    return blocks.sum(axis=(1, 3, 5), dtype=np.int32) * 2 >= f[0] * f[1] * f[2]


def fill_holes(m: np.ndarray, *, slicewise: bool, max_size: int | None = None) -> np.ndarray:
    """Fill the holes of ``m``: in each slice alone (``slicewise``) or in 3-D.

    A hole is a background component (4-connected in-plane, or 6-connected in 3-D) that does
    not reach the array border (for ``slicewise``, the border of its slice).  With
    ``max_size``, only holes of at most that many voxels are filled.
    """
    bg = ~m
    lab, n = ndimage.label(bg, structure=CROSS_SLICEWISE if slicewise else None)
    if n == 0:
        return m.copy()
    faces = [lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]]
    if not slicewise:
        faces += [lab[0], lab[-1]]
    keep_bg = np.zeros(n + 1, bool)
    for f in faces:
        keep_bg[np.unique(f)] = True
    if max_size is not None:
        keep_bg |= np.bincount(lab.ravel(), minlength=n + 1) > max_size
    keep_bg[0] = True       # label 0 is the foreground itself
    return m | ~keep_bg[lab]


def crop_box(m: np.ndarray, pad: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - pad[axis]),
                         min(m.shape[axis], int(idx[-1]) + 1 + pad[axis])))
    return tuple(box)


def fine_mask(final: np.ndarray, air_lung: np.ndarray, hu: np.ndarray, fy: int, fx: int,
              threshold_hu: float) -> np.ndarray:
    """The coarse mask on the scan's grid, with its edge redrawn at the scan's resolution.

    In the outer ring of coarse blocks, a pixel stays only if it is air itself or if its block
    was added by a fill (a hole, a closing: a nodule or a mass).  Inside, every block stays.
    """
    if fy == fx == 1:
        return final.copy()
    keep = ndimage.binary_erosion(final, structure=CROSS_SLICEWISE) | (final & ~air_lung)
    # NaN compares False: not air
    return upsample(final, fy, fx, hu.shape) & (upsample(keep, fy, fx, hu.shape)
                                                 | (hu < threshold_hu))


def upsample(m: np.ndarray, fy: int, fx: int, shape) -> np.ndarray:
    """Each coarse pixel becomes an fy x fx block, cropped to ``shape``."""
    z, ny, nx = m.shape
    up = np.broadcast_to(m[:, :, None, :, None], (z, ny, fy, nx, fx)).reshape(z, ny * fy, nx * fx)
    if up.shape[1:] != tuple(shape[1:]):
        up = np.ascontiguousarray(up[:, :shape[1], :shape[2]])
    return up
