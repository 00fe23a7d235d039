"""Perceptual distances for training: LPIPS v0.1 (AlexNet) as 3DPE's training uses it, or a declared substitute.

* :class:`LPIPS`: the LPIPS port of 3DPE's ``criteria/lpips`` (torchvision AlexNet ``features`` + the five
  v0.1 linear heads), read from ``alexnet-owt-4df8aa71.pth`` and ``alex_lin.pth``.
* :class:`PromptEncoderDistance`: when those files are absent, an LPIPS-like distance on the tokens of a
  frozen copy of the editor's own MAE prompt encoder (uniform layer weights, no learned heads). It is not
  LPIPS; :func:`load_perceptual` logs which one runs and every module says so in ``name``.

Both take images (B, 3, H, W) in about [-1, 1] and return a scalar: the per-image distance averaged over the
batch. Both are frozen and stay in eval mode.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from threedpe.models.encoder import IMAGENET_MEAN, IMAGENET_STD, MAEEncoder
from threedpe.weights import LPIPS_FILES, CheckpointError
from threedpe.weights.checkpoints import load_into, read_state_dict

LOG = logging.getLogger(__name__)


def unit_channels(x: torch.Tensor, dim: int = 1, eps: float = 1e-10) -> torch.Tensor:
    """x / (||x|| over ``dim`` + eps), LPIPS's feature normalisation."""
    return x / (torch.sqrt(torch.sum(x ** 2, dim=dim, keepdim=True)) + eps)


class _Frozen(nn.Module):
    """A loss network: no trainable parameters, always in eval mode."""

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)


class LPIPS(_Frozen):
    """LPIPS v0.1 with AlexNet: images (B, 3, H, W) in [-1, 1] -> distance (scalar, mean over the batch).

    Scaling layer, AlexNet conv features after each of its five ReLUs, unit-normalised over channels, squared
    difference, 1x1 linear head, spatial mean, summed over layers. Keys: ``features.{0,3,6,8,10}.*`` (as
    torchvision's AlexNet) and ``lin.{0..4}.weight`` (``lin{i}.model.1.weight`` in ``alex_lin.pth``).
    """

    name = "LPIPS v0.1 AlexNet (alexnet-owt-4df8aa71.pth + alex_lin.pth)"
    TAPS = (1, 4, 7, 9, 11)  # indices of the ReLUs in ``features`` whose outputs are compared
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        self.lin = nn.ModuleList(nn.Conv2d(channels, 1, 1, bias=False) for channels in (64, 192, 384, 256, 256))
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, alexnet_path: str | os.PathLike, lin_path: str | os.PathLike) -> LPIPS:
        """From torchvision's ``alexnet-owt-4df8aa71.pth`` (its ``classifier.*`` is unused) and LPIPS's ``alex_lin.pth``."""
        alexnet = {key: value for key, value in read_state_dict(alexnet_path).items() if not key.startswith("classifier.")}
        heads = {re.sub(r"^lin(\d+)\.model\.1\.weight$", r"lin.\1.weight", key): value
                 for key, value in read_state_dict(lin_path).items()}
        model = cls()
        load_into(model, {**alexnet, **heads}, what=f"LPIPS ({Path(alexnet_path).name} + {Path(lin_path).name})")
        return model

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(unit_channels(x))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_image = sum(head((a - b) ** 2).mean((2, 3)) for head, a, b in zip(self.lin, self._features(x), self._features(y)))
        return per_image.sum() / x.shape[0]


class PromptEncoderDistance(_Frozen):
    """Substitute for LPIPS: a frozen MAE prompt encoder's tokens at several depths, unit-normalised per token,
    squared difference summed over channels, averaged over tokens, summed over the tapped blocks.

    Images (B, 3, H, W) in [-1, 1] are resized (bilinear, antialiased) to the MAE input and ImageNet-normalised.
    """

    def __init__(self, mae: MAEEncoder, image_size: int, source: str) -> None:
        super().__init__()
        self.mae = mae
        self.image_size = image_size
        depth = len(mae.blocks)
        self.taps = sorted({max(0, depth * quarter // 4 - 1) for quarter in range(1, 5)})
        self.name = (f"substitute for LPIPS (its weight files are absent): MAE token distance at blocks "
                     f"{self.taps} of a frozen copy of {source}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_editor(cls, editor: nn.Module) -> PromptEncoderDistance:
        """From a frozen deep copy of ``editor.encoder.Ref_encoder.mae_encoder`` (take it before training starts)."""
        encoder = editor.encoder
        return cls(copy.deepcopy(encoder.Ref_encoder.mae_encoder), encoder.config.mae_image_size,
                   "the base editor's prompt encoder (Ref_encoder.mae_encoder)")

    def _tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate((x + 1) / 2, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=True)
        outputs = self.mae.block_outputs((x - self.mean) / self.std)
        return [unit_channels(outputs[index], dim=-1) for index in self.taps]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_image = sum(((a - b) ** 2).sum(-1).mean(-1) for a, b in zip(self._tokens(x), self._tokens(y)))
        return per_image.mean()


def load_perceptual(folder: str | os.PathLike, editor: nn.Module | None = None) -> LPIPS | PromptEncoderDistance:
    """LPIPS when both :data:`LPIPS_FILES` are in ``folder``; otherwise the :class:`PromptEncoderDistance` of
    ``editor`` (the base editor, before training). The choice is logged and given by the module's ``name``."""
    folder = Path(folder).expanduser()
    paths = [folder / name for name in LPIPS_FILES]
    if all(path.is_file() for path in paths):
        module = LPIPS.from_files(*paths)
        LOG.info("perceptual term: %s", module.name)
        return module
    if editor is None:
        raise CheckpointError(f"LPIPS needs {' and '.join(LPIPS_FILES)} in {folder.resolve()}; "
                              "without them pass the base editor for the substitute perceptual term")
    substitute = PromptEncoderDistance.from_editor(editor)
    LOG.warning("perceptual term: %s", substitute.name)
    return substitute
