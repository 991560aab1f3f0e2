"""Typed pipeline configuration, loaded from the TOML files in ``pipelines/``.

The dataclass defaults *are* the default pipeline; ``pipelines/default.toml`` writes
them out for people to read and copy, and a test keeps the two equal.  A stage never
reads this module: the :class:`~lungcad.pipeline.Pipeline` passes each stage its
fields as keyword arguments.

Each field is documented once, by the string literal under it (an attribute docstring).
:func:`markdown_table` writes the defaults and those strings as the README's configuration
table (``python docs/gen_config_table.py``), and a test keeps the README equal to it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungcad.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class LungMaskConfig:
    """``[lungmask]``: the classical lung mask (:func:`lungcad.lungmask.segment_lungs`)."""

    threshold_hu: float = -320.0
    """Air/tissue threshold (HU) of the lung mask."""
    plausible_litres: tuple[float, float] = (0.5, 12.0)
    """Lung volume range (litres): a mask outside it falls back to the body's bounding box, with a warning."""
    closing_mm: float = 12.0
    """Radius (mm) of the in-plane closing of each lung; it keeps juxta-pleural nodules up to about this size
    in the mask."""
    mass_mm: float = 35.0
    """Radius (mm) of the 3-D ball closing that keeps masses bulging in from the chest wall, mediastinum or
    hilum (up to about twice this size; 0 = off)."""
    margin_mm: float = 10.0
    """Margin (mm) around the lung mask's bounding box: the box the U-Net searches."""


@dataclass
class CandidatesConfig:
    """``[candidates]``: the candidate U-Net (:func:`lungcad.candidates.predict_probability_map`)."""

    weights: str = "builtin:segmenter.keras"
    """The U-Net: `builtin:NAME` (shipped in `lungcad/weights/`) or a path relative to the TOML file
    (`lungcad train segmenter`)."""
    context_slices: int = 1
    """Slices above and below given to the U-Net as extra channels (2.5-D; 0 = 2-D); must match the
    weights."""
    pixel_mm: float = 1.25
    """In-plane pixel size (mm) the slices are resampled to for the U-Net (0 keeps the scan's own)."""
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    """HU window [low, high] scaled to [0, 1] for the U-Net."""
    batch_size: int = 8
    """Slices per U-Net batch (`--batch-size` sets it, and `[fpr] batch_size`)."""
    tile: int = 16
    """The U-Net input is padded to a multiple of this many pixels."""


@dataclass
class MorphologyConfig:
    """``[morphology]``: from the probability map to candidates
    (:func:`lungcad.morphology.extract_candidates`)."""

    threshold: float = 0.4
    """U-Net probability from which a voxel is foreground."""
    dilation_mm: float = 1.0
    """Radius (mm) of the in-plane dilation of the thresholded map..."""
    erosion_mm: float = 1.0
    """... and of the erosion after it (together a closing)."""
    merge_distance_mm: float = 5.0
    """Detections of one slice whose centroids are closer than this (mm) become one."""
    z_merge_mm: float = 5.0
    """Detections of neighbouring slices whose in-plane centroids lie within this (mm) link into one
    candidate."""
    max_gap_slices: int = 1
    """Detections at most this many slices apart may link (1: neighbouring slices only; 2 bridges one
    slice)."""
    z_overlap: float = 0.5
    """Detections of neighbouring slices that share this fraction of the smaller one's pixels link too
    (0 = off)..."""
    z_overlap_min_mm: float = 10.0
    """... when both are at least this wide (mm): a mass on thick slices stays one candidate."""
    weak_threshold: float = 0.3
    """Faint blobs that reach this level but keep clear of the `threshold` foreground are candidates too (small
    nodules on thick slices; 0 = off)."""
    split_threshold: float = 0.9
    """Components at least `split_min_mm` wide in a slice are labelled again at this level, and their parts are
    candidates too (a nodule joined to the hilum; 0 = off)."""
    split_min_mm: float = 15.0
    """Width (mm; the diameter of a disc of the same area) from which a component is split."""
    min_diameter_mm: float = 2.0
    """Candidates with a smaller equivalent-sphere diameter (mm) are dropped."""
    max_candidates: int = 1000
    """Candidates kept per scan, the U-Net's most probable, before the FPR network ranks them."""

    def __post_init__(self):
        if not (isinstance(self.z_overlap, (int, float)) and 0.0 <= self.z_overlap <= 1.0):
            raise ConfigError(f"[morphology] z_overlap: expected a fraction from 0 (off) to 1. "
                              f"Received {self.z_overlap!r}")
        if not (isinstance(self.weak_threshold, (int, float)) and 0.0 <= self.weak_threshold <= 1.0):
            # at or above `threshold` nothing lies between the two levels: no weak candidates
            raise ConfigError(f"[morphology] weak_threshold: expected a level from 0 (off) to 1, below "
                              f"threshold to take effect. Received {self.weak_threshold!r}")
        if not (isinstance(self.split_threshold, (int, float)) and 0.0 <= self.split_threshold <= 1.0):
            # at or below `threshold` the level splits nothing: no split candidates
            raise ConfigError(f"[morphology] split_threshold: expected a level from 0 (off) to 1, above "
                              f"threshold to take effect. Received {self.split_threshold!r}")
        if not (isinstance(self.split_min_mm, (int, float)) and self.split_min_mm >= 0.0):
            raise ConfigError(f"[morphology] split_min_mm: expected a width >= 0 in mm. "
                              f"Received {self.split_min_mm!r}")
        if not (isinstance(self.z_overlap_min_mm, (int, float)) and self.z_overlap_min_mm >= 0.0):
            raise ConfigError(f"[morphology] z_overlap_min_mm: expected a width >= 0 in mm. "
                              f"Received {self.z_overlap_min_mm!r}")


@dataclass
class DenseConfig:
    """``[dense]``: a classical second source of candidates, compact dense blobs in the lung
    (calcified nodules the U-Net misses; :func:`lungcad.morphology.add_dense_candidates`)."""

    max_added: int = 50
    """At most this many blobs join a scan's candidates, the densest first (0 = off)."""
    min_hu: float = 150.0
    """HU threshold on the scan smoothed in-plane by `smooth_mm`."""
    smooth_mm: float = 0.6
    """In-plane Gaussian (sigma, mm) against noise before the threshold (0 = none)."""
    min_diameter_mm: float = 2.0
    """Equivalent-sphere diameter of the blob's dense voxels, at least."""
    max_diameter_mm: float = 15.0
    """Extent along each axis, at most."""
    max_elongation: float = 3.0
    """Longest over shortest principal axis, at most (a contrast-filled vessel is a tube)."""
    shell_mm: float = 2.5
    """Thickness of the shell around the blob that `min_air_fraction` reads."""
    min_air_fraction: float = 0.35
    """Share of a `shell_mm` shell around the blob below -500 HU, at least (a rib or calcium in the
    aorta has none, an isolated nodule nearly all, a juxta-pleural one about half)."""

    def __post_init__(self):
        if not (isinstance(self.max_added, int) and not isinstance(self.max_added, bool) and self.max_added >= 0):
            raise ConfigError(f"[dense] max_added: expected a number of candidates >= 0 (0 = off). "
                              f"Received {self.max_added!r}")
        if not (isinstance(self.min_air_fraction, (int, float)) and 0.0 <= self.min_air_fraction <= 1.0):
            raise ConfigError(f"[dense] min_air_fraction: expected a fraction from 0 to 1. "
                              f"Received {self.min_air_fraction!r}")
        for key in ("smooth_mm", "min_diameter_mm", "max_diameter_mm", "shell_mm"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0.0):
                raise ConfigError(f"[dense] {key}: expected a size >= 0 in mm. Received {v!r}")
        if not (isinstance(self.max_elongation, (int, float)) and self.max_elongation >= 1.0):
            raise ConfigError(f"[dense] max_elongation: expected a ratio >= 1. Received {self.max_elongation!r}")


@dataclass
class FPRConfig:
    """``[fpr]``: false-positive reduction (:func:`lungcad.fpr.classify_candidates`,
    :func:`lungcad.fpr.suppress_inside`)."""

    weights: str = "builtin:fpr.keras"
    """The FPR network (backbone, nodule and malignancy heads): `builtin:NAME` or a path relative to the TOML
    file (`lungcad train fpr`)."""
    backbone: str = "wrn2d"
    """Zoo classifier the weights hold (`lungcad zoo list`): a 3-D one (wrn3d, resnet18-3d) sees a cube, a 2-D
    one (wrn2d, resnet18, ...) three orthogonal planes; a mismatch with the weights is an error."""
    patch_size: int = 32
    """Voxels per side of the cube (pixels per side of each view)."""
    patch_mm: float = 1.0
    """Spacing (mm per voxel) at which nodules are sampled."""
    fit_fraction: float = 0.7
    """A candidate fills at most this fraction of the patch: larger ones (masses) are sampled coarser."""
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    """HU window [low, high] scaled to [0, 1] for the FPR network."""
    batch_size: int = 32
    """Patches per FPR batch."""
    tta: int = 8
    """Test-time views averaged: 1 (none), 2, 4 (turns of 90 degrees about the head-to-feet axis) or 8 (the
    four turns, also mirrored in that axis)."""
    tta_top: int = 200
    """Only this many candidates, the highest of a plain first pass, get the `tta` views (0 = all)."""
    suppress_within: float = 0.5
    """After scoring, a candidate whose centre lies within this times the diameter of a larger, higher-scored
    one is dropped as a part of it (0 = off)."""

    def __post_init__(self):
        from lungcad.inference import TTA_CHOICES

        if self.tta not in TTA_CHOICES:
            raise ConfigError(f"[fpr] tta: expected one of {TTA_CHOICES} test-time views. Received {self.tta!r}")
        if not (isinstance(self.suppress_within, (int, float)) and 0.0 <= self.suppress_within <= 1.0):
            raise ConfigError(f"[fpr] suppress_within: expected a fraction of the diameter from 0 (off) to 1. "
                              f"Received {self.suppress_within!r}")
        if not (isinstance(self.tta_top, int) and not isinstance(self.tta_top, bool) and self.tta_top >= 0):
            raise ConfigError(f"[fpr] tta_top: expected a number of candidates >= 0 (0 = all). "
                              f"Received {self.tta_top!r}")


@dataclass
class AggregateConfig:
    """``[aggregate]``: the patient's cancer probability (:func:`lungcad.aggregate.aggregate`)."""

    top_k: int = 5
    """Candidates (largest nodule x malignancy probability) that enter the leaky noisy-OR."""
    p_leak: float = 0.02
    """Probability of cancer that no candidate explains (the result for a scan without candidates)."""
    calibration: tuple[float, float] = (1.0275, -1.0104)
    """[scale, shift]: P = sigmoid(scale * logit(noisy-OR) + shift); [1.0, 0.0] is none.  Fitted by
    `lungcad calibrate` on 40 phantoms (seed 779000); fit your own for other patients."""

    def __post_init__(self):
        from lungcad.aggregate import check_calibration

        try:
            check_calibration(self.calibration)
        except ValueError as e:
            raise ConfigError(f"[aggregate] {e}") from None


@dataclass
class ReportedConfig:
    """``[reported]``: which candidates are reported nodules, measured
    (:func:`lungcad.measurements.measure_nodules`) and written to every clinical output."""

    min_probability: float = 0.5
    """A candidate is reported when its final `probability` (the FPR network's nodule probability) is at least
    this."""
    max_nodules: int = 10
    """At most this many are reported per scan, the most probable first (0 = none)."""

    def __post_init__(self):
        if not (isinstance(self.min_probability, (int, float)) and not isinstance(self.min_probability, bool)
                and 0.0 <= self.min_probability <= 1.0):
            raise ConfigError(f"[reported] min_probability: expected a probability from 0 to 1. "
                              f"Received {self.min_probability!r}")
        if not (isinstance(self.max_nodules, int) and not isinstance(self.max_nodules, bool)
                and self.max_nodules >= 0):
            raise ConfigError(f"[reported] max_nodules: expected a number of nodules >= 0. "
                              f"Received {self.max_nodules!r}")


@dataclass
class PipelineConfig:
    name: str = "default"
    """A name for the pipeline, recorded with the config in every output."""
    lungmask: LungMaskConfig = field(default_factory=LungMaskConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    morphology: MorphologyConfig = field(default_factory=MorphologyConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    fpr: FPRConfig = field(default_factory=FPRConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    reported: ReportedConfig = field(default_factory=ReportedConfig)
    #: folder that relative weight paths are resolved against (the TOML file's folder)
    base_dir: str = ""

    # ---- construction -------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, base_dir: str | Path = "") -> "PipelineConfig":
        d = copy.deepcopy(d)
        kw: dict[str, Any] = {"base_dir": str(base_dir)}
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key not in sections or key == "base_dir":
                raise ConfigError(f"unknown pipeline section or key {key!r}. Expected one of "
                                  f"{sorted(k for k in sections if k != 'base_dir')}")
            f = sections[key]
            if key == "name":
                kw["name"] = str(value)
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table. Received {value!r}")
            kw[key] = _build_section(f.default_factory, key, value)
        return cls(**kw)

    @classmethod
    def from_toml(cls, path: str | Path) -> "PipelineConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: pipeline file not found")
        try:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from e
        return cls.from_dict(data, base_dir=p.resolve().parent)

    def with_overrides(self, overrides: dict[str, Any]) -> "PipelineConfig":
        """A copy with dotted fields replaced, e.g. ``{"fpr.batch_size": 8}``."""
        d = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in d or not isinstance(d[section], dict) or key not in d[section]:
                raise ConfigError(f"unknown config field {dotted!r}")
            d[section][key] = value
        d.pop("base_dir", None)
        return PipelineConfig.from_dict(d, base_dir=self.base_dir)

    # ---- views ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))          # tuples -> lists, plain types only

    def hash(self) -> str:
        d = self.to_dict()
        d.pop("base_dir", None)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def resolve_weights(self, ref: str) -> Path:
        """``builtin:NAME`` -> the shipped file; otherwise a path, relative to the TOML's folder."""
        if ref.startswith("builtin:"):
            return WEIGHTS_DIR / ref.split(":", 1)[1]
        p = Path(ref).expanduser()
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p


def _build_section(factory, section: str, values: dict[str, Any]):
    default = factory()
    allowed = {f.name: f for f in dataclasses.fields(default)}
    kw = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} in [{section}]. Expected one of {sorted(allowed)}")
        current = getattr(default, key)
        kw[key] = _coerce(section, key, current, value)
    return dataclasses.replace(default, **kw)


def _coerce(section: str, key: str, current: Any, value: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false. Received {value!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"{where}: expected a list of {len(current)} numbers. Received {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer. Received {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number. Received {value!r}")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string. Received {value!r}")
        return value
    return value


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """The pipeline in ``path``, or the built-in default when ``path`` is None."""
    return PipelineConfig() if path is None else PipelineConfig.from_toml(path)


# ---------------------------------------------------------------- documentation

def field_docs() -> dict[str, dict[str, str]]:
    """The attribute docstrings of this module's config classes: ``{class name: {field: text}}``,
    each text on one line.  They are the one description of each field (read from the source)."""
    import ast

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for a, b in zip(node.body, node.body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def markdown_table() -> str:
    """Every key of a pipeline file with its default and meaning, as a Markdown table (the
    README's).  Raises ValueError for a field without its docstring."""
    docs = field_docs()
    default = PipelineConfig()

    def doc(cls_name: str, key: str, where: str) -> str:
        text = docs.get(cls_name, {}).get(key)
        if not text:
            raise ValueError(f"{where} has no docstring in lungcad/config.py: write one under the field")
        return text.replace("|", "\\|")

    rows = ["| key | default | meaning |", "|---|---|---|",
            f"| `name` | `{_toml_value(default.name)}` | {doc('PipelineConfig', 'name', 'name')} |"]
    for sec in dataclasses.fields(PipelineConfig):
        if sec.name in ("name", "base_dir"):
            continue
        section = getattr(default, sec.name)
        for f in dataclasses.fields(section):
            where = f"[{sec.name}] {f.name}"
            rows.append(f"| `{where}` | `{_toml_value(getattr(section, f.name))}` | "
                        f"{doc(type(section).__name__, f.name, where)} |")
    return "\n".join(rows) + "\n"
