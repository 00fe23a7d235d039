"""``threedpe doctor``: one screen with what a user needs to know before filing an issue.

Versions (Python, torch, device, gradio, diffusers, spaces/ZeroGPU), each weight file found or missing (with its
source) and whether it loads, the text model's availability, whether the cache and gallery folders are writable, and
the free disk. Editing can run when the editor's weights load.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from threedpe.weights import CheckpointError
from threedpe.fetch.download import found, verify
from threedpe.fetch.sources import CATALOGUE, human_size


@dataclass
class Check:
    label: str
    ok: bool
    detail: str


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> list[str]:
    """Python, torch with its device, and the libraries the demo runs on."""
    import torch

    if torch.cuda.is_available():
        device = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU)"
    else:
        device = f"CPU only ({os.cpu_count()} cores; CUDA not available)"
    zero_gpu = "ZeroGPU Space" if os.environ.get("SPACES_ZERO_GPU") else ("Space" if os.environ.get("SPACE_ID") else "not a Space")
    return [f"python {platform.python_version()} ({platform.platform()})", f"torch {torch.__version__}: {device}",
            f"gradio {_version('gradio')}", f"diffusers {_version('diffusers')}", f"transformers {_version('transformers')}",
            f"huggingface_hub {_version('huggingface_hub')}", f"gdown {_version('gdown')}",
            f"spaces {_version('spaces')} ({zero_gpu})"]


def weight_checks(folder: Path, load: bool = True) -> list[Check]:
    """Each catalogue file: found (and, with ``load``, loaded strictly) or missing with its source."""
    checks = []
    for item in CATALOGUE:
        if item.kind == "diffusers":  # the text model has its own line (a local folder or the Hub cache)
            continue
        label, path = f"{item.name} ({item.group})", found(item, folder)
        if path is None:
            checks.append(Check(label, False, f"missing; source: {item.source.describe()}"))
            continue
        try:
            if load:
                verify(path, item.kind)
            checks.append(Check(label, True, f"{path} ({'loads' if load else 'found'})"))
        except CheckpointError as error:
            checks.append(Check(label, False, f"{path} does not load: {' '.join(str(error).split())[:300]}"))
    return checks


def text_model_check(folder: Path) -> Check:
    """InstructPix2Pix: the local folder, else the Hub cache at the pinned revision, else fetched on first use."""
    from threedpe.weights import INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION

    local = folder / "instruct-pix2pix"
    if (local / "model_index.json").is_file():
        return Check("text model", True, f"local folder {local}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(INSTRUCT_PIX2PIX_REPO, "model_index.json", revision=INSTRUCT_PIX2PIX_REVISION)
    if isinstance(cached, str):
        return Check("text model", True, f"{INSTRUCT_PIX2PIX_REPO} in the Hub cache ({Path(cached).parent})")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    detail = (f"not available: not in {local} nor in the Hub cache, and HF_HUB_OFFLINE is set (text edits are off)"
              if offline else f"not downloaded yet: the first text edit fetches {INSTRUCT_PIX2PIX_REPO} "
              "(about 4 GB), or run `python -m threedpe download --only text`")
    return Check("text model", False, detail)


def writable(label: str, folder: Path) -> Check:
    """Whether a file can be created in ``folder`` (made if absent)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return Check(label, True, f"{folder} is writable")
    except OSError as error:
        return Check(label, False, f"{folder} is not writable ({error.strerror or error})")


def report(folder: str | os.PathLike, folders: dict[str, Path]) -> tuple[list[str], bool]:
    """The doctor's lines and whether editing can run (the editor's weights load); ``folders``: label -> a folder
    the app writes to (the reference cache, the gallery), checked for writing."""
    folder = Path(folder).expanduser()
    lines = ["versions:"] + [f"  {line}" for line in versions()]
    lines.append(f"weights in {folder.resolve()}:")
    checks = weight_checks(folder)
    for check in checks:
        lines.append(f"  [{'ok' if check.ok else '--'}] {check.label}: {check.detail}")
    text = text_model_check(folder)
    lines.append(f"  [{'ok' if text.ok else '--'}] {text.label}: {text.detail}")
    lines.append("folders:")
    for check in (writable(label, path) for label, path in folders.items()):
        lines.append(f"  [{'ok' if check.ok else '--'}] {check.label}: {check.detail}")
    existing = next(parent for parent in (folder, *folder.resolve().parents) if parent.exists())
    lines.append(f"free disk at {existing}: {human_size(shutil.disk_usage(existing).free)}")
    hub = os.environ.get("THREEDPE_HUB_REPO")
    if hub:
        lines.append(f"Hub copy: THREEDPE_HUB_REPO={hub} THREEDPE_HUB_REVISION={os.environ.get('THREEDPE_HUB_REVISION')} "
                     "(files missing here are fetched from there at start-up; not checked here)")
    editor_ok = next(check.ok for check in checks if check.label.endswith("(editor)"))  # all that editing needs
    lines.append("editing can run" if editor_ok else
                 "editing cannot run here: the editor weights are missing or broken; run `python -m threedpe download`")
    return lines, editor_ok
