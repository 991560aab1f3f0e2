"""The Pipeline end to end on a hand-made chest, with toy models and with real Keras models."""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lungcad.aggregate import aggregate, calibrate
from lungcad.config import PipelineConfig
from lungcad.errors import StageError
from lungcad.pipeline import Pipeline
from lungcad.volume import CTVolume

REPO = Path(__file__).resolve().parents[1]


SPACING = (2.5, 1.0, 1.0)
NODULES_ZYX_MM = [(40.0, 100.0, 70.0), (55.0, 130.0, 185.0), (30.0, 90.0, 170.0)]
NODULE_RADIUS_MM = 5.0


def toy_chest():
    """Body ellipse, two lungs, three 10 mm nodules at known places; 1 mm in-plane, 2.5 mm slices."""
    shape = (36, 220, 260)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij")
    hu = np.full(shape, -1000, np.int16)
    body = ((y - 110) / 95) ** 2 + ((x - 130) / 120) ** 2 <= 1
    hu[body] = 30
    for cx in (75.0, 185.0):
        lung = ((y - 110) / 70) ** 2 + ((x - cx) / 42) ** 2 + ((z - 45) / 38) ** 2 <= 1
        hu[lung] = -850
    for cz, cy, cx in NODULES_ZYX_MM:
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= NODULE_RADIUS_MM ** 2] = 40
    vol = CTVolume(hu, SPACING, origin=(-130.0, -110.0, -200.0), patient_id="TOY", series_uid="1.2.3.toy")
    truth = vol.voxel_to_world(np.array(NODULES_ZYX_MM) / np.array(SPACING))
    return vol, truth


def toy_segmenter(x):
    """Marks small dense blobs in the middle channel: a fixed function, not a network."""
    mid = x[..., x.shape[-1] // 2] > (500.0 / 1400.0)
    out = np.zeros(mid.shape + (1,), np.float32)
    for i in range(len(mid)):
        lab, n = ndimage.label(mid[i])
        if n:
            sizes = ndimage.sum(mid[i], lab, index=np.arange(1, n + 1))
            small = np.flatnonzero(sizes < 400) + 1
            out[i, ..., 0] = np.isin(lab, small)
    return out


def toy_classifier(inputs):
    """Density at the patch centre: of the cube, or of the axial view (orthogonal views)."""
    p = inputs["patch"]
    c = p.shape[1] // 2
    centre = p[:, c - 1:c + 1, c - 1:c + 1, c - 1:c + 1, 0] if p.ndim == 5 else p[:, c - 1:c + 1, c - 1:c + 1, 0]
    dense = centre.reshape(len(p), -1).mean(axis=1)
    return {"nodule": dense[:, None], "malignancy": np.full((len(p), 1), 0.5, np.float32)}


def test_pipeline_finds_the_nodules_with_toy_models():
    vol, truth = toy_chest()
    result = Pipeline(PipelineConfig(), segmenter=toy_segmenter, classifier=toy_classifier).run(vol)
    c = result.candidates
    assert len(c) == 3
    for t in truth:
        d = np.linalg.norm(c[["coordX", "coordY", "coordZ"]].to_numpy() - t, axis=1)
        assert d.min() < 1.5
        assert c.iloc[int(d.argmin())]["diameter_mm"] == pytest.approx(2 * NODULE_RADIUS_MM, rel=0.2)
    assert {"seg_prob", "nodule_prob", "malignancy_prob", "patient_id"} <= set(c.columns)
    cal = PipelineConfig().aggregate.calibration
    assert cal != (1.0, 0.0)                          # the default is calibrated ...
    assert result.cancer_probability == pytest.approx(aggregate(c, top_k=5, p_leak=0.02, calibration=cal))
    plain = Pipeline(PipelineConfig().with_overrides({"aggregate.calibration": [1.0, 0.0]}),
                     segmenter=toy_segmenter, classifier=toy_classifier).run(vol)
    assert plain.cancer_probability == pytest.approx(aggregate(c, top_k=5, p_leak=0.02,
                                                               calibration=(1.0, 0.0)))   # ... (1, 0) is not
    assert set(result.timings) == {"lungmask", "candidates", "morphology", "fpr", "measure", "aggregate"}
    assert result.config == PipelineConfig().to_dict() and len(result.config_hash) == 16
    assert result.geometry["spacing_zyx_mm"] == list(SPACING)
    assert 0.2 < result.lung_volume_ml / 1000 < 2.0



def test_the_measure_stage_reports_and_measures_the_toy_nodules():
    """The three 10 mm solid spheres (40 HU in -850 HU lung, 2.5 mm slices, no blur) are reported
    and measured: volume 523.6 mm^3 within 15 %, mean axis 10 mm within 1 mm, solid, category 4A;
    the label volume holds each nodule_id, and the JSON keeps the measurements but neither array."""
    from lungcad.result import ScanResult

    vol, truth = toy_chest()
    result = Pipeline(PipelineConfig(), segmenter=toy_segmenter, classifier=toy_classifier).run(vol)
    c = result.candidates
    rep = c[c["nodule_id"].notna()]
    assert len(rep) == 3 and list(rep["nodule_id"]) == [1.0, 2.0, 3.0]
    assert (rep["probability"] >= 0.5).all() and rep["probability"].is_monotonic_decreasing
    assert rep["volume_mm3"].to_numpy() == pytest.approx(4 / 3 * np.pi * NODULE_RADIUS_MM ** 3, rel=0.15)
    assert rep["mean_axis_mm"].to_numpy() == pytest.approx(2 * NODULE_RADIUS_MM, abs=1.0)
    assert (rep["long_axis_mm"] >= rep["short_axis_mm"]).all()
    assert set(rep["nodule_type"]) == {"solid"} and set(rep["lungrads_research"]) == {"4A"}
    cent = rep[["seg_centroid_x", "seg_centroid_y", "seg_centroid_z"]].to_numpy(float)
    assert min(np.linalg.norm(cent - t, axis=1).min() for t in truth) < 1.0
    assert result.reported == {"n": 3, "lungrads_research": "4A", "note": "research only, not a clinical reading",
                               "criteria": {"min_probability": 0.5, "max_nodules": 10}}
    assert result.nodule_labels.dtype == np.int16 and result.nodule_labels.shape == vol.shape
    assert set(np.unique(result.nodule_labels)) == {0, 1, 2, 3}
    assert result.lung_mask.dtype == bool and result.lung_mask.shape == vol.shape
    d = result.to_dict()
    assert "nodule_labels" not in d and "lung_mask" not in d and d["reported"]["n"] == 3
    back = ScanResult.from_dict(d)
    assert back.nodule_labels is None and back.reported == result.reported
    assert back.candidates["mean_axis_mm"].tolist() == pytest.approx(c["mean_axis_mm"].tolist(), nan_ok=True)
    one = Pipeline(PipelineConfig().with_overrides({"reported.max_nodules": 1}),
                   segmenter=toy_segmenter, classifier=toy_classifier).run(vol)
    assert one.candidates["nodule_id"].notna().sum() == 1 and one.reported["n"] == 1
    assert set(np.unique(one.nodule_labels)) == {0, 1}

def test_a_failing_stage_is_named():
    vol, _ = toy_chest()

    def broken(_):
        raise RuntimeError("boom")

    with pytest.raises(StageError, match=r"stage 'fpr', series 1\.2\.3\.toy: RuntimeError: boom"):
        Pipeline(segmenter=toy_segmenter, classifier=broken).run(vol)


def test_no_lungs_falls_back_with_a_warning():
    hu = np.full((10, 64, 64), 40, np.int16)
    vol = CTVolume(hu, (5.0, 1.0, 1.0), (0.0, 0.0, 0.0), series_uid="water")
    result = Pipeline(segmenter=toy_segmenter, classifier=toy_classifier).run(vol)
    assert result.warnings and result.meta["lungmask_fallback"] is True
    # no candidate: the leak, through the default calibration
    assert result.cancer_probability == pytest.approx(calibrate(0.02, PipelineConfig().aggregate.calibration))


def test_pipeline_with_real_keras_models(tmp_path):
    """Untrained but real .keras files, loaded by path from a pipeline file (safe_mode)."""
    keras = pytest.importorskip("keras")
    from lungcad.fpr import build_fpr_model
    from lungcad.models import build_model

    seg = build_model("unet2d", input_shape=(None, None, 3), classes=1, classifier_activation="sigmoid",
                      depth=2, base_filters=4)
    seg.save(tmp_path / "seg.keras")
    clf = build_fpr_model(backbone="wrn3d", patch_size=16, backbone_kwargs={"depth": 10, "width": 1})
    clf.save(tmp_path / "clf.keras")
    toml = tmp_path / "p.toml"
    toml.write_text('[candidates]\nweights = "seg.keras"\ntile = 4\n'
                    '[fpr]\nweights = "clf.keras"\nbackbone = "wrn3d"\npatch_size = 16\n'
                    '[morphology]\nthreshold = 0.0\n')
    vol, _ = toy_chest()
    result = Pipeline.from_toml(toml).run(vol)
    assert result.versions["keras_backend"] == keras.backend.backend()
    # the weights the scan ran with, by content: relative paths in a pipeline file included
    import hashlib

    from lungcad.results.dicom_common import algorithm_parameters
    shas = {role: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
            for role, name in (("segmenter", "seg.keras"), ("fpr", "clf.keras"))}
    assert result.versions["weights"] == shas
    assert algorithm_parameters(result)["fpr weights sha256"] == shas["fpr"]
    c = result.candidates
    assert len(c) >= 1
    assert c["nodule_prob"].between(0, 1).all() and c["malignancy_prob"].between(0, 1).all()
    assert (np.diff(c["probability"].to_numpy()) <= 0).all()


def test_pipeline_file_selects_the_fpr_backbone(tmp_path):
    """[fpr] backbone picks any zoo classifier; a 2-D one runs on orthogonal views, and
    weights that hold another backbone are refused with a message that names both."""
    pytest.importorskip("keras")
    from lungcad.errors import ConfigError
    from lungcad.fpr import build_fpr_model
    from lungcad.models import build_model

    seg = build_model("unet2d", input_shape=(None, None, 3), classes=1, classifier_activation="sigmoid",
                      depth=2, base_filters=4)
    seg.save(tmp_path / "seg.keras")
    build_fpr_model(backbone="wrn2d", patch_size=16, backbone_kwargs={"depth": 10, "width": 1}).save(
        tmp_path / "wrn2d.keras")
    head = '[candidates]\nweights = "seg.keras"\ntile = 4\n[morphology]\nthreshold = 0.0\n'
    (tmp_path / "p2d.toml").write_text(head + '[fpr]\nweights = "wrn2d.keras"\nbackbone = "wrn2d"\n'
                                              'patch_size = 16\n')
    vol, _ = toy_chest()
    pipe = Pipeline.from_toml(tmp_path / "p2d.toml")
    result = pipe.run(vol)
    assert pipe.fpr_views == "orthogonal" and len(result.candidates) >= 1
    assert result.config["fpr"]["backbone"] == "wrn2d"
    assert result.candidates["nodule_prob"].between(0, 1).all()

    (tmp_path / "bad.toml").write_text(head + '[fpr]\nweights = "wrn2d.keras"\nbackbone = "resnet18-3d"\n'
                                              'patch_size = 16\n')
    with pytest.raises(ConfigError, match=r"wrn2d.keras: these FPR weights hold a 'wrn2d' backbone, "
                                          r"but the pipeline's \[fpr\] backbone is 'resnet18-3d'"):
        Pipeline.from_toml(tmp_path / "bad.toml").run(vol)
    (tmp_path / "size.toml").write_text(head + '[fpr]\nweights = "wrn2d.keras"\nbackbone = "wrn2d"\n'
                                               'patch_size = 24\n')
    with pytest.raises(ConfigError, match=r"takes patches of shape \(16, 16, 3\).*makes \(24, 24, 3\)"):
        Pipeline.from_toml(tmp_path / "size.toml").run(vol)
    (tmp_path / "unet.toml").write_text(head + '[fpr]\nweights = "wrn2d.keras"\nbackbone = "unet2d"\n')
    with pytest.raises(ConfigError, match=r"\[fpr\] backbone: FPR backbone 'unet2d' is a segmentation"):
        Pipeline.from_toml(tmp_path / "unet.toml").run(vol)


def test_shipped_cube_pipeline_runs_its_3d_network():
    """pipelines/cube.toml: the shipped 3-D FPR weights behind [fpr] backbone = "wrn3d"."""
    pytest.importorskip("keras")
    pipe = Pipeline.from_toml(REPO / "pipelines" / "cube.toml", segmenter=toy_segmenter)
    assert pipe.config.fpr.backbone == "wrn3d" and pipe.fpr_views == "cube"
    vol, _ = toy_chest()
    result = pipe.run(vol)
    assert pipe.classifier.input["patch"].shape[1:] == (32, 32, 32, 1)
    assert len(result.candidates) >= 1 and result.candidates["nodule_prob"].between(0, 1).all()


# ----------------------------------------------------------------- the FPR weights carry their preprocessing

@pytest.fixture(scope="module")
def shipped_fpr():
    """The shipped FPR network, loaded once (safe_mode), with the path of its weights."""
    pytest.importorskip("keras")
    from lungcad.pipeline import load_keras_model

    path = PipelineConfig().resolve_weights(PipelineConfig().fpr.weights)
    return load_keras_model(path), path


@pytest.mark.parametrize("key, value, theirs, ours", [
    ("patch_size", 24, "32", "24"),
    ("patch_mm", 0.8, "1.0", "0.8"),
    ("fit_fraction", 0.5, "0.7", "0.5"),
    ("window_hu", [-1200.0, 600.0], r"\[-1000.0, 400.0\]", r"\[-1200.0, 600.0\]"),
])
def test_the_shipped_fpr_weights_refuse_a_config_with_other_preprocessing(shipped_fpr, key, value, theirs, ours):
    """Every [fpr] key that shapes what the network sees is checked on loading against the
    weights' model card; the message names the key, the weights' value and the config's."""
    from lungcad.errors import ConfigError
    from lungcad.pipeline import check_fpr_model

    model, path = shipped_fpr
    check_fpr_model(model, PipelineConfig(), path)                  # the shipped pair fits
    cfg = PipelineConfig().with_overrides({f"fpr.{key}": value})
    with pytest.raises(ConfigError, match=rf"fpr\.keras: \[fpr\] {key}: these FPR weights were trained with "
                                          rf"{key} = {theirs} \(their model card fpr\.card\.json\), but the "
                                          rf"pipeline's \[fpr\] {key} is {ours}\. Set \[fpr\] {key} = {theirs}"):
        check_fpr_model(model, cfg, path)


def test_the_shipped_fpr_weights_refuse_another_backbone(shipped_fpr):
    from lungcad.errors import ConfigError
    from lungcad.pipeline import check_fpr_model

    model, path = shipped_fpr
    with pytest.raises(ConfigError, match=r"fpr\.keras: these FPR weights hold a 'wrn2d' backbone, but the "
                                          r"pipeline's \[fpr\] backbone is 'wrn3d'"):
        check_fpr_model(model, PipelineConfig().with_overrides({"fpr.backbone": "wrn3d"}), path)


def test_fpr_weights_are_checked_against_the_card_beside_them(shipped_fpr, tmp_path, caplog):
    """The card next to the weights file is what is checked: one that differs refuses the config,
    one that is not JSON is an InputError naming it, and weights with no card are checked for
    what the file holds (backbone, patch shape) with a warning."""
    import json
    import logging

    from lungcad.errors import ConfigError, InputError
    from lungcad.pipeline import check_fpr_model

    model, shipped = shipped_fpr
    card = json.loads((shipped.parent / "fpr.card.json").read_text())
    card["preprocessing"]["patch_mm"] = 0.75
    (tmp_path / "mine.card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=r"mine\.keras: \[fpr\] patch_mm: .* patch_mm = 0\.75 \(their model "
                                          r"card mine\.card\.json\), but the pipeline's \[fpr\] patch_mm is 1\.0"):
        check_fpr_model(model, PipelineConfig(), tmp_path / "mine.keras")
    check_fpr_model(model, PipelineConfig().with_overrides({"fpr.patch_mm": 0.75}), tmp_path / "mine.keras")

    (tmp_path / "broken.card.json").write_text("{not json")
    with pytest.raises(InputError, match=r"broken\.card\.json: model card is not readable JSON"):
        check_fpr_model(model, PipelineConfig(), tmp_path / "broken.keras")

    with caplog.at_level(logging.WARNING, logger="lungcad"):
        check_fpr_model(model, PipelineConfig().with_overrides({"fpr.patch_mm": 0.5}), tmp_path / "bare.keras")
    assert "bare.keras: no model card" in caplog.text and "patch_mm" in caplog.text
