"""Where the edit strength blends: the tri-planes, or the E_high features before the final encoder (E_t)?

    python benchmarks/bench_strength.py [--golden ../shared/golden] [--strengths 0.25 0.5 0.75 1.25 1.5]

On the released architectures with the golden recipe weights (``tests/golden_recipe.py``; the editor from
``manifest.json``, Live3D from ``live3d_manifest.json``), the astronaut and the golden reference image: one encode
gives the edited tri-planes T1 and the E_low / E_high features; Live3D's E_t on them gives the unedited T0. Strength s
then renders either ``lerp(T0, T1, s)`` (tri-planes) or ``E_t(lerp(E_high, attended E_high, s), E_low)`` (features;
at s = 0 this is the editor's E_t on un-attended features, the Live3D reconstruction only where both E_t are equal,
as in the recipe weights but not in the released files, where 3DPE fine-tuned E_t). For each s and path, at the
frontal and a 30-degree view: ``to_0`` = |I_s - I_0| / |I_1 - I_0| and ``to_1`` = |I_s - I_1| / |I_1 - I_0| (mean
absolute image difference; a faithful blend has to_0 ~ s and to_0 + to_1 ~ 1 between the ends, i.e. it moves
steadily along the way from the photo's reconstruction to the edit without detours), the same for the depth
image, and the seconds one strength change costs before rendering. Prints a markdown table and the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import cpu_name, portrait_inputs, views  # noqa: E402
from benchmarks.bench_customize import recipe_models  # noqa: E402


def distances(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean |a - b| of the images and of the depth images (all views)."""
    return tuple(float((a[key] - b[key]).abs().mean()) for key in ("image", "image_depth"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=ROOT.parent / "shared" / "golden")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.25, 1.5])
    args = parser.parse_args()
    editor, live3d = recipe_models(args.golden)
    x, ref = portrait_inputs(torch.device("cpu"))
    cams = views([0.0, 30.0], torch.device("cpu"))
    with torch.inference_mode():
        edited, low, high = editor.encode(x, ref, keep_branches=True)
        attended = editor.encoder.Ref_encoder(high, ref)
        unedited = live3d.from_branches(low, high)
        whole = live3d.encode(x)
        ends = [editor.render(planes, cams) for planes in (unedited, edited)]
        apart = distances(ends[1], ends[0])
        rows = []
        for s in args.strengths:
            start = time.perf_counter()
            by_planes = torch.lerp(unedited, edited, s)
            planes_seconds = time.perf_counter() - start
            start = time.perf_counter()
            by_features = editor.encoder.Final_encoder(torch.lerp(high, attended, s), low)
            features_seconds = time.perf_counter() - start
            for path, planes, seconds in (("tri-planes", by_planes, planes_seconds),
                                          ("features before E_t", by_features, features_seconds)):
                out = editor.render(planes, cams)
                to_0, to_1 = distances(out, ends[0]), distances(out, ends[1])
                rows.append(f"| {s:g} | {path} | {to_0[0] / apart[0]:.3f} | {to_1[0] / apart[0]:.3f} | "
                            f"{to_0[1] / apart[1]:.3f} | {to_1[1] / apart[1]:.3f} | {seconds:.4f} |")
    print(f"golden recipe weights, astronaut + golden reference, views yaw 0 and 30; CPU {cpu_name()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"unedited from the shared branches vs Live3D's whole encode: max |diff| = "
          f"{float((unedited - whole).abs().max()):.2e}; |I_1 - I_0| = {apart[0]:.4f} (image), {apart[1]:.4f} (depth)")
    print("| strength | blend | image to_0 | image to_1 | depth to_0 | depth to_1 | seconds per change |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
