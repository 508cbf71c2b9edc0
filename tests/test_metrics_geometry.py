"""Geometry against the truth: silhouette IoU over an orbit, best yaw, normalised Chamfer."""

from dataclasses import replace

import pytest
import torch

from anyto3d.cameras import orbit_cameras
from anyto3d.errors import InputError
from anyto3d.metrics.geometry import (
    FRAME_RADIUS,
    best_circular_shift,
    best_rotation_about_z,
    compare_to_ground_truth,
    normalize_to_bounding_sphere,
    rotate_about_z,
    silhouette_iou_orbit,
)
from anyto3d.zoo.world import WorldObject

torch.set_num_threads(1)

CAMERAS = orbit_cameras(120)


@pytest.fixture(scope="module")
def house():
    return WorldObject.single("house", "red").mesh()  # held out in the suites; no symmetry


def test_silhouette_iou_hand_computed():
    pred = torch.zeros(2, 4, 4)
    truth = torch.zeros(2, 4, 4)
    pred[0, :2, :] = 1.0  # 8 pixels
    truth[0, :, :2] = 1.0  # 8 pixels, 4 shared -> IoU 4/12
    pred[1, 0, 0] = truth[1, 0, 0] = 1.0  # identical -> 1
    assert silhouette_iou_orbit(pred, truth) == pytest.approx((4 / 12 + 1) / 2)
    as_uint8 = (pred * 255).to(torch.uint8)
    assert silhouette_iou_orbit(as_uint8, truth) == pytest.approx((4 / 12 + 1) / 2)
    assert silhouette_iou_orbit(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)) == 1.0  # both empty
    with pytest.raises(InputError):
        silhouette_iou_orbit(pred, truth[:1])


def test_rotation_sign_convention(house):
    turned = rotate_about_z(replace(house, vertices=torch.tensor([[1.0, 0.0, 0.5]])), 90.0)
    assert torch.allclose(turned.vertices, torch.tensor([[0.0, 1.0, 0.5]]), atol=1e-6)


def test_normalisation_to_the_bounding_sphere(house):
    moved = replace(house, vertices=house.vertices * 3.0 + torch.tensor([1.0, -2.0, 0.5]))
    unit = normalize_to_bounding_sphere(moved)
    lo, hi = unit.bounding_box()
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
    assert float(unit.vertices.norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-6)


def test_circular_shift_recovers_a_rolled_orbit():
    stack = torch.zeros(8, 6, 6)
    for j in range(8):
        stack[j, : j % 4 + 1, : j // 2 + 1] = 1.0  # a different silhouette per view
    k, iou = best_circular_shift(torch.roll(stack, -3, dims=0), stack)
    assert (k, iou) == (3, 1.0)


def test_house_against_itself_turned_90_degrees(house):
    score = compare_to_ground_truth(rotate_about_z(house, 90.0), house, CAMERAS, resolution=32)
    assert score.yaw_deg == pytest.approx(-90.0, abs=5.0)  # turning it back by 90°
    assert score.iou >= 0.95
    assert score.chamfer < 0.02  # sampling noise of 5000 points only, per the GT diagonal


def test_refinement_finds_an_off_grid_yaw(house):
    fit = best_rotation_about_z(house, rotate_about_z(house, 37.0), CAMERAS[::4], resolution=32)
    assert fit.yaw_deg == pytest.approx(37.0, abs=1.5)  # between the 5° coarse steps
    assert fit.iou >= 0.95


def test_a_sphere_is_clearly_worse(house):
    right = compare_to_ground_truth(house, house, CAMERAS, resolution=32)
    sphere = compare_to_ground_truth(WorldObject.single("sphere", "red").mesh(), house, CAMERAS, resolution=32)
    assert right.iou >= 0.99
    assert sphere.iou < right.iou - 0.25
    assert sphere.chamfer > 5 * right.chamfer


def test_scale_and_position_do_not_matter(house):
    turned = rotate_about_z(house, 90.0)
    big = replace(turned, vertices=turned.vertices * 3.7 + torch.tensor([1.0, 2.0, -0.5]))
    a = compare_to_ground_truth(turned, house, CAMERAS, resolution=32)
    b = compare_to_ground_truth(big, house, CAMERAS, resolution=32)
    assert b.iou == pytest.approx(a.iou, abs=1e-3)
    assert b.chamfer == pytest.approx(a.chamfer, rel=1e-3)
    assert FRAME_RADIUS == 0.75  # the frame the orbit was designed for (the world's RADIUS)
