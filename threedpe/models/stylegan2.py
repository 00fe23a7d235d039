"""StyleGAN2 building blocks in the form EG3D uses them (equalised learning rate, weight
modulation/demodulation, FIR up-sampling), written in plain PyTorch so they run on any device.

Parameter and buffer names follow EG3D's ``networks_stylegan2`` so that the official state dicts
load unchanged. Only the inference path is kept; there are no custom CUDA kernels. Every layer runs
in float32 (EG3D's fp16 layers run in float32 off CUDA too, and the golden tolerances assume it).

:class:`FoldedSynthesisBlock` is the inference form of a block whose style never changes (3DPE's
super-resolution is driven by a learned constant): its modulated weights are computed once and it runs
plain channels-last convolutions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def fir_filter(taps: tuple[float, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """Normalised 2-D FIR filter (outer product of ``taps``), shape (k, k), sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, pad: tuple[int, int, int, int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Zero-insertion up-sampling by ``up``, padding (x0, x1, y0, y1; negative crops), FIR filtering.

    x: (B, C, H, W); f: (k, k) symmetric filter, scaled by ``gain`` (the filter is applied as a
    convolution, i.e. flipped, which is the identity for the symmetric filters used here).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    kernel = (f * gain).flip([0, 1]).to(x.dtype)
    kernel = kernel[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling: (B, C, H, W) -> (B, C, 2H, 2W)."""
    k = f.shape[-1]
    return upfirdn2d(x, f, up=2, pad=((k + 1) // 2, (k - 2) // 2, (k + 1) // 2, (k - 2) // 2), gain=4.0)


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply ``act`` ('linear' or 'lrelu', slope 0.2), scale, clamp."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = LRELU_GAIN if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate: y = act(x @ (W * lr/sqrt(in)).T + b * lr)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight (out, in) and bias (out,) the layer applies, learning-rate gains included."""
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        return self.weight * self.weight_gain, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective()
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (B, z_dim) and camera c (B, c_dim) -> ws (B, num_ws, w_dim)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2,
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.num_ws = num_ws
        self.embed = FullyConnectedLayer(c_dim, w_dim)
        features = [z_dim + w_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        self.num_layers = num_layers
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(c))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


def modulate(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True) -> torch.Tensor:
    """Per-sample conv weights (B, O, I, k, k): ``weight`` (O, I, k, k) scaled by ``styles`` (B, I) along the input
    channels and, with ``demodulate``, normalised to unit L2 norm per output channel (eps 1e-8)."""
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(styles.shape[0], -1, 1, 1, 1)
    return w


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, up: int = 1,
                     padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True) -> torch.Tensor:
    """Per-sample modulated convolution as one grouped conv.

    x: (B, I, H, W); weight: (O, I, k, k); styles: (B, I). With ``up=2`` the convolution is a
    stride-2 transposed convolution followed by the FIR filter (output (B, O, 2H, 2W)).
    """
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = modulate(weight, styles, demodulate)
    x = x.reshape(1, -1, *x.shape[2:])
    if up == 1:
        x = F.conv2d(x, w.reshape(-1, in_ch, kh, kw), padding=padding, groups=b)
    else:
        w = w.reshape(b, out_ch, in_ch, kh, kw).transpose(1, 2).reshape(b * in_ch, out_ch, kh, kw)
        x = F.conv_transpose2d(x, w, stride=up, groups=b)
        k = resample_filter.shape[-1]
        p0 = padding + (k + up - 1) // 2 - (kw - 1)
        p1 = padding + (k - up) // 2 - (kw - up)
        x = upfirdn2d(x, resample_filter, pad=(p0, p1, p0, p1), gain=up * up)
    return x.reshape(b, -1, *x.shape[2:])


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x up-sampling), noise, bias, lrelu, optional clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.up = up
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", fir_filter())
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """noise_mode: 'const' (stored noise), 'random' (fresh Gaussian noise) or 'none'."""
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=1, resample_filter=self.resample_filter)
        if noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode == "random":
            x = x + torch.randn_like(x[:, :1]) * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"unknown noise_mode {noise_mode!r}")
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation: features -> output channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture synthesis network.

    (x (B, in, R/2, R/2), img (B, img_ch, R/2, R/2) or None, ws (B, num_conv + num_torgb, w_dim))
    -> (x (B, out, R, R), img (B, img_ch, R, R)). ``in_channels == 0`` starts from a learned constant.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", fir_filter())
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const") -> tuple[torch.Tensor, torch.Tensor]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> image (B, img_channels, R, R), blocks b4 ... bR."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512):
        super().__init__()
        self.resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        self.num_ws = 0
        for r in self.resolutions:
            block = SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels)
            setattr(self, f"b{r}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's ToRGB

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        x = img = None
        w_idx = 0
        for r in self.resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode=noise_mode)
            w_idx += block.num_conv
        return img


class FoldedSynthesisBlock:
    """A :class:`SynthesisBlock` (``in_channels > 0``) with fixed styles and ``noise_mode='none'``, as plain convolutions.

    Built once from the block and ws (1, num_conv + num_torgb, w_dim): the modulated (and demodulated) weights are
    computed here; the lrelu gain sqrt(2) is folded into weights and biases (lrelu(g*y) = g*lrelu(y) for g > 0);
    the FIR filter after the transposed convolution is a depthwise convolution carrying the bias, and the skip
    image's 2x up-sampling is one depthwise stride-2 transposed convolution instead of zero insertion + filtering.
    Weights are channels-last. Equal to ``block(x, img, ws, noise_mode='none')`` for every batch up to float
    rounding. Holds plain tensors (no autograd): rebuild it when the block's weights or ws change.
    """

    def __init__(self, block: SynthesisBlock, ws: torch.Tensor):
        if block.in_channels == 0 or ws.shape[0] != 1:
            raise ValueError("folding needs a block with an input (in_channels > 0) and ws of batch 1")
        with torch.no_grad():
            w0, w1, w2 = ws.unbind(dim=1)
            conv0, conv1 = block.conv0, block.conv1
            self.up_weight = _channels_last(modulate(conv0.weight, conv0.affine(w0))[0].transpose(0, 1) * LRELU_GAIN)
            self.up = conv0.up
            f = conv0.resample_filter
            k, kw = f.shape[-1], conv0.weight.shape[-1]
            pad0 = 1 + (k + self.up - 1) // 2 - (kw - 1)  # modulated_conv2d's padding around the FIR filter
            pad1 = 1 + (k - self.up) // 2 - (kw - self.up)
            if pad0 != pad1 or pad0 < 0:
                raise ValueError(f"folding needs a symmetric FIR padding, got {pad0}, {pad1}")
            self.fir_padding = pad0
            channels = conv0.weight.shape[0]
            self.fir = _channels_last((f * self.up ** 2).flip([0, 1])[None, None].repeat(channels, 1, 1, 1))
            self.fir_bias = conv0.bias * LRELU_GAIN
            self.up_clamp = conv0.conv_clamp
            self.weight = _channels_last(modulate(conv1.weight, conv1.affine(w1))[0] * LRELU_GAIN)
            self.bias = conv1.bias * LRELU_GAIN
            self.clamp = conv1.conv_clamp
            torgb = block.torgb
            self.rgb_weight = _channels_last(modulate(torgb.weight, torgb.affine(w2) * torgb.weight_gain,
                                                      demodulate=False)[0])
            self.rgb_bias = torgb.bias.clone()
            self.rgb_clamp = torgb.conv_clamp
            skip = block.resample_filter
            if skip.shape[-1] % 2:
                raise ValueError("folding needs an even FIR filter for the skip up-sampling")
            # zero insertion, pad ((k+1)//2, (k-2)//2), conv with f  ==  stride-2 transposed conv with f, padding k/2 - 1
            self.skip_padding = skip.shape[-1] // 2 - 1
            self.skip_kernel = (skip * 4)[None, None].repeat(torgb.weight.shape[0], 1, 1, 1)

    def to(self, dtype: torch.dtype) -> FoldedSynthesisBlock:
        """This block with its weights in ``dtype`` (then it computes in ``dtype``)."""
        block = object.__new__(FoldedSynthesisBlock)
        block.__dict__ = {name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point()
                          else value for name, value in self.__dict__.items()}
        return block

    def __call__(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, in, R/2, R/2), img (B, img_ch, R/2, R/2)) -> (x (B, out, R, R), img (B, img_ch, R, R))."""
        x = F.conv_transpose2d(x, self.up_weight, stride=self.up)
        x = conv2d_lrelu(x, self.fir, self.fir_bias, self.fir_padding, groups=x.shape[1], clamp=self.up_clamp)
        x = conv2d_lrelu(x, self.weight, self.bias, 1, clamp=self.clamp)
        y = F.conv2d(x, self.rgb_weight, self.rgb_bias)
        if self.rgb_clamp is not None:
            y = y.clamp_(-self.rgb_clamp, self.rgb_clamp)
        skip = F.conv_transpose2d(img, self.skip_kernel, stride=2, padding=self.skip_padding, groups=img.shape[1])
        return x, y.add_(skip)


def conv2d_lrelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int, groups: int = 1,
                 clamp: float | None = None) -> torch.Tensor:
    """``leaky_relu(conv2d(x, weight, bias), 0.2)`` clamped to +-``clamp``, for inference. On the CPU the activation is
    fused into the oneDNN convolution (no extra pass over the result: ~6 % of the super-resolution's time); elsewhere,
    and where autograd needs the graph, the two ops."""
    if x.device.type == "cpu" and FUSED_CPU_CONV and not (x.requires_grad or weight.requires_grad):
        x = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [padding, padding], [1, 1], [1, 1], groups,
                                                    "leaky_relu", [0.2], "")
    else:
        x = F.leaky_relu_(F.conv2d(x, weight, bias, padding=padding, groups=groups), 0.2)
    return x if clamp is None else x.clamp_(-clamp, clamp)


# oneDNN's convolution with a fused activation (the op torch.compile's CPU backend emits), where this torch has it
FUSED_CPU_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)
