"""How every command ends: 0 when it works; a user error prints ``error: <message>`` and gives exit status 2; anything
else is a bug and keeps its traceback. Shared by ``python -m threedpe`` (:mod:`threedpe.cli`) and the torchrun
commands (:mod:`threedpe.training`, :mod:`threedpe.batch`), with the help of the flags they share; light to import (the error types load only when a command runs).
"""
from __future__ import annotations

import sys
from typing import Callable


WEIGHTS_HELP = "weight folder (default: $THREEDPE_WEIGHTS or checkpoints/)"
DEVICE_HELP = "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'"
PRECISION_HELP = ("exact: float32, equal to the official code (default); fast: bfloat16 where the hardware computes it "
                  "natively (AVX512-BF16/AMX CPUs, recent GPUs), float32 elsewhere; about 2x faster on such a CPU, "
                  "within the bounds stated in the README")
STRENGTH_HELP = ("edit strength: 0 = the unedited photo in 3D, 1 = the edit (default), up to 1.5 exaggerates it; other "
                 "values than 1 need Live3D's encoder_render_LT_90000.pt in the weight folder")


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
