"""The gallery's mirror: a Hugging Face Hub dataset repo holding ``records/`` and ``events/`` (sync = copy).

At start-up the store is restored from a snapshot of the repo (:func:`restore_from_folder`, also usable on any mirror folder);
then a ``huggingface_hub.CommitScheduler`` appends new records and events to it. The mirror is append-only: deleted
records stay in the repo with their delete event and are never restored.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threedpe.gallery.assets import copy_verified, stage_meta
from threedpe.gallery.events import read_events
from threedpe.gallery.records import (FORMAT_VERSION, MAX_META_BYTES, META_FILE, GalleryError, RestoreReport,
                                      is_record_meta, validate_id)
from threedpe.gallery.store import Store

logger = logging.getLogger(__name__)

SYNC_PATTERNS = ["records/*", "events/*.json"]  # what the Hub mirror holds (CommitScheduler / snapshot_download)


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

    def restore_into(self, store: Store) -> None:
        """Restore ``store`` from a snapshot of the repo; an unreachable Hub is logged, not raised (the Space must
        start, and the mirror loses nothing)."""
        snapshot = Path(tempfile.mkdtemp(prefix="hub-", dir=store.root / "staging"))
        try:
            try:
                found = self.download(snapshot)
            except Exception as error:
                logger.error("gallery: could not download %s, starting without its records: %s", self.repo_id, error)
                return
            if found:
                report = restore_from_folder(store, snapshot)
                logger.info("gallery: restored %d records and %d events from %s (%d skipped)", report.records,
                            report.events, self.repo_id, len(report.skipped))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)


def restore_from_folder(store: Store, folder: str | os.PathLike) -> RestoreReport:
    """Add what a mirror folder (``records/``, ``events/``) holds and ``store`` lacks: records (checksums verified,
    deleted ones skipped), then its events in time order. Idempotent."""
    source = Path(folder)
    if not source.is_dir():
        raise ValueError(f"nothing to restore: {source} is not a folder")
    events = read_events(source / "events")
    present_or_deleted = store.present_or_deleted() | {event["record"] for event in events
                                                       if event["kind"] == "delete"}
    restored, skipped = 0, []
    records = source / "records"
    for record_folder in sorted(records.iterdir()) if records.is_dir() else []:
        if record_folder.name in present_or_deleted:
            continue
        try:
            _restore_record(store, record_folder)
            restored += 1
        except (OSError, ValueError, sqlite3.IntegrityError) as error:  # corrupt, or restored concurrently
            logger.warning("gallery restore: skipping %s: %s", record_folder, error)
            skipped.append(record_folder.name)
    for event in events:
        if not (store.root / "events" / f"{event['id']}.json").exists():
            store.write_event(event, durable=False)
    return RestoreReport(restored, store.apply(events), skipped)


def _restore_record(store: Store, folder: Path) -> None:
    """Copy a mirrored record folder into the store (checksums verified), through staging, like a publish."""
    record_id = validate_id(folder.name)
    meta_path = folder / META_FILE
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise GalleryError(f"{meta_path} is too large to be a record's metadata")
    meta_bytes = meta_path.read_bytes()
    meta = json.loads(meta_bytes)
    if not is_record_meta(meta, record_id):
        raise GalleryError(f"{meta_path} does not describe gallery record {record_id} (format {FORMAT_VERSION})")
    staging = store.new_staging(record_id)
    try:
        copy_verified(folder, meta["files"], staging)
        store.commit(meta, staging, stage_meta(staging, meta_bytes, meta["files"]), session_key=None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
