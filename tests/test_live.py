"""Live webcam editing without the UI (threedpe/serving/live.py): the reference prepared once per stream, the tracker
kept per session, frames dropped rather than queued, the fps figure, the streams released; on the tiny weights and
with fake GPU calls where timing matters."""
from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from threedpe.pipeline import PortraitEditor
from threedpe.serving.live import FPS_WINDOW_S, LiveReference, LiveSessions
from threedpe.serving.runner import EditRunner
from threedpe.frame_editing import EditedFrame, VideoSettings

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "astronaut.jpg"
REFERENCE = LiveReference(reference=str(ROOT / "examples" / "anchors" / "astronaut_flip.png"))
SETTINGS = VideoSettings(view="source", preview=True)


def webcam_frames(count: int, side: int = 160) -> list[np.ndarray]:
    """The shipped photo as a webcam sees it: a few pixels of sway per frame."""
    photo = Image.open(PHOTO).convert("RGB")
    return [np.asarray(photo.resize((side, side), box=(40 + 3 * i, 20 + 2 * i, 472 + 3 * i, 452 + 2 * i)))
            for i in range(count)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeWork:
    """Counting stand-ins for the GPU calls: a preparation gives a fresh object; an edit returns the frame (after
    ``edit_seconds`` of the fake clock, or until ``release`` is set when ``block``)."""

    def __init__(self, clock: Clock, edit_seconds: float = 0.0, block: bool = False):
        self.clock, self.edit_seconds, self.block = clock, edit_seconds, block
        self.prepared: list[LiveReference] = []
        self.edited = 0
        self.started, self.release = threading.Event(), threading.Event()

    def prepare(self, reference, settings, fps):
        self.prepared.append(reference)
        return type("FakeFrameEditor", (), {"settings": settings})(), ["a note"]

    def edit(self, frame_editor, frame, precision):
        self.edited += 1
        self.started.set()
        if self.block:
            assert self.release.wait(30)
        self.clock.now += self.edit_seconds
        return EditedFrame(image=frame, track=None, status="edited"), frame_editor


def test_reference_prepared_once_per_stream_and_again_when_it_changes():
    clock = Clock()
    work = FakeWork(clock)
    live = LiveSessions(work.prepare, work.edit, stream_every=0.1, clock=clock)
    frame = np.zeros((8, 8, 3), np.uint8)
    for _ in range(5):
        clock.now += 0.1
        assert live.frame("a", frame, REFERENCE, SETTINGS).image is frame
    assert work.prepared == [REFERENCE] and work.edited == 5
    clock.now += 0.1
    live.frame("a", frame, REFERENCE, VideoSettings(view="fixed", preview=True))  # the view alone: kept
    assert len(work.prepared) == 1
    other = LiveReference(prompt="Turn her into a bronze statue")
    stats = live.frame("a", frame, other, SETTINGS).stats
    assert work.prepared == [REFERENCE, other]
    assert stats.edited == 7 and stats.dropped == 0 and stats.notes == ("a note",)
    styled = LiveReference(prompt="Turn her into a bronze statue", style=object(), style_name="bronze (10 steps)")
    live.frame("a", frame, styled, SETTINGS)  # a customised style: prepared with it
    live.frame("a", frame, LiveReference(prompt=styled.prompt, style=object(), style_name="bronze (10 steps)"),
               SETTINGS)  # the same style: kept
    live.frame("a", frame, LiveReference(prompt=styled.prompt, style=object(), style_name="bronze (20 steps)"),
               SETTINGS)  # trained further: prepared again
    assert [reference.style_name for reference in work.prepared[2:]] == ["bronze (10 steps)", "bronze (20 steps)"]
    assert work.prepared[2].style is styled.style
    with pytest.raises(ValueError, match="exactly one"):
        LiveReference()


def test_frames_arriving_while_busy_are_dropped_not_queued():
    clock = Clock()
    work = FakeWork(clock, block=True)
    live = LiveSessions(work.prepare, work.edit, stream_every=0.1, clock=clock)
    frame = np.zeros((8, 8, 3), np.uint8)
    results = []
    first = threading.Thread(target=lambda: results.append(live.frame("a", frame, REFERENCE, SETTINGS)))
    first.start()
    assert work.started.wait(30)
    busy = [live.frame("a", frame, REFERENCE, SETTINGS) for _ in range(3)]  # answered at once, the edit still runs
    assert [r.image for r in busy] == [None] * 3 and busy[-1].stats.dropped == 3
    work.release.set()
    first.join(30)
    assert results[0].image is frame
    assert work.edited == 1  # no backlog: the dropped frames are never edited later
    clock.now += 0.1
    assert live.frame("a", frame, REFERENCE, SETTINGS).stats.edited == 2


def test_fps_over_a_sliding_window_and_frames_replaced_while_editing():
    clock = Clock()
    work = FakeWork(clock, edit_seconds=0.25)  # a camera frame every 0.1 s, an edit every 0.25 s
    live = LiveSessions(work.prepare, work.edit, stream_every=0.1, clock=clock)
    frame = np.zeros((8, 8, 3), np.uint8)
    stats = [live.frame("a", frame, REFERENCE, SETTINGS).stats for _ in range(int(2 * FPS_WINDOW_S / 0.25))]
    assert stats[0].fps is None  # one frame: nothing to measure yet
    assert stats[-1].fps == pytest.approx(4.0)
    # each call came 0.25 s after the previous one: the one or two frames the camera sent meanwhile were replaced
    assert stats[-1].dropped == sum(round(0.25 / 0.1) - 1 for _ in stats[1:])
    clock.now += 1.0  # the device slows down: the window follows
    for _ in range(int(FPS_WINDOW_S)):
        clock.now += 0.75
        last = live.frame("a", frame, REFERENCE, SETTINGS).stats
    assert last.fps == pytest.approx(1.0)
    assert "1.0 fps" in last.markdown() and f"{last.dropped} dropped" in last.markdown()
    for _ in range(2):  # slower than the window: the last two frames
        clock.now += 7.75
        last = live.frame("a", frame, REFERENCE, SETTINGS).stats
    assert last.fps == pytest.approx(0.125) and "0.12 fps" in last.markdown()


def test_streams_released_on_stop_and_pruned_by_age():
    clock = Clock()
    work = FakeWork(clock)
    live = LiveSessions(work.prepare, work.edit, stream_every=0.1, clock=clock)
    frame = np.zeros((8, 8, 3), np.uint8)
    live.frame("a", frame, REFERENCE, SETTINGS)
    live.frame("b", frame, REFERENCE, SETTINGS)
    live.release("a")
    assert len(live) == 1
    live.frame("a", frame, REFERENCE, SETTINGS)  # a new stream: prepared again
    assert len(work.prepared) == 3
    clock.now += 60
    live.frame("a", frame, REFERENCE, SETTINGS)
    live.prune(max_idle_s=30)
    assert len(live) == 1  # b received nothing for 60 s
    clock.now += 31
    live.prune(max_idle_s=30)
    assert len(live) == 0


@pytest.fixture(scope="module")
def runner(tiny_weights) -> EditRunner:
    return EditRunner(PortraitEditor.from_pretrained(tiny_weights))


def test_tracker_kept_per_session_and_separate_between_sessions(runner, one_thread):
    prepared = []

    def prepare(reference, settings, fps):
        prepared.append(reference)
        return runner.prepare_frames(reference.reference, reference.prompt, settings, fps)

    live = LiveSessions(prepare, runner.live_frame, stream_every=0.1)
    frames = webcam_frames(4)
    for frame in frames[:3]:
        shown = live.frame("a", frame, REFERENCE, SETTINGS)
    assert shown.image.shape == frames[0].shape and shown.stats.status == "edited"
    assert not np.array_equal(shown.image, frames[2])  # the face was edited and pasted back
    live.frame("b", frames[3], REFERENCE, SETTINGS)
    a, b = live._streams["a"].frame_editor, live._streams["b"].frame_editor
    assert a is not b and a.tracker is not b.tracker
    assert (a.tracker.frame_index, b.tracker.frame_index) == (2, 0)
    assert a.counts["edited"] == 3 and len(prepared) == 2

    # ZeroGPU ships the frame editor to each GPU call and back: it pickles without the editor, and carries on
    shipped = pickle.loads(pickle.dumps(a))
    assert shipped.editor is None and shipped.tracker.detector is None
    edited, shipped = runner.live_frame(shipped, frames[3])
    assert edited.status == "edited" and shipped.tracker.frame_index == 3 and shipped.counts["edited"] == 4
