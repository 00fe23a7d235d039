"""Orbit videos and meshes on tiny synthetic tri-planes (CPU, a few seconds in all).

The synthetic fields are exact: planes hold coordinate functions sampled at the texel centres, and an
OSGDecoder with hand-set weights turns their plane-mean into a density whose level-10 surface is known
(a half-space x_axis > 0 or a ball of radius RADIUS) and a red channel that is on exactly where x > 0.
"""
from __future__ import annotations

import math

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh

from threedpe import cameras
from threedpe.mesh import density_grid, export_mesh, extract_mesh
from threedpe.models.rendering import OSGDecoder, RenderingConfig, TriplaneRenderer
from threedpe.cancel import Cancelled
from threedpe.video import render_orbit, to_uint8, triplane_view, write_mp4

P = 32
RADIUS = 0.25
LN2 = math.log(2.0)


def coordinate_planes() -> torch.Tensor:
    """Planes (1, 96, P, P) whose plane-mean features are c0 = |p|^2 / 3 and c1, c2, c3 = x, y, z.

    Plane 0 is indexed by (x, y), plane 1 by (x, z), plane 2 by (z, x) (width coordinate first).
    """
    t = (torch.arange(P, dtype=torch.float32) + 0.5) / P - 0.5  # world coordinate of texel centres
    v, u = torch.meshgrid(t, t, indexing="ij")  # v: height (rows), u: width (columns)
    planes = torch.zeros(3, 32, P, P)
    planes[0, 0], planes[1, 0] = u ** 2 + v ** 2, v ** 2  # x^2 + y^2, z^2
    planes[0, 1], planes[1, 1], planes[2, 1] = u, u, v  # x on every plane
    planes[0, 2] = 3 * v  # y
    planes[1, 3], planes[2, 3] = 1.5 * v, 1.5 * u  # z
    return planes.reshape(1, 96, P, P)


def field_decoder(density: str) -> OSGDecoder:
    """OSGDecoder (3 hidden units) with sigma = 20 (softplus(h) - ln 2) + 10 and red = [x > 0].

    ``density``: "ball" (h = 200 (R^2/3 - c0), level 10 at |p| = R) or "x", "y", "z" (h = 20 * coordinate).
    """
    decoder = OSGDecoder(hidden=3)
    hidden, out = decoder.net[0], decoder.net[2]
    w1 = torch.zeros(3, 32)
    b1 = torch.zeros(3)
    if density == "ball":
        w1[0, 0], b1[0] = -200.0, 200.0 * RADIUS ** 2 / 3
    else:
        w1[0, 1 + "xyz".index(density)] = 20.0
    w1[1, 1] = 50.0  # colour unit: softplus(50 x)
    w2 = torch.zeros(33, 3)
    b2 = torch.zeros(33)
    w2[0, 0], b2[0] = 20.0, 10.0 - 20.0 * LN2  # sigma
    w2[1, 1], b2[1] = 50.0, -50.0 * LN2  # red logit > 0 iff x > 0
    b2[2], b2[3] = -20.0, 20.0  # green 0, blue 1
    with torch.no_grad():
        hidden.weight.copy_(w1 / hidden.weight_gain)
        hidden.bias.copy_(b1)
        out.weight.copy_(w2 / out.weight_gain)
        out.bias.copy_(b2)
    return decoder.eval()


@pytest.fixture(scope="module")
def tiny_renderer() -> TriplaneRenderer:
    torch.manual_seed(0)
    cfg = RenderingConfig(depth_resolution=16, depth_resolution_importance=16, neural_rendering_resolution=16)
    renderer = TriplaneRenderer(cfg, w_dim=8, sr_widths=(4, 4)).eval()
    renderer.decoder = field_decoder("ball")
    return renderer


# --- frames and video -------------------------------------------------------------------------------


def test_to_uint8_maps_minus_one_one_to_bytes():
    image = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 6).expand(3, 1, 6)
    out = to_uint8(image)
    assert out.shape == (1, 6, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match="expected an image"):
        to_uint8(torch.zeros(4, 4, 3))


def gradient_frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Smooth frames: a left-to-right ramp whose offset changes per frame."""
    ramp = np.linspace(0, 150, width)[None, :, None]
    return [np.broadcast_to(ramp + 10 * i, (height, width, 3)).astype(np.uint8) for i in range(n)]


def test_write_mp4_is_h264_with_all_frames(tmp_path):
    frames = gradient_frames(7)
    path = write_mp4(iter(frames), tmp_path / "orbit.mp4", fps=30)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(f, np.uint8).reshape(48, 64, 3) for f in reader]
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (64, 48) and meta["fps"] == 30
    assert len(decoded) == 7
    for original, back in zip(frames, decoded):
        assert np.abs(original.astype(int) - back.astype(int)).mean() < 3


@pytest.mark.parametrize("frames, message", [
    ([], "without frames"),
    ([np.zeros((47, 64, 3), np.uint8)], "even frame size"),
    ([np.zeros((48, 64, 3), np.float32)], "uint8"),
    ([np.zeros((48, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)], "same size"),
])
def test_write_mp4_rejects_bad_frames_and_leaves_no_file(tmp_path, frames, message):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=message):
        write_mp4(frames, path)
    assert not path.exists()


def test_render_orbit_batches_the_official_path():
    calls = []

    def render_view(cams: torch.Tensor) -> np.ndarray:
        calls.append(cams)
        # a deterministic function of the cameras: yaw-dependent grey level
        level = ((cams[:, 3] + 3) * 40).round().to(torch.uint8).numpy()
        return np.broadcast_to(level[:, None, None, None], (len(cams), 4, 6, 3)).copy()

    frames = list(render_orbit(render_view, num_frames=10, batch=4))
    assert [len(c) for c in calls] == [4, 4, 2]
    assert len(frames) == 10 and frames[0].shape == (4, 6, 3)
    path = cameras.orbit_path(10)
    torch.testing.assert_close(calls[0][:1], cameras.camera(*path[0]))
    torch.testing.assert_close(torch.cat(calls), torch.cat([cameras.camera(*view) for view in path]))
    again = list(render_orbit(render_view, num_frames=10, batch=3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_render_orbit_checks_frame_count_and_cancel(tmp_path):
    with pytest.raises(ValueError, match="returned 1 frames for 2 cameras"):
        list(render_orbit(lambda cams: np.zeros((1, 4, 4, 3), np.uint8), num_frames=2, batch=2))
    calls = []

    def render_view(cams: torch.Tensor) -> np.ndarray:
        calls.append(len(cams))
        return np.zeros((len(cams), 4, 4, 3), np.uint8)

    path = tmp_path / "cancelled.mp4"
    with pytest.raises(Cancelled):
        write_mp4(render_orbit(render_view, num_frames=8, batch=2, cancel=lambda: len(calls) >= 1), path)
    assert calls == [2] and not path.exists()


def test_orbit_video_from_a_tiny_renderer_is_deterministic(tiny_renderer, tmp_path):
    planes = coordinate_planes()
    view = triplane_view(tiny_renderer, planes, deterministic=True)
    first = list(render_orbit(view, num_frames=3, batch=2))
    second = list(render_orbit(view, num_frames=3, batch=3))
    assert first[0].shape == (64, 64, 3) and first[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    path = write_mp4(first, tmp_path / "tiny.mp4")
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["size"] == (64, 64) and meta["codec"] == "h264"


# --- density grid and mesh -----------------------------------------------------------------------------


def test_density_grid_chunks_do_not_change_the_result():
    torch.manual_seed(0)
    planes, decoder = torch.randn(1, 96, 8, 8), OSGDecoder().eval()
    whole = density_grid(planes, decoder, resolution=10, chunk=10 ** 3)
    chunked = density_grid(planes, decoder, resolution=10, chunk=37)
    assert whole.shape == (10, 10, 10) and whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one tri-plane"):
        density_grid(torch.randn(2, 96, 8, 8), decoder, resolution=4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_grid_axes_are_x_y_z_and_the_mesh_lies_on_the_dense_side(axis):
    planes, decoder = coordinate_planes(), field_decoder("xyz"[axis])
    resolution = 32
    grid = density_grid(planes, decoder, resolution=resolution)
    # density varies along ``axis`` only (away from the box faces, where the planes' zero padding blends in)
    along = np.moveaxis(grid, axis, 0)[:, 1:-1, 1:-1]
    np.testing.assert_allclose(along, np.broadcast_to(along[:, :1, :1], along.shape), atol=1e-3)
    coordinate = np.linspace(-0.5, 0.5, resolution)
    assert np.array_equal(along[:, 0, 0] > 10, coordinate > 0)

    mesh = extract_mesh(planes, decoder, resolution=resolution)
    side = mesh.vertices[:, axis]
    assert abs(side.min()) < 0.01  # the cut plane coordinate = 0, found to within a third of a voxel
    assert side.max() > 0.3 and mesh.is_watertight and mesh.volume > 0


def test_ball_gives_a_closed_outward_coloured_mesh():
    mesh = extract_mesh(coordinate_planes(), field_decoder("ball"), resolution=40)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight
    assert np.abs(radius - RADIUS).max() < 0.01
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS ** 3, rel=0.03)  # positive: outward winding
    assert np.all(np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0)
    colors = mesh.visual.vertex_colors
    x = mesh.vertices[:, 0]
    assert np.all(colors[x > 0.02, 0] > 240) and np.all(colors[x < -0.02, 0] < 15)
    assert np.all(colors[:, 1] == 0) and np.all(colors[:, 2] == 255) and np.all(colors[:, 3] == 255)


def test_no_surface_is_a_clear_error():
    with pytest.raises(ValueError, match="never crosses level 1000"):
        extract_mesh(coordinate_planes(), field_decoder("ball"), resolution=12, level=1000.0)
    with pytest.raises(ValueError, match="leaves no grid"):
        extract_mesh(coordinate_planes(), field_decoder("ball"), resolution=12, border=0.5)


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj"])
def test_exported_mesh_keeps_vertex_colours(tmp_path, suffix):
    mesh = extract_mesh(coordinate_planes(), field_decoder("ball"), resolution=20)
    path = export_mesh(mesh, tmp_path / f"head{suffix}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    assert np.array_equal(loaded.visual.vertex_colors, mesh.visual.vertex_colors)
    with pytest.raises(ValueError, match="unsupported mesh format"):
        export_mesh(mesh, tmp_path / "head.stl")


@pytest.mark.parametrize("axis", [0, 1])
def test_mesh_and_frontal_rendering_agree_on_left_right_and_up(tiny_renderer, axis):
    """Seen from +z (the frontal camera, and glTF viewers' default), +x is on the right and +y at the top."""
    renderer = TriplaneRenderer(tiny_renderer.cfg, w_dim=8, sr_widths=(4, 4)).eval()
    renderer.decoder = field_decoder("xyz"[axis])
    with torch.inference_mode():
        opacity = renderer(coordinate_planes(), cameras.frontal_camera(), deterministic=True)["weight_total"][0, 0]
    quarter = opacity.shape[0] // 4  # outer quarters: the density falls off smoothly across the plane
    dense, empty = ((opacity[:, -quarter:], opacity[:, :quarter]) if axis == 0
                    else (opacity[:quarter], opacity[-quarter:]))
    assert dense.min() > 0.99 and empty.max() < 0.05
