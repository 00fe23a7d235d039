"""Who may see, report, take down and delete a record: the admin token, owner tokens, flags and hiding.

Anyone may flag a visible record; ``GalleryLimits.flags_to_unlist`` flags take it off the listing until the admin
hides it (gone from the listing and the permalink) or approves it (visible, flags reset). An owner token (only its
sha256 is stored) deletes its own record; the admin token deletes any. Every decision is an event
(:mod:`~threedpe.gallery.events`), written before it is applied.
"""
from __future__ import annotations

import hmac
import json

from threedpe.gallery.events import new_event
from threedpe.gallery.records import NotAllowed, Record, RecordNotFound, clean_text, sha256_text
from threedpe.gallery.store import Store


def admin_hash(admin_token: str | None) -> str | None:
    """The stored form of the admin token (its sha256), None when there is none; ValueError when it is too short."""
    if not admin_token:
        return None
    if len(admin_token) < 16:
        raise ValueError("the gallery admin token must be at least 16 characters long (use a random one, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return sha256_text(admin_token)


class Moderation:
    """The rules of ``store``'s records under the admin token whose :func:`admin_hash` is given (None: off)."""

    def __init__(self, store: Store, admin_sha256: str | None):
        self.store = store
        self._admin_hash = admin_sha256

    def is_admin(self, token: object) -> bool:
        return (self._admin_hash is not None and isinstance(token, str)
                and hmac.compare_digest(sha256_text(token), self._admin_hash))

    def visible(self, record_id: str, admin_token: str | None = None) -> Record:
        """The record ``record_id``; a hidden one only with the admin token (`RecordNotFound` otherwise)."""
        record = self.store.record(self.store.row(record_id))
        if record.hidden and not self.is_admin(admin_token):
            raise RecordNotFound(f"The edit {record.id} was taken down by a moderator.")
        return record

    def delete(self, record_id: str, token: str) -> None:
        """Delete with the owner token or the admin token (`NotAllowed` otherwise)."""
        meta = json.loads(self.store.row(record_id)[3])
        owner = isinstance(token, str) and hmac.compare_digest(sha256_text(token), meta["owner_sha256"])
        if not (owner or self.is_admin(token)):
            raise NotAllowed(f"This token does not own the edit {meta['id']}, so it cannot delete it.")
        self._decide("delete", meta["id"])

    def hide(self, record_id: str, admin_token: str, hidden: bool) -> None:
        """Admin only: take down (``hidden``) or approve (visible again, flags reset)."""
        if self._admin_hash is None:
            raise NotAllowed("Moderation is off: no admin token is configured (set THREEDPE_GALLERY_ADMIN_TOKEN).")
        if not self.is_admin(admin_token):
            raise NotAllowed("That is not the gallery's admin token.")
        self._decide("hide" if hidden else "unhide", self.store.row(record_id)[0])

    def flag(self, record_id: str, reason: str) -> int:
        """Report a visible record with a short reason; its number of flags since the last review."""
        record = self.visible(record_id)
        self._decide("flag", record.id, clean_text(reason, "the reason", self.store.limits.max_text_chars))
        return self.store.record(self.store.row(record.id)).flags

    def _decide(self, kind: str, record_id: str, reason: str | None = None) -> None:
        """Append the event file (durably), then apply it."""
        event = new_event(kind, record_id, reason)
        self.store.write_event(event)
        self.store.apply([event])
