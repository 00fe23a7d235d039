"""3DPE Gradio app (Hugging Face Space or local): edit a portrait photo in 3D with a text instruction or a reference.

    python app.py                          # weights from $THREEDPE_WEIGHTS or checkpoints/
    python app.py --weights DIR --port 7860 [--host 0.0.0.0] [--share]

Layout only: the work is done by ``threedpe.demo.DemoRunner`` (wrapped in ``@spaces.GPU`` for ZeroGPU, a no-op
elsewhere). ``build_demo`` makes the Blocks without launching, so tests can serve it in-process.
"""
from __future__ import annotations

import spaces  # noqa: I001 -- first: on ZeroGPU it must be imported before anything initialises CUDA

import argparse
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from threedpe.checkpoints import CheckpointError
from threedpe.demo import (MAX_PITCH_DEGREES, MAX_YAW_DEGREES, USER_ERRORS, DemoRunner, OutputSettings,
                           SessionFiles, StoredEdit, load_editor, load_text_model, timings_markdown, view_angles,
                           weights_notice)
from threedpe.diffusion import EditSettings
from threedpe.pipeline import PortraitEditor

ROOT = Path(__file__).resolve().parent
EXAMPLE_PHOTO = str(ROOT / "examples" / "astronaut.jpg")
EXAMPLE_REFERENCE = str(ROOT / "examples" / "anchors" / "astronaut_flip.png")
SESSION_MAX_AGE_S = 6 * 3600
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky")
CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
#notice { border-left: 4px solid var(--color-accent); padding-left: 0.8em; }
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
"""
CREDITS = """
---
**Credits and licences.** Method: Bai, Shi, Xu, Ouyang, Wang, Yang, Wang, Wetzstein, Shen, Chen, *Real-time 3D-aware
Portrait Editing from a Single Image*, ECCV 2024. Built on [EG3D](https://github.com/NVlabs/eg3d) (NVIDIA),
Live3D and [InstructPix2Pix](https://github.com/timothybrooks/instruct-pix2pix) (Brooks et al.).
The EG3D and 3DPE weights are for **non-commercial research only** (NVIDIA Source Code License-NC; 3DPE authors'
terms); InstructPix2Pix weights: CreativeML OpenRAIL-M. Example photo: astronaut Eileen Collins (NASA, public domain).
Text instructions are applied to an anchor portrait, whose edit becomes the reference (as in the paper's training).
Photos you upload are kept in a temporary per-session folder that is deleted when you leave.
"""
TEXT_EXAMPLES = ["Turn her into a bronze statue", "Make her look like a Pixar character",
                 "Make it a watercolor painting", "Give her a zombie look"]


def show_errors(fn: Callable) -> Callable:
    """``fn`` with user errors (no face, unreadable file, bad prompt, missing weights) raised as ``gr.Error``:
    a message in the page, no traceback. Applied inside ``@spaces.GPU`` so that ZeroGPU forwards the message."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as error:
            raise gr.Error(str(error), print_exception=False) from None
    return guarded


def checked_settings(**values) -> EditSettings:
    """``EditSettings(**values)``; an invalid value becomes a page message."""
    try:
        return EditSettings(**values)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None


@dataclass
class ResultPanel:
    """The output components of one edit tab and the tab's per-session state (a ``StoredEdit``)."""

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
    timings: gr.Markdown
    state: gr.State

    @property
    def edit_outputs(self) -> list:
        return [self.aligned, self.reference, self.strip, self.view, self.depth, self.yaw, self.pitch,
                self.timings, self.state]


def result_panel(name: str, reference_label: str) -> ResultPanel:
    """Lay out the outputs of an edit (inside the current column); elem_ids start with ``name``."""
    png = {"format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
    with gr.Row(equal_height=True):
        aligned = gr.Image(label="Aligned input", height=220, elem_id=f"{name}-aligned", **png)
        reference = gr.Image(label=reference_label, height=220, elem_id=f"{name}-ref", **png)
    strip = gr.Image(label="Edited 3D portrait: three views", elem_id=f"{name}-strip", **png)
    with gr.Row(equal_height=True):
        with gr.Column():
            view = gr.Image(label="Free view", height=280, elem_id=f"{name}-view", **png)
            yaw = gr.Slider(-MAX_YAW_DEGREES, MAX_YAW_DEGREES, value=0, step=1,
                            label="Yaw (°; + moves the camera to the right)",
                            interactive=False, elem_id=f"{name}-yaw")
            pitch = gr.Slider(-MAX_PITCH_DEGREES, MAX_PITCH_DEGREES, value=0, step=1,
                              label="Pitch (°; + moves the camera down)",
                              interactive=False, elem_id=f"{name}-pitch")
        depth = gr.Image(label="Depth (near = bright)", height=280, elem_id=f"{name}-depth", **png)
    with gr.Row(equal_height=True):
        video = gr.Video(label="Orbit video", autoplay=True, loop=True, interactive=False, height=320,
                         buttons=["download"], elem_id=f"{name}-video")
        model = gr.Model3D(label="3D mesh (GLB)", clear_color=(0.95, 0.95, 0.97, 1.0), height=320,
                         elem_id=f"{name}-model")
    files = gr.File(label="Download the mesh (GLB / PLY)", file_count="multiple", interactive=False,
                    elem_id=f"{name}-files")
    timings = gr.Markdown(elem_id=f"{name}-timings")
    return ResultPanel(aligned, reference, strip, view, yaw, pitch, depth, video, model, files, timings, gr.State())


def output_settings(name: str, default: OutputSettings) -> tuple[gr.Slider, gr.Slider]:
    """Video and mesh settings (inside the current accordion)."""
    frames = gr.Slider(8, 240, value=default.video_frames, step=1, label="Orbit video frames",
                       elem_id=f"{name}-frames")
    resolution = gr.Slider(32, 384, value=default.mesh_resolution, step=16, label="Mesh resolution (grid side)",
                           elem_id=f"{name}-mesh-resolution")
    return frames, resolution


def build_demo(editor: PortraitEditor | CheckpointError, text_error: str | None = None,
               sessions: SessionFiles | None = None) -> gr.Blocks:
    """The app's Blocks (queued, not launched) for a loaded editor, or for the error that stopped loading it.

    text_error: why InstructPix2Pix could not be loaded (shown in the page), if it could not.
    """
    sessions = sessions or SessionFiles()
    runner = DemoRunner(editor) if isinstance(editor, PortraitEditor) else None
    defaults = OutputSettings.for_device(runner.editor.device) if runner else OutputSettings()

    def gpu(method: str) -> Callable:
        """``runner.<method>`` as ZeroGPU work (duration from ``DemoRunner.<method>_duration``); without an editor,
        a function that shows why it could not be loaded."""
        if runner is None:
            def refuse(*args, **kwargs):
                raise gr.Error(str(editor), print_exception=False)
            return refuse
        return spaces.GPU(duration=getattr(DemoRunner, f"{method}_duration"))(show_errors(getattr(runner, method)))

    gpu_edit, gpu_view, gpu_video, gpu_mesh = gpu("edit"), gpu("view"), gpu("video"), gpu("mesh")

    def edited(views) -> tuple:
        frontal = gr.Slider(value=0, interactive=True)
        return (views.edit.image, views.edit.reference, views.strip, views.view, views.depth, frontal, frontal,
                timings_markdown(views.edit), views.edit)

    # The edit events skip gradio's preprocessing and receive uploads as FileData dicts (already checked and
    # moved to gradio's cache): threedpe reads the files itself and says what is wrong with an unreadable one.
    def edit_text(photo: dict | None, instruction: str, steps: int, text_guidance: float, image_guidance: float,
                  resolution: int, seed: int, anchor: int, use_own_photo: bool,
                  progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Edit a portrait by a text instruction: returns the aligned crop, the reference (InstructPix2Pix edit of
        an anchor, or of the photo itself), the 3-view strip, the frontal view, depth and timings."""
        settings = checked_settings(steps=int(steps), text_guidance=float(text_guidance),
                                    image_guidance=float(image_guidance), resolution=int(resolution))
        return edited(gpu_edit(require_photo(photo), prompt=instruction or "", settings=settings, seed=int(seed),
                               anchor=int(anchor), use_own_photo=bool(use_own_photo)))

    def edit_reference(photo: dict | None, reference: dict | None, progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Edit a portrait in the style of a reference image: same outputs as ``edit_text``."""
        if not reference:
            raise gr.Error("Upload a reference image (a portrait in the style you want).", print_exception=False)
        return edited(gpu_edit(require_photo(photo), reference=reference["path"]))

    def render_view(edit: StoredEdit | None, yaw: float, pitch: float):
        """Re-render the last edit from (yaw, pitch) in degrees from frontal, from its cached tri-planes."""
        return gpu_view(require_edit(edit), *view_angles(yaw, pitch))

    def orbit_video(edit: StoredEdit | None, frames: int, request: gr.Request,
                    progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Orbit video (mp4) of the last edit."""
        path, edit = gpu_video(require_edit(edit), sessions.folder(request.session_hash), int(frames))
        return str(path), timings_markdown(edit), edit

    def mesh(edit: StoredEdit | None, resolution: int, request: gr.Request,
             progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Coloured mesh of the last edit: the GLB for the viewer, and [GLB, PLY] to download."""
        glb, ply, edit = gpu_mesh(require_edit(edit), sessions.folder(request.session_hash), int(resolution))
        return str(glb), [str(glb), str(ply)], timings_markdown(edit), edit

    def wire_outputs(run: list, stop: gr.Button, edit_fn: Callable, inputs: list, panel: ResultPanel,
                     frames: gr.Slider, mesh_resolution: gr.Slider, name: str) -> None:
        """The events of one edit tab: edit -> video -> mesh (``stop`` cancels them), and the free-view sliders."""
        edit = gr.on(run, edit_fn, inputs, panel.edit_outputs, api_name=f"edit_{name}", concurrency_id="gpu",
                     preprocess=False)
        video = edit.success(orbit_video, [panel.state, frames], [panel.video, panel.timings, panel.state],
                             api_name=f"orbit_video_{name}", concurrency_id="gpu")
        meshing = video.success(mesh, [panel.state, mesh_resolution],
                                [panel.model, panel.files, panel.timings, panel.state],
                                api_name=f"mesh_{name}", concurrency_id="gpu")
        stop.click(None, cancels=[edit, video, meshing], api_visibility="private")
        gr.on([panel.yaw.release, panel.pitch.release], render_view, [panel.state, panel.yaw, panel.pitch],
              panel.view, api_name=f"render_view_{name}", concurrency_id="view", trigger_mode="always_last")

    def photo_input(name: str) -> gr.Image:
        return gr.Image(label="Portrait photo", type="filepath", sources=["upload", "webcam", "clipboard"],
                        height=300, elem_id=f"{name}-photo")

    with gr.Blocks(title="3DPE: real-time 3D-aware portrait editing", delete_cache=(3600, SESSION_MAX_AGE_S)) as demo:
        gr.Markdown(HEADER, elem_id="title")
        gr.Markdown(weights_notice(editor, text_error), elem_id="notice")
        gr.Markdown(HOW_TO)
        with gr.Tabs():
            with gr.Tab("Text edit", id="text"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        photo = photo_input("text")
                        instruction = gr.Textbox(label="Instruction", placeholder="e.g. Turn her into a bronze statue",
                                                 max_lines=2, elem_id="text-instruction")
                        with gr.Row():
                            button = gr.Button("Edit in 3D", variant="primary", scale=3, elem_id="text-run")
                            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="text-stop")
                        with gr.Accordion("Settings", open=False):
                            steps = gr.Slider(1, 100, value=20, step=1, label="InstructPix2Pix steps",
                                              elem_id="text-steps")
                            text_guidance = gr.Slider(1.1, 15, value=7.5, step=0.1, label="Text guidance")
                            image_guidance = gr.Slider(1.0, 5, value=1.5, step=0.05, label="Image guidance")
                            resolution = gr.Slider(64, 768, value=512, step=64, label="2D edit resolution",
                                                   elem_id="text-resolution")
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                            anchor = gr.Radio([("astronaut", 0), ("astronaut (mirrored)", 1)], value=0,
                                              label="Anchor portrait the instruction is applied to")
                            own_photo = gr.Checkbox(False, label="Apply the instruction to my photo instead "
                                                                 "(slower, not cached)")
                            frames, mesh_resolution = output_settings("text", defaults)
                        gr.Examples([[EXAMPLE_PHOTO, text] for text in TEXT_EXAMPLES], [photo, instruction],
                                    cache_examples=False)
                    with gr.Column(scale=3):
                        panel = result_panel("text", "Reference (InstructPix2Pix edit)")
                wire_outputs([button.click, instruction.submit], stop, edit_text,
                             [photo, instruction, steps, text_guidance, image_guidance, resolution, seed, anchor,
                              own_photo], panel, frames, mesh_resolution, "text")
            with gr.Tab("Reference edit", id="reference"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        photo = photo_input("reference")
                        reference = gr.Image(label="Reference image (the style to apply)", type="filepath",
                                             sources=["upload", "clipboard"], height=220,
                                             elem_id="reference-reference")
                        with gr.Row():
                            button = gr.Button("Edit in 3D", variant="primary", scale=3, elem_id="reference-run")
                            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="reference-stop")
                        with gr.Accordion("Settings", open=False):
                            frames, mesh_resolution = output_settings("reference", defaults)
                        gr.Examples([[EXAMPLE_PHOTO, EXAMPLE_REFERENCE]], [photo, reference], cache_examples=False)
                    with gr.Column(scale=3):
                        panel = result_panel("reference", "Reference as the editor sees it")
                wire_outputs([button.click], stop, edit_reference, [photo, reference], panel, frames,
                             mesh_resolution, "reference")
        gr.Markdown(CREDITS)

        def start_session(request: gr.Request) -> None:
            sessions.prune(SESSION_MAX_AGE_S)
            sessions.folder(request.session_hash)

        def end_session(request: gr.Request) -> None:
            sessions.close(request.session_hash)

        demo.load(start_session, api_visibility="private")
        demo.unload(end_session)
    return demo.queue(default_concurrency_limit=1, max_size=20)


def require_photo(photo: dict | None) -> str:
    """The path of the uploaded photo (a FileData dict)."""
    if not photo:
        raise gr.Error("Upload a portrait photo first (or pick an example).", print_exception=False)
    return photo["path"]


def require_edit(edit: StoredEdit | None) -> StoredEdit:
    if edit is None:
        raise gr.Error("Run an edit first: there is no 3D portrait to render yet.", print_exception=False)
    return edit


def launch(demo: gr.Blocks, **kwargs) -> None:
    """Serve ``demo`` with the app's theme and style; ``kwargs`` go to ``gr.Blocks.launch``."""
    demo.launch(theme=THEME, css=CSS, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=os.environ.get("THREEDPE_WEIGHTS", "checkpoints"),
                        help="weight folder (default: $THREEDPE_WEIGHTS or checkpoints/); "
                             "`python -m threedpe tiny-weights DIR` writes an untrained one")
    parser.add_argument("--host", default=None, help="address to serve on (default: gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    args = parser.parse_args()
    editor = load_editor(args.weights)  # at start-up, on CUDA when present: ZeroGPU wants it before any GPU call
    text_error = load_text_model(editor) if isinstance(editor, PortraitEditor) else None
    launch(build_demo(editor, text_error), server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
