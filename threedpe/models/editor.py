"""The 3DPE editing network and Live3D's reconstruction network: image(s) -> tri-planes -> images from any camera.

``EditorModel`` pairs the editing encoder (:mod:`threedpe.models.encoder`, weights ``encoder_state_dict``
of ``3dpe.pt``) with the tri-plane renderer (:mod:`threedpe.models.rendering`, ``renderer_state_dict``).
The released file is all that inference needs; the EG3D generator file is not used.

``ReconstructionModel`` is Live3D's network (``encoder_render_LT_*.pt``): the same encoder without the
reference branch, and the same renderer. 3DPE's training uses it frozen, to lift a 2D-edited target
image to pseudo-ground-truth tri-planes, and initialises the editor from it (:meth:`EditorModel.from_live3d`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import torch
from torch import nn

from threedpe.models.encoder import (EncoderConfig, Live3DEditingEncoder, Live3DEncoder, append_pixel_coordinates,
                                     set_grid_layout)
from threedpe.models.rendering import InferenceOptions, RenderingConfig, TriplaneRenderer
from threedpe.precision import native_bf16_label
from threedpe.weights import RECONSTRUCTION_WEIGHTS, resolve_first, resolve_weight
from threedpe.weights.checkpoints import (EDITOR_MODEL, RECONSTRUCTION_MODEL, ThreeDPECheckpoint, load_3dpe, load_into,
                                          require_model)

PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class EditorConfig:
    """Architecture of the editor; the defaults are the released 3DPE model (official "LT" encoder,
    EG3D ffhqrebalanced512-128 rendering settings)."""

    MODEL: ClassVar[str] = EDITOR_MODEL  # stored as "model", so that a file says which network it holds

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)
    w_dim: int = 512
    sr_widths: tuple[int, int] = (256, 128)
    untrained: bool = False

    def to_dict(self) -> dict:
        return {"model": self.MODEL, "encoder": self.encoder.to_dict(), "rendering": self.rendering.to_dict(),
                "w_dim": self.w_dim, "sr_widths": list(self.sr_widths), "untrained": self.untrained}

    @classmethod
    def from_dict(cls, data: dict) -> EditorConfig:
        known = {f.name for f in dataclasses.fields(cls)} | {"model"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        if data.get("model", cls.MODEL) != cls.MODEL:
            raise ValueError(f"a {cls.__name__} is for model {cls.MODEL!r}, not {data['model']!r}")
        return cls(encoder=EncoderConfig.from_dict(data.get("encoder", {})),
                   rendering=RenderingConfig(**data.get("rendering", {})),
                   w_dim=int(data.get("w_dim", 512)), sr_widths=tuple(data.get("sr_widths", (256, 128))),
                   untrained=bool(data.get("untrained", False)))

    @classmethod
    def like(cls, other: EditorConfig) -> EditorConfig:
        """This kind of config with the widths and rendering settings of ``other`` (editor <-> reconstruction)."""
        return cls(**{f.name: getattr(other, f.name) for f in dataclasses.fields(other)})


@dataclass(frozen=True)
class ReconstructionConfig(EditorConfig):
    """Architecture of Live3D's reconstruction network; the defaults are the released ``encoder_render_LT_*.pt``
    (the encoder's MAE fields are unused: this network has no reference branch)."""

    MODEL: ClassVar[str] = RECONSTRUCTION_MODEL


class _TriplaneModel(nn.Module):
    """An image-to-triplane ``encoder`` and the ``renderer``, loaded from one ``ThreeDPECheckpoint``.

    ``inference`` (:class:`~threedpe.models.rendering.InferenceOptions`, shared with the renderer) says how encoding and
    rendering run without autograd; :meth:`describe_inference` says it in words. With autograd (training) both
    always take the reference path.
    """

    CONFIG: ClassVar[type[EditorConfig]]
    ENCODER: ClassVar[type[Live3DEncoder]]
    LABEL: ClassVar[str]

    def __init__(self, config: EditorConfig | None = None):
        super().__init__()
        self.config = config or self.CONFIG()
        self.encoder = self.ENCODER(self.config.encoder)
        self.renderer = TriplaneRenderer(self.config.rendering, w_dim=self.config.w_dim,
                                         sr_widths=self.config.sr_widths)
        self._compiled: tuple[object, object] | None = None  # (encoder forward, its torch.compile)

    @classmethod
    def from_checkpoint(cls, checkpoint: ThreeDPECheckpoint, config: EditorConfig | None = None) -> Self:
        """Build and strictly load; ``config`` defaults to the one stored with the weights, else the released
        architecture. A checkpoint of the other network (editor vs. Live3D) raises a ``CheckpointError``."""
        require_model(checkpoint, cls.CONFIG.MODEL)
        if config is None and checkpoint.config:
            config = cls.CONFIG.from_dict(checkpoint.config)
        model = cls(config)
        load_into(model.encoder, checkpoint.encoder_state_dict, what=f"{cls.LABEL} encoder (encoder_state_dict)")
        load_into(model.renderer, checkpoint.renderer_state_dict, what=f"{cls.LABEL} renderer (renderer_state_dict)")
        return model.eval()

    def checkpoint(self) -> ThreeDPECheckpoint:
        """The weights (state dicts, not copies) and the architecture, as
        :func:`~threedpe.weights.checkpoints.save_checkpoint` and :func:`~threedpe.weights.checkpoints.save_official`
        write them."""
        return ThreeDPECheckpoint(self.encoder.state_dict(), self.renderer.state_dict(), self.config.to_dict())

    @property
    def inference(self) -> InferenceOptions:
        return self.renderer.inference

    def render(self, planes: torch.Tensor, cams: torch.Tensor, deterministic: bool = True,
               preview: bool = False) -> dict[str, torch.Tensor]:
        """Tri-planes (B, 96, P, P), or (1, 96, P, P) for all cameras, and cameras (B, 25) -> ``image`` (B, 3, 4R, 4R)
        in about [-1, 1], ``image_raw`` (B, 3, R, R), ``image_depth`` (B, 1, R, R), ``feature_image`` (B, 32, R, R),
        ``weight_total`` (B, 1, R, R) (see :func:`threedpe.models.rendering.render_planes`); ``preview``: the draft quality of
        :data:`threedpe.models.rendering.PREVIEW_RESOLUTION` (R = 64, the image still 4 * 128). Always computed in float32,
        also under an autocast region (mixed-precision training)."""
        with torch.autocast(planes.device.type, enabled=False):
            return self.renderer(planes.float(), cams.float(), deterministic=deterministic, preview=preview)

    def describe_inference(self) -> str:
        """The path encoding and rendering take without autograd, in words, naming the precision, e.g.
        ``"cpu fp32, channels-last token grids, fused volume rendering, folded channels-last SR"`` (precision
        ``"exact"``) or ``"cpu bf16 (fast precision: native AVX512-BF16, AMX-BF16; pixel coordinates and volume rendering
        fp32), ..."``."""
        device = next(self.encoder.parameters()).device
        precision = "fp32"
        if self._encoder_dtype() != torch.float32:  # PortraitEditor.to(dtype=...): the renderer stays float32
            precision = f"{PRECISION_NAMES.get(self._encoder_dtype(), str(self._encoder_dtype()))} encoder, fp32 rendering"
        if self.inference.autocast is not None:
            precision = f"{PRECISION_NAMES[self.inference.autocast]} autocast (pixel coordinates and volume rendering fp32)"
        elif self.inference.precision == "fast" and self.inference.fast:
            precision = describe_fast_precision(device)
        device = device.type
        if not self.inference.fast:
            return f"{device} {precision}, reference path"
        encoder = ["channels-last encoder" if device == "cuda" else "channels-last token grids"]
        encoder += ["compiled encoder"] if self.inference.compile else []
        return ", ".join([f"{device} {precision}", *encoder, self.renderer.describe()])

    def _encode(self, x: torch.Tensor, *extra: torch.Tensor, **options: bool) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The encoder on (x, *extra, **options) in its dtype -> float32 tri-planes (every output tensor float32).
        Without autograd and with ``inference.fast`` it runs in ``inference.reduced_dtype`` (autocast), compiled with
        ``inference.compile``, and channels-last on CUDA."""
        dtype = self._encoder_dtype()
        x, extra = x.to(dtype), [t.to(dtype) for t in extra]
        fast = self.inference.fast_now()
        set_grid_layout(self.encoder, fast)
        if not fast:
            return _float(self.encoder(x, *extra, **options))
        if x.shape[1] == 3:  # outside a compiled encoder: the coordinates are cached per size
            x = append_pixel_coordinates(x)
        if x.device.type == "cuda":  # cuDNN's preferred layout; on the CPU channels-last measured no faster than NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        forward = self.encoder.forward
        if self.inference.compile:
            if self._compiled is None or self._compiled[0] != forward:
                self._compiled = (forward, torch.compile(forward))
            forward = self._compiled[1]
        dtype = self.inference.reduced_dtype(x.device)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return _float(forward(x, *extra, **options))

    def _encoder_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype


class EditorModel(_TriplaneModel):
    """``encode(x, ref)`` -> tri-planes (B, 96, S/2, S/2); ``render(planes, cams)`` -> images."""

    CONFIG = EditorConfig
    ENCODER = Live3DEditingEncoder
    LABEL = "3DPE"

    @classmethod
    def from_live3d(cls, checkpoint: ThreeDPECheckpoint, config: EditorConfig | None = None) -> EditorModel:
        """An editor initialised as 3DPE's training does: the Live3D ``encoder_state_dict`` loaded non-strictly
        (exactly the ``Ref_encoder.*`` weights are absent, nothing may be unexpected), the renderer strictly.

        ``Ref_encoder`` keeps its fresh random initialisation (seed torch first for a reproducible one).
        ``config`` defaults to the checkpoint's architecture.
        """
        require_model(checkpoint, RECONSTRUCTION_MODEL)
        if config is None:
            config = EditorConfig.like(ReconstructionConfig.from_dict(checkpoint.config or {}))
        model = cls(config)
        fresh = {key: value for key, value in model.encoder.state_dict().items() if key.startswith("Ref_encoder.")}
        load_into(model.encoder, {**checkpoint.encoder_state_dict, **fresh},
                  what="3DPE encoder from Live3D (encoder_state_dict without Ref_encoder)")
        load_into(model.renderer, checkpoint.renderer_state_dict, what="3DPE renderer from Live3D (renderer_state_dict)")
        return model.eval()

    def encode(self, x: torch.Tensor, ref: torch.Tensor,
               keep_branches: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) in [-1, 1], ref (B, 3, 224, 224) ImageNet-normalised -> tri-planes (B, 96, S/2, S/2);
        ``keep_branches``: (tri-planes, E_low, E_high features (B, 128, S/4, S/4)), the same tri-planes."""
        return self._encode(x, ref, keep_branches=True) if keep_branches else self._encode(x, ref)


class ReconstructionModel(_TriplaneModel):
    """Live3D: ``encode(x)`` -> tri-planes (B, 96, S/2, S/2); ``render(planes, cams)`` -> images."""

    CONFIG = ReconstructionConfig
    ENCODER = Live3DEncoder
    LABEL = "Live3D"

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, *, repo_id: str | None = None,
                        revision: str | None = None) -> ReconstructionModel:
        """Load from :func:`resolve_reconstruction_weights`."""
        return cls.from_checkpoint(load_3dpe(resolve_reconstruction_weights(folder, repo_id=repo_id, revision=revision)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1] -> tri-planes (B, 96, S/2, S/2)."""
        return self._encode(x)

    def shares_branches(self, editor: EditorModel) -> bool:
        """Whether ``editor`` holds this network's E_low / E_high branches and renderer bit for bit (3DPE trains
        neither: the released files share them), so that :meth:`from_branches` may take the editor's features."""
        mine, theirs = self.encoder.state_dict(), editor.encoder.state_dict()
        same = all(torch.equal(value, theirs[key]) for key, value in mine.items() if not key.startswith("Final_encoder."))
        renderer = editor.renderer.state_dict()
        return same and all(torch.equal(value, renderer[key]) for key, value in self.renderer.state_dict().items())

    def from_branches(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Live3D's tri-planes (B, 96, S/2, S/2) from E_low / E_high features (B, 128, S/4, S/4) computed by an editor
        that :meth:`shares_branches` with this network: only ``Final_encoder`` runs (on the path of :meth:`encode`)."""
        dtype = self._encoder_dtype()
        fast = self.inference.fast_now()
        set_grid_layout(self.encoder, fast)
        reduced = self.inference.reduced_dtype(low.device) if fast else None
        with torch.autocast(low.device.type, dtype=reduced, enabled=reduced is not None):
            return self.encoder.Final_encoder(high.to(dtype), low.to(dtype)).float()


def _float(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return out.float() if isinstance(out, torch.Tensor) else tuple(t.float() for t in out)


def describe_fast_precision(device: torch.device) -> str:
    """What precision ``"fast"`` computes in on ``device``, in words (see :mod:`threedpe.precision`)."""
    native = native_bf16_label(device)
    if native is None:
        return f"fp32 (fast precision: no native bf16 on this {'GPU' if device.type == 'cuda' else 'CPU'})"
    return f"bf16 (fast precision: native {native}; pixel coordinates and volume rendering fp32)"


def resolve_reconstruction_weights(folder: str | os.PathLike | None = None, *, repo_id: str | None = None,
                                   revision: str | None = None) -> Path:
    """The Live3D weights: our converted ``encoder_render_LT_90000.safetensors`` (+ ``.json``) first, else the
    released ``encoder_render_LT_90000.pt``; ``folder`` defaults to ``$THREEDPE_WEIGHTS`` or ``checkpoints``,
    then the Hub (see :func:`threedpe.weights.resolve_weight`). Raises ``MissingWeightsError``."""
    weights = resolve_first(RECONSTRUCTION_WEIGHTS, local_dir=folder, repo_id=repo_id, revision=revision)
    if weights.suffix == ".safetensors":  # its config must sit beside it
        resolve_weight(weights.with_suffix(".json").name, local_dir=folder, repo_id=repo_id, revision=revision)
    return weights
