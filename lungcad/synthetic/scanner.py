"""The scanner: slice profile (partial volume along z), in-plane blur, kernel and noise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungcad.synthetic import domain as _dom


@dataclass
class Scanner:
    """Per-patient imaging parameters (mm and HU).

    The noise is added before the in-plane blur, so that, as in a reconstruction, it is
    correlated by the same kernel as the image; a sharp kernel then enhances edges and noise.
    """

    psf_mm: float           # in-plane Gaussian sigma of the point spread function
    noise_hu: float         # standard deviation of the noise inside the body (soft kernel)
    kernel: str             # "soft" or "sharp"
    edge_gain: float        # edge enhancement of a sharp kernel (0 for soft)
    # ---- domain randomisation (draw_scanner_domain); the defaults are the default domain's ----
    domain: str = "default"
    kernel_family: str = ""         # a key of domain.KERNEL_FAMILIES
    mtf50_lpmm: float = 0.0         # frequency (lp/mm) where the in-plane MTF falls to 0.5
    overshoot: float = 0.0          # edge-enhancement term of the MTF (see kernel_mtf)
    noise_gain: float = 1.0         # noise std of this kernel over that of the reference kernel
    slice_thickness_mm: float = 0.0     # FWHM of the slice profile
    increment_mm: float = 0.0           # distance between reconstructed slices
    contrast: bool = False
    blood_hu: float = 0.0               # HU of contrast-enhanced blood (0: no contrast)
    streak_hu: float = 0.0              # beam-hardening streak strength (0: none)
    metal: tuple = ()                   # among "clips", "wires", "pacemaker"
    metal_hu: float = 0.0
    metal_streak_hu: float = 0.0
    motion_mm: float = 0.0              # cardiac / respiratory motion amplitude (0: none)
    rescale_intercept: float = -1024.0  # as stored (the writer's RescaleIntercept)
    padding_value: float = -1024.0      # pixel padding outside the reconstruction circle

    @property
    def noise_sd_hu(self) -> float:
        """Noise standard deviation in soft tissue after the kernel (domain path)."""
        return float(min(self.noise_hu * self.noise_gain, _dom.RANDOMIZED.acquisition.max_noise_hu))

    def meta(self) -> dict:
        m = {"psf_mm": round(self.psf_mm, 3), "noise_hu": round(self.noise_hu, 2),
             "kernel_type": self.kernel, "edge_gain": round(self.edge_gain, 3)}
        if self.domain == "default":
            return m
        m.update({"domain": self.domain, "kernel_family": self.kernel_family,
                  "mtf50_lpmm": round(self.mtf50_lpmm, 4), "kernel_overshoot": round(self.overshoot, 3),
                  "noise_gain": round(self.noise_gain, 3), "noise_sd_hu": round(self.noise_sd_hu, 2),
                  "slice_thickness_mm": round(self.slice_thickness_mm, 3),
                  "increment_mm": round(self.increment_mm, 3), "contrast": bool(self.contrast),
                  "blood_hu": round(self.blood_hu, 1), "streak_hu": round(self.streak_hu, 1),
                  "metal": list(self.metal), "metal_hu": round(self.metal_hu, 1),
                  "metal_streak_hu": round(self.metal_streak_hu, 1), "motion_mm": round(self.motion_mm, 2),
                  "rescale_intercept": float(self.rescale_intercept), "padding_value": float(self.padding_value)})
        return m


def draw_scanner(rng: np.random.Generator, *, noise_hu=None, psf_mm=None, kernel=None) -> Scanner:
    """Random scanner settings; any of them can be forced."""
    k = ("sharp" if rng.random() < 0.3 else "soft") if kernel is None else kernel
    if k not in ("soft", "sharp"):
        raise ValueError(f"kernel expected 'soft' or 'sharp'. Received kernel={kernel!r}")
    lo, hi = (15.0, 40.0) if k == "sharp" else (8.0, 30.0)
    n = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if noise_hu is None else float(noise_hu)
    p = float(rng.uniform(0.4, 1.0)) if psf_mm is None else float(psf_mm)
    if n < 0 or p < 0:
        raise ValueError(f"noise_hu and psf_mm must be >= 0. Received noise_hu={noise_hu}, psf_mm={psf_mm}")
    gain = float(rng.uniform(0.5, 1.2)) if k == "sharp" else 0.0
    return Scanner(psf_mm=p, noise_hu=n, kernel=k, edge_gain=gain)


def _kernel_norm(sigma: float, truncate: float = 3.0) -> float:
    """sqrt(sum(k^2)) of the discrete Gaussian that ``gaussian_filter1d`` uses."""
    if sigma <= 0:
        return 1.0
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * x * x / (sigma * sigma))
    k /= k.sum()
    return float(np.sqrt((k * k).sum()))


def slice_profile(fine: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` fine slices into one reconstructed slice (box slice profile).

    With ``factor`` 1 a mild 3-tap profile (sigma about 0.45 slice) is applied in place.
    """
    nzf = fine.shape[0]
    if factor == 1:
        w = np.float32(0.1)
        prev = fine[0].copy()
        for k in range(nzf):
            cur = fine[k].copy()
            nxt = fine[k + 1] if k + 1 < nzf else cur
            fine[k] *= 1.0 - 2.0 * w
            fine[k] += w * (prev + nxt)
            prev = cur
        return fine
    nz = nzf // factor
    out = np.empty((nz,) + fine.shape[1:], dtype=np.float32)
    inv = np.float32(1.0 / factor)
    for k in range(nz):
        np.sum(fine[k * factor:(k + 1) * factor], axis=0, out=out[k])
        out[k] *= inv
    return out


def acquire(vol: np.ndarray, labels: np.ndarray, scanner: Scanner, *, pixel_mm: float,
            rng: np.random.Generator, chunk: int = 16) -> None:
    """Add noise, blur and sharpen ``vol`` (z, y, x) float32 in place, chunk by chunk."""
    s_psf = scanner.psf_mm / pixel_mm
    # white noise scaled so that its standard deviation after the blur is noise_hu
    scale = np.float32(scanner.noise_hu / _kernel_norm(s_psf) ** 2)
    noise_lut = np.ones(256, dtype=np.float32)
    noise_lut[0] = 0.5
    for k0 in range(0, vol.shape[0], chunk):
        block = vol[k0:k0 + chunk]
        if scanner.noise_hu > 0:
            n = rng.standard_normal(block.shape, dtype=np.float32)
            n *= scale
            n *= noise_lut[labels[k0:k0 + chunk]]
            block += n
        if s_psf > 0:
            for ax in (1, 2):
                ndi.gaussian_filter1d(block, s_psf, axis=ax, truncate=3.0, output=block)
        if scanner.edge_gain > 0:
            s_edge = max(0.8, 1.0 / pixel_mm)
            smooth = ndi.gaussian_filter(block, (0, s_edge, s_edge), truncate=3.0)
            smooth -= block
            smooth *= -scanner.edge_gain
            block += smooth


# ---- domain randomisation (domains "randomized" and "shifted") ---------------------------------

_ACQ = _dom.RANDOMIZED.acquisition
#: organ codes of the ``organs`` array of :func:`acquire_domain`
ORGANS = {"heart": 1, "liver": 2, "spleen": 3, "stomach": 4}
_OUTSIDE, _BODY, _BONE, _MEDIASTINUM, _LUNG = 0, 1, 2, 3, 4       # lungcad.synthetic.anatomy labels


def kernel_overshoot(mtf50_lpmm: float) -> float:
    """The edge-enhancement term ``a`` of :func:`kernel_mtf` for a kernel of this MTF50."""
    a, f = _ACQ.kernel_overshoot, _ACQ.kernel_overshoot_mtf50
    t = float(np.clip((mtf50_lpmm - f.lo) / (f.hi - f.lo), 0.0, 1.0))
    return a.lo + t * (a.hi - a.lo)


def _x50(a: float) -> float:
    """x > 0 (past the overshoot) where exp(-x) (1 + a x) = 0.5, by bisection."""
    lo, hi = max(0.0, (a - 1.0) / a if a > 0 else 0.0), 50.0
    for _ in range(80):
        m = 0.5 * (lo + hi)
        if np.exp(-m) * (1.0 + a * m) > 0.5:
            lo = m
        else:
            hi = m
    return 0.5 * (lo + hi)


def kernel_mtf(f_lpmm, mtf50_lpmm: float, overshoot: float | None = None) -> np.ndarray:
    """In-plane MTF of a reconstruction kernel: exp(-x) (1 + a x) with x = (f / b)^2.

    ``b`` is set so that the MTF is 0.5 at ``mtf50_lpmm``; ``a`` (default
    :func:`kernel_overshoot`) above 1 lifts mid frequencies above 1 (edge overshoot).
    """
    a = kernel_overshoot(mtf50_lpmm) if overshoot is None else float(overshoot)
    b2 = mtf50_lpmm ** 2 / _x50(a)
    x = np.asarray(f_lpmm, dtype=np.float64) ** 2 / b2
    return np.exp(-x) * (1.0 + a * x)


def kernel_noise_gain(mtf50_lpmm: float, overshoot: float | None = None) -> float:
    """Noise std of a kernel over that of the reference kernel, from NPS(f) ~ f MTF(f)^2
    integrated over the frequency plane (2 pi f df)."""
    f = np.linspace(0.0, 6.0, 6001)

    def var(m50, a):
        return float(np.trapezoid(f * f * kernel_mtf(f, m50, a) ** 2, f))

    ref = _ACQ.noise_reference_mtf50
    return float(np.sqrt(var(mtf50_lpmm, overshoot) / var(ref, None)))


def draw_scanner_domain(rng: np.random.Generator, domain: str) -> Scanner:
    """Per-patient scanner of a randomised domain: every range from
    :data:`lungcad.synthetic.domain.RANDOMIZED` ``.acquisition``, the held-out bands respected
    (``randomized`` never draws them, ``shifted`` always does).

    Kernel family and MTF50 (:func:`~lungcad.synthetic.domain.draw_kernel`); noise log-uniform
    in ``noise_hu`` (for the reference kernel: the kernel multiplies it by its noise gain);
    slice thickness (:func:`~lungcad.synthetic.domain.draw_slice_thickness`) and increment
    (the thickness, or ``overlap_ratio`` of it with probability ``overlap_p``: the thickness,
    the slice profile's FWHM, is what is held out); contrast and blood HU; beam-hardening
    streaks, metal and motion, each with its probability; rescale intercept and padding value.
    """
    if _dom.check_domain(domain) == "default":
        raise ValueError("draw_scanner_domain expected domain 'randomized' or 'shifted'. "
                         "Received domain='default' (use draw_scanner)")
    A = _ACQ
    family, m50 = _dom.draw_kernel(rng, domain)
    a = kernel_overshoot(m50)
    gain = kernel_noise_gain(m50, a)
    noise = _dom.band_log_uniform(rng, A.noise_hu)
    thick = _dom.draw_slice_thickness(rng, domain)
    inc = thick * _dom.band_uniform(rng, A.overlap_ratio) if rng.random() < A.overlap_p else thick
    contrast = bool(rng.random() < A.contrast_p)
    blood = _dom.band_uniform(rng, A.contrast_blood_hu) if contrast else 0.0
    streak = _dom.band_uniform(rng, A.streak_hu) if rng.random() < A.streaks_p else 0.0
    metal: tuple = ()
    metal_hu = metal_streak = 0.0
    if rng.random() < A.metal_p:
        items = sorted(A.metal_items_p)
        metal = tuple(k for k in items if rng.random() < A.metal_items_p[k])
        if not metal:
            w = np.array([A.metal_items_p[k] for k in items], dtype=float)
            metal = (items[int(rng.choice(len(items), p=w / w.sum()))],)
        metal_hu = _dom.band_uniform(rng, A.metal_hu)
        metal_streak = _dom.band_uniform(rng, A.metal_streak_hu)
    motion = _dom.band_uniform(rng, A.motion_mm) if rng.random() < A.motion_p else 0.0
    intercept = float(A.rescale_intercepts[int(rng.integers(len(A.rescale_intercepts)))])
    padding = float(A.padding_values[int(rng.integers(len(A.padding_values)))])
    # the Gaussian sigma with the same MTF50 (for what reads psf_mm)
    psf = float(np.sqrt(np.log(2.0) / 2.0) / (np.pi * m50))
    return Scanner(psf_mm=psf, noise_hu=noise, kernel="sharp" if m50 > 0.42 else "soft",
                   edge_gain=a, domain=domain, kernel_family=family, mtf50_lpmm=m50, overshoot=a,
                   noise_gain=gain, slice_thickness_mm=thick, increment_mm=inc, contrast=contrast,
                   blood_hu=blood, streak_hu=streak, metal=metal, metal_hu=metal_hu,
                   metal_streak_hu=metal_streak, motion_mm=motion, rescale_intercept=intercept,
                   padding_value=padding)


# ---- slice profile ----------------------------------------------------------------------------

def _profile_params(thickness_mm: float) -> tuple[float, float]:
    """(box width, Gaussian sigma) of the slice profile whose FWHM is ``thickness_mm``."""
    from scipy.special import erf

    s = _ACQ.slice_profile_sigma

    def p(z, w):  # box of width w convolved with N(0, (s w)^2), unnormalised
        g = s * w * np.sqrt(2.0)
        return erf((z + 0.5 * w) / g) - erf((z - 0.5 * w) / g)

    # FWHM of the profile of width 1, by bisection
    half = 0.5 * p(0.0, 1.0)
    lo, hi = 0.0, 3.0
    for _ in range(60):
        m = 0.5 * (lo + hi)
        lo, hi = (m, hi) if p(m, 1.0) > half else (lo, m)
    w = float(thickness_mm) / (2.0 * 0.5 * (lo + hi))
    return w, s * w


def _profile_cdf(t, w: float, sigma: float) -> np.ndarray:
    """Integral of the unit-area slice profile from -inf to ``t`` (mm)."""
    from scipy.stats import norm

    def G(x):
        return x * norm.cdf(x) + norm.pdf(x)

    t = np.asarray(t, dtype=np.float64)
    return (sigma / w) * (G((t + 0.5 * w) / sigma) - G((t - 0.5 * w) / sigma))


def slice_weights(fine_z_mm, slice_z_mm, thickness_mm: float):
    """For each slice, (first sub-slice, weights) of the slice profile integrated over each
    sub-slice's extent (half way to its neighbours); the weights of a slice sum to 1."""
    zf = np.asarray(fine_z_mm, dtype=np.float64)
    if zf.ndim != 1 or len(zf) < 1 or np.any(np.diff(zf) <= 0):
        raise ValueError("fine_z_mm expected increasing sub-slice positions (mm). "
                         f"Received {len(np.atleast_1d(zf))} values")
    if not thickness_mm > 0:
        raise ValueError(f"thickness_mm must be > 0. Received thickness_mm={thickness_mm}")
    dz = np.diff(zf)
    edges = np.concatenate([[zf[0] - 0.5 * (dz[0] if len(dz) else 1.0)], 0.5 * (zf[1:] + zf[:-1]),
                            [zf[-1] + 0.5 * (dz[-1] if len(dz) else 1.0)]])
    w, sig = _profile_params(thickness_mm)
    reach = 0.5 * w + 5.0 * sig
    out = []
    for zc in np.asarray(slice_z_mm, dtype=np.float64):
        i0 = max(int(np.searchsorted(edges, zc - reach)) - 1, 0)
        i1 = min(int(np.searchsorted(edges, zc + reach)) + 1, len(zf))
        c = _profile_cdf(edges[i0:i1 + 1] - zc, w, sig)
        wt = np.diff(c)
        tot = wt.sum()
        if tot <= 1e-9:   # the slice lies outside the sub-slices: nearest one
            k = int(np.argmin(np.abs(zf - zc)))
            out.append((k, np.ones(1)))
            continue
        out.append((i0, wt / tot))
    return out


def reconstruct_slices(fine_hu: np.ndarray, fine_z_mm, slice_z_mm, thickness_mm: float) -> np.ndarray:
    """Slices (nz, ny, nx) float32 reconstructed from fine sub-slices with a real slice profile.

    The profile is a box convolved with a Gaussian (sigma ``slice_profile_sigma`` x the box
    width, as helical reconstructions give), scaled so that its FWHM is ``thickness_mm``,
    centred at each of ``slice_z_mm`` and integrated over each sub-slice (at ``fine_z_mm``, the
    first axis of ``fine_hu``).  Slices may overlap (increment below the thickness).  Each
    slice's weights sum to 1, so a uniform volume stays uniform up to its ends.  Memory: the
    output and one slice of work.
    """
    if fine_hu.ndim != 3 or fine_hu.shape[0] != len(np.atleast_1d(fine_z_mm)):
        raise ValueError(f"fine_hu expected (n_sub, ny, nx) with n_sub = len(fine_z_mm) = "
                         f"{len(np.atleast_1d(fine_z_mm))}. Received shape {fine_hu.shape}")
    ws = slice_weights(fine_z_mm, slice_z_mm, thickness_mm)
    out = np.empty((len(ws),) + fine_hu.shape[1:], dtype=np.float32)
    tmp = np.empty(fine_hu.shape[1:], dtype=np.float32)
    for k, (i0, wt) in enumerate(ws):
        o = out[k]
        o[...] = 0.0
        for j, wj in enumerate(wt):
            if wj < 1e-7:
                continue
            np.multiply(fine_hu[i0 + j], np.float32(wj), out=tmp)
            o += tmp
    return out


# ---- in-plane kernel and noise ----------------------------------------------------------------

def _freq_radius(ny: int, nx: int, pixel_mm: float) -> np.ndarray:
    fy = np.fft.fftfreq(ny, d=pixel_mm)
    fx = np.fft.rfftfreq(nx, d=pixel_mm)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def kernel_and_noise(img: np.ndarray, weight: np.ndarray | None, scanner: Scanner, *, pixel_mm: float,
                     rng: np.random.Generator, chunk: int = 8) -> None:
    """The reconstruction kernel (MTF) and its matching noise, in place on ``img`` (z, y, x).

    The image is filtered with the kernel's MTF in the Fourier domain; the noise is white noise
    (times ``weight``, a per-voxel std factor) filtered by sqrt(NPS) = sqrt(f) MTF(f), scaled so
    that its std where ``weight`` is 1 is :attr:`Scanner.noise_sd_hu`.
    """
    from scipy import fft as sfft

    nz, ny, nx = img.shape
    fr = _freq_radius(ny, nx, pixel_mm)
    mtf = kernel_mtf(fr, scanner.mtf50_lpmm, scanner.overshoot).astype(np.float32)
    h = np.sqrt(fr) * mtf
    # std of white noise filtered by h (orthonormal FFT): the mean of |h|^2 over the full plane
    hh = h.astype(np.float64) ** 2
    wcol = np.full(hh.shape[1], 2.0)
    wcol[0] = 1.0
    if nx % 2 == 0:
        wcol[-1] = 1.0
    var = float((hh * wcol[None, :]).sum()) / (ny * nx)
    sd = scanner.noise_sd_hu
    hn = (h * np.float32(sd / np.sqrt(max(var, 1e-20)))).astype(np.float32)
    for k0 in range(0, nz, chunk):
        block = img[k0:k0 + chunk]
        F = sfft.rfft2(block, axes=(1, 2))
        F *= mtf
        if sd > 0:
            n = rng.standard_normal(block.shape, dtype=np.float32)
            if weight is not None:
                n *= weight[k0:k0 + chunk]
            N = sfft.rfft2(n, axes=(1, 2))
            N *= hn
            F += N
        block[...] = sfft.irfft2(F, s=(ny, nx), axes=(1, 2))


def acquire_domain(img: np.ndarray, labels: np.ndarray, organs: np.ndarray | None, scanner: Scanner, *,
                   pixel_mm: float, spacing, rng: np.random.Generator) -> None:
    """Kernel, matching noise, streaks, metal and motion, in place on ``img`` (z, y, x) HU.

    In the order of an acquisition: motion blur at the heart and the diaphragm (the object moves),
    metal, beam-hardening and metal streaks, then the reconstruction kernel with its noise
    (:func:`kernel_and_noise`).  The result is finite and clipped to [-1024, 3071] HU.

    Parameters
    ----------
    img : float32 (z, y, x) HU, after the slice profile
    labels : uint8 (z, y, x), :mod:`lungcad.synthetic.anatomy` codes
    organs : uint8 (z, y, x) with :data:`ORGANS` codes, or None (no motion)
    scanner : from :func:`draw_scanner_domain`
    pixel_mm : in-plane pixel size; spacing : (z, y, x) mm
    """
    from lungcad.synthetic import artifacts as _art

    if img.ndim != 3 or labels.shape != img.shape:
        raise ValueError(f"img and labels expected the same (z, y, x) shape. Received {img.shape} and "
                         f"{labels.shape}")
    spacing = tuple(float(s) for s in spacing)
    if scanner.motion_mm > 0 and organs is not None:
        _art.motion_blur(img, organs, scanner.motion_mm, spacing=spacing)
    if scanner.metal:
        _art.metal(img, labels, organs, scanner, spacing=spacing, rng=rng)
    if scanner.streak_hu > 0:
        _art.bone_streaks(img, labels, scanner.streak_hu, spacing=spacing, rng=rng)
    base = labels & np.uint8(0x3F)
    lut = np.ones(256, dtype=np.float32)
    lut[_OUTSIDE] = np.float32(_ACQ.noise_outside)
    weight = lut[base]
    kernel_and_noise(img, weight, scanner, pixel_mm=pixel_mm, rng=rng)
    np.nan_to_num(img, copy=False, nan=-1024.0, posinf=3071.0, neginf=-1024.0)
    np.clip(img, -1024.0, 3071.0, out=img)
