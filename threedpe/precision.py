"""Inference precision: ``"exact"`` or ``"fast"``, and whether this machine computes bfloat16 natively.

* ``"exact"`` (the default): float32 everywhere; equal to the official code within the golden tolerance.
* ``"fast"``: the encoder and the super-resolution convolutions in bfloat16 where the device computes bfloat16
  natively (a CPU with AVX512-BF16 or AMX-BF16, an aarch64 CPU with BF16, a CUDA GPU of compute capability 8.0 or
  later); the pixel-coordinate convolutions and the volume rendering stay float32. Elsewhere it falls back to float32
  (emulated bfloat16 would be slower than float32 and less exact). Not golden-equal: its measured bounds are in the
  README ("Performance").

Detection happens at run time, from the CPU's feature flags (``/proc/cpuinfo``; torch's own CPU probes where there is
no such file), so one install serves every machine. torch is imported by the functions that need it (the command
line's ``--help`` imports this module).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("exact", "fast")
# CPU feature flags (Linux /proc/cpuinfo names) that mean native bfloat16 arithmetic, with their usual names
NATIVE_BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "BF16"}  # "bf16": aarch64


class PrecisionError(ValueError):
    """A precision name that does not exist."""


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``PrecisionError`` saying what exists."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: use 'exact' (float32, golden-equal) or 'fast' "
                             "(bfloat16 where the hardware computes it natively)")
    return precision


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags as Linux lists them in ``/proc/cpuinfo``; empty where there is no such file."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text (x86 ``flags``, aarch64 ``Features``)."""
    found = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.MULTILINE)
    return frozenset(found.group(1).split()) if found else frozenset()


def native_bf16_features() -> list[str]:
    """The CPU features that compute bfloat16 natively, e.g. ``["AVX512-BF16", "AMX-BF16"]``; empty when there are
    none, or when this torch has no oneDNN (its bfloat16 convolutions would not use them)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return []
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo (Windows, macOS): torch's own x86 probes, where this torch has them
        probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
        flags = frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())
    return [name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags]


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (see the module docstring)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the keyword: emulation was never counted
            return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(native_bf16_features())


def native_bf16_label(device: str | torch.device) -> str | None:
    """What computes bfloat16 natively on ``device``, for messages (``"AVX512-BF16, AMX-BF16"``, ``"GPU"``); None
    where nothing does."""
    import torch

    if not native_bf16(device):
        return None
    return "GPU" if torch.device(device).type == "cuda" else ", ".join(native_bf16_features())


def reduced_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The reduced dtype ``precision`` runs in on ``device``: bfloat16 for ``"fast"`` where native, else None
    (float32)."""
    import torch

    return torch.bfloat16 if check_precision(precision) == "fast" and native_bf16(device) else None


def recommended_precision(device: str | torch.device) -> str:
    """The precision an interactive front end should start in on ``device``: ``"fast"`` on a CPU that computes
    bfloat16 natively (about 2x faster there; bounds in the README), else ``"exact"``."""
    import torch

    device = torch.device(device)
    return "fast" if device.type == "cpu" and native_bf16(device) else "exact"
