"""Editing a portrait clip file frame by frame (:mod:`threedpe.frame_editing` edits the frames).

    editor = PortraitEditor.from_pretrained("checkpoints").to("auto")
    result = edit_video(editor, "clip.mp4", "edited.mp4", reference="statue.png", settings=VideoSettings(view="source"))
    print(result.summary())   # frames=… seconds=… fps=… no_face=… flicker=…

Frames are decoded by ffmpeg (:func:`threedpe.video.read_frames`: any container/codec it reads, rotation metadata
applied, a variable frame rate made constant at the clip's nominal rate), edited in segments of ``chunk_frames``
(:func:`edit_segment`; the app runs each segment in a GPU call of its own) and joined with the input's audio
(:func:`join_segments`). The video is written to a temporary file beside ``out`` and renamed to ``out`` only when
complete.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from threedpe.cancel import CancelSignal, Cancelled
from threedpe.edit_settings import EditSettings
from threedpe.frame_editing import FrameEditor, VideoSettings, default_batch_size
from threedpe.images import ImageInput
from threedpe.pipeline import PortraitEditor
from threedpe.styles import Style
from threedpe.video import (VideoError, VideoInfo, add_audio, pad_even, probe_video, read_frames, run_ffmpeg,
                            write_mp4)


@dataclass
class VideoEditResult:
    """``path`` the written video; ``frames`` written; ``seconds`` spent (decoding to the last write) and ``fps``
    frames per second of that; ``no_face`` frames passed through unedited, ``held`` frames edited with a held track;
    ``flicker`` (:class:`Flicker`); ``timings`` seconds per stage (:data:`STAGES`); ``warnings`` notes for the user."""

    path: Path
    frames: int
    seconds: float
    no_face: int
    held: int
    flicker: float
    timings: dict[str, float]
    reference: Image.Image
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of_clip(cls, frame_editor: FrameEditor, path: Path, seconds: float, warnings: list[str]) -> VideoEditResult:
        """The result of a clip whose frames were all edited by ``frame_editor``."""
        counts = frame_editor.counts
        return cls(path=path, frames=frame_editor.frames, seconds=seconds, no_face=counts["unedited"],
                   held=counts["held"], flicker=frame_editor.flicker.value, timings=dict(frame_editor.timings),
                   reference=frame_editor.reference, warnings=warnings)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """``frames=<n> seconds=<s> fps=<processing fps> no_face=<k> flicker=<x>`` (the CLI's last line)."""
        return (f"frames={self.frames} seconds={self.seconds:.2f} fps={self.fps:.2f} no_face={self.no_face} "
                f"flicker={self.flicker:.3f}")


def seconds_to_edit(info: VideoInfo, settings: VideoSettings) -> tuple[float | None, list[str]]:
    """How much of the clip is edited (None: all of it) and a note when it is trimmed; ``VideoError`` for a clip longer
    than ``settings.max_seconds`` without ``settings.trim``."""
    if settings.max_seconds is None or info.seconds <= settings.max_seconds:
        return None, []
    if not settings.trim:
        raise VideoError(f"the clip is {info.seconds:.1f} s long, above the limit of {settings.max_seconds:g} s: "
                         f"cut it shorter, or edit only its first {settings.max_seconds:g} s (--trim)")
    return settings.max_seconds, [f"The clip is {info.seconds:.1f} s long: only its first "
                                  f"{settings.max_seconds:g} s were edited."]


@dataclass(frozen=True)
class ClipPlan:
    """What of a clip is edited: ``info`` as probed, its first ``seconds`` (None: all), at ``size`` (width, height;
    None: the clip's own), about ``frames`` frames (estimated from the duration), and ``notes`` for the user."""

    info: VideoInfo
    seconds: float | None
    size: tuple[int, int] | None
    frames: int
    notes: tuple[str, ...]


def plan_clip(video: str | os.PathLike, settings: VideoSettings) -> ClipPlan:
    """Probe the clip and apply ``settings``' limits: ``max_seconds`` (a longer clip is refused, or trimmed with a
    note) and ``max_resolution`` (a larger clip is scaled down, keeping its aspect and even sides, with a note);
    ``VideoError`` for a clip that cannot be edited."""
    info = probe_video(video)
    seconds, notes = seconds_to_edit(info, settings)
    size, width, height = None, *info.size
    if settings.max_resolution is not None and min(width, height) > settings.max_resolution:
        scale = settings.max_resolution / min(width, height)
        size = (2 * max(1, round(width * scale / 2)), 2 * max(1, round(height * scale / 2)))
        notes.append(f"The clip is {width}x{height}: it was edited at {size[0]}x{size[1]} (the limit is "
                     f"{settings.max_resolution}p).")
    frames = min(info.frames, round(seconds * info.fps)) if seconds is not None else info.frames
    return ClipPlan(info, seconds, size, max(1, frames), tuple(notes))


def edit_segment(frame_editor: FrameEditor, plan: ClipPlan, segment: Path, first: int, count: int, *,
                 cancel: CancelSignal | None = None, progress: Callable[[int], None] | None = None,
                 hold: Callable[[], AbstractContextManager] = nullcontext) -> int:
    """Edit frames ``first`` .. ``first + count - 1`` of the planned clip (the ones before are decoded and skipped)
    in batches and write them to ``segment`` (H.264 mp4, no audio); returns how many there were: fewer than
    ``count`` at the clip's end, 0 (and no file) past it. ``progress(done)`` is called after each frame with the
    number of frames of the clip done. ``cancel`` is checked at every frame; on any error no file is left.
    ``hold()``: entered around each batch's edit (a shared editor's lock, so that others' work runs between
    batches)."""
    batch = frame_editor.settings.batch_size or default_batch_size(frame_editor.editor.device)
    timings = frame_editor.timings
    written = [0]

    def outputs() -> Iterator[np.ndarray]:
        start = time.perf_counter()
        frames = itertools.islice(read_frames(plan.info, plan.seconds, plan.size), first, first + count)
        while True:
            chunk = [frame for _, frame in zip(range(batch), frames)]
            timings["decode"] += time.perf_counter() - start
            if not chunk:
                return
            with hold():
                batch_edited = frame_editor.edit(chunk, cancel)
            for edited in batch_edited:
                start = time.perf_counter()
                yield pad_even(edited.image)
                timings["write"] += time.perf_counter() - start
                written[0] += 1
                if progress is not None:
                    progress(first + written[0])
            start = time.perf_counter()

    try:
        write_mp4(outputs(), segment, fps=plan.info.fps)
    except ValueError as error:
        if "without frames" not in str(error):
            raise
    return written[0]


def join_segments(segments: Sequence[Path], frame_editor: FrameEditor, plan: ClipPlan, out: Path) -> list[str]:
    """The edited segments of a clip, in order, with the clip's audio, as ``out`` (which appears only complete);
    ``frame_editor``: the one that edited them (its write time grows by the join's). Returns the notes about the
    frames; ``VideoError`` when the clip had no frames or no face in any of them. Temporary files go next to ``out``
    and are removed."""
    name = plan.info.path.name
    if not segments or frame_editor.frames == 0:
        raise VideoError(f"{name} has no frames")
    if frame_editor.counts["edited"] == 0:
        raise VideoError(f"no face found in any of the {frame_editor.frames} frames of {name}: "
                         "a clip of one face, frontal and well lit, works best")
    start = time.perf_counter()
    work = out.parent / f".{out.name}.{os.getpid()}.join.tmp"
    work.mkdir(parents=True, exist_ok=True)
    try:
        video = segments[0]
        if len(segments) > 1:
            listing = work / "segments.txt"
            listing.write_text("".join(f"file '{Path(path).resolve()}'\n" for path in segments))
            video = work / "joined.mp4"
            if not run_ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(video)):
                raise VideoError(f"could not join the edited parts of {name}")
        if plan.info.audio is not None:
            add_audio(video, plan.info.path, work / "muxed.mp4")
            video = work / "muxed.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(video, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    frame_editor.timings["write"] += time.perf_counter() - start
    unedited = frame_editor.counts["unedited"]
    return [f"{unedited} of {frame_editor.frames} frames showed no face and were left unedited."] if unedited else []


def edit_video(editor: PortraitEditor, video: str | os.PathLike, out: str | os.PathLike,
               reference: ImageInput | None = None, prompt: str | None = None, *, style: Style | None = None,
               settings: VideoSettings = VideoSettings(), align_reference: bool = False, anchor: int | str = 0,
               edit_settings: EditSettings | None = None, seed: int = 0, cancel: CancelSignal | None = None,
               progress: Callable[[int, int], None] | None = None, chunk_frames: int = 150) -> VideoEditResult:
    """Edit every frame of the clip ``video`` with a reference image or a text instruction (exactly one) and write an
    H.264 mp4 with the input's frame rate and audio to ``out``. ``progress(done, total)`` is called after each frame
    (``total`` estimated from the clip's duration). ``cancel`` is checked at every frame; it raises
    :class:`~threedpe.cancel.Cancelled` and nothing is written, as on any error. ``VideoError`` for a clip that
    cannot be edited (unreadable, empty, longer than ``settings.max_seconds`` without ``trim``, no face anywhere).
    The frames are edited in segments of ``chunk_frames`` (:func:`edit_segment`, one frame editor going on), then
    joined (:func:`join_segments`), as the app does across its GPU calls."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    begin = time.perf_counter()
    out = Path(out)
    plan = plan_clip(video, settings)
    frame_editor, reference_notes = FrameEditor.prepare(
        editor, reference, prompt, style=style, align_reference=align_reference, anchor=anchor,
        edit_settings=edit_settings, seed=seed, settings=settings, fps=plan.info.fps, cancel=cancel)

    def report(done: int) -> None:
        if progress is not None:
            progress(done, max(plan.frames, done))

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.{os.getpid()}.tmp"
    work.mkdir(exist_ok=True)
    try:
        segments: list[Path] = []
        try:
            for first in itertools.count(0, chunk_frames):
                segment = work / f"segment{len(segments):05d}.mp4"
                done = edit_segment(frame_editor, plan, segment, first, chunk_frames, cancel=cancel, progress=report)
                segments += [segment] if done else []
                if done < chunk_frames:
                    break
        except Cancelled as error:
            raise Cancelled(f"{error}: nothing was written") from None
        notes = list(plan.notes) + reference_notes + join_segments(segments, frame_editor, plan, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return VideoEditResult.of_clip(frame_editor, out, time.perf_counter() - begin, notes)
