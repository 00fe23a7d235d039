"""The Customize tab: training pairs from an instruction (or the visitor's own before/after photos), a fine-tune of
the editor's adapters that shows its progress, loss curves and held-out previews every step, the style file, and
"Use this style": an edit tab with the customised style."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gradio as gr

from threedpe.training.customize import CustomizeConfig
from threedpe.training.samples import usable
from threedpe.serving.style_sessions import (SAMPLES_PER_CALL, TUNE_STEPS_PER_CALL, StyleSession, curve_table,
                                             photo_samples, sample_tiles, slug, snapshot_tiles, style_status,
                                             tuning_status)
from threedpe.ui.common import EditTab, ResultPanel, UIContext, require_photo
from threedpe.ui.status import STOPPED, listen, refusal, show_errors

CUSTOMIZE_HOW = """
**Teach the editor a new kind of edit.** Name it with an instruction: InstructPix2Pix applies it to EG3D portraits
to make training pairs (or give your own before/after photos, matched by file name). **Adapt** then fine-tunes
small adapters (LoRA) of the editor on those pairs, with the paper's objective; the held-out preview and the loss
show how the style is learned (the paper: about 5 minutes on a GPU). The result is a style file you can use below,
download, or upload later. Your style stays in your session: the shared model is never changed.
"""
CURVE_COLOURS = {"training": "#6366f1", "held-out": "#f97316"}  # the loss chart's legend (curve_table's names)


class StyleTuning:
    """The upper half of the Customize tab: training pairs, Adapt (a fine-tune in chunks of GPU calls) and the style
    file; ``session`` holds the visitor's ``StyleSession`` (the Video tab uses its style too)."""

    def __init__(self, ctx: UIContext, session: gr.State):
        self.ctx, self.session = ctx, session
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self.lay_out_inputs(ctx)
            with gr.Column(scale=3):
                self.status = gr.Markdown("No style yet.", label="Customization status",
                                          elem_id="customize-tune-status", elem_classes="status")
                self.pair_tiles = gr.Gallery(label="Training pairs (edited portraits)", columns=4, height=240,
                                             object_fit="contain", elem_id="customize-pairs")
                # no fixed height (it would clip the legend); integer steps (the "d" format)
                self.loss_plot = gr.LinePlot(x="step", y="loss", color="curve", label="Loss during adaptation",
                                             color_map=CURVE_COLOURS, color_title="", x_title="step",
                                             y_title="loss", x_axis_format="d", elem_id="customize-loss")
                self.snapshots = gr.Gallery(label="Held-out preview during adaptation", columns=4, height=220,
                                            object_fit="contain", elem_id="customize-snapshots")

    def lay_out_inputs(self, ctx: UIContext) -> None:
        """The pairs, Adapt and the style file (in the left column)."""
        gr.Markdown(CUSTOMIZE_HOW)
        self.source = gr.Radio([("An instruction", "instruction"), ("My own before/after photos", "pairs")],
                               value="instruction", label="Training pairs from", elem_id="customize-source")
        self.instruction = gr.Textbox(label="Instruction that defines the style",
                                      placeholder="e.g. Turn her into a golden statue", max_lines=2,
                                      elem_id="customize-instruction")
        with gr.Group(visible=False) as self.own_pairs:
            self.before = gr.File(label="Before photos", file_count="multiple", file_types=["image"],
                                  elem_id="customize-before")
            self.after = gr.File(label="After photos (the same file names, edited)", file_count="multiple",
                                 file_types=["image"], elem_id="customize-after")
        self.count = gr.Slider(3, 32, value=8, step=1, label="Training pairs to generate", elem_id="customize-count")
        self.generate = gr.Button("Generate pairs", variant="primary", interactive=ctx.editing,
                                  elem_id="customize-generate")
        self.steps = gr.Slider(1, 2000, value=ctx.defaults.fine_tune_steps, step=1,
                               label="Fine-tuning steps (press Adapt again to continue)", elem_id="customize-steps")
        with gr.Row():
            self.adapt = gr.Button("Adapt", variant="primary", scale=3, interactive=ctx.editing,
                                   elem_id="customize-adapt")
            self.adapt_stop = gr.Button("Stop", variant="stop", scale=1, interactive=ctx.editing,
                                        elem_id="customize-adapt-stop")
        with gr.Accordion("Settings", open=False):
            self.rank = gr.Slider(1, 64, value=CustomizeConfig().rank, step=1, label="LoRA rank (adapter size)",
                                  elem_id="customize-rank")
            self.pair_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed of the EG3D portraits")
        self.style_file = gr.File(label="Style file (download it, or upload one to use it)",
                                  file_types=[".safetensors"], elem_id="customize-style-file")

    def generate_pairs(self, source: str, instruction: str, before: list | None, after: list | None, count: int,
                       seed: int, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        """Training pairs for a new style: the instruction applied by InstructPix2Pix to EG3D portraits (shown as
        they arrive), or the visitor's own before/after photos (matched by file name)."""
        stop = self.ctx.sessions.stop_flag(request.session_hash)
        stop.clear()
        if source == "pairs":
            samples = show_errors(photo_samples)([f for f in before or []], [f for f in after or []],
                                                 self.ctx.folder(request) / "pairs")
            name, origin = "my photo pairs", {"kind": "photo pairs", "count": len(samples)}
        else:
            instruction = " ".join((instruction or "").split())
            if not instruction:
                raise refusal("Type the instruction that defines the new style.")
            show_errors(self.ctx.limiter.take)(request.session_hash or "anonymous", "customisations")
            seeds, samples = list(range(int(seed) * 1000, int(seed) * 1000 + int(count))), []
            for start in range(0, len(seeds), SAMPLES_PER_CALL):
                samples += self.ctx.work.samples(instruction, seeds[start:start + SAMPLES_PER_CALL], stop)
                yield {self.pair_tiles: sample_tiles(samples),
                       self.status: f"⏳ {len(samples)} of {len(seeds)} pairs…"}
            name, origin = instruction, {"kind": "instruction", "instruction": instruction, "seeds": seeds}
        kept = len([s for s in samples if s.failure is None])
        note = (f"✅ {kept} usable pairs of {len(samples)}; press **Adapt**." if kept >= 3 else
                f"⚠️ Only {kept} usable pairs of {len(samples)}: adaptation needs 3 or more.")
        yield {self.pair_tiles: sample_tiles(samples), self.status: note,
               self.session: StyleSession(samples, origin, name)}

    def customize(self, session: StyleSession | None, steps: int, rank: int, request: gr.Request,
                  progress=gr.Progress()):
        """Fine-tune the editor to the generated pairs for ``steps`` more steps: the progress, the loss curve and the
        held-out previews follow every step, the style file every chunk. Press again to continue training."""
        if session is None or not session.samples:
            raise refusal("Generate the training pairs first.")
        if session.state is None:
            session = replace(session, config=CustomizeConfig(rank=int(rank), alpha=float(rank)))
        stop = self.ctx.sessions.stop_flag(request.session_hash)
        stop.clear()
        target = session.steps + int(steps)
        while session.steps < target and not stop():
            # until the chunk's first step (the trainer's set-up); then the status line says each step
            progress((session.steps, target), desc="fine-tuning", unit="steps")
            for update in self.ctx.work.fine_tune(session, min(TUNE_STEPS_PER_CALL, target - session.steps), stop,
                                                  request.session_hash):
                session = session.advanced(update)
                if update.state is None:  # a step: the session (its state) is stored once the chunk is done
                    shown = {self.loss_plot: self.loss_chart(session, target),
                             self.status: tuning_status(session, target)}
                    yield {**shown, self.snapshots: snapshot_tiles(session)} if update.snapshot else shown
            style_path = self.ctx.folder(request) / f"style-{slug(session.name)}.safetensors"
            session.style.save(style_path)
            yield {self.loss_plot: self.loss_chart(session, target), self.snapshots: snapshot_tiles(session),
                   self.status: style_status(session), self.style_file: str(style_path), self.session: session}
        if stop():
            yield {self.status: STOPPED + " " + style_status(session), self.session: session}

    @staticmethod
    def loss_chart(session: StyleSession, target: int) -> gr.LinePlot:
        """The loss curves, on an x axis spanning the steps asked for (the curve grows towards its end)."""
        return gr.LinePlot(curve_table(session), x_lim=[0, max(target, session.steps)])

    def upload_style(self, path: str | None, session: StyleSession | None, request: gr.Request) -> dict:
        """Use an uploaded style file (it must have been made for this app's weights)."""
        if not path:
            return {self.status: gr.skip()}
        self.ctx.refuse_without_editor()
        style = show_errors(self.ctx.runner.editor.load_style)(path)
        name = (style.metadata.get("source") or {}).get("instruction") or Path(path).stem
        kept = session.samples if session is not None else []
        return {self.status: f"✅ Style **{name}** loaded ({style.mode}, {style.metadata.get('steps')} steps).",
                self.session: StyleSession(kept, style.metadata.get("source") or {}, name, style=style)}

    def wire(self) -> None:
        self.source.change(self.show_source, self.source, [self.instruction, self.own_pairs], queue=False,
                           api_visibility="private")
        pairs_made = listen(self.generate.click, self.generate_pairs,
                            [self.source, self.instruction, self.before, self.after, self.count, self.pair_seed],
                            [self.pair_tiles, self.status, self.session], self.status, api_name="generate_pairs",
                            concurrency_id="gpu")
        listen(self.adapt.click, self.customize, [self.session, self.steps, self.rank],
               [self.loss_plot, self.snapshots, self.status, self.style_file, self.session], self.status,
               api_name="customize", concurrency_id="gpu")
        # Stop ends the pair generation at once; a fine-tune stops after its current step and keeps its steps.
        self.adapt_stop.click(self.ctx.stop_work, None, self.status, cancels=[pairs_made], queue=False,
                              api_visibility="private")
        listen(self.style_file.upload, self.upload_style, [self.style_file, self.session],
               [self.status, self.session], self.status, api_visibility="private")

    @staticmethod
    def show_source(chosen: str) -> tuple:
        """The instruction box or the photo pairs, as ``chosen``."""
        return gr.Textbox(visible=chosen == "instruction"), gr.Group(visible=chosen == "pairs")


class StyleEditTab(EditTab):
    """"Use this style": an edit with the customised style of ``session``."""

    name = "customize"
    reference_label = "Reference"

    def __init__(self, ctx: UIContext, session: gr.State):
        self.session = session
        super().__init__(ctx)

    def controls(self) -> None:
        self.reference = gr.Image(label="Reference in the style (default: one of the training edits)",
                                  type="filepath", sources=["upload", "clipboard"], height=180,
                                  elem_id="customize-reference")
        self.instruction = gr.Textbox(label="…or an instruction instead of a reference (optional)", max_lines=2,
                                      elem_id="customize-style-instruction")

    def apply_style(self, photo: dict | None, reference: dict | None, instruction: str, session: StyleSession | None,
                    strength: float = 1.0, request: gr.Request = None,
                    progress=gr.Progress(track_tqdm=True)) -> dict:
        """Edit a portrait with the customised style: in the style of a reference (default: one of the training
        edits) or by an instruction. Same outputs as ``edit_text``."""
        require_photo(photo)
        if session is None or session.style is None:
            raise refusal("Adapt a style first (or upload a style file).")
        style = (session.name, session.style)
        if instruction and instruction.strip():
            return self.run_edit(request, photo, strength, prompt=instruction, style=style)
        if reference:
            return self.run_edit(request, photo, strength, reference=reference["path"], style=style)
        if not usable(session.samples):
            raise refusal("Give a reference image in the style (an uploaded style has no training pairs).")
        return self.run_edit(request, photo, strength, reference=session.reference, style=style)


def customize_tab(ctx: UIContext, session: gr.State) -> ResultPanel:
    """The Customize tab (inside the current ``gr.Tabs``), keeping the visitor's ``StyleSession`` in ``session``; the
    result panel of "Use this style"."""
    with gr.Tab("Customize", id="customize"):
        tuning = StyleTuning(ctx, session)
        gr.Markdown("### Use this style")
        tab = StyleEditTab(ctx, tuning.session)
    tuning.wire()
    tab.wire(tab.apply_style, [tab.photo, tab.reference, tab.instruction, tuning.session, tab.panel.strength])
    return tab.panel
