"""What every tab of the page shares: the context the handlers work with (:class:`UIContext`), the photo input and action buttons, the result
panel of an edit, and :class:`EditTab`, the layout and events of an edit tab (photo and settings -> edit -> orbit
video -> mesh, Stop, the free view), written once for the Text, Reference and Customize tabs.

Handlers return their outputs as dicts keyed by component, so that the order of an ``outputs`` list never decides
where a value goes.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import gradio as gr
import spaces
from gradio.events import Dependency

from threedpe.anchors import Anchor, shipped_anchors
from threedpe.cancel import check
from threedpe.weights import CheckpointError
from threedpe.diffusion import EditSettings
from threedpe.gallery import Gallery
from threedpe.devices import resolve_device
from threedpe.pipeline import STRENGTH_RANGE, USER_ERRORS, PortraitEditor, check_strength
from threedpe.precision import check_precision, native_bf16_label
from threedpe.serving.messages import disabled_reason, public_message, timings_line
from threedpe.serving.edits import EditFiles, StoredEdit
from threedpe.serving.runner import EditRunner, OutputSettings, check_upload
from threedpe.serving.sessions import RateLimiter, SessionFiles
from threedpe.ui.status import STOPPED, listen, refusal, show_errors

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_PHOTO = str(EXAMPLES / "astronaut.jpg")
EXAMPLE_REFERENCE = str(EXAMPLES / "anchors" / "astronaut_flip.png")
MAX_YAW_DEGREES = 45.0  # slider ranges of the free view
MAX_PITCH_DEGREES = 30.0
SESSION_MAX_AGE_S = 6 * 3600
PRECISION_CHOSEN = {"fast": "⚡ Next edits: **fast** (bfloat16 on this CPU; about 2x faster, within the bounds in "
                            "the README).",
                    "exact": "🎯 Next edits: **exact** (float32, equal to the official code)."}


def set_in_browser(values: dict) -> dict:
    """The keyword arguments of an event that sets the components of ``values`` to their values in the browser,
    without a round trip to the server (and without a progress flash): its outputs and its ``js``."""
    return {"outputs": list(values), "js": f"() => {json.dumps(list(values.values()), ensure_ascii=False)}"}


class GpuWork:
    """The runner's units of work as ZeroGPU calls (``@spaces.GPU``, reserving ``EditRunner.<method>_duration``),
    user errors as page messages; without an editor (``runner`` None), each refuses saying why editing is off."""

    def __init__(self, runner: EditRunner | None, disabled: str = ""):
        self.runner, self.disabled = runner, disabled
        self.edit, self.view, self.strength, self.video, self.mesh, self.anchor, self.samples = (
            self._gpu(method) for method in ("edit", "view", "strength", "video", "mesh", "anchor", "samples"))
        self.prepare_frames = self._gpu("prepare_frames")  # a live stream's or a clip's reference, prepared once
        self.live_frame = self._gpu("live_frame")  # a short call
        self.video_frames = self._gpu("video_frames")  # a clip's frames, as many as one call may take (serving.clips)
        self.batch = self._gpu("batch")  # a batch's photos, as many as one call may take (serving.batches)
        self.fine_tune = (spaces.GPU(duration=EditRunner.fine_tune_duration)(self._stream_fine_tune)
                          if runner is not None else self._gpu("fine_tune"))

    def _gpu(self, method: str) -> Callable:
        if self.runner is None:
            return self._refuse
        return spaces.GPU(duration=getattr(EditRunner, f"{method}_duration"))(
            show_errors(getattr(self.runner, method)))

    def _refuse(self, *args, **kwargs):
        raise refusal(self.disabled)

    def _stream_fine_tune(self, *args, **kwargs):
        """``runner.fine_tune``'s updates as they come, user errors as page messages. A generator function: on
        ZeroGPU, ``spaces`` runs it in one GPU call and forwards each update as it is yielded."""
        updates = self.runner.fine_tune(*args, **kwargs)

        @show_errors
        def fine_tune_step():
            return next(updates, None)

        while (update := fine_tune_step()) is not None:
            yield update


@dataclass
class UIContext:
    """What the page's handlers work with: the editor (or why it could not be loaded), its runner and GPU calls, the
    session folders, the rate limiter, the gallery (None: no Gallery tab), the device's output defaults and the
    anchor portraits."""

    editor: PortraitEditor | CheckpointError
    text_error: str | None
    sessions: SessionFiles
    limiter: RateLimiter
    gallery: Gallery | None
    runner: EditRunner | None
    work: GpuWork
    defaults: OutputSettings
    anchors: list[Anchor]
    precisions: dict[str, str] = field(default_factory=dict)  # per browser session, when it chose another

    @classmethod
    def create(cls, editor: PortraitEditor | CheckpointError, text_error: str | None = None,
               sessions: SessionFiles | None = None, limiter: RateLimiter | None = None,
               gallery: Gallery | None = None) -> UIContext:
        runner = EditRunner(editor) if isinstance(editor, PortraitEditor) else None
        return cls(editor, text_error, sessions or SessionFiles(), limiter or RateLimiter(), gallery, runner,
                   GpuWork(runner, "" if runner else disabled_reason(editor)),
                   OutputSettings.for_device(runner.editor.device if runner else resolve_device("auto")),
                   runner.editor.anchors if runner else shipped_anchors())

    @property
    def editing(self) -> bool:
        """Whether the actions that need weights can run."""
        return self.runner is not None

    @property
    def strength_unavailable(self) -> str | None:
        """Why the strength slider is hidden (names the missing Live3D file), None when it shows; "" without weights
        (editing is off, as the page says)."""
        return self.runner.editor.strength_unavailable if self.runner is not None else ""

    def folder(self, request: gr.Request) -> Path:
        """The session's folder of outputs."""
        return self.sessions.folder(request.session_hash)

    def refuse_without_editor(self) -> None:
        if self.runner is None:
            raise refusal(disabled_reason(self.editor))

    def stop_work(self, request: gr.Request) -> str:
        """Ask the running computation of this session to stop (it checks between steps, frames and chunks) and wait
        until it has (``SessionFiles.stop``): what is queued or chained after it then ends at once."""
        self.sessions.stop(request.session_hash)
        return STOPPED

    def begin_action(self, request: gr.Request) -> None:
        """A new action was clicked: a stop of earlier work no longer applies (``SessionFiles.begin``)."""
        self.sessions.begin(request.session_hash)

    def precision(self, request: gr.Request) -> str:
        """The precision this session's edits run in: its choice, else the device's default."""
        return self.precisions.get(request.session_hash or "anonymous", self.defaults.precision)

    def choose_precision(self, precision: str, request: gr.Request) -> str:
        """Run this session's next edits in ``precision`` (``"fast"`` or ``"exact"``); what it will say."""
        self.precisions[request.session_hash or "anonymous"] = show_errors(check_precision)(precision)
        return PRECISION_CHOSEN[precision]

    def start_session(self, request: gr.Request) -> None:
        self.sessions.prune(SESSION_MAX_AGE_S)
        self.sessions.folder(request.session_hash)

    def end_session(self, request: gr.Request) -> None:
        self.sessions.close(request.session_hash)
        self.precisions.pop(request.session_hash, None)
        if self.runner is not None:
            self.runner.release(request.session_hash)  # its kept fine-tune


def checked_settings(**values) -> EditSettings:
    """``EditSettings(**values)``; an invalid value becomes a page message."""
    try:
        return EditSettings(**values)
    except ValueError as error:
        raise refusal(str(error)) from None


def require_photo(photo: dict | None) -> str:
    """The path of the uploaded photo (a FileData dict)."""
    if not photo:
        raise refusal("Upload a portrait photo first (or pick an example).")
    return photo["path"]


def require_edit(edit: StoredEdit | None) -> StoredEdit:
    if edit is None:
        raise refusal("Run an edit first: there is no 3D portrait to render yet.")
    return edit


def status_markdown(edit: StoredEdit) -> str:
    """Measured seconds per stage in pipeline order (and how the editor ran), the anchor a text instruction was
    applied to, the style, and the notes."""
    timings = timings_line(edit.timings)
    lines = [timings + (f" ({edit.execution})" if edit.execution else "")] if timings else []
    if edit.anchor:
        lines.append(f"🧑 The instruction was applied to the anchor portrait: **{edit.anchor}**.")
    if edit.style:
        lines.append(f"🎨 With the customised style **{edit.style}**.")
    lines += [f"ℹ️ {note}" for note in edit.notes]
    return "\n\n".join(lines)


def validated_upload(reference: bool) -> Callable:
    """An upload handler: reads the file as the pipeline will, clears it with a message when it is not a usable
    image, and warns (keeping it) when a reference will make a poor style prompt."""
    def validate(file: dict | None):
        if not file:
            return gr.skip()
        try:
            notes = check_upload(file["path"], reference=reference)
        except USER_ERRORS as error:
            gr.Warning(public_message(str(error)))
            return None
        for note in notes:
            gr.Warning(note)
        return gr.skip()
    return validate


def photo_input(name: str) -> gr.Image:
    """The portrait photo of tab ``name`` (upload, webcam or clipboard), checked when it is uploaded."""
    photo = gr.Image(label="Portrait photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                     height=300, elem_id=f"{name}-photo")
    photo.upload(validated_upload(reference=False), photo, photo, preprocess=False, show_progress="hidden",
                 concurrency_limit=4, api_visibility="private")
    return photo


def precision_choice(ctx: UIContext) -> None:
    """The precision of this visitor's edits, one click away, where there is a choice: on a CPU that computes
    bfloat16 natively (the edit's status line names the one that ran)."""
    device = ctx.runner.editor.device if ctx.runner else None
    native = native_bf16_label(device) if device is not None and device.type == "cpu" else None
    if native is None:
        return
    with gr.Row(equal_height=True):
        choice = gr.Radio([("Fast (bfloat16)", "fast"), ("Exact (float32)", "exact")], value=ctx.defaults.precision,
                          label=f"Precision (this CPU computes bfloat16 natively: {native})", scale=2,
                          elem_id="precision")
        chosen = gr.Markdown(PRECISION_CHOSEN[ctx.defaults.precision], label="Precision of the next edits",
                             elem_id="precision-status")
    choice.change(ctx.choose_precision, choice, chosen, api_name="set_precision", queue=False,
                  show_progress="hidden")


def action_buttons(name: str, editing: bool, label: str = "Edit in 3D") -> tuple[gr.Button, gr.Button]:
    """The action (``label``) and Stop (disabled without weights)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=3, interactive=editing, elem_id=f"{name}-run")
        stop = gr.Button("Stop", variant="stop", scale=1, interactive=editing, elem_id=f"{name}-stop")
    return run, stop


def output_settings(name: str, default: OutputSettings) -> tuple[gr.Slider, gr.Slider]:
    """Video and mesh settings (inside the current accordion)."""
    frames = gr.Slider(8, 240, value=default.video_frames, step=1, label="Orbit video frames",
                       elem_id=f"{name}-frames")
    resolution = gr.Slider(32, 384, value=default.mesh_resolution, step=16, label="Mesh resolution (grid side)",
                           elem_id=f"{name}-mesh-resolution")
    return frames, resolution


FRAME_STRENGTH = ("0 = the face unedited in 3D, 1 = the edit, above 1 exaggerates it (each frame's edit blended with "
                  "its reconstruction)")


def strength_slider(name: str, unavailable: str | None,
                    info: str = "0 = your photo in 3D, 1 = the edit, above 1 exaggerates it (re-rendered, not "
                                "re-encoded)") -> gr.Slider:
    """The edit-strength slider of tab ``name``: shown when strengths are available (``unavailable`` None), else
    hidden, with why in a note (none when ``unavailable`` is "")."""
    low, high = STRENGTH_RANGE
    slider = gr.Slider(low, high, value=1.0, step=0.05, label="Edit strength", info=info,
                       visible=unavailable is None, elem_id=f"{name}-strength")
    if unavailable:
        gr.Markdown(f"ℹ️ No strength slider: {public_message(unavailable)}", elem_id=f"{name}-strength-note")
    return slider


@dataclass
class ResultPanel:
    """The output components of one edit tab and the tab's per-session state (a ``StoredEdit``)."""

    status: gr.Markdown
    aligned: gr.Image
    reference: gr.Image
    strip: gr.Image
    view: gr.Image
    yaw: gr.Slider
    pitch: gr.Slider
    strength: gr.Slider
    compare: gr.ImageSlider
    depth: gr.Image
    video: gr.Video
    model: gr.Model3D
    files: gr.File
    share_photo: gr.Checkbox
    publish: gr.Button
    link: gr.Markdown
    state: gr.State

    @classmethod
    def lay_out(cls, name: str, reference_label: str, publishing: bool, editing: bool,
                strength_unavailable: str | None = None) -> ResultPanel:
        """Lay out the outputs of an edit (inside the current column); elem_ids start with ``name``. ``publishing``:
        whether the publish controls show (there is a gallery); ``editing``: whether they can be used (weights);
        ``strength_unavailable``: why the strength slider is hidden (shown in a note unless ""), None: it shows."""
        png = {"type": "filepath", "format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
        status = gr.Markdown("Results appear here.", label="Status", elem_id=f"{name}-status", elem_classes="status")
        with gr.Row(equal_height=True):
            aligned = gr.Image(label="Aligned input", height=220, elem_id=f"{name}-aligned", **png)
            reference = gr.Image(label=reference_label, height=220, elem_id=f"{name}-ref", **png)
        strip = gr.Image(label="Edited 3D portrait: three views", elem_id=f"{name}-strip", **png)
        with gr.Row(equal_height=True):
            with gr.Column():
                view = gr.Image(label="Free view", height=280, elem_id=f"{name}-view", **png)
                yaw = gr.Slider(-MAX_YAW_DEGREES, MAX_YAW_DEGREES, value=0, step=1,
                                label="Yaw (°; + moves the camera to the right)", elem_id=f"{name}-yaw")
                pitch = gr.Slider(-MAX_PITCH_DEGREES, MAX_PITCH_DEGREES, value=0, step=1,
                                  label="Pitch (°; + moves the camera down)", elem_id=f"{name}-pitch")
                strength = strength_slider(name, strength_unavailable)
            depth = gr.Image(label="Depth (near = bright)", height=280, elem_id=f"{name}-depth", **png)
        compare = gr.ImageSlider(label="Before / after: the aligned photo and the edited frontal view", type="filepath",
                                 format="png", interactive=False, height=360, elem_id=f"{name}-compare")
        with gr.Row(equal_height=True):
            video = gr.Video(label="Orbit video", autoplay=True, loop=True, interactive=False, height=320,
                             buttons=["download"], elem_id=f"{name}-video")
            model = gr.Model3D(label="3D mesh (GLB)", clear_color=(0.95, 0.95, 0.97, 1.0), height=320,
                               elem_id=f"{name}-model")
        files = gr.File(label="Download the mesh (GLB / PLY)", file_count="multiple", interactive=False,
                        elem_id=f"{name}-files")
        with gr.Row(equal_height=True, visible=publishing):
            share_photo = gr.Checkbox(False, label="Also publish a small thumbnail of my photo", scale=2,
                                      interactive=editing, elem_id=f"{name}-share-photo")
            publish = gr.Button("Publish to the gallery", scale=1, interactive=editing, elem_id=f"{name}-publish")
        link = gr.Markdown(elem_id=f"{name}-link")
        return cls(status, aligned, reference, strip, view, yaw, pitch, strength, compare, depth, video, model, files,
                   share_photo, publish, link, gr.State())

    @property
    def edit_outputs(self) -> list:
        return [self.aligned, self.reference, self.strip, self.view, self.depth, self.status, self.compare,
                self.strength, self.state]

    @property
    def cleared(self) -> dict:
        """What a new edit clears before it starts: the previous edit's video, mesh and files, the sliders; and the
        status it shows meanwhile."""
        return {self.video: None, self.model: None, self.files: None, self.yaw: 0, self.pitch: 0, self.strength: 1.0,
                self.compare: None, self.status: "⏳ Working…"}

    def shown(self, files: EditFiles) -> dict:
        """The values of ``edit_outputs`` for a finished edit (or the same edit at another strength)."""
        return {self.aligned: str(files.aligned), self.reference: str(files.reference), self.strip: str(files.views),
                self.view: str(files.view), self.depth: str(files.depth), self.status: status_markdown(files.edit),
                self.compare: (str(files.aligned), str(files.view)), self.strength: files.edit.strength,
                self.state: files.edit}


class EditTab:
    """One edit tab's layout and events, inside the current tab: on the left the photo, the tab's own inputs
    (``controls``), Edit and Stop, the settings (``settings``, then the video and mesh settings) and ``examples``; on
    the right the :class:`ResultPanel`. ``wire(edit)`` chains clear -> edit -> orbit video -> mesh (Stop stops them)
    and the free-view sliders; ``edit`` is the tab's event function (its name is its api_name), which lays its
    result out with ``run_edit``."""

    name: str  # the prefix of the elem_ids and api_names
    reference_label: str  # the result panel's label of the reference image

    def __init__(self, ctx: UIContext):
        self.ctx = ctx
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self.photo = photo_input(self.name)
                self.controls()
                self.run, self.stop = action_buttons(self.name, ctx.editing)
                with gr.Accordion("Settings", open=False):
                    self.settings()
                    self.frames, self.mesh_resolution = output_settings(self.name, ctx.defaults)
                self.examples()
            with gr.Column(scale=3):
                self.panel = ResultPanel.lay_out(self.name, self.reference_label, ctx.gallery is not None,
                                                 ctx.editing, ctx.strength_unavailable)

    def controls(self) -> None:
        """The tab's inputs below the photo."""

    def settings(self) -> None:
        """The tab's settings, above the video and mesh settings."""

    def examples(self) -> None:
        """Examples below the settings."""

    def triggers(self) -> list:
        """What starts the edit."""
        return [self.run.click]

    def run_edit(self, request: gr.Request, photo: dict | None, strength: float | None = 1.0, **kwargs) -> dict:
        """Rate-limit, edit (stoppable; at ``strength``, None: 1), and lay the result out in the panel."""
        path = require_photo(photo)
        strength = show_errors(check_strength)(1.0 if strength is None else strength)
        sessions = self.ctx.sessions
        with sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the edit")  # stopped while it waited in the queue
            show_errors(self.ctx.limiter.take)(request.session_hash or "anonymous")
            files = self.ctx.work.edit(path, self.ctx.folder(request), stop, precision=self.ctx.precision(request),
                                       strength=strength, **kwargs)
        return self.panel.shown(files)

    def render_view(self, edit: StoredEdit | None, yaw: float, pitch: float, request: gr.Request) -> dict:
        """Re-render the last edit from (yaw, pitch) in degrees from frontal, from its cached tri-planes."""
        path = self.ctx.work.view(require_edit(edit), self.ctx.folder(request), float(yaw), float(pitch))
        return {self.panel.view: str(path)}

    def set_strength(self, edit: StoredEdit | None, strength: float, request: gr.Request) -> dict:
        """Re-render the last edit at ``strength`` (0 = the photo in 3D, 1 = the edit) without encoding again: the
        3-view strip, the frontal view, depth and the before/after; the free-view angles go back to frontal, and
        the video and mesh of the previous strength are cleared (the page makes them anew)."""
        files = self.ctx.work.strength(require_edit(edit), self.ctx.folder(request), float(strength))
        panel = self.panel
        return {**panel.shown(files), panel.yaw: 0, panel.pitch: 0, panel.video: None, panel.model: None,
                panel.files: None}

    def preview_strength(self, edit: StoredEdit | None, strength: float, request: gr.Request) -> dict:
        """A draft of the frontal view at ``strength`` while its slider is dragged (the full views follow on
        release)."""
        if edit is None:
            return {self.panel.view: gr.skip()}
        at = replace(edit, strength=show_errors(check_strength)(float(strength)))
        return {self.panel.view: str(self.ctx.work.view(at, self.ctx.folder(request), 0.0, 0.0, True))}

    def preview_view(self, edit: StoredEdit | None, yaw: float, pitch: float, request: gr.Request) -> dict:
        """A draft of the view while a slider is dragged (the full view follows on release)."""
        if edit is None:
            return {self.panel.view: gr.skip()}
        return {self.panel.view: str(self.ctx.work.view(edit, self.ctx.folder(request), float(yaw), float(pitch),
                                                        True))}

    def orbit_video(self, edit: StoredEdit | None, frames: int, request: gr.Request,
                    progress=gr.Progress(track_tqdm=True)) -> dict:
        """Orbit video (mp4) of the last edit, and the status with its timing."""
        with self.ctx.sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the orbit video")  # after a stopped edit, or stopped in the queue
            path, edit = self.ctx.work.video(require_edit(edit), self.ctx.folder(request), int(frames), stop)
        return {self.panel.video: str(path), self.panel.status: status_markdown(edit), self.panel.state: edit}

    def mesh(self, edit: StoredEdit | None, resolution: int, request: gr.Request,
             progress=gr.Progress(track_tqdm=True)) -> dict:
        """Coloured mesh of the last edit: the GLB for the viewer, [GLB, PLY] to download, and the status."""
        with self.ctx.sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the mesh")
            glb, ply, edit = self.ctx.work.mesh(require_edit(edit), self.ctx.folder(request), int(resolution), stop)
        return {self.panel.model: str(glb), self.panel.files: [str(glb), str(ply)],
                self.panel.status: status_markdown(edit), self.panel.state: edit}

    def wire(self, edit: Callable, inputs: list) -> None:
        """The events of the tab: clear stale outputs -> ``edit(*inputs)`` -> video -> mesh (Stop stops them), the
        free-view sliders and the strength slider. Progress shows once, on the status line."""
        panel, name = self.panel, self.name
        cleared = gr.on(self.triggers(), None, None, **set_in_browser(panel.cleared), show_progress="hidden",
                        api_visibility="private")
        begun = cleared.then(self.ctx.begin_action, None, None, queue=False, show_progress="hidden",
                             api_visibility="private")
        edited = listen(begun.then, edit, inputs, panel.edit_outputs, panel.status, api_name=edit.__name__,
                        preprocess=False, concurrency_id="gpu")
        self.video_and_mesh(edited)
        # No gradio `cancels`: the stop flag ends the running step at its next check, and the steps after it at once,
        # each with "Stopped" (a gradio cancel of a running event races with its end and can leave an error badge)
        self.stop.click(self.ctx.stop_work, None, panel.status, queue=False, api_visibility="private")
        view_inputs = [panel.state, panel.yaw, panel.pitch]
        views = {"show_progress_on": panel.view, "concurrency_id": "view", "trigger_mode": "always_last"}
        listen(functools.partial(gr.on, [panel.yaw.release, panel.pitch.release]), self.render_view, view_inputs,
               [panel.view], panel.status, api_name=f"render_view_{name}", show_progress="minimal", **views)
        if self.ctx.defaults.preview_while_dragging:  # one queue with the full views: a release follows the drafts
            listen(functools.partial(gr.on, [panel.yaw.input, panel.pitch.input]), self.preview_view, view_inputs,
                   [panel.view], panel.status, api_visibility="private", show_progress="hidden", **views)
            listen(panel.strength.input, self.preview_strength, [panel.state, panel.strength], [panel.view],
                   panel.status, api_visibility="private", show_progress="hidden", **views)
        # In the edit's queue: after its video and mesh, which keep the edit in the state (at the strength it had)
        begun = panel.strength.release(self.ctx.begin_action, None, None, queue=False, show_progress="hidden",
                                       api_visibility="private")
        strength = listen(begun.then, self.set_strength, [panel.state, panel.strength],
                          [*panel.edit_outputs, panel.yaw, panel.pitch, panel.video, panel.model, panel.files],
                          panel.status, api_name=f"set_strength_{name}", concurrency_id="gpu",
                          trigger_mode="always_last", show_progress="minimal",
                          show_progress_on=[panel.view, panel.strip])
        self.video_and_mesh(strength, api=False)

    def video_and_mesh(self, after: Dependency, api: bool = True) -> None:
        """The orbit video then the mesh of the edit in the state, after ``after`` succeeds (``api``: whether they
        are in the API as ``orbit_video_<tab>`` and ``mesh_<tab>``)."""
        panel, name = self.panel, self.name
        names = {step: {"api_name": f"{step}_{name}"} if api else {"api_name": f"{step}_strength_{name}",
                                                                   "api_visibility": "private"}
                 for step in ("orbit_video", "mesh")}
        video = listen(after.success, self.orbit_video, [panel.state, self.frames],
                       [panel.video, panel.status, panel.state], panel.status, concurrency_id="gpu",
                       **names["orbit_video"])
        listen(video.success, self.mesh, [panel.state, self.mesh_resolution],
               [panel.model, panel.files, panel.status, panel.state], panel.status, concurrency_id="gpu",
               **names["mesh"])
