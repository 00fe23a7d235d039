"""What the Gradio Space (``app.py``) runs, without any UI: loading, per-session folders, edits kept as CPU arrays.

The app stores a finished edit as a :class:`StoredEdit` (tri-planes as a CPU numpy array) in the session's
``gr.State``; the free-view sliders, the orbit video and the mesh re-render from it without re-encoding the photo.
Every method of :class:`DemoRunner` is a unit of GPU work that the app wraps in ``@spaces.GPU``; their arguments and
results are small picklable values (ZeroGPU ships them to a forked worker), the models stay module-level.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from threedpe.alignment import NoFaceError
from threedpe.checkpoints import CheckpointError
from threedpe.diffusion import EditCancelled, EditSettings, PromptError
from threedpe.images import ImageError, ImageInput
from threedpe.pipeline import EditResult, PortraitEditor
from threedpe.video import RenderCancelled

# Errors a user can act on: the app shows their message in the page, never a traceback.
USER_ERRORS = (ImageError, NoFaceError, CheckpointError, PromptError, EditCancelled, RenderCancelled)
MAX_YAW_DEGREES = 45.0  # slider ranges of the free view
MAX_PITCH_DEGREES = 30.0


@dataclass(frozen=True)
class OutputSettings:
    """The app's defaults for the rendering that follows an edit: orbit ``video_frames``, ``mesh_resolution``^3."""

    video_frames: int = 120
    mesh_resolution: int = 256

    @classmethod
    def for_device(cls, device: torch.device) -> OutputSettings:
        """Full quality on a GPU; a shorter video and a coarser mesh on CPU, where both take minutes otherwise."""
        return cls() if device.type == "cuda" else cls(video_frames=48, mesh_resolution=128)


def load_editor(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                ) -> PortraitEditor | CheckpointError:
    """The editor from ``folder``, on CUDA when present (ZeroGPU wants models there at import), else CPU.
    ``cache_dir``: where text references are cached (default ``$THREEDPE_CACHE`` or ``~/.cache/threedpe``).

    Returns (not raises) the ``CheckpointError`` of missing or broken weights, so that the app can still start
    and show the message.
    """
    try:
        editor = PortraitEditor.from_pretrained(folder, cache_dir=cache_dir)
    except CheckpointError as error:
        return error
    return editor.to("cuda" if torch.cuda.is_available() else "cpu")


def load_text_model(editor: PortraitEditor) -> str | None:
    """Load InstructPix2Pix now (at import, as ZeroGPU requires); a message saying why text edits are off, or None."""
    try:
        editor.text_reference
    except (OSError, ValueError) as error:  # missing folder / not in the Hub cache / offline / broken config
        return f"Text edits are unavailable: InstructPix2Pix could not be loaded from {editor.text_model} ({error})."
    return None


def weights_notice(editor: PortraitEditor | CheckpointError, text_error: str | None = None) -> str:
    """Markdown telling the visitor what the loaded weights are: missing (and how to get them), untrained, or fine."""
    if isinstance(editor, CheckpointError):
        return (f"### ⚠️ Model weights are missing, so editing is disabled\n{editor}\n\n"
                "Put the files in `checkpoints/` (see `checkpoints/README.md` for sources and licences) or start "
                "the app with `python app.py --weights DIR` (or `THREEDPE_WEIGHTS=DIR`). To try the interface "
                "without downloads: `python -m threedpe tiny-weights DIR` writes an untrained set.")
    notes = []
    if editor.untrained:
        notes.append("### ⚠️ Untrained weights\nThis app runs on randomly initialised (untrained) weights: the "
                     "pipeline works end to end, but every output is noise. Load the released 3DPE weights for "
                     "real edits.")
    if text_error:
        notes.append(f"**{text_error}**")
    return "\n\n".join(notes)


def view_angles(yaw_degrees: float, pitch_degrees: float) -> tuple[float, float]:
    """Slider angles in degrees relative to the frontal view -> the renderer's (yaw, pitch) in radians."""
    return math.pi / 2 + math.radians(yaw_degrees), math.pi / 2 + math.radians(pitch_degrees)


@dataclass
class StoredEdit:
    """A finished edit as plain CPU data: ``planes`` (1, 96, P, P) float32, the aligned input and the reference
    (RGB images), seconds per stage and the notes (warnings) of the edit."""

    planes: np.ndarray
    image: Image.Image
    reference: Image.Image
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_result(cls, result: EditResult) -> StoredEdit:
        return cls(planes=result.planes.detach().float().cpu().numpy(), image=result.image,
                   reference=result.reference, timings=dict(result.timings), notes=list(result.warnings))

    def result(self, editor: PortraitEditor) -> EditResult:
        """An ``EditResult`` that renders these tri-planes with ``editor`` (no re-encoding)."""
        planes = torch.from_numpy(self.planes).to(editor.device)
        return EditResult(planes=planes, image=self.image, reference=self.reference, editor=editor)

    def timed(self, **seconds: float) -> StoredEdit:
        """A copy with more stage timings (the stored planes are shared, not copied)."""
        return replace(self, timings={**self.timings, **seconds})


@dataclass
class EditViews:
    """What the page shows right after an edit: the stored edit, the 3-view strip, the frontal view and depth."""

    edit: StoredEdit
    strip: Image.Image
    view: Image.Image
    depth: Image.Image


def timings_markdown(edit: StoredEdit) -> str:
    """One line of measured seconds per stage, in pipeline order, followed by the edit's notes."""
    names = {"align": "align", "reference": "reference", "encode": "encode", "render": "render (3 views + depth)",
             "video": "orbit video", "mesh": "mesh"}
    parts = [f"{label} **{edit.timings[key]:.2f} s**" for key, label in names.items() if key in edit.timings]
    lines = ["⏱️ " + " · ".join(parts)] if parts else []
    lines += [f"ℹ️ {note}" for note in edit.notes]
    return "\n\n".join(lines)


class SessionFiles:
    """One temporary folder per browser session under ``root``, removed when the session ends."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "threedpe-sessions"

    def folder(self, session_hash: str | None) -> Path:
        """The session's folder (created on demand; API clients may never trigger the page's load event)."""
        name = session_hash or "anonymous"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"unexpected session id {name!r}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close(self, session_hash: str | None) -> None:
        """Delete the session's folder and everything in it."""
        if session_hash:
            shutil.rmtree(self.root / session_hash, ignore_errors=True)

    def prune(self, max_age_s: float) -> None:
        """Delete folders untouched for ``max_age_s`` seconds (sessions whose end was never signalled)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - max_age_s
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


class DemoRunner:
    """The app's GPU work on one shared, read-only editor. Methods take and return picklable values."""

    def __init__(self, editor: PortraitEditor):
        self.editor = editor

    def edit(self, photo: ImageInput, reference: ImageInput | None = None, prompt: str | None = None, *,
             settings: EditSettings | None = None, seed: int = 0, anchor: int = 0,
             use_own_photo: bool = False) -> EditViews:
        """Edit ``photo`` (reference image or instruction), then render the strip, the frontal view and depth."""
        result = self.editor(photo, reference=reference, prompt=prompt, settings=settings, seed=seed, anchor=anchor,
                             use_own_photo=use_own_photo)
        start = time.perf_counter()
        strip, view, depth = result.strip(), result.view(), result.depth()
        stored = StoredEdit.from_result(result).timed(render=time.perf_counter() - start)
        return EditViews(stored, strip, view, depth)

    def view(self, edit: StoredEdit, yaw: float, pitch: float) -> Image.Image:
        """The stored edit seen from (yaw, pitch) in radians (see :func:`view_angles`)."""
        return edit.result(self.editor).view(yaw, pitch)

    def video(self, edit: StoredEdit, folder: Path, frames: int) -> tuple[Path, StoredEdit]:
        """An orbit video (mp4, ``frames`` frames) of the stored edit in ``folder``; the edit with its timing."""
        start = time.perf_counter()
        path = edit.result(self.editor).video(folder / f"orbit-{uuid.uuid4().hex[:8]}.mp4", num_frames=frames)
        return path, edit.timed(video=time.perf_counter() - start)

    def mesh(self, edit: StoredEdit, folder: Path, resolution: int) -> tuple[Path, Path, StoredEdit]:
        """The coloured mesh of the stored edit as GLB and PLY in ``folder``; the edit with its timing."""
        start = time.perf_counter()
        stem = folder / f"mesh-{uuid.uuid4().hex[:8]}"
        glb, ply = edit.result(self.editor).mesh(stem.with_suffix(".glb"), stem.with_suffix(".ply"),
                                                 resolution=resolution)
        return glb, ply, edit.timed(mesh=time.perf_counter() - start)

    # ZeroGPU durations (seconds of GPU time to reserve), from the same arguments as the methods above.
    @staticmethod
    def edit_duration(photo: ImageInput, reference: ImageInput | None = None, prompt: str | None = None, *,
                      settings: EditSettings | None = None, use_own_photo: bool = False, **_: object) -> int:
        """A few seconds for a reference edit; a text edit may add one InstructPix2Pix run (~0.1 s per step at 512^2
        in fp16, three UNet passes per step)."""
        if prompt is None:
            return 15
        settings = settings or EditSettings()
        return 20 + math.ceil(settings.steps * 0.15 * (settings.resolution / 512) ** 2)

    @staticmethod
    def view_duration(edit: StoredEdit, yaw: float, pitch: float) -> int:
        return 5

    @staticmethod
    def video_duration(edit: StoredEdit, folder: Path, frames: int) -> int:
        return 10 + math.ceil(frames * 0.1)

    @staticmethod
    def mesh_duration(edit: StoredEdit, folder: Path, resolution: int) -> int:
        return 10 + math.ceil(10 * (resolution / 256) ** 3)  # one resolution^3 density grid
