"""The app's Batch tab through gradio_client (the in-process server of tests/app_server.py, tiny weights): a batch with
a broken file and a photo without a face, the photo limit, Stop, the CSV of mixed jobs, and its GPU calls."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests import test_app
from threedpe.batch import BatchJob
from threedpe.serving import batches
from threedpe.serving.batches import MAX_PHOTOS_ENV, batch_calls

server, client = test_app.server, test_app.client  # the fixtures: the shared server, a fresh session per test


def copies(photo: Path, folder: Path, count: int) -> list:
    """``count`` uploads of ``photo`` under different names."""
    paths = [folder / f"photo{i}{photo.suffix}" for i in range(count)]
    for path in paths:
        path.write_bytes(photo.read_bytes())
    return [handle_file(path) for path in paths]


def results(archive: str) -> tuple[dict[str, dict], set[str], str]:
    """The rows of the zip's results.csv by photo, the names in the zip, and its report.html."""
    with zipfile.ZipFile(archive) as bundle:
        rows = {row["photo"]: row for row in csv.DictReader(io.StringIO(bundle.read("results.csv").decode()))}
        return rows, set(bundle.namelist()), bundle.read("report.html").decode()


def test_a_batch_with_a_broken_file_and_no_face_edits_the_rest_and_names_both(server, client, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    photos = tmp_path / "class.zip"
    with zipfile.ZipFile(photos, "w") as bundle:
        bundle.write(server.photo, "class/anna.jpg")
    status, summary, archive, contact = client.predict(
        [handle_file(server.photo), handle_file(broken), handle_file(server.no_face), handle_file(photos)],
        handle_file(server.reference), "", 1.0, api_name="/edit_batch")
    rows, names, report = results(archive)
    assert {photo: row["status"] for photo, row in rows.items()} == {
        "astronaut.jpg": "edited", "broken.jpg": "failed", "coffee.png": "failed", "class/anna.jpg": "edited"}
    assert "no face" in rows["coffee.png"]["reason"].lower() and rows["broken.jpg"]["reason"]
    assert str(server.folder) not in rows["broken.jpg"]["reason"]  # no server path in what is handed out
    assert {"report.html", "results.csv", "photos/astronaut_jpg/views.png", "photos/class/anna_jpg/views.png"} <= names
    assert "broken.jpg" in report and "coffee.png" in report and "failed" in report
    assert "edited=2 · skipped=0 · failed=2" in summary and "broken.jpg" in summary and "coffee.png" in summary
    assert "Done: 4 photos" in status
    assert sorted(item["caption"] for item in contact) == ["astronaut.jpg", "class/anna.jpg"]


def test_a_batch_over_the_limit_is_refused_naming_the_limit(server, client, monkeypatch, tmp_path):
    monkeypatch.setenv(MAX_PHOTOS_ENV, "2")
    with pytest.raises(AppError, match="at most 2 photos"):
        client.predict(copies(server.photo, tmp_path, 3), None, "make it bronze", 1.0, api_name="/edit_batch")
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(AppError, match="the upload holds no photo"):
        client.predict([handle_file(empty)], handle_file(server.reference), "", api_name="/edit_batch")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(AppError, match="notes.txt is not a photo"):
        client.predict([handle_file(server.photo), handle_file(notes)], handle_file(server.reference), "",
                       api_name="/edit_batch")
    with pytest.raises(AppError, match="not both"):
        client.predict([handle_file(server.photo)], handle_file(server.reference), "make it bronze",
                       api_name="/edit_batch")


def test_stop_ends_the_batch_after_the_current_photo_with_a_valid_report(server, client, monkeypatch, tmp_path):
    edit_crops = server.editor.edit_crops

    def then_stop(*args, **kwargs):  # Stop pressed while the first photo is encoded
        server.sessions.stop_flag(client.session_hash).set()
        return edit_crops(*args, **kwargs)

    monkeypatch.setattr(server.editor, "edit_crops", then_stop)
    status, summary, archive, contact = client.predict(
        copies(server.photo, tmp_path, 3), handle_file(server.reference), "", api_name="/edit_batch")
    rows, names, report = results(archive)
    assert [row["status"] for row in rows.values()] == ["edited", "not run", "not run"]
    assert "Stopped after 1 of 3" in status and "not run=2" in summary and "not run" in report
    assert len(contact) == 1


def test_a_csv_of_mixed_jobs_names_the_photos_of_the_upload_and_nothing_outside_it(server, client, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"photo,reference|prompt,strength\nastronaut.jpg,{server.reference.name},0.5\n"
                    "class/anna.jpg,make it bronze,\n")
    photos = tmp_path / "class.zip"
    with zipfile.ZipFile(photos, "w") as bundle:
        bundle.write(server.photo, "class/anna.jpg")
    status, summary, archive, _ = client.predict(
        [handle_file(server.photo), handle_file(photos), handle_file(server.reference), handle_file(jobs)], None, "",
        api_name="/edit_batch")
    rows, names, _ = results(archive)
    assert {photo: row["status"] for photo, row in rows.items()} == {"astronaut.jpg": "edited",
                                                                     "class/anna.jpg": "edited"}, summary
    assert {"photos/row00002_astronaut_jpg/views.png", "photos/row00003_anna_jpg/views.png"} <= names
    jobs.write_text("photo\n/etc/hostname\n")
    with pytest.raises(AppError, match="not among the uploaded photos"):
        client.predict([handle_file(server.photo), handle_file(jobs)], handle_file(server.reference), "",
                       api_name="/edit_batch")


def test_on_zero_gpu_a_batch_is_split_into_calls_of_at_most_two_minutes(monkeypatch):
    jobs = [BatchJob(f"p{i}", f"p{i}.jpg", Path(f"p{i}.jpg"), prompt="make it bronze") for i in range(60)]
    assert batch_calls(jobs[:3]) == [[job] for job in jobs[:3]]  # here: one call per photo
    monkeypatch.setattr(batches, "on_zero_gpu", lambda: True)
    monkeypatch.delenv(MAX_PHOTOS_ENV, raising=False)
    calls = batch_calls(jobs)
    assert [job for call in calls for job in call] == jobs and len(calls) > 1
    assert all(batches.EditRunner.batch_duration(call, Path()) <= batches.MAX_GPU_CALL_S for call in calls)
    assert batches.max_batch_photos() == batches.ZERO_GPU_MAX_PHOTOS
