"""Synthetic chest phantoms: reproducibility, anatomy, lesions, malignancy and data-set layouts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from lungcad.synthetic import LABELS, Phantom, generate_phantom, malignancy_probability, synth_dataset

L = LABELS

# Lesions big enough for a 3x3x3 median at 2 x 1.6 x 1.6 mm to lie inside them.
LESION_SET = [
    {"kind": "mass", "location": "hilar", "diameter_mm": 50.0},
    {"kind": "mass", "location": "mediastinal", "texture": "part-solid", "diameter_mm": 38.0},
    {"kind": "nodule", "texture": "solid", "location": "juxta-pleural", "shape": "lobulated", "diameter_mm": 14.0},
    {"kind": "nodule", "texture": "solid", "location": "juxta-vascular", "diameter_mm": 10.0},
    {"kind": "nodule", "texture": "solid", "location": "isolated", "shape": "spiculated", "diameter_mm": 16.0},
    {"kind": "nodule", "texture": "ground-glass", "location": "isolated", "diameter_mm": 14.0},
    {"kind": "nodule", "texture": "part-solid", "location": "isolated", "diameter_mm": 18.0},
    {"kind": "nodule", "texture": "calcified", "location": "isolated", "diameter_mm": 9.0},
]


@pytest.fixture(scope="module")
def anatomy() -> Phantom:
    """An adult phantom without lesions, 5 mm slices."""
    return generate_phantom(seed=101, shape=(64, 128, 128), spacing=(5.0, 2.6, 2.6), n_nodules=0, n_masses=0,
                            n_micronodules=0, vessel_density=0.6)


@pytest.fixture(scope="module")
def lesioned() -> Phantom:
    """A phantom with one lesion of each kind that matters, 2 mm slices, 1.6 mm pixels."""
    return generate_phantom(seed=7, shape=(None, 210, 210), spacing=(2.0, 1.6, 1.6), lesions=LESION_SET,
                            vessel_density=0.5)


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [max(1, int(np.ceil(radius_mm / s - 1e-6))) for s in spacing]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= \
        max(radius_mm, max(spacing) + 1e-6) ** 2


def _lesion_component(ph: Phantom, row) -> np.ndarray:
    """Voxels of the connected lesion region at the annotated centre."""
    les = ph.labels == L["lesion"]
    comp, _ = ndi.label(les)
    c = np.rint(ph.volume.world_to_voxel([row.coordX, row.coordY, row.coordZ])).astype(int)
    pts = np.argwhere(les)
    near = pts[np.argmin(np.linalg.norm((pts - c) * np.array(ph.volume.spacing), axis=1))]
    return comp == comp[tuple(near)]


# ---- reproducibility ---------------------------------------------------------------------------

def test_same_seed_same_volume_and_tables():
    kw = dict(shape=(40, 96, 96), vessel_density=0.3)
    a = generate_phantom(seed=5, **kw)
    b = generate_phantom(seed=5, **kw)
    c = generate_phantom(seed=6, **kw)
    assert a.volume.hu.dtype == np.int16
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.lesions, b.lesions)
    assert a.volume.spacing == b.volume.spacing and a.volume.origin == b.volume.origin
    assert a.volume.shape != c.volume.shape or not np.array_equal(a.volume.hu, c.volume.hu)
    assert a.volume.series_uid != c.volume.series_uid


def test_spacing_draw_is_realistic_and_scales_with_size():
    steps, pixels = [], []
    for seed in range(12):
        ph = generate_phantom(seed=seed, shape=(40, 64, 64), n_nodules=0, n_masses=0, n_micronodules=0,
                              vessel_density=0.1)
        sz, sy, sx = ph.volume.spacing
        steps.append(sz)
        pixels.append(sx)
        assert sy == sx
        assert 300.0 <= 64 * sx <= 460.0          # field of view of a chest scan
        assert ph.fov_mask.shape == (64, 64) and ph.fov_mask[32, 32] and not ph.fov_mask[0, 0]
    assert set(steps) <= {5.0, 8.0}                # 40 slices cover a chest at 5 or 8 mm
    # 512 columns: 0.6-0.9 mm pixels; 256 columns about twice that
    from lungcad.synthetic.scan_plan import _draw_geometry
    for seed in range(30):
        (_, _, nx), sp, _ = _draw_geometry(np.random.default_rng(seed), (None, 512, 512), None, None)
        assert 0.58 <= sp[2] <= 0.9 and sp[0] in (1.0, 1.25, 2.5, 5.0, 8.0)
        (_, _, _), sp256, _ = _draw_geometry(np.random.default_rng(seed), (None, 256, 256), None, None)
        assert sp256[2] == pytest.approx(2 * sp[2])
    thick = [_draw_geometry(np.random.default_rng(s), (None, 512, 512), None, None)[1][0] >= 5.0
             for s in range(200)]
    assert 0.25 <= np.mean(thick) <= 0.6


def test_bad_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="field of view"):
        generate_phantom(seed=0, shape=(20, 64, 64), spacing=(5.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="texture"):
        generate_phantom(seed=0, shape=(20, 64, 64), lesions=[{"texture": "glassy"}])
    with pytest.raises(ValueError, match="unknown keys"):
        generate_phantom(seed=0, shape=(20, 64, 64), lesions=[{"size": 3}])
    with pytest.raises(ValueError, match="layout"):
        synth_dataset("/nonexistent-never-created", patients=1, seed=0, layout="nifti")


# ---- anatomy -------------------------------------------------------------------------------------

def test_lungs_are_two_lungs_of_adult_volume(anatomy):
    ph = anatomy
    hu, lab = ph.volume.hu, ph.labels
    sp = ph.volume.spacing
    lung = lab == L["lung"]
    assert -900 <= np.median(hu[lung]) <= -750
    region = ph.lung_region
    comp, n = ndi.label(region)
    sizes = np.bincount(comp.ravel())[1:]
    big = np.argsort(sizes)[::-1][:2] + 1
    assert n >= 2 and sizes[big - 1].sum() >= 0.99 * region.sum()
    spine_x = np.median(np.argwhere(lab == L["bone"])[:, 2])
    xs = sorted(float(np.argwhere(comp == b)[:, 2].mean()) for b in big)
    assert xs[0] < spine_x < xs[1]                      # one lung on each side of the midline
    litres = region.sum() * np.prod(sp) / 1e6
    assert 2.0 <= litres <= 8.0
    # smaller at the apex than at the base: cross-section area grows downward from the apex
    area = region.sum(axis=(1, 2))
    zs = np.nonzero(area)[0]
    top = zs.max()
    assert area[top] < 0.3 * area.max()
    assert ph.lung_mask().sum() == region.sum()          # no lesions: the mask is the lungs


def test_vessels_inside_lungs_and_brighter(anatomy):
    hu, lab = anatomy.volume.hu, anatomy.labels
    vessel = lab == L["vessel"]
    assert vessel.sum() > 200
    assert np.median(hu[vessel]) > np.median(hu[lab == L["lung"]]) + 200
    # inside the lung outline (holes filled slice by slice) and never next to the chest wall
    lung_outline = np.stack([ndi.binary_fill_holes(s) for s in (lab == L["lung"]) | vessel])
    assert (vessel & lung_outline).sum() >= 0.98 * vessel.sum()
    wall = np.isin(lab, [L["body"], L["bone"], L["outside"]])
    assert (vessel & ndi.binary_dilation(wall)).sum() <= 0.02 * vessel.sum()


def test_bones_and_trachea(anatomy):
    hu, lab = anatomy.volume.hu, anatomy.labels
    bone = hu[lab == L["bone"]]
    assert bone.mean() > 300 and np.percentile(bone, 90) > 500
    # trachea: air inside the mediastinum in the upper fifth of the lungs (above the carina);
    # the other airway components there are bronchi inside the lungs
    area = anatomy.lung_region.sum(axis=(1, 2))
    zs = np.nonzero(area)[0]
    sy, sx = anatomy.volume.spacing[1:]
    upper = range(zs.max() - max(2, int(0.2 * len(zs))), zs.max() - 1)
    for k in upper:
        comp, n = ndi.label((lab[k] == L["airway"]) & (hu[k] < -500))
        in_med, in_lung = [], 0
        for i in range(1, n + 1):
            ring = ndi.binary_dilation(comp == i, iterations=3) & (lab[k] != L["airway"])
            if np.mean(lab[k][ring] == L["mediastinum"]) > 0.8:
                in_med.append(i)
            elif np.mean(np.isin(lab[k][ring], [L["lung"], L["vessel"]])) > 0.5:
                in_lung += 1
        assert len(in_med) == 1 and in_lung == n - 1, \
            f"slice {k}: {n} airway components, {len(in_med)} in the mediastinum"
        lumen = comp == in_med[0]
        assert np.median(hu[k][lumen]) < -850
        diameter = 2.0 * np.sqrt(lumen.sum() * sy * sx / np.pi)
        assert 12.0 <= diameter <= 24.0


# ---- lesions -------------------------------------------------------------------------------------

def test_every_lesion_drawn_where_annotated(lesioned):
    ph = lesioned
    les = ph.lesions
    assert len(les) == len(LESION_SET)
    assert ph.volume.meta["lesions_not_placed"] == 0
    hu = ph.volume.hu
    sp = np.array(ph.volume.spacing)
    for row in les.itertuples():
        zyx = np.rint(ph.volume.world_to_voxel([row.coordX, row.coordY, row.coordZ])).astype(int)
        assert np.allclose(zyx, np.rint([row.z, row.y, row.x]))
        med = float(np.median(hu[zyx[0] - 1:zyx[0] + 2, zyx[1] - 1:zyx[1] + 2, zyx[2] - 1:zyx[2] + 2]))
        if row.texture in ("solid", "part-solid"):
            assert med > -100, (row.texture, row.kind, med)
        elif row.texture == "ground-glass":
            assert -750 <= med <= -300, (row.texture, med)
        else:
            assert med > 200, (row.texture, med)
        comp = _lesion_component(ph, row)
        d = (6.0 * comp.sum() * np.prod(sp) / np.pi) ** (1.0 / 3.0)
        assert abs(d - row.diameter_mm) <= sp.max(), (row.kind, d, row.diameter_mm)
        centre = np.argwhere(comp).mean(axis=0)
        assert np.linalg.norm((centre - [row.z, row.y, row.x]) * sp) <= sp.max()
    masses = les[les["kind"] == "mass"]
    assert (masses["diameter_mm"] >= 30.0).all()


def test_lesion_locations_touch_what_they_should(lesioned):
    ph = lesioned
    sp = ph.volume.spacing
    ball = _ball(2.0, sp)
    found = set()
    for row in ph.lesions.itertuples():
        comp = _lesion_component(ph, row)
        shell = ndi.binary_dilation(comp, structure=ball) & ~comp
        near = set(np.unique(ph.labels[shell]).tolist())
        if row.location == "juxta-pleural":
            assert near & {L["body"], L["bone"]}, near
        if row.location in ("hilar", "mediastinal"):
            assert L["mediastinum"] in near, near
        if row.location == "juxta-vascular":
            assert L["vessel"] in near, near
        if row.location == "isolated":
            assert not near & {L["body"], L["bone"], L["mediastinum"]}, near
        found.add(row.location)
    assert {"juxta-pleural", "juxta-vascular"} <= found
    assert found & {"hilar", "mediastinal"}
    # the lung mask the pipeline must reproduce keeps every lesion, masses included
    assert (ph.lung_mask() & (ph.labels == L["lesion"])).sum() == (ph.labels == L["lesion"]).sum()


def test_distractors_are_vessels_not_lesions(lesioned):
    ph = lesioned
    d = ph.distractors
    assert len(d) >= 10 and set(d["kind"]) <= {"bifurcation", "crossing"}
    zyx = np.rint(d[["z", "y", "x"]].to_numpy()).astype(int)
    labs = ph.labels[zyx[:, 0], zyx[:, 1], zyx[:, 2]]
    assert np.mean(np.isin(labs, [L["vessel"], L["lung"], L["airway"]])) > 0.9
    centres = ph.lesions[["coordX", "coordY", "coordZ"]].to_numpy()
    for xyz in d[["coordX", "coordY", "coordZ"]].to_numpy():
        gap = np.linalg.norm(centres - xyz, axis=1) - 0.5 * ph.lesions["diameter_mm"].to_numpy()
        assert gap.min() > 3.0


def test_lesion_counts_can_be_forced_and_drawn():
    ph = generate_phantom(seed=3, shape=(48, 96, 96), n_nodules=3, n_masses=1, n_micronodules=1,
                          vessel_density=0.3)
    kinds = ph.lesions["kind"].tolist()
    assert kinds.count("mass") + ph.volume.meta["lesions_not_placed"] >= 1
    assert len(ph.lesions) + ph.volume.meta["lesions_not_placed"] == 5
    none = generate_phantom(seed=3, shape=(48, 96, 96), n_nodules=0, n_masses=0, n_micronodules=0,
                            vessel_density=0.3)
    assert len(none.lesions) == 0 and none.cancer == 0 and not (none.labels == L["lesion"]).any()
    # the default draw: some patients without any lesion, some with a mass
    from lungcad.synthetic.lesion_specs import draw_specs
    counts = [draw_specs(np.random.default_rng(s)) for s in range(400)]
    assert 0.1 <= np.mean([not [x for x in c if x.diameter_mm >= 3.0] for c in counts]) <= 0.3
    assert 0.2 <= np.mean([any(x.kind == "mass" for x in c) for c in counts]) <= 0.4


# ---- malignancy ----------------------------------------------------------------------------------

def test_malignancy_model():
    assert malignancy_probability(25.0, "calcified") < 0.1
    d = np.linspace(3.0, 70.0, 50)
    for texture in ("solid", "part-solid", "ground-glass"):
        p = [malignancy_probability(x, texture) for x in d]
        assert np.all(np.diff(p) > 0)                 # rises with size
    for x in (5.0, 12.0, 25.0):
        assert malignancy_probability(x, "solid") > malignancy_probability(x, "part-solid") > \
            malignancy_probability(x, "ground-glass")  # and with solidity
    assert malignancy_probability(20.0, "solid") > malignancy_probability(6.0, "ground-glass") + 0.5
    assert malignancy_probability(50.0, "solid", "spiculated") > 0.95
    with pytest.raises(ValueError, match="diameter_mm"):
        malignancy_probability(0.0, "solid")


def test_malignant_labels_follow_probabilities(lesioned):
    les = lesioned.lesions
    calc = les[les["texture"] == "calcified"]
    assert (calc["malignant"] == 0).all() and (calc["malignancy_prob"] < 0.1).all()
    for row in les.itertuples():
        assert row.malignancy_prob == pytest.approx(malignancy_probability(row.diameter_mm, row.texture, row.shape))
    assert lesioned.cancer == int(les["malignant"].any())


# ---- data sets -----------------------------------------------------------------------------------

TINY = dict(patients=2, seed=11, size=96, slices=40,
            lesions=[{"kind": "mass", "location": "hilar", "diameter_mm": 44.0},
                     {"kind": "nodule", "texture": "solid", "location": "isolated", "diameter_mm": 20.0}],
            vessel_density=0.3)


def _check_hu_at_annotations(volume, annotations: pd.DataFrame):
    rows = annotations[annotations["seriesuid"] == volume.series_uid]
    assert len(rows) >= 1
    for r in rows.itertuples():
        zyx = np.rint(volume.world_to_voxel([r.coordX, r.coordY, r.coordZ])).astype(int)
        assert np.all(zyx >= 0) and np.all(zyx < volume.shape)
        assert volume.hu[tuple(zyx)] > -200, (r, volume.hu[tuple(zyx)])


def test_dataset_dicom_layout(tmp_path):
    from lungcad.io import load_ct

    lesions = synth_dataset(tmp_path, layout="dicom", compress="rle", **TINY)
    ann = pd.read_csv(tmp_path / "annotations.csv")
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert list(labels.columns) == ["patient_id", "cancer"] and len(labels) == 2
    les = pd.read_csv(tmp_path / "lesions.csv")
    assert len(les) == len(lesions) == 4 and "patient_id" in les.columns
    series = sorted(p for p in tmp_path.glob("*/*") if p.is_dir())
    assert len(series) == 2
    for folder in series:
        files = list(folder.glob("*.dcm"))
        assert len(files) == 40
        vol = load_ct(folder)
        assert vol.shape == (40, 96, 96)
        assert vol.patient_id == folder.parent.name and vol.series_uid == folder.name
        _check_hu_at_annotations(vol, ann)


def test_dataset_luna16_layout(tmp_path):
    from lungcad.io import load_ct

    synth_dataset(tmp_path, layout="luna16", **TINY)
    ann = pd.read_csv(tmp_path / "annotations.csv")
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert (ann["diameter_mm"] >= 3.0).all() and (ann["diameter_mm"] > 30.0).any()   # masses kept
    excl = pd.read_csv(tmp_path / "annotations_excluded.csv")
    assert list(excl.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert (excl["diameter_mm"] < 3.0).all()      # look-alikes are false positives, not excluded
    cand = pd.read_csv(tmp_path / "candidates_V2.csv")
    assert list(cand.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert set(cand["class"]) == {0, 1} and (cand["class"] == 1).sum() >= len(ann)
    mhds = sorted((tmp_path / "subset0").glob("*.mhd"))
    assert len(mhds) == 2 and all(p.with_suffix(".raw").exists() for p in mhds)
    for p in mhds:
        vol = load_ct(p)
        vol.series_uid = p.stem
        _check_hu_at_annotations(vol, ann)
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert set(labels["patient_id"]) == {p.stem for p in mhds}


def test_dataset_dsb2017_layout(tmp_path):
    from lungcad.io import load_ct

    synth_dataset(tmp_path, layout="dsb2017", **TINY)
    labels = pd.read_csv(tmp_path / "stage1_labels.csv")
    assert list(labels.columns) == ["id", "cancer"] and len(labels) == 2
    les = pd.read_csv(tmp_path / "lesions.csv")
    for pid in labels["id"]:
        folder = tmp_path / "stage1" / pid
        assert len(pid) == 32 and len(list(folder.glob("*.dcm"))) == 40
        assert not [p for p in folder.iterdir() if p.is_dir()]
        vol = load_ct(folder)
        _check_hu_at_annotations(vol, les[les["patient_id"] == pid])


def test_cli_synth(tmp_path, capsys):
    from lungcad.cli import main

    rc = main(["synth", str(tmp_path / "out"), "--patients", "1", "--seed", "4", "--size", "96", "--slices", "40",
               "--layout", "dsb2017"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert len([line for line in out if "40x96x96" in line]) == 1
    assert (tmp_path / "out" / "stage1_labels.csv").exists()
    assert main(["synth", str(tmp_path / "bad"), "--patients", "1", "--seed", "4", "--size", "16"]) == 2
