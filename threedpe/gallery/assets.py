"""The files of a record: checked, re-encoded and written into its staging folder; verified on restore; zipped.

Images (strip, reference, opt-in photo thumbnail) are decoded under a pixel limit and re-encoded as PNG, which drops
metadata such as EXIF; the video and the mesh are copied as they are once their signature (mp4 ``ftyp``, GLB
``glTF``) matches. Every file is size-limited and listed in ``meta.json`` with its size and sha256.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Union

from threedpe.files import atomic_write
from threedpe.gallery.records import (ASSET_FILES, META_FILE, GalleryError, GalleryLimits, LimitExceeded, Record,
                                      RecordNotFound, dump, human_size)
from threedpe.images import ImageError, ImageInput, load_image

BlobInput = Union[str, os.PathLike, bytes]
FileEntry = dict[str, Any]  # {"name": file name, "bytes": size, "sha256": hex digest}: one file of meta["files"]


class Assets:
    """Writes a publish's files into its staging folder under ``limits`` (file size, image pixels, thumbnail)."""

    def __init__(self, limits: GalleryLimits):
        self.limits = limits

    def stage_edit(self, staging: Path, *, strip: ImageInput, video: BlobInput | None, mesh: BlobInput | None,
                   reference: ImageInput | None, photo: ImageInput | None) -> dict[str, FileEntry]:
        """Every given file into ``staging`` (``photo`` as a small thumbnail); their ``meta["files"]`` entries."""
        files = {"strip": self.stage_image(strip, staging / ASSET_FILES["strip"], "the 3-view strip")}
        if video is not None:
            files["video"] = self.stage_blob(video, staging / ASSET_FILES["video"], "the orbit video", "an MP4 video",
                                             lambda data: data[4:8] == b"ftyp")
        if mesh is not None:
            files["mesh"] = self.stage_blob(mesh, staging / ASSET_FILES["mesh"], "the mesh", "a GLB mesh",
                                            lambda data: data[:4] == b"glTF")
        if reference is not None:
            files["reference"] = self.stage_image(reference, staging / ASSET_FILES["reference"], "the reference image")
        if photo is not None:
            files["photo"] = self.stage_image(photo, staging / ASSET_FILES["photo"], "the photo",
                                              thumbnail=self.limits.thumbnail_side)
        return files

    def stage_image(self, source: ImageInput, path: Path, label: str, thumbnail: int | None = None) -> FileEntry:
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

    def stage_blob(self, source: BlobInput, path: Path, label: str, kind: str,
                   signature: Callable[[bytes], bool]) -> FileEntry:
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

    def _stage_bytes(self, data: bytes, path: Path, label: str) -> FileEntry:
        self._check_size(len(data), label)
        return write_entry(path, data)

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
            raise LimitExceeded(f"{label} is {human_size(size)}, above the limit of "
                                f"{human_size(self.limits.max_file_bytes)} per file; nothing was published.")


def write_entry(path: Path, data: bytes) -> FileEntry:
    """``data`` written durably to ``path``; its manifest entry."""
    atomic_write(path, lambda file: file.write(data), durable=True)
    return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def stage_meta(staging: Path, meta_bytes: bytes, files: dict[str, FileEntry]) -> int:
    """Write ``meta.json`` (last) into ``staging``; the record's size in bytes, its files and metadata together."""
    atomic_write(staging / META_FILE, lambda file: file.write(meta_bytes), durable=True)
    return sum(entry["bytes"] for entry in files.values()) + len(meta_bytes)


def copy_verified(source: Path, files: dict[str, FileEntry], staging: Path) -> None:
    """Copy a mirrored record's files from ``source`` into ``staging``, each checked against its size and sha256."""
    for entry in files.values():
        data = (source / entry["name"]).read_bytes()
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise GalleryError(f"{source / entry['name']} does not match the checksum in {META_FILE}")
        write_entry(staging / entry["name"], data)


def write_zip(record: Record, path: Path) -> None:
    """``path``: the record's asset files and ``metadata.json`` (its public metadata), written atomically."""

    def write(file: Any) -> None:
        with zipfile.ZipFile(file, "w") as archive:
            for asset in record.files.values():  # PNG and MP4 are compressed already
                method = zipfile.ZIP_DEFLATED if asset.suffix == ".glb" else zipfile.ZIP_STORED
                archive.write(asset, asset.name, method)
            archive.writestr("metadata.json", dump(record.metadata), zipfile.ZIP_DEFLATED)

    try:
        atomic_write(path, write)
    except FileNotFoundError:
        raise RecordNotFound(f"The edit {record.id} was deleted while it was being zipped.") from None
