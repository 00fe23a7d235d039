"""3DPE Gradio app (Hugging Face Space or local): edit a portrait photo in 3D with a text instruction or a reference.

    python app.py                          # weights from $THREEDPE_WEIGHTS or checkpoints/
    python app.py --download               # missing weights fetched first (after the licence prompt); not on a Space
    python app.py --weights DIR --port 7860 [--host 0.0.0.0] [--share]

Launch only: the page is built by ``threedpe.ui`` (one module per tab) over ``threedpe.serving``, whose GPU work is
wrapped in ``@spaces.GPU`` for ZeroGPU (a no-op elsewhere).
"""
from __future__ import annotations

import spaces  # noqa: F401,I001 -- first: on ZeroGPU it must be imported before anything initialises CUDA

import os

# Transparent huge pages for torch's CPU allocations (read when torch loads): a 512^2 view measured ~15% faster on
# CPU, where the fresh large buffers of rendering otherwise page-fault at length.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402 -- after the allocator setting above
import logging
import sys

from threedpe.gallery import Gallery
from threedpe.pipeline import PortraitEditor
from threedpe.serving.runner import load_editor, load_text_model
from threedpe.ui.page import build_demo, launch
from threedpe.weights import CheckpointError, MissingWeightsError, default_folder
from threedpe.fetch.download import WeightDownloadError, first_start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(default_folder()),
                        help="weight folder (default: $THREEDPE_WEIGHTS or checkpoints/); "
                             "`python -m threedpe tiny-weights DIR` writes an untrained one")
    parser.add_argument("--host", default=None, help="address to serve on (default: gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--gallery", default=None,
                        help="folder of the published edits (default: $THREEDPE_GALLERY or ~/.cache/threedpe/gallery); "
                             "with THREEDPE_GALLERY_REPO and HF_TOKEN set it is synced with that Hub dataset")
    parser.add_argument("--download", action="store_true",
                        help="when weights are missing, download them from their official sources first (also "
                             "THREEDPE_DOWNLOAD=1; in a terminal the app asks); never on a Space")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("threedpe").setLevel(logging.INFO)
    editor = load_editor(args.weights)  # at start-up, on CUDA when present: ZeroGPU wants it before any GPU call
    if isinstance(editor, MissingWeightsError):
        try:
            if first_start(args.weights, requested=args.download):
                editor = load_editor(args.weights)
        except WeightDownloadError as error:
            print(f"threedpe: error: {error}", file=sys.stderr)
    if isinstance(editor, CheckpointError):  # the full message, paths included, for whoever runs the server
        print(f"threedpe: editing is disabled: {editor}", file=sys.stderr)
    text_error = load_text_model(editor) if isinstance(editor, PortraitEditor) else None
    if text_error:
        print(f"threedpe: {text_error}", file=sys.stderr)
    gallery = Gallery(args.gallery)
    try:
        launch(build_demo(editor, text_error, gallery=gallery), gallery, server_name=args.host,
               server_port=args.port, share=args.share)
    finally:
        gallery.close()


if __name__ == "__main__":
    main()
