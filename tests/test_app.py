"""The Gradio app served in-process on tiny weights, driven through gradio_client: every api_name, real inputs."""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from tests.app_server import AppServer, app_server, serve
from threedpe.demo import DemoRunner, SessionFiles, load_editor
from threedpe.diffusion import EditSettings

ENDPOINTS = {f"/{kind}_{tab}" for kind in ("edit", "orbit_video", "mesh", "render_view")
             for tab in ("text", "reference")}
TINY_TEXT = {"steps": 2, "text_guidance": 7.5, "image_guidance": 1.5, "resolution": 64, "seed": 0, "anchor": 0,
             "use_own_photo": False}


@pytest.fixture(scope="module")
def server() -> AppServer:
    return app_server()


@pytest.fixture()
def client(server: AppServer) -> Client:
    """A fresh client, hence a fresh session (its own gr.State)."""
    return Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))


def page_config(url: str) -> str:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return json.dumps(json.load(response))


def png(path: str) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def edit_reference(client: Client, server: AppServer, photo: Path | None = None) -> tuple:
    return client.predict(handle_file(photo or server.photo), handle_file(server.reference),
                          api_name="/edit_reference")


def check_edit_outputs(outputs: tuple) -> Image.Image:
    """The 8 visible outputs of an edit; returns the frontal free view."""
    aligned, reference, strip, view, depth, yaw, pitch, timings = outputs
    assert png(aligned).size == (512, 512)
    assert png(reference).width == png(reference).height
    view_image = png(view)
    size = view_image.width
    assert png(strip).size == (3 * size, size)
    assert png(depth).size == (size, size)
    assert yaw["value"] == 0 and pitch["value"] == 0 and yaw["interactive"]
    for stage in ("align", "reference", "encode", "render"):
        assert stage in timings
    assert "UNTRAINED" in timings
    return view_image


def test_api_lists_every_endpoint_with_the_photo_first(server, client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == ENDPOINTS
    for name in ("/edit_text", "/edit_reference"):
        assert endpoints[name]["parameters"][0]["parameter_name"] == "photo"


def test_stop_buttons_cancel_the_edit_video_and_mesh_of_their_tab(server):
    config = server.demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    names = {d["id"]: d.get("api_name") for d in config["dependencies"]}
    for tab in ("text", "reference"):
        [stop] = [d for d in config["dependencies"] if d.get("cancels")
                  and any(ids.get(t[0]) == f"{tab}-stop" for t in d["targets"])]
        cancelled = {names[i] for i in stop["cancels"]}
        assert cancelled == {f"edit_{tab}", f"orbit_video_{tab}", f"mesh_{tab}"}


def test_page_says_the_weights_are_untrained(server):
    config = page_config(server.url)
    assert "Untrained weights" in config and "Text edit" in config and "Reference edit" in config


def test_reference_edit_then_views_video_and_mesh(server, client):
    frontal = check_edit_outputs(edit_reference(client, server))

    turned = png(client.predict(30, -10, api_name="/render_view_reference"))
    assert turned.size == frontal.size and not np.array_equal(np.asarray(turned), np.asarray(frontal))
    again = png(client.predict(0, 0, api_name="/render_view_reference"))
    assert np.array_equal(np.asarray(again), np.asarray(frontal))  # re-rendered from the cached tri-planes

    video, timings = client.predict(8, api_name="/orbit_video_reference")
    reader = imageio_ffmpeg.read_frames(video)
    meta = next(reader)
    assert meta["size"] == frontal.size and sum(1 for _ in reader) == 8
    assert "orbit video" in timings

    glb, files, timings = client.predict(32, api_name="/mesh_reference")
    assert sorted(Path(f).suffix for f in files) == [".glb", ".ply"]
    for path in (glb, *files):
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert "mesh" in timings and "orbit video" in timings


def test_text_edit_then_view(server, client):
    outputs = client.predict(handle_file(server.photo), "make it a bronze statue", *TINY_TEXT.values(),
                             api_name="/edit_text")
    frontal = check_edit_outputs(outputs)
    assert png(outputs[1]).size == (64, 64)  # the InstructPix2Pix reference, at the 2D edit resolution
    turned = png(client.predict(-40, 20, api_name="/render_view_text"))
    assert turned.size == frontal.size
    video, _ = client.predict(8, api_name="/orbit_video_text")
    assert Path(video).stat().st_size > 0
    glb, files, _ = client.predict(32, api_name="/mesh_text")
    assert len(trimesh.load(glb, force="mesh").faces) > 0 and len(files) == 2


def test_session_folder_holds_the_outputs(server, client):
    edit_reference(client, server)
    client.predict(8, api_name="/orbit_video_reference")
    made = list(server.sessions.root.glob(f"{client.session_hash}/orbit-*.mp4"))
    assert len(made) == 1
    server.sessions.close(client.session_hash)
    assert not (server.sessions.root / client.session_hash).exists()


@pytest.mark.parametrize("call, message", [
    ("no_face", "face"),
    ("unreadable", "not an image"),
    ("empty_prompt", "instruction is empty"),
    ("bad_guidance", "text_guidance must be > 1"),
    ("no_reference", "Upload a reference image"),
    ("view_before_edit", "Run an edit first"),
    ("video_before_edit", "Run an edit first"),
    ("yaw_out_of_range", "greater than maximum"),
])
def test_user_errors_are_messages(server, client, tmp_path, call, message):
    unreadable = tmp_path / "photo.png"
    unreadable.write_bytes(b"this is not an image")
    photo = handle_file(server.photo)
    text = dict(TINY_TEXT)
    calls = {
        "no_face": lambda: edit_reference(client, server, server.no_face),
        "unreadable": lambda: edit_reference(client, server, unreadable),
        "empty_prompt": lambda: client.predict(photo, "   ", *text.values(), api_name="/edit_text"),
        "bad_guidance": lambda: client.predict(photo, "make it bronze", *{**text, "text_guidance": 1.0}.values(),
                                               api_name="/edit_text"),
        "no_reference": lambda: client.predict(photo, None, api_name="/edit_reference"),
        "view_before_edit": lambda: client.predict(10, 0, api_name="/render_view_text"),
        "video_before_edit": lambda: client.predict(8, api_name="/orbit_video_reference"),
        "yaw_out_of_range": lambda: (edit_reference(client, server),
                                     client.predict(90, 0, api_name="/render_view_reference")),
    }
    with pytest.raises(AppError, match=message) as error:
        calls[call]()
    assert "Traceback" not in str(error.value)


def test_missing_weights_page_starts_and_explains(tmp_path, server):
    editor = load_editor(tmp_path / "empty")
    demo = app.build_demo(editor, sessions=SessionFiles(tmp_path / "sessions"))
    url = serve(demo)
    try:
        config = page_config(url)
        assert "Model weights are missing" in config and "3dpe.pt" in config and "tiny-weights" in config
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        with pytest.raises(AppError, match="no 3DPE editor weights"):
            client.predict(handle_file(server.photo), handle_file(server.reference), api_name="/edit_reference")
    finally:
        demo.close()


def test_zero_gpu_durations_grow_with_the_work():
    edit = DemoRunner.edit_duration
    assert edit("p.png", reference="r.png") < edit("p.png", prompt="x", settings=EditSettings(steps=20))
    assert edit("p.png", prompt="x", settings=EditSettings(steps=20)) < edit("p.png", prompt="x",
                                                                          settings=EditSettings(steps=50))
    assert DemoRunner.video_duration(None, Path("."), 48) < DemoRunner.video_duration(None, Path("."), 240)
    assert DemoRunner.mesh_duration(None, Path("."), 128) < DemoRunner.mesh_duration(None, Path("."), 384)


def test_session_files_prune_and_refuse_odd_ids(tmp_path):
    sessions = SessionFiles(tmp_path)
    old, new = sessions.folder("old_session"), sessions.folder("new-session")
    os.utime(old, (0, 0))
    sessions.prune(max_age_s=3600)
    assert not old.exists() and new.is_dir()
    with pytest.raises(ValueError, match="session id"):
        sessions.folder("../escape")
