"""Coloured meshes from tri-planes: density grid -> marching cubes -> vertex colours -> GLB / PLY / OBJ.

Coordinates are EG3D's world frame (y up, the face looks towards +z, the tri-plane box is
[-box_warp/2, box_warp/2]^3), which is also glTF's convention (y up, front towards +z), so meshes
need no rotation for viewers. Density grids are indexed ``grid[i, j, k]`` = sigma at
(x_i, y_j, z_k) with x_i = -box_warp/2 + i * box_warp / (res - 1) (axis 0 = x, 1 = y, 2 = z).

The official mesh (EG3D ``gen_samples`` / 3DPE inference) thresholds sigma at 10 on a 512^3 grid after
clearing a border of 30/256 of the grid on every side; the same border is cleared here, which also
closes the surface where the head meets the box.

By default the decoder runs as a :class:`~threedpe.models.rendering.PlaneField` (``fused=True``: one table lookup per point,
density alone for the grid), equal to the reference evaluation (``fused=False``) up to float rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage import measure
from tqdm import tqdm

from threedpe.cancel import CancelSignal, check
from threedpe.models.rendering import OSGDecoder, PlaneField, decoder_colours, sample_from_planes

BORDER = 30 / 256
MESH_FORMATS = (".glb", ".ply", ".obj")


def _as_planes(planes: torch.Tensor) -> torch.Tensor:
    """(1, 96, P, P) tri-planes -> (1, 3, 32, P, P) as the decoder samples them."""
    if planes.dim() != 4 or planes.shape[0] != 1 or planes.shape[1] % 3:
        raise ValueError(f"expected one tri-plane (1, 3*C, P, P), got shape {tuple(planes.shape)}")
    return planes.reshape(1, 3, -1, planes.shape[-2], planes.shape[-1])


def _grid_points(start: int, stop: int, resolution: int, box_warp: float, device: torch.device) -> torch.Tensor:
    """World points (stop - start, 3) of the flat grid indices [start, stop), z fastest (see module docstring)."""
    index = torch.arange(start, stop, device=device)
    ijk = torch.stack([index // (resolution * resolution), (index // resolution) % resolution, index % resolution], 1)
    return ijk.float() * (box_warp / (resolution - 1)) - box_warp / 2


def density_grid(planes: torch.Tensor, decoder: OSGDecoder, resolution: int = 256, box_warp: float = 1.0,
                 chunk: int = 2 ** 18, cancel: CancelSignal | None = None, fused: bool = True) -> np.ndarray:
    """Raw density sigma (res, res, res) float32 of tri-planes (1, 96, P, P) on the grid of the module docstring.

    The decoder runs on at most ``chunk`` points at a time, so memory beyond the result is bounded; ``cancel`` is
    checked before every chunk. ``fused``: see the module docstring.
    """
    if resolution < 2 or chunk < 1:
        raise ValueError(f"need resolution >= 2 and chunk >= 1, got {resolution} and {chunk}")
    planes = _as_planes(planes)
    grid = np.empty(resolution ** 3, dtype=np.float32)
    with torch.inference_mode():
        field = PlaneField(planes, decoder, box_warp) if fused else None
        for start in tqdm(range(0, grid.size, chunk), desc="density grid", unit="chunk"):
            check(cancel, f"the mesh after {start // chunk} of {-(-grid.size // chunk)} chunks")
            stop = min(start + chunk, grid.size)
            points = _grid_points(start, stop, resolution, box_warp, planes.device)[None]
            sigma = field.density(points) if field else decoder(sample_from_planes(planes, points, box_warp))[0]
            grid[start:stop] = sigma.reshape(-1).float().cpu().numpy()
    return grid.reshape(resolution, resolution, resolution)


def _vertex_colors(planes: torch.Tensor, decoder: OSGDecoder, points: np.ndarray, box_warp: float,
                   chunk: int, fused: bool) -> np.ndarray:
    """RGBA (N, 4) uint8 of world points (N, 3): the decoder's first three features, clamped to [0, 1], alpha 255.

    These are the colours of the raw (pre-super-resolution) rendering.
    """
    planes = _as_planes(planes)
    colors = np.full((len(points), 4), 255, dtype=np.uint8)
    with torch.inference_mode():
        field = PlaneField(planes, decoder, box_warp) if fused else None
        for start in range(0, len(points), chunk):
            batch = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=planes.device)[None]
            if field:
                rgb = decoder_colours(field(batch)[:, 1:4])
            else:
                rgb = decoder(sample_from_planes(planes, batch, box_warp))[1][0, :, :3]
            colors[start:start + batch.shape[1], :3] = (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return colors


def extract_mesh(planes: torch.Tensor, decoder: OSGDecoder, resolution: int = 256, level: float = 10.0,
                 box_warp: float = 1.0, chunk: int = 2 ** 18, border: float = BORDER,
                 cancel: CancelSignal | None = None, fused: bool = True) -> trimesh.Trimesh:
    """Vertex-coloured surface sigma = ``level`` of tri-planes (1, 96, P, P), in world coordinates.

    ``border``: fraction of the grid cleared on every side (``int(border * resolution)`` voxels, EG3D's
    30/256), which closes the surface at the box. Faces wind counter-clockwise seen from outside (normals
    point out of the dense region). ``fused``: see the module docstring. Raises ValueError when the density never
    crosses ``level``.
    """
    pad = int(border * resolution)
    if not 0 <= 2 * pad < resolution - 1:
        raise ValueError(f"border {border} leaves no grid inside it at resolution {resolution}")
    grid = density_grid(planes, decoder, resolution, box_warp, chunk, cancel, fused)
    inside = grid[pad:resolution - pad, pad:resolution - pad, pad:resolution - pad]
    low, high = float(inside.min()), float(inside.max())
    if pad:
        empty = min(low, level) - 1.0
        grid[:pad], grid[-pad:] = empty, empty
        grid[:, :pad], grid[:, -pad:] = empty, empty
        grid[:, :, :pad], grid[:, :, -pad:] = empty, empty
    if not grid.min() < level < grid.max():
        raise ValueError(f"no surface: the density ranges from {low:.4g} to {high:.4g} inside the border "
                         f"and never crosses level {level}")
    spacing = (box_warp / (resolution - 1),) * 3
    vertices, faces, _, _ = measure.marching_cubes(grid, level, spacing=spacing, allow_degenerate=False)
    # For a field that is high inside, skimage winds triangles clockwise seen from outside; trimesh, glTF
    # and PLY viewers take counter-clockwise as front-facing, so reverse the winding.
    faces = np.ascontiguousarray(faces[:, ::-1])
    vertices = vertices - box_warp / 2
    colors = _vertex_colors(planes, decoder, vertices, box_warp, chunk, fused)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` with its vertex colours to ``path`` (.glb, .ply or .obj, by suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    mesh.export(path)
    return path
