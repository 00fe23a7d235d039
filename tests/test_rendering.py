"""Cameras and the tri-plane renderer on small inputs."""
from __future__ import annotations

import math

import pytest
import torch

from threedpe import cameras
from threedpe.models.rendering import RenderingConfig, TriplaneRenderer, sample_from_planes, sample_rays


def test_frontal_camera_matrix():
    c = cameras.frontal_camera()
    assert c.shape == (1, 25)
    cam2world = c[0, :16].reshape(4, 4)
    # OpenCV cam2world: camera x = world +x, camera y (down) = world -y, camera z (forward) = world -z.
    expected_rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    torch.testing.assert_close(cam2world[:3, :3], expected_rotation, atol=1e-6, rtol=0)
    torch.testing.assert_close(cam2world[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam2world[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    k = c[0, 16:].reshape(3, 3)
    focal = 1 / (math.tan(18.837 * 3.14159 / 360) * 1.414)
    assert k[0, 0].item() == pytest.approx(focal, rel=1e-6) and k[0, 0].item() == pytest.approx(4.26339, abs=1e-5)
    torch.testing.assert_close(k[:, 2], torch.tensor([0.5, 0.5, 1.0]))


def test_cameras_look_at_the_pivot_from_radius_2_7():
    yaw = torch.tensor([0.3, 1.2, 2.0])
    pitch = torch.tensor([1.0, 1.57, 2.4])
    c = cameras.camera(yaw, pitch)
    cam2world = c[:, :16].reshape(-1, 4, 4)
    origin = cam2world[:, :3, 3]
    torch.testing.assert_close(origin.norm(dim=1), torch.full((3,), 2.7))
    forward = cam2world[:, :3, 2]
    to_pivot = torch.tensor(cameras.PIVOT) - origin
    torch.testing.assert_close(forward, to_pivot / to_pivot.norm(dim=1, keepdim=True), atol=1e-6, rtol=0)
    rotation = cam2world[:, :3, :3]
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)


def test_orbit_and_three_views():
    path = cameras.orbit_path(8)
    assert len(path) == 8 and path[0] == pytest.approx((3.14 / 2, 3.14 / 2 - 0.05 + 0.25))
    views = cameras.three_views()
    assert views[1] == pytest.approx(cameras.FRONTAL)
    assert views[0][0] == pytest.approx(math.pi / 2 - math.pi / 6)
    with pytest.raises(ValueError):
        cameras.orbit_path(0)


def test_centre_ray_points_at_the_pivot():
    origins, directions = sample_rays(cameras.frontal_camera(), 2)
    centre = directions[0].mean(0)
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(origins[0], torch.tensor([[0.0, 0.0, 2.7]]).expand(4, 3))


def test_plane_axes_follow_eg3d():
    """Plane 0 is indexed by (x, y), plane 1 by (x, z), plane 2 by (z, x)."""
    planes = torch.zeros(1, 3, 1, 4, 4)
    planes[0, 0, 0, 0, 3] = 1.0  # (row, column) = (0, 3): grid (u, v) = (+0.75, -0.75)
    planes[0, 1, 0, 0, 3] = 2.0
    planes[0, 2, 0, 3, 0] = 3.0  # (row, column) = (3, 0): grid (u, v) = (-0.75, +0.75)
    point = torch.tensor([[[0.375, -0.375, -0.375]]])  # x2 = (0.75, -0.75, -0.75)
    f = sample_from_planes(planes, point, box_warp=1.0)
    assert f[0, :, 0, 0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("fast", [True, False])
def test_renderer_is_deterministic_unless_asked_otherwise(fast):
    torch.manual_seed(0)
    cfg = RenderingConfig(depth_resolution=8, depth_resolution_importance=8, neural_rendering_resolution=16)
    renderer = TriplaneRenderer(cfg, w_dim=32, sr_widths=(8, 8)).eval()
    renderer.inference.fast = fast
    planes = torch.randn(1, 96, 16, 16)
    cam = cameras.camera(1.3, 1.5)
    with torch.inference_mode():
        a, b = renderer(planes, cam), renderer(planes, cam, deterministic=True)
        c = renderer(planes, cam, deterministic=False)
    assert a["image"].shape == (1, 3, 64, 64) and a["image_depth"].shape == (1, 1, 16, 16)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_depth"], b["image_depth"])
    assert not torch.equal(a["image_depth"], c["image_depth"])
    assert torch.all((a["weight_total"] >= 0) & (a["weight_total"] <= 1 + 1e-5))


def test_positive_yaw_moves_right_and_positive_pitch_moves_down():
    """The app's slider labels rely on this: yaw > pi/2 puts the camera at +x (its own right at the frontal view),
    pitch > pi/2 puts it below the head."""
    right = cameras.camera(math.pi / 2 + 0.3, math.pi / 2)[0, :16].reshape(4, 4)[:3, 3]
    below = cameras.camera(math.pi / 2, math.pi / 2 + 0.3)[0, :16].reshape(4, 4)[:3, 3]
    frontal_right_axis = cameras.frontal_camera()[0, :16].reshape(4, 4)[:3, 0]
    assert torch.dot(right, frontal_right_axis) > 0.5 and abs(right[1]) < 1e-5
    assert below[1] < -0.5 and abs(below[0]) < 1e-5
