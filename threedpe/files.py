"""Writing files so that readers (and crashes) never see half of one."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Any], Any], *, durable: bool = False) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary sibling (``.<name>.<pid>.<thread>.tmp``), then
    rename it over ``path``: readers see the old file or the whole new one. ``durable``: fsync the file before the
    rename and the folder after it, so that the new file also survives a power loss."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (new names, renames) durable (POSIX)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
