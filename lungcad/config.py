"""Typed pipeline configuration, loaded from the TOML files in ``pipelines/``.

The dataclass defaults *are* the default pipeline; ``pipelines/default.toml`` writes
them out for people to read and copy, and a test keeps the two equal.  A stage never
reads this module: the :class:`~lungcad.pipeline.Pipeline` passes each stage its
fields as keyword arguments.
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
    threshold_hu: float = -320.0
    plausible_litres: tuple[float, float] = (0.5, 12.0)
    closing_mm: float = 12.0
    mass_mm: float = 35.0
    margin_mm: float = 10.0


@dataclass
class CandidatesConfig:
    weights: str = "builtin:segmenter.keras"
    context_slices: int = 1          # 2.5D: this many slices above and below as extra channels
    pixel_mm: float = 1.25           # in-plane resampling of the network input (0 = native)
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    batch_size: int = 8
    tile: int = 16                   # network input sizes are padded to a multiple of this


@dataclass
class MorphologyConfig:
    threshold: float = 0.4
    dilation_mm: float = 1.0
    erosion_mm: float = 1.0
    merge_distance_mm: float = 5.0
    z_merge_mm: float = 5.0
    max_gap_slices: int = 1
    z_overlap: float = 0.5           # neighbouring-slice detections sharing this much of the smaller link too,
    z_overlap_min_mm: float = 10.0   # ... when both are at least this wide (masses on thick slices)
    weak_threshold: float = 0.3      # faint blobs clear of the threshold foreground are candidates too (0 = off)
    split_threshold: float = 0.9     # large components split at this higher level give candidates too (0 = off)
    split_min_mm: float = 15.0       # ... components at least this wide (a disc of their area) in a slice
    min_diameter_mm: float = 2.0
    max_candidates: int = 1000

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
class FPRConfig:
    weights: str = "builtin:fpr.keras"
    backbone: str = "wrn2d"          # zoo classifier: 3-D ones see a cube, 2-D ones orthogonal views
    patch_size: int = 32             # voxels per side of the cube
    patch_mm: float = 1.0            # isotropic spacing of the cube for nodules
    fit_fraction: float = 0.7        # a lesion fills at most this fraction of the cube; larger -> coarser
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    batch_size: int = 32
    tta: int = 8                     # test-time views averaged: 1 (none), 2, 4 or 8 (z turns x z mirror)
    tta_top: int = 200               # ... for this many candidates, the top ones of a plain pass (0 = all)
    suppress_within: float = 0.5     # drop a candidate closer than this x the diameter of a larger, higher one (0 = off)

    def __post_init__(self):
        from lungcad.fpr import TTA_CHOICES

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
    top_k: int = 5
    p_leak: float = 0.02
    # (scale, shift) of the noisy-OR's logit, fitted by `lungcad calibrate` on 40 phantoms (seed 779000)
    calibration: tuple[float, float] = (1.0275, -1.0104)

    def __post_init__(self):
        from lungcad.aggregate import check_calibration

        try:
            check_calibration(self.calibration)
        except ValueError as e:
            raise ConfigError(f"[aggregate] {e}") from None


@dataclass
class PipelineConfig:
    name: str = "default"
    lungmask: LungMaskConfig = field(default_factory=LungMaskConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    morphology: MorphologyConfig = field(default_factory=MorphologyConfig)
    fpr: FPRConfig = field(default_factory=FPRConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
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
