"""The Live tab in a real browser: Debian's Chromium with a fake camera that plays a clip written here from the shipped
photo (Chromium's own fake camera shows no face), streaming to the in-process server of tests/app_server.py."""
from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from tests.app_server import app_server
from tests.test_browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path, open_tab, screenshot, upload
from threedpe.ui.common import EXAMPLE_PHOTO

pytestmark = pytest.mark.browser
CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
# Distinct output images the page must show (the first edited frame, then more), collected as the src changes.
OUTPUTS_SEEN = """([count]) => {
    const src = document.querySelector('#live-output img')?.getAttribute('src');
    window.liveOutputs = window.liveOutputs || new Set();
    if (src) window.liveOutputs.add(src);
    return window.liveOutputs.size >= count;
}"""


def write_camera_clip(path: Path, frames: int = 20, size: tuple[int, int] = (480, 360), fps: int = 10) -> Path:
    """A .y4m clip (Chromium's fake camera plays it in a loop) of the shipped photo swaying left and right."""
    photo = Image.open(EXAMPLE_PHOTO).convert("RGB")
    canvas = Image.new("RGB", (720, 540), (90, 90, 90))
    canvas.paste(photo, (104, 14))
    width, height = size
    ffmpeg = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo",
                               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
                               "-pix_fmt", "yuv420p", str(path)], stdin=subprocess.PIPE)
    for i in range(frames):
        dx = 12 * math.sin(2 * math.pi * i / frames)
        frame = canvas.resize(size, Image.Resampling.BILINEAR, box=(24 + dx, 0, 696 + dx, 504))
        ffmpeg.stdin.write(np.asarray(frame).tobytes())
    ffmpeg.stdin.close()
    assert ffmpeg.wait(60) == 0
    return path


@pytest.fixture(scope="module")
def camera_browser(tmp_path_factory):
    chromium = chromium_path()
    from playwright.sync_api import sync_playwright

    clip = write_camera_clip(tmp_path_factory.mktemp("camera") / "sway.y4m")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, *CAMERA_ARGS, f"--use-file-for-fake-video-capture={clip}"])
        yield browser
        browser.close()


def live_streams(server) -> int:
    """How many live streams the server holds (the Live tab's ``LiveSessions``, found through its stream event)."""
    [fn] = [fn for fn in server.demo.fns.values() if fn.connection == "stream"]
    return len(fn.fn.__wrapped__.__self__.sessions)


def eventually(check, seconds: float) -> bool:
    """Whether ``check()`` becomes true within ``seconds`` (asked every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_webcam_stream_edited_live_with_fps(camera_browser):
    server = app_server()
    page = camera_browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(server.url)
        open_tab(page, "Live")
        page.locator("#live-webcam [title='grant webcam access'] button").click()
        page.locator("#live-webcam video").wait_for()
        page.locator("#live-webcam .capture-button").click()  # record: the stream starts without a reference
        page.wait_for_function("() => /Give a reference image or an instruction/.test("
                               "document.querySelector('#live-stats').innerText)")
        assert page.locator("#live-output img").count() == 0

        upload(page, "live-reference", server.reference)  # while streaming: editing starts with the next frame
        page.wait_for_function(OUTPUTS_SEEN, arg=[3], polling=100)  # three edited frames arrived, one after another
        page.wait_for_function(r"() => /\d+\.\d+ fps/.test(document.querySelector('#live-stats').innerText)",
                               polling=100)
        stats = page.locator("#live-stats").inner_text()
        edited = int(re.search(r"(\d+) frames edited", stats).group(1))
        assert edited >= 2 and re.search(r"(\d+) dropped", stats)
        assert live_streams(server) == 1
        screenshot(page, "live.png")
        page.locator("#live-webcam .capture-button").click()  # stop: the stream is released
        started = time.monotonic()
        assert eventually(lambda: live_streams(server) == 0, TIMEOUT_MS / 1000)
        print(f"released {time.monotonic() - started:.1f} s after the stop; {stats}")
    finally:
        page.context.close()
