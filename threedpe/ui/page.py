"""The app's page: the header and the weights notice, the tabs (Text, Reference, Video, Live, Batch, Customize,
Gallery), the credits, and how it is served (theme, style, upload limit, the gallery's files)."""
from __future__ import annotations

import gradio as gr

from threedpe.weights import CheckpointError, MissingWeightsError
from threedpe.fetch.download import missing_weights_hint
from threedpe.gallery import Gallery
from threedpe.pipeline import PortraitEditor
from threedpe.serving.messages import weights_notice
from threedpe.serving.sessions import RateLimiter, SessionFiles
from threedpe.ui.batch import batch_tab
from threedpe.ui.common import SESSION_MAX_AGE_S, UIContext, precision_choice
from threedpe.ui.customize import customize_tab
from threedpe.ui.gallery import Publishing, gallery_tab
from threedpe.ui.live import live_tab
from threedpe.ui.reference import reference_tab
from threedpe.ui.text import text_tab
from threedpe.ui.video import video_tab

MAX_UPLOAD = "200mb"  # gradio's upload limit: a clip for the Video tab (10 s of 4K from a phone is 50-80 MB)
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky")
CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
#notice { border-left: 4px solid var(--color-accent); padding-left: 0.8em; }
.status { min-height: 2.5em; }
"""
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
**Video** edits a portrait clip frame by frame, **Live** your webcam as you watch, **Batch** many photos at once;
**Customize** teaches the editor a new style.
"""
CREDITS = """
---
**Credits and licences.** Method: Bai, Shi, Xu, Ouyang, Wang, Yang, Wang, Wetzstein, Shen, Chen, *Real-time 3D-aware
Portrait Editing from a Single Image*, ECCV 2024. Built on [EG3D](https://github.com/NVlabs/eg3d) (NVIDIA),
Live3D and [InstructPix2Pix](https://github.com/timothybrooks/instruct-pix2pix) (Brooks et al.).
The EG3D and 3DPE weights are for **non-commercial research only** (NVIDIA Source Code License-NC; 3DPE authors'
terms); InstructPix2Pix weights: CreativeML OpenRAIL-M. Example photo: astronaut Eileen Collins (NASA, public domain).
Photos you upload are kept in a temporary per-session folder that is deleted when you leave.
"""


def build_demo(editor: PortraitEditor | CheckpointError, text_error: str | None = None,
               sessions: SessionFiles | None = None, limiter: RateLimiter | None = None,
               gallery: Gallery | None = None) -> gr.Blocks:
    """The app's Blocks (queued, not launched) for a loaded editor, or for the error that stopped loading it (then
    the page explains it and the actions that need weights are disabled).

    text_error: why InstructPix2Pix could not be loaded (shown in the page), if it could not. gallery: the store of
    published edits (None: no Gallery tab and no publish buttons).
    """
    ctx = UIContext.create(editor, text_error, sessions, limiter, gallery)
    with gr.Blocks(title="3DPE: real-time 3D-aware portrait editing", delete_cache=(3600, SESSION_MAX_AGE_S)) as demo:
        gr.Markdown(HEADER, elem_id="title")
        missing = missing_weights_hint() if isinstance(editor, MissingWeightsError) else ""
        gr.Markdown(weights_notice(editor, text_error) + missing, elem_id="notice")
        gr.Markdown(HOW_TO)
        precision_choice(ctx)
        tokens = gr.BrowserState({}, storage_key="threedpe-gallery-owner-tokens")
        style = gr.State()  # the visitor's customisation (a StyleSession), made in Customize, used in Video and Live too
        with gr.Tabs() as tabs:
            panels = [text_tab(ctx, demo), reference_tab(ctx)]
            clips = video_tab(ctx, style)
            live_tab(ctx, demo, style)
            batch_tab(ctx, MAX_UPLOAD)
            panels.append(customize_tab(ctx, style))
            listing = gallery_tab(ctx, tokens, tabs, demo) if gallery is not None else None
        if listing is not None:
            publishing = Publishing(ctx, tokens)
            publishing.wire(panels, listing)
            clips.wire_publishing(publishing, listing)
            gr.api(listing.delete_edit, api_name="delete_edit")
        gr.Markdown(CREDITS)
        demo.load(ctx.start_session, api_visibility="private")
        demo.unload(ctx.end_session)
    return demo.queue(default_concurrency_limit=1, max_size=20)


def launch_options(gallery: Gallery | None = None) -> dict:
    """The keyword arguments of ``gr.Blocks.launch`` that serve the page as designed: theme, style, the upload limit
    and the gallery's published files."""
    allowed = [str(gallery.root / "records")] if gallery is not None else []
    return {"theme": THEME, "css": CSS, "max_file_size": MAX_UPLOAD, "allowed_paths": allowed}


def launch(demo: gr.Blocks, gallery: Gallery | None = None, **kwargs) -> None:
    """Serve ``demo`` with the app's theme, style and upload limit (and the gallery's published files);
    ``kwargs`` go to ``gr.Blocks.launch``."""
    demo.launch(**launch_options(gallery), **kwargs)
