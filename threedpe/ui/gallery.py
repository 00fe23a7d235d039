"""The Gallery tab (published edits: the listing, an opened edit, download, delete, report, permalinks) and the
publish buttons of the edit tabs that feed it."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.events import Dependency

from threedpe.serving.messages import record_markdown
from threedpe.serving.publishing import frontal_view, latest_edit, permalink, publish_edit, record_id
from threedpe.serving.edits import StoredEdit
from threedpe.ui.common import ResultPanel, UIContext, require_edit, set_in_browser
from threedpe.ui.status import listen, show_errors

LISTING_REFRESH_S = 10.0  # how often the Gallery tab's listing refreshes itself while the tab is shown
PER_PAGE = 12
QUIETLY = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}


def page_url(request: gr.Request) -> str:
    """The address of the page the request came from (its Referer), for permalinks; the server's root otherwise."""
    referer = request.headers.get("referer") if request.headers else None
    return referer or f"{request.url.scheme}://{request.url.netloc}/"


def wanted(request: gr.Request) -> str | None:
    """The edit id of a permalink (``?edit=<id>`` in the page's address), if the page was opened on one."""
    return request.query_params.get("edit") if request.query_params else None


class GalleryTab:
    """The Gallery tab (inside the current ``gr.Tabs``): the listing with paging, kept current (on selecting the
    tab, after each publish, delete, report or open in this page, and every ``LISTING_REFRESH_S`` while the tab is
    shown), an opened edit with its files, download, delete (owner) and report; a ``?edit=<id>`` permalink opens its
    edit when the page loads. ``tokens``: the owner tokens this browser keeps (edit id -> token)."""

    def __init__(self, ctx: UIContext, tokens: gr.BrowserState):
        self.ctx, self.gallery, self.tokens = ctx, ctx.gallery, tokens
        self.anchor_labels = {anchor.name: anchor.label for anchor in ctx.anchors}
        png = {"type": "filepath", "interactive": False, "format": "png"}
        with gr.Tab("Gallery", id="gallery") as self.tab:
            with gr.Row():
                with gr.Column(scale=3):
                    self.tiles = gr.Gallery(label="Published edits, newest first", columns=3, height=520,
                                            allow_preview=False, object_fit="contain", elem_id="gallery-tiles")
                    with gr.Row(equal_height=True):
                        self.newer = gr.Button("← Newer", size="sm", elem_id="gallery-newer")
                        self.page = gr.Number(1, precision=0, minimum=1, label="Page", elem_id="gallery-page")
                        self.older = gr.Button("Older →", size="sm", elem_id="gallery-older")
                    self.listing = gr.Markdown(label="Listing", elem_id="gallery-listing")
                with gr.Column(scale=4):
                    with gr.Row(equal_height=True):
                        self.edit_id = gr.Textbox(label="Edit id or permalink", placeholder="paste a …?edit=… link",
                                                  scale=4, elem_id="gallery-id")
                        self.open_button = gr.Button("Open", scale=1, elem_id="gallery-open")
                    self.info = gr.Markdown("Pick an edit on the left, or paste a permalink.", label="Opened edit",
                                            elem_id="gallery-info")
                    self.strip = gr.Image(label="Three views (of a clip: three of its edited frames)",
                                          elem_id="gallery-strip", **png)
                    with gr.Row(equal_height=True):  # before / after, side by side (see open_edit)
                        self.before = gr.Image(label="Before (if shared)", height=220, elem_id="gallery-before",
                                               **png)
                        self.reference = gr.Image(label="Reference", height=220, elem_id="gallery-reference", **png)
                        self.after = gr.Image(label="After (frontal)", height=220, elem_id="gallery-after", **png)
                    with gr.Row(equal_height=True):
                        self.video = gr.Video(label="Video (orbit, or the edited clip)", autoplay=True, loop=True,
                                              interactive=False, height=280, elem_id="gallery-video")
                        self.model = gr.Model3D(label="3D mesh", clear_color=(0.95, 0.95, 0.97, 1.0), height=280,
                                                elem_id="gallery-model")
                    self.download = gr.DownloadButton("Download all files (zip)", elem_id="gallery-download")
                    with gr.Accordion("Delete or report", open=False):
                        self.owner_token = gr.Textbox(label="Owner token (needed only on another browser)",
                                                      type="password", elem_id="gallery-token")
                        self.delete = gr.Button("Delete this edit", variant="stop", elem_id="gallery-delete")
                        self.reason = gr.Textbox(label="Why should this edit be taken down?", elem_id="gallery-reason")
                        self.report = gr.Button("Report", elem_id="gallery-report")
                    self.message = gr.Markdown(label="Gallery message", elem_id="gallery-message")
            self.ids = gr.State([])
            self.timer = gr.Timer(LISTING_REFRESH_S, active=False)
        self.listing_outputs = [self.tiles, self.listing, self.ids]
        self.opened = [self.info, self.strip, self.video, self.model, self.reference, self.download, self.edit_id,
                       self.before, self.after]

    @show_errors
    def gallery_page(self, number: float, request: gr.Request) -> dict:
        """Page ``number`` of published edits, newest first: tiles (strip, caption) and a line about the listing."""
        listing_page = self.gallery.page(max(1, int(number or 1)), PER_PAGE)
        note = f"Page {listing_page.number} of {listing_page.pages} · {listing_page.total} published edits"
        return {self.tiles: [(str(record.strip), record.caption) for record in listing_page.items],
                self.listing: note, self.ids: [record.id for record in listing_page.items]}

    @show_errors
    def open_edit(self, text: str, request: gr.Request) -> dict:
        """Open a published edit by id or permalink: its description, strip, video, mesh, reference, a zip, and the
        before / after side by side: the photo (only when its author shared it) or else the reference the edit
        followed, beside the edited frontal view (none for a text edit whose photo is private)."""
        record = self.gallery.get(record_id(text))
        files = {key: str(path) for key, path in record.files.items()}
        folder = self.ctx.folder(request)
        archive = self.gallery.zip(record.id, folder)
        compared = "photo" in files or "reference" in files
        return {self.info: record_markdown(record, permalink(page_url(request), record.id), self.anchor_labels),
                self.strip: str(record.strip), self.video: files.get("video"), self.model: files.get("mesh"),
                self.reference: files.get("reference"), self.download: str(archive), self.edit_id: record.id,
                self.before: files.get("photo"), self.after: str(frontal_view(record, folder)) if compared else None}

    @show_errors
    def delete_edit(self, edit_id: str, owner_token: str) -> str:
        """Delete a published edit (id or permalink) with the owner token that publishing returned."""
        target = record_id(edit_id)
        self.gallery.delete(target, (owner_token or "").strip())
        return f"🗑️ Deleted {target}."

    def delete_in_browser(self, text: str, token: str, owned: dict | None, request: gr.Request) -> dict:
        """The Delete button: the token this browser kept when it published the edit, unless one is typed."""
        target = record_id(text)
        done = self.delete_edit(target, (token or "").strip() or (owned or {}).get(target, ""))
        remaining = {key: value for key, value in (owned or {}).items() if key != target}
        return {self.message: done, self.tokens: remaining, self.info: "Deleted.", self.strip: None, self.video: None,
                self.model: None, self.reference: None, self.download: None, self.before: None, self.after: None}

    @show_errors
    def flag_edit(self, text: str, why: str, request: gr.Request) -> dict:
        """Report a published edit to the moderators with a short reason."""
        count = self.gallery.flag(record_id(text), why)
        return {self.message: f"Thank you: the edit was reported ({count} report{'s' if count != 1 else ''} so far)."}

    def permalink_tab(self, request: gr.Request):
        """A page opened on a permalink starts on the Gallery tab."""
        return gr.Tabs(selected="gallery") if wanted(request) else gr.skip()

    def open_permalink(self, request: gr.Request) -> dict:
        """A page opened on a permalink opens its edit."""
        return self.open_edit(wanted(request), request) if wanted(request) else {self.info: gr.skip()}

    @staticmethod
    def pick(listed: list[str], event: gr.SelectData) -> str:
        return listed[event.index]

    def follow_tabs(self, event: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=event.value == self.tab.label)

    def refresh_after(self, event: Dependency) -> Dependency:
        """Chain a refresh of the listing on ``event`` (a publish, say)."""
        return event.then(self.gallery_page, self.page, self.listing_outputs, **QUIETLY)

    def opening(self, listener: Callable, **kwargs) -> None:
        """``listener`` opens the edit named in ``edit_id``, after clearing the opened edit (a mesh viewer given the
        same file again would not redraw) and the message about it; the listing follows (a vanished edit leaves)."""
        cleared = listener(None, None, **set_in_browser({self.strip: None, self.video: None, self.model: None,
                                                         self.reference: None, self.download: None, self.message: "",
                                                         self.before: None, self.after: None}),
                           show_progress="hidden", api_visibility="private")
        self.refresh_after(listen(cleared.then, self.open_edit, self.edit_id, self.opened, self.info, **kwargs))

    def wire(self, tabs: gr.Tabs, demo: gr.Blocks) -> None:
        # The public events first: they take the functions' names as api_names, the private uses after them do not.
        listen(self.page.submit, self.gallery_page, self.page, self.listing_outputs, self.listing,
               api_name="gallery_page")
        self.opening(functools.partial(gr.on, [self.open_button.click, self.edit_id.submit]), api_name="open_edit")
        self.refresh_after(listen(self.report.click, self.flag_edit, [self.edit_id, self.reason], [self.message],
                                  self.message, api_name="flag_edit"))
        for button, step in ((self.newer, -1), (self.older, 1)):
            self.refresh_after(button.click(lambda number, step=step: max(1, int(number or 1) + step), self.page,
                                            self.page, queue=False, api_visibility="private"))
        self.opening(self.tiles.select(self.pick, [self.ids], self.edit_id, queue=False,
                                       api_visibility="private").then, api_visibility="private")
        deleted = [self.message, self.tokens, self.info, self.strip, self.video, self.model, self.reference,
                   self.download, self.before, self.after]
        self.refresh_after(listen(self.delete.click, self.delete_in_browser, [self.edit_id, self.owner_token,
                                                                              self.tokens],
                                  deleted, self.message, api_visibility="private"))
        # The listing refreshes itself while the tab is shown (a select fires also when a permalink selects the tab).
        self.refresh_after(self.tab.select(lambda: gr.Timer(active=True), None, self.timer, **QUIETLY))
        tabs.select(self.follow_tabs, None, self.timer, **QUIETLY)
        self.timer.tick(self.gallery_page, self.page, self.listing_outputs, **QUIETLY)
        # The tab is shown before its edit opens: a mesh viewer mounted with its file already set never draws it.
        listen(demo.load(self.permalink_tab, None, tabs, **QUIETLY).then, self.open_permalink, None, self.opened,
               self.info, api_visibility="private")


class Publishing:
    """The publish button of each result panel (its tab's edit; the Gallery's listing follows), and the ``publish``
    API: the session's latest edit. Owner tokens stay in this browser (``tokens``: edit id -> token), so it can
    delete its edits later."""

    def __init__(self, ctx: UIContext, tokens: gr.BrowserState):
        self.ctx, self.tokens = ctx, tokens

    def published(self, edit_folder: Path, share_photo: bool, request: gr.Request) -> tuple[str, str, str]:
        """Publish the edit in ``edit_folder``: its record id, permalink and owner token."""
        record = publish_edit(self.ctx.gallery, edit_folder, request.session_hash, bool(share_photo))
        return record.id, permalink(page_url(request), record.id), record.owner_token

    def wire(self, panels: list[ResultPanel], listing: GalleryTab) -> None:
        for panel in panels:
            listing.refresh_after(listen(panel.publish.click, PanelPublisher(self, panel).publish_tab,
                                         [panel.state, panel.share_photo, self.tokens], [panel.link, self.tokens],
                                         panel.link, api_visibility="private"))
        gr.api(self.publish, api_name="publish")

    @show_errors
    def publish(self, share_photo: bool = False, request: gr.Request = None) -> dict:
        """Publish this session's latest edit (its strip, and its video, mesh and reference when made) to the
        gallery. Returns {"id", "url", "owner_token"}: keep the token, it is the only way to delete the edit."""
        record, link, token = self.published(latest_edit(self.ctx.folder(request)), share_photo, request)
        return {"id": record, "url": link, "owner_token": token}


class PanelPublisher:
    """The publish button of one result panel."""

    def __init__(self, publishing: Publishing, panel: ResultPanel):
        self.publishing, self.panel = publishing, panel

    @show_errors
    def publish_tab(self, edit: StoredEdit | None, share_photo: bool, owned: dict | None, request: gr.Request) -> dict:
        """Publish the tab's edit; the link, and the owner token kept in this browser."""
        record, link, token = self.publishing.published(
            require_edit(edit).folder(self.publishing.ctx.folder(request)), share_photo, request)
        return {self.panel.link: f"✅ Published: [{link}]({link}) — this browser keeps the key that can delete it.",
                self.publishing.tokens: {**(owned or {}), record: token}}


def gallery_tab(ctx: UIContext, tokens: gr.BrowserState, tabs: gr.Tabs, demo: gr.Blocks) -> GalleryTab:
    """The Gallery tab, wired (inside the current ``gr.Tabs``)."""
    tab = GalleryTab(ctx, tokens)
    tab.wire(tabs, demo)
    return tab
