"""The app's Video tab on tiny weights: ``edit_video`` through gradio_client, the chunked path with its state pickled
between calls as on ZeroGPU, Stop, limits and bad clips, and publishing a clip to the gallery."""
from __future__ import annotations

import pickle
import re
import subprocess
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.app_server import AppServer, app_server
from tests.fixtures import BLANK, FRAMES, PHOTO, make_clip, sway_frames
from threedpe.cancel import Cancelled
from threedpe.serving.clips import ClipLimits, edit_clip
from threedpe.serving.messages import record_markdown
from threedpe.serving.runner import EditRunner
from threedpe.serving.sessions import SessionFiles
from threedpe.video import VideoInfo, probe_video, read_frames
from threedpe.frame_editing import VideoSettings
from threedpe.video_editing import ClipPlan

SUMMARY = r"frames={} seconds=[\d.]+ fps=[\d.]+ no_face={} flicker=[\d.]+"


@pytest.fixture(scope="module")
def server() -> AppServer:
    return app_server()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The swaying test clip (with a tone), and bad inputs: text named .mp4, an empty file, a clip without a face, a
    vertical 4K phone clip of two frames."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "text.mp4").write_text("not a video")
    (folder / "empty.mp4").write_bytes(b"")
    make_clip(folder / "blank.mp4", [np.zeros((96, 96, 3), np.uint8)] * 4, audio=False)
    canvas = Image.new("RGB", (2160, 3840), (90, 90, 90))
    canvas.paste(Image.open(PHOTO).convert("RGB").resize((1536, 1536)), (312, 1152))
    make_clip(folder / "phone4k.mp4", [np.asarray(canvas)] * 2, audio=False)
    make_clip(folder / "sway.mp4", sway_frames())
    return {path.stem: path for path in folder.glob("*.mp4")}


def decoded(path: str | Path) -> list[np.ndarray]:
    return list(read_frames(probe_video(path)))


def video_path(value) -> str:
    return value["video"] if isinstance(value, dict) else value


def edit_video(client: Client, clip: Path, reference: Path | None = None, instruction: str = "", **settings):
    args = {"use_style": False, "view": "source", "yaw": 0, "pitch": 0, "side_by_side": False, "smooth": "low",
            **settings}
    return client.predict(handle_file(clip), handle_file(reference) if reference else None, instruction,
                          *args.values(), api_name="/edit_video")


@pytest.fixture(scope="module")
def api_edit(server, clips):
    """One edit of the swaying clip through the API, with the side-by-side: (client, outputs)."""
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    return client, edit_video(client, clips["sway"], server.reference, side_by_side=True)


def test_edit_video_api_keeps_every_frame_the_size_fps_and_audio(server, api_edit, clips):
    client, (edited, stacked, reference, status) = api_edit
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/edit_video"]
    assert [p["parameter_name"] for p in endpoint["parameters"][:3]] == ["clip", "reference", "instruction"]
    source, out = probe_video(clips["sway"]), probe_video(video_path(edited))
    assert (out.size, out.fps, out.audio) == (source.size, source.fps, "aac")
    inputs, outputs = decoded(clips["sway"]), decoded(video_path(edited))
    assert len(outputs) == len(inputs) == FRAMES
    distance = np.array([[np.abs(o.astype(np.float32) - i).mean() for i in inputs] for o in outputs])
    assert all(distance[k].argmin() == k and distance[k, k] > 1.0 for k in range(FRAMES) if k not in BLANK)
    assert re.search(SUMMARY.format(FRAMES, 0), status), status
    side = probe_video(video_path(stacked))
    assert side.size == (2 * source.size[0], source.size[1]) and side.audio == "aac"
    assert Path(reference).name == "reference.png" and Image.open(reference).size[0] > 0


class Forked:
    """The runner as ZeroGPU calls it: every argument and result pickled (each call runs in a forked worker), and
    the calls counted."""

    def __init__(self, runner: EditRunner):
        self.runner, self.calls = runner, []

    def __getattr__(self, name: str):
        method = getattr(self.runner, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            return pickle.loads(pickle.dumps(method(*args, **kwargs)))
        return call


class CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.lock, self.acquired = threading.Lock(), 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.acquired += 1

    def __exit__(self, *exc) -> None:
        self.lock.release()


def test_chunks_of_frames_carry_the_track_and_give_the_same_clip(server, api_edit, clips, tmp_path):
    _, (edited, *_) = api_edit
    runner = EditRunner(server.editor)
    runner._lock = CountingLock()
    work = Forked(runner)
    done = edit_clip(work, clips["sway"], tmp_path, None, ClipLimits(chunk_frames=5), reference=server.reference)
    assert work.calls == ["prepare_frames"] + ["video_frames"] * 3  # 5 + 5 + 4 frames
    # the editor is held per batch of frames (1 on the CPU), not per chunk: others' views run in between
    assert runner._lock.acquired == 1 + FRAMES
    chunked, whole = decoded(done.video), decoded(video_path(edited))
    assert len(chunked) == len(whole) == FRAMES == done.result.frames
    # the same frames, in order, up to the video encoding (each segment is encoded on its own; the frames
    # themselves are equal, see test_video_editing's resumed frame editor)
    distance = np.array([[np.abs(a.astype(np.float32) - b).mean() for b in whole] for a in chunked])
    assert all(distance[k].argmin() == k for k in range(FRAMES) if k not in BLANK) and distance.diagonal().max() < 4
    assert probe_video(done.video).audio == "aac"
    assert sorted(p.name for p in done.folder.iterdir()) == ["edit.json", "edited.mp4", "reference.png", "views.png"]
    assert [p.name for p in tmp_path.iterdir()] == [done.id]


def test_a_stop_ends_the_clip_within_a_frame_and_keeps_nothing(server, clips, tmp_path):
    sessions = SessionFiles(tmp_path)
    stop, frames = sessions.stop_flag("s1"), []

    def progress(done: int, total: int) -> None:
        frames.append(done)
        stop.set()  # Stop pressed while the first chunk's last frame was edited

    with pytest.raises(Cancelled, match="at frame 3"):
        edit_clip(EditRunner(server.editor), clips["sway"], sessions.folder("s1"), stop, ClipLimits(chunk_frames=2),
                  reference=server.reference, progress=progress)
    assert frames == [2] and [p.name for p in sessions.folder("s1").iterdir()] == [".stop"]


def test_limits_trim_a_long_clip_and_scale_down_a_large_one(server, clips, tmp_path):
    done = edit_clip(EditRunner(server.editor), clips["sway"], tmp_path, None,
                     ClipLimits(max_seconds=0.25, max_resolution=96), reference=server.reference,
                     settings=VideoSettings(view="fixed", yaw=20, side_by_side=True))
    assert done.result.frames == 6 and probe_video(done.video).size == (128, 128)  # the render's size
    assert probe_video(done.side_by_side).size == (256, 128)
    notes = " ".join(done.result.warnings)
    assert "only its first 0.25 s were edited" in notes and "edited at 96x96 (the limit is 96p)" in notes


def test_a_variable_frame_rate_clip_is_edited_at_its_nominal_rate(server, clips, tmp_path):
    """Frames 7-13 of the clip shown twice as long: ffmpeg repeats frames to the nominal rate; more frames than the
    duration's estimate still all come out (the chunk loop runs until the clip ends)."""
    vfr = tmp_path / "vfr.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(clips["sway"]), "-vf",
                    "setpts='if(lt(N,7),N,2*N-7)/(24*TB)'", "-fps_mode", "vfr", "-an", str(vfr)], check=True)
    source = probe_video(vfr)
    done = edit_clip(EditRunner(server.editor), vfr, tmp_path, None, ClipLimits(chunk_frames=8),
                     reference=server.reference)
    frames = len(list(read_frames(source)))
    assert frames > source.frames and done.result.frames == frames == len(decoded(done.video))
    assert probe_video(done.video).fps == source.fps


def test_zero_gpu_durations_follow_the_frames():
    def clip_plan(size: tuple[int, int]) -> ClipPlan:
        return ClipPlan(VideoInfo(Path("c.mp4"), size, 30.0, 10.0, 300, None, False), None, None, 300, ())

    duration = EditRunner.video_frames_duration
    small, full = clip_plan((640, 360)), clip_plan((1920, 1080))
    assert duration(None, small, Path("s.mp4"), 0, 50) < duration(None, small, Path("s.mp4"), 0, 150)
    assert duration(None, small, Path("s.mp4"), 0, 150) < duration(None, full, Path("s.mp4"), 0, 150) <= 60
    assert duration(None, full, Path("s.mp4"), 0, 150) < duration(None, full, Path("s.mp4"), 150, 150)


def test_limits_are_set_per_server_and_shown_in_the_tab(server, monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (ClipLimits.for_server(cpu).max_seconds, ClipLimits.for_server(gpu).max_seconds) == (10, 60)
    monkeypatch.setenv("THREEDPE_VIDEO_MAX_SECONDS", "25")
    assert ClipLimits.for_server(cpu) == ClipLimits(max_seconds=25, max_resolution=1080)
    monkeypatch.setenv("THREEDPE_VIDEO_MAX_SECONDS", "ten")
    with pytest.raises(ValueError, match="THREEDPE_VIDEO_MAX_SECONDS must be a number of seconds, got 'ten'"):
        ClipLimits.for_server(cpu)
    how = next(c for c in server.demo.get_config_file()["components"] if c["props"].get("elem_id") == "video-how")
    assert "up to **10 s**" in how["props"]["value"] and "**1080p**" in how["props"]["value"]


@pytest.mark.parametrize("name, message", [
    ("text", "text.mp4 is not a video ffmpeg can read"),
    ("empty", "the file empty.mp4 is empty"),
    ("blank", "no face found in any of the 4 frames of blank.mp4"),
    (None, "Upload a clip first"),
    ("sway-both", "Give either a reference image or an instruction"),
    ("sway-style", "There is no customised style in this session yet"),
    ("sway-strength", "the edit strength must be a number from 0"),
])
def test_bad_clips_and_inputs_are_messages(server, clips, name, message):
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    clip = clips.get((name or "").split("-")[0])
    args = {"sway-both": {"instruction": "make it bronze"}, "sway-strength": {"strength": 3.0}}.get(name, {})
    with pytest.raises(AppError, match=re.escape(message)) as error:
        if clip is None:
            client.predict(None, handle_file(server.reference), "", api_name="/edit_video")
        else:
            edit_video(client, clip, server.reference, use_style=name == "sway-style", **args)
    assert "Traceback" not in str(error.value) and str(server.folder) not in str(error.value)
    assert not list(server.sessions.root.glob("*/.clip-*"))


def test_a_vertical_4k_clip_is_scaled_to_1080p_with_a_notice(server, clips):
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    edited, _, _, status = edit_video(client, clips["phone4k"], server.reference)
    assert probe_video(video_path(edited)).size == (1080, 1920) and len(decoded(video_path(edited))) == 2
    assert "edited at 1080x1920 (the limit is 1080p)" in status and re.search(SUMMARY.format(2, 0), status)


def test_a_published_clip_plays_in_the_gallery(server, api_edit):
    client, _ = api_edit
    published = client.predict(False, api_name="/publish")
    record = server.gallery.get(published["id"])
    assert set(record.files) == {"strip", "video", "reference"} and record.settings["clip"] is True
    assert len(decoded(record.files["video"])) == FRAMES and record.caption == "🎬 Reference edit"
    assert Image.open(record.strip).size[1] == 256  # a few edited frames side by side
    described = record_markdown(record, "http://x/?edit=1")
    assert "### Clip edit" in described and "processing fps" in described and "3 views" not in described
    opened = client.predict(published["id"], api_name="/open_edit")
    assert video_path(opened[2]).endswith("orbit.mp4")  # the gallery's video player gets the clip


def test_a_clip_at_another_strength_keeps_it_in_its_published_record(server, clips):
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    edited, *_ = edit_video(client, clips["sway"], server.reference, strength=0.5)
    assert len(decoded(video_path(edited))) == FRAMES
    record = server.gallery.get(client.predict(False, api_name="/publish")["id"])
    assert record.settings["strength"] == 0.5 and record.settings["clip"] is True and "video" in record.files
