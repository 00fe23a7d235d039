"""threedpe: real-time 3D-aware portrait editing from a single image (3DPE, ECCV 2024).

    from threedpe import PortraitEditor
    editor = PortraitEditor.from_pretrained("checkpoints", device="auto")
    result = editor("me.jpg", reference="style.png")      # or prompt="Make it a bronze statue"

The public names below are imported on first use, so ``import threedpe`` (and ``python -m threedpe --help``)
stays instant; torch and diffusers load only when a model does.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "PortraitEditor": "threedpe.pipeline",
    "EditResult": "threedpe.pipeline",
    "USER_ERRORS": "threedpe.pipeline",
    "EditSettings": "threedpe.diffusion",
    "EditorModel": "threedpe.models.editor",
    "TriPlaneGenerator": "threedpe.models.generator",
    "align_face": "threedpe.alignment",
    "load_image": "threedpe.images",
    "Cancelled": "threedpe.cancel",
    "CheckpointError": "threedpe.weights",
    "MissingWeightsError": "threedpe.weights",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'threedpe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
