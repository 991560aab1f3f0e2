"""One source of shipped defaults: a stage function called bare gives what `lungcad detect` gives.

The keyword defaults of every stage function are compared with the config dataclasses'
defaults (lungcad/config.py), and those with pipelines/default.toml, key by key; and the
pipeline is checked to pass every key of its sections to the stages explicitly, so that
the bare defaults never change what `lungcad detect` computes.
"""
from __future__ import annotations

import dataclasses
import inspect
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcad import aggregate, candidates, config, fpr, lungmask, measurements, morphology, pipeline
from lungcad.config import PipelineConfig
from lungcad.volume import CTVolume

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"lungmask": config.LungMaskConfig, "candidates": config.CandidatesConfig,
            "morphology": config.MorphologyConfig, "dense": config.DenseConfig, "fpr": config.FPRConfig, "aggregate": config.AggregateConfig,
            "reported": config.ReportedConfig}

#: (stage function, section, {config key: keyword}): the keywords whose defaults must be the
#: section's.  A key maps to a keyword of the same name unless given as a pair.
STAGES = [
    (lungmask.segment_lungs, "lungmask", ["threshold_hu", "plausible_litres", "closing_mm", "mass_mm"]),
    (lungmask.lung_box, "lungmask", ["margin_mm"]),
    (candidates.predict_probability_map, "candidates", ["context_slices", "pixel_mm", "window_hu", "batch_size", "tile"]),
    (candidates.prepare_slices, "candidates", ["context_slices", "pixel_mm", "window_hu", "tile"]),
    (candidates.window, "candidates", ["window_hu"]),
    (morphology.extract_candidates, "morphology", [f.name for f in dataclasses.fields(config.MorphologyConfig)]),
    (morphology.add_dense_candidates, "dense", [f.name for f in dataclasses.fields(config.DenseConfig)]),
    (fpr.classify_candidates, "fpr", ["patch_size", "patch_mm", "fit_fraction", "window_hu", "batch_size",
                                      "tta", "tta_top"]),
    (fpr.suppress_inside, "fpr", [("suppress_within", "within")]),
    (fpr.build_fpr_model, "fpr", ["backbone", "patch_size"]),
    (fpr.patch_spacing, "fpr", ["patch_size", "patch_mm", "fit_fraction"]),
    (fpr.extract_patches, "fpr", ["patch_size", "window_hu"]),
    (aggregate.aggregate, "aggregate", ["top_k", "p_leak", "calibration"]),
    (measurements.measure_nodules, "reported", ["min_probability", "max_nodules"]),
    (measurements.reported_rows, "reported", ["min_probability", "max_nodules"]),
]
#: Config keys that are no stage keyword, and why.
NOT_KEYWORDS = {("candidates", "weights"): "the file the pipeline loads the U-Net from",
                ("fpr", "weights"): "the file the pipeline loads the FPR network from",
                ("fpr", "backbone"): "checked against the weights on loading; classify_candidates reads the views "
                                     "from the network (build_fpr_model's default is compared above)"}


def plain(v):
    """Tuples and lists alike (the TOML file and JSON have lists)."""
    return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def cases():
    for func, section, keys in STAGES:
        for key in keys:
            key, kw = key if isinstance(key, tuple) else (key, key)
            yield pytest.param(func, section, key, kw, id=f"{func.__name__}-{kw}")


@pytest.mark.parametrize("func, section, key, kw", list(cases()))
def test_stage_default_is_the_shipped_default(func, section, key, kw):
    params = inspect.signature(func).parameters
    assert kw in params, f"{func.__module__}.{func.__name__} has no keyword {kw!r} for [{section}] {key}"
    have = params[kw].default
    want = getattr(SECTIONS[section](), key)
    assert plain(have) == plain(want), (
        f"{func.__module__}.{func.__name__}({kw}={have!r}) but the shipped [{section}] {key} is {want!r}: "
        f"change one of them (lungcad/config.py, pipelines/default.toml) so that they are the same")


def test_every_config_key_is_a_stage_default():
    """A new [section] key gets a stage keyword with the same default (or a reason here)."""
    covered = {(section, k if isinstance(k, str) else k[0]) for _, section, keys in STAGES for k in keys}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert (section, f.name) in covered or (section, f.name) in NOT_KEYWORDS, \
                f"[{section}] {f.name} is compared with no stage function's default (add it to STAGES)"


def test_views_default_is_the_shipped_backbones():
    want = fpr.views_for(config.FPRConfig().backbone)
    assert inspect.signature(fpr.extract_patches).parameters["views"].default == want


def test_default_toml_writes_out_every_code_default():
    """pipelines/default.toml names every key of every section, with the dataclass default
    (a key left out would load as the default too, and the file would no longer show it)."""
    data = tomllib.loads((REPO / "pipelines" / "default.toml").read_text())
    assert data.pop("name") == PipelineConfig().name
    assert set(data) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        default = cls()
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(data[section]) == names, f"[{section}] of default.toml: {sorted(set(data[section]) ^ names)}"
        for key, value in data[section].items():
            assert plain(value) == plain(getattr(default, key)), \
                f"default.toml [{section}] {key} = {value!r}, but lungcad/config.py has {getattr(default, key)!r}"


# ----------------------------------------------------------------- the pipeline passes every key

def _changed(value, key):
    """A valid value other than the default, so that a key the pipeline drops would show."""
    if key == "tta":
        return 4
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return round(value * 0.5 + 0.01, 6)
    if isinstance(value, tuple):
        return [round(v * 0.5 + 0.01, 6) for v in value]
    return value


def test_the_pipeline_passes_every_key_to_its_stage(monkeypatch):
    """With every [section] value changed, each stage function receives the config's value for
    every keyword compared above: the stages' bare defaults play no part in `lungcad detect`."""
    overrides = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if (section, f.name) not in NOT_KEYWORDS:
                overrides[f"{section}.{f.name}"] = _changed(getattr(cls(), f.name), f.name)
    cfg = PipelineConfig().with_overrides(overrides)
    seen: dict[str, dict] = {}

    def spy(name, result):
        def fake(*args, **kw):
            seen[name] = kw
            return result(*args, **kw)
        return fake

    vol = CTVolume(np.full((4, 8, 8), -800, np.int16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), series_uid="s")
    table = pd.DataFrame({"seriesuid": ["s"], "coordX": [1.0], "coordY": [1.0], "coordZ": [1.0], "z": [1.0],
                          "y": [1.0], "x": [1.0], "diameter_mm": [5.0], "probability": [0.5], "seg_prob": [0.5]})
    scored = table.assign(nodule_prob=0.5, malignancy_prob=0.5, patch_mm=1.0)
    lm = lungmask.LungMask(mask=np.ones(vol.shape, bool), volume_ml=1000.0)
    monkeypatch.setattr(lungmask, "segment_lungs", spy("segment_lungs", lambda *a, **k: lm))
    monkeypatch.setattr(lungmask, "lung_box", spy("lung_box", lambda *a, **k: tuple(slice(0, n) for n in vol.shape)))
    monkeypatch.setattr(candidates, "predict_probability_map",
                        spy("predict_probability_map", lambda *a, **k: np.zeros(vol.shape, np.float32)))
    monkeypatch.setattr(morphology, "extract_candidates", spy("extract_candidates", lambda *a, **k: table))
    monkeypatch.setattr(morphology, "add_dense_candidates", spy("add_dense_candidates", lambda t, *a, **k: t))
    monkeypatch.setattr(fpr, "classify_candidates", spy("classify_candidates", lambda *a, **k: scored))
    monkeypatch.setattr(fpr, "suppress_inside", spy("suppress_inside", lambda t, **k: t))
    monkeypatch.setattr(aggregate, "aggregate", spy("aggregate", lambda *a, **k: 0.5))
    measured = measurements.Measured(scored, np.zeros(vol.shape, np.int16), {"n": 0})
    monkeypatch.setattr(measurements, "measure_nodules", spy("measure_nodules", lambda *a, **k: measured))

    result = pipeline.Pipeline(cfg, segmenter=object(), classifier=object()).run(vol)
    assert result.cancer_probability == 0.5
    for func, section, keys in STAGES:
        if func.__name__ not in seen:      # helpers the stages call with their own arguments
            assert func in (candidates.prepare_slices, candidates.window, fpr.build_fpr_model,
                            fpr.patch_spacing, fpr.extract_patches, measurements.reported_rows), func.__name__
            continue
        for key in keys:
            key, kw = key if isinstance(key, tuple) else (key, key)
            assert kw in seen[func.__name__], f"the pipeline does not pass [{section}] {key} to {func.__name__}"
            assert plain(seen[func.__name__][kw]) == plain(getattr(getattr(cfg, section), key)), (func, kw)
    assert set(seen) == {"segment_lungs", "lung_box", "predict_probability_map", "extract_candidates",
                         "add_dense_candidates", "classify_candidates", "suppress_inside", "aggregate", "measure_nodules"}
