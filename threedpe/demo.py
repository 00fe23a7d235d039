"""What the Gradio Space (``app.py``) runs, without any UI: loading, per-session folders, stop flags, rate limits,
and edits kept as CPU arrays.

The app stores a finished edit as a :class:`StoredEdit` (tri-planes as a CPU numpy array) in the session's
``gr.State``; the free-view sliders, the orbit video and the mesh re-render from it without re-encoding the photo.
Every method of :class:`DemoRunner` is a unit of GPU work that the app wraps in ``@spaces.GPU``; their arguments and
results are small picklable values (ZeroGPU ships them to a forked worker), the models stay module-level, and the
files they write are named for what they hold (``views.png``, ``view_yaw30_pitch0.png``, ``orbit.mp4``, ...).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from PIL import Image

from threedpe.cancel import Cancelled
from threedpe.weights import CheckpointError, MissingWeightsError
from threedpe.diffusion import EditSettings
from threedpe.files import atomic_write
from threedpe.gallery import Gallery, GalleryError, Published, Record
from threedpe.images import ImageInput, load_image
from threedpe.training.customize import CustomizeConfig, CustomizeError, Snapshot, StyleTrainer
from threedpe.training.samples import StyleSample, SyntheticSamples, load_generator, photo_pairs, usable
from threedpe.models.editor import ReconstructionModel
from threedpe.models.generator import TriPlaneGenerator
from threedpe.pipeline import EditResult, PortraitEditor, reference_notes
from threedpe.styles import Style

logger = logging.getLogger(__name__)

MAX_YAW_DEGREES = 45.0  # slider ranges of the free view
MAX_PITCH_DEGREES = 30.0
MAX_UPLOAD = "20mb"  # gradio's upload limit
MAX_PIXELS = 25_000_000  # larger photos are refused before decoding
EDITS_PER_WINDOW, RATE_WINDOW_S = 30, 600.0  # per browser session
EDIT_RECORD = "edit.json"  # in each edit's folder: what publishing needs besides the files
SAMPLES_PER_CALL, TUNE_STEPS_PER_CALL = 2, 10  # customisation work per GPU call (ZeroGPU quotas, visible progress)
KEPT_TRAINERS = 4  # off ZeroGPU: fine-tunes kept between calls (one per browser session, the least recent dropped)
STOP_WAIT_S = 30.0  # how long a Stop waits for the stopped work to reach its next check (a frame, chunk or step)


@dataclass(frozen=True)
class OutputSettings:
    """The app's defaults that depend on the device: orbit ``video_frames``, ``mesh_resolution``^3, the
    customisation's ``fine_tune_steps``, the 2D edit's ``text_resolution``, and whether the free view shows drafts
    while a slider is dragged (``preview_while_dragging``; the full view follows on release)."""

    video_frames: int = 120
    mesh_resolution: int = 256
    fine_tune_steps: int = 300
    text_resolution: int = EditSettings.preset("quality").resolution  # InstructPix2Pix (EditSettings presets)
    preview_while_dragging: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> OutputSettings:
        """Full quality on a GPU; on CPU, where each takes minutes otherwise, a shorter video, a coarser mesh, a short
        fine-tune, 256^2 text references (about 4x faster) and draft views while a slider is dragged."""
        if device.type == "cuda":
            return cls()
        return cls(video_frames=48, mesh_resolution=128, fine_tune_steps=10,
                   text_resolution=EditSettings.preset("fast").resolution, preview_while_dragging=True)


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


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"`()]+[/\\])+([^\s/\\'\"`()]*)")


def public_message(text: str) -> str:
    """``text`` with every absolute path shortened to its last part: web visitors never see the server's layout
    (the full message goes to the server log)."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "…", text)


def disabled_reason(error: CheckpointError) -> str:
    """One line for visitors saying why editing is off (no server paths)."""
    if isinstance(error, MissingWeightsError) and error.filename:
        return f"Editing is disabled: the weight file `{error.filename}` is not installed on this server."
    return f"Editing is disabled: the weights could not be loaded ({public_message(str(error))})."


def folder_name(error: CheckpointError) -> str:
    """The weight folder that ``error`` looked in, by its name alone (``checkpoints/``, ``tiny/``; never the server's
    path to it), or "the weight folder" when it is not known."""
    folder = getattr(error, "folder", None)
    name = Path(folder).expanduser().absolute().name if folder is not None else ""
    return f"`{name}/`" if name else "the weight folder"


def weights_notice(editor: PortraitEditor | CheckpointError, text_error: str | None = None) -> str:
    """Markdown telling the visitor what the loaded weights are: missing (and how to get them), untrained, or fine.
    It names files and the weight folder by their names, never by the server's absolute paths."""
    if isinstance(editor, CheckpointError):
        return (f"### ⚠️ {disabled_reason(editor)}\n"
                f"Whoever runs this app can put the released files in {folder_name(editor)}, the weight folder it "
                "was started with (sources and licences: `checkpoints/README.md`), or start it with "
                "`python app.py --weights DIR`. To try the interface without downloads: "
                "`python -m threedpe tiny-weights DIR` writes an untrained set.")
    notes = []
    if editor.untrained:
        notes.append("### ⚠️ Untrained weights\nThis app runs on randomly initialised (untrained) weights: the "
                     "pipeline works end to end, but every output is noise. Load the released 3DPE weights for "
                     "real edits.")
    if text_error:
        notes.append(f"**{text_error}**")
    return "\n\n".join(notes)


@dataclass
class StoredEdit:
    """A finished edit as plain CPU data: ``planes`` (1, 96, P, P) float32, the aligned input and the reference
    (RGB images), seconds per stage, notes for the user, the anchor's label (text edits), what produced it (the
    instruction of a text edit, the settings, a style's name), and ``id``, which names the edit's folder of output
    files."""

    planes: np.ndarray
    image: Image.Image
    reference: Image.Image
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    anchor: str | None = None
    instruction: str | None = None
    settings: dict = field(default_factory=dict)
    style: str | None = None
    path: str = ""  # how the editor ran (EditResult.execution), e.g. "cpu fp32, ..., folded channels-last SR"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def from_result(cls, result: EditResult, **details) -> StoredEdit:
        return cls(planes=result.planes.detach().float().cpu().numpy(), image=result.image,
                   reference=result.reference, timings=dict(result.timings), notes=list(result.warnings),
                   anchor=result.anchor, path=result.execution, **details)

    def result(self, editor: PortraitEditor) -> EditResult:
        """An ``EditResult`` that renders these tri-planes with ``editor`` (no re-encoding)."""
        planes = torch.from_numpy(self.planes).to(editor.device)
        return EditResult(planes=planes, image=self.image, reference=self.reference, editor=editor)

    def timed(self, **seconds: float) -> StoredEdit:
        """A copy with more stage timings (the stored planes are shared, not copied)."""
        return replace(self, timings={**self.timings, **seconds})

    def folder(self, session: Path) -> Path:
        """This edit's output folder inside the session's folder (never re-creating a session folder that was removed
        when its visitor left: that raises ``FileNotFoundError``)."""
        folder = session / self.id
        folder.mkdir(exist_ok=True)
        return folder

    def save_record(self, session: Path) -> None:
        """What publishing needs besides the files (instruction, style, settings, timings), as ``edit.json`` in the
        edit's folder; rewritten when the video or mesh adds a timing."""
        record = {"instruction": self.instruction, "style": self.style, "anchor": self.anchor,
                  "settings": self.settings, "timings": {key: round(value, 3) for key, value in self.timings.items()}}
        atomic_write(self.folder(session) / EDIT_RECORD, lambda file: file.write(json.dumps(record).encode()))


@dataclass
class EditFiles:
    """What the page shows right after an edit: the stored edit and its image files (aligned input, reference,
    3-view strip, frontal view, depth)."""

    edit: StoredEdit
    aligned: Path
    reference: Path
    views: Path
    view: Path
    depth: Path


STAGE_LABELS = {"align": "align", "reference": "reference", "encode": "encode", "render": "render (3 views + depth)",
                "video": "orbit video", "mesh": "mesh"}


SETTING_LABELS = {"steps": "InstructPix2Pix steps", "text_guidance": "text guidance",
                  "image_guidance": "image guidance", "resolution": "2D edit resolution", "seed": "seed"}


def timings_line(timings: Mapping[str, float]) -> str:
    """"⏱️ align **0.12 s** · ..." for the stages in ``timings`` (seconds), in pipeline order; "" for none."""
    parts = [f"{label} **{timings[key]:.2f} s**" for key, label in STAGE_LABELS.items() if key in timings]
    return "⏱️ " + " · ".join(parts) if parts else ""


def status_markdown(edit: StoredEdit) -> str:
    """Measured seconds per stage in pipeline order, the anchor a text instruction was applied to, and the notes."""
    timings = timings_line(edit.timings)
    lines = [timings + (f" ({edit.path})" if edit.path else "")] if timings else []
    if edit.anchor:
        lines.append(f"🧑 The instruction was applied to the anchor portrait: **{edit.anchor}**.")
    if edit.style:
        lines.append(f"🎨 With the customised style **{edit.style}**.")
    lines += [f"ℹ️ {note}" for note in edit.notes]
    return "\n\n".join(lines)


def view_name(yaw: float, pitch: float, preview: bool = False) -> str:
    """File name of a free view, e.g. ``view_yaw30_pitch-10.png`` (degrees from frontal; ``..._preview.png`` for a
    draft)."""
    return f"view_yaw{yaw:g}_pitch{pitch:g}{'_preview' if preview else ''}.png"


class StopFlag:
    """A session's stop request as a file, so that it reaches the work in another thread or process (ZeroGPU runs
    GPU functions in a forked worker). Calling it says whether the stop was requested, or the session ended (its
    folder is gone); picklable."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> bool:
        return self.path.exists() or not self.path.parent.is_dir()

    def set(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def stopped_if_gone(stop: StopFlag | None) -> Iterator[None]:
    """Turn a failed write into :class:`~threedpe.cancel.Cancelled` when the session ended meanwhile (its folder,
    where the output was being written, was removed when the visitor left)."""
    try:
        yield
    except OSError:
        if stop is not None and stop():
            raise Cancelled("stopped: the session ended") from None
        raise


class SessionFiles:
    """One temporary folder per browser session under ``root`` (outputs and the stop flag), removed when the
    session ends; and the work each session has running in this process, so that a Stop can wait for it.

    How a Stop works: :meth:`stop` sets the session's flag, which every computation checks between its units of
    work, and waits until the session's running work (each run inside :meth:`running`) has ended; the flag stays set,
    so work of the session that was waiting in the queue, or chained after a stopped step, ends at once too. Only a
    new action clears it (:meth:`begin`, when it is clicked), after the stopped work has ended: a stop is neither
    lost on work of the session that starts later nor carried into an action begun after it.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "threedpe-sessions"
        self._running: dict[str, int] = defaultdict(int)
        self._changed = threading.Condition()

    def folder(self, session_hash: str | None) -> Path:
        """The session's folder (created on demand; API clients may never trigger the page's load event)."""
        name = session_hash or "anonymous"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"unexpected session id {name!r}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def stop_flag(self, session_hash: str | None) -> StopFlag:
        return StopFlag(self.folder(session_hash) / ".stop")

    @contextlib.contextmanager
    def running(self, session_hash: str | None) -> Iterator[StopFlag]:
        """Count the block as running work of the session (see :meth:`stop`); yields the session's stop flag."""
        key = session_hash or "anonymous"
        stop = self.stop_flag(session_hash)
        with self._changed:
            self._running[key] += 1
        try:
            yield stop
        finally:
            with self._changed:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                self._changed.notify_all()

    def wait_idle(self, session_hash: str | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no work of the session runs; whether none does."""
        key = session_hash or "anonymous"
        with self._changed:
            return self._changed.wait_for(lambda: key not in self._running, timeout)

    def stop(self, session_hash: str | None, timeout: float = STOP_WAIT_S) -> bool:
        """Ask the session's work to stop and wait up to ``timeout`` seconds until none runs; whether none does."""
        self.stop_flag(session_hash).set()
        return self.wait_idle(session_hash, timeout)

    def begin(self, session_hash: str | None, timeout: float = STOP_WAIT_S) -> None:
        """A new action of the session: after a stop, wait up to ``timeout`` seconds for the stopped work to end, then
        clear the stop flag."""
        stop = self.stop_flag(session_hash)
        if stop.path.exists():
            self.wait_idle(session_hash, timeout)
        stop.clear()

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


class RateLimitError(ValueError):
    """A session asked for more work than the app allows in a window of time."""


class RateLimiter:
    """At most ``limit`` actions per ``window_s`` seconds for each key (a browser session)."""

    def __init__(self, limit: int = EDITS_PER_WINDOW, window_s: float = RATE_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def take(self, key: str, what: str = "edits") -> None:
        """Count one action for ``key``, or raise :class:`RateLimitError` saying when to try again."""
        now = time.monotonic()
        with self._lock:
            times = self._times[key]
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                wait = math.ceil(times[0] + self.window_s - now)
                raise RateLimitError(f"Too many {what} from this session ({self.limit} in {self.window_s / 60:g} "
                                     f"minutes); please try again in {wait // 60} min {wait % 60} s.")
            times.append(now)


def check_upload(path: str, reference: bool = False) -> list[str]:
    """Read an uploaded file as the pipeline will; raises ``ImageError`` for anything that is not a usable image.
    Returns notes for a reference that will make a poor style prompt."""
    image = load_image(path, max_pixels=MAX_PIXELS)
    return reference_notes(image) if reference else []


def latest_edit(session: Path) -> Path:
    """The folder of the session's most recent edit; a `GalleryError` when it has none."""
    records = sorted(session.glob(f"*/{EDIT_RECORD}"), key=lambda path: path.stat().st_mtime_ns)
    if not records:
        raise GalleryError("There is no edit to publish yet: run an edit first.")
    return records[-1].parent


def publish_edit(gallery: Gallery, folder: Path, session_hash: str | None, share_photo: bool = False) -> Published:
    """Publish the edit whose files are in ``folder`` (strip, and the video, mesh and reference when made); the
    aligned photo only as a thumbnail and only when ``share_photo``."""
    record = json.loads((folder / EDIT_RECORD).read_text())

    def made(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    return gallery.publish(session=session_hash or "anonymous", strip=folder / "views.png",
                           instruction=record["instruction"],
                           reference=None if record["instruction"] is not None else folder / "reference.png",
                           video=made("orbit.mp4"), mesh=made("mesh.glb"), style=record["style"],
                           settings=record["settings"], timings=record["timings"], photo=folder / "aligned.png",
                           share_photo=share_photo)


def permalink(page_url: str, record_id: str) -> str:
    """``page_url?edit=<id>`` (any query or fragment of ``page_url`` dropped)."""
    return f"{page_url.split('#')[0].split('?')[0]}?edit={record_id}"


def record_markdown(record: Record, link: str, anchor_labels: Mapping[str, str] | None = None) -> str:
    """What an opened gallery edit says: the kind of edit with its instruction (and the portrait it was applied to) or
    reference, the style, the settings the person chose (named as on the page), the seconds each stage took, the date
    and the link. ``anchor_labels``: anchor names -> labels (a name without one shows as it is)."""
    settings = dict(record.settings)
    if record.instruction is not None:
        lines = [f"### Text edit: “{record.instruction}”"]
        anchor, own_photo = settings.pop("anchor", None), settings.pop("own_photo", False)
        if own_photo:
            lines.append("🧑 The instruction was applied to the photo itself.")
        elif anchor is not None:
            label = (anchor_labels or {}).get(str(anchor), anchor)
            lines.append(f"🧑 The instruction was applied to the anchor portrait **{label}**, which then served as "
                         "the style reference.")
    else:
        lines = ["### Reference edit"]
        aligned = settings.pop("align_reference", False)
        lines.append("In the style of the reference image below " + (
            "(its face was detected and aligned first)." if aligned else "(used as an aligned portrait)."))
    if record.style:
        lines.append(f"🎨 With the customised style **{record.style}**.")
    page_order = list(SETTING_LABELS)  # the page's settings in its order, then any others
    order = sorted(settings, key=lambda key: page_order.index(key) if key in page_order else len(page_order))
    chosen = [f"{SETTING_LABELS.get(key, key.replace('_', ' '))} {settings[key]}" for key in order
              if settings[key] is not None]
    if chosen:
        lines.append("Settings: " + " · ".join(chosen))
    timings = timings_line(record.timings)
    if timings:
        lines.append(timings)
    lines.append(f"Published {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(record.created))} · "
                 f"[permalink]({link})")
    return "\n\n".join(lines)


@dataclass(frozen=True)
class TuneUpdate:
    """What a fine-tune reports after each step (small and picklable: ZeroGPU ships each from its worker): the loss
    curves so far, the held-out snapshot that step took, and, in a call's last update only, the fine-tune's
    ``state`` and ``style``."""

    curve: list  # (step, seconds, training loss)
    held_out_curve: list  # (step, seconds, held-out loss)
    snapshot: Snapshot | None = None
    state: dict | None = None
    style: Style | None = None


@dataclass
class StyleSession:
    """A visitor's customisation as CPU data (kept in the session between GPU calls): the training samples and what
    produced them, the fine-tune's settings and state, its loss curves and snapshots, the style it made so far and
    the style's display name. ``id`` names this customisation (new pairs or an uploaded style start another)."""

    samples: list[StyleSample]
    source: dict
    name: str
    config: CustomizeConfig = field(default_factory=CustomizeConfig)
    state: dict | None = None
    curve: list = field(default_factory=list)  # (step, seconds, training loss)
    held_out_curve: list = field(default_factory=list)  # (step, seconds, held-out loss)
    snapshots: list[Snapshot] = field(default_factory=list)
    style: Style | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def steps(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def reference(self) -> Image.Image:
        """An image in the style (the held-out sample's edit): the reference "Use this style" edits with."""
        return usable(self.samples)[-1].after

    def advanced(self, update: TuneUpdate) -> StyleSession:
        """This session with a fine-tune's update: its curves, its snapshot added, its state and style if it has
        them."""
        return replace(self, curve=update.curve, held_out_curve=update.held_out_curve,
                       snapshots=[*self.snapshots, update.snapshot] if update.snapshot else self.snapshots,
                       state=self.state if update.state is None else update.state,
                       style=self.style if update.style is None else update.style)


def sample_tiles(samples: list[StyleSample]) -> list[tuple[Image.Image, str]]:
    """Gallery tiles of training samples: each edited image, captioned with its name or why it was dropped."""
    return [(sample.after, sample.name if sample.failure is None else f"{sample.name}: dropped, {sample.failure}")
            for sample in samples]


def photo_samples(before: list[str], after: list[str], folder: Path) -> list[StyleSample]:
    """The visitor's own (before, after) photos, matched by file name, as training samples (copied into
    ``folder``'s ``before/`` and ``after/``, then aligned: one crop for both photos of a pair)."""
    shutil.rmtree(folder, ignore_errors=True)
    for side, paths in (("before", before), ("after", after)):
        (folder / side).mkdir(parents=True)
        for path in paths or []:
            shutil.copy(path, folder / side / Path(path).name)
    return photo_pairs(folder)


def snapshot_tiles(session: StyleSession) -> list[tuple[Image.Image, str]]:
    """Gallery tiles of the held-out previews: the image, when it was taken and its held-out loss."""
    return [(shot.image, f"{shot.due} · step {shot.step} · {shot.seconds:.0f} s · loss {shot.loss:.4f}")
            for shot in session.snapshots]


def style_status(session: StyleSession) -> str:
    """One line about a fine-tune: steps, seconds, held-out loss from start to now."""
    if not session.held_out_curve:
        return "No fine-tuning yet."
    (_, _, start), (step, seconds, now) = session.held_out_curve[0], session.held_out_curve[-1]
    return (f"🎨 Style **{session.name}**: {step} steps in {seconds:.1f} s of training; held-out loss {start:.4f} → "
            f"{now:.4f}. Download the style file, or use it below.")


def tuning_status(session: StyleSession, target: int) -> str:
    """One line while a fine-tune runs (after a step): the step reached of ``target``, its training loss, the
    training time."""
    step, seconds, loss = session.curve[-1]
    return (f"⏳ Fine-tuning **{session.name}**: step {step} of {target} · training loss {loss:.4f} · "
            f"{seconds:.1f} s of training")


def slug(text: str) -> str:
    """A file-name-safe short form of ``text`` (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "style"


def curve_table(session: StyleSession) -> pd.DataFrame:
    """The loss curves for a line plot: columns ``step``, ``loss`` and ``curve`` (training / held-out)."""
    points = [(step, loss, "training") for step, _, loss in session.curve]
    points += [(step, loss, "held-out") for step, _, loss in session.held_out_curve]
    return pd.DataFrame(points, columns=["step", "loss", "curve"])


class DemoRunner:
    """The app's GPU work on one shared, read-only editor. Methods take and return picklable values; one runs at
    a time (a stopped computation finishes its current step before the next one starts).

    ``kept_trainers``: how many fine-tunes stay in memory between calls, one per browser session (default
    :data:`KEPT_TRAINERS`; none on ZeroGPU, where every call rebuilds its trainer from the session's state)."""

    def __init__(self, editor: PortraitEditor, kept_trainers: int | None = None):
        self.editor = editor
        self._lock = threading.Lock()
        self._generator: TriPlaneGenerator | None = None  # loaded on the first customisation
        self._reconstruction: ReconstructionModel | None = None
        self.kept_trainers = (0 if on_zero_gpu() else KEPT_TRAINERS) if kept_trainers is None else kept_trainers
        self._trainers: OrderedDict[str, tuple[str, StyleTrainer]] = OrderedDict()  # owner -> (StyleSession.id, ...)

    def edit(self, photo: ImageInput, session: Path, stop: StopFlag | None = None, reference: ImageInput | None = None,
             prompt: str | None = None, *, align_reference: bool = False, settings: EditSettings | None = None,
             seed: int = 0, anchor: int | str = 0, use_own_photo: bool = False,
             style: tuple[str, Style] | None = None) -> EditFiles:
        """Edit ``photo`` (reference image or instruction; ``style``: a customised style and its name, applied for
        this edit only), then write the aligned input, the reference, the 3-view strip, the frontal view, depth and
        ``edit.json`` into a new folder of ``session``."""
        with self._lock:
            photo = load_image(photo, max_pixels=MAX_PIXELS)
            if reference is not None:
                reference = load_image(reference, max_pixels=MAX_PIXELS)
            result = self.editor(photo, reference=reference, prompt=prompt, align_reference=align_reference,
                                 settings=settings, seed=seed, anchor=anchor, use_own_photo=use_own_photo,
                                 style=style[1] if style else None, cancel=stop)
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
            folder = edit.folder(session)
            files = {"aligned": folder / "aligned.png", "reference": folder / "reference.png",
                     "views": folder / "views.png", "view": folder / view_name(0, 0), "depth": folder / "depth.png"}
            for key, image in (("aligned", result.image), ("reference", result.reference), ("views", strip),
                               ("view", view), ("depth", depth)):
                image.save(files[key])
            edit.save_record(session)
        return EditFiles(edit, **files)

    def view(self, edit: StoredEdit, session: Path, yaw: float, pitch: float, preview: bool = False) -> Path:
        """The stored edit seen from (yaw, pitch) in degrees from frontal, written as ``view_yaw.._pitch...png``;
        ``preview``: the draft quality used while a slider is dragged (``..._preview.png``)."""
        with self._lock:
            image = edit.result(self.editor).view(yaw, pitch, preview=preview)
        path = edit.folder(session) / view_name(yaw, pitch, preview)
        image.save(path)
        return path

    def video(self, edit: StoredEdit, session: Path, frames: int, stop: StopFlag | None = None
              ) -> tuple[Path, StoredEdit]:
        """An orbit video (``orbit.mp4``, ``frames`` frames) of the stored edit; the edit with its timing."""
        with self._lock, stopped_if_gone(stop):
            result = edit.result(self.editor)
            path = result.video(edit.folder(session) / "orbit.mp4", num_frames=frames, cancel=stop)
            edit = edit.timed(video=result.timings["video"])
            edit.save_record(session)
        return path, edit

    def mesh(self, edit: StoredEdit, session: Path, resolution: int, stop: StopFlag | None = None
             ) -> tuple[Path, Path, StoredEdit]:
        """The coloured mesh of the stored edit as ``mesh.glb`` and ``mesh.ply``; the edit with its timing."""
        with self._lock, stopped_if_gone(stop):
            folder = edit.folder(session)
            result = edit.result(self.editor)
            glb, ply = result.mesh(folder / "mesh.glb", folder / "mesh.ply", resolution=resolution, cancel=stop)
            edit = edit.timed(mesh=result.timings["mesh"])
            edit.save_record(session)
        return glb, ply, edit

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
        try:
            while trainer.step < target:
                with self._lock:  # per step: other visitors' views are served between the steps
                    [progress] = trainer.train(max_steps=trainer.step + 1, cancel=stop)
                yield TuneUpdate(list(trainer.curve), list(trainer.held_out_curve), progress.snapshot)
        except Cancelled:
            pass  # the finished steps are kept
        with self._lock:
            style = trainer.style()  # first: it may add the held-out loss of this step, which the state then holds
            state = trainer.state_dict()
        if owner and self.kept_trainers > 0 and not (stop is not None and stop()):
            with self._lock:
                self._trainers[owner] = (session.id, trainer)
                self._trainers.move_to_end(owner)
                while len(self._trainers) > self.kept_trainers:
                    self._trainers.popitem(last=False)
        yield TuneUpdate(list(trainer.curve), list(trainer.held_out_curve), state=state, style=style)

    def _trainer(self, session: StyleSession, owner: str | None) -> StyleTrainer:
        """``owner``'s kept trainer when it is at ``session``'s last step, else a new one from ``session.state``
        (a copy of the editor, the objective's networks read from the weight folder, Live3D targets)."""
        with self._lock:
            kept = self._trainers.pop(owner, None) if owner else None  # taken out while it trains
            if kept is not None and kept[0] == session.id and session.state is not None \
                    and kept[1].step == session.steps:
                return kept[1]
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
            self._trainers.pop(owner, None)

    def _weights_folder(self, what: str) -> Path:
        if self.editor.weights_folder is None:
            raise CustomizeError(f"{what} needs the weights in a local folder (Live3D and EG3D files beside 3dpe.pt); "
                                 "this app loaded its editor from the Hub")
        return self.editor.weights_folder

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
        if prompt is None:
            return 15
        settings = settings or EditSettings()
        return 20 + math.ceil(settings.steps * 0.15 * (settings.resolution / 512) ** 2)

    @staticmethod
    def view_duration(edit: StoredEdit, session: Path, yaw: float, pitch: float, preview: bool = False) -> int:
        return 5

    @staticmethod
    def video_duration(edit: StoredEdit, session: Path, frames: int, stop: StopFlag | None = None) -> int:
        return 10 + math.ceil(frames * 0.1)

    @staticmethod
    def mesh_duration(edit: StoredEdit, session: Path, resolution: int, stop: StopFlag | None = None) -> int:
        return 10 + math.ceil(10 * (resolution / 256) ** 3)  # one resolution^3 density grid

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

