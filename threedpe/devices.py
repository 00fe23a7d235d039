"""Devices by name: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The device asked for does not exist on this machine."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; a device CUDA cannot serve is refused with a clear message."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {str(device)!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise DeviceError(f"device {str(device)!r} was asked for, but CUDA is not available here (torch "
                         f"{torch.__version__}, {build}); use 'cpu' or 'auto'")
    return resolved
