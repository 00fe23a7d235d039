"""Publishing a session's edit to the gallery, without any UI: the session's latest edit, its files and record, and
the permalink of a published edit."""
from __future__ import annotations

import json
from pathlib import Path

from threedpe.gallery import Gallery, GalleryError, Published, Record
from threedpe.images import load_image
from threedpe.serving.edits import EDIT_RECORD, strength_suffix


def latest_edit(session: Path) -> Path:
    """The folder of the session's most recent edit; a `GalleryError` when it has none."""
    records = sorted(session.glob(f"*/{EDIT_RECORD}"), key=lambda path: path.stat().st_mtime_ns)
    if not records:
        raise GalleryError("There is no edit to publish yet: run an edit first.")
    return records[-1].parent


def publish_edit(gallery: Gallery, folder: Path, session_hash: str | None, share_photo: bool = False) -> Published:
    """Publish the edit whose files are in ``folder`` (strip at the chosen strength, and the video, mesh and reference
    when made; a clip edit's strip and video are the ones its record names); the aligned photo only as a thumbnail
    and only when ``share_photo``."""
    record = json.loads((folder / EDIT_RECORD).read_text())
    suffix = strength_suffix(record["settings"].get("strength", 1.0))  # the files at the edit's last strength

    def made(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    strip = folder / (record.get("strip") or f"views{suffix}.png")
    return gallery.publish(session=session_hash or "anonymous", strip=strip, instruction=record["instruction"],
                           reference=None if record["instruction"] is not None else folder / "reference.png",
                           video=made(record.get("video") or f"orbit{suffix}.mp4"), mesh=made(f"mesh{suffix}.glb"),
                           style=record["style"],
                           settings=record["settings"], timings=record["timings"], photo=folder / "aligned.png",
                           share_photo=share_photo)


def frontal_view(record: Record, folder: Path) -> Path:
    """The edited frontal view of a published edit (the middle of its 3-view strip), written as ``<id>-after.png`` into
    ``folder``: the "after" of the gallery's before / after."""
    strip = load_image(record.strip)
    width, height = strip.size
    path = folder / f"{record.id}-after.png"
    strip.crop((width // 3, 0, 2 * width // 3, height)).save(path)
    return path


def permalink(page_url: str, record_id: str) -> str:
    """``page_url?edit=<id>`` (any query or fragment of ``page_url`` dropped)."""
    return f"{page_url.split('#')[0].split('?')[0]}?edit={record_id}"



def record_id(text: str) -> str:
    """The edit id in an id or a permalink (``...?edit=<id>``)."""
    text = (text or "").strip()
    return text.split("edit=")[-1].split("&")[0].split("#")[0] if "edit=" in text else text
