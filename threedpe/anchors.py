"""Anchor portraits: the faces a text instruction is applied to before the edit becomes a style reference.

Two kinds, both 512x512 EG3D-style crops:

- the public-domain photos shipped in ``examples/anchors`` (always available, one person);
- frontal samples of the EG3D generator from fixed seeds, drawn as the paper's training pairs were (several
  identities), when the EG3D weights are in the weight folder. They are rendered on first use and kept on disk.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from threedpe import cameras
from threedpe.models.generator import TriPlaneGenerator
from threedpe.video import to_image

ANCHOR_DIR = Path(__file__).resolve().parents[1] / "examples" / "anchors"
ANCHOR_SIZE = 512
EG3D_ANCHOR_SEEDS = (0, 1, 2, 3, 4, 5)
EG3D_ANCHOR_TRUNCATION = 0.7
SHIPPED_LABELS = {"astronaut": "Astronaut photo (NASA, public domain)",
                  "astronaut_flip": "Astronaut photo, mirrored (NASA, public domain)"}


@dataclass(eq=False)
class Anchor:
    """A named anchor portrait whose image is produced on first use. ``name`` is stable (cache keys, API
    arguments); ``label`` is for people."""

    name: str
    label: str
    load: Callable[[], Image.Image] = field(repr=False)
    _image: Image.Image | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_image(cls, name: str, image: Image.Image, label: str | None = None) -> Anchor:
        rgb = image.convert("RGB")
        return cls(name, label or name, lambda: rgb)

    def image(self) -> Image.Image:
        """The anchor as an RGB image (computed once, then shared; callers get a copy)."""
        with self._lock:
            if self._image is None:
                self._image = self.load().convert("RGB")
            return self._image.copy()


def shipped_anchors(folder: str | os.PathLike = ANCHOR_DIR) -> list[Anchor]:
    """The anchor photos (``*.png`` in ``folder``, sorted by name)."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no anchor portraits (*.png) in {folder}")

    def reader(path: Path) -> Callable[[], Image.Image]:
        def read() -> Image.Image:
            with Image.open(path) as file:
                return file.convert("RGB")
        return read

    return [Anchor(path.stem, SHIPPED_LABELS.get(path.stem, path.stem), reader(path)) for path in paths]


class _GeneratorRenders:
    """Frontal renders of an EG3D weight file, one per seed, loading the generator once when first needed and
    keeping every render as a PNG in ``cache_dir`` (named by the file's fingerprint, the seed and psi)."""

    def __init__(self, weights: Path, cache_dir: Path, truncation_psi: float, device: Callable[[], torch.device]):
        stat = weights.stat()
        key = f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        self.fingerprint = hashlib.sha256(key).hexdigest()[:12]
        self.weights, self.cache_dir, self.psi, self.device = weights, cache_dir, truncation_psi, device
        self._generator = None
        self._lock = threading.Lock()

    def render(self, seed: int) -> Image.Image:
        path = self.cache_dir / f"eg3d-{self.fingerprint}-seed{seed}-psi{self.psi:g}.png"
        if path.is_file():
            with Image.open(path) as file:
                return file.convert("RGB")
        with self._lock:
            if self._generator is None:
                self._generator = TriPlaneGenerator.from_pretrained(self.weights)
            generator = self._generator.to(self.device())
            with torch.inference_mode():
                planes, ws = generator.sample(seed, self.psi)
                out = generator.render(planes, ws, cameras.frontal_camera().to(planes.device), deterministic=True)
        image = to_image(out["image"][0], ANCHOR_SIZE)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        image.save(staged, format="PNG")
        os.replace(staged, path)
        return image


def eg3d_anchors(weights: str | os.PathLike, cache_dir: str | os.PathLike, seeds: tuple[int, ...] = EG3D_ANCHOR_SEEDS,
                 truncation_psi: float = EG3D_ANCHOR_TRUNCATION,
                 device: Callable[[], torch.device] = lambda: torch.device("cpu")) -> list[Anchor]:
    """Frontal EG3D samples (seed -> identity, truncation ``truncation_psi``) as anchors, rendered lazily on the
    device that ``device()`` names at that time."""
    renders = _GeneratorRenders(Path(weights), Path(cache_dir), truncation_psi, device)
    return [Anchor(f"eg3d-seed{seed}", f"EG3D sample, seed {seed}", lambda seed=seed: renders.render(seed))
            for seed in seeds]
