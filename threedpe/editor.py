"""The 3DPE editing network: portrait + reference -> edited tri-planes -> images from any camera.

``EditorModel`` pairs the editing encoder (:mod:`threedpe.encoder`, weights ``encoder_state_dict``
of ``3dpe.pt``) with the tri-plane renderer (:mod:`threedpe.rendering`, ``renderer_state_dict``).
The released file is all that inference needs; the EG3D generator file is not used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from threedpe.checkpoints import ThreeDPECheckpoint, load_into
from threedpe.encoder import EncoderConfig, Live3DEditingEncoder
from threedpe.rendering import RenderingConfig, TriplaneRenderer


@dataclass(frozen=True)
class EditorConfig:
    """Architecture of the editor; the defaults are the released 3DPE model (official "LT" encoder,
    EG3D ffhqrebalanced512-128 rendering settings)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)
    w_dim: int = 512
    sr_widths: tuple[int, int] = (256, 128)
    untrained: bool = False

    def to_dict(self) -> dict:
        return {"encoder": self.encoder.to_dict(), "rendering": self.rendering.to_dict(), "w_dim": self.w_dim,
                "sr_widths": list(self.sr_widths), "untrained": self.untrained}

    @classmethod
    def from_dict(cls, data: dict) -> EditorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown editor config fields: {sorted(unknown)}")
        return cls(encoder=EncoderConfig.from_dict(data.get("encoder", {})),
                   rendering=RenderingConfig(**data.get("rendering", {})),
                   w_dim=int(data.get("w_dim", 512)), sr_widths=tuple(data.get("sr_widths", (256, 128))),
                   untrained=bool(data.get("untrained", False)))


class EditorModel(nn.Module):
    """``encode(x, ref)`` -> tri-planes (B, 96, S/2, S/2); ``render(planes, cams)`` -> images."""

    def __init__(self, config: EditorConfig | None = None):
        super().__init__()
        self.config = config or EditorConfig()
        self.encoder = Live3DEditingEncoder(self.config.encoder)
        self.renderer = TriplaneRenderer(self.config.rendering, w_dim=self.config.w_dim,
                                         sr_widths=self.config.sr_widths)

    @classmethod
    def from_checkpoint(cls, checkpoint: ThreeDPECheckpoint, config: EditorConfig | None = None) -> EditorModel:
        """Build and strictly load; ``config`` defaults to the one stored with the weights, else the released
        architecture."""
        if config is None and checkpoint.config:
            config = EditorConfig.from_dict(checkpoint.config)
        model = cls(config)
        load_into(model.encoder, checkpoint.encoder_state_dict, what="3DPE encoder (encoder_state_dict)")
        load_into(model.renderer, checkpoint.renderer_state_dict, what="3DPE renderer (renderer_state_dict)")
        return model.eval()

    def encode(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1], ref (B, 3, 224, 224) ImageNet-normalised -> tri-planes (B, 96, S/2, S/2)."""
        dtype = next(self.encoder.parameters()).dtype
        return self.encoder(x.to(dtype), ref.to(dtype)).float()

    def render(self, planes: torch.Tensor, cams: torch.Tensor, deterministic: bool = True) -> dict[str, torch.Tensor]:
        """Tri-planes (B, 96, P, P) and cameras (B, 25) -> ``image`` (B, 3, 4R, 4R) in about [-1, 1],
        ``image_raw`` (B, 3, R, R), ``image_depth`` (B, 1, R, R), ... (see :func:`threedpe.rendering.render_planes`)."""
        return self.renderer(planes.float(), cams.float(), deterministic=deterministic)
