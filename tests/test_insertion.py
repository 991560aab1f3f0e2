"""Tests of lesion insertion (lungcad.synthetic.insertion, host_scanner, exclusions,
background_negatives): host PSF and noise, lesions inserted into real and synthetic CT, hard
negatives from real anatomy, and ``lungcad train ... --backgrounds``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.optimize import curve_fit
from scipy.special import erf

from lungcad.lungmask import segment_lungs
from lungcad.synthetic.background_negatives import mine_background_negatives
from lungcad.synthetic.exclusions import default_exclusions, exclusions_for, read_exclusions
from lungcad.synthetic.host_scanner import estimate_host_noise, estimate_host_psf
from lungcad.synthetic.insertion import insert_lesions
from lungcad.synthetic.lesion_specs import LESION_COLUMNS
from lungcad.volume import CTVolume

#: The two lesions PROVENANCE.md marks in the POPI background (world mm, LPS).
POPI_LESIONS = np.array([[-86.6, 82.7, -9.0], [-43.3, 135.1, -89.0]])
POPI_UID = "1.2.826.0.1.3680043.2.1143.9340232343065233071751154963607534694"


# ----------------------------------------------------------------------------- helpers

def _edge_sigma(vol: CTVolume, centre_xyz, radius_mm: float, inside_hu: float, outside_hu: float) -> float:
    """Gaussian sigma (mm) of a round lesion's edge in its central slice: an error function fitted to
    every pixel within 5 mm of the edge, at its distance from the centre, in 12 sectors (median)."""
    zyx = vol.world_to_voxel(np.asarray(centre_xyz, float))
    k = int(round(zyx[0]))
    sp = vol.spacing
    img = vol.hu[k].astype(float)
    jj, ii = np.mgrid[:img.shape[0], :img.shape[1]]
    dy, dx = (jj - zyx[1]) * sp[1], (ii - zyx[2]) * sp[2]
    r = np.hypot(dy, dx)
    ang = np.arctan2(dy, dx)
    out = []
    for s in range(12):
        sel = (np.abs(r - radius_mm) < 5.0) & (np.floor((ang + np.pi) / (2 * np.pi) * 12) == s)

        def f(t, a, b, t0, sig):
            return a + b * 0.5 * (1 + erf((t - t0) / (np.sqrt(2) * sig)))

        try:
            p, _ = curve_fit(f, -r[sel], img[sel], p0=(outside_hu, inside_hu - outside_hu, -radius_mm, 0.8),
                             bounds=([-1100, 200, -radius_mm - 3, 0.05], [0, 1500, -radius_mm + 3, 4.0]))
        except RuntimeError:
            continue
        out.append(p[3])
    return float(np.median(out))


def _disk_std(vol: CTVolume, centre_zyx, radius_mm: float, slices=(-1, 0, 1)) -> float:
    """Noise std in disks of ``radius_mm`` (plane-detrended) around a voxel, over a few slices."""
    sp = vol.spacing
    ry, rx = int(np.ceil(radius_mm / sp[1])), int(np.ceil(radius_mm / sp[2]))
    oy, ox = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    disk = np.hypot(oy * sp[1], ox * sp[2]) <= radius_mm
    res = []
    k0, j0, i0 = (int(round(c)) for c in centre_zyx)
    for dk in slices:
        patch = vol.hu[k0 + dk, j0 - ry:j0 + ry + 1, i0 - rx:i0 + rx + 1].astype(float)
        A = np.stack([np.ones(disk.sum()), oy[disk], ox[disk]], axis=1)
        v = patch[disk]
        coef, *_ = np.linalg.lstsq(A, v, rcond=None)
        res.append(v - A @ coef)
    return float(np.concatenate(res).std())


def _tissue_disk_std(vol: CTVolume, radius_mm: float, *, rng, n: int = 40) -> float:
    """The same measure in homogeneous soft tissue of the host (median over flat disks)."""
    sp = vol.spacing
    sm = ndi.gaussian_filter(vol.hu.astype(np.float32), (0, 2.0 / sp[1], 2.0 / sp[2]))
    ry, rx = int(np.ceil(radius_mm / sp[1])) + 1, int(np.ceil(radius_mm / sp[2])) + 1
    rng_ok = ndi.minimum_filter(vol.hu, size=(3, 2 * ry + 1, 2 * rx + 1)) > -200
    rng_ok &= ndi.maximum_filter(vol.hu, size=(3, 2 * ry + 1, 2 * rx + 1)) < 200
    flat = (ndi.maximum_filter(sm, size=(3, 2 * ry + 1, 2 * rx + 1))
            - ndi.minimum_filter(sm, size=(3, 2 * ry + 1, 2 * rx + 1))) < 40
    cand = np.argwhere(rng_ok & flat)
    cand = cand[(cand[:, 0] > 1) & (cand[:, 0] < vol.shape[0] - 2)]
    pick = cand[rng.choice(len(cand), size=min(n, len(cand)), replace=False)]
    return float(np.median([_disk_std(vol, p, radius_mm) for p in pick]))


def _check_insertion(host: CTVolume, lung: np.ndarray, exclude, *, rng_seed: int, diameter: float,
                     psf_tol: float):
    psf, noise = estimate_host_psf(host), estimate_host_noise(host)
    rng = np.random.default_rng(rng_seed)
    spec = [{"texture": "solid", "shape": "round", "location": "isolated", "diameter_mm": diameter},
            {"texture": "ground-glass", "location": "isolated", "diameter_mm": 12.0},
            {"texture": "part-solid", "location": "juxta-pleural", "diameter_mm": 14.0},
            {"texture": "calcified", "location": "juxta-pleural", "diameter_mm": 8.0}]
    new, tab, mask = insert_lesions(host, rng=rng, lesions=spec, exclude_xyz_mm=exclude, lung_mask=lung,
                                    psf=psf, noise=noise, texture=False)
    assert list(tab.columns) == LESION_COLUMNS
    assert len(tab) == 4 and set(tab["texture"]) == {"solid", "ground-glass", "part-solid", "calcified"}
    # inside the lung mask (clipped to it), away from the exclusions and each other
    assert not (mask & ~lung).any()
    zyx = np.round(tab[["z", "y", "x"]].to_numpy(float)).astype(int)
    assert lung[tuple(zyx.T)].mean() >= 0.75     # a juxta-pleural centre of mass may sit on the wall
    xyz = tab[["coordX", "coordY", "coordZ"]].to_numpy(float)
    if exclude is not None:
        # the placed centre keeps 30 mm + both radii; the centre of mass of a lesion clipped at the
        # chest wall moves inwards by less than half its radius
        ex = exclude if isinstance(exclude, pd.DataFrame) else pd.DataFrame(
            np.asarray(exclude, float).reshape(-1, 3), columns=["coordX", "coordY", "coordZ"]).assign(diameter_mm=0.0)
        d = np.linalg.norm(xyz[:, None] - ex[["coordX", "coordY", "coordZ"]].to_numpy()[None], axis=-1)
        R = tab["intended_diameter_mm"].to_numpy()[:, None] / 2
        slack = np.where(tab["location"].to_numpy()[:, None] == "juxta-pleural", 0.5 * R, 0.5)
        assert (d >= 30.0 + R + ex["diameter_mm"].to_numpy()[None] / 2 - slack).all(), d
    dd = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)]
    assert dd.min() > 15.0
    # the juxta-pleural lesions touch the mask's edge, the isolated ones do not
    edge = lung & ~ndi.binary_erosion(lung)
    lab, _ = ndi.label(mask)
    for i, row in tab.iterrows():
        comp = lab == lab[tuple(np.clip(zyx[i], 0, np.array(host.shape) - 1))] if \
            lab[tuple(zyx[i])] else None
        if comp is not None and row.location == "juxta-pleural":
            assert (ndi.binary_dilation(comp, iterations=2) & ~lung).any()
    solid = tab.iloc[0]
    # the solid round lesion: its size in the image, by threshold, as asked
    c = host.world_to_voxel(xyz[0])
    ext = np.ceil((diameter / 2 + 4) / np.asarray(host.spacing)).astype(int)
    box = tuple(slice(int(round(a)) - e, int(round(a)) + e + 1) for a, e in zip(c, ext))
    grown = (new.hu[box] > -400) & (host.hu[box] <= -400)
    lab2, _ = ndi.label(grown)
    centre_lab = lab2[tuple(e for e in ext)]
    vol_mm3 = (lab2 == centre_lab).sum() * host.voxel_volume_mm3
    d_meas = (6 * vol_mm3 / np.pi) ** (1 / 3)
    assert abs(d_meas - diameter) / diameter < 0.15, (d_meas, diameter)
    assert abs(solid.diameter_mm - diameter) / diameter < 0.1
    # its edge has the host's blur
    sig = _edge_sigma(new, xyz[0], diameter / 2, float(np.median(new.hu[box][lab2 == centre_lab])), -850.0)
    assert abs(sig - psf.sigma_mm) < psf_tol, (sig, psf.sigma_mm)
    # its noise (entirely synthesised inside) is the host's
    inside = _disk_std(new, c, diameter / 2 - 3.0)
    host_std = _tissue_disk_std(host, diameter / 2 - 3.0, rng=np.random.default_rng(0))
    assert abs(inside / host_std - 1) < 0.25, (inside, host_std)
    # nothing changed far from the lesions (spicules reach about one diameter from the centre)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in host.shape), indexing="ij", sparse=True)
    far = np.ones(host.shape, bool)
    for row in tab.itertuples():
        c = host.world_to_voxel(np.array([row.coordX, row.coordY, row.coordZ]))
        sp = host.spacing
        far &= ((kk - c[0]) * sp[0]) ** 2 + ((jj - c[1]) * sp[1]) ** 2 + ((ii - c[2]) * sp[2]) ** 2 > \
            (row.intended_diameter_mm + 6.0) ** 2
    assert np.abs(new.hu.astype(int) - host.hu)[far].max() <= 1
    return psf, noise, tab


# ------------------------------------------------------------------------------ phantoms

@pytest.fixture(scope="module")
def phantom():
    from lungcad.synthetic import generate_phantom

    ph = generate_phantom(seed=4, shape=(40, 256, 256), spacing=(2.5, 1.0, 1.0), psf_mm=1.0, noise_hu=20.0,
                          kernel="soft", n_nodules=0, n_masses=0, n_micronodules=0)
    lung = segment_lungs(ph.volume.hu, spacing_zyx=ph.volume.spacing).mask
    return ph.volume, lung


@pytest.mark.parametrize("psf_mm,noise_hu", [(0.9, 12.0), (1.3, 30.0)])
def test_host_psf_and_noise_recover_known_values(psf_mm, noise_hu):
    from lungcad.synthetic import generate_phantom

    vol = generate_phantom(seed=3, shape=(24, 256, 256), spacing=(2.5, 1.0, 1.0), psf_mm=psf_mm,
                           noise_hu=noise_hu, kernel="soft", n_nodules=0, n_masses=0, n_micronodules=0).volume
    psf = estimate_host_psf(vol)
    assert psf.n_edges >= 100
    assert abs(psf.sigma_mm - psf_mm) < 0.1, psf
    assert psf.slice_thickness_mm == 2.5
    assert abs(psf.blur_sigma_mm ** 2 + 1.0 / 12 - psf.sigma_mm ** 2) < 1e-6
    noise = estimate_host_noise(vol)
    assert noise.n_rois >= 5
    assert abs(noise.std_hu / noise_hu - 1) < 0.12, noise.to_dict()
    # the synthesised noise has the measured level and a low-pass texture like the host's
    n = noise.synthesize((4, 64, 64), vol.spacing, np.random.default_rng(0))
    assert abs(n.std() / noise.std_hu - 1) < 0.1
    assert noise.nps[1] > 3 * noise.nps[-1]


def test_insert_lesions_into_a_phantom(phantom):
    host, lung = phantom
    exclude = [host.voxel_to_world([20, 128, 70])]
    psf, _, tab = _check_insertion(host, lung, exclude, rng_seed=1, diameter=18.0, psf_tol=0.2)
    assert abs(psf.sigma_mm - 1.0) < 0.1


def test_insert_lesions_refuses_bad_input(phantom):
    host, lung = phantom
    with pytest.raises(ValueError, match="location expected"):
        insert_lesions(host, rng=np.random.default_rng(0), lesions=[{"location": "hilar"}], lung_mask=lung)
    with pytest.raises(ValueError, match="lung_mask: expected"):
        insert_lesions(host, rng=np.random.default_rng(0), n=1, lung_mask=lung[:-1])


def test_insertion_is_reproducible_and_drawn_lesions_vary(phantom):
    host, lung = phantom
    psf, noise = estimate_host_psf(host), estimate_host_noise(host)
    a = insert_lesions(host, rng=np.random.default_rng(7), n=3, lung_mask=lung, psf=psf, noise=noise)
    b = insert_lesions(host, rng=np.random.default_rng(7), n=3, lung_mask=lung, psf=psf, noise=noise)
    assert np.array_equal(a[0].hu, b[0].hu) and a[1].equals(b[1])
    assert len(a[1]) == 3 and a[0].meta["inserted_lesions"] == 3
    assert np.all(a[1]["diameter_mm"].between(3.0, 31.0))


def test_mined_negatives_in_a_phantom(phantom):
    host, lung = phantom
    ex = host.voxel_to_world([20, 128, 70])[None]
    neg = mine_background_negatives(host, lung, rng=np.random.default_rng(0), n=20, exclude_xyz_mm=ex)
    assert len(neg) == 20
    assert {"vessel", "spine-edge", "mediastinal-edge"} <= set(neg["kind"])
    xyz = neg[["coordX", "coordY", "coordZ"]].to_numpy(float)
    assert np.linalg.norm(xyz - ex, axis=1).min() >= 30.0
    assert lung[tuple(neg[["z", "y", "x"]].to_numpy(int).T)].all()
    # vessel blobs are bright, and the points keep apart
    assert (host.hu[tuple(neg[neg.kind == "vessel"][["z", "y", "x"]].to_numpy(int).T)] > -500).all()
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)]
    assert d.min() >= 8.0


def test_exclusions_tables(tmp_path):
    ex = default_exclusions()
    popi = exclusions_for(ex, series_uid=POPI_UID)
    assert np.allclose(popi[["coordX", "coordY", "coordZ"]].to_numpy(), POPI_LESIONS)
    assert len(exclusions_for(ex, series_uid="1.2.3")) == 0
    p = tmp_path / "ex.csv"
    p.write_text("# a comment\nseriesuid,coordX,coordY,coordZ,diameter_mm\nscan-a,1,2,3,10\n")
    got = exclusions_for(read_exclusions(p), series_uid="9.9", names=["scan-a"])
    assert got.iloc[0].tolist() == [1.0, 2.0, 3.0, 10.0]
    (tmp_path / "bad.csv").write_text("series,x,y\n")
    from lungcad.errors import InputError
    with pytest.raises(InputError, match="bad.csv: exclusions CSV: expected columns"):
        read_exclusions(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def popi(real_data):
    from lungcad.io import discover, load_series

    d = real_data / "backgrounds" / "popi-4dct-phase00"
    if not d.is_dir():
        pytest.skip(f"POPI background not found at {d}")
    vol = load_series(discover(d, errors=[])[0])
    lung = segment_lungs(vol.hu, spacing_zyx=vol.spacing, direction=vol.direction).mask
    return vol, lung


@pytest.mark.real
def test_insert_lesions_into_the_real_popi_background(popi):
    host, lung = popi
    assert host.series_uid == POPI_UID
    ex = exclusions_for(default_exclusions(), series_uid=host.series_uid)
    assert len(ex) == 2
    psf, noise, tab = _check_insertion(host, lung, ex, rng_seed=2, diameter=20.0, psf_tol=0.25)
    assert 0.5 < psf.sigma_mm < 0.9 and 20 < noise.std_hu < 40
    d = np.linalg.norm(tab[["coordX", "coordY", "coordZ"]].to_numpy()[:, None] - POPI_LESIONS[None], axis=-1)
    assert d.min() >= 30.0 + 4.0


@pytest.mark.real
def test_mined_negatives_in_the_real_popi_background(popi):
    host, lung = popi
    neg = mine_background_negatives(host, lung, rng=np.random.default_rng(0), n=40, exclude_xyz_mm=POPI_LESIONS)
    assert len(neg) == 40
    assert {"vessel", "spine-edge", "mediastinal-edge", "diaphragm"} <= set(neg["kind"])
    xyz = neg[["coordX", "coordY", "coordZ"]].to_numpy(float)
    assert np.linalg.norm(xyz[:, None] - POPI_LESIONS[None], axis=-1).min() >= 30.0
    assert lung[tuple(neg[["z", "y", "x"]].to_numpy(int).T)].all()
    # the spine-edge points lie beside the spine: behind the lungs' middle, near the midline
    sp = neg[neg.kind == "spine-edge"]
    assert (np.abs(sp["coordX"] - np.median(neg["coordX"])) < 60).all()


# ------------------------------------------------------------------------------ training

@pytest.mark.real
def test_background_cases_refuse_annotated_folders(real_data):
    from lungcad.errors import InputError
    from lungcad.train.sources.backgrounds import background_cases

    lidc = real_data / "lidc-idri"
    if not lidc.is_dir():
        pytest.skip("no LIDC-IDRI folder")
    with pytest.raises(InputError, match="annotations"):
        background_cases(lidc)
    petct = real_data / "lung-pet-ct-dx" / "Lung_Dx-A0001"
    if petct.is_dir():
        with pytest.raises(InputError, match="kept for evaluation"):
            background_cases(petct)


@pytest.mark.real
@pytest.mark.slow
def test_cli_train_fpr_with_backgrounds_writes_the_scans_on_the_card(real_data, tmp_path):
    bg = real_data / "backgrounds"
    if not (bg / "popi-4dct-phase00").is_dir():
        pytest.skip("no backgrounds folder")
    # one background (links to its files keep ../shared read-only and the run to one scan)
    root = tmp_path / "bg"
    (root / "popi").mkdir(parents=True)
    for f in sorted((bg / "popi-4dct-phase00").iterdir()):
        (root / "popi" / f.name).symlink_to(f)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["train", "fpr", "--backgrounds", str(root), "--background-draws", "2", "--background-lesions", "3",
            "--background-negatives", "6", "--synthetic", "1", "--synthetic-seed", "5", "--phantom-kwargs",
            '{"shape": [null, 128, 128], "spacing": [8.0, 2.5, 2.5]}', "--val-fraction", "0.5", "--epochs", "1",
            "--steps-per-epoch", "2", "--val-steps", "1", "--batch-size", "4", "--no-progress", "--model", "wrn3d",
            "--depth", "10", "--width", "1", "--out", str(tmp_path / "fpr.keras"), "--run-dir", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-m", "lungcad", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "fpr.card.json").read_text())
    src = [s for s in card["data"]["sources"] if s["source"] == "backgrounds"]
    assert len(src) == 1 and src[0]["n"] == 2
    (scan,) = src[0]["scans"]
    assert scan["series_uid"] == POPI_UID and scan["folder"] == "popi"
    assert scan["patient_id"] and scan["draws_loaded"] == 2
    assert scan["inserted_lesions"] == 6 and 1 <= scan["mined_negatives"] <= 12
    assert len(scan["exclusions"]) == 2
    assert 0.4 < scan["host_psf"]["sigma_mm"] < 1.0


@pytest.mark.real
@pytest.mark.slow
def test_cli_train_gan_on_lesions_inserted_into_a_real_background(real_data, tmp_path):
    """Issue 24: `lungcad train gan --views orthogonal --backgrounds DIR` trains on the FPR input's
    lesion patches of lesions inserted into real CT, and its card names the scan."""
    bg = real_data / "backgrounds"
    if not (bg / "popi-4dct-phase00").is_dir():
        pytest.skip("no backgrounds folder")
    root = tmp_path / "bg"
    (root / "popi").mkdir(parents=True)
    for f in sorted((bg / "popi-4dct-phase00").iterdir()):
        (root / "popi" / f.name).symlink_to(f)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["train", "gan", "--views", "orthogonal", "--backgrounds", str(root), "--background-draws", "1",
            "--background-lesions", "3", "--background-negatives", "2", "--real-patches", "8", "--epochs", "1",
            "--batch-size", "4", "--base-filters", "4", "--no-progress", "--out", str(tmp_path / "g.keras"),
            "--run-dir", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-m", "lungcad", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "g.card.json").read_text())
    assert card["task"] == "gan" and card["data"]["n_patches"] == 8 and card["data"]["views"] == "orthogonal"
    (src,) = [s for s in card["data"]["sources"] if s["source"] == "backgrounds"]
    (scan,) = src["scans"]
    assert scan["series_uid"] == POPI_UID and scan["draws_loaded"] == 1 and scan["inserted_lesions"] == 3
    assert card["preprocessing"]["fpr_input"] == [32, 32, 3]
