"""Lesions of a phantom, what they are: the spec (kind, texture, location, shape, diameter),
how it is drawn, and how malignant it is.

Nodules are 3-30 mm (solid, part-solid, ground-glass, calcified; round, lobulated, spiculated;
isolated, juxta-pleural, juxta-vascular or hilar).  Masses are 30-70 mm, irregular and partly
solid, and most of them touch the mediastinum or the hilum, as lung cancers seen on CT do.
Micro-nodules below 3 mm are drawn too; they are lesions, but not LUNA16 targets.

How a spec becomes a shape: :mod:`lungcad.synthetic.lesion_shapes`; where it goes:
:mod:`lungcad.synthetic.lesion_placement`; how it is painted: :mod:`lungcad.synthetic.lesion_render`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from lungcad.synthetic import domain as _dom

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
