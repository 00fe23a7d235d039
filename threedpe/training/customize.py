"""Customising the editor to a new edit by fine-tuning (the paper's "~5 min fine-tuning per style"), as a style.

:class:`StyleTrainer` fine-tunes a private copy of the editor (the shared editor is never modified) on
:class:`~threedpe.training.samples.TrainingPair` s with the official objective
(:func:`threedpe.training.objective.build_objective`: LPIPS when its files are in the weight folder, else the logged
substitute) and AdamW (lr 1e-4, as the official launcher), in one of two modes:

* ``"lora"`` (default): low-rank adapters (peft) on every ``nn.Linear`` and ``nn.Conv2d`` of the official
  trainable set (``Final_encoder``, ``Ref_encoder``), except the depthwise (grouped) convolutions, which peft's
  convolution adapters do not support; the style file holds only the adapters (a few MB at full size);
* ``"full"``: the official trainable set itself (191 tensors at full size).

Both modes are set up by :func:`trainable_set` and written as a style by :func:`make_style`, which training at
scale (:mod:`threedpe.training.train`) uses as well.

Training runs in chunks (:meth:`StyleTrainer.train` with step / second budgets counted from the start of the
fine-tune), reports every step to a callback (the loss curve), takes preview snapshots of a fixed held-out pair
at chosen training times or steps, stops between steps on a cancel signal, and saves / resumes its whole state
(:meth:`save_state`, :meth:`load_state`) so that a resumed run continues the same loss curve. :meth:`StyleTrainer.style` gives the :class:`~threedpe.styles.Style`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from threedpe import __version__, cameras
from threedpe.cancel import CancelSignal, check
from threedpe.files import atomic_write
from threedpe.models.editor import EditorModel, ReconstructionModel
from threedpe.models.encoder import preprocess_input, preprocess_reference
from threedpe.styles import Style, model_fingerprint
from threedpe.training.objective import (OFFICIAL_LAUNCHER, TRAINABLE_MODULES, EditingObjective, LossWeights,
                                         build_objective, prepare_for_training, random_novel_camera)
from threedpe.training.samples import DataError, StyleSample, TrainingPair, training_pairs, usable
from threedpe.video import to_uint8

if TYPE_CHECKING:
    from threedpe.pipeline import PortraitEditor

MODES = ("lora", "full")
DEFAULT_SNAPSHOT_SECONDS = (10.0, 60.0, 120.0, 300.0)  # the paper's adaptation figure
HELD_OUT_NOVEL_VIEW = (30.0, 0.0)  # degrees from frontal: the held-out loss's second camera
STATE_FORMAT = "threedpe-customize-state"
MIN_SAMPLES = 3  # two to train on (each references the other) and one held out


class CustomizeError(ValueError):
    """A fine-tune that cannot run as asked (settings, too little data, a state file of another fine-tune)."""


@dataclass(frozen=True)
class CustomizeConfig:
    """Fine-tuning settings. ``rank``/``alpha``: LoRA rank and scale (styled weight W + alpha/rank * B A);
    ``batch_size`` pairs per step (official: 2 per GPU); ``seed`` drives the adapters' initialisation, the pair
    order and the novel cameras."""

    mode: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    learning_rate: float = OFFICIAL_LAUNCHER.learning_rate
    weights: LossWeights = OFFICIAL_LAUNCHER.weights
    batch_size: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CustomizeError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rank < 1 or self.alpha <= 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise CustomizeError("rank, alpha, batch_size and learning_rate must be positive")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "weights": dataclasses.asdict(self.weights)}

    @classmethod
    def from_dict(cls, data: dict) -> CustomizeConfig:
        return cls(**{**data, "weights": LossWeights(**data["weights"])})


@dataclass(frozen=True)
class Snapshot:
    """The held-out pair's edit during training: ``image`` its frontal view (RGB), ``loss`` its held-out loss,
    after ``step`` steps and ``seconds`` of training; ``due`` what asked for it (``"10s"``, ``"step 50"``)."""

    step: int
    seconds: float
    loss: float
    image: Image.Image
    due: str


@dataclass(frozen=True)
class Progress:
    """What the callback gets after every step: the step number, training seconds so far, the step's training
    loss (one point of the loss curve) and the snapshot taken after this step, if any."""

    step: int
    seconds: float
    loss: float
    snapshot: Snapshot | None = None


@dataclass
class _Tensors:
    """Preprocessed inputs, references and Live3D target tri-planes, computed once per identity."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[str, torch.Tensor] = field(default_factory=dict)



def lora_targets(encoder: nn.Module) -> list[str]:
    """Names of the modules LoRA adapts: the trainable set's ``nn.Linear`` and ``nn.Conv2d``, except grouped or
    dilated convolutions (peft's convolution adapters copy neither the groups nor the dilation)."""
    names = []
    for part in TRAINABLE_MODULES:
        for name, module in encoder.get_submodule(part).named_modules():
            conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
            if conv or isinstance(module, nn.Linear):
                names.append(f"{part}.{name}")
    return names


def trainable_set(model: EditorModel, config: CustomizeConfig) -> list[tuple[str, nn.Parameter]]:
    """Make ``model`` (modified in place) train in ``config.mode`` and return the (name, parameter) list the optimiser
    trains, in a fixed order, named as in a style file. ``"full"``: :func:`prepare_for_training`; ``"lora"``: the
    model frozen, peft adapters (rank, alpha; initialised from ``config.seed``) injected on :func:`lora_targets`.
    The model is left in eval mode (see :func:`prepare_for_training`)."""
    if config.mode == "full":
        return prepare_for_training(model)
    from peft import LoraConfig, inject_adapter_in_model  # peft takes seconds to import

    model.requires_grad_(False).eval()
    targets = lora_targets(model.encoder)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        inject_adapter_in_model(lora, model.encoder)
    parameters = []
    for name in targets:
        layer = model.encoder.get_submodule(name)
        parameters += [(f"{name}.lora_A.weight", layer.lora_A["default"].weight),
                       (f"{name}.lora_B.weight", layer.lora_B["default"].weight)]
    model.eval()
    return parameters


def make_style(tensors: dict[str, torch.Tensor], config: CustomizeConfig, base_fingerprint: str, perceptual: str,
               **record: Any) -> Style:
    """The :class:`Style` of trained ``tensors`` (named as :func:`trainable_set` names them), with the settings of
    ``config``, the base editor's fingerprint, the perceptual term used and what else the trainer ``record`` s
    (source, steps, losses, ...) in its metadata."""
    lora = config.mode == "lora"
    metadata = {"mode": config.mode, "rank": config.rank if lora else None, "alpha": config.alpha if lora else None,
                "base_fingerprint": base_fingerprint, **record, "learning_rate": config.learning_rate,
                "batch_size": config.batch_size, "loss_weights": dataclasses.asdict(config.weights),
                "perceptual": perceptual, "threedpe_version": __version__}
    return Style(tensors, metadata)


def cpu_tensors(parameters: Sequence[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Name -> CPU copy of each trained parameter (what a style or a training checkpoint stores)."""
    return {name: parameter.detach().to("cpu", copy=True) for name, parameter in parameters}


def cpu_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with its tensors on the CPU (``load_state_dict`` moves them to the parameters')."""
    state = optimizer.state_dict()
    state["state"] = {key: {name: value.cpu() if torch.is_tensor(value) else value for name, value in entry.items()}
                      for key, entry in state["state"].items()}
    return state


def read_state(path: str | os.PathLike, error: type[Exception], what: str) -> dict:
    """A state file written with ``torch.save`` (tensors only); a truncated or foreign file raises ``error``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as failure:  # torch raises several kinds
        raise error(f"{path} is not a readable {what} ({type(failure).__name__})") from None


def changed(checks: Sequence[tuple[str, Any, Any]]) -> str | None:
    """The first ``what`` of (what, this run's value, the state's value) that differs, else None."""
    return next((what for what, mine, theirs in checks if mine != theirs), None)


def restore_trained(parameters: Sequence[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer,
                    state: dict) -> None:
    """Put back the trained values (``state["trained"]``) and the optimiser state (``state["optimizer"]``)."""
    with torch.no_grad():
        for name, parameter in parameters:
            parameter.copy_(state["trained"][name])
    optimizer.load_state_dict(state["optimizer"])


def data_fingerprint(pairs: Sequence[TrainingPair], held_out: TrainingPair) -> str:
    """sha256 of the training pairs and the held-out pair (what a resumed fine-tune must be given again)."""
    return hashlib.sha256("|".join(p.fingerprint() for p in (*pairs, held_out)).encode()).hexdigest()


def split_held_out(samples: Sequence[StyleSample]) -> tuple[list[TrainingPair], TrainingPair]:
    """The last usable sample becomes the held-out pair (its reference: the first other identity's edit); the rest
    give the training pairs (every other identity as a reference). ``CustomizeError`` below :data:`MIN_SAMPLES`."""
    kept = usable(samples)
    if len(kept) < MIN_SAMPLES:
        raise CustomizeError(f"fine-tuning needs at least {MIN_SAMPLES} usable samples (two to train on, one held "
                             f"out for previews); got {len(kept)} of {len(samples)}")
    held, train = kept[-1], kept[:-1]
    held_out = TrainingPair(held.before, train[0].after, held.after, held.camera, held.name, train[0].name)
    try:
        return training_pairs(train), held_out
    except DataError as error:
        raise CustomizeError(str(error)) from None


class StyleTrainer:
    """Fine-tunes a copy of ``base`` on ``pairs``; ``held_out`` is never trained on (previews, held-out loss).

    ``base``: the unstyled editor (copied, never modified; from another thread hold ``PortraitEditor.style_lock``
    or use :meth:`for_editor`). ``reconstruction``: Live3D, which lifts the edited targets to tri-planes.
    ``objective``: the official objective (default: :func:`build_objective` with ``weights_folder``).
    ``source``: what produced the data, recorded in the style (e.g. ``SyntheticSamples.describe()``).
    """

    def __init__(self, base: EditorModel, reconstruction: ReconstructionModel, pairs: Sequence[TrainingPair],
                 held_out: TrainingPair, config: CustomizeConfig = CustomizeConfig(), *,
                 objective: EditingObjective | None = None, weights_folder: str | os.PathLike | None = None,
                 source: dict | None = None, base_fingerprint: str | None = None) -> None:
        if not pairs:
            raise CustomizeError("no training pairs")
        if objective is None and weights_folder is None:
            raise CustomizeError("give the objective, or the weight folder to build it from")
        self.config = config
        self.pairs = list(pairs)
        self.held_out = held_out
        self.base_fingerprint = base_fingerprint or model_fingerprint(base)
        self.data_fingerprint = data_fingerprint(self.pairs, held_out)
        self.source = {"pairs_sha256": self.data_fingerprint, **(source or {})}
        device = base.renderer.const.device
        self.model = copy.deepcopy(base).float()
        self.objective = (objective or build_objective(config.weights, weights_folder, self.model)).to(device)
        self.reconstruction = reconstruction.requires_grad_(False).eval().to(device)
        self.parameters = trainable_set(self.model, config)
        self.optimizer = torch.optim.AdamW([p for _, p in self.parameters], lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.seconds = 0.0
        self.curve: list[tuple[int, float, float]] = []  # (step, seconds, training loss) per step
        self.held_out_curve: list[tuple[int, float, float]] = []  # (step, seconds, held-out loss) per evaluation
        self.snapshots: list[Snapshot] = []  # taken by this object (a resumed trainer starts without images)
        self._taken: set[str] = set()  # the ``due`` marks of every snapshot taken, resumed ones included
        self._tensors = _Tensors()
        self._novel_camera = cameras.camera(*cameras.from_degrees(*HELD_OUT_NOVEL_VIEW))

    @classmethod
    def for_editor(cls, editor: PortraitEditor, samples: Sequence[StyleSample], weights_folder: str | os.PathLike,
                   config: CustomizeConfig = CustomizeConfig(), source: dict | None = None,
                   reconstruction: ReconstructionModel | None = None) -> StyleTrainer:
        """A trainer for the shared ``editor``'s weights on ``samples`` (:func:`split_held_out`); Live3D (unless
        ``reconstruction`` is given, e.g. kept between calls) and the perceptual network come from
        ``weights_folder``. The editor is copied under its ``style_lock``."""
        pairs, held_out = split_held_out(samples)
        reconstruction = reconstruction or ReconstructionModel.from_pretrained(weights_folder)
        fingerprint = editor.fingerprint
        with editor.style_lock:
            return cls(editor.model, reconstruction, pairs, held_out, config, weights_folder=weights_folder,
                       source=source, base_fingerprint=fingerprint)

    # --- set-up ---------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.renderer.const.device

    # --- data -------------------------------------------------------------------------------------------------------

    def _prepare(self, pairs: Sequence[TrainingPair]) -> None:
        """Preprocess the inputs and references of ``pairs`` and lift their targets with Live3D, once per identity."""
        size = self.model.config.encoder.image_size
        tensors, device = self._tensors, self.device
        for pair in pairs:
            if pair.name not in tensors.inputs:
                tensors.inputs[pair.name] = preprocess_input(pair.input, size).to(device)
                with torch.no_grad():
                    target = preprocess_input(pair.target, size).to(device)
                    tensors.targets[pair.name] = self.reconstruction.encode(target)
            if pair.reference_name not in tensors.references:
                tensors.references[pair.reference_name] = preprocess_reference(pair.reference).to(device)

    def _batch(self, pairs: Sequence[TrainingPair]) -> tuple[torch.Tensor, ...]:
        """Inputs (B, 3, S, S), references (B, 3, 224, 224), target tri-planes and cameras (B, 25)."""
        self._prepare(pairs)
        tensors = self._tensors
        return (torch.cat([tensors.inputs[p.name] for p in pairs]),
                torch.cat([tensors.references[p.reference_name] for p in pairs]),
                torch.cat([tensors.targets[p.name] for p in pairs]),
                torch.stack([p.camera for p in pairs]).to(self.device))

    # --- training ---------------------------------------------------------------------------------------------------

    def _step(self) -> float:
        chosen = torch.randint(len(self.pairs), (self.config.batch_size,), generator=self.generator).tolist()
        x, ref, target_planes, cams = self._batch([self.pairs[i] for i in chosen])
        novel = random_novel_camera(len(chosen), self.generator)[0].to(self.device)
        losses = self.objective(self.model, self.reconstruction, x, ref, target_planes, cams, novel_camera=novel)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        self.optimizer.step()
        return losses.total.item()

    def train(self, max_steps: int | None = None, max_seconds: float | None = None, *,
              snapshot_seconds: Sequence[float] = DEFAULT_SNAPSHOT_SECONDS, snapshot_steps: Sequence[int] = (),
              callback: Callable[[Progress], Any] | None = None, cancel: CancelSignal | None = None) -> list[Progress]:
        """Train until ``self.step`` reaches ``max_steps`` or ``self.seconds`` reaches ``max_seconds`` (totals since
        the fine-tune began, resumed steps included; at least one budget). A snapshot is taken after the first step
        that reaches each of ``snapshot_seconds`` / ``snapshot_steps`` not taken yet. ``cancel`` is checked before
        every step and raises ``Cancelled``; the steps done so far are kept. Returns this call's progress."""
        if max_steps is None and max_seconds is None:
            raise CustomizeError("give a step or a time budget")
        self._prepare([*self.pairs, self.held_out])  # data preparation (Live3D targets) is not training time
        if not self.held_out_curve:
            self.evaluate()  # the held-out loss before training: the curve's start
        done = []
        while not ((max_steps is not None and self.step >= max_steps)
                   or (max_seconds is not None and self.seconds >= max_seconds)):
            check(cancel, f"after {self.step} fine-tuning steps")
            start = time.perf_counter()
            loss = self._step()
            self.seconds += time.perf_counter() - start
            self.step += 1
            self.curve.append((self.step, self.seconds, loss))
            due = [f"{t:g}s" for t in snapshot_seconds if self.seconds >= t and f"{t:g}s" not in self._taken]
            due += [f"step {n}" for n in snapshot_steps if self.step >= n and f"step {n}" not in self._taken]
            snapshot = self.snapshot(", ".join(due)) if due else None
            self._taken.update(due)
            done.append(Progress(self.step, self.seconds, loss, snapshot))
            if callback is not None:
                callback(done[-1])
        return done

    def evaluate(self) -> tuple[float, torch.Tensor]:
        """The held-out loss (input camera + a fixed novel view at yaw 30 degrees) and the edited tri-planes;
        recorded in ``held_out_curve``. Deterministic, and it leaves the training randomness untouched."""
        x, ref, target_planes, cams = self._batch([self.held_out])
        with torch.no_grad():
            losses = self.objective(self.model, self.reconstruction, x, ref, target_planes, cams,
                                    novel_camera=self._novel_camera.to(self.device))
        loss = losses.total.item()
        if not self.held_out_curve or self.held_out_curve[-1][0] != self.step:
            self.held_out_curve.append((self.step, self.seconds, loss))
        return loss, losses.planes

    def snapshot(self, due: str = "now") -> Snapshot:
        """Evaluate the held-out pair and render its edit from the front (kept in ``snapshots``)."""
        loss, planes = self.evaluate()
        with torch.no_grad():
            image = self.model.render(planes, cameras.frontal_camera().to(self.device))["image"]
        snapshot = Snapshot(self.step, self.seconds, loss, Image.fromarray(to_uint8(image[0])), due)
        self.snapshots.append(snapshot)
        return snapshot

    # --- styles and state ---------------------------------------------------------------------------------------------

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The adapted tensors (CPU copies), named as in a style file."""
        return cpu_tensors(self.parameters)

    def style(self) -> Style:
        """The style of the current state (held-out loss evaluated now if it is not yet)."""
        if not self.held_out_curve or self.held_out_curve[-1][0] != self.step:
            self.evaluate()
        return make_style(
            self.trained_tensors(), self.config, self.base_fingerprint, self.objective.description["perceptual"],
            source=self.source, steps=self.step, seconds=round(self.seconds, 3),
            losses={"held_out_start": self.held_out_curve[0][2], "held_out_end": self.held_out_curve[-1][2],
                    "train_first": self.curve[0][2] if self.curve else None,
                    "train_last": self.curve[-1][2] if self.curve else None})

    def state_dict(self) -> dict:
        """Everything a resumed fine-tune needs (tensors on the CPU; loadable with ``weights_only=True``)."""
        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "base_fingerprint": self.base_fingerprint,
                "data_fingerprint": self.data_fingerprint, "step": self.step, "seconds": self.seconds,
                "curve": self.curve, "held_out_curve": self.held_out_curve,
                "snapshots_taken": sorted(self._taken),
                "trained": self.trained_tensors(), "optimizer": cpu_optimizer_state(self.optimizer),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` of the same fine-tune (same base, data and settings). Snapshot images
        are not part of the state; the snapshots already taken are not taken again."""
        if state.get("format") != STATE_FORMAT:
            raise CustomizeError("not a fine-tuning state file")
        what = changed((("base editor", self.base_fingerprint, state["base_fingerprint"]),
                        ("training data", self.data_fingerprint, state["data_fingerprint"]),
                        ("settings", self.config.to_dict(), state["config"])))
        if what:
            raise CustomizeError(f"the state file was saved by a fine-tune with other {what}; resume it with the "
                                 "same weights, data and settings")
        restore_trained(self.parameters, self.optimizer, state)
        self.generator.set_state(state["generator"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.curve = [tuple(point) for point in state["curve"]]
        self.held_out_curve = [tuple(point) for point in state["held_out_curve"]]
        self._taken = set(state["snapshots_taken"])

    def save_state(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to ``path`` (atomically)."""
        path = Path(path)
        state = self.state_dict()
        atomic_write(path, lambda file: torch.save(state, file))
        return path

    def load_state(self, path: str | os.PathLike) -> None:
        """:meth:`load_state_dict` from a file written by :meth:`save_state`."""
        path = Path(path)
        if not path.is_file():
            raise CustomizeError(f"the state file {path} does not exist")
        state = read_state(path, CustomizeError, "fine-tuning state")
        self.load_state_dict(state)

