"""Thorax anatomy of a phantom: the label values, the patient parameters, and how they are drawn.

The anatomy lives in a patient frame in millimetres: ``u`` = x - body centre (toward the
patient's left), ``v`` = y - body centre (posterior), ``w`` = z - lung apex (superior; the
lungs span w in [-H, 0]).  An :class:`Anatomy` (with :class:`AnatomyExtras` in the randomised
domains) holds the sizes and tissue values of one patient; it is painted by
:mod:`lungcad.synthetic.anatomy_slices` (axial cross-sections) and
:mod:`lungcad.synthetic.anatomy_tubes` (tubular structures).
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
