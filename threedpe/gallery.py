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
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

from threedpe.files import atomic_write, fsync_folder
from threedpe.images import ImageError, ImageInput, load_image

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
ASSET_FILES = {"strip": "strip.png", "video": "orbit.mp4", "mesh": "mesh.glb", "reference": "reference.png",
               "photo": "photo.png"}
META_FILE = "meta.json"
SYNC_PATTERNS = ["records/*", "events/*.json"]  # what the Hub mirror holds (CommitScheduler / snapshot_download)
RECORD_FORMAT, EVENT_FORMAT, FORMAT_VERSION = "threedpe-gallery-record", "threedpe-gallery-event", 1
RATE_WINDOW_S = 3600.0
TEST_PAUSE_ENV = "THREEDPE_GALLERY_TEST_PAUSE"

BlobInput = Union[str, os.PathLike, bytes]

_EVENT_SQL = {
    "delete": "DELETE FROM records WHERE id = ?",
    "hide": "UPDATE records SET hidden = 1 WHERE id = ?",
    "unhide": "UPDATE records SET hidden = 0, flags = 0 WHERE id = ?",
    "flag": "UPDATE records SET flags = flags + 1 WHERE id = ?",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, created REAL NOT NULL, bytes INTEGER NOT NULL,
    hidden INTEGER NOT NULL DEFAULT 0, flags INTEGER NOT NULL DEFAULT 0, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_newest ON records (created DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, record TEXT NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL,
    reason TEXT);
CREATE TABLE IF NOT EXISTS publishes (session TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS publishes_session ON publishes (session, time);
"""
_RECORD_COLUMNS = "id, hidden, flags, meta"
_META_KEYS = {"format", "version", "id", "created", "instruction", "style", "settings", "timings", "files",
              "owner_sha256"}
_MAX_META_BYTES = 1 << 20


class GalleryError(ValueError):
    """A gallery request that cannot be done as asked; the message says why in plain words."""


class RecordNotFound(GalleryError):
    """No visible record has that id (never published, deleted, or taken down by a moderator)."""


class NotAllowed(GalleryError):
    """The token given does not allow the action (not the owner's, not the admin's)."""


class LimitExceeded(GalleryError):
    """A size, pixel, rate or disk-quota limit refuses the request; nothing was stored."""


@dataclass(frozen=True)
class GalleryLimits:
    """What one publish and the whole store may take (sizes in bytes)."""

    max_file_bytes: int = 64 << 20  # each file: strip, video, mesh, reference, photo (uploaded and stored)
    max_image_pixels: int = 16_000_000  # width x height of each image, checked from its header before decoding
    publishes_per_hour: int = 10  # per session key, over the last 60 minutes
    quota_bytes: int = 10 << 30  # all records together; publishing stops there, nothing is evicted
    flags_to_unlist: int = 3  # flags that take a record off the public listing until an admin reviews it
    thumbnail_side: int = 128  # longest side of the opt-in photo thumbnail
    max_text_chars: int = 500  # instruction, style name, flag reason
    max_json_chars: int = 8_000  # settings and timings, each, as JSON

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"GalleryLimits.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class HubSync:
    """A mirror of the gallery in a Hub dataset repo: restored from at start-up, appended to by a
    ``huggingface_hub.CommitScheduler`` every ``every_minutes`` (only files changed since its last commit)."""

    repo_id: str
    token: str = field(repr=False)
    every_minutes: float = 5.0
    private: bool = True  # used only when the scheduler creates the repo

    @classmethod
    def from_env(cls) -> HubSync | None:
        """``$THREEDPE_GALLERY_REPO`` with ``$HF_TOKEN``; None (local only) when no repo is configured."""
        repo_id = os.environ.get("THREEDPE_GALLERY_REPO", "").strip()
        if not repo_id:
            return None
        token = os.environ.get("HF_TOKEN", "").strip()
        if not token:
            raise ValueError(f"THREEDPE_GALLERY_REPO is set to {repo_id!r} but HF_TOKEN is not: syncing the gallery "
                             "needs a token with write access to that dataset repo (add HF_TOKEN as a secret of the "
                             "Space), or unset THREEDPE_GALLERY_REPO to keep the gallery on this machine only")
        return cls(repo_id, token)

    def download(self, folder: Path) -> bool:
        """The repo's ``records/`` and ``events/`` into ``folder``; False when the repo does not exist yet."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            snapshot_download(self.repo_id, repo_type="dataset", token=self.token, local_dir=folder,
                              allow_patterns=SYNC_PATTERNS)
        except RepositoryNotFoundError:
            return False
        return True

    def start(self, folder: Path) -> Any:
        """A running ``CommitScheduler`` that appends ``folder``'s records and events to the repo."""
        from huggingface_hub import CommitScheduler

        return CommitScheduler(repo_id=self.repo_id, repo_type="dataset", folder_path=folder,
                               every=self.every_minutes, token=self.token, private=self.private,
                               allow_patterns=SYNC_PATTERNS)


@dataclass(frozen=True)
class Published:
    """A new record's id (its permalink is ``?edit=<id>``) and its owner token, shown this once: keep it to delete."""

    id: str
    owner_token: str = field(repr=False)


@dataclass(frozen=True)
class Record:
    """A published edit: its asset files and its public metadata (the owner token's hash is never exposed)."""

    id: str
    folder: Path
    files: dict[str, Path]  # "strip" always; "video", "mesh", "reference", "photo" when published
    metadata: dict[str, Any]  # id, created, instruction, style, settings, timings, files (name, bytes, sha256)
    flags: int
    hidden: bool

    @property
    def created(self) -> float:
        """Publication time, seconds since the epoch."""
        return self.metadata["created"]

    @property
    def strip(self) -> Path:
        return self.files["strip"]

    @property
    def instruction(self) -> str | None:
        return self.metadata["instruction"]

    @property
    def style(self) -> str | None:
        return self.metadata["style"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.metadata["settings"]

    @property
    def timings(self) -> dict[str, Any]:
        return self.metadata["timings"]

    @property
    def caption(self) -> str:
        """One line for a gallery tile: the instruction, else "Reference edit"; the style name when there is one."""
        text = self.instruction or "Reference edit"
        return f"{text} · {self.style}" if self.style else text


@dataclass(frozen=True)
class GalleryPage:
    """One page of the public listing, newest first (``number`` counts from 1)."""

    items: list[Record]
    number: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass(frozen=True)
class RestoreReport:
    """What :meth:`Gallery.restore` added: records, events applied, and the folders it refused (ids or names)."""

    records: int
    events: int
    skipped: list[str]


def default_root() -> Path:
    """``$THREEDPE_GALLERY``, else ``~/.cache/threedpe/gallery``."""
    return Path(os.environ.get("THREEDPE_GALLERY") or Path.home() / ".cache" / "threedpe" / "gallery").expanduser()


def validate_id(value: object) -> str:
    """``value`` when it is a record id (32 lowercase hex characters); `GalleryError` otherwise."""
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:40] + "…"
    raise GalleryError(f"{shown} is not a gallery edit id (an id is 32 lowercase hex characters, as in ?edit=…)")


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
        admin_token = admin_token if admin_token is not None else os.environ.get("THREEDPE_GALLERY_ADMIN_TOKEN")
        if admin_token and len(admin_token) < 16:
            raise ValueError("the gallery admin token must be at least 16 characters long (use a random one, e.g. "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self._admin_hash = _sha256(admin_token) if admin_token else None
        self.sync = sync if sync is not None else HubSync.from_env()
        for name in ("records", "events", "staging"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._database = self.root / "gallery.sqlite3"
        self._scheduler: Any = None
        self._lock_fd: int | None = None
        self._open_store()
        if self.sync is not None:
            try:
                self._restore_from_hub()
                self._scheduler = self.sync.start(self.root)
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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- public API ---------------------------------------------------------------------------------------

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
        session_key = _session_key(session)
        if (reference is None) == (instruction is None):
            raise GalleryError("publish either the reference image or the instruction of the edit (exactly one)")
        texts = self.limits.max_text_chars, self.limits.max_json_chars
        meta: dict[str, Any] = {
            "format": RECORD_FORMAT, "version": FORMAT_VERSION, "id": uuid.uuid4().hex,
            "instruction": None if instruction is None else _clean_text(instruction, "the instruction", texts[0]),
            "style": None if style is None else _clean_text(style, "the style name", texts[0]),
            "settings": _json_object(settings or {}, "the settings", texts[1]),
            "timings": _json_object(timings or {}, "the timings", texts[1]),
        }
        with self._connect() as db:  # refuse early, before any work; checked again in the publishing transaction
            self._check_limits(db, session_key, 0, time.time())
        token = secrets.token_urlsafe(32)
        staging = self.root / "staging" / meta["id"]
        staging.mkdir()
        try:
            files = {"strip": self._stage_image(strip, staging / ASSET_FILES["strip"], "the 3-view strip")}
            _test_pause("staging")
            if video is not None:
                files["video"] = self._stage_blob(video, staging / ASSET_FILES["video"], "the orbit video",
                                                  "an MP4 video", lambda data: data[4:8] == b"ftyp")
            if mesh is not None:
                files["mesh"] = self._stage_blob(mesh, staging / ASSET_FILES["mesh"], "the mesh", "a GLB mesh",
                                                 lambda data: data[:4] == b"glTF")
            if reference is not None:
                files["reference"] = self._stage_image(reference, staging / ASSET_FILES["reference"],
                                                       "the reference image")
            if photo is not None and share_photo:
                files["photo"] = self._stage_image(photo, staging / ASSET_FILES["photo"], "the photo",
                                                   thumbnail=self.limits.thumbnail_side)
            meta.update(created=time.time(), files=files, owner_sha256=_sha256(token))
            meta_bytes = _dump(meta)
            atomic_write(staging / META_FILE, lambda file: file.write(meta_bytes), durable=True)
            size = sum(entry["bytes"] for entry in files.values()) + len(meta_bytes)
            _test_pause("staged")

            def admit(db: sqlite3.Connection) -> None:
                now = time.time()
                self._check_limits(db, session_key, size, now)
                db.execute("DELETE FROM publishes WHERE time <= ?", (now - RATE_WINDOW_S,))
                db.execute("INSERT INTO publishes (session, time) VALUES (?, ?)", (session_key, now))

            self._commit(meta, staging, size, admit)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Published(meta["id"], token)

    def page(self, number: int = 1, per_page: int = 24) -> GalleryPage:
        """Page ``number`` (from 1) of the public listing, newest first: records neither hidden nor flagged
        ``limits.flags_to_unlist`` times or more. A page past the end has no items."""
        if not (isinstance(number, int) and number >= 1 and isinstance(per_page, int) and 1 <= per_page <= 100):
            raise GalleryError(f"no such gallery page: page {number!r} of {per_page!r} items (pages count from 1, "
                               "with 1 to 100 items each)")
        visible = "FROM records WHERE hidden = 0 AND flags < ?"
        with self._connect() as db:
            total = db.execute(f"SELECT COUNT(*) {visible}", (self.limits.flags_to_unlist,)).fetchone()[0]
            rows = db.execute(f"SELECT {_RECORD_COLUMNS} {visible} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
                              (self.limits.flags_to_unlist, per_page, (number - 1) * per_page)).fetchall()
        return GalleryPage([self._record(row) for row in rows], number, per_page, total)

    def get(self, record_id: str, *, admin_token: str | None = None) -> Record:
        """The record ``record_id`` (a permalink); hidden records only with the admin token."""
        record = self._record(self._row(record_id))
        if record.hidden and not self._is_admin(admin_token):
            raise RecordNotFound(f"The edit {record.id} was taken down by a moderator.")
        return record

    def delete(self, record_id: str, token: str) -> None:
        """Delete a record with its owner token (or the admin token): its files and row go now; with a Hub mirror,
        a delete event is appended (the mirror is append-only: the files stay in the repo, never restored)."""
        meta = json.loads(self._row(record_id)[3])
        owner = isinstance(token, str) and hmac.compare_digest(_sha256(token), meta["owner_sha256"])
        if not (owner or self._is_admin(token)):
            raise NotAllowed(f"This token does not own the edit {meta['id']}, so it cannot delete it.")
        self._emit("delete", meta["id"])

    def hide(self, record_id: str, admin_token: str, hidden: bool = True) -> None:
        """Admin only: take a record down (``hidden=True``), or approve it (``hidden=False``: visible, flags reset)."""
        self._require_admin(admin_token)
        self._emit("hide" if hidden else "unhide", self._row(record_id)[0])

    def flag(self, record_id: str, reason: str) -> int:
        """Report a visible record with a short reason; returns its number of flags since the last review."""
        record = self.get(record_id)
        self._emit("flag", record.id, _clean_text(reason, "the reason", self.limits.max_text_chars))
        return self._record(self._row(record.id)).flags

    def zip(self, record_id: str, dest_dir: str | os.PathLike) -> Path:
        """``dest_dir/threedpe-edit-<id>.zip``: the record's asset files and ``metadata.json`` (public metadata). A
        published record never changes, so a zip already in ``dest_dir`` is returned as it is."""
        record = self.get(record_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"threedpe-edit-{record.id}.zip"
        if path.is_file():
            return path

        def write(file: Any) -> None:
            with zipfile.ZipFile(file, "w") as archive:
                for asset in record.files.values():  # PNG and MP4 are compressed already
                    method = zipfile.ZIP_DEFLATED if asset.suffix == ".glb" else zipfile.ZIP_STORED
                    archive.write(asset, asset.name, method)
                archive.writestr("metadata.json", _dump(record.metadata), zipfile.ZIP_DEFLATED)

        try:
            atomic_write(path, write)
        except FileNotFoundError:
            raise RecordNotFound(f"The edit {record.id} was deleted while it was being zipped.") from None
        return path

    def restore(self, folder: str | os.PathLike) -> RestoreReport:
        """Add what a mirror folder (``records/``, ``events/``; a Hub snapshot) holds and this store lacks: records
        (checksums verified, deleted ones skipped), then its events in time order. Idempotent."""
        source = Path(folder)
        if not source.is_dir():
            raise ValueError(f"nothing to restore: {source} is not a folder")
        events = self._read_events(source / "events")
        with self._connect() as db:
            present_or_deleted = {row[0] for row in db.execute("SELECT id FROM records UNION SELECT record FROM events "
                                                               "WHERE kind = 'delete'")}
        present_or_deleted |= {event["record"] for event in events if event["kind"] == "delete"}
        restored, skipped = 0, []
        records = source / "records"
        for record_folder in sorted(records.iterdir()) if records.is_dir() else []:
            if record_folder.name in present_or_deleted:
                continue
            try:
                self._restore_record(record_folder)
                restored += 1
            except (OSError, ValueError, sqlite3.IntegrityError) as error:  # corrupt, or restored concurrently
                logger.warning("gallery restore: skipping %s: %s", record_folder, error)
                skipped.append(record_folder.name)
        for event in events:
            path = self.root / "events" / f"{event['id']}.json"
            if not path.exists():
                atomic_write(path, lambda file: file.write(_dump(event)))
        return RestoreReport(restored, self._apply(events), skipped)

    # ---- store ----------------------------------------------------------------------------------------------

    def _open_store(self) -> None:
        """Hold the store's lock shared; when no other process has the store open, first initialise the database
        and clean up after crashes (nobody else can be mid-publish then)."""
        self._lock_fd = os.open(self.root / "gallery.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # open elsewhere: that process initialised it; wait for it to finish doing so
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
                return
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            self._recover()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Apply event files not yet applied; remove staging folders and record folders without a row."""
        with self._connect() as db:
            applied = {row[0] for row in db.execute("SELECT id FROM events")}
        self._apply([event for event in self._read_events(self.root / "events") if event["id"] not in applied])
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT id FROM records")}
        leftovers = list((self.root / "staging").iterdir())
        leftovers += [path for path in (self.root / "records").iterdir() if path.name not in known]
        leftovers += [path for path in (self.root / "events").iterdir() if path.suffix == ".tmp"]
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if leftovers:
            logger.info("gallery %s: removed %d unfinished file(s) or folder(s) left by a crash", self.root,
                        len(leftovers))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._lock_fd is None:
            raise RuntimeError(f"the gallery at {self.root} is closed")
        db = sqlite3.connect(self._database, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _sync_lock(self) -> contextlib.AbstractContextManager:
        """The scheduler's lock: it lists files under it, so it never sees a record folder before its row commits."""
        return self._scheduler.lock if self._scheduler is not None else contextlib.nullcontext()

    def _commit(self, meta: dict[str, Any], staging: Path, size: int,
                admit: Callable[[sqlite3.Connection], None]) -> None:
        """One transaction: ``admit`` (limit checks), the row, ``staging`` renamed to ``records/<id>``, commit."""
        final = self.root / "records" / meta["id"]
        renamed = False
        with self._sync_lock():
            try:
                with self._transaction() as db:
                    admit(db)
                    db.execute("INSERT INTO records (id, created, bytes, meta) VALUES (?, ?, ?, ?)",
                               (meta["id"], meta["created"], size, json.dumps(meta)))
                    if final.exists():  # a crashed writer's folder without a row (we hold the write lock)
                        shutil.rmtree(final)
                    os.rename(staging, final)
                    renamed = True
                    fsync_folder(final.parent)
                    _test_pause("before-commit")
            except BaseException:
                if renamed:
                    shutil.rmtree(final, ignore_errors=True)
                raise

    def _check_limits(self, db: sqlite3.Connection, session_key: str, size: int, now: float) -> None:
        count, oldest = db.execute("SELECT COUNT(*), MIN(time) FROM publishes WHERE session = ? AND time > ?",
                                   (session_key, now - RATE_WINDOW_S)).fetchone()
        if count >= self.limits.publishes_per_hour:
            minutes = max(1, math.ceil((oldest + RATE_WINDOW_S - now) / 60))
            raise LimitExceeded(f"This session has published {count} edits in the past hour, the most allowed; "
                                f"you can publish again in about {minutes} minute(s).")
        used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()[0]
        if used + size > self.limits.quota_bytes:
            raise LimitExceeded(f"The gallery is full: {_size(used)} of its {_size(self.limits.quota_bytes)} are "
                                f"used and this edit needs {_size(size)}. Nothing was published (and nothing already "
                                "published is removed to make room); please try again after an admin frees space.")

    def _row(self, record_id: str) -> tuple:
        record_id = validate_id(record_id)
        with self._connect() as db:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise RecordNotFound(f"There is no published edit {record_id} (it may have been deleted).")
        return row

    def _record(self, row: tuple) -> Record:
        record_id, hidden, flags, meta_text = row
        metadata = json.loads(meta_text)
        del metadata["owner_sha256"], metadata["format"], metadata["version"]
        folder = self.root / "records" / record_id
        files = {key: folder / ASSET_FILES[key] for key in metadata["files"]}
        return Record(record_id, folder, files, metadata, flags, bool(hidden))

    # ---- assets ---------------------------------------------------------------------------------------------

    def _check_source_size(self, source: object, label: str) -> None:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise GalleryError(f"{label} cannot be published: there is no file at {path}")
            size = path.stat().st_size
        elif isinstance(source, (bytes, bytearray, memoryview)):
            size = len(source)
        else:
            return
        self._check_size(size, label)

    def _check_size(self, size: int, label: str) -> None:
        if size > self.limits.max_file_bytes:
            raise LimitExceeded(f"{label} is {_size(size)}, above the limit of {_size(self.limits.max_file_bytes)} "
                                "per file; nothing was published.")

    def _stage_image(self, source: ImageInput, path: Path, label: str, thumbnail: int | None = None) -> dict:
        """Decode (pixel limit), optionally shrink, re-encode as PNG into ``path``; the file's manifest entry."""
        self._check_source_size(source, label)
        try:
            image = load_image(source, max_pixels=self.limits.max_image_pixels)
        except ImageError as error:
            raise GalleryError(f"{label} cannot be published: {error}") from None
        if thumbnail is not None:
            image.thumbnail((thumbnail, thumbnail))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self._stage_bytes(buffer.getvalue(), path, label)

    def _stage_blob(self, source: BlobInput, path: Path, label: str, kind: str,
                    signature: Callable[[bytes], bool]) -> dict:
        """Copy an mp4 / GLB (checked by its signature, not decoded) into ``path``; the file's manifest entry."""
        self._check_source_size(source, label)
        if isinstance(source, (str, os.PathLike)):
            data = Path(source).read_bytes()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            raise GalleryError(f"{label} must be a file path or bytes, not a {type(source).__name__}")
        if not signature(data):
            raise GalleryError(f"{label} cannot be published: it is not {kind}")
        return self._stage_bytes(data, path, label)

    def _stage_bytes(self, data: bytes, path: Path, label: str) -> dict:
        self._check_size(len(data), label)
        atomic_write(path, lambda file: file.write(data), durable=True)
        return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # ---- events, restore --------------------------------------------------------------------------------------

    def _is_admin(self, token: object) -> bool:
        return (self._admin_hash is not None and isinstance(token, str)
                and hmac.compare_digest(_sha256(token), self._admin_hash))

    def _require_admin(self, token: object) -> None:
        if self._admin_hash is None:
            raise NotAllowed("Moderation is off: no admin token is configured (set THREEDPE_GALLERY_ADMIN_TOKEN).")
        if not self._is_admin(token):
            raise NotAllowed("That is not the gallery's admin token.")

    def _emit(self, kind: str, record_id: str, reason: str | None = None) -> None:
        """Append an event file (durably), then apply it."""
        event = {"format": EVENT_FORMAT, "version": FORMAT_VERSION, "id": uuid.uuid4().hex, "kind": kind,
                 "record": record_id, "time": time.time(), "reason": reason}
        atomic_write(self.root / "events" / f"{event['id']}.json", lambda file: file.write(_dump(event)), durable=True)
        _test_pause(f"{kind}-event-written")
        self._apply([event])

    def _apply(self, events: list[dict[str, Any]]) -> int:
        """Apply events not applied yet, in one transaction; remove deleted records' folders. Returns the count."""
        applied, deleted = 0, []
        with self._transaction() as db:
            for event in events:
                inserted = db.execute("INSERT OR IGNORE INTO events (id, record, kind, time, reason) "
                                      "VALUES (?, ?, ?, ?, ?)", (event["id"], event["record"], event["kind"],
                                                                 event["time"], event["reason"])).rowcount
                if inserted:
                    applied += 1
                    db.execute(_EVENT_SQL[event["kind"]], (event["record"],))
                    if event["kind"] == "delete":
                        deleted.append(event["record"])
        with self._sync_lock():
            for record_id in deleted:
                shutil.rmtree(self.root / "records" / record_id, ignore_errors=True)
        return applied

    def _read_events(self, folder: Path) -> list[dict[str, Any]]:
        """The valid event files in ``folder``, oldest first (invalid ones are logged and skipped)."""
        events = []
        for path in folder.glob("*.json") if folder.is_dir() else []:
            try:
                events.append(_parse_event(path))
            except (OSError, ValueError) as error:
                logger.warning("gallery: ignoring the event file %s: %s", path, error)
        return sorted(events, key=lambda event: (event["time"], event["id"]))

    def _restore_record(self, folder: Path) -> None:
        """Copy a mirrored record folder into the store (checksums verified), through staging, like a publish."""
        record_id = validate_id(folder.name)
        meta_path = folder / META_FILE
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise GalleryError(f"{meta_path} is too large to be a record's metadata")
        meta_bytes = meta_path.read_bytes()
        meta = json.loads(meta_bytes)
        if not _is_record_meta(meta, record_id):
            raise GalleryError(f"{meta_path} does not describe gallery record {record_id} (format {FORMAT_VERSION})")
        files = meta["files"]
        staging = self.root / "staging" / record_id
        staging.mkdir()
        try:
            for entry in files.values():
                data = (folder / entry["name"]).read_bytes()
                if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise GalleryError(f"{folder / entry['name']} does not match the checksum in {META_FILE}")
                atomic_write(staging / entry["name"], lambda file: file.write(data), durable=True)
            atomic_write(staging / META_FILE, lambda file: file.write(meta_bytes), durable=True)
            size = sum(entry["bytes"] for entry in files.values()) + len(meta_bytes)
            self._commit(meta, staging, size, lambda db: None)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _restore_from_hub(self) -> None:
        assert self.sync is not None
        snapshot = Path(tempfile.mkdtemp(prefix="hub-", dir=self.root / "staging"))
        try:
            try:
                found = self.sync.download(snapshot)
            except Exception as error:  # the Space must start when the Hub is unreachable; the mirror loses nothing
                logger.error("gallery: could not download %s, starting without its records: %s", self.sync.repo_id,
                             error)
                return
            if found:
                report = self.restore(snapshot)
                logger.info("gallery: restored %d records and %d events from %s (%d skipped)", report.records,
                            report.events, self.sync.repo_id, len(report.skipped))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)


def _test_pause(stage: str) -> None:
    """Crash-test hook: when ``$THREEDPE_GALLERY_TEST_PAUSE`` is ``<stage>:<marker file>``, write the marker and sleep
    at that stage, so that a test can SIGKILL the process exactly there. Unset in normal use."""
    setting = os.environ.get(TEST_PAUSE_ENV)
    if setting and setting.partition(":")[0] == stage:
        Path(setting.partition(":")[2]).write_text(str(os.getpid()))
        time.sleep(3600)


def _parse_event(path: Path) -> dict[str, Any]:
    """The content of an event file; ValueError when it is not a valid event."""
    event = json.loads(path.read_bytes())
    if not (isinstance(event, dict) and event.get("format") == EVENT_FORMAT and event.get("kind") in _EVENT_SQL
            and path.name == f"{validate_id(event.get('id'))}.json" and validate_id(event.get("record"))
            and isinstance(event.get("time"), (int, float))
            and (event.get("reason") is None or isinstance(event.get("reason"), str))):
        raise ValueError("not a gallery event")
    return event


def _is_record_meta(meta: object, record_id: str) -> bool:
    """Whether ``meta`` is a version-1 ``meta.json`` of ``record_id`` whose files have the store's fixed names."""
    if not (isinstance(meta, dict) and set(meta) == _META_KEYS and meta["format"] == RECORD_FORMAT
            and meta["version"] == FORMAT_VERSION and meta["id"] == record_id):
        return False
    files, owner = meta["files"], meta["owner_sha256"]
    return (isinstance(meta["created"], (int, float)) and isinstance(meta["settings"], dict)
            and isinstance(meta["timings"], dict)
            and all(isinstance(meta[key], (str, type(None))) for key in ("instruction", "style"))
            and isinstance(owner, str) and re.fullmatch(r"[0-9a-f]{64}", owner) is not None
            and isinstance(files, dict) and "strip" in files
            and all(isinstance(entry, dict) and ASSET_FILES.get(key) == entry.get("name")
                    and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
                    for key, entry in files.items()))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _session_key(session: object) -> str:
    if not isinstance(session, str) or not session or len(session) > 256:
        raise GalleryError("publishing needs the browser session (a non-empty key of at most 256 characters)")
    return _sha256(session)


def _clean_text(value: object, label: str, limit: int) -> str:
    """``value`` with whitespace runs collapsed; refused when empty, too long or holding control characters."""
    if not isinstance(value, str):
        raise GalleryError(f"{label} must be text, not a {type(value).__name__}")
    text = " ".join(value.split())
    if not text:
        raise GalleryError(f"{label} is empty")
    if len(text) > limit:
        raise LimitExceeded(f"{label} is {len(text)} characters long, above the limit of {limit}")
    if not text.isprintable():
        raise GalleryError(f"{label} contains control characters")
    return text


def _json_object(value: Mapping[str, Any], label: str, limit: int) -> dict[str, Any]:
    """A JSON copy of a mapping (finite numbers, text, lists, mappings), at most ``limit`` characters."""
    try:
        text = json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise GalleryError(f"{label} must be plain JSON data (numbers, text, lists, mappings): {error}") from None
    if len(text) > limit:
        raise LimitExceeded(f"{label} take {len(text)} characters as JSON, above the limit of {limit}")
    return json.loads(text)


def _dump(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys), so that the same record or event is always the same file."""
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False).encode()


def _size(count: int) -> str:
    """Bytes for people: '512 bytes', '12.3 MB', '10.0 GB'."""
    value, unit = float(count), "bytes"
    for larger in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
