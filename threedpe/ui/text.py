"""The Text edit tab: an instruction, applied by InstructPix2Pix to an anchor portrait (or to the photo itself), gives
the style reference that the editor applies to the photo in 3D."""
from __future__ import annotations

import gradio as gr

from threedpe.diffusion import EditSettings
from threedpe.ui.common import EXAMPLE_PHOTO, EditTab, ResultPanel, UIContext, checked_settings

TEXT_HOW = ("InstructPix2Pix applies your instruction to the **anchor portrait** below (not to your photo); that "
            "edited anchor becomes the style reference for your photo. The same instruction is instant the second "
            "time (cached).")
TEXT_EXAMPLES = ["Turn her into a bronze statue", "Make her look like a Pixar character",
                 "Make it a watercolor painting", "Give her a zombie look"]


class TextTab(EditTab):
    name = "text"
    reference_label = "Reference (InstructPix2Pix edit)"

    def controls(self) -> None:
        self.instruction = gr.Textbox(label="Instruction", placeholder="e.g. Turn her into a bronze statue",
                                      max_lines=2, elem_id="text-instruction")
        gr.Markdown(TEXT_HOW, elem_id="text-how")
        self.own_photo = gr.Checkbox(False, label="Apply the instruction to my photo instead of the anchor "
                                                  "(slower, not cached)", elem_id="text-own-photo")
        anchors = self.ctx.anchors
        with gr.Row(equal_height=True):
            self.anchor = gr.Dropdown([(a.label, a.name) for a in anchors], value=anchors[0].name,
                                      label="Anchor portrait", scale=2, elem_id="text-anchor")
            self.anchor_image = gr.Image(label="Anchor", height=140, interactive=False, show_label=False, scale=1,
                                         format="png", elem_id="text-anchor-image")

    def settings(self) -> None:
        default = EditSettings()  # the one source of the InstructPix2Pix defaults; the resolution follows the device
        self.steps = gr.Slider(1, 100, value=default.steps, step=1, label="InstructPix2Pix steps",
                               elem_id="text-steps")
        self.text_guidance = gr.Slider(1.1, 15, value=default.text_guidance, step=0.1, label="Text guidance")
        self.image_guidance = gr.Slider(1.0, 5, value=default.image_guidance, step=0.05, label="Image guidance")
        self.resolution = gr.Slider(64, 768, value=self.ctx.defaults.text_resolution, step=64,
                                    label="2D edit resolution (the editor sees the reference at 224²)",
                                    elem_id="text-resolution")
        self.seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")

    def examples(self) -> None:
        gr.Examples([[EXAMPLE_PHOTO, text] for text in TEXT_EXAMPLES], [self.photo, self.instruction],
                    cache_examples=False)

    def triggers(self) -> list:
        return [self.run.click, self.instruction.submit]

    # The edit events skip gradio's preprocessing and receive uploads as FileData dicts (already checked and
    # moved to gradio's cache): threedpe reads the files itself and says what is wrong with an unreadable one.
    def edit_text(self, photo: dict | None, instruction: str, use_own_photo: bool, anchor: str, steps: int,
                  text_guidance: float, image_guidance: float, resolution: int, seed: int, strength: float = 1.0,
                  request: gr.Request = None, progress=gr.Progress(track_tqdm=True)) -> dict:
        """Edit a portrait by a text instruction: returns the aligned crop, the reference (InstructPix2Pix edit of
        the anchor portrait, or of the photo itself), the 3-view strip, the frontal view, depth, the status, the
        before/after pair (aligned photo, frontal view) and the strength (0 = the photo in 3D, 1 = the edit, up to
        1.5)."""
        settings = checked_settings(steps=int(steps), text_guidance=float(text_guidance),
                                    image_guidance=float(image_guidance), resolution=int(resolution))
        return self.run_edit(request, photo, strength, prompt=instruction or "", settings=settings, seed=int(seed),
                             anchor=anchor, use_own_photo=bool(use_own_photo))

    def show_anchor(self, name: str):
        """The anchor portrait ``name`` (rendered on first use when it is an EG3D sample)."""
        if self.ctx.runner is None:
            return next((anchor.image() for anchor in self.ctx.anchors if anchor.name == name), None)
        return self.ctx.work.anchor(name)


def text_tab(ctx: UIContext, demo: gr.Blocks) -> ResultPanel:
    """The Text edit tab (inside the current ``gr.Tabs``); its result panel."""
    with gr.Tab("Text edit", id="text"):
        tab = TextTab(ctx)
    tab.anchor.change(tab.show_anchor, tab.anchor, tab.anchor_image, api_visibility="private",
                      show_progress="minimal")
    demo.load(tab.show_anchor, tab.anchor, tab.anchor_image, api_visibility="private", show_progress="minimal")
    tab.wire(tab.edit_text, [tab.photo, tab.instruction, tab.own_photo, tab.anchor, tab.steps, tab.text_guidance,
                             tab.image_guidance, tab.resolution, tab.seed, tab.panel.strength])
    return tab.panel
