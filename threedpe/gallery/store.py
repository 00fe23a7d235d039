"""The gallery's storage: a folder of record folders and event files, indexed by SQLite in WAL mode.

:class:`Store` owns the folder layout, the database, the crash clean-up at open, the one transaction that publishes
a staged record (limits checked, row inserted, folder renamed in, commit), the applying of moderation events, and
the listing. It knows nothing of tokens (see :mod:`~threedpe.gallery.moderation`) nor of file contents (see
:mod:`~threedpe.gallery.assets`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from threedpe.files import atomic_write, fsync_folder
from threedpe.gallery.events import EVENT_SQL, read_events
from threedpe.gallery.records import (ASSET_FILES, GalleryError, GalleryLimits, GalleryPage, LimitExceeded, Record,
                                      RecordNotFound, dump, human_size, validate_id)

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 3600.0
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


class Store:
    """``root``'s records, events and index, opened at construction (shared lock held until :meth:`close`).

    ``mirror_lock`` is held while record folders appear or go, so that a Hub scheduler listing files under the same
    lock never sees a record folder before its row commits; it is a no-op until a mirror sets it.
    """

    def __init__(self, root: Path, limits: GalleryLimits):
        self.root, self.limits = root, limits
        for name in ("records", "events", "staging"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.database = root / "gallery.sqlite3"
        self.mirror_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        self._lock_fd: int | None = None
        self._open()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- opening, crash clean-up ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Hold the store's lock shared; when no other process has the store open, first initialise the database
        and clean up after crashes (nobody else can be mid-publish then)."""
        self._lock_fd = os.open(self.root / "gallery.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # open elsewhere: that process initialised it; wait for it to finish doing so
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
                return
            with self.connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            self._recover()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Apply event files not yet applied; remove staging folders and record folders without a row."""
        with self.connect() as db:
            applied = {row[0] for row in db.execute("SELECT id FROM events")}
        self.apply([event for event in read_events(self.root / "events") if event["id"] not in applied])
        with self.connect() as db:
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

    # ---- database ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        if self._lock_fd is None:
            raise RuntimeError(f"the gallery at {self.root} is closed")
        db = sqlite3.connect(self.database, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- publishing -------------------------------------------------------------------------------------------

    def new_staging(self, record_id: str) -> Path:
        """A fresh ``staging/<id>`` folder for a record being written (never listed, never synced)."""
        folder = self.root / "staging" / record_id
        folder.mkdir()
        return folder

    def check_publish(self, session_key: str, size: int) -> None:
        """Refuse (`LimitExceeded`) when the session's hourly limit or the disk quota leaves no room for ``size``."""
        with self.connect() as db:
            self._check_limits(db, session_key, size, time.time())

    def commit(self, meta: dict[str, Any], staging: Path, size: int, session_key: str | None) -> None:
        """One transaction: the limits (for a publish by ``session_key``; a restore has none), the row, ``staging``
        renamed to ``records/<id>``, commit."""
        final = self.root / "records" / meta["id"]
        with self.mirror_lock:
            try:
                with self.transaction() as db:
                    if session_key is not None:
                        now = time.time()
                        self._check_limits(db, session_key, size, now)
                        db.execute("DELETE FROM publishes WHERE time <= ?", (now - RATE_WINDOW_S,))
                        db.execute("INSERT INTO publishes (session, time) VALUES (?, ?)", (session_key, now))
                    db.execute("INSERT INTO records (id, created, bytes, meta) VALUES (?, ?, ?, ?)",
                               (meta["id"], meta["created"], size, json.dumps(meta)))
                    self.place(staging, final)
            except BaseException:
                if not staging.exists():  # renamed into place, but the row did not commit
                    shutil.rmtree(final, ignore_errors=True)
                raise

    def place(self, staging: Path, final: Path) -> None:
        """Rename a staged record folder to its final place, durably (inside the publishing transaction)."""
        if final.exists():  # a crashed writer's folder without a row (the caller holds the write lock)
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_folder(final.parent)

    def _check_limits(self, db: sqlite3.Connection, session_key: str, size: int, now: float) -> None:
        count, oldest = db.execute("SELECT COUNT(*), MIN(time) FROM publishes WHERE session = ? AND time > ?",
                                   (session_key, now - RATE_WINDOW_S)).fetchone()
        if count >= self.limits.publishes_per_hour:
            minutes = max(1, math.ceil((oldest + RATE_WINDOW_S - now) / 60))
            raise LimitExceeded(f"This session has published {count} edits in the past hour, the most allowed; "
                                f"you can publish again in about {minutes} minute(s).")
        used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM records").fetchone()[0]
        if used + size > self.limits.quota_bytes:
            raise LimitExceeded(f"The gallery is full: {human_size(used)} of its {human_size(self.limits.quota_bytes)}"
                                f" are used and this edit needs {human_size(size)}. Nothing was published (and nothing"
                                " already published is removed to make room); please try again after an admin frees "
                                "space.")

    # ---- events -----------------------------------------------------------------------------------------------

    def write_event(self, event: dict[str, Any], *, durable: bool = True) -> None:
        """``events/<event id>.json`` (the log entry; :meth:`apply` applies it)."""
        atomic_write(self.root / "events" / f"{event['id']}.json", lambda file: file.write(dump(event)),
                     durable=durable)

    def apply(self, events: list[dict[str, Any]]) -> int:
        """Apply events not applied yet, in one transaction; remove deleted records' folders. Returns the count."""
        applied, deleted = 0, []
        with self.transaction() as db:
            for event in events:
                inserted = db.execute("INSERT OR IGNORE INTO events (id, record, kind, time, reason) "
                                      "VALUES (?, ?, ?, ?, ?)", (event["id"], event["record"], event["kind"],
                                                                 event["time"], event["reason"])).rowcount
                if inserted:
                    applied += 1
                    db.execute(EVENT_SQL[event["kind"]], (event["record"],))
                    if event["kind"] == "delete":
                        deleted.append(event["record"])
        with self.mirror_lock:
            for record_id in deleted:
                shutil.rmtree(self.root / "records" / record_id, ignore_errors=True)
        return applied

    def present_or_deleted(self) -> set[str]:
        """Ids of the records stored now or deleted by an applied event (what a restore must not add)."""
        with self.connect() as db:
            return {row[0] for row in db.execute("SELECT id FROM records UNION SELECT record FROM events "
                                                 "WHERE kind = 'delete'")}

    # ---- reading ----------------------------------------------------------------------------------------------

    def row(self, record_id: str) -> tuple:
        """The index row (id, hidden, flags, meta JSON) of ``record_id``, hidden or not; `RecordNotFound` if none."""
        record_id = validate_id(record_id)
        with self.connect() as db:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise RecordNotFound(f"There is no published edit {record_id} (it may have been deleted).")
        return row

    def record(self, row: tuple) -> Record:
        """The public view of an index row (the owner token's hash and the format fields removed)."""
        record_id, hidden, flags, meta_text = row
        metadata = json.loads(meta_text)
        del metadata["owner_sha256"], metadata["format"], metadata["version"]
        folder = self.root / "records" / record_id
        files = {key: folder / ASSET_FILES[key] for key in metadata["files"]}
        return Record(record_id, folder, files, metadata, flags, bool(hidden))

    def page(self, number: int, per_page: int) -> GalleryPage:
        """Page ``number`` (from 1) of the records neither hidden nor flagged ``limits.flags_to_unlist`` times or
        more, newest first."""
        if not (isinstance(number, int) and number >= 1 and isinstance(per_page, int) and 1 <= per_page <= 100):
            raise GalleryError(f"no such gallery page: page {number!r} of {per_page!r} items (pages count from 1, "
                               "with 1 to 100 items each)")
        visible = "FROM records WHERE hidden = 0 AND flags < ?"
        with self.connect() as db:
            total = db.execute(f"SELECT COUNT(*) {visible}", (self.limits.flags_to_unlist,)).fetchone()[0]
            rows = db.execute(f"SELECT {_RECORD_COLUMNS} {visible} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
                              (self.limits.flags_to_unlist, per_page, (number - 1) * per_page)).fetchall()
        return GalleryPage([self.record(row) for row in rows], number, per_page, total)
