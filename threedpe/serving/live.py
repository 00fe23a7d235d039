"""Live webcam editing, without any UI: one stream per browser session, its reference prepared once, its frame
editor (face tracker, tri-plane average) kept between frames, frames dropped rather than queued, the achieved fps.

How frames reach :meth:`LiveSessions.frame` (gradio 6's ``.stream()``, read in its ``queueing.py`` and ``routes.py``):
a stream is one queue event that holds a worker of its ``concurrency_id`` until ``time_limit``; the browser posts
the newest camera frame every ``stream_every`` seconds, each post replacing the one before (``event.data``), and the
server calls the function again with the latest frame once the previous call has returned. So one stream never builds
a backlog: the frames that arrived while a frame was being edited are never seen. :class:`LiveSessions` counts them
as dropped (from the time since the previous frame, at the stream's rate) and, for calls that do overlap (one session
streaming twice, API callers), answers at once with no frame and counts it, never waiting for the running edit.

ZeroGPU: each frame is its own short GPU call (``EditRunner.live_frame``, a few seconds reserved) and the stream's
state stays in the main process between calls. That state is a :class:`~threedpe.frame_editing.FrameEditor`, which
pickles without its editor, reference tensor or face detector and with its tri-plane average on the CPU
(``FrameEditor.__getstate__``): the GPU worker receives it, ``attach``-es the editor, edits the frame and returns it
with its tracker and average advanced. Off ZeroGPU the same object is used in place, nothing is copied.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from threedpe.styles import Style
from threedpe.frame_editing import EditedFrame, FrameEditor, VideoSettings

FPS_WINDOW_S = 5.0  # the achieved fps is measured over the frames edited in the last this many seconds (or two)
MAX_IDLE_S = 120.0  # a stream that received no frame for this long is released (its end was never signalled)

Prepare = Callable[["LiveReference", VideoSettings, float], tuple[FrameEditor, list[str]]]
EditFrame = Callable[[FrameEditor, np.ndarray, "str | None"], tuple[EditedFrame, FrameEditor]]


@dataclass(frozen=True)
class LiveReference:
    """What a stream edits with: a reference image (a file path) or an instruction (exactly one), and optionally a
    customised style with its name. A stream's reference is prepared again only when this changes."""

    reference: str | None = None
    prompt: str | None = None
    style: Style | None = field(default=None, compare=False)
    style_name: str | None = None

    def __post_init__(self) -> None:
        if (self.reference is None) == (self.prompt is None):
            raise ValueError("give either a reference image or an instruction (exactly one)")


@dataclass(frozen=True)
class LiveStats:
    """A stream's figures: frames ``edited``, camera frames ``dropped`` (never edited: they arrived while another
    was being edited), the achieved ``fps`` (edited frames per second over the last :data:`FPS_WINDOW_S`, or
    the last two frames when they are further apart; None before two frames), the last frame's ``status``
    (``EditedFrame.status``) and ``notes`` about the reference."""

    edited: int
    dropped: int
    fps: float | None
    status: str | None
    notes: tuple[str, ...] = ()

    def markdown(self) -> str:
        fps = f"**{self.fps:.{1 if self.fps >= 1 else 2}f} fps**" if self.fps is not None else "**– fps** (measuring)"
        lines = [f"{fps} · {self.edited} frames edited · {self.dropped} dropped (camera frames that came while "
                 "another was being edited)"]
        if self.status == "unedited":
            lines.append("🙈 No face in view: the frame is shown unedited.")
        elif self.status == "held":
            lines.append("🙈 The face was lost for a moment: its last position is used.")
        lines += [f"ℹ️ {note}" for note in self.notes]
        return "\n\n".join(lines)


@dataclass(frozen=True)
class LiveFrame:
    """The answer to one camera frame: the edited ``image`` (H, W, 3) uint8, or None when the frame was dropped
    (show the previous one), and the stream's ``stats``."""

    image: np.ndarray | None
    stats: LiveStats


class LiveStream:
    """One session's stream: its reference and frame editor, whether a frame is being edited, its counts."""

    def __init__(self, now: float):
        self.reference: LiveReference | None = None
        self.frame_editor: FrameEditor | None = None
        self.notes: tuple[str, ...] = ()
        self.busy = threading.Lock()
        self.edited = self.dropped = 0
        self.finished: deque[float] = deque()
        self.arrived: float | None = None  # when the last frame arrived (None: none yet, or a preparation since)
        self.status: str | None = None
        self.touched = now

    def stats(self, now: float) -> LiveStats:
        while len(self.finished) > 2 and self.finished[0] < now - FPS_WINDOW_S:  # a slow device: the last two
            self.finished.popleft()
        span = self.finished[-1] - self.finished[0] if len(self.finished) > 1 else 0.0
        fps = (len(self.finished) - 1) / span if span > 0 else None
        return LiveStats(self.edited, self.dropped, fps, self.status, self.notes)


class LiveSessions:
    """The live streams of the page's browser sessions. ``prepare(reference, settings, fps)`` makes a stream's frame
    editor and notes; ``edit(frame_editor, frame, precision)`` edits one frame (both GPU calls in the app);
    ``stream_every``: seconds between the camera frames the browser sends (their rate is the stream's fps);
    ``clock``: seconds."""

    def __init__(self, prepare: Prepare, edit: EditFrame, stream_every: float,
                 clock: Callable[[], float] = time.monotonic):
        self.prepare, self.edit, self.stream_every, self.clock = prepare, edit, stream_every, clock
        self._streams: dict[str, LiveStream] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def frame(self, session: str, frame: np.ndarray, reference: LiveReference, settings: VideoSettings,
              precision: str | None = None) -> LiveFrame:
        """Edit the newest camera frame (H, W, 3) uint8 of ``session``'s stream (in ``precision``, None: the
        editor's), preparing its reference first when it is new or changed (a change of ``settings`` alone keeps the
        tracker and the prepared reference). A frame that arrives while the session's previous one is still being
        edited is answered at once with no image."""
        now = self.clock()
        with self._lock:
            stream = self._streams.get(session)
            if stream is None:
                self._prune(now)
                stream = self._streams[session] = LiveStream(now)
            stream.touched = now
            if not stream.busy.acquire(blocking=False):
                stream.dropped += 1
                return LiveFrame(None, stream.stats(now))
            if stream.arrived is not None:  # the camera frames sent since the last one, replaced by this one
                stream.dropped += max(0, round((now - stream.arrived) / self.stream_every) - 1)
            stream.arrived = now
        try:
            if stream.reference != reference or stream.frame_editor is None:
                stream.frame_editor, notes = self.prepare(reference, settings, 1 / self.stream_every)
                stream.reference, stream.notes = reference, tuple(notes)
                stream.arrived = self.clock()  # frames missed while preparing are not the device's slowness
            elif stream.frame_editor.settings != settings:
                stream.frame_editor.settings = replace(settings, tracker=stream.frame_editor.settings.tracker)
            edited, stream.frame_editor = self.edit(stream.frame_editor, frame, precision)
            done = self.clock()
            with self._lock:
                stream.edited += 1
                stream.finished.append(done)
                stream.status = edited.status
                return LiveFrame(edited.image, stream.stats(done))
        finally:
            stream.busy.release()

    def release(self, session: str) -> None:
        """Forget ``session``'s stream (it stopped, or the page closed); a frame already being edited finishes."""
        with self._lock:
            self._streams.pop(session, None)

    def prune(self, max_idle_s: float = MAX_IDLE_S) -> None:
        """Release the streams that received no frame for ``max_idle_s`` seconds."""
        with self._lock:
            self._prune(self.clock(), max_idle_s)

    def _prune(self, now: float, max_idle_s: float = MAX_IDLE_S) -> None:
        for session in [s for s, stream in self._streams.items() if stream.touched < now - max_idle_s]:
            del self._streams[session]
