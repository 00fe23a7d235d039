"""Editing the frames of a portrait video or a webcam stream, one batch at a time, with one prepared reference.

    frame_editor, notes = FrameEditor.prepare(editor, reference="statue.png", settings=VideoSettings(view="source"))
    edited = frame_editor.edit(frames)   # consecutive (H, W, 3) uint8 frames; the tracker and the average carry on

Each frame is tracked (:class:`threedpe.tracking.FaceTracker`), cropped like a photo (the EG3D crop of the smoothed
landmarks), encoded with the one reference in batches, and rendered either at the frame's own head pose and pasted
back through the inverse of the crop with a feathered mask (``view="source"``: the edited person in the original
frame) or at one chosen pose (``view="fixed"``: a stabilised head). The tri-planes can be averaged across frames (an
exponential moving average, ``smooth``) against flicker, and blended with each frame's reconstruction (``strength``).
Frames without a face keep the last track for a few frames, then pass through unedited and are counted. A frame
editor pickles without the models (:meth:`FrameEditor.attach` after), so that its state can travel between calls.
Whole clip files: :mod:`threedpe.video_editing`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threedpe import cameras
from threedpe.alignment import crop_aligned, get_detector
from threedpe.cancel import CancelSignal, check
from threedpe.edit_settings import EditSettings, SettingsError
from threedpe.images import ImageInput
from threedpe.models.encoder import preprocess_input, preprocess_reference
from threedpe.pipeline import PortraitEditor, blend_strength, check_strength
from threedpe.styles import Style
from threedpe.tracking import FaceTracker, Track, TrackerSettings, crop_window
from threedpe.video import VideoError, to_uint8

VIEWS = ("source", "fixed")
# Weight of a frame's own tri-planes in the moving average (1: no averaging). "low" halves the frame-to-frame change
# of a still head's tri-planes after a few frames, "high" quarters it; both lag a moving head (by about 1 and 3 frames).
SMOOTHING = {"off": 1.0, "low": 0.6, "high": 0.35}
STAGES = ("decode", "track", "align", "encode", "render", "paste", "write")


@dataclass(frozen=True)
class VideoSettings:
    """How a clip is edited. ``view``: ``"source"`` (each frame's own head pose, pasted back) or ``"fixed"`` (the head
    at ``yaw``/``pitch`` degrees from the frontal view, the render's size); ``side_by_side``: input | output;
    ``smooth``: tri-plane averaging ``"off"``, ``"low"`` or ``"high"`` (:data:`SMOOTHING`); ``max_seconds``: longer
    clips are refused, or with ``trim`` cut to their first ``max_seconds``; ``max_resolution``: a clip whose shorter
    side is above it is scaled down to it (None: any size); ``batch_size``: frames per encode and
    render (None: :func:`default_batch_size`); ``preview``: the draft render (:meth:`EditResult.view`);
    ``feather``: width of the pasted edge, as a fraction of the crop's half side; ``strength``: the edit strength
    (0 = each frame's unedited 3D reconstruction, 1 = the edit, up to 1.5; other than 1 needs the Live3D file);
    ``flicker``: measure the flicker figure (:class:`Flicker` keeps the last input and output frames; a live stream,
    which does not show it, turns it off)."""

    view: str = "source"
    yaw: float = 0.0
    pitch: float = 0.0
    side_by_side: bool = False
    smooth: str = "low"
    max_seconds: float | None = None
    trim: bool = False
    max_resolution: int | None = None
    batch_size: int | None = None
    preview: bool = False
    feather: float = 0.2
    strength: float = 1.0
    flicker: bool = True
    tracker: TrackerSettings = TrackerSettings()

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise VideoError(f"view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        if self.smooth not in SMOOTHING:
            raise VideoError(f"smooth must be one of {', '.join(SMOOTHING)}, got {self.smooth!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise VideoError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.max_resolution is not None and self.max_resolution < 64:
            raise VideoError(f"max_resolution must be at least 64 pixels, got {self.max_resolution}")
        if self.batch_size is not None and self.batch_size < 1:
            raise VideoError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.feather <= 1:
            raise VideoError(f"feather must be in (0, 1], got {self.feather}")
        try:
            check_strength(self.strength)
        except SettingsError as error:
            raise VideoError(str(error)) from None


def default_batch_size(device: torch.device) -> int:
    """Frames per encode/render batch: 8 on a GPU with 16 GiB or more, 4 on a smaller one, 1 on the CPU (where a batch
    runs no faster per frame than single frames and costs memory)."""
    if device.type != "cuda":
        return 1
    return 8 if torch.cuda.get_device_properties(device).total_memory >= 16 * 2 ** 30 else 4


# ----------------------------------------------------------------------------------------------
# Editing frames


@dataclass
class EditedFrame:
    """One output frame (H, W, 3) uint8 and how it was made: ``status`` ``"edited"``, ``"held"`` (the face was
    missing, the last track was used) or ``"unedited"`` (no face: the input passed through)."""

    image: np.ndarray
    track: Track | None
    status: str


def feathered_mask(u: torch.Tensor, v: torch.Tensor, feather: float) -> torch.Tensor:
    """Blend weight in [0, 1] at crop coordinates u, v in [-1, 1]: 1 inside a rounded square (a superellipse of
    degree 4), falling smoothly to 0 at the crop's edge over ``feather`` of its half side."""
    radius = (u.abs() ** 4 + v.abs() ** 4) ** 0.25
    t = ((1 - radius) / feather).clamp(0, 1)
    return t * t * (3 - 2 * t)


def paste_back(frame: np.ndarray, render: torch.Tensor, track: Track, feather: float) -> tuple[np.ndarray, tuple]:
    """The render (3, S, S) in [-1, 1] of the crop of ``track`` put back into a copy of ``frame`` (H, W, 3) uint8
    through the inverse of the crop (bilinear, antialiased when it shrinks), blended by :func:`feathered_mask`; only
    the crop window's pixels go to the render's device. Returns the new frame and the (top, bottom, left, right)
    region."""
    height, width = frame.shape[:2]
    x0, y0, side_x, side_y = crop_window(track.params)
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x0 + side_x)), min(height, math.ceil(y0 + side_y))
    if right <= left or bottom <= top:
        return frame.copy(), (0, 0, 0, 0)
    target = max(2, round(min(side_x, side_y)))
    if target < render.shape[-1]:
        render = F.interpolate(render[None], size=(target, target), mode="bilinear", antialias=True,
                               align_corners=False)[0]
    xs = torch.arange(left, right, device=render.device, dtype=torch.float32)
    ys = torch.arange(top, bottom, device=render.device, dtype=torch.float32)
    u = ((xs + 0.5 - x0) / side_x * 2 - 1)[None, :].expand(len(ys), -1)
    v = ((ys + 0.5 - y0) / side_y * 2 - 1)[:, None].expand(-1, len(xs))
    grid = torch.stack([u, v], dim=-1)[None]
    pasted = F.grid_sample(render[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    mask = feathered_mask(u, v, feather)[None]
    region = torch.tensor(frame[top:bottom, left:right], device=render.device).permute(2, 0, 1).float()
    blended = region * (1 - mask) + mask * (pasted.clamp(-1, 1) + 1) * 127.5
    output = frame.copy()
    output[top:bottom, left:right] = blended.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    return output, (top, bottom, left, right)


class Flicker:
    """Mean absolute frame-to-frame change of the output over that of the input, on the face region (the crop
    window of the later frame, the same pixels in both frames), summed over consecutive edited frames: 1 means the
    edit adds no flicker of its own."""

    def __init__(self) -> None:
        self.output_change = self.input_change = 0.0
        self.pairs = 0
        self._previous: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, source: np.ndarray | None, output: np.ndarray | None, region: tuple[int, int, int, int] | None = None
            ) -> None:
        """The next frame's input and output (same shape, uint8) and its face region (top, bottom, left, right; None:
        all of it); None for a frame without an edit."""
        if source is None or output is None:
            self._previous = None
            return
        if self._previous is not None and self._previous[0].shape == source.shape:
            top, bottom, left, right = region or (0, source.shape[0], 0, source.shape[1])
            window = np.s_[top:bottom, left:right]
            if bottom > top and right > left:
                before_source, before_output = self._previous
                self.input_change += float(np.abs(source[window].astype(np.float32) - before_source[window]).mean())
                self.output_change += float(np.abs(output[window].astype(np.float32) - before_output[window]).mean())
                self.pairs += 1
        self._previous = (source, output)

    @property
    def value(self) -> float:
        """The ratio, or nan when no two consecutive frames were edited or the input's face never changed."""
        return self.output_change / self.input_change if self.pairs and self.input_change > 0 else float("nan")


class FrameEditor:
    """Edits the frames of one clip or stream with one prepared reference: keeps the face tracker, the tri-plane
    average and the flicker figure between calls. ``edit(frames)`` takes consecutive frames (one batch)."""

    def __init__(self, editor: PortraitEditor, reference: Image.Image, *, style: Style | None = None,
                 settings: VideoSettings = VideoSettings(), fps: float = 30.0):
        self.editor, self.style, self.settings = editor, style, settings
        self.reference = reference
        self.ref = preprocess_reference(reference).to(editor.device)  # prepared once for every frame
        self.tracker = FaceTracker(settings.tracker, fps=fps)
        self.flicker = Flicker()
        self.timings = {stage: 0.0 for stage in STAGES}
        self.counts = {"edited": 0, "held": 0, "unedited": 0}
        self._average: torch.Tensor | None = None

    @classmethod
    def prepare(cls, editor: PortraitEditor, reference: ImageInput | None = None, prompt: str | None = None, *,
                style: Style | None = None, align_reference: bool = False, anchor: int | str = 0,
                edit_settings: EditSettings | None = None, seed: int = 0, settings: VideoSettings = VideoSettings(),
                fps: float = 30.0, cancel: CancelSignal | None = None) -> tuple[FrameEditor, list[str]]:
        """A frame editor for a reference image or a text instruction (applied to an anchor portrait, as
        ``PortraitEditor(photo, prompt=...)`` does), and the notes about the reference."""
        if (reference is None) == (prompt is None):
            raise ValueError("give either a reference image or a text instruction (exactly one)")
        if style is not None:
            style.check_base(editor.fingerprint)
        if settings.strength != 1.0:
            editor.require_strength()  # names the Live3D file that strengths need, before any work
        anchor_index = None
        if prompt is not None:
            prompt = editor.text_reference.editor.check_instruction(prompt)
            anchor_index = editor.text_reference.anchor_index(anchor)
        image, _, _, notes = editor.reference_image(reference, prompt, align_reference=align_reference,
                                                    anchor_index=anchor_index, settings=edit_settings, seed=seed,
                                                    cancel=cancel)
        return cls(editor, image, style=style, settings=settings, fps=fps), notes

    def __getstate__(self) -> dict:
        """A pickled frame editor keeps its state without the editor, the reference's tensor and the tracker's
        detector, and with the tri-plane average on the CPU (ZeroGPU ships a live stream's frame editor to each GPU
        call and back): :meth:`attach` an editor before the next :meth:`edit`."""
        tracker = copy.copy(self.tracker)
        tracker.detector = None
        average = None if self._average is None else self._average.cpu()
        return {**self.__dict__, "editor": None, "ref": None, "tracker": tracker, "_average": average}

    def attach(self, editor: PortraitEditor) -> FrameEditor:
        """This frame editor working with ``editor`` (after unpickling; nothing to do when it already is)."""
        if self.editor is not editor or self.ref is None:
            self.editor = editor
            self.ref = preprocess_reference(self.reference).to(editor.device)
            self._average = None if self._average is None else self._average.to(editor.device)
        self.tracker.detector = self.tracker.detector or get_detector()
        return self

    @property
    def frames(self) -> int:
        """Frames edited so far (of any status)."""
        return sum(self.counts.values())

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - start
        return now

    def edit(self, frames: Sequence[np.ndarray], cancel: CancelSignal | None = None) -> list[EditedFrame]:
        """Edit consecutive frames (H, W, 3) uint8 RGB; ``cancel`` is checked before each frame's tracking and before
        the batch's encode and render."""
        start = time.perf_counter()
        tracks: list[Track | None] = []
        crops: list[Image.Image] = []
        size = self.editor.model.config.encoder.image_size
        for frame in frames:
            check(cancel, f"at frame {self.tracker.frame_index + 2}")
            track = self.tracker.update(frame)
            start = self._timed("track", start)
            tracks.append(track)
            if track is not None:
                crops.append(crop_aligned(Image.fromarray(frame), track.params, max_full_resize_pixels=0))
            start = self._timed("align", start)
        planes, renders = None, None
        if crops:
            check(cancel, "before encoding")
            x = torch.cat([preprocess_input(crop, size) for crop in crops]).to(self.editor.device)
            with torch.inference_mode():
                planes = self._average_planes(self._encode(x, crops), tracks)
            self._sync()
            start = self._timed("encode", start)
            check(cancel, "before rendering")
            views = [(t.yaw, t.pitch) if self.settings.view == "source" else (self.settings.yaw, self.settings.pitch)
                     for t in tracks if t is not None]
            yaw, pitch = zip(*(cameras.from_degrees(*view) for view in views))
            cams = cameras.camera(torch.tensor(yaw), torch.tensor(pitch)).to(self.editor.device)
            with torch.inference_mode():
                renders = self.editor.model.render(planes, cams, preview=self.settings.preview)["image"]
            self._sync()
            start = self._timed("render", start)
        edited, used = [], 0
        for frame, track in zip(frames, tracks):
            render = None
            if track is not None:
                render, used = renders[used], used + 1
            edited.append(self._compose(frame, track, render, crops[used - 1] if render is not None else None))
        self._timed("paste", start)
        return edited

    def _encode(self, x: torch.Tensor, crops: list[Image.Image]) -> torch.Tensor:
        """The tri-planes (B, 96, P, P) of the crops (x: B, 3, S, S) at the settings' strength: other than 1, the
        edit blended with each crop's unedited reconstruction (from the encode's own E_low / E_high features)."""
        ref, strength = self.ref.expand(len(crops), -1, -1, -1), self.settings.strength
        if strength == 1.0:
            return self.editor.encode(x, ref, self.style)
        planes, low, high = self.editor.encode(x, ref, self.style, keep_branches=True)
        unedited = torch.cat([self.editor.reconstruct(crop, (low[i:i + 1], high[i:i + 1]))
                              for i, crop in enumerate(crops)])
        return blend_strength(unedited, planes, strength)

    def _sync(self) -> None:
        if self.editor.device.type == "cuda":
            torch.cuda.synchronize(self.editor.device)

    def _average_planes(self, planes: torch.Tensor, tracks: list[Track | None]) -> torch.Tensor:
        """The tri-planes averaged with the previous frames' (EMA), restarting after a frame without a face."""
        weight = SMOOTHING[self.settings.smooth]
        out, index = [], 0
        for track in tracks:
            if track is None:
                self._average = None
                continue
            current = planes[index:index + 1]
            index += 1
            if weight >= 1:  # no averaging: nothing kept (a frame editor pickled between calls stays small)
                self._average = None
                out.append(current)
                continue
            self._average = current if self._average is None else weight * current + (1 - weight) * self._average
            out.append(self._average)
        return torch.cat(out)

    def _measure(self, source: np.ndarray | Image.Image | None, output: np.ndarray | None,
                 region: tuple[int, int, int, int] | None = None) -> None:
        """The flicker figure's next frame (see :meth:`Flicker.add`), when the settings measure it."""
        if self.settings.flicker:
            self.flicker.add(None if source is None else np.asarray(source), output, region)

    def _compose(self, frame: np.ndarray, track: Track | None, render: torch.Tensor | None,
                 crop: Image.Image | None) -> EditedFrame:
        """The output frame of one input frame (and its side-by-side), with the flicker figure's regions."""
        fixed = self.settings.view == "fixed"
        side = 4 * self.editor.model.config.rendering.neural_rendering_resolution  # the render's size (SR 4x)
        if render is None:  # no face: the frame unedited (in the fixed view: its centre square at the render's size)
            output = frame if not fixed else _centre_square(frame, side)
            self._measure(None, None)
            status = "unedited"
        elif fixed:
            output = to_uint8(render)
            self._measure(crop.resize(output.shape[1::-1], Image.Resampling.BILINEAR), output)
            status = "held" if track.held else "edited"
        else:
            output, (top, bottom, left, right) = paste_back(frame, render, track, self.settings.feather)
            self._measure(frame, output, (top, bottom, left, right))
            status = "held" if track.held else "edited"
        self.counts[status] += 1
        if self.settings.side_by_side:
            source = frame if not fixed else _fit_height(frame, output.shape[0])
            output = np.concatenate([source, output], axis=1)
        return EditedFrame(image=output, track=track, status=status)


def _centre_square(frame: np.ndarray, side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    s = min(height, width)
    top, left = (height - s) // 2, (width - s) // 2
    square = Image.fromarray(frame[top:top + s, left:left + s])
    return np.asarray(square.resize((side, side), Image.Resampling.BILINEAR))


def _fit_height(frame: np.ndarray, height: int) -> np.ndarray:
    width = max(2, round(frame.shape[1] * height / frame.shape[0]))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
