"""Batch edits (issue 20): a folder with a broken file and a photo without a face edits the rest and reports both
failures, a re-run skips what is done, Ctrl-C leaves a valid report, and two torchrun processes share the photos."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.fixtures import ROOT, launch, weights_copy
from threedpe.batch import BatchError, BatchOptions, collect_jobs, edit_jobs, read_outcomes, write_report
from threedpe.cli import main
from threedpe.pipeline import PortraitEditor

LAST_LINE = "edited={} skipped={} failed={} report={}"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(astronaut_photo, tmp_path_factory) -> Path:
    """Two faces (one in a subfolder), a broken JPEG, a photo without a face and a text file (not a photo)."""
    folder = tmp_path_factory.mktemp("batch-input")
    face = Image.open(astronaut_photo).convert("RGB").resize((256, 256))
    face.save(folder / "anna.png")
    (folder / "class").mkdir()
    ImageOps.mirror(face).save(folder / "class" / "ben.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ramp = np.linspace(0, 255, 128, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (128, 1))] * 3, axis=-1)).save(folder / "wall.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch-reference") / "gold.png"
    rng = np.random.default_rng(0)
    Image.fromarray((np.kron(rng.random((8, 8, 3)), np.ones((12, 12, 1))) * 255).astype(np.uint8)).save(path)
    return path


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as file:
        return {row["photo"]: row for row in csv.DictReader(file)}


class _Report(HTMLParser):
    """The report's text, and its images' sources (a parse that fails on a cut-off file)."""

    def __init__(self, path: Path):
        super().__init__()
        self.images, self.text, self.closed = [], [], False
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self.closed |= tag == "html"

    def handle_data(self, data):
        self.text.append(data)


def test_batch_reports_failures_and_resumes(tiny_weights, photos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    command = ["batch", "--weights", str(tiny_weights), "--input", str(photos), "--out", str(out),
               "--reference", str(reference), "--strength", "0.5", "--device", "cpu"]
    assert main(command) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == LAST_LINE.format(2, 0, 2, out / "report.html")
    rows = _rows(out)
    assert set(rows) == {"anna.png", "class/ben.jpg", "broken.jpg", "wall.png"}
    assert rows["anna.png"]["status"] == rows["class/ben.jpg"]["status"] == "edited"
    assert "could not be read" in rows["broken.jpg"]["reason"] and "No face" in rows["wall.png"]["reason"]
    for name in rows["class/ben.jpg"]["outputs"].split(";"):
        assert (out / name).is_file()
    assert Image.open(out / "photos" / "class" / "ben_jpg" / "views.png").size == (3 * 128, 128)
    report = _Report(out / "report.html")
    text = " ".join(report.text)
    assert report.closed and "broken.jpg" in text and "could not be read" in text and "wall.png" in text and "No face" in text
    assert all((out / src).is_file() for src in report.images) and len(report.images) == 2 * 3 + 1  # wall's input

    views = (out / "photos" / "anna_png" / "views.png").stat().st_mtime_ns
    assert main(command) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == LAST_LINE.format(0, 2, 2, out / "report.html")
    assert (out / "photos" / "anna_png" / "views.png").stat().st_mtime_ns == views
    assert _rows(out)["anna.png"]["status"] == "skipped" and _rows(out)["wall.png"]["status"] == "failed"
    assert main([*command[:-4], "--strength", "1", "--device", "cpu"]) == 0  # other settings: edited again
    assert capsys.readouterr().out.strip().splitlines()[-1] == LAST_LINE.format(2, 0, 2, out / "report.html")


def test_batch_sizes_zip_and_csv(tiny_weights, photos, reference, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(photos.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(photos).as_posix())
        zipped.writestr("../../escape.png", b"not a png")
    jobs = collect_jobs(archive, reference=reference)
    assert [job.photo for job in jobs] == ["../../escape.png", "anna.png", "broken.jpg", "class/ben.jpg", "wall.png"]
    assert [job.name for job in jobs] == ["escape_png", "anna_png", "broken_jpg", "class/ben_jpg", "wall_png"]
    editor = PortraitEditor.from_pretrained(tiny_weights)
    batches, edit_crops = [], editor.edit_crops
    editor.edit_crops = lambda crops, *args: batches.append(len(crops)) or edit_crops(crops, *args)
    outcomes = edit_jobs(editor, jobs, tmp_path / "zip", BatchOptions(batch_size=4), progress=False)
    assert [o.status for o in outcomes] == ["failed"] * 3 + ["edited"] * 2  # failures recorded as they happen
    assert {o.photo for o in outcomes[3:]} == {"anna.png", "class/ben.jpg"} and batches == [2]  # one encode

    table = tmp_path / "jobs.csv"
    table.write_text(f"photo,reference|prompt,strength\n{photos / 'anna.png'},{reference},0\n"
                     f"{photos / 'class' / 'ben.jpg'},,1.5\nmissing.png,{reference},\n")
    jobs = collect_jobs(table, reference=reference)
    assert [(job.strength, job.reference) for job in jobs] == [(0.0, reference), (1.5, reference), (1.0, reference)]
    outcomes = edit_jobs(editor, jobs, tmp_path / "csv", progress=False)
    assert [o.status for o in outcomes] == ["edited", "edited", "failed"] and "missing.png" in outcomes[2].reason
    table.write_text("photo,reference,strength\nanna.png,,7\n")
    with pytest.raises(BatchError, match="strength"):
        collect_jobs(table, reference=reference)
    with pytest.raises(BatchError, match="either a reference"):
        collect_jobs(photos)


def test_batch_usage_errors(tiny_weights, photos, reference, tmp_path, capsys):
    base = ["batch", "--weights", str(tiny_weights), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*base, "--input", str(tmp_path / "nothing"), "--reference", str(reference)]) == 2
    assert main([*base, "--input", str(photos)]) == 2  # neither --reference nor --prompt
    assert main([*base, "--input", str(photos), "--reference", str(reference), "--strength", "2"]) == 2
    assert capsys.readouterr().err.count("error:") == 3 and not (tmp_path / "out").exists()
    no_live3d = weights_copy(tiny_weights, tmp_path / "no-live3d", None)
    assert main([*base[:1], "--weights", str(no_live3d), *base[3:], "--input", str(photos), "--reference",
                 str(reference), "--strength", "0.5"]) == 2  # before any photo
    assert "encoder_render_LT_90000.pt" in capsys.readouterr().err and not (tmp_path / "out" / "photos").exists()


def test_interrupt_leaves_a_valid_report(tiny_weights, photos, reference, tmp_path):
    """Ctrl-C (SIGINT) while the first of three photos is edited: it is finished, the rest are reported as not run."""
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes((photos / "anna.png").read_bytes())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "threedpe", "batch", "--weights", str(tiny_weights), "--input", str(folder),
               "--out", str(out), "--reference", str(reference), "--device", "cpu", "--video", "--frames", "24"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "photos" / "p0_png" / "aligned.png").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the batch never started its first photo"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == LAST_LINE.format(1, 0, 0, out / "report.html")
    assert "2 photos not run" in stdout
    rows = _rows(out)
    assert [rows[f"p{i}.png"]["status"] for i in range(3)] == ["edited", "not run", "not run"]
    assert (out / "photos" / "p0_png" / "orbit.mp4").is_file()
    report = _Report(out / "report.html")
    assert report.closed and "not run" in " ".join(report.text)


def test_two_processes_share_the_photos(tiny_weights, photos, reference, tmp_path):
    out = tmp_path / "out"
    stdout = launch("threedpe.batch", ["--weights", str(tiny_weights), "--input", str(photos), "--out", str(out),
                                       "--reference", str(reference), "--device", "cpu"])
    assert stdout.strip().splitlines()[-1] == LAST_LINE.format(2, 0, 2, out / "report.html")
    shards = read_outcomes(out, world_size=2)
    assert len(shards) == 4 and sorted(p.name for p in (out / "shards").iterdir()) == [
        "rank00000-of-00002.jsonl", "rank00001-of-00002.jsonl"]
    by_rank = [[line for line in (out / "shards" / f"rank0000{r}-of-00002.jsonl").read_text().splitlines()]
               for r in (0, 1)]
    assert [len(lines) for lines in by_rank] == [2, 2]  # jobs[rank::2]
    assert write_report(out, collect_jobs(photos, reference=reference), shards) == out / "report.html"
    assert _rows(out)["class/ben.jpg"]["status"] == "edited"


def test_an_instruction_is_prepared_once(tiny_weights, photos, tmp_path, monkeypatch):
    from threedpe.diffusion import EditSettings

    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "jobs.csv"
    table.write_text(f"{photos / 'anna.png'},make it golden,\n{photos / 'class' / 'ben.jpg'},make it golden,0.5\n")
    jobs = collect_jobs(table)
    assert [(job.prompt, job.strength) for job in jobs] == [("make it golden", 1.0), ("make it golden", 0.5)]
    editor = PortraitEditor.from_pretrained(tiny_weights, cache_dir=tmp_path / "cache")
    options = BatchOptions(settings=EditSettings(steps=2, resolution=128))
    stop = []  # Ctrl-C while the instruction is prepared: nothing is run, nothing is kept as failed
    outcomes = edit_jobs(editor, jobs, tmp_path / "out", options, cancel=lambda: bool(stop) or stop.append(1) and False,
                         progress=False)
    assert outcomes == [] and not (tmp_path / "out" / "photos").exists()
    calls, reference = [], editor.text_reference.reference
    monkeypatch.setattr(editor.text_reference, "reference", lambda *a, **k: calls.append(a) or reference(*a, **k))
    outcomes = edit_jobs(editor, jobs, tmp_path / "out", options, progress=False)
    assert [o.status for o in outcomes] == ["edited", "edited"] and len(calls) == 1

