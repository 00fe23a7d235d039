"""Training the editor on a 3DPE dataset, one process per device:
``torchrun --nproc_per_node N -m threedpe.training.train``.

The official recipe (``Coach.train_ref_encoder``) with this package's parts: the objective
(:class:`~threedpe.training.objective.EditingObjective`: frozen Live3D lifts each edited target to pseudo-ground-truth
tri-planes; the adversarial term is off), the trainable set or LoRA adapters (:func:`~threedpe.training.customize.trainable_set`,
as customisation), AdamW at 1e-4 (the official launcher), a :class:`~threedpe.training.data.EditingDataset`.

* Processes: :class:`~threedpe.training.distributed.World` (gloo on the CPU, NCCL on GPUs); the editor's objective runs in
  the forward of :class:`EditingStep`, which ``DistributedDataParallel`` wraps, so its gradient all-reduce is the
  one that syncs the ranks. A ``DistributedSampler`` shards and shuffles each epoch; ``set_epoch`` goes to the
  sampler and to the dataset (its reference / style draws). ``batch_size`` items per process and micro-step,
  ``accumulate`` micro-steps per optimiser step (no gradient sync but on the last).
* The novel camera of step ``s`` is drawn from a generator seeded by (seed, s): every rank and every micro-step
  of a step uses the same one, so one step of N processes equals one process given the same global batch.
* bf16 autocast on CUDA (``precision="auto"``): the encoders and the perceptual network; the tri-plane renderer
  computes in float32 (see :meth:`~threedpe.models.editor.EditorModel.render`). Float32 on the CPU.
* Rank 0 writes ``metrics.jsonl`` (and TensorBoard events when ``tensorboard`` is installed), checkpoints
  ``checkpoints/step<NNNNNNNN>.pt`` every ``save_every`` steps and at the end (atomically; the last ``keep``), the
  validation previews, and the product: ``3dpe.safetensors`` + ``3dpe.json`` and ``3dpe.pt`` (mode ``full``, a
  weight folder ``PortraitEditor.from_pretrained`` loads) or ``style.safetensors`` (mode ``lora``).
* Validation: the first ``val_items`` items of the validation dataset, or of the training data, which then leaves
  them out (the official code evaluates one batch of 4 from a separate folder): loss at the input camera and at
  a fixed novel view (yaw 30 degrees), on rank 0.
* Resume: a checkpoint holds the trained tensors, the optimiser, the step, the epoch, the loss history and the
  RNG states; every draw is a function of (seed, epoch, step, index), so a resumed run continues the same loss
  curve. A cancel signal (the command: Ctrl-C, SIGTERM) stops every process after the same step, which is saved.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from threedpe import __version__, cameras
from threedpe.cancel import CancelSignal, is_cancelled
from threedpe.commands import UsageError
from threedpe.files import atomic_write
from threedpe.models.editor import EditorModel, ReconstructionModel, resolve_reconstruction_weights
from threedpe.models.encoder import IMAGENET_MEAN, IMAGENET_STD
from threedpe.styles import model_fingerprint
from threedpe.training.customize import (HELD_OUT_NOVEL_VIEW, CustomizeConfig, CustomizeError, changed,
                                         cpu_optimizer_state, cpu_tensors, make_style, read_state, restore_trained,
                                         trainable_set)
from threedpe.training.data import DatasetError, EditingDataset
from threedpe.training.distributed import World, command_main, command_parser, run_as_script
from threedpe.training.objective import EditingObjective, StepLosses, build_objective, random_novel_camera
from threedpe.video import to_uint8
from threedpe.weights import EDITOR_WEIGHTS, resolve_first
from threedpe.weights.checkpoints import ThreeDPECheckpoint, load_3dpe, save_checkpoint, save_official

STATE_FORMAT = "threedpe-train-state"
STATE_VERSION = 1
INITS = ("3dpe", "live3d")
LOSS_WINDOW = 5  # steps averaged into the reported start and end losses
PREVIEW_ROWS = 4
PREVIEW_TILE = 128
PROCESS_TIMEOUT = timedelta(minutes=30)  # a collective waits this long (rank 0 validating, checkpointing)


class TrainError(ValueError):
    """A training run that cannot start or resume as asked (settings, data too small, another run's checkpoint)."""


@dataclass(frozen=True)
class TrainSettings:
    """What defines a run's loss curve (a resumed run must keep it): ``tuning`` the mode, adapters, learning rate,
    loss weights, ``batch_size`` per process and seed (shared with customisation); ``accumulate`` micro-steps per
    optimiser step; ``init`` the editor's start (``"3dpe"``: the weight folder's editor; ``"live3d"``: Live3D with a
    fresh ``Ref_encoder``, the official from-scratch recipe); ``val_items`` held-out items; ``val_data`` whether
    they come from a separate dataset (else from the start of the training data, which then skips them)."""

    tuning: CustomizeConfig = CustomizeConfig(mode="full")
    accumulate: int = 1
    init: str = "3dpe"
    val_items: int = 4
    val_data: bool = False

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise TrainError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.accumulate < 1 or self.val_items < 0:
            raise TrainError("accumulate must be positive and val_items at least 0")
        if self.init == "live3d" and self.tuning.mode == "lora":
            raise TrainError("LoRA adapters need a released editor to apply to: train --init live3d in mode full")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tuning": self.tuning.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        return cls(**{**data, "tuning": CustomizeConfig.from_dict(data["tuning"])})


def load_editor(weights_folder: str | Path, init: str, seed: int, live3d: ThreeDPECheckpoint) -> EditorModel:
    """The editor training starts from: ``3dpe.safetensors`` / ``3dpe.pt`` of ``weights_folder`` (``init="3dpe"``),
    or :meth:`EditorModel.from_live3d` of the ``live3d`` checkpoint with ``Ref_encoder`` initialised from ``seed``
    (``"live3d"``)."""
    if init == "3dpe":
        return EditorModel.from_checkpoint(load_3dpe(resolve_first(EDITOR_WEIGHTS, local_dir=weights_folder)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EditorModel.from_live3d(live3d)


def novel_camera(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """The novel camera (batch_size, 25) of optimiser step ``step``: the same on every rank and micro-step."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]
    return random_novel_camera(batch_size, torch.Generator().manual_seed(int(state)))[0]


def data_fingerprint(dataset: EditingDataset) -> str:
    """sha256 of a dataset's inputs: paths, styles and cameras (the images themselves are not read)."""
    digest = hashlib.sha256()
    for sample in dataset.samples:
        digest.update(f"{sample.path}|{','.join(sample.styles)}|".encode() + sample.camera.tobytes())
    return digest.hexdigest()


class EditingStep(nn.Module):
    """The module ``DistributedDataParallel`` wraps: its forward is the objective of one micro-batch, so the
    backward of its loss carries DDP's gradient all-reduce. Live3D and the objective's networks are frozen."""

    def __init__(self, editor: EditorModel, reconstruction: ReconstructionModel, objective: EditingObjective):
        super().__init__()
        self.editor = editor
        self.reconstruction = reconstruction.requires_grad_(False).eval()
        self.objective = objective.requires_grad_(False).eval()

    def losses(self, x: torch.Tensor, ref: torch.Tensor, target: torch.Tensor, camera: torch.Tensor,
               novel_camera: torch.Tensor) -> StepLosses:
        """x, target (B, 3, S, S) in [-1, 1]: the input and its 2D edit; ref (B, 3, 224, 224) the reference (MAE
        input); camera, novel_camera (B, 25). Live3D lifts ``target`` to the pseudo-ground-truth tri-planes."""
        with torch.no_grad():
            target_planes = self.reconstruction.encode(target)
        return self.objective(self.editor, self.reconstruction, x, ref, target_planes, camera,
                              novel_camera=novel_camera)

    def forward(self, x: torch.Tensor, ref: torch.Tensor, target: torch.Tensor, camera: torch.Tensor,
                novel_camera: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total (scalar) and the unweighted terms of :meth:`losses`."""
        losses = self.losses(x, ref, target, camera, novel_camera)
        return losses.total, losses.terms


class Trainer:
    """One process of a training run (see the module docstring). ``data``: the training dataset (its first
    ``settings.val_items`` items are held out unless ``val`` is given); ``val``: the validation dataset or None.
    Both get the editor's input size as their ``image_size``."""

    def __init__(self, settings: TrainSettings, weights_folder: str | Path, data: EditingDataset, out: str | Path,
                 world: World = World(), device: torch.device = torch.device("cpu"), *,
                 val: EditingDataset | None = None, precision: str = "auto", workers: int = 0) -> None:
        if settings.val_data != (val is not None):
            raise ValueError("settings.val_data says whether a validation dataset is given")
        tuning = settings.tuning
        self.settings, self.world, self.device, self.workers = settings, world, device, workers
        self.out = Path(out)
        self.amp = (precision == "bf16") or (precision == "auto" and device.type == "cuda")
        held = 0 if val is not None else settings.val_items
        self.data = data
        self.train_items = Subset(data, range(held, len(data)))
        if len(self.train_items) < world.world_size * tuning.batch_size:
            raise TrainError(f"{len(self.train_items)} training items cannot fill a batch of {tuning.batch_size} on "
                             f"each of {world.world_size} processes (hold out fewer with --val-items)")
        validation = val if val is not None else copy.copy(data)  # a copy keeps the draws of epoch 0
        self.val_items = Subset(validation, range(min(settings.val_items, len(validation))))
        self.data_fingerprint = data_fingerprint(data)

        live3d = load_3dpe(resolve_reconstruction_weights(weights_folder))  # the targets, and maybe the start
        editor = load_editor(weights_folder, settings.init, tuning.seed, live3d)
        data.image_size = validation.image_size = editor.config.encoder.image_size
        self.base_fingerprint = model_fingerprint(editor)
        objective = build_objective(tuning.weights, weights_folder, editor)  # before training: it may copy the editor
        self.parameters = trainable_set(editor, tuning)
        reconstruction = ReconstructionModel.from_checkpoint(live3d)
        self.module = EditingStep(editor, reconstruction, objective).to(device)
        self.model = (DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None)
                      if world.distributed else self.module)
        self.optimizer = torch.optim.AdamW([p for _, p in self.parameters], lr=tuning.learning_rate)
        self.sampler = DistributedSampler(self.train_items, num_replicas=world.world_size, rank=world.rank,
                                          shuffle=True, seed=tuning.seed, drop_last=True)
        self.step, self.seconds = 0, 0.0
        self.losses: list[float] = []  # the training loss of every step (mean over processes)

    # --- data ---------------------------------------------------------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler) // self.settings.tuning.batch_size

    @property
    def epoch(self) -> float:
        """Epochs of training data seen (2.5: half-way through the third)."""
        return self.step * self.settings.accumulate / self.batches_per_epoch

    def _micro_batches(self) -> Iterator[dict]:
        """This process's micro-batches from where the run stands, epoch after epoch (the sampler's order of each
        epoch, skipping the micro-batches already trained on)."""
        size = self.settings.tuning.batch_size
        epoch, offset = divmod(self.step * self.settings.accumulate, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.data.set_epoch(epoch)
            indices = list(self.sampler)[offset * size:]
            yield from DataLoader(self.train_items, batch_size=size, sampler=indices, drop_last=True,
                                  num_workers=self.workers, pin_memory=self.device.type == "cuda")
            epoch, offset = epoch + 1, 0

    def _inputs(self, batch: dict, novel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = ("input", "reference", "target", "camera")
        return (*(batch[name].to(self.device, non_blocking=True) for name in names), novel.to(self.device))

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    # --- training -----------------------------------------------------------------------------------------------------

    def _train_step(self, batches: Iterator[dict], stop: bool) -> tuple[dict[str, float], bool]:
        """One optimiser step; the loss terms averaged over micro-steps and processes, and whether any process
        asked to stop (agreed by all, so that every rank stops after the same step)."""
        accumulate, sums = self.settings.accumulate, {}
        novel = novel_camera(self.settings.tuning.seed, self.step, self.settings.tuning.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(accumulate):
            last = micro == accumulate - 1
            with nullcontext() if last or not self.world.distributed else self.model.no_sync():
                with self._autocast():
                    total, terms = self.model(*self._inputs(next(batches), novel))
                (total / accumulate).backward()
            for name, value in {"loss": total, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / accumulate
        self.optimizer.step()
        names = ["loss", *sorted(terms)]
        flag = torch.tensor(float(stop), device=self.device)
        values = self.world.all_reduce_mean(torch.stack([*(sums[name] for name in names), flag])).tolist()
        return dict(zip(names, values[:-1])), values[-1] > 0

    def train(self, steps: int, *, save_every: int = 2000, val_every: int = 2000, keep: int = 2,
              print_every: int = 50, cancel: CancelSignal | None = None) -> None:
        """Train until ``self.step`` reaches ``steps`` (resumed steps included) or ``cancel`` is set (then after the
        step running); rank 0 logs every step, validates every ``val_every`` steps (and before the first), keeps
        the last ``keep`` checkpoints, written every ``save_every`` steps and at the end."""
        log = _MetricsLog(self.out, self.step) if self.world.is_main else None
        val_every = val_every if len(self.val_items) else 0
        if log is not None and val_every and self.step == 0:
            log.write({"kind": "val", **self.validate()})
        batches = self._micro_batches()
        start, saved = time.perf_counter() - self.seconds, self.step
        global_batch = self.settings.tuning.batch_size * self.settings.accumulate * self.world.world_size
        while self.step < steps:
            metrics, stop = self._train_step(batches, is_cancelled(cancel))
            self.step += 1
            self.seconds = time.perf_counter() - start
            self.losses.append(metrics["loss"])
            if log is not None:
                log.write({"kind": "train", "step": self.step, "epoch": round(self.epoch, 4), **metrics,
                           "lr": self.optimizer.param_groups[0]["lr"], "samples": self.step * global_batch,
                           "seconds": round(self.seconds, 3)})
                if self.step % print_every == 0 or self.step in (1, steps) or stop:
                    print(f"step {self.step}/{steps}  epoch {self.epoch:.2f}  loss {metrics['loss']:.5f}  "
                          f"{self.seconds:.1f} s", flush=True)
                if val_every and self.step % val_every == 0:
                    log.write({"kind": "val", **self.validate()})
                if save_every and self.step % save_every == 0:
                    self.save(keep)
                    saved = self.step
            if stop:
                print(f"rank {self.world.rank}: stopped after step {self.step}", flush=True)
                break
        if log is not None:
            if saved != self.step:
                self.save(keep)
            log.close()

    # --- validation ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict:
        """The mean loss terms of the validation items (input camera + the fixed novel view) and a preview image
        ``previews/val_step<N>.png``: per item input | reference | 2D edit | Live3D's lift of it | edit | edit at
        the novel view. Runs on this process alone (rank 0), on the unwrapped module."""
        novel = cameras.camera(*cameras.from_degrees(*HELD_OUT_NOVEL_VIEW))
        sums: dict[str, float] = {}
        rows = []
        for index in range(len(self.val_items)):
            item = self.val_items[index]
            batch = {key: value.unsqueeze(0) for key, value in item.items() if torch.is_tensor(value)}
            with self._autocast():
                losses = self.module.losses(*self._inputs(batch, novel))
            for name, value in {"loss": losses.total, **losses.terms}.items():
                sums[name] = sums.get(name, 0.0) + value.item() / len(self.val_items)
            if index < PREVIEW_ROWS:
                rows.append(_preview_row(batch, losses))
        preview = self.out / "previews" / f"val_step{self.step:08d}.png"
        preview.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(preview)
        return {"step": self.step, **sums, "items": len(self.val_items),
                "preview": preview.relative_to(self.out).as_posix()}

    # --- checkpoints --------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs (tensors on the CPU; ``torch.load(weights_only=True)`` reads it)."""
        numpy_state = np.random.get_state()
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "threedpe_version": __version__,
                "settings": self.settings.to_dict(), "world_size": self.world.world_size,
                "base_fingerprint": self.base_fingerprint, "data_fingerprint": self.data_fingerprint,
                "step": self.step, "epoch": self.epoch, "seconds": self.seconds, "losses": list(self.losses),
                "trained": cpu_tensors(self.parameters), "optimizer": cpu_optimizer_state(self.optimizer),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                                  *numpy_state[2:]],
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def load_state_dict(self, state: dict) -> None:
        """Continue the run that wrote ``state`` (same settings, base weights, data and number of processes)."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise TrainError(f"not a version-{STATE_VERSION} training checkpoint")
        what = changed((("settings", self.settings.to_dict(), state["settings"]),
                        ("base weights", self.base_fingerprint, state["base_fingerprint"]),
                        ("data", self.data_fingerprint, state["data_fingerprint"]),
                        ("number of processes", self.world.world_size, state["world_size"])))
        if what:
            raise TrainError(f"the checkpoint was written by a run with other {what}; resume it with the same "
                             f"weights, data, settings and number of processes")
        restore_trained(self.parameters, self.optimizer, state)
        self.step, self.seconds, self.losses = int(state["step"]), float(state["seconds"]), list(state["losses"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(_tuples(rng["python"]))
        np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self, keep: int = 2) -> Path:
        """Write ``checkpoints/step<N>.pt`` atomically (rank 0) and delete all but the last ``keep``."""
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step{self.step:08d}.pt"
        state = self.state_dict()
        atomic_write(path, lambda file: torch.save(state, file))
        for old in sorted(folder.glob("step*.pt"))[:-keep]:
            old.unlink()
        return path

    def resume(self, path: str | Path) -> None:
        """:meth:`load_state_dict` from a checkpoint file."""
        self.load_state_dict(read_state(path, TrainError, "training checkpoint"))

    # --- the product --------------------------------------------------------------------------------------------------

    def loss_window(self) -> tuple[float, float]:
        """Mean training loss of the first and of the last :data:`LOSS_WINDOW` steps of the whole run."""
        window = max(1, min(LOSS_WINDOW, len(self.losses) // 2))
        return float(np.mean(self.losses[:window])), float(np.mean(self.losses[-window:]))

    def export(self, source: str) -> Path:
        """The product in ``out``: mode ``full``, ``3dpe.safetensors`` + ``3dpe.json`` and ``3dpe.pt`` (returns the
        first); mode ``lora``, the style file ``style.safetensors`` for the base editor."""
        tuning = self.settings.tuning
        if tuning.mode == "lora":
            start, end = self.loss_window()
            style = make_style(cpu_tensors(self.parameters), tuning, self.base_fingerprint,
                               self.module.objective.description["perceptual"], steps=self.step,
                               seconds=round(self.seconds, 3),
                               source={"kind": "dataset", "data": source, "data_sha256": self.data_fingerprint,
                                       "processes": self.world.world_size, "accumulate": self.settings.accumulate},
                               losses={"train_start": start, "train_end": end})
            return style.save(self.out / "style.safetensors")
        checkpoint = self.module.editor.checkpoint()
        weights = save_checkpoint(checkpoint, self.out / "3dpe",
                                  source=f"threedpe.training.train, {self.step} steps on {source}")
        save_official(checkpoint, self.out / "3dpe.pt", step=self.step)
        return weights


class _MetricsLog:
    """``metrics.jsonl`` (one JSON object per line: ``kind`` "train" or "val", ``step``, ``loss`` and the terms,
    ...) and TensorBoard scalars when ``tensorboard`` is installed. A new run starts the file afresh; a resumed one
    drops the lines of the steps after its checkpoint's."""

    def __init__(self, out: Path, step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if step and _line_step(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.board = None
        else:
            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None:
            for name, value in record.items():
                if isinstance(value, float) and name != "seconds":
                    self.board.add_scalar(f"{record['kind']}/{name}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a line cut short by a crash


def _tuples(value: Any) -> Any:
    """Lists back to tuples (Python's random state after a trip through a checkpoint)."""
    return tuple(_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def _preview_row(batch: dict, losses: StepLosses) -> np.ndarray:
    """One preview row (PREVIEW_TILE high): input, reference, target, Live3D render, edit, edit at the novel view."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reference = (batch["reference"][0].cpu().float() * std + mean) * 2 - 1
    images = [batch["input"][0], reference, batch["target"][0], losses.target_renders[0]["image"][0],
              losses.edit_renders[0]["image"][0], losses.edit_renders[-1]["image"][0]]
    tiles = [Image.fromarray(to_uint8(image)).resize((PREVIEW_TILE, PREVIEW_TILE), Image.Resampling.BICUBIC)
             for image in images]
    return np.concatenate([np.asarray(tile) for tile in tiles], axis=1)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``out/checkpoints``, or None."""
    found = sorted((Path(out) / "checkpoints").glob("step*.pt"))
    return found[-1] if found else None


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "threedpe.training.train",
        "Train the 3DPE editor on a dataset (threedpe.training.datagen's output or the official layout), one process "
        "per GPU (or CPU processes), as the paper did on 8 GPUs. The last line printed is `steps=<n> loss_start=<a> "
        "loss_end=<b> checkpoint=<path>` (mean training losses of the first and last 5 steps; the product: "
        "3dpe.safetensors, or style.safetensors in mode lora).",
        weights_help="weight folder: 3dpe.pt or 3dpe.safetensors (the start), Live3D (encoder_render_LT_90000.pt or "
                     ".safetensors, the frozen pseudo-ground truth), LPIPS files (else a substitute)")
    parser.add_argument("--data", required=True, help="dataset folder or zip")
    parser.add_argument("--out", required=True, help="output folder: product, checkpoints/, metrics.jsonl, previews/")
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps in all (resumed ones included)")
    parser.add_argument("--mode", choices=("full", "lora"), default="full",
                        help="full: the official trainable set (Final_encoder, Ref_encoder; default); lora: adapters "
                             "on it, written as a style for the base editor")
    parser.add_argument("--init", choices=INITS, default="3dpe",
                        help="3dpe: start from the weight folder's editor (default); live3d: from Live3D with a new "
                             "Ref_encoder (the official from-scratch recipe)")
    parser.add_argument("--batch-size", type=int, default=2, help="items per process and micro-step (official: 2)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-steps per optimiser step (default 1)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="AdamW learning rate (official: 1e-4)")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (mode lora; default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order, the draws and the cameras")
    parser.add_argument("--val-data", help="validation dataset (default: hold out the first --val-items of --data)")
    parser.add_argument("--val-items", type=int, default=4, help="validation items (default 4; 0: no validation)")
    parser.add_argument("--val-every", type=int, default=2000, help="validate every N steps (default 2000)")
    parser.add_argument("--save-every", type=int, default=2000, help="checkpoint every N steps (default 2000)")
    parser.add_argument("--keep", type=int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--print-every", type=int, default=50, help="print the loss every N steps (default 50)")
    parser.add_argument("--resume", help="a checkpoint to continue, or 'auto': the latest in --out/checkpoints if any")
    parser.add_argument("--workers", type=int, default=4, help="data-loading processes per process (default 4)")
    parser.add_argument("--mixed-precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="training's autocast (not the editor's exact/fast precision): auto: bf16 autocast on "
                             "CUDA, float32 on the CPU")
    parser.add_argument("--precision", dest="mixed_precision", choices=("auto", "bf16", "fp32"),
                        help=argparse.SUPPRESS)  # its name until 0.3: kept for a release
    return parser


def _train(args: argparse.Namespace) -> None:
    # Everything that can be checked without loading a model is checked first.
    if args.steps < 1 or args.batch_size < 1 or args.keep < 1 or args.workers < 0 or args.print_every < 1:
        raise UsageError("--steps, --batch-size, --keep and --print-every must be positive, --workers at least 0")
    if args.save_every < 0 or args.val_every < 0:
        raise UsageError("--save-every and --val-every must be at least 0 (0: never)")
    for label, path in (("weight folder", args.weights), ("dataset", args.data), ("validation dataset", args.val_data)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"the {label} {path} does not exist")
    resume = latest_checkpoint(args.out) if args.resume == "auto" else args.resume
    if resume is not None and not Path(resume).is_file():
        raise UsageError(f"the checkpoint {resume} does not exist")
    settings = TrainSettings(CustomizeConfig(mode=args.mode, rank=args.lora_rank, learning_rate=args.learning_rate,
                                             batch_size=args.batch_size, seed=args.seed),
                             accumulate=args.accumulate, init=args.init, val_items=args.val_items,
                             val_data=args.val_data is not None)
    world = World.from_env()
    device = world.device(args.device)
    # Ctrl-C / SIGTERM: every process stops after the same step, which is saved
    with world.running(device, timeout=PROCESS_TIMEOUT) as stop:
        data = EditingDataset(args.data, seed=args.seed)
        val = EditingDataset(args.val_data, seed=args.seed) if args.val_data else None
        trainer = Trainer(settings, args.weights, data, args.out, world, device, val=val,
                          precision=args.mixed_precision, workers=args.workers)
        if resume is not None:
            trainer.resume(resume)
            if world.is_main:
                print(f"resumed from {resume} at step {trainer.step} (epoch {trainer.epoch:.2f})", flush=True)
        if world.is_main:
            print(f"training {len(trainer.parameters)} tensors ({args.mode}) from {args.init} on "
                  f"{len(trainer.train_items)} items, {world.world_size} processes x {args.batch_size} x "
                  f"{args.accumulate} per step on {device}; perceptual term: "
                  f"{trainer.module.objective.description['perceptual']}", flush=True)
        trainer.train(args.steps, save_every=args.save_every, val_every=args.val_every, keep=args.keep,
                      print_every=args.print_every, cancel=stop)
        if world.is_main:
            product = trainer.export(Path(args.data).name)
            start, end = trainer.loss_window()
            print(f"steps={trainer.step} loss_start={start:.6f} loss_end={end:.6f} checkpoint={product}", flush=True)
        world.barrier()


def main(argv: list[str] | None = None) -> int:
    """``python -m threedpe.training.train`` (or under ``torchrun``): see :func:`build_parser`."""
    return command_main(build_parser(), _train, argv, TrainError, CustomizeError, DatasetError)


if __name__ == "__main__":
    run_as_script("threedpe.training.train")
