"""The sample library: (before, after) samples of an edit and the training pairs built from them.

Two sources of :class:`StyleSample` (512^2 RGB ``before`` and ``after`` images of one identity, its camera):

* :class:`SyntheticSamples`, the diffusion-based data generator: an EG3D identity per seed (truncation psi),
  rendered at a random pose in the training ranges (those of Live3D's input views: yaw +-49, pitch +-26 degrees
  from frontal, fov 18.837 +- 2.4 degrees, principal point 0.5 +- 0.1), edited by a 2D instruction editor
  (InstructPix2Pix) in batches, each edit cached on disk. Seed -> identity, pose and edit is deterministic and
  per sample, so generation can be sharded over ranks (:func:`shard_seeds`).
* :func:`photo_pairs`, the user's own photos: a folder with ``before/`` and ``after/`` subfolders holding files
  of the same names (``before/anna.jpg`` and ``after/anna.png`` are one pair; .png, .jpg, .jpeg, .webp). Each
  pair is cropped with the alignment of its *before* photo, so both images get exactly the same crop.

A failed 2D edit is marked (``StyleSample.failure``) by :class:`EditCheck` and left out of the pairs.
:func:`training_pairs` then pairs each identity's input and target with the edit of ANOTHER identity as the
reference, as the official loader does. ``StyleSample.relative_path`` and ``camera`` are what the official
dataset layout (``NNNNN/<name>.png``, ``NNNNN_<style>/<name>.png``, ``dataset.json``) needs.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from threedpe import cameras
from threedpe.alignment import AlignedFace, NoFaceError, align_face, crop_aligned
from threedpe.cancel import CancelSignal, check
from threedpe.diffusion import ImageEditor2D, ReferenceCache, edit_key, image_fingerprint, normalise_instruction
from threedpe.edit_settings import EditSettings
from threedpe.images import load_image
from threedpe.models.generator import TriPlaneGenerator
from threedpe.training.data import PER_FOLDER, RESOLUTION, edited_path
from threedpe.training.objective import NovelViewRanges, random_novel_camera
from threedpe.video import to_image
from threedpe.weights import EG3D_WEIGHTS, MissingWeightsError, local_eg3d_weights

SAMPLE_SIZE = RESOLUTION  # the dataset layout's image size
POSE_RANGES = NovelViewRanges()  # Live3D draws its input views in the ranges of 3DPE's novel views
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DataError(ValueError):
    """Training data that cannot be used as given (too few samples, mismatched photo folders)."""


@dataclass(frozen=True)
class EditCheck:
    """The cheap failed-edit test. Both images are box-downscaled to ``size``^2 in [0, 1]; an edit fails when

    * fewer than ``min_changed_area`` of the pixels moved by more than ``pixel_change`` (max over RGB):
      "changed almost nothing" (InstructPix2Pix returned the input, up to its VAE round trip), or
    * the edited image's grayscale standard deviation is below ``min_contrast``: "nearly uniform" (a black or
      washed-out output).

    Measured on the 512^2 anchor portrait (changed area / contrast): unchanged, JPEG q50, blur 1.5 px, a x8
    down-up resample (a bound on the VAE round trip), noise sigma 8: area <= 0.0002; a 2 px shift 0.049; a small
    local edit (moustache) 0.022, sunglasses 0.039; global restyles (gold, sepia, grayscale, hue, blue tint)
    0.64-1.0. Contrast: the source 0.258, every restyle >= 0.23, black/grey/flat/grey+noise images <= 0.002.
    """

    size: int = 64
    pixel_change: float = 0.1
    min_changed_area: float = 0.01
    min_contrast: float = 0.02

    def measure(self, before: Image.Image, after: Image.Image) -> dict[str, float]:
        """``changed_area`` (fraction of pixels moved by more than ``pixel_change``), ``mean_change`` and the
        edited image's ``contrast``."""
        def small(image: Image.Image, mode: str) -> np.ndarray:
            resized = image.convert(mode).resize((self.size, self.size), Image.Resampling.BOX)
            return np.asarray(resized, dtype=np.float32) / 255

        change = np.abs(small(after, "RGB") - small(before, "RGB")).max(axis=-1)
        return {"changed_area": float((change > self.pixel_change).mean()), "mean_change": float(change.mean()),
                "contrast": float(small(after, "L").std())}

    def __call__(self, before: Image.Image, after: Image.Image) -> str | None:
        """Why the edit failed, or None when it passes."""
        measured = self.measure(before, after)
        if measured["contrast"] < self.min_contrast:
            return f"the edit is nearly uniform (contrast {measured['contrast']:.3f} < {self.min_contrast})"
        if measured["changed_area"] < self.min_changed_area:
            return (f"the edit changed almost nothing ({measured['changed_area']:.1%} of the image changed, "
                    f"less than {self.min_changed_area:.0%})")
        return None


@dataclass(frozen=True)
class StyleSample:
    """One identity before and after the edit: ``before``/``after`` RGB (512^2), ``camera`` (25,) the view of
    ``before`` (the frontal camera for photos), ``seed`` the EG3D seed (None for a photo), ``failure`` why the
    edit was rejected (None when usable). ``name`` is the file stem (``img%08d`` of the seed for EG3D samples)."""

    name: str
    before: Image.Image
    after: Image.Image
    camera: torch.Tensor
    seed: int | None = None
    failure: str | None = None

    def relative_path(self, style: str | None = None) -> str:
        """Where the official layout keeps this image: ``NNNNN/<name>.png`` (before) or ``NNNNN_<style>/<name>.png``
        (after), NNNNN = seed // 1000 (0 for photos)."""
        path = f"{(self.seed or 0) // PER_FOLDER:05d}/{self.name}.png"
        return edited_path(path, style) if style else path


@dataclass(frozen=True)
class TrainingPair:
    """One training example: ``input`` (identity ``name`` before), ``reference`` (ANOTHER identity,
    ``reference_name``, after), ``target`` (identity ``name`` after) and ``camera`` (25,), the input's view."""

    input: Image.Image
    reference: Image.Image
    target: Image.Image
    camera: torch.Tensor
    name: str
    reference_name: str

    def fingerprint(self) -> str:
        """sha256 of the names, the three images' pixels and the camera."""
        parts = [self.name, self.reference_name, *map(image_fingerprint, (self.input, self.reference, self.target)),
                 self.camera.float().cpu().numpy().tobytes().hex()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def usable(samples: Sequence[StyleSample]) -> list[StyleSample]:
    """The samples whose edit passed the check."""
    return [sample for sample in samples if sample.failure is None]


def training_pairs(samples: Sequence[StyleSample], references: int | None = None, seed: int = 0) -> list[TrainingPair]:
    """Pairs of the usable samples: for each identity, ``references`` other identities' edits as references
    (all of them when None; chosen at random with ``seed`` otherwise). Raises ``DataError`` below 2 identities."""
    kept = usable(samples)
    if len(kept) < 2:
        raise DataError(f"pairs need at least 2 usable samples (each references another identity's edit); "
                        f"got {len(kept)} of {len(samples)}")
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for index, sample in enumerate(kept):
        others = [other for other in range(len(kept)) if other != index]
        if references is not None and references < len(others):
            others = [others[i] for i in torch.randperm(len(others), generator=generator)[:references].tolist()]
        pairs += [TrainingPair(sample.before, kept[other].after, sample.after, sample.camera, sample.name,
                               kept[other].name) for other in others]
    return pairs


def shard_seeds(count: int, start: int = 0, rank: int = 0, world_size: int = 1) -> list[int]:
    """The seeds ``start .. start + count - 1`` that ``rank`` of ``world_size`` generates (every world_size-th)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(range(start + rank, start + count, world_size))


def load_generator(folder: str | os.PathLike) -> TriPlaneGenerator:
    """The EG3D generator of a weight folder; ``MissingWeightsError`` naming the file when it is absent."""
    path = local_eg3d_weights(folder)
    if path is None:
        raise MissingWeightsError(
            f"synthetic training pairs need the EG3D generator, and none of {', '.join(EG3D_WEIGHTS)} is in "
            f"{Path(folder).resolve()}; a folder of your own before/after photo pairs works without it",
            filename=EG3D_WEIGHTS[-1], folder=Path(folder))
    return TriPlaneGenerator.from_pretrained(path)


class SyntheticSamples:
    """The diffusion-based data generator: ``samples(seeds)`` yields one :class:`StyleSample` per seed, in order.

    seed -> identity ``generator.sample(seed, truncation_psi)`` (frontal conditioning), pose
    ``random_novel_camera`` drawn from ``torch.Generator().manual_seed(seed)`` in ``ranges``; every render is
    edited with ``instruction`` at ``settings`` and ``edit_seed``, ``batch_size`` images per 2D editor call.
    Edits are cached in memory and in ``cache_dir`` under the fields of the text-reference cache (the render's
    pixels in the anchor's place), so a repeated run edits nothing again.
    """

    def __init__(self, generator: TriPlaneGenerator, editor: ImageEditor2D, instruction: str, *,
                 settings: EditSettings = EditSettings(), truncation_psi: float = 0.7, edit_seed: int = 0,
                 batch_size: int = 4, cache_dir: str | os.PathLike | None = None, check_edit: EditCheck = EditCheck(),
                 ranges: NovelViewRanges = POSE_RANGES, max_cache_bytes: int = 1 << 30) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.generator = generator.eval()
        self.editor = editor
        self.instruction = normalise_instruction(instruction)
        self.settings = settings
        self.truncation_psi = truncation_psi
        self.edit_seed = edit_seed
        self.batch_size = batch_size
        self.check_edit = check_edit
        self.ranges = ranges
        self.cache = ReferenceCache(cache_dir, max_bytes=max_cache_bytes, max_items=2 * batch_size)

    def describe(self) -> dict:
        """What determines the samples besides the seeds (for a style's metadata)."""
        return {"kind": "instruction", "instruction": self.instruction, "settings": asdict(self.settings),
                "truncation_psi": self.truncation_psi, "edit_seed": self.edit_seed, "edit_model": self.editor.identity}

    def render(self, seed: int) -> tuple[Image.Image, torch.Tensor]:
        """The identity of ``seed`` at its pose: RGB image (512^2) and camera (25,)."""
        device = next(self.generator.parameters()).device
        cams, _ = random_novel_camera(1, torch.Generator().manual_seed(seed), self.ranges)
        with torch.inference_mode():
            planes, ws = self.generator.sample(seed, self.truncation_psi)
            image = self.generator.render(planes, ws, cams.to(device), deterministic=True)["image"]
        return to_image(image[0], SAMPLE_SIZE), cams[0]

    def cache_key(self, image: Image.Image) -> tuple[str, dict]:
        """(hex key, hashed fields) of the edit of ``image``; the fields of ``TextReference.cache_key``."""
        return edit_key(self.instruction, self.settings, image_fingerprint(image), self.edit_seed, self.editor.identity)

    def samples(self, seeds: Sequence[int], cancel: CancelSignal | None = None, progress: bool = True,
                desc: str = "training samples", position: int | None = None) -> Iterator[StyleSample]:
        """One sample per seed, in order, as soon as its batch is edited (failed edits included, marked); a progress
        bar labelled ``desc`` on line ``position`` (one per process of a sharded run)."""
        with tqdm(total=len(seeds), desc=desc, unit="sample", disable=not progress, position=position) as bar:
            for start in range(0, len(seeds), self.batch_size):
                check(cancel, f"after {start} of {len(seeds)} training samples")
                batch = list(seeds[start:start + self.batch_size])
                renders = [self.render(seed) for seed in batch]
                keys = [self.cache_key(image) for image, _ in renders]
                edits = [None if hit is None else hit[0] for hit in (self.cache.get(key) for key, _ in keys)]
                missing = [i for i, edit in enumerate(edits) if edit is None]
                if missing:
                    fresh = self.editor.edit([renders[i][0] for i in missing], self.instruction, self.settings,
                                             self.edit_seed, cancel)
                    for i, edit in zip(missing, fresh):
                        self.cache.put(keys[i][0], edit, keys[i][1])
                        edits[i] = edit
                for seed, (image, camera), edit in zip(batch, renders, edits):
                    edit = edit.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BICUBIC) \
                        if edit.size != (SAMPLE_SIZE, SAMPLE_SIZE) else edit
                    bar.update(1)
                    yield StyleSample(f"img{seed:08d}", image, edit, camera, seed, self.check_edit(image, edit))


def photo_pairs(folder: str | os.PathLike, aligned: bool = False, check_edit: EditCheck = EditCheck(),
                cancel: CancelSignal | None = None) -> list[StyleSample]:
    """The user's (before, after) photos of ``folder`` (see the module docstring), as 512^2 samples with the
    frontal camera. Each pair gets the EG3D crop of its *before* photo (``aligned=True``: both are already aligned
    crops, only resized). ``DataError`` for mismatched folders or sizes; ``NoFaceError`` naming the photo."""
    folder = Path(folder)
    sides = {}
    for side in ("before", "after"):
        path = folder / side
        if not path.is_dir():
            raise DataError(f"{folder} must hold the subfolders before/ and after/ (files of the same names are one "
                            f"pair); {path} is missing")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        stems = [p.stem for p in files]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise DataError(f"{path} has several images named {repeated[0]} (different extensions)")
        sides[side] = {p.stem: p for p in files}
    only_before = sorted(set(sides["before"]) - set(sides["after"]))
    only_after = sorted(set(sides["after"]) - set(sides["before"]))
    if only_before or only_after:
        problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for label, names in (("only in before/", only_before), ("only in after/", only_after)) if names]
        raise DataError(f"the photo folders of {folder} do not match ({'; '.join(problems)}); every photo needs its "
                        "counterpart of the same name")
    if not sides["before"]:
        raise DataError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {folder / 'before'}")
    samples = []
    frontal = cameras.frontal_camera()[0]
    for index, name in enumerate(sorted(sides["before"])):
        check(cancel, f"after {index} photo pairs")
        before, after = load_image(sides["before"][name]), load_image(sides["after"][name])
        if before.size != after.size:
            raise DataError(f"the photos named {name} differ in size ({before.width}x{before.height} before, "
                            f"{after.width}x{after.height} after); the after photo must be the edited before photo")
        before, after = _same_crop(before, after, aligned, sides["before"][name])
        samples.append(StyleSample(name, before, after, frontal, None, check_edit(before, after)))
    return samples


def _same_crop(before: Image.Image, after: Image.Image, aligned: bool, path: Path) -> tuple[Image.Image, Image.Image]:
    """Both photos cropped like ``before`` (its alignment), or resized when they are aligned crops already."""
    if aligned:
        if before.width != before.height:
            raise DataError(f"{path.name} is {before.width}x{before.height}; aligned photos are square crops")
        return tuple(image.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BICUBIC) for image in (before, after))
    try:
        face: AlignedFace = align_face(before)
    except NoFaceError as error:
        raise NoFaceError(f"{path.name}: {error}") from None
    return face.image, crop_aligned(after, face.params)
