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


def _disc(u, v, hu, lab, cu, cv, au, av, value, label, where=None, scale=1.0):
    """Paint the ellipse ((u-cu)/au)^2 + ((v-cv)/av)^2 <= scale inside its own box."""
    if scale <= 0:
        return
    r = np.sqrt(scale)
    sl = _box(u, v, cu - au * r, cu + au * r, cv - av * r, cv + av * r)
    if sl[0].stop <= sl[0].start or sl[1].stop <= sl[1].start:
        return
    m = _ellipse(u[sl[1]], v[sl[0]], cu, cv, au, av) <= scale
    if where is not None:
        m &= where[sl]
    _set(hu[sl], lab[sl], m, value, label)


def paint_slice(an: Anatomy, u: np.ndarray, v: np.ndarray, w: float, hu: np.ndarray, lab: np.ndarray,
                texture: np.ndarray | None = None) -> None:
    """Paint one axial cross-section at height ``w`` into ``hu`` and ``lab`` (ny, nx), in place.

    ``u`` (nx,) and ``v`` (ny,) are the sorted patient-frame coordinates of the columns and
    rows.  ``texture``, when given, is a smooth (ny, nx) field of unit amplitude that modulates
    the lung parenchyma (and, weakly, the soft tissue).
    """
    H = an.hu
    hu.fill(-1000.0)
    lab.fill(OUTSIDE)
    # patient table (carbon shell and base plate), label 0
    if an.table:
        sl = _box(u, v, -230.0, 230.0, an.Bp * 0.95 + 4.0, an.Bp + 61.0)
        uu, vv = u[sl[1]], v[sl[0]]
        top = an.Bp * 0.95 + 4.0 + 0.0009 * uu ** 2
        shell = (vv[:, None] >= top[None, :]) & (vv[:, None] < top[None, :] + 4.0)
        base = (np.abs(vv - (an.Bp + 55.0)) < 5.0)[:, None] & (np.abs(uu) < 190.0)[None, :]
        _set(hu[sl], lab[sl], shell | base, H["table"], None)

    # body: skin, subcutaneous fat, muscle
    bsl = _box(u, v, -an.A, an.A, -an.Ba, 0.93 * an.Bp)
    ub, vb = u[bsl[1]], v[bsl[0]]
    hb, lb = hu[bsl], lab[bsl]
    bv = np.where(vb < 0, an.Ba, an.Bp).astype(np.float32)
    qu = (ub * (1.0 / an.A)) ** 2
    body = ((vb / bv) ** 2)[:, None] + qu[None, :] <= 1.0
    _set(hb, lb, body, H["skin"], BODY)
    inner = ((vb / (bv - 2.0)) ** 2)[:, None] + ((ub * (1.0 / (an.A - 2.0))) ** 2)[None, :] <= 1.0
    _set(hb, lb, inner, H["fat"], None)
    fv = np.where(vb < 0, an.Ba - 2.0 - 0.8 * an.t_fat, an.Bp - 2.0 - an.t_fat).astype(np.float32)
    mus = ((vb / fv) ** 2)[:, None] + ((ub * (1.0 / (an.A - 2.0 - an.t_fat))) ** 2)[None, :] <= 1.0
    _set(hb, lb, mus, H["muscle"], None)
    if texture is not None:
        hb += np.where(body, np.float32(H["soft_tex"]) * texture[bsl], np.float32(0.0))

    # thoracic cavity
    ac, vc, hd = an.cavity(w)
    sl = _box(u, v, -ac, ac, vc - hd, vc + hd)
    if sl[0].stop > sl[0].start and sl[1].stop > sl[1].start:
        _paint_cavity(an, u[sl[1]], v[sl[0]], w, hu[sl], lab[sl], body[_sub(sl, bsl)],
                      None if texture is None else texture[sl], ac, vc, hd)
    _paint_bones(an, u, v, w, hu, lab)


def _sub(inner, outer):
    """Slices of box ``inner`` relative to the box ``outer`` that contains it."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _paint_cavity(an, u, v, w, hu, lab, body, texture, ac, vc, hd) -> None:
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
        c_sub = cav[heart_sl]
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
    if abdomen.any():
        liver_side = (u < an.u_m + 25.0)[None, :]
        _set(hu, lab, abdomen & liver_side, H["liver"], BODY)
        _set(hu, lab, abdomen & ~liver_side, H["spleen"], BODY)
        if an.gastric_bubble:
            dz = (w - (an.dome_w[1] - 22.0)) / 14.0
            if abs(dz) < 1.0:
                _disc(u, v, hu, lab, 0.45 * ac, vc - 0.2 * hd_, 32.0, 26.0, -1000.0, BODY, where=abdomen,
                      scale=1.0 - dz * dz)
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
    for side in (-1, 1):
        hc_ = an.hilum(side)
        dz = (w - (an.w_car - 25.0)) / 28.0
        if abs(dz) < 1.0:
            _disc(u, v, hu, lab, hc_[0] - side * 4.0, hc_[1] + 8.0, 13.0, 20.0, H["hilum"], MEDIASTINUM,
                  where=cav & ~abdomen, scale=1.0 - dz * dz)
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
