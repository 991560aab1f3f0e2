"""The scanner: slice profile (partial volume along z), in-plane blur, kernel and noise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


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

    def meta(self) -> dict:
        return {"psf_mm": round(self.psf_mm, 3), "noise_hu": round(self.noise_hu, 2),
                "kernel_type": self.kernel, "edge_gain": round(self.edge_gain, 3)}


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
