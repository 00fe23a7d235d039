"""One process per device, as ``torchrun`` starts them: the process's place in the run, its device, the process group.

``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` (global, across nodes) and ``LOCAL_RANK`` (on this node); without it a
command runs as the only process of a world of one and no process group is made. The backend follows the device:
NCCL for CUDA, gloo for the CPU (``init(backend="gloo")`` for CPU-only collectives such as a barrier).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from threedpe.cancel import stop_on_signals
from threedpe.pipeline import resolve_device


@dataclass(frozen=True)
class World:
    """``rank`` of ``world_size`` processes in all, ``local_rank`` on this node; ``launched``: started by torchrun
    (a process group is made, even for a world of one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in the environment, else a world of one."""
        if "RANK" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)

    def device(self, requested: str | torch.device = "auto") -> torch.device:
        """This process's device: ``"auto"`` or ``"cuda"`` -> ``cuda:<local_rank>`` when CUDA is available (one GPU
        per process), else the CPU; any other request as :func:`~threedpe.pipeline.resolve_device` resolves it."""
        device = resolve_device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def init(self, device: torch.device, backend: str | None = None,
             timeout: timedelta = timedelta(minutes=30)) -> None:
        """Join the process group (torchrun's ``env://`` rendezvous) when launched: NCCL on CUDA, else gloo."""
        if self.launched and not self.distributed:
            backend = backend or ("nccl" if device.type == "cuda" else "gloo")
            dist.init_process_group(backend, timeout=timeout, device_id=device if backend == "nccl" else None)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over processes of ``values`` (a tensor on this process's device; itself in a world of one)."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def close(self) -> None:
        if self.distributed:
            dist.destroy_process_group()

    @contextmanager
    def running(self, device: torch.device, backend: str | None = None,
                timeout: timedelta = timedelta(minutes=30)) -> Iterator[threading.Event]:
        """The process group for the block (left after it) and an event that Ctrl-C / SIGTERM set meanwhile, so that
        the work stops at its next safe point; the previous signal handlers come back after the block."""
        self.init(device, backend, timeout)
        try:
            with stop_on_signals(signal.SIGINT, signal.SIGTERM) as stop:
                yield stop
        finally:
            self.close()
