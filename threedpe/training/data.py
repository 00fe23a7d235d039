"""The 3DPE training-data layout: datasets of (portrait, edited portrait) pairs with cameras, read and written.

The layout is the one the official ``ImageFolderDataset_Editing`` reads, in a folder or a zip:

    dataset.json                 {"labels": [["00000/img00000000.png", [25 numbers]], ...]}: each input's camera
    00000/img00000000.png        input portraits, RGB PNG, 512x512 (no "_" anywhere in their paths)
    00000_<style>/img00000000.png  the same portraits edited with <style>: the same file names

A training item is (input, reference = the same style applied to another identity, target = this identity's edit,
the input's camera). Inputs are grouped 1000 to a folder (``00000``, ``00001``, ...) as FFHQ is; a folder may have
several style folders, and a style folder holds an edit of each input of its folder (a missing one is an error).
Cameras follow :mod:`threedpe.cameras`.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from threedpe.files import atomic_write
from threedpe.models.encoder import preprocess_input, preprocess_reference

LABELS = "dataset.json"
RESOLUTION = 512
PER_FOLDER = 1000


class DatasetError(ValueError):
    """A dataset that does not follow the layout; the message names the file at fault."""


def item_path(index: int) -> str:
    """The input path of sample ``index``: ``NNNNN/imgIIIIIIII.png`` (1000 samples per folder)."""
    return f"{index // PER_FOLDER:05d}/img{index:08d}.png"


def edited_path(path: str, style: str) -> str:
    """Where the ``style`` edit of the input ``path`` lives: ``NNNNN_<style>/<same name>``."""
    folder, name = path.split("/")
    return f"{folder}_{style}/{name}"


def check_style(style: str) -> str:
    """A style name usable in a folder name (letters, digits, spaces, ``-`` and ``_``; no ``/``)."""
    if not style or style != style.strip() or any(c in style for c in "/\\\0") or len(style) > 100:
        raise DatasetError(f"{style!r} cannot name a style folder: use 1-100 characters without slashes")
    return style


@dataclass(frozen=True)
class Sample:
    """One input of a dataset: its path, its camera (25,) float32 and the styles it has an edit for."""

    path: str
    camera: np.ndarray
    styles: tuple[str, ...]


class _Files:
    """Read access to a dataset folder or zip by relative POSIX path. A zip is opened once per process (data-loader
    workers must not share one file position) and never pickled."""

    def __init__(self, root: Path):
        self.root = root
        self.is_zip = root.is_file()
        self._zip: tuple[int, zipfile.ZipFile] | None = None  # (process id, open archive)
        if self.is_zip:
            try:
                self.names = sorted(name for name in self.archive().namelist() if not name.endswith("/"))
            except zipfile.BadZipFile:
                raise DatasetError(f"{root} is neither a dataset folder nor a zip file") from None
        elif root.is_dir():
            self.names = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
        else:
            raise DatasetError(f"{root} is neither a dataset folder nor a zip file")

    def archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip[0] != os.getpid():
            self._zip = (os.getpid(), zipfile.ZipFile(self.root))
        return self._zip[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def read(self, name: str) -> bytes:
        return self.archive().read(name) if self.is_zip else (self.root / name).read_bytes()

    def image(self, name: str) -> Image.Image:
        with Image.open(io.BytesIO(self.read(name))) as image:
            return image.convert("RGB")

    def size(self, name: str) -> tuple[int, int]:
        """The image's size, from its header only (the pixels are not read)."""
        with (self.archive().open(name) if self.is_zip else open(self.root / name, "rb")) as file, \
                Image.open(file) as image:
            return image.size


def read_samples(files: _Files, resolution: int = RESOLUTION) -> list[Sample]:
    """Every input with its camera and styles, after checking the whole layout; `DatasetError` names what is wrong."""
    if LABELS not in files.names:
        raise DatasetError(f"{files.root}: no {LABELS} (the cameras of the input images)")
    try:
        labels = dict(json.loads(files.read(LABELS))["labels"])
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{files.root}/{LABELS} is not {{\"labels\": [[path, camera], ...]}} ({error})") from None
    images = [name for name in files.names if name.lower().endswith((".png", ".jpg", ".jpeg"))]
    inputs = [name for name in images if "_" not in name]
    if not inputs:
        raise DatasetError(f"{files.root}: no input images (folders like 00000/ holding .png files)")
    edits: dict[str, set[str]] = {}
    for name in images:
        if "_" in name.split("/")[0] and name.count("/") == 1:
            folder, file = name.split("/")
            edits.setdefault(folder, set()).add(file)
        elif "_" in name:
            raise DatasetError(f"{name}: an image outside the layout (inputs go in NNNNN/, edits in NNNNN_<style>/)")
    by_folder: dict[str, list[str]] = {}
    for name in inputs:
        if name.count("/") != 1:
            raise DatasetError(f"{name}: input images must sit one folder deep (NNNNN/<name>.png)")
        by_folder.setdefault(name.split("/")[0], []).append(name.split("/")[1])
    styles: dict[str, list[str]] = {}
    for style_folder, names in sorted(edits.items()):
        folder, style = style_folder.split("_", 1)
        if folder not in by_folder:
            raise DatasetError(f"{style_folder}/: style folder without its input folder {folder}/")
        stray = sorted(names - set(by_folder[folder]))
        missing = sorted(set(by_folder[folder]) - names)
        if stray or missing:
            problem = (f"{style_folder}/{stray[0]} has no input {folder}/{stray[0]}" if stray
                       else f"{style_folder}/ has no edit of {folder}/{missing[0]}")
            raise DatasetError(f"unmatched file names: {problem} ({len(stray)} without input, {len(missing)} missing)")
        styles.setdefault(folder, []).append(style)
    samples = []
    for name in inputs:
        folder = name.split("/")[0]
        if folder not in styles:
            raise DatasetError(f"{name}: its folder {folder}/ has no style folder ({folder}_<style>/)")
        if name not in labels:
            raise DatasetError(f"{name} has no camera in {LABELS}")
        camera = np.asarray(labels[name], dtype=np.float32)
        if camera.shape != (25,) or not np.isfinite(camera).all():
            raise DatasetError(f"{name}: its camera in {LABELS} is not 25 finite numbers")
        for path in [name] + [edited_path(name, style) for style in styles[folder]]:
            width, height = files.size(path)
            if (width, height) != (resolution, resolution):
                raise DatasetError(f"{path} is {width}x{height}, expected {resolution}x{resolution}")
        samples.append(Sample(name, camera, tuple(styles[folder])))
    return samples


class EditingDataset(torch.utils.data.Dataset):
    """Training items of a dataset folder or zip, validated on opening.

    ``dataset[i]`` = dict with ``input`` (3, S, S) and ``target`` (3, S, S) in [-1, 1] (S = ``image_size``, the
    editor's input size: 512 for the released model), ``reference`` the MAE input (3, 224, 224), ``camera`` (25,), and
    ``path``/``style``/``reference_path``. The style (when an input has several) and the reference (the same style on
    another input of the folder) are drawn from the seed, the epoch (:meth:`set_epoch`) and the index, so that every
    process of a distributed run and a resumed run draw the same.
    """

    def __init__(self, path: str | os.PathLike, resolution: int = RESOLUTION, seed: int = 0,
                 image_size: int = RESOLUTION):
        self.files = _Files(Path(path))
        self.samples = read_samples(self.files, resolution)
        self.seed, self.epoch, self.image_size = seed, 0, image_size
        self._folders: dict[str, list[str]] = {}
        for sample in self.samples:
            self._folders.setdefault(sample.path.split("/")[0], []).append(sample.path.split("/")[1])

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        style = sample.styles[int(rng.integers(len(sample.styles)))]
        folder, name = sample.path.split("/")
        others = [other for other in self._folders[folder] if other != name] or [name]
        reference = f"{folder}_{style}/{others[int(rng.integers(len(others)))]}"
        return {"input": preprocess_input(self.files.image(sample.path), self.image_size)[0],
                "target": preprocess_input(self.files.image(edited_path(sample.path, style)), self.image_size)[0],
                "reference": preprocess_reference(self.files.image(reference))[0],
                "camera": torch.from_numpy(sample.camera), "path": sample.path, "style": style,
                "reference_path": reference}


class DatasetWriter:
    """Writes a dataset folder: :meth:`add` puts one input and its edits in place (atomically, skipping nothing),
    :meth:`write_labels` writes ``dataset.json``. Samples are numbered; :func:`item_path` names their files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def has(self, index: int, styles: Iterable[str]) -> bool:
        """Whether sample ``index`` and its edits in ``styles`` are all written (a resumed run skips it)."""
        path = item_path(index)
        return all((self.root / p).is_file() for p in [path, *(edited_path(path, s) for s in styles)])

    def add(self, index: int, image: Image.Image, edits: dict[str, Image.Image]) -> str:
        """Write sample ``index``: the input and one edit per style (all RGB, the dataset's resolution)."""
        path = item_path(index)
        for relative, picture in [(path, image), *((edited_path(path, check_style(s)), e) for s, e in edits.items())]:
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda file, picture=picture: picture.convert("RGB").save(file, format="PNG"))
        return path

    def write_labels(self, cameras: dict[str, np.ndarray | list[float]]) -> Path:
        """``dataset.json`` with the camera of every input path (sorted), written atomically."""
        labels = [[path, [float(v) for v in np.asarray(camera, dtype=np.float64).reshape(-1)]]
                  for path, camera in sorted(cameras.items())]
        target = self.root / LABELS
        atomic_write(target, lambda file: file.write(json.dumps({"labels": labels}).encode()))
        return target
