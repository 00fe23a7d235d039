"""Styles: what a customisation fine-tune (:mod:`threedpe.training.customize`) changed in the editor, as a small
file that is applied to the shared editor for one request and then removed.

A style file is one ``.safetensors`` file holding only the adapted tensors, named after the editing encoder's
parameters (``encoder_state_dict`` names):

* mode ``"lora"``: per adapted ``nn.Linear`` / ``nn.Conv2d`` module ``M``, ``M.lora_A.weight`` (r, in) or
  (r, in, kh, kw) and ``M.lora_B.weight`` (out, r) or (out, r, 1, 1), peft's names and layout; the styled weight
  is ``M.weight + alpha / r * B A`` (for a convolution, B's 1x1 kernel composed with A's kernel);
* mode ``"full"``: the fine-tuned tensors themselves (``Final_encoder.*``, ``Ref_encoder.*``).

Its header metadata holds one key, :data:`METADATA_KEY`, whose value is a JSON object: ``format``
(:data:`FORMAT_NAME`), ``version``, ``mode``, ``rank`` and ``alpha`` (LoRA; null in full mode),
``base_fingerprint`` (:func:`model_fingerprint` of the editor it was trained from; another editor refuses it),
and what :mod:`threedpe.training.customize` records about the training (source, steps, seconds, losses, ...).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from threedpe.files import atomic_write

FORMAT_NAME = "threedpe-style"
FORMAT_VERSION = 1
METADATA_KEY = "threedpe_style"
MODES = ("lora", "full")
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
FINGERPRINT_SAMPLES = 1024  # values per tensor that the fingerprint reads


class StyleError(ValueError):
    """A style file that cannot be used: unreadable, not a style, or made for another base editor."""


def model_fingerprint(model: nn.Module, samples: int = FINGERPRINT_SAMPLES) -> str:
    """sha256 (hex) of a model's weights, cheap and deterministic: every state-dict entry's name and shape and up to
    ``samples`` evenly spaced values, rounded to float16 (so the float32 and float16 copies of one editor agree).
    Any retrained or differently initialised editor differs in the sampled values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        count = min(samples, flat.numel())
        index = torch.linspace(0, flat.numel() - 1, count, dtype=torch.float64).round().long()
        values = flat[index.to(flat.device)].to("cpu", torch.float16)
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The weight change of one LoRA adapter, float32: ``scaling * B @ A`` for a linear layer (A (r, in), B (out, r));
    for a convolution (A (r, in, kh, kw), B (out, r, 1, 1)) the (out, in, kh, kw) kernel of A followed by B."""
    a, b = lora_a.float(), lora_b.float()
    if a.ndim == 2:
        return scaling * (b @ a)
    return scaling * torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)


@dataclass(frozen=True, eq=False)
class Style:
    """A loaded style: ``tensors`` (CPU, see the module docstring) and ``metadata`` (the JSON object). Reusable:
    applying it never changes it."""

    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mode = self.metadata.get("mode")
        if mode not in MODES:
            raise StyleError(f"unknown style mode {mode!r} (expected one of {', '.join(MODES)})")
        if not self.tensors:
            raise StyleError("the style holds no tensors")
        if mode == "lora":
            for key in self.tensors:
                if not key.endswith(LORA_SUFFIXES):
                    raise StyleError(f"a LoRA style holds {key!r}, which is not a lora_A/lora_B weight")
            missing = sorted({_partner(key) for key in self.tensors} - set(self.tensors))
            if missing:
                raise StyleError(f"the LoRA style lacks {missing[0]} (its lora_A/lora_B pairs are incomplete)")
            if not self.metadata.get("rank") or not self.metadata.get("alpha"):
                raise StyleError("a LoRA style must record its rank and alpha")

    @property
    def mode(self) -> str:
        return self.metadata["mode"]

    @property
    def base_fingerprint(self) -> str | None:
        return self.metadata.get("base_fingerprint")

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the style file (atomically); returns its path."""
        path = Path(path)
        header = {METADATA_KEY: json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **self.metadata})}
        data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, metadata=header)
        atomic_write(path, lambda file: file.write(data))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Style:
        """Read a style file; ``StyleError`` when it is missing, unreadable or not a style of a known version."""
        path = Path(path)
        if not path.is_file():
            raise StyleError(f"the style file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as file:
                header = file.metadata() or {}
                tensors = {key: file.get_tensor(key) for key in file.keys()}
        except (SafetensorError, OSError) as error:
            raise StyleError(f"{path} is not a readable safetensors file ({error})") from None
        if METADATA_KEY not in header:
            raise StyleError(f"{path} is a safetensors file but not a threedpe style (no {METADATA_KEY!r} metadata)")
        metadata = json.loads(header[METADATA_KEY])
        if metadata.pop("format", None) != FORMAT_NAME or metadata.pop("version", None) != FORMAT_VERSION:
            raise StyleError(f"{path} is not a version-{FORMAT_VERSION} threedpe style")
        return cls(tensors, metadata)

    def check_base(self, fingerprint: str) -> None:
        """Refuse (``StyleError``) unless the style was trained from the editor whose fingerprint is given."""
        if self.base_fingerprint != fingerprint:
            raise StyleError(f"this style was made for another base editor (weights fingerprint "
                             f"{str(self.base_fingerprint)[:12]}, these weights are {fingerprint[:12]}); "
                             "customise again with these weights")

    def styled_weights(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """Parameter name -> styled value (dtype and device of that parameter) for ``encoder``, the unstyled
        editing encoder. A tensor the encoder does not have, or of another shape, raises ``StyleError``."""
        if self.mode == "full":
            pairs = {name: (value, None) for name, value in self.tensors.items()}
        else:
            scaling = float(self.metadata["alpha"]) / int(self.metadata["rank"])
            pairs = {key.removesuffix(LORA_SUFFIXES[0]) + ".weight": (value, self.tensors[_partner(key)])
                     for key, value in self.tensors.items() if key.endswith(LORA_SUFFIXES[0])}
        styled = {}
        for name, (value, lora_b) in pairs.items():
            try:
                parameter = encoder.get_parameter(name)
            except AttributeError:
                raise StyleError(f"the style adapts {name}, which this editor does not have") from None
            device = parameter.device
            update = value if lora_b is None else lora_delta(value.to(device), lora_b.to(device), scaling)
            if update.shape != parameter.shape:
                raise StyleError(f"the style's {name} is {tuple(update.shape)}, the editor's is {tuple(parameter.shape)}")
            if lora_b is not None:
                update = parameter.detach().float() + update
            styled[name] = update.to(device, parameter.dtype)
        return styled


def _partner(key: str) -> str:
    """lora_A <-> lora_B key of the same module."""
    a, b = LORA_SUFFIXES
    return key.removesuffix(a) + b if key.endswith(a) else key.removesuffix(b) + a


@contextmanager
def applied(encoder: nn.Module, style: Style) -> Iterator[None]:
    """Within the block, ``encoder`` computes with ``style``: the touched parameters are backed up, overwritten in
    place, and restored bit-exactly on exit (also on errors). Not thread-safe by itself: hold the lock that every
    user of ``encoder`` takes (``PortraitEditor.style_lock``)."""
    styled = style.styled_weights(encoder)
    parameters = {name: encoder.get_parameter(name) for name in styled}
    with torch.no_grad():
        backup = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        try:
            for name, parameter in parameters.items():
                parameter.copy_(styled[name])
            yield
        finally:
            for name, parameter in parameters.items():
                parameter.copy_(backup[name])
