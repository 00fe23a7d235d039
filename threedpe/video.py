"""Video files in and out: orbit videos of a tri-plane portrait (frames rendered along the official camera path,
encoded H.264), and clips read back (:func:`probe_video`, :func:`read_frames`), with the ffmpeg steps on whole files
(audio copied in, even frame sizes).

Frames are produced batch by batch and streamed into ffmpeg (the binary bundled with imageio-ffmpeg,
no system ffmpeg), so a 288-frame 512x512 orbit never sits in memory as a whole. The official 3DPE
video is 288 frames at 60 fps, libx264, on :func:`threedpe.cameras.orbit_path`.
"""
from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from threedpe import cameras
from threedpe.cancel import CancelSignal, check
from threedpe.models.rendering import TriplaneRenderer

ORBIT_FRAMES = 288
ORBIT_FPS = 60


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Images (3, H, W) or (B, 3, H, W) in [-1, 1] -> (H, W, 3) or (B, H, W, 3) uint8.

    Each value becomes round((clamp(x, -1, 1) + 1) / 2 * 255), to the nearest integer (halves to even).
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected an image (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    pixels = ((image.detach().float().clamp(-1, 1) + 1) * (255 / 2)).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def to_image(image: torch.Tensor, size: int) -> Image.Image:
    """A generator's image (3, H, W) in [-1, 1] as a ``size``^2 RGB image: generators whose output is not ``size``
    pixels on a side (EG3D's 128^2 ShapeNet model, the tiny weight set's 64^2 one) are resized bicubically."""
    rendered = Image.fromarray(to_uint8(image))
    return rendered if rendered.size == (size, size) else rendered.resize((size, size), Image.Resampling.BICUBIC)


def triplane_view(renderer: TriplaneRenderer, planes: torch.Tensor, deterministic: bool = True,
                  preview: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    """A ``render_view`` for :func:`render_orbit`: cameras (N, 25) -> frames (N, H, W, 3) uint8 of ``planes``.

    planes (1, 96, P, P) on the renderer's device; each call renders N views of them in one batch that shares the
    tri-plane (``renderer(...)['image']``, ``preview`` as there).
    """
    if planes.dim() != 4 or planes.shape[0] != 1:
        raise ValueError(f"expected one tri-plane (1, 96, P, P), got shape {tuple(planes.shape)}")

    def render_view(cams: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            cams = cams.to(planes.device)
            image = renderer(planes, cams, deterministic=deterministic, preview=preview)["image"]
        return to_uint8(image)

    return render_view


def render_orbit(render_view: Callable[[torch.Tensor], np.ndarray], num_frames: int = ORBIT_FRAMES,
                 batch: int = 4, cancel: CancelSignal | None = None) -> Iterator[np.ndarray]:
    """Yield the frames (H, W, 3) uint8 of an orbit along :func:`cameras.orbit_path`, one at a time.

    ``render_view`` gets the cameras (N, 25) of up to ``batch`` consecutive frames and returns their frames
    (N, H, W, 3) uint8. A tqdm bar counts frames; ``cancel`` is checked before each batch and raises
    :class:`~threedpe.cancel.Cancelled` when it is set.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    path = cameras.orbit_path(num_frames)
    with tqdm(total=num_frames, desc="orbit video", unit="frame") as progress:
        for start in range(0, num_frames, batch):
            check(cancel, f"the orbit video after {start} of {num_frames} frames")
            yaw, pitch = zip(*path[start:start + batch])
            cams = cameras.camera(torch.tensor(yaw), torch.tensor(pitch))
            frames = render_view(cams)
            if len(frames) != cams.shape[0]:
                raise ValueError(f"render_view returned {len(frames)} frames for {cams.shape[0]} cameras")
            for frame in frames:
                yield frame
            progress.update(cams.shape[0])


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        kind = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames must be (H, W, 3) uint8 arrays, got a {kind}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"all frames must have the same size: {frame.shape[:2]} after {size}")


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = ORBIT_FPS) -> Path:
    """Encode frames (H, W, 3) uint8 to an H.264 (libx264, yuv420p) mp4 at ``path``; returns the path.

    Frames are streamed to ffmpeg as they come. yuv420p needs an even width and height: other sizes
    raise instead of being resized. On any error the partial file is removed.
    """
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("cannot write a video without frames")
    _check_frame(first, None)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {height}x{width} (pad or crop the frames)")
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-movflags", "+faststart"])
    complete = False
    try:
        writer.send(None)
        writer.send(np.ascontiguousarray(first))
        for frame in iterator:
            _check_frame(frame, (height, width))
            writer.send(np.ascontiguousarray(frame))
        complete = True
    finally:
        writer.close()
        if not complete:
            path.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# Clips: reading, and ffmpeg on whole files


class VideoError(ValueError):
    """The clip cannot be edited (unreadable, empty, too long, no face in any frame); the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    """A clip as ffmpeg reads it: ``size`` (width, height) after rotation, ``fps`` nominal rate, ``seconds``,
    ``frames`` (estimated from both), ``audio`` codec name or None, ``rotated`` whether rotation metadata turned the
    stored frames (ffmpeg applies it: frames come in display orientation)."""

    path: Path
    size: tuple[int, int]
    fps: float
    seconds: float
    frames: int
    audio: str | None
    rotated: bool


@contextmanager
def _quiet_imageio() -> Iterator[None]:
    """imageio-ffmpeg logs a warning for every rotated clip (stored and display sizes differ): expected here."""
    logger = logging.getLogger("imageio_ffmpeg")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ffmpeg_meta(path: Path) -> dict:
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        with _quiet_imageio():
            return next(reader)
    except (OSError, RuntimeError, StopIteration, IndexError, ValueError, KeyError, AttributeError):
        raise VideoError(f"{path.name} is not a video ffmpeg can read (no video stream found in it)") from None
    finally:
        reader.close()


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """What ffmpeg reports about the clip at ``path``; ``VideoError`` for a missing, empty or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"no video file at {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"the file {path.name} is empty")
    meta = _ffmpeg_meta(path)
    width, height = meta.get("size", (0, 0))
    fps, seconds = float(meta.get("fps") or 0), float(meta.get("duration") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(f"{path.name} has no video stream")
    if fps <= 0:
        raise VideoError(f"{path.name} does not state a frame rate ffmpeg can read")
    return VideoInfo(path=path, size=(int(width), int(height)), fps=fps, seconds=seconds,
                     frames=max(1, round(seconds * fps)), audio=meta.get("audio_codec"),
                     rotated=tuple(meta.get("source_size", (width, height))) != (width, height))


def read_frames(info: VideoInfo, seconds: float | None = None, size: tuple[int, int] | None = None
                ) -> Iterator[np.ndarray]:
    """Frames (H, W, 3) uint8 RGB in display orientation, at the constant rate ``info.fps`` (a variable-rate clip has
    frames repeated or dropped to it), the first ``seconds`` only when given, scaled to ``size`` (width, height)
    when given."""
    output = ["-r", f"{info.fps:.6g}"] + (["-t", f"{seconds:.6g}"] if seconds is not None else [])
    if size is not None and tuple(size) != info.size:
        output += ["-vf", f"scale={size[0]}:{size[1]}:flags=area"]
    reader = imageio_ffmpeg.read_frames(str(info.path), output_params=output)
    try:
        with _quiet_imageio():
            meta = next(reader)
        width, height = meta["size"]
        for data in reader:
            yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    finally:
        reader.close()


def pad_even(frame: np.ndarray) -> np.ndarray:
    """H.264 yuv420p needs even sides: an odd side gets one repeated row/column."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def run_ffmpeg(*args: str) -> bool:
    """Run the imageio-ffmpeg binary quietly; whether it succeeded."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args]
    return subprocess.run(command, capture_output=True).returncode == 0


def add_audio(video: Path, source: Path, out: Path) -> None:
    """``video`` with the first audio stream of ``source`` (copied; re-encoded to AAC when mp4 cannot hold it)."""
    for codec in (["copy"], ["aac", "-b:a", "192k"]):
        if run_ffmpeg("-i", str(video), "-i", str(source), "-map", "0:v:0", "-map", "1:a:0?", "-c:v", "copy", "-c:a",
                   *codec, "-shortest", "-movflags", "+faststart", str(out)):
            return
    raise VideoError(f"could not copy the audio of {source.name} into the edited video")
