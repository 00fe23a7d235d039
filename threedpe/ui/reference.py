"""The Reference edit tab: the photo edited in 3D in the style of a reference portrait."""
from __future__ import annotations

import gradio as gr

from threedpe.ui.common import (EXAMPLE_PHOTO, EXAMPLE_REFERENCE, EditTab, ResultPanel, UIContext, require_photo,
                                validated_upload)
from threedpe.ui.status import refusal


class ReferenceTab(EditTab):
    name = "reference"
    reference_label = "Reference as the editor sees it"

    def controls(self) -> None:
        self.reference = gr.Image(label="Reference image (the style to apply)", type="filepath",
                                  sources=["upload", "clipboard"], height=220, elem_id="reference-reference")
        self.reference.upload(validated_upload(reference=True), self.reference, self.reference, preprocess=False,
                              show_progress="hidden", concurrency_limit=4, api_visibility="private")
        self.align = gr.Checkbox(False, label="The reference is a raw photo: detect and align its face "
                                              "(an aligned portrait is used as it is)", elem_id="reference-align")

    def examples(self) -> None:
        gr.Examples([[EXAMPLE_PHOTO, EXAMPLE_REFERENCE]], [self.photo, self.reference], cache_examples=False)

    def edit_reference(self, photo: dict | None, reference: dict | None, align_reference: bool,
                       strength: float = 1.0, request: gr.Request = None,
                       progress=gr.Progress(track_tqdm=True)) -> dict:
        """Edit a portrait in the style of a reference image: same outputs as ``edit_text``."""
        require_photo(photo)
        if not reference:
            raise refusal("Upload a reference image (a portrait in the style you want).")
        return self.run_edit(request, photo, strength, reference=reference["path"], align_reference=bool(align_reference))


def reference_tab(ctx: UIContext) -> ResultPanel:
    """The Reference edit tab (inside the current ``gr.Tabs``); its result panel."""
    with gr.Tab("Reference edit", id="reference"):
        tab = ReferenceTab(ctx)
    tab.wire(tab.edit_reference, [tab.photo, tab.reference, tab.align, tab.panel.strength])
    return tab.panel
