"""One in-process server of the app on freshly written tiny (untrained) weights, shared by test_app.py and
test_browser.py: started on first use, closed when the test process exits."""
from __future__ import annotations

import atexit
import functools
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import skimage.data
from PIL import Image

from threedpe.gallery import Gallery
from threedpe.pipeline import PortraitEditor
from threedpe.serving.runner import load_editor, load_text_model
from threedpe.serving.sessions import SessionFiles
from threedpe.tiny import save_tiny_weights
from threedpe.ui.common import EXAMPLE_PHOTO, EXAMPLE_REFERENCE
from threedpe.ui.page import build_demo, launch


ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass(frozen=True)
class AppServer:
    url: str
    demo: gr.Blocks
    folder: Path  # weights/, sessions/, reference-cache/ and the test images below
    photo: Path  # a portrait (the public-domain astronaut photo)
    reference: Path  # a reference portrait
    no_face: Path  # a photo without a face (skimage's coffee cup)
    sessions: SessionFiles
    editor: PortraitEditor
    gallery: Gallery  # a gallery of its own (folder/gallery), never synced


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(demo: gr.Blocks, gallery: Gallery | None = None) -> str:
    """Launch ``demo`` in this process on a free local port; its URL."""
    port = free_port()
    launch(demo, gallery, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return f"http://127.0.0.1:{port}/"


@functools.cache
def app_server() -> AppServer:
    folder = Path(tempfile.mkdtemp(prefix="threedpe-app-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    editor = load_editor(save_tiny_weights(folder / "weights"), cache_dir=folder / "reference-cache")
    assert not isinstance(editor, Exception), editor
    sessions = SessionFiles(folder / "sessions")
    gallery = Gallery(folder / "gallery", sync=None, admin_token=ADMIN_TOKEN)
    demo = build_demo(editor, load_text_model(editor), sessions, gallery=gallery)
    url = serve(demo, gallery)
    atexit.register(gallery.close)
    atexit.register(demo.close)
    no_face = folder / "coffee.png"
    Image.fromarray(np.asarray(skimage.data.coffee())).save(no_face)
    return AppServer(url, demo, folder, Path(EXAMPLE_PHOTO), Path(EXAMPLE_REFERENCE), no_face, sessions,
                     editor, gallery)
