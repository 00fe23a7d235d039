"""The Gradio app served in-process on tiny weights, driven through gradio_client at the app's default settings:
every api_name, real inputs, named output files, stop, limits, missing weights."""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.app_server import AppServer, app_server, serve
from threedpe.cancel import Cancelled
from threedpe.diffusion import EditSettings
from threedpe.gallery import Gallery
from threedpe.devices import resolve_device
from threedpe.precision import native_bf16, recommended_precision
from threedpe.serving.messages import public_message
from threedpe.serving.runner import EditRunner, OutputSettings, load_editor
from threedpe.serving.sessions import RateLimiter, RateLimitError, SessionFiles
from threedpe.ui import status as status_line
from threedpe.ui.page import build_demo

ENDPOINTS = {f"/{kind}_{tab}" for kind in ("edit", "orbit_video", "mesh", "render_view", "set_strength")
             for tab in ("text", "reference", "customize") if (kind, tab) != ("edit", "customize")} | {
    "/publish", "/gallery_page", "/open_edit", "/delete_edit", "/flag_edit", "/generate_pairs", "/customize",
    "/apply_style", "/edit_batch", "/edit_video"} | (
        {"/set_precision"} if native_bf16("cpu") else set())  # a choice where bf16 is native


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
    return client.predict(handle_file(photo or server.photo), handle_file(server.reference), False,
                          api_name="/edit_reference")


def edit_text(client: Client, server: AppServer, instruction: str = "make it a bronze statue") -> tuple:
    """A text edit with every setting at the app's default."""
    return client.predict(handle_file(server.photo), instruction, api_name="/edit_text")


def check_edit_outputs(outputs: tuple) -> Image.Image:
    """The 8 outputs of an edit, named for what they hold; returns the frontal free view."""
    aligned, reference, strip, view, depth, status, (before, after), strength = outputs
    assert png(before) == png(aligned) and png(after) == png(view) and strength == 1.0  # the before/after slider
    names = [Path(path).name for path in (aligned, reference, strip, view, depth)]
    assert names == ["aligned.png", "reference.png", "views.png", "view_yaw0_pitch0.png", "depth.png"]
    assert png(aligned).size == (512, 512)
    assert png(reference).width == png(reference).height
    view_image = png(view)
    size = view_image.width
    assert png(strip).size == (3 * size, size)
    assert png(depth).size == (size, size)
    for stage in ("align", "reference", "encode", "render"):
        assert stage in status
    assert "UNTRAINED" in status
    return view_image


def test_api_lists_every_endpoint_with_the_photo_first_and_labelled_outputs(server, client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == ENDPOINTS
    for name in ("/edit_text", "/edit_reference"):
        assert endpoints[name]["parameters"][0]["parameter_name"] == "photo"
    for name, endpoint in endpoints.items():
        for output in endpoint["returns"]:
            assert output["label"] and not re.fullmatch(r"value_\d+", output["label"]), (name, output)


def test_stop_buttons_stop_their_tab_at_once_without_gradio_cancels(server):
    """Each tab's Stop runs at once (not queued) and stops through the session's stop flag only: a gradio cancel of
    a running event races with the event's own end and could leave an error badge on the status line."""
    config = server.demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    for tab in ("text", "reference", "customize", "batch", "video"):
        stops = [d for d in config["dependencies"] if any(ids.get(t[0]) == f"{tab}-stop" for t in d["targets"])]
        assert len(stops) == 1 and stops[0]["queue"] is False and not stops[0].get("cancels"), stops


def test_a_stop_ends_running_queued_and_chained_work_until_a_new_action(tmp_path):
    """``SessionFiles.stop`` returns when the running work has ended; work of the session starting after it (queued,
    or the video and mesh chained after a stopped edit) is stopped at once; a new action clears the stop, but only
    after the stopped work has ended, so a quick new click never lets the old work run on."""
    sessions = SessionFiles(tmp_path)
    ended = []

    def work(name: str, check_every: float) -> None:
        with sessions.running("s1") as stop:
            while not stop():
                time.sleep(check_every)  # one unit of work (a frame, a chunk, a step)
            ended.append((name, time.perf_counter()))

    worker = threading.Thread(target=work, args=("running", 0.05))
    worker.start()
    time.sleep(0.3)
    assert sessions.stop("s1", timeout=10) and [name for name, _ in ended] == ["running"]
    with sessions.running("s1") as stop:
        assert stop()  # queued or chained after the stop: ends at once
    sessions.begin("s1")
    with sessions.running("s1") as stop:
        assert not stop()  # the new action runs

    slow = threading.Thread(target=work, args=("slow", 1.0))
    slow.start()
    time.sleep(0.3)
    assert not sessions.stop("s1", timeout=0)  # asked; the work has not reached its next check yet
    sessions.begin("s1")  # a new click at once: waits for the stopped work, then clears
    begun = time.perf_counter()
    slow.join(timeout=10)
    assert ended[-1][0] == "slow" and ended[-1][1] <= begun and not sessions.stop_flag("s1")()


def test_progress_shows_once_per_action_on_the_status_line(server):
    config = server.demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    for dependency in config["dependencies"]:
        name = dependency.get("api_name") or ""
        if name.startswith(("edit_", "orbit_video_", "mesh_", "apply_style", "generate_pairs", "customize")):
            status = {"apply_style": "customize-status", "generate_pairs": "customize-tune-status",
                      "customize": "customize-tune-status"}.get(name, f"{name.split('_')[-1]}-status")
            assert [ids[t] for t in dependency["show_progress_on"]] == [status], dependency


def test_page_says_the_weights_are_untrained_and_how_the_text_tab_works(server):
    config = page_config(server.url)
    assert "Untrained weights" in config and "Text edit" in config and "Reference edit" in config
    assert "anchor portrait" in config and "EG3D sample, seed 0" in config  # tiny weights hold an EG3D generator


def timed(call, limit_s: float = 120.0):
    """``call()``, which must finish within a generous ``limit_s`` on tiny weights (seconds are typical)."""
    start = time.perf_counter()
    value = call()
    assert time.perf_counter() - start < limit_s
    return value


def test_building_the_page_warns_about_nothing(server, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_demo(server.editor, sessions=SessionFiles(tmp_path), gallery=server.gallery)


def test_reference_edit_then_views_video_and_mesh_at_default_settings(server, client):
    frontal = check_edit_outputs(timed(lambda: edit_reference(client, server)))

    turned = client.predict(30, -10, api_name="/render_view_reference")
    assert Path(turned).name == "view_yaw30_pitch-10.png"
    assert png(turned).size == frontal.size and not np.array_equal(np.asarray(png(turned)), np.asarray(frontal))
    again = png(client.predict(0, 0, api_name="/render_view_reference"))
    assert np.array_equal(np.asarray(again), np.asarray(frontal))  # re-rendered from the cached tri-planes

    video, status = timed(lambda: client.predict(api_name="/orbit_video_reference"))  # the default frame count
    assert Path(video).name == "orbit.mp4"
    reader = imageio_ffmpeg.read_frames(video)
    meta = next(reader)
    assert meta["size"] == frontal.size and sum(1 for _ in reader) == OutputSettings.for_device(
        server.editor.device).video_frames
    assert "orbit video" in status

    glb, files, status = timed(lambda: client.predict(api_name="/mesh_reference"))
    assert sorted(Path(f).name for f in files) == ["mesh.glb", "mesh.ply"]
    for path in (glb, *files):
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert "mesh" in status and "orbit video" in status


def test_strength_re_renders_the_edit_without_a_new_encode_and_is_published(server, client, monkeypatch):
    """Moving the strength slider re-renders the strip, the frontal view and the before/after from the stored
    tri-planes (no encode; 0 = the photo in 3D differs from the edit, back to 1 gives the edit's view bit for bit);
    free views render at the chosen strength, a published edit keeps it, and the edit endpoint takes it last."""
    encodes, encode = [], server.editor.encode
    monkeypatch.setattr(server.editor, "encode", lambda *args, **kwargs: encodes.append(1) or encode(*args, **kwargs))
    outputs = edit_reference(client, server)
    frontal, strip = png(outputs[3]), png(outputs[2])
    zero = client.predict(0, api_name="/set_strength_reference")
    aligned, _, zero_strip, zero_view, _, status, (before, after), strength, yaw, pitch, *stale = zero
    assert Path(zero_view).name == "view_yaw0_pitch0_strength0.png" and strength == 0 and (yaw, pitch) == (0, 0)
    assert stale == [None, None, None]  # the video, mesh and files of the previous strength are cleared
    assert png(after) == png(zero_view) and png(before) == png(aligned) and "render" in status
    assert png(zero_view) != frontal and png(zero_strip) != strip
    turned = png(client.predict(20, 0, api_name="/render_view_reference"))  # the free view at strength 0
    assert turned == png(client.predict(20, 0, api_name="/render_view_reference"))
    again = client.predict(1, api_name="/set_strength_reference")
    assert png(again[3]) == frontal and png(again[2]) == strip
    assert png(client.predict(20, 0, api_name="/render_view_reference")) != turned
    client.predict(0.5, api_name="/set_strength_reference")
    assert len(encodes) == 1  # the edit's own encode only
    info = client.predict(client.predict(False, api_name="/publish")["id"], api_name="/open_edit")[0]
    assert "edit strength 0.5" in info, info
    direct = client.predict(handle_file(server.photo), handle_file(server.reference), False, 0.5,
                            api_name="/edit_reference")
    assert Path(direct[3]).name == "view_yaw0_pitch0_strength0.5.png" and direct[7] == 0.5 and len(encodes) == 2
    with pytest.raises(AppError):
        client.predict(2, api_name="/set_strength_reference")


def test_the_strength_slider_hides_and_says_why_without_the_live3d_file(server, tmp_path, monkeypatch):
    reason = "edit strengths other than 1 need Live3D's reconstruction network: put live3d.pt in the weight folder"
    monkeypatch.setattr(type(server.editor), "strength_unavailable", property(lambda self: reason))
    demo = build_demo(server.editor, sessions=SessionFiles(tmp_path / "sessions"))
    props = elem_props(demo, ("-strength", "-strength-note"))
    for tab in ("text", "reference", "customize"):
        assert props[f"{tab}-strength"]["visible"] is False and "live3d.pt" in props[f"{tab}-strength-note"]["value"]
    shown = elem_props(server.demo, ("-strength", "-strength-note"))
    assert shown["reference-strength"]["visible"] is True and "reference-strength-note" not in shown


def test_the_status_line_names_the_precision_and_exact_is_one_click_away(server, client):
    """On a CPU that computes bfloat16 natively the app edits in "fast" (bf16) unless the visitor picks "exact"; the
    status line says which ran, and a view of the edit keeps its precision. Elsewhere there is no choice (fp32)."""
    default = OutputSettings.for_device(server.editor.device).precision
    assert default == recommended_precision("cpu")
    assert ('"elem_id": "precision"' in page_config(server.url)) == native_bf16("cpu")
    status = edit_reference(client, server)[5]
    assert ("cpu bf16 (fast precision" in status) == (default == "fast") and ("cpu fp32" in status) != (
        default == "fast")
    if not native_bf16("cpu"):
        return
    fast_view = png(client.predict(30, 0, api_name="/render_view_reference"))
    assert "exact" in client.predict("exact", api_name="/set_precision")
    status = edit_reference(client, server)[5]
    assert "cpu fp32" in status and "bf16" not in status
    exact_view = png(client.predict(30, 0, api_name="/render_view_reference"))
    assert not np.array_equal(np.asarray(fast_view), np.asarray(exact_view))  # the view kept the edit's precision
    other = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    assert "cpu bf16" in edit_reference(other, server)[5]  # another visitor keeps the default
    assert "fast" in client.predict("fast", api_name="/set_precision")


def test_text_edit_at_default_settings_then_view_video_mesh(server, client):
    start = time.perf_counter()
    outputs = edit_text(client, server)
    seconds = time.perf_counter() - start
    frontal = check_edit_outputs(outputs)
    side = OutputSettings.for_device(server.editor.device).text_resolution  # 256 on CPU, 512 on a GPU
    assert png(outputs[1]).size == (side, side)  # the InstructPix2Pix reference, at the default 2D edit resolution
    assert "anchor portrait" in outputs[5] and "EG3D sample, seed 0" in outputs[5]
    print(f"text edit at default settings (20 steps, 512^2) on tiny weights: {seconds:.1f} s")
    assert seconds < 60
    turned = png(client.predict(-40, 20, api_name="/render_view_text"))
    assert turned.size == frontal.size
    video, _ = timed(lambda: client.predict(api_name="/orbit_video_text"))
    assert Path(video).stat().st_size > 0
    glb, files, _ = timed(lambda: client.predict(api_name="/mesh_text"))
    assert len(trimesh.load(glb, force="mesh").faces) > 0 and len(files) == 2


def test_text_edit_on_a_shipped_anchor_and_on_the_own_photo(server, client):
    outputs = client.predict(handle_file(server.photo), "make it golden", False, "astronaut", api_name="/edit_text")
    assert "Astronaut photo" in outputs[5]
    own = client.predict(handle_file(server.photo), "make it golden", True, api_name="/edit_text")
    assert "anchor portrait" not in own[5]


def test_session_folder_holds_named_outputs_and_is_removed_at_the_end(server, client):
    edit_reference(client, server)
    client.predict(8, api_name="/orbit_video_reference")
    [video] = list(server.sessions.root.glob(f"{client.session_hash}/*/orbit.mp4"))
    assert {p.name for p in video.parent.iterdir()} >= {"aligned.png", "reference.png", "views.png", "depth.png",
                                                       "view_yaw0_pitch0.png", "orbit.mp4"}
    server.sessions.close(client.session_hash)
    assert not (server.sessions.root / client.session_hash).exists()


@pytest.mark.parametrize("call, message", [
    ("no_face", "face"),
    ("unreadable", "not an image"),
    ("empty_prompt", "instruction is empty"),
    ("bad_guidance", "text_guidance must be > 1"),
    ("no_photo_no_reference", "Upload a portrait photo first"),
    ("no_reference", "Upload a reference image"),
    ("unknown_anchor", "unknown anchor"),
    ("view_before_edit", "Run an edit first"),
    ("video_before_edit", "Run an edit first"),
    ("yaw_out_of_range", "greater than maximum"),
])
def test_user_errors_are_messages(server, client, tmp_path, call, message):
    unreadable = tmp_path / "photo.png"
    unreadable.write_bytes(b"this is not an image")
    photo = handle_file(server.photo)
    calls = {
        "no_face": lambda: edit_reference(client, server, server.no_face),
        "unreadable": lambda: edit_reference(client, server, unreadable),
        "empty_prompt": lambda: client.predict(photo, "   ", api_name="/edit_text"),
        "bad_guidance": lambda: client.predict(photo, "make it bronze", False, "astronaut", 20, 1.0,
                                               api_name="/edit_text"),
        "no_photo_no_reference": lambda: client.predict(None, None, api_name="/edit_reference"),
        "no_reference": lambda: client.predict(photo, None, api_name="/edit_reference"),
        "unknown_anchor": lambda: client.predict(photo, "make it bronze", False, "nobody", api_name="/edit_text"),
        "view_before_edit": lambda: client.predict(10, 0, api_name="/render_view_text"),
        "video_before_edit": lambda: client.predict(8, api_name="/orbit_video_reference"),
        "yaw_out_of_range": lambda: (edit_reference(client, server),
                                     client.predict(90, 0, api_name="/render_view_reference")),
    }
    with pytest.raises(AppError, match=message) as error:
        calls[call]()
    assert "Traceback" not in str(error.value) and str(server.folder) not in str(error.value)


def elem_props(demo, suffixes: tuple[str, ...]) -> dict[str, dict]:
    """The props of the components whose elem_id ends with one of ``suffixes``, by elem_id."""
    return {c["props"]["elem_id"]: c["props"] for c in demo.get_config_file()["components"]
            if (c.get("props", {}).get("elem_id") or "").endswith(suffixes)}


def test_missing_weights_disable_the_actions_and_show_no_server_path(tmp_path, server):
    editor = load_editor(tmp_path / "empty")
    gallery = Gallery(tmp_path / "gallery", sync=None)
    demo = build_demo(editor, sessions=SessionFiles(tmp_path / "sessions"), gallery=gallery)
    url = serve(demo, gallery)
    try:
        config = page_config(url)
        assert "Editing is disabled" in config and "3dpe.pt" in config and "tiny-weights" in config
        assert "python -m threedpe download" in config and "python app.py --download" in config  # not a Space
        assert str(tmp_path) not in config and "/empty" not in config
        assert "`empty/`" in config and "`checkpoints/`" not in config  # the folder it was started with, by name
        buttons = {key: props["interactive"] for key, props in
                   elem_props(demo, ("-run", "-stop", "-generate", "-adapt", "-publish")).items()}
        assert set(buttons) == {f"{tab}-{kind}" for tab in ("text", "reference", "video", "customize")
                                for kind in ("run", "stop", "publish")} | {"customize-generate", "customize-adapt",
                                                                           "customize-adapt-stop", "batch-run",
                                                                           "batch-stop"}
        assert not any(buttons.values())
        # the fine-tuning steps follow the device, with or without weights (10 on a CPU, 300 on a GPU)
        steps = OutputSettings.for_device(resolve_device("auto")).fine_tune_steps
        for built in (demo, server.demo):
            assert elem_props(built, ("customize-steps",))["customize-steps"]["value"] == steps
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        with pytest.raises(AppError, match="Editing is disabled") as error:
            client.predict(handle_file(server.photo), handle_file(server.reference), False,
                           api_name="/edit_reference")
        assert str(tmp_path) not in str(error.value)
        with pytest.raises(AppError, match="Editing is disabled"):
            client.predict([handle_file(server.photo)], None, "make it bronze", api_name="/edit_batch")
    finally:
        demo.close()
        gallery.close()


def test_public_messages_keep_file_names_but_not_server_paths():
    text = "missing weight file '3dpe.pt': it is not in /srv/app/checkpoints. C:\\data\\x.png failed; see README.md"
    assert public_message(text) == "missing weight file '3dpe.pt': it is not in checkpoints. x.png failed; see README.md"


def test_rate_limit_per_session():
    limiter = RateLimiter(limit=2, window_s=60)
    limiter.take("a"), limiter.take("a"), limiter.take("b")
    with pytest.raises(RateLimitError, match="2 in 1 minutes; please try again in 1 min 0 s|please try again in"):
        limiter.take("a")


def test_the_app_refuses_an_edit_beyond_the_rate_limit(tmp_path, server):
    demo = build_demo(server.editor, sessions=SessionFiles(tmp_path / "sessions"),
                          limiter=RateLimiter(limit=1, window_s=3600))
    url = serve(demo)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        edit_reference(client, server)
        with pytest.raises(AppError, match="Too many edits from this session"):
            edit_reference(client, server)
    finally:
        demo.close()


def test_every_outcome_of_an_event_ends_in_its_status_line():
    """``status_line.reporting``: a stop (from any Stop button of the session) is the last update of an event, in its status;
    a refusal still fails the event (API callers get the error, chained events do not run) and leaves its message
    for the event's failure handler, which shows it in the status; a result passes through as it is."""
    gr = status_line.gr
    status, request = gr.Markdown(), gr.Request(session_hash="session-1")

    def pairs(fail_with: str | None, request: gr.Request):
        yield "tiles", "1 of 2", None
        if fail_with:
            raise gr.Error(fail_with)
        yield "tiles", "2 of 2", None

    def edit(fail_with: str | None, request: gr.Request):
        if fail_with == "bug":
            raise KeyError("views")
        if fail_with:
            raise gr.Error(fail_with)
        return "strip", "done"

    steps, run = status_line.reporting(pairs, status, 0), status_line.reporting(edit, status, 1)
    assert list(steps(status_line.STOPPED, request)) == [("tiles", "1 of 2", None), {status: status_line.STOPPED}]
    assert list(steps(None, request))[-1] == ("tiles", "2 of 2", None)
    assert run(status_line.STOPPED, request) == {status: status_line.STOPPED} and run(None, request) == ("strip", "done")
    with pytest.raises(gr.Error, match="no face"):
        list(steps("no face", request))
    with pytest.raises(gr.Error, match="too small"):
        run("too small", request)
    assert status_line.REFUSALS.take(request, 0) == "⚠️ no face" and status_line.REFUSALS.take(request, 0) is None
    assert status_line.REFUSALS.take(request, 1) == "⚠️ too small"
    with pytest.raises(gr.Error, match="Something went wrong"):  # a bug: logged, and a message without details
        run("bug", request)
    assert status_line.REFUSALS.take(request, 1) == f"⚠️ {status_line.UNEXPECTED}"
    with pytest.raises(gr.Error, match="Stopped"):  # an event without the status among its outputs
        status_line.reporting(edit, None, 2)(status_line.STOPPED, request)
    assert status_line.REFUSALS.take(request, 2) == status_line.STOPPED


def test_stop_flag_stops_the_running_video_within_a_frame(server, tmp_path):
    """The Stop button sets the session's flag; the work checks it between frames (and denoising steps, views,
    mesh chunks), so the worker is idle again at once and serves the next request."""
    runner = EditRunner(server.editor)
    sessions = SessionFiles(tmp_path)
    stop = sessions.stop_flag("s1")
    files = runner.edit(server.photo, sessions.folder("s1"), stop, reference=server.reference)
    outcome = {}

    def long_video():
        start = time.perf_counter()
        try:
            runner.video(files.edit, sessions.folder("s1"), 2000, stop)
        except Cancelled as error:
            outcome["error"] = str(error)
        outcome["seconds"] = time.perf_counter() - start

    worker = threading.Thread(target=long_video)
    worker.start()
    time.sleep(1.0)
    stop.set()
    asked = time.perf_counter()
    worker.join(timeout=30)
    idle_after = time.perf_counter() - asked
    print(f"worker idle {idle_after:.2f} s after Stop (video of 2000 frames stopped after {outcome['seconds']:.1f} s)")
    assert "stopped the orbit video" in outcome["error"] and idle_after < 3
    stop.clear()
    assert runner.view(files.edit, sessions.folder("s1"), 10, 0).is_file()  # serves the next request


def test_zero_gpu_durations_grow_with_the_work():
    edit = EditRunner.edit_duration
    session = Path(".")
    assert edit("p.png", session, reference="r.png") < edit("p.png", session, prompt="x",
                                                            settings=EditSettings(steps=20))
    assert edit("p.png", session, prompt="x", settings=EditSettings(steps=20)) < edit(
        "p.png", session, prompt="x", settings=EditSettings(steps=50))
    assert EditRunner.video_duration(None, session, 48) < EditRunner.video_duration(None, session, 240)
    assert EditRunner.mesh_duration(None, session, 128) < EditRunner.mesh_duration(None, session, 384)


def test_session_files_prune_and_refuse_odd_ids(tmp_path):
    sessions = SessionFiles(tmp_path)
    old, new = sessions.folder("old_session"), sessions.folder("new-session")
    os.utime(old, (0, 0))
    sessions.prune(max_age_s=3600)
    assert not old.exists() and new.is_dir()
    with pytest.raises(ValueError, match="session id"):
        sessions.folder("../escape")


def test_publish_permalink_open_and_delete_through_the_api(server, client, tmp_path):
    edit_reference(client, server)
    client.predict(8, api_name="/orbit_video_reference")
    client.predict(32, api_name="/mesh_reference")
    published = client.predict(False, api_name="/publish")  # the session's latest edit
    record, url, token = published["id"], published["url"], published["owner_token"]
    assert url == f"{server.url}?edit={record}" and len(token) >= 32

    tiles, listing = client.predict(1, api_name="/gallery_page")
    assert any(tile["caption"] == "Reference edit" for tile in tiles) and "published edits" in listing
    info, strip, video, mesh, reference, archive, opened, before, after = client.predict(url, api_name="/open_edit")
    assert opened == record and "Reference edit" in info and record in info
    # before / after: the photo stays private (not shared), the reference the edit followed beside the frontal view
    assert before is None and png(reference) and png(after).size == (png(strip).height, png(strip).height)
    # a readable summary: the settings in words and the seconds of each stage, no raw keys
    assert "aligned portrait" in info and "align_reference" not in info
    assert re.search(r"orbit video \*\*[\d.]+ s\*\* · mesh \*\*[\d.]+ s", info), info
    assert png(strip).width == 3 * png(strip).height and Path(video).suffix == ".mp4" and Path(mesh).suffix == ".glb"
    import zipfile

    with zipfile.ZipFile(archive) as bundle:
        assert {"strip.png", "orbit.mp4", "mesh.glb", "reference.png", "metadata.json"} <= set(bundle.namelist())
        assert "photo.png" not in bundle.namelist()  # the photo is private unless the publisher shares it

    with pytest.raises(AppError, match="does not own"):
        client.predict(record, "not-the-owner-token", api_name="/delete_edit")
    assert "Deleted" in client.predict(url, token, api_name="/delete_edit")
    with pytest.raises(AppError):
        client.predict(record, api_name="/open_edit")
    print(f"\npublish -> permalink -> open -> delete through gradio_client: {record}")


def test_a_published_text_edit_keeps_its_instruction_and_can_be_reported(server, client):
    edit_text(client, server, "make it a marble statue")
    published = client.predict(True, api_name="/publish")
    info, *_, before, after = client.predict(published["id"], api_name="/open_edit")
    assert png(before).size == (128, 128) and png(after).width == png(after).height  # the shared thumbnail, the edit
    assert "make it a marble statue" in info and "InstructPix2Pix steps 20 · text guidance 7.5" in info
    assert "anchor portrait **EG3D sample, seed 0**" in info and "image_guidance" not in info and "Published" in info
    assert "photo" in server.gallery.get(published["id"]).files  # shared on request, as a thumbnail
    assert "1 report" in client.predict(published["id"], "test report", api_name="/flag_edit")


def test_publish_before_any_edit_is_a_message(server, client):
    with pytest.raises(AppError, match="run an edit first"):
        client.predict(False, api_name="/publish")


def test_customize_tab_generate_adapt_apply_and_publish_at_default_settings(server, client, tmp_path):
    start = time.perf_counter()
    tiles, status = timed(lambda: client.predict("instruction", "make it golden", None, None, api_name="/generate_pairs"), 300)
    assert len(tiles) == 8 and "usable pairs of 8" in status  # the default number of pairs
    adapting = client.submit(api_name="/customize")
    loss, snapshots, status, style_file = timed(adapting.result, 600)
    default_steps = OutputSettings.for_device(server.editor.device).fine_tune_steps
    assert f"{default_steps} steps" in status and "held-out loss" in status
    assert Path(style_file).suffix == ".safetensors" and Path(style_file).stat().st_size > 0

    def training_steps(plot: dict) -> list[int]:
        table = plot.get("value", plot)  # the LinePlot's data: {"columns": [...], "data": [[step, loss, curve], ...]}
        return [row[0] for row in table["data"] if row[table["columns"].index("curve")] == "training"]

    assert training_steps(loss) == list(range(1, default_steps + 1))
    # During the chunk (the CPU default is one chunk): every step, before the style file, with the curve so far.
    *during, _ = adapting.outputs()
    assert [re.search(r"step (\d+) of (\d+)", update[2]).groups() for update in during] == [
        (str(step), str(default_steps)) for step in range(1, default_steps + 1)]
    assert [training_steps(update[0]) for update in during] == [list(range(1, step + 1))
                                                                for step in range(1, default_steps + 1)]
    assert not any(isinstance(update[3], str) for update in during)  # the style file comes with the chunk's end
    style = server.editor.load_style(style_file)  # made for these weights
    assert style.mode == "lora" and style.metadata["steps"] == default_steps
    outputs = timed(lambda: client.predict(handle_file(server.photo), None, "", api_name="/apply_style"))
    check_edit_outputs(outputs)
    assert "make it golden" in outputs[5]  # the status names the style
    published = client.predict(False, api_name="/publish")
    assert server.gallery.get(published["id"]).style == "make it golden"
    print(f"\ncustomize tab on tiny weights: pairs, {default_steps} steps, apply, publish in "
          f"{time.perf_counter() - start:.0f} s")


def test_customize_refuses_what_it_cannot_do(server, client):
    with pytest.raises(AppError, match="Generate the training pairs first"):
        client.predict(api_name="/customize")
    with pytest.raises(AppError, match="Type the instruction"):
        client.predict("instruction", "  ", None, None, api_name="/generate_pairs")
    with pytest.raises(AppError, match="Adapt a style first"):
        client.predict(handle_file(server.photo), None, "", api_name="/apply_style")
    with pytest.raises(AppError, match="must hold the subfolders|no photos"):
        client.predict("pairs", "", None, None, api_name="/generate_pairs")


def test_the_app_is_launch_only_over_a_ui_that_the_service_layer_never_imports():
    """``app.py`` launches (at most 250 lines); the page's and the service layer's functions read in one screen or
    two (at most 120 lines); ``threedpe.serving`` imports neither gradio nor ``threedpe.ui``."""
    import ast

    root = Path(__file__).resolve().parents[1]
    assert len((root / "app.py").read_text().splitlines()) <= 250
    package = root / "threedpe"
    for path in [root / "app.py", *(package / "ui").glob("*.py"), *(package / "serving").glob("*.py")]:
        tree = ast.parse(path.read_text())
        long = [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= 120]
        assert not long, f"{path.name}: {long} longer than 120 lines"
        if path.parent.name == "serving":
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert not {name for name in imported if name.split(".")[0] == "gradio" or
                        name.startswith("threedpe.ui")}, f"{path.name} imports the UI"
