"""Video editing on the tiny weights, on a clip made here from the shipped photo (sway, zoom, blank frames, a tone)."""
from __future__ import annotations

import math
import os
import pickle
import re
import signal
import subprocess
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import BLANK, FPS, FRAMES, PHOTO, make_clip, sway_frames
from threedpe.alignment import LM3D_STD, crop_aligned
from threedpe.cancel import Cancelled
from threedpe.cli import main
from threedpe.pipeline import PortraitEditor
from threedpe.tracking import FaceTracker, OneEuroFilter, OneEuroParams, TrackerSettings, crop_window, head_pose
from threedpe.video import VideoError, probe_video, read_frames, write_mp4
from threedpe.frame_editing import FrameEditor, VideoSettings, paste_back
from threedpe.video_editing import edit_video

TRACKER = TrackerSettings(hold_frames=1)  # with the clip's BLANK frames: frame 8 is held, 9 and 10 pass through


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "sway.mp4", sway_frames())


@pytest.fixture(scope="module")
def editor(tiny_weights) -> PortraitEditor:
    return PortraitEditor.from_pretrained(tiny_weights)


@pytest.fixture(scope="module")
def source_edit(editor, clip, tmp_path_factory):
    """One edit in the source view, shared by the assertions below: (result, progress calls)."""
    calls = []
    result = edit_video(editor, clip, tmp_path_factory.mktemp("out") / "edited.mp4", reference=PHOTO,
                        settings=VideoSettings(view="source", tracker=TRACKER),
                        progress=lambda done, total: calls.append(done))
    return result, calls


def decoded(path: Path) -> list[np.ndarray]:
    return list(read_frames(probe_video(path)))


def test_source_view_keeps_size_fps_audio_and_every_frame_in_order(source_edit, clip):
    result, calls = source_edit
    source, edited = probe_video(clip), probe_video(result.path)
    assert (edited.size, edited.fps, edited.audio) == (source.size, source.fps, "aac")
    inputs, outputs = decoded(clip), decoded(result.path)
    assert len(outputs) == len(inputs) == result.frames == FRAMES and calls == list(range(1, FRAMES + 1))
    # each output frame is nearest to its own input frame (the edit replaces the face; the rest is the input)
    distance = np.array([[np.abs(o.astype(np.float32) - i).mean() for i in inputs] for o in outputs])
    order = distance.argmin(axis=1)
    assert all(order[k] == k for k in range(FRAMES) if k not in BLANK), order
    for k in range(FRAMES):
        if k not in BLANK:
            assert distance[k, k] > 1.0  # the face was edited, not passed through
    assert not list(result.path.parent.glob(".*.tmp"))


def test_frames_without_a_face_are_held_then_passed_through_and_counted(source_edit, clip):
    result, _ = source_edit
    assert (result.held, result.no_face) == (1, 2)
    assert any("2 of 14 frames showed no face" in note for note in result.warnings)
    outputs = decoded(result.path)
    assert max(outputs[k].max() for k in BLANK[1:]) < 8  # black in, (nearly) black out: unedited
    assert set(result.timings) == {"decode", "track", "align", "encode", "render", "paste", "write"}
    assert math.isfinite(result.flicker) and result.flicker > 0
    assert re.fullmatch(r"frames=14 seconds=[\d.]+ fps=[\d.]+ no_face=2 flicker=[\d.]+", result.summary())


def test_smoothing_lowers_the_crop_jitter(clip):
    frames = [f for k, f in enumerate(decoded(clip)) if k < BLANK[0]]

    def jitter(settings: TrackerSettings) -> float:
        tracker = FaceTracker(settings, fps=FPS)
        windows = np.array([crop_window(tracker.update(frame).params) for frame in frames])
        return float(np.abs(windows[2:] - 2 * windows[1:-1] + windows[:-2]).mean())

    raw, smoothed = jitter(TrackerSettings(smoothing=None, pose_smoothing=None)), jitter(TrackerSettings())
    assert smoothed < 0.6 * raw, (smoothed, raw)


def test_paste_back_inverts_the_crop():
    frame = sway_frames(1, blank=())[0]
    track = FaceTracker(TRACKER).update(frame)
    crop = np.asarray(crop_aligned(Image.fromarray(frame), track.params, max_full_resize_pixels=0), dtype=np.float32)
    render = torch.from_numpy(crop).permute(2, 0, 1) / 127.5 - 1  # a "render" that is the crop itself
    pasted, (top, bottom, left, right) = paste_back(frame, render, track, feather=0.2)
    x0, y0, side, _ = crop_window(track.params)
    assert (left, top) == (max(0, int(x0)), max(0, int(y0))) and right - left <= math.ceil(side) + 1
    y, x, n = int(y0 + 0.2 * side), int(x0 + 0.2 * side), int(0.6 * side)

    def error(dy: int, dx: int) -> float:  # the inner face region against the frame moved by (dy, dx)
        moved = frame[y + dy:y + dy + n, x + dx:x + dx + n]
        return float(np.abs(pasted[y:y + n, x:x + n].astype(np.float32) - moved).mean())

    # the same pixels, resampled twice (about a 0.7-pixel blur): a one-pixel misalignment would be twice the error
    assert error(0, 0) < 5 and error(0, 0) < 0.5 * min(error(0, 1), error(0, -1), error(1, 0), error(-1, 0))
    assert np.array_equal(pasted[bottom:], frame[bottom:]) and np.array_equal(pasted[:, right:], frame[:, right:])


def test_head_pose_follows_a_turn_of_the_template():
    def project(yaw_degrees: float) -> np.ndarray:
        a = math.radians(yaw_degrees)  # the head turns towards the image's right
        rotation = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        points = LM3D_STD.astype(np.float64) @ rotation.T * 200
        return np.stack([256 + points[:, 0], 256 - points[:, 1]], axis=1)

    frontal, turned = head_pose(project(0), 512), head_pose(project(20), 512)
    assert abs(frontal[0]) < 0.1 and turned[0] == pytest.approx(-20, abs=0.5)  # the camera sits to the head's left
    assert turned[1] == pytest.approx(frontal[1], abs=0.5)


def test_one_euro_filter_holds_still_and_follows_a_step():
    f = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0))
    assert f(np.array([2.0]), 0.0)[0] == 2.0 and f(np.array([2.0]), 0.04)[0] == 2.0
    values = [f(np.array([3.0]), 0.04 * k)[0] for k in range(2, 60)]
    assert 2.0 < values[0] < 2.5 and values[-1] == pytest.approx(3.0, abs=1e-3)
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_fixed_view_side_by_side_and_tri_plane_averaging(editor):
    frames = sway_frames(3, blank=())
    flicker = {}
    for smooth in ("off", "high"):
        frame_editor, _ = FrameEditor.prepare(editor, PHOTO, settings=VideoSettings(
            view="fixed", side_by_side=True, smooth=smooth, batch_size=2))
        out = frame_editor.edit(frames[:2]) + frame_editor.edit(frames[2:])
        assert [e.status for e in out] == ["edited"] * 3
        assert all(e.image.shape == (128, 256, 3) for e in out)  # input fitted to the 128^2 render | render
        flicker[smooth] = frame_editor.flicker.output_change
    assert flicker["high"] < flicker["off"]


def test_a_frame_editor_resumed_from_its_pickled_copy_edits_the_same_frames(editor):
    """How the app edits a clip in chunks of GPU calls: the frame editor (track, filters, tri-plane average, flicker)
    goes through pickle between them, and the frames come out exactly as in one pass."""
    frames, settings = sway_frames(4, side=128, blank=()), VideoSettings(batch_size=2, smooth="high")
    whole, _ = FrameEditor.prepare(editor, PHOTO, settings=settings)
    expected = [e.image for e in whole.edit(frames[:2]) + whole.edit(frames[2:])]
    first, _ = FrameEditor.prepare(editor, PHOTO, settings=settings)
    images = [e.image for e in first.edit(frames[:2])]
    resumed = pickle.loads(pickle.dumps(first)).attach(editor)
    images += [e.image for e in resumed.edit(frames[2:])]
    assert len(images) == 4 and all(np.array_equal(a, b) for a, b in zip(images, expected))
    assert resumed.frames == 4 and resumed.flicker.value == whole.flicker.value


def test_a_live_frame_editor_keeps_no_frames_when_it_measures_no_flicker(editor):
    """A live stream (flicker off) keeps no previous frames, and without smoothing no tri-plane average: what a
    ZeroGPU call ships in and out per frame shrinks; the frames themselves are the same."""
    frames = sway_frames(3, side=256, blank=())
    sizes, images = {}, {}
    for flicker, smooth in ((True, "off"), (False, "off"), (False, "low")):
        frame_editor, _ = FrameEditor.prepare(editor, PHOTO, settings=VideoSettings(flicker=flicker, smooth=smooth))
        images[flicker, smooth] = [e.image for e in frame_editor.edit(frames)]
        sizes[flicker, smooth] = len(pickle.dumps(frame_editor))
        assert math.isnan(frame_editor.flicker.value) != flicker
    assert all(np.array_equal(a, b) for a, b in zip(images[True, "off"], images[False, "off"]))
    planes = 4 * 96 * editor.model.config.rendering.neural_rendering_resolution ** 2  # a lower bound of one fp32 set
    assert sizes[True, "off"] - sizes[False, "off"] >= 2 * 256 * 256 * 3  # the two kept frames
    assert sizes[False, "low"] - sizes[False, "off"] >= planes


def test_strength_blends_each_frame_with_its_reconstruction(editor):
    """Strength 1 gives the frames of the default settings bit for bit; 0 each frame's unedited Live3D
    reconstruction (the still photo's strength 0: ``EditResult.with_strength``); 0.5 lies between the two."""
    frames = sway_frames(2, side=128, blank=())

    def fixed(strength: float | None) -> list[np.ndarray]:
        settings = VideoSettings(view="fixed", smooth="off") if strength is None else VideoSettings(
            view="fixed", smooth="off", strength=strength)
        frame_editor, _ = FrameEditor.prepare(editor, PHOTO, settings=settings)
        return [e.image.astype(np.float32) for e in frame_editor.edit(frames)]

    default, one, zero, half = fixed(None), fixed(1.0), fixed(0.0), fixed(0.5)
    assert all(np.array_equal(a, b) for a, b in zip(default, one))
    crop = crop_aligned(Image.fromarray(frames[0]), FaceTracker(TRACKER).update(frames[0]).params,
                        max_full_resize_pixels=0)
    still = editor(crop, reference=PHOTO, aligned=True)  # the first frame's crop edited as a photo
    for frame, strength in ((one[0], 1.0), (zero[0], 0.0)):
        assert np.abs(frame - np.asarray(still.with_strength(strength).view(0, 0), np.float32)).max() <= 1
    assert np.abs(zero[0] - one[0]).mean() > 0.1  # (measured 0.27 on the tiny weights: the two differ)
    for a, b, c in zip(zero, half, one):
        assert np.abs(b - a).mean() < np.abs(c - a).mean() and np.abs(b - c).mean() < np.abs(c - a).mean()
    with pytest.raises(VideoError, match="edit strength must be a number from 0"):
        VideoSettings(strength=2.0)


def test_a_stop_flag_stops_within_a_frame_and_writes_nothing(editor, clip, tmp_path):
    stop, calls = threading.Event(), []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if done == 3:
            stop.set()

    out = tmp_path / "stopped.mp4"
    with pytest.raises(Cancelled, match="at frame 4"):
        edit_video(editor, clip, out, reference=PHOTO, settings=VideoSettings(batch_size=1), cancel=stop,
                   progress=progress)
    assert calls == [1, 2, 3] and list(tmp_path.iterdir()) == []


def test_cli_fixed_view_prints_the_summary_and_ctrl_c_stops(tiny_weights, clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fixed.mp4"
    args = ["edit-video", "--weights", str(tiny_weights), "--input", str(clip), "--reference", str(PHOTO)]
    assert main(args + ["--out", str(out), "--view", "fixed", "--yaw", "20", "--side-by-side", "--smooth", "high",
                        "--max-seconds", "0.25", "--trim", "--strength", "0.7"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert re.fullmatch(r"frames=6 seconds=[\d.]+ fps=[\d.]+ no_face=0 flicker=[\d.]+", last), last
    assert "only its first 0.25 s were edited" in captured.err
    assert probe_video(out).size == (256, 128)
    assert main(args + ["--out", str(tmp_path / "strong.mp4"), "--strength", "3"]) == 2
    assert "error: the edit strength must be a number from 0" in capsys.readouterr().err

    original = FrameEditor.edit

    def interrupted(self, frames, cancel=None):  # Ctrl-C arrives while the second frame is edited
        if self.tracker.frame_index == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, frames, cancel)

    monkeypatch.setattr(FrameEditor, "edit", interrupted)
    stopped = tmp_path / "stopped.mp4"
    assert main(args + ["--out", str(stopped), "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: stopped at frame 2" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.mp4"]


@pytest.fixture(scope="module")
def bad_clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "text.mp4").write_text("not a video")
    (folder / "empty.mp4").write_bytes(b"")
    make_clip(folder / "blank.mp4", [np.zeros((96, 96, 3), np.uint8)] * 4, audio=False)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "1",
                    str(folder / "audio_only.mp4")], check=True)
    return {path.stem: path for path in folder.iterdir()}


@pytest.mark.parametrize("name, extra, message", [
    ("text", [], "text.mp4 is not a video ffmpeg can read"),
    ("empty", [], "the file empty.mp4 is empty"),
    ("missing", [], "no video file at"),
    ("audio_only", [], "not a video ffmpeg can read (no video stream"),
    ("blank", [], "no face found in any of the 4 frames of blank.mp4"),
    ("sway", ["--max-seconds", "0.2"], "above the limit of 0.2 s: cut it shorter, or edit only its first 0.2 s"),
])
def test_bad_clips_get_one_clear_line(tiny_weights, bad_clips, clip, tmp_path, capsys, name, extra, message):
    source = clip if name == "sway" else bad_clips.get(name, tmp_path / "missing.mp4")
    out = tmp_path / "out.mp4"
    assert main(["edit-video", "--weights", str(tiny_weights), "--input", str(source), "--reference", str(PHOTO),
                 "--out", str(out), *extra]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("edit video")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_rotation_metadata_is_applied(tmp_path):
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:8] = 255  # a white top edge
    stored = write_mp4([frame] * 2, tmp_path / "wide.mp4", fps=12)
    rotated = tmp_path / "phone.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-display_rotation", "90", "-i",
                    str(stored), "-c", "copy", str(rotated)], check=True)
    info = probe_video(rotated)
    first = next(read_frames(info))
    assert info.rotated and info.size == (64, 96) and first.shape == (96, 64, 3)
    assert first[:, :8].mean() > 200 or first[:, -8:].mean() > 200  # the top edge became a side


def test_settings_are_checked():
    with pytest.raises(VideoError, match="view must be one of source, fixed"):
        VideoSettings(view="sideways")
    with pytest.raises(VideoError, match="smooth must be one of"):
        VideoSettings(smooth="max")
