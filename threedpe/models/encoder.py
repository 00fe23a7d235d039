"""Live3D and 3DPE encoders: portrait (+ reference image for 3DPE) -> EG3D tri-planes.

Plain-PyTorch re-implementations of the official ``EG3DInvEncoder`` (Live3D, :class:`Live3DEncoder`) and
``Live3DEditingEncoder`` (3DPE, :class:`Live3DEditingEncoder`), both ``in_channels=5, mode='LT',
encoder_name='resnet34', encoder_depth=3, use_bn=False``, whose parameter names and shapes equal the
``encoder_state_dict`` of the released ``encoder_render_LT_*.pt`` and ``3dpe.pt``. Module graph for a
512x512 input:

* ``encoder`` / ``decoder``: DeepLabV3 trunk (ResNet-34 stem + layer1 + layer2, ASPP) with every
  BatchNorm removed and a bias added to every convolution -> 256 x 64 x 64.
* ``F_encoder`` (E_low): SegFormer patch embedding + 2 Mix-Transformer blocks -> 128 x 128 x 128.
* ``EHigh_encoder`` (E_high): plain conv stack on the 5-channel input -> 128 x 128 x 128.
* ``Ref_encoder`` (3DPE only; E_p + cross-attention): E_high tokens attend to MAE ViT-B/16 tokens of
  the reference image (single head, no projections) -> 128 x 128 x 128.
* ``Final_encoder`` (E_t): fuses (E_high or reference-branch features, E_low features) -> tri-planes
  96 x 256 x 256. Live3D feeds it E_high directly; 3DPE adds ``Ref_encoder`` in between.

The file also holds the official preprocessing of the input portrait and of the reference image.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderConfig:
    """Widths and depths of the editing encoder; the defaults are the official 3DPE 'LT' model."""

    image_size: int = 512  # input portrait side; tri-planes come out at image_size // 2
    resnet_widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # stem/layer1, layer2, layer3, layer4
    resnet_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)  # BasicBlocks per layer (ResNet-34)
    aspp_channels: int = 256
    aspp_rates: tuple[int, int, int] = (12, 24, 36)
    low_embed_dim: int = 1024  # E_low Mix-Transformer width
    low_num_heads: int = 4
    low_depth: int = 2
    mit_mlp_ratio: int = 2  # Mix-FFN expansion of every Mix-Transformer block
    feature_channels: int = 128  # output width of E_low, E_high and the reference branch
    high_stem_channels: int = 64
    query_channels: int = 96  # reference branch: E_high features -> query patch embedding input
    final_channels: int = 256
    final_embed_dim: int = 1024
    final_num_heads: int = 2
    final_sr_ratio: int = 2
    triplane_channels: int = 96
    mae_image_size: int = 224
    mae_patch_size: int = 16
    mae_embed_dim: int = 768
    mae_depth: int = 12
    mae_num_heads: int = 12
    mae_mlp_ratio: int = 4

    def __post_init__(self) -> None:
        checks = {
            "image_size must be a positive multiple of 16": self.image_size > 0 and self.image_size % 16 == 0,
            "low_embed_dim must be divisible by 4 and by low_num_heads":
                self.low_embed_dim % 4 == 0 and self.low_embed_dim % self.low_num_heads == 0,
            "final_embed_dim must be divisible by 4 and by final_num_heads":
                self.final_embed_dim % 4 == 0 and self.final_embed_dim % self.final_num_heads == 0,
            "mae_embed_dim must be divisible by 4 (sin-cos halves) and by mae_num_heads":
                self.mae_embed_dim % 4 == 0 and self.mae_embed_dim % self.mae_num_heads == 0,
            "mae_image_size must be a multiple of mae_patch_size": self.mae_image_size % self.mae_patch_size == 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid EncoderConfig: " + "; ".join(failed))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ----------------------------------------------------------------------------------------------
# DeepLabV3 trunk (smp DeepLabV3, resnet34, depth 3, output stride 8), BatchNorms removed.

class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs (with bias, no BN) and an identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=dilation, dilation=dilation)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride))
                           if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + identity)


def _resnet_layer(in_ch: int, out_ch: int, blocks: int, stride: int, dilation: int = 1) -> nn.Sequential:
    layers = [BasicBlock(in_ch, out_ch, stride, dilation)]
    layers += [BasicBlock(out_ch, out_ch, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetEncoder(nn.Module):
    """ResNet-34 feature extractor of depth 3: (B,5,H,W) -> [stem (H/2), layer1 (H/4), layer2 (H/8)].

    ``layer3``/``layer4`` are built (dilated 2 and 4, stride 1, as smp does for output stride 8)
    only because the official checkpoint contains their weights; depth 3 never runs them.
    """

    def __init__(self, config: EncoderConfig, in_channels: int = 5) -> None:
        super().__init__()
        w, n = config.resnet_widths, config.resnet_blocks
        self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3)
        self.layer1 = _resnet_layer(w[0], w[0], n[0], stride=1)
        self.layer2 = _resnet_layer(w[0], w[1], n[1], stride=2)
        self.layer3 = _resnet_layer(w[1], w[2], n[2], stride=1, dilation=2)
        self.layer4 = _resnet_layer(w[2], w[3], n[3], stride=1, dilation=4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = F.relu(coordinate_conv(self.conv1, x))
        stage1 = self.layer1(F.max_pool2d(stem, kernel_size=3, stride=2, padding=1))
        return [stem, stage1, self.layer2(stage1)]


class ASPPPooling(nn.Sequential):
    """Image-level ASPP branch: global average -> 1x1 conv -> ReLU, broadcast back to H x W
    (smp upsamples the 1x1 map bilinearly, which is exactly this broadcast)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and a pooling branch, fused by a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU())]
        branches += [nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=r, dilation=r), nn.ReLU()) for r in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_ch, out_ch, 1), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def deeplabv3_decoder(config: EncoderConfig) -> nn.Sequential:
    """DeepLabV3 head: ASPP -> 3x3 conv -> ReLU; (B, resnet_widths[1], h, w) -> (B, aspp_channels, h, w)."""
    ch = config.aspp_channels
    return nn.Sequential(ASPP(config.resnet_widths[1], ch, config.aspp_rates), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU())


# ----------------------------------------------------------------------------------------------
# SegFormer (Mix-Transformer) pieces with smp 0.3.x parameter names. Tokens are (B, H*W, C), row-major.

def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> (B, C, H, W) (for contiguous tokens a channels-last view, no copy)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class GridConv(nn.Conv2d):
    """A convolution of tokens laid out on their grid by :func:`tokens_to_map` (a channels-last view).

    ``channels_last`` (the fast inference path, :func:`set_grid_layout`; ignored under autograd): the grid is given
    canonical channels-last strides, so the backend makes no layout copy of the grid or of the result. A grid of batch 1
    carries the token tensor's arbitrary batch stride, and with it the CPU backend took it for NCHW: it copied the grid,
    returned an NCHW result, and the following token layers then copied again (the 3x3 depthwise conv of 2048 channels
    at 64^2: ~400 ms with the copies, ~45 ms without, one loaded CPU core). Equal up to float rounding.
    """

    channels_last = False

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.channels_last and not torch.is_grad_enabled():  # never in training: the gradient keeps its layout
            input = channels_last_strides(input)
        return super()._conv_forward(input, weight, bias)


def channels_last_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W), when channels-last contiguous, as a view with the canonical channels-last strides (size-1
    dimensions' strides are arbitrary, and backends read them); otherwise ``x`` itself."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        return x
    _, c, h, w = x.shape
    return x.as_strided(x.shape, (c * h * w, 1, w * c, c))


def set_grid_layout(module: nn.Module, channels_last: bool) -> None:
    """Switch every :class:`GridConv` in ``module`` to (or from) the copy-free channels-last layout."""
    for layer in module.modules():
        if isinstance(layer, GridConv):
            layer.channels_last = channels_last


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping patches + LayerNorm: (B,C,H,W) -> tokens (B, H'*W', D), H', W'."""

    def __init__(self, in_ch: int, embed_dim: int, patch_size: int = 7, stride: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a grid reduced by ``sr_ratio``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = GridConv(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        context = x
        if self.sr_ratio > 1:
            context = self.norm(self.sr(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2))
        k, v = self.kv(context).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv applied to tokens laid out on their H x W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = GridConv(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dwconv(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class MixTransformerBlock(nn.Module):
    """Pre-norm SegFormer block: tokens (B, H*W, D) -> (B, H*W, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 with align_corners=True (``nn.UpsamplingBilinear2d``, as the official code)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class EncoderF(nn.Module):
    """E_low head: DeepLab features (B, aspp_channels, H/8, W/8) -> (B, feature_channels, H/4, W/4)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim, ch = config.low_embed_dim, config.feature_channels
        self.patchembed = OverlapPatchEmbed(config.aspp_channels, dim, patch_size=7, stride=2)
        self.blocks = nn.ModuleList(MixTransformerBlock(dim, config.low_num_heads, config.mit_mlp_ratio)
                                    for _ in range(config.low_depth))
        self.net = nn.Sequential(nn.Conv2d(dim // 4, ch, 3, 1, 1), nn.LeakyReLU(0.01), nn.Conv2d(ch, ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patchembed(x)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return self.net(_upsample2x(F.pixel_shuffle(tokens_to_map(tokens, height, width), 2)))


class EncoderEhigh(nn.Module):
    """E_high: conv stack on the 5-channel input, (B,5,H,W) -> (B, feature_channels, H/4, W/4)."""

    def __init__(self, config: EncoderConfig, in_channels: int = 5) -> None:
        super().__init__()
        stem, ch = config.high_stem_channels, config.feature_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 7, 2, 3), nn.LeakyReLU(0.01),
                                   nn.Conv2d(stem, ch, 3, 2, 1), nn.LeakyReLU(0.01)]
        for _ in range(4):
            layers += [nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.01)]
        layers.append(nn.Conv2d(ch, ch, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[1:](coordinate_conv(self.net[0], x))


class EncoderFinal(nn.Module):
    """E_t: cat(high, E_low) (B, 2*feature_channels, H/4, W/4) -> tri-planes (B, 96, H/2, W/2); ``high`` is
    E_high's output (Live3D) or the reference branch's (3DPE)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        ch, dim, feat, tri = config.final_channels, config.final_embed_dim, config.feature_channels, config.triplane_channels
        self.net = nn.Sequential(nn.Conv2d(2 * feat, ch, 3, 1, 1))
        self.pathembed = OverlapPatchEmbed(ch, dim, patch_size=7, stride=2)  # sic: official attribute name
        self.block = MixTransformerBlock(dim, config.final_num_heads, config.mit_mlp_ratio, config.final_sr_ratio)
        self.output_net = nn.Sequential(
            nn.Conv2d(dim // 4, ch, 3, 1, 1), nn.LeakyReLU(0.01),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
            nn.Conv2d(ch, feat, 3, 1, 1), nn.LeakyReLU(0.01),
            nn.Conv2d(feat, feat, 3, 1, 1), nn.LeakyReLU(0.01),
            nn.Conv2d(feat, tri, 3, 1, 1), nn.LeakyReLU(0.01),
            nn.Conv2d(tri, tri, 3, 1, 1),
        )

    def forward(self, high_feature: torch.Tensor, low_feature: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.pathembed(self.net(torch.cat([high_feature, low_feature], dim=1)))
        tokens = self.block(tokens, height, width)
        return self.output_net(F.pixel_shuffle(tokens_to_map(tokens, height, width), 2))


# ----------------------------------------------------------------------------------------------
# Reference branch: MAE ViT encoder (no masking) and projection-free cross-attention.

def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos embedding, float32, (1 + grid_size**2, dim); row 0 (cls) is zero.

    Patches are row-major over (h, w); dims [0, dim/2) encode the column w, [dim/2, dim) the row h,
    each as [sin(pos*omega), cos(pos*omega)] with omega = 1 / 10000**(arange(dim/4) / (dim/4)).
    """
    omega = np.arange(dim // 4, dtype=np.float32) / np.float32(dim / 4)
    omega = np.float32(1.0) / np.float32(10000) ** omega
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32),
                             indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(cols), encode(rows)], axis=1)
    table = np.concatenate([np.zeros((1, dim), dtype=np.float32), table], axis=0)
    return torch.from_numpy(table.astype(np.float32))


class ViTPatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (B,3,S,S) -> (B, (S/p)**2, D)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm ViT block (timm layout, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAEEncoder(nn.Module):
    """MAE ViT encoder without masking: (B,3,224,224) ImageNet-normalised -> (B, 197, D) after the final norm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim, grid = config.mae_embed_dim, config.mae_image_size // config.mae_patch_size
        self.patch_embed = ViTPatchEmbed(config.mae_patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # MAE declares the sin-cos table frozen, but 3DPE's training turns it on (encoder.requires_grad_(True))
        # and optimises it with the rest of Ref_encoder; a parameter, so the optimiser can do the same here.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(ViTBlock(dim, config.mae_num_heads, config.mae_mlp_ratio)
                                    for _ in range(config.mae_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.normal_(self.cls_token, std=0.02)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, 197, D) after each block, before the final norm."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block_outputs(x)[-1])


class EncoderRef(nn.Module):
    """E_high features (B, feature_channels, H/4, W/4) attend to MAE tokens of the reference -> same shape.

    Single-head cross-attention without learned projections: softmax(Q K^T / sqrt(D)) V with
    Q = patch tokens of the E_high features (H/16 x W/16 grid) and K = V = MAE tokens.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim = config.mae_embed_dim
        self.mae_encoder = MAEEncoder(config)
        self.pre_conv = nn.Conv2d(config.feature_channels, config.query_channels, 3, 1, 1)
        self.patch_emb = OverlapPatchEmbed(config.query_channels, dim, patch_size=7, stride=4)
        self.proj_tail = nn.Conv2d(dim // 4, 4 * config.feature_channels, 1, bias=False)

    def forward(self, high_feature: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        query, height, width = self.patch_emb(self.pre_conv(high_feature))
        ref_tokens = self.mae_encoder(ref)
        weights = torch.softmax(query @ ref_tokens.transpose(1, 2) / math.sqrt(query.shape[-1]), dim=-1)
        out = tokens_to_map(weights @ ref_tokens, height, width)
        return F.pixel_shuffle(self.proj_tail(F.pixel_shuffle(out, 2)), 2)


# ----------------------------------------------------------------------------------------------

class Live3DEncoder(nn.Module):
    """Live3D reconstruction encoder (official ``EG3DInvEncoder``, 'LT' graph and state-dict keys).

    forward(x): x (B,3,S,S) in [-1,1] (the row/column pixel-index channels are appended here) or already
    (B,5,S,S), S = config.image_size. Returns tri-planes (B, 96, S/2, S/2).
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.encoder = ResNetEncoder(self.config)
        self.decoder = deeplabv3_decoder(self.config)
        self.F_encoder = EncoderF(self.config)
        self.EHigh_encoder = EncoderEhigh(self.config)
        self.Final_encoder = EncoderFinal(self.config)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked input -> (E_low, E_high) features, each (B, feature_channels, S/4, S/4)."""
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] not in (3, 5) or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"x must be (B, 3 or 5, {size}, {size}), got {tuple(x.shape)}")
        if x.shape[1] == 3:
            x = append_pixel_coordinates(x)
        return self.F_encoder(self.decoder(self.encoder(x)[-1])), self.EHigh_encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_feature, high_feature = self.branches(x)
        return self.Final_encoder(high_feature, low_feature)


class Live3DEditingEncoder(Live3DEncoder):
    """3DPE editing encoder (official ``Live3DEditingEncoder``, 'LT' graph and state-dict keys): the Live3D
    encoder whose E_high features are replaced by their cross-attention over the reference's MAE tokens.

    forward(x, ref): x as :class:`Live3DEncoder`; ref (B,3,224,224) ImageNet-normalised.
    Returns tri-planes (B, 96, S/2, S/2).
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__(config)
        self.Ref_encoder = EncoderRef(self.config)

    def forward(self, x: torch.Tensor, ref: torch.Tensor,
                keep_branches: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``keep_branches``: also return the (E_low, E_high) features, from which Live3D's ``Final_encoder``
        reconstructs the unedited portrait without running the shared branches again."""
        ref_size = self.config.mae_image_size
        if ref.ndim != 4 or tuple(ref.shape[1:]) != (3, ref_size, ref_size) or ref.shape[0] != x.shape[0]:
            raise ValueError(f"ref must be ({x.shape[0]}, 3, {ref_size}, {ref_size}), got {tuple(ref.shape)}")
        low_feature, high_feature = self.branches(x)
        planes = self.Final_encoder(self.Ref_encoder(high_feature, ref), low_feature)
        return (planes, low_feature, high_feature) if keep_branches else planes


def append_pixel_coordinates(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,5,H,W): channel 3 = row index, channel 4 = column index (raw 0..H-1 / 0..W-1)."""
    b, _, h, w = x.shape
    coordinates = pixel_coordinates(h, w, x.device, x.dtype).expand(b, -1, -1, -1)
    return torch.cat([x, coordinates], dim=1)


@functools.lru_cache(maxsize=8)
def pixel_coordinates(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, H, W): row index, column index; constant per size, so cached (never modify the result)."""
    with torch.inference_mode(False):
        rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                    torch.arange(width, device=device, dtype=dtype), indexing="ij")
        return torch.stack([rows, cols]).unsqueeze(0)


def coordinate_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on an input that carries the raw pixel-index channels (values up to S - 1), never under autocast:
    bfloat16 holds integers exactly only up to 256. The float32 result is cast by the next autocast layer."""
    with torch.autocast(x.device.type, enabled=False):
        return conv(x)


# ----------------------------------------------------------------------------------------------
# Preprocessing (official test dataset transforms).

def _to_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)


def preprocess_input(image: Image.Image, size: int = 512) -> torch.Tensor:
    """RGB portrait -> (1,3,size,size) in [-1,1] (PIL bicubic resize, /255, x*2-1)."""
    x = _to_tensor(image.resize((size, size), Image.Resampling.BICUBIC))
    return (x * 2.0 - 1.0).unsqueeze(0)


def preprocess_reference(image: Image.Image, size: int = 224) -> torch.Tensor:
    """RGB reference -> (1,3,size,size) ImageNet-normalised (values roughly in [-2.2, 2.7]).

    PIL bicubic resize to 512, /255, then bicubic tensor resize without antialiasing or clamping
    (torchvision 0.14 ``Resize`` on a tensor, as the official environment).
    """
    x = _to_tensor(image.resize((512, 512), Image.Resampling.BICUBIC)).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
