"""A clip edited in the app, without any UI: this server's limits, the frames edited in chunks of GPU calls (the
frame editor, picklable, carried from one call to the next), the segments joined with the clip's audio, the
side-by-side, a still of a few edited frames for the gallery, and the record that publishing reads.

A finished clip edit is a folder of the session like an edit's (``edited.mp4``, ``side_by_side.mp4`` when asked,
``views.png`` the still, ``reference.png``, ``edit.json``); it appears only complete: the work happens in a hidden
folder beside it, removed on a stop or an error.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import torch
from PIL import Image

from threedpe.files import atomic_write
from threedpe.images import ImageInput
from threedpe.serving.edits import EDIT_RECORD
from threedpe.serving.runner import on_zero_gpu
from threedpe.serving.sessions import StopFlag, stopped_if_gone
from threedpe.styles import Style
from threedpe.video import VideoError, probe_video, read_frames, run_ffmpeg
from threedpe.frame_editing import FrameEditor, VideoSettings
from threedpe.video_editing import ClipPlan, VideoEditResult, join_segments, plan_clip

ZERO_GPU_MAX_SECONDS = 10.0  # on a ZeroGPU Space: a clip's frames must fit a few short GPU calls
LOCAL_MAX_SECONDS = 60.0  # elsewhere on a GPU, unless THREEDPE_VIDEO_MAX_SECONDS says otherwise
CPU_MAX_SECONDS = 10.0  # on a CPU (seconds per frame with the real weights), unless the variable says otherwise
MAX_RESOLUTION = 1080  # a clip whose shorter side is larger is scaled down to it
CHUNK_FRAMES = 150  # frames per GPU call (about 10-20 s of GPU time at 1080p)
STRIP_FRAMES, STRIP_HEIGHT = 3, 256  # the gallery's still: a few edited frames side by side


@dataclass(frozen=True)
class ClipLimits:
    """What this server edits: clips up to ``max_seconds`` (a longer one: its beginning, with a note), frames up to
    ``max_resolution`` on their shorter side (larger: scaled down, with a note), ``chunk_frames`` per GPU call."""

    max_seconds: float = LOCAL_MAX_SECONDS
    max_resolution: int = MAX_RESOLUTION
    chunk_frames: int = CHUNK_FRAMES

    @classmethod
    def for_server(cls, device: torch.device) -> ClipLimits:
        """10 s on a ZeroGPU Space; elsewhere ``$THREEDPE_VIDEO_MAX_SECONDS``, by default 60 s when the editor runs
        on a GPU and 10 s on a CPU; 1080p everywhere."""
        if on_zero_gpu():
            return cls(max_seconds=ZERO_GPU_MAX_SECONDS)
        text = os.environ.get("THREEDPE_VIDEO_MAX_SECONDS", "").strip()
        default = LOCAL_MAX_SECONDS if device.type == "cuda" else CPU_MAX_SECONDS
        try:
            seconds = float(text) if text else default
        except ValueError:
            raise ValueError(f"THREEDPE_VIDEO_MAX_SECONDS must be a number of seconds, got {text!r}") from None
        if not seconds > 0:
            raise ValueError(f"THREEDPE_VIDEO_MAX_SECONDS must be positive, got {text!r}")
        return cls(max_seconds=seconds)

    def describe(self) -> str:
        return (f"up to **{self.max_seconds:g} s** (a longer clip: its first {self.max_seconds:g} s) and "
                f"**{self.max_resolution}p** (a larger one is scaled down)")

    def settings(self, settings: VideoSettings) -> VideoSettings:
        """``settings`` with these limits (a longer clip trimmed) and one output video (the side-by-side is made
        apart, from it)."""
        return replace(settings, max_seconds=self.max_seconds, trim=True, max_resolution=self.max_resolution,
                       side_by_side=False)


class ClipWork(Protocol):
    """The units of GPU work a clip edit calls: :class:`~threedpe.serving.runner.EditRunner`'s, or the app's
    ``@spaces.GPU`` calls of them."""

    def prepare_frames(self, reference: ImageInput | None, prompt: str | None, settings: VideoSettings, fps: float,
                       **kwargs) -> tuple[FrameEditor, list[str]]: ...

    def video_frames(self, frame_editor: FrameEditor, plan: ClipPlan, segment: Path, first: int, count: int,
                     stop: StopFlag | None = None, **kwargs) -> tuple[FrameEditor, int]: ...


@dataclass
class ClipEdit:
    """A finished clip edit: its ``folder`` in the session (named by ``id``), the edited ``video``, the
    ``side_by_side`` (input | output) when asked, the gallery's ``strip``, the ``reference`` as the editor saw it
    and the ``result`` (frames, seconds, no-face count, flicker, notes)."""

    id: str
    folder: Path
    video: Path
    side_by_side: Path | None
    strip: Path
    reference: Path
    result: VideoEditResult

    def status(self) -> str:
        """The status line: the CLI's summary, then the notes."""
        return "\n\n".join([f"✅ `{self.result.summary()}`", *(f"ℹ️ {note}" for note in self.result.warnings)])


def stack_side_by_side(plan: ClipPlan, edited: Path, out: Path) -> Path:
    """The planned part of the clip (scaled to the edited video's height) | the edited video, with its audio."""
    height = probe_video(edited).size[1]
    graph = (f"[0:v]fps={plan.info.fps:.6g},scale=-2:{height},setsar=1[a];[1:v]setsar=1[b];"
             "[a][b]hstack=inputs=2:shortest=1[v]")
    if not run_ffmpeg("-i", str(plan.info.path), "-i", str(edited), "-filter_complex", graph, "-map", "[v]", "-map",
                      "1:a:0?", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags", "+faststart",
                      str(out)):
        raise VideoError(f"could not make the side-by-side video of {plan.info.path.name}")
    return out


def clip_strip(edited: Path, frames: int, count: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> Image.Image:
    """``count`` frames spread over the edited video (of about ``frames`` frames), side by side, ``height`` high."""
    wanted = {round((k + 0.5) * frames / count) for k in range(count)}
    picked = [frame for index, frame in enumerate(read_frames(probe_video(edited))) if index in wanted]
    if not picked:
        raise VideoError(f"{edited.name} has no frames")
    widths = [max(1, round(frame.shape[1] * height / frame.shape[0])) for frame in picked]
    strip = Image.new("RGB", (sum(widths), height))
    for left, width, frame in zip(itertools.accumulate([0, *widths]), widths, picked):
        strip.paste(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS), (left, 0))
    return strip


def edit_clip(work: ClipWork, clip: str | os.PathLike, session: Path, stop: StopFlag | None, limits: ClipLimits, *,
              settings: VideoSettings = VideoSettings(), reference: ImageInput | None = None,
              prompt: str | None = None, style: tuple[str, Style] | None = None, precision: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> ClipEdit:
    """Edit ``clip`` within ``limits`` with a reference or an instruction (exactly one; ``style``: a customised
    style and its name): the reference prepared in one call of ``work``, the frames in calls of
    ``limits.chunk_frames`` each (``progress(done, total)`` after each), then joined with the audio into a new edit
    folder of ``session`` with the side-by-side when ``settings.side_by_side``. ``VideoError`` for a clip that cannot
    be edited; a stop raises ``Cancelled``; either way nothing is left behind."""
    begin = time.perf_counter()
    asked = settings
    settings = limits.settings(settings)
    plan = plan_clip(clip, settings)
    edit_id = uuid.uuid4().hex[:12]
    folder = session / f".clip-{edit_id}.tmp"
    try:
        with stopped_if_gone(stop):
            folder.mkdir()
            frame_editor, notes = work.prepare_frames(reference, prompt, settings, plan.info.fps,
                                                      style=style[1] if style else None, stop=stop)
            segments: list[Path] = []
            for first in itertools.count(0, limits.chunk_frames):
                segment = folder / f"segment{len(segments):05d}.mp4"
                frame_editor, done = work.video_frames(frame_editor, plan, segment, first, limits.chunk_frames, stop,
                                                       precision=precision)
                segments += [segment] if done else []
                if progress is not None:
                    progress(first + done, max(plan.frames, first + done))
                if done < limits.chunk_frames:
                    break
            notes = [*plan.notes, *notes, *join_segments(segments, frame_editor, plan, folder / "edited.mp4")]
            for segment in segments:
                segment.unlink(missing_ok=True)
            if asked.side_by_side:
                stack_side_by_side(plan, folder / "edited.mp4", folder / "side_by_side.mp4")
            clip_strip(folder / "edited.mp4", frame_editor.frames).save(folder / "views.png")
            frame_editor.reference.save(folder / "reference.png")
            result = VideoEditResult.of_clip(frame_editor, session / edit_id / "edited.mp4",
                                             time.perf_counter() - begin, notes)
            save_clip_record(folder, asked, plan, result, prompt, style[0] if style else None)
            os.replace(folder, session / edit_id)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    final = session / edit_id
    return ClipEdit(edit_id, final, final / "edited.mp4",
                    final / "side_by_side.mp4" if asked.side_by_side else None, final / "views.png",
                    final / "reference.png", result)


def save_clip_record(folder: Path, settings: VideoSettings, plan: ClipPlan, result: VideoEditResult,
                     prompt: str | None, style: str | None) -> None:
    """What publishing needs besides the files (``edit.json``): a clip edit (``settings["clip"]``) whose strip and
    video are ``views.png`` and ``edited.mp4``, its settings (the strength when not 1), frames and processing
    speed."""
    chosen = {"clip": True, "view": settings.view, "smooth": settings.smooth, "frames": result.frames,
              "clip_seconds": round(result.frames / plan.info.fps, 2), "fps": round(plan.info.fps, 3)}
    if settings.view == "fixed":
        chosen.update(yaw=settings.yaw, pitch=settings.pitch)
    if settings.strength != 1.0:
        chosen["strength"] = settings.strength
    chosen["processing_fps"] = round(result.fps, 2)  # the stages' seconds are not a photo edit's (the gallery's line)
    record = {"instruction": prompt, "style": style, "anchor": None, "settings": chosen, "timings": {},
              "strip": "views.png", "video": "edited.mp4"}
    atomic_write(folder / EDIT_RECORD, lambda file: file.write(json.dumps(record).encode()))

