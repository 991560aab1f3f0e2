"""The detection pipeline: the stages of docs/architecture.md composed from a pipeline file.

>>> from lungcad.pipeline import Pipeline
>>> from lungcad.io import load_ct
>>> result = Pipeline.from_toml("pipelines/default.toml").run(load_ct("scan_folder/"))
>>> result.cancer_probability, result.candidates.head()

Each stage is a plain function in its own module; this class only passes each stage
its config fields, times it, and turns any failure inside a stage into a
:class:`~lungcad.errors.StageError` that names the stage and the series.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np

from lungcad import __version__
from lungcad.config import PipelineConfig, load_config
from lungcad.errors import ConfigError, InputError, LungcadError, StageError
from lungcad.result import ScanResult, table_text
from lungcad.volume import CTVolume

log = logging.getLogger(__name__)


def load_keras_model(path: str | Path):
    """Load a ``.keras`` file with ``safe_mode=True`` (nothing in it is executed)."""
    import keras

    import lungcad.models  # noqa: F401  registers the zoo's custom layers

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "model weights not found (train them with `lungcad train`, "
                            "or point the pipeline file at a .keras file)")
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError) as e:
        raise InputError(p, f"not a loadable .keras model: {e}") from e


def load_classifier(path: str | Path, config: PipelineConfig):
    """The FPR network of a ``.keras`` file, checked against ``config``'s ``[fpr]`` section."""
    model = load_keras_model(path)
    check_fpr_model(model, config, path)
    return model


def config_views(config: PipelineConfig) -> str:
    """The patches ``[fpr] backbone`` takes (:func:`lungcad.fpr.views_for`), or ConfigError."""
    from lungcad.fpr import views_for

    try:
        return views_for(config.fpr.backbone)
    except ValueError as e:
        raise ConfigError(f"[fpr] backbone: {e}") from None


def check_fpr_model(model, config: PipelineConfig, path) -> None:
    """Raise ConfigError unless an FPR weights file fits the pipeline's ``[fpr]`` section:
    the backbone it holds, the preprocessing it was trained with (each key of
    :data:`lungcad.fpr.PREPROCESSING`, read from the model card beside the file), and the
    patch it takes.  The message names the key, the weights' value and the config's value.

    Weights without a card are checked for what the file itself holds (backbone, patch
    shape), with a warning on the ``lungcad`` logger.
    """
    from lungcad.cards import card_path_for, read_card
    from lungcad.fpr import PREPROCESSING, model_backbone, model_patch_shape, patch_shape

    f = config.fpr
    expected = patch_shape(config_views(config), f.patch_size)
    held = model_backbone(model)
    if held is not None and held != f.backbone:
        raise ConfigError(f"{path}: these FPR weights hold a {held!r} backbone, but the pipeline's "
                          f"[fpr] backbone is {f.backbone!r}. Set [fpr] backbone = \"{held}\", or train "
                          f"weights for {f.backbone!r} with `lungcad train fpr --pipeline FILE` and point "
                          f"[fpr] weights at them")
    card = read_card(path)
    trained = card.get("preprocessing") if card is not None else None
    if not isinstance(trained, dict):
        log.warning("%s: no model card with the preprocessing of these FPR weights (%s); [fpr] %s "
                    "are not checked against them", path, card_path_for(path).name, ", ".join(PREPROCESSING))
        trained = {}
    for key in PREPROCESSING:
        if key in trained and not _same_value(trained[key], getattr(f, key)):
            theirs, ours = _toml_value(trained[key]), _toml_value(getattr(f, key))
            raise ConfigError(f"{path}: [fpr] {key}: these FPR weights were trained with {key} = {theirs} "
                              f"(their model card {card_path_for(path).name}), but the pipeline's [fpr] {key} "
                              f"is {ours}. Set [fpr] {key} = {theirs}, or train weights for {key} = {ours} "
                              f"with `lungcad train fpr --pipeline FILE` and point [fpr] weights at them")
    got = model_patch_shape(model)
    if got != expected:
        raise ConfigError(f"{path}: the FPR network takes patches of shape {got}, but [fpr] "
                          f"(backbone {f.backbone!r}, patch_size {f.patch_size}) makes {expected}")


def _same_value(a, b) -> bool:
    """A value of a model card (JSON) against a config value: numbers to within rounding,
    lists and tuples element by element."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same_value(x, y) for x, y in zip(a, b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _toml_value(v) -> str:
    """A value as a pipeline file writes it: ``0.7``, ``[-1000.0, 400.0]``, ``"wrn2d"``."""
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def versions() -> dict[str, str]:
    """Versions of lungcad and the libraries whose behaviour shapes a result."""
    import importlib.metadata as md

    out = {"lungcad": __version__, "python": platform.python_version()}
    for pkg in ("keras", "numpy", "scipy", "scikit-image", "pydicom", "SimpleITK", "pandas"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    with contextlib.suppress(ImportError):
        import keras
        out["keras_backend"] = keras.backend.backend()
    return out


# ---------------------------------------------------------------- the stages with a config
# Pipeline.run and training's candidate mining (lungcad.train.detection.detect_candidates) call
# these, so that what the FPR network is trained on is what the pipeline asks it about.

def lung_stage(volume: CTVolume, config: PipelineConfig):
    """The lung mask of ``volume`` (:func:`lungcad.lungmask.segment_lungs`) and the lung box
    around it, with ``config``'s ``[lungmask]`` settings: ``(LungMask, box)``."""
    from lungcad import lungmask

    c = config.lungmask
    lm = lungmask.segment_lungs(volume.hu, spacing_zyx=volume.spacing, direction=volume.direction,
                                threshold_hu=c.threshold_hu, plausible_litres=tuple(c.plausible_litres),
                                closing_mm=c.closing_mm, mass_mm=c.mass_mm)
    return lm, lungmask.lung_box(lm.mask, spacing_zyx=volume.spacing, margin_mm=c.margin_mm)


def candidate_stage(volume: CTVolume, segmenter, box, config: PipelineConfig) -> np.ndarray:
    """The U-Net's probability map of ``volume`` over the lung ``box``, with ``[candidates]``."""
    from lungcad import candidates

    c = config.candidates
    return candidates.predict_probability_map(
        volume.hu, spacing_zyx=volume.spacing, model=segmenter, box=box, context_slices=c.context_slices,
        pixel_mm=c.pixel_mm, window_hu=c.window_hu, batch_size=c.batch_size, tile=c.tile)


def morphology_stage(volume: CTVolume, prob: np.ndarray, lung_mask, config: PipelineConfig):
    """The candidate table of a probability map, with ``[morphology]`` (every key of that
    section is a keyword of :func:`lungcad.morphology.extract_candidates`)."""
    from lungcad import morphology

    table = morphology.extract_candidates(
        prob, spacing_zyx=volume.spacing, origin_xyz=volume.origin, direction=volume.direction,
        series_uid=volume.series_uid, mask=lung_mask, **dataclasses.asdict(config.morphology))
    return morphology.add_dense_candidates(
        table, volume.hu, prob, spacing_zyx=volume.spacing, origin_xyz=volume.origin, direction=volume.direction,
        lung_mask=lung_mask, series_uid=volume.series_uid, **dataclasses.asdict(config.dense))


def fpr_stage(volume: CTVolume, table, classifier, config: PipelineConfig, *, views: str | None = None):
    """``table`` with the FPR network's nodule and malignancy probabilities, with ``[fpr]``;
    with ``suppress_within``, less the candidates inside larger, higher-scored ones."""
    from lungcad import fpr

    f = config.fpr
    table = fpr.classify_candidates(volume, table, model=classifier, patch_size=f.patch_size,
                                    patch_mm=f.patch_mm, fit_fraction=f.fit_fraction, window_hu=f.window_hu,
                                    batch_size=f.batch_size, views=views, tta=f.tta, tta_top=f.tta_top)
    return fpr.suppress_inside(table, within=f.suppress_within)


def measure_stage(volume: CTVolume, table, prob, lung_mask, config: PipelineConfig):
    """The reported nodules of ``table`` segmented and measured, with ``[reported]``
    (:func:`lungcad.measurements.measure_nodules`): a :class:`~lungcad.measurements.Measured`."""
    from lungcad import measurements

    r = config.reported
    return measurements.measure_nodules(table, volume.hu, prob, lung_mask, spacing_zyx=volume.spacing,
                                        origin_xyz=volume.origin, direction=volume.direction,
                                        min_probability=r.min_probability, max_nodules=r.max_nodules)


class Pipeline:
    """Lung mask -> U-Net candidates -> morphology -> FPR -> measurements -> patient probability.

    Parameters
    ----------
    config : PipelineConfig, optional
        The default pipeline when None.
    segmenter, classifier : optional
        Models to use instead of loading the config's weight files (tests pass toy
        callables here to check the plumbing apart from learned weights).
    """

    def __init__(self, config: PipelineConfig | None = None, *, segmenter=None, classifier=None):
        self.config = config or PipelineConfig()
        self._segmenter = segmenter
        self._classifier = classifier
        self._versions = None
        #: role -> the sha256 of the weights file each network was loaded from (the scan JSON's
        #: ``versions["weights"]``, and the DICOM SR's algorithm parameters)
        self._weights: dict[str, str] = {}

    @classmethod
    def from_toml(cls, path: str | Path | None = None, **kw) -> "Pipeline":
        return cls(load_config(path), **kw)

    @property
    def segmenter(self):
        if self._segmenter is None:
            self._load("segmenter", self.config.resolve_weights(self.config.candidates.weights))
        return self._segmenter

    @property
    def classifier(self):
        if self._classifier is None:
            self._load("classifier", self.config.resolve_weights(self.config.fpr.weights))
        return self._classifier

    def _load(self, role: str, path) -> None:
        from lungcad.cards import weights_sha256

        if role == "segmenter":
            self._segmenter = load_keras_model(path)
        else:
            self._classifier = load_classifier(path, self.config)
        self._weights[role] = weights_sha256(path)
        self._versions = None

    @property
    def fpr_views(self) -> str:
        """The patches the FPR network takes: ``"cube"`` or ``"orthogonal"``.

        Read from a Keras classifier's input; otherwise (a toy callable, or nothing
        loaded yet) from ``[fpr] backbone``.
        """
        from lungcad.fpr import model_views

        return (model_views(self._classifier) if self._classifier is not None else None) or config_views(self.config)

    def load_models(self, *, segmenter: str | Path | None = None, classifier: str | Path | None = None) -> None:
        """Load both networks now (a batch run does it once, before the first scan).

        ``segmenter`` and ``classifier`` are weight files to load instead of the config's (a
        worker's private copy of the driver's files); the config, and so its hash in the
        outputs, stays as it is.  A network already held is kept."""
        if segmenter is not None and self._segmenter is None:
            self._load("segmenter", segmenter)
        if classifier is not None and self._classifier is None:
            self._load("classifier", classifier)
        _ = self.segmenter, self.classifier

    def networks_held(self) -> tuple[str, ...]:
        """The roles (``"segmenter"``, ``"classifier"``) whose network this pipeline holds in
        memory: given to the constructor, or loaded already."""
        return tuple(role for role, m in (("segmenter", self._segmenter), ("classifier", self._classifier))
                     if m is not None)

    def run(self, volume: CTVolume, *, input_path: str = "") -> ScanResult:
        """Run every stage on one scan and return its :class:`ScanResult`."""
        return self.finish(volume, self.prepare(volume), input_path=input_path)

    def prepare(self, volume: CTVolume) -> "Prepared":
        """The stages that need no network (the lung mask), as :meth:`finish` takes them.

        ``run`` is ``finish(volume, prepare(volume))``; the Ray engine runs ``prepare`` in a
        CPU task and ``finish`` in an actor that holds the networks.
        """
        prep = Prepared(lung=None, box=None, timings={}, warnings=list(volume.meta.get("warnings", [])))
        with _stage("lungmask", volume, prep.timings):
            prep.lung, prep.box = lung_stage(volume, self.config)
            prep.warnings.extend(prep.lung.warnings)
        return prep

    def finish(self, volume: CTVolume, prep: "Prepared", *, input_path: str = "") -> ScanResult:
        """The network stages (candidates, morphology, FPR), the measurements of the reported
        nodules and the aggregation, after :meth:`prepare`."""
        from lungcad import aggregate
        from lungcad.measurements import ProbabilityCrop

        cfg = self.config
        timings = dict(prep.timings)
        lm, box = prep.lung, prep.box

        with _stage("candidates", volume, timings):
            prob = candidate_stage(volume, self.segmenter, box, cfg)

        with _stage("morphology", volume, timings):
            table = morphology_stage(volume, prob, lm.mask, cfg)
            # kept for the measure stage: its lung box only, in steps of 1/255 (a quarter of the box)
            prob = ProbabilityCrop(prob, box)

        with _stage("fpr", volume, timings):
            table = fpr_stage(volume, table, self.classifier, cfg, views=self.fpr_views)

        with _stage("measure", volume, timings):
            measured = measure_stage(volume, table, prob, lm.mask, cfg)
            table = measured.candidates
            del prob

        with _stage("aggregate", volume, timings):
            p = aggregate.aggregate(table, top_k=cfg.aggregate.top_k, p_leak=cfg.aggregate.p_leak,
                                    calibration=cfg.aggregate.calibration)

        if "patient_id" not in table:
            table.insert(1, "patient_id", table_text(volume.patient_id))
        if self._versions is None:
            self._versions = versions()
            if self._weights:
                self._versions["weights"] = {name: self._weights[role] for role, name in
                                             (("segmenter", "segmenter"), ("classifier", "fpr"))
                                             if role in self._weights}
        meta = {k: v for k, v in volume.meta.items() if _is_plain(v)}
        return ScanResult(
            series_uid=volume.series_uid, patient_id=volume.patient_id, candidates=table,
            cancer_probability=float(p), input_path=str(input_path), geometry=volume.geometry(),
            lung_volume_ml=round(float(lm.volume_ml), 1), timings=timings, warnings=list(prep.warnings),
            config=cfg.to_dict(), config_hash=cfg.hash(), versions=self._versions,
            meta={**meta, "lungmask_fallback": bool(lm.fallback),
                  "lung_box_zyx": [[s.start, s.stop] for s in box]},
            reported=measured.reported, nodule_labels=measured.labels, lung_mask=lm.mask)


@dataclasses.dataclass
class Prepared:
    """What :meth:`Pipeline.prepare` hands to :meth:`Pipeline.finish`: the lung mask
    (:class:`lungcad.lungmask.LungMask`), the lung box (slices, z y x), and the timings and
    warnings so far."""

    lung: object
    box: tuple | None
    timings: dict
    warnings: list


@contextlib.contextmanager
def _stage(name: str, volume: CTVolume, timings: dict):
    """Time one stage into ``timings[name]``; any failure but a LungcadError becomes a
    :class:`StageError` naming the stage and the series, chained."""
    t0 = time.perf_counter()
    try:
        yield
    except LungcadError:
        raise
    except Exception as e:
        raise StageError(name, volume.series_uid or volume.patient_id, f"{type(e).__name__}: {e}") from e
    finally:
        timings[name] = round(time.perf_counter() - t0, 4)


def _is_plain(v) -> bool:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    if isinstance(v, (list, tuple)):
        return len(v) <= 64 and all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return isinstance(v, np.generic)
