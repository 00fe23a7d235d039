"""The app's per-session bookkeeping, without any UI: one temporary folder per browser session, the session's stop
flag (a file, so that it reaches work in another thread or ZeroGPU's forked worker), and a rate limit per session."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Iterator

from threedpe.cancel import Cancelled

EDITS_PER_WINDOW, RATE_WINDOW_S = 30, 600.0  # per browser session
STOP_WAIT_S = 30.0  # how long a Stop waits for the stopped work to reach its next check (a frame, chunk or step)


class StopFlag:
    """A session's stop request as a file, so that it reaches the work in another thread or process (ZeroGPU runs
    GPU functions in a forked worker). Calling it says whether the stop was requested, or the session ended (its
    folder is gone); picklable."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> bool:
        return self.path.exists() or not self.path.parent.is_dir()

    def set(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def stopped_if_gone(stop: StopFlag | None) -> Iterator[None]:
    """Turn a failed write into :class:`~threedpe.cancel.Cancelled` when the session ended meanwhile (its folder,
    where the output was being written, was removed when the visitor left)."""
    try:
        yield
    except OSError:
        if stop is not None and stop():
            raise Cancelled("stopped: the session ended") from None
        raise


class SessionFiles:
    """One temporary folder per browser session under ``root`` (outputs and the stop flag), removed when the
    session ends; and the work each session has running in this process, so that a Stop can wait for it.

    How a Stop works: :meth:`stop` sets the session's flag, which every computation checks between its units of
    work, and waits until the session's running work (each run inside :meth:`running`) has ended; the flag stays set,
    so work of the session that was waiting in the queue, or chained after a stopped step, ends at once too. Only a
    new action clears it (:meth:`begin`, when it is clicked), after the stopped work has ended: a stop is neither
    lost on work of the session that starts later nor carried into an action begun after it.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "threedpe-sessions"
        self._running: dict[str, int] = defaultdict(int)
        self._changed = threading.Condition()

    def folder(self, session_hash: str | None) -> Path:
        """The session's folder (created on demand; API clients may never trigger the page's load event)."""
        name = session_hash or "anonymous"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"unexpected session id {name!r}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def stop_flag(self, session_hash: str | None) -> StopFlag:
        return StopFlag(self.folder(session_hash) / ".stop")

    @contextlib.contextmanager
    def running(self, session_hash: str | None) -> Iterator[StopFlag]:
        """Count the block as running work of the session (see :meth:`stop`); yields the session's stop flag."""
        key = session_hash or "anonymous"
        stop = self.stop_flag(session_hash)
        with self._changed:
            self._running[key] += 1
        try:
            yield stop
        finally:
            with self._changed:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                self._changed.notify_all()

    def wait_idle(self, session_hash: str | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no work of the session runs; whether none does."""
        key = session_hash or "anonymous"
        with self._changed:
            return self._changed.wait_for(lambda: key not in self._running, timeout)

    def stop(self, session_hash: str | None, timeout: float = STOP_WAIT_S) -> bool:
        """Ask the session's work to stop and wait up to ``timeout`` seconds until none runs; whether none does."""
        self.stop_flag(session_hash).set()
        return self.wait_idle(session_hash, timeout)

    def begin(self, session_hash: str | None, timeout: float = STOP_WAIT_S) -> None:
        """A new action of the session: after a stop, wait up to ``timeout`` seconds for the stopped work to end, then
        clear the stop flag."""
        stop = self.stop_flag(session_hash)
        if stop.path.exists():
            self.wait_idle(session_hash, timeout)
        stop.clear()

    def close(self, session_hash: str | None) -> None:
        """Delete the session's folder and everything in it."""
        if session_hash:
            shutil.rmtree(self.root / session_hash, ignore_errors=True)

    def prune(self, max_age_s: float) -> None:
        """Delete folders untouched for ``max_age_s`` seconds (sessions whose end was never signalled)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - max_age_s
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


class RateLimitError(ValueError):
    """A session asked for more work than the app allows in a window of time."""


class RateLimiter:
    """At most ``limit`` actions per ``window_s`` seconds for each key (a browser session)."""

    def __init__(self, limit: int = EDITS_PER_WINDOW, window_s: float = RATE_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def take(self, key: str, what: str = "edits") -> None:
        """Count one action for ``key``, or raise :class:`RateLimitError` saying when to try again."""
        now = time.monotonic()
        with self._lock:
            times = self._times[key]
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                wait = math.ceil(times[0] + self.window_s - now)
                raise RateLimitError(f"Too many {what} from this session ({self.limit} in {self.window_s / 60:g} "
                                     f"minutes); please try again in {wait // 60} min {wait % 60} s.")
            times.append(now)

