"""Generating a 3DPE training dataset at scale: ``torchrun --nproc_per_node N -m threedpe.training.datagen ...``.

The samples come from :class:`threedpe.training.samples.SyntheticSamples` (EG3D identities edited by InstructPix2Pix).
Each rank writes the seeds :func:`~threedpe.training.samples.shard_seeds` gives it (:func:`generate_shard`: its
samples' files and its labels shard ``shards/rank<R>.jsonl``, skipping what a previous run wrote), then rank 0 writes
``dataset.json`` (:func:`finish_dataset`). The result is a :class:`threedpe.training.data.EditingDataset` as it is.
See :func:`build_parser` for the command.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

from threedpe.cancel import CancelSignal
from threedpe.commands import UsageError
from threedpe.diffusion import InstructPix2PixEditor, normalise_instruction
from threedpe.edit_settings import add_edit_arguments, edit_settings
from threedpe.training.data import (LABELS, DatasetError, DatasetWriter, EditingDataset, check_style, edited_path,
                                    item_path)
from threedpe.training.distributed import World, command_main, command_parser, run_as_script
from threedpe.training.samples import DataError, SyntheticSamples, load_generator, shard_seeds
from threedpe.weights import text_model_source


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
    parser = command_parser(
        "threedpe.training.datagen",
        "Generate a 3DPE training dataset: EG3D identities at random poses, edited with an instruction by "
        "InstructPix2Pix, written in the official layout (NNNNN/, NNNNN_<style>/, dataset.json). The seeds --start .. "
        "--start+--count-1 are split over the processes of torchrun (every node, RANK/WORLD_SIZE); a rerun skips the "
        "samples already written. Runs without torchrun too.",
        weights_help="weight folder with the EG3D generator and instruct-pix2pix/ (default: $THREEDPE_WEIGHTS or "
                     "checkpoints/; without instruct-pix2pix/ it is loaded from the Hub)")
    parser.add_argument("--instruction", required=True,
                        help="InstructPix2Pix instruction, e.g. 'make it a bronze statue'")
    parser.add_argument("--count", type=int, required=True, help="number of seeds (identities) in all")
    parser.add_argument("--out", required=True, help="dataset folder (created; an existing one is extended)")
    parser.add_argument("--style", help="style folder name (default: a slug of the instruction)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0); sample index = seed")
    parser.add_argument("--batch-size", type=int, default=4, help="images per InstructPix2Pix call (default 4)")
    parser.add_argument("--truncation", type=float, default=0.7, help="EG3D truncation psi (default 0.7)")
    add_edit_arguments(parser)
    parser.add_argument("--edit-seed", type=int, default=0, help="seed of every 2D edit (default 0)")
    return parser


def _generate(args: argparse.Namespace) -> None:

    # Everything that can be checked without loading a model is checked first.
    instruction = normalise_instruction(args.instruction)
    style = check_style(args.style) if args.style is not None else style_slug(instruction)
    if args.count < 1 or args.start < 0 or args.batch_size < 1:
        raise UsageError("--count and --batch-size must be positive, --start at least 0")
    settings = edit_settings(args)
    if not Path(args.weights).is_dir():
        raise UsageError(f"the weight folder {args.weights} does not exist")
    world = World.from_env()
    device = world.device(args.device)
    # gloo: the only collective is the final barrier; Ctrl-C / SIGTERM stops between batches, what was written stays
    with world.running(device, backend="gloo", timeout=BARRIER_TIMEOUT) as stop:
        generator = load_generator(args.weights).to(device)
        text_model, revision = text_model_source(args.weights)
        editor = InstructPix2PixEditor.from_pretrained(text_model, revision=revision, device=device)
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
    """``python -m threedpe.training.datagen`` (or under ``torchrun``): see :func:`build_parser`."""
    return command_main(build_parser(), _generate, argv, DataError, DatasetError)


if __name__ == "__main__":
    run_as_script("threedpe.training.datagen")
