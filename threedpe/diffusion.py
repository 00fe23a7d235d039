"""Text instructions -> reference images, through InstructPix2Pix (diffusers), cached.

The released 3DPE editor only takes a *reference image*: during training that reference was another person edited by
InstructPix2Pix (IP2P) with the same instruction. A text instruction therefore becomes a reference by running IP2P once
on an "anchor" portrait; later edits with that instruction cost only the feed-forward editor. This module holds

- `ImageEditor2D`, the small protocol for a 2D instruction editor, and `InstructPix2PixEditor`, its diffusers version;
- `TextReference`, which turns (instruction, settings, anchor, seed) into a reference image with a memory + disk cache
  (`ReferenceCache`), and runs the uncached "own photo" route;
- `default_anchors`, the public-domain anchor portraits shipped in ``examples/anchors``.

Images are PIL RGB images in [0, 255]; anchors and photos are square EG3D-style face crops.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

import torch
from PIL import Image

from threedpe.anchors import Anchor
from threedpe.cancel import CancelSignal, check
from threedpe.edit_settings import EditSettings
from threedpe.files import atomic_write
from threedpe.weights import INSTRUCT_PIX2PIX_REVISION

logger = logging.getLogger(__name__)


class _TorchvisionFallbackNote(logging.Filter):
    """Drops transformers' note that its image processors fall back to PIL without torchvision: this project never
    uses them (diffusers imports them), and the note would greet every user at start-up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNote())


class PromptError(ValueError):
    """The instruction cannot be used as given (empty, or longer than the text encoder's context)."""


def edit_key(instruction: str, settings: EditSettings, image_id: str, seed: int, model: str) -> tuple[str, dict]:
    """(hex key, the fields it hashes) of one InstructPix2Pix edit of the image ``image_id`` (its fingerprint): the
    key of the text-reference cache, which the training-data generator shares."""
    fields = {"instruction": instruction, "settings": asdict(settings), "anchor": image_id, "seed": int(seed),
              "model": model}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest(), fields


def normalise_instruction(instruction: str) -> str:
    """Strip the instruction and collapse runs of whitespace; raise `PromptError` when nothing is left."""
    text = " ".join(instruction.split())
    if not text:
        raise PromptError("the instruction is empty; describe the edit, e.g. 'make it a bronze statue'")
    return text


class ImageEditor2D(Protocol):
    """A 2D instruction-following image editor (InstructPix2Pix or a stand-in)."""

    @property
    def identity(self) -> str:
        """Stable text naming the model, its revision and numeric precision; part of every cache key."""
        ...

    def edit(
        self,
        images: list[Image.Image],
        instruction: str,
        settings: EditSettings,
        seed: int,
        cancel: CancelSignal | None = None,
    ) -> list[Image.Image]:
        """Edit each square RGB image by `instruction`; returns RGB images of side `settings.resolution`."""
        ...


class InstructPix2PixEditor:
    """`ImageEditor2D` backed by diffusers' `StableDiffusionInstructPix2PixPipeline` with an Euler-ancestral sampler."""

    def __init__(self, pipeline: Any, identity: str) -> None:
        self.pipeline = pipeline
        self._identity = identity

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        revision: str = INSTRUCT_PIX2PIX_REVISION,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> InstructPix2PixEditor:
        """Load a diffusers IP2P folder or Hub repo id (`revision` applies to repo ids only).

        device defaults to CUDA when available, else CPU; dtype to float16 on CUDA and float32 elsewhere.
        No safety checker or feature extractor is loaded.
        """
        # diffusers takes seconds to import; only loading a model pays for it.
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        folder = Path(source)
        if folder.is_dir():
            load_kwargs: dict[str, Any] = {}
            origin = f"local:{_folder_fingerprint(folder)}"
        else:
            load_kwargs = {"revision": revision}
            origin = f"hub:{source}@{revision}"
        pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(source),
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **load_kwargs,
        )
        pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
        return cls(pipeline, identity=f"{origin}|{str(dtype).removeprefix('torch.')}").to(device)

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def to(self, device: str | torch.device) -> InstructPix2PixEditor:
        """Move the pipeline to `device` (in place); returns self."""
        self.pipeline.to(device)
        return self

    @property
    def max_tokens(self) -> int:
        """Text-encoder context length in tokens, start and end tokens included (77 for CLIP)."""
        return int(self.pipeline.tokenizer.model_max_length)

    def count_tokens(self, instruction: str) -> int:
        """Number of CLIP tokens of `instruction`, start and end tokens included, without truncation."""
        return len(self.pipeline.tokenizer(instruction, truncation=False, verbose=False)["input_ids"])

    def check_instruction(self, instruction: str) -> str:
        """Normalised instruction; `PromptError` when it is empty or does not fit the text encoder."""
        text = normalise_instruction(instruction)
        count = self.count_tokens(text)
        if count > self.max_tokens:
            raise PromptError(
                f"the instruction is {count} CLIP tokens long (start/end tokens included) but the limit is "
                f"{self.max_tokens}; shorten it"
            )
        return text

    def edit(
        self,
        images: list[Image.Image],
        instruction: str,
        settings: EditSettings,
        seed: int,
        cancel: CancelSignal | None = None,
    ) -> list[Image.Image]:
        """Edit square RGB images; each image gets its own CPU generator seeded with `seed`, so a result does not
        depend on what else is in the batch (up to float rounding). Returns RGB images of side `settings.resolution`.
        Progress shows as a tqdm bar; `cancel` is checked after every step and raises `Cancelled`."""
        text = self.check_instruction(instruction)
        if not images:
            raise ValueError("no images to edit")
        for image in images:
            if image.width != image.height:
                raise ValueError(f"expected square (aligned) images, got {image.width}x{image.height}")
        side = settings.resolution
        inputs = [image.convert("RGB").resize((side, side), Image.LANCZOS) for image in images]
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in inputs]

        def stop_if_cancelled(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
            check(cancel, f"after denoising step {step + 1} of {settings.steps}")
            return tensors

        check(cancel, "before the 2D edit started")
        result = self.pipeline(
            prompt=[text] * len(inputs),
            image=inputs,
            num_inference_steps=settings.steps,
            guidance_scale=settings.text_guidance,
            image_guidance_scale=settings.image_guidance,
            generator=generators,
            output_type="pil",
            callback_on_step_end=stop_if_cancelled,
        )
        return [image.convert("RGB") for image in result.images]


def _folder_fingerprint(folder: Path) -> str:
    """Short hash of a model folder: contents of its config/tokenizer text files, sizes of its weight files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.suffix in {".json", ".txt"}:
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def image_fingerprint(image: Image.Image) -> str:
    """sha256 of an image's RGB pixels and size (identifies an anchor independent of its file)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


@dataclass
class CacheStats:
    """Counts of `TextReference.reference` lookups."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class ReferenceCache:
    """Images by key: an in-memory LRU of `max_items`, backed (when `folder` is given) by ``<key>.png`` +
    ``<key>.json`` files in `folder`, at most `max_bytes` in total; least recently used entries go first.
    Files are written atomically (temporary file + rename), so readers never see half an entry."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_bytes: int = 512 << 20, max_items: int = 32):
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"max_items and max_bytes must be >= 1, got {max_items}, {max_bytes}")
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._memory: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> tuple[Image.Image, Literal["memory", "disk"]] | None:
        """A copy of the cached image and where it came from, or None."""
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key].copy(), "memory"
            image = self._read_disk(key)
            if image is None:
                return None
            self._remember(key, image)
            return image.copy(), "disk"

    def put(self, key: str, image: Image.Image, metadata: dict) -> None:
        """Store `image` (RGB) under `key`; `metadata` (JSON-serialisable) is written next to it on disk."""
        with self._lock:
            self._remember(key, image.convert("RGB"))
            if self.folder is None:
                return
            png, meta = self._paths(key)
            atomic_write(png, lambda f: image.convert("RGB").save(f, format="PNG"))
            atomic_write(meta, lambda f: f.write(json.dumps({"key": key, **metadata}, indent=1).encode()))
            _touch(meta)
            self._evict_disk()

    def disk_bytes(self) -> int:
        """Total size of the complete entries on disk."""
        return sum(size for _, size, _ in self._disk_entries())

    def _remember(self, key: str, image: Image.Image) -> None:
        self._memory[key] = image
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"{key}.png", self.folder / f"{key}.json"

    def _read_disk(self, key: str) -> Image.Image | None:
        if self.folder is None:
            return None
        png, meta = self._paths(key)
        if not (png.is_file() and meta.is_file()):
            return None
        try:
            with Image.open(png) as file:
                image = file.convert("RGB")
        except OSError as error:
            logger.warning("dropping unreadable cache entry %s: %s", png, error)
            meta.unlink(missing_ok=True)
            png.unlink(missing_ok=True)
            return None
        _touch(meta)
        return image

    def _disk_entries(self) -> list[tuple[int, int, str]]:
        """(last use in ns, bytes, key) of every complete entry."""
        assert self.folder is not None
        entries = []
        for meta in self.folder.glob("*.json"):
            png = meta.with_suffix(".png")
            try:
                entries.append((meta.stat().st_mtime_ns, meta.stat().st_size + png.stat().st_size, meta.stem))
            except FileNotFoundError:  # half-deleted by a concurrent eviction, or a stray file
                continue
        return entries

    def _evict_disk(self) -> None:
        entries = sorted(self._disk_entries())
        total = sum(size for _, size, _ in entries)
        for _, size, key in entries:
            if total <= self.max_bytes:
                break
            png, meta = self._paths(key)
            meta.unlink(missing_ok=True)
            png.unlink(missing_ok=True)
            total -= size


def _touch(path: Path) -> None:
    """Set the modification time to now with full clock resolution (it orders entries for eviction)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


@dataclass(frozen=True)
class ReferenceResult:
    """A reference image for the 3DPE editor. image: RGB, side `settings.resolution`; source: where it came from."""

    image: Image.Image
    key: str
    source: Literal["memory", "disk", "editor"]


class TextReference:
    """Turns a text instruction into a reference image by editing an anchor portrait with a 2D editor, cached.

    A repeated request (same normalised instruction, settings, anchor pixels, seed and model) never calls the editor
    again: it is served from memory or from `cache_dir`.
    """

    def __init__(
        self,
        editor: ImageEditor2D,
        anchors: Sequence[Anchor],
        cache_dir: str | os.PathLike[str] | None = None,
        max_disk_bytes: int = 512 << 20,
        max_memory_items: int = 32,
    ) -> None:
        if not anchors:
            raise ValueError("TextReference needs at least one anchor portrait")
        self.editor = editor
        self.anchors = list(anchors)
        self._anchor_ids: dict[int, str] = {}
        self.cache = ReferenceCache(cache_dir, max_bytes=max_disk_bytes, max_items=max_memory_items)
        self.stats = CacheStats()

    def anchor_index(self, anchor: int | str) -> int:
        """The index of an anchor given by index or by name; `PromptError` naming the choices otherwise."""
        names = [a.name for a in self.anchors]
        if isinstance(anchor, str) and anchor in names:
            return names.index(anchor)
        if isinstance(anchor, int) and 0 <= anchor < len(names):
            return anchor
        raise PromptError(f"unknown anchor {anchor!r}: choose one of {', '.join(names)} (or 0..{len(names) - 1})")

    def cache_key(self, instruction: str, settings: EditSettings, anchor: int | str, seed: int) -> tuple[str, dict]:
        """(hex key, the fields it hashes) for a request; the instruction is normalised first."""
        index = self.anchor_index(anchor)
        if index not in self._anchor_ids:
            self._anchor_ids[index] = image_fingerprint(self.anchors[index].image())
        return edit_key(normalise_instruction(instruction), settings, self._anchor_ids[index], seed,
                        self.editor.identity)

    def reference(
        self,
        instruction: str,
        settings: EditSettings = EditSettings(),
        anchor: int | str = 0,
        seed: int = 0,
        cancel: CancelSignal | None = None,
    ) -> ReferenceResult:
        """The anchor (index or name) edited by `instruction`: from the cache, or one 2D edit that is then cached."""
        key, fields = self.cache_key(instruction, settings, anchor, seed)
        cached = self.cache.get(key)
        if cached is not None:
            image, source = cached
            if source == "memory":
                self.stats.memory_hits += 1
            else:
                self.stats.disk_hits += 1
            return ReferenceResult(image, key, source)
        self.stats.misses += 1
        anchor_image = self.anchors[self.anchor_index(anchor)].image()
        (image,) = self.editor.edit([anchor_image], fields["instruction"], settings, seed, cancel)
        self.cache.put(key, image, fields)
        return ReferenceResult(image.copy(), key, "editor")

    def edit_photo(
        self,
        photo: Image.Image,
        instruction: str,
        settings: EditSettings = EditSettings(),
        seed: int = 0,
        cancel: CancelSignal | None = None,
    ) -> Image.Image:
        """The "own photo" route: the aligned `photo` itself edited by `instruction` (not cached)."""
        (image,) = self.editor.edit([photo], normalise_instruction(instruction), settings, seed, cancel)
        return image
