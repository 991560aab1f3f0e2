"""Candidate segmentation: a 2D / 2.5D U-Net run slice by slice over the lung box.

The network sees HU-windowed slices scaled to [0, 1], resampled in-plane to
``pixel_mm`` millimetres per pixel, with ``context_slices`` neighbours above and below
as extra channels (2.5D).  :func:`prepare_slices` does that preparation for inference
and for training alike, so the two can never drift apart.
"""
from __future__ import annotations

import numpy as np

from lungcad.inference import predict_batched


def window(hu: np.ndarray, window_hu=(-1000.0, 400.0)) -> np.ndarray:
    """Clip HU to ``window_hu`` and scale to [0, 1] as float32."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    if hi <= lo:
        raise ValueError(f"window_hu must be (low, high) with low < high. Received {window_hu}")
    out = np.clip(hu.astype(np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def context_indices(n_slices: int, context_slices: int) -> np.ndarray:
    """For each slice, the indices of the 2*c+1 slices around it, repeated at the edges."""
    offsets = np.arange(-context_slices, context_slices + 1)
    return np.clip(np.arange(n_slices)[:, None] + offsets[None, :], 0, n_slices - 1)


def inplane_zoom(spacing_zyx, pixel_mm: float) -> tuple[float, float]:
    """Zoom factors (y, x) that take a slice from its spacing (``spacing_zyx``: z, y, x in mm) to
    ``pixel_mm`` (1.0 when 0)."""
    if not pixel_mm:
        return 1.0, 1.0
    return float(spacing_zyx[1]) / pixel_mm, float(spacing_zyx[2]) / pixel_mm


def _linear_along(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    if n_out == n:
        return a
    # grid mode: the centres of the n_out pixels over the n pixels' span; the edges held
    c = np.clip((np.arange(n_out) + 0.5) * (n / n_out) - 0.5, 0.0, n - 1.0)
    i0 = np.floor(c).astype(np.intp)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = (c - i0).astype(a.dtype).reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, np.minimum(i0 + 1, n - 1), axis=axis)
    hi -= lo
    hi *= w
    lo += hi
    return lo


def zoom_slices(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each slice of a float (z, y, x) block resampled to ``size`` (Y, X) pixels, bilinear.

    The same values as ``scipy.ndimage.zoom(a, (1, Y / y, X / x), order=1, prefilter=False,
    grid_mode=True, mode="nearest")`` to float rounding, one axis after the other: 3 x
    faster, as the z axis is not interpolated at all.
    """
    return _linear_along(_linear_along(a, int(size[0]), 1), int(size[1]), 2)


def prepare_slices(hu: np.ndarray, *, spacing_zyx, context_slices: int = 1, pixel_mm: float = 1.25,
                   window_hu=(-1000.0, 400.0), tile: int = 16) -> tuple[np.ndarray, tuple[int, int]]:
    """Turn a (z, y, x) HU block into network input (z, Y, X, 2c+1), float32 in [0, 1].

    Parameters
    ----------
    hu : ndarray (z, y, x)
        HU block, usually the lung box of a volume.
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    context_slices : int
        Neighbours on each side as extra channels (0 = plain 2D).
    pixel_mm : float
        In-plane pixel size of the network input; 0 keeps the native spacing.
    tile : int
        The output is zero-padded (air) at the high end to a multiple of ``tile``.

    Returns
    -------
    x : ndarray (z, Y, X, C)
    size : (Yr, Xr)
        The resampled size before padding, to undo the padding later.
    """
    w = window(hu, window_hu)
    zy, zx = inplane_zoom(spacing_zyx, pixel_mm)
    if (zy, zx) != (1.0, 1.0):
        w = zoom_slices(w, (round(w.shape[1] * zy), round(w.shape[2] * zx)))
    size = (w.shape[1], w.shape[2])
    py = (-size[0]) % tile
    px = (-size[1]) % tile
    if py or px:
        w = np.pad(w, ((0, 0), (0, py), (0, px)), constant_values=0.0)
    idx = context_indices(w.shape[0], context_slices)
    return np.ascontiguousarray(np.moveaxis(w[idx], 1, -1)), size


def predict_probability_map(hu: np.ndarray, *, spacing_zyx, model, box=None, context_slices: int = 1,
                            pixel_mm: float = 1.25, window_hu=(-1000.0, 400.0), batch_size: int = 8,
                            tile: int = 16, chunk_slices: int = 64) -> np.ndarray:
    """Run the candidate U-Net over a volume and return a probability map aligned with it.

    Parameters
    ----------
    hu : ndarray (z, y, x)
    spacing_zyx : (z, y, x) mm
        Voxel spacing along the slice, row and column axes.
    model : callable
        A Keras model (or any callable) mapping (n, Y, X, 2c+1) float32 to (n, Y, X, 1)
        probabilities.  Toy functions work too, which is how the plumbing is tested.
    box : tuple of 3 slices, optional
        The lung box; voxels outside it get probability 0.
    chunk_slices : int
        Slices prepared at a time, to bound memory on large scans.

    Returns
    -------
    ndarray (z, y, x) float32 in [0, 1], the same shape as ``hu``.
    """
    if box is None:
        box = tuple(slice(0, n) for n in hu.shape)
    out = np.zeros(hu.shape, dtype=np.float32)
    z0, z1 = box[0].start or 0, box[0].stop if box[0].stop is not None else hu.shape[0]
    sub_shape = hu[box].shape
    if 0 in sub_shape:
        return out
    c = context_slices
    for start in range(z0, z1, chunk_slices):
        stop = min(start + chunk_slices, z1)
        # read c slices of context on both sides so chunk edges see real neighbours
        lo, hi = max(start - c, 0), min(stop + c, hu.shape[0])
        block = hu[lo:hi, box[1], box[2]]
        x, size = prepare_slices(block, spacing_zyx=spacing_zyx, context_slices=c, pixel_mm=pixel_mm,
                                 window_hu=window_hu, tile=tile)
        x = x[start - lo: start - lo + (stop - start)]
        prob = predict_batched(model, x, batch_size=batch_size)[..., 0][:, :size[0], :size[1]]
        if prob.shape[1:] != sub_shape[1:]:
            prob = zoom_slices(prob, sub_shape[1:])
        out[start:stop, box[1], box[2]] = np.clip(prob, 0.0, 1.0)
    return out
