"""The app's batch edits, without any UI: how many photos one batch may hold, the uploaded files turned into the jobs
of :mod:`threedpe.batch`, how a batch is split into GPU calls, and the zip of its results.

A batch runs in a folder of the session: ``input/`` (the uploads: photos copied, zips unpacked, a CSV), ``results/``
(what :func:`threedpe.batch.edit_jobs` and :func:`threedpe.batch.write_report` write) and the results' zip beside
them.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from threedpe.batch import (IMAGE_SUFFIXES, MAX_PHOTO_BYTES, PHOTOS, BatchError, BatchJob, Outcome, collect_jobs,
                            photo_members, safe_parts)
from threedpe.diffusion import EditSettings
from threedpe.files import atomic_write
from threedpe.serving.runner import EditRunner, on_zero_gpu

MAX_PHOTOS_ENV = "THREEDPE_BATCH_MAX_PHOTOS"
ZERO_GPU_MAX_PHOTOS, LOCAL_MAX_PHOTOS = 20, 200
MAX_GPU_CALL_S = 120  # a ZeroGPU call longer than this is split (ZeroGPU favours short calls in its queue)
STATUSES = ("edited", "skipped", "failed", "not run")


def max_batch_photos() -> int:
    """The most photos one batch may hold: ``$THREEDPE_BATCH_MAX_PHOTOS``, else 20 on a ZeroGPU Space, 200
    elsewhere."""
    value = os.environ.get(MAX_PHOTOS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"${MAX_PHOTOS_ENV} must be a positive whole number, got {value!r}")
        return int(value)
    return ZERO_GPU_MAX_PHOTOS if on_zero_gpu() else LOCAL_MAX_PHOTOS


def gather_uploads(uploads: list[tuple[str, Path]], folder: Path, max_photos: int) -> Path:
    """Uploaded files, each ``(its name as uploaded, its path)``, as one batch input in ``folder``: photos copied under
    their names, the photos of each ``.zip`` unpacked under their member paths, and at most one ``.csv``. Returns the
    CSV when there is one (its rows name those files, see :mod:`threedpe.batch`), else ``folder``. ``BatchError`` for
    another kind of file, two photos of one name, a second CSV, a zip member over the size limit, no photo, or more
    than ``max_photos`` photos (nothing is unpacked past the limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []

    def place(name: str) -> Path:
        if len(placed) >= max_photos:
            raise BatchError(f"a batch holds at most {max_photos} photos, and the upload holds more")
        target = folder.joinpath(*(safe_parts(name) or ["photo"]))
        if target in placed:
            raise BatchError(f"two uploaded photos are named {name}: rename one")
        target.parent.mkdir(parents=True, exist_ok=True)
        placed.append(target)
        return target

    tables = [(name, path) for name, path in uploads if Path(name).suffix.lower() == ".csv"]
    if len(tables) > 1:
        raise BatchError(f"upload at most one CSV of jobs (got {', '.join(name for name, _ in tables)})")
    for name, path in uploads:
        suffix = Path(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            shutil.copyfile(path, place(Path(name).name))
        elif suffix == ".zip":
            _unpack(name, path, place)
        elif suffix != ".csv":
            raise BatchError(f"{Path(name).name} is not a photo ({', '.join(IMAGE_SUFFIXES)}), a .zip of photos or a "
                             ".csv of jobs")
    if not placed:
        raise BatchError(f"the upload holds no photo ({', '.join(IMAGE_SUFFIXES)}, alone or in a .zip)")
    if not tables:
        return folder
    table = folder / "jobs.csv"
    shutil.copyfile(tables[0][1], table)
    return table


def _unpack(name: str, path: Path, place) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in photo_members(archive):
                if info.file_size > MAX_PHOTO_BYTES:
                    raise BatchError(f"{info.filename} in {Path(name).name} is {info.file_size / 2**20:.0f} MB, over "
                                     f"the {MAX_PHOTO_BYTES // 2**20} MB limit of a photo")
                place(info.filename).write_bytes(archive.read(info))
    except zipfile.BadZipFile:
        raise BatchError(f"{Path(name).name} is not a readable zip file") from None


def prepare_batch(uploads: list[tuple[str, Path]], folder: Path, reference: Path | None, prompt: str | None,
                  strength: float, max_photos: int) -> list[BatchJob]:
    """The jobs of a batch from its uploads (unpacked into ``folder / "input"``, see :func:`gather_uploads`), each
    photo with ``reference`` or ``prompt`` and ``strength`` unless its CSV row says otherwise; at most ``max_photos``.
    ``BatchError`` saying what to change."""
    source = gather_uploads(uploads, folder / "input", max_photos)
    jobs = collect_jobs(source, reference, prompt, strength)
    if len(jobs) > max_photos:
        raise BatchError(f"a batch holds at most {max_photos} photos, and the CSV names {len(jobs)}")
    inside = (folder / "input").resolve()
    for job in jobs:  # what a CSV names, checked before anything runs: uploaded files only
        for what, path in (("photo", job.source), ("reference", job.reference)):
            if path is None or path == reference:
                continue
            if inside not in path.resolve().parents or not path.is_file():
                name = job.photo if what == "photo" else path.name
                raise BatchError(f"the CSV names the {what} {name}, which is not among the uploaded photos (or in an "
                                 "uploaded zip)")
    return jobs


def batch_calls(jobs: list[BatchJob], settings: EditSettings | None = None) -> list[list[BatchJob]]:
    """The GPU calls a batch runs in: on ZeroGPU as few as keep each call's ``EditRunner.batch_duration`` within
    :data:`MAX_GPU_CALL_S`; elsewhere one per photo (other visitors' work runs between photos, and progress is per
    photo)."""
    if not on_zero_gpu():
        return [[job] for job in jobs]
    calls: list[list[BatchJob]] = [[]]
    for job in jobs:
        if calls[-1] and EditRunner.batch_duration([*calls[-1], job], Path(), settings=settings) > MAX_GPU_CALL_S:
            calls.append([])
        calls[-1].append(job)
    return calls


def counts(jobs: list[BatchJob], outcomes: dict[str, Outcome]) -> dict[str, int]:
    """How many photos were edited, skipped, failed and not run (stopped before them)."""
    found = [outcomes[job.name].status if job.name in outcomes else "not run" for job in jobs]
    return {status: found.count(status) for status in STATUSES}


def zip_results(results: Path, path: Path) -> Path:
    """``path``: a zip of a batch's ``results`` folder (``report.html``, ``results.csv`` and ``photos/``; the
    processes' logs left out), written atomically."""
    def write(file) -> None:
        with zipfile.ZipFile(file, "w") as archive:
            for name in ("report.html", "results.csv"):
                archive.write(results / name, name, zipfile.ZIP_DEFLATED)
            for item in sorted((results / PHOTOS).rglob("*")):
                if item.is_file():  # PNG, JPEG and MP4 are compressed already
                    method = zipfile.ZIP_STORED if item.suffix in (".png", ".jpg", ".mp4") else zipfile.ZIP_DEFLATED
                    archive.write(item, item.relative_to(results).as_posix(), method)

    atomic_write(path, write)
    return path
