"""Lesions of a phantom, painted: the occupancy, HU and keep-brighter fields of a
:class:`~lungcad.synthetic.lesion_shapes.LesionGeometry` on a grid, and the lesion drawn into
the HU and label volumes.
"""
from __future__ import annotations

import numpy as np

from lungcad.synthetic.anatomy import LESION
from lungcad.synthetic.lesion_placement import _LUNG_SET, contextualize
from lungcad.synthetic.lesion_shapes import LesionGeometry, _soft_min
from lungcad.synthetic.raster import Grid, capsule_distance, label_lut, occupancy_from_distance, paint, paint_capsules


def _spheres_sdf(grid: Grid, sl, spheres, blend_mm: float = 0.0) -> np.ndarray:
    """Signed distance to a (smooth) union of spheres over box ``sl``, computed only inside the
    spheres' own bounding box (elsewhere a large positive value)."""
    lo = np.min([np.asarray(c) - r for c, r in spheres], axis=0) - blend_mm - 2.0 * grid.edge_mm
    hi = np.max([np.asarray(c) + r for c, r in spheres], axis=0) + blend_mm + 2.0 * grid.edge_mm
    shape = tuple(s.stop - s.start for s in sl)
    out = np.full(shape, 1e3, dtype=np.float32)
    sub = grid.box(lo, hi)
    if sub is None:
        return out
    sub = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sub, sl))
    if any(x.stop <= x.start for x in sub):
        return out
    zc, yc, xc = grid.coords(sub)
    d = []
    for c, r in spheres:
        d2 = ((zc - np.float32(c[2])) ** 2)[:, None, None] + \
            (((yc - np.float32(c[1])) ** 2)[:, None] + ((xc - np.float32(c[0])) ** 2)[None, :])[None]
        x = np.sqrt(d2, out=d2)
        x -= np.float32(r)
        d.append(x)
    out[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(sub, sl))] = \
        _soft_min(d, blend_mm)
    return out


def _texture(geom: LesionGeometry, shape, spacing) -> np.ndarray:
    """Smooth random density variation (unit std) over a lesion box, about 1.5 mm grain."""
    from scipy import ndimage as ndi

    t = np.random.default_rng(geom.texture_seed).standard_normal(shape, dtype=np.float32)
    t = ndi.gaussian_filter(t, [1.5 / s for s in spacing], truncate=2.5)
    t /= max(float(t.std()), 1e-6)
    return t


def lesion_fields(grid: Grid, geom: LesionGeometry):
    """Occupancy, HU and keep-brighter fields of a lesion on its bounding box of ``grid``.

    Returns (box slices, occupancy, hu value, keep_brighter) or None when outside the grid.
    """
    ext = geom.extent + 2.0 * grid.edge_mm
    sl = grid.box(geom.centre - ext, geom.centre + ext)
    if sl is None:
        return None
    edge = grid.edge_mm
    occ = occupancy_from_distance(_spheres_sdf(grid, sl, geom.spheres, geom.blend_mm), edge)
    if geom.notches:
        notch = [(geom.centre + o, r) for o, r in geom.notches]
        occ *= 1.0 - occupancy_from_distance(_spheres_sdf(grid, sl, notch), edge)
    value = np.full(occ.shape, geom.hu_body, dtype=np.float32)
    keep = np.full(occ.shape, geom.ggo_body, dtype=bool)
    for a, b, r0, r1 in geom.spikes:
        d, _ = capsule_distance(grid, sl, a, b, r0, r1)
        o = occupancy_from_distance(d, edge, thin_radius=0.5 * (r0 + r1))
        np.maximum(occ, o, out=occ)
    if geom.halo:
        oh = occupancy_from_distance(_spheres_sdf(grid, sl, geom.halo), edge)
        halo_only = oh > occ
        value[halo_only] = geom.hu_halo
        keep |= halo_only
        np.maximum(occ, oh, out=occ)
    if geom.core is not None:
        oc = occupancy_from_distance(_spheres_sdf(grid, sl, [geom.core]), edge)
        value += oc * (geom.hu_core - value)
        keep &= oc < 0.5
    ocav = None
    if geom.cavity:
        cav = [(geom.centre + o, r) for o, r in geom.cavity]
        ocav = occupancy_from_distance(_spheres_sdf(grid, sl, cav, 0.1 * cav[0][1]), edge)
        value += ocav * (np.float32(geom.hu_cavity) - value)
        keep &= ocav < 0.5          # the air of a cavity darkens what it covers
    if geom.texture_hu > 0:
        tex = _texture(geom, occ.shape, grid.spacing)
        # ground glass is more heterogeneous than solid tissue
        amp = np.where(keep, np.float32(max(geom.texture_hu, 60.0)), np.float32(geom.texture_hu))
        if ocav is not None:
            amp = amp * (1.0 - ocav)
        value += amp * tex
    return sl, occ, value, keep


def paint_lesion(grid: Grid, hu: np.ndarray, labels: np.ndarray, geom: LesionGeometry, *, allowed) -> dict | None:
    """Draw a lesion into the volumes; returns what was drawn (box, mask, volume, centre of mass).

    ``allowed`` is the set of label values the lesion may cover (it is clipped elsewhere, for
    example at the chest wall).  Voxels with occupancy >= 0.5 get the lesion label.
    """
    if geom.pending_context is not None:
        ctx, spec, seed = geom.pending_context
        geom = contextualize(np.random.default_rng(seed), geom, spec, ctx)
    if geom.extras:
        _paint_extras(grid, hu, labels, geom)
    f = lesion_fields(grid, geom)
    if f is None:
        return None
    sl, occ, value, keep = f
    lut = label_lut(allowed)
    mask = paint(hu, labels, sl, occ, value, hu_allowed=lut.astype(np.float32), label=LESION,
                 label_allowed=lut, keep_brighter=keep)
    w = occ
    total = float(w.sum())
    if total <= 0:
        return None
    zc, yc, xc = grid.coords(sl)
    com = np.array([float((w.sum(axis=(0, 1)) * xc).sum()), float((w.sum(axis=(0, 2)) * yc).sum()),
                    float((w.sum(axis=(1, 2)) * zc).sum())]) / total
    volume = total * float(np.prod(grid.spacing))
    return {"sl": sl, "mask": mask, "volume_mm3": volume, "centre": com}


def _paint_extras(grid: Grid, hu: np.ndarray, labels: np.ndarray, geom: LesionGeometry) -> None:
    """The capsules of ``geom.extras`` over lung voxels only (vessels labelled VESSEL, the pleura
    pulled in BODY, a pleural tag HU only)."""
    lut = label_lut(_LUNG_SET)
    for a, b, ra, rb, v, lab in geom.extras:
        paint_capsules(grid, hu, labels, geom.centre + a, geom.centre + b, ra, rb, v,
                       hu_allowed=lut.astype(np.float32), label=lab, label_allowed=None if lab is None else lut)
