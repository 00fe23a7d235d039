"""3DPE's identity loss: ArcFace IR-SE50 embeddings of a face crop (InsightFace_Pytorch layout, ``model_ir_se50.pth``).

The official weight λ_id is 0, so the network is only built when that file is present and the weight is
positive (see :func:`threedpe.training.objective.build_objective`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from threedpe.weights import IDENTITY_FILE
from threedpe.weights.checkpoints import load_into, read_state_dict



class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean over H, W))))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class BottleneckIRSE(nn.Module):
    """BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE, plus a subsampled or projected shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer = (nn.MaxPool2d(1, stride) if in_ch == out_ch else
                               nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), SqueezeExcite(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50: face crops (B, 3, 112, 112) in [-1, 1] -> unit-length embeddings (B, 512). Eval mode only."""

    STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, out, units); each stage starts at stride 2

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_ch, out_ch, count in self.STAGES:
            units += [BottleneckIRSE(in_ch, out_ch, 2)] + [BottleneckIRSE(out_ch, out_ch, 1) for _ in range(count - 1)]
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, True)


class IdentityLoss(nn.Module):
    """3DPE's ID term: mean over the batch of 1 - <ArcFace(image), ArcFace(target)> (target side detached).

    Images (B, 3, H, W) in about [-1, 1] are resized to 256^2 (bilinear), cropped to rows 35:223, columns
    32:220 and average-pooled to 112^2, as the official ``IDLoss``. Frozen, always in eval mode.
    """

    name = f"ArcFace IR-SE50 identity ({IDENTITY_FILE})"

    def __init__(self, facenet: IRSE50) -> None:
        super().__init__()
        self.facenet = facenet.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> IdentityLoss:
        """From ``model_ir_se50.pth``; files written before PyTorch 0.4.1 lack the (unused) BatchNorm counters,
        which are then set to 0."""
        facenet = IRSE50()
        state = read_state_dict(path)
        counters = {key: torch.tensor(0) for key in facenet.state_dict() if key.endswith(".num_batches_tracked")}
        load_into(facenet, {**counters, **state}, what=f"ArcFace IR-SE50 ({Path(path).name})")
        return cls(facenet)

    def train(self, mode: bool = True) -> IdentityLoss:
        return super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unit embeddings (B, 512) of the official face crop."""
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)[:, :, 35:223, 32:220]
        return self.facenet(F.adaptive_avg_pool2d(x, 112))

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - (self.embed(image) * self.embed(target).detach()).sum(1)).mean()
