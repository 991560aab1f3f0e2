"""Lesions inserted into real CT backgrounds, and hard negatives mined from real anatomy.

A real scan without reads becomes training data in three steps:

* :func:`estimate_host_psf` and :func:`estimate_host_noise` measure how the host scanner
  images: the in-plane blur from the edge spread of the body/air boundary (an error function
  fitted across the skin), and the noise level and texture from the noise power spectrum
  (NPS) of detrended regions of homogeneous soft tissue (muscle, liver, fat);
* :func:`insert_lesions` draws lesions with :mod:`lungcad.synthetic.lesions` (solid,
  part-solid, ground-glass, calcified; isolated or juxta-pleural), renders each on a fine grid
  in world mm, integrates it over the host's voxels (the host's pixel and slice thickness are
  its partial volume), blurs the lesion's contribution with the host PSF, and gives the
  replaced tissue noise of the host's texture, scaled so that the noise level stays the
  host's.  Lesions go inside the host's lung mask, away from known lesions and each other;
* :func:`mine_background_negatives` picks look-alikes from the real anatomy: vessel
  crossings and bifurcations (bright blobs in the lung), airway walls, and points of the
  lung mask's edge beside the spine and the mediastinum and on the diaphragm.

Known lesions of a background (a scan without reads is unknown, not healthy) are kept away
from with an exclusions table (:func:`read_exclusions`): ``series`` (a SeriesInstanceUID or a
series folder name), ``coordX, coordY, coordZ`` (world mm, LPS) and ``diameter_mm``.  The two
lesions that ``../shared/data/real/backgrounds/PROVENANCE.md`` marks in the POPI scan ship in
``lungcad/synthetic/data/background_exclusions.csv`` (:func:`default_exclusions`).

Coordinates are world mm (x, y, z), LPS; voxel indices appear only inside functions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lungcad.errors import InputError
from lungcad.synthetic.lesions import (LESION_COLUMNS, LesionGeometry, build_geometry, complete_spec,
                                       lesion_fields, malignancy_probability)
from lungcad.synthetic.raster import Grid
from lungcad.volume import CTVolume, voxel_to_world, world_to_voxel

log = logging.getLogger(__name__)

__all__ = ["EXCLUSION_COLUMNS", "HostNoise", "HostPSF", "NEGATIVE_KINDS", "default_exclusions",
           "estimate_host_noise", "estimate_host_psf", "exclusions_for", "insert_lesions",
           "mine_background_negatives", "montage", "read_exclusions"]

#: Columns of an exclusions table (``series``: SeriesInstanceUID or series folder name).
EXCLUSION_COLUMNS = ["series", "coordX", "coordY", "coordZ", "diameter_mm"]
#: Kinds of mined hard negatives and their default shares.
NEGATIVE_KINDS = {"vessel": 0.4, "airway-wall": 0.15, "spine-edge": 0.15, "mediastinal-edge": 0.15,
                  "diaphragm": 0.15}
_DATA = Path(__file__).resolve().parent / "data"


# ------------------------------------------------------------------------------ host PSF

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


# ---------------------------------------------------------------------------- host noise

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


# ----------------------------------------------------------------------------- exclusions

def read_exclusions(path: str | Path) -> pd.DataFrame:
    """An exclusions CSV (columns :data:`EXCLUSION_COLUMNS`; ``seriesuid`` is accepted for
    ``series``; lines starting with ``#`` are comments).

    Raises
    ------
    InputError
        The file cannot be read or lacks a column.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, comment="#", dtype={"series": str, "seriesuid": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read the exclusions CSV: {e}") from e
    if "series" not in df and "seriesuid" in df:
        df = df.rename(columns={"seriesuid": "series"})
    missing = [c for c in EXCLUSION_COLUMNS if c not in df]
    if missing:
        raise InputError(path, f"exclusions CSV: expected columns {EXCLUSION_COLUMNS} (series is a "
                               f"SeriesInstanceUID or a series folder name). Missing {missing}; "
                               f"found {list(df.columns)}")
    out = df[EXCLUSION_COLUMNS].copy()
    out["series"] = out["series"].astype(str).str.strip()
    for c in EXCLUSION_COLUMNS[1:]:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    bad = out[["coordX", "coordY", "coordZ"]].isna().any(axis=1)
    if bad.any():
        raise InputError(path, f"exclusions CSV: row {int(np.flatnonzero(bad)[0]) + 1} has no numeric "
                               f"coordX, coordY, coordZ")
    return out.reset_index(drop=True)


def default_exclusions() -> pd.DataFrame:
    """The known lesions of the shared backgrounds (the POPI scan's two, from PROVENANCE.md)."""
    return read_exclusions(_DATA / "background_exclusions.csv")


def exclusions_for(table: pd.DataFrame | None, *, series_uid: str, names: Sequence[str] = ()
                   ) -> pd.DataFrame:
    """Rows of an exclusions table that belong to a series: ``series`` equal to its UID or to
    one of ``names`` (its folder name, file stem, path relative to the root)."""
    cols = ["coordX", "coordY", "coordZ", "diameter_mm"]
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=cols, dtype=float)
    keys = {str(series_uid)} | {str(n) for n in names if n}
    sel = table[table["series"].astype(str).isin(keys)]
    return sel[cols].astype(float).reset_index(drop=True)


def _exclusion_array(exclude) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) centres and (N,) radii (mm; 0 when unknown) of points or a table."""
    if exclude is None:
        return np.zeros((0, 3)), np.zeros(0)
    if isinstance(exclude, pd.DataFrame):
        if len(exclude) == 0:
            return np.zeros((0, 3)), np.zeros(0)
        xyz = exclude[["coordX", "coordY", "coordZ"]].to_numpy(float)
        r = (np.nan_to_num(exclude["diameter_mm"].to_numpy(float), nan=0.0) / 2.0
             if "diameter_mm" in exclude else np.zeros(len(xyz)))
        return xyz, r
    xyz = np.asarray(exclude, dtype=float).reshape(-1, 3)
    return xyz, np.zeros(len(xyz))


# ------------------------------------------------------------------------------- geometry

def _index_frame(volume: CTVolume):
    """World <-> "index mm" (mm along the voxel axes, voxel (0,0,0) at 0), for any orthonormal
    direction.  Returns (to_frame(xyz), grid of the whole volume in that frame)."""
    d = np.asarray(volume.direction, dtype=float)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ValueError(f"insert_lesions: the direction matrix of series {volume.series_uid} is not "
                         f"orthonormal. Received {d.round(4).tolist()}")
    origin = np.asarray(volume.origin, dtype=float)

    def to_frame(xyz):
        return (np.asarray(xyz, dtype=float) - origin) @ d      # = D^T (p - o), row-wise

    grid = Grid(origin=(0.0, 0.0, 0.0), spacing=tuple(volume.spacing), shape=volume.shape)
    return to_frame, grid


def _geometry_in_frame(g: LesionGeometry, to_frame) -> LesionGeometry:
    return dataclasses.replace(
        g, centre=to_frame(g.centre),
        spheres=[(to_frame(c), r) for c, r in g.spheres],
        spikes=[(to_frame(a), to_frame(b), r0, r1) for a, b, r0, r1 in g.spikes],
        halo=[(to_frame(c), r) for c, r in g.halo],
        core=None if g.core is None else (to_frame(g.core[0]), g.core[1]))


def _render_on_host(geom_f: LesionGeometry, grid: Grid, *, thickness_mm: float, margin_mm: float,
                    fine_xy_mm: float = 0.35, fine_z_mm: float = 0.5):
    """Integrate a lesion (in the index frame) over the host's voxels.

    The lesion is rendered on a grid finer by whole factors (in-plane pixels of at most
    ``fine_xy_mm``, slices of at most ``fine_z_mm``); the in-plane pixels are box averages and
    each host slice averages the fine slices within ``thickness_mm`` of its centre (the slice
    profile).  Returns (host box slices, occupancy O, O * HU, O * keep-brighter), or None.
    """
    sz, sy, sx = grid.spacing
    ext = geom_f.extent + margin_mm
    c = geom_f.centre
    lo = np.floor((c - ext) / np.array([sx, sy, sz])).astype(int)          # x, y, z index
    hi = np.ceil((c + ext) / np.array([sx, sy, sz])).astype(int) + 1
    shape_xyz = np.array(grid.shape[::-1])
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape_xyz)
    if np.any(hi - lo < 1):
        return None
    nx, ny, nz = (hi - lo).tolist()
    fx, fy = max(int(math.ceil(sx / fine_xy_mm)), 1), max(int(math.ceil(sy / fine_xy_mm)), 1)
    fz = max(int(math.ceil(sz / fine_z_mm)), 1)
    dzf = sz / fz
    n_t = max(int(round(thickness_mm / dzf)), 1)        # fine slices in one slice profile
    nzf = (nz - 1) * fz + n_t
    z0f = lo[2] * sz - 0.5 * (n_t - 1) * dzf            # the first fine slice centre (frame mm)
    fine = Grid(origin=(lo[0] * sx - 0.5 * (fx - 1) * sx / fx, lo[1] * sy - 0.5 * (fy - 1) * sy / fy, z0f),
                spacing=(dzf, sy / fy, sx / fx), shape=(nzf, ny * fy, nx * fx))
    f = lesion_fields(fine, geom_f)
    if f is None:
        return None
    sl, occ, value, keep = f
    O_f = np.zeros(fine.shape, dtype=np.float32)
    OV_f = np.zeros(fine.shape, dtype=np.float32)
    OK_f = np.zeros(fine.shape, dtype=np.float32)
    O_f[sl] = occ
    OV_f[sl] = occ * value
    OK_f[sl] = occ * keep

    def integrate(a):
        a = a.reshape(nzf, ny, fy, nx, fx).mean(axis=(2, 4))
        cs = np.concatenate([np.zeros((1, ny, nx), np.float64), np.cumsum(a, axis=0, dtype=np.float64)])
        starts = np.arange(nz) * fz
        return ((cs[starts + n_t] - cs[starts]) / n_t).astype(np.float32)

    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, integrate(O_f), integrate(OV_f), integrate(OK_f)


def _distance_inside(mask: np.ndarray, spacing) -> tuple[np.ndarray, tuple]:
    """Distance (mm) from each lung voxel to the nearest non-lung voxel, on the lung's box."""
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    pad = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, mask.shape))
    return ndi.distance_transform_edt(mask[pad], sampling=spacing).astype(np.float32), pad


# ------------------------------------------------------------------------------ insertion

def _draw_given(rng: np.random.Generator, nodule_diameter_mm) -> dict:
    d = float(np.exp(rng.uniform(np.log(nodule_diameter_mm[0]), np.log(nodule_diameter_mm[1]))))
    return {"kind": "nodule", "diameter_mm": d,
            "location": "juxta-pleural" if rng.random() < 0.35 else "isolated"}


def insert_lesions(volume: CTVolume, *, rng: np.random.Generator, n: int = 3,
                   lesions: Sequence[Mapping[str, Any]] | None = None, exclude_xyz_mm=None,
                   exclude_radius_mm: float = 30.0, lung_mask: np.ndarray | None = None,
                   psf: HostPSF | None = None, noise: HostNoise | None = None,
                   nodule_diameter_mm=(4.0, 30.0), contrast: bool = False, texture: bool = True,
                   min_separation_mm: float = 10.0, max_tries: int = 300) -> tuple[CTVolume, pd.DataFrame, np.ndarray]:
    """Insert lesions into a real (or any) CT volume, with the host's blur and noise.

    Parameters
    ----------
    volume : the host scan
    rng : the random generator (the same seed and host give the same result)
    n : number of lesions when ``lesions`` is None: nodules of ``nodule_diameter_mm`` (log-uniform),
        35 % juxta-pleural, texture and shape drawn by :func:`~lungcad.synthetic.lesions.complete_spec`
    lesions : list of dict, optional
        Exactly these lesions; each may give ``kind``, ``texture`` (solid, part-solid,
        ground-glass, calcified), ``location`` (``isolated`` or ``juxta-pleural``), ``shape``
        and ``diameter_mm``; the rest is drawn.
    exclude_xyz_mm : (N, 3) world points, or a table with coordX, coordY, coordZ[, diameter_mm]
        Known lesions: a lesion's centre stays farther than ``exclude_radius_mm`` + its radius
        + the known lesion's radius from each.
    lung_mask : bool (z, y, x), optional
        Default: :func:`lungcad.lungmask.segment_lungs`.  Lesions are clipped to it.
    psf, noise : the host's, optional (default: estimated)
    contrast : lesion enhancement as in a contrast-enhanced scan
    texture : the lesions' internal density variation (False: uniform lesions, for measurements)
    min_separation_mm : gap between inserted lesions (beyond their radii)
    max_tries : placement attempts per lesion; a lesion that finds no place is left out (logged)

    Returns
    -------
    (CTVolume, DataFrame, ndarray)
        The new volume (a copy; ``meta["inserted_lesions"]`` counts them), the lesion table
        (columns :data:`lungcad.synthetic.lesions.LESION_COLUMNS`; ``diameter_mm`` is the
        equivalent-sphere diameter of the rendered, clipped volume) and the boolean lesion mask
        (voxels at least half filled).

    Notes
    -----
    With the host's image H, the lesion's occupancy O and HU L integrated over the host's
    voxels, and B the in-plane Gaussian of ``psf.blur_sigma_mm``, the new image is::

        H (1 - B*O) + B*(O L) + sqrt(1 - (1 - B*O)^2) N

    where N is noise of the host's level and texture: the host's noise is kept where the
    lesion does not replace tissue, and the sum keeps the noise variance the host's.
    Ground glass does not darken what is brighter in the host (vessels run through it).
    """
    from lungcad.lungmask import segment_lungs

    if lung_mask is None:
        lung_mask = segment_lungs(volume.hu, spacing_zyx=volume.spacing, direction=volume.direction).mask
    lung_mask = np.asarray(lung_mask, dtype=bool)
    if lung_mask.shape != volume.shape:
        raise ValueError(f"lung_mask: expected the volume's shape {volume.shape}. Received {lung_mask.shape}")
    if int(n) < 0:
        raise ValueError(f"n: expected a number of lesions >= 0. Received n={n!r}")
    psf = estimate_host_psf(volume) if psf is None else psf
    noise = estimate_host_noise(volume) if noise is None else noise
    given = [dict(g) for g in lesions] if lesions is not None else \
        [_draw_given(rng, nodule_diameter_mm) for _ in range(int(n))]
    for g in given:
        if g.get("location", "isolated") not in ("isolated", "juxta-pleural"):
            raise ValueError(f"insert_lesions: location expected 'isolated' or 'juxta-pleural'. "
                             f"Received location={g.get('location')!r}")
    hu = volume.hu.astype(np.float32)
    out_mask = np.zeros(volume.shape, dtype=bool)
    rows = []
    sp = np.asarray(volume.spacing, dtype=float)
    to_frame, grid = _index_frame(volume)
    if not lung_mask.any():
        log.warning("insert_lesions: empty lung mask in series %s; nothing inserted", volume.series_uid)
        new = dataclasses.replace(volume, hu=volume.hu.copy(), meta={**volume.meta, "inserted_lesions": 0})
        return new, pd.DataFrame(columns=LESION_COLUMNS), out_mask
    d_in, pad = _distance_inside(lung_mask, sp)
    off = np.array([p.start for p in pad])
    ex_xyz, ex_r = _exclusion_array(exclude_xyz_mm)
    placed: list[tuple[np.ndarray, float]] = []
    blur_px = (psf.blur_sigma_mm / sp[1], psf.blur_sigma_mm / sp[2])
    margin = 3.0 * psf.blur_sigma_mm + 2.0 * float(sp.max())
    for idx, g in enumerate(given):
        g = dict(g)
        g.setdefault("location", "isolated")
        spec = complete_spec(rng, g, nodule_diameter_mm=nodule_diameter_mm)
        R = 0.5 * spec.diameter_mm
        centre = _place(rng, spec, R, d_in, off, volume, lung_mask, hu, ex_xyz, ex_r, exclude_radius_mm,
                        placed, min_separation_mm, max_tries)
        if centre is None:
            log.warning("insert_lesions: no place for a %.1f mm %s %s lesion in series %s", spec.diameter_mm,
                        spec.location, spec.texture, volume.series_uid)
            continue
        geom = build_geometry(rng, spec, centre, contrast=contrast)
        if not texture:
            geom.texture_hu = 0.0
        r = _render_on_host(_geometry_in_frame(geom, to_frame), grid, thickness_mm=psf.slice_thickness_mm,
                            margin_mm=margin)
        if r is None:
            continue
        box, O, OV, OK = r
        O *= lung_mask[box]
        OV *= lung_mask[box]
        OK *= lung_mask[box]
        if float(O.sum()) <= 0:
            continue
        host = hu[box]
        with np.errstate(invalid="ignore", divide="ignore"):
            L = np.where(O > 0, OV / np.maximum(O, 1e-6), 0.0).astype(np.float32)
            kb = np.where(O > 0, OK / np.maximum(O, 1e-6), 0.0) > 0.5
        if kb.any():                                   # ground glass keeps the host's vessels
            smooth = ndi.gaussian_filter(host, (0.0, 0.7 / sp[1], 0.7 / sp[2]))
            L = np.where(kb, np.maximum(L, smooth), L)
        Ob = ndi.gaussian_filter(O, (0.0,) + blur_px, truncate=3.0) if psf.blur_sigma_mm > 0 else O.copy()
        Ab = ndi.gaussian_filter(O * L, (0.0,) + blur_px, truncate=3.0) if psf.blur_sigma_mm > 0 else O * L
        np.clip(Ob, 0.0, 1.0, out=Ob)
        gain = np.sqrt(np.clip(1.0 - (1.0 - Ob) ** 2, 0.0, 1.0)).astype(np.float32)
        N = noise.synthesize(O.shape, volume.spacing, rng)
        hu[box] = host * (1.0 - Ob) + Ab + gain * N
        m = O >= 0.5
        out_mask[box] |= m
        placed.append((np.asarray(centre, dtype=float), float(geom.extent)))
        vol_mm3 = float(O.sum()) * float(np.prod(sp))
        kk, jj, ii = np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij")
        w = O / O.sum()
        com_zyx = np.array([(w * kk).sum(), (w * jj).sum(), (w * ii).sum()])
        com = volume.voxel_to_world(com_zyx)
        d_eq = float((6.0 * vol_mm3 / np.pi) ** (1.0 / 3.0))
        p = malignancy_probability(d_eq, spec.texture, spec.shape)
        rows.append({"lesion_id": len(rows), "patient_id": volume.patient_id, "seriesuid": volume.series_uid,
                     "coordX": com[0], "coordY": com[1], "coordZ": com[2], "z": com_zyx[0], "y": com_zyx[1],
                     "x": com_zyx[2], "diameter_mm": d_eq, "intended_diameter_mm": spec.diameter_mm,
                     "volume_mm3": vol_mm3, "kind": spec.kind, "texture": spec.texture,
                     "location": spec.location, "shape": spec.shape, "malignancy_prob": p,
                     "malignant": bool(rng.random() < p)})
    info = np.iinfo(np.int16)
    new_hu = np.clip(np.rint(hu), info.min, info.max).astype(np.int16)
    meta = {**volume.meta, "inserted_lesions": len(rows), "host_psf": psf.to_dict(), "host_noise": noise.to_dict()}
    new = CTVolume(hu=new_hu, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                   patient_id=volume.patient_id, series_uid=volume.series_uid, meta=meta)
    return new, pd.DataFrame(rows, columns=LESION_COLUMNS), out_mask


def _place(rng, spec, R, d_in, off, volume, lung_mask, hu, ex_xyz, ex_r, exclude_radius_mm, placed,
           min_separation_mm, max_tries):
    """A world centre for a lesion of radius R, or None."""
    sp = np.asarray(volume.spacing, dtype=float)
    if spec.location == "juxta-pleural":
        cand = np.flatnonzero((d_in >= 0.3 * R) & (d_in <= 0.75 * R) & (d_in > 0))
    else:
        cand = np.flatnonzero(d_in >= R + 2.0)
    if len(cand) == 0:
        return None
    nz = volume.shape[0]
    ext_vox = np.ceil((R + 2.0) / sp).astype(int)
    for k in rng.choice(cand, size=min(max_tries, len(cand)), replace=False):
        zyx = np.array(np.unravel_index(k, d_in.shape)) + off
        if zyx[0] - ext_vox[0] < 1 or zyx[0] + ext_vox[0] > nz - 2:
            continue                                       # keep the lesion inside the scan in z
        c = volume.voxel_to_world(zyx + rng.uniform(-0.4, 0.4, 3))
        if len(ex_xyz) and np.any(np.linalg.norm(ex_xyz - c, axis=1) < exclude_radius_mm + R + ex_r):
            continue
        if any(np.linalg.norm(c - pc) < R + pe + min_separation_mm for pc, pe in placed):
            continue
        # what the lesion covers: the host's lung, not a large vessel or the heart
        lo = np.maximum(zyx - ext_vox, 0)
        hi = np.minimum(zyx + ext_vox + 1, volume.shape)
        sub = tuple(slice(a, b) for a, b in zip(lo, hi))
        kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        ball = ((kk - zyx[0]) * sp[0]) ** 2 + ((jj - zyx[1]) * sp[1]) ** 2 + ((ii - zyx[2]) * sp[2]) ** 2 <= R * R
        h, m = hu[sub][ball], lung_mask[sub][ball]
        if m.sum() == 0:
            continue
        if np.mean(h[m] > -400) > 0.15:
            continue
        if spec.location == "juxta-pleural":
            outside = h[~m]
            if len(outside) == 0 or np.mean(outside > -300) < 0.8:
                continue                                   # the edge must be the chest wall, not air
        return c
    return None


# ------------------------------------------------------------------------- hard negatives

def _boundary(mask: np.ndarray) -> np.ndarray:
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    return mask & ~ndi.binary_erosion(mask, structure=st, border_value=1)


def mine_background_negatives(volume: CTVolume, lung_mask: np.ndarray, *, rng: np.random.Generator,
                              n: int = 32, exclude_xyz_mm=None, min_distance_mm: float = 30.0,
                              kinds: Mapping[str, float] | None = None, min_separation_mm: float = 8.0
                              ) -> pd.DataFrame:
    """Hard negatives from the real anatomy of a scan: look-alikes that are not lesions.

    Kinds (:data:`NEGATIVE_KINDS`, shares in ``kinds``):

    * ``vessel``: bright blobs in the lung, local maxima of a difference of Gaussians
      (1.5 and 4 mm) above -500 HU: vessel crossings and bifurcations, which a tube alone
      does not make (a blob responds more than a tube), ranked by the response;
    * ``airway-wall``: tissue (> -600 HU) within 2 mm of airway lumen (the darkest 1 % of the
      lung after a 1 mm smoothing, between -960 and -900 HU; components of 30 voxels or more);
    * ``spine-edge`` and ``mediastinal-edge``: points of the lung mask's in-plane edge in its
      medial quarter (towards the midline between the lungs), posterior third (beside the
      spine) or not, where the tissue beyond the edge is dense (> -300 HU);
    * ``diaphragm``: points of the mask's edge whose neighbour below (the feet) is not lung.

    Every point is in the lung mask (the edge kinds on its edge), at least
    ``min_distance_mm`` plus the known lesion's radius from each point of ``exclude_xyz_mm``
    (world points or a table with coordX, coordY, coordZ[, diameter_mm]), and
    ``min_separation_mm`` from the others.  A scan without reads is unknown: look at what is
    mined (:func:`montage`).

    Returns
    -------
    DataFrame with coordX, coordY, coordZ (world mm), diameter_mm (NaN for edges), kind,
    score and z, y, x (voxel).
    """
    cols = ["coordX", "coordY", "coordZ", "diameter_mm", "kind", "score", "z", "y", "x"]
    lung = np.asarray(lung_mask, dtype=bool)
    if lung.shape != volume.shape:
        raise ValueError(f"lung_mask: expected the volume's shape {volume.shape}. Received {lung.shape}")
    kinds = dict(NEGATIVE_KINDS if kinds is None else kinds)
    unknown = set(kinds) - set(NEGATIVE_KINDS)
    if unknown:
        raise ValueError(f"kinds: expected among {sorted(NEGATIVE_KINDS)}. Received {sorted(unknown)}")
    if not lung.any() or n <= 0:
        return pd.DataFrame(columns=cols)
    sp = np.asarray(volume.spacing, dtype=float)
    box = ndi.find_objects(lung.astype(np.uint8))[0]
    off = np.array([b.start for b in box])
    m = lung[box]
    h = volume.hu[box].astype(np.float32)
    pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}   # kind -> (zyx, score, diam)

    if kinds.get("vessel", 0) > 0:
        s1 = ndi.gaussian_filter(h, 1.5 / sp)
        dog = s1 - ndi.gaussian_filter(h, 4.0 / sp)
        size = np.maximum(np.round(5.0 / sp).astype(int) | 1, 1)
        peak = (dog == ndi.maximum_filter(dog, size=tuple(size))) & m & (s1 > -500) & (dog > 50)
        zyx = np.argwhere(peak)
        sc = dog[peak]
        pools["vessel"] = (zyx, sc, np.full(len(zyx), 5.0))
    if kinds.get("airway-wall", 0) > 0:
        sm1 = ndi.gaussian_filter(h, 1.0 / sp)
        # airway lumen is the darkest air of the lung (partial volume makes it lighter on thick slices)
        lumen = (sm1 < min(-900.0, max(-960.0, float(np.percentile(sm1[m], 1.0))))) & m
        lab, nl = ndi.label(lumen)
        if nl:
            sizes = ndi.sum(lumen, lab, index=np.arange(1, nl + 1))
            lumen = np.isin(lab, 1 + np.flatnonzero(sizes >= 30))
            it = max(int(round(2.0 / sp[1])), 1)
            st = np.zeros((3, 3, 3), bool)
            st[1] = ndi.generate_binary_structure(2, 1)
            near = ndi.binary_dilation(lumen, structure=st, iterations=it)
            wall = near & ~lumen & m & (h > -600)
            zyx = np.argwhere(wall)
            pools["airway-wall"] = (zyx, h[wall], np.full(len(zyx), math.nan))
    edge_kinds = [k for k in ("spine-edge", "mediastinal-edge", "diaphragm") if kinds.get(k, 0) > 0]
    if edge_kinds:
        edge = _boundary(m)
        # the tissue beyond an in-plane edge: the densest HU within 2 mm outside the mask
        r = max(int(round(2.0 / sp[1])), 1)
        dense = ndi.maximum_filter(np.where(m, -1024.0, h), size=(1, 2 * r + 1, 2 * r + 1)) > -300
        zyx = np.argwhere(edge & dense)
        if len(zyx):
            # medial quarter per slice: distance from the midline between the lungs
            xs_world = voxel_to_world(zyx + off, spacing=volume.spacing, origin=volume.origin,
                                      direction=volume.direction)
            lx = np.full(m.shape[0], np.nan)
            hx = np.full(m.shape[0], np.nan)
            ly = np.full(m.shape[0], np.nan)
            hy = np.full(m.shape[0], np.nan)
            for k in np.unique(zyx[:, 0]):
                sel = zyx[:, 0] == k
                lx[k], hx[k] = xs_world[sel, 0].min(), xs_world[sel, 0].max()
                ly[k], hy[k] = xs_world[sel, 1].min(), xs_world[sel, 1].max()
            kz = zyx[:, 0]
            mid = 0.5 * (lx[kz] + hx[kz])
            half = np.maximum(0.5 * (hx[kz] - lx[kz]), 1.0)
            medial = np.abs(xs_world[:, 0] - mid) < 0.25 * half
            posterior = xs_world[:, 1] > hy[kz] - (hy[kz] - ly[kz]) / 3.0       # LPS: +y is posterior
            if "spine-edge" in edge_kinds:
                sel = medial & posterior
                pools["spine-edge"] = (zyx[sel], np.ones(sel.sum()), np.full(sel.sum(), math.nan))
            if "mediastinal-edge" in edge_kinds:
                sel = medial & ~posterior
                pools["mediastinal-edge"] = (zyx[sel], np.ones(sel.sum()), np.full(sel.sum(), math.nan))
        if "diaphragm" in edge_kinds:
            head_up = float(np.asarray(volume.direction)[2, 2]) >= 0
            below = np.zeros_like(m)
            if head_up:
                below[1:] = m[1:] & ~m[:-1]
            else:
                below[:-1] = m[:-1] & ~m[1:]
            hb = np.zeros_like(h)
            if head_up:
                hb[1:] = h[:-1]
            else:
                hb[:-1] = h[1:]
            dia = below & (hb > -300)
            zyx = np.argwhere(dia)
            pools["diaphragm"] = (zyx, np.ones(len(zyx)), np.full(len(zyx), math.nan))

    ex_xyz, ex_r = _exclusion_array(exclude_xyz_mm)
    shares = np.array([kinds[k] for k in pools], dtype=float)
    if len(pools) == 0 or shares.sum() <= 0:
        return pd.DataFrame(columns=cols)
    want = dict(zip(pools, np.floor(shares / shares.sum() * n).astype(int)))
    order = sorted(pools, key=lambda k: -kinds[k])
    for k in order[: int(n - sum(want.values()))]:
        want[k] += 1
    chosen: list[dict] = []
    chosen_xyz: list[np.ndarray] = []

    def take(kind, budget):
        zyx, sc, diam = pools[kind]
        if len(zyx) == 0 or budget <= 0:
            return 0
        if kind == "vessel":       # the strongest blobs first, with some randomness among the top
            top = np.argsort(-sc)[: max(8 * budget, 50)]
            idx = top[rng.permutation(len(top))]
            idx = idx[np.argsort(-sc[idx], kind="stable")]
        else:
            idx = rng.permutation(len(zyx))
        got = 0
        for i in idx[: 200 * budget]:
            p_zyx = zyx[i] + off
            xyz = volume.voxel_to_world(p_zyx.astype(float))
            if len(ex_xyz) and np.any(np.linalg.norm(ex_xyz - xyz, axis=1) < min_distance_mm + ex_r):
                continue
            if chosen_xyz and np.min(np.linalg.norm(np.asarray(chosen_xyz) - xyz, axis=1)) < min_separation_mm:
                continue
            chosen_xyz.append(xyz)
            chosen.append({"coordX": xyz[0], "coordY": xyz[1], "coordZ": xyz[2], "diameter_mm": diam[i],
                           "kind": kind, "score": float(sc[i]), "z": int(p_zyx[0]), "y": int(p_zyx[1]),
                           "x": int(p_zyx[2])})
            got += 1
            if got >= budget:
                break
        return got

    short = 0
    for k in order:
        short += want[k] - take(k, want[k])
    if short > 0:                     # fill from the kinds that have more
        for k in order:
            short -= take(k, short)
            if short <= 0:
                break
    return pd.DataFrame(chosen, columns=cols)


# --------------------------------------------------------------------------------- montage

def montage(volume: CTVolume, points: pd.DataFrame, *, size_mm: float = 48.0, tile_px: int = 96,
            cols: int = 8, window_hu=(-1000.0, 400.0)) -> np.ndarray:
    """Axial crops (``size_mm`` square, resampled to ``tile_px``) centred on each point, as one
    uint8 image of ``cols`` columns; a small cross marks each centre."""
    n = len(points)
    rows = max(int(math.ceil(n / cols)), 1)
    out = np.zeros((rows * (tile_px + 4), cols * (tile_px + 4)), dtype=np.uint8)
    lo, hi = window_hu
    for t, row in enumerate(points.itertuples(index=False)):
        zyx = volume.world_to_voxel(np.array([row.coordX, row.coordY, row.coordZ], dtype=float))
        k = int(np.clip(round(zyx[0]), 0, volume.shape[0] - 1))
        r = np.linspace(-size_mm / 2, size_mm / 2, tile_px)
        yy = zyx[1] + r[:, None] / volume.spacing[1] + 0 * r[None, :]
        xx = zyx[2] + r[None, :] / volume.spacing[2] + 0 * r[:, None]
        img = ndi.map_coordinates(volume.hu[k].astype(np.float32), [yy, xx], order=1, cval=-1024.0)
        img = np.clip((img - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        c = tile_px // 2
        img[c, c - 6:c - 2] = img[c, c + 3:c + 7] = 255
        img[c - 6:c - 2, c] = img[c + 3:c + 7, c] = 255
        y0, x0 = (t // cols) * (tile_px + 4) + 2, (t % cols) * (tile_px + 4) + 2
        out[y0:y0 + tile_px, x0:x0 + tile_px] = img
    return out
