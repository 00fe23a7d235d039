"""Side by side with the official 3DPE code: editor pass + one 512² view, official vs threedpe (exact and fast).

    python benchmarks/bench_official.py --checkout ~/src/3dpe --python ~/venvs/3dpe/bin/python
        [--weights 3dpe.pt] [--rounds 2] [--runs 3] [--threads 2] [--as-released]

Not run in CI: it needs a checkout of https://github.com/EzioBy/3dpe and a virtual environment in which that code
imports (its requirements.txt: segmentation_models_pytorch, timm, einops, ... and a torch that runs on this machine;
use the same torch version as threedpe's for a fair figure, since torch's version alone moves a render by up to 30 %).
Nothing of the official code is copied here: a small driver, run by ``--python`` with the checkout on its path, builds
the official ``models.model_ref.Live3DEditingEncoder`` (in_channels=5, mode='LT', resnet34, depth 3, no BN, as
``TriEncoder_Editing.set_encoder``) and ``models.model.TriplaneRenderer`` (512², 3 channels, the golden manifest's
effective rendering settings: 48 + 48 samples, 128² neural rendering) on the CPU, loads ``--weights`` into both
(``encoder_state_dict``, ``renderer_state_dict``) or keeps their random initialisation (speed does not depend on the
values), and times ``encoder(x, ref)`` and ``renderer(planes, cam)``. segmentation_models_pytorch fetches its
ImageNet ResNet-34 weights when the encoder is built; offline they must already be in the torch hub cache.

Inputs are the golden case's ``input_tensor``, ``ref_tensor_mae`` and first camera (``$THREEDPE_GOLDEN_DIR`` or
``--golden-dir``). Every round runs the official driver, then threedpe's (a fresh process each, warm-up first, then
``--runs`` timed calls, medians), so that rounds alternate; threedpe is timed with its default (``exact``) path and,
on a CPU with native bf16, ``fast``. The official encoder runs under ``torch.no_grad()`` (threedpe under
``torch.inference_mode``); ``--as-released`` times it as ``scripts/inference.py`` calls it, recording autograd.
The last lines are ``official_vs_exact=<official / threedpe exact, editor pass + one view>`` and, with native bf16,
``official_vs_fast=<official / threedpe fast>``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run by the official environment's python: imports only torch, numpy and the checkout.
OFFICIAL_DRIVER = r'''
import json, sys, time
import numpy as np
import torch

checkout, inputs, weights, runs, threads, released = sys.argv[1:7]
sys.path.insert(0, checkout)
torch.set_num_threads(int(threads))
from models.model_ref import Live3DEditingEncoder
from models.model import TriplaneRenderer

settings = json.loads(sys.argv[7])
encoder = Live3DEditingEncoder(in_channels=5, mode="LT", encoder_name="resnet34", encoder_depth=3, use_bn=False)
renderer = TriplaneRenderer(img_resolution=512, img_channels=3, rendering_kwargs=settings)
renderer.neural_rendering_resolution = 128
if weights:
    state = torch.load(weights, map_location="cpu")
    encoder.load_state_dict(state["encoder_state_dict"])
    renderer.load_state_dict(state["renderer_state_dict"])
encoder.eval()
renderer.eval().requires_grad_(False)
case = np.load(inputs)
x, ref, cam = (torch.from_numpy(case[k]) for k in ("input_tensor", "ref_tensor_mae", "cams"))
grad = torch.enable_grad() if released == "1" else torch.no_grad()
times = {"encode": [], "view": []}
with grad:
    for i in range(int(runs) + 1):  # the first call is the warm-up
        start = time.perf_counter()
        planes = encoder(x, ref)
        middle = time.perf_counter()
        with torch.no_grad():
            renderer(planes.detach(), cam[:1])
        end = time.perf_counter()
        if i:
            times["encode"].append(middle - start)
            times["view"].append(end - middle)
print("RESULT " + json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), **times}))
'''


def threedpe_worker(inputs: Path, weights: str, runs: int, threads: int) -> None:
    """Time threedpe's editor pass and one view on ``inputs`` (exact, and fast where bf16 is native); print RESULT."""
    import time

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench import recipe_editor
    from threedpe.models.editor import EditorModel
    from threedpe.precision import native_bf16
    from threedpe.weights.checkpoints import load_3dpe

    torch.set_num_threads(threads)
    model = EditorModel.from_checkpoint(load_3dpe(weights)) if weights else recipe_editor(torch.device("cpu"))
    case = np.load(inputs)
    x, ref, cam = (torch.from_numpy(case[k]) for k in ("input_tensor", "ref_tensor_mae", "cams"))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for precision in ["exact"] + (["fast"] if native_bf16("cpu") else []):
        model.inference.precision = precision
        times = {"encode": [], "view": []}
        with torch.inference_mode():
            for i in range(runs + 1):
                start = time.perf_counter()
                planes = model.encode(x, ref)
                middle = time.perf_counter()
                model.render(planes, cam[:1])
                end = time.perf_counter()
                if i:
                    times["encode"].append(middle - start)
                    times["view"].append(end - middle)
        result[precision] = times
    print("RESULT " + json.dumps(result))


def run(command: list[str]) -> dict:
    """Run a worker; its RESULT line as a dict (its output is shown when it fails)."""
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.exit(f"error: {' '.join(command[:2])} ... failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
             f"{done.stderr[-3000:]}")


def write_inputs(golden_dir: Path, folder: Path) -> tuple[Path, dict]:
    """The golden case's inputs as one .npz both workers read, and the renderer settings of the manifest."""
    import numpy as np

    case = np.load(golden_dir / "editor_3dpe.npz")
    path = folder / "inputs.npz"
    np.savez(path, **{key: case[key] for key in ("input_tensor", "ref_tensor_mae", "cams")})
    settings = json.loads((golden_dir / "manifest.json").read_text())["renderer_rendering_kwargs_effective"]
    return path, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, help="the official EzioBy/3dpe checkout")
    parser.add_argument("--python", help="the python of a virtual environment in which the official code imports")
    parser.add_argument("--weights", default="", help="a released 3dpe.pt for both (default: random / recipe weights)")
    parser.add_argument("--golden-dir", type=Path,
                        default=Path(os.environ.get("THREEDPE_GOLDEN_DIR", ROOT.parent / "shared" / "golden")))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per round after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on both sides")
    parser.add_argument("--as-released", action="store_true",
                        help="time the official encoder recording autograd, as scripts/inference.py calls it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "threedpe"
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "threedpe":
        return threedpe_worker(args.inputs, args.weights, args.runs, args.threads)
    if args.checkout is None or args.python is None:
        parser.error("--checkout and --python are required")
    if not (args.checkout / "models" / "model_ref.py").is_file():
        parser.error(f"{args.checkout} is not a checkout of EzioBy/3dpe (no models/model_ref.py)")
    if not (args.golden_dir / "editor_3dpe.npz").is_file():
        parser.error(f"no golden fixtures in {args.golden_dir} (set --golden-dir or THREEDPE_GOLDEN_DIR)")

    with tempfile.TemporaryDirectory() as folder:
        inputs, settings = write_inputs(args.golden_dir, Path(folder))
        driver = Path(folder) / "official_driver.py"
        driver.write_text(OFFICIAL_DRIVER)
        official_command = [args.python, str(driver), str(args.checkout.resolve()), str(inputs),
                            str(Path(args.weights).resolve()) if args.weights else "", str(args.runs),
                            str(args.threads), "1" if args.as_released else "0", json.dumps(settings)]
        ours_command = [sys.executable, str(Path(__file__).resolve()), "--worker", "threedpe", "--inputs", str(inputs),
                        "--runs", str(args.runs), "--threads", str(args.threads), "--weights", args.weights]
        totals: dict[str, list[float]] = {}
        for round_index in range(args.rounds):
            official, ours = run(official_command), run(ours_command)
            paths = {f"official (torch {official['torch']})": official,
                     **{f"threedpe {p} (torch {ours['torch']})": ours[p] for p in ("exact", "fast") if p in ours}}
            for name, times in paths.items():
                encode, view = statistics.median(times["encode"]), statistics.median(times["view"])
                totals.setdefault(name, []).append(encode + view)
                print(f"round {round_index + 1}: {name}: encode {encode:.2f} s + view {view:.2f} s = "
                      f"{encode + view:.2f} s ({official['threads']} threads, median of {args.runs})", flush=True)
    names = list(totals)
    official_total = statistics.median(totals[names[0]])
    for name in names[1:]:
        key = "official_vs_exact" if " exact " in name else "official_vs_fast"
        print(f"{key}={official_total / statistics.median(totals[name]):.2f}")


if __name__ == "__main__":
    main()
