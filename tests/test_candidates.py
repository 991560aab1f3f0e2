"""Candidate stage plumbing, with a toy model standing in for the U-Net."""
import numpy as np
import pytest

from lungcad.candidates import context_indices, predict_probability_map, prepare_slices, window, zoom_slices


def sphere_volume(shape, spacing, centre_zyx_mm, radius_mm, inside=40, outside=-1000):
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    d2 = (zz - centre_zyx_mm[0]) ** 2 + (yy - centre_zyx_mm[1]) ** 2 + (xx - centre_zyx_mm[2]) ** 2
    hu = np.full(shape, outside, np.int16)
    hu[d2 <= radius_mm ** 2] = inside
    return hu


def toy_unet(x):
    """'Segments' whatever is denser than -500 HU in the middle channel."""
    mid = x.shape[-1] // 2
    return (x[..., mid:mid + 1] > (500.0 / 1400.0)).astype(np.float32)


def test_window_scales_to_unit_range():
    out = window(np.array([-2000, -1000, -300, 400, 3000], np.int16), (-1000, 400))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="window_hu"):
        window(np.zeros(3), (400, -1000))


def test_context_indices_repeat_edges():
    idx = context_indices(4, 1)
    assert idx.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


@pytest.mark.parametrize("spacing,pixel_mm", [((2.5, 0.7, 0.7), 1.25), ((5.0, 0.84, 0.84), 1.25),
                                               ((1.0, 1.0, 1.0), 0)])
def test_prepare_slices_shape_and_padding(spacing, pixel_mm):
    hu = np.full((6, 100, 90), -1000, np.int16)
    x, size = prepare_slices(hu, spacing_zyx=spacing, context_slices=2, pixel_mm=pixel_mm, tile=16)
    assert x.shape[0] == 6 and x.shape[-1] == 5
    assert x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0
    expect = (round(100 * spacing[1] / pixel_mm), round(90 * spacing[2] / pixel_mm)) if pixel_mm else (100, 90)
    assert size == expect
    assert x.dtype == np.float32


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (5.0, 0.84, 0.84), (1.0, 1.5, 1.5)])
def test_probability_map_is_aligned_with_the_volume(spacing):
    shape = (24, 160, 150)
    centre = (12 * spacing[0], 70 * spacing[1], 80 * spacing[2])
    hu = sphere_volume(shape, spacing, centre, radius_mm=8.0)
    box = (slice(2, 22), slice(20, 150), slice(10, 140))
    prob = predict_probability_map(hu, spacing_zyx=spacing, model=toy_unet, box=box, context_slices=1,
                                   pixel_mm=1.25, batch_size=4, chunk_slices=7)
    assert prob.shape == hu.shape and prob.dtype == np.float32
    assert prob.max() == pytest.approx(1.0)
    # nothing outside the box
    assert prob[:2].max() == 0 and prob[:, :20].max() == 0
    # the map's centre of mass is the sphere's centre, in mm
    zz, yy, xx = np.nonzero(prob > 0.5)
    com = np.array([zz.mean() * spacing[0], yy.mean() * spacing[1], xx.mean() * spacing[2]])
    np.testing.assert_allclose(com, centre, atol=1.0)
    # and its volume matches the sphere's within 15 %
    vol = (prob > 0.5).sum() * np.prod(spacing)
    assert vol == pytest.approx(4 / 3 * np.pi * 8.0 ** 3, rel=0.15)


def test_a_keras_unet_runs_over_the_slices_in_full_batches():
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(inp)
    model = keras.Model(inp, out)
    hu = np.full((5, 40, 40), -1000, np.int16)
    sizes = []
    real = model.predict_on_batch
    model.predict_on_batch = lambda x: (sizes.append(len(x)), real(x))[1]
    prob = predict_probability_map(hu, spacing_zyx=(2.0, 1.0, 1.0), model=model, pixel_mm=0, batch_size=2)
    assert prob.shape == hu.shape
    assert 0.0 <= prob.min() <= prob.max() <= 1.0
    assert sizes == [2, 2, 2]                      # 5 slices: the last batch padded


@pytest.mark.parametrize("shape, size", [((3, 40, 52), (71, 90)),    # up, as the map back to the scan
                                         ((3, 71, 90), (40, 52)),    # down, as the slices to the network
                                         ((2, 1, 9), (4, 9)),        # one row; x as it is
                                         ((2, 17, 5), (17, 1))])     # y as it is; to one column
def test_zoom_slices_is_ndimage_bilinear_zoom_in_plane(shape, size):
    from scipy import ndimage

    a = np.random.default_rng(3).random(shape, dtype=np.float32)
    zoom = (1.0, size[0] / shape[1], size[1] / shape[2])
    want = ndimage.zoom(a, zoom, order=1, prefilter=False, grid_mode=True, mode="nearest")
    got = zoom_slices(a, size)
    assert got.shape == want.shape == (shape[0], *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
