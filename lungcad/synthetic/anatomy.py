"""Thorax anatomy of a phantom: patient parameters, axial cross-sections and tubular structures.

The anatomy lives in a patient frame in millimetres: ``u`` = x - body centre (toward the
patient's left), ``v`` = y - body centre (posterior), ``w`` = z - lung apex (superior; the
lungs span w in [-H, 0]).  Cross-sections that change slowly along z (body layers, thoracic
cavity, lungs, mediastinum, heart, spine, sternum, diaphragm) are painted one axial slice at a
time from ellipse tests whose terms are separable in u and v.  Tubular structures (aorta and
great vessels, trachea and bronchi, ribs, clavicles) are 3-D capsule chains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Label values (the public ``LABELS`` dict in :mod:`lungcad.synthetic.phantom` repeats them).
OUTSIDE, BODY, BONE, MEDIASTINUM, LUNG, VESSEL, AIRWAY, LESION = range(8)
#: Organ codes of ``Phantom.organs`` (0: none of these).  The stomach includes its gas.
ORGANS = {"heart": 1, "liver": 2, "spleen": 3, "stomach": 4}
#: Bit set on airway voxels while painting; the low bits keep the label that was there, so that
#: intrapulmonary bronchi can be told from the trachea when the lung region is built.
AIRWAY_FLAG = 0x40


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


@dataclass
class Anatomy:
    """Geometry and tissue values of one phantom patient (mm and HU, patient frame)."""

    A: float            # body half-width
    Ba: float           # body anterior half-depth
    Bp: float           # body posterior half-depth
    t_fat: float
    t_mus: float        # lateral muscle
    t_mus_a: float      # anterior muscle (pectorals)
    t_mus_p: float      # posterior muscle over the ribs
    rv: float           # vertebral body half-width
    v_s: float          # vertebral body centre
    v_cf: float         # thoracic cavity front (lower chest)
    v_cb: float         # thoracic cavity back
    Ac: float           # thoracic cavity half-width (lower chest)
    taper: float        # relative narrowing of the cavity at the apex
    H: float            # lung height, apex to the deepest costophrenic recess
    apex_w: tuple[float, float]     # (right, left) apex heights (<= 0)
    apex_C: float                   # mm of depth below the apex to reach full lung section
    dome_w: tuple[float, float]     # (right, left) diaphragm dome peaks
    dome_depth: tuple[float, float]
    heart: tuple[float, ...]        # u, v, w, a, b, c, angle(rad)
    u_m: float          # mediastinum midline
    h_ant: float        # mediastinum half-width behind the sternum
    h_mid: float        # mediastinum half-width at mid depth
    trachea: tuple[float, float, float, float]  # u, v, lumen radius, wall
    w_car: float        # carina height
    r_aorta: float
    sheath: float       # mediastinal tissue around the great vessels (mm)
    vert_period: float
    vert_phase: float
    gastric_bubble: bool
    esophagus_air: bool
    table: bool
    hu: dict = field(default_factory=dict)
    contrast: bool = False
    #: Parts that only the randomised domains draw (None: the default generator).
    ext: "AnatomyExtras | None" = None

    # ---- z-dependent cavity ---------------------------------------------------------------
    def cavity(self, w: float) -> tuple[float, float, float]:
        """(half-width, centre v, half-depth) of the thoracic cavity ellipse at height w."""
        s = float(np.clip((w + 0.55 * self.H) / (0.55 * self.H), 0.0, 1.0)) ** 2
        ac = self.Ac * (1.0 - self.taper * s)
        front = self.v_cf + 18.0 * s
        return ac, 0.5 * (front + self.v_cb), 0.5 * (self.v_cb - front)

    def hilum(self, side: int) -> np.ndarray:
        """Patient-frame (u, v, w) of the pulmonary artery entering the hilum; side -1 right, +1 left."""
        u_t, v_t = self.trachea[:2]
        if side < 0:
            return np.array([u_t - (self.h_mid + 14.0), v_t + 2.0, self.w_car - 18.0])
        return np.array([u_t + self.h_mid + 14.0, v_t + 12.0, self.w_car - 4.0])

    def bronchus_hilum(self, side: int) -> np.ndarray:
        u_t, v_t = self.trachea[:2]
        if side < 0:
            return np.array([u_t - (self.h_mid + 8.0), v_t + 12.0, self.w_car - 26.0])
        return np.array([u_t + self.h_mid + 12.0, v_t + 16.0, self.w_car - 34.0])

    def atrium(self, side: int) -> np.ndarray:
        """Where the pulmonary veins of one side enter the left atrium."""
        hu_, hv, hw, a, b, c, _ = self.heart
        return np.array([hu_ + side * 0.35 * a - 8.0, hv + 0.55 * b, hw + 0.3 * c])


@dataclass
class AnatomyExtras:
    """What a randomised patient has beyond the default generator's anatomy (patient frame, mm).

    ``factors`` holds the drawn factors, JSON-ready, for ``volume.meta``.
    """

    scale: float
    body_exp: float                 # superellipse exponent of the body outline
    shoulder_w: float               # above this height the chest narrows to the neck
    neck: tuple                     # (half-width, centre v, half-depth)
    arms: tuple | None              # arms down: (centre |u|, centre v, half-width, half-depth, humerus r)
    breast: tuple | None            # (centre |u|, half-width, depth, centre w, half-height)
    liver_left: float               # the liver reaches this far left of the midline
    spleen_len: float
    stomach_len: float
    stomach_gas: float              # antero-posterior depth of the gas layer (0: none)
    nodes: list                     # lymph nodes [(u, v, w, radius in-plane, half-height)]
    factors: dict = field(default_factory=dict)


def draw_body_half_width(rng: np.random.Generator) -> float:
    """Half the body width (mm) of an adult, drawn first so that the field of view can fit it."""
    return _u(rng, 145.0, 195.0)


def draw_anatomy(rng: np.random.Generator, *, A: float, contrast: bool | None = None) -> Anatomy:
    """Draw a plausible adult thorax of body half-width ``A`` (mm)."""
    depth = 2.0 * A * _u(rng, 0.68, 0.86)
    Ba = depth * _u(rng, 0.46, 0.52)
    Bp = depth - Ba
    t_fat = _u(rng, 4.0, 20.0) * (0.7 + 0.3 * A / 170.0)
    t_mus, t_mus_a, t_mus_p = _u(rng, 3.0, 8.0), _u(rng, 4.0, 12.0), _u(rng, 4.0, 12.0)
    rv = _u(rng, 16.0, 21.0)
    v_cf = -Ba + 2.0 + 0.8 * t_fat + t_mus_a + 9.0
    v_cb = Bp - 2.0 - t_fat - t_mus_p - 9.0
    v_s = v_cb - rv - _u(rng, 8.0, 22.0)
    Ac = A - 2.0 - t_fat - t_mus - 9.0
    H = float(np.clip(255.0 + 0.6 * (A - 170.0) + rng.normal(0.0, 15.0), 215.0, 300.0))
    apex_w = (-_u(rng, 0.0, 8.0), -_u(rng, 0.0, 8.0))
    d_r = _u(rng, 50.0, 80.0)
    dome_w = (-H + d_r, -H + d_r - _u(rng, 8.0, 22.0))
    dome_depth = ((d_r - 10.0) * _u(rng, 0.9, 1.1), (dome_w[1] + H - 10.0) * _u(rng, 0.9, 1.1))
    size = float(np.clip(Ac / 125.0, 0.75, 1.15))
    a_h, b_h, c_h = _u(rng, 55.0, 66.0) * size, _u(rng, 38.0, 48.0) * size, _u(rng, 48.0, 60.0) * size
    heart = (_u(rng, 12.0, 30.0), v_cf + b_h * _u(rng, 0.85, 1.0), dome_w[1] + c_h * _u(rng, 0.35, 0.6),
             a_h, b_h, c_h, np.deg2rad(_u(rng, 25.0, 45.0)))
    r_tr, wall_tr = _u(rng, 7.5, 10.0), _u(rng, 1.8, 2.8)
    u_tr = -_u(rng, 0.0, 5.0)
    v_tr = v_s - 0.85 * rv - _u(rng, 14.0, 20.0) - r_tr
    u_m = _u(rng, -3.0, 5.0)
    h_mid = max(_u(rng, 22.0, 34.0) * size, abs(u_tr - u_m) + r_tr + wall_tr + 7.0)
    contrast = bool(rng.random() < 0.5) if contrast is None else bool(contrast)
    blood = _u(rng, 150.0, 280.0) if contrast else _u(rng, 35.0, 50.0)
    hu = dict(
        fat=_u(rng, -115.0, -85.0), muscle=_u(rng, 35.0, 55.0), skin=_u(rng, 10.0, 40.0),
        blood=blood, vein=blood * _u(rng, 0.5, 0.9) if contrast else blood,
        myocardium=_u(rng, 90.0, 130.0) if contrast else _u(rng, 35.0, 50.0),
        liver=_u(rng, 90.0, 130.0) if contrast else _u(rng, 50.0, 65.0),
        spleen=_u(rng, 100.0, 140.0) if contrast else _u(rng, 40.0, 50.0),
        med_fill=_u(rng, -95.0, 10.0), hilum=_u(rng, 25.0, 45.0),
        lung=_u(rng, -880.0, -815.0), gravity=_u(rng, 15.0, 45.0), lung_tex=_u(rng, 10.0, 28.0),
        soft_tex=_u(rng, 3.0, 8.0),
        cortex=_u(rng, 750.0, 1150.0), marrow=_u(rng, 200.0, 300.0), cartilage=_u(rng, 90.0, 180.0),
        disc=_u(rng, 70.0, 100.0), csf=_u(rng, 5.0, 20.0), table=_u(rng, 150.0, 400.0),
        airway_wall=_u(rng, 10.0, 50.0), esophagus=_u(rng, 30.0, 45.0),
    )
    return Anatomy(
        A=A, Ba=Ba, Bp=Bp, t_fat=t_fat, t_mus=t_mus, t_mus_a=t_mus_a, t_mus_p=t_mus_p, rv=rv, v_s=v_s,
        v_cf=v_cf, v_cb=v_cb, Ac=Ac, taper=_u(rng, 0.22, 0.35), H=H, apex_w=apex_w,
        apex_C=_u(rng, 55.0, 80.0), dome_w=dome_w, dome_depth=dome_depth, heart=heart, u_m=u_m,
        h_ant=_u(rng, 6.0, 12.0), h_mid=h_mid, trachea=(u_tr, v_tr, r_tr, wall_tr),
        w_car=-H * _u(rng, 0.27, 0.35), r_aorta=_u(rng, 12.0, 16.5), sheath=_u(rng, 4.0, 9.0),
        vert_period=_u(rng, 24.0, 30.0),
        vert_phase=_u(rng, 0.0, 30.0), gastric_bubble=bool(rng.random() < 0.5),
        esophagus_air=bool(rng.random() < 0.3), table=bool(rng.random() < 0.8), hu=hu,
        contrast=contrast)


def draw_anatomy_domain(rng: np.random.Generator, *, domain: str, contrast: bool, blood_hu: float | None = None,
                        A: float | None = None) -> Anatomy:
    """Draw a thorax from the ranges of :data:`lungcad.synthetic.domain.RANDOMIZED` (``anatomy``).

    The overall scale comes from :func:`~lungcad.synthetic.domain.draw_anatomy_scale` (inside
    the held-out band for ``domain="shifted"``, outside it otherwise) and multiplies the body,
    the cavity, the lungs, the heart, the spine and the airways together.  ``contrast`` and
    ``blood_hu`` come from the scanner draw.  ``A`` forces the body half-width (mm).
    """
    from lungcad.synthetic.domain import RANDOMIZED, band_uniform as bu, check_domain, draw_anatomy_scale

    check_domain(domain)
    if domain == "default":
        raise ValueError("draw_anatomy_domain draws the randomised domains; use draw_anatomy for 'default'")
    R = RANDOMIZED.anatomy
    s = draw_anatomy_scale(rng, domain)
    A = bu(rng, R.body_half_width_mm) * s if A is None else float(A)
    ratio = bu(rng, R.body_depth_ratio)
    depth = 2.0 * A * ratio
    Ba = depth * bu(rng, R.body_front_share)
    Bp = depth - Ba
    body_exp = bu(rng, R.body_exponent)
    t_fat = min(bu(rng, R.fat_mm), 0.12 * depth)
    t_mus, t_mus_a, t_mus_p = _u(rng, 3.0, 8.0) * s, _u(rng, 4.0, 12.0) * s, _u(rng, 4.0, 12.0) * s
    rv = _u(rng, 16.0, 21.0) * s
    v_cf = -Ba + 2.0 + 0.8 * t_fat + t_mus_a + 9.0
    v_cb = Bp - 2.0 - t_fat - t_mus_p - 9.0
    v_s = v_cb - rv - _u(rng, 8.0, 22.0) * s
    Ac = A - 2.0 - t_fat - t_mus - 9.0
    lh = R.lung_height_mm
    H = float(np.clip(255.0 * s * bu(rng, R.lung_height_jitter), lh.lo, lh.hi))
    apex_w = (-_u(rng, 0.0, 8.0), -_u(rng, 0.0, 8.0))
    d_r = min(bu(rng, R.dome_height_mm), 0.5 * H)
    d_l = min(bu(rng, R.dome_height_mm), 0.5 * H)
    dome_w = (-H + d_r, -H + d_l)
    dome_depth = ((d_r - 10.0) * _u(rng, 0.9, 1.1), (d_l - 10.0) * _u(rng, 0.9, 1.1))
    w_car = -H * _u(rng, 0.27, 0.35)
    hs = bu(rng, R.heart_scale)
    size = Ac / 125.0 * hs
    a_h, b_h, c_h = (_u(rng, lo, hi) * size * bu(rng, R.heart_axis_jitter)
                     for lo, hi in ((55.0, 66.0), (38.0, 48.0), (48.0, 60.0)))
    shift_u, shift_v = bu(rng, R.heart_shift_mm), bu(rng, R.heart_shift_mm)
    heart_angle = bu(rng, R.heart_angle_deg)
    hz = min(dome_w[1] + c_h * bu(rng, R.heart_above_dome), w_car - 12.0 - c_h)
    heart = (_u(rng, 12.0, 30.0) * s + shift_u, v_cf + b_h * _u(rng, 0.85, 1.0) + shift_v, hz,
             a_h, b_h, c_h, np.deg2rad(heart_angle))
    r_tr, wall_tr = _u(rng, 7.5, 10.0) * s, _u(rng, 1.8, 2.8)
    u_tr = -_u(rng, 0.0, 5.0)
    v_tr = v_s - 0.85 * rv - _u(rng, 14.0, 20.0) * s - r_tr
    u_m = _u(rng, -3.0, 5.0)
    mw = bu(rng, R.mediastinum_width_scale)
    h_mid = max(_u(rng, 22.0, 34.0) * min(size, 1.3) * mw, abs(u_tr - u_m) + r_tr + wall_tr + 7.0)
    blood = (float(blood_hu) if blood_hu is not None else _u(rng, 150.0, 280.0)) if contrast \
        else _u(rng, 35.0, 50.0)
    enh = _u(rng, 40.0, 80.0) if contrast else 0.0
    hu = dict(
        fat=_u(rng, -115.0, -85.0), muscle=_u(rng, 35.0, 55.0), skin=_u(rng, 10.0, 40.0),
        blood=blood, vein=blood * _u(rng, 0.5, 0.9) if contrast else blood,
        myocardium=_u(rng, 90.0, 130.0) if contrast else _u(rng, 35.0, 50.0),
        liver=bu(rng, R.liver_hu) + enh, spleen=bu(rng, R.spleen_hu) + enh,
        med_fill=bu(rng, R.mediastinal_fat_hu), hilum=_u(rng, 25.0, 45.0),
        lung=_u(rng, -880.0, -815.0), gravity=_u(rng, 15.0, 45.0), lung_tex=_u(rng, 10.0, 28.0),
        soft_tex=_u(rng, 3.0, 8.0),
        cortex=_u(rng, 750.0, 1150.0), marrow=_u(rng, 200.0, 300.0), cartilage=_u(rng, 90.0, 180.0),
        disc=_u(rng, 70.0, 100.0), csf=_u(rng, 5.0, 20.0), table=_u(rng, 150.0, 400.0),
        airway_wall=_u(rng, 10.0, 50.0), esophagus=_u(rng, 30.0, 45.0),
        stomach=bu(rng, R.stomach_content_hu), abdomen=bu(rng, R.abdomen_hu),
        node=bu(rng, R.lymph_node_hu) + 0.5 * enh, breast=bu(rng, R.breast_hu),
    )
    # neck, arms, breasts
    shoulder_w = bu(rng, R.shoulder_mm)
    front_n = v_tr - r_tr - _u(rng, 18.0, 30.0) * s
    back_n = min(v_s + 0.85 * rv + _u(rng, 40.0, 60.0) * s, 0.93 * Bp)
    neck = (min(bu(rng, R.neck_half_width_mm) * s, A), 0.5 * (front_n + back_n), 0.5 * (back_n - front_n))
    arms = None
    if rng.random() < R.arms_down_p:
        a_arm = bu(rng, R.arm_half_width_mm) * s
        b_arm = a_arm * _u(rng, 1.0, 1.25)
        v_arm = min(_u(rng, -0.2, 0.2) * Bp, 0.93 * Bp - b_arm - 2.0)
        arms = (A + bu(rng, R.arm_gap_mm) + a_arm, v_arm, a_arm, b_arm, _u(rng, 9.0, 13.0) * s)
    breast = None
    if rng.random() < R.breast_p:
        hw = _u(rng, 0.25, 0.38) * A
        breast = (_u(rng, 0.35, 0.55) * A, hw, bu(rng, R.breast_depth_mm), _u(rng, -0.55, -0.3) * H,
                  hw * _u(rng, 0.8, 1.1))
    # lymph nodes, hilar and mediastinal
    nodes = []
    for _ in range(int(rng.integers(int(R.lymph_nodes.lo), int(R.lymph_nodes.hi) + 1))):
        r = 0.5 * bu(rng, R.lymph_node_mm)
        site = int(rng.integers(6))
        if site < 2:        # hilar, right or left
            side = -1 if site == 0 else 1
            hx = u_tr + side * (h_mid + _u(rng, 6.0, 16.0))
            p = (hx, v_tr + _u(rng, -5.0, 20.0), w_car + _u(rng, -45.0, 0.0))
        elif site < 4:      # paratracheal
            side = -1 if site == 2 else 1
            p = (u_tr + side * (r_tr + wall_tr + r + _u(rng, 1.0, 6.0)), v_tr + _u(rng, -12.0, 4.0),
                 w_car + _u(rng, 5.0, 50.0))
        elif site == 4:     # subcarinal
            p = (u_tr + _u(rng, -6.0, 6.0), v_tr + _u(rng, 4.0, 14.0), w_car - _u(rng, 8.0, 25.0))
        else:               # prevascular / aortopulmonary window
            p = (u_m + _u(rng, -10.0, 25.0), v_cf + _u(rng, 15.0, 40.0), w_car + _u(rng, -5.0, 30.0))
        nodes.append((float(p[0]), float(p[1]), float(p[2]), r, r * _u(rng, 1.0, 1.8)))
    gas = bu(rng, R.stomach_gas_mm) if rng.random() < R.stomach_gas_p else 0.0
    ext = AnatomyExtras(
        scale=s, body_exp=body_exp, shoulder_w=shoulder_w, neck=neck, arms=arms, breast=breast,
        liver_left=bu(rng, R.liver_left_mm), spleen_len=bu(rng, R.spleen_length_mm),
        stomach_len=bu(rng, R.stomach_length_mm), stomach_gas=gas, nodes=nodes)
    ext.factors = {
        "anatomy_scale": round(s, 4), "body_half_width_mm": round(A, 2), "body_depth_ratio": round(ratio, 4),
        "body_exponent": round(body_exp, 3), "fat_mm": round(t_fat, 2), "lung_height_mm": round(H, 2),
        "dome_height_mm": [round(d_r, 2), round(d_l, 2)], "heart_scale": round(hs, 4),
        "heart_shift_mm": [round(shift_u, 2), round(shift_v, 2)], "heart_angle_deg": round(heart_angle, 2),
        "mediastinum_width_scale": round(mw, 4), "mediastinal_fat_hu": round(hu["med_fill"], 1),
        "liver_hu": round(hu["liver"], 1), "spleen_hu": round(hu["spleen"], 1),
        "stomach_gas_mm": round(gas, 2), "lymph_nodes": len(nodes),
        "lymph_node_mm": [round(2 * n[3], 2) for n in nodes], "arms_down": arms is not None,
        "breast_depth_mm": None if breast is None else round(breast[2], 2),
    }
    table = bool(rng.random() < R.table_p)
    ext.factors["table"] = table
    return Anatomy(
        A=A, Ba=Ba, Bp=Bp, t_fat=t_fat, t_mus=t_mus, t_mus_a=t_mus_a, t_mus_p=t_mus_p, rv=rv, v_s=v_s,
        v_cf=v_cf, v_cb=v_cb, Ac=Ac, taper=_u(rng, 0.22, 0.35), H=H, apex_w=apex_w,
        apex_C=_u(rng, 55.0, 80.0) * s, dome_w=dome_w, dome_depth=dome_depth, heart=heart, u_m=u_m,
        h_ant=_u(rng, 6.0, 12.0) * mw, h_mid=h_mid, trachea=(u_tr, v_tr, r_tr, wall_tr),
        w_car=w_car, r_aorta=_u(rng, 12.0, 16.5) * s, sheath=_u(rng, 4.0, 9.0),
        vert_period=_u(rng, 24.0, 30.0) * s,
        vert_phase=_u(rng, 0.0, 30.0), gastric_bubble=False,
        esophagus_air=bool(rng.random() < 0.3), table=table, hu=hu, contrast=bool(contrast), ext=ext)


def body_extent(an: Anatomy) -> tuple[float, float, float]:
    """(half-width with the arms, anterior half-depth, posterior half-depth) of the body, mm."""
    half = an.A
    if an.ext is not None and an.ext.arms is not None:
        half = an.ext.arms[0] + an.ext.arms[2]
    front = an.Ba
    if an.ext is not None and an.ext.breast is not None:
        front += an.ext.breast[2]
    return half, front, an.Bp


# ---- one axial slice --------------------------------------------------------------------------

def _box(u, v, u0, u1, v0, v1):
    """Index slices (rows, cols) of the sorted coordinates within [u0, u1] x [v0, v1]."""
    return (slice(int(np.searchsorted(v, v0)), int(np.searchsorted(v, v1, side="right"))),
            slice(int(np.searchsorted(u, u0)), int(np.searchsorted(u, u1, side="right"))))


def _ellipse(u, v, cu, cv, au, av):
    """2-D array of ((u-cu)/au)^2 + ((v-cv)/av)^2 from 1-D u (nx,) and v (ny,)."""
    qu = ((u - cu) * (1.0 / au)) ** 2
    qv = ((v - cv) * (1.0 / av)) ** 2
    return qv[:, None] + qu[None, :]


def _set(hu, lab, mask, hu_value, label):
    np.copyto(hu, np.float32(hu_value) if np.ndim(hu_value) == 0 else hu_value, where=mask)
    if label is not None:
        lab[mask] = label


def _disc(u, v, hu, lab, cu, cv, au, av, value, label, where=None, scale=1.0, org=None, code=0):
    """Paint the ellipse ((u-cu)/au)^2 + ((v-cv)/av)^2 <= scale inside its own box (and
    ``code`` into the organ array ``org`` when one is given)."""
    if scale <= 0 or au <= 0 or av <= 0:
        return
    r = np.sqrt(scale)
    sl = _box(u, v, cu - au * r, cu + au * r, cv - av * r, cv + av * r)
    if sl[0].stop <= sl[0].start or sl[1].stop <= sl[1].start:
        return
    m = _ellipse(u[sl[1]], v[sl[0]], cu, cv, au, av) <= scale
    if where is not None:
        m &= where[sl]
    _set(hu[sl], lab[sl], m, value, label)
    if org is not None:
        org[sl][m] = code


def _pw(x, p):
    """|x| ** p, exactly x ** 2 for the default ellipses."""
    return x ** 2 if p == 2 else np.abs(x) ** p


def _body_at(an: Anatomy, w: float):
    """(half-width, anterior and posterior half-depth, centre v, fat, exponent) of the body
    outline at height ``w``: the chest, narrowing above the shoulders to the neck."""
    e = an.ext
    t = float(np.clip((w - e.shoulder_w) / 30.0, 0.0, 1.0))
    if t <= 0.0:
        return an.A, an.Ba, an.Bp, 0.0, an.t_fat, e.body_exp
    t = t * t * (3.0 - 2.0 * t)
    nw, nv, nd = e.neck
    return (an.A + t * (nw - an.A), an.Ba + t * (nd - an.Ba), an.Bp + t * (nd / 0.93 - an.Bp), t * nv,
            an.t_fat * (1.0 - 0.6 * t), e.body_exp + t * (2.0 - e.body_exp))


def paint_slice(an: Anatomy, u: np.ndarray, v: np.ndarray, w: float, hu: np.ndarray, lab: np.ndarray,
                texture: np.ndarray | None = None, org: np.ndarray | None = None) -> None:
    """Paint one axial cross-section at height ``w`` into ``hu`` and ``lab`` (ny, nx), in place.

    ``u`` (nx,) and ``v`` (ny,) are the sorted patient-frame coordinates of the columns and
    rows.  ``texture``, when given, is a smooth (ny, nx) field of unit amplitude that modulates
    the lung parenchyma (and, weakly, the soft tissue).  ``org``, when given (uint8, ny x nx),
    receives the :data:`ORGANS` codes; it changes nothing else.
    """
    H = an.hu
    hu.fill(-1000.0)
    lab.fill(OUTSIDE)
    if org is not None:
        org.fill(0)
    # patient table (carbon shell and base plate), label 0
    if an.table:
        sl = _box(u, v, -230.0, 230.0, an.Bp * 0.95 + 4.0, an.Bp + 61.0)
        uu, vv = u[sl[1]], v[sl[0]]
        top = an.Bp * 0.95 + 4.0 + 0.0009 * uu ** 2
        shell = (vv[:, None] >= top[None, :]) & (vv[:, None] < top[None, :] + 4.0)
        base = (np.abs(vv - (an.Bp + 55.0)) < 5.0)[:, None] & (np.abs(uu) < 190.0)[None, :]
        _set(hu[sl], lab[sl], shell | base, H["table"], None)

    # body: skin, subcutaneous fat, muscle (and, in the randomised domains, breasts and arms)
    e = an.ext
    if e is None:
        A, Ba, Bp, cvb, t_fat, p = an.A, an.Ba, an.Bp, 0.0, an.t_fat, 2
    else:
        A, Ba, Bp, cvb, t_fat, p = _body_at(an, w)
        if e.breast is not None:
            _paint_breasts(an, u, v, w, hu, lab, A, Ba, p)
    bsl = _box(u, v, -A, A, cvb - Ba, cvb + 0.93 * Bp)
    ub, vb = u[bsl[1]], v[bsl[0]]
    if cvb != 0.0:
        vb = vb - np.float32(cvb)
    hb, lb = hu[bsl], lab[bsl]
    bv = np.where(vb < 0, Ba, Bp).astype(np.float32)
    qu = _pw(ub * (1.0 / A), p)
    body = _pw(vb / bv, p)[:, None] + qu[None, :] <= 1.0
    _set(hb, lb, body, H["skin"], BODY)
    inner = _pw(vb / (bv - 2.0), p)[:, None] + _pw(ub * (1.0 / (A - 2.0)), p)[None, :] <= 1.0
    _set(hb, lb, inner, H["fat"], None)
    fv = np.where(vb < 0, Ba - 2.0 - 0.8 * t_fat, Bp - 2.0 - t_fat).astype(np.float32)
    mus = _pw(vb / fv, p)[:, None] + _pw(ub * (1.0 / (A - 2.0 - t_fat)), p)[None, :] <= 1.0
    _set(hb, lb, mus, H["muscle"], None)
    if texture is not None:
        hb += np.where(body, np.float32(H["soft_tex"]) * texture[bsl], np.float32(0.0))
    if e is not None and e.arms is not None and w < e.shoulder_w:
        _paint_arms(an, u, v, hu, lab, t_fat)

    # thoracic cavity
    ac, vc, hd = an.cavity(w)
    sl = _box(u, v, -ac, ac, vc - hd, vc + hd)
    if sl[0].stop > sl[0].start and sl[1].stop > sl[1].start:
        if e is None:
            inside = body[_sub(sl, bsl)]
        else:  # the neck can be narrower than the cavity's box
            inside = np.zeros(hu.shape, dtype=bool)
            inside[bsl] = mus
            inside = inside[sl]
        _paint_cavity(an, u[sl[1]], v[sl[0]], w, hu[sl], lab[sl], inside,
                      None if texture is None else texture[sl], ac, vc, hd, None if org is None else org[sl])
    _paint_bones(an, u, v, w, hu, lab)


def _paint_breasts(an: Anatomy, u, v, w, hu, lab, A, Ba, p) -> None:
    """Two breasts in front of the chest wall: skin over fatty-glandular tissue.  Painted
    before the body, which then covers the part of each ellipse inside it."""
    cu0, hw, depth, wc, hh = an.ext.breast
    dz = (w - wc) / hh
    if abs(dz) >= 1.0:
        return
    sc = 1.0 - dz * dz
    for side in (-1.0, 1.0):
        cu = side * cu0
        v_front = -Ba * float(max(1.0 - abs(cu / A) ** p, 0.0)) ** (1.0 / p)
        _disc(u, v, hu, lab, cu, v_front, hw, depth, an.hu["skin"], BODY, scale=sc)
        _disc(u, v, hu, lab, cu, v_front, hw - 2.0, depth - 2.0, an.hu["breast"], BODY, scale=sc)


def _paint_arms(an: Anatomy, u, v, hu, lab, t_fat) -> None:
    """Arms down: two arm cross-sections beside the chest, with the humerus."""
    H = an.hu
    ua, va, aa, ba, rh = an.ext.arms
    tf = 2.0 + 0.5 * t_fat
    for side in (-1.0, 1.0):
        cu = side * ua
        _disc(u, v, hu, lab, cu, va, aa, ba, H["skin"], BODY)
        _disc(u, v, hu, lab, cu, va, aa - 2.0, ba - 2.0, H["fat"], BODY)
        _disc(u, v, hu, lab, cu, va, aa - tf, ba - tf, H["muscle"], BODY)
        _disc(u, v, hu, lab, cu + side * 0.1 * aa, va, rh, rh, H["cortex"], BONE)
        _disc(u, v, hu, lab, cu + side * 0.1 * aa, va, rh - 3.0, rh - 3.0, H["marrow"], BONE)


def _paint_abdomen_domain(an: Anatomy, u, v, w, hu, lab, org, abdomen, ac, vc, hd) -> None:
    """Below the domes: the liver on the right (its left lobe across the midline), the spleen
    posterolateral and the stomach (wall, content and the gas at the front) anterior on the
    left, the rest of the upper abdomen between them."""
    H, e = an.hu, an.ext
    _set(hu, lab, abdomen, H["abdomen"], BODY)
    liver = abdomen & (u < an.u_m + e.liver_left)[None, :]
    _set(hu, lab, liver, H["liver"], BODY)
    if org is not None:
        org[liver] = ORGANS["liver"]
    rest = abdomen & ~liver
    w_top = an.dome_w[1]
    spleen = np.zeros_like(abdomen)
    dz = (w - (w_top - 0.5 * e.spleen_len)) / (0.5 * e.spleen_len)
    if abs(dz) < 1.0:
        spleen = rest & (_ellipse(u, v, 0.62 * ac, vc + 0.45 * hd, 0.32 * ac, 0.38 * hd) <= 1.0 - dz * dz)
        _set(hu, lab, spleen, H["spleen"], BODY)
    dz = (w - (w_top - 0.5 * e.stomach_len)) / (0.5 * e.stomach_len)
    stomach = np.zeros_like(abdomen)
    if abs(dz) < 1.0:
        sc = 1.0 - dz * dz
        cu, cv, au, av = 0.3 * ac, vc - 0.25 * hd, 0.34 * ac, 0.38 * hd
        stomach = rest & ~spleen & (_ellipse(u, v, cu, cv, au, av) <= sc)
        _set(hu, lab, stomach, H["muscle"], BODY)
        content = stomach & (_ellipse(u, v, cu, cv, max(au - 4.0, 1.0), max(av - 4.0, 1.0)) <= sc)
        _set(hu, lab, content, H["stomach"], BODY)
        if e.stomach_gas > 0.0:
            v_gas = cv - (av - 4.0) * np.sqrt(sc) + e.stomach_gas
            _set(hu, lab, content & (v < v_gas)[:, None], -1000.0, BODY)
    if org is not None:
        org[spleen] = ORGANS["spleen"]
        org[stomach] = ORGANS["stomach"]


def _sub(inner, outer):
    """Slices of box ``inner`` relative to the box ``outer`` that contains it."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _paint_cavity(an, u, v, w, hu, lab, body, texture, ac, vc, hd, org=None) -> None:
    H = an.hu
    cav = (_ellipse(u, v, 0.0, vc, ac, hd) <= 1.0) & body
    if not cav.any():
        return
    hd_ = max(hd, 1.0)
    left_side = (u >= an.u_m)[None, :]
    lung = np.zeros_like(cav)
    abdomen = np.zeros_like(cav)
    for k, side in enumerate((-1.0, 1.0)):
        sidem = left_side if side > 0 else ~left_side
        below = w < an.dome_w[k]
        if below:
            dm = _ellipse(u, v, side * 0.4 * ac, vc - 0.1 * hd_, 0.6 * ac, 0.7 * hd_) > \
                (an.dome_w[k] - w) / an.dome_depth[k]
            abdomen |= sidem & ~dm
        if an.apex_w[k] > w > -an.H:
            ap = _ellipse(u, v, side * 0.45 * ac, vc + 0.15 * hd_, 0.55 * ac, 0.6 * hd_) < \
                (an.apex_w[k] - w) / an.apex_C
            region = sidem & ap
            if below:
                region &= dm
            lung |= region
    if w <= -an.H:
        abdomen[:] = True
    abdomen &= cav
    lung &= cav & ~abdomen

    # mediastinum: central column from the sternum to the spine, plus heart and hila
    front = vc - hd_
    nu = np.clip((v - front) / max(an.v_s - front, 1.0), 0.0, 1.0)
    h = an.h_ant + (an.h_mid - an.h_ant) * np.sin(0.5 * np.pi * np.minimum(nu / 0.6, 1.0))
    h *= np.sqrt(np.clip(1.0 - ((nu - 0.75) / 0.4) ** 2, 0.0, 1.0)) ** (nu > 0.75)  # rounded posterior end
    if w <= 10.0:
        med = (np.abs(u - an.u_m)[None, :] < h[:, None]) & (v < an.v_s)[:, None] & cav & ~abdomen
    else:
        med = np.zeros_like(cav)
    # paravertebral tissue: the lungs wrap around the vertebra with a rounded contour
    para = (_ellipse(u, v, 0.0, an.v_s + 1.2 * an.rv, an.rv + 10.0, 1.9 * an.rv) <= 1.0) | \
        ((np.abs(u) < 0.5 * an.rv)[None, :] & (v > an.v_s)[:, None])
    hx, hy, hz, ha, hb, hc, ang = an.heart
    fat_ring = heart = blood = None
    heart_sl = None
    if abs(w - hz) < 1.08 * hc:
        r = 1.1 * max(ha, hb)
        heart_sl = _box(u, v, hx - r, hx + r, hy - r, hy + r)
        uu, vv = u[heart_sl[1]], v[heart_sl[0]]
        ca, sa = np.cos(ang), np.sin(ang)
        du, dv = (uu - hx)[None, :], (vv - hy)[:, None]
        p1 = du * ca - dv * sa
        p2 = du * sa + dv * ca
        q = (p1 / ha) ** 2 + (p2 / hb) ** 2
        c_sub = cav[heart_sl] if an.ext is None else cav[heart_sl] & ~abdomen[heart_sl]
        s2 = 1.0 - ((w - hz) / hc) ** 2
        heart = (q <= s2) & c_sub if s2 > 0 else np.zeros_like(c_sub)
        s2f = 1.0 - ((w - hz) / (1.08 * hc)) ** 2
        fat_ring = (q <= 1.17 * s2f) & c_sub & ~heart
        if an.contrast:
            s2b = 1.0 - ((w - hz) / (0.8 * hc)) ** 2
            q2 = (p1 / (0.8 * ha)) ** 2 + (p2 / (0.78 * hb)) ** 2
            blood = (q2 <= s2b) & heart if s2b > 0 else None
        lung[heart_sl] &= ~(heart | fat_ring)
    lung &= ~(med | para)

    # fill: soft tissue by default, then abdomen, lungs, mediastinum
    _set(hu, lab, cav, H["muscle"], BODY)
    if abdomen.any() and an.ext is not None:
        _paint_abdomen_domain(an, u, v, w, hu, lab, org, abdomen, ac, vc, hd_)
    elif abdomen.any():
        liver_side = (u < an.u_m + 25.0)[None, :]
        _set(hu, lab, abdomen & liver_side, H["liver"], BODY)
        _set(hu, lab, abdomen & ~liver_side, H["spleen"], BODY)
        if org is not None:
            org[abdomen & liver_side] = ORGANS["liver"]
            org[abdomen & ~liver_side] = ORGANS["spleen"]
        if an.gastric_bubble:
            dz = (w - (an.dome_w[1] - 22.0)) / 14.0
            if abs(dz) < 1.0:
                _disc(u, v, hu, lab, 0.45 * ac, vc - 0.2 * hd_, 32.0, 26.0, -1000.0, BODY, where=abdomen,
                      scale=1.0 - dz * dz, org=org, code=ORGANS["stomach"])
    if lung.any():
        lung_hu = (H["lung"] + H["gravity"] * np.clip((v - vc) / hd_, -1.0, 1.0))[:, None].astype(np.float32)
        lung_hu = np.broadcast_to(lung_hu, hu.shape)
        if texture is not None:
            lung_hu = lung_hu + np.float32(H["lung_tex"]) * texture
        _set(hu, lab, lung, lung_hu, LUNG)
    _set(hu, lab, med, H["med_fill"], MEDIASTINUM)
    if heart_sl is not None:
        hh, lh = hu[heart_sl], lab[heart_sl]
        _set(hh, lh, fat_ring, H["fat"], MEDIASTINUM)
        _set(hh, lh, heart, H["myocardium"], MEDIASTINUM)
        if blood is not None:
            _set(hh, lh, blood, H["blood"], None)
        if org is not None:
            org[heart_sl][heart] = ORGANS["heart"]
    for side in (-1, 1):
        hc_ = an.hilum(side)
        dz = (w - (an.w_car - 25.0)) / 28.0
        if abs(dz) < 1.0:
            _disc(u, v, hu, lab, hc_[0] - side * 4.0, hc_[1] + 8.0, 13.0, 20.0, H["hilum"], MEDIASTINUM,
                  where=cav & ~abdomen, scale=1.0 - dz * dz)
    if an.ext is not None:  # hilar and mediastinal lymph nodes
        for nu, nv, nw, r, hh_ in an.ext.nodes:
            dz = (w - nw) / hh_
            if abs(dz) < 1.0:
                _disc(u, v, hu, lab, nu, nv, r, r, H["node"], MEDIASTINUM, where=cav & ~abdomen, scale=1.0 - dz * dz)
    # esophagus, behind the trachea
    if an.dome_w[1] - 30.0 < w < 20.0:
        ve = an.trachea[1] + an.trachea[2] + 9.0
        _disc(u, v, hu, lab, an.u_m + 4.0, ve, 8.0, 6.0, H["esophagus"], MEDIASTINUM, where=cav)
        if an.esophagus_air:
            _disc(u, v, hu, lab, an.u_m + 4.0, ve, 3.0, 2.0, -1000.0, None, where=cav)


def _paint_bones(an: Anatomy, u, v, w, hu, lab) -> None:
    """Vertebra (body, arch, processes, discs) and sternum in one slice."""
    H = an.hu
    rv = an.rv
    phase = ((w - an.vert_phase) % an.vert_period) / an.vert_period
    in_disc = phase < 6.0 / an.vert_period
    if in_disc:
        _disc(u, v, hu, lab, 0.0, an.v_s, rv, 0.85 * rv, H["disc"], BODY)
    else:
        _disc(u, v, hu, lab, 0.0, an.v_s, rv, 0.85 * rv, H["cortex"], BONE)
        _disc(u, v, hu, lab, 0.0, an.v_s, rv - 2.0, 0.85 * rv - 2.0, H["marrow"], BONE)
    # neural arch and processes (posterior elements), canal with cord/CSF
    vcan = an.v_s + 0.85 * rv + 9.0
    if not in_disc:
        post = (v > an.v_s + 0.85 * rv - 1.0)[:, None] & np.ones((1, len(u)), dtype=bool)
        _disc(u, v, hu, lab, 0.0, vcan, 12.0, 12.0, H["cortex"] * 0.6, BONE, where=post)
        _disc(u, v, hu, lab, 0.0, vcan + 24.0, 4.5, 15.0, H["cortex"] * 0.6, BONE)
        for side in (-1.0, 1.0):
            _disc(u, v, hu, lab, side * (rv + 8.0), an.v_s + 0.85 * rv + 4.0, 11.0, 5.0, H["cortex"] * 0.6, BONE)
    _disc(u, v, hu, lab, 0.0, vcan, 8.0, 8.0, H["csf"], BODY)
    # sternum (manubrium wider at the top)
    hz, hc = an.heart[2], an.heart[5]
    if hz - hc + 5.0 < w < 25.0:
        ac, vc, hd = an.cavity(w)
        half_w = 22.0 if w > -45.0 else 14.0
        cst = vc - hd - 7.0
        _disc(u, v, hu, lab, 0.0, cst, half_w, 6.5, H["cortex"] * 0.8, BONE)
        _disc(u, v, hu, lab, 0.0, cst, half_w - 1.6, 4.9, H["marrow"], BONE)


# ---- tubular structures -----------------------------------------------------------------------

@dataclass
class Tubes:
    """Capsule chains in the patient frame: arrays a, b (N, 3) of (u, v, w), radii, HU, kind."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    hu: np.ndarray
    kind: list

    @classmethod
    def empty(cls) -> "Tubes":
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0), [])

    def add(self, pts, radii, hu, kind) -> None:
        pts = np.asarray(pts, dtype=float)
        radii = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
        self.a = np.vstack([self.a, pts[:-1]])
        self.b = np.vstack([self.b, pts[1:]])
        self.ra = np.concatenate([self.ra, radii[:-1]])
        self.rb = np.concatenate([self.rb, radii[1:]])
        self.hu = np.concatenate([self.hu, np.full(len(pts) - 1, float(hu))])
        self.kind += [kind] * (len(pts) - 1)

    def select(self, kind: str) -> "Tubes":
        m = np.array([k == kind for k in self.kind], dtype=bool)
        return Tubes(self.a[m], self.b[m], self.ra[m], self.rb[m], self.hu[m], [kind] * int(m.sum()))


def _bezier(p0, p1, p2, n):
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def great_vessels(an: Anatomy, rng: np.random.Generator) -> Tubes:
    """Aorta (ascending, arch, descending), SVC, pulmonary trunk and arteries."""
    H = an.hu
    t = Tubes.empty()
    hx, hy, hz, ha, hb, hc, _ = an.heart
    u_t, v_t, r_t, wall_t = an.trachea
    r = an.r_aorta
    w_arch = an.w_car + _u(rng, 15.0, 25.0)
    asc_top = np.array([u_t - _u(rng, 4.0, 14.0), v_t - r_t - r - _u(rng, 6.0, 12.0), w_arch])
    root = np.array([hx - 12.0, hy - 0.15 * hb, hz + 0.45 * hc])
    t.add([root, 0.5 * (root + asc_top) + [0, 0, 5.0], asc_top], r, H["blood"], "aorta")
    dd = an.rv + r + 3.0
    desc_top = np.array([0.72 * dd, an.v_s - 0.7 * dd, w_arch])
    ctrl = np.array([max(desc_top[0], u_t + r_t + wall_t + r + 3.0) + 8.0, v_t - 4.0, w_arch])
    arch_uv = _bezier(asc_top, ctrl, desc_top, 9)
    rise = _u(rng, 12.0, 20.0) * np.sin(np.linspace(0.0, np.pi, 9))
    arch_uv[:, 2] = w_arch + rise
    t.add(arch_uv, r, H["blood"], "aorta")
    t.add([desc_top, desc_top + [0.0, 4.0, -(an.H + 60.0 + w_arch)]], r * 0.92, H["blood"], "aorta")
    svc_u = asc_top[0] - r - 10.0
    t.add([[svc_u, asc_top[1] + 4.0, 90.0], [svc_u, asc_top[1] + 6.0, hz + 0.55 * hc]], _u(rng, 8.0, 10.0),
          H["vein"], "svc")
    pt0 = np.array([hx + 4.0, hy - 0.55 * hb, hz + 0.5 * hc])
    pb = np.array([u_t + 14.0, v_t - r_t - 12.0, an.w_car - 6.0])
    r_pa = _u(rng, 11.0, 14.0)
    t.add([pt0, pb], r_pa, H["blood"], "pulmonary")
    r_rl = 0.75 * r_pa
    t.add([pb, an.hilum(-1)], r_rl, H["blood"], "pulmonary")
    t.add([pb, an.hilum(1)], r_rl, H["blood"], "pulmonary")
    return t


def central_airways(an: Anatomy) -> Tubes:
    """Trachea and main bronchi as lumen radii (walls are added when painting)."""
    u_t, v_t, r_t, _ = an.trachea
    t = Tubes.empty()
    car = np.array([u_t, v_t, an.w_car])
    t.add([[u_t, v_t, 120.0], car], r_t, -1000.0, "trachea")
    t.add([car, an.bronchus_hilum(-1)], [0.78 * r_t, 0.7 * r_t], -1000.0, "bronchus")
    t.add([car, an.bronchus_hilum(1)], [0.7 * r_t, 0.62 * r_t], -1000.0, "bronchus")
    return t


def ribs(an: Anatomy, rng: np.random.Generator) -> tuple[Tubes, Tubes]:
    """Twelve pairs of ribs (bone) with costal cartilage, and the clavicles.

    Returns (bone, cartilage) capsule chains, radii of the cortical outline.
    """
    H = an.hu
    bone, cart = Tubes.empty(), Tubes.empty()
    dz = (an.H + 20.0) / 11.0
    for i in range(12):
        w_post = 8.0 - i * dz + rng.normal(0.0, 2.0)
        drop = _u(rng, 35.0, 60.0) * (0.6 + 0.4 * min(i, 6) / 6.0)
        r = _u(rng, 4.0, 5.5) * (0.8 if i == 0 else 1.0)
        theta_end = np.pi * (0.78 if i < 7 else (0.7 - 0.06 * (i - 7)))
        for side in (-1.0, 1.0):
            thetas = np.linspace(0.0, 1.0, 15)
            pts = []
            for f in thetas:
                w = w_post - drop * f ** 1.3
                ac, vc, hd = an.cavity(min(w, 0.0))
                th0 = np.arcsin(min(0.95, (an.rv + 14.0) / (ac + r + 2.0)))
                th = th0 + f * (theta_end - th0)
                pts.append([side * (ac + r + 2.0) * np.sin(th), vc + (hd + r + 2.0) * np.cos(th), w])
            pts = np.array(pts)
            bone.add(pts, r, H["cortex"], "rib")
            if i < 7:
                w_end = pts[-1, 2]
                ac, vc, hd = an.cavity(min(w_end, 0.0))
                th = np.linspace(theta_end, np.pi * 0.97, 4)
                cp = np.stack([side * (ac + r + 2.0) * np.sin(th), vc + (hd + r + 2.0) * np.cos(th),
                               np.linspace(w_end, w_end + 6.0, 4)], axis=1)
                cart.add(cp, r * 0.9, H["cartilage"], "cartilage")
    for side in (-1.0, 1.0):
        ac, vc, hd = an.cavity(0.0)
        pts = [[side * 22.0, vc - hd - 10.0, 18.0], [side * 0.55 * an.A, vc - hd - 4.0, 24.0],
               [side * (an.A - 30.0), vc - 0.2 * hd, 30.0]]
        bone.add(pts, _u(rng, 5.5, 7.0), H["cortex"], "clavicle")
    return bone, cart
