"""Acquisition and lesion half of the domain randomisation (lungcad.synthetic.scanner, artifacts,
lesions): the default domain unchanged, kernels with their matching noise, the slice profile,
held-out bands, metal, and the new lesion kinds."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from lungcad.synthetic import domain as dom
from lungcad.synthetic.anatomy import BODY, BONE, LESION, LUNG, MEDIASTINUM, OUTSIDE, VESSEL
from lungcad.synthetic.scanner import (Scanner, acquire, acquire_domain, draw_scanner, draw_scanner_domain,
                                       kernel_mtf, reconstruct_slices, slice_profile)


def _h(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ---- the default domain is unchanged (values recorded with the code of ea36447) ----------------

DEFAULT_SCANNERS = [  # draw_scanner(default_rng(seed)) for seeds 0..5: psf, noise, kernel, edge gain
    (0.42458411436171684, 11.42762541662203, "soft", 0.0),
    (0.48649576763178026, 28.09867670802782, "soft", 0.0),
    (0.8885354443565682, 20.10199464734373, "sharp", 0.5643411594945679),
    (0.8807646791238382, 18.921916877916825, "sharp", 0.9075134252450574),
    (0.9857462234246225, 15.725627725745422, "soft", 0.0),
    (0.7091953366252852, 23.27411965631916, "soft", 0.0),
]


def test_default_scanner_draws_unchanged():
    for seed, (psf, noise, kernel, gain) in enumerate(DEFAULT_SCANNERS):
        sc = draw_scanner(np.random.default_rng(seed))
        assert (sc.psf_mm, sc.noise_hu, sc.kernel, sc.edge_gain) == (psf, noise, kernel, gain)
        assert sc.domain == "default" and set(sc.meta()) == {"psf_mm", "noise_hu", "kernel_type", "edge_gain"}


@pytest.mark.parametrize("kernel, digest", [("soft", "ACQ_SOFT"), ("sharp", "ACQ_SHARP")])
def test_default_acquire_and_slice_profile_unchanged(kernel, digest):
    rng = np.random.default_rng(11)
    vol = rng.normal(0, 200, (5, 40, 48)).astype(np.float32)
    labels = rng.integers(0, 7, vol.shape).astype(np.uint8)
    sc = draw_scanner(np.random.default_rng(3), kernel=kernel)
    acquire(vol, labels, sc, pixel_mm=0.8, rng=np.random.default_rng(5))
    assert _h(vol) == {"ACQ_SOFT": ACQ_SOFT, "ACQ_SHARP": ACQ_SHARP}[digest]
    fine = np.random.default_rng(2).normal(0, 100, (15, 20, 22)).astype(np.float32)
    assert _h(slice_profile(fine.copy(), 3)) == SLICE3
    assert _h(slice_profile(fine.copy(), 1)) == SLICE1


def test_default_phantom_unchanged():
    from lungcad.synthetic.phantom import generate_phantom

    ph = generate_phantom(seed=5, shape=(24, 64, 64), spacing=(5.0, 4.0, 4.0), n_nodules=3, n_masses=1)
    assert _h(ph.volume.hu) == "a8bc9ffeeb07e510"          # recorded with the code of ea36447


# ---- kernels and their noise ----------------------------------------------------------------------

def _domain_scanner(mtf50, noise=20.0, **kw):
    from lungcad.synthetic.scanner import kernel_noise_gain, kernel_overshoot

    a = kernel_overshoot(mtf50)
    return Scanner(psf_mm=0.0, noise_hu=noise, kernel="soft", edge_gain=a, domain="randomized",
                   mtf50_lpmm=mtf50, overshoot=a, noise_gain=kernel_noise_gain(mtf50, a), **kw)


def _noise_only(sc, n=256, ps=0.7, nz=2, seed=0):
    img = np.zeros((nz, n, n), np.float32)
    lab = np.full(img.shape, BODY, np.uint8)
    acquire_domain(img, lab, None, sc, pixel_mm=ps, spacing=(2.0, ps, ps), rng=np.random.default_rng(seed))
    return img


def _radial_nps(img, ps):
    F = np.abs(np.fft.fft2(img - img.mean(axis=(1, 2), keepdims=True))) ** 2
    F = F.mean(axis=0)
    fy = np.fft.fftfreq(img.shape[1], ps)
    fx = np.fft.fftfreq(img.shape[2], ps)
    fr = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    bins = np.linspace(0, fr.max(), 40)
    idx = np.digitize(fr.ravel(), bins)
    prof = np.bincount(idx, F.ravel(), len(bins) + 1) / np.maximum(np.bincount(idx, minlength=len(bins) + 1), 1)
    centres = np.concatenate([[0], 0.5 * (bins[1:] + bins[:-1]), [bins[-1]]])
    return centres[1:len(bins)], prof[1:len(bins)]


def test_noise_texture_matches_the_kernel():
    ps = 0.7
    soft, sharp = _domain_scanner(0.25), _domain_scanner(0.85)
    peaks = []
    for sc in (soft, sharp):
        img = _noise_only(sc, ps=ps)
        assert np.isfinite(img).all()
        # the requested std (drawn noise x the kernel's noise gain) within 10 %
        assert abs(float(img.std()) / sc.noise_sd_hu - 1.0) < 0.10
        f, prof = _radial_nps(img, ps)
        peaks.append(f[int(np.argmax(prof))])
        assert prof[0] < 0.2 * prof.max()         # ramp: no power at the lowest frequencies
    assert peaks[1] > 1.8 * peaks[0]
    assert sharp.noise_sd_hu > 2.5 * soft.noise_sd_hu
    img = _noise_only(soft, ps=ps)
    c = np.corrcoef(img[:, :, :-1].ravel(), img[:, :, 1:].ravel())[0, 1]
    assert c > 0.5                                   # smooth kernel: strongly correlated, not white


@pytest.mark.parametrize("mtf50", [0.25, 0.45, 0.65])
def test_edge_gives_the_drawn_mtf50(mtf50):
    ps = 0.35
    sc = _domain_scanner(mtf50, noise=0.0)
    img = np.full((1, 64, 256), -900.0, np.float32)
    img[:, :, 64:192] = 40.0                      # two edges on a periodic row
    acquire_domain(img, np.full(img.shape, BODY, np.uint8), None, sc, pixel_mm=ps, spacing=(1.0, ps, ps),
                   rng=np.random.default_rng(0))
    esf = img[0, 32].astype(np.float64)
    lsf = np.diff(esf[32:96])
    mtf = np.abs(np.fft.rfft(lsf, 4096))
    mtf /= mtf[0]
    f = np.fft.rfftfreq(4096, ps)
    f50 = f[int(np.argmax(mtf < 0.5))]
    assert abs(f50 / mtf50 - 1.0) < 0.15
    ref = kernel_mtf(f, mtf50)
    assert np.max(np.abs(mtf - ref)[f < 1.0]) < 0.15


# ---- the slice profile ----------------------------------------------------------------------------

@pytest.mark.parametrize("thickness", [0.8, 2.5, 7.0])
def test_slice_profile_fwhm_and_mass(thickness):
    dz = 0.05
    zf = np.arange(-30.0, 30.0, dz)
    fine = np.zeros((len(zf), 2, 2), np.float32)
    fine[np.argmin(np.abs(zf))] = 1.0 / dz         # a thin plate at z = 0, unit area
    zs = np.arange(-15.0, 15.0, 0.05)                # slices every 0.05 mm: the profile itself
    out = reconstruct_slices(fine, zf, zs, thickness)[:, 0, 0]
    above = zs[out >= 0.5 * out.max()]
    fwhm = above[-1] - above[0] + 0.05
    assert abs(fwhm / thickness - 1.0) < 0.15
    # mass: slices one thickness apart (no overlap) and overlapping ones keep the plate's area
    for inc in (thickness, 0.6 * thickness):
        zs2 = np.arange(-15.0, 15.0, inc) + 0.37 * inc
        o2 = reconstruct_slices(fine, zf, zs2, thickness)[:, 0, 0]
        assert abs(float(o2.sum()) * inc - 1.0) < 0.03
    uni = reconstruct_slices(np.full((len(zf), 2, 2), 5.0, np.float32), zf, zs[::50], thickness)
    assert np.allclose(uni, 5.0, atol=1e-3)


# ---- held-out bands ------------------------------------------------------------------------------

def test_held_out_bands_respected():
    held = dom.HELD_OUT
    rng = np.random.default_rng(0)
    fams, thick = set(), []
    for _ in range(400):
        sc = draw_scanner_domain(rng, "randomized")
        fams.add(sc.kernel_family)
        thick.append(sc.slice_thickness_mm)
        assert not any(b.contains(sc.slice_thickness_mm) for b in held.slice_thickness_mm)
        assert sc.kernel_family != held.kernel_family
        assert dom.KERNEL_FAMILIES[sc.kernel_family].contains(sc.mtf50_lpmm)
        assert 0.0 < sc.increment_mm <= sc.slice_thickness_mm + 1e-9
        assert np.isfinite(sc.noise_sd_hu) and sc.noise_sd_hu > 0
    assert fams == set(dom.KERNEL_FAMILIES) - {held.kernel_family}
    assert min(thick) < 1.0 and max(thick) > 8.0
    for _ in range(100):
        sc = draw_scanner_domain(rng, "shifted")
        assert any(b.contains(sc.slice_thickness_mm) for b in held.slice_thickness_mm)
        assert sc.kernel_family == held.kernel_family
    with pytest.raises(ValueError, match="default"):
        draw_scanner_domain(rng, "default")


# ---- metal, streaks, motion ----------------------------------------------------------------------

def _toy_chest(nz=12, n=160, ps=2.0):
    """A crude chest (z, y, x): body ellipse, two lungs, mediastinum, sternum, spine, two
    humeri; organs: heart in the mediastinum's lower half, liver dome at the bottom right."""
    z, y, x = np.meshgrid(np.arange(nz), (np.arange(n) - n / 2) * ps, (np.arange(n) - n / 2) * ps,
                          indexing="ij")
    lab = np.full((nz, n, n), OUTSIDE, np.uint8)
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    lab[body] = BODY
    lung = (((x - 55) / 45) ** 2 + (y / 65) ** 2 <= 1) | (((x + 55) / 45) ** 2 + (y / 65) ** 2 <= 1)
    lab[lung & body] = LUNG
    lab[(np.abs(x) < 12) & (np.abs(y) < 60) & body] = MEDIASTINUM
    lab[((x / 12) ** 2 + ((y + 80) / 5) ** 2) <= 1] = BONE            # sternum (anterior is -y)
    lab[((x / 15) ** 2 + ((y - 80) / 15) ** 2) <= 1] = BONE           # vertebra
    lab[(((np.abs(x) - 150) / 16) ** 2 + (y / 16) ** 2) <= 1] = BONE  # humeri
    hu = np.select([lab == OUTSIDE, lab == BODY, lab == LUNG, lab == MEDIASTINUM, lab == BONE],
                   [-1000.0, 40.0, -850.0, 35.0, 700.0]).astype(np.float32)
    organs = np.zeros(lab.shape, np.uint8)
    organs[((x / 20) ** 2 + (y / 30) ** 2 <= 1) & (z < 6)] = 1
    organs[(((x + 55) / 40) ** 2 + (y / 50) ** 2 <= 1) & (z < 3)] = 2
    hu[organs == 1] = 45.0
    hu[organs == 2] = 60.0
    lab[organs > 0] = MEDIASTINUM
    return hu, lab, organs, (5.0, ps, ps)


def test_metal_streaks_and_motion():
    hu, lab, organs, sp = _toy_chest()
    sc = _domain_scanner(0.4, noise=10.0, metal=("clips", "pacemaker", "wires"), metal_hu=12000.0,
                         metal_streak_hu=300.0, streak_hu=100.0)
    img = hu.copy()
    acquire_domain(img, lab, organs, sc, pixel_mm=sp[1], spacing=sp, rng=np.random.default_rng(1))
    assert np.isfinite(img).all() and img.min() >= -1024 and img.max() <= 3071
    assert (img > 2000).sum() >= 20                        # metal
    ref = hu.copy()
    acquire_domain(ref, lab, organs, _domain_scanner(0.4, noise=10.0), pixel_mm=sp[1], spacing=sp,
                   rng=np.random.default_rng(1))
    diff = img - ref
    soft = (lab == BODY) & (np.abs(diff) < 1500)
    # streaks: soft tissue away from the metal changes by tens of HU, both darker and brighter
    assert np.percentile(diff[soft], 2) < -30 and np.percentile(diff[soft], 98) > 30


def _edge_width(prof):
    """Distance (samples) between the 10 % and 90 % crossings of a rising edge."""
    p = (prof - prof.min()) / max(prof.max() - prof.min(), 1e-6)
    return int(np.argmax(p >= 0.9)) - int(np.argmax(p >= 0.1))


def test_motion_blurs_the_heart_along_y_and_the_dome_along_z():
    nz, n, ps = 40, 96, 1.0
    z, y, x = np.meshgrid(np.arange(nz) * 1.0, np.arange(n) * ps, np.arange(n) * ps, indexing="ij")
    hu = np.full((nz, n, n), -850.0, np.float32)
    organs = np.zeros(hu.shape, np.uint8)
    heart = (np.abs(y - 48) < 20) & (np.abs(x - 48) < 20) & (z >= 20) & (z < 36)
    liver = z < 12
    organs[heart], organs[liver] = 1, 2
    hu[heart], hu[liver] = 250.0, 60.0
    lab = np.full(hu.shape, LUNG, np.uint8)
    sp = (1.0, ps, ps)
    out = {}
    for motion in (0.0, 8.0):
        img = hu.copy()
        acquire_domain(img, lab, organs, _domain_scanner(0.9, noise=0.0, motion_mm=motion), pixel_mm=ps,
                       spacing=sp, rng=np.random.default_rng(0))
        out[motion] = img
    still, moved = out[0.0], out[8.0]
    assert _edge_width(moved[28, 15:40, 48]) >= _edge_width(still[28, 15:40, 48]) + 4    # along y
    assert _edge_width(moved[28, 48, 15:40]) <= _edge_width(still[28, 48, 15:40]) + 1    # not along x
    assert _edge_width(moved[18:2:-1, 48, 48]) >= _edge_width(still[18:2:-1, 48, 48]) + 4   # dome along z
    assert np.abs(moved[30, 48, 48] - still[30, 48, 48]) < 5.0                  # the heart's centre is still


def test_metal_clipped_in_a_phantom_size_volume():
    hu, lab, organs, sp = _toy_chest(nz=6, n=96, ps=3.0)
    sc = _domain_scanner(0.9, noise=60.0, metal=("pacemaker",), metal_hu=20000.0, metal_streak_hu=400.0)
    acquire_domain(hu, lab, organs, sc, pixel_mm=sp[1], spacing=sp, rng=np.random.default_rng(2))
    assert np.isfinite(hu).all() and hu.max() == 3071.0 and hu.min() >= -1024.0


ACQ_SOFT = "fb620c28b30adcc3"
ACQ_SHARP = "403b217d05b600c3"
SLICE3 = "889a0c3d5fd32438"
SLICE1 = "2f23d7eb7f34e22f"


# ---- the lesions of the randomised domains --------------------------------------------------------

from lungcad.synthetic.lesion_placement import PlacementContext, contextualize, place  # noqa: E402
from lungcad.synthetic.lesion_render import paint_lesion  # noqa: E402
from lungcad.synthetic.lesion_shapes import build_geometry  # noqa: E402
from lungcad.synthetic.lesion_specs import (DOMAIN_SHAPES, SHAPES, LesionSpec, complete_spec, draw_specs,  # noqa: E402
                                            malignancy_probability)
from lungcad.synthetic.raster import Grid  # noqa: E402

WALL_X = 20.0          # the pleura on the +x side of the toy lung (mm)


def _toy_ctx():
    """A lung slab (x < 20 mm) with chest wall beyond, and one vessel along y at x = -12."""
    from scipy import ndimage as ndi

    g = Grid((-32.0, -32.0, -24.0), (1.0, 0.8, 0.8), (48, 80, 80))
    z, y, x = np.meshgrid(g.z, g.y, g.x, indexing="ij")
    lab = np.full(g.shape, BODY, np.uint8)
    lab[(x < WALL_X) & (x > -30) & (np.abs(y) < 30) & (np.abs(z) < 22)] = LUNG
    hu = np.where(lab == LUNG, -850.0, 40.0).astype(np.float32)
    vessel = ((x + 12.0) ** 2 + (z - 2.0) ** 2 <= 2.0 ** 2) & (lab == LUNG)
    lab[vessel], hu[vessel] = VESSEL, 40.0
    clab = np.where(lab == VESSEL, LUNG, lab).astype(np.uint8)
    wall = np.isin(clab, [BODY, BONE, OUTSIDE])
    d_wall, i_wall = ndi.distance_transform_edt(~wall, sampling=g.spacing, return_indices=True)
    d_med, i_med = ndi.distance_transform_edt(np.ones_like(wall), sampling=g.spacing, return_indices=True)
    ys = np.arange(-28.0, 28.0, 1.5)
    pts = np.stack([np.full_like(ys, -12.0), ys, np.full_like(ys, 2.0)], axis=1)
    ctx = PlacementContext(coarse=g, coarse_labels=clab, d_wall=d_wall, i_wall=i_wall, d_med=d_med, i_med=i_med,
                           fine=g, fine_labels=lab, z_range=(float(g.z[0]), float(g.z[-1])), hilar_z=(-5.0, 5.0),
                           vessel_pts=pts, vessel_r=np.full(len(ys), 2.0),
                           vessel_dir=np.tile([0.0, 1.0, 0.0], (len(ys), 1)))
    return g, hu, lab, ctx


def _paint(spec, centre=(0.0, 0.0, 0.0), seed=0, ctx_too=True):
    g, hu, lab, ctx = _toy_ctx()
    rng = np.random.default_rng(seed)
    geom = build_geometry(rng, spec, np.asarray(centre, float), contrast=False)
    if ctx_too:
        geom = contextualize(rng, geom, spec, ctx)
    info = paint_lesion(g, hu, lab, geom, allowed=[LUNG, VESSEL])
    return g, hu, lab, geom, info


def _world(g, idx):
    return g.to_world(np.asarray(idx, float))


def test_cavitated_has_air_inside_and_its_volume_includes_the_cavity():
    from scipy.spatial import ConvexHull, Delaunay

    spec = LesionSpec("nodule", "solid", "isolated", "cavitated", 20.0)
    g, hu, lab, geom, info = _paint(spec, ctx_too=False)
    les = lab == LESION
    air = les & (hu < -880)
    wall = les & (hu > -300)
    vox = float(np.prod(g.spacing))
    assert air.sum() * vox > 0.05 * info["volume_mm3"]
    pts = np.argwhere(wall)
    hull = Delaunay(pts[ConvexHull(pts).vertices])
    assert (hull.find_simplex(np.argwhere(air)) >= 0).mean() > 0.95          # the air is inside the wall
    assert geom.hu_cavity <= -900 and geom.hu_cavity >= -1000
    assert info["volume_mm3"] >= 0.95 * les.sum() * vox                       # whole lesion, cavity included
    d_eq = (6.0 * info["volume_mm3"] / np.pi) ** (1 / 3)
    assert abs(d_eq / 20.0 - 1.0) < 0.2


def test_irregular_is_not_convex():
    from scipy import ndimage as ndi
    from scipy.spatial import ConvexHull

    spec = LesionSpec("nodule", "solid", "isolated", "irregular", 22.0)
    sol = []
    for seed in range(3):
        g, hu, lab, geom, info = _paint(spec, seed=seed, ctx_too=False)
        assert geom.notches
        assert ndi.label(lab == LESION)[1] == 1                  # one lesion, not scattered blobs
        pts = np.argwhere(lab == LESION) * np.asarray(g.spacing)
        sol.append(len(pts) * float(np.prod(g.spacing)) / ConvexHull(pts).volume)
    assert np.mean(sol) < 0.85, sol
    ref = _paint(LesionSpec("nodule", "solid", "isolated", "round", 22.0), ctx_too=False)
    pts = np.argwhere(ref[2] == LESION) * np.asarray(ref[0].spacing)
    assert len(pts) * float(np.prod(ref[0].spacing)) / ConvexHull(pts).volume > 0.9


def test_ground_glass_keeps_the_vessels_running_through_it_bright():
    spec = LesionSpec("nodule", "ground-glass", "isolated", "round", 16.0, through_vessels=True)
    g, hu, lab, geom, info = _paint(spec, centre=(-2.0, 0.0, -4.0))
    vessels = [e for e in geom.extras if e[5] == VESSEL]
    assert vessels
    inside_v, outside_v = [], []
    for a, b, ra, rb, v, _ in vessels:
        for t in np.linspace(0.0, 1.0, 41):
            p = geom.centre + a + t * (b - a)
            idx = tuple(np.rint(g.to_index(p)).astype(int))
            if any(i < 0 or i >= n for i, n in zip(idx, g.shape)):
                continue
            (inside_v if lab[idx] == LESION else outside_v).append((hu[idx], lab[idx]))
    assert len(inside_v) >= 5 and len(outside_v) >= 5
    assert min(h for h, _ in inside_v) > -250            # bright inside the ground glass
    assert sum(lb == VESSEL for _, lb in outside_v) >= 0.8 * len(outside_v)
    ggo = (lab == LESION) & (hu < -300)
    assert ggo.sum() > 0.5 * (lab == LESION).sum()        # the rest is ground glass
    assert -800 < np.median(hu[ggo]) < -350


def test_convergent_has_vessels_and_a_pleural_tag():
    spec = LesionSpec("nodule", "part-solid", "isolated", "convergent", 14.0)
    g, hu, lab, geom, info = _paint(spec)
    R = 7.0
    vessels = [e for e in geom.extras if e[5] == VESSEL]
    assert len(vessels) >= 3
    for a, b, *_ in vessels:                       # from the lung around, to the lesion's surface
        assert np.linalg.norm(a) > R + 3.0 and np.linalg.norm(b) <= R
    # at least one converging vessel comes from the patient's vessel at x = -12
    assert any(abs(geom.centre[0] + a[0] + 12.0) < 0.5 for a, *_ in vessels)
    tags = [e for e in geom.extras if e[5] is None]
    pulled = [e for e in geom.extras if e[5] == BODY]
    assert len(tags) == 1 and len(pulled) == 1
    end = geom.centre + tags[0][1]
    assert abs(end[0] - WALL_X) < 2.5 and abs(end[1]) < 1 and abs(end[2]) < 1    # reaches the pleura
    # drawn: soft tissue along the tag between lesion and wall, and the pleura pulled in (body label)
    mid = tuple(np.rint(g.to_index(geom.centre + 0.6 * tags[0][0] + 0.4 * tags[0][1])).astype(int))
    assert hu[mid] > -600 and lab[mid] == LUNG
    near = tuple(np.rint(g.to_index([WALL_X - 1.5, 0.0, 0.0])).astype(int))
    assert lab[near] == BODY
    assert (lab == LESION).sum() > 0 and malignancy_probability(14.0, "part-solid", "convergent") > \
        malignancy_probability(14.0, "part-solid", "round")


def test_domain_lesion_kinds_are_drawn_at_their_shares_and_never_by_default():
    rng = np.random.default_rng(0)
    specs = [complete_spec(rng, {"kind": "nodule"}, domain="randomized") for _ in range(1500)]
    share = {k: np.mean([s.shape == k for s in specs]) for k in DOMAIN_SHAPES}
    share["ggo"] = np.mean([s.through_vessels for s in specs])
    L = dom.RANDOMIZED.lesions
    for k, p in (("convergent", L.convergent_p), ("irregular", L.irregular_p), ("cavitated", L.cavitated_p),
                 ("ggo", L.ggo_with_vessels_p)):
        assert abs(share[k] - p) < 0.03, (k, share[k])
    for s in specs:
        assert s.kind in ("nodule", "mass") and s.shape in SHAPES
        p = malignancy_probability(s.diameter_mm, s.texture, s.shape)
        assert 0.0 < p < 1.0
        if s.shape == "cavitated":
            assert s.texture == "solid" and s.diameter_mm >= L.cavitated_min_mm
        if s.through_vessels:
            assert s.texture in ("ground-glass", "part-solid")
    a = draw_specs(np.random.default_rng(4), n_nodules=6, n_masses=2)
    b = draw_specs(np.random.default_rng(4), n_nodules=6, n_masses=2, domain="default")
    assert a == b and not any(s.shape in DOMAIN_SHAPES or s.through_vessels for s in a)
    # asked for by name: a texture and a size that suit the kind
    for _ in range(30):
        s = complete_spec(rng, {"shape": "cavitated"})
        assert s.texture == "solid" and s.diameter_mm >= L.cavitated_min_mm
        s = complete_spec(rng, {"through_vessels": True})
        assert s.texture in ("ground-glass", "part-solid") and s.through_vessels
    # given fields are respected
    for _ in range(50):
        s = complete_spec(rng, {"texture": "calcified"}, domain="randomized")
        assert s.shape == "round" and not s.through_vessels


def test_convergent_built_with_ctx_at_the_origin_is_contextualized_where_it_is_painted():
    """phantom.py builds at (0, 0, 0) with ctx, places, translates, then paints."""
    g, hu, lab, ctx = _toy_ctx()
    rng = np.random.default_rng(5)
    spec = LesionSpec("nodule", "part-solid", "isolated", "convergent", 12.0)
    geom0 = build_geometry(rng, spec, np.zeros(3), contrast=False, ctx=ctx)
    c = np.array([4.0, -6.0, -3.0])
    geom = dataclasses.replace(geom0, centre=geom0.centre + c, spheres=[(p + c, r) for p, r in geom0.spheres],
                               spikes=[(a + c, b + c, r0, r1) for a, b, r0, r1 in geom0.spikes],
                               halo=[(p + c, r) for p, r in geom0.halo],
                               core=None if geom0.core is None else (geom0.core[0] + c, geom0.core[1]))
    assert paint_lesion(g, hu, lab, geom, allowed=[LUNG, VESSEL]) is not None
    near = tuple(np.rint(g.to_index([WALL_X - 1.5, -6.0, -3.0])).astype(int))
    assert lab[near] == BODY                               # the pleura pulled in at the right place
    mid = tuple(np.rint(g.to_index([12.0, -6.0, -3.0])).astype(int))
    assert hu[mid] > -600                                  # the tag


def test_domain_lesions_can_be_placed():
    g, hu, lab, ctx = _toy_ctx()
    rng = np.random.default_rng(3)
    for shape in DOMAIN_SHAPES:
        spec = LesionSpec("nodule", "solid", "isolated", shape, 10.0)
        geom0 = build_geometry(rng, spec, np.zeros(3), contrast=True)
        c = place(rng, ctx, spec, geom0.extent / 5.0)
        assert c is not None and ctx.in_lung(c)
        geom = contextualize(rng, dataclasses.replace(geom0, centre=geom0.centre + c,
                                                      spheres=[(p + c, r) for p, r in geom0.spheres],
                                                      spikes=[(a + c, b + c, r0, r1) for a, b, r0, r1 in geom0.spikes]),
                             spec, ctx)
        info = paint_lesion(g, hu, lab, geom, allowed=[LUNG, VESSEL])
        assert info is not None and np.linalg.norm(info["centre"] - c) < 5.0
