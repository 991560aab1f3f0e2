"""Domains of the phantom generator: the default stays byte-identical; randomised anatomy, organs,
scan range, lung disease, held-out bands, and the CLI's --domain."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lungcad.synthetic import DISEASES, LABELS, ORGANS, draw_domain_factors, generate_phantom
from lungcad.synthetic.domain import HELD_OUT, RANDOMIZED

L = LABELS
KW = dict(shape=(None, 128, 128), vessel_density=0.3, domain="randomized", slice_mm=5.0)
OFF = {d: False for d in DISEASES}


def _sha(ph) -> str:
    return hashlib.sha256(ph.volume.hu.tobytes() + ph.labels.tobytes()).hexdigest()


# ---- the default domain ------------------------------------------------------------------------

@pytest.mark.parametrize("seed, shape, digest", [
    (3, (24, 96, 96), "f126599ce46b37eeb11292c9d011acfa8497f61cec85f6224c5b1431f2556aa2"),
    (11, (None, 128, 128), "e10312a81a81f749869c90d21958affaa00ffcf04f9149395196d76f41be026b"),
])
def test_default_domain_is_byte_identical(seed, shape, digest):
    ph = generate_phantom(seed=seed, shape=shape, vessel_density=0.3)
    assert _sha(ph) == digest
    # the organ map comes for free: the default's liver lies on the patient's right (low x)
    assert ph.organs.shape == ph.labels.shape and ph.organs.dtype == np.uint8
    assert "domain" not in ph.volume.meta


def test_disease_is_refused_in_the_default_domain():
    with pytest.raises(ValueError, match="randomised domains"):
        generate_phantom(seed=1, shape=(24, 96, 96), disease={"effusion": True})


# ---- drawn factors -----------------------------------------------------------------------------

def _factors(domain, n=24):
    return [draw_domain_factors(1000 + s, domain=domain, shape=(None, 256, 256)) for s in range(n)]


def test_randomized_factors_span_their_ranges_outside_the_held_out_bands():
    fs = _factors("randomized")
    R = RANDOMIZED.anatomy
    scale = np.array([f["anatomy"]["anatomy_scale"] for f in fs])
    assert not any(HELD_OUT.anatomy_scale.contains(s) for s in scale)
    assert scale.min() < R.anatomy_scale.lo + 0.15 and scale.max() > R.anatomy_scale.hi - 0.15
    thick = [f["scanner"]["slice_thickness_mm"] for f in fs]
    assert not any(b.contains(t) for t in thick for b in HELD_OUT.slice_thickness_mm)
    assert min(thick) < 1.5 and max(thick) > 7.0
    assert HELD_OUT.kernel_family not in {f["scanner"]["kernel_family"] for f in fs}
    domes = np.array([f["anatomy"]["dome_height_mm"] for f in fs])
    assert np.ptp(domes) > 50.0 and np.std(domes[:, 0] - domes[:, 1]) > 10.0      # each side its own
    heart = np.array([f["anatomy"]["heart_scale"] for f in fs])
    assert heart.min() < 0.9 and heart.max() > 1.3
    for key in ("arms_down", "start_at_neck", "table"):
        vals = {f["anatomy"][key] for f in fs}
        assert vals == {True, False}, key
    assert any(f["anatomy"]["fov_cut_mm"] > 0 for f in fs)
    assert any(f["anatomy"]["breast_depth_mm"] for f in fs)
    h = [f["anatomy"]["lung_height_mm"] for f in fs]
    assert R.lung_height_mm.lo <= min(h) and max(h) <= R.lung_height_mm.hi and np.ptp(h) > 60.0


def test_shifted_factors_fall_inside_the_held_out_bands():
    fs = _factors("shifted", 12)
    assert all(HELD_OUT.anatomy_scale.contains(f["anatomy"]["anatomy_scale"]) for f in fs)
    assert all(any(b.contains(f["scanner"]["slice_thickness_mm"]) for b in HELD_OUT.slice_thickness_mm)
               for f in fs)
    assert {f["scanner"]["kernel_family"] for f in fs} == {HELD_OUT.kernel_family}


# ---- randomised phantoms -----------------------------------------------------------------------

def test_same_seed_same_randomized_volume():
    a = generate_phantom(seed=5, shape=(40, 128, 128), vessel_density=0.3, domain="randomized", slice_mm=6.0)
    b = generate_phantom(seed=5, shape=(40, 128, 128), vessel_density=0.3, domain="randomized", slice_mm=6.0)
    assert _sha(a) == _sha(b)
    assert np.array_equal(a.organs, b.organs)
    assert a.volume.meta["domain"] == "randomized"
    json.dumps(a.volume.meta)                                      # JSON-ready


@pytest.fixture(scope="module")
def sick():
    """Seed 12: arms down, starts at the neck; every disease forced."""
    return generate_phantom(seed=12, disease={d: True for d in DISEASES}, **KW)


@pytest.fixture(scope="module")
def healthy():
    return generate_phantom(seed=19, disease=OFF, **KW)


def _world_x(ph):
    return ph.volume.origin[0] + ph.volume.spacing[2] * np.arange(ph.labels.shape[2])


def _world_z(ph):
    return ph.volume.origin[2] + ph.volume.spacing[0] * np.arange(ph.labels.shape[0])


def _lung_x_mid(ph):
    """World x halfway between the lungs' outer edges: the midline."""
    xx = _world_x(ph)[np.nonzero((ph.labels == L["lung"]).any(axis=(0, 1)))[0]]
    return 0.5 * float(xx.min() + xx.max())


@pytest.mark.parametrize("which", ["sick", "healthy"])
def test_organs_sit_where_they_belong(which, request):
    ph = request.getfixturevalue(which)
    org, lab = ph.organs, ph.labels
    x, z = _world_x(ph), _world_z(ph)
    x_mid = _lung_x_mid(ph)
    heart = org == ORGANS["heart"]
    assert heart.sum() > 50 and np.all(lab[heart] == L["mediastinum"])
    zz, yy, xx = np.nonzero(heart)
    assert abs(np.median(x[xx]) - x_mid) < 70.0                    # in the mediastinum
    for name in ("liver", "spleen", "stomach"):
        m = org == ORGANS[name]
        assert m.sum() > 20, name
        assert np.all(lab[m] == L["body"]), name
    lung = (lab == L["lung"]) | (lab == L["vessel"])
    right = x < x_mid
    # liver on the patient's right (LPS: low x), below the right lung's top, never in the lung
    zz, yy, xx = np.nonzero(org == ORGANS["liver"])
    assert np.median(x[xx]) < x_mid
    right_lung_top = z[np.nonzero(lung[:, :, right].any(axis=(1, 2)))[0].max()]
    assert z[zz].max() < right_lung_top - 20.0
    # stomach gas: air inside the stomach, on the left, under the left lung's top
    gas = (org == ORGANS["stomach"]) & (ph.volume.hu < -600)
    if ph.volume.meta["anatomy"]["stomach_gas_mm"] > 0:
        zz, yy, xx = np.nonzero(gas)
        assert len(zz) > 5 and np.median(x[xx]) > x_mid
        left_lung_top = z[np.nonzero(lung[:, :, ~right].any(axis=(1, 2)))[0].max()]
        assert z[zz].max() < left_lung_top - 20.0


def test_every_forced_disease_is_painted_and_recorded(sick):
    d = sick.volume.meta["disease"]
    assert all(d[name] for name in DISEASES)
    gran = sick.lesions[sick.lesions["texture"] == "calcified"]
    assert len(gran) >= 1
    assert (gran["kind"] == "nodule").all() and np.allclose(gran["malignancy_prob"], 0.02)
    assert gran["intended_diameter_mm"].between(1.0, 8.0).all()


def test_arms_down_put_bone_beside_the_chest_and_the_neck_has_no_lung(sick):
    a = sick.volume.meta["anatomy"]
    assert a["arms_down"] and a["start_at_neck"]
    x = _world_x(sick)
    lab = sick.labels
    lung = lab == L["lung"]
    zz, yy, xx = np.nonzero(lung)
    lung_lo, lung_hi = x[xx].min(), x[xx].max()
    bone = lab == L["bone"]
    outside = (x < lung_lo - 40.0) | (x > lung_hi + 40.0)
    assert bone[:, :, outside].sum() > 20
    # slices above the apex: neck with the trachea, no lung
    top = np.nonzero(lung.any(axis=(1, 2)))[0].max()
    above = lab[top + 1:]
    n_above = (a["scan_top_above_apex_mm"] - 10.0) / sick.volume.spacing[0]
    assert len(above) >= n_above
    assert not (above == L["lung"]).any()
    assert (lab[-1] == L["airway"]).any() and (lab[-1] == L["body"]).sum() > 50


def test_scan_stopping_at_the_bases_has_no_abdomen_below_the_lungs():
    seed = next(s for s in range(100)
                if draw_domain_factors(s, domain="randomized", shape=KW["shape"], slice_mm=5.0)["anatomy"]["stop_at_bases"])
    ph = generate_phantom(seed=seed, disease=OFF, **KW)
    lung = (ph.labels == L["lung"]).any(axis=(1, 2))
    assert lung[0]                                   # the first (lowest) slice still has lung
    assert np.nonzero(lung)[0].min() == 0


def _changed(sick_ph, base_ph):
    return sick_ph.labels, sick_ph.volume.hu.astype(float), base_ph.labels, base_ph.volume.hu.astype(float)


def test_effusion_is_dependent_fluid_outside_the_lung(healthy):
    ph = generate_phantom(seed=19, disease={**OFF, "effusion": True}, **KW)
    lab, hu, lab0, _ = _changed(ph, healthy)
    fluid = (lab0 == L["lung"]) & (lab == L["body"])
    assert fluid.sum() > 100
    assert -15.0 < np.median(hu[fluid]) < 35.0
    yy = np.nonzero(fluid)[1]
    y_lung = np.nonzero(lab0 == L["lung"])[1]
    assert yy.mean() > y_lung.mean() + 20.0 / ph.volume.spacing[1]         # posterior (LPS +y)
    assert ph.lung_mask().sum() < healthy.lung_mask().sum()


def test_emphysema_lowers_lung_attenuation_toward_the_apex(healthy):
    ph = generate_phantom(seed=19, disease={**OFF, "emphysema": True}, **KW)
    lung = ph.labels == L["lung"]
    lung0 = healthy.labels == L["lung"]
    hu, hu0 = ph.volume.hu, healthy.volume.hu
    laa = float((hu[lung] < -950).mean())
    laa0 = float((hu0[lung0] < -950).mean())
    assert laa > laa0 + 0.005
    assert float(np.median(hu[lung])) < float(np.median(hu0[lung0]))
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    mid = int(0.5 * (zs.min() + zs.max()))

    def laa_of(h, m, upper):
        m = m.copy()
        m[(slice(None, mid) if upper else slice(mid, None))] = False
        return float((h[m] < -950).mean())

    gain_up = laa_of(hu, lung, True) - laa_of(hu0, lung0, True)
    gain_low = laa_of(hu, lung, False) - laa_of(hu0, lung0, False)
    assert gain_up > gain_low                                     # upper-lobe predominance


def test_consolidation_is_dense_inside_the_lung_labels(healthy):
    ph = generate_phantom(seed=19, disease={**OFF, "consolidation": True}, **KW)
    dense = ((ph.labels == L["lung"]) & (ph.volume.hu > -200)).sum()
    dense0 = ((healthy.labels == L["lung"]) & (healthy.volume.hu > -200)).sum()
    assert dense > dense0 + 50
    # counted as lung: the lung mask keeps its size
    assert ph.lung_mask().sum() > 0.9 * healthy.lung_mask().sum()


def test_cli_synth_randomized_writes_domain_json_and_meta(tmp_path, capsys):
    from lungcad.cli import main

    out = tmp_path / "out"
    rc = main(["synth", str(out), "--patients", "1", "--seed", "4", "--size", "128", "--slice-mm", "5",
               "--domain", "randomized", "--no-progress"])
    assert rc == 0
    d = json.loads((out / "domain.json").read_text())
    assert d["domain"] == "randomized"
    assert d["ranges"]["held_out"]["kernel_family"] == HELD_OUT.kernel_family
    (p,) = d["drawn"]
    assert p["domain"] == "randomized" and "anatomy_scale" in p["anatomy"] and set(p["disease"]) == set(DISEASES)
    assert not HELD_OUT.anatomy_scale.contains(p["anatomy"]["anatomy_scale"])
