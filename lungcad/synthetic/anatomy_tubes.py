"""Tubular structures of a phantom's thorax: 3-D capsule chains in the patient frame of
:mod:`lungcad.synthetic.anatomy` (aorta and great vessels, trachea and main bronchi, ribs with
their costal cartilage, clavicles).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungcad.synthetic.anatomy import Anatomy, _u


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
