"""Where every weight file comes from: the catalogue that ``threedpe download``, ``doctor`` and ``push-weights`` read.

Each :class:`WeightFile` names the file as the project keeps it, the group a user picks with ``--only``, its source
(a Google Drive file or folder, fetched with ``gdown``; a Hugging Face Hub file or snapshot at a revision; a plain
HTTPS URL), its size when known, its licence, and the manual way to get it. Nothing here touches the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from threedpe.weights import INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION

DRIVE_URL_ENV = "THREEDPE_DRIVE_URL"  # tests point it at a loopback server


def drive_url() -> str:
    """Base URL of Google Drive downloads: ``$THREEDPE_DRIVE_URL``, else https://drive.google.com."""
    return os.environ.get(DRIVE_URL_ENV, "https://drive.google.com").rstrip("/")


@dataclass(frozen=True)
class DriveFile:
    """A public Google Drive file (``file_id``), saved as ``filename``; a zip when ``members`` is not empty."""

    file_id: str
    filename: str
    members: tuple[str, ...] = ()  # zip members (base names) the project uses; found at any depth

    def describe(self) -> str:
        kind = f"zip holding {', '.join(self.members)}" if self.members else "file"
        return f"Google Drive {kind}, id {self.file_id} (https://drive.google.com/uc?id={self.file_id})"


@dataclass(frozen=True)
class DriveFolder:
    """One file (``filename``) of a public Google Drive folder (``folder_id``)."""

    folder_id: str
    filename: str

    def describe(self) -> str:
        return (f"Google Drive folder {self.folder_id} (https://drive.google.com/drive/folders/{self.folder_id}), "
                f"file {self.filename}")


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face Hub model repository at ``revision``."""

    repo: str
    path: str
    revision: str

    def describe(self) -> str:
        return f"Hugging Face Hub {self.repo}, file {self.path}, revision {self.revision}"


@dataclass(frozen=True)
class HubSnapshot:
    """The files of a Hub model repository matching ``allow_patterns``, at ``revision``."""

    repo: str
    revision: str
    allow_patterns: tuple[str, ...]

    def describe(self) -> str:
        return f"Hugging Face Hub {self.repo}, revision {self.revision} ({len(self.allow_patterns)} file patterns)"


@dataclass(frozen=True)
class HttpsFile:
    url: str

    def describe(self) -> str:
        return self.url


Source = DriveFile | DriveFolder | HubFile | HubSnapshot | HttpsFile


@dataclass(frozen=True)
class WeightFile:
    """A file (or the text model's folder) the project uses, and how to get it.

    ``kind`` says how it is verified: ``editor`` / ``live3d`` (3DPE-format networks), ``eg3d`` (the generator),
    ``state_dict`` (an LPIPS part), ``diffusers`` (the InstructPix2Pix folder). ``converted``: the stem of the
    ``.safetensors`` + ``.json`` pair it becomes (None: kept as it is).
    """

    name: str
    group: str
    kind: str
    source: Source
    licence: str
    manual: str
    size: int | None = None  # bytes, when known
    converted: str | None = None

    def kept_names(self) -> tuple[str, ...]:
        """The names this file is kept under in the weight folder once downloaded."""
        return (f"{self.converted}.safetensors", f"{self.converted}.json") if self.converted else (self.name,)


NVIDIA_NC = "NVIDIA Source Code License-NC: non-commercial research or evaluation use only"
THREEDPE_LICENCE = "3DPE authors' terms (non-commercial research use); trained from EG3D: " + NVIDIA_NC
OPENRAIL = "CreativeML OpenRAIL-M (InstructPix2Pix weights, derived from Stable Diffusion); code MIT"

THREEDPE_ARCHIVE = DriveFile("1ZRH9WGHcostGAywqdJJp1kJBUiqN-xxF", "pretrained_models.zip",
                             members=("3dpe.pt", "ffhqrebalanced512-128.pth", "encoder_render_LT_90000.pt",
                                      "alexnet-owt-4df8aa71.pth", "alex_lin.pth"))
LIVE3D_FOLDER_ID = "1Z6uri8pH048Qzyhu0PE3llxO5EC7ic_v"
EG3D_HUB_REPO = "gwang-kim/datid3d-finetuned-eg3d-models"
EG3D_HUB_PATH = "finetuned_models/nvidia_ffhqrebalanced512-128.pkl"
# Not pinned to a commit (none was known when this was written): the file is verified by loading it strictly, and
# the commit actually fetched is printed.
EG3D_HUB_REVISION = "main"

# Only what diffusers' StableDiffusionInstructPix2PixPipeline loads here (fp32 safetensors; no safety checker, no
# feature extractor, no fp16 variants, no .bin twins, no 7 GB original .ckpt/.safetensors at the repository's root).
TEXT_MODEL_PATTERNS = ("model_index.json", "scheduler/*.json", "text_encoder/config.json", "text_encoder/model.safetensors",
                       "tokenizer/*", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                       "vae/config.json", "vae/diffusion_pytorch_model.safetensors")

_DRIVE_MANUAL = ("open https://drive.google.com/uc?id={id} in a browser (linked from the README of "
                 "https://github.com/EzioBy/3dpe, 'Download Pre-trained Models'), unzip it and put {name} into the weight "
                 "folder, then run `python -m threedpe convert <folder>/{name}`")

CATALOGUE: tuple[WeightFile, ...] = (
    WeightFile("3dpe.pt", "editor", "editor", THREEDPE_ARCHIVE, THREEDPE_LICENCE,
               _DRIVE_MANUAL.format(id=THREEDPE_ARCHIVE.file_id, name="3dpe.pt"), converted="3dpe"),
    WeightFile("ffhqrebalanced512-128.pkl", "eg3d", "eg3d", HubFile(EG3D_HUB_REPO, EG3D_HUB_PATH, EG3D_HUB_REVISION),
               NVIDIA_NC,
               f"download {EG3D_HUB_PATH} from https://huggingface.co/{EG3D_HUB_REPO} (or the 'eg3d' model of NVIDIA's NGC "
               "catalog, https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d) as "
               "ffhqrebalanced512-128.pkl into the weight folder, then run `python -m threedpe convert "
               "<folder>/ffhqrebalanced512-128.pkl`; 3DPE's archive also holds it as ffhqrebalanced512-128.pth",
               size=377_644_956, converted="ffhqrebalanced512-128"),
    WeightFile("encoder_render_LT_90000.pt", "live3d", "live3d", DriveFolder(LIVE3D_FOLDER_ID, "encoder_render_LT_90000.pt"),
               THREEDPE_LICENCE,
               f"open https://drive.google.com/drive/folders/{LIVE3D_FOLDER_ID} (the README of "
               "https://github.com/Dong142857/Live3DPortrait), download encoder_render_LT_90000.pt into the weight "
               "folder, then run `python -m threedpe convert <folder>/encoder_render_LT_90000.pt`",
               converted="encoder_render_LT_90000"),
    WeightFile("instruct-pix2pix", "text", "diffusers",
               HubSnapshot(INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION, TEXT_MODEL_PATTERNS), OPENRAIL,
               f"`huggingface-cli download {INSTRUCT_PIX2PIX_REPO} --revision {INSTRUCT_PIX2PIX_REVISION} "
               f"--local-dir <folder>/instruct-pix2pix " + " ".join(f"--include '{p}'" for p in TEXT_MODEL_PATTERNS)
               + "` (or leave it out: the first text edit loads it from the Hub cache)"),
    WeightFile("alexnet-owt-4df8aa71.pth", "lpips", "state_dict",
               HttpsFile("https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth"),
               "torchvision model zoo (BSD-3-Clause code; ImageNet-trained weights)",
               "download https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth into the weight folder "
               "(training only; 3DPE's archive holds it too)"),
    WeightFile("alex_lin.pth", "lpips", "state_dict",
               HttpsFile("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth"),
               "BSD-2-Clause (LPIPS)",
               "download lpips/weights/v0.1/alex.pth of https://github.com/richzhang/PerceptualSimilarity into the "
               "weight folder as alex_lin.pth (training only; 3DPE's archive holds it too)"),
)
GROUPS = ("editor", "eg3d", "live3d", "text", "lpips")
# Files 3DPE's archive holds under another name than the catalogue's: the same network (ffhqrebalanced512-128.pth is
# 3DPE's conversion of the EG3D pickle, kept as the same converted pair).
ARCHIVE_ALIASES = {"ffhqrebalanced512-128.pth": "ffhqrebalanced512-128.pkl"}


def selected(only: list[str] | tuple[str, ...] | None = None) -> list[WeightFile]:
    """The catalogue's files of the ``only`` groups (all when None or empty), in download order."""
    unknown = sorted(set(only or ()) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown weight group(s) {', '.join(unknown)}: choose from {', '.join(GROUPS)}")
    return [item for item in CATALOGUE if not only or item.group in only]


def licence_notice(items: list[WeightFile]) -> str:
    """The licences a user accepts before downloading ``items``, one line each."""
    lines = [f"  {item.name}: {item.licence}" for item in items]
    return ("These weights keep their own licences; by downloading them you accept them:\n" + "\n".join(lines) +
            "\nIn particular EG3D, 3DPE and Live3D weights may not be used commercially.")


def human_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
