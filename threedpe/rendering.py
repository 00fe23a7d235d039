"""Tri-plane volume rendering and super-resolution (EG3D's renderer, inference path).

planes (B, 96, P, P) = 3 planes x 32 features -> rays from a camera -> 48 stratified + 48 importance
samples per ray -> features averaged over the planes -> OSG decoder (density + 32 features) -> MipNeRF
compositing -> feature image (B, 32, R, R) at the neural rendering resolution (128) whose first three
channels are the raw RGB image, plus depth -> super-resolution to a (B, 3, 512, 512) image in about
[-1, 1]. Cameras follow :mod:`threedpe.cameras`.

``deterministic=True`` removes the renderer's randomness exactly as the golden fixtures define it:
coarse depths without jitter and importance samples at ``u = linspace(0, 1, n)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from threedpe.stylegan2 import FullyConnectedLayer, SynthesisBlock


@dataclass(frozen=True)
class RenderingConfig:
    """Ray marching settings (EG3D's ``rendering_kwargs`` that inference uses)."""

    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    neural_rendering_resolution: int = 128
    sr_antialias: bool = True

    @classmethod
    def from_official(cls, rendering_kwargs: dict, neural_rendering_resolution: int) -> RenderingConfig:
        """From an official ``rendering_kwargs`` dict; unsupported options raise instead of being ignored."""
        unsupported = {"disparity_space_sampling": False, "clamp_mode": "softplus", "white_back": False}
        for key, supported in unsupported.items():
            if rendering_kwargs.get(key, supported) != supported:
                raise ValueError(f"rendering option {key}={rendering_kwargs[key]!r} is not supported "
                                 f"(only {supported!r})")
        if rendering_kwargs.get("ray_start") == "auto":
            raise ValueError("automatic ray ranges (ray_start='auto') are not supported")
        return cls(depth_resolution=int(rendering_kwargs["depth_resolution"]),
                   depth_resolution_importance=int(rendering_kwargs["depth_resolution_importance"]),
                   ray_start=float(rendering_kwargs["ray_start"]), ray_end=float(rendering_kwargs["ray_end"]),
                   box_warp=float(rendering_kwargs["box_warp"]),
                   neural_rendering_resolution=int(neural_rendering_resolution),
                   sr_antialias=bool(rendering_kwargs.get("sr_antialias", True)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sample_rays(cams: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions (B, R*R, 3) through pixel centres, row-major over the image."""
    cam2world = cams[:, :16].reshape(-1, 4, 4)
    k = cams[:, 16:25].reshape(-1, 3, 3)
    n, m = cams.shape[0], resolution * resolution
    fx, fy, cx, cy, sk = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None])
    idx = torch.arange(resolution, dtype=torch.float32, device=cams.device)
    uv = torch.stack(torch.meshgrid(idx, idx, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0).unsqueeze(0).repeat(n, 1, 1)
    x_cam, y_cam = uv[:, :, 0], uv[:, :, 1]
    z_cam = torch.ones((n, m), device=cams.device)
    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world = torch.bmm(cam2world, points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    origin = cam2world[:, :3, 3]
    directions = F.normalize(world - origin[:, None, :], dim=2)
    return origin.unsqueeze(1).repeat(1, m, 1), directions


def sample_from_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features of points (B, M, 3) on planes (B, 3, C, P, P) -> (B, 3, M, C).

    EG3D's plane axes: plane 0 is indexed by (x, y), plane 1 by (x, z), plane 2 by (z, x); the cube
    [-box_warp/2, box_warp/2]^3 maps onto [-1, 1] grid coordinates, zeros outside.
    """
    b, n_planes, c, h, w = planes.shape
    p = (2 / box_warp) * points
    grid = torch.stack([p[..., [0, 1]], p[..., [0, 2]], p[..., [2, 0]]], dim=1)  # (B, 3, M, 2)
    grid = grid.reshape(b * n_planes, 1, -1, 2)
    out = F.grid_sample(planes.reshape(b * n_planes, c, h, w), grid.float(), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.permute(0, 3, 2, 1).reshape(b, n_planes, -1, c)


class OSGDecoder(nn.Module):
    """Tri-plane features (B, 3, M, 32) -> density sigma (B, M, 1) and features rgb (B, M, 32) in (-0.001, 1.001)."""

    def __init__(self, n_features: int = 32, hidden: int = 64, out_features: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(FullyConnectedLayer(n_features, hidden, lr_multiplier=lr_multiplier),
                                 nn.Softplus(),
                                 FullyConnectedLayer(hidden, 1 + out_features, lr_multiplier=lr_multiplier))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.mean(1)
        b, m, c = x.shape
        x = self.net(x.reshape(b * m, c)).reshape(b, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001
        return x[..., 0:1], rgb


def composite(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MipNeRF-style compositing at interval midpoints (density softplus(sigma - 1)).

    colors (B, M, S, C), densities and depths (B, M, S, 1) -> rgb (B, M, C) mapped to 2*x-1,
    depth (B, M, 1) clamped to the sampled range, weights (B, M, S-1, 1).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]
    rgb = torch.sum(weights * colors_mid, -2)
    depth = torch.sum(weights * depths_mid, -2) / weights.sum(2)
    depth = torch.clamp(torch.nan_to_num(depth, float("inf")), torch.min(depths), torch.max(depths))
    return rgb * 2 - 1, depth, weights


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool, eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF samples (N, n) from piecewise-constant weights (N, K) over bin edges (N, K+2)."""
    weights = weights + eps
    cdf = torch.cumsum(weights / torch.sum(weights, -1, keepdim=True), -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    rays = weights.shape[0]
    if deterministic:
        u = torch.linspace(0, 1, n, device=bins.device).expand(rays, n).contiguous()
    else:
        u = torch.rand(rays, n, device=bins.device)
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, weights.shape[1])
    pairs = torch.stack([below, above], -1).view(rays, 2 * n)
    cdf_g = torch.gather(cdf, 1, pairs).view(rays, n, 2)
    bins_g = torch.gather(bins, 1, pairs).view(rays, n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def render_rays(planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, directions: torch.Tensor,
                cfg: RenderingConfig, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance-sampled volume rendering of rays (B, M, 3).

    Returns features (B, M, 32) in about [-1, 1], depth (B, M, 1) and opacity (B, M, 1).
    """
    b, m, _ = origins.shape
    s = cfg.depth_resolution
    depths = torch.linspace(cfg.ray_start, cfg.ray_end, s, device=origins.device).reshape(1, 1, s, 1).repeat(b, m, 1, 1)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * ((cfg.ray_end - cfg.ray_start) / (s - 1))

    def query(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = (origins.unsqueeze(-2) + d * directions.unsqueeze(-2)).reshape(b, -1, 3)
        sigma, rgb = decoder(sample_from_planes(planes, points, cfg.box_warp))
        k = d.shape[2]
        return rgb.reshape(b, m, k, -1), sigma.reshape(b, m, k, 1)

    colors, densities = query(depths)
    n = cfg.depth_resolution_importance
    if n > 0:
        with torch.no_grad():  # sample positions carry no gradient (as EG3D's sample_importance)
            _, _, weights = composite(colors, densities, depths)
            w = weights.reshape(b * m, 1, -1)
            w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
            z = depths.reshape(b * m, s)
            fine = sample_pdf(0.5 * (z[:, :-1] + z[:, 1:]), w[:, 1:-1], n, deterministic).reshape(b, m, n, 1)
        colors_fine, densities_fine = query(fine)
        depths = torch.cat([depths, fine], dim=-2)
        colors = torch.cat([colors, colors_fine], dim=-2)
        densities = torch.cat([densities, densities_fine], dim=-2)
        _, order = torch.sort(depths, dim=-2)
        depths = torch.gather(depths, -2, order)
        colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
        densities = torch.gather(densities, -2, order)
    features, depth, weights = composite(colors, densities, depths)
    return features, depth, weights.sum(2)


class SuperresolutionHybrid8XDC(nn.Module):
    """EG3D's super-resolution: raw image + features at 128^2 -> image (B, 3, 512, 512).

    Two synthesis blocks (128 -> 256 -> 512; 4x the input resolution in general) modulated by the last w; ``conv_clamp`` is 256 when the
    official model builds these blocks for fp16 (EG3D's G) and None otherwise (3DPE's renderer).
    """

    def __init__(self, channels: int = 32, w_dim: int = 512, conv_clamp: float | None = None,
                 input_resolution: int = 128, antialias: bool = True, widths: tuple[int, int] = (256, 128)):
        super().__init__()
        self.input_resolution = input_resolution
        self.antialias = antialias
        self.block0 = SynthesisBlock(channels, widths[0], w_dim, resolution=2 * input_resolution, img_channels=3,
                                     conv_clamp=conv_clamp)
        self.block1 = SynthesisBlock(widths[0], widths[1], w_dim, resolution=4 * input_resolution, img_channels=3,
                                     conv_clamp=conv_clamp)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none") -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode)
        x, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode)
        return rgb


def render_planes(planes: torch.Tensor, cams: torch.Tensor, decoder: OSGDecoder,
                  superresolution: SuperresolutionHybrid8XDC, ws: torch.Tensor, cfg: RenderingConfig,
                  deterministic: bool = False) -> dict[str, torch.Tensor]:
    """Render tri-planes (B, 96, P, P) from cameras (B, 25).

    Returns ``image`` (B, 3, 512, 512), ``image_raw`` (B, 3, R, R), ``image_depth`` (B, 1, R, R),
    ``feature_image`` (B, 32, R, R) and ``weight_total`` (B, 1, R, R), R = neural rendering resolution.
    """
    res = cfg.neural_rendering_resolution
    b = planes.shape[0]
    origins, directions = sample_rays(cams, res)
    planes = planes.reshape(b, 3, -1, planes.shape[-2], planes.shape[-1])
    features, depth, opacity = render_rays(planes, decoder, origins, directions, cfg, deterministic)
    feature_image = features.permute(0, 2, 1).reshape(b, features.shape[-1], res, res).contiguous()
    depth_image = depth.permute(0, 2, 1).reshape(b, 1, res, res)
    rgb = feature_image[:, :3]
    image = superresolution(rgb, feature_image, ws, noise_mode="none")
    return {"image": image, "image_raw": rgb, "image_depth": depth_image, "feature_image": feature_image,
            "weight_total": opacity.permute(0, 2, 1).reshape(b, 1, res, res)}


class TriplaneRenderer(nn.Module):
    """3DPE's renderer: tri-planes -> images, the super-resolution driven by a learned constant style.

    State-dict keys: ``const`` (1, 1, 512), ``decoder.net.*``, ``superresolution.*`` (as in 3dpe.pt).
    """

    def __init__(self, cfg: RenderingConfig | None = None, w_dim: int = 512, sr_widths: tuple[int, int] = (256, 128)):
        super().__init__()
        self.cfg = cfg or RenderingConfig()
        self.const = nn.Parameter(torch.randn(1, 1, w_dim))
        self.decoder = OSGDecoder()
        self.superresolution = SuperresolutionHybrid8XDC(32, w_dim, conv_clamp=None,
                                                         input_resolution=self.cfg.neural_rendering_resolution,
                                                         antialias=self.cfg.sr_antialias, widths=sr_widths)

    def forward(self, planes: torch.Tensor, cams: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        ws = self.const.expand(planes.shape[0], -1, -1)
        return render_planes(planes, cams, self.decoder, self.superresolution, ws, self.cfg, deterministic)
