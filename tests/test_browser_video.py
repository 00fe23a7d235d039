"""The Video tab in a real browser (Debian's Chromium through Playwright, the fixtures of test_browser.py) at the
app's default settings: a clip and a reference in, the edited clip and its summary out, then published and played
in the Gallery tab."""
from __future__ import annotations

import re

import pytest

from tests import test_browser
from tests.fixtures import FRAMES, make_clip, sway_frames
from tests.test_browser import open_tab, screenshot, upload

pytestmark = pytest.mark.browser
browser, server, page = test_browser.browser, test_browser.server, test_browser.page  # its fixtures


def test_video_tab_edits_a_clip_then_publishes_it_to_the_gallery(page, server, tmp_path):
    clip = make_clip(tmp_path / "sway.mp4", sway_frames())
    open_tab(page, "Video")
    page.get_by_text("record a few seconds with the webcam").wait_for()  # the fallback for a live stream
    upload(page, "video-clip", clip)
    page.locator("#video-clip video").wait_for()
    upload(page, "video-reference", server.reference)
    page.locator(f"#video-reference img[src*='{server.reference.name}']").wait_for()
    page.locator("#video-run").click()

    page.locator("#video-status").get_by_text(re.compile(rf"frames={FRAMES} seconds=")).wait_for()
    edited = page.locator("#video-edited video")
    edited.wait_for()
    assert (edited.get_attribute("src") or "").endswith("/edited.mp4")
    assert (page.locator("#video-ref img").get_attribute("src") or "").endswith("/reference.png")
    screenshot(page, "app_video_tab.png")

    page.locator("#video-publish").click()
    link = page.locator("#video-link a").first
    link.wait_for()
    record = (link.get_attribute("href") or "").split("edit=")[-1]
    assert server.gallery.get(record).settings["clip"] is True
    open_tab(page, "Gallery")
    page.locator("#gallery-id textarea, #gallery-id input").first.fill(record)
    page.locator("#gallery-open").click()
    page.locator("#gallery-info").get_by_role("heading", name="Clip edit").wait_for()
    played = page.locator("#gallery-video video")
    played.wait_for()
    assert (played.get_attribute("src") or "").endswith("/orbit.mp4")
    screenshot(page, "app_gallery_clip.png")
