"""A finished edit kept between the app's calls, as plain CPU data (:class:`StoredEdit`, in a session's ``gr.State``),
the files the page shows of it (:class:`EditFiles`), and how those files are named (``views.png``,
``view_yaw30_pitch0.png``, ``views_strength0.5.png``, ...; ``edit.json`` holds what publishing needs besides them)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from threedpe.files import atomic_write
from threedpe.pipeline import EditResult, PortraitEditor, Unedited

EDIT_RECORD = "edit.json"  # in each edit's folder: what publishing needs besides the files


@dataclass
class StoredEdit:
    """A finished edit as plain CPU data: ``planes`` (1, 96, P, P) float32 at strength 1, the aligned input and the
    reference (RGB images), seconds per stage, notes for the user, the anchor's label (text edits), what produced it
    (the instruction of a text edit, the settings, a style's name), and ``id``, which names the edit's folder of output
    files. ``strength``: the edit strength its views, video and mesh render at; what other strengths need without a
    new encode: the editor's E_low / E_high features of the photo (``branches``, kept from the edit while strengths
    are available) until the first change away from 1 turns them into the ``unedited`` tri-planes, kept instead."""

    planes: np.ndarray
    image: Image.Image
    reference: Image.Image
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    anchor: str | None = None
    instruction: str | None = None
    settings: dict = field(default_factory=dict)
    style: str | None = None
    execution: str = ""  # how the editor ran, e.g. "cpu fp32, ..., folded channels-last SR"
    precision: str = "exact"  # the editor's precision for this edit, kept by its views, video and mesh
    strength: float = 1.0
    branches: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    unedited: np.ndarray | None = field(default=None, repr=False)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def from_result(cls, result: EditResult, **details) -> StoredEdit:
        """``result`` (at any strength) as CPU data, with what its other strengths need."""
        def cpu(tensor: torch.Tensor | None) -> np.ndarray | None:
            return None if tensor is None else tensor.detach().float().cpu().numpy()

        unedited = result.unedited or Unedited(None)
        edited = result.planes if result.edited_planes is None else result.edited_planes
        return cls(planes=cpu(edited), image=result.image, reference=result.reference, timings=dict(result.timings),
                   notes=list(result.warnings), anchor=result.anchor, execution=result.execution,
                   precision=result.editor.precision, strength=result.strength,
                   branches=tuple(map(cpu, unedited.branches)) if unedited.branches else None,
                   unedited=cpu(unedited.planes), **details)

    def result(self, editor: PortraitEditor) -> EditResult:
        """An ``EditResult`` that renders these tri-planes at this edit's strength with ``editor`` (no re-encoding;
        the first strength other than 1 runs Live3D's final encoder on the kept features)."""
        def device(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(array).to(editor.device)

        branches = tuple(map(device, self.branches)) if self.branches else None
        result = EditResult(planes=device(self.planes), image=self.image, reference=self.reference, editor=editor,
                            unedited=Unedited(branches, device(self.unedited)))
        return result if self.strength == 1.0 else result.with_strength(self.strength)

    def timed(self, **seconds: float) -> StoredEdit:
        """A copy with more stage timings (the stored planes are shared, not copied)."""
        return replace(self, timings={**self.timings, **seconds})

    def folder(self, session: Path) -> Path:
        """This edit's output folder inside the session's folder (never re-creating a session folder that was removed
        when its visitor left: that raises ``FileNotFoundError``)."""
        folder = session / self.id
        folder.mkdir(exist_ok=True)
        return folder

    def save_record(self, session: Path) -> None:
        """What publishing needs besides the files (instruction, style, settings with the strength, which names the
        strip, video and mesh files, and timings), as ``edit.json`` in the edit's folder; rewritten when the video,
        mesh or strength changes."""
        record = {"instruction": self.instruction, "style": self.style, "anchor": self.anchor,
                  "settings": {**self.settings, "strength": self.strength},
                  "timings": {key: round(value, 3) for key, value in self.timings.items()}}
        atomic_write(self.folder(session) / EDIT_RECORD, lambda file: file.write(json.dumps(record).encode()))


@dataclass
class EditFiles:
    """What the page shows right after an edit: the stored edit and its image files (aligned input, reference,
    3-view strip, frontal view, depth)."""

    edit: StoredEdit
    aligned: Path
    reference: Path
    views: Path
    view: Path
    depth: Path


def view_name(yaw: float, pitch: float, preview: bool = False, strength: float = 1.0) -> str:
    """File name of a free view, e.g. ``view_yaw30_pitch-10.png`` (degrees from frontal; ``..._strength0.5`` at
    another strength than 1; ``..._preview.png`` for a draft)."""
    return f"view_yaw{yaw:g}_pitch{pitch:g}{strength_suffix(strength)}{'_preview' if preview else ''}.png"


def strength_suffix(strength: float) -> str:
    """What the names of an edit's files at ``strength`` end with before the extension: ``""`` at 1, else e.g.
    ``_strength0.5`` (``views_strength0.5.png``, ``orbit_strength0.5.mp4``, ...)."""
    return "" if strength == 1.0 else f"_strength{strength:g}"
