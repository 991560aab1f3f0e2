"""Axial cross-sections of a phantom's thorax, painted one slice at a time.

Cross-sections that change slowly along z (body layers, breasts and arms, thoracic cavity,
lungs, mediastinum, heart, hila and lymph nodes, the upper abdomen below the domes, spine,
sternum) are painted from ellipse tests whose terms are separable in u and v, in the patient
frame of :mod:`lungcad.synthetic.anatomy`.
"""
from __future__ import annotations

import numpy as np

from lungcad.synthetic.anatomy import BODY, BONE, LUNG, MEDIASTINUM, ORGANS, OUTSIDE, Anatomy


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
