"""Time the core models at full size on the current device (random weights: speed does not depend on them).

    python benchmarks/bench_core.py [--device cuda] [--runs 5] [--warmup 1] [--only eg3d_synthesis render_512 ...]

Prints the median (and min/max) of ``--runs`` timed runs after ``--warmup`` untimed ones, plus peak
memory. Stages: EG3D mapping + backbone synthesis, one 512^2 EG3D render (volume rendering + SR),
the 3DPE encoder on one 512^2 portrait, one 512^2 render of the 3DPE renderer.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threedpe import cameras  # noqa: E402
from threedpe.editor import EditorConfig, EditorModel  # noqa: E402
from threedpe.generator import GeneratorConfig, TriPlaneGenerator  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device, runs: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def stages(device: torch.device) -> dict[str, Callable[[], object]]:
    generator = TriPlaneGenerator(GeneratorConfig()).eval().to(device)
    editor = EditorModel(EditorConfig()).eval().to(device)
    z = torch.randn(1, 512, device=device)
    c = cameras.frontal_camera().to(device)
    with torch.inference_mode():
        ws = generator.mapping(z, c)
        planes = generator.synthesize_planes(ws)
    x = torch.rand(1, 3, 512, 512, device=device) * 2 - 1
    ref = torch.randn(1, 3, 224, 224, device=device)

    def run(fn: Callable[[], object]) -> Callable[[], object]:
        def wrapped() -> object:
            with torch.inference_mode():
                return fn()
        return wrapped

    return {
        "eg3d_synthesis": run(lambda: generator.synthesize_planes(generator.mapping(z, c))),
        "eg3d_render_512": run(lambda: generator.render(planes, ws, c)),
        "editor_encode_512": run(lambda: editor.encode(x, ref)),
        "editor_render_512": run(lambda: editor.render(planes, c)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="stage names to run (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":  # the golden tolerances assume true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; median of {args.runs} after {args.warmup} warm-up")
    for stage, fn in stages(device).items():
        if args.only and stage not in args.only:
            continue
        times = timed(fn, device, args.runs, args.warmup)
        print(f"{stage:20s} median {statistics.median(times) * 1000:9.1f} ms  "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(f"peak RSS {rss:.0f} MiB{gpu}")


if __name__ == "__main__":
    main()
