"""Image-domain acquisition artefacts of the randomised domains: motion blur at the heart and
the diaphragm, metal (surgical clips, sternal wires, a pacemaker with its lead) with star-like
streaks, and beam-hardening streaks between dense bones.

All act in place on a float32 HU volume (z, y, x) before the reconstruction kernel
(:func:`lungcad.synthetic.scanner.acquire_domain` calls them).  Strengths come from the
:class:`~lungcad.synthetic.scanner.Scanner` (drawn from
:data:`lungcad.synthetic.domain.RANDOMIZED` ``.acquisition``); sizes are in mm.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from lungcad.synthetic import domain as _dom

_ACQ = _dom.RANDOMIZED.acquisition
_OUTSIDE, _BODY, _BONE, _MEDIASTINUM, _LUNG = 0, 1, 2, 3, 4       # lungcad.synthetic.anatomy labels
_HEART, _LIVER, _SPLEEN, _STOMACH = 1, 2, 3, 4                    # scanner.ORGANS


# ---- motion -----------------------------------------------------------------------------------

def _shift_axis(a: np.ndarray, shift_vox: float, axis: int) -> np.ndarray:
    """``a`` shifted by a fractional number of voxels along ``axis`` (linear, edges clamped)."""
    n = a.shape[axis]
    pos = np.arange(n) - shift_vox
    pos = np.clip(pos, 0.0, n - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (pos - i0).astype(np.float32)
    shp = [1] * a.ndim
    shp[axis] = n
    f = f.reshape(shp)
    return np.take(a, i0, axis=axis) * (1.0 - f) + np.take(a, i1, axis=axis) * f


def _motion_box(img, mask, motion_mm, spacing, axis, z_keep=None):
    """Blur ``img`` along ``axis`` in a band around the surface of ``mask``: positions of a
    sinusoidal motion of amplitude ``motion_mm`` (arcsine-distributed, so edges double)."""
    if not mask.any():
        return
    margin = [int(np.ceil((2.0 * motion_mm + 4.0) / s)) + 1 for s in spacing]
    idx = np.nonzero(mask.any(axis=(1, 2)))[0]
    z0, z1 = int(idx[0]), int(idx[-1]) + 1
    if z_keep is not None:
        z0 = max(z0, z_keep[0])
        z1 = min(z1, z_keep[1])
    iy = np.nonzero(mask[z0:z1].any(axis=(0, 2)))[0]
    ix = np.nonzero(mask[z0:z1].any(axis=(0, 1)))[0]
    if len(iy) == 0 or z1 <= z0:
        return
    sl = (slice(max(z0 - margin[0], 0), min(z1 + margin[0], img.shape[0])),
          slice(max(int(iy[0]) - margin[1], 0), min(int(iy[-1]) + 1 + margin[1], img.shape[1])),
          slice(max(int(ix[0]) - margin[2], 0), min(int(ix[-1]) + 1 + margin[2], img.shape[2])))
    m = mask[sl]
    box = img[sl]
    # signed distance to the organ's surface (mm), in the box only
    d_out = ndi.distance_transform_edt(~m, sampling=spacing).astype(np.float32)
    d_in = ndi.distance_transform_edt(m, sampling=spacing).astype(np.float32)
    band = np.clip(1.0 - np.abs(d_out - d_in) / np.float32(motion_mm + 3.0), 0.0, 1.0)
    if z_keep is not None:   # only within the kept slices (the dome, not the whole liver)
        zz = np.arange(sl[0].start, sl[0].stop)
        band[(zz < z_keep[0] - margin[0]) | (zz >= z_keep[1] + margin[0])] = 0.0
    n = 9
    acc = np.zeros_like(box)
    for th in np.linspace(-0.5 * np.pi, 0.5 * np.pi, n):
        acc += _shift_axis(box, 0.5 * motion_mm * np.sin(th) / spacing[axis], axis)
    acc *= np.float32(1.0 / n)
    acc -= box
    acc *= band
    box += acc


def motion_blur(img: np.ndarray, organs: np.ndarray, motion_mm: float, *, spacing) -> None:
    """Cardiac motion (along y, the heart's antero-posterior beat) in a band around the heart's
    surface and respiratory motion (along z) around the domes (the top 60 mm of the liver,
    spleen and stomach), of amplitude ``motion_mm``; doubled contours where it is large."""
    if motion_mm <= 0:
        return
    _motion_box(img, organs == _HEART, motion_mm, spacing, axis=1)
    dome = (organs == _LIVER) | (organs == _SPLEEN) | (organs == _STOMACH)
    zs = np.nonzero(dome.any(axis=(1, 2)))[0]
    if len(zs):
        top = int(zs[-1]) + 1            # world z grows with the index: the dome is the top
        keep = (max(top - int(np.ceil(60.0 / spacing[0])), 0), top)
        _motion_box(img, dome, motion_mm, spacing, axis=0, z_keep=keep)


# ---- streaks ----------------------------------------------------------------------------------

def star_streaks(shape_yx, centre_yx, amp_hu: float, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Star-like streaks through a metal object at ``centre_yx`` (pixels): 8-16 lines at random
    angles, dark and bright, of width 1-2 pixels, fading as 25 mm / (r + 25 mm)."""
    ny, nx = shape_yx
    y = (np.arange(ny, dtype=np.float32) - np.float32(centre_yx[0])) * np.float32(pixel_mm)
    x = (np.arange(nx, dtype=np.float32) - np.float32(centre_yx[1])) * np.float32(pixel_mm)
    r = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    out = np.zeros((ny, nx), dtype=np.float32)
    k = int(rng.integers(8, 17))
    for th, s, a, w in zip(rng.uniform(0.0, np.pi, k), rng.choice([-1.0, 1.0], k, p=[0.6, 0.4]),
                           rng.uniform(0.5, 1.0, k), rng.uniform(1.0, 2.0, k) * pixel_mm):
        d = y[:, None] * np.float32(np.cos(th)) - x[None, :] * np.float32(np.sin(th))
        out += np.float32(s * a) * np.exp(-(d * d) / np.float32(2.0 * w * w))
    out *= np.float32(amp_hu) * (np.float32(25.0) / (r + np.float32(25.0)))
    return out


def bone_streaks(img: np.ndarray, labels: np.ndarray, streak_hu: float, *, spacing,
                 rng: np.random.Generator) -> None:
    """Beam-hardening streaks: a dark band with bright flanks along the segment joining each
    pair of the four largest bone cross-sections of a slice, strongest where the slice holds
    the most bone (the shoulders): ``streak_hu`` at the 80th percentile of bone area per slice.
    """
    if streak_hu <= 0:
        return
    ps = float(spacing[1])
    px_area = ps * float(spacing[2])
    bone = (labels & np.uint8(0x3F)) == _BONE
    per_slice = bone.sum(axis=(1, 2)) * px_area
    nz_ = per_slice[per_slice > 0]
    if len(nz_) == 0:
        return
    ref = max(float(np.percentile(nz_, 80)), 1.0)
    w = _dom.band_uniform(rng, _ACQ.streak_width_mm)
    ny, nx = img.shape[1:]
    reach = int(np.ceil(4.5 * w / ps))
    for k in np.nonzero(per_slice > 0)[0]:
        lab, n = ndi.label(bone[k])
        if n < 2:
            continue
        areas = np.bincount(lab.ravel())[1:] * px_area
        big = [i for i in np.argsort(areas)[::-1][:4] if areas[i] >= 40.0]
        if len(big) < 2:
            continue
        cents = ndi.center_of_mass(bone[k], lab, [i + 1 for i in big])
        amp = streak_hu * min(per_slice[k] / ref, 1.5)
        sl_img = img[k]
        for a_i in range(len(big)):
            for b_i in range(a_i + 1, len(big)):
                f = float(np.clip(np.sqrt(areas[big[a_i]] * areas[big[b_i]]) / 400.0, 0.3, 1.5))
                p, q = np.array(cents[a_i]), np.array(cents[b_i])
                y0, y1 = int(max(min(p[0], q[0]) - reach, 0)), int(min(max(p[0], q[0]) + reach + 1, ny))
                x0, x1 = int(max(min(p[1], q[1]) - reach, 0)), int(min(max(p[1], q[1]) + reach + 1, nx))
                yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(p[0]))[:, None]
                xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(p[1]))[None, :]
                e = q - p
                L2 = max(float(e @ e), 1e-6)
                t = np.clip((yy * np.float32(e[0]) + xx * np.float32(e[1])) / np.float32(L2), 0.0, 1.0)
                d = np.sqrt((yy - t * np.float32(e[0])) ** 2 + (xx - t * np.float32(e[1])) ** 2) * np.float32(ps)
                taper = np.sqrt(np.maximum(np.sin(np.pi * t), 0.0))
                prof = -np.exp(-d * d / np.float32(2.0 * w * w)) + \
                    np.float32(0.35) * np.exp(-(d - np.float32(2.5 * w)) ** 2 / np.float32(2.0 * w * w))
                sl_img[y0:y1, x0:x1] += np.float32(amp * f) * taper * prof


# ---- metal ------------------------------------------------------------------------------------

def _disc(img2d, yc, xc, r_mm, ps, value):
    r = r_mm / ps
    y0, y1 = int(max(np.floor(yc - r - 1), 0)), int(min(np.ceil(yc + r + 2), img2d.shape[0]))
    x0, x1 = int(max(np.floor(xc - r - 1), 0)), int(min(np.ceil(xc + r + 2), img2d.shape[1]))
    if y1 <= y0 or x1 <= x0:
        return
    yy = np.arange(y0, y1)[:, None] - yc
    xx = np.arange(x0, x1)[None, :] - xc
    occ = np.clip(r + 0.5 - np.sqrt(yy * yy + xx * xx), 0.0, 1.0).astype(np.float32)
    sub = img2d[y0:y1, x0:x1]
    np.maximum(sub, sub + occ * (np.float32(value) - sub), out=sub)


def metal(img: np.ndarray, labels: np.ndarray, organs: np.ndarray | None, scanner, *, spacing,
          rng: np.random.Generator) -> None:
    """Surgical clips at the hilum, sternal wires and a pacemaker in the left anterior chest wall
    with its lead into the heart (``scanner.metal``), at ``scanner.metal_hu`` before the kernel,
    each with star streaks of up to ``scanner.metal_streak_hu``."""
    sz, ps = float(spacing[0]), float(spacing[1])
    nz, ny, nx = img.shape
    base = labels & np.uint8(0x3F)
    lung_z = np.nonzero((base == _LUNG).any(axis=(1, 2)))[0]
    if len(lung_z) == 0:
        return
    zl0, zl1 = int(lung_z[0]), int(lung_z[-1])      # bottom (base) and top (apex) slices

    def z_at(frac_from_top):
        return int(round(zl1 - frac_from_top * (zl1 - zl0)))

    def body_centre_x(k):
        cols = np.nonzero((base[k] != _OUTSIDE).any(axis=0))[0]
        return 0.5 * (cols[0] + cols[-1]) if len(cols) else 0.5 * nx, \
            (0.5 * (cols[-1] - cols[0]) if len(cols) else 0.25 * nx)

    hu = scanner.metal_hu
    amp = scanner.metal_streak_hu
    thin = min(1.0, 2.0 / sz)           # partial volume of a 2 mm object in a thick slice
    if "clips" in scanner.metal:
        for _ in range(int(rng.integers(2, 7))):
            k = z_at(float(rng.uniform(0.35, 0.7)))
            med = base[k] == _MEDIASTINUM
            border = med & ndi.binary_dilation(base[k] == _LUNG, iterations=3)
            cand = np.argwhere(border)
            if len(cand) == 0:
                continue
            yc, xc = cand[int(rng.integers(len(cand)))].astype(float)
            th = float(rng.uniform(0.0, np.pi))
            length = float(rng.uniform(4.0, 7.0))
            for t in np.linspace(-0.5, 0.5, 9):
                _disc(img[k], yc + t * length / ps * np.sin(th), xc + t * length / ps * np.cos(th), 0.7, ps,
                      hu * thin)
            img[k] += star_streaks((ny, nx), (yc, xc), 0.4 * amp, ps, rng)
    if "wires" in scanner.metal:
        for frac in np.linspace(0.1, 0.55, int(rng.integers(3, 7))):
            k = z_at(float(frac))
            cx, _ = body_centre_x(k)
            bone = np.argwhere((base[k] == _BONE) & (np.abs(np.arange(nx) - cx) * ps < 20.0)[None, :])
            if len(bone) == 0:
                continue
            bone = bone[bone[:, 0] <= bone[:, 0].min() + 20.0 / ps]      # the sternum: most anterior
            yc, xc = bone.mean(axis=0)
            ry = max(0.5 * np.ptp(bone[:, 0]) * ps, 4.0) + 2.0
            rx = max(0.5 * np.ptp(bone[:, 1]) * ps, 8.0) + 3.0
            for th in np.linspace(0.0, 2.0 * np.pi, int(2.0 * np.pi * max(rx, ry) / (0.5 * ps)) + 1):
                _disc(img[k], yc + ry / ps * np.sin(th), xc + rx / ps * np.cos(th), 0.5, ps, hu * thin)
            img[k] += star_streaks((ny, nx), (yc, xc), 0.5 * amp, ps, rng)
    if "pacemaker" in scanner.metal:
        kc = z_at(float(rng.uniform(0.05, 0.25)))
        cx, half = body_centre_x(kc)
        xc = cx + 0.6 * half                                  # patient left is +x (LPS)
        col = np.nonzero(base[kc, :, int(np.clip(round(xc), 0, nx - 1))] != _OUTSIDE)[0]
        if len(col):
            yc = col[0] + 10.0 / ps                           # under the skin of the front
            hx, hy, hz = (float(rng.uniform(20.0, 26.0)), float(rng.uniform(3.5, 5.0)),
                          float(rng.uniform(20.0, 26.0)))
            yy = (np.arange(ny)[:, None] - yc) * ps
            xx = (np.arange(nx)[None, :] - xc) * ps
            can = ((np.abs(xx) / hx) ** 4 + (np.abs(yy) / hy) ** 4) <= 1.0
            streak = star_streaks((ny, nx), (yc, xc), amp, ps, rng)
            for k in range(max(kc - int(hz / sz), 0), min(kc + int(hz / sz) + 1, nz)):
                img[k][can] = np.maximum(img[k][can], hu)
                img[k] += streak
            # the lead: to the subclavian vein, down the superior vena cava into the right heart
            if organs is not None and (organs == _HEART).any():
                hz_idx, hy_idx, hx_idx = np.argwhere(organs == _HEART).mean(axis=0)
                h_top = np.nonzero((organs == _HEART).any(axis=(1, 2)))[0][-1]
            else:
                hz_idx = z_at(0.7)
                hy_idx, hx_idx = np.argwhere(base[hz_idx] == _MEDIASTINUM).mean(axis=0) \
                    if (base[hz_idx] == _MEDIASTINUM).any() else (0.5 * ny, cx)
                h_top = hz_idx + 30.0 / sz
            pts = np.array([[kc, yc, xc],
                            [kc + 15.0 / sz, yc + 25.0 / ps, cx + 30.0 / ps],
                            [h_top + 25.0 / sz, hy_idx - 10.0 / ps, cx - 20.0 / ps],
                            [h_top, hy_idx - 5.0 / ps, cx - 20.0 / ps],
                            [hz_idx - 15.0 / sz, hy_idx - 15.0 / ps, hx_idx + 15.0 / ps]])
            mm = np.array([sz, ps, ps])
            for a, b in zip(pts[:-1], pts[1:]):
                n = int(np.linalg.norm((b - a) * mm) / 0.5) + 2
                for t in np.linspace(0.0, 1.0, n):
                    p = a + t * (b - a)
                    k = int(round(p[0]))
                    if 0 <= k < nz:
                        _disc(img[k], p[1], p[2], 1.0, ps, hu * thin)
