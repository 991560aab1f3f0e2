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

def draw_scanner_domain(rng: np.random.Generator, domain: str) -> Scanner:
    """Per-patient scanner of a randomised domain: every range from
    :data:`lungcad.synthetic.domain.RANDOMIZED` ``.acquisition``, the held-out bands respected
    (``randomized`` never draws them, ``shifted`` always does)."""
    raise NotImplementedError


def reconstruct_slices(fine_hu: np.ndarray, fine_z_mm, slice_z_mm, thickness_mm: float) -> np.ndarray:
    """Slices (nz, ny, nx) float32 reconstructed from fine sub-slices with a real slice profile."""
    raise NotImplementedError


def acquire_domain(img: np.ndarray, labels: np.ndarray, organs: np.ndarray | None, scanner: Scanner, *,
                   pixel_mm: float, spacing, rng: np.random.Generator) -> None:
    """Kernel, matching noise, streaks, metal and motion, in place on ``img`` (z, y, x) HU."""
    raise NotImplementedError
