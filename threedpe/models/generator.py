"""EG3D's tri-plane generator (``TriPlaneGenerator``), inference only.

z (B, z_dim) + camera c (B, 25) --mapping--> ws (B, num_ws, w_dim) --StyleGAN2 synthesis--> tri-planes
(B, 96, 256, 256) --volume rendering + super-resolution--> images (see :mod:`threedpe.models.rendering`).
State-dict keys are EG3D's (``backbone.*``, ``decoder.net.*``, ``superresolution.*``).
"""
from __future__ import annotations

import contextlib

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from threedpe import cameras
from threedpe.models.rendering import (InferenceOptions, OSGDecoder, PlaneField, RenderingConfig,
                                       SuperresolutionHybrid8XDC, render_planes)
from threedpe.models.stylegan2 import MappingNetwork, SynthesisNetwork
from threedpe.weights.checkpoints import EG3DCheckpoint, load_eg3d, load_into

SR_MODULE = "training.superresolution.SuperresolutionHybrid8XDC"
PLANE_RESOLUTION = 256  # EG3D's backbone always synthesises 3 planes x 32 channels at 256^2
PLANE_CHANNELS = 32


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator; defaults are EG3D ``ffhqrebalanced512-128``."""

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    channel_base: int = 32768
    channel_max: int = 512
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    sr_conv_clamp: float | None = 256.0
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    decoder_lr_multiplier: float = 1.0
    sr_widths: tuple[int, int] = (256, 128)  # EG3D's; the tiny weight set narrows them (see from_official)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)

    @classmethod
    def from_official(cls, init_kwargs: dict, rendering_kwargs: dict, neural_rendering_resolution: int
                      ) -> GeneratorConfig:
        """From EG3D's ``G_init_kwargs``, ``rendering_kwargs`` and neural rendering resolution. EG3D fixes the
        super-resolution's widths at (256, 128); ``sr_kwargs["widths"]``, threedpe's own key (absent from released
        files), narrows them for small random-weight generators (``python -m threedpe tiny-weights``)."""
        module = rendering_kwargs.get("superresolution_module", SR_MODULE)
        if module != SR_MODULE:
            raise ValueError(f"super-resolution module {module!r} is not supported (only {SR_MODULE})")
        if int(init_kwargs.get("img_resolution", 512)) != 4 * int(neural_rendering_resolution):
            raise ValueError("only generators whose image resolution is 4x the neural rendering resolution "
                             f"are supported (got {init_kwargs.get('img_resolution')} and {neural_rendering_resolution})")
        mapping = init_kwargs.get("mapping_kwargs", {}) or {}
        sr_widths = (init_kwargs.get("sr_kwargs", {}) or {}).get("widths", (256, 128))
        return cls(z_dim=int(init_kwargs["z_dim"]), w_dim=int(init_kwargs["w_dim"]), c_dim=int(init_kwargs["c_dim"]),
                   channel_base=int(init_kwargs.get("channel_base", 32768)),
                   channel_max=int(init_kwargs.get("channel_max", 512)),
                   mapping_layers=int(mapping.get("num_layers", 8)),
                   sr_conv_clamp=256.0 if int(init_kwargs.get("sr_num_fp16_res", 0)) > 0 else None,
                   c_scale=float(rendering_kwargs.get("c_scale", 1.0)),
                   c_gen_conditioning_zero=bool(rendering_kwargs.get("c_gen_conditioning_zero", False)),
                   decoder_lr_multiplier=float(rendering_kwargs.get("decoder_lr_mul", 1.0)),
                   sr_widths=(int(sr_widths[0]), int(sr_widths[1])),
                   rendering=RenderingConfig.from_official(rendering_kwargs, neural_rendering_resolution))


class StyleGAN2Backbone(nn.Module):
    """Mapping + synthesis producing the tri-planes (B, 96, 256, 256)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.synthesis = SynthesisNetwork(cfg.w_dim, PLANE_RESOLUTION, 3 * PLANE_CHANNELS,
                                          cfg.channel_base, cfg.channel_max)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, self.synthesis.num_ws,
                                      num_layers=cfg.mapping_layers, lr_multiplier=cfg.mapping_lr_multiplier)


class TriPlaneGenerator(nn.Module):
    """EG3D generator. ``forward(z, c)`` renders from the conditioning camera c; ``mapping``,
    ``synthesize_planes`` and ``render`` expose the stages."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg or GeneratorConfig()
        self.backbone = StyleGAN2Backbone(self.cfg)
        self.superresolution = SuperresolutionHybrid8XDC(
            PLANE_CHANNELS, self.cfg.w_dim, conv_clamp=self.cfg.sr_conv_clamp,
            input_resolution=self.cfg.rendering.neural_rendering_resolution,
            antialias=self.cfg.rendering.sr_antialias, widths=self.cfg.sr_widths)
        self.decoder = OSGDecoder(PLANE_CHANNELS, lr_multiplier=self.cfg.decoder_lr_multiplier)
        # without autograd, ``fast`` renders with the fused volume rendering, and ``precision`` applies
        self.inference = InferenceOptions()

    @classmethod
    def from_checkpoint(cls, checkpoint: EG3DCheckpoint) -> TriPlaneGenerator:
        """Build from the checkpoint's official settings and strictly load its weights (eval mode)."""
        cfg = GeneratorConfig.from_official(checkpoint.init_kwargs, checkpoint.rendering_kwargs,
                                            checkpoint.neural_rendering_resolution)
        generator = cls(cfg)
        load_into(generator, checkpoint.state_dict, what="EG3D generator")
        return generator.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> TriPlaneGenerator:
        """From NVIDIA's ``.pkl``, 3DPE's ``.pth`` or the project's converted ``.safetensors``."""
        return cls.from_checkpoint(load_eg3d(path))

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """z (B, z_dim), c (B, 25) -> ws (B, num_ws, w_dim). psi < 1 pulls ws towards the average w."""
        if self.cfg.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.cfg.c_scale, truncation_psi, truncation_cutoff)

    def sample(self, seed: int, truncation_psi: float = 0.7, conditioning: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity of ``seed``: tri-planes (1, 96, P, P) and ws, with the mapping conditioned on
        ``conditioning`` (1, 25) (default: the frontal camera)."""
        device = next(self.parameters()).device
        z = seed_latent(seed, self.cfg.z_dim).to(device)
        c = (cameras.frontal_camera() if conditioning is None else conditioning).to(device)
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesize_planes(ws), ws

    def synthesize_planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws -> tri-planes (B, 96, P, P) float32 (computed in :meth:`reduced_precision`)."""
        with self.reduced_precision(ws.device):
            return self.backbone.synthesis(ws, noise_mode=noise_mode).float()

    def reduced_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast region of the synthesis and the super-resolution: ``inference.reduced_dtype`` on the fast path
        (precision ``"fast"`` on hardware with native bfloat16, or an explicit ``inference.autocast``), else none (an
        enclosing autocast, if any, applies)."""
        dtype = self.inference.reduced_dtype(device) if self.inference.fast_now() else None
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def render(self, planes: torch.Tensor, ws: torch.Tensor, cams: torch.Tensor, deterministic: bool = True,
               field: PlaneField | None = None) -> dict[str, torch.Tensor]:
        """Tri-planes + ws + cameras (B, 25) -> dict of images (see :func:`threedpe.models.rendering.render_planes`).

        Deterministic unless asked otherwise; without autograd and with ``inference.fast`` the volume rendering is
        the fused one (the super-resolution depends on ws, so it is never folded here), reading ``field`` when a
        caller keeps the :class:`PlaneField` of one tri-plane (with this decoder) for many renders."""
        def superresolve(rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with self.reduced_precision(x.device):
                return self.superresolution(rgb, x, ws, noise_mode="none").float()

        return render_planes(planes, cams, self.decoder, superresolve, self.cfg.rendering, deterministic,
                             fused=self.inference.fast_now(), field=field)

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const",
                deterministic: bool = True) -> dict[str, torch.Tensor]:
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        planes = self.synthesize_planes(ws, noise_mode)
        out = self.render(planes, ws, c, deterministic)
        out["planes"] = planes
        out["ws"] = ws
        return out


def seed_latent(seed: int, z_dim: int) -> torch.Tensor:
    """The latent z (1, z_dim) of ``seed``: ``numpy.random.default_rng(seed)`` standard normal draws in float32."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((1, z_dim), dtype=np.float32))
