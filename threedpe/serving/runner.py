"""The app's units of GPU work, without any UI: loading the editor, editing, and re-rendering edits kept as CPU arrays.

The app stores a finished edit as a :class:`~threedpe.serving.edits.StoredEdit` (tri-planes as a CPU numpy array) in
the session's ``gr.State``; the free-view sliders, the orbit video and the mesh re-render from it without re-encoding
the photo.
Every method of :class:`EditRunner` is a unit of GPU work that the app wraps in ``@spaces.GPU``; their arguments and
results are small picklable values (ZeroGPU ships them to a forked worker), the models stay module-level, and the
files they write are named for what they hold (``views.png``, ``view_yaw30_pitch0.png``, ``orbit.mp4``, ...).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from threedpe.batch import BatchJob, BatchOptions, Outcome, edit_jobs
from threedpe.cancel import Cancelled
from threedpe.weights import CheckpointError
from threedpe.training.customize import CustomizeError, StyleTrainer
from threedpe.training.samples import StyleSample, SyntheticSamples, load_generator
from threedpe.diffusion import EditSettings
from threedpe.images import ImageInput, load_image
from threedpe.models.editor import ReconstructionModel
from threedpe.models.generator import TriPlaneGenerator
from threedpe.pipeline import EditResult, PortraitEditor, check_strength, reference_notes
from threedpe.precision import recommended_precision
from threedpe.serving.edits import EditFiles, StoredEdit, strength_suffix, view_name
from threedpe.serving.messages import public_message
from threedpe.serving.sessions import StopFlag, stopped_if_gone
from threedpe.serving.style_sessions import KEPT_TRAINERS, KeptTrainers, StyleSession, TuneUpdate
from threedpe.styles import Style
from threedpe.frame_editing import EditedFrame, FrameEditor, VideoSettings
from threedpe.video_editing import ClipPlan, edit_segment

logger = logging.getLogger(__name__)

MAX_PIXELS = 25_000_000  # larger photos are refused before decoding


@dataclass(frozen=True)
class OutputSettings:
    """The app's defaults that depend on the device: orbit ``video_frames``, ``mesh_resolution``^3, the
    customisation's ``fine_tune_steps``, the 2D edit's ``text_resolution``, whether the free view shows drafts
    while a slider is dragged (``preview_while_dragging``; the full view follows on release), the editor's
    ``precision`` (``"fast"`` on a CPU that computes bfloat16 natively, see :mod:`threedpe.precision`), and whether
    live webcam frames are drawn by the draft render (``live_preview``)."""

    video_frames: int = 120
    mesh_resolution: int = 256
    fine_tune_steps: int = 300
    text_resolution: int = EditSettings.preset("quality").resolution  # InstructPix2Pix (EditSettings presets)
    preview_while_dragging: bool = False
    precision: str = "exact"
    live_preview: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> OutputSettings:
        """Full quality on a GPU; on CPU, where each takes minutes otherwise, a shorter video, a coarser mesh, a short
        fine-tune, 256^2 text references (about 4x faster), draft views while a slider is dragged and for live webcam
        frames, and bfloat16 where the CPU computes it natively (about 2x faster)."""
        if device.type == "cuda":
            return cls()
        return cls(video_frames=48, mesh_resolution=128, fine_tune_steps=10,
                   text_resolution=EditSettings.preset("fast").resolution, preview_while_dragging=True,
                   precision=recommended_precision(device), live_preview=True)


def on_zero_gpu() -> bool:
    """Whether this process serves a ZeroGPU Space (the ``spaces`` package's own setting): each GPU call then runs
    in a forked worker, and nothing it builds outlives the call."""
    from spaces.config import Config

    return Config.zero_gpu


def load_editor(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                ) -> PortraitEditor | CheckpointError:
    """The editor from ``folder``, on CUDA when present (ZeroGPU wants models there at import), else CPU.
    ``cache_dir``: where text references are cached (default ``$THREEDPE_CACHE`` or ``~/.cache/threedpe``).

    Returns (not raises) the ``CheckpointError`` of missing or broken weights, so that the app can still start
    and show the message.
    """
    try:
        return PortraitEditor.from_pretrained(folder, cache_dir=cache_dir, device="auto")
    except CheckpointError as error:
        return error


def load_text_model(editor: PortraitEditor) -> str | None:
    """Load InstructPix2Pix now (at import, as ZeroGPU requires); a message saying why text edits are off, or None."""
    try:
        editor.text_reference
    except (OSError, ValueError) as error:  # missing folder / not in the Hub cache / offline / broken config
        logger.warning("InstructPix2Pix could not be loaded from %s: %s", editor.text_model, error)
        return (f"Text edits are unavailable: InstructPix2Pix could not be loaded "
                f"({public_message(str(error)).splitlines()[0][:300]}).")
    return None


def check_upload(path: str, reference: bool = False) -> list[str]:
    """Read an uploaded file as the pipeline will; raises ``ImageError`` for anything that is not a usable image.
    Returns notes for a reference that will make a poor style prompt."""
    image = load_image(path, max_pixels=MAX_PIXELS)
    return reference_notes(image) if reference else []


def text_seconds(settings: EditSettings | None) -> int:
    """GPU seconds of one InstructPix2Pix run (~0.1 s per step at 512^2 in fp16, three UNet passes per step)."""
    settings = settings or EditSettings()
    return 5 + math.ceil(settings.steps * 0.15 * (settings.resolution / 512) ** 2)


class EditRunner:
    """The app's GPU work on one shared, read-only editor. Methods take and return picklable values; one runs at
    a time (a stopped computation finishes its current step before the next one starts).

    ``kept_trainers``: how many fine-tunes stay in memory between calls, one per browser session (default
    :data:`KEPT_TRAINERS`; none on ZeroGPU, where every call rebuilds its trainer from the session's state)."""

    def __init__(self, editor: PortraitEditor, kept_trainers: int | None = None):
        self.editor = editor
        self._lock = threading.Lock()
        self._generator: TriPlaneGenerator | None = None  # loaded on the first customisation
        self._reconstruction: ReconstructionModel | None = None
        self.trainers = KeptTrainers(
            (0 if on_zero_gpu() else KEPT_TRAINERS) if kept_trainers is None else kept_trainers)

    @property
    def kept_trainers(self) -> int:
        """How many fine-tunes stay in memory between calls (see :class:`KeptTrainers`)."""
        return self.trainers.limit

    @kept_trainers.setter
    def kept_trainers(self, limit: int) -> None:
        self.trainers.limit = limit

    def edit(self, photo: ImageInput, session: Path, stop: StopFlag | None = None, reference: ImageInput | None = None,
             prompt: str | None = None, *, align_reference: bool = False, settings: EditSettings | None = None,
             seed: int = 0, anchor: int | str = 0, use_own_photo: bool = False,
             style: tuple[str, Style] | None = None, precision: str | None = None, strength: float = 1.0) -> EditFiles:
        """Edit ``photo`` (reference image or instruction; ``style``: a customised style and its name, applied for
        this edit only; ``precision``: ``"exact"`` or ``"fast"``, None: the editor's; ``strength``: see
        :meth:`strength`), then write the aligned input, the reference, the 3-view strip, the frontal view, depth and
        ``edit.json`` into a new folder of ``session``."""
        with self._lock:
            self.editor.precision = precision or self.editor.precision  # checked; kept by this edit's renders
            photo = load_image(photo, max_pixels=MAX_PIXELS)
            if reference is not None:
                reference = load_image(reference, max_pixels=MAX_PIXELS)
            result = self.editor(photo, reference=reference, prompt=prompt, align_reference=align_reference,
                                 settings=settings, seed=seed, anchor=anchor, use_own_photo=use_own_photo,
                                 style=style[1] if style else None, cancel=stop, strength=strength)
            strip = result.strip(cancel=stop)
            view, depth = result.view(), result.depth()
            if prompt is None:
                details = {"align_reference": align_reference}
            else:
                details = {**asdict(settings or EditSettings()), "seed": seed, "own_photo": use_own_photo,
                           "anchor": None if use_own_photo else anchor}
            edit = StoredEdit.from_result(result, instruction=prompt, settings=details,
                                          style=style[0] if style else None)
        with stopped_if_gone(stop):
            return self._save(edit, session, strip, view, depth)

    def _save(self, edit: StoredEdit, session: Path, strip: Image.Image, view: Image.Image, depth: Image.Image
              ) -> EditFiles:
        """Write the edit's images (named for its strength) and record into its folder."""
        folder = edit.folder(session)
        suffix = strength_suffix(edit.strength)
        files = {"aligned": folder / "aligned.png", "reference": folder / "reference.png",
                 "views": folder / f"views{suffix}.png", "view": folder / view_name(0, 0, strength=edit.strength),
                 "depth": folder / f"depth{suffix}.png"}
        for key, image in (("aligned", edit.image), ("reference", edit.reference), ("views", strip),
                           ("view", view), ("depth", depth)):
            if key in ("views", "view", "depth") or not files[key].is_file():
                image.save(files[key])
        edit.save_record(session)
        return EditFiles(edit, **files)

    def strength(self, edit: StoredEdit, session: Path, strength: float) -> EditFiles:
        """``edit`` at another ``strength`` (in ``STRENGTH_RANGE``) without re-encoding: its 3-view strip, frontal
        view and depth rendered anew (``views_strength0.5.png``, ...); the edit (at that strength, keeping the
        unedited tri-planes that the first change away from 1 makes) is returned with them."""
        strength = check_strength(float(strength))
        with self._lock:
            if strength != 1.0:
                self.editor.require_strength()
            result = self._renderer(replace(edit, strength=1.0)).with_strength(strength)
            strip, view, depth = result.strip(), result.view(), result.depth()
            unedited = result.unedited_planes if strength != 1.0 else None
        if unedited is not None and edit.unedited is None:
            edit = replace(edit, branches=None, unedited=unedited.float().cpu().numpy())
        timings = {stage: seconds for stage, seconds in edit.timings.items() if stage not in ("video", "mesh")}
        edit = replace(edit, strength=strength, timings={**timings, "render": result.timings["render"]})
        return self._save(edit, session, strip, view, depth)

    def view(self, edit: StoredEdit, session: Path, yaw: float, pitch: float, preview: bool = False) -> Path:
        """The stored edit seen from (yaw, pitch) in degrees from frontal, written as ``view_yaw.._pitch...png``;
        ``preview``: the draft quality used while a slider is dragged (``..._preview.png``)."""
        with self._lock:
            image = self._renderer(edit).view(yaw, pitch, preview=preview)
        path = edit.folder(session) / view_name(yaw, pitch, preview, edit.strength)
        image.save(path)
        return path

    def video(self, edit: StoredEdit, session: Path, frames: int, stop: StopFlag | None = None
              ) -> tuple[Path, StoredEdit]:
        """An orbit video (``orbit.mp4``, ``orbit_strength0.5.mp4`` at another strength; ``frames`` frames) of the
        stored edit; the edit with its timing."""
        with self._lock, stopped_if_gone(stop):
            result = self._renderer(edit)
            path = result.video(edit.folder(session) / f"orbit{strength_suffix(edit.strength)}.mp4", num_frames=frames,
                                cancel=stop)
            edit = edit.timed(video=result.timings["video"])
            edit.save_record(session)
        return path, edit

    def mesh(self, edit: StoredEdit, session: Path, resolution: int, stop: StopFlag | None = None
             ) -> tuple[Path, Path, StoredEdit]:
        """The coloured mesh of the stored edit as ``mesh.glb`` and ``mesh.ply`` (``mesh_strength0.5.glb``, ... at
        another strength); the edit with its timing."""
        with self._lock, stopped_if_gone(stop):
            folder = edit.folder(session)
            result = self._renderer(edit)
            name = f"mesh{strength_suffix(edit.strength)}"
            glb, ply = result.mesh(folder / f"{name}.glb", folder / f"{name}.ply", resolution=resolution, cancel=stop)
            edit = edit.timed(mesh=result.timings["mesh"])
            edit.save_record(session)
        return glb, ply, edit

    def batch(self, jobs: list[BatchJob], out: Path, stop: StopFlag | None = None, *,
              settings: EditSettings | None = None, precision: str | None = None) -> list[Outcome]:
        """Edit ``jobs`` into the batch folder ``out`` (:func:`threedpe.batch.edit_jobs`: a photo that cannot be edited
        is recorded and the rest go on; ``settings``: the 2D edit of an instruction); their outcomes. A stop ends it
        after the current photo."""
        with self._lock, stopped_if_gone(stop):
            self.editor.precision = precision or self.editor.precision
            return edit_jobs(self.editor, jobs, out, BatchOptions(settings=settings),
                             shard=f"call-{uuid.uuid4().hex[:12]}", cancel=stop, progress=False)

    def _renderer(self, edit: StoredEdit) -> EditResult:
        """``edit`` ready to render at the precision it was made in (call with the lock held)."""
        self.editor.precision = edit.precision
        return edit.result(self.editor)

    def samples(self, instruction: str, seeds: list[int], stop: StopFlag | None = None) -> list[StyleSample]:
        """Training samples of an instruction: EG3D identities (one per seed) edited by InstructPix2Pix, cached."""
        with self._lock:
            if self._generator is None:
                self._generator = load_generator(self._weights_folder("synthetic training pairs"))
            source = SyntheticSamples(self._generator.to(self.editor.device), self.editor.text_reference.editor,
                                      instruction, cache_dir=self.editor.cache_dir / "samples")
            return list(source.samples(seeds, cancel=stop))

    def fine_tune(self, session: StyleSession, steps: int, stop: StopFlag | None = None,
                  owner: str | None = None) -> Iterator[TuneUpdate]:
        """``steps`` more fine-tuning steps of ``session``, reported as they go: an update after every step, then
        one with the state and style (the session holds only CPU data between calls). The trainer is the one kept
        from ``owner``'s (a browser session's) previous call on this customisation, else rebuilt from
        ``session.state``; it is kept for the next call unless stopped. A stop keeps the steps done."""
        trainer = self._trainer(session, owner)
        target = trainer.step + steps
        previewed = False
        try:
            while trainer.step < target:
                with self._lock:  # per step: other visitors' views are served between the steps
                    [progress] = trainer.train(max_steps=trainer.step + 1, cancel=stop)
                previewed |= progress.snapshot is not None
                yield TuneUpdate(list(trainer.curve), list(trainer.held_out_curve), progress.snapshot)
        except Cancelled:
            pass  # the finished steps are kept
        stopped = stop is not None and stop()
        with self._lock:
            # A call whose steps reached no preview mark (short or fast steps) ends with one, so each shows progress
            snapshot = trainer.snapshot(f"step {trainer.step}") if not (previewed or stopped) else None
            style = trainer.style()  # after the preview: it may add the held-out loss of this step, which the state holds
            state = trainer.state_dict()
        if owner and not stopped:
            with self._lock:
                self.trainers.keep(owner, session, trainer)
        yield TuneUpdate(list(trainer.curve), list(trainer.held_out_curve), snapshot, state=state, style=style)

    def _trainer(self, session: StyleSession, owner: str | None) -> StyleTrainer:
        """``owner``'s kept trainer when it is at ``session``'s last step, else a new one from ``session.state``
        (a copy of the editor, the objective's networks read from the weight folder, Live3D targets)."""
        with self._lock:
            kept = self.trainers.take(owner, session)
            if kept is not None:
                return kept
            folder = self._weights_folder("fine-tuning")
            if self._reconstruction is None:
                self._reconstruction = ReconstructionModel.from_pretrained(folder)
            trainer = StyleTrainer.for_editor(self.editor, session.samples, folder, session.config,
                                              source=session.source, reconstruction=self._reconstruction)
            if session.state is not None:
                trainer.load_state_dict(session.state)
            return trainer

    def release(self, owner: str | None) -> None:
        """Drop ``owner``'s kept fine-tune (its browser session ended)."""
        with self._lock:
            self.trainers.take(owner)

    def prepare_frames(self, reference: ImageInput | None, prompt: str | None, settings: VideoSettings, fps: float,
                       *, style: Style | None = None, edit_settings: EditSettings | None = None,
                       stop: StopFlag | None = None) -> tuple[FrameEditor, list[str]]:
        """The frame editor of a live stream (:mod:`threedpe.serving.live`) or a clip (:mod:`threedpe.serving.clips`):
        the reference image, or the instruction applied to the first anchor portrait, prepared once; and the notes
        about it."""
        with self._lock:
            if reference is not None:
                reference = load_image(reference, max_pixels=MAX_PIXELS)
            return FrameEditor.prepare(self.editor, reference, prompt, style=style, edit_settings=edit_settings,
                                       settings=settings, fps=fps, cancel=stop)

    def live_frame(self, frame_editor: FrameEditor, frame: np.ndarray, precision: str | None = None
                   ) -> tuple[EditedFrame, FrameEditor]:
        """The next webcam frame (H, W, 3) uint8 of a live stream, edited; and the frame editor with its tracker and
        tri-plane average advanced (the same object, or on ZeroGPU a pickled copy, see ``FrameEditor.attach``)."""
        with self._lock:
            self.editor.precision = precision or self.editor.precision
            [edited] = frame_editor.attach(self.editor).edit([frame])
        return edited, frame_editor

    def _weights_folder(self, what: str) -> Path:
        if self.editor.weights_folder is None:
            raise CustomizeError(f"{what} needs the weights in a local folder (Live3D and EG3D files beside 3dpe.pt); "
                                 "this app loaded its editor from the Hub")
        return self.editor.weights_folder

    def video_frames(self, frame_editor: FrameEditor, plan: ClipPlan, segment: Path, first: int, count: int,
                     stop: StopFlag | None = None, *, precision: str | None = None) -> tuple[FrameEditor, int]:
        """Frames ``first`` .. ``first + count - 1`` of a clip edited by ``frame_editor`` (the previous call's) into
        ``segment``, a tqdm bar counting them (the page's progress); the frame editor after them (the same object,
        or on ZeroGPU a pickled copy, see ``FrameEditor.attach``) and how many there were (fewer than ``count`` at the
        clip's end)."""
        @contextmanager
        def editing() -> Iterator[None]:  # per batch of frames: other visitors' work runs between the batches
            with self._lock:
                self.editor.precision = precision or self.editor.precision
                yield

        with tqdm(total=plan.frames, initial=first, desc="frame", unit="frame") as bar:
            def progress(done: int) -> None:
                bar.total = max(bar.total, done)
                bar.update(done - bar.n)

            done = edit_segment(frame_editor.attach(self.editor), plan, segment, first, count, cancel=stop,
                                progress=progress, hold=editing)
            return frame_editor, done

    def anchor(self, name: str) -> Image.Image:
        """The anchor portrait ``name`` (an EG3D sample is rendered on first use, then cached on disk)."""
        with self._lock:
            return self.editor.anchors[self.editor.text_reference.anchor_index(name)].image()

    # ZeroGPU durations (seconds of GPU time to reserve), from the same arguments as the methods above.
    @staticmethod
    def edit_duration(photo: ImageInput, session: Path, stop: StopFlag | None = None,
                      reference: ImageInput | None = None, prompt: str | None = None, *,
                      settings: EditSettings | None = None, **_: object) -> int:
        """A few seconds for a reference edit; a text edit may add one InstructPix2Pix run (~0.1 s per step at 512^2
        in fp16, three UNet passes per step)."""
        return 15 if prompt is None else 15 + text_seconds(settings)

    @staticmethod
    def batch_duration(jobs: list[BatchJob], out: Path, stop: StopFlag | None = None, *,
                       settings: EditSettings | None = None, **_: object) -> int:
        """A few seconds per photo (align, encode, the 3-view strip, its files), and an InstructPix2Pix run for each
        instruction."""
        instructions = {job.prompt for job in jobs if job.prompt is not None}
        return 10 + 3 * len(jobs) + len(instructions) * text_seconds(settings)

    @staticmethod
    def view_duration(edit: StoredEdit, session: Path, yaw: float, pitch: float, preview: bool = False) -> int:
        return 5

    @staticmethod
    def strength_duration(edit: StoredEdit, session: Path, strength: float) -> int:
        return 10  # Live3D's final encoder once, then the strip, the view and depth

    @staticmethod
    def video_duration(edit: StoredEdit, session: Path, frames: int, stop: StopFlag | None = None) -> int:
        return 10 + math.ceil(frames * 0.1)

    @staticmethod
    def mesh_duration(edit: StoredEdit, session: Path, resolution: int, stop: StopFlag | None = None) -> int:
        return 10 + math.ceil(10 * (resolution / 256) ** 3)  # one resolution^3 density grid

    @staticmethod
    def prepare_frames_duration(reference: ImageInput | None, prompt: str | None, settings: VideoSettings,
                                fps: float, *, edit_settings: EditSettings | None = None, **_: object) -> int:
        return EditRunner.edit_duration(reference, Path(), prompt=prompt, settings=edit_settings)  # as an edit's

    @staticmethod
    def live_frame_duration(frame_editor: FrameEditor, frame: np.ndarray, precision: str | None = None) -> int:
        return 5  # one frame: tracking, one encode, one render (a short request keeps the visitor's queue priority)

    @staticmethod
    def video_frames_duration(frame_editor: FrameEditor, plan: ClipPlan, segment: Path, first: int, count: int,
                              stop: StopFlag | None = None, **_: object) -> int:
        """About 0.1 s per frame for the editor and 0.1 s more per 1080p frame for tracking, pasting and encoding, and
        the frames before ``first`` decoded again (about 5 ms each at 1080p)."""
        width, height = plan.size or plan.info.size
        megapixels = width * height / (1920 * 1080)
        return 10 + math.ceil(count * (0.1 + 0.1 * megapixels) + first * 0.005 * megapixels)

    @staticmethod
    def anchor_duration(name: str) -> int:
        return 10

    @staticmethod
    def samples_duration(instruction: str, seeds: list[int], stop: StopFlag | None = None) -> int:
        return 20 + 4 * len(seeds)  # an EG3D render and a 20-step InstructPix2Pix edit per sample

    @staticmethod
    def fine_tune_duration(session: StyleSession, steps: int, stop: StopFlag | None = None,
                           owner: str | None = None) -> int:
        return 30 + math.ceil(steps * 0.6)  # model copies and Live3D targets, then about 0.5 s per step

