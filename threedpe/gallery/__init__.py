"""Published edits: a gallery store (SQLite in WAL mode + a folder of files), optionally mirrored to a Hub dataset.

The Space publishes an edit (its 3-view strip, orbit video and GLB mesh, the reference image or the instruction, the
style name, settings and timings; a small thumbnail of the original photo only when the user opts in) and shares it
as ``?edit=<id>``. Everything lives under one root folder (``Gallery(root)``, else ``$THREEDPE_GALLERY``, else
``~/.cache/threedpe/gallery``)::

    gallery.sqlite3           index: one row per published record, applied events, recent publishes per session
    gallery.lock              flock: shared while a Gallery is open, exclusive for the crash clean-up at open
    records/<id>/             strip.png [orbit.mp4] [mesh.glb] [reference.png] [photo.png] meta.json
    events/<event id>.json    append-only moderation log: delete, hide, unhide, flag
    staging/                  publishes and restores in progress (never listed, never synced)

``records/`` and ``events/`` are exactly what is mirrored to the Hub (sync = copy) and what :meth:`Gallery.restore`
reads back. File names inside the store are fixed; ids are random (``uuid4().hex``) and checked by
:func:`validate_id` on every call.

Crash safety. A record's files are written into ``staging/<id>/``; then one transaction checks the limits, inserts
the row, renames the folder into ``records/`` and commits: the row is written last. A crash leaves at most a staging
folder or a record folder without a row; neither is ever listed, and both are removed when the store is next opened
by a process that has it to itself. An event is written to ``events/`` before the transaction that applies it;
event files not yet applied (a crash in between) are applied at that same open.

Moderation. Anyone may flag a record with a short reason; a record with ``GalleryLimits.flags_to_unlist`` flags
or more leaves the public listing (its permalink still opens) until an admin reviews it: ``hide`` takes it down
(listing and permalink; only the admin token still opens it), ``hide(..., hidden=False)`` approves it (visible again,
flags reset). The admin token (``$THREEDPE_GALLERY_ADMIN_TOKEN``) may also delete any record; an owner token (given
once, at publish; only its sha256 is stored) deletes its own record.

Limits (:class:`GalleryLimits`) refuse with :class:`LimitExceeded` and publish nothing; when the disk quota is
reached, publishing stops ("The gallery is full: ...") and nothing already published is ever removed to make room.

The package, by job: ``records`` (format, limits, errors), ``store`` (folders, SQLite, listing, crash clean-up),
``events`` (the moderation log), ``assets`` (a record's files), ``moderation`` (tokens and rules), ``sync`` (the Hub
mirror and restore); :class:`Gallery` puts them together.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from threedpe.gallery.assets import Assets, BlobInput, stage_meta, write_zip
from threedpe.gallery.moderation import Moderation, admin_hash
from threedpe.gallery.records import (FORMAT_VERSION, RECORD_FORMAT, GalleryError, GalleryLimits, GalleryPage,
                                      LimitExceeded, NotAllowed, Published, Record, RecordNotFound, RestoreReport,
                                      clean_text, default_root, dump, json_object, session_key, sha256_text,
                                      validate_id)
from threedpe.gallery.store import Store
from threedpe.gallery.sync import SYNC_PATTERNS, HubSync, restore_from_folder
from threedpe.images import ImageInput

__all__ = ["Gallery", "GalleryError", "GalleryLimits", "GalleryPage", "HubSync", "LimitExceeded", "NotAllowed",
           "Published", "Record", "RecordNotFound", "RestoreReport", "SYNC_PATTERNS", "default_root", "validate_id"]

logger = logging.getLogger(__name__)


class Gallery:
    """The store of published edits. Safe to share between threads and between processes on one machine.

    root: the store folder (default :func:`default_root`). admin_token: the moderator's token (default
    ``$THREEDPE_GALLERY_ADMIN_TOKEN``; none = moderation off). sync: the Hub mirror (default
    :meth:`HubSync.from_env`, None without ``$THREEDPE_GALLERY_REPO``): when set, the store is first restored from
    the repo, then a ``CommitScheduler`` appends new records and events to it. Call :meth:`close` (or use ``with``).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, limits: GalleryLimits = GalleryLimits(),
                 admin_token: str | None = None, sync: HubSync | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.limits = limits
        admin = admin_hash(admin_token if admin_token is not None else os.environ.get("THREEDPE_GALLERY_ADMIN_TOKEN"))
        self.sync = sync if sync is not None else HubSync.from_env()
        self._scheduler: Any = None
        self._assets = Assets(limits)
        self._store = Store(self.root, limits)
        self._moderation = Moderation(self._store, admin)
        if self.sync is not None:
            try:
                self.sync.restore_into(self._store)
                self._scheduler = self.sync.start(self.root)
                self._store.mirror_lock = self._scheduler.lock
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what the Hub mirror does not have yet (when synced), stop the scheduler, release the store."""
        if self._scheduler is not None:
            try:
                self._scheduler.trigger().result()
            except Exception as error:  # the Hub being unreachable must not stop a shutdown; the next start retries
                logger.error("last gallery sync to %s failed: %s", self.sync.repo_id, error)
            self._scheduler.stop()
            self._scheduler = None
        self._store.close()

    def publish(self, *, session: str, strip: ImageInput, reference: ImageInput | None = None,
                instruction: str | None = None, video: BlobInput | None = None, mesh: BlobInput | None = None,
                style: str | None = None, settings: Mapping[str, Any] | None = None,
                timings: Mapping[str, Any] | None = None, photo: ImageInput | None = None,
                share_photo: bool = False) -> Published:
        """Publish one edit and return its id and owner token.

        session: who publishes (the browser session), for the hourly limit; stored only as a hash. strip: the
        3-view strip (any image input; stored as PNG). Exactly one of ``reference`` (an image) and
        ``instruction`` (text). video: an mp4, mesh: a GLB (path or bytes, optional). settings, timings: JSON
        objects. photo: the original photo, stored as a small thumbnail only when ``share_photo`` is True.
        Images are decoded and re-encoded (metadata such as EXIF is dropped). Raises `GalleryError` /
        `LimitExceeded` with a message for the user; nothing is stored then.
        """
        key = session_key(session)
        if (reference is None) == (instruction is None):
            raise GalleryError("publish either the reference image or the instruction of the edit (exactly one)")
        texts = self.limits.max_text_chars, self.limits.max_json_chars
        meta: dict[str, Any] = {
            "format": RECORD_FORMAT, "version": FORMAT_VERSION, "id": uuid.uuid4().hex,
            "instruction": None if instruction is None else clean_text(instruction, "the instruction", texts[0]),
            "style": None if style is None else clean_text(style, "the style name", texts[0]),
            "settings": json_object(settings or {}, "the settings", texts[1]),
            "timings": json_object(timings or {}, "the timings", texts[1]),
        }
        self._store.check_publish(key, 0)  # refuse early, before any work; checked again when committing
        token = secrets.token_urlsafe(32)
        staging = self._store.new_staging(meta["id"])
        try:
            files = self._assets.stage_edit(staging, strip=strip, video=video, mesh=mesh, reference=reference,
                                            photo=photo if share_photo else None)
            meta.update(created=time.time(), files=files, owner_sha256=sha256_text(token))
            self._store.commit(meta, staging, stage_meta(staging, dump(meta), files), key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Published(meta["id"], token)

    def page(self, number: int = 1, per_page: int = 24) -> GalleryPage:
        """Page ``number`` (from 1) of the public listing, newest first: records neither hidden nor flagged
        ``limits.flags_to_unlist`` times or more. A page past the end has no items."""
        return self._store.page(number, per_page)

    def get(self, record_id: str, *, admin_token: str | None = None) -> Record:
        """The record ``record_id`` (a permalink); hidden records only with the admin token."""
        return self._moderation.visible(record_id, admin_token)

    def delete(self, record_id: str, token: str) -> None:
        """Delete a record with its owner token (or the admin token): its files and row go now; with a Hub mirror,
        a delete event is appended (the mirror is append-only: the files stay in the repo, never restored)."""
        self._moderation.delete(record_id, token)

    def hide(self, record_id: str, admin_token: str, hidden: bool = True) -> None:
        """Admin only: take a record down (``hidden=True``), or approve it (``hidden=False``: visible, flags reset)."""
        self._moderation.hide(record_id, admin_token, hidden)

    def flag(self, record_id: str, reason: str) -> int:
        """Report a visible record with a short reason; returns its number of flags since the last review."""
        return self._moderation.flag(record_id, reason)

    def zip(self, record_id: str, dest_dir: str | os.PathLike) -> Path:
        """``dest_dir/threedpe-edit-<id>.zip``: the record's asset files and ``metadata.json`` (public metadata). A
        published record never changes, so a zip already in ``dest_dir`` is returned as it is."""
        record = self.get(record_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"threedpe-edit-{record.id}.zip"
        if not path.is_file():
            write_zip(record, path)
        return path

    def restore(self, folder: str | os.PathLike) -> RestoreReport:
        """Add what a mirror folder (``records/``, ``events/``; a Hub snapshot) holds and this store lacks: records
        (checksums verified, deleted ones skipped), then its events in time order. Idempotent."""
        return restore_from_folder(self._store, folder)
