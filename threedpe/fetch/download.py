"""``threedpe download``: fetch the real weights from their official sources, verify each by loading it, convert it.

For every selected :class:`~threedpe.fetch.sources.WeightFile`: skip it when its kept form is already in the folder;
else fetch it into ``<folder>/.download/`` (Drive and HTTPS files with ``gdown``, resumable, retried, with a
progress bar; Hub files with ``huggingface_hub``), take it out of its zip, load it through the project's safe loader
into the network it belongs to (strict keys), convert it to ``.safetensors`` + ``.json`` and only then put it in the
folder. A file that does not load is removed. A failure raises :class:`WeightDownloadError`, one line naming the file,
its source and the manual way; partial transfers stay in ``.download/`` and the next run resumes them.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from threedpe.weights import CheckpointError
from threedpe.weights.checkpoints import convert, load_3dpe, load_eg3d, read_state_dict
from threedpe.fetch.sources import (ARCHIVE_ALIASES, DriveFile, DriveFolder, HttpsFile, HubFile, HubSnapshot,
                                      WeightFile, drive_url, human_size, licence_notice, selected)

STAGING = ".download"  # inside the weight folder: renames into place are atomic, partial transfers resume
ACCEPTED = "LICENCES-ACCEPTED.txt"
RETRIES = 3  # further attempts after a dropped transfer; each resumes where the last stopped


class WeightDownloadError(CheckpointError):
    """A weight file could not be downloaded or did not load; the message is one line with the manual way."""


@dataclass
class Outcome:
    item: WeightFile
    status: str  # "downloaded", "present"
    kept: list[Path]
    origin: str


def plan(items: list[WeightFile], folder: Path) -> list[str]:
    """What a download of ``items`` into ``folder`` would do: per file its name, group, size, source, kept names and
    licence (no network)."""
    lines = []
    for item in items:
        there = " [already there]" if _present(item, folder) else ""
        kept = " + ".join(item.kept_names())
        lines.append(f"{item.name} ({item.group}, {human_size(item.size)}){there}\n    from: {item.source.describe()}\n"
                     f"    kept as: {folder / kept}\n    licence: {item.licence}")
    return lines


def found(item: WeightFile, folder: Path) -> Path | None:
    """``item`` in ``folder``: its kept form first (the converted pair, the text model's folder), else the released
    file (or the archive's alias of it, e.g. 3DPE's ``.pth`` of the EG3D pickle); None when absent."""
    if item.kind == "diffusers":
        return folder / item.name if (folder / item.name / "model_index.json").is_file() else None
    if all((folder / name).is_file() for name in item.kept_names()):
        return folder / item.kept_names()[0]
    aliases = [alias for alias, name in ARCHIVE_ALIASES.items() if name == item.name]
    return next((folder / name for name in (item.name, *aliases) if (folder / name).is_file()), None)


def _present(item: WeightFile, folder: Path) -> bool:
    return found(item, folder) is not None


def one_line(error: BaseException) -> str:
    """An error's message on one line (at most 400 characters), for the one ``error:`` line of a command."""
    text = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    return text[:400]


# ---------------------------------------------------------------------------------------------------------------
# Fetching.


def _gdown(url: str, output: Path) -> Path:
    """``url`` into ``output`` with gdown: resumes an earlier partial file, retries dropped transfers, shows progress."""
    import gdown

    output.parent.mkdir(parents=True, exist_ok=True)
    result = gdown.download(url=url, output=str(output), quiet=False, resume=True, retries=RETRIES, timeout=60)
    if result is None or not output.is_file():
        raise OSError(f"gdown did not write {output.name}")
    return output


def _drive_folder_file(source: DriveFolder) -> str:
    """The Drive id of ``source.filename`` in its folder (the folder is listed, nothing is downloaded)."""
    import gdown

    listing = gdown.download_folder(id=source.folder_id, skip_download=True, quiet=True)
    for entry in listing or []:
        if Path(entry.path).name == source.filename:
            return entry.id
    raise OSError(f"the Drive folder does not list {source.filename}")


def _hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hub_file(source: HubFile, staging: Path) -> tuple[Path, str]:
    """Download one Hub file (resumable, into ``staging``); returns its path and the commit it came from."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = _hub_endpoint()
    commit = get_hf_file_metadata(hf_hub_url(source.repo, source.path, revision=source.revision, endpoint=endpoint)).commit_hash
    path = hf_hub_download(source.repo, source.path, revision=commit or source.revision, local_dir=staging / "hub",
                           endpoint=endpoint)
    return Path(path), commit or source.revision


def _hub_snapshot(source: HubSnapshot, staging: Path, name: str) -> Path:
    from huggingface_hub import snapshot_download

    folder = staging / name
    snapshot_download(source.repo, revision=source.revision, allow_patterns=list(source.allow_patterns),
                      local_dir=folder, endpoint=_hub_endpoint())
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping of the local folder
    return folder


def network_errors() -> tuple[type[BaseException], ...]:
    import requests
    from gdown.exceptions import DownloadError, FileURLRetrievalError
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    errors: tuple[type[BaseException], ...] = (OSError, requests.RequestException, DownloadError, FileURLRetrievalError,
                                               HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled)
    try:
        import httpx2 as httpx  # huggingface_hub >= 2 talks through httpx2
    except ImportError:
        import httpx
    return (*errors, httpx.HTTPError)


def _extract(archive: Path, member: str, staging: Path) -> Path | None:
    """Copy the zip member whose base name is ``member`` (at any depth) to ``staging/member``; None when absent."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = [name for name in zipped.namelist() if Path(name).name == member and not name.endswith("/")]
            if not names:
                return None
            target = staging / member
            with zipped.open(names[0]) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            return target
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{archive.name} is not a readable zip archive ({error})") from None


# ---------------------------------------------------------------------------------------------------------------
# Verifying and keeping.


def verify(path: Path, kind: str, folder: Path | None = None) -> None:
    """Load ``path`` into the network of ``kind`` with strict keys (raises ``CheckpointError``), as every start does.
    An LPIPS part (``state_dict``) is loaded with its partner from ``folder`` (default: beside it) when that is there."""
    if kind in ("editor", "live3d"):
        from threedpe.models.editor import EditorModel, ReconstructionModel

        (EditorModel if kind == "editor" else ReconstructionModel).from_checkpoint(load_3dpe(path))
    elif kind == "eg3d":
        from threedpe.models.generator import TriPlaneGenerator

        TriPlaneGenerator.from_checkpoint(load_eg3d(path))
    elif kind == "state_dict":
        from threedpe.models.perceptual import LPIPS, LPIPS_FILES

        if not read_state_dict(path):
            raise CheckpointError(f"{path.name} holds no tensors")
        parts = [path if name == path.name else (folder or path.parent) / name for name in LPIPS_FILES]
        if all(part.is_file() for part in parts):
            LPIPS.from_files(*parts)
    elif kind == "diffusers":
        verify_text_model(path)
    else:
        raise ValueError(f"unknown weight kind {kind!r}")


def verify_text_model(folder: Path) -> None:
    """The InstructPix2Pix folder's index, configs and weights are complete and readable (tensors not loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder.name}/model_index.json is missing or corrupt ({one_line(error)})") from None
    for part in ("text_encoder", "unet", "vae"):
        if part not in index:
            raise CheckpointError(f"{folder.name}/model_index.json does not list the {part}")
        weights = sorted((folder / part).glob("*.safetensors"))
        if not (folder / part / "config.json").is_file() or not weights:
            raise CheckpointError(f"{folder.name}/{part} lacks its config.json or its .safetensors weights")
        try:
            with safe_open(weights[0], framework="pt") as handle:
                if not list(handle.keys()):
                    raise CheckpointError(f"{folder.name}/{part}/{weights[0].name} holds no tensors")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{folder.name}/{part}/{weights[0].name} is truncated or corrupt ({one_line(error)})") from None
    for part in ("scheduler", "tokenizer"):
        if not (folder / part).is_dir():
            raise CheckpointError(f"{folder.name}/{part} is missing")


def _keep(item: WeightFile, path: Path, folder: Path) -> list[Path]:
    """Verify ``path`` (staged) and put it in ``folder`` in its kept form; a file that does not load is removed."""
    try:
        verify(path, item.kind, folder)
        if item.converted:
            weights = convert(path, folder / item.converted)
            kept = [weights, weights.with_suffix(".json")]
        else:
            target = folder / item.name
            if target.exists() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
            kept = [target]
    except CheckpointError:
        _remove(path)
        raise
    _remove(path)
    return kept


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------------------------------------------------
# The command.


def _from_archive(item: WeightFile, archive: Path | None, staging: Path) -> Path | None:
    """``item`` (or its alias) taken out of an archive fetched in this run, if it holds it."""
    if archive is None:
        return None
    names = [item.name] + [alias for alias, name in ARCHIVE_ALIASES.items() if name == item.name]
    for name in names:
        extracted = _extract(archive, name, staging)
        if extracted is not None:
            return extracted
    return None


def _fetch(item: WeightFile, staging: Path, archive: Path | None) -> tuple[Path, str, Path | None]:
    """Stage ``item``: its path, where it came from, and the archive fetched for it (or the one given)."""
    source = item.source
    extracted = _from_archive(item, archive, staging)
    if extracted is not None:
        return extracted, f"3DPE's archive ({extracted.name})", archive
    if isinstance(source, DriveFile):
        fetched = _gdown(f"{drive_url()}/uc?id={source.file_id}", staging / source.filename)
        if not source.members:
            return fetched, source.describe(), archive
        extracted = _from_archive(item, fetched, staging)
        if extracted is None:
            _remove(fetched)
            raise CheckpointError(f"{source.filename} does not hold {item.name}")
        return extracted, source.describe(), fetched
    if isinstance(source, DriveFolder):
        file_id = _drive_folder_file(source)
        return _gdown(f"{drive_url()}/uc?id={file_id}", staging / item.name), source.describe(), archive
    if isinstance(source, HttpsFile):
        return _gdown(source.url, staging / item.name), source.describe(), archive
    if isinstance(source, HubFile):
        path, commit = _hub_file(source, staging)
        return path, f"Hugging Face Hub {source.repo} {source.path} at commit {commit}", archive
    if isinstance(source, HubSnapshot):
        return _hub_snapshot(source, staging, item.name), f"Hugging Face Hub {source.repo} at {source.revision}", archive
    raise TypeError(f"unknown source {source!r}")


def accept_licences(folder: Path, accepted: bool, ask: Callable[[str], str] | None,
                    say: Callable[[str], None]) -> None:
    """Have the user accept the licences once (``--accept-licences`` or the prompt); remembered in ``folder``."""
    marker = folder / ACCEPTED
    if marker.is_file():
        return
    notice = licence_notice(selected(None))  # all of them at once: accepted once per folder
    if not accepted and ask is None:
        raise WeightDownloadError("the weights' licences were not accepted: run in a terminal to answer the "
                                  "prompt, or pass --accept-licences (see checkpoints/README.md for the licences)")
    say(notice)
    if not accepted:
        if ask("Accept these licences and download? [y/N] ").strip().lower() not in ("y", "yes"):
            raise WeightDownloadError("the weights' licences were not accepted; nothing was downloaded")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{notice}\nAccepted on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.\n", encoding="utf-8")


def download(folder: str | os.PathLike, only: list[str] | None = None, accept: bool = False,
             ask: Callable[[str], str] | None = None, say: Callable[[str], None] = print) -> list[Outcome]:
    """Download, verify and convert the ``only`` groups (default all) into ``folder``; returns what is where.

    Raises :class:`WeightDownloadError` (one line: the file, its source, the manual way) on the first failure;
    what was kept before it stays, nothing half-written is left under a kept name.
    """
    folder = Path(folder).expanduser()
    items = selected(only)
    missing = [item for item in items if not _present(item, folder)]
    if missing:
        accept_licences(folder, accept, ask, say)
    staging = folder / STAGING
    network = network_errors()
    outcomes, archive = [], None
    try:
        for item in items:
            if _present(item, folder):
                outcomes.append(Outcome(item, "present", [found(item, folder)], "already there"))
                continue
            say(f"fetching {item.name}")
            staging.mkdir(parents=True, exist_ok=True)
            origin = item.source.describe()
            try:
                path, origin, archive = _fetch(item, staging, archive)
                kept = _keep(item, path, folder)
            except network as error:
                partial = any(part.is_file() and part != archive for part in staging.rglob("*"))
                resume = f" The partial download is kept in {staging} and the next run resumes it." if partial else ""
                raise WeightDownloadError(f"could not download {item.name} from {origin}: {one_line(error)}.{resume} "
                                          f"Manual way: {item.manual}") from None
            except KeyboardInterrupt:
                raise WeightDownloadError(f"stopped while fetching {item.name}; run the same command again to resume "
                                          f"(partial data waits in {staging})") from None
            except CheckpointError as error:
                _remove(staging / "hub")
                raise WeightDownloadError(f"refused {item.name} from {origin}: it does not load ({one_line(error)}); "
                                          f"the file was removed. Manual way: {item.manual}") from None
            _remove(staging / "hub")  # huggingface_hub's copy and bookkeeping (kept on a network error: it resumes)
            outcomes.append(Outcome(item, "downloaded", kept, origin))
            say(f"verified and kept {item.name} as {', '.join(path.name for path in kept)}")
    finally:
        if archive is not None:
            _remove(archive)
        if staging.is_dir() and not any(path.is_file() for path in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    """One line per file: where it is, its size on disk, where it came from."""
    lines = []
    for outcome in outcomes:
        size = sum(_size(path) for path in outcome.kept)
        where = ", ".join(str(path) for path in outcome.kept)
        lines.append(f"  {outcome.item.name:28s} {outcome.status:10s} {human_size(size):>9s}  {where}  ({outcome.origin})")
    return "\n".join(lines)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(part.stat().st_size for part in path.rglob("*") if part.is_file())
    return path.stat().st_size if path.exists() else 0


def terminal_prompt() -> Callable[[str], str] | None:
    """``input`` when stdin is a terminal (the user can answer), else None."""
    return input if sys.stdin is not None and sys.stdin.isatty() else None


# ---------------------------------------------------------------------------------------------------------------
# First start: the app (and PortraitEditor.from_pretrained(download=True)) without weights.

FIRST_START_GROUPS = ["editor", "eg3d", "text"]  # what editing needs (training's live3d and lpips are left out)


def on_space() -> bool:
    """Whether this runs on a Hugging Face Space (which never downloads from Google Drive by itself)."""
    return bool(os.environ.get("SPACE_ID"))


def missing_weights_hint() -> str:
    """Markdown for the no-weights notice: on a Space, how its owner publishes weights; elsewhere, the command."""
    if on_space():
        return ("\n\nThis Space does not download weights from Google Drive by itself. Its owner can publish converted "
                "weights from a machine that has them: `python -m threedpe download`, then `python -m threedpe "
                "push-weights --repo <user>/<name>`, and set the `THREEDPE_HUB_REPO` and `THREEDPE_HUB_REVISION` "
                "variables it prints in the Space's settings.")
    return ("\n\nOr fetch them in one command: `python -m threedpe download` (from their official sources, verified "
            "and converted), or start with `python app.py --download`.")


def first_start(folder: str | os.PathLike, requested: bool = False, say: Callable[[str], None] = print) -> bool:
    """Offer to download what editing needs into ``folder`` when its weights are missing: when ``requested``
    (``--download``, ``THREEDPE_DOWNLOAD=1``) or when the user says yes at a terminal prompt; never on a Space.
    Returns whether a download ran (it raises :class:`WeightDownloadError` when it failed)."""
    if on_space():
        return False
    requested = requested or os.environ.get("THREEDPE_DOWNLOAD", "").lower() in ("1", "true", "yes")
    ask = terminal_prompt()
    if not requested:
        if ask is None:
            return False
        answer = ask(f"No weights in {Path(folder).resolve()}. Download them now from their official sources "
                     "(the 3DPE editor, EG3D and InstructPix2Pix: several GB)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return False
    outcomes = download(folder, FIRST_START_GROUPS, ask=ask, say=say)
    say(summary(outcomes))
    return True
