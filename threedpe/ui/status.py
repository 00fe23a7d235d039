"""The outcome of each event in its tab's status line: a user error becomes a page message (``show_errors``,
``refusal``), kept per session until the next action (``REFUSALS``, ``reporting``, ``listen``); a stop ends an event
with "Stopped"."""
from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
from collections import OrderedDict
from typing import Callable, get_type_hints

import gradio as gr
from gradio.events import Dependency

from threedpe.cancel import Cancelled
from threedpe.gallery import GalleryError
from threedpe.pipeline import USER_ERRORS
from threedpe.serving.messages import public_message
from threedpe.serving.sessions import RateLimitError
from threedpe.training.customize import CustomizeError
from threedpe.training.samples import DataError
from threedpe.video import VideoError

logger = logging.getLogger("threedpe.app")
STOPPED = "⏹️ Stopped."
UNEXPECTED = "Something went wrong on the server (it was logged); please try again."


def show_errors(fn: Callable) -> Callable:
    """``fn`` with user errors (no face, unreadable file or clip, bad prompt, missing weights, too many requests, a
    stop) raised as ``gr.Error``: a message in the page without a traceback or a server path. Applied inside
    ``@spaces.GPU`` so that ZeroGPU forwards the message."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Cancelled:
            raise gr.Error(STOPPED, print_exception=False) from None
        except (*USER_ERRORS, RateLimitError, GalleryError, CustomizeError, DataError, VideoError) as error:
            logger.info("user error in %s: %s", fn.__name__, error)
            raise gr.Error(public_message(str(error)), print_exception=False) from None
    return guarded


def refusal(message: str) -> gr.Error:
    """A page message for a refused action (no traceback)."""
    return gr.Error(message, print_exception=False)


class Refusals:
    """The message of each refused event, kept per browser session and event until the event's failure handler puts
    it into the status line (an event that fails cannot update its own outputs). At most ``limit`` are kept: API
    callers, whose requests run no failure handler, never collect theirs."""

    def __init__(self, limit: int = 10_000):
        self._messages: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def keep(self, request: gr.Request, event: int, message: str) -> None:
        with self._lock:
            self._messages[request.session_hash or "", event] = message
            while len(self._messages) > self._limit:
                self._messages.popitem(last=False)

    def take(self, request: gr.Request, event: int) -> str | None:
        with self._lock:
            return self._messages.pop((request.session_hash or "", event), None)


REFUSALS = Refusals()
EVENT_NUMBERS = itertools.count()  # the events wired by ``listen``, numbered for ``REFUSALS``


def reporting(fn: Callable, status: gr.components.Component | None, event: int) -> Callable:
    """``fn`` (an event function or generator, given a ``gr.Request``) as an event whose refusal (``gr.Error``) still
    fails it, so that API callers get the error and the events chained on success do not run, after keeping its
    message in ``REFUSALS`` under ``event`` for the status line; an unexpected failure is refused the same way (its
    traceback goes to the log). A stop ends the event with "Stopped" in ``status``, one of its outputs (the others
    keep their values); without one (None), a stop is kept as a refusal is. A generator stays a generator and a
    function a function: the page applies a generator's last output twice, and a 3D viewer given its file twice can
    stay blank."""
    def refused(error: Exception, args: tuple, kwargs: dict) -> gr.Error:
        if not isinstance(error, gr.Error):
            logger.error("unexpected failure in %s", fn.__name__, exc_info=error)
            error = refusal(UNEXPECTED)
        request = next(value for value in (*args, *kwargs.values()) if isinstance(value, gr.Request))
        REFUSALS.keep(request, event, error.message if error.message == STOPPED else f"⚠️ {error.message}")
        return error

    def stopped(error: Exception) -> bool:
        return status is not None and isinstance(error, gr.Error) and error.message == STOPPED

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def run_steps(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                if not stopped(error):
                    raise refused(error, args, kwargs) from None
                yield {status: STOPPED}
        return run_steps

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if not stopped(error):
                raise refused(error, args, kwargs) from None
            return {status: STOPPED}
    return run


def listen(listener: Callable, fn: Callable, inputs: list | None, outputs: list, status: gr.components.Component,
           **kwargs) -> Dependency:
    """``listener(fn, inputs, outputs, **kwargs)`` (``button.click``, ``event.then``, ``partial(gr.on, triggers)``,
    ...) with the outcome of each run kept in the tab's ``status`` line until the next action: a refusal's message
    (also a toast) or "Stopped" (see ``reporting``; ``fn`` takes a ``gr.Request``). Progress shows on ``status``
    unless ``kwargs`` say otherwise. A failure handler shows the refusal, which also clears the error badge that the
    page would leave where the progress showed."""
    if gr.Request not in get_type_hints(fn).values():
        raise ValueError(f"{fn.__name__} must take a gr.Request (its refusals are kept per session)")
    event = next(EVENT_NUMBERS)
    kwargs = {"show_progress_on": status, **kwargs}
    dependency = listener(reporting(fn, status if status in outputs else None, event), inputs, outputs, **kwargs)
    progress_on = kwargs["show_progress_on"] if isinstance(kwargs["show_progress_on"], list) else [
        kwargs["show_progress_on"]]

    def show_refusal(request: gr.Request) -> dict:
        return {status: REFUSALS.take(request, event) or gr.skip()}

    dependency.failure(show_refusal, None, [status, *(c for c in progress_on if c is not status)], queue=False,
                       show_progress="hidden", api_visibility="private")
    return dependency
