"""How the scanner of a real CT background images, measured from the scan itself.

:func:`estimate_host_psf` and :func:`estimate_host_noise` measure the in-plane blur from the
edge spread of the body/air boundary (an error function fitted across the skin), and the
noise level and texture from the noise power spectrum (NPS) of detrended regions of
homogeneous soft tissue (muscle, liver, fat).  :func:`lungcad.synthetic.insertion.insert_lesions`
blurs the lesions it inserts with the one and gives them noise of the other.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungcad.volume import CTVolume

log = logging.getLogger(__name__)

__all__ = ["HostNoise", "HostPSF", "estimate_host_noise", "estimate_host_psf"]


@dataclass(frozen=True)
class HostPSF:
    """The host scan's blur.

    Attributes
    ----------
    sigma_mm : in-plane Gaussian sigma of the edge spread in the image (what an edge looks
        like: the reconstruction kernel and the pixel together)
    blur_sigma_mm : the Gaussian sigma that, applied to a lesion already integrated over the
        host's pixels (a box of one pixel, variance pixel**2 / 12), gives ``sigma_mm``
    slice_thickness_mm : the slice profile along z (a box of this thickness)
    n_edges : edge profiles that went into the estimate (0: the default was used)
    spread_mm : inter-quartile range of the per-profile estimates
    """

    sigma_mm: float
    blur_sigma_mm: float
    slice_thickness_mm: float
    n_edges: int
    spread_mm: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def _skin_edge(t, a, b, t0, s, c, w):
    """Air (a) to skin (a + b) at t0, then skin to fat (a + b + c) at t0 + w, both blurred by s."""
    from scipy.special import erf

    k = 1.0 / (np.sqrt(2.0) * s)
    return a + b * 0.5 * (1.0 + erf((t - t0) * k)) + c * 0.5 * (1.0 + erf((t - t0 - w) * k))


def _body_mask_2d(img: np.ndarray, threshold_hu: float) -> np.ndarray:
    m = img > threshold_hu
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
    return ndi.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


def _sample_slices(volume: CTVolume, n: int) -> np.ndarray:
    nz = volume.shape[0]
    lo, hi = int(0.08 * nz), max(int(0.92 * nz), int(0.08 * nz) + 1)
    return np.unique(np.linspace(lo, hi - 1, min(n, hi - lo)).round().astype(int))


def _slice_thickness(volume: CTVolume) -> float:
    t = volume.meta.get("slice_thickness") if isinstance(volume.meta, dict) else None
    try:
        t = float(t)
    except (TypeError, ValueError):
        t = math.nan
    return t if math.isfinite(t) and t > 0 else float(volume.spacing[0])


def estimate_host_psf(volume: CTVolume, *, threshold_hu: float = -500.0, n_slices: int = 12,
                      max_edges: int = 300, default_sigma_mm: float = 0.8) -> HostPSF:
    """Measure the in-plane blur of a scan from the edge spread of the body/air boundary.

    In ``n_slices`` slices, the outer contour of the body (the largest component above
    ``threshold_hu``) is followed.  At up to ``max_edges`` points of it, every pixel within
    4 mm along the edge and -5 to +5 mm across it is placed at its distance from the edge line
    (the slanted-edge method: an edge at an angle to the grid samples its spread at many
    sub-pixel offsets), and a model of air, skin and fat is fitted: two error-function steps of
    the same sigma, air to skin and, a skin thickness later, skin to fat (a single step fitted
    across the thin bright skin would come out too sharp).  Profiles whose air side is not air
    (< -850 HU, flat) or whose tissue side is not soft tissue (-250 to 250 HU) are left out: the
    table, clothing, arms.  The estimate is the median sigma; when fewer than 20 profiles
    qualify, ``default_sigma_mm``.  A blur below about 0.6 pixel cannot be told from the
    pixel's own step and comes out too small.

    Returns
    -------
    HostPSF
    """
    from scipy.optimize import curve_fit

    sp = np.asarray(volume.spacing, dtype=float)
    px = float(np.sqrt(sp[1] * sp[2]))
    sig = []
    slices = _sample_slices(volume, n_slices)
    per_slice = max(max_edges // max(len(slices), 1), 1)
    for k in slices:
        img = volume.hu[k].astype(np.float32)
        body = _body_mask_2d(img, threshold_hu)
        if body.sum() < 1000:
            continue
        edge = body & ~ndi.binary_erosion(body)
        sm = ndi.gaussian_filter(img, 1.0)
        gy = ndi.sobel(sm, axis=0) / sp[1]
        gx = ndi.sobel(sm, axis=1) / sp[2]
        pts = np.argwhere(edge)
        if len(pts) == 0:
            continue
        pts = pts[np.linspace(0, len(pts) - 1, min(per_slice, len(pts))).astype(int)]
        wy, wx = int(math.ceil(7.0 / sp[1])), int(math.ceil(7.0 / sp[2]))
        oy, ox = np.mgrid[-wy:wy + 1, -wx:wx + 1]
        for j, i in pts:
            g = np.array([gy[j, i], gx[j, i]])
            norm = float(np.hypot(*g))
            if norm < 1e-3 or j < wy or i < wx or j + wy >= img.shape[0] or i + wx >= img.shape[1]:
                continue
            n_mm = g / norm                              # the edge normal, towards the body
            # every pixel near the edge, at its distance from the edge line: an edge at an angle to
            # the grid samples the edge spread at many sub-pixel offsets (the slanted-edge method)
            d = oy * sp[1] * n_mm[0] + ox * sp[2] * n_mm[1]
            s_t = -oy * sp[1] * n_mm[1] + ox * sp[2] * n_mm[0]
            sel = (np.abs(s_t) <= 4.0) & (d >= -5.0) & (d <= 5.0)
            dd, vv = d[sel], img[j + oy[sel], i + ox[sel]]
            air, tis = vv[dd <= -3.0], vv[dd >= 2.0]
            if len(air) < 4 or len(tis) < 4:
                continue
            if not (air.mean() < -850 and air.std() < 40 and -250 < tis.mean() < 250 and tis.std() < 60):
                continue
            try:
                p, _ = curve_fit(_skin_edge, dd, vv, p0=(air.mean(), tis.mean() - air.mean() + 50.0, 0.0, 0.8,
                                                         -50.0, 1.5),
                                 bounds=([-1200, 300, -2.5, 0.05, -400.0, 0.3], [-700, 1500, 2.5, 3.0, 150.0, 4.0]),
                                 maxfev=600)
            except (RuntimeError, ValueError):
                continue
            sig.append(float(p[3]))
    thick = _slice_thickness(volume)
    if len(sig) < 20:
        log.warning("estimate_host_psf: %d usable body edges in series %s; using sigma %.2f mm",
                    len(sig), volume.series_uid, default_sigma_mm)
        s = float(default_sigma_mm)
        return HostPSF(s, _blur_sigma(s, px), thick, 0, math.nan)
    s = float(np.median(sig))
    q1, q3 = np.percentile(sig, [25, 75])
    return HostPSF(s, _blur_sigma(s, px), thick, len(sig), float(q3 - q1))


def _blur_sigma(sigma_mm: float, pixel_mm: float) -> float:
    return float(np.sqrt(max(sigma_mm ** 2 - pixel_mm ** 2 / 12.0, 0.0)))


@dataclass(frozen=True)
class HostNoise:
    """The host scan's noise: level, in-plane texture (radial NPS) and slice-to-slice correlation.

    Attributes
    ----------
    std_hu : noise standard deviation in soft tissue
    freq_per_mm : (K,) radial spatial frequencies (cycles/mm) of ``nps``
    nps : (K,) radially averaged noise power spectrum (HU^2 mm^2)
    z_correlation : correlation of the noise of neighbouring slices
    n_rois : homogeneous regions measured (0: the default was used)
    """

    std_hu: float
    freq_per_mm: np.ndarray
    nps: np.ndarray
    z_correlation: float
    n_rois: int

    @property
    def peak_freq_per_mm(self) -> float:
        """Frequency of the NPS maximum (low for a soft kernel, high for a sharp one)."""
        return float(self.freq_per_mm[int(np.argmax(self.nps))]) if len(self.nps) else math.nan

    def to_dict(self) -> dict:
        return {"std_hu": round(self.std_hu, 3), "z_correlation": round(self.z_correlation, 3),
                "peak_freq_per_mm": round(self.peak_freq_per_mm, 4), "n_rois": self.n_rois}

    def synthesize(self, shape, spacing, rng: np.random.Generator) -> np.ndarray:
        """Noise of this level and texture, float32 of ``shape`` (z, y, x) at ``spacing`` (z, y, x) mm.

        Each slice is white noise filtered by the square root of the NPS (normalised so that the
        standard deviation is ``std_hu``); slices are chained with ``z_correlation`` (AR(1)).
        """
        nz, ny, nx = (int(s) for s in shape)
        my, mx = max(ny, 32), max(nx, 32)
        fy = np.fft.fftfreq(my, d=float(spacing[1]))
        fx = np.fft.rfftfreq(mx, d=float(spacing[2]))
        f = np.hypot(fy[:, None], fx[None, :])
        if len(self.nps) >= 2:
            h = np.sqrt(np.maximum(np.interp(f, self.freq_per_mm, self.nps), 0.0))
        else:
            h = np.ones_like(f)
        h[0, 0] = 0.0
        # rfft2 keeps half of the spectrum: weigh the columns that stand for two
        w = np.full(h.shape[1], 2.0)
        w[0] = 1.0
        if mx % 2 == 0:
            w[-1] = 1.0
        h /= max(float(np.sqrt((h ** 2 * w[None, :]).sum() / (my * mx))), 1e-12)
        out = np.empty((nz, ny, nx), dtype=np.float32)
        a = float(np.clip(self.z_correlation, 0.0, 0.95))
        prev = None
        for k in range(nz):
            white = rng.standard_normal((my, mx))
            n = np.fft.irfft2(np.fft.rfft2(white) * h, s=(my, mx))[:ny, :nx]
            prev = n if prev is None else a * prev + np.sqrt(1.0 - a * a) * n
            out[k] = prev
        out *= np.float32(self.std_hu)
        return out


def _detrend(roi: np.ndarray) -> np.ndarray:
    """An ROI minus its least-squares plane."""
    ny, nx = roi.shape
    yy, xx = np.mgrid[:ny, :nx]
    A = np.stack([np.ones(roi.size), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(A, roi.ravel(), rcond=None)
    return roi - (A @ coef).reshape(roi.shape)


def estimate_host_noise(volume: CTVolume, *, roi_mm: float = 16.0, tissue_hu=(-200.0, 200.0),
                        max_range_hu: float = 60.0, n_slices: int = 16, default_std_hu: float = 15.0
                        ) -> HostNoise:
    """Measure the noise of a scan in regions of homogeneous soft tissue.

    Square regions of ``roi_mm`` are tiled (overlapping by half) over ``n_slices`` slices; a region qualifies when
    it lies inside the body (2 mm in) and its smoothed image (3 mm) is soft tissue
    (``tissue_hu``) that varies by less than ``max_range_hu`` (no fat/muscle border).  Each
    is detrended (a plane) and its 2-D NPS taken; regions whose variance exceeds twice the
    median (structure) are dropped.  The NPS is averaged and radially binned; ``std_hu`` is
    the square root of the mean variance.  The correlation of the same region's residuals in
    the next slice gives ``z_correlation``.

    Returns
    -------
    HostNoise
    """
    sp = np.asarray(volume.spacing, dtype=float)
    ry = max(int(round(roi_mm / sp[1])), 8)
    rx = max(int(round(roi_mm / sp[2])), 8)
    var, spectra, corr = [], [], []
    lo_hu, hi_hu = tissue_hu
    for k in _sample_slices(volume, n_slices):
        img = volume.hu[k].astype(np.float32)
        body = ndi.binary_erosion(_body_mask_2d(img, -500.0), iterations=max(int(round(2.0 / sp[1])), 1))
        sm = ndi.gaussian_filter(img, (3.0 / sp[1], 3.0 / sp[2]))
        nxt = volume.hu[k + 1].astype(np.float32) if k + 1 < volume.shape[0] else None
        for y0 in range(0, img.shape[0] - ry + 1, max(ry // 2, 1)):
            for x0 in range(0, img.shape[1] - rx + 1, max(rx // 2, 1)):
                sl = np.s_[y0:y0 + ry, x0:x0 + rx]
                roi = img[sl]
                if not body[sl].all():
                    continue
                s_roi = sm[sl]
                if s_roi.min() < lo_hu or s_roi.max() > hi_hu or float(np.ptp(s_roi)) > max_range_hu:
                    continue
                r = _detrend(roi.astype(float))
                var.append(float(r.var()))
                spectra.append(np.abs(np.fft.fft2(r)) ** 2 * (sp[1] * sp[2]) / (ry * rx))
                if nxt is not None:
                    r2 = _detrend(nxt[sl].astype(float))
                    denom = float(np.sqrt(r.var() * r2.var()))
                    corr.append(float((r * r2).mean() / denom) if denom > 0 else math.nan)
                else:
                    corr.append(math.nan)
    if len(var) < 5:
        log.warning("estimate_host_noise: %d homogeneous regions in series %s; using %.1f HU white noise",
                    len(var), volume.series_uid, default_std_hu)
        return HostNoise(float(default_std_hu), np.zeros(0), np.zeros(0), 0.0, 0)
    var = np.asarray(var)
    keep = var <= 2.0 * np.median(var)
    nps2 = np.mean(np.asarray(spectra)[keep], axis=0)
    dof = (ry * rx) / max(ry * rx - 3, 1)                 # the plane took 3 degrees of freedom
    std = float(np.sqrt(var[keep].mean() * dof))
    fy = np.fft.fftfreq(ry, d=sp[1])
    fx = np.fft.fftfreq(rx, d=sp[2])
    f = np.hypot(fy[:, None], fx[None, :]).ravel()
    df = 1.0 / (max(ry * sp[1], rx * sp[2]))
    bins = np.floor(f / df + 0.5).astype(int)
    nb = int(bins.max()) + 1
    cnt = np.bincount(bins, minlength=nb)
    tot = np.bincount(bins, weights=nps2.ravel(), minlength=nb)
    ok = cnt > 0
    freq = (np.arange(nb) * df)[ok]
    nps = tot[ok] / cnt[ok]
    if len(nps) > 1:
        nps[0] = nps[1]                                    # the mean was removed: DC carries nothing
    c = np.asarray(corr)[keep]
    zc = float(np.nanmedian(c)) if np.isfinite(c).any() else 0.0
    return HostNoise(std, freq, nps, float(np.clip(zc, 0.0, 0.95)), int(keep.sum()))
