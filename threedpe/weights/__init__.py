"""Everything about weight files in one place: their names, the default folder, where a file is found (the local
folder first, then the Hugging Face Hub at a pinned revision) and the text model's source.

Nothing here imports torch: the CLI's ``--help`` and the defaults of every command read it instantly. Reading and
writing the files is :mod:`threedpe.weights.checkpoints` (safely: :mod:`threedpe.weights.unpickler`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Each tuple is looked up in order: the converted file (threedpe's safetensors + JSON) first, then the released one.
EDITOR_WEIGHTS = ("3dpe.safetensors", "3dpe.pt")
EG3D_WEIGHTS = ("ffhqrebalanced512-128.safetensors", "ffhqrebalanced512-128.pth", "ffhqrebalanced512-128.pkl")
RECONSTRUCTION_WEIGHTS = ("encoder_render_LT_90000.safetensors", "encoder_render_LT_90000.pt")  # Live3D
LPIPS_FILES = ("alexnet-owt-4df8aa71.pth", "alex_lin.pth")  # AlexNet backbone, LPIPS linear heads
IDENTITY_FILE = "model_ir_se50.pth"  # ArcFace IR-SE50
TEXT_MODEL_FOLDER = "instruct-pix2pix"  # InstructPix2Pix in the diffusers layout, inside a weight folder
INSTRUCT_PIX2PIX_REPO = "timbrooks/instruct-pix2pix"
# Commit of the Hub repo that the defaults were chosen against (pinned so a repo update cannot change results).
INSTRUCT_PIX2PIX_REVISION = "93224554bd65f19b6f0c99cbcce3a4ac59bb6382"


def default_folder() -> Path:
    """The weight folder used when none is given: ``$THREEDPE_WEIGHTS``, else ``checkpoints`` (relative to the working
    directory)."""
    return Path(os.environ.get("THREEDPE_WEIGHTS", "checkpoints")).expanduser()


def text_model_source(folder: str | os.PathLike | None) -> tuple[str | Path, str | None]:
    """Where InstructPix2Pix is loaded from, as ``(source, revision)``: the weight folder's ``instruct-pix2pix/``
    (diffusers layout, no revision) when it holds one, else the Hub repository at its pinned revision."""
    local = Path(folder) / TEXT_MODEL_FOLDER if folder is not None else None
    if local is not None and (local / "model_index.json").is_file():
        return local, None
    return INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION


def local_eg3d_weights(folder: str | os.PathLike) -> Path | None:
    """The EG3D generator file in ``folder`` (converted first), or None; nothing is downloaded for it."""
    return next((Path(folder) / name for name in EG3D_WEIGHTS if (Path(folder) / name).is_file()), None)


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, unsafe, or not the checkpoint that was expected."""


class MissingWeightsError(CheckpointError):
    """A weight file could be found neither locally nor on the Hugging Face Hub; ``filename`` names it and
    ``folder`` is where it was looked for."""

    def __init__(self, message: str, filename: str | None = None, folder: Path | None = None):
        super().__init__(message)
        self.filename, self.folder = filename, folder


# ---------------------------------------------------------------------------------------------
# Finding weight files: local folder, then the Hugging Face Hub (pinned revision), else a clear error.


@dataclass(frozen=True)
class WeightSource:
    """Where a known weight file comes from, and under which licence."""

    description: str
    source: str
    licence: str
    hub_repo: str | None = None  # a Hub repository that holds the file...
    hub_filename: str | None = None  # ...at this path (None: a whole diffusers repository)
    hub_revision: str | None = None  # pinned commit, when known


_NVIDIA_NC = "NVIDIA Source Code License-NC (non-commercial research use only)"
_3DPE_DRIVE = "3DPE authors' Google Drive 'pretrained_models' folder, linked from the README of https://github.com/EzioBy/3dpe"
_3DPE_LICENCE = "3DPE authors' terms: non-commercial research use (EG3D-derived parts: " + _NVIDIA_NC + ")"
_CONVERTED = "produced locally by `python -m threedpe convert <original file>`; same licence as the original"

KNOWN_WEIGHTS: dict[str, WeightSource] = {
    "ffhqrebalanced512-128.pkl": WeightSource(
        "EG3D FFHQ (rebalanced) 512px generator, NVIDIA's official network pickle",
        "NVIDIA NGC catalog, model 'eg3d' (https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d); "
        "also on the Hugging Face Hub: gwang-kim/datid3d-finetuned-eg3d-models, file finetuned_models/nvidia_ffhqrebalanced512-128.pkl",
        _NVIDIA_NC, hub_repo="gwang-kim/datid3d-finetuned-eg3d-models",
        hub_filename="finetuned_models/nvidia_ffhqrebalanced512-128.pkl"),
    "ffhqrebalanced512-128.pth": WeightSource(
        "EG3D FFHQ 512px generator as converted by 3DPE (torch.save of G_init_kwargs + state dicts)", _3DPE_DRIVE, _NVIDIA_NC),
    "3dpe.pt": WeightSource("3DPE encoder + triplane renderer (the paper's model)", _3DPE_DRIVE, _3DPE_LICENCE),
    "encoder_render_LT_90000.pt": WeightSource(
        "Live3D-LT encoder + renderer (3DPE's training initialisation)", _3DPE_DRIVE, _3DPE_LICENCE),
    "instruct-pix2pix": WeightSource(
        "InstructPix2Pix diffusion model (diffusers layout, a whole repository)",
        "Hugging Face Hub repository timbrooks/instruct-pix2pix (load with diffusers `from_pretrained`)",
        "code MIT; weights CreativeML OpenRAIL-M (derived from Stable Diffusion)", hub_repo="timbrooks/instruct-pix2pix"),
    "ffhqrebalanced512-128.safetensors": WeightSource("EG3D generator in threedpe's format (tensors)", _CONVERTED, _NVIDIA_NC),
    "ffhqrebalanced512-128.json": WeightSource("EG3D generator in threedpe's format (config)", _CONVERTED, _NVIDIA_NC),
    "3dpe.safetensors": WeightSource("3DPE encoder + renderer in threedpe's format (tensors)", _CONVERTED, _3DPE_LICENCE),
    "3dpe.json": WeightSource("3DPE encoder + renderer in threedpe's format (config)", _CONVERTED, _3DPE_LICENCE),
    "encoder_render_LT_90000.safetensors": WeightSource(
        "Live3D-LT encoder + renderer in threedpe's format (tensors)", _CONVERTED, _3DPE_LICENCE),
    "encoder_render_LT_90000.json": WeightSource(
        "Live3D-LT encoder + renderer in threedpe's format (config)", _CONVERTED, _3DPE_LICENCE),
    "alexnet-owt-4df8aa71.pth": WeightSource(
        "torchvision's ImageNet AlexNet (the LPIPS backbone of 3DPE's training)",
        _3DPE_DRIVE + "; originally https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth",
        "torchvision model zoo (BSD-3-Clause code; ImageNet-trained weights)"),
    "alex_lin.pth": WeightSource(
        "LPIPS v0.1 linear heads for AlexNet (3DPE's training)",
        _3DPE_DRIVE + "; originally lpips/weights/v0.1/alex.pth of https://github.com/richzhang/PerceptualSimilarity",
        "BSD-2-Clause (LPIPS)"),
    "model_ir_se50.pth": WeightSource(
        "ArcFace IR-SE50 face-recognition network (3DPE's identity loss)",
        _3DPE_DRIVE + "; originally TreB1eN/InsightFace_Pytorch, as redistributed by pSp/e4e", "MIT (InsightFace_Pytorch)"),
}


def missing_error(filename: str, folder: Path, hub_problem: str | None) -> MissingWeightsError:
    known = KNOWN_WEIGHTS.get(filename)
    where = (f"Get it from: {known.source}. Licence: {known.licence}." if known
             else f"This is not one of the known files ({', '.join(KNOWN_WEIGHTS)}); see checkpoints/README.md.")
    hub = f" It was not fetched from the Hugging Face Hub: {hub_problem}." if hub_problem else ""
    return MissingWeightsError(f"missing weight file '{filename}': it is not in {folder.resolve()}.{hub} "
                               f"Put it there (or set THREEDPE_WEIGHTS to the folder holding it). {where}",
                               filename=filename, folder=folder)


def resolve_weight(filename: str, local_dir: str | os.PathLike | None = None, repo_id: str | None = None,
                   revision: str | None = None, subfolder: str | None = None) -> Path:
    """Path of a weight file: ``local_dir`` first, then the Hugging Face Hub at a pinned revision.

    ``local_dir`` defaults to ``$THREEDPE_WEIGHTS`` or else ``checkpoints`` (relative to the working
    directory). The Hub repository is ``repo_id``, else ``$THREEDPE_HUB_REPO``, else the known Hub
    copy of ``filename`` (see ``KNOWN_WEIGHTS``); ``revision`` (a 40-hex commit, else
    ``$THREEDPE_HUB_REVISION``) must be pinned or nothing is downloaded. Raises
    ``MissingWeightsError`` naming the file, where to put it and where to get it.
    """
    folder = Path(local_dir).expanduser() if local_dir is not None else default_folder()
    if (folder / filename).exists():
        return folder / filename
    known = KNOWN_WEIGHTS.get(filename)
    repo, hub_filename = repo_id or os.environ.get("THREEDPE_HUB_REPO"), filename
    revision = revision or os.environ.get("THREEDPE_HUB_REVISION")
    if repo is None and known is not None and known.hub_repo is not None:
        repo, hub_filename, revision = known.hub_repo, known.hub_filename, revision or known.hub_revision
    if repo is None:
        hub_problem = "no Hub repository is configured (pass repo_id or set THREEDPE_HUB_REPO)"
    elif hub_filename is None:
        hub_problem = f"{repo} is a whole repository; load it with diffusers from_pretrained({repo!r}, revision=<commit>)"
    elif revision is None:
        hub_problem = f"no pinned revision for {repo} (pass revision or set THREEDPE_HUB_REVISION to a commit sha)"
    elif not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise CheckpointError(f"revision {revision!r} is not pinned: give the full 40-character commit sha")
    else:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=hub_filename, subfolder=subfolder, revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
            hub_problem = f"{repo}@{revision[:12]}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    raise missing_error(filename, folder, hub_problem)


def resolve_first(filenames: tuple[str, ...], local_dir: str | os.PathLike | None = None, repo_id: str | None = None,
                  revision: str | None = None) -> Path:
    """The first of ``filenames`` that :func:`resolve_weight` finds (e.g. a converted file before the released
    one); when none is found, the ``MissingWeightsError`` of the last (the released file and its source)."""
    missing: MissingWeightsError | None = None
    for filename in filenames:
        try:
            return resolve_weight(filename, local_dir=local_dir, repo_id=repo_id, revision=revision)
        except MissingWeightsError as error:
            missing = error
    raise missing if missing is not None else ValueError("no file names given")
