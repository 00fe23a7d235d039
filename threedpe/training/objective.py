"""3DPE's training objective (official ``Coach.train_ref_encoder``, one step), for fine-tuning the editor.

The frozen Live3D network lifts the 2D-edited target image to pseudo-ground-truth tri-planes; the editor,
given the input portrait and a reference image, must reproduce them::

    total = tri * L1(planes) + l1 * [L1(image) + L1(image_raw)] + lpips * [P(image) + P(image_raw)]
          + depth * L1(image_depth) + feature * L1(feature_image) + id * ID(image)       # at the input camera
          + the same image terms at one random novel camera per batch

with every L1 a mean over all elements, edit output vs. Live3D output. The adversarial term (official:
``adv`` after step 10000, with a discriminator trained from scratch) is not implemented. Only
``Final_encoder`` and ``Ref_encoder`` of the editor train (:func:`prepare_for_training`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from threedpe.cameras import camera as make_camera
from threedpe.models.editor import EditorModel, ReconstructionModel
from threedpe.models.identity import IdentityLoss
from threedpe.models.perceptual import LPIPS, PromptEncoderDistance, load_perceptual
from threedpe.weights import IDENTITY_FILE

LOG = logging.getLogger(__name__)
TRAINABLE_MODULES = ("Final_encoder", "Ref_encoder")  # the official optimiser's list, in its order


@dataclass(frozen=True)
class LossWeights:
    """The λ of the objective; defaults = the official ``options/train_options.py``."""

    tri: float = 1.0
    l1: float = 1.0
    depth: float = 0.5
    feature: float = 0.0
    lpips: float = 0.8
    id: float = 0.0
    adv: float = 0.025  # recorded only: the adversarial term is not implemented

    @classmethod
    def from_official(cls, options: Mapping[str, float]) -> LossWeights:
        """From official option names (``tri_lambda``, ``l1_lambda``, ...); other options are ignored."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: float(options[f"{name}_lambda"]) for name in names if f"{name}_lambda" in options})


@dataclass(frozen=True)
class TrainingPreset:
    """Loss weights and AdamW learning rate (torch defaults otherwise: betas 0.9/0.999, weight decay 0.01)."""

    weights: LossWeights = field(default_factory=LossWeights)
    learning_rate: float = 5e-5


TRAIN_OPTIONS_DEFAULTS = TrainingPreset()  # options/train_options.py
OFFICIAL_LAUNCHER = TrainingPreset(LossWeights(lpips=2.0), learning_rate=1e-4)  # train_scripts.py, as 3DPE was trained


@dataclass(frozen=True)
class NovelViewRanges:
    """Half-widths of the official uniform novel-view draw (``gen_rand_pose`` as ``train_ref_encoder`` calls it)
    around pitch = yaw = pi/2, fov 18.837 degrees, principal point (0.5, 0.5)."""

    pitch_degrees: float = 26.0
    yaw_degrees: float = 49.0
    fov_degrees: float = 2.4
    principal_point: float = 0.1


def random_novel_camera(batch_size: int, generator: torch.Generator | None = None,
                        ranges: NovelViewRanges = NovelViewRanges()) -> tuple[torch.Tensor, torch.Tensor]:
    """One random camera shared by the whole batch, as officially: cameras (batch_size, 25) and the float32
    draw (5,) = (pitch, yaw, fov_degrees, cx, cy), drawn in that order from ``generator`` (CPU)."""

    def uniform(half_width: float, centre: float) -> torch.Tensor:
        return 2 * (torch.rand(1, generator=generator) - 0.5) * half_width + centre

    pitch = uniform(ranges.pitch_degrees / 180 * math.pi, math.pi / 2)
    yaw = uniform(ranges.yaw_degrees / 180 * math.pi, math.pi / 2)
    fov = uniform(ranges.fov_degrees, 18.837)
    cx = uniform(ranges.principal_point, 0.5)
    cy = uniform(ranges.principal_point, 0.5)
    cams = make_camera(yaw, pitch, fov, cx, cy).expand(batch_size, -1).contiguous()
    return cams, torch.cat([pitch, yaw, fov, cx, cy])


def trainable_parameters(editor: EditorModel) -> list[tuple[str, nn.Parameter]]:
    """The official optimiser's list: ``Final_encoder`` then ``Ref_encoder`` parameters, named as in
    ``encoder_state_dict`` (191 tensors for the released model, the MAE ``pos_embed`` included)."""
    return [(f"{module}.{name}", parameter) for module in TRAINABLE_MODULES
            for name, parameter in editor.encoder.get_submodule(module).named_parameters()]


def prepare_for_training(editor: EditorModel) -> list[tuple[str, nn.Parameter]]:
    """Freeze the editor except :func:`trainable_parameters` (returned, gradients on) and put it in eval mode."""
    editor.requires_grad_(False)
    editor.eval()  # eval while training: the ASPP Dropout(0.5) stays off, as in the golden fixtures (official: on)
    trainable = trainable_parameters(editor)
    for _, parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


@dataclass
class StepLosses:
    """One step's ``total`` (scalar, with gradient) and unweighted ``terms`` (official names: ``triloss``,
    ``image``, ``raw``, ``depth``, ``feature``, ``image_lpips``, ``raw_lpips``, ``id`` and their ``mv_`` novel-view
    twins; only those that ran); the edited tri-planes, the ``novel_camera`` (B, 25) used (None without the novel
    view), and the renders of the editor and of Live3D (targets, no gradient) per camera: index 0 the input camera,
    1 the novel one."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    planes: torch.Tensor
    novel_camera: torch.Tensor | None
    edit_renders: list[dict[str, torch.Tensor]]
    target_renders: list[dict[str, torch.Tensor]]


class EditingObjective(nn.Module):
    """Per-step loss of 3DPE's training (see the module docstring).

    ``perceptual`` / ``identity``: the networks of the LPIPS and ID terms, or None to leave a term out; a term
    whose weight is positive but whose network is missing is reported (``description`` and the log), never faked.
    Rendering is deterministic by default, so edit and Live3D renders sample the same depths (the official
    renders jitter each independently) and identical tri-planes give exactly 0.
    """

    def __init__(self, weights: LossWeights = LossWeights(), perceptual: nn.Module | None = None,
                 identity: IdentityLoss | None = None, multiview: bool = True, deterministic: bool = True,
                 notes: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.perceptual = perceptual
        self.identity = identity
        self.multiview = multiview
        self.deterministic = deterministic
        notes = dict(notes or {})
        self.description = {
            "perceptual": (f"{perceptual.name}, weight {weights.lpips}" if perceptual is not None
                           else f"off ({notes.get('perceptual', 'no perceptual network given')}; weight {weights.lpips} unused)"),
            "identity": (f"{identity.name}, weight {weights.id}" if identity is not None
                         else f"off ({notes.get('identity', 'no identity network given')}; weight {weights.id} unused)"),
            "adversarial": f"off (not implemented; official weight {weights.adv} after step 10000)",
            "novel view": "on, one random camera per batch" if multiview else "off",
        }
        for term, text in self.description.items():
            LOG.info("objective %s: %s", term, text)

    def forward(self, editor: EditorModel, reconstruction: ReconstructionModel, x: torch.Tensor, ref: torch.Tensor,
                target_planes: torch.Tensor, camera: torch.Tensor, novel_camera: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> StepLosses:
        """x (B, 3, S, S) in [-1, 1] and ref (B, 3, 224, 224) ImageNet-normalised: the editor's inputs;
        target_planes (B, 96, S/2, S/2) = ``reconstruction.encode(target)`` of the edited target (no gradient);
        camera (B, 25): the input's view; novel_camera (B, 25), else drawn by :func:`random_novel_camera`."""
        if novel_camera is None and self.multiview:
            novel_camera = random_novel_camera(x.shape[0], generator)[0].to(camera.device)
        planes = editor.encode(x, ref)
        weights = self.weights
        terms = {"triloss": F.l1_loss(planes, target_planes)}
        total = weights.tri * terms["triloss"]
        views = (("", camera), ("mv_", novel_camera)) if self.multiview else (("", camera),)
        edit_renders, target_renders = [], []
        for prefix, cams in views:
            with torch.no_grad():
                target = reconstruction.render(target_planes, cams, deterministic=self.deterministic)
            out = editor.render(planes, cams, deterministic=self.deterministic)
            edit_renders.append(out)
            target_renders.append(target)
            view = {"image": F.l1_loss(out["image"], target["image"]),
                    "raw": F.l1_loss(out["image_raw"], target["image_raw"])}
            total = total + weights.l1 * view["image"] + weights.l1 * view["raw"]
            if self.perceptual is not None:
                view["image_lpips"] = self.perceptual(out["image"], target["image"])
                view["raw_lpips"] = self.perceptual(out["image_raw"], target["image_raw"])
                total = total + weights.lpips * view["image_lpips"] + weights.lpips * view["raw_lpips"]
            view["depth"] = F.l1_loss(out["image_depth"], target["image_depth"])
            view["feature"] = F.l1_loss(out["feature_image"], target["feature_image"])
            total = total + weights.depth * view["depth"] + weights.feature * view["feature"]
            if self.identity is not None:
                view["id"] = self.identity(out["image"], target["image"])
                total = total + weights.id * view["id"]
            terms.update({prefix + name: value for name, value in view.items()})
        return StepLosses(total, terms, planes, novel_camera, edit_renders, target_renders)


def build_objective(weights: LossWeights, weights_folder: str | os.PathLike, base_editor: EditorModel,
                    multiview: bool = True) -> EditingObjective:
    """The objective with the official networks where their files are in ``weights_folder``:

    * perceptual (when ``weights.lpips`` > 0): LPIPS from ``alexnet-owt-4df8aa71.pth`` + ``alex_lin.pth``, else
      the substitute :class:`~threedpe.models.perceptual.PromptEncoderDistance` of ``base_editor`` (logged);
    * identity (when ``weights.id`` > 0, official 0): IR-SE50 from ``model_ir_se50.pth``, else off (logged).

    Call it before training starts: the substitute copies the base editor's prompt encoder.
    """
    folder = Path(weights_folder).expanduser()
    notes = {}
    perceptual: LPIPS | PromptEncoderDistance | None = None
    if weights.lpips > 0:
        perceptual = load_perceptual(folder, base_editor)
    else:
        notes["perceptual"] = "its weight is 0"
    identity = None
    if weights.id <= 0:
        notes["identity"] = "its weight is 0, as officially"
    elif (folder / IDENTITY_FILE).is_file():
        identity = IdentityLoss.from_file(folder / IDENTITY_FILE)
    else:
        notes["identity"] = f"{IDENTITY_FILE} is not in {folder.resolve()}"
        LOG.warning("identity term off: %s is not in %s", IDENTITY_FILE, folder.resolve())
    return EditingObjective(weights, perceptual, identity, multiview=multiview, notes=notes)
