"""CTVolume geometry: voxel <-> world with spacing, origin and direction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lungcad.volume import CTVolume, voxel_to_world, world_to_voxel


def _rotation_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _rotation_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


DIRECTIONS = {
    "identity": np.eye(3),
    "flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "flip_z": np.diag([1.0, 1.0, -1.0]),
    "swap_xy": np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    "rot30z": _rotation_z(30),
    "rot20x_rot45z": _rotation_x(20) @ _rotation_z(45),
}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_round_trip_with_direction_and_anisotropic_spacing(name):
    d = DIRECTIONS[name]
    spacing = (2.5, 0.7, 0.9)
    origin = (-120.5, 33.25, -410.0)
    rng = np.random.default_rng(1)
    zyx = rng.uniform([0, 0, 0], [60, 300, 400], size=(200, 3))
    xyz = voxel_to_world(zyx, spacing=spacing, origin=origin, direction=d)
    back = world_to_voxel(xyz, spacing=spacing, origin=origin, direction=d)
    # back to voxels within 1e-6 voxel, and the world positions agree within 1e-6 mm
    assert np.abs(back - zyx).max() < 1e-6
    xyz2 = voxel_to_world(back, spacing=spacing, origin=origin, direction=d)
    assert np.abs(xyz2 - xyz).max() < 1e-6
    # distances are physical: neighbours along z are 2.5 mm apart whatever the direction
    a = voxel_to_world((3, 4, 5), spacing=spacing, origin=origin, direction=d)
    b = voxel_to_world((4, 4, 5), spacing=spacing, origin=origin, direction=d)
    c = voxel_to_world((3, 5, 5), spacing=spacing, origin=origin, direction=d)
    assert np.linalg.norm(b - a) == pytest.approx(2.5, abs=1e-9)
    assert np.linalg.norm(c - a) == pytest.approx(0.7, abs=1e-9)


def test_known_voxel_to_known_world():
    origin = (-228.8, -210.0, -379.0)
    spacing = (2.5, 0.82, 0.80)
    # identity: x = ox + col*sx, y = oy + row*sy, z = oz + k*sz
    w = voxel_to_world((10, 100, 200), spacing=spacing, origin=origin)
    np.testing.assert_allclose(w, [-228.8 + 200 * 0.80, -210.0 + 100 * 0.82, -379.0 + 25.0],
                               atol=1e-9)
    # flipped x and y (rows run toward anterior, columns toward the right)
    w = voxel_to_world((10, 100, 200), spacing=spacing, origin=origin,
                       direction=np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(w, [-228.8 - 160.0, -210.0 - 82.0, -354.0], atol=1e-9)
    # 90 degrees about z: the column axis points along +y, the row axis along -x
    w = voxel_to_world((0, 10, 20), spacing=(1.0, 2.0, 3.0), origin=(0, 0, 0),
                       direction=_rotation_z(90))
    np.testing.assert_allclose(w, [-20.0, 60.0, 0.0], atol=1e-9)


def test_methods_match_functions_and_single_vs_batch():
    d = DIRECTIONS["rot30z"]
    vol = CTVolume(np.zeros((4, 5, 6), np.int16), (2.0, 0.5, 0.75), (1.0, 2.0, 3.0), d)
    pts = np.array([[1, 2, 3], [3.5, 0.25, 4.75]])
    batch = vol.voxel_to_world(pts)
    assert batch.shape == (2, 3)
    for p, w in zip(pts, batch):
        np.testing.assert_allclose(vol.voxel_to_world(p), w, atol=1e-12)
        np.testing.assert_allclose(vol.world_to_voxel(w), p, atol=1e-9)
    np.testing.assert_allclose(vol.voxel_to_world((0, 0, 0)), vol.origin, atol=1e-12)


def test_invalid_volume_rejected():
    with pytest.raises(ValueError, match="3-D"):
        CTVolume(np.zeros((4, 5), np.int16), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="positive"):
        CTVolume(np.zeros((2, 2, 2), np.int16), (1, 0, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="finite and positive"):
        CTVolume(np.zeros((2, 2, 2), np.int16), (1, float("nan"), 1), (0, 0, 0))
    with pytest.raises(ValueError, match="origin must be finite"):
        CTVolume(np.zeros((2, 2, 2), np.int16), (1, 1, 1), (0, float("inf"), 0))
    with pytest.raises(ValueError, match="direction must be finite"):
        CTVolume(np.zeros((2, 2, 2), np.int16), (1, 1, 1), (0, 0, 0), direction=np.full((3, 3), np.nan))
