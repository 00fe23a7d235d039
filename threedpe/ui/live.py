"""The Live tab: the webcam stream edited as you watch (gradio's own streaming), with the achieved fps and the frames
dropped when the device is slower than the camera (:mod:`threedpe.serving.live`)."""
from __future__ import annotations

import gradio as gr
import numpy as np

from threedpe.diffusion import EditSettings
from threedpe.serving.live import LiveReference, LiveSessions
from threedpe.serving.style_sessions import StyleSession
from threedpe.ui.common import EXAMPLE_REFERENCE, FRAME_STRENGTH, UIContext, strength_slider, validated_upload
from threedpe.ui.status import listen, refusal, show_errors
from threedpe.frame_editing import FrameEditor, VideoSettings

# The browser sends the newest camera frame this often; gradio keeps only the latest while one is being edited, so a
# short interval costs no backlog and lets the next frame start at most this long after an edit ends.
STREAM_EVERY_S = 0.1
# One visitor's stream holds a worker of the "live" queue this long, then ends (press the webcam button again): the
# next visitor waits at most this long.
TIME_LIMIT_S = 60
# Streams at once: each frame is a short call on the shared editor, so two streams share the device frame by frame;
# a third waits in the queue. Not the edit tabs' "gpu" queue, whose work a stream would otherwise block for a minute.
LIVE_STREAMS = 2
LIVE_HOW = """
**Edit your webcam as you watch.** Give a reference portrait (or an instruction), press the webcam's record
button, and every frame is tracked, encoded with the reference prepared once, and rendered: *Follow my head* puts
the edited head back into the frame at your own pose, *Fixed front view* shows it stabilised. When the device is
slower than the camera, frames are dropped (never queued), so what you see stays current; the figures below say how
many frames per second were edited. Where the webcam cannot stream (a browser or network that blocks it), use the
**Video** tab: record a few seconds with its webcam button and edit them.
"""
NO_REFERENCE = "⚠️ Give a reference image or an instruction: editing starts as soon as there is one."
NO_STYLE = ("⚠️ There is no customised style in this session yet: adapt or upload one in the Customize tab, or "
            "untick “Use my customised style”.")
BOTH_REFERENCES = "⚠️ Give a reference image **or** an instruction, not both: clear one of them."
VIEWS = [("Follow my head (pasted back)", "source"), ("Fixed front view (stabilised)", "fixed")]


class LiveTab:
    """The Live tab's components and its stream handler."""

    def __init__(self, ctx: UIContext, style: gr.State):
        self.ctx, self.style = ctx, style
        self.sessions = LiveSessions(self.prepare, ctx.work.live_frame, STREAM_EVERY_S)
        gr.Markdown(LIVE_HOW)
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self.webcam = gr.Image(label="Webcam", sources=["webcam"], streaming=True, type="numpy", height=320,
                                       webcam_options=gr.WebcamOptions(mirror=True), elem_id="live-webcam")
                self.reference = gr.Image(label="Reference image (the style to apply)", type="filepath",
                                          sources=["upload", "clipboard"], height=200, elem_id="live-reference")
                self.reference.upload(validated_upload(reference=True), self.reference, self.reference,
                                      preprocess=False, show_progress="hidden", concurrency_limit=4,
                                      api_visibility="private")
                self.instruction = gr.Textbox(label="…or an instruction (instead of a reference image)",
                                              placeholder="e.g. Turn her into a bronze statue", max_lines=2,
                                              elem_id="live-instruction")
                self.view = gr.Radio(VIEWS, value="source", label="View", elem_id="live-view")
                self.use_style = gr.Checkbox(False, label="Use my customised style (made or loaded in the Customize "
                                                          "tab)", elem_id="live-use-style")
                self.strength = strength_slider("live", ctx.strength_unavailable, FRAME_STRENGTH)
                gr.Examples([[EXAMPLE_REFERENCE]], [self.reference], label="Example reference",
                            cache_examples=False)
            with gr.Column(scale=3):
                self.output = gr.Image(label="Edited live", format="jpeg", interactive=False, height=420,
                                       elem_id="live-output")
                self.stats = gr.Markdown("Start the webcam to edit it live.", elem_id="live-stats",
                                         elem_classes="status")

    def prepare(self, reference: LiveReference, settings: VideoSettings, fps: float
                ) -> tuple[FrameEditor, list[str]]:
        """A stream's frame editor through the GPU call: a reference image, or an instruction applied to the first
        anchor portrait at the device's 2D edit resolution."""
        return self.ctx.work.prepare_frames(reference.reference, reference.prompt, settings, fps,
                                            style=reference.style,
                                            edit_settings=EditSettings(resolution=self.ctx.defaults.text_resolution))

    def stream(self, frame: np.ndarray | None, reference: str | None, instruction: str | None, view: str,
               use_style: bool, style_session: StyleSession | None, strength: float, request: gr.Request) -> dict:
        """Edit the newest webcam frame with the reference (prepared on the first frame, and when it changes), in the
        session's customised style when ``use_style``."""
        if frame is None:
            return {self.output: gr.skip(), self.stats: gr.skip()}
        self.ctx.refuse_without_editor()
        instruction = " ".join((instruction or "").split()) or None
        if (reference is None) == (instruction is None):  # the stream goes on: editing starts once there is one
            return {self.output: gr.skip(), self.stats: NO_REFERENCE if reference is None else BOTH_REFERENCES}
        if instruction is not None and self.ctx.text_error:
            raise refusal(self.ctx.text_error)
        style = {}
        if use_style:
            if style_session is None or style_session.style is None:
                return {self.output: gr.skip(), self.stats: NO_STYLE}
            style = {"style": style_session.style,  # prepared again when the style is trained further
                     "style_name": f"{style_session.name} ({style_session.steps} steps, {style_session.id})"}
        settings = show_errors(VideoSettings)(view=view, preview=self.ctx.defaults.live_preview,
                                              strength=float(strength), flicker=False)  # not shown live
        live = self.sessions.frame(session_key(request), frame,
                                   LiveReference(reference=reference, prompt=instruction, **style), settings,
                                   self.ctx.precision(request))
        image = gr.skip() if live.image is None else live.image
        return {self.output: image, self.stats: live.stats.markdown()}

    def release(self, request: gr.Request) -> None:
        """Forget this session's stream (it stopped, the webcam was cleared, or the page closed)."""
        self.sessions.release(session_key(request))


def session_key(request: gr.Request) -> str:
    return request.session_hash or "anonymous"


def live_tab(ctx: UIContext, demo: gr.Blocks, style: gr.State) -> None:
    """The Live tab (inside the current ``gr.Tabs``; ``style``: the Customize tab's ``StyleSession``); its streams
    are released when they stop or the page closes."""
    with gr.Tab("Live", id="live"):
        tab = LiveTab(ctx, style)
    streaming = listen(tab.webcam.stream, tab.stream,
                       [tab.webcam, tab.reference, tab.instruction, tab.view, tab.use_style, tab.style, tab.strength],
                       [tab.output, tab.stats], tab.stats, stream_every=STREAM_EVERY_S, time_limit=TIME_LIMIT_S,
                       concurrency_limit=LIVE_STREAMS, concurrency_id="live", show_progress="hidden",
                       api_visibility="private")
    streaming.then(tab.release, None, None, queue=False, show_progress="hidden", api_visibility="private")
    tab.webcam.clear(tab.release, None, None, queue=False, show_progress="hidden", api_visibility="private")
    demo.unload(tab.release)
