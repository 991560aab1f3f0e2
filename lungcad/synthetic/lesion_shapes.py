"""Lesions of a phantom, how they look: a spec (:mod:`lungcad.synthetic.lesion_specs`) turned
into a :class:`LesionGeometry`, unions of spheres and capsules in world mm with their HU values.

Round, lobulated and spiculated bodies, masses with strands, ground-glass halos, solid cores,
calcifications and necrosis; in the randomised domains also irregular and cavitated bodies,
vessels through the lesion and vessels converging on it.  The volume of a shape is calibrated
to that of a sphere of the spec's diameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lungcad.synthetic import domain as _dom
from lungcad.synthetic.anatomy import VESSEL
from lungcad.synthetic.lesion_specs import DOMAIN_SHAPES, LesionSpec

if TYPE_CHECKING:
    from lungcad.synthetic.lesion_placement import PlacementContext


def _unit(rng, n=None):
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class LesionGeometry:
    """A lesion as unions of spheres and capsules (world mm) with its HU values."""

    centre: np.ndarray
    spheres: list                      # [(centre, radius)] solid (or ground-glass) body
    spikes: list = field(default_factory=list)      # [(a, b, r0, r1)]
    halo: list = field(default_factory=list)        # [(centre, radius)] ground-glass patches
    core: tuple | None = None          # (centre, radius): solid core, calcification or necrosis
    hu_body: float = 30.0
    hu_core: float = 30.0
    hu_halo: float = -550.0
    ggo_body: bool = False             # the body is ground glass (keeps brighter vessels)
    blend_mm: float = 0.0              # smooth union of the spheres over this distance
    texture_hu: float = 0.0            # amplitude of the internal density variation
    texture_seed: int = 0
    # ---- randomised domains; positions relative to ``centre`` (so that moving the centre moves them)
    notches: list = field(default_factory=list)     # [(offset, radius)] carved out of the body
    cavity: list = field(default_factory=list)      # [(offset, radius)] air inside (part of the lesion)
    hu_cavity: float = -1000.0
    #: capsules drawn before the lesion, outside its label: [(a_off, b_off, ra, rb, hu, label or None)]
    #: (vessels converging or running through, a pleural tag and the pleura pulled in)
    extras: list = field(default_factory=list)
    #: (ctx, spec, seed): :func:`contextualize` still to run, where the lesion is painted
    #: (build_geometry(ctx=) at a centre that place() then moves)
    pending_context: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def extent(self) -> float:
        """Largest distance from the centre to any part (mm)."""
        e = [np.linalg.norm(c - self.centre) + r for c, r in self.spheres + self.halo]
        e += [np.linalg.norm(b - self.centre) + r1 for _, b, _, r1 in self.spikes]
        return float(max(e))


def build_geometry(rng: np.random.Generator, spec: LesionSpec, centre, *, contrast: bool,
                   ctx: "PlacementContext | None" = None) -> LesionGeometry:
    """Random shape and HU of a lesion of ``spec`` at ``centre`` (world xyz).

    With ``ctx`` (the anatomy), the parts that depend on it (:func:`contextualize`: a convergent
    lesion's vessels from the lung around it and its pleural retraction) are added where the
    lesion is finally painted (:func:`paint_lesion`), so that the geometry may be built at any
    centre, placed and translated first.
    """
    c = np.asarray(centre, dtype=float)
    R = 0.5 * spec.diameter_mm
    enh = float(rng.uniform(15.0, 35.0)) if contrast else 0.0
    solid = float(rng.uniform(15.0, 55.0)) + enh
    g = LesionGeometry(centre=c, spheres=[], hu_body=solid, hu_core=solid,
                       hu_halo=float(rng.uniform(-620.0, -470.0)),
                       texture_hu=float(rng.uniform(8.0, 25.0)), texture_seed=int(rng.integers(2 ** 31)))
    shape = "spiculated" if spec.shape == "convergent" else spec.shape
    if shape in ("irregular", "cavitated"):
        _irregular_body(rng, g, spec, c, R)
    elif shape == "round" or R < 2.0:
        g.spheres.append((c, R))
        if R >= 2.0:
            g.spheres.append((c + _unit(rng) * 0.12 * R, 0.92 * R))
    elif spec.kind == "mass":
        g.blend_mm = 0.2 * R
        g.spheres.append((c, 0.7 * R))
        axis = _unit(rng)
        stretch = float(rng.uniform(0.0, 0.6))
        for d in _unit(rng, int(rng.integers(10, 17))):
            off = d * R * float(rng.uniform(0.3, 0.7))
            off += axis * (off @ axis) * stretch          # elongated along a random axis
            g.spheres.append((c + off, R * float(rng.uniform(0.3, 0.55))))
        # strands: thick tapering extensions into the lung, as invasive tumours show
        for d in _unit(rng, int(rng.integers(3, 9))):
            a = c + d * 0.6 * R
            b = c + d * R * float(rng.uniform(1.2, 1.7))
            g.spikes.append((a, b, float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.4, 0.8))))
    else:
        g.blend_mm = 0.08 * R
        main = 0.8 * R if spec.shape == "lobulated" else 0.85 * R
        g.spheres.append((c, main))
        for d in _unit(rng, int(rng.integers(3, 7))):
            r = R * float(rng.uniform(0.4, 0.62))
            g.spheres.append((c + d * (R - r) * float(rng.uniform(0.75, 1.0)), r))
    if shape == "spiculated":
        n_sp = int(rng.integers(8, 21)) if spec.kind == "nodule" else int(rng.integers(14, 31))
        r_core = 0.85 * R
        for d in _unit(rng, n_sp):
            a = c + d * 0.7 * r_core
            b = c + d * r_core * (1.0 + float(rng.uniform(0.35, 0.9)))
            r0 = float(rng.uniform(0.45, 0.9)) * (1.6 if spec.kind == "mass" else 1.0)
            g.spikes.append((a, b, r0, 0.25))
    if spec.texture == "ground-glass":
        g.ggo_body = True
        g.hu_body = g.hu_core = float(rng.uniform(-640.0, -470.0))
        g.texture_hu = float(rng.uniform(25.0, 60.0))
    elif spec.texture == "part-solid":
        if spec.kind == "mass":
            # a ground-glass zone on one side of the mass
            side = _unit(rng)
            for d in _unit(rng, int(rng.integers(4, 9))):
                v = side + 0.6 * d
                v /= np.linalg.norm(v)
                g.halo.append((c + v * R * float(rng.uniform(0.7, 1.05)), R * float(rng.uniform(0.3, 0.5))))
            if R > 20.0:
                g.core = (c + _unit(rng) * 0.1 * R, 0.4 * R)
                g.hu_core = float(rng.uniform(0.0, 20.0))
        else:
            g.ggo_body = True
            g.hu_body = g.hu_halo
            g.core = (c + _unit(rng) * 0.05 * R, R * float(rng.uniform(0.4, 0.6)))
            g.hu_core = solid
    elif spec.texture == "calcified":
        g.core = (c, 0.78 * R)
        g.hu_core = float(rng.uniform(400.0, 950.0))
    elif spec.kind == "mass" and R > 20.0 and shape != "cavitated":
        g.core = (c + _unit(rng) * 0.1 * R, 0.4 * R)
        g.hu_core = float(rng.uniform(0.0, 20.0))
    if spec.shape not in DOMAIN_SHAPES and not spec.through_vessels:
        return _calibrate(rng, g, R)
    g = _calibrate(rng, g, R)
    if spec.through_vessels:
        _through_vessels(rng, g, R, contrast)
    if spec.shape == "convergent":
        _converging_vessels(rng, g, R, contrast)
    if ctx is not None and spec.shape == "convergent":
        g.pending_context = (ctx, spec, int(rng.integers(2 ** 31)))
    return g


def _vessel_hu(rng, contrast: bool) -> float:
    b = _dom.RANDOMIZED.acquisition.contrast_blood_hu if contrast else _dom.RANDOMIZED.lesions.through_vessel_hu
    return _dom.band_uniform(rng, b)


def _irregular_body(rng, g: LesionGeometry, spec: LesionSpec, c, R: float) -> None:
    """Non-convex body: a core and lobes scattered widely, with notches carved into the surface;
    "cavitated": a thick irregular wall round an off-centre, irregular air cavity."""
    L = _dom.RANDOMIZED.lesions
    g.blend_mm = 0.1 * R
    if spec.shape == "irregular":
        g.spheres.append((c, 0.5 * R))
        dirs = _unit(rng, int(rng.integers(4, 8)))
        for d in dirs:
            r = R * float(rng.uniform(0.3, 0.5))
            g.spheres.append((c + d * (0.5 * R + r) * float(rng.uniform(0.6, 0.85)), r))   # overlaps the core
        for _ in range(int(rng.integers(2, 5))):
            v = _unit(rng) - 0.7 * dirs[int(rng.integers(len(dirs)))]       # between lobes
            v /= max(np.linalg.norm(v), 1e-6)
            g.notches.append((v * R * float(rng.uniform(0.75, 1.0)), R * float(rng.uniform(0.35, 0.55))))
        return
    main = 0.75 * R
    g.spheres.append((c, main))
    for d in _unit(rng, int(rng.integers(4, 8))):
        r = R * float(rng.uniform(0.4, 0.6))
        g.spheres.append((c + d * (main - 0.4 * r) * float(rng.uniform(0.8, 1.0)), r))
    wall = _dom.band_uniform(rng, L.cavity_wall) * R
    rc = max(main - wall, 0.25 * main)
    off = _unit(rng) * float(rng.uniform(0.3, 0.9)) * (main - rc)
    g.cavity.append((off, rc))
    for d in _unit(rng, int(rng.integers(1, 4))):             # an irregular inner wall
        r = rc * float(rng.uniform(0.45, 0.75))
        g.cavity.append((off + d * (rc - r) * float(rng.uniform(0.5, 1.0)), r))
    g.hu_cavity = _dom.band_uniform(rng, L.cavity_hu)


def _through_vessels(rng, g: LesionGeometry, R: float, contrast: bool) -> None:
    """Vessels that run through the lesion and on into the lung on both sides."""
    L = _dom.RANDOMIZED.lesions
    for _ in range(int(rng.integers(int(L.through_vessels.lo), int(L.through_vessels.hi) + 1))):
        u = _unit(rng)
        m = np.cross(u, _unit(rng))
        m /= max(np.linalg.norm(m), 1e-6)
        off = m * R * float(rng.uniform(0.0, 0.35))
        half = R * float(rng.uniform(1.6, 2.5))
        rv = _dom.band_uniform(rng, L.through_vessel_mm)
        g.extras.append((off - u * half, off + u * half, 1.1 * rv, 0.85 * rv, _vessel_hu(rng, contrast), VESSEL))


def _converging_vessels(rng, g: LesionGeometry, R: float, contrast: bool, ends=None) -> None:
    """Vessels from the lung around that converge on the lesion: from ``ends`` (offsets from the
    centre, for example points of the patient's vessels) or from random points 2.5-4 radii away."""
    L = _dom.RANDOMIZED.lesions
    if ends is None:
        n = int(rng.integers(int(L.convergent_vessels.lo), int(L.convergent_vessels.hi) + 1))
        ends = [d * R * float(rng.uniform(2.5, 4.0)) for d in _unit(rng, n)]
    for e in ends:
        u = e / max(np.linalg.norm(e), 1e-6)
        r = _dom.band_uniform(rng, L.convergent_vessel_mm)
        g.extras.append((np.asarray(e, dtype=float), u * 0.8 * R, r, 0.7 * r, _vessel_hu(rng, contrast), VESSEL))


def _soft_min(d: list, k: float):
    """Smooth minimum of distance arrays (a smooth union of shapes) blending over ``k`` mm.

    The polynomial smooth minimum, applied pairwise: min(a, b) - h^2 k / 4 with
    h = max(k - |a - b|, 0) / k.
    """
    out = d[0]
    for x in d[1:]:
        if k <= 0:
            out = np.minimum(out, x)
            continue
        h = np.maximum(k - np.abs(out - x), 0.0) / k
        out = np.minimum(out, x) - h * h * (0.25 * k)
    return out


def _inside(geom: "LesionGeometry", p: np.ndarray) -> np.ndarray:
    """Whether points (N, 3) are inside the lesion (spheres, spikes, halo)."""
    d = [np.linalg.norm(p - c, axis=1) - r for c, r in geom.spheres]
    inside = _soft_min(d, geom.blend_mm) <= 0
    for o, r in geom.notches:
        inside &= np.sum((p - geom.centre - o) ** 2, axis=1) > r * r
    for c, r in geom.halo:
        inside |= np.sum((p - c) ** 2, axis=1) <= r * r
    for a, b, r0, r1 in geom.spikes:
        e = b - a
        t = np.clip((p - a) @ e / max(float(e @ e), 1e-9), 0.0, 1.0)
        dd = np.linalg.norm(p - a - t[:, None] * e, axis=1)
        inside |= dd <= r0 + (r1 - r0) * t
    return inside


def _calibrate(rng: np.random.Generator, g: "LesionGeometry", R: float, n: int = 4000) -> "LesionGeometry":
    """Scale the shape about its centre so that its volume is that of a sphere of radius R."""
    if not g.spikes and not g.halo and len(g.spheres) == 1:
        return g
    ext = g.extent
    p = g.centre + rng.uniform(-ext, ext, (n, 3))
    vol = float(_inside(g, p).mean()) * (2.0 * ext) ** 3
    if vol <= 0:
        return g
    s = float(np.clip((4.0 / 3.0 * np.pi * R ** 3 / vol) ** (1.0 / 3.0), 0.7, 1.4))
    c = g.centre
    g.spheres = [(c + (q - c) * s, r * s) for q, r in g.spheres]
    g.halo = [(c + (q - c) * s, r * s) for q, r in g.halo]
    g.spikes = [(c + (a - c) * s, c + (b - c) * s, r0, r1) for a, b, r0, r1 in g.spikes]
    if g.core is not None:
        g.core = (c + (g.core[0] - c) * s, g.core[1] * s)
    if g.notches or g.cavity:
        g.notches = [(o * s, r * s) for o, r in g.notches]
        g.cavity = [(o * s, r * s) for o, r in g.cavity]
    return g


def _copy(geom: LesionGeometry, **kw) -> LesionGeometry:
    import dataclasses

    return dataclasses.replace(geom, **kw)
