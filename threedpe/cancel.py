"""Stopping long computations: a cancel signal that every loop (denoising steps, views, video frames, mesh chunks,
fine-tuning steps) checks between units of work, and the one exception it raises."""
from __future__ import annotations

import threading
from typing import Callable

CancelSignal = threading.Event | Callable[[], bool]
"""Set (an Event) or returning True (a callable) when the caller wants the work to stop."""


class Cancelled(RuntimeError):
    """The caller asked to stop a running computation; nothing half-done was kept."""


def is_cancelled(cancel: CancelSignal | None) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def check(cancel: CancelSignal | None, where: str) -> None:
    """Raise :class:`Cancelled` (``"<where>: stopped"``) when ``cancel`` is set."""
    if is_cancelled(cancel):
        raise Cancelled(f"stopped {where}")
