"""The Video tab: a portrait clip (uploaded, or recorded with the webcam) edited frame by frame with a reference image
or an instruction (and the session's customised style), in chunks of GPU calls (:mod:`threedpe.serving.clips`);
the edited clip, its side-by-side, Stop and Publish."""
from __future__ import annotations

import gradio as gr

from threedpe.cancel import check
from threedpe.devices import resolve_device
from threedpe.serving.clips import ClipEdit, ClipLimits, edit_clip
from threedpe.serving.messages import public_message
from threedpe.serving.style_sessions import StyleSession
from threedpe.ui.common import (EXAMPLE_REFERENCE, FRAME_STRENGTH, UIContext, action_buttons, set_in_browser,
                                strength_slider, validated_upload)
from threedpe.ui.gallery import GalleryTab, Publishing
from threedpe.ui.status import listen, refusal, show_errors
from threedpe.video import VideoError
from threedpe.frame_editing import SMOOTHING, VideoSettings
from threedpe.video_editing import plan_clip

VIDEO_HOW = """
**Edit a portrait clip frame by frame.** Upload a clip of one face (any common format; a phone's vertical clip is
fine), or **record a few seconds with the webcam** (where live streaming is not possible, this is the way to see
yourself edited). Give a reference portrait in the target style *or* an instruction (applied by InstructPix2Pix to
an anchor portrait, as in the Text tab). The face is tracked and smoothed, each frame edited and pasted back (or
shown as a stabilised head), and the sound kept. This server edits clips {limits}; long clips run in chunks of
{chunk} frames.
"""
VIEWS = [("The head as it moves, pasted back into the clip", "source"), ("A stabilised head at a fixed angle", "fixed")]


class VideoTab:
    """The Video tab's layout and events (inside the current ``gr.Tabs``); ``style``: the Customize tab's
    ``StyleSession`` state."""

    def __init__(self, ctx: UIContext, style: gr.State):
        device = ctx.runner.editor.device if ctx.runner else resolve_device("auto")
        self.ctx, self.style, self.limits = ctx, style, ClipLimits.for_server(device)
        default = VideoSettings()
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                gr.Markdown(VIDEO_HOW.format(limits=self.limits.describe(), chunk=self.limits.chunk_frames),
                            elem_id="video-how")
                self.clip = gr.Video(label="Portrait clip (upload, or record with the webcam)",
                                     sources=["upload", "webcam"], height=300, elem_id="video-clip")
                self.reference = gr.Image(label="Reference image (the style to apply)", type="filepath",
                                          sources=["upload", "clipboard"], height=200, elem_id="video-reference")
                self.instruction = gr.Textbox(label="…or an instruction instead of a reference",
                                              placeholder="e.g. Turn her into a bronze statue", max_lines=2,
                                              elem_id="video-instruction")
                self.use_style = gr.Checkbox(False, label="Use my customised style (made or loaded in the Customize "
                                                          "tab)", elem_id="video-use-style")
                self.strength = strength_slider("video", ctx.strength_unavailable, FRAME_STRENGTH)
                self.run, self.stop = action_buttons("video", ctx.editing, "Edit the clip")
                with gr.Accordion("Settings", open=False):
                    self.view = gr.Radio(VIEWS, value=default.view, label="Output", elem_id="video-view")
                    self.yaw = gr.Slider(-45, 45, value=default.yaw, step=1, label="Fixed view: yaw (°)",
                                         elem_id="video-yaw")
                    self.pitch = gr.Slider(-30, 30, value=default.pitch, step=1, label="Fixed view: pitch (°)",
                                           elem_id="video-pitch")
                    self.side_by_side = gr.Checkbox(default.side_by_side, label="Also a side-by-side (input | output)",
                                                    elem_id="video-side-by-side")
                    self.smooth = gr.Radio(list(SMOOTHING), value=default.smooth,
                                           label="Smoothing across frames (against flicker; more lags a moving head)",
                                           elem_id="video-smooth")
                gr.Examples([[EXAMPLE_REFERENCE]], [self.reference], label="Example reference", cache_examples=False)
            with gr.Column(scale=3):
                self.status = gr.Markdown("Results appear here.", label="Status", elem_id="video-status",
                                          elem_classes="status")
                self.edited = gr.Video(label="Edited clip", autoplay=True, interactive=False, height=360,
                                       buttons=["download"], elem_id="video-edited")
                self.stacked = gr.Video(label="Side by side (input | output)", autoplay=True, interactive=False,
                                        height=280, buttons=["download"], visible=False, elem_id="video-stacked")
                self.reference_seen = gr.Image(label="Reference as the editor sees it", type="filepath", format="png",
                                               interactive=False, height=200, elem_id="video-ref")
                with gr.Row(equal_height=True, visible=ctx.gallery is not None):
                    self.publish = gr.Button("Publish to the gallery", interactive=ctx.editing,
                                             elem_id="video-publish")
                self.link = gr.Markdown(elem_id="video-link")
        self.state = gr.State()  # the id of the session's last clip edit

    def check_clip(self, clip: dict | None):
        """On upload: a file that is not a readable video is cleared with a message; the limits that will apply
        (trimmed, scaled down) are said at once."""
        if not clip:
            return gr.skip()
        try:
            plan = plan_clip(clip["path"], self.limits.settings(VideoSettings()))
        except VideoError as error:
            gr.Warning(public_message(str(error)))
            return None
        for note in plan.notes:
            gr.Warning(note.replace("were edited", "will be edited").replace("it was edited", "it will be edited"))
        return gr.skip()

    def edit_video(self, clip: dict | None, reference: dict | None, instruction: str, use_style: bool, view: str,
                   yaw: float, pitch: float, side_by_side: bool, smooth: str, style_session: StyleSession | None,
                   strength: float = 1.0, request: gr.Request = None, progress=gr.Progress(track_tqdm=True)) -> dict:
        """Edit a portrait clip frame by frame in the style of a reference image, or by an instruction (exactly
        one): returns the edited clip (the input's size, frame rate and sound), the side-by-side (when asked), the
        reference as the editor saw it and the status (frames, seconds, fps, frames without a face, flicker,
        notes)."""
        if not clip:
            raise refusal("Upload a clip first (or record a few seconds with the webcam).")
        instruction = (instruction or "").strip()
        if bool(reference) == bool(instruction):
            raise refusal("Give either a reference image or an instruction (one of the two).")
        style = None
        if use_style:
            if style_session is None or style_session.style is None:
                raise refusal("There is no customised style in this session yet: adapt or upload one in the "
                              "Customize tab, or untick “Use my customised style”.")
            style = (style_session.name, style_session.style)
        settings = show_errors(VideoSettings)(view=view, yaw=float(yaw), pitch=float(pitch),
                                              side_by_side=bool(side_by_side), smooth=smooth,
                                              strength=1.0 if strength is None else float(strength))
        with self.ctx.sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the clip")  # stopped while it waited in the queue
            show_errors(self.ctx.limiter.take)(request.session_hash or "anonymous")
            done = show_errors(edit_clip)(
                self.ctx.work, clip["path"], self.ctx.folder(request), stop, self.limits, settings=settings,
                reference=reference["path"] if reference else None, prompt=instruction or None, style=style,
                precision=self.ctx.precision(request),
                progress=lambda frames, total: progress((frames, total), desc="frame", unit="frame"))
        return self.shown(done)

    def shown(self, done: ClipEdit) -> dict:
        return {self.edited: str(done.video), self.stacked: str(done.side_by_side) if done.side_by_side else None,
                self.reference_seen: str(done.reference), self.status: done.status(), self.state: done.id}

    def publish_clip(self, edit_id: str | None, owned: dict | None, publishing: Publishing,
                     request: gr.Request) -> dict:
        """Publish the tab's last clip edit; the link, and the owner token kept in this browser."""
        if not edit_id:
            raise refusal("Edit a clip first: there is nothing to publish yet.")
        record, link, token = show_errors(publishing.published)(self.ctx.folder(request) / edit_id, False, request)
        return {self.link: f"✅ Published: [{link}]({link}) — this browser keeps the key that can delete it.",
                publishing.tokens: {**(owned or {}), record: token}}

    def wire(self) -> None:
        self.clip.upload(self.check_clip, self.clip, self.clip, preprocess=False, show_progress="hidden",
                         concurrency_limit=4, api_visibility="private")
        self.side_by_side.change(lambda shown: gr.Video(visible=shown), self.side_by_side, self.stacked, queue=False,
                                 show_progress="hidden", api_visibility="private")  # shown while it is asked for
        self.reference.upload(validated_upload(reference=True), self.reference, self.reference, preprocess=False,
                              show_progress="hidden", concurrency_limit=4, api_visibility="private")
        cleared = self.run.click(None, None, **set_in_browser({self.edited: None, self.stacked: None, self.link: "",
                                                                self.status: "⏳ Working…"}),
                                 show_progress="hidden", api_visibility="private")
        begun = cleared.then(self.ctx.begin_action, None, None, queue=False, show_progress="hidden",
                             api_visibility="private")
        listen(begun.then, self.edit_video,
               [self.clip, self.reference, self.instruction, self.use_style, self.view, self.yaw, self.pitch,
                self.side_by_side, self.smooth, self.style, self.strength],
               [self.edited, self.stacked, self.reference_seen, self.status, self.state], self.status,
               api_name="edit_video", preprocess=False, concurrency_id="gpu")
        self.stop.click(self.ctx.stop_work, None, self.status, queue=False, api_visibility="private")

    def wire_publishing(self, publishing: Publishing, listing: GalleryTab) -> None:
        """The Publish button (``publishing``: the page's :class:`~threedpe.ui.gallery.Publishing`; the gallery's
        ``listing`` refreshes after it)."""
        def publish_clip(edit_id: str | None, owned: dict | None, request: gr.Request) -> dict:
            return self.publish_clip(edit_id, owned, publishing, request)

        listing.refresh_after(listen(self.publish.click, publish_clip, [self.state, publishing.tokens],
                                     [self.link, publishing.tokens], self.link, api_visibility="private"))


def video_tab(ctx: UIContext, style: gr.State) -> VideoTab:
    """The Video tab (inside the current ``gr.Tabs``), wired but for publishing (``VideoTab.wire_publishing``)."""
    with gr.Tab("Video", id="video"):
        tab = VideoTab(ctx, style)
    tab.wire()
    return tab
