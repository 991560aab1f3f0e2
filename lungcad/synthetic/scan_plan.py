"""The scan of a phantom, drawn before anything is painted: matrix, spacing and field of view,
the scan range, and where the patient lies in the scan (the patient frame of
:mod:`lungcad.synthetic.anatomy` in world mm).

In the randomised domains the first draws of a seed are the scanner, the anatomy and this
plan (:func:`draw_domain_factors` gives them without painting).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lungcad.synthetic import domain as _dom
from lungcad.synthetic import scanner as _scanner
from lungcad.synthetic.anatomy import Anatomy, body_extent, draw_anatomy_domain, draw_body_half_width

#: Slice steps (mm) drawn when none is given, and their probabilities.
SLICE_STEPS = (1.0, 1.25, 2.5, 5.0, 8.0)
_STEP_P = np.array([0.15, 0.2, 0.25, 0.25, 0.15])


@dataclass
class _Frame:
    """Patient frame origin in world mm: body centre (cx, cy) and the lung apex height."""

    cx: float
    cy: float
    z_apex: float

    def to_world(self, uvw) -> np.ndarray:
        return np.asarray(uvw, dtype=float) + np.array([self.cx, self.cy, self.z_apex])


def _check_shape(shape) -> tuple:
    """(slices or None, rows, columns), with at least 32 rows and columns."""
    if len(shape) != 3:
        raise ValueError(f"shape expected (slices or None, rows, columns). Received shape={shape}")
    nz, ny, nx = shape
    if ny is None or nx is None or int(ny) < 32 or int(nx) < 32:
        raise ValueError(f"shape needs at least 32 rows and columns. Received shape={shape}")
    return nz, int(ny), int(nx)


def _draw_geometry(rng, shape, spacing, slice_mm):
    """Shape (z, y, x), spacing (z, y, x) and the field of view of the scan."""
    nz, ny, nx = _check_shape(shape)
    A = draw_body_half_width(rng)
    fov = float(np.clip(2.0 * A + rng.uniform(12.0, 70.0), 300.0, 460.0))
    if spacing is None:
        ps = fov / min(ny, nx)
        if slice_mm is not None:
            step = float(slice_mm)
        elif nz is not None:
            ok = [(s, p) for s, p in zip(SLICE_STEPS, _STEP_P) if 200.0 <= int(nz) * s <= 480.0]
            if ok:
                steps, p = zip(*ok)
                p = np.array(p) / np.sum(p)
                step = float(steps[int(rng.choice(len(steps), p=p))])
            else:
                step = float(np.clip(340.0 / int(nz), 0.5, 10.0))
        else:
            step = float(SLICE_STEPS[int(rng.choice(len(SLICE_STEPS), p=_STEP_P))])
        spacing = (step, ps, ps)
    else:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing expected 3 positive mm values (z, y, x). Received spacing={spacing}")
        if slice_mm is not None:
            spacing = (float(slice_mm),) + spacing[1:]
    if spacing[0] <= 0:
        raise ValueError(f"slice_mm must be > 0. Received slice_mm={slice_mm}")
    if abs(spacing[1] - spacing[2]) > 1e-6:
        raise ValueError(f"in-plane spacing must be square. Received spacing={spacing}")
    fov = min(ny, nx) * spacing[1]
    if fov < 250.0:
        raise ValueError(f"the field of view (rows x pixel size) must be at least 250 mm to hold a chest. "
                         f"Received {min(ny, nx)} x {spacing[1]:.3f} mm = {fov:.0f} mm")
    if nz is None:
        nz = max(8, int(round(float(rng.uniform(300.0, 380.0)) / spacing[0])))
    nz = int(nz)
    if nz < 4:
        raise ValueError(f"shape needs at least 4 slices. Received shape={shape}")
    return (nz, ny, nx), spacing, min(A, 0.5 * fov - 14.0)


def _draw_domain(rng, domain, shape, spacing, slice_mm, *, contrast=None, noise_hu=None, psf_mm=None):
    """Scanner, anatomy and scan geometry of a randomised phantom, the first draws of its seed."""
    sc = _draw_scanner_domain(rng, domain, contrast=contrast, noise_hu=noise_hu, psf_mm=psf_mm)
    an = draw_anatomy_domain(rng, domain=domain, contrast=sc.contrast,
                             blood_hu=sc.blood_hu if sc.contrast and sc.blood_hu > 0 else None)
    shape, spacing, sc, plan = _draw_geometry_domain(rng, an, sc, shape, spacing, slice_mm)
    return sc, an, shape, spacing, plan


def draw_domain_factors(seed: int, *, domain: str, shape=(None, 512, 512), spacing=None,
                        slice_mm: float | None = None) -> dict:
    """The factors :func:`generate_phantom` would draw for ``seed`` in a randomised ``domain``
    (anatomy, scan range and field of view, scanner), without painting anything: cheap.

    Returns a JSON-ready dict: ``anatomy`` (as in ``volume.meta["anatomy"]``), ``scanner``
    (the scanner's meta), ``shape`` and ``spacing``.
    """
    if _dom.check_domain(domain) == "default":
        raise ValueError("draw_domain_factors expected domain 'randomized' or 'shifted'. Received 'default'")
    rng = np.random.default_rng(seed)
    sc, an, shape, spacing, plan = _draw_domain(rng, domain, shape, spacing, slice_mm)
    return {"anatomy": {**an.ext.factors, **plan["factors"]}, "scanner": sc.meta(), "shape": list(shape),
            "spacing": list(spacing)}


def _draw_scanner_domain(rng, domain: str, *, contrast, noise_hu, psf_mm):
    """The scanner of a randomised domain, with the arguments that force a part of it."""
    sc = _scanner.draw_scanner_domain(rng, domain)
    if contrast is not None and bool(contrast) != sc.contrast:
        blood = _dom.band_uniform(rng, _dom.RANDOMIZED.acquisition.contrast_blood_hu) if contrast else 0.0
        sc = dataclasses.replace(sc, contrast=bool(contrast), blood_hu=blood)
    if noise_hu is not None:
        sc = dataclasses.replace(sc, noise_hu=float(noise_hu))
    if psf_mm is not None:
        sc = dataclasses.replace(sc, psf_mm=float(psf_mm))
    return sc


def _draw_geometry_domain(rng, an: Anatomy, sc, shape, spacing, slice_mm):
    """Shape, spacing and scan plan of a randomised scan: a field of view that fits the body
    (arms and breasts included; cut at the sides with ``fov_cut_p``), the slice increment and
    thickness of the scanner (``slice_mm`` or ``spacing[0]`` force both), and the scan range:
    from the apex or from the neck, to the upper abdomen or to the lung bases."""
    R = _dom.RANDOMIZED.anatomy
    nz, ny, nx = _check_shape(shape)
    half, front, back = body_extent(an)
    fov = 2.0 * max(half, front + 8.0, back + 70.0 if an.table else back) + float(rng.uniform(10.0, 50.0))
    cut = _dom.band_uniform(rng, R.fov_cut_mm) if rng.random() < R.fov_cut_p else 0.0
    if cut > 0.0:
        fov = min(fov, 2.0 * (an.A - cut))
    fov = float(np.clip(fov, 250.0, R.fov_max_mm))
    thickness, inc = sc.slice_thickness_mm, sc.increment_mm
    if spacing is None:
        ps = fov / min(ny, nx)
        if slice_mm is not None:
            thickness = inc = float(slice_mm)
    else:
        spacing = tuple(float(x) for x in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing expected 3 positive mm values (z, y, x). Received spacing={spacing}")
        if abs(spacing[1] - spacing[2]) > 1e-6:
            raise ValueError(f"in-plane spacing must be square. Received spacing={spacing}")
        ps = spacing[1]
        thickness = inc = float(slice_mm if slice_mm is not None else spacing[0])
        if min(ny, nx) * ps < 250.0:
            raise ValueError(f"the field of view (rows x pixel size) must be at least 250 mm to hold a chest. "
                             f"Received {min(ny, nx)} x {ps:.3f} mm = {min(ny, nx) * ps:.0f} mm")
    if not inc > 0:
        raise ValueError(f"slice_mm must be > 0. Received slice_mm={slice_mm}")
    sc = dataclasses.replace(sc, slice_thickness_mm=float(thickness), increment_mm=float(inc))
    neck = bool(rng.random() < R.start_at_neck_p)
    bases = bool(rng.random() < R.stop_at_bases_p)
    top = _dom.band_uniform(rng, R.neck_mm if neck else R.top_margin_mm)          # above the apex
    bottom = -an.H + (_dom.band_uniform(rng, R.bases_cut_mm) if bases
                      else -_dom.band_uniform(rng, R.abdomen_mm))                   # w of the last slice
    if nz is None:
        nz = max(8, int(round((top - bottom) / inc)) + 1)
    nz = int(nz)
    if nz < 4:
        raise ValueError(f"shape needs at least 4 slices. Received shape={shape}")
    fov_r = 0.5 * min(ny, nx) * ps
    plan = {"thickness_mm": float(thickness), "top_w": top, "bottom_w": bottom, "anchor": "bottom" if bases else "top",
            "fov_r": fov_r,
            "factors": {"fov_mm": round(2.0 * fov_r, 2), "fov_cut_mm": round(cut, 2), "start_at_neck": neck,
                        "stop_at_bases": bases, "scan_top_above_apex_mm": round(top, 2),
                        "scan_bottom_w_mm": round(bottom, 2)}}
    return (nz, ny, nx), (float(inc), float(ps), float(ps)), sc, plan


def _scan_centre(rng, an: Anatomy, ny: int, nx: int, ps: float):
    """In-plane origin (x, y) of the scan and the body centre (cx, cy) in it, world mm."""
    ox = -0.5 * nx * ps + float(rng.uniform(-10.0, 10.0))
    oy = -0.5 * ny * ps + float(rng.uniform(-10.0, 10.0))
    cx = ox + 0.5 * nx * ps + float(rng.uniform(-8.0, 8.0))
    cy = oy + 0.5 * ny * ps - 0.5 * (an.Bp - an.Ba) + float(rng.uniform(-8.0, 8.0)) - 6.0
    return ox, oy, cx, cy


def _place_scan_domain(rng, an: Anatomy, shape, spacing, plan):
    """World origin, patient frame and field-of-view mask of a randomised scan.  With the
    number of slices given, the scan keeps its start (its end when it stops at the bases)."""
    nz, ny, nx = shape
    step, ps = spacing[0], spacing[1]
    ox, oy, cx, cy = _scan_centre(rng, an, ny, nx, ps)
    oz = float(rng.uniform(-450.0, 50.0))
    length = (nz - 1) * step
    z_apex = oz + length - plan["top_w"] if plan["anchor"] == "top" else oz - plan["bottom_w"]
    fov_r = plan["fov_r"] * float(rng.uniform(0.97, 1.0))
    xs = ps * np.arange(nx) - 0.5 * (nx - 1) * ps
    ys = ps * np.arange(ny) - 0.5 * (ny - 1) * ps
    fov_mask = (xs[None, :] ** 2 + ys[:, None] ** 2) <= fov_r ** 2
    return (ox, oy, oz), _Frame(cx, cy, z_apex), fov_mask


def _place_scan(rng, an: Anatomy, shape, spacing):
    """World origin of the scan, the patient frame in it, and the field-of-view mask."""
    nz, ny, nx = shape
    step, ps = spacing[0], spacing[1]
    ox, oy, cx, cy = _scan_centre(rng, an, ny, nx, ps)
    length = (nz - 1) * step
    oz = float(rng.uniform(-450.0, 50.0))
    top = oz + length
    if length >= an.H + 40.0:
        z_apex = top - float(rng.uniform(10.0, min(45.0, length - an.H - 25.0)))
    else:  # the scan covers part of the lungs (or just all of them)
        lo, hi = sorted((length - an.H - 10.0, 10.0))
        z_apex = top - float(rng.uniform(lo, hi))
    fov_r = 0.5 * min(ny, nx) * ps * float(rng.uniform(0.97, 1.0))
    xs = ps * np.arange(nx) - 0.5 * (nx - 1) * ps
    ys = ps * np.arange(ny) - 0.5 * (ny - 1) * ps
    fov_mask = (xs[None, :] ** 2 + ys[:, None] ** 2) <= fov_r ** 2
    return (ox, oy, oz), _Frame(cx, cy, z_apex), fov_mask
