"""Gallery store: SIGKILL mid-publish, concurrent writer processes, ids and tokens, limits, privacy, zip, and the
Hub mirror (a local folder stands in for the dataset repo; the Hub itself is never contacted)."""
from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from unittest import mock

import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from threedpe.gallery import (SYNC_PATTERNS, Gallery, GalleryError, GalleryLimits, HubSync, LimitExceeded, NotAllowed,
                              Published, RecordNotFound, validate_id)
from threedpe.gallery.assets import Assets
from threedpe.gallery.store import Store

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin-token-for-the-tests-0123456789"
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(8)  # an ftyp box: enough for the signature check
GLB = b"glTF\x02\x00\x00\x00\x14\x00\x00\x00" + bytes(8)
ENV_VARS = ("THREEDPE_GALLERY", "THREEDPE_GALLERY_REPO", "HF_TOKEN", "THREEDPE_GALLERY_ADMIN_TOKEN")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub, no configuration from the developer's environment."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gallery(tmp_path):
    with Gallery(tmp_path / "store", admin_token=ADMIN) as store:
        yield store


def png(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (24, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def publish_one(store: Gallery, session: str = "session-a", **changes) -> Published:
    """A small instruction edit (tiny PNG strip, placeholder mp4 and GLB), with ``changes`` applied."""
    arguments = dict(session=session, strip=png(), instruction="make it a bronze statue", video=MP4, mesh=GLB,
                     settings={"steps": 20, "text_guidance": 7.5}, timings={"encode": 0.25})
    return store.publish(**{**arguments, **changes})


def listed(store: Gallery) -> list[str]:
    ids, number = [], 1
    while True:
        page = store.page(number, 100)
        ids += [record.id for record in page.items]
        if number >= page.pages:
            return ids
        number += 1


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def push(store_root: Path, hub: Path) -> int:
    """What CommitScheduler uploads: the files matching SYNC_PATTERNS, copied over the repo, never deleting."""
    files = [path.relative_to(store_root).as_posix() for path in store_root.rglob("*") if path.is_file()]
    selected = list(filter_repo_objects(files, allow_patterns=SYNC_PATTERNS))
    for relative in selected:
        (hub / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store_root / relative, hub / relative)
    return len(selected)


# ---- durability: a writer process killed at each stage ------------------------------------------------------

PAUSES = {  # stage: the gallery method the child pauses in, and whether before or after it runs
    "staging": (Assets, "stage_blob", "before"),  # the strip staged, the video not yet
    "staged": (Store, "commit", "before"),  # every file and meta.json staged, no row yet
    "before-commit": (Store, "place", "after"),  # the folder renamed into records/, its transaction not committed
    "delete-event-written": (Store, "write_event", "after"),  # the delete's event file written, not applied
}
CHILD = "import sys; from threedpe.gallery import Gallery; from tests.test_gallery import pause_at, publish_one; " \
        "pause_at(sys.argv[1], sys.argv[2]); "
PUBLISH_CHILD = CHILD + "publish_one(Gallery(sys.argv[3]))"
DELETE_CHILD = CHILD + "Gallery(sys.argv[3]).delete(sys.argv[4], sys.argv[5])"


def pause_at(stage: str, marker: str) -> None:
    """In a child process: wrap the method of ``PAUSES[stage]`` so that the gallery writes ``marker`` (its pid) and
    sleeps there, for the test to SIGKILL it exactly at that stage."""
    owner, name, when = PAUSES[stage]
    method = getattr(owner, name)

    def pause() -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)

    def paused(*args, **kwargs):
        if when == "before":
            pause()
        result = method(*args, **kwargs)
        pause()  # "after" (a pause "before" never returns)
        return result

    setattr(owner, name, paused)


def kill_at(stage: str, code: str, *args: str, marker: Path) -> None:
    """Run ``code`` in a child process that pauses at ``stage`` (see `pause_at`), then SIGKILL it there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code, stage, str(marker), *args], cwd=ROOT, env=env,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the child exited ({child.returncode}) before stage {stage}: {child.stderr.read().decode()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child did not reach stage {stage} within 60 s")
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    child.stderr.close()


@pytest.mark.parametrize("stage", ["staging", "staged", "before-commit"])
def test_publish_killed_at_each_stage_leaves_no_record(tmp_path, stage):
    root = tmp_path / "store"
    with Gallery(root) as store:
        kept = publish_one(store)
    kill_at(stage, PUBLISH_CHILD, str(root), marker=tmp_path / "paused")
    debris = {"staging": len(entries(root / "staging")), "records": len(entries(root / "records")) - 1}
    expected = {"staging": 0, "records": 1} if stage == "before-commit" else {"staging": 1, "records": 0}
    assert debris == expected, f"a kill at {stage!r} leaves one unfinished folder: {expected}, found {debris}"

    with Gallery(root) as store:  # opens cleanly, alone: cleans up
        assert listed(store) == [kept.id], f"after a SIGKILL at {stage!r} the listing is {listed(store)}"
        assert entries(root / "records") == [kept.id] and entries(root / "staging") == []
        assert store.page().total == 1
        assert len(listed(store)) == 1 and publish_one(store).id in listed(store)  # still fully usable
    print(f"\n[gallery] SIGKILL at {stage!r}: survived; unfinished folders {debris} cleaned at the next open")


def test_delete_killed_after_its_event_is_replayed(tmp_path):
    root = tmp_path / "store"
    with Gallery(root) as store:
        doomed, kept = publish_one(store), publish_one(store)
    kill_at("delete-event-written", DELETE_CHILD, str(root), doomed.id, doomed.owner_token, marker=tmp_path / "paused")
    assert doomed.id in entries(root / "records") and len(entries(root / "events")) == 1

    with Gallery(root) as store:
        assert listed(store) == [kept.id], "the delete whose event was written must be applied at the next open"
        with pytest.raises(RecordNotFound):
            store.get(doomed.id)
        assert entries(root / "records") == [kept.id]
    print("\n[gallery] SIGKILL between a delete's event file and its transaction: replayed at the next open")


# ---- concurrency ----------------------------------------------------------------------------------------------

WRITERS, PER_WRITER = 8, 50


def _writer(root: str, index: int) -> list[str]:
    with Gallery(root, limits=GalleryLimits(publishes_per_hour=PER_WRITER)) as store:
        return [publish_one(store, session=f"writer-{index}", strip=png((index * 30, n, 0))).id
                for n in range(PER_WRITER)]


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    root = tmp_path / "store"
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(WRITERS, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_writer, [str(root)] * WRITERS, range(WRITERS)))
    seconds = time.perf_counter() - start
    published = [record_id for ids in results for record_id in ids]
    expected = WRITERS * PER_WRITER

    with Gallery(root) as store:
        shown = listed(store)
        total = store.page().total
        assert all(store.get(record_id).strip.is_file() for record_id in published[::37])
    assert len(published) == len(set(published)) == expected, f"{len(set(published))} distinct ids of {expected}"
    assert total == expected and sorted(shown) == sorted(published), f"listed {len(shown)} of {expected}"
    assert len(entries(root / "records")) == expected and entries(root / "staging") == []
    print(f"\n[gallery] {WRITERS} writer processes ({method}) x {PER_WRITER} records = {expected} records, no loss, "
          f"no duplicates: {seconds:.2f} s, {expected / seconds:.0f} records/s")


# ---- ids, tokens, moderation ---------------------------------------------------------------------------------

BAD_IDS = ["../x", "/etc/passwd", "0" * 31 + "\x00", "0" * 32 + "/..", "..%2f" + "0" * 28, "A" * 32, "0" * 33,
           "f" * 100_000, "", None, 7]


def test_bad_ids_are_rejected_everywhere(gallery, tmp_path):
    calls = {"get": gallery.get, "delete": lambda value: gallery.delete(value, "token"),
             "flag": lambda value: gallery.flag(value, "why"), "hide": lambda value: gallery.hide(value, ADMIN),
             "zip": lambda value: gallery.zip(value, tmp_path / "zips")}
    for value in BAD_IDS:
        for name, call in calls.items():
            with pytest.raises(GalleryError, match="is not a gallery edit id") as error:
                call(value)
            assert len(str(error.value)) < 200, f"{name}: the message for a long id is {len(str(error.value))} chars"
    with pytest.raises(RecordNotFound, match="no published edit"):
        gallery.get("0" * 32)
    assert validate_id("0123456789abcdef" * 2) == "0123456789abcdef" * 2
    assert not (tmp_path / "zips").exists()


def test_names_never_reach_the_file_system(gallery):
    record = gallery.get(publish_one(gallery, style="../../etc/passwd", instruction="/etc/shadow and ../x").id)
    assert record.style == "../../etc/passwd"
    assert entries(record.folder) == ["mesh.glb", "meta.json", "orbit.mp4", "strip.png"]
    with pytest.raises(GalleryError, match="control characters"):
        publish_one(gallery, style="bad\x00name")
    with pytest.raises(GalleryError, match="no file at"):
        publish_one(gallery, video="../../missing.mp4")


def test_owner_token_and_admin_token(gallery, tmp_path):
    first, second = publish_one(gallery), publish_one(gallery)
    assert first.owner_token not in repr(first)
    for wrong in (second.owner_token, "", first.owner_token[:-1], None):
        with pytest.raises(NotAllowed, match="does not own"):
            gallery.delete(first.id, wrong)
    with pytest.raises(NotAllowed, match="not the gallery's admin token"):
        gallery.hide(first.id, first.owner_token)
    stored = b"".join(path.read_bytes() for path in gallery.root.rglob("*") if path.is_file())
    assert first.owner_token.encode() not in stored, "only the token's hash may be stored"

    gallery.delete(first.id, first.owner_token)
    with pytest.raises(RecordNotFound):
        gallery.get(first.id)
    assert not (gallery.root / "records" / first.id).exists()

    gallery.hide(second.id, ADMIN)
    assert listed(gallery) == []
    with pytest.raises(RecordNotFound, match="taken down by a moderator"):
        gallery.get(second.id)
    assert gallery.get(second.id, admin_token=ADMIN).hidden
    gallery.hide(second.id, ADMIN, hidden=False)
    assert listed(gallery) == [second.id]
    gallery.delete(second.id, ADMIN)
    assert listed(gallery) == []

    with Gallery(tmp_path / "no-admin") as store:
        with pytest.raises(NotAllowed, match="Moderation is off"):
            store.hide(publish_one(store).id, ADMIN)
    with pytest.raises(ValueError, match="at least 16 characters"):
        Gallery(tmp_path / "weak", admin_token="short")


def test_flags_are_counted_and_unlist_until_review(gallery):
    record = publish_one(gallery)
    counts = [gallery.flag(record.id, reason) for reason in ("not a portrait", "spam")]
    assert counts == [1, 2] and listed(gallery) == [record.id]
    assert gallery.flag(record.id, "offensive") == 3
    assert listed(gallery) == [] and gallery.page().total == 0, "3 flags take a record off the public listing"
    assert gallery.get(record.id).flags == 3, "a flagged record's permalink still opens"
    gallery.hide(record.id, ADMIN, hidden=False)
    assert listed(gallery) == [record.id] and gallery.get(record.id).flags == 0
    with pytest.raises(LimitExceeded, match="above the limit of 500"):
        gallery.flag(record.id, "x" * 501)
    with pytest.raises(GalleryError, match="the reason is empty"):
        gallery.flag(record.id, "  ")
    print(f"\n[gallery] flags counted {counts + [3]}, unlisted at 3, approved back to 0")


# ---- limits ------------------------------------------------------------------------------------------------

def assert_nothing_published(store: Gallery, count: int) -> None:
    assert store.page().total == count and len(entries(store.root / "records")) == count
    assert entries(store.root / "staging") == []


def test_quota_refuses_and_never_evicts(tmp_path):
    root = tmp_path / "store"
    with Gallery(root) as store:
        first = publish_one(store)
        size = sum(path.stat().st_size for path in store.get(first.id).folder.iterdir())
    with Gallery(root, limits=GalleryLimits(quota_bytes=size + size // 2)) as store:
        with pytest.raises(LimitExceeded, match="The gallery is full") as refusal:
            publish_one(store)
        assert "nothing already published is removed" in str(refusal.value)
        assert listed(store) == [first.id]
        assert_nothing_published(store, 1)
    print(f"\n[gallery] quota {size + size // 2} bytes, one record of {size} bytes: refused: {refusal.value}")


def test_rate_limit_per_session(gallery, tmp_path):
    with Gallery(tmp_path / "limited", limits=GalleryLimits(publishes_per_hour=2)) as store:
        for _ in range(2):
            publish_one(store, session="alice")
        with pytest.raises(LimitExceeded, match="published 2 edits in the past hour") as refusal:
            publish_one(store, session="alice")
        assert "minute" in str(refusal.value)
        assert_nothing_published(store, 2)
        publish_one(store, session="bob")  # another session is not affected
    with pytest.raises(GalleryError, match="browser session"):
        publish_one(gallery, session="")
    print(f"\n[gallery] rate limit 2/hour: {refusal.value}")


def test_upload_size_pixels_and_formats(tmp_path):
    limits = GalleryLimits(max_file_bytes=1000, max_image_pixels=5_000)
    with Gallery(tmp_path / "store", limits=limits) as store:
        with pytest.raises(LimitExceeded, match="the orbit video is 1.5 KB, above the limit of 1.0 KB"):
            publish_one(store, video=MP4 + bytes(1500))
        with pytest.raises(GalleryError, match="megapixels"):
            publish_one(store, strip=png(size=(100, 100)))
        with pytest.raises(GalleryError, match="not an image"):
            publish_one(store, strip=b"<html>not a picture</html>")
        with pytest.raises(GalleryError, match="not an MP4 video"):
            publish_one(store, video=b"#!/bin/sh\nrm -rf /\n" + bytes(20))
        with pytest.raises(GalleryError, match="not a GLB mesh"):
            publish_one(store, mesh=MP4)
        with pytest.raises(GalleryError, match="exactly one"):
            publish_one(store, reference=png())
        with pytest.raises(GalleryError, match="plain JSON"):
            publish_one(store, settings={"steps": float("nan")})
        assert_nothing_published(store, 0)


# ---- privacy and download ----------------------------------------------------------------------------------

def test_photo_thumbnail_only_when_asked(gallery):
    photo = png((10, 120, 200), size=(640, 480))
    private = gallery.get(publish_one(gallery, photo=photo).id)
    assert "photo" not in private.files and not (private.folder / "photo.png").exists()
    shared = gallery.get(publish_one(gallery, photo=photo, share_photo=True).id)
    with Image.open(shared.files["photo"]) as thumbnail:
        assert max(thumbnail.size) <= 128, f"thumbnail is {thumbnail.size}"
    print(f"\n[gallery] photo kept only on opt-in, as a thumbnail of {thumbnail.size}")


def test_zip_holds_exactly_the_assets_and_metadata(gallery, tmp_path):
    text = gallery.get(publish_one(gallery, style="bronze").id)
    reference = gallery.get(publish_one(gallery, instruction=None, reference=png((0, 90, 0), (16, 16)), video=None,
                                        mesh=None, photo=png(), share_photo=True).id)
    for record, names in ((text, {"strip.png", "orbit.mp4", "mesh.glb"}),
                          (reference, {"strip.png", "reference.png", "photo.png"})):
        path = gallery.zip(record.id, tmp_path / "downloads")
        assert path == tmp_path / "downloads" / f"threedpe-edit-{record.id}.zip"
        with zipfile.ZipFile(path) as archive:
            assert set(archive.namelist()) == names | {"metadata.json"}
            for name in names:
                assert archive.read(name) == (record.folder / name).read_bytes()
            metadata = json.loads(archive.read("metadata.json"))
        assert metadata == record.metadata and "owner_sha256" not in metadata
        assert set(entry["name"] for entry in metadata["files"].values()) == names
    assert reference.instruction is None and reference.caption == "Reference edit"
    assert text.caption == "make it a bronze statue · bronze" and text.settings["steps"] == 20


# ---- Hub mirror -----------------------------------------------------------------------------------------------

def state(store: Gallery, ids: list[str]) -> dict:
    """Everything the gallery shows: the listing in order (with metadata and flags) and each id's visibility."""
    visibility = {}
    for record_id in ids:
        try:
            visibility[record_id] = "hidden" if store.get(record_id, admin_token=ADMIN).hidden else "public"
        except RecordNotFound:
            visibility[record_id] = "deleted"
    items = [(record.id, record.metadata, record.flags) for record in store.page(1, 100).items]
    return {"listing": items, "visibility": visibility}


def build_mirrored_gallery(root: Path, hub: Path) -> tuple[dict, list[Published]]:
    """A gallery pushed twice to ``hub``: publishes, then deletes, hides, flags and an approval."""
    with Gallery(root, admin_token=ADMIN) as store:
        records = [publish_one(store, instruction=f"edit number {n}", style=f"style {n}", settings={"seed": n})
                   for n in range(5)]
        records.append(publish_one(store, instruction=None, reference=png(), photo=png(), share_photo=True))
        push(root, hub)
        never_pushed = publish_one(store)
        store.delete(never_pushed.id, never_pushed.owner_token)
        store.delete(records[0].id, records[0].owner_token)
        store.hide(records[1].id, ADMIN)
        store.flag(records[2].id, "looks odd")
        store.flag(records[2].id, "really odd")
        store.hide(records[3].id, ADMIN)
        store.hide(records[3].id, ADMIN, hidden=False)
        for _ in range(3):
            store.flag(records[4].id, "spam")
        push(root, hub)
        records.append(never_pushed)
        return state(store, [record.id for record in records]), records


def test_restore_from_a_local_hub_folder_rebuilds_the_same_gallery(tmp_path):
    hub = tmp_path / "hub"
    expected, records = build_mirrored_gallery(tmp_path / "a", hub)
    assert list(expected["visibility"].values()) == ["deleted", "hidden", "public", "public", "public", "public",
                                                     "deleted"]
    (hub / "records" / "not-an-id").mkdir()  # junk in the repo is skipped, never copied
    bad = hub / "records" / ("e" * 32)
    bad.mkdir()
    (bad / "meta.json").write_text(json.dumps({"format": "threedpe-gallery-record", "id": "e" * 32, "created": 1.0,
                                               "owner_sha256": "0", "files": {"strip": {"name": "../../evil"}}}))

    with Gallery(tmp_path / "b", admin_token=ADMIN) as store:
        report = store.restore(hub)
        assert state(store, [record.id for record in records]) == expected
        for record in store.page(1, 100).items:
            for name, path in record.files.items():
                assert path.read_bytes() == (tmp_path / "a" / "records" / record.id / path.name).read_bytes()
        assert sorted(report.skipped) == ["e" * 32, "not-an-id"] and not (tmp_path / "evil").exists()
        again = store.restore(hub)
        assert (again.records, again.events) == (0, 0), f"restoring twice added {again}"
        store.delete(records[2].id, records[2].owner_token)  # owner tokens keep working after a restore
    print(f"\n[gallery] restore from a hub folder: {report.records} records, {report.events} events replayed, "
          f"{len(report.skipped)} junk folders skipped; listing, metadata, flags, hidden and deleted state identical")


class FakeScheduler:
    """Stands in for huggingface_hub.CommitScheduler: its pushes copy the store's SYNC_PATTERNS files to a folder."""

    hub: Path
    instances: list[FakeScheduler] = []

    def __init__(self, **kwargs):
        self.kwargs, self.lock, self.stopped = kwargs, threading.Lock(), False
        FakeScheduler.instances.append(self)

    def trigger(self) -> concurrent.futures.Future:
        with self.lock:
            push(self.kwargs["folder_path"], self.hub)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(None)
        return future

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HF_TOKEN + THREEDPE_GALLERY_REPO set; snapshot_download and CommitScheduler replaced by local-folder fakes."""
    hub = tmp_path / "hub"
    hub.mkdir()
    downloads = []

    def snapshot_download(repo_id, *, repo_type, token, local_dir, allow_patterns):
        downloads.append((repo_id, repo_type, token, allow_patterns))
        if not (hub / "records").exists():
            raise RepositoryNotFoundError(f"{repo_id} does not exist yet", response=mock.Mock(headers={}))
        shutil.copytree(hub, local_dir, dirs_exist_ok=True)

    FakeScheduler.hub, FakeScheduler.instances = hub, []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "CommitScheduler", FakeScheduler)
    monkeypatch.setenv("THREEDPE_GALLERY_REPO", "someone/threedpe-gallery")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("THREEDPE_GALLERY_ADMIN_TOKEN", ADMIN)
    return hub, downloads


def test_synced_gallery_restores_at_start_and_pushes_through_the_scheduler(fake_hub, tmp_path):
    hub, downloads = fake_hub
    with Gallery(tmp_path / "first-start") as store:  # empty repo: nothing to restore, the scheduler starts
        first = publish_one(store)
    assert downloads[0] == ("someone/threedpe-gallery", "dataset", "hf_test_token", SYNC_PATTERNS)
    (scheduler,) = FakeScheduler.instances
    assert scheduler.kwargs == dict(repo_id="someone/threedpe-gallery", repo_type="dataset",
                                    folder_path=tmp_path / "first-start", every=5.0, token="hf_test_token",
                                    private=True, allow_patterns=SYNC_PATTERNS)
    assert scheduler.stopped and (hub / "records" / first.id / "meta.json").is_file(), "close() pushes the rest"

    with Gallery(tmp_path / "restart") as store:  # a wiped disk: everything comes back from the repo
        assert listed(store) == [first.id]
        store.delete(first.id, first.owner_token)
        second = publish_one(store)
    with Gallery(tmp_path / "third-start") as store:
        assert listed(store) == [second.id], "the delete event and the new record were synced"
    assert entries(hub) == ["events", "records"] and first.id in entries(hub / "records"), "the mirror is append-only"


def test_without_a_repo_nothing_is_scheduled(gallery, monkeypatch, tmp_path):
    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub must not be used without THREEDPE_GALLERY_REPO")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "CommitScheduler", no_hub)
    with Gallery(tmp_path / "local") as store:
        publish_one(store)
        assert store.sync is None and HubSync.from_env() is None
    monkeypatch.setenv("THREEDPE_GALLERY_REPO", "someone/threedpe-gallery")
    with pytest.raises(ValueError, match="HF_TOKEN is not"):
        Gallery(tmp_path / "misconfigured")


def test_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("THREEDPE_GALLERY", str(tmp_path / "from-env"))
    with Gallery() as store:
        assert store.root == tmp_path / "from-env" and (store.root / "gallery.sqlite3").is_file()
