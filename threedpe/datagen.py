"""Training data for customising the editor to a new edit: (before, after) samples and the pairs built from them.

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

Datasets at scale (``torchrun --nproc_per_node N -m threedpe.datagen ...``, see :func:`build_parser`): each rank
writes the seeds :func:`shard_seeds` gives it (:func:`generate_shard`: its samples' files and its labels shard
``shards/rank<R>.jsonl``, skipping what a previous run wrote), then rank 0 writes ``dataset.json``
(:func:`finish_dataset`). The result is a :class:`threedpe.data.EditingDataset` as it is.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from threedpe import cameras
from threedpe.alignment import AlignedFace, NoFaceError, align_face, crop_aligned
from threedpe.cancel import CancelSignal, check
from threedpe.checkpoints import MissingWeightsError
from threedpe.data import (LABELS, PER_FOLDER, RESOLUTION, DatasetWriter, EditingDataset, check_style, edited_path,
                           item_path)
from threedpe.diffusion import (EditSettings, ImageEditor2D, ReferenceCache, edit_key, image_fingerprint,
                                normalise_instruction)
from threedpe.models.generator import TriPlaneGenerator
from threedpe.images import load_image
from threedpe.objective import NovelViewRanges, random_novel_camera
from threedpe.pipeline import EG3D_WEIGHTS, local_eg3d_weights
from threedpe.video import to_uint8

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
        rendered = Image.fromarray(to_uint8(image[0]))
        if rendered.size != (SAMPLE_SIZE, SAMPLE_SIZE):  # small test generators
            rendered = rendered.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BICUBIC)
        return rendered, cams[0]

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


# --- sharded generation into the dataset layout ----------------------------------------------------------------------

SHARDS = "shards"  # <dataset>/shards/rank<R>.jsonl: one line per generated seed (no image suffix: never read as data)
BARRIER_TIMEOUT = timedelta(hours=24)  # how long finished ranks wait for the slowest one


def style_slug(instruction: str) -> str:
    """The style folder name of an instruction: its lower-case letters and digits, words joined by ``-`` (at most
    60 characters), e.g. ``"Make it a bronze statue!"`` -> ``make-it-a-bronze-statue``."""
    slug = "-".join(re.findall(r"[a-z0-9]+", instruction.lower()))[:60].strip("-")
    if not slug:
        raise DataError(f"the instruction {instruction!r} has no letters or digits to name its style folder; "
                        "name it with --style")
    return check_style(slug)


def read_shards(root: str | os.PathLike) -> list[dict]:
    """Every line of every labels shard of ``root`` (a line cut short by a crash is skipped): ``{"seed", "style",
    "path", "camera"}`` for a written sample, ``{"seed", "style", "path", "failure"}`` for a failed edit."""
    entries = []
    for shard in sorted((Path(root) / SHARDS).glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


@dataclass(frozen=True)
class ShardReport:
    """What one rank did with its ``seeds``: samples ``written`` now, ``skipped`` (all files already there) and
    ``failed`` edits (now, or recorded by an earlier run and not tried again)."""

    rank: int
    seeds: int
    written: int
    skipped: int
    failed: int


def generate_shard(source: SyntheticSamples, root: str | os.PathLike, style: str, seeds: Sequence[int], rank: int = 0,
                   *, cancel: CancelSignal | None = None, progress: bool = True,
                   position: int | None = None) -> ShardReport:
    """Write the samples of ``seeds`` into the dataset folder ``root`` (sample index = seed; the edit in the style
    folder ``style``), skipping seeds whose input and edit are both there or whose edit failed before. Each seed is
    logged to this rank's labels shard (camera or failure) before its files are written, so a restarted rank finds
    every written sample's camera. Failed edits write no image."""
    writer = DatasetWriter(root)
    check_style(style)
    failed_before = {entry["seed"] for entry in read_shards(root) if entry["style"] == style and "failure" in entry}
    present = {seed for seed in seeds if writer.has(seed, [style])}
    not_retried = (set(seeds) & failed_before) - present
    todo = [seed for seed in seeds if seed not in present and seed not in not_retried]
    shard = writer.root / SHARDS / f"rank{rank:05d}.jsonl"
    shard.parent.mkdir(exist_ok=True)
    written, failed = 0, len(not_retried)
    with shard.open("a") as log:
        for sample in source.samples(todo, cancel, progress, desc=f"rank {rank}", position=position):
            entry = {"seed": sample.seed, "style": style, "path": item_path(sample.seed)}
            entry.update({"failure": sample.failure} if sample.failure else {"camera": sample.camera.tolist()})
            log.write(json.dumps(entry) + "\n")
            log.flush()
            if sample.failure:
                failed += 1
            else:
                writer.add(sample.seed, sample.before, {style: sample.after})
                written += 1
    return ShardReport(rank, len(seeds), written, len(present), failed)


@dataclass(frozen=True)
class DatasetSummary:
    """The dataset after :func:`finish_dataset`: ``samples`` inputs with their edits in the style names ``styles``;
    ``failed`` edits (seed and style) left out, ``dropped`` of them samples whose files in other styles were removed;
    ``labels`` the ``dataset.json`` written."""

    samples: int
    styles: tuple[str, ...]
    failed: int
    dropped: int
    labels: Path


def finish_dataset(root: str | os.PathLike) -> DatasetSummary:
    """``dataset.json`` for the dataset folder ``root`` once every rank has finished (rank 0, after a barrier).

    The cameras are those of an existing ``dataset.json`` and of the labels shards. A sample is kept when its input
    and an edit in every style folder of its ``NNNNN`` folder are there (the official loader's rule). A sample whose
    edit failed in one of those styles is dropped: its files are removed. Any other gap (a style generated for only
    some inputs of a folder) is a ``DataError`` naming it; the result is checked by opening it as a dataset.
    """
    root = Path(root)
    cameras_of: dict[str, list[float]] = {}
    if (root / LABELS).is_file():
        try:
            cameras_of.update(dict(json.loads((root / LABELS).read_text())["labels"]))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{root / LABELS} is not {{\"labels\": [[path, camera], ...]}} ({error})") from None
    failures: set[tuple[str, str]] = set()
    for entry in read_shards(root):
        if "camera" in entry:
            cameras_of[entry["path"]] = entry["camera"]
        else:
            failures.add((entry["path"], entry["style"]))
    failures = {(path, style) for path, style in failures if not (root / edited_path(path, style)).is_file()}
    styles_of = {folder.name.split("_", 1)[0]: [] for folder in root.glob("[0-9][0-9][0-9][0-9][0-9]")}
    for folder in root.glob("[0-9][0-9][0-9][0-9][0-9]_*"):
        styles_of.setdefault(folder.name.split("_", 1)[0], []).append(folder.name.split("_", 1)[1])
    kept, drop = {}, []
    for image in sorted(root.glob("[0-9][0-9][0-9][0-9][0-9]/*.png")):
        path = image.relative_to(root).as_posix()
        styles = styles_of[path.split("/")[0]]
        missing = [style for style in styles if not (root / edited_path(path, style)).is_file()]
        if missing and all((path, style) in failures for style in missing):
            drop += [path, *(edited_path(path, style) for style in styles)]
        elif missing:
            raise DataError(f"{path} has no edit in {edited_path(path, missing[0]).split('/')[0]}/ and none was "
                            "attempted: every input of a folder needs an edit in each of its styles; generate that "
                            "style for the same seeds (--start, --count), or into another dataset folder")
        elif path in cameras_of:
            kept[path] = cameras_of[path]
    for stale in drop:  # only once nothing is wrong
        (root / stale).unlink(missing_ok=True)
    dropped = sum(1 for path in drop if "_" not in path)
    labels = DatasetWriter(root).write_labels(kept)
    EditingDataset(root)  # raises a DatasetError naming the file when the folder is not a valid dataset
    styles = tuple(sorted({style for names in styles_of.values() for style in names}))
    return DatasetSummary(len(kept), styles, len(failures), dropped, labels)


def build_parser() -> argparse.ArgumentParser:
    from threedpe.cli import DEFAULT_WEIGHTS

    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m threedpe.datagen",
        description="Generate a 3DPE training dataset: EG3D identities at random poses, edited with an instruction "
                    "by InstructPix2Pix, written in the official layout (NNNNN/, NNNNN_<style>/, dataset.json). The "
                    "seeds --start .. --start+--count-1 are split over the processes of torchrun (every node, "
                    "RANK/WORLD_SIZE); a rerun skips the samples already written. Runs without torchrun too.")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help="weight folder with the EG3D generator and instruct-pix2pix/ (default: $THREEDPE_WEIGHTS "
                             "or checkpoints/; without instruct-pix2pix/ it is loaded from the Hub)")
    parser.add_argument("--instruction", required=True,
                        help="InstructPix2Pix instruction, e.g. 'make it a bronze statue'")
    parser.add_argument("--count", type=int, required=True, help="number of seeds (identities) in all")
    parser.add_argument("--out", required=True, help="dataset folder (created; an existing one is extended)")
    parser.add_argument("--style", help="style folder name (default: a slug of the instruction)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0); sample index = seed")
    parser.add_argument("--batch-size", type=int, default=4, help="images per InstructPix2Pix call (default 4)")
    parser.add_argument("--truncation", type=float, default=0.7, help="EG3D truncation psi (default 0.7)")
    parser.add_argument("--edit-steps", type=int, default=20, help="InstructPix2Pix steps (default 20)")
    parser.add_argument("--text-guidance", type=float, default=7.5)
    parser.add_argument("--image-guidance", type=float, default=1.5)
    parser.add_argument("--resolution", type=int, default=512, help="InstructPix2Pix resolution (default 512)")
    parser.add_argument("--edit-seed", type=int, default=0, help="seed of every 2D edit (default 0)")
    parser.add_argument("--device", default="auto", help="'auto' (each process its GPU, cuda:LOCAL_RANK, when "
                                                         "there are GPUs, else the CPU), 'cpu' or 'cuda:N'")
    return parser


def _generate(args: argparse.Namespace) -> None:
    from threedpe.cli import UsageError
    from threedpe.diffusion import INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION, InstructPix2PixEditor
    from threedpe.distributed import World
    from threedpe.pipeline import TEXT_MODEL_FOLDER

    # Everything that can be checked without loading a model is checked first.
    instruction = normalise_instruction(args.instruction)
    style = check_style(args.style) if args.style is not None else style_slug(instruction)
    if args.count < 1 or args.start < 0 or args.batch_size < 1:
        raise UsageError("--count and --batch-size must be positive, --start at least 0")
    settings = EditSettings(steps=args.edit_steps, text_guidance=args.text_guidance,
                            image_guidance=args.image_guidance, resolution=args.resolution)
    if not Path(args.weights).is_dir():
        raise UsageError(f"the weight folder {args.weights} does not exist")
    world = World.from_env()
    device = world.device(args.device)
    # gloo: the only collective is the final barrier; Ctrl-C / SIGTERM stops between batches, what was written stays
    with world.running(device, backend="gloo", timeout=BARRIER_TIMEOUT) as stop:
        generator = load_generator(args.weights).to(device)
        local = Path(args.weights) / TEXT_MODEL_FOLDER
        text_model = local if (local / "model_index.json").is_file() else INSTRUCT_PIX2PIX_REPO
        editor = InstructPix2PixEditor.from_pretrained(text_model, revision=INSTRUCT_PIX2PIX_REVISION, device=device)
        editor.check_instruction(instruction)
        source = SyntheticSamples(generator, editor, instruction, settings=settings, truncation_psi=args.truncation,
                                  edit_seed=args.edit_seed, batch_size=args.batch_size)
        seeds = shard_seeds(args.count, args.start, world.rank, world.world_size)
        report = generate_shard(source, args.out, style, seeds, world.rank, cancel=stop, position=world.local_rank)
        print(f"rank {world.rank}/{world.world_size}: {report.seeds} seeds, {report.written} written, "
              f"{report.skipped} already there, {report.failed} failed edits", flush=True)
        world.barrier()
        if world.is_main:
            summary = finish_dataset(args.out)
            print(f"wrote {summary.labels}: {summary.samples} samples in the styles {', '.join(summary.styles)}; "
                  f"{summary.failed} failed edits left out ({summary.dropped} samples with other styles removed)")
            print(f"samples={summary.samples} style={style} out={Path(args.out)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m threedpe.datagen`` / ``torchrun ... -m threedpe.datagen``: see :func:`build_parser`."""
    from threedpe.cli import run_command
    from threedpe.data import DatasetError

    args = build_parser().parse_args(argv)
    return run_command(lambda: _generate(args), DataError, DatasetError)


if __name__ == "__main__":
    from threedpe.datagen import main as datagen_main  # the module's names live in threedpe.datagen, not __main__

    sys.exit(datagen_main())
