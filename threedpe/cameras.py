"""Cameras, in EG3D's convention (stated once, here).

* A camera is a 25-vector: the 4x4 **OpenCV cam2world** matrix (x right, y down, z forward), row-major,
  followed by the 3x3 **normalised** intrinsics (focal length and principal point in units of the
  image size), row-major.
* World frame: y up, the head looks along +z; cameras sit on a sphere of radius 2.7 around the world
  origin and look at the pivot (0, 0, 0.2).
* Angles are in radians: ``yaw`` turns around the vertical axis, ``pitch`` is measured from the top
  (+y) pole; (yaw, pitch) = (pi/2, pi/2) is the frontal view. This is internal: every public interface
  (``EditResult.view``, the app, the CLI) takes **degrees from the frontal view** (:func:`from_degrees`),
  positive yaw moving the camera to the right of the frontal image, positive pitch moving it down.
* Field of view 18.837 degrees. The official code's truncated constants (3.14159 and 1.414) are kept
  so that cameras are bit-compatible with EG3D and 3DPE.
"""
from __future__ import annotations

import math

import torch

FOV_DEGREES = 18.837
RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.2)
FRONTAL = (math.pi / 2, math.pi / 2)


def from_degrees(yaw: float, pitch: float) -> tuple[float, float]:
    """Degrees from the frontal view (the public convention) -> EG3D's (yaw, pitch) in radians."""
    return math.pi / 2 + math.radians(yaw), math.pi / 2 + math.radians(pitch)


def intrinsics(fov_degrees: float | torch.Tensor = FOV_DEGREES, cx: float | torch.Tensor = 0.5,
               cy: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Normalised intrinsics K (3, 3), principal point (cx, cy) in units of the image size.

    Scalars or 1-element tensors; as in the official code a float32 ``fov_degrees`` tensor rounds
    fov * 3.14159 / 360 to float32 before the float64 tangent.
    """
    focal = 1.0 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414)
    return torch.tensor([[focal, 0.0, float(cx)], [0.0, focal, float(cy)], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def look_at_cam2world(yaw: torch.Tensor, pitch: torch.Tensor, radius: float = RADIUS,
                      pivot: tuple[float, float, float] = PIVOT) -> torch.Tensor:
    """cam2world (N, 4, 4) for cameras on a sphere around the origin looking at ``pivot``.

    yaw, pitch: (N,) radians; pitch is clamped to (1e-5, pi - 1e-5).
    """
    yaw = yaw.reshape(-1, 1).float()
    pitch = torch.clamp(pitch.reshape(-1, 1).float(), 1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * (pitch / math.pi))
    origin = torch.cat([radius * torch.sin(phi) * torch.cos(math.pi - yaw),
                        radius * torch.cos(phi),
                        radius * torch.sin(phi) * torch.sin(math.pi - yaw)], dim=1)
    forward = _normalize(_normalize(torch.tensor(pivot, dtype=torch.float32) - origin))
    up = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    up = _normalize(torch.cross(forward, right, dim=-1))
    n = origin.shape[0]
    rotation = torch.eye(4).repeat(n, 1, 1)
    rotation[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    translation = torch.eye(4).repeat(n, 1, 1)
    translation[:, :3, 3] = origin
    return translation @ rotation


def camera(yaw: float | torch.Tensor, pitch: float | torch.Tensor, fov_degrees: float | torch.Tensor = FOV_DEGREES,
           cx: float | torch.Tensor = 0.5, cy: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Camera vectors (N, 25) for yaw/pitch angles (scalars or (N,) tensors, radians) sharing one field of
    view (degrees) and principal point (see :func:`intrinsics`); the official ``eural_to_camera``."""
    yaw_t = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
    pitch_t = torch.as_tensor(pitch, dtype=torch.float32).reshape(-1)
    yaw_t, pitch_t = torch.broadcast_tensors(yaw_t, pitch_t)
    cam2world = look_at_cam2world(yaw_t, pitch_t)
    k = intrinsics(fov_degrees, cx, cy).reshape(1, 9).expand(cam2world.shape[0], 9)
    return torch.cat([cam2world.reshape(-1, 16), k], dim=1)


def frontal_camera() -> torch.Tensor:
    """The frontal camera (1, 25): at (0, 0, 2.7) looking at the pivot."""
    return camera(*FRONTAL)


def three_views(spread: float = math.pi / 6) -> list[tuple[float, float]]:
    """(yaw, pitch) of the official 3-view strip: yaw pi/2 - spread, pi/2, pi/2 + spread at pitch pi/2."""
    return [(math.pi / 2 + d, math.pi / 2) for d in (-spread, 0.0, spread)]


def orbit_path(num_frames: int = 288) -> list[tuple[float, float]]:
    """(yaw, pitch) per frame of the official orbit video (EG3D/3DPE ``gen_videos``):
    yaw = 3.14/2 + 0.35 sin(2*3.14 t), pitch = 3.14/2 - 0.05 + 0.25 cos(2*3.14 t), t = i / num_frames."""
    if num_frames < 1:
        raise ValueError("an orbit needs at least one frame")
    path = []
    for i in range(num_frames):
        t = i / num_frames
        path.append((3.14 / 2 + 0.35 * math.sin(2 * 3.14 * t), 3.14 / 2 - 0.05 + 0.25 * math.cos(2 * 3.14 * t)))
    return path
