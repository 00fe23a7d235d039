"""Benchmark of video editing at full size: milliseconds per frame by stage and frames per second, by batch size.

    python benchmarks/bench_video.py [--quick] [--frames N] [--size WxH] [--views V..] [--batches B..] [--threads N]
                                     [--json PATH]

The editor is the released architecture with the golden fixtures' recipe weights (speed does not depend on the values;
``tests/golden_recipe.py``, as ``benchmarks/bench.py``): 512^2 crops encoded, 512^2 renders. The clip is made here
from the shipped photo (a swaying, zooming camera, 640x480 by default, 24 fps, a sine tone). For each device (the CPU,
and CUDA when present), each view (``fixed``: the head at the frontal view; ``source``: the frame's own pose, pasted
back) and batch sizes 1, 4 and 8, the whole clip is edited by :func:`threedpe.video_editing.edit_video` after a short
warm-up; the table shows milliseconds per frame of each stage (decode, track, align, encode, render, paste, write;
``write`` includes the audio copy) and the frames per second of the whole edit. ``--quick``: 8 frames per row.
The last line is ``fps=<…> ms_per_frame=<…>`` of the ``source`` view at the device's default batch size
(:func:`threedpe.frame_editing.default_batch_size`) on the last device (CUDA when present).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import cpu_name, recipe_editor  # noqa: E402
from threedpe.pipeline import PortraitEditor  # noqa: E402
from threedpe.video import write_mp4  # noqa: E402
from threedpe.frame_editing import STAGES, VideoSettings, default_batch_size  # noqa: E402
from threedpe.video_editing import edit_video  # noqa: E402

PHOTO = ROOT / "examples" / "astronaut.jpg"
BATCHES = (1, 4, 8)
VIEWS = ("fixed", "source")


def make_clip(path: Path, frames: int, size: tuple[int, int], fps: float = 24.0) -> Path:
    """The shipped photo seen by a swaying, zooming camera, ``size`` (w, h), with a 440 Hz tone."""
    photo = Image.open(PHOTO).convert("RGB")
    canvas = Image.new("RGB", (1024, 1024), (90, 90, 90))
    canvas.paste(photo, (256, 256))
    width, height = size

    def frame(i: int) -> np.ndarray:
        t = 2 * math.pi * i / 48
        w = 420 / (1 + 0.1 * math.sin(t))
        h = w * height / width
        cx, cy = 256 + 222 + 20 * math.sin(t), 256 + 170 + 8 * math.cos(t)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        return np.asarray(canvas.resize(size, Image.Resampling.BICUBIC, box=box))

    silent = write_mp4((frame(i) for i in range(frames)), path.with_name("silent.mp4"), fps=fps)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={frames / fps}", "-c:v", "copy", "-c:a", "aac", "-shortest",
                    str(path)], check=True)
    return path


def run_row(editor: PortraitEditor, clip: Path, out: Path, view: str, batch: int) -> dict:
    result = edit_video(editor, clip, out, reference=PHOTO, settings=VideoSettings(view=view, batch_size=batch))
    row = {"device": editor.device.type, "view": view, "batch": batch, "frames": result.frames, "fps": result.fps,
           "ms_per_frame": 1000 * result.seconds / result.frames, "no_face": result.no_face}
    row.update({f"{stage}_ms": 1000 * result.timings[stage] / result.frames for stage in STAGES})
    return row


def table(rows: list[dict]) -> str:
    lines = ["| device | view | batch | " + " | ".join(f"{s} ms" for s in STAGES) + " | ms/frame | fps |",
             "|---|---|---:|" + "---:|" * (len(STAGES) + 2)]
    for r in rows:
        stages = " | ".join(f"{r[f'{s}_ms']:.1f}" for s in STAGES)
        lines.append(f"| {r['device']} | {r['view']} | {r['batch']} | {stages} | {r['ms_per_frame']:.1f} | "
                     f"{r['fps']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 frames per row (default 24)")
    parser.add_argument("--frames", type=int, help="frames of the clip (default 24; --quick 8)")
    parser.add_argument("--size", default="640x480", help="clip size WxH (default 640x480)")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS), help="views to time (default both)")
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), help="batch sizes (default 1 4 8)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = args.frames or (8 if args.quick else 24)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    header = (f"threedpe video benchmark: torch {torch.__version__}, CPU {cpu_name()}, {torch.get_num_threads()} "
              f"threads, {gpu}; a {size[0]}x{size[1]} clip of {frames} frames at 24 fps per row, 512^2 crops and "
              "renders")
    print(header, flush=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clip = make_clip(Path(folder) / "clip.mp4", frames, size)
        warm = make_clip(Path(folder) / "warm.mp4", 2, size)
        for device in devices:
            editor = PortraitEditor(recipe_editor(device))
            edit_video(editor, warm, Path(folder) / "warm_out.mp4", reference=PHOTO)  # detector, kernels, caches
            for view in args.views:
                for batch in args.batches:
                    rows.append(run_row(editor, clip, Path(folder) / "out.mp4", view, batch))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
            del editor
    print()
    print(header)
    print()
    print(table(rows))
    last = devices[-1].type
    default = default_batch_size(devices[-1])
    headline = min((r for r in rows if r["device"] == last),  # the source view at the default batch when timed
                   key=lambda r: (r["view"] != "source", abs(r["batch"] - default)))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"fps={headline['fps']:.2f} ms_per_frame={headline['ms_per_frame']:.1f}")


if __name__ == "__main__":
    main()
