"""Batch edits: photos per minute at batch sizes 1, 4 and 8, on the CPU (and CUDA when present).

    python benchmarks/bench_batch.py [--weights recipe|tiny] [--photos 8] [--batch-sizes 1 4 8] [--devices cpu cuda]

Runs :func:`threedpe.batch.edit_jobs` as ``python -m threedpe batch`` does (read, align with MTCNN, encode the photos
that share the reference ``--batch-size`` at a time, write input.jpg / aligned.png / views.png and result.json per
photo) over ``--photos`` portraits (the astronaut and its mirror image, alternating, as PNG files) with one reference.
``recipe``: the released architectures with the golden recipe weights (512^2 input, 256^2 tri-planes, 512^2 views;
the speed of the released files, not their looks), written to a temporary weight folder with a Live3D file (so the
E_low / E_high features are kept for the strength, as in the product); ``tiny``: ``python -m threedpe tiny-weights``.
One untimed photo warms each device up; every batch size then runs into a fresh output folder. Prints a markdown
table (photos per minute, seconds per photo) and the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import cpu_name, golden_reference_image, recipe_editor  # noqa: E402
from threedpe.batch import BatchOptions, collect_jobs, edit_jobs  # noqa: E402
from threedpe.weights.checkpoints import save_checkpoint  # noqa: E402
from threedpe.models.editor import ReconstructionConfig, ReconstructionModel  # noqa: E402
from threedpe.weights import RECONSTRUCTION_WEIGHTS  # noqa: E402
from threedpe.pipeline import PortraitEditor  # noqa: E402


def recipe_weights(folder: Path) -> Path:
    """The recipe editor and a Live3D network with its (recipe) weights, in the product's format."""
    editor = recipe_editor(torch.device("cpu"))
    save_checkpoint(editor.checkpoint(), folder / "3dpe", source="golden recipe (benchmark)")
    live3d = ReconstructionModel(ReconstructionConfig.like(editor.config))
    live3d.encoder.load_state_dict({k: v for k, v in editor.encoder.state_dict().items()
                                    if not k.startswith("Ref_encoder.")})
    live3d.renderer.load_state_dict(editor.renderer.state_dict())
    save_checkpoint(live3d.checkpoint(), folder / Path(RECONSTRUCTION_WEIGHTS[0]).stem, source="golden recipe")
    return folder


def write_photos(folder: Path, count: int) -> Path:
    from skimage import data

    face = Image.fromarray(data.astronaut())
    folder.mkdir()
    for i in range(count):
        (ImageOps.mirror(face) if i % 2 else face).save(folder / f"photo{i:03d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", choices=("recipe", "tiny"), default="recipe")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        if args.weights == "recipe":
            weights = recipe_weights(temporary / "weights")
        else:
            from threedpe.tiny import save_tiny_weights

            weights = save_tiny_weights(temporary / "weights")
        reference = temporary / "reference.png"
        golden_reference_image().save(reference)
        jobs = collect_jobs(write_photos(temporary / "photos", args.photos), reference=reference)
        rows = []
        for device in args.devices:
            editor = PortraitEditor.from_pretrained(weights, device=device)
            edit_jobs(editor, jobs[:1], temporary / f"warm-{device}", progress=False)
            for size in args.batch_sizes:
                start = time.perf_counter()
                outcomes = edit_jobs(editor, jobs, temporary / f"{device}-{size}", BatchOptions(batch_size=size),
                                     progress=False)
                seconds = time.perf_counter() - start
                assert all(o.status == "edited" for o in outcomes), [o.reason for o in outcomes]
                rows.append(f"| {device} | {size} | {len(outcomes) / seconds * 60:.1f} | {seconds / len(outcomes):.2f} |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"{args.weights} weights, {args.photos} photos per batch size; CPU {cpu_name()}, "
          f"{torch.get_num_threads()} threads, {gpu}; torch {torch.__version__}")
    print("| device | batch size | photos per minute | seconds per photo |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
