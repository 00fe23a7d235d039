"""The settings of one 2D edit (InstructPix2Pix): the one source of their defaults, for the API, the commands and the
app. Light to import (no torch), so that ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass


class SettingsError(ValueError):
    """Sampling settings that cannot work (no steps, guidance that would switch itself off, odd resolution)."""


@dataclass(frozen=True)
class EditSettings:
    """Sampling settings of one 2D edit (Euler-ancestral sampler, dual classifier-free guidance).

    steps: denoising steps. text_guidance: guidance towards the instruction (> 1, else diffusers silently turns all
    guidance off). image_guidance: guidance towards the input image (>= 1, same reason). resolution: side of the square
    image the edit runs at, a multiple of 64 (512 for the real model; the tiny weight set may use 64).
    """

    steps: int = 20
    text_guidance: float = 7.5
    image_guidance: float = 1.5
    resolution: int = 512

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SettingsError(f"steps must be >= 1, got {self.steps}")
        if self.text_guidance <= 1.0:
            raise SettingsError(f"text_guidance must be > 1 (guidance is disabled otherwise), got {self.text_guidance}")
        if self.image_guidance < 1.0:
            raise SettingsError(f"image_guidance must be >= 1 (guidance is disabled otherwise), got {self.image_guidance}")
        if self.resolution < 64 or self.resolution % 64:
            raise SettingsError(f"resolution must be a positive multiple of 64, got {self.resolution}")

    @classmethod
    def preset(cls, name: str) -> EditSettings:
        """Named settings (:data:`SETTINGS_PRESETS`): ``"quality"`` (the defaults, 512^2) or ``"fast"`` (256^2).

        The 3DPE editor sees a reference at 224^2 only (its MAE prompt encoder), so a text reference made at 256^2
        loses little of what the editor uses, for about a quarter of the UNet/VAE work per step. It is a different
        image from the 512^2 edit of the same seed (another latent size), cached under its own key.
        """
        try:
            return SETTINGS_PRESETS[name]
        except KeyError:
            raise SettingsError(f"unknown preset {name!r}: choose one of {', '.join(SETTINGS_PRESETS)}") from None


SETTINGS_PRESETS = {"quality": EditSettings(), "fast": EditSettings(resolution=256)}


def add_edit_arguments(parser: argparse.ArgumentParser, guidance: bool = True) -> None:
    """The options of :class:`EditSettings` (``--edit-steps``, ``--resolution``, and unless ``guidance`` is False
    ``--text-guidance`` / ``--image-guidance``), their defaults those of the dataclass; :func:`edit_settings` reads
    them back."""
    default = EditSettings()
    parser.add_argument("--edit-steps", type=int, default=default.steps,
                        help=f"InstructPix2Pix steps (default {default.steps})")
    if guidance:
        parser.add_argument("--text-guidance", type=float, default=default.text_guidance,
                            help=f"InstructPix2Pix guidance towards the instruction (default {default.text_guidance})")
        parser.add_argument("--image-guidance", type=float, default=default.image_guidance,
                            help=f"InstructPix2Pix guidance towards the input image (default {default.image_guidance})")
    parser.add_argument("--resolution", type=int, default=default.resolution,
                        help=f"InstructPix2Pix resolution (default {default.resolution})")


def edit_settings(args: argparse.Namespace) -> EditSettings:
    """The :class:`EditSettings` of options added by :func:`add_edit_arguments` (``SettingsError`` when they cannot
    work)."""
    default = EditSettings()
    return EditSettings(steps=args.edit_steps, resolution=args.resolution,
                        text_guidance=getattr(args, "text_guidance", default.text_guidance),
                        image_guidance=getattr(args, "image_guidance", default.image_guidance))
