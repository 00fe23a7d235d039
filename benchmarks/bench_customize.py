"""Time one customisation fine-tuning step at full size, in each mode, on the golden recipe weights; and the app's
chunked fine-tune with its trainer rebuilt every chunk (ZeroGPU) against the trainer kept between chunks.

    python benchmarks/bench_customize.py [--device cuda] [--modes lora full] [--steps 2] [--warmup 1]
                                         [--batch-size 1] [--perceptual lpips|substitute]
                                         [--chunks 3] [--chunk-steps N]

Each mode runs in its own process (so that its peak RSS is its own): the editor and Live3D at the released
architecture filled by the golden README's recipe (``tests/golden_recipe.py``; speed does not depend on the values),
three stand-in samples (the anchor portraits, tinted), then ``--warmup`` untimed and ``--steps`` timed steps of
:class:`threedpe.training.customize.StyleTrainer`. ``--perceptual lpips`` times the official LPIPS network (randomly
initialised: same cost as the released files); ``substitute`` the MAE-token distance used when they are absent.
Prints a markdown table (median step time, trainable tensors and values, style file size, peak RSS) and the machine.

Chunks: ``threedpe.serving.runner.EditRunner.fine_tune`` as the app calls it (lora), ``--chunks`` calls of ``--chunk-steps``
steps each (default: the app's ``TUNE_STEPS_PER_CALL`` on a GPU; 1 on a CPU, where a full-size step takes minutes),
once with ``kept_trainers=0`` (every call copies the editor, reads the LPIPS files from the weight folder, runs
Live3D on the pairs and restores the state) and once keeping the trainer, each in its own process. A call's
overhead is its time less its training steps and held-out evaluations (previews); the saving is the difference of
the later calls' overheads.
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
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import ColourEditor  # noqa: E402
from tests.golden_recipe import recipe_encoder_renderer  # noqa: E402
from threedpe.anchors import shipped_anchors  # noqa: E402
from threedpe.cameras import frontal_camera  # noqa: E402
from threedpe.edit_settings import EditSettings  # noqa: E402
from threedpe.models.editor import EditorConfig, EditorModel, ReconstructionConfig, ReconstructionModel  # noqa: E402
from threedpe.models.perceptual import LPIPS, PromptEncoderDistance  # noqa: E402
from threedpe.pipeline import PortraitEditor  # noqa: E402
from threedpe.serving.runner import EditRunner  # noqa: E402
from threedpe.serving.style_sessions import TUNE_STEPS_PER_CALL, StyleSession  # noqa: E402
from threedpe.training.customize import CustomizeConfig, StyleTrainer, split_held_out  # noqa: E402
from threedpe.training.objective import EditingObjective  # noqa: E402
from threedpe.training.samples import StyleSample  # noqa: E402
from threedpe.weights import LPIPS_FILES, RECONSTRUCTION_WEIGHTS  # noqa: E402
from threedpe.weights.checkpoints import ThreeDPECheckpoint, save_checkpoint  # noqa: E402

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


def weight_folder(folder: Path, live3d: ReconstructionModel, perceptual: str) -> Path:
    """What fine-tuning reads from a weight folder: Live3D and, for ``lpips``, the two LPIPS files with random values
    at the released shapes (AlexNet's classifier included: the same bytes to read)."""
    save_checkpoint(live3d.checkpoint(), folder / Path(RECONSTRUCTION_WEIGHTS[0]).stem, source="golden recipe")
    if perceptual == "lpips":
        state = LPIPS().state_dict()
        classifier = {"classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
                      "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
                      "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}
        torch.save({**{key: value for key, value in state.items() if key.startswith("features.")},
                    **{key: torch.randn(shape) * 0.01 for key, shape in classifier.items()}}, folder / LPIPS_FILES[0])
        torch.save({f"lin{i}.model.1.weight": state[f"lin.{i}.weight"] for i in range(5)}, folder / LPIPS_FILES[1])
    return folder


def time_held_out(seconds: list[float]) -> None:
    """Make ``StyleTrainer``'s held-out evaluations and snapshots add their durations to ``seconds`` (outermost calls
    only: a snapshot evaluates too)."""
    depth = [0]

    def timed(method: Callable) -> Callable:
        def run(*args, **kwargs):
            start, depth[0] = time.perf_counter(), depth[0] + 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    seconds.append(time.perf_counter() - start)
        return run

    for name in ("evaluate", "snapshot"):
        setattr(StyleTrainer, name, timed(getattr(StyleTrainer, name)))


def run_chunks(args: argparse.Namespace) -> dict:
    """``--chunks`` calls of ``EditRunner.fine_tune`` (``--chunked``: "rebuilt" or "kept"), timed per call: the
    wall time, and the overhead (what is neither a training step nor a held-out evaluation: the set-up, the
    bookkeeping, the style and state at the end)."""
    device = torch.device(args.device)
    editor, live3d = recipe_models(Path(args.golden))
    held_out = []  # seconds of each held-out evaluation or snapshot (at the same training times in both runs)
    time_held_out(held_out)
    with tempfile.TemporaryDirectory() as folder:
        runner = EditRunner(PortraitEditor(editor.to(device), weights_folder=weight_folder(Path(folder), live3d,
                                                                                           args.perceptual)),
                            kept_trainers=1 if args.chunked == "kept" else 0)
        del editor, live3d
        session = StyleSession(stand_in_samples(), {"kind": "benchmark"}, "benchmark",
                               CustomizeConfig(batch_size=args.batch_size))
        chunks = []
        for _ in range(args.chunks):
            trained, evaluated = session.curve[-1][1] if session.curve else 0.0, len(held_out)
            start = time.perf_counter()
            for update in runner.fine_tune(session, args.chunk_steps, owner="benchmark"):
                session = session.advanced(update)
            seconds = time.perf_counter() - start
            chunks.append({"seconds": seconds,
                           "overhead": seconds - (session.curve[-1][1] - trained) - sum(held_out[evaluated:])})
    steps = [b[1] - a[1] for a, b in zip([(0, 0.0, 0.0), *session.curve], session.curve)]
    return {"trainer": args.chunked, "chunks": chunks, "step_s": statistics.median(steps),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def print_chunks(rows: list[dict], chunk_steps: int) -> None:
    later = {row["trainer"]: row["chunks"][1:] for row in rows}
    overhead = {name: statistics.median(c["overhead"] for c in chunks) for name, chunks in later.items()}
    print(f"\nchunked fine-tune as the app runs it (lora, {len(rows[0]['chunks'])} calls of {chunk_steps} steps; "
          "overhead: a call's time less its training steps and held-out evaluations):\n")
    print("| trainer between calls | first call | later calls (median) | overhead of a later call (median) | "
          "training step (median) | peak RSS |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        name = {"rebuilt": "rebuilt every call (ZeroGPU)", "kept": "kept (elsewhere)"}[row["trainer"]]
        print(f"| {name} | {row['chunks'][0]['seconds']:.1f} s | "
              f"{statistics.median(c['seconds'] for c in later[row['trainer']]):.1f} s | "
              f"{overhead[row['trainer']]:.2f} s | {row['step_s']:.2f} s | {row['rss_mib'] / 1024:.1f} GiB |")
    step = statistics.median(row["step_s"] for row in rows)
    rebuilt, kept = (overhead[name] + TUNE_STEPS_PER_CALL * step for name in ("rebuilt", "kept"))
    print(f"\nsaved per later call: {overhead['rebuilt'] - overhead['kept']:.1f} s; a call of the app's "
          f"{TUNE_STEPS_PER_CALL} steps at this step time: {rebuilt:.0f} s rebuilt, {kept:.0f} s kept "
          f"({rebuilt / kept:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="*", default=["lora", "full"], choices=["lora", "full"],
                        help="modes of the per-step table (none: only the chunk comparison)")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in a child process
    parser.add_argument("--chunks", type=int, default=3, help="calls of the chunk comparison (at least 2; 0: none)")
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help=f"steps per call (default: {TUNE_STEPS_PER_CALL} on a GPU, as the app; 1 on a CPU)")
    parser.add_argument("--chunked", choices=["rebuilt", "kept"], help=argparse.SUPPRESS)  # in a child process
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--perceptual", choices=["lpips", "substitute"], default="lpips")
    parser.add_argument("--golden", default=str(GOLDEN), help="folder with manifest.json and live3d_manifest.json")
    args = parser.parse_args()
    if args.chunks == 1:
        parser.error("--chunks: at least 2 (the first call builds the trainer either way)")
    if args.chunk_steps is None:
        args.chunk_steps = TUNE_STEPS_PER_CALL if args.device.startswith("cuda") else 1
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    if args.chunked:
        print(json.dumps(run_chunks(args)))
        return
    common = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
              str(args.batch_size), "--perceptual", args.perceptual, "--golden", args.golden, "--chunks",
              str(args.chunks), "--chunk-steps", str(args.chunk_steps)]

    def child(*options: str) -> dict:
        output = subprocess.run([sys.executable, __file__, *options, *common], check=True, capture_output=True,
                                text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    rows = [child("--mode", mode) for mode in args.modes]
    chunk_rows = [child("--chunked", trainer) for trainer in ("rebuilt", "kept")] if args.chunks else []
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    perceptual = ("LPIPS AlexNet with random weights (the cost of the released files)" if args.perceptual == "lpips"
                  else "the MAE-token substitute for LPIPS")
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; median of {args.steps} steps after "
          f"{args.warmup} warm-up; perceptual term: {perceptual}\n")
    gpu = any(row["gpu_gib"] is not None for row in rows)
    if rows:
        print("| mode | step (median) | min / max | trained tensors | trained values | style file | peak RSS |"
              + (" peak GPU |" if gpu else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for row in rows:
        print(f"| {row['mode']} | {row['median_s']:.2f} s | {row['min_s']:.2f} / {row['max_s']:.2f} s | "
              f"{row['tensors']} | {row['values'] / 1e6:.2f} M | {row['style_bytes'] / 2**20:.1f} MiB | "
              f"{row['rss_mib'] / 1024:.1f} GiB |" + (f" {row['gpu_gib']:.1f} GiB |" if gpu else ""))
    if chunk_rows:
        print_chunks(chunk_rows, args.chunk_steps)


if __name__ == "__main__":
    main()
