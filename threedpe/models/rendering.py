"""Tri-plane volume rendering and super-resolution (EG3D's renderer, inference path).

planes (B, 96, P, P) = 3 planes x 32 features -> rays from a camera -> 48 stratified + 48 importance
samples per ray -> features averaged over the planes -> OSG decoder (density + 32 features) -> MipNeRF
compositing -> feature image (B, 32, R, R) at the neural rendering resolution (128) whose first three
channels are the raw RGB image, plus depth -> super-resolution to a (B, 3, 512, 512) image in about
[-1, 1]. Cameras follow :mod:`threedpe.cameras`.

Rendering is deterministic by default (``deterministic=True`` everywhere), exactly as the golden fixtures
define it: coarse depths without jitter and importance samples at ``u = linspace(0, 1, n)``;
``deterministic=False`` gives EG3D's stochastic sampling.

Two implementations compute the same images:

* the **reference** path (:func:`render_rays`, :class:`SuperresolutionHybrid8XDC`), written like the official
  code; autograd (training) always takes it;
* the **fast** inference path, taken without autograd (``torch.no_grad``/``torch.inference_mode``) while
  ``InferenceOptions.fast`` is on (the default): :func:`render_rays_fused` reads the three planes with one
  embedding-bag lookup and composites colours through per-sample coefficients, and 3DPE's super-resolution,
  whose style is a learned constant, runs folded (:class:`FoldedSuperresolution`: plain channels-last
  convolutions, rebuilt whenever the renderer's weights change). It equals the reference path up to float
  rounding (within the golden tolerance).

``preview=True`` renders a cheap draft for interaction: see :data:`PREVIEW_RESOLUTION`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from threedpe.models.stylegan2 import FoldedSynthesisBlock, FullyConnectedLayer, SynthesisBlock
from threedpe.precision import check_precision, reduced_dtype

# Preview quality: neural rendering at 64^2 with 24 coarse + 24 importance samples per ray (1/8 of the decoder
# work), super-resolution run at that resolution (4x, 256^2, without first resizing its input to the trained
# 128^2: a quarter of the convolution work), the image then bilinearly resized to the full output size.
PREVIEW_RESOLUTION = 64
PREVIEW_SAMPLES = 24
RGB_SCALE = 1 + 2 * 0.001  # the decoder's colour range (-0.001, 1.001): sigmoid * RGB_SCALE - RGB_OFFSET
RGB_OFFSET = 0.001


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

    def preview(self) -> RenderingConfig:
        """These settings at preview quality (:data:`PREVIEW_RESOLUTION`, :data:`PREVIEW_SAMPLES`); never finer."""
        return dataclasses.replace(
            self, neural_rendering_resolution=min(PREVIEW_RESOLUTION, self.neural_rendering_resolution),
            depth_resolution=min(PREVIEW_SAMPLES, self.depth_resolution),
            depth_resolution_importance=min(PREVIEW_SAMPLES, self.depth_resolution_importance))


@dataclass
class InferenceOptions:
    """How a model runs without autograd (training always takes the reference path).

    fast: the fused volume rendering, for 3DPE's renderer the folded channels-last super-resolution, and on CUDA a
    channels-last encoder, on the CPU channels-last token grids (equal to the reference up to float rounding, within
    the golden tolerance).
    precision: ``"exact"`` (float32) or ``"fast"`` (bfloat16 for the encoder and the super-resolution convolutions
    where the device computes it natively, detected at run time; float32 elsewhere): see :mod:`threedpe.precision`.
    autocast: an explicit reduced dtype (``torch.bfloat16`` or ``torch.float16``) for the same layers on any device,
    overriding ``precision``; not golden-equal, opt-in.
    compile: ``torch.compile`` the encoder and the folded super-resolution (opt-in: minutes of compilation on the
    first call and after every weight change; not on ZeroGPU).
    """

    fast: bool = True
    precision: str = "exact"
    autocast: torch.dtype | None = None
    compile: bool = False

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, check_precision(value) if name == "precision" else value)

    def fast_now(self) -> bool:
        """Whether a call made now takes the fast path: ``fast`` and no autograd."""
        return self.fast and not torch.is_grad_enabled()

    def reduced_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype of the encoder and super-resolution convolutions on ``device`` (fast path): ``autocast`` when set,
        else bfloat16 for precision ``"fast"`` where native, else None (float32)."""
        return self.autocast if self.autocast is not None else reduced_dtype(self.precision, device)


def sample_rays(cams: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions (B, R*R, 3) through pixel centres, row-major over the image."""
    cam2world = cams[:, :16].reshape(-1, 4, 4)
    k = cams[:, 16:25].reshape(-1, 3, 3)
    n, m = cams.shape[0], resolution * resolution
    fx, fy, cx, cy, sk = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None])
    uv = pixel_centres(resolution, cams.device).repeat(n, 1, 1)
    x_cam, y_cam = uv[:, :, 0], uv[:, :, 1]
    z_cam = torch.ones((n, m), device=cams.device)
    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world = torch.bmm(cam2world, points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    origin = cam2world[:, :3, 3]
    directions = F.normalize(world - origin[:, None, :], dim=2)
    return origin.unsqueeze(1).repeat(1, m, 1), directions


@functools.lru_cache(maxsize=16)
def pixel_centres(resolution: int, device: torch.device) -> torch.Tensor:
    """Normalised pixel centres (1, R*R, 2) as (u, v) = (column + 0.5, row + 0.5) / R, row-major; constant per
    resolution, so cached (never modify the result)."""
    with torch.inference_mode(False):
        idx = torch.arange(resolution, dtype=torch.float32, device=device)
        uv = torch.stack(torch.meshgrid(idx, idx, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)
        return uv.flip(0).reshape(2, -1).transpose(1, 0).unsqueeze(0)


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


class PlaneField:
    """The OSG decoder's field over tri-planes, for inference (no autograd): points -> density and colour logits.

    Equal to ``decoder.net(sample_from_planes(planes, points, box_warp).mean(1))`` up to float rounding, with one
    lookup per point: the planes are zero padded and laid out channels-last as a table (Bp * 3 * (P+3)^2, C), and the
    sum of a point's bilinear features over the three planes is one ``embedding_bag`` of 3 planes x 4 corners = 12
    weighted table rows (``grid_sample``'s source index (g + 1) * P/2 - 0.5; corners in the zero padding weigh
    nothing, as ``padding_mode='zeros'``); the decoder's first layer, with the mean over the planes folded into its
    weight, follows as one matrix product.

    planes (Bp, 3 * C, P, P) or (Bp, 3, C, P, P); a point set b reads tri-plane b, or the only one when Bp = 1.
    """

    CORNERS = 4

    def __init__(self, planes: torch.Tensor, decoder: OSGDecoder, box_warp: float):
        bp, size = planes.shape[0], planes.shape[-1]
        planes = planes.reshape(bp, 3, -1, planes.shape[-2], size)
        if planes.shape[-2] != size:
            raise ValueError(f"expected square planes, got {tuple(planes.shape)}")
        self.table = F.pad(planes, (1, 2, 1, 2)).permute(0, 1, 3, 4, 2).reshape(-1, planes.shape[2])
        weight, self.bias = decoder.net[0].effective()
        self.first = weight.t() / 3
        self.output = decoder.net[2]
        self.batch, self.size, self.box_warp = bp, size, box_warp
        padded = size + 3
        self.offsets = torch.tensor([0, 1, padded, padded + 1], dtype=torch.int32, device=planes.device)
        self.plane_base = torch.arange(bp * 3, dtype=torch.int32, device=planes.device).reshape(bp, 1, 3) * padded ** 2
        # (column, row) coordinates of the planes as in sample_from_planes: (x, y), (x, z), (z, x)
        self.axes = torch.tensor([0, 1, 0, 2, 2, 0], device=planes.device)

    def hidden(self, points: torch.Tensor) -> torch.Tensor:
        """Points (B, M, 3) -> the decoder's hidden layer after its softplus (B*M, hidden)."""
        b, m, _ = points.shape
        if self.batch not in (1, b):
            raise ValueError(f"{self.batch} tri-planes for {b} point sets")
        coords = points.index_select(-1, self.axes)
        source = (((2 / self.box_warp) * coords + 1) * (self.size / 2) - 0.5).clamp_(-1, self.size)
        low = source.floor()
        high = source - low  # weight of the higher corner per axis
        low = low.to(torch.int32) + 1  # index into the padded planes
        index = self.plane_base + low[..., 1::2] * (self.size + 3) + low[..., 0::2]  # (B, M, 3): north-west corners
        index = (index.unsqueeze(-1) + self.offsets).reshape(b * m, -1)
        col, row = high[..., 0::2], high[..., 1::2]
        col_low, row_low = 1 - col, 1 - row
        weights = torch.stack([row_low * col_low, row_low * col, row * col_low, row * col], -1).reshape(b * m, -1)
        features = F.embedding_bag(index, self.table, per_sample_weights=weights, mode="sum")
        return F.softplus(torch.addmm(self.bias, features, self.first))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Points (B, M, 3) -> decoder outputs (B*M, 1 + C): raw density sigma, then the colour logits."""
        return self.output(self.hidden(points))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Points (B, M, 3) -> raw density sigma (B*M,) alone (the colour outputs are never computed)."""
        weight, bias = self.output.effective()
        return torch.addmv(bias[0], self.hidden(points), weight[0])


def decoder_colours(logits: torch.Tensor) -> torch.Tensor:
    """The decoder's colour features from their logits: sigmoid mapped to (-0.001, 1.001)."""
    return torch.sigmoid(logits) * RGB_SCALE - RGB_OFFSET


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
        return x[..., 0:1], decoder_colours(x[..., 1:])


def interval_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """MipNeRF compositing weights at interval midpoints (density softplus(sigma - 1)).

    densities (raw sigma) and depths (..., S, 1) -> weights (..., S-1, 1).
    """
    deltas = depths[..., 1:, :] - depths[..., :-1, :]
    densities_mid = F.softplus((densities[..., :-1, :] + densities[..., 1:, :]) / 2 - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[..., :1, :]), 1 - alpha + 1e-10], -2)
    return alpha * torch.cumprod(shifted, -2)[..., :-1, :]


def expected_depth(weights: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the interval midpoints, unclamped (NaN for a ray without weight): weights (..., S-1, 1),
    depths (..., S, 1) -> (..., 1). See :func:`clamp_depth`."""
    depths_mid = (depths[..., :-1, :] + depths[..., 1:, :]) / 2
    return torch.sum(weights * depths_mid, -2) / weights.sum(-2)


def clamp_depth(depth: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """EG3D's depth clean-up: NaN (no weight) becomes the far end, everything is clamped to [low, high], the range of
    all sampled depths of the call."""
    return torch.clamp(torch.nan_to_num(depth, float("inf")), low, high)


def composite(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MipNeRF-style compositing at interval midpoints (density softplus(sigma - 1)).

    colors (B, M, S, C), densities and depths (B, M, S, 1) -> rgb (B, M, C) mapped to 2*x-1,
    depth (B, M, 1) clamped to the sampled range, weights (B, M, S-1, 1).
    """
    weights = interval_weights(densities, depths)
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    rgb = torch.sum(weights * colors_mid, -2)
    depth = clamp_depth(expected_depth(weights, depths), torch.min(depths), torch.max(depths))
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


def importance_depths(weights: torch.Tensor, depths: torch.Tensor, n: int, deterministic: bool) -> torch.Tensor:
    """EG3D's importance sampling: coarse weights (N, S-1) and depths (N, S) -> n new depths (N, n) per ray.

    The weights are max-pooled, then averaged (kernel 2) and raised by 0.01; bins are the coarse midpoints.
    """
    w = F.avg_pool1d(F.max_pool1d(weights.unsqueeze(1), 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    return sample_pdf(0.5 * (depths[:, :-1] + depths[:, 1:]), w[:, 1:-1], n, deterministic)


def coarse_depths(cfg: RenderingConfig, rays: int, deterministic: bool, device: torch.device) -> torch.Tensor:
    """The stratified depths (rays, S): ``linspace(ray_start, ray_end, S)``, jittered by U[0, 1) of a step unless
    deterministic."""
    s = cfg.depth_resolution
    depths = torch.linspace(cfg.ray_start, cfg.ray_end, s, device=device).expand(rays, s)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * ((cfg.ray_end - cfg.ray_start) / (s - 1))
    return depths


def render_rays(planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, directions: torch.Tensor,
                cfg: RenderingConfig, deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance-sampled volume rendering of rays (B, M, 3) through planes (B, 3, C, P, P) (reference path).

    Returns features (B, M, 32) in about [-1, 1], depth (B, M, 1) and opacity (B, M, 1).
    """
    b, m, _ = origins.shape
    s = cfg.depth_resolution
    depths = coarse_depths(cfg, b * m, deterministic, origins.device).reshape(b, m, s, 1)

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
            fine = importance_depths(weights.reshape(b * m, -1), depths.reshape(b * m, s), n,
                                     deterministic).reshape(b, m, n, 1)
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


RAYS_PER_CHUNK = 1024  # fused rendering: 5 * 10^4 samples per decoder pass, intermediates of a few MB (fastest measured)


def render_rays_fused(planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, directions: torch.Tensor,
                      cfg: RenderingConfig, deterministic: bool = True, chunk: int = RAYS_PER_CHUNK,
                      field: PlaneField | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`render_rays` for inference (no autograd), equal up to float rounding, with less memory traffic.

    planes (Bp, 3, C, P, P) with Bp = B, or 1 shared by all B ray sets (one decoder pass for several views). The
    decoder runs as a :class:`PlaneField`, rays go ``chunk`` at a time (intermediates stay small and are reused), and
    colours are never sorted or concatenated: they enter the composite linearly, sum_k w_k (c_k + c_k+1) / 2 =
    sum_j c_j (w_j-1 + w_j) / 2, so each sample's coefficient is computed in depth order from densities alone and
    scattered back to its decoder pass, and the colour map (sigmoid * RGB_SCALE - RGB_OFFSET) is applied once per ray.
    ``field``: the :class:`PlaneField` of ``planes`` and ``decoder``, when the caller keeps one for many calls (the
    frames of a video of one tri-plane); built here otherwise.
    """
    b, m, _ = origins.shape
    depths = coarse_depths(cfg, b * m, deterministic, origins.device)
    if planes.shape[0] == 1:  # one tri-plane for every ray set: the rays of all views in one pass
        origins, directions = origins.reshape(1, -1, 3), directions.reshape(1, -1, 3)
    depths = depths.reshape(*origins.shape[:2], -1)
    field = field or PlaneField(planes, decoder, cfg.box_warp)
    parts = [_render_chunk(field, origins[:, i:i + chunk], directions[:, i:i + chunk], depths[:, i:i + chunk], cfg,
                           deterministic) for i in range(0, origins.shape[1], chunk)]
    features, depth, opacity, depth_range = (torch.cat(part, dim=1) for part in zip(*parts))
    depth = clamp_depth(depth, depth_range.min(), depth_range.max())
    return features.reshape(b, m, -1), depth.reshape(b, m, 1), opacity.reshape(b, m, 1)


def _render_chunk(field: PlaneField, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor,
                  cfg: RenderingConfig, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of :func:`render_rays_fused`: rays (B, m, 3) with coarse depths (B, m, S) -> features (B, m, C),
    unclamped depth (B, m, 1), opacity (B, m, 1) and the (min, max) of the chunk's depths (1, 2)."""
    b, m, s = depths.shape
    rays = b * m

    def query(d: torch.Tensor) -> torch.Tensor:
        """Depths (rays, k) -> decoder outputs (k, rays, 1 + C): raw sigma, then sigmoid of the colour logits. The
        points go depth by depth (neighbouring rays read neighbouring texels: ~2x faster lookups than ray by ray)."""
        k = d.shape[1]
        along = d.reshape(b, m, k).transpose(1, 2).unsqueeze(-1)  # (B, k, m, 1)
        points = (origins.unsqueeze(1) + along * directions.unsqueeze(1)).reshape(b, -1, 3)
        out = field(points).reshape(b, k, m, -1).transpose(0, 1).reshape(k, rays, -1)
        out[..., 1:].sigmoid_()
        return out

    depths = depths.reshape(rays, s)
    passes = [query(depths)]
    n = cfg.depth_resolution_importance
    if n > 0:
        weights = interval_weights(passes[0][..., 0].t().unsqueeze(-1), depths.unsqueeze(-1)).squeeze(-1)
        fine = importance_depths(weights, depths, n, deterministic)
        passes.append(query(fine))
        depths = torch.cat([depths, fine], dim=-1)
    depths, order = torch.sort(depths, dim=-1)
    densities = torch.cat([out[..., 0] for out in passes]).t().gather(-1, order)
    weights = interval_weights(densities.unsqueeze(-1), depths.unsqueeze(-1))
    depth = expected_depth(weights, depths.unsqueeze(-1))
    weights = weights.squeeze(-1)
    opacity = weights.sum(-1, keepdim=True)
    coefficients = F.pad(weights, (1, 0)) + F.pad(weights, (0, 1))  # (w_j-1 + w_j) in depth order
    coefficients = torch.empty_like(coefficients).scatter_(-1, order, coefficients)
    start, colours = 0, 0
    for out in passes:
        k = out.shape[0]
        colours = colours + torch.bmm(coefficients[:, None, start:start + k], out.transpose(0, 1)).squeeze(1)[:, 1:]
        start += k
    features = (colours * (RGB_SCALE / 2) - RGB_OFFSET * opacity) * 2 - 1
    depth_range = torch.stack([depths[:, 0].min(), depths[:, -1].max()]).reshape(1, 2)
    return features.reshape(b, m, -1), depth.reshape(b, m, 1), opacity.reshape(b, m, 1), depth_range


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

    def resize_input(self, rgb: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinearly resize (``antialias`` as configured) raw image and features to the input resolution, as EG3D."""
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        return rgb, x

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none",
                resize_input: bool = True) -> torch.Tensor:
        """rgb (B, 3, r, r), x (B, C, r, r), ws (B, num_ws, w_dim) -> image (B, 3, 4R, 4R) with R = the input resolution
        (the inputs are resized to it first), or 4r with ``resize_input=False`` (previews)."""
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        if resize_input:
            rgb, x = self.resize_input(rgb, x)
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode)
        x, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode)
        return rgb


class FoldedSuperresolution:
    """A :class:`SuperresolutionHybrid8XDC` driven by one fixed w, for inference: two :class:`FoldedSynthesisBlock`
    running channels-last. ``folded(rgb, x)`` equals ``superresolution(rgb, x, w.expand(B, -1, -1))`` (noise off) up
    to float rounding. Plain tensors: rebuild it when the weights or w change (:meth:`TriplaneRenderer.folded_superresolution`).
    """

    def __init__(self, superresolution: SuperresolutionHybrid8XDC, w: torch.Tensor):
        """w (1, N, w_dim): as in ``forward``, the last of the N is used."""
        ws = w[:, -1:, :].repeat(1, 3, 1)
        self.resize_input = superresolution.resize_input
        self.blocks = {torch.float32: (FoldedSynthesisBlock(superresolution.block0, ws),
                                       FoldedSynthesisBlock(superresolution.block1, ws))}

    def __call__(self, rgb: torch.Tensor, x: torch.Tensor, resize_input: bool = True,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """As :meth:`SuperresolutionHybrid8XDC.forward` (without ws), the blocks computed in ``dtype`` (their weights
        cast once per dtype); returns float32."""
        if resize_input:
            rgb, x = self.resize_input(rgb, x)
        if dtype not in self.blocks:
            self.blocks[dtype] = tuple(block.to(dtype) for block in self.blocks[torch.float32])
        x, rgb = (t.to(dtype, memory_format=torch.channels_last) for t in (x, rgb))
        for block in self.blocks[dtype]:
            x, rgb = block(x, rgb)
        return rgb.float().contiguous()


Superresolve = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (raw rgb, feature image) -> image


def render_planes(planes: torch.Tensor, cams: torch.Tensor, decoder: OSGDecoder, superresolve: Superresolve,
                  cfg: RenderingConfig, deterministic: bool = True, fused: bool = False,
                  field: PlaneField | None = None) -> dict[str, torch.Tensor]:
    """Render tri-planes (B, 96, P, P), or (1, 96, P, P) shared by all views, from cameras (B, 25).

    ``superresolve(image_raw, feature_image)`` makes the image; ``fused`` takes :func:`render_rays_fused` (no
    autograd) instead of :func:`render_rays`, with ``field`` (see there) when given. Returns ``image`` (B, 3, 4R, 4R) for the standard super-resolution,
    ``image_raw`` (B, 3, R, R), ``image_depth`` (B, 1, R, R), ``feature_image`` (B, 32, R, R) and ``weight_total``
    (B, 1, R, R), R = neural rendering resolution.
    """
    res = cfg.neural_rendering_resolution
    b = cams.shape[0]
    if planes.shape[0] not in (1, b):
        raise ValueError(f"{planes.shape[0]} tri-planes for {b} cameras (give one per camera, or one for all)")
    origins, directions = sample_rays(cams, res)
    planes = planes.reshape(planes.shape[0], 3, -1, planes.shape[-2], planes.shape[-1])
    if fused:
        features, depth, opacity = render_rays_fused(planes, decoder, origins, directions, cfg, deterministic,
                                                     field=field)
    else:
        planes = planes.expand(b, -1, -1, -1, -1)
        features, depth, opacity = render_rays(planes, decoder, origins, directions, cfg, deterministic)
    feature_image = features.permute(0, 2, 1).reshape(b, features.shape[-1], res, res).contiguous()
    depth_image = depth.permute(0, 2, 1).reshape(b, 1, res, res)
    rgb = feature_image[:, :3]
    image = superresolve(rgb, feature_image)
    return {"image": image, "image_raw": rgb, "image_depth": depth_image, "feature_image": feature_image,
            "weight_total": opacity.permute(0, 2, 1).reshape(b, 1, res, res)}


def tensor_versions(tensors: Iterable[torch.Tensor]) -> tuple:
    """What identifies tensors' current values: storage address, in-place version counter, device, dtype, shape.
    It changes when a tensor is modified in place (``load_state_dict``, an optimiser step) or replaced (``.to``)."""
    return tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in tensors)


class TriplaneRenderer(nn.Module):
    """3DPE's renderer: tri-planes -> images, the super-resolution driven by a learned constant style.

    State-dict keys: ``const`` (1, 1, 512), ``decoder.net.*``, ``superresolution.*`` (as in 3dpe.pt). ``inference``
    (:class:`InferenceOptions`) says how it runs without autograd.
    """

    def __init__(self, cfg: RenderingConfig | None = None, w_dim: int = 512, sr_widths: tuple[int, int] = (256, 128)):
        super().__init__()
        self.cfg = cfg or RenderingConfig()
        self.const = nn.Parameter(torch.randn(1, 1, w_dim))
        self.decoder = OSGDecoder()
        self.superresolution = SuperresolutionHybrid8XDC(32, w_dim, conv_clamp=None,
                                                         input_resolution=self.cfg.neural_rendering_resolution,
                                                         antialias=self.cfg.sr_antialias, widths=sr_widths)
        self.inference = InferenceOptions()
        self._folded: tuple[tuple, FoldedSuperresolution] | None = None

    def folded_superresolution(self) -> Callable[..., torch.Tensor]:
        """The super-resolution folded with ``const`` (compiled with ``inference.compile``); cached, and rebuilt whenever
        one of the renderer's super-resolution weights or ``const`` was modified in place or replaced (see
        :func:`tensor_versions`) or ``inference.compile`` changed."""
        sr = self.superresolution
        key = (tensor_versions([*sr.parameters(), *sr.buffers(), self.const]), self.inference.compile)
        if self._folded is None or self._folded[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                folded = FoldedSuperresolution(sr, self.const)
            self._folded = (key, torch.compile(folded) if self.inference.compile else folded)
        return self._folded[1]

    def forward(self, planes: torch.Tensor, cams: torch.Tensor, deterministic: bool = True,
                preview: bool = False) -> dict[str, torch.Tensor]:
        """Tri-planes (B or 1, 96, P, P) seen from cameras (B, 25) -> the outputs of :func:`render_planes`.

        ``preview``: the draft quality of :data:`PREVIEW_RESOLUTION` (image still at the full output size; the other
        outputs at the preview resolution).
        """
        cfg = self.cfg.preview() if preview else self.cfg
        fast = self.inference.fast_now()
        if fast:
            folded = self.folded_superresolution()

            def superresolve(rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                dtype = self.inference.reduced_dtype(x.device) or torch.float32
                return folded(rgb, x, resize_input=not preview, dtype=dtype)
        else:
            ws = self.const.expand(cams.shape[0], -1, -1)

            def superresolve(rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return self.superresolution(rgb, x, ws, resize_input=not preview)

        out = render_planes(planes, cams, self.decoder, superresolve, cfg, deterministic, fused=fast)
        size = 4 * self.superresolution.input_resolution
        if out["image"].shape[-1] != size:  # a preview
            out["image"] = F.interpolate(out["image"], size=(size, size), mode="bilinear", align_corners=False)
        return out

    def describe(self) -> str:
        """The rendering path a call without autograd takes now, in words (precision aside)."""
        if not self.inference.fast:
            return "reference rendering"
        return "fused volume rendering, folded channels-last SR" + (" (compiled)" if self.inference.compile else "")
