"""The moderation log: one small JSON file per event (delete, hide, unhide, flag), appended, never edited.

An event file is written before the transaction that applies it (:meth:`Store.apply`), so a crash in between is
replayed at the next open; the same files are what the Hub mirror holds and :func:`~threedpe.gallery.sync.restore_from_folder`
reads back.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from threedpe.gallery.records import EVENT_FORMAT, FORMAT_VERSION, validate_id

logger = logging.getLogger(__name__)

EVENT_SQL = {
    "delete": "DELETE FROM records WHERE id = ?",
    "hide": "UPDATE records SET hidden = 1 WHERE id = ?",
    "unhide": "UPDATE records SET hidden = 0, flags = 0 WHERE id = ?",
    "flag": "UPDATE records SET flags = flags + 1 WHERE id = ?",
}


def new_event(kind: str, record_id: str, reason: str | None = None) -> dict[str, Any]:
    """A new event of ``kind`` (a key of :data:`EVENT_SQL`) about ``record_id``, stamped now."""
    return {"format": EVENT_FORMAT, "version": FORMAT_VERSION, "id": uuid.uuid4().hex, "kind": kind,
            "record": record_id, "time": time.time(), "reason": reason}


def parse_event(path: Path) -> dict[str, Any]:
    """The content of an event file; ValueError when it is not a valid event."""
    event = json.loads(path.read_bytes())
    if not (isinstance(event, dict) and event.get("format") == EVENT_FORMAT and event.get("kind") in EVENT_SQL
            and path.name == f"{validate_id(event.get('id'))}.json" and validate_id(event.get("record"))
            and isinstance(event.get("time"), (int, float))
            and (event.get("reason") is None or isinstance(event.get("reason"), str))):
        raise ValueError("not a gallery event")
    return event


def read_events(folder: Path) -> list[dict[str, Any]]:
    """The valid event files in ``folder``, oldest first (invalid ones are logged and skipped)."""
    events = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            events.append(parse_event(path))
        except (OSError, ValueError) as error:
            logger.warning("gallery: ignoring the event file %s: %s", path, error)
    return sorted(events, key=lambda event: (event["time"], event["id"]))
