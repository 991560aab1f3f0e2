"""Lesions of a phantom: what they are (spec), how malignant, where they go, and how they look.

Nodules are 3-30 mm (solid, part-solid, ground-glass, calcified; round, lobulated, spiculated;
isolated, juxta-pleural, juxta-vascular or hilar).  Masses are 30-70 mm, irregular and partly
solid, and most of them touch the mediastinum or the hilum, as lung cancers seen on CT do.
Micro-nodules below 3 mm are drawn too; they are lesions, but not LUNA16 targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from lungcad.synthetic import domain as _dom
from lungcad.synthetic.anatomy import AIRWAY_FLAG, LESION, LUNG, MEDIASTINUM, VESSEL, BODY, BONE, OUTSIDE
from lungcad.synthetic.raster import Grid, capsule_distance, label_lut, occupancy_from_distance, paint, paint_capsules

KINDS = ("nodule", "mass")
TEXTURES = ("solid", "part-solid", "ground-glass", "calcified")
LOCATIONS = ("isolated", "juxta-pleural", "juxta-vascular", "hilar", "mediastinal")
SHAPES = ("round", "lobulated", "spiculated", "convergent", "irregular", "cavitated")
#: Shapes that only the randomised domains draw (any domain can be asked for them):
#: "convergent" a spiculated lesion with vessel convergence and pleural retraction, "irregular"
#: non-convex with notches, "cavitated" air inside a thick irregular wall.
DOMAIN_SHAPES = ("convergent", "irregular", "cavitated")

#: Columns of the lesion table, in order.
LESION_COLUMNS = ["lesion_id", "patient_id", "seriesuid", "coordX", "coordY", "coordZ", "z", "y", "x",
                  "diameter_mm", "intended_diameter_mm", "volume_mm3", "kind", "texture", "location",
                  "shape", "malignancy_prob", "malignant"]

_SOLIDITY = {"solid": 1.0, "part-solid": 0.6, "ground-glass": 0.25}
_SHAPE_LOGIT = {"round": 0.0, "lobulated": 0.4, "spiculated": 1.0, "convergent": 1.0, "irregular": 0.7,
                "cavitated": 0.8}
#: Smallest diameter (mm) of each texture: a ground-glass or part-solid nodule smaller than this
#: is not seen as such, and a calcified one is at most 12 mm.
_TEXTURE_RANGE = {"solid": (1.5, 70.0), "part-solid": (8.0, 70.0), "ground-glass": (6.0, 30.0),
                  "calcified": (4.0, 12.0)}
_LUNG_SET = (LUNG, VESSEL, LUNG | AIRWAY_FLAG, VESSEL | AIRWAY_FLAG)


def malignancy_probability(diameter_mm, texture: str, shape: str = "round") -> float:
    """Probability that a lesion is malignant.

    A logistic model in the log diameter, the solidity and the margin::

        logit = 2.84 ln(d / 15 mm) + 2 (solidity - 1) + margin

    with solidity 1 (solid), 0.6 (part-solid), 0.25 (ground-glass) and margin 0 (round),
    0.4 (lobulated), 1 (spiculated).  A solid round nodule of 6 mm gives 0.07, of 15 mm 0.5,
    of 30 mm 0.88; a calcified lesion is benign: 0.02 whatever its size.
    """
    if texture == "calcified":
        return 0.02
    if texture not in _SOLIDITY:
        raise ValueError(f"texture expected one of {TEXTURES}. Received texture={texture!r}")
    if shape not in _SHAPE_LOGIT:
        raise ValueError(f"shape expected one of {SHAPES}. Received shape={shape!r}")
    d = float(diameter_mm)
    if not d > 0:
        raise ValueError(f"diameter_mm must be > 0. Received diameter_mm={diameter_mm}")
    logit = 2.84 * np.log(d / 15.0) + 2.0 * (_SOLIDITY[texture] - 1.0) + _SHAPE_LOGIT[shape]
    return float(1.0 / (1.0 + np.exp(-logit)))


@dataclass
class LesionSpec:
    """What to draw: kind, texture, location, shape and the intended diameter (mm)."""

    kind: str
    texture: str
    location: str
    shape: str
    diameter_mm: float
    #: Vessels run through the lesion (ground glass over them keeps them bright).
    through_vessels: bool = False


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"lesion {name} expected one of {allowed}. Received {name}={value!r}")


def _draw_nodule_diameter(rng, lo, hi) -> float:
    if rng.random() < 0.6 and lo < 10.0:
        return float(rng.uniform(lo, min(10.0, hi)))
    return float(rng.uniform(max(lo, min(10.0, hi)), hi))


def complete_spec(rng: np.random.Generator, given: Mapping[str, Any], *,
                  nodule_diameter_mm=(3.0, 30.0), mass_diameter_mm=(30.0, 70.0),
                  domain: str = "default") -> LesionSpec:
    """Fill the fields that ``given`` leaves out with random draws that respect each other.

    With ``domain`` other than "default", the kinds of :class:`~lungcad.synthetic.domain.LesionRanges`
    (convergent, irregular, cavitated, ground glass with vessels through it) are drawn too, at
    their shares, when ``given`` leaves the shape free.
    """
    unknown = set(given) - {"kind", "texture", "location", "shape", "diameter_mm", "through_vessels"}
    if unknown:
        raise ValueError(f"lesion spec keys expected among kind, texture, location, shape, diameter_mm, "
                         f"through_vessels. Received unknown keys {sorted(unknown)}")
    if _dom.check_domain(domain) != "default" and given.get("shape") is None and not given.get("through_vessels"):
        given = _draw_domain_kind(rng, given, nodule_diameter_mm, mass_diameter_mm)
    elif given.get("shape") in DOMAIN_SHAPES or given.get("through_vessels"):
        # asked for by name: a texture and a size that suit the kind
        pick = "ggo" if given.get("shape") is None else given["shape"]
        given = _draw_domain_kind(rng, given, nodule_diameter_mm, mass_diameter_mm, pick=pick)
    kind = given.get("kind")
    d = given.get("diameter_mm")
    if kind is None:
        kind = "mass" if d is not None and float(d) > 30.0 else "nodule"
    _check_choice("kind", kind, KINDS)
    lo, hi = (mass_diameter_mm if kind == "mass" else nodule_diameter_mm)
    texture = given.get("texture")
    if texture is None:
        if kind == "mass":
            texture = "solid" if rng.random() < 0.75 else "part-solid"
        else:
            options = ["solid", "part-solid", "ground-glass", "calcified"]
            p = np.array([0.6, 0.12, 0.13, 0.15])
            dl, dh = (float(d), float(d)) if d is not None else (lo, hi)
            ok = np.array([_TEXTURE_RANGE[t][0] <= dh and _TEXTURE_RANGE[t][1] >= dl for t in options])
            if not ok.any():
                ok[0] = True
            p = p * ok
            texture = options[int(rng.choice(4, p=p / p.sum()))]
    _check_choice("texture", texture, TEXTURES)
    if d is None:
        tlo, thi = _TEXTURE_RANGE[texture]
        dlo, dhi = max(lo, tlo), min(hi, thi)
        if dlo > dhi:
            dlo = dhi = min(max(lo, tlo), thi)
        d = float(rng.uniform(dlo, dhi)) if kind == "mass" else _draw_nodule_diameter(rng, dlo, dhi)
    d = float(d)
    if not 1.0 <= d <= 90.0:
        raise ValueError(f"lesion diameter_mm expected between 1 and 90. Received diameter_mm={d}")
    shape = given.get("shape")
    if shape is None:
        if texture == "calcified" or d < 3.0:
            shape = "round"
        elif texture == "ground-glass":
            shape = "round" if rng.random() < 0.6 else "lobulated"
        elif kind == "mass":
            shape = "lobulated" if rng.random() < 0.4 else "spiculated"
        else:
            shape = SHAPES[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
    _check_choice("shape", shape, SHAPES)
    location = given.get("location")
    if location is None:
        if d < 3.0:
            location = "isolated"
        elif kind == "mass":
            options, p = ("hilar", "mediastinal", "juxta-pleural", "isolated"), [0.35, 0.3, 0.15, 0.2]
            location = options[int(rng.choice(4, p=p))]
        else:
            options, p = ("isolated", "juxta-pleural", "juxta-vascular", "hilar"), [0.4, 0.3, 0.25, 0.05]
            location = options[int(rng.choice(4, p=p))]
    _check_choice("location", location, LOCATIONS)
    return LesionSpec(kind, texture, location, shape, d, bool(given.get("through_vessels", False)))


def _draw_domain_kind(rng, given: Mapping[str, Any], nodule_diameter_mm, mass_diameter_mm, pick=None) -> dict:
    """With the shares of :class:`~lungcad.synthetic.domain.LesionRanges`, turn a free spec into
    one of the randomised domains' kinds (fields that ``given`` fixes are kept; a kind that
    they rule out is not drawn)."""
    L = _dom.RANDOMIZED.lesions
    if pick is None:
        u = float(rng.random())
        kinds = (("convergent", L.convergent_p), ("irregular", L.irregular_p), ("cavitated", L.cavitated_p),
                 ("ggo", L.ggo_with_vessels_p))
        for name, p in kinds:
            if u < p:
                pick = name
                break
            u -= p
    if pick is None:
        return dict(given)
    out = dict(given)
    texture, d = given.get("texture"), given.get("diameter_mm")
    kind = given.get("kind") or ("mass" if d is not None and float(d) > 30.0 else "nodule")
    if pick == "convergent":
        ok, tex, lo_mm = ("part-solid", "solid"), ("part-solid" if rng.random() < 0.7 else "solid"), L.convergent_min_mm
    elif pick == "irregular":
        ok, tex, lo_mm = ("solid", "part-solid"), ("solid" if rng.random() < 0.6 else "part-solid"), L.irregular_min_mm
    elif pick == "cavitated":
        ok, tex, lo_mm = ("solid",), "solid", L.cavitated_min_mm
    else:
        if kind == "mass":
            return out
        ok, tex, lo_mm = ("ground-glass", "part-solid"), ("ground-glass" if rng.random() < 0.7 else "part-solid"), \
            L.ggo_with_vessels_min_mm
    if texture is not None and texture not in ok:
        return out
    texture = texture or tex
    lo, hi = mass_diameter_mm if kind == "mass" else nodule_diameter_mm
    hi = min(hi, _TEXTURE_RANGE[texture][1])
    lo = max(lo, lo_mm, _TEXTURE_RANGE[texture][0])
    if d is None:
        if lo > hi:
            return out
        d = float(rng.uniform(lo, hi))
    elif float(d) < lo_mm:
        return out
    out.update(kind=kind, texture=texture, diameter_mm=float(d))
    if pick == "ggo":
        out["through_vessels"] = True
    else:
        out["shape"] = pick
    return out


def draw_specs(rng: np.random.Generator, *, n_nodules=None, n_masses=None, n_micronodules=None,
               lesions: Sequence[Mapping[str, Any]] | None = None, nodule_diameter_mm=(3.0, 30.0),
               mass_diameter_mm=(30.0, 70.0), domain: str = "default") -> list[LesionSpec]:
    """The lesions of one patient.

    With ``lesions`` given, exactly those (missing fields drawn).  Otherwise the counts: about 30 %
    of patients have a mass, about 20 % have no lesion of 3 mm or more, others 1-4 nodules; and 0-2
    micro-nodules below 3 mm.  ``n_nodules``, ``n_masses`` and ``n_micronodules`` force the counts.
    """
    kw = dict(nodule_diameter_mm=nodule_diameter_mm, mass_diameter_mm=mass_diameter_mm)
    if domain != "default":
        kw["domain"] = domain
    if lesions is not None:
        return [complete_spec(rng, dict(g), **kw) for g in lesions]
    has_mass = rng.random() < 0.30
    if has_mass:
        nn = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
    else:
        nn = 0 if rng.random() < 0.28 else 1 + int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
    nm_ = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
    n_masses = int(has_mass) if n_masses is None else int(n_masses)
    n_nodules = nn if n_nodules is None else int(n_nodules)
    n_micronodules = nm_ if n_micronodules is None else int(n_micronodules)
    for name, val in (("n_nodules", n_nodules), ("n_masses", n_masses), ("n_micronodules", n_micronodules)):
        if val < 0:
            raise ValueError(f"{name} must be >= 0. Received {name}={val}")
    specs = [complete_spec(rng, {"kind": "mass"}, **kw) for _ in range(n_masses)]
    specs += [complete_spec(rng, {"kind": "nodule"}, **kw) for _ in range(n_nodules)]
    specs += [complete_spec(rng, {"kind": "nodule", "diameter_mm": float(rng.uniform(1.5, 2.8)),
                                  "texture": "solid", "location": "isolated", "shape": "round"}, **kw)
              for _ in range(n_micronodules)]
    return specs


# ---- geometry ---------------------------------------------------------------------------------

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


# ---- placement --------------------------------------------------------------------------------

@dataclass
class PlacementContext:
    """What lesion placement needs to know about the anatomy already drawn."""

    coarse: Grid
    coarse_labels: np.ndarray
    d_wall: np.ndarray          # mm from each coarse voxel to the nearest body/bone/outside voxel
    i_wall: np.ndarray          # index (3, ...) of that voxel
    d_med: np.ndarray           # mm to the nearest mediastinum voxel
    i_med: np.ndarray
    fine: Grid
    fine_labels: np.ndarray
    z_range: tuple[float, float]      # lesions must lie within (world z)
    hilar_z: tuple[float, float]      # the hilar band (world z)
    vessel_pts: np.ndarray            # (M, 3) points along vessels
    vessel_r: np.ndarray
    vessel_dir: np.ndarray            # (M, 3) unit direction of the vessel at each point
    placed: list = field(default_factory=list)   # [(centre, extent)]

    def __post_init__(self):
        from scipy.spatial import cKDTree

        big = self.vessel_r >= 1.5
        self._big_pts = self.vessel_pts[big]
        self._big_r = self.vessel_r[big]
        self._kd_big = cKDTree(self._big_pts) if len(self._big_pts) else None
        self._lung_lut = label_lut(_LUNG_SET)

    def fine_label(self, xyz) -> int:
        idx = np.rint(self.fine.to_index(xyz)).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.array(self.fine.shape)):
            return OUTSIDE
        return int(self.fine_labels[tuple(idx)])

    def in_lung(self, xyz) -> bool:
        return bool(self._lung_lut[self.fine_label(xyz)])

    def fits(self, c, ext) -> bool:
        z0, z1 = self.z_range
        if not (z0 + ext + 1.0 <= c[2] <= z1 - ext - 1.0):
            return False
        return all(np.linalg.norm(c - pc) >= ext + pe + 6.0 for pc, pe in self.placed)

    def vessel_clearance(self, c) -> float:
        if self._kd_big is None:
            return np.inf
        idx = self._kd_big.query_ball_point(c, r=40.0)
        if not idx:
            return np.inf
        idx = np.asarray(idx)
        return float(np.min(np.linalg.norm(self._big_pts[idx] - c, axis=1) - self._big_r[idx]))

    def fractions(self, c, radius: float) -> tuple[float, float, float]:
        """Fractions of a ball (coarse grid) in the lung, in the mediastinum, and elsewhere."""
        sl = self.coarse.box(c - radius, c + radius)
        if sl is None:
            return 0.0, 0.0, 1.0
        zc, yc, xc = self.coarse.coords(sl)
        ball = ((zc - c[2]) ** 2)[:, None, None] + ((yc - c[1]) ** 2)[None, :, None] + \
            ((xc - c[0]) ** 2)[None, None, :] <= radius * radius
        n = int(ball.sum())
        if n == 0:
            return 1.0, 0.0, 0.0
        lab = self.coarse_labels[sl][ball]
        f_lung = float((lab == LUNG).sum()) / n
        f_med = float((lab == MEDIASTINUM).sum()) / n
        return f_lung, f_med, 1.0 - f_lung - f_med

    def ray_to(self, start, direction, stop_labels, max_mm: float) -> np.ndarray | None:
        """First point from ``start`` along ``direction`` whose fine label is in ``stop_labels``."""
        step = 0.25 * min(self.fine.spacing)
        ts = np.arange(0.0, max_mm, step)
        pts = start[None, :] + ts[:, None] * direction[None, :]
        idx = np.rint(self.fine.to_index(pts)).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(self.fine.shape)), axis=1)
        if not inside.any():
            return None
        idx = np.clip(idx, 0, np.array(self.fine.shape) - 1)
        lab = self.fine_labels[idx[:, 0], idx[:, 1], idx[:, 2]]
        hit = np.isin(lab, list(stop_labels)) & inside
        k = np.nonzero(hit)[0]
        return None if len(k) == 0 else pts[k[0]]


def _coarse_xyz(ctx: PlacementContext, flat_idx):
    zyx = np.stack(np.unravel_index(flat_idx, ctx.coarse.shape), axis=-1)
    return ctx.coarse.to_world(zyx)


def place(rng: np.random.Generator, ctx: PlacementContext, spec: LesionSpec, ext_factor: float,
          *, tries: int = 60) -> np.ndarray | None:
    """A world centre for a lesion of ``spec``, or None when no place fits."""
    R = 0.5 * spec.diameter_mm
    ext = R * ext_factor
    cs = max(ctx.coarse.spacing)
    lung = ctx.coarse_labels == LUNG
    z_world = ctx.coarse.z[:, None, None]
    z0, z1 = ctx.z_range
    zok = (z_world >= z0 + ext + 1.0) & (z_world <= z1 - ext - 1.0)
    loc = spec.location
    if loc == "juxta-vascular":
        ok = (ctx.vessel_r >= 1.2) & (ctx.vessel_r <= 4.5)
        cand = np.nonzero(ok)[0]
        for k in rng.permutation(cand)[:tries * 4]:
            p, rv, d = ctx.vessel_pts[k], ctx.vessel_r[k], ctx.vessel_dir[k]
            if ctx.fine_label(p) not in (VESSEL,):
                continue
            m = np.cross(d, rng.normal(size=3))
            m /= max(np.linalg.norm(m), 1e-6)
            c = p + m * (R + 0.3 * rv)
            ci = np.rint(ctx.coarse.to_index(c)).astype(int)
            if np.any(ci < 0) or np.any(ci >= np.array(ctx.coarse.shape)):
                continue
            ci = tuple(ci)
            if ctx.d_wall[ci] < R + 4.0 or ctx.d_med[ci] < R + 4.0:
                continue
            if ctx.in_lung(c) and ctx.fits(c, ext):
                return c
        return None
    if loc == "isolated":
        cand = np.flatnonzero(lung & zok & (ctx.d_wall >= R + 5.0) & (ctx.d_med >= R + 5.0))
        for k in rng.permutation(cand)[:tries * 3]:
            c = _coarse_xyz(ctx, k) + rng.uniform(-0.5, 0.5, 3) * np.asarray(ctx.coarse.spacing[::-1])
            if ctx.in_lung(c) and ctx.fits(c, ext) and ctx.vessel_clearance(c) >= R + 1.0:
                return c
        return None
    if loc == "juxta-pleural":
        cand = np.flatnonzero(lung & zok & (ctx.d_wall <= 1.6 * cs) & (ctx.d_med >= R + 10.0))
        stop, idx_arr = (BODY, BONE, OUTSIDE), ctx.i_wall
        depth = (0.55, 0.75)
    else:  # hilar or mediastinal
        band = (z_world >= ctx.hilar_z[0]) & (z_world <= ctx.hilar_z[1])
        sel = band if loc == "hilar" else np.ones_like(band)
        cand = np.flatnonzero(lung & zok & sel & (ctx.d_med <= 1.6 * cs))
        stop, idx_arr = (MEDIASTINUM,), ctx.i_med
        depth = (0.6, 0.8)
    for k in rng.permutation(cand)[:tries]:
        zyx = np.unravel_index(k, ctx.coarse.shape)
        p = ctx.coarse.to_world(np.array(zyx, dtype=float))
        q = ctx.coarse.to_world(idx_arr[(slice(None),) + zyx].astype(float))
        n = q - p
        nn = np.linalg.norm(n)
        if nn < 1e-6:
            continue
        n /= nn
        b = ctx.ray_to(p - 2.0 * cs * n, n, stop, max_mm=6.0 * cs)
        if b is None:
            continue
        c = b - n * R * float(rng.uniform(*depth))
        if not (ctx.in_lung(c) and ctx.fits(c, ext)):
            continue
        if R >= 4.0:
            f_lung, f_med, f_other = ctx.fractions(c, R)
            if loc == "juxta-pleural" and (f_lung < 0.65 or f_med > 0.02):
                continue
            if loc in ("hilar", "mediastinal") and (f_lung < 0.55 or f_other > 0.12):
                continue
        return c
    return None


def contextualize(rng: np.random.Generator, geom: LesionGeometry, spec: LesionSpec,
                  ctx: PlacementContext) -> LesionGeometry:
    """Add what depends on the anatomy around a placed lesion (world centre ``geom.centre``).

    For a "convergent" lesion: its converging vessels are re-drawn from the patient's own
    vessels 4-30 mm from its surface (those that lie in the lung; the random ones are kept when
    fewer than 3 are found), and a pleural tag runs to the nearest pleura, with the pleura
    pulled in (a small soft-tissue triangle labelled body), when that pleura is at most
    ``LesionRanges.retraction_max_mm`` from the surface.  Other shapes are returned unchanged,
    without a random draw.
    """
    if geom.pending_context is not None:
        geom = _copy(geom, pending_context=None)
    if spec.shape != "convergent":
        return geom
    L = _dom.RANDOMIZED.lesions
    c = np.asarray(geom.centre, dtype=float)
    R = 0.5 * spec.diameter_mm
    contrast = any(lab == VESSEL and hu_v > 100.0 for *_, hu_v, lab in geom.extras)
    # vessels: toward the patient's vessels around
    if len(ctx.vessel_pts):
        dist = np.linalg.norm(ctx.vessel_pts - c, axis=1)
        cand = np.nonzero((dist > R + 4.0) & (dist < R + 30.0) & (ctx.vessel_r >= 0.8))[0]
        chosen = []          # [(unit direction, offset of the vessel point)]
        n_max = int(L.convergent_vessels.hi)
        for k in rng.permutation(cand):
            p = ctx.vessel_pts[k]
            u = (p - c) / dist[k]
            if ctx.in_lung(p) and all(float(u @ v) < 0.8 for v, _ in chosen):
                chosen.append((u, p - c))
                if len(chosen) >= n_max:
                    break
        if len(chosen) >= int(L.convergent_vessels.lo):
            keep = [e for e in geom.extras if e[5] != VESSEL]
            geom = _copy(geom, extras=keep)
            ends = [e for _, e in chosen]
            _converging_vessels(rng, geom, R, contrast, ends=ends)
    # pleural retraction
    ci = np.rint(ctx.coarse.to_index(c)).astype(int)
    if np.any(ci < 0) or np.any(ci >= np.array(ctx.coarse.shape)):
        return geom
    ci = tuple(ci)
    q = ctx.coarse.to_world(ctx.i_wall[(slice(None),) + ci].astype(float))
    n = q - c
    nn = float(np.linalg.norm(n))
    if nn < 1e-6:
        return geom
    n /= nn
    b = ctx.ray_to(c, n, (BODY, BONE, OUTSIDE), max_mm=nn + 4.0 * max(ctx.coarse.spacing) + 10.0)
    if b is None:
        return geom
    gap = float(np.linalg.norm(b - c)) - R
    if not 3.0 <= gap <= L.retraction_max_mm:
        return geom
    extras = list(geom.extras)
    tag_r = float(rng.uniform(0.8, 1.4))
    extras.append((n * 0.7 * R, b - c + n * 1.0, tag_r, 0.6, float(rng.uniform(-150.0, 0.0)), None))
    depth = min(8.0, 0.5 * gap)
    extras.append((b - c - n * depth, b - c + n * 2.0, 0.5, float(rng.uniform(2.5, 4.5)),
                   float(rng.uniform(-80.0, 20.0)), BODY))
    return _copy(geom, extras=extras)


def _copy(geom: LesionGeometry, **kw) -> LesionGeometry:
    import dataclasses

    return dataclasses.replace(geom, **kw)
