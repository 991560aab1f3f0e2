"""Domains of the phantom generator: the range of every factor that is not the label, in one place.

SynthSeg's lesson (Billot et al., Medical Image Analysis 2023): a network trained on images whose
every nuisance factor is drawn from ranges far wider than what looks realistic learns the label,
not the look of one generator.  This module is the one place where those ranges live.

Domains (``generate_phantom(domain=...)``, ``lungcad synth --domain ...``):

``default``
    The generator as it was before domains existed (``GENERATOR_VERSION`` 1): the same seed gives
    the same volume, byte for byte.  The evaluation sets of earlier releases (seeds 777000-781000)
    are of this domain.
``randomized``
    Training draws: every factor from :data:`RANDOMIZED`, with the bands of :data:`HELD_OUT`
    left out of every draw.
``shifted``
    The shifted evaluation family: the factors that have a held-out band are drawn inside it
    (slice thickness, kernel, anatomy scale); the rest from :data:`RANDOMIZED`.  Never train on it.

The *validation family* (choices of networks and settings, and the CI guards) is the
``randomized`` domain at :data:`VALIDATION_SEED`; the shifted family is ``shifted`` at
:data:`SHIFTED_SEED`.  Training sets must use other seeds (:func:`check_training_seed`).

Units: mm, HU, mAs-equivalent noise in HU, spatial frequencies in line pairs per mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DOMAINS = ("default", "randomized", "shifted")

#: Data-set seeds of the two evaluation families (``lungcad synth --seed``).
VALIDATION_SEED = 950000
SHIFTED_SEED = 960000
#: Patients of each family.  Validation phantoms are small (256 x 256) so that CI can run them.
VALIDATION_PATIENTS = 12
VALIDATION_SIZE = 256
SHIFTED_PATIENTS = 40
SHIFTED_SIZE = 512


@dataclass(frozen=True)
class Band:
    """A closed interval [lo, hi] of one factor."""

    lo: float
    hi: float

    def __post_init__(self):
        if not self.lo <= self.hi:
            raise ValueError(f"Band expected lo <= hi. Received lo={self.lo}, hi={self.hi}")

    def contains(self, x: float) -> bool:
        return self.lo <= float(x) <= self.hi


# ---- anatomy ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnatomyRanges:
    """Patient anatomy.  Scales multiply the default generator's size; distances are mm."""

    #: Overall scale of the thorax (body, cavity, lungs, heart together).  One band is held out.
    anatomy_scale: Band = Band(0.75, 1.30)
    #: Body half-width before scaling (default generator: 145-195 mm).
    body_half_width_mm: Band = Band(140.0, 205.0)
    #: Antero-posterior depth over width (default 0.68-0.86).
    body_depth_ratio: Band = Band(0.58, 0.98)
    #: Subcutaneous fat thickness (default 4-20 mm).
    fat_mm: Band = Band(2.0, 45.0)
    #: Lung height, apex to the deepest recess (default 215-300 mm), after the scale.
    lung_height_mm: Band = Band(170.0, 330.0)
    #: Heart: size factor, shift of its centre (u, v) and long-axis angle.
    heart_scale: Band = Band(0.70, 1.50)
    heart_shift_mm: Band = Band(-25.0, 25.0)
    heart_angle_deg: Band = Band(10.0, 65.0)
    #: Height of each diaphragm dome above the deepest recess, drawn per side (default 50-80 mm
    #: right, 8-22 mm lower left).
    dome_height_mm: Band = Band(25.0, 120.0)
    #: Liver, spleen and stomach below the domes: HU (non-contrast; contrast adds 40-80 HU) and
    #: the probability of gas in the stomach, with the size of the gas bubble.
    liver_hu: Band = Band(35.0, 75.0)
    spleen_hu: Band = Band(35.0, 60.0)
    stomach_gas_p: float = 0.7
    stomach_gas_mm: Band = Band(10.0, 45.0)
    #: Mediastinum: width factor and fat HU.
    mediastinum_width_scale: Band = Band(0.7, 1.7)
    mediastinal_fat_hu: Band = Band(-115.0, 15.0)
    #: Hilar and mediastinal lymph nodes: count and short-axis size.
    lymph_nodes: Band = Band(0, 10)
    lymph_node_mm: Band = Band(4.0, 22.0)
    #: Arms up (beside the head, outside the chest) or down (beside the chest, in the field).
    arms_down_p: float = 0.35
    #: Breast tissue (anterior, both sides): probability and the depth of each breast.
    breast_p: float = 0.4
    breast_depth_mm: Band = Band(15.0, 90.0)
    #: Scanner table.
    table_p: float = 0.85
    #: Field of view that cuts the body at the sides (reconstruction circle smaller than the body).
    fov_cut_p: float = 0.2
    fov_cut_mm: Band = Band(5.0, 40.0)
    #: Scan range: stops at the lung bases (abdomen cut off), or starts at the neck.
    stop_at_bases_p: float = 0.15
    start_at_neck_p: float = 0.3
    #: ... where the scan ends above the deepest recess when it stops at the bases, how far
    #: above the apex it starts at the neck, and otherwise where it starts and ends.
    bases_cut_mm: Band = Band(0.0, 15.0)
    neck_mm: Band = Band(50.0, 140.0)
    top_margin_mm: Band = Band(5.0, 40.0)
    abdomen_mm: Band = Band(15.0, 110.0)
    #: Lung height = 255 mm x anatomy scale x this jitter, clipped to ``lung_height_mm``.
    lung_height_jitter: Band = Band(0.85, 1.15)
    #: Body shape: superellipse exponent of the body outline (2 an ellipse, larger is boxier),
    #: and the anterior share of the antero-posterior depth (default 0.46-0.52).
    body_exponent: Band = Band(2.0, 3.2)
    body_front_share: Band = Band(0.42, 0.56)
    #: Heart shape: each semi-axis multiplied by its own factor; its centre sits this many
    #: heart half-heights above the left dome (default 0.35-0.6).
    heart_axis_jitter: Band = Band(0.8, 1.25)
    heart_above_dome: Band = Band(0.2, 0.8)
    #: Liver: how far its left lobe reaches across the midline; lengths below the dome of the
    #: spleen and the stomach; HU of the stomach's content and of the rest of the upper abdomen.
    liver_left_mm: Band = Band(0.0, 70.0)
    spleen_length_mm: Band = Band(60.0, 130.0)
    stomach_length_mm: Band = Band(60.0, 160.0)
    stomach_content_hu: Band = Band(0.0, 35.0)
    abdomen_hu: Band = Band(-40.0, 45.0)
    #: Lymph node HU.
    lymph_node_hu: Band = Band(20.0, 60.0)
    #: Neck: shoulder height above the apex where the chest narrows to the neck, and the neck's
    #: half-width.
    shoulder_mm: Band = Band(10.0, 45.0)
    neck_half_width_mm: Band = Band(50.0, 80.0)
    #: Arms down: half-width of each arm's cross-section and its gap to the chest wall.
    arm_half_width_mm: Band = Band(35.0, 60.0)
    arm_gap_mm: Band = Band(0.0, 15.0)
    #: Breast tissue HU (fatty to dense glandular).
    breast_hu: Band = Band(-100.0, 40.0)
    #: Largest field of view (mm) of a randomised scan; a body wider than this is cut.
    fov_max_mm: float = 500.0


# ---- acquisition -------------------------------------------------------------------------------

#: Reconstruction kernel families, by the frequency (lp/mm) at which the MTF falls to 50 %.
#: Soft kernels (B20-B30-like) blur and give low-frequency noise; sharp ones (B60-B70, "LUNG",
#: "BONE") sharpen edges and give fine-grained noise with overshoot.
KERNEL_FAMILIES = {
    "smooth": Band(0.20, 0.30),
    "standard": Band(0.30, 0.42),
    "medium-sharp": Band(0.42, 0.52),
    "sharp": Band(0.52, 0.70),
    "very-sharp": Band(0.70, 0.95),
}


@dataclass(frozen=True)
class AcquisitionRanges:
    """Scanner and reconstruction."""

    #: Kernel family weights (keys of :data:`KERNEL_FAMILIES`).
    kernel_p: dict = field(default_factory=lambda: {"smooth": 0.15, "standard": 0.3, "medium-sharp": 0.15,
                                                    "sharp": 0.25, "very-sharp": 0.15})
    #: Dose: noise standard deviation (HU) in soft tissue for the *standard* kernel; sharper
    #: kernels multiply it by their noise gain.  Log-uniform, low-dose screening (~60 HU) to
    #: standard dose (~8 HU).
    noise_hu: Band = Band(5.0, 70.0)
    #: Reconstructed slice thickness (the slice profile's FWHM) and the increment between slices.
    slice_thickness_mm: Band = Band(0.6, 10.0)
    #: Probability of an overlapping reconstruction (increment = thickness x 0.5-0.8).
    overlap_p: float = 0.25
    overlap_ratio: Band = Band(0.5, 0.8)
    #: Contrast-enhanced vessels and heart: probability, blood HU.
    contrast_p: float = 0.5
    contrast_blood_hu: Band = Band(120.0, 400.0)
    #: Beam-hardening streaks (between dense bones, from the shoulders), metal (surgical clips,
    #: sternal wires, a pacemaker with its lead), and motion blur at the heart and diaphragm.
    streaks_p: float = 0.4
    streak_hu: Band = Band(10.0, 120.0)
    metal_p: float = 0.2
    motion_p: float = 0.35
    motion_mm: Band = Band(1.0, 8.0)
    #: Rescale and padding as stored: RescaleIntercept and the pixel-padding value outside the
    #: reconstruction circle.
    rescale_intercepts: tuple = (-1024.0, -1000.0, 0.0, -8192.0)
    padding_values: tuple = (-1024.0, -2000.0, -3024.0, -1000.0, 0.0)
    # -- how the factors above are rendered (lungcad.synthetic.scanner) --
    #: The in-plane MTF is 2^-(f/b)^2-like with an edge-enhancement term:
    #: MTF(f) = exp(-x) (1 + a x), x = (f/b)^2, b set so that MTF(MTF50) = 0.5.  The overshoot
    #: ``a`` rises linearly with the MTF50 from ``kernel_overshoot.lo`` at
    #: ``kernel_overshoot_mtf50.lo`` to ``kernel_overshoot.hi`` at ``kernel_overshoot_mtf50.hi``
    #: (a > 1 gives an MTF above 1 at mid frequencies: the ringing of sharp kernels).
    kernel_overshoot: Band = Band(0.0, 2.2)
    kernel_overshoot_mtf50: Band = Band(0.30, 0.85)
    #: Noise: NPS(f) ~ f MTF(f)^2 (filtered back-projection).  Its std is ``noise_hu`` times the
    #: kernel's noise gain, the square root of the NPS integral over that of the reference kernel
    #: (MTF50 ``noise_reference_mtf50``, a "standard" one), and at most ``max_noise_hu``.  In the
    #: air outside the body the noise is ``noise_outside`` times that.
    noise_reference_mtf50: float = 0.36
    max_noise_hu: float = 220.0
    noise_outside: float = 0.5
    #: Slice profile: a box convolved with a Gaussian of sigma ``slice_profile_sigma`` x the box
    #: width (helical reconstruction), scaled so that its FWHM is the slice thickness.
    slice_profile_sigma: float = 0.25
    #: Beam-hardening streaks: width (mm) of the dark band joining two dense bones.
    streak_width_mm: Band = Band(2.0, 6.0)
    #: Metal: each item's probability when a patient has metal (at least one is drawn), the HU
    #: of the metal before the reconstruction (clipped to 3071 by the writer) and the strength
    #: of its star-like streaks.
    metal_items_p: dict = field(default_factory=lambda: {"clips": 0.6, "wires": 0.4, "pacemaker": 0.4})
    metal_hu: Band = Band(8000.0, 20000.0)
    metal_streak_hu: Band = Band(60.0, 400.0)


# ---- disease that is not a nodule -------------------------------------------------------------

@dataclass(frozen=True)
class DiseaseRanges:
    """Lung disease that is not a nodule: probability per patient, and severity."""

    emphysema_p: float = 0.3
    emphysema_fraction: Band = Band(0.02, 0.35)      # share of lung volume
    reticulation_p: float = 0.15                      # fibrosis, subpleural and basal
    consolidation_p: float = 0.15
    atelectasis_p: float = 0.25                       # dependent and plate-like
    effusion_p: float = 0.15
    effusion_depth_mm: Band = Band(5.0, 60.0)
    pleural_plaques_p: float = 0.1
    scars_p: float = 0.3                              # linear scars
    bronchial_wall_thickening_p: float = 0.2
    mucus_plugging_p: float = 0.1                     # mucus-filled bronchi (tree-in-bud, plugs)
    #: Calcified granulomas: benign nodules, kept in the reference as nodules with a low
    #: malignancy label (texture "calcified").
    granulomas_p: float = 0.3
    granulomas: Band = Band(1, 4)
    granuloma_mm: Band = Band(2.0, 8.0)
    #: Severities.  Emphysema: HU of the low-attenuation areas, and the upper-lobe weight
    #: (how many times likelier at the apex than at the base).
    emphysema_hu: Band = Band(-1000.0, -950.0)
    emphysema_upper_weight: Band = Band(1.5, 6.0)
    #: Reticulation: depth of the subpleural band, height of the basal zone it covers, HU of its
    #: lines, and the probability of honeycombing (clustered subpleural cysts 3-10 mm).
    reticulation_depth_mm: Band = Band(8.0, 30.0)
    reticulation_height_mm: Band = Band(40.0, 140.0)
    reticulation_hu: Band = Band(-450.0, -50.0)
    honeycombing_p: float = 0.5
    honeycomb_cyst_mm: Band = Band(3.0, 10.0)
    #: Consolidation: regions per patient, size, HU (air bronchograms stay air).
    consolidations: Band = Band(1, 2)
    consolidation_mm: Band = Band(25.0, 90.0)
    consolidation_hu: Band = Band(-60.0, 60.0)
    #: Atelectasis: depth of the dependent band, HU, and plate-like bands per patient.
    atelectasis_depth_mm: Band = Band(4.0, 25.0)
    atelectasis_hu: Band = Band(-450.0, 0.0)
    atelectasis_plates: Band = Band(0, 3)
    #: Pleural effusion HU.
    effusion_hu: Band = Band(0.0, 20.0)
    #: Pleural plaques: count, diameter, thickness, the share calcified and their HU.
    plaques: Band = Band(1, 8)
    plaque_mm: Band = Band(10.0, 50.0)
    plaque_thickness_mm: Band = Band(2.0, 8.0)
    plaque_calcified_p: float = 0.5
    plaque_hu: Band = Band(30.0, 80.0)
    plaque_calcified_hu: Band = Band(300.0, 900.0)
    #: Linear scars: count, length, width and HU.
    scars: Band = Band(1, 4)
    scar_length_mm: Band = Band(15.0, 50.0)
    scar_radius_mm: Band = Band(0.6, 1.5)
    scar_hu: Band = Band(-250.0, 40.0)
    #: Bronchial wall thickening: factor on the wall of the bronchi, and extra wall HU.
    bronchial_wall_factor: Band = Band(1.6, 3.0)
    #: Mucus: share of the bronchi filled (in one region), their HU, and tree-in-bud clusters.
    mucus_fraction: Band = Band(0.1, 0.5)
    mucus_hu: Band = Band(0.0, 40.0)
    tree_in_bud_clusters: Band = Band(1, 5)


# ---- lesions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LesionRanges:
    """Lesion kinds beyond the default generator's, and their shares among drawn lesions."""

    #: Spiculated part-solid lesions with vessel convergence and pleural retraction.
    convergent_p: float = 0.15
    #: Irregular lesions and cavitated ones (air inside a thick, irregular wall).
    irregular_p: float = 0.1
    cavitated_p: float = 0.07
    #: Ground-glass lesions with the vessels running through them.
    ggo_with_vessels_p: float = 0.1
    # -- how they are drawn (lungcad.synthetic.lesion_specs, lesion_shapes) --
    #: Smallest diameter (mm) of each kind.
    convergent_min_mm: float = 10.0
    irregular_min_mm: float = 8.0
    cavitated_min_mm: float = 12.0
    ggo_with_vessels_min_mm: float = 8.0
    #: Convergent: vessels (capsules) from the lung around that converge on the lesion, their
    #: count and radius (mm); pleural retraction (a tag from the lesion to the nearest pleura,
    #: the pleura pulled in as a small soft-tissue triangle) when the pleura is at most
    #: ``retraction_max_mm`` from the lesion's surface.
    convergent_vessels: Band = Band(3, 7)
    convergent_vessel_mm: Band = Band(0.6, 1.5)
    retraction_max_mm: float = 45.0
    #: Cavitated: air HU inside, and the wall thickness over the lesion's radius.
    cavity_hu: Band = Band(-1000.0, -900.0)
    cavity_wall: Band = Band(0.2, 0.45)
    #: Ground glass with vessels through it: count, radius (mm), and HU without contrast
    #: (with contrast: AcquisitionRanges.contrast_blood_hu).
    through_vessels: Band = Band(1, 3)
    through_vessel_mm: Band = Band(0.6, 1.6)
    through_vessel_hu: Band = Band(20.0, 60.0)


@dataclass(frozen=True)
class Ranges:
    anatomy: AnatomyRanges = AnatomyRanges()
    acquisition: AcquisitionRanges = AcquisitionRanges()
    disease: DiseaseRanges = DiseaseRanges()
    lesions: LesionRanges = LesionRanges()


#: The training ranges.
RANDOMIZED = Ranges()


# ---- held out ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeldOut:
    """Bands inside the ranges above that no training draw may fall in.

    The shifted family draws these factors inside them.  Each band sits inside its range, so
    the shift is one of interpolation that a network that learnt what a nodule is should
    bridge, not one of extrapolation.
    """

    slice_thickness_mm: tuple = (Band(1.5, 2.0), Band(6.0, 7.0))
    kernel_family: str = "medium-sharp"
    anatomy_scale: Band = Band(1.10, 1.20)


HELD_OUT = HeldOut()


def _check_held_out(r: Ranges = RANDOMIZED, h: HeldOut = HELD_OUT) -> None:
    for b in h.slice_thickness_mm:
        if not (r.acquisition.slice_thickness_mm.lo < b.lo and b.hi < r.acquisition.slice_thickness_mm.hi):
            raise ValueError(f"held-out slice band {b} not inside {r.acquisition.slice_thickness_mm}")
    if h.kernel_family not in KERNEL_FAMILIES:
        raise ValueError(f"held-out kernel family expected one of {sorted(KERNEL_FAMILIES)}. "
                         f"Received {h.kernel_family!r}")
    a = r.anatomy.anatomy_scale
    if not (a.lo < h.anatomy_scale.lo and h.anatomy_scale.hi < a.hi):
        raise ValueError(f"held-out anatomy band {h.anatomy_scale} not inside {a}")


_check_held_out()


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"domain expected one of {DOMAINS}. Received domain={domain!r}")
    return domain


def check_training_seed(seed: int, patients: int) -> None:
    """Raise if data-set seeds ``seed .. seed + patients`` overlap an evaluation family's."""
    for name, s0, n in (("validation", VALIDATION_SEED, VALIDATION_PATIENTS),
                        ("shifted", SHIFTED_SEED, SHIFTED_PATIENTS)):
        if seed < s0 + n and s0 < seed + patients:
            raise ValueError(f"seeds {seed}-{seed + patients - 1} overlap the {name} family "
                             f"({s0}-{s0 + n - 1}); training must not see it")


# ---- drawing within a domain, respecting the held-out bands -----------------------------------

def _uniform_outside(rng: np.random.Generator, rng_band: Band, holes) -> float:
    """Uniform on ``rng_band`` minus the ``holes`` (by rejection; the holes are small)."""
    for _ in range(1000):
        x = float(rng.uniform(rng_band.lo, rng_band.hi))
        if not any(h.contains(x) for h in holes):
            return x
    raise RuntimeError("held-out bands cover the whole range")  # _check_held_out prevents this


def draw_slice_thickness(rng: np.random.Generator, domain: str) -> float:
    """Slice thickness (mm): log-uniform over the range, the held-out bands left out
    (``randomized``), or uniform inside one held-out band (``shifted``)."""
    h = HELD_OUT.slice_thickness_mm
    if check_domain(domain) == "shifted":
        b = h[int(rng.integers(len(h)))]
        return float(rng.uniform(b.lo, b.hi))
    r = RANDOMIZED.acquisition.slice_thickness_mm
    log_band = Band(np.log(r.lo), np.log(r.hi))
    log_holes = [Band(np.log(b.lo), np.log(b.hi)) for b in h]
    return float(np.exp(_uniform_outside(rng, log_band, log_holes)))


def draw_kernel(rng: np.random.Generator, domain: str) -> tuple[str, float]:
    """(family, MTF50 in lp/mm)."""
    if check_domain(domain) == "shifted":
        fam = HELD_OUT.kernel_family
    else:
        p = dict(RANDOMIZED.acquisition.kernel_p)
        p.pop(HELD_OUT.kernel_family, None)
        names = sorted(p)
        w = np.array([p[n] for n in names], dtype=float)
        fam = names[int(rng.choice(len(names), p=w / w.sum()))]
    b = KERNEL_FAMILIES[fam]
    return fam, float(rng.uniform(b.lo, b.hi))


def draw_anatomy_scale(rng: np.random.Generator, domain: str) -> float:
    if check_domain(domain) == "shifted":
        b = HELD_OUT.anatomy_scale
        return float(rng.uniform(b.lo, b.hi))
    return _uniform_outside(rng, RANDOMIZED.anatomy.anatomy_scale, [HELD_OUT.anatomy_scale])


def band_uniform(rng: np.random.Generator, b: Band) -> float:
    return float(rng.uniform(b.lo, b.hi))


def band_log_uniform(rng: np.random.Generator, b: Band) -> float:
    return float(np.exp(rng.uniform(np.log(b.lo), np.log(b.hi))))


def describe() -> dict:
    """Every range and held-out band, JSON-ready (for model cards and ``lungcad synth``)."""
    from dataclasses import asdict

    def conv(x):
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv({"randomized": asdict(RANDOMIZED), "held_out": asdict(HELD_OUT),
                 "kernel_families": {k: asdict(v) for k, v in KERNEL_FAMILIES.items()},
                 "validation": {"seed": VALIDATION_SEED, "patients": VALIDATION_PATIENTS,
                                "size": VALIDATION_SIZE},
                 "shifted": {"seed": SHIFTED_SEED, "patients": SHIFTED_PATIENTS, "size": SHIFTED_SIZE}})
