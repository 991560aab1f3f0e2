"""What is not lung, and the two lungs: the scan's noise, the body and the air inside it,
the trachea and main bronchi, gas in the stomach or bowel, and the split of one component
that holds both lungs.  Spacings are (z, y, x) in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .grid import (CROSS, EIGHT, SLICEWISE, SQUARE, crop_box, dilate_disc, disk, fill_holes,
                   octagon_steps, upsample)

def noise_hu(hu: np.ndarray) -> float:
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


def body_and_inner_air(air: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: the body (largest non-air component, filled) and the air inside it.

    A 3 mm opening first cuts thin links between the body and the table or the arms.
    """
    tissue = ~air
    crosses, squares = octagon_steps(3.0, sp)
    opened = tissue
    for structure, n in ((CROSS, crosses), (SQUARE, squares)):
        if n:
            opened = ndimage.binary_erosion(opened, structure=structure, iterations=n,
                                            border_value=1)
    opened = dilate_disc(opened, 3.0, sp) & tissue
    lab, n = ndimage.label(opened, structure=SLICEWISE)
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
        body = fill_holes(keep[lab], slicewise=True)
    return body, air & body


def find_trachea(hu: np.ndarray, inner: np.ndarray, body: np.ndarray, sp: np.ndarray,
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
        lab, n = ndimage.label(inner[k], structure=EIGHT)
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
    reach_se = disk(4.0 / fsp[1], 4.0 / fsp[2])
    win = (int(window_mm / fsp[1]), int(window_mm / fsp[2]))
    # the coarse seed on the fine grid; the first fine step finds its fine components
    prev = upsample(seed[None], fy, fx, (1, ny, nx))[0]
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
        lab, n = ndimage.label(air, structure=EIGHT)
        areas = np.bincount(lab.ravel(), minlength=n + 1) * fsp[1] * fsp[2]
        hit = np.unique(lab[reach & (lab > 0)])
        if hit.size and areas[hit].min() > max_area:
            # the airway touches a lung through a wall thinner than a pixel: cut one pixel
            lab, n = ndimage.label(ndimage.binary_erosion(air, structure=EIGHT),
                                   structure=EIGHT)
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


def gas_pockets(cand: np.ndarray, coarse: np.ndarray, air: np.ndarray, sp: np.ndarray, *,
                gas_hu: float, min_ml: float = 3.0, max_lung_fraction: float = 0.5,
                shell_mm: float = 6.0, robust: bool = False) -> np.ndarray:
    """Gas in the stomach or bowel that touches a lung base (thick slices merge them).

    A pocket is a component of air darker than ``gas_hu`` after a 5 mm in-plane mean (pure
    gas; the lung is denser) of at least ``min_ml``, whose surroundings (a shell of
    ``shell_mm`` in-plane and one slice) are mostly tissue: less than ``max_lung_fraction`` of
    the shell is air.  An emphysematous bulla
    is pure gas too, but lung surrounds it.  The pocket is returned grown by one voxel in each
    direction, to take its partial-volume rim that links it to the lung.

    With ``robust`` (a noisy scan: ``coarse`` is then a block median of the unsmoothed scan)
    the 5 mm mean is a 5 mm median: where the noise of air is clipped at -1024 HU, as scanners
    store it, a mean of pure gas is lifted by a third of the noise (about -950 HU at 140 HU of
    noise, stomach gas then reads as lung and the pocket is kept); its median is not.
    """
    # pure gas stays below gas_hu after a 5 mm in-plane mean; noisy lung does not
    size = (1,) + tuple(max(1, int(round(5.0 / s)) | 1) for s in sp[1:])
    level = ndimage.median_filter(coarse, size=size) if robust else ndimage.uniform_filter(coarse, size=size)
    core = cand & (level < gas_hu)
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
        grown = dilate_disc(comp, shell_mm, sp)
        grown = ndimage.binary_dilation(grown, structure=np.ones((3, 1, 1), bool))
        shell = grown & ~comp
        if shell.any() and air[box][shell].mean() < max_lung_fraction:
            out[box] |= ndimage.binary_dilation(comp, structure=np.ones((3, 3, 3), bool))
    return out & cand


def split_lungs(comp: np.ndarray, sp: np.ndarray) -> np.ndarray | None:
    """Split one component holding both lungs into two labels, or None when it does not split.

    The component is eroded in-plane, 1 to 8 pixels (about 2-16 mm), until it falls into two
    parts that each hold a fair share; every voxel then goes to the nearer part.
    """
    box = crop_box(comp, (0, 0, 0))
    sub = comp[box]
    total = int(sub.sum())
    seeds = None
    eroded = np.pad(sub, ((0, 0), (1, 1), (1, 1)))
    for step in range(8):
        eroded = ndimage.binary_erosion(eroded, structure=SQUARE if step % 2 else CROSS)
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


def two_lungs(cand: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """The lungs among the candidate air ``cand``: 1 and 2 for the two largest 3-D components
    (the second when it holds at least 10 % of the first), or the largest one split in two
    (:func:`split_lungs`) when it holds both, or 1 alone when it does not split; 0 elsewhere."""
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
            split = split_lungs(comp, sp)
            lungs = split if split is not None else comp.astype(np.uint8)
    return lungs
