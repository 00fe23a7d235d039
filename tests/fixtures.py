"""Test scaffolding shared by the tests and the benchmarks (the tiny weight set itself is :mod:`threedpe.tiny`).

- :func:`small_training_models`: a tiny editor and Live3D network at 128^2 input for fine-tuning tests in seconds
  (:func:`threedpe.tiny.save_editor_weights` writes such a pair as a weight folder);
- :class:`ColourEditor`: a deterministic stand-in for InstructPix2Pix (a fixed colour transform), with failures
  on request;
- :func:`sway_frames`, :func:`make_clip`: a portrait clip made from the shipped photo (sway, zoom, blank frames, a
  tone), for the video tests of the library and the app.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal, Mapping, Sequence

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image

from threedpe.cancel import CancelSignal, check
from threedpe.edit_settings import EditSettings
from threedpe.models.editor import EditorModel, ReconstructionModel
from threedpe.models.rendering import RenderingConfig
from threedpe.tiny import tiny_editor_config, tiny_encoder_config, tiny_reconstruction_model
from threedpe.video import write_mp4
from threedpe.weights import RECONSTRUCTION_WEIGHTS
from threedpe.weights.checkpoints import save_checkpoint


def small_training_models(seed: int = 0) -> tuple[EditorModel, ReconstructionModel]:
    """A tiny editor taking 128^2 inputs (tri-planes 64^2), rendering 16^2 rays (64^2 images), and the tiny
    Live3D network sharing its weights: a fine-tuning step takes a fraction of a second on one CPU thread."""
    torch.manual_seed(seed)
    config = dataclasses.replace(
        tiny_editor_config(), encoder=tiny_encoder_config(image_size=128),
        rendering=RenderingConfig(depth_resolution=8, depth_resolution_importance=8, neural_rendering_resolution=16))
    editor = EditorModel(config).eval()
    with torch.no_grad():  # density around the surface level, so that renders depend on the tri-planes
        editor.renderer.decoder.net[2].bias[0] = 10.0
    return editor, tiny_reconstruction_model(editor)


WARM_TINT = ((1.1, 0.1, 0.0), (0.05, 0.95, 0.0), (0.0, 0.05, 0.7)), (0.05, 0.02, 0.0)  # keeps the contrast


class ColourEditor:
    """Stand-in for a 2D instruction editor (``ImageEditor2D``): every image gets the same colour transform
    ``clip(rgb @ matrix.T + offset)`` (default: a warm tint), whatever the instruction and seed.

    ``failures`` maps the index of an edited image (counting every image this editor was given, from 0) to a
    failure to simulate: ``"unchanged"`` returns the input, ``"uniform"`` a flat grey image. ``calls`` counts
    the images edited."""

    def __init__(self, matrix: Sequence[Sequence[float]] = WARM_TINT[0], offset: Sequence[float] = WARM_TINT[1],
                 failures: Mapping[int, Literal["unchanged", "uniform"]] | None = None) -> None:
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.offset = np.asarray(offset, dtype=np.float32)
        self.failures = dict(failures or {})
        self.calls = 0

    @property
    def identity(self) -> str:
        return f"stand-in colour transform {self.matrix.tolist()} + {self.offset.tolist()}"

    def edit(self, images: list[Image.Image], instruction: str, settings: EditSettings, seed: int,
             cancel: CancelSignal | None = None) -> list[Image.Image]:
        check(cancel, "before the stand-in edit")
        side = settings.resolution
        edited = []
        for image in images:
            rgb = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            failure = self.failures.get(self.calls)
            self.calls += 1
            if failure == "unchanged":
                edited.append(rgb)
            elif failure == "uniform":
                edited.append(Image.new("RGB", (side, side), (128, 128, 128)))
            else:
                values = np.asarray(rgb, dtype=np.float32) / 255 @ self.matrix.T + self.offset
                edited.append(Image.fromarray((np.clip(values, 0, 1) * 255).round().astype(np.uint8)))
        return edited


# --- torchrun launches and weight folders -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 150  # seconds per torchrun launch


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(module: str, args: list[str], processes: int = 2) -> str:
    """``torchrun --nproc_per_node <processes> -m <module> <args>`` on loopback, one thread per process; its
    stdout (the run fails the test with its output when it fails or outlasts :data:`LAUNCH_TIMEOUT`)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", module, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def weights_copy(source: Path, target: Path, live3d: ReconstructionModel | None) -> Path:
    """``source``'s editor files in ``target``, with ``live3d`` as the Live3D file (None: no Live3D file)."""
    target.mkdir(exist_ok=True)
    for name in ("3dpe.safetensors", "3dpe.json"):
        shutil.copy(source / name, target / name)
    if live3d is not None:
        save_checkpoint(live3d.checkpoint(), target / Path(RECONSTRUCTION_WEIGHTS[0]).stem,
                        source="test: a Live3D network apart from the editor")
    return target


# --- a portrait clip ----------------------------------------------------------------------------------------------

PHOTO = ROOT / "examples" / "astronaut.jpg"
FRAMES, SIDE, FPS = 14, 192, 24
BLANK = (8, 9, 10)  # black frames of the clip


def sway_frames(count: int = FRAMES, side: int = SIDE, blank: tuple[int, ...] = BLANK) -> list[np.ndarray]:
    """The photo seen by a slowly swaying, zooming, hand-held camera (a quarter period over the clip, a shake of up to
    3 photo pixels, about 2 frame pixels); ``blank`` frames black."""
    photo = Image.open(PHOTO).convert("RGB")
    canvas = Image.new("RGB", (768, 768), (90, 90, 90))
    canvas.paste(photo, (128, 128))
    shake = np.random.default_rng(0).uniform(-3, 3, size=(count, 2))
    frames = []
    for i in range(count):
        t = 2 * math.pi * i / 48
        width = 300 / (1 + 0.12 * math.sin(t))
        cx, cy = 350 + 20 * math.sin(t) + shake[i, 0], 268 + 8 * math.cos(t) + shake[i, 1]
        box = (cx - width / 2, cy - width / 2, cx + width / 2, cy + width / 2)
        frame = np.asarray(canvas.resize((side, side), Image.Resampling.BICUBIC, box=box))
        frames.append(np.zeros_like(frame) if i in blank else frame)
    return frames


def make_clip(path: Path, frames: list[np.ndarray], fps: float = FPS, audio: bool = True) -> Path:
    if not audio:
        return write_mp4(frames, path, fps=fps)
    silent = write_mp4(frames, path.with_name(path.stem + "_silent.mp4"), fps=fps)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={len(frames) / fps}", "-c:v", "copy", "-c:a", "aac", "-shortest",
                    str(path)], check=True)
    silent.unlink()
    return path
