"""Batch edits: every photo of a folder (recursively), a zip or a CSV, one output folder each, and a report.

    python -m threedpe batch --input DIR|ZIP|CSV --out OUT (--reference R | --prompt P) [--strength S] [--video] ...
    torchrun --nproc_per_node N -m threedpe.batch --input ... (the same arguments; one device per process)

A CSV has one row per edit, ``photo,reference|prompt,strength`` (a header row starting with ``photo`` is skipped;
paths relative to the CSV; the second cell is a reference when it names an image file, else an instruction; empty
cells take --reference / --prompt / --strength). Each reference or instruction is prepared once, and photos that share
one are encoded together (``--batch-size``). ``OUT/photos/<name>/`` gets ``input.jpg`` (a thumbnail), ``aligned.png``,
``views.png`` (the 3-view strip) and, asked for, ``orbit.mp4`` / ``mesh.glb``; ``result.json`` is written last and
marks the photo done, so a re-run skips it (same settings) and retries the failures. A broken file, a photo without a
face or one over the size limit is recorded and the batch goes on; Ctrl-C stops after the current photo. Each process
(rank) logs its photos to ``OUT/shards/rank<R>-of-<W>.jsonl`` (photos ``jobs[rank::W]``), then rank 0 writes
``OUT/results.csv`` and ``OUT/report.html`` (a contact sheet) and prints ``edited=<n> skipped=<n> failed=<n>
report=<path>``.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image

from threedpe.files import atomic_write
from threedpe.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from threedpe.weights import default_folder

if TYPE_CHECKING:
    from threedpe.cancel import CancelSignal
    from threedpe.diffusion import EditSettings
    from threedpe.pipeline import EditResult, PortraitEditor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_PHOTO_BYTES = 64 * 2**20  # a zip member (a photo) above this is refused before it is read
PHOTOS, SHARDS, RESULT = "photos", "shards", "result.json"
THUMBNAIL_SIDE = 256


class BatchError(ValueError):
    """The batch input cannot be read as photos (a usage error: nothing was edited)."""


@dataclass(frozen=True)
class BatchJob:
    """One photo to edit: ``name`` its folder under ``OUT/photos``; ``photo`` what the report shows (the path relative
    to the input, the zip member, the CSV cell); ``source`` the file (or the zip holding ``member``); exactly one of
    ``reference`` (an image file) and ``prompt``; ``strength`` as :meth:`PortraitEditor.__call__` takes it."""

    name: str
    photo: str
    source: Path
    member: str | None = None
    reference: Path | None = None
    prompt: str | None = None
    strength: float = 1.0

    def read(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The photo as RGB; ``ImageError`` when it is broken or over the limits."""
        if self.member is None:
            return load_image(self.source, max_pixels=max_pixels)
        with zipfile.ZipFile(self.source) as archive:
            size = archive.getinfo(self.member).file_size
            if size > MAX_PHOTO_BYTES:
                raise ImageError(f"{self.photo} is {size / 2**20:.0f} MB, over the {MAX_PHOTO_BYTES // 2**20} MB limit")
            return load_image(archive.read(self.member), max_pixels=max_pixels)

    @property
    def reference_key(self) -> str:
        return f"reference:{self.reference}" if self.reference is not None else f"prompt:{self.prompt}"


@dataclass(frozen=True)
class BatchOptions:
    """How every photo is edited and what is written for it (the CLI's flags)."""

    style: Path | None = None
    video: bool = False
    mesh: bool = False
    frames: int = 120
    fps: float = 30.0
    batch_size: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    anchor: int | str = 0
    seed: int = 0
    settings: EditSettings | None = None

    def record(self, job: BatchJob) -> dict:
        """What a photo's ``result.json`` must hold for a re-run to skip it."""
        return {"reference": None if job.reference is None else str(job.reference), "prompt": job.prompt,
                "strength": job.strength, "style": None if self.style is None else str(self.style),
                "video": self.video, "mesh": self.mesh}


@dataclass
class Outcome:
    """What happened to one photo: ``status`` "edited", "skipped" (done before), "failed" (``reason`` says why) or
    "not run" (the batch was stopped first); ``outputs`` file names in its folder."""

    photo: str
    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def safe_parts(relative: str) -> list[str]:
    """The parts of a relative path as a zip member or an upload names it, without its root, ``.`` and ``..`` parts
    (so that it stays inside the folder it is placed in)."""
    return [part for part in PurePosixPath(relative.replace("\\", "/")).parts if part not in ("/", ".", "..")]


def _folder_name(relative: str) -> str:
    """``class/anna.jpg`` -> ``class/anna_jpg``: one folder per photo, also for ``anna.jpg`` beside ``anna.png``; a
    zip member's ``..`` and root parts are dropped (its folder stays inside the output)."""
    parts = safe_parts(relative)
    if not parts:
        return "photo"
    stem, suffix = PurePosixPath(parts[-1]).stem, PurePosixPath(parts[-1]).suffix.lstrip(".").lower()
    return "/".join([*parts[:-1], f"{stem}_{suffix}" if suffix else stem])


def collect_jobs(source: str | os.PathLike, reference: str | os.PathLike | None = None, prompt: str | None = None,
                 strength: float = 1.0, exclude: str | os.PathLike | None = None) -> list[BatchJob]:
    """The photos of a folder (every image file under it, sorted, leaving out ``exclude``), a ``.zip`` or the rows of a
    ``.csv`` (see the module), each with ``reference`` or ``prompt`` and ``strength`` unless its CSV row says otherwise.
    ``BatchError`` when the input is missing, unreadable or holds no photo, or a photo has neither a reference nor an
    instruction."""
    source = Path(source).expanduser()
    reference = Path(reference).expanduser() if reference is not None else None
    taken: set[str] = set()
    if source.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and (skip is None or skip not in p.resolve().parents))
        jobs = [BatchJob(_unique(_folder_name(str(p.relative_to(source))), taken), str(p.relative_to(source)), p,
                         reference=reference, prompt=prompt, strength=strength) for p in files]
    elif source.suffix.lower() == ".zip" and source.is_file():
        try:
            with zipfile.ZipFile(source) as archive:
                members = sorted(info.filename for info in photo_members(archive))
        except zipfile.BadZipFile:
            raise BatchError(f"{source} is not a readable zip file") from None
        jobs = [BatchJob(_unique(_folder_name(m), taken), m, source, member=m, reference=reference, prompt=prompt,
                         strength=strength) for m in members]
    elif source.suffix.lower() == ".csv" and source.is_file():
        jobs = _csv_jobs(source, reference, prompt, strength, taken)
    else:
        raise BatchError(f"{source} is neither a folder, a .zip nor a .csv file")
    if not jobs:
        raise BatchError(f"{source} holds no photo ({', '.join(IMAGE_SUFFIXES)})")
    for job in jobs:
        if (job.reference is None) == (job.prompt is None):
            raise BatchError(f"{job.photo}: give either a reference image or an instruction (--reference / --prompt "
                             "or the CSV's second column)")
    return jobs


def photo_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members of ``archive`` that are photos by their names (macOS ``._`` resource files left out)."""
    return [info for info in archive.infolist() if not info.is_dir() and Path(info.filename).suffix.lower()
            in IMAGE_SUFFIXES and not Path(info.filename).name.startswith("._")]


def _csv_jobs(source: Path, reference: Path | None, prompt: str | None, strength: float,
              taken: set[str]) -> list[BatchJob]:
    from threedpe.pipeline import check_strength

    try:
        rows = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise BatchError(f"{source} is not a readable CSV file: {error}") from None
    jobs = []
    for number, row in enumerate(rows, 1):
        cells = [cell.strip() for cell in row] + ["", "", ""]
        if not cells[0] or number == 1 and cells[0].lower() == "photo":
            continue
        photo, guide, value = cells[:3]
        row_reference, row_prompt = reference, prompt
        if guide:
            guide_path = source.parent / guide
            is_image = Path(guide).suffix.lower() in IMAGE_SUFFIXES or guide_path.is_file()
            row_reference, row_prompt = (guide_path, None) if is_image else (None, guide)
        try:
            row_strength = check_strength(float(value)) if value else strength
        except ValueError as error:  # SettingsError included
            raise BatchError(f"{source.name} row {number}: the strength {value!r} is not usable ({error})") from None
        name = _unique(f"row{number:05d}_{_folder_name(Path(photo).name)}", taken)
        jobs.append(BatchJob(name, photo, source.parent / photo, reference=row_reference, prompt=row_prompt,
                             strength=row_strength))
    return jobs


def is_done(out: Path, job: BatchJob, options: BatchOptions) -> Outcome | None:
    """The earlier outcome of ``job`` when its ``result.json`` matches ``options`` and every output it lists exists."""
    folder = out / PHOTOS / job.name
    try:
        record = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if record.get("settings") != options.record(job) or not all((folder / name).is_file() for name in record["outputs"]):
        return None
    return Outcome(job.photo, job.name, "skipped", "done in an earlier run", record["seconds"], record["outputs"])


class ReferencePreparer:
    """Each reference image or instruction of a batch prepared once: ``get(job)`` -> the reference image the editor
    sees (an instruction becomes one through InstructPix2Pix on an anchor portrait), or the user error it gave."""

    def __init__(self, editor: PortraitEditor, options: BatchOptions):
        self.editor, self.options = editor, options
        self._prepared: dict[str, Image.Image | Exception] = {}

    def get(self, job: BatchJob, cancel: CancelSignal | None = None) -> Image.Image:
        from threedpe.cancel import Cancelled
        from threedpe.diffusion import EditSettings
        from threedpe.pipeline import USER_ERRORS

        if job.reference_key not in self._prepared:
            try:
                if job.reference is not None:
                    self._prepared[job.reference_key] = load_image(job.reference)
                else:
                    text = self.editor.text_reference
                    prompt = text.editor.check_instruction(job.prompt)
                    self._prepared[job.reference_key] = text.reference(
                        prompt, self.options.settings or EditSettings(), text.anchor_index(self.options.anchor),
                        self.options.seed, cancel=cancel).image
            except Cancelled:  # a stop, not a failure of this reference: nothing is kept
                raise
            except USER_ERRORS as error:
                self._prepared[job.reference_key] = error
        prepared = self._prepared[job.reference_key]
        if isinstance(prepared, Exception):
            raise prepared
        return prepared


def write_outputs(result: EditResult, folder: Path, options: BatchOptions) -> list[str]:
    """The edit's files in ``folder`` (beside ``input.jpg`` and ``aligned.png``), their names."""
    result.strip().save(folder / "views.png")
    outputs = ["input.jpg", "aligned.png", "views.png"]
    if options.video:
        result.video(folder / "orbit.mp4", num_frames=options.frames, fps=options.fps)
        outputs.append("orbit.mp4")
    if options.mesh:
        result.mesh(folder / "mesh.glb")
        outputs.append("mesh.glb")
    return outputs


@dataclass
class _Aligned:
    job: BatchJob
    crop: Image.Image
    reference: Image.Image
    seconds: float


def edit_jobs(editor: PortraitEditor, jobs: list[BatchJob], out: str | os.PathLike,
              options: BatchOptions = BatchOptions(), shard: str = "rank00000-of-00001",
              cancel: CancelSignal | None = None, position: int | None = None, progress: bool = True) -> list[Outcome]:
    """Edit ``jobs`` into ``out/photos/<name>/`` (skipping photos done before), logging each outcome to
    ``out/shards/<shard>.jsonl`` as it happens; a progress bar with ETA on line ``position``. Photos that share a
    reference are encoded ``options.batch_size`` at a time. ``cancel`` stops after the current photo (batch): the
    jobs not reached are left out of the outcomes."""
    from tqdm.auto import tqdm

    from threedpe.cancel import Cancelled
    from threedpe.pipeline import USER_ERRORS

    if any(job.strength != 1.0 for job in jobs):
        editor.require_strength()  # before any photo: the Live3D file is missing
    out = Path(out)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    style = editor.load_style(options.style) if options.style is not None else None
    references = ReferencePreparer(editor, options)
    outcomes: list[Outcome] = []
    pending: list[_Aligned] = []
    with (out / SHARDS / f"{shard}.jsonl").open("w") as log, \
            tqdm(total=len(jobs), desc=shard.split("-")[0], unit="photo", disable=not progress,
                 position=position) as bar:
        def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            log.write(json.dumps(asdict(outcome)) + "\n")
            log.flush()
            bar.update(1)

        def flush() -> None:
            for outcome in _edit_aligned(editor, pending, out, options, style):
                record(outcome)
            pending.clear()

        for job in jobs:
            if _stopped(cancel):
                break
            done = is_done(out, job, options)
            if done is not None:
                record(done)
                continue
            if pending and (len(pending) >= options.batch_size or pending[0].job.reference_key != job.reference_key):
                flush()
                if _stopped(cancel):
                    break
            start = time.perf_counter()
            try:
                reference = references.get(job, cancel)
                pending.append(_Aligned(job, _align(editor, job, out / PHOTOS / job.name, options), reference,
                                        time.perf_counter() - start))
            except Cancelled:  # stopped while an instruction was turned into a reference: this photo is not run
                break
            except (*USER_ERRORS, OSError) as error:
                record(Outcome(job.photo, job.name, "failed", _reason(error), time.perf_counter() - start))
        flush()
    return outcomes


def _stopped(cancel: CancelSignal | None) -> bool:
    from threedpe.cancel import is_cancelled

    return is_cancelled(cancel)


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _align(editor: PortraitEditor, job: BatchJob, folder: Path, options: BatchOptions) -> Image.Image:
    """Read and align the photo, writing ``input.jpg`` (a thumbnail) and ``aligned.png`` into ``folder``."""
    photo = job.read(options.max_pixels)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT).unlink(missing_ok=True)  # done again: not done until the new result.json
    thumbnail = photo.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    thumbnail.save(folder / "input.jpg", quality=90)
    crop, _, _ = editor.align(photo)
    crop.save(folder / "aligned.png")
    return crop


def _edit_aligned(editor: PortraitEditor, pending: list[_Aligned], out: Path, options: BatchOptions,
                  style: object) -> list[Outcome]:
    """Encode the aligned photos (one reference) as one batch and write each one's files and ``result.json``."""
    from threedpe.pipeline import USER_ERRORS

    if not pending:
        return []
    start = time.perf_counter()
    try:
        results = editor.edit_crops([item.crop for item in pending], pending[0].reference, style)
    except USER_ERRORS as error:
        return [Outcome(item.job.photo, item.job.name, "failed", _reason(error), item.seconds) for item in pending]
    share = (time.perf_counter() - start) / len(pending)
    outcomes = []
    for item, result in zip(pending, results):
        job, folder, begin = item.job, out / PHOTOS / item.job.name, time.perf_counter()
        try:
            outputs = write_outputs(result.with_strength(job.strength), folder, options)
        except (*USER_ERRORS, OSError) as error:
            outcomes.append(Outcome(job.photo, job.name, "failed", _reason(error), item.seconds + share))
            continue
        seconds = round(item.seconds + share + time.perf_counter() - begin, 3)
        record = {"photo": job.photo, "settings": options.record(job), "outputs": outputs, "seconds": seconds}
        atomic_write(folder / RESULT, lambda file: file.write(json.dumps(record, indent=1).encode()))
        outcomes.append(Outcome(job.photo, job.name, "edited", "", seconds, outputs))
    return outcomes


def read_outcomes(out: str | os.PathLike, world_size: int = 1) -> dict[str, Outcome]:
    """The outcomes the ``world_size`` shards of the last run logged, by job name (a line cut short is skipped)."""
    outcomes = {}
    for shard in sorted((Path(out) / SHARDS).glob(f"rank*-of-{world_size:05d}.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                outcome = Outcome(**json.loads(line))
            except (ValueError, TypeError):
                continue
            outcomes[outcome.name] = outcome
    return outcomes


def write_report(out: str | os.PathLike, jobs: list[BatchJob], outcomes: dict[str, Outcome]) -> Path:
    """``out/results.csv`` (photo, status, reason, seconds, outputs) and ``out/report.html`` (a contact sheet: input,
    aligned crop and edited strip per photo; failures with their reason), every job in order (those without an
    outcome as "not run"). Returns the report's path."""
    out = Path(out)
    rows = [outcomes.get(job.name) or Outcome(job.photo, job.name, "not run", "the batch was stopped before it")
            for job in jobs]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["photo", "status", "reason", "seconds", "outputs"])
    for row in rows:
        writer.writerow([row.photo, row.status, row.reason, f"{row.seconds:.2f}",
                         ";".join(f"{PHOTOS}/{row.name}/{name}" for name in row.outputs)])
    atomic_write(out / "results.csv", lambda file: file.write(table.getvalue().encode()))
    counts = {status: sum(row.status == status for row in rows) for status in ("edited", "skipped", "failed", "not run")}
    atomic_write(out / "report.html", lambda file: file.write(_html(out, rows, counts).encode()))
    return out / "report.html"


def _html(out: Path, rows: list[Outcome], counts: dict[str, int]) -> str:
    def cell(row: Outcome, name: str) -> str:  # a failure still shows its input when it could be read
        if name not in row.outputs and not (name == "input.jpg" and (out / PHOTOS / row.name / name).is_file()):
            return "<td></td>"
        src = html.escape(f"{PHOTOS}/{row.name}/{name}", quote=True)
        return f'<td><a href="{src}"><img src="{src}" loading="lazy" alt="{html.escape(name)}"></a></td>'

    lines = [f'<tr class="{row.status.replace(" ", "-")}"><td>{html.escape(row.photo)}</td>'
             f'{cell(row, "input.jpg")}{cell(row, "aligned.png")}{cell(row, "views.png")}'
             f'<td>{html.escape(row.status)}{": " + html.escape(row.reason) if row.reason else ""}</td>'
             f'<td>{row.seconds:.2f}</td></tr>' for row in rows]
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>threedpe batch report</title><style>"
            "body{font-family:sans-serif}td{padding:4px;vertical-align:middle}img{height:128px}"
            ".failed{background:#fdd}.not-run{color:#888}</style></head><body>\n"
            f"<h1>Batch report</h1><p>{html.escape(summary)}</p>\n<table><tr><th>photo</th><th>input</th>"
            "<th>aligned</th><th>edited (yaw -30, 0, +30)</th><th>status</th><th>seconds</th></tr>\n"
            + "\n".join(lines) + "\n</table></body></html>\n")


# --- the command ------------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The batch flags (``python -m threedpe batch`` and ``python -m threedpe.batch`` share them)."""
    from threedpe.commands import DEVICE_HELP, PRECISION_HELP, STRENGTH_HELP, WEIGHTS_HELP
    from threedpe.precision import PRECISIONS

    parser.add_argument("--input", required=True, help="a folder of photos (searched recursively), a .zip of photos, "
                        "or a .csv with rows photo,reference|prompt,strength")
    parser.add_argument("--out", required=True, help="output folder: photos/<name>/, results.csv, report.html")
    guide = parser.add_mutually_exclusive_group()
    guide.add_argument("--reference", help="reference image whose style is applied to every photo")
    guide.add_argument("--prompt", help="InstructPix2Pix instruction applied to every photo (prepared once)")
    parser.add_argument("--style", help="a style file made by `customize`, applied to every edit")
    parser.add_argument("--strength", type=float, default=1.0, help=STRENGTH_HELP)
    parser.add_argument("--video", action="store_true", help="also write orbit.mp4 per photo")
    parser.add_argument("--frames", type=int, default=120, help="orbit video frames (default 120)")
    parser.add_argument("--fps", type=float, default=30, help="orbit video frame rate (default 30)")
    parser.add_argument("--mesh", action="store_true", help="also write mesh.glb per photo")
    parser.add_argument("--batch-size", type=int, default=1, help="photos encoded together (default 1; more on a GPU)")
    parser.add_argument("--anchor", default="0", help="anchor portrait a --prompt is applied to: index or name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + "; under torchrun one GPU per process")
    parser.add_argument("--precision", choices=PRECISIONS, default="exact", help=PRECISION_HELP)
    return parser


def run(args: argparse.Namespace) -> None:
    """The batch command, in one process or as one rank of a torchrun: see the module."""
    from threedpe.commands import UsageError
    from threedpe.training.distributed import World
    from threedpe.pipeline import PortraitEditor, check_strength

    # Everything that can be checked without loading a model is checked first.
    check_strength(args.strength)
    if args.batch_size < 1 or args.frames < 1:
        raise UsageError("--batch-size and --frames must be positive")
    for label, path in (("reference", args.reference), ("style", args.style)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"the {label} {path} does not exist")
    try:
        jobs = collect_jobs(args.input, args.reference, args.prompt, args.strength, exclude=args.out)
    except BatchError as error:
        raise UsageError(str(error)) from None
    options = BatchOptions(style=Path(args.style) if args.style else None, video=args.video, mesh=args.mesh,
                           frames=args.frames, fps=args.fps, batch_size=args.batch_size, seed=args.seed,
                           anchor=int(args.anchor) if args.anchor.isdigit() else args.anchor)
    world = World.from_env()
    device = world.device(args.device)
    with world.running(device, backend="gloo") as stop:  # gloo: the only collective is the final barrier
        editor = PortraitEditor.from_pretrained(args.weights, device=device, precision=args.precision)
        shard = f"rank{world.rank:05d}-of-{world.world_size:05d}"
        edit_jobs(editor, jobs[world.rank::world.world_size], args.out, options, shard, cancel=stop,
                  position=world.local_rank)
        world.barrier()
        if world.is_main:
            outcomes = read_outcomes(args.out, world.world_size)
            summarise(outcomes, len(jobs), write_report(args.out, jobs, outcomes))


def summarise(outcomes: dict[str, Outcome], total: int, report: Path) -> None:
    """Print the failures, what was not run, and the last line ``edited=<n> skipped=<n> failed=<n> report=<path>``."""
    counts = {status: sum(o.status == status for o in outcomes.values()) for status in ("edited", "skipped", "failed")}
    for outcome in outcomes.values():
        if outcome.status == "failed":
            print(f"failed {outcome.photo}: {outcome.reason}")
    if len(outcomes) < total:
        print(f"stopped: {total - len(outcomes)} photos not run; the same command continues the batch")
    print(f"edited={counts['edited']} skipped={counts['skipped']} failed={counts['failed']} report={report}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m threedpe.batch`` / ``torchrun ... -m threedpe.batch``: the flags of ``python -m threedpe batch``."""
    from threedpe.commands import run_command

    parser = add_arguments(argparse.ArgumentParser(prog="python -m threedpe.batch", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    from threedpe.training.distributed import run_as_script

    run_as_script("threedpe.batch")
