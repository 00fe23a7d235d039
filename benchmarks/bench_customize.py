"""Time one customisation fine-tuning step at full size, in each mode, on the golden recipe weights.

    python benchmarks/bench_customize.py [--device cuda] [--modes lora full] [--steps 2] [--warmup 1]
                                         [--batch-size 1] [--perceptual lpips|substitute]

Each mode runs in its own process (so that its peak RSS is its own): the editor and Live3D at the released
architecture filled by the golden README's recipe (``tests/golden_recipe.py``; speed does not depend on the values),
three stand-in samples (the anchor portraits, tinted), then ``--warmup`` untimed and ``--steps`` timed steps of
:class:`threedpe.customize.StyleTrainer`. ``--perceptual lpips`` times the official LPIPS network (randomly
initialised: same cost as the released files); ``substitute`` the MAE-token distance used when they are absent.
Prints a markdown table (median step time, trainable tensors and values, style file size, peak RSS) and the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.golden_recipe import recipe_encoder_renderer  # noqa: E402
from threedpe.anchors import shipped_anchors  # noqa: E402
from threedpe.cameras import frontal_camera  # noqa: E402
from threedpe.checkpoints import ThreeDPECheckpoint  # noqa: E402
from threedpe.customize import CustomizeConfig, StyleTrainer, split_held_out  # noqa: E402
from threedpe.datagen import StyleSample  # noqa: E402
from threedpe.diffusion import EditSettings  # noqa: E402
from threedpe.models.editor import EditorConfig, EditorModel, ReconstructionConfig, ReconstructionModel  # noqa: E402
from threedpe.objective import EditingObjective  # noqa: E402
from threedpe.models.perceptual import LPIPS, PromptEncoderDistance  # noqa: E402
from threedpe.testing import ColourEditor  # noqa: E402

GOLDEN = Path(ROOT.parent / "shared" / "golden")


def recipe_models(golden: Path) -> tuple[EditorModel, ReconstructionModel]:
    editor = EditorModel.from_checkpoint(ThreeDPECheckpoint(**recipe_encoder_renderer(golden / "manifest.json",
                                                                                      EditorModel(EditorConfig()))))
    live3d = ReconstructionModel.from_checkpoint(ThreeDPECheckpoint(**recipe_encoder_renderer(
        golden / "live3d_manifest.json", ReconstructionModel(ReconstructionConfig()))))
    return editor, live3d


def stand_in_samples() -> list[StyleSample]:
    """Three 512^2 identities (the anchors and one mirrored upside down) and their tinted versions."""
    images = [anchor.image() for anchor in shipped_anchors()]
    images.append(images[0].transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    edits = ColourEditor().edit(images, "tint", EditSettings(), 0)
    return [StyleSample(f"img{i:08d}", image, edit, frontal_camera()[0], i) for i, (image, edit) in
            enumerate(zip(images, edits))]


def run_mode(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    editor, live3d = recipe_models(Path(args.golden))
    editor, live3d = editor.to(device), live3d.to(device)
    config = CustomizeConfig(mode=args.mode, batch_size=args.batch_size)
    perceptual = LPIPS() if args.perceptual == "lpips" else PromptEncoderDistance.from_editor(editor)
    pairs, held_out = split_held_out(stand_in_samples())
    trainer = StyleTrainer(editor, live3d, pairs, held_out, config,
                           objective=EditingObjective(config.weights, perceptual=perceptual))
    del editor
    progress = trainer.train(max_steps=args.warmup + args.steps, snapshot_seconds=())
    ends = [0.0] + [p.seconds for p in progress]
    times = [b - a for a, b in zip(ends, ends[1:])][args.warmup:]
    with tempfile.TemporaryDirectory() as folder:
        size = trainer.style().save(Path(folder) / "style.safetensors").stat().st_size
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"mode": args.mode, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "tensors": len(trainer.parameters), "values": sum(p.numel() for _, p in trainer.parameters),
            "style_bytes": size, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_gib": gpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in a child process
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--perceptual", choices=["lpips", "substitute"], default="lpips")
    parser.add_argument("--golden", default=str(GOLDEN), help="folder with manifest.json and live3d_manifest.json")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    rows = []
    for mode in args.modes:
        command = [sys.executable, __file__, "--mode", mode, "--device", args.device, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--perceptual", args.perceptual,
                   "--golden", args.golden]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    perceptual = ("LPIPS AlexNet with random weights (the cost of the released files)" if args.perceptual == "lpips"
                  else "the MAE-token substitute for LPIPS")
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; median of {args.steps} steps after "
          f"{args.warmup} warm-up; perceptual term: {perceptual}\n")
    gpu = any(row["gpu_gib"] is not None for row in rows)
    print("| mode | step (median) | min / max | trained tensors | trained values | style file | peak RSS |"
          + (" peak GPU |" if gpu else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for row in rows:
        print(f"| {row['mode']} | {row['median_s']:.2f} s | {row['min_s']:.2f} / {row['max_s']:.2f} s | "
              f"{row['tensors']} | {row['values'] / 1e6:.2f} M | {row['style_bytes'] / 2**20:.1f} MiB | "
              f"{row['rss_mib'] / 1024:.1f} GiB |" + (f" {row['gpu_gib']:.1f} GiB |" if gpu else ""))


if __name__ == "__main__":
    main()
