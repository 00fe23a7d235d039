"""What the gallery stores and hands out: the record format, the limits, the errors, and checks of untrusted input.

A record folder holds fixed file names (:data:`ASSET_FILES` and :data:`META_FILE`); ``meta.json`` is the canonical
JSON of the record (:func:`dump`), with the sha256 of each file and of the owner token.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
ASSET_FILES = {"strip": "strip.png", "video": "orbit.mp4", "mesh": "mesh.glb", "reference": "reference.png",
               "photo": "photo.png"}
META_FILE = "meta.json"
RECORD_FORMAT, EVENT_FORMAT, FORMAT_VERSION = "threedpe-gallery-record", "threedpe-gallery-event", 1
META_KEYS = {"format", "version", "id", "created", "instruction", "style", "settings", "timings", "files",
             "owner_sha256"}
MAX_META_BYTES = 1 << 20


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
        """One line for a gallery tile: the instruction, else "Reference edit"; the style name when there is one; 🎬
        first for a clip edit."""
        text = ("🎬 " if self.settings.get("clip") else "") + (self.instruction or "Reference edit")
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


def is_record_meta(meta: object, record_id: str) -> bool:
    """Whether ``meta`` is a version-1 ``meta.json`` of ``record_id`` whose files have the store's fixed names."""
    if not (isinstance(meta, dict) and set(meta) == META_KEYS and meta["format"] == RECORD_FORMAT
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


def sha256_text(text: str) -> str:
    """The hex sha256 of ``text`` (UTF-8): how tokens and session keys are kept."""
    return hashlib.sha256(text.encode()).hexdigest()


def session_key(session: object) -> str:
    """The stored form of a browser session key (its sha256); `GalleryError` when it is not a usable key."""
    if not isinstance(session, str) or not session or len(session) > 256:
        raise GalleryError("publishing needs the browser session (a non-empty key of at most 256 characters)")
    return sha256_text(session)


def clean_text(value: object, label: str, limit: int) -> str:
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


def json_object(value: Mapping[str, Any], label: str, limit: int) -> dict[str, Any]:
    """A JSON copy of a mapping (finite numbers, text, lists, mappings), at most ``limit`` characters."""
    try:
        text = json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise GalleryError(f"{label} must be plain JSON data (numbers, text, lists, mappings): {error}") from None
    if len(text) > limit:
        raise LimitExceeded(f"{label} take {len(text)} characters as JSON, above the limit of {limit}")
    return json.loads(text)


def dump(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys), so that the same record or event is always the same file."""
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False).encode()


def human_size(count: int) -> str:
    """Bytes for people: '512 bytes', '12.3 MB', '10.0 GB'."""
    value, unit = float(count), "bytes"
    for larger in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
