"""3DPE Gradio app (Hugging Face Space or local): edit a portrait photo in 3D with a text instruction or a reference.

    python app.py                          # weights from $THREEDPE_WEIGHTS or checkpoints/
    python app.py --download               # missing weights fetched first (after the licence prompt); not on a Space
    python app.py --weights DIR --port 7860 [--host 0.0.0.0] [--share]

Layout only: the work is done by ``threedpe.demo.DemoRunner`` (wrapped in ``@spaces.GPU`` for ZeroGPU, a no-op
elsewhere). ``build_demo`` makes the Blocks without launching, so tests can serve it in-process.
"""
from __future__ import annotations

import spaces  # noqa: I001 -- first: on ZeroGPU it must be imported before anything initialises CUDA

import os

# Transparent huge pages for torch's CPU allocations (read when torch loads): a 512^2 view measured ~15% faster on
# CPU, where the fresh large buffers of rendering otherwise page-fault at length.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402 -- after the allocator setting above
import functools
import inspect
import itertools
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, get_type_hints

import gradio as gr
from gradio.events import Dependency

from threedpe.anchors import shipped_anchors
from threedpe.cancel import Cancelled, check
from threedpe.checkpoints import CheckpointError, MissingWeightsError
from threedpe.demo import (MAX_PITCH_DEGREES, MAX_UPLOAD, MAX_YAW_DEGREES, SAMPLES_PER_CALL, TUNE_STEPS_PER_CALL,
                           DemoRunner, OutputSettings, RateLimiter, RateLimitError, SessionFiles, StoredEdit,
                           StyleSession, check_upload, curve_table, disabled_reason, latest_edit, load_editor,
                           load_text_model, permalink, photo_samples, public_message, publish_edit, record_markdown,
                           sample_tiles, slug, snapshot_tiles, status_markdown, style_status, tuning_status,
                           weights_notice)
from threedpe.customize import CustomizeConfig, CustomizeError
from threedpe.datagen import DataError, usable
from threedpe.gallery import Gallery, GalleryError
from threedpe.diffusion import EditSettings
from threedpe.pipeline import USER_ERRORS, PortraitEditor, resolve_device
from threedpe.weights.download import WeightDownloadError, first_start, missing_weights_hint

ROOT = Path(__file__).resolve().parent
EXAMPLE_PHOTO = str(ROOT / "examples" / "astronaut.jpg")
EXAMPLE_REFERENCE = str(ROOT / "examples" / "anchors" / "astronaut_flip.png")
SESSION_MAX_AGE_S = 6 * 3600
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky")
CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
#notice { border-left: 4px solid var(--color-accent); padding-left: 0.8em; }
.status { min-height: 2.5em; }
"""
logger = logging.getLogger("threedpe.app")

HEADER = """
# 3DPE · Real-time 3D-aware portrait editing
**Upload one portrait photo, describe an edit or give a reference image, and get an edited 3D head you can rotate,
watch as a video and download as a mesh.** An unofficial re-implementation of
[*Real-time 3D-aware Portrait Editing from a Single Image*](https://arxiv.org/abs/2402.14000)
(Bai et al., ECCV 2024; [official code](https://github.com/EzioBy/3dpe)).
"""
HOW_TO = """
**How to use:** 1. upload a photo with one clearly visible face (or take one with the webcam), or pick an example;
2. type an instruction (*Text edit*) or upload a reference portrait in the target style (*Reference edit*);
3. press **Edit in 3D**. The face is detected and aligned, encoded once into tri-planes, then rendered:
move the sliders to look around without re-encoding. The video and mesh follow a few seconds later.
"""
TEXT_HOW = ("InstructPix2Pix applies your instruction to the **anchor portrait** below (not to your photo); that "
            "edited anchor becomes the style reference for your photo. The same instruction is instant the second "
            "time (cached).")
CREDITS = """
---
**Credits and licences.** Method: Bai, Shi, Xu, Ouyang, Wang, Yang, Wang, Wetzstein, Shen, Chen, *Real-time 3D-aware
Portrait Editing from a Single Image*, ECCV 2024. Built on [EG3D](https://github.com/NVlabs/eg3d) (NVIDIA),
Live3D and [InstructPix2Pix](https://github.com/timothybrooks/instruct-pix2pix) (Brooks et al.).
The EG3D and 3DPE weights are for **non-commercial research only** (NVIDIA Source Code License-NC; 3DPE authors'
terms); InstructPix2Pix weights: CreativeML OpenRAIL-M. Example photo: astronaut Eileen Collins (NASA, public domain).
Photos you upload are kept in a temporary per-session folder that is deleted when you leave.
"""
CUSTOMIZE_HOW = """
**Teach the editor a new kind of edit.** Name it with an instruction: InstructPix2Pix applies it to EG3D portraits
to make training pairs (or give your own before/after photos, matched by file name). **Adapt** then fine-tunes
small adapters (LoRA) of the editor on those pairs, with the paper's objective; the held-out preview and the loss
show how the style is learned (the paper: about 5 minutes on a GPU). The result is a style file you can use below,
download, or upload later. Your style stays in your session: the shared model is never changed.
"""
TEXT_EXAMPLES = ["Turn her into a bronze statue", "Make her look like a Pixar character",
                 "Make it a watercolor painting", "Give her a zombie look"]
STOPPED = "⏹️ Stopped."
LISTING_REFRESH_S = 10.0  # how often the Gallery tab's listing refreshes itself while the tab is shown
UNEXPECTED = "Something went wrong on the server (it was logged); please try again."
CURVE_COLOURS = {"training": "#6366f1", "held-out": "#f97316"}  # the loss chart's legend (curve_table's names)


def show_errors(fn: Callable) -> Callable:
    """``fn`` with user errors (no face, unreadable file, bad prompt, missing weights, too many requests, a stop) raised
    as ``gr.Error``: a message in the page without a traceback or a server path. Applied inside ``@spaces.GPU`` so
    that ZeroGPU forwards the message."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Cancelled:
            raise gr.Error(STOPPED, print_exception=False) from None
        except (*USER_ERRORS, RateLimitError, GalleryError, CustomizeError, DataError) as error:
            logger.info("user error in %s: %s", fn.__name__, error)
            raise gr.Error(public_message(str(error)), print_exception=False) from None
    return guarded


class Refusals:
    """The message of each refused event, kept per browser session and event until the event's failure handler puts
    it into the status line (an event that fails cannot update its own outputs). At most ``limit`` are kept: API
    callers, whose requests run no failure handler, never collect theirs."""

    def __init__(self, limit: int = 10_000):
        self._messages: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def keep(self, request: gr.Request, event: int, message: str) -> None:
        with self._lock:
            self._messages[request.session_hash or "", event] = message
            while len(self._messages) > self._limit:
                self._messages.popitem(last=False)

    def take(self, request: gr.Request, event: int) -> str | None:
        with self._lock:
            return self._messages.pop((request.session_hash or "", event), None)


REFUSALS = Refusals()
EVENT_NUMBERS = itertools.count()  # the events wired by ``listen``, numbered for ``REFUSALS``


def reporting(fn: Callable, status: gr.components.Component | None, event: int) -> Callable:
    """``fn`` (an event function or generator, given a ``gr.Request``) as an event whose refusal (``gr.Error``) still
    fails it, so that API callers get the error and the events chained on success do not run, after keeping its
    message in ``REFUSALS`` under ``event`` for the status line; an unexpected failure is refused the same way (its
    traceback goes to the log). A stop ends the event with "Stopped" in ``status``, one of its outputs (the others
    keep their values); without one (None), a stop is kept as a refusal is. A generator stays a generator and a
    function a function: the page applies a generator's last output twice, and a 3D viewer given its file twice can
    stay blank."""
    def refused(error: Exception, args: tuple, kwargs: dict) -> gr.Error:
        if not isinstance(error, gr.Error):
            logger.error("unexpected failure in %s", fn.__name__, exc_info=error)
            error = gr.Error(UNEXPECTED, print_exception=False)
        request = next(value for value in (*args, *kwargs.values()) if isinstance(value, gr.Request))
        REFUSALS.keep(request, event, error.message if error.message == STOPPED else f"⚠️ {error.message}")
        return error

    def stopped(error: Exception) -> bool:
        return status is not None and isinstance(error, gr.Error) and error.message == STOPPED

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def run_steps(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                if not stopped(error):
                    raise refused(error, args, kwargs) from None
                yield {status: STOPPED}
        return run_steps

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if not stopped(error):
                raise refused(error, args, kwargs) from None
            return {status: STOPPED}
    return run


def listen(listener: Callable, fn: Callable, inputs: list | None, outputs: list, status: gr.components.Component,
           **kwargs) -> Dependency:
    """``listener(fn, inputs, outputs, **kwargs)`` (``button.click``, ``event.then``, ``partial(gr.on, triggers)``,
    ...) with the outcome of each run kept in the tab's ``status`` line until the next action: a refusal's message
    (also a toast) or "Stopped" (see ``reporting``; ``fn`` takes a ``gr.Request``). Progress shows on ``status``
    unless ``kwargs`` say otherwise. A failure handler shows the refusal, which also clears the error badge that the
    page would leave where the progress showed."""
    if gr.Request not in get_type_hints(fn).values():
        raise ValueError(f"{fn.__name__} must take a gr.Request (its refusals are kept per session)")
    event = next(EVENT_NUMBERS)
    kwargs = {"show_progress_on": status, **kwargs}
    dependency = listener(reporting(fn, status if status in outputs else None, event), inputs, outputs, **kwargs)
    progress_on = kwargs["show_progress_on"] if isinstance(kwargs["show_progress_on"], list) else [
        kwargs["show_progress_on"]]

    def show_refusal(request: gr.Request) -> dict:
        return {status: REFUSALS.take(request, event) or gr.skip()}

    dependency.failure(show_refusal, None, [status, *(c for c in progress_on if c is not status)], queue=False,
                       show_progress="hidden", api_visibility="private")
    return dependency


def checked_settings(**values) -> EditSettings:
    """``EditSettings(**values)``; an invalid value becomes a page message."""
    try:
        return EditSettings(**values)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None


def require_photo(photo: dict | None) -> str:
    """The path of the uploaded photo (a FileData dict)."""
    if not photo:
        raise gr.Error("Upload a portrait photo first (or pick an example).", print_exception=False)
    return photo["path"]


def require_edit(edit: StoredEdit | None) -> StoredEdit:
    if edit is None:
        raise gr.Error("Run an edit first: there is no 3D portrait to render yet.", print_exception=False)
    return edit


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
    depth: gr.Image
    video: gr.Video
    model: gr.Model3D
    files: gr.File
    share_photo: gr.Checkbox
    publish: gr.Button
    link: gr.Markdown
    state: gr.State

    @property
    def edit_outputs(self) -> list:
        return [self.aligned, self.reference, self.strip, self.view, self.depth, self.status, self.state]

    @property
    def stale_outputs(self) -> list:
        """What a new edit clears before it starts: the previous edit's video, mesh and files, the sliders."""
        return [self.video, self.model, self.files, self.yaw, self.pitch, self.status]


def result_panel(name: str, reference_label: str, publishing: bool, editing: bool) -> ResultPanel:
    """Lay out the outputs of an edit (inside the current column); elem_ids start with ``name``. ``publishing``:
    whether the publish controls show (there is a gallery); ``editing``: whether they can be used (weights loaded)."""
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
        depth = gr.Image(label="Depth (near = bright)", height=280, elem_id=f"{name}-depth", **png)
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
    return ResultPanel(status, aligned, reference, strip, view, yaw, pitch, depth, video, model, files, share_photo,
                       publish, link, gr.State())


def output_settings(name: str, default: OutputSettings) -> tuple[gr.Slider, gr.Slider]:
    """Video and mesh settings (inside the current accordion)."""
    frames = gr.Slider(8, 240, value=default.video_frames, step=1, label="Orbit video frames",
                       elem_id=f"{name}-frames")
    resolution = gr.Slider(32, 384, value=default.mesh_resolution, step=16, label="Mesh resolution (grid side)",
                           elem_id=f"{name}-mesh-resolution")
    return frames, resolution


def page_url(request: gr.Request) -> str:
    """The address of the page the request came from (its Referer), for permalinks; the server's root otherwise."""
    referer = request.headers.get("referer") if request.headers else None
    return referer or f"{request.url.scheme}://{request.url.netloc}/"


def record_id(text: str) -> str:
    """The edit id in an id or a permalink (``...?edit=<id>``)."""
    text = (text or "").strip()
    return text.split("edit=")[-1].split("&")[0].split("#")[0] if "edit=" in text else text


def wire_publishing(panels: list[ResultPanel], gallery: Gallery, sessions: SessionFiles, tokens: gr.BrowserState,
                    listing: GalleryListing) -> None:
    """The publish button of each result panel (its tab's edit; the Gallery's ``listing`` follows), and the
    ``publish`` API: the session's latest edit. Owner tokens stay in this browser (``tokens``: edit id -> token), so
    it can delete its edits later."""

    def published(edit_folder: Path, share_photo: bool, request: gr.Request) -> tuple[str, str, str]:
        record = publish_edit(gallery, edit_folder, request.session_hash, bool(share_photo))
        return record.id, permalink(page_url(request), record.id), record.owner_token

    for panel in panels:
        @show_errors
        def publish_tab(edit: StoredEdit | None, share_photo: bool, owned: dict | None, request: gr.Request):
            record, link, token = published(require_edit(edit).folder(sessions.folder(request.session_hash)),
                                            share_photo, request)
            message = f"✅ Published: [{link}]({link}) — this browser keeps the key that can delete it."
            return message, {**(owned or {}), record: token}

        listing.refresh_after(listen(panel.publish.click, publish_tab, [panel.state, panel.share_photo, tokens],
                                     [panel.link, tokens], panel.link, api_visibility="private"))

    @show_errors
    def publish(share_photo: bool = False, request: gr.Request = None) -> dict:
        """Publish this session's latest edit (its strip, and its video, mesh and reference when made) to the
        gallery. Returns {"id", "url", "owner_token"}: keep the token, it is the only way to delete the edit."""
        record, link, token = published(latest_edit(sessions.folder(request.session_hash)), share_photo, request)
        return {"id": record, "url": link, "owner_token": token}

    gr.api(publish, api_name="publish")


@dataclass
class GalleryListing:
    """What the rest of the page needs from the Gallery tab: ``refresh_after(event)`` chains a refresh of its
    listing on an event (a publish, say), and ``delete_edit`` is the ``delete_edit`` API function."""

    refresh_after: Callable[[Dependency], Dependency]
    delete_edit: Callable


def gallery_tab(gallery: Gallery, sessions: SessionFiles, tokens: gr.BrowserState, tabs: gr.Tabs, demo: gr.Blocks,
                anchor_labels: dict[str, str]) -> GalleryListing:
    """The Gallery tab (inside the current ``gr.Tabs``): the listing with paging, kept current (on selecting the
    tab, after each publish, delete, report or open in this page, and every ``LISTING_REFRESH_S`` while the tab is
    shown), an opened edit with its files, download, delete (owner) and report; a ``?edit=<id>`` permalink opens its
    edit when the page loads. ``anchor_labels``: the anchors' names and labels, for the opened edits' summaries."""
    per_page = 12
    png = {"type": "filepath", "interactive": False, "format": "png"}
    with gr.Tab("Gallery", id="gallery") as tab:
        with gr.Row():
            with gr.Column(scale=3):
                tiles = gr.Gallery(label="Published edits, newest first", columns=3, height=520, allow_preview=False,
                                   object_fit="contain", elem_id="gallery-tiles")
                with gr.Row(equal_height=True):
                    newer = gr.Button("← Newer", size="sm", elem_id="gallery-newer")
                    page = gr.Number(1, precision=0, minimum=1, label="Page", elem_id="gallery-page")
                    older = gr.Button("Older →", size="sm", elem_id="gallery-older")
                listing = gr.Markdown(label="Listing", elem_id="gallery-listing")
            with gr.Column(scale=4):
                with gr.Row(equal_height=True):
                    edit_id = gr.Textbox(label="Edit id or permalink", placeholder="paste a …?edit=… link", scale=4,
                                         elem_id="gallery-id")
                    open_button = gr.Button("Open", scale=1, elem_id="gallery-open")
                info = gr.Markdown("Pick an edit on the left, or paste a permalink.", label="Opened edit",
                                   elem_id="gallery-info")
                strip = gr.Image(label="Three views", elem_id="gallery-strip", **png)
                with gr.Row(equal_height=True):
                    video = gr.Video(label="Orbit video", autoplay=True, loop=True, interactive=False, height=280,
                                     elem_id="gallery-video")
                    model = gr.Model3D(label="3D mesh", clear_color=(0.95, 0.95, 0.97, 1.0), height=280,
                                       elem_id="gallery-model")
                reference = gr.Image(label="Reference image", height=200, elem_id="gallery-reference", **png)
                download = gr.DownloadButton("Download all files (zip)", elem_id="gallery-download")
                with gr.Accordion("Delete or report", open=False):
                    owner_token = gr.Textbox(label="Owner token (needed only on another browser)", type="password",
                                             elem_id="gallery-token")
                    delete = gr.Button("Delete this edit", variant="stop", elem_id="gallery-delete")
                    reason = gr.Textbox(label="Why should this edit be taken down?", elem_id="gallery-reason")
                    report = gr.Button("Report", elem_id="gallery-report")
                message = gr.Markdown(label="Gallery message", elem_id="gallery-message")
        ids = gr.State([])
        timer = gr.Timer(LISTING_REFRESH_S, active=False)

    @show_errors
    def gallery_page(number: float, request: gr.Request) -> tuple:
        """Page ``number`` of published edits, newest first: tiles (strip, caption) and a line about the listing."""
        listing_page = gallery.page(max(1, int(number or 1)), per_page)
        tiles_value = [(str(record.strip), record.caption) for record in listing_page.items]
        note = f"Page {listing_page.number} of {listing_page.pages} · {listing_page.total} published edits"
        return tiles_value, note, [record.id for record in listing_page.items]

    @show_errors
    def open_edit(text: str, request: gr.Request) -> tuple:
        """Open a published edit by id or permalink: its description, strip, video, mesh, reference and a zip."""
        record = gallery.get(record_id(text))
        files = record.files
        archive = gallery.zip(record.id, sessions.folder(request.session_hash))
        return (record_markdown(record, permalink(page_url(request), record.id), anchor_labels), str(record.strip),
                str(files["video"]) if "video" in files else None, str(files["mesh"]) if "mesh" in files else None,
                str(files["reference"]) if "reference" in files else None, str(archive), record.id)

    @show_errors
    def delete_edit(edit_id: str, owner_token: str) -> str:
        """Delete a published edit (id or permalink) with the owner token that publishing returned."""
        target = record_id(edit_id)
        gallery.delete(target, (owner_token or "").strip())
        return f"🗑️ Deleted {target}."

    def delete_in_browser(text: str, token: str, owned: dict | None, request: gr.Request) -> tuple:
        """The Delete button: the token this browser kept when it published the edit, unless one is typed."""
        target = record_id(text)
        done = delete_edit(target, (token or "").strip() or (owned or {}).get(target, ""))
        remaining = {key: value for key, value in (owned or {}).items() if key != target}
        return done, remaining, "Deleted.", None, None, None, None, None

    @show_errors
    def flag_edit(text: str, why: str, request: gr.Request) -> str:
        """Report a published edit to the moderators with a short reason."""
        count = gallery.flag(record_id(text), why)
        return f"Thank you: the edit was reported ({count} report{'s' if count != 1 else ''} so far)."

    def wanted(request: gr.Request) -> str | None:
        """The edit id of a permalink (``?edit=<id>`` in the page's address), if the page was opened on one."""
        return request.query_params.get("edit") if request.query_params else None

    def permalink_tab(request: gr.Request):
        """A page opened on a permalink starts on the Gallery tab."""
        return gr.Tabs(selected="gallery") if wanted(request) else gr.skip()

    def open_permalink(request: gr.Request) -> tuple:
        """A page opened on a permalink opens its edit."""
        return open_edit(wanted(request), request) if wanted(request) else (gr.skip(),) * len(opened)

    listing_outputs = [tiles, listing, ids]
    opened = [info, strip, video, model, reference, download, edit_id]
    quietly = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

    def refresh_after(event: Dependency) -> Dependency:
        return event.then(gallery_page, page, listing_outputs, **quietly)

    def opening(listener: Callable, **kwargs) -> None:
        """``listener`` opens the edit named in ``edit_id``, after clearing the opened edit (a mesh viewer given the
        same file again would not redraw) and the message about it; the listing follows (a vanished edit leaves)."""
        cleared = listener(None, None, [strip, video, model, reference, download, message],
                           js="() => [null, null, null, null, null, '']", show_progress="hidden",
                           api_visibility="private")
        refresh_after(listen(cleared.then, open_edit, edit_id, opened, info, **kwargs))

    # The public events first: they take the functions' names as api_names, the private uses after them do not.
    listen(page.submit, gallery_page, page, listing_outputs, listing, api_name="gallery_page")
    opening(functools.partial(gr.on, [open_button.click, edit_id.submit]), api_name="open_edit")
    refresh_after(listen(report.click, flag_edit, [edit_id, reason], [message], message, api_name="flag_edit"))
    for button, step in ((newer, -1), (older, 1)):
        refresh_after(button.click(lambda number, step=step: max(1, int(number or 1) + step), page, page,
                                   queue=False, api_visibility="private"))

    def pick(listed: list[str], event: gr.SelectData) -> str:
        return listed[event.index]

    opening(tiles.select(pick, [ids], edit_id, queue=False, api_visibility="private").then,
            api_visibility="private")
    refresh_after(listen(delete.click, delete_in_browser, [edit_id, owner_token, tokens],
                         [message, tokens, info, strip, video, model, reference, download], message,
                         api_visibility="private"))
    # The listing refreshes itself while the tab is shown (a select fires also when a permalink selects the tab).
    refresh_after(tab.select(lambda: gr.Timer(active=True), None, timer, **quietly))

    def follow_tabs(event: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=event.value == tab.label)

    tabs.select(follow_tabs, None, timer, **quietly)
    timer.tick(gallery_page, page, listing_outputs, **quietly)
    # The tab is shown before its edit opens: a mesh viewer mounted with its file already set never draws it.
    listen(demo.load(permalink_tab, None, tabs, **quietly).then, open_permalink, None, opened, info,
           api_visibility="private")
    return GalleryListing(refresh_after, delete_edit)


def build_demo(editor: PortraitEditor | CheckpointError, text_error: str | None = None,
               sessions: SessionFiles | None = None, limiter: RateLimiter | None = None,
               gallery: Gallery | None = None) -> gr.Blocks:
    """The app's Blocks (queued, not launched) for a loaded editor, or for the error that stopped loading it (then
    the page explains it and the actions that need weights are disabled).

    text_error: why InstructPix2Pix could not be loaded (shown in the page), if it could not. gallery: the store of
    published edits (None: no Gallery tab and no publish buttons).
    """
    sessions = sessions or SessionFiles()
    limiter = limiter or RateLimiter()
    runner = DemoRunner(editor) if isinstance(editor, PortraitEditor) else None
    defaults = OutputSettings.for_device(runner.editor.device if runner else resolve_device("auto"))
    anchors = runner.editor.anchors if runner else shipped_anchors()

    def gpu(method: str) -> Callable:
        """``runner.<method>`` as ZeroGPU work (duration from ``DemoRunner.<method>_duration``); without an editor,
        a function that says why it cannot run."""
        if runner is None:
            def refuse(*args, **kwargs):
                raise gr.Error(disabled_reason(editor), print_exception=False)
            return refuse
        return spaces.GPU(duration=getattr(DemoRunner, f"{method}_duration"))(show_errors(getattr(runner, method)))

    gpu_edit, gpu_view, gpu_video, gpu_mesh, gpu_anchor, gpu_samples = (
        gpu(m) for m in ("edit", "view", "video", "mesh", "anchor", "samples"))

    def stream_fine_tune(*args, **kwargs):
        """``runner.fine_tune``'s updates as they come, user errors as page messages. A generator function: on
        ZeroGPU, ``spaces`` runs it in one GPU call and forwards each update as it is yielded."""
        updates = runner.fine_tune(*args, **kwargs)

        @show_errors
        def fine_tune_step():
            return next(updates, None)

        while (update := fine_tune_step()) is not None:
            yield update

    gpu_fine_tune = (spaces.GPU(duration=DemoRunner.fine_tune_duration)(stream_fine_tune) if runner is not None
                     else gpu("fine_tune"))

    def run_edit(request: gr.Request, photo: dict | None, **kwargs) -> tuple:
        """Rate-limit, edit (stoppable), and lay the result out for ``ResultPanel.edit_outputs``."""
        path = require_photo(photo)
        with sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the edit")  # stopped while it waited in the queue
            show_errors(limiter.take)(request.session_hash or "anonymous")
            files = gpu_edit(path, sessions.folder(request.session_hash), stop, **kwargs)
        return (str(files.aligned), str(files.reference), str(files.views), str(files.view), str(files.depth),
                status_markdown(files.edit), files.edit)

    # The edit events skip gradio's preprocessing and receive uploads as FileData dicts (already checked and
    # moved to gradio's cache): threedpe reads the files itself and says what is wrong with an unreadable one.
    def edit_text(photo: dict | None, instruction: str, use_own_photo: bool, anchor: str, steps: int,
                  text_guidance: float, image_guidance: float, resolution: int, seed: int, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Edit a portrait by a text instruction: returns the aligned crop, the reference (InstructPix2Pix edit of
        the anchor portrait, or of the photo itself), the 3-view strip, the frontal view, depth and the status."""
        settings = checked_settings(steps=int(steps), text_guidance=float(text_guidance),
                                    image_guidance=float(image_guidance), resolution=int(resolution))
        return run_edit(request, photo, prompt=instruction or "", settings=settings, seed=int(seed), anchor=anchor,
                        use_own_photo=bool(use_own_photo))

    def edit_reference(photo: dict | None, reference: dict | None, align_reference: bool, request: gr.Request,
                       progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Edit a portrait in the style of a reference image: same outputs as ``edit_text``."""
        require_photo(photo)
        if not reference:
            raise gr.Error("Upload a reference image (a portrait in the style you want).", print_exception=False)
        return run_edit(request, photo, reference=reference["path"], align_reference=bool(align_reference))

    def render_view(edit: StoredEdit | None, yaw: float, pitch: float, request: gr.Request) -> str:
        """Re-render the last edit from (yaw, pitch) in degrees from frontal, from its cached tri-planes."""
        return str(gpu_view(require_edit(edit), sessions.folder(request.session_hash), float(yaw), float(pitch)))

    def preview_view(edit: StoredEdit | None, yaw: float, pitch: float, request: gr.Request):
        """A draft of the view while a slider is dragged (the full view follows on release)."""
        if edit is None:
            return gr.skip()
        return str(gpu_view(edit, sessions.folder(request.session_hash), float(yaw), float(pitch), True))

    def orbit_video(edit: StoredEdit | None, frames: int, request: gr.Request,
                    progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Orbit video (mp4) of the last edit, and the status with its timing."""
        with sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the orbit video")  # after a stopped edit, or stopped in the queue
            path, edit = gpu_video(require_edit(edit), sessions.folder(request.session_hash), int(frames), stop)
        return str(path), status_markdown(edit), edit

    def mesh(edit: StoredEdit | None, resolution: int, request: gr.Request,
             progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Coloured mesh of the last edit: the GLB for the viewer, [GLB, PLY] to download, and the status."""
        with sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the mesh")
            glb, ply, edit = gpu_mesh(require_edit(edit), sessions.folder(request.session_hash), int(resolution),
                                      stop)
        return str(glb), [str(glb), str(ply)], status_markdown(edit), edit

    def generate_pairs(source: str, instruction: str, before: list | None, after: list | None, count: int,
                       seed: int, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        """Training pairs for a new style: the instruction applied by InstructPix2Pix to EG3D portraits (shown as
        they arrive), or the visitor's own before/after photos (matched by file name)."""
        stop = sessions.stop_flag(request.session_hash)
        stop.clear()
        if source == "pairs":
            samples = show_errors(photo_samples)([f for f in before or []], [f for f in after or []],
                                                 sessions.folder(request.session_hash) / "pairs")
            name, origin = "my photo pairs", {"kind": "photo pairs", "count": len(samples)}
        else:
            instruction = " ".join((instruction or "").split())
            if not instruction:
                raise gr.Error("Type the instruction that defines the new style.", print_exception=False)
            show_errors(limiter.take)(request.session_hash or "anonymous", "customisations")
            seeds, samples = list(range(int(seed) * 1000, int(seed) * 1000 + int(count))), []
            for start in range(0, len(seeds), SAMPLES_PER_CALL):
                samples += gpu_samples(instruction, seeds[start:start + SAMPLES_PER_CALL], stop)
                yield sample_tiles(samples), f"⏳ {len(samples)} of {len(seeds)} pairs…", gr.skip()
            name, origin = instruction, {"kind": "instruction", "instruction": instruction, "seeds": seeds}
        kept = len([s for s in samples if s.failure is None])
        note = (f"✅ {kept} usable pairs of {len(samples)}; press **Adapt**." if kept >= 3 else
                f"⚠️ Only {kept} usable pairs of {len(samples)}: adaptation needs 3 or more.")
        yield sample_tiles(samples), note, StyleSession(samples, origin, name)

    def customize(session: StyleSession | None, steps: int, rank: int, request: gr.Request,
                  progress=gr.Progress()):
        """Fine-tune the editor to the generated pairs for ``steps`` more steps: the progress, the loss curve and the
        held-out previews follow every step, the style file every chunk. Press again to continue training."""
        if session is None or not session.samples:
            raise gr.Error("Generate the training pairs first.", print_exception=False)
        if session.state is None:
            session = replace(session, config=CustomizeConfig(rank=int(rank), alpha=float(rank)))
        stop = sessions.stop_flag(request.session_hash)
        stop.clear()
        target = session.steps + int(steps)
        while session.steps < target and not stop():
            # until the chunk's first step (the trainer's set-up); then the status line says each step
            progress((session.steps, target), desc="fine-tuning", unit="steps")
            for update in gpu_fine_tune(session, min(TUNE_STEPS_PER_CALL, target - session.steps), stop,
                                        request.session_hash):
                session = session.advanced(update)
                if update.state is None:  # a step: the session (its state) is stored once the chunk is done
                    yield (loss_chart(session, target), snapshot_tiles(session) if update.snapshot else gr.skip(),
                           tuning_status(session, target), gr.skip(), gr.skip())
            style_path = sessions.folder(request.session_hash) / f"style-{slug(session.name)}.safetensors"
            session.style.save(style_path)
            yield (loss_chart(session, target), snapshot_tiles(session), style_status(session), str(style_path),
                   session)
        if stop():
            yield gr.skip(), gr.skip(), STOPPED + " " + style_status(session), gr.skip(), session

    def loss_chart(session: StyleSession, target: int) -> gr.LinePlot:
        """The loss curves, on an x axis spanning the steps asked for (the curve grows towards its end)."""
        return gr.LinePlot(curve_table(session), x_lim=[0, max(target, session.steps)])

    def upload_style(path: str | None, session: StyleSession | None, request: gr.Request):
        """Use an uploaded style file (it must have been made for this app's weights)."""
        if not path:
            return gr.skip(), gr.skip()
        style = show_errors(runner.editor.load_style)(path) if runner else None
        if style is None:
            raise gr.Error(disabled_reason(editor), print_exception=False)
        name = (style.metadata.get("source") or {}).get("instruction") or Path(path).stem
        kept = session.samples if session is not None else []
        return f"✅ Style **{name}** loaded ({style.mode}, {style.metadata.get('steps')} steps).", StyleSession(
            kept, style.metadata.get("source") or {}, name, style=style)

    def apply_style(photo: dict | None, reference: dict | None, instruction: str, session: StyleSession | None,
                    request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Edit a portrait with the customised style: in the style of a reference (default: one of the training
        edits) or by an instruction. Same outputs as ``edit_text``."""
        require_photo(photo)
        if session is None or session.style is None:
            raise gr.Error("Adapt a style first (or upload a style file).", print_exception=False)
        style = (session.name, session.style)
        if instruction and instruction.strip():
            return run_edit(request, photo, prompt=instruction, style=style)
        if reference:
            return run_edit(request, photo, reference=reference["path"], style=style)
        if not usable(session.samples):
            raise gr.Error("Give a reference image in the style (an uploaded style has no training pairs).",
                           print_exception=False)
        return run_edit(request, photo, reference=session.reference, style=style)

    def stop_work(request: gr.Request) -> str:
        """Ask the running computation of this session to stop (it checks between steps, frames and chunks) and wait
        until it has (``SessionFiles.stop``): what is queued or chained after it then ends at once."""
        sessions.stop(request.session_hash)
        return STOPPED

    def begin_action(request: gr.Request) -> None:
        """A new action was clicked: a stop of earlier work no longer applies (``SessionFiles.begin``)."""
        sessions.begin(request.session_hash)

    def wire_outputs(run: list, stop: gr.Button, edit_fn: Callable, inputs: list, panel: ResultPanel,
                     frames: gr.Slider, mesh_resolution: gr.Slider, name: str, edit_api: str | None = None) -> None:
        """The events of one edit tab: clear stale outputs -> edit -> video -> mesh (``stop`` stops them), and the
        free-view sliders. Progress shows once, on the status line. ``edit_api``: the edit's api_name (edit_<name>)."""
        # in the browser, without a round trip (and without a progress flash on the cleared outputs)
        cleared = gr.on(run, None, None, panel.stale_outputs, js='() => [null, null, null, 0, 0, "⏳ Working…"]',
                        show_progress="hidden", api_visibility="private")
        begun = cleared.then(begin_action, None, None, queue=False, show_progress="hidden", api_visibility="private")
        edit = listen(begun.then, edit_fn, inputs, panel.edit_outputs, panel.status,
                      api_name=edit_api or f"edit_{name}", preprocess=False, concurrency_id="gpu")
        video = listen(edit.success, orbit_video, [panel.state, frames], [panel.video, panel.status, panel.state],
                       panel.status, api_name=f"orbit_video_{name}", concurrency_id="gpu")
        listen(video.success, mesh, [panel.state, mesh_resolution], [panel.model, panel.files, panel.status, panel.state],
               panel.status, api_name=f"mesh_{name}", concurrency_id="gpu")
        # No gradio `cancels`: the stop flag ends the running step at its next check, and the steps after it at once,
        # each with "Stopped" (a gradio cancel of a running event races with its end and can leave an error badge)
        stop.click(stop_work, None, panel.status, queue=False, api_visibility="private")
        view_inputs = [panel.state, panel.yaw, panel.pitch]
        views = {"show_progress_on": panel.view, "concurrency_id": "view", "trigger_mode": "always_last"}
        listen(functools.partial(gr.on, [panel.yaw.release, panel.pitch.release]), render_view, view_inputs,
               [panel.view], panel.status, api_name=f"render_view_{name}", show_progress="minimal", **views)
        if defaults.preview_while_dragging:  # one queue with the full views: a release is served after the drafts
            listen(functools.partial(gr.on, [panel.yaw.input, panel.pitch.input]), preview_view, view_inputs,
                   [panel.view], panel.status, api_visibility="private", show_progress="hidden", **views)

    def photo_input(name: str) -> gr.Image:
        photo = gr.Image(label="Portrait photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                         height=300, elem_id=f"{name}-photo")
        photo.upload(validated_upload(reference=False), photo, photo, preprocess=False, show_progress="hidden",
                     concurrency_limit=4, api_visibility="private")
        return photo

    def action_buttons(name: str) -> tuple[gr.Button, gr.Button]:
        with gr.Row():
            run = gr.Button("Edit in 3D", variant="primary", scale=3, interactive=runner is not None,
                            elem_id=f"{name}-run")
            stop = gr.Button("Stop", variant="stop", scale=1, interactive=runner is not None, elem_id=f"{name}-stop")
        return run, stop

    def show_anchor(name: str):
        if runner is None:
            return next((anchor.image() for anchor in anchors if anchor.name == name), None)
        return gpu_anchor(name)

    with gr.Blocks(title="3DPE: real-time 3D-aware portrait editing", delete_cache=(3600, SESSION_MAX_AGE_S)) as demo:
        gr.Markdown(HEADER, elem_id="title")
        missing = missing_weights_hint() if isinstance(editor, MissingWeightsError) else ""
        gr.Markdown(weights_notice(editor, text_error) + missing, elem_id="notice")
        gr.Markdown(HOW_TO)
        tokens = gr.BrowserState({}, storage_key="threedpe-gallery-owner-tokens")
        panels = []
        with gr.Tabs() as tabs:
            with gr.Tab("Text edit", id="text"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        photo = photo_input("text")
                        instruction = gr.Textbox(label="Instruction", placeholder="e.g. Turn her into a bronze statue",
                                                 max_lines=2, elem_id="text-instruction")
                        gr.Markdown(TEXT_HOW, elem_id="text-how")
                        own_photo = gr.Checkbox(False, label="Apply the instruction to my photo instead of the anchor "
                                                             "(slower, not cached)", elem_id="text-own-photo")
                        with gr.Row(equal_height=True):
                            anchor = gr.Dropdown([(a.label, a.name) for a in anchors], value=anchors[0].name,
                                                 label="Anchor portrait", scale=2, elem_id="text-anchor")
                            anchor_image = gr.Image(label="Anchor", height=140, interactive=False, show_label=False,
                                                    scale=1, format="png", elem_id="text-anchor-image")
                        button, stop = action_buttons("text")
                        with gr.Accordion("Settings", open=False):
                            steps = gr.Slider(1, 100, value=20, step=1, label="InstructPix2Pix steps",
                                              elem_id="text-steps")
                            text_guidance = gr.Slider(1.1, 15, value=7.5, step=0.1, label="Text guidance")
                            image_guidance = gr.Slider(1.0, 5, value=1.5, step=0.05, label="Image guidance")
                            resolution = gr.Slider(64, 768, value=defaults.text_resolution, step=64,
                                                   label="2D edit resolution (the editor sees the reference at 224²)",
                                                   elem_id="text-resolution")
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                            frames, mesh_resolution = output_settings("text", defaults)
                        gr.Examples([[EXAMPLE_PHOTO, text] for text in TEXT_EXAMPLES], [photo, instruction],
                                    cache_examples=False)
                    with gr.Column(scale=3):
                        panel = result_panel("text", "Reference (InstructPix2Pix edit)", gallery is not None,
                                             runner is not None)
                anchor.change(show_anchor, anchor, anchor_image, api_visibility="private", show_progress="minimal")
                demo.load(show_anchor, anchor, anchor_image, api_visibility="private", show_progress="minimal")
                panels.append(panel)
                wire_outputs([button.click, instruction.submit], stop, edit_text,
                             [photo, instruction, own_photo, anchor, steps, text_guidance, image_guidance, resolution,
                              seed], panel, frames, mesh_resolution, "text")
            with gr.Tab("Reference edit", id="reference"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        photo = photo_input("reference")
                        reference = gr.Image(label="Reference image (the style to apply)", type="filepath",
                                             sources=["upload", "clipboard"], height=220,
                                             elem_id="reference-reference")
                        reference.upload(validated_upload(reference=True), reference, reference, preprocess=False,
                                         show_progress="hidden", concurrency_limit=4, api_visibility="private")
                        align = gr.Checkbox(False, label="The reference is a raw photo: detect and align its face "
                                                         "(an aligned portrait is used as it is)",
                                            elem_id="reference-align")
                        button, stop = action_buttons("reference")
                        with gr.Accordion("Settings", open=False):
                            frames, mesh_resolution = output_settings("reference", defaults)
                        gr.Examples([[EXAMPLE_PHOTO, EXAMPLE_REFERENCE]], [photo, reference], cache_examples=False)
                    with gr.Column(scale=3):
                        panel = result_panel("reference", "Reference as the editor sees it", gallery is not None,
                                             runner is not None)
                panels.append(panel)
                wire_outputs([button.click], stop, edit_reference, [photo, reference, align], panel, frames,
                             mesh_resolution, "reference")
            with gr.Tab("Customize", id="customize"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        gr.Markdown(CUSTOMIZE_HOW)
                        source = gr.Radio([("An instruction", "instruction"), ("My own before/after photos", "pairs")],
                                          value="instruction", label="Training pairs from", elem_id="customize-source")
                        instruction = gr.Textbox(label="Instruction that defines the style",
                                                 placeholder="e.g. Turn her into a golden statue", max_lines=2,
                                                 elem_id="customize-instruction")
                        with gr.Group(visible=False) as own_pairs:
                            before = gr.File(label="Before photos", file_count="multiple", file_types=["image"],
                                             elem_id="customize-before")
                            after = gr.File(label="After photos (the same file names, edited)", file_count="multiple",
                                            file_types=["image"], elem_id="customize-after")
                        count = gr.Slider(3, 32, value=8, step=1, label="Training pairs to generate",
                                          elem_id="customize-count")
                        generate = gr.Button("Generate pairs", variant="primary", interactive=runner is not None,
                                             elem_id="customize-generate")
                        steps = gr.Slider(1, 2000, value=defaults.fine_tune_steps, step=1,
                                          label="Fine-tuning steps (press Adapt again to continue)",
                                          elem_id="customize-steps")
                        with gr.Row():
                            adapt = gr.Button("Adapt", variant="primary", scale=3, interactive=runner is not None,
                                              elem_id="customize-adapt")
                            adapt_stop = gr.Button("Stop", variant="stop", scale=1, interactive=runner is not None,
                                                   elem_id="customize-adapt-stop")
                        with gr.Accordion("Settings", open=False):
                            rank = gr.Slider(1, 64, value=8, step=1, label="LoRA rank (adapter size)",
                                             elem_id="customize-rank")
                            pair_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed of the EG3D portraits")
                        style_file = gr.File(label="Style file (download it, or upload one to use it)",
                                             file_types=[".safetensors"], elem_id="customize-style-file")
                    with gr.Column(scale=3):
                        tune_status = gr.Markdown("No style yet.", label="Customization status",
                                                  elem_id="customize-tune-status", elem_classes="status")
                        pair_tiles = gr.Gallery(label="Training pairs (edited portraits)", columns=4, height=240,
                                                object_fit="contain", elem_id="customize-pairs")
                        # no fixed height (it would clip the legend); integer steps (the "d" format)
                        loss_plot = gr.LinePlot(x="step", y="loss", color="curve", label="Loss during adaptation",
                                                color_map=CURVE_COLOURS, color_title="", x_title="step",
                                                y_title="loss", x_axis_format="d", elem_id="customize-loss")
                        snapshot_gallery = gr.Gallery(label="Held-out preview during adaptation", columns=4,
                                                      height=220, object_fit="contain", elem_id="customize-snapshots")
                gr.Markdown("### Use this style")
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        photo = photo_input("customize")
                        style_reference = gr.Image(label="Reference in the style (default: one of the training edits)",
                                                   type="filepath", sources=["upload", "clipboard"], height=180,
                                                   elem_id="customize-reference")
                        style_instruction = gr.Textbox(label="…or an instruction instead of a reference (optional)",
                                                       max_lines=2, elem_id="customize-style-instruction")
                        button, stop = action_buttons("customize")
                        with gr.Accordion("Settings", open=False):
                            frames, mesh_resolution = output_settings("customize", defaults)
                    with gr.Column(scale=3):
                        panel = result_panel("customize", "Reference", gallery is not None, runner is not None)
                style_session = gr.State()
                panels.append(panel)
                source.change(lambda chosen: (gr.Textbox(visible=chosen == "instruction"),
                                              gr.Group(visible=chosen == "pairs")),
                              source, [instruction, own_pairs], queue=False, api_visibility="private")
                pairs_made = listen(generate.click, generate_pairs,
                                    [source, instruction, before, after, count, pair_seed],
                                    [pair_tiles, tune_status, style_session], tune_status, api_name="generate_pairs",
                                    concurrency_id="gpu")
                listen(adapt.click, customize, [style_session, steps, rank],
                       [loss_plot, snapshot_gallery, tune_status, style_file, style_session], tune_status,
                       api_name="customize", concurrency_id="gpu")
                # Stop ends the pair generation at once; a fine-tune stops after its current step and keeps its steps.
                adapt_stop.click(stop_work, None, tune_status, cancels=[pairs_made], queue=False,
                                 api_visibility="private")
                listen(style_file.upload, upload_style, [style_file, style_session], [tune_status, style_session],
                       tune_status, api_visibility="private")
                wire_outputs([button.click], stop, apply_style,
                             [photo, style_reference, style_instruction, style_session], panel, frames,
                             mesh_resolution, "customize", edit_api="apply_style")
            listing = (gallery_tab(gallery, sessions, tokens, tabs, demo, {a.name: a.label for a in anchors})
                       if gallery is not None else None)
        if listing is not None:
            wire_publishing(panels, gallery, sessions, tokens, listing)
            gr.api(listing.delete_edit, api_name="delete_edit")
        gr.Markdown(CREDITS)

        def start_session(request: gr.Request) -> None:
            sessions.prune(SESSION_MAX_AGE_S)
            sessions.folder(request.session_hash)

        def end_session(request: gr.Request) -> None:
            sessions.close(request.session_hash)
            if runner is not None:
                runner.release(request.session_hash)  # its kept fine-tune

        demo.load(start_session, api_visibility="private")
        demo.unload(end_session)
    return demo.queue(default_concurrency_limit=1, max_size=20)


def launch(demo: gr.Blocks, gallery: Gallery | None = None, **kwargs) -> None:
    """Serve ``demo`` with the app's theme, style and upload limit (and the gallery's published files);
    ``kwargs`` go to ``gr.Blocks.launch``."""
    allowed = [str(gallery.root / "records")] if gallery is not None else []
    demo.launch(theme=THEME, css=CSS, max_file_size=MAX_UPLOAD, allowed_paths=allowed, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=os.environ.get("THREEDPE_WEIGHTS", "checkpoints"),
                        help="weight folder (default: $THREEDPE_WEIGHTS or checkpoints/); "
                             "`python -m threedpe tiny-weights DIR` writes an untrained one")
    parser.add_argument("--host", default=None, help="address to serve on (default: gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--gallery", default=None,
                        help="folder of the published edits (default: $THREEDPE_GALLERY or ~/.cache/threedpe/gallery); "
                             "with THREEDPE_GALLERY_REPO and HF_TOKEN set it is synced with that Hub dataset")
    parser.add_argument("--download", action="store_true",
                        help="when weights are missing, download them from their official sources first (also "
                             "THREEDPE_DOWNLOAD=1; in a terminal the app asks); never on a Space")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("threedpe").setLevel(logging.INFO)
    editor = load_editor(args.weights)  # at start-up, on CUDA when present: ZeroGPU wants it before any GPU call
    if isinstance(editor, MissingWeightsError):
        try:
            if first_start(args.weights, requested=args.download):
                editor = load_editor(args.weights)
        except WeightDownloadError as error:
            print(f"threedpe: error: {error}", file=sys.stderr)
    if isinstance(editor, CheckpointError):  # the full message, paths included, for whoever runs the server
        print(f"threedpe: editing is disabled: {editor}", file=sys.stderr)
    text_error = load_text_model(editor) if isinstance(editor, PortraitEditor) else None
    if text_error:
        print(f"threedpe: {text_error}", file=sys.stderr)
    gallery = Gallery(args.gallery)
    try:
        launch(build_demo(editor, text_error, gallery=gallery), gallery, server_name=args.host,
               server_port=args.port, share=args.share)
    finally:
        gallery.close()


if __name__ == "__main__":
    main()
