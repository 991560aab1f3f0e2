"""Classical lung segmentation on Hounsfield units.

:func:`segment_lungs` works on a coarse copy of the scan (block means of about ``work_mm``
in-plane, native slices) and returns a mask on the scan's own grid:

0. A noisy scan (low dose, sharp kernel: noise above 60 HU, measured on neighbouring pixels
   in soft tissue) is first smoothed in-plane by a Gaussian of noise / 100 pixels (at most 3).
1. ``air``: block mean below ``threshold_hu`` (-320 HU).
2. The body, slice by slice: the largest non-air component after a 3 mm opening (which cuts it
   from the table), holes filled.  Air inside the body is candidate lung; the air around the
   patient and the padding outside the field of view are dropped.
3. The trachea and main bronchi: a 30-900 mm^2 air component near the body's midline in the
   upper slices, followed down slice by slice at the scan's own resolution (where the airway
   wall still parts it from a lung that touches it) while it stays small, stopping where a
   bronchus runs into a lung or 50 mm below the carina.  It is removed.
4. Gas in the stomach or bowel that thick slices merge with a lung base: pure gas (below
   ``gas_hu`` after a 5 mm mean) in pockets surrounded mostly by tissue.  It is removed.
5. The lungs: the largest 3-D components of the remaining air (two when the second holds at
   least 10 % of the first).  Lungs that touch at the anterior junction form one component;
   it is split by eroding it until it falls in two, then giving each voxel to the nearer part.
6. For each lung on its own:

   * holes of up to 10 cm^2 filled in each slice (vessels, nodules inside the lung; a larger
     hole is the top of the diaphragm's dome or of the heart, seen through the lung);
   * a closing in each slice by a disc of ``closing_mm`` (juxta-pleural nodules);
   * a closing by a ball of ``mass_mm`` radius, in 3-D on a ``mass_grid_mm`` grid: it adds
     what bulges into the lung and is narrower than the ball, whether it comes from the chest
     wall, the mediastinum or the hilum.  Masses of up to about twice ``mass_mm`` that
     replaced lung against the mediastinum are kept this way, while the heart, the
     mediastinum and the diaphragm, whose surfaces curve more gently than the ball, stay out.
     What it adds gets a margin of one grid cell, and only inside the body;
   * holes filled in 3-D;
   * what the hole filling and the ball closing add is kept only where lung lies beneath it:
     the liver dome, the spleen, the stomach and the base of the heart rise into the lungs
     from below, with no lung under them, while a nodule or a hilar mass has lung beneath.
7. The coarse mask is brought back to the scan's grid: each block takes its coarse value,
   except in the mask's outer ring of blocks, where the air pixels alone stay (unless a fill
   made the block).

When the result is empty or its volume is outside ``plausible_litres``, the mask falls back
to the body's bounding box (the whole volume if there is no body), with ``fallback=True``
and a warning.  The function does not raise for any 3-D input with a valid spacing.

Runtime (measured on a shared 2-core machine): about 4.5 s of CPU for 300 slices of 512 x 512,
2-3 s for LIDC-IDRI-0003 (140 slices), under 1 s for the 8 mm Lung-PET-CT-Dx series.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from lungcad.checks import check_distance, check_spacing, check_volume

__all__ = ["LungMask", "segment_lungs", "lung_box"]

_EIGHT = np.ones((3, 3), dtype=bool)
_SLICEWISE = np.zeros((3, 3, 3), dtype=bool)
_SLICEWISE[1] = _EIGHT


@dataclass
class LungMask:
    """The result of :func:`segment_lungs`.

    Attributes
    ----------
    mask : ndarray of bool, (z, y, x)
        Lung voxels, same shape as the input.
    volume_ml : float
        Volume of ``mask`` in millilitres.
    fallback : bool
        True when the segmentation failed and ``mask`` is the body's bounding box.
    warnings : list of str
        Human-readable problems (one line each), for the scan's result.
    info : dict
        Diagnostics: ``n_lungs`` found, ``trachea_found`` (and removed), ``gas_pockets_ml``
        (stomach or bowel gas cut off), ``work_spacing_mm`` (the coarse grid) and
        ``segmented_volume_ml`` (the volume found, before any fallback).
    """

    mask: np.ndarray
    volume_ml: float
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def lung_box(mask, *, spacing, margin_mm: float = 10.0) -> tuple[slice, slice, slice]:
    """Bounding box of a mask with a margin in mm, as slices into the same volume.

    Parameters
    ----------
    mask : ndarray of bool, (z, y, x)
    spacing : (z, y, x) mm
    margin_mm : float, optional
        Added on every side (rounded up to whole voxels per axis), clipped to the volume.

    Returns
    -------
    tuple of three slices (z, y, x)
        The whole volume when ``mask`` is empty.
    """
    mask = check_volume("mask", mask)
    sp = check_spacing(spacing)
    margin_mm = check_distance("margin_mm", margin_mm)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(math.ceil(margin_mm / sp[axis] - 1e-9))
        out.append(slice(max(0, int(idx[0]) - m), min(mask.shape[axis], int(idx[-1]) + 1 + m)))
    return tuple(out)


def _disk(radius_px_y: float, radius_px_x: float) -> np.ndarray:
    ry, rx = max(radius_px_y, 0.0), max(radius_px_x, 0.0)
    hy, hx = int(math.floor(ry + 1e-9)), int(math.floor(rx + 1e-9))
    yy, xx = np.ogrid[-hy:hy + 1, -hx:hx + 1]
    return (yy / max(ry, 1e-9)) ** 2 + (xx / max(rx, 1e-9)) ** 2 <= 1.0 + 1e-9


_CROSS = ndimage.generate_binary_structure(2, 1)[None]
_SQUARE = np.ones((1, 3, 3), dtype=bool)


def _octagon_steps(radius_mm: float, sp: np.ndarray) -> tuple[int, int]:
    """Cross and square steps whose succession approximates a disc of ``radius_mm``."""
    n = int(round(radius_mm / float(min(sp[1], sp[2]))))
    squares = int(round(n * (math.sqrt(2.0) - 1.0)))
    return n - squares, squares


def _dilate_disc(m: np.ndarray, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """In-plane dilation by an octagon of ``radius_mm`` (fast: 3 x 3 steps)."""
    crosses, squares = _octagon_steps(radius_mm, sp)
    out = m
    if crosses:
        out = ndimage.binary_dilation(out, structure=_CROSS, iterations=crosses)
    if squares:
        # a (2s+1)^2 square in one separable pass
        out = ndimage.maximum_filter(out, size=(1, 2 * squares + 1, 2 * squares + 1),
                                     mode="constant", cval=0)
    return out if out is not m else m.copy()


def _close_disc(m: np.ndarray, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """In-plane closing by an octagon of ``radius_mm``; the array border does not erode."""
    crosses, squares = _octagon_steps(radius_mm, sp)
    r = crosses + squares + 1
    mp = np.pad(m, ((0, 0), (r, r), (r, r)))
    grown = _dilate_disc(mp, radius_mm, sp)
    if squares:
        grown = ndimage.minimum_filter(grown, size=(1, 2 * squares + 1, 2 * squares + 1),
                                       mode="constant", cval=0)
    if crosses:
        grown = ndimage.binary_erosion(grown, structure=_CROSS, iterations=crosses)
    return grown[:, r:-r, r:-r]


def _block_mean(hu: np.ndarray, fy: int, fx: int) -> np.ndarray:
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


def _noise_hu(hu: np.ndarray) -> float:
    """The scan's noise (HU): the robust spread of differences of neighbouring pixels in soft
    tissue (where a 5 x 5 mean is within +-200 HU), on up to 16 slices.  0 when there is too
    little tissue."""
    step = max(1, hu.shape[0] // 16)
    s = np.nan_to_num(hu[::step].astype(np.float32), nan=-1024.0)
    tissue = np.abs(ndimage.uniform_filter(s, size=(1, 5, 5))) < 200
    ok = tissue[:, :, 1:] & tissue[:, :, :-1]
    if ok.sum() < 1000:
        return 0.0
    d = (s[:, :, 1:] - s[:, :, :-1])[ok]
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def _body_and_inner_air(air: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: the body (largest non-air component, filled) and the air inside it.

    A 3 mm opening first cuts thin links between the body and the table or the arms.
    """
    tissue = ~air
    crosses, squares = _octagon_steps(3.0, sp)
    opened = tissue
    for structure, n in ((_CROSS, crosses), (_SQUARE, squares)):
        if n:
            opened = ndimage.binary_erosion(opened, structure=structure, iterations=n,
                                            border_value=1)
    opened = _dilate_disc(opened, 3.0, sp) & tissue
    lab, n = ndimage.label(opened, structure=_SLICEWISE)
    body = np.zeros_like(air)
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        # labels are numbered slice by slice: the slice of label i is the first slice whose
        # running maximum label reaches i
        bounds = np.maximum.accumulate(lab.reshape(lab.shape[0], -1).max(axis=1))
        slice_of = np.searchsorted(bounds, np.arange(1, n + 1))
        order = np.lexsort((sizes, slice_of))            # by slice, then by size
        last = np.r_[slice_of[order][1:] != slice_of[order][:-1], True]
        keep = np.zeros(n + 1, bool)
        keep[order[last] + 1] = True
        body = _fill_holes(keep[lab], slicewise=True)
    return body, air & body


def _find_trachea(hu: np.ndarray, inner: np.ndarray, body: np.ndarray, sp: np.ndarray,
                  factors: tuple[int, int], superior_is_high: bool,
                  airway_hu: float = -600.0) -> np.ndarray:
    """The trachea and main bronchi, followed slice by slice from the top.

    The top of the trachea is a component of the coarse inner air (``inner``) of 30-900 mm^2
    within 30 mm of the body's midline, in the upper half of the slices that hold inner air.
    From there it is followed down at the scan's own resolution (``hu`` below ``airway_hu``,
    in a window around it), where the airway wall still parts it from the lungs that touch it
    (where it does not, one pixel is eroded): through the components that overlap it (4 mm
    reach), stay under 900 mm^2 and within 70 mm of the midline.  It stops where none does,
    or 50 mm below the carina (where one component splits in two).  What is followed over less
    than 30 mm of slices is not a trachea.  Returned on the coarse grid of ``inner``.
    """
    nz = inner.shape[0]
    fy, fx = factors
    fsp = np.array([sp[0], sp[1] / fy, sp[2] / fx])          # the scan's own spacing
    trachea = np.zeros_like(inner)
    order = list(range(nz - 1, -1, -1)) if superior_is_high else list(range(nz))
    min_area, max_area = 30.0, 900.0            # mm^2: a trachea is 12-30 mm across
    midline_mm, branch_mm, below_carina_mm, window_mm = 30.0, 70.0, 50.0, 45.0
    min_length_mm = 30.0
    has_air = [k for k in order if inner[k].any()]
    if not has_air:
        return trachea
    search = has_air[: max(1, int(math.ceil(len(has_air) / 2)))]
    start = None
    for k in search:
        lab, n = ndimage.label(inner[k], structure=_EIGHT)
        areas = np.bincount(lab.ravel())[1:] * sp[1] * sp[2]
        cx_body = np.nonzero(body[k])[1].mean() * sp[2]
        coms = ndimage.center_of_mass(np.ones_like(lab), lab, np.arange(1, n + 1))
        picks = [i + 1 for i, (a, c) in enumerate(zip(areas, coms))
                 if min_area <= a <= max_area and abs(c[1] * sp[2] - cx_body) <= midline_mm]
        if picks:
            start = (k, np.isin(lab, picks), cx_body)
            break
    if start is None:
        return trachea
    k0, seed, cx_body = start
    ny, nx = hu.shape[1:]
    reach_se = _disk(4.0 / fsp[1], 4.0 / fsp[2])
    win = (int(window_mm / fsp[1]), int(window_mm / fsp[2]))
    # the coarse seed on the fine grid; the first fine step finds its fine components
    prev = _upsample(seed[None], fy, fx, (1, ny, nx))[0]
    prev_n, prev_area = 0, 0.0
    carina_at = None
    for step, k in enumerate(order[order.index(k0):]):
        depth = step * sp[0]
        if carina_at is not None and depth - carina_at > below_carina_mm:
            break
        ys, xs = np.nonzero(prev)
        box = (slice(max(0, ys.min() - win[0]), min(ny, ys.max() + 1 + win[0])),
               slice(max(0, xs.min() - win[1]), min(nx, xs.max() + 1 + win[1])))
        air = hu[k][box] < airway_hu
        reach = ndimage.binary_dilation(prev[box], structure=reach_se)
        lab, n = ndimage.label(air, structure=_EIGHT)
        areas = np.bincount(lab.ravel(), minlength=n + 1) * fsp[1] * fsp[2]
        hit = np.unique(lab[reach & (lab > 0)])
        if hit.size and areas[hit].min() > max_area:
            # the airway touches a lung through a wall thinner than a pixel: cut one pixel
            lab, n = ndimage.label(ndimage.binary_erosion(air, structure=_EIGHT),
                                   structure=_EIGHT)
            areas = np.bincount(lab.ravel(), minlength=n + 1) * fsp[1] * fsp[2]
            hit = np.unique(lab[reach & (lab > 0)])
        if hit.size == 0:
            break
        coms = ndimage.center_of_mass(np.ones_like(lab), lab, hit)
        keep = [(int(h), (c[1] + box[1].start) * fsp[2]) for h, c in zip(hit, coms)
                if areas[h] <= max_area and abs((c[1] + box[1].start) * fsp[2] - cx_body)
                <= branch_mm]
        # a component that reaches the window's edge is not an airway
        edge = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
        keep = [(h, x) for h, x in keep if h not in edge]
        if not keep:
            break
        cur = np.zeros((ny, nx), bool)
        sel = np.isin(lab, [h for h, _ in keep])
        cur[box] = sel
        ys, xs = np.nonzero(sel)
        trachea[k, (ys + box[0].start) // fy, (xs + box[1].start) // fx] = True
        big = sorted(x for h, x in keep if areas[h] >= min_area)
        if carina_at is None and prev_n == 1 and prev_area >= 100.0 and len(big) >= 2 \
                and big[-1] - big[0] >= 15.0:
            carina_at = depth
        prev, prev_n = cur, len(keep)
        prev_area = float(cur.sum()) * fsp[1] * fsp[2]
    if trachea.any(axis=(1, 2)).sum() * sp[0] < min_length_mm:
        # a short pocket of air is not a trachea
        trachea[:] = False
    return trachea


def _gas_pockets(cand: np.ndarray, coarse: np.ndarray, air: np.ndarray, sp: np.ndarray, *,
                 gas_hu: float, min_ml: float = 3.0, max_lung_fraction: float = 0.5,
                 shell_mm: float = 6.0) -> np.ndarray:
    """Gas in the stomach or bowel that touches a lung base (thick slices merge them).

    A pocket is a component of air darker than ``gas_hu`` after a 5 mm in-plane mean (pure
    gas; the lung is denser) of at least ``min_ml``, whose surroundings (a shell of
    ``shell_mm`` in-plane and one slice) are mostly tissue: less than ``max_lung_fraction`` of
    the shell is air.  An emphysematous bulla
    is pure gas too, but lung surrounds it.  The pocket is returned grown by one voxel in each
    direction, to take its partial-volume rim that links it to the lung.
    """
    # pure gas stays below gas_hu after a 5 mm in-plane mean; noisy lung does not
    size = (1,) + tuple(max(1, int(round(5.0 / s)) | 1) for s in sp[1:])
    core = cand & (ndimage.uniform_filter(coarse, size=size) < gas_hu)
    lab, n = ndimage.label(core)
    out = np.zeros_like(cand)
    if n == 0:
        return out
    sizes = np.bincount(lab.ravel())[1:] * float(np.prod(sp)) / 1000.0
    big = np.flatnonzero(sizes >= min_ml) + 1
    if big.size == 0:
        return out
    boxes = ndimage.find_objects(lab)
    pad = (1, int(math.ceil(shell_mm / sp[1])) + 1, int(math.ceil(shell_mm / sp[2])) + 1)
    for label in big:
        box = tuple(slice(max(0, b.start - p), min(n_, b.stop + p))
                    for b, p, n_ in zip(boxes[label - 1], pad, lab.shape))
        comp = lab[box] == label
        grown = _dilate_disc(comp, shell_mm, sp)
        grown = ndimage.binary_dilation(grown, structure=np.ones((3, 1, 1), bool))
        shell = grown & ~comp
        if shell.any() and air[box][shell].mean() < max_lung_fraction:
            out[box] |= ndimage.binary_dilation(comp, structure=np.ones((3, 3, 3), bool))
    return out & cand


def _split_lungs(comp: np.ndarray, sp: np.ndarray) -> np.ndarray | None:
    """Split one component holding both lungs into two labels, or None when it does not split.

    The component is eroded in-plane, 1 to 8 pixels (about 2-16 mm), until it falls into two
    parts that each hold a fair share; every voxel then goes to the nearer part.
    """
    box = _crop_box(comp, (0, 0, 0))
    sub = comp[box]
    total = int(sub.sum())
    seeds = None
    eroded = np.pad(sub, ((0, 0), (1, 1), (1, 1)))
    for step in range(8):
        eroded = ndimage.binary_erosion(eroded, structure=_SQUARE if step % 2 else _CROSS)
        if not eroded.any():
            break
        lab, n = ndimage.label(eroded[:, 1:-1, 1:-1])
        if n < 2:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= 0.15 * sizes[order[0]] and sizes[order[1]] >= 0.05 * total:
            seeds = np.zeros(sub.shape, np.uint8)
            seeds[lab == order[0] + 1] = 1
            seeds[lab == order[1] + 1] = 2
            break
    if seeds is None:
        return None
    # every voxel of the component goes to the nearer seed
    _, (iz, iy, ix) = ndimage.distance_transform_edt(seeds == 0, sampling=sp,
                                                     return_indices=True)
    part = seeds[iz, iy, ix]
    part[~sub] = 0
    out = np.zeros(comp.shape, np.uint8)
    out[box] = part
    return out


def _block_majority(m: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """3-D block reduction: True where at least half of each f-block is True (zero-padded)."""
    shape = tuple(-(-n // k) * k for n, k in zip(m.shape, f))
    if shape != m.shape:
        padded = np.zeros(shape, bool)
        padded[tuple(slice(0, n) for n in m.shape)] = m
        m = padded
    blocks = m.reshape(shape[0] // f[0], f[0], shape[1] // f[1], f[1], shape[2] // f[2], f[2])
    return blocks.sum(axis=(1, 3, 5), dtype=np.int32) * 2 >= f[0] * f[1] * f[2]


def _ball_closing_gain(lung: np.ndarray, sp: np.ndarray, radius_mm: float,
                       grid_mm: float) -> np.ndarray:
    """Voxels that a closing of ``lung`` by a ball of ``radius_mm`` adds (on a grid_mm grid).

    A closing by a ball adds what the ball cannot reach from outside the lung: a lesion that
    bulges into the lung and is narrower than the ball, whether it comes from the chest wall,
    the mediastinum or the hilum.  The heart, the mediastinum and the diaphragm, whose
    surfaces curve more gently than the ball, stay out.  It is computed with two Euclidean
    distance transforms on a coarse grid, and an opening drops the one-cell rims that the
    grid leaves along smooth surfaces.
    """
    f = tuple(max(1, int(round(grid_mm / s))) for s in sp)
    gsp = sp * np.array(f)
    c = _block_majority(lung, f)
    pad = int(math.ceil(radius_mm / gsp.min())) + 1
    cp = np.pad(c, pad)
    reach = ndimage.distance_transform_edt(~cp, sampling=gsp) <= radius_mm
    closed = ndimage.distance_transform_edt(reach, sampling=gsp) > radius_mm
    gain = (closed & ~cp)[pad:-pad, pad:-pad, pad:-pad]
    gain = ndimage.binary_opening(gain, structure=_CROSS_SLICEWISE)
    up = np.repeat(np.repeat(np.repeat(gain, f[0], 0), f[1], 1), f[2], 2)
    return up[:lung.shape[0], :lung.shape[1], :lung.shape[2]]


_CROSS_SLICEWISE = np.zeros((3, 3, 3), dtype=bool)
_CROSS_SLICEWISE[1] = ndimage.generate_binary_structure(2, 1)


def _fill_holes(m: np.ndarray, *, slicewise: bool, max_size: int | None = None) -> np.ndarray:
    """Fill the holes of ``m``: in each slice alone (``slicewise``) or in 3-D.

    A hole is a background component (4-connected in-plane, or 6-connected in 3-D) that does
    not reach the array border (for ``slicewise``, the border of its slice).  With
    ``max_size``, only holes of at most that many voxels are filled.
    """
    bg = ~m
    lab, n = ndimage.label(bg, structure=_CROSS_SLICEWISE if slicewise else None)
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


def _crop_box(m: np.ndarray, pad: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - pad[axis]),
                         min(m.shape[axis], int(idx[-1]) + 1 + pad[axis])))
    return tuple(box)


_MAX_HOLE_MM2 = 1000.0      # largest hole filled in a slice (a disc of 36 mm)
_NOISY_HU = 60.0            # noise above which the scan is smoothed before the threshold
_GAIN_MARGIN_MM = 2.0       # margin around what the ball closing adds


def _lung_beneath(lung: np.ndarray, superior_is_high: bool) -> np.ndarray:
    """True where some voxel of ``lung`` lies beneath (toward the feet) in the same column."""
    m = lung if superior_is_high else lung[::-1]
    below = np.zeros_like(m)
    np.logical_or.accumulate(m[:-1], axis=0, out=below[1:])
    return below if superior_is_high else below[::-1]


def _drop_subphrenic(added: np.ndarray, beneath: np.ndarray) -> np.ndarray:
    """The parts of ``added`` (holes filled, ball-closing gain) that are not organs below the lung.

    The liver dome, the spleen, the stomach and the base of the heart bulge up into the lungs
    from below: seen through the lung, they are holes in its slices, and narrower than the ball
    of the mass closing near their tops.  What sets them apart from a nodule or a mass is what
    lies beneath: an organ rises from the abdomen, so no lung lies under it, while lung lies
    beneath a lesion inside the lung or against the mediastinum.  Each 3-D component of
    ``added`` is kept whole when lung lies beneath at least half of its voxels, and dropped
    whole otherwise.
    """
    lab, n = ndimage.label(added)
    if n == 0:
        return added
    total = np.bincount(lab.ravel(), minlength=n + 1)
    under = np.bincount(lab.ravel(), weights=beneath.ravel(), minlength=n + 1)
    keep = under * 2 >= total
    keep[0] = False
    return keep[lab]


def _refine_lung(lung: np.ndarray, allowed: np.ndarray, sp: np.ndarray, *, closing_mm: float,
                 mass_mm: float, mass_grid_mm: float, superior_is_high: bool = True) -> np.ndarray:
    """Hole filling, in-plane closing and ball closing of one lung (see module doc)."""
    pad_mm = mass_mm + 2 * float(sp.max())
    pad = (int(math.ceil(mass_mm / sp[0])) + 1,) + tuple(int(math.ceil(pad_mm / s))
                                                         for s in sp[1:])
    box = _crop_box(lung, pad)
    m = lung[box]
    ok = allowed[box]
    beneath = _lung_beneath(m, superior_is_high)
    # vessels and nodules inside the lung; a larger hole is the top of the diaphragm's dome or
    # of the heart, seen through the lung (a mass that size is the ball closing's business)
    holes = _fill_holes(m, slicewise=True, max_size=int(_MAX_HOLE_MM2 / (sp[1] * sp[2]))) & ~m
    m = m | _drop_subphrenic(holes, beneath)
    if closing_mm > 0:
        # in-plane, on the lung's own slices and bounding box (with a margin)
        inner = _crop_box(m, (0,) + tuple(int(math.ceil(closing_mm / s)) + 1 for s in sp[1:]))
        m[inner] |= _close_disc(m[inner], closing_mm, sp) & ok[inner]
    if mass_mm > 0:
        gain = _ball_closing_gain(m, sp, mass_mm, mass_grid_mm)
        # the gain is known to a grid cell: a margin keeps the lesion's edge
        gain = _dilate_disc(gain, _GAIN_MARGIN_MM, sp) & ok & ~m
        m |= _drop_subphrenic(gain, beneath)
    m = _fill_holes(m, slicewise=False)
    out = np.zeros_like(lung)
    out[box] = m
    return out


def segment_lungs(hu, *, spacing, direction=None, threshold_hu: float = -320.0,
                  plausible_litres: tuple[float, float] = (0.5, 12.0),
                  closing_mm: float = 12.0, mass_mm: float = 35.0, mass_grid_mm: float = 4.0,
                  gas_hu: float = -950.0,
                  work_mm: float = 2.0) -> LungMask:
    """Segment the lungs of a chest CT scan.

    Parameters
    ----------
    hu : ndarray, (z, y, x)
        Hounsfield units.  Values below -1024 (padding outside the field of view) count as air.
    spacing : (z, y, x) mm
    direction : 3x3, optional
        Columns are the world directions of the x, y, z index axes.  Only its last column is
        used, to know which end of the slice axis is the head (identity when None: the last
        slice is the most superior, as in DICOM series sorted by position).
    threshold_hu : float, optional
        Air/tissue threshold.
    plausible_litres : (float, float), optional
        A lung volume outside this range is a failure (fallback to the body box).
    closing_mm : float, optional
        Radius of the in-plane closing of each lung; it keeps juxta-pleural nodules up to about
        this diameter.
    mass_mm : float, optional
        Radius of the ball closing that keeps lesions bulging into the lung from the chest
        wall, the mediastinum or the hilum (``0`` turns it off).  Lesions up to about twice
        this size are kept whole.
    mass_grid_mm : float, optional
        Grid of the ball closing.
    gas_hu : float, optional
        Air darker than this is pure gas: lung is denser.  Pockets of it surrounded by tissue
        (stomach, bowel) are cut off from the lungs.
    work_mm : float, optional
        In-plane size of the coarse grid on which the morphology runs.

    Returns
    -------
    LungMask
    """
    hu = check_volume("hu", hu)
    sp = check_spacing(spacing)
    lo_l, hi_l = (float(v) for v in plausible_litres)
    if not 0 <= lo_l < hi_l:
        raise ValueError(f"plausible_litres: expected (low, high) with 0 <= low < high. "
                         f"Received {plausible_litres!r}")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    superior_is_high = bool(d[2, 2] >= 0)
    voxel_ml = float(np.prod(sp)) / 1000.0

    fy = max(1, int(round(work_mm / sp[1])))
    fx = max(1, int(round(work_mm / sp[2])))
    csp = np.array([sp[0], sp[1] * fy, sp[2] * fx])
    noise = _noise_hu(hu)
    smooth_px = 0.0
    if noise > _NOISY_HU:
        # low dose and sharp kernels: a threshold on single pixels would speckle the body and
        # the lungs; an in-plane Gaussian brings the noise down first (edges at the
        # threshold, half-way between lung and tissue, do not move)
        smooth_px = min(3.0, noise / 100.0)
        hu = ndimage.gaussian_filter(np.nan_to_num(hu.astype(np.float32), nan=-1024.0),
                                     sigma=(0.0, smooth_px, smooth_px))
    coarse = _block_mean(hu, fy, fx)
    air = coarse < threshold_hu
    body, inner = _body_and_inner_air(air, csp)
    info: dict[str, Any] = {"work_spacing_mm": csp.round(3).tolist(), "noise_hu": round(noise, 1),
                            "smoothing_mm": round(smooth_px * float(sp[1]), 2)}
    trachea = _find_trachea(hu, inner, body, csp, (fy, fx), superior_is_high)
    info["trachea_found"] = bool(trachea.any())
    if trachea.any():
        trachea = ndimage.binary_dilation(trachea, structure=_SLICEWISE) & inner
    cand = inner & ~trachea
    gas = _gas_pockets(cand, coarse, air, csp, gas_hu=gas_hu)
    info["gas_pockets_ml"] = round(float(gas.sum()) * float(np.prod(csp)) / 1000.0, 1)
    cand &= ~gas

    lab, n = ndimage.label(cand)
    lungs = np.zeros(cand.shape, np.uint8)
    if n:
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        keep = [order[0]]
        if n > 1 and sizes[order[1]] >= 0.10 * sizes[order[0]]:
            keep.append(order[1])
        if len(keep) == 2:
            lungs[lab == keep[0] + 1] = 1
            lungs[lab == keep[1] + 1] = 2
        else:
            comp = lab == keep[0] + 1
            split = _split_lungs(comp, csp)
            lungs = split if split is not None else comp.astype(np.uint8)
    n_lungs = int(lungs.max())
    info["n_lungs"] = n_lungs

    out = np.zeros(cand.shape, bool)
    if n_lungs:
        allowed = body & ~trachea
        for label in range(1, n_lungs + 1):
            one = lungs == label
            other = (lungs > 0) & ~one
            out |= _refine_lung(one, allowed & ~other, csp, closing_mm=closing_mm,
                                mass_mm=mass_mm, mass_grid_mm=mass_grid_mm,
                                superior_is_high=superior_is_high)

    mask = _fine_mask(out, lungs > 0, hu, fy, fx, threshold_hu)
    volume_ml = float(mask.sum()) * voxel_ml
    info["segmented_volume_ml"] = round(volume_ml, 1)
    warnings: list[str] = []
    if volume_ml == 0.0 or not lo_l * 1000 <= volume_ml <= hi_l * 1000:
        why = ("no lung found" if volume_ml == 0.0 else
               f"implausible lung volume {volume_ml / 1000:.2f} L "
               f"(expected {lo_l:g}-{hi_l:g} L)")
        mask = np.zeros(hu.shape, bool)
        if body.any():
            # the body's edge at the scan's resolution, near the coarse body
            near = _upsample(ndimage.binary_dilation(body, structure=_SLICEWISE), fy, fx,
                             hu.shape)
            box = lung_box(near & (hu >= threshold_hu), spacing=sp, margin_mm=0.0)
            where = "the body's bounding box"
        else:
            box = tuple(slice(0, s) for s in hu.shape)
            where = "the whole volume (no body found)"
        mask[box] = True
        warnings.append(f"lung mask: {why}; using {where} instead")
        return LungMask(mask=mask, volume_ml=float(mask.sum()) * voxel_ml, fallback=True,
                        warnings=warnings, info=info)
    return LungMask(mask=mask, volume_ml=volume_ml, fallback=False, warnings=warnings,
                    info=info)


def _fine_mask(final: np.ndarray, air_lung: np.ndarray, hu: np.ndarray, fy: int, fx: int,
               threshold_hu: float) -> np.ndarray:
    """The coarse mask on the scan's grid, with its edge redrawn at the scan's resolution.

    In the outer ring of coarse blocks, a pixel stays only if it is air itself or if its block
    was added by a fill (a hole, a closing: a nodule or a mass).  Inside, every block stays.
    """
    if fy == fx == 1:
        return final.copy()
    keep = ndimage.binary_erosion(final, structure=_CROSS_SLICEWISE) | (final & ~air_lung)
    # NaN compares False: not air
    return _upsample(final, fy, fx, hu.shape) & (_upsample(keep, fy, fx, hu.shape)
                                                 | (hu < threshold_hu))


def _upsample(m: np.ndarray, fy: int, fx: int, shape) -> np.ndarray:
    """Each coarse pixel becomes an fy x fx block, cropped to ``shape``."""
    z, ny, nx = m.shape
    up = np.broadcast_to(m[:, :, None, :, None], (z, ny, fy, nx, fx)).reshape(z, ny * fy, nx * fx)
    if up.shape[1:] != tuple(shape[1:]):
        up = np.ascontiguousarray(up[:, :shape[1], :shape[2]])
    return up
