"""The Batch tab: several photos (files or zips, and optionally a CSV of mixed jobs) edited in 3D with one reference
image or instruction; a zip of the results with report.html and results.csv, a summary, and the edited photos."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import gradio as gr

from threedpe.batch import IMAGE_SUFFIXES, PHOTOS, BatchError, BatchJob, Outcome, write_report
from threedpe.cancel import check
from threedpe.diffusion import EditSettings
from threedpe.pipeline import check_strength
from threedpe.serving.batches import batch_calls, counts, max_batch_photos, prepare_batch, zip_results
from threedpe.serving.messages import public_message
from threedpe.serving.sessions import stopped_if_gone
from threedpe.ui.common import UIContext, action_buttons, set_in_browser, strength_slider, validated_upload
from threedpe.ui.status import listen, refusal, show_errors

CSV_HOW = ("**Mixed jobs:** add a CSV with one row per edit, `photo,reference|prompt,strength` (the photo as it is "
           "named among the uploads or inside the zip; the second cell an uploaded reference image or an instruction; "
           "empty cells take the reference or instruction and strength above). With a CSV, only its rows are edited.")


def limits_markdown(max_photos: int, max_upload: str) -> str:
    """The batch's limits as the tab shows them."""
    return (f"**Limits:** up to **{max_photos} photos** per batch (the files and the photos in zips together); each "
            f"uploaded file up to {max_upload}. A photo that cannot be read or has no face is listed in the report and "
            "the batch goes on; Stop ends it after the current photo, with the report written.")


class BatchTab:
    """The Batch tab (inside the current ``gr.Tabs``): uploads, a reference image or an instruction, the strength,
    Edit and Stop on the left; the status, the summary, the results' zip and the edited photos on the right."""

    def __init__(self, ctx: UIContext, max_upload: str):
        self.ctx = ctx
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self.files = gr.File(label="Photos, zips of photos, and optionally a CSV of jobs",
                                     file_count="multiple", file_types=[*IMAGE_SUFFIXES, ".zip", ".csv"], height=220,
                                     elem_id="batch-files")
                gr.Markdown(limits_markdown(max_batch_photos(), max_upload), elem_id="batch-limits")
                self.reference = gr.Image(label="Reference image (the style to apply to every photo)", type="filepath",
                                          sources=["upload", "clipboard"], height=200, elem_id="batch-reference")
                self.reference.upload(validated_upload(reference=True), self.reference, self.reference,
                                      preprocess=False, show_progress="hidden", concurrency_limit=4,
                                      api_visibility="private")
                self.instruction = gr.Textbox(label="…or an instruction (instead of a reference image)", max_lines=2,
                                              placeholder="e.g. Turn her into a bronze statue",
                                              elem_id="batch-instruction")
                self.strength = strength_slider("batch", ctx.strength_unavailable)
                self.run, self.stop = action_buttons("batch", ctx.editing)
                gr.Markdown(CSV_HOW, elem_id="batch-csv-how")
            with gr.Column(scale=3):
                self.status = gr.Markdown("Results appear here.", label="Status", elem_id="batch-status",
                                          elem_classes="status")
                self.summary = gr.Markdown(label="Summary", elem_id="batch-summary")
                self.archive = gr.File(label="Results: report.html, results.csv and a folder per photo (zip)",
                                       interactive=False, elem_id="batch-zip")
                self.contact = gr.Gallery(label="Edited photos (three views each)", columns=2, height=480,
                                          object_fit="contain", elem_id="batch-gallery")

    def edit_batch(self, files: list[dict] | None, reference: dict | None, instruction: str | None,
                   strength: float = 1.0, request: gr.Request = None, progress=gr.Progress()) -> dict:
        """Edit several photos in 3D with one reference image or instruction (``files``: photos and zips of photos,
        and optionally a CSV whose rows ``photo,reference|prompt,strength`` name the jobs). Returns the status, the
        summary (edited / skipped / failed, failures named), a zip of the results (report.html, results.csv, a folder
        per photo) and the edited photos' 3-view strips. A photo that cannot be edited is recorded; the rest go on."""
        self.ctx.refuse_without_editor()
        strength = show_errors(check_strength)(1.0 if strength is None else float(strength))
        uploads = [(file.get("orig_name") or Path(file["path"]).name, Path(file["path"])) for file in files or []]
        if not uploads:
            raise refusal("Upload photos (or a zip of photos) first.")
        prompt = (instruction or "").strip() or None
        if reference and prompt:
            raise refusal("Give a reference image or an instruction, not both.")
        folder = self.ctx.folder(request) / f"batch-{uuid.uuid4().hex[:12]}"
        with self.ctx.sessions.running(request.session_hash) as stop:
            show_errors(check)(stop, "before the batch")
            try:
                jobs = prepare_batch(uploads, folder, Path(reference["path"]) if reference else None, prompt,
                                     strength, max_batch_photos())
            except BatchError as error:
                raise refusal(public_message(str(error))) from None
            if self.ctx.text_error and any(job.prompt is not None for job in jobs):
                raise refusal(self.ctx.text_error)
            show_errors(self.ctx.limiter.take)(request.session_hash or "anonymous")
            start = time.perf_counter()
            outcomes = self.run_jobs(jobs, folder / "results", stop, request, progress)
            seconds = time.perf_counter() - start
            archive = show_errors(self.write_results)(folder, jobs, outcomes, stop)
        return self.shown(jobs, outcomes, folder / "results", archive, seconds)

    def run_jobs(self, jobs: list[BatchJob], results: Path, stop, request: gr.Request,
                 progress: gr.Progress) -> dict[str, Outcome]:
        """The batch's GPU calls one after another until done or stopped; the outcomes by job name."""
        settings = EditSettings(resolution=self.ctx.defaults.text_resolution)
        outcomes: dict[str, Outcome] = {}
        for call in batch_calls(jobs, settings):
            if stop():
                break
            progress((len(outcomes), len(jobs)), desc=f"Editing {call[0].photo}", unit="photos")
            for outcome in self.ctx.work.batch(call, results, stop, settings=settings,
                                               precision=self.ctx.precision(request)):
                outcomes[outcome.name] = outcome
        return outcomes

    @staticmethod
    def write_results(folder: Path, jobs: list[BatchJob], outcomes: dict[str, Outcome], stop) -> Path:
        """The report (every job, those not reached as not run) and the zip of the results; the zip's path."""
        with stopped_if_gone(stop):
            write_report(folder / "results", jobs, outcomes)
            return zip_results(folder / "results", folder.with_name(f"{folder.name}.zip"))

    def shown(self, jobs: list[BatchJob], outcomes: dict[str, Outcome], results: Path, archive: Path,
              seconds: float) -> dict:
        """The tab's outputs for a finished (or stopped) batch that took ``seconds``."""
        count = counts(jobs, outcomes)
        edited = [outcome for outcome in outcomes.values() if outcome.status in ("edited", "skipped")]
        lines = [" · ".join(f"{status}={n}" for status, n in count.items() if n or status != "not run")]
        lines += [f"❌ **{outcome.photo}**: {public_message(outcome.reason)}" for outcome in outcomes.values()
                  if outcome.status == "failed"]
        if len(outcomes) < len(jobs):
            status = (f"⏹️ Stopped after {len(outcomes)} of {len(jobs)} photos: the report lists the others as not "
                      "run.")
        else:
            status = f"✅ Done: {len(jobs)} photos in {seconds:.1f} s ({seconds / max(1, len(jobs)):.1f} s per photo)."
        return {self.status: status, self.summary: "\n\n".join(lines), self.archive: str(archive),
                self.contact: [(str(results / PHOTOS / outcome.name / "views.png"), outcome.photo)
                               for outcome in edited]}

    def wire(self) -> None:
        cleared = self.run.click(None, None, **set_in_browser({
            self.status: "⏳ Working…", self.summary: "", self.archive: None, self.contact: None}),
            show_progress="hidden", api_visibility="private")
        begun = cleared.then(self.ctx.begin_action, None, None, queue=False, show_progress="hidden",
                             api_visibility="private")
        listen(begun.then, self.edit_batch, [self.files, self.reference, self.instruction, self.strength],
               [self.status, self.summary, self.archive, self.contact], self.status, api_name="edit_batch",
               preprocess=False, concurrency_id="gpu")
        self.stop.click(self.ctx.stop_work, None, self.status, queue=False, api_visibility="private")


def batch_tab(ctx: UIContext, max_upload: str) -> BatchTab:
    """The Batch tab, wired (inside the current ``gr.Tabs``); ``max_upload``: the page's upload limit per file."""
    with gr.Tab("Batch", id="batch"):
        tab = BatchTab(ctx, max_upload)
    tab.wire()
    return tab
