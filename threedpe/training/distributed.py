"""One process per device, as ``torchrun`` starts them: the process's place in the run, its device, the process group;
and the one way a torchrun command (:mod:`~threedpe.training.datagen`, :mod:`~threedpe.training.train`) starts.

``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` (global, across nodes) and ``LOCAL_RANK`` (on this node); without it a
command runs as the only process of a world of one and no process group is made. The backend follows the device:
NCCL for CUDA, gloo for the CPU (``init(backend="gloo")`` for CPU-only collectives such as a barrier).
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from threedpe.cancel import stop_on_signals
from threedpe.commands import run_command
from threedpe.devices import resolve_device
from threedpe.weights import default_folder

DEVICE_HELP = "'auto' (each process its GPU, cuda:LOCAL_RANK, when there are GPUs, else the CPU), 'cpu' or 'cuda:N'"


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
        per process), else the CPU; any other request as :func:`~threedpe.devices.resolve_device` resolves it."""
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


def command_parser(module: str, description: str, weights_help: str) -> argparse.ArgumentParser:
    """The parser of the torchrun command ``-m module``, with the options every such command has: ``--weights``
    (default: $THREEDPE_WEIGHTS or checkpoints/) and ``--device`` (:meth:`World.device`)."""
    parser = argparse.ArgumentParser(prog=f"torchrun --nproc_per_node N -m {module}", description=description)
    parser.add_argument("--weights", default=str(default_folder()), help=weights_help)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def command_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], None], argv: list[str] | None,
                 *user_errors: type[Exception]) -> int:
    """Parse ``argv`` and run the command as every command runs (:func:`threedpe.commands.run_command`): exit status 0,
    or 2 with a one-line message for a user error (``user_errors`` included)."""
    args = parser.parse_args(argv)
    return run_command(lambda: run(args), *user_errors)


def run_as_script(module: str) -> None:
    """``python -m module`` / ``torchrun -m module``: exit with ``module.main()``, imported under its own name so that
    what it defines lives in ``module`` and not in ``__main__`` (data-loading processes unpickle it from there)."""
    sys.exit(importlib.import_module(module).main())
