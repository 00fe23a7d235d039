"""Stopping long computations: a cancel signal that every loop (denoising steps, views, video frames, mesh chunks,
fine-tuning steps) checks between units of work, and the one exception it raises."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def stop_on_signals(*signums: int) -> Iterator[threading.Event]:
    """An event that the given signals (e.g. ``signal.SIGINT`` for Ctrl-C) set while the block runs, for the work to
    stop at its next safe point; the previous handlers come back after the block. Main thread only."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signums}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
