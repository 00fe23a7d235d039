"""How every command ends: 0 when it works; a user error prints ``error: <message>`` and gives exit status 2; anything
else is a bug and keeps its traceback. Shared by ``python -m threedpe`` (:mod:`threedpe.cli`) and the torchrun
commands of :mod:`threedpe.training`; light to import (the error types load only when a command runs).
"""
from __future__ import annotations

import sys
from typing import Callable


class UsageError(ValueError):
    """Arguments that cannot work together or point at nothing."""


def run_command(run: Callable[[], int | None], *user_errors: type[Exception]) -> int:
    """Run a command: its own exit status (0 when it returns None); a user error
    (:data:`~threedpe.pipeline.USER_ERRORS`, ``UsageError``, file system refusals and ``user_errors``) prints
    ``error: <message>`` and gives 2; anything else keeps its traceback."""
    from threedpe.pipeline import USER_ERRORS

    try:
        status = run()
    except (*USER_ERRORS, *user_errors, UsageError, PermissionError, IsADirectoryError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status or 0
