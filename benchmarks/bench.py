"""Benchmark of the product paths at full size: the baseline against the optimised default, side by side.

    python benchmarks/bench.py [--quick] [--json PATH] [--out DIR] [--runs N] [--warmup N] [--threads N] [--compile]

Models are the released architectures with the golden fixtures' recipe weights (speed does not depend on the
values; ``tests/golden_recipe.py``). The **baseline** is the straightforward fp32 reference path that reproduces
the golden fixtures (``model.inference.fast = False``; it stands in for the official code, which
``benchmarks/bench_official.py`` times when its checkout is at hand); the **optimised** path is the library's default
(precision ``"exact"``). On a CPU (or GPU) that computes bf16 natively, precision ``"fast"`` runs in the same rotation
for the editor pass and the view. The paths run in the same process, alternating (each takes every position in turn),
after warm-up; the table shows medians, the ratio, the largest |path - baseline| of the outputs and the peak memory of
one call (process RSS; CUDA max allocated on a GPU). Rows: editor pass (encode 512^2), one 512^2 view, a 3-view batch,
preview view, orbit-video frames, mesh at 256^3, an EG3D anchor portrait, one InstructPix2Pix denoising step at 256^2
and 512^2 (a full-size SD-1.5 InstructPix2Pix UNet/VAE with random weights), and the same on CUDA in fp32 (TF32 off),
fast and fp16 when a GPU is present; customisation steps are timed by ``benchmarks/bench_customize.py``. ``--out``
receives the 256^2 and 512^2 text references side by side.

The **roofline** (CPU) follows: this machine's measured peak (a matmul and a 3x3 convolution in fp32, and in bf16 where
native; a memory copy), then per stage of the product path (the encoder's sub-blocks, the fused volume rendering, the
folded super-resolution, the mesh density grid) the FLOPs counted by ``torch.utils.flop_counter`` (matrix products
and convolutions), the achieved GFLOP/s and the fraction of the peak, with the CPU model and its ISA extensions. The
last lines printed are ``fast_speedup=<baseline / fast, editor pass + one 512^2 view> fast_max_abs_diff=<fast vs
baseline>`` (CPUs with native bf16 only) and
``speedup=<baseline / optimised, CPU editor pass + one 512^2 view> max_abs_diff=<optimised vs baseline>``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.golden_recipe import recipe_tensor  # noqa: E402
from threedpe import cameras  # noqa: E402
from threedpe.mesh import density_grid, extract_mesh  # noqa: E402
from threedpe.models.editor import EditorConfig, EditorModel, describe_fast_precision  # noqa: E402
from threedpe.models.encoder import preprocess_input, preprocess_reference  # noqa: E402
from threedpe.models.stylegan2 import FUSED_CPU_CONV  # noqa: E402
from threedpe.precision import cpu_flags, native_bf16  # noqa: E402
from threedpe.video import render_orbit, triplane_view  # noqa: E402

# The golden README's "excluded patterns": constants the model constructs itself (FIR filters, MAE sin-cos table).
RECIPE_EXCLUDED = re.compile(r"(^|\.)resample_filter$|^Ref_encoder\.mae_encoder\.pos_embed$")

# The released InstructPix2Pix (timbrooks/instruct-pix2pix, diffusers layout) = Stable Diffusion 1.5 with an
# 8-channel UNet input (noisy latent + encoded input image); public unet/ and vae/ config.json values.
IP2P_UNET = {
    "sample_size": 64, "in_channels": 8, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
    "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1,
}
IP2P_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "act_fn": "silu", "sample_size": 512,
}
IP2P_TEXT_TOKENS, IP2P_TEXT_WIDTH = 77, 768  # CLIP ViT-L/14 text encoder output
IP2P_STEPS = 20  # EditSettings' default
ORBIT_FRAMES = 6


@dataclass
class Row:
    """One line of the table. Times in seconds (medians); ``baseline_s`` None where there is no baseline."""

    stage: str
    path: str
    optimised_s: float
    baseline_s: float | None = None
    max_abs_diff: float | None = None
    peak_baseline_mib: float | None = None
    peak_optimised_mib: float | None = None
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return self.baseline_s / self.optimised_s if self.baseline_s else None


class Memory:
    """Peak memory of one call: CUDA max allocated on a GPU, else the process's peak RSS (Linux resets it through
    /proc/self/clear_refs; elsewhere the peak since start is reported)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        try:
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        except (OSError, AttributeError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Bench:
    """Runs and times the stages; ``rows`` collects the table."""

    def __init__(self, device: torch.device, runs: int, warmup: int):
        self.device, self.runs, self.warmup = device, runs, warmup
        self.memory = Memory(device)
        self.rows: list[Row] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def call(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(seconds, output) of one call, synchronised on CUDA."""
        self._sync()
        start = time.perf_counter()
        out = fn()
        self._sync()
        return time.perf_counter() - start, out

    def _first(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """The first call of ``fn`` (its warm-up, or its first timed run): (seconds, peak MiB, output)."""
        self.memory.reset()
        seconds, out = self.call(fn)
        return seconds, self.memory.peak_mib(), out

    def alternate(self, fns: dict[str, Callable[[], Any]], runs: int | None = None
                  ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
        """Time ``fns`` in one rotation per round (each takes every position in turn) after their first calls (memory,
        warm-up; counted as a run when there is no warm-up): (median seconds, peak MiB of the first call, output)."""
        runs = runs or self.runs
        times: dict[str, list[float]] = {name: [] for name in fns}
        peaks, outputs = {}, {}
        for name, fn in fns.items():
            seconds, peaks[name], outputs[name] = self._first(fn)
            if self.warmup == 0:
                times[name].append(seconds)
        for _ in range(max(0, self.warmup - 1)):
            for fn in fns.values():
                fn()
        names = list(fns)
        for r in range(runs - (self.warmup == 0)):
            for name in names[r % len(names):] + names[:r % len(names)]:
                seconds, outputs[name] = self.call(fns[name])
                times[name].append(seconds)
        return {name: statistics.median(t) for name, t in times.items()}, peaks, outputs

    def compare(self, stage: str, path: str, baseline: Callable[[], Any] | None, optimised: Callable[[], Any],
                diff: Callable[[Any, Any], float] | None = None, runs: int | None = None, note: str = "",
                others: dict[str, Callable[[], Any]] | None = None) -> Row:
        """Time ``baseline`` and ``optimised`` (and ``others``: path label -> call, each a row of its own against the
        same baseline) alternately; a row gets medians, peak memory and ``diff(baseline, output)``."""
        fns = {"optimised": optimised} if baseline is None else {"baseline": baseline, "optimised": optimised}
        fns.update(others or {})
        seconds, peaks, outputs = self.alternate(fns, runs)
        rows = []
        for name in fns:
            if name == "baseline":
                continue
            row = Row(stage, path if name == "optimised" else name, seconds[name], note=note,
                      baseline_s=seconds.get("baseline"), peak_baseline_mib=peaks.get("baseline"),
                      peak_optimised_mib=peaks[name])
            if diff is not None and baseline is not None:
                row.max_abs_diff = diff(outputs["baseline"], outputs[name])
            self.rows.append(row)
            rows.append(row)
            print(f"  {stage} [{row.path}]: {format_row_short(row)}", flush=True)
        return rows[0]


def format_row_short(row: Row) -> str:
    text = f"optimised {row.optimised_s:.3f} s"
    if row.baseline_s is not None:
        text += f", baseline {row.baseline_s:.3f} s, x{row.speedup:.2f}"
    if row.max_abs_diff is not None:
        text += f", max |diff| {row.max_abs_diff:.3g}"
    return text


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over tensors, arrays, or dicts/lists of them (same structure)."""
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    a, b = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a), torch.as_tensor(
        np.asarray(b) if not isinstance(b, torch.Tensor) else b)
    return float((a.double().cpu() - b.double().cpu()).abs().max())


# ------------------------------------------------------------------------------------------------------------------
# Models and inputs.

def recipe_editor(device: torch.device) -> EditorModel:
    """The released editor architecture with the golden recipe weights (every float entry but the constants)."""
    model = EditorModel(EditorConfig())
    for module in (model.encoder, model.renderer):
        state = {name: value if RECIPE_EXCLUDED.search(name) or not value.is_floating_point()
                 else recipe_tensor(name, tuple(value.shape)) for name, value in module.state_dict().items()}
        module.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)  # (FlopCounterMode's module tracker needs no-grad weights)


def golden_reference_image() -> Image.Image:
    """The golden fixtures' synthetic reference (README "Preprocessing"): colour waves and diagonal stripes."""
    y, x = np.mgrid[0:512, 0:512].astype(np.float64)
    u, v = x / 511, y / 511
    rgb = np.stack([127.5 + 127.5 * np.sin(2 * np.pi * (1.5 * u + 0.5 * v)),
                    127.5 + 127.5 * np.cos(2 * np.pi * (2 * v - 0.75 * u)),
                    40 + 180 * (np.floor((x + 2 * y) / 32) % 2)], -1)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def portrait_inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage import data

    x = preprocess_input(Image.fromarray(data.astronaut()))
    return x.to(device), preprocess_reference(golden_reference_image()).to(device)


def views(degrees: list[float], device: torch.device) -> torch.Tensor:
    return torch.cat([cameras.camera(*cameras.from_degrees(yaw, 0.0)) for yaw in degrees]).to(device)


def options(model: EditorModel, fast: bool, autocast: torch.dtype | None = None, compile: bool = False,
            precision: str = "exact") -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Wrap a call so that it runs under ``torch.inference_mode`` with these inference options."""
    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            model.inference.fast, model.inference.autocast, model.inference.compile = fast, autocast, compile
            model.inference.precision = precision
            with torch.inference_mode():
                return fn()
        return run
    return wrap


# ------------------------------------------------------------------------------------------------------------------
# Stages.

def editor_stages(bench: Bench, model: EditorModel, path: str, quick: bool,
                  variants: list[tuple[str, torch.dtype | None, bool]]) -> dict[str, Row]:
    """Editor pass, one view, 3 views, preview, orbit frames, mesh: baseline vs the optimised default (and, on a device
    with native bf16, precision "fast" in the same rotation: rows "encode fast" and "view fast"); then the
    ``variants`` (label, autocast dtype, compile) of the optimised path against the same baseline."""
    device = bench.device
    x, ref = portrait_inputs(device)
    base, fast = options(model, False), options(model, True)
    reduced = options(model, True, precision="fast") if native_bf16(device) else None
    fast_path = f"{device.type} fast precision ({describe_fast_precision(device).split(' (')[0]})"

    def candidates(fn: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
        return {fast_path: reduced(fn)} if reduced else {}

    encode = lambda: model.encode(x, ref)  # noqa: E731
    rows = {"encode": bench.compare("editor pass (encode 512²)", path, base(encode), fast(encode), max_abs_diff,
                                    others=candidates(encode))}
    rows["encode fast"] = bench.rows[-1] if reduced else None
    with torch.inference_mode():
        model.inference.fast = False
        planes = model.encode(x, ref)
    front, three = views([0.0], device), views([-30.0, 0.0, 30.0], device)
    view = lambda: model.render(planes, front)  # noqa: E731
    rows["view"] = bench.compare("one 512² view", path, base(view), fast(view), max_abs_diff, others=candidates(view))
    rows["view fast"] = bench.rows[-1] if reduced else None
    bench.compare("3-view batch", path, base(lambda: model.render(planes.expand(3, -1, -1, -1), three)),
                  fast(lambda: model.render(planes, three)), max_abs_diff, runs=min(bench.runs, 3),
                  note="optimised: one tri-plane shared by the 3 cameras, one decoder pass")
    full = fast(lambda: model.render(planes, front))()["image"]
    preview = bench.compare("preview view (drag)", path, None, fast(lambda: model.render(planes, front, preview=True)),
                            note="64² neural rendering, 24+24 samples, SR at 64²→256² upscaled to 512²")
    with torch.inference_mode():
        drift = float((model.render(planes, front, preview=True)["image"] - full).abs().mean())
    preview.baseline_s, preview.note = rows["view"].baseline_s, preview.note + (
        f"; baseline column = the baseline full view; mean |preview - full| {drift:.3g}")

    def orbit(fast_path: bool) -> Callable[[], Any]:
        def run() -> list[np.ndarray]:
            model.inference.fast = fast_path
            return list(render_orbit(triplane_view(model.renderer, planes), ORBIT_FRAMES))
        return run
    row = bench.compare(f"orbit video frames ({ORBIT_FRAMES})", path, orbit(False), orbit(True), max_abs_diff, runs=1)
    row.note = (f"{ORBIT_FRAMES / row.baseline_s:.2f} → {ORBIT_FRAMES / row.optimised_s:.2f} frames/s "
                "(EditResult.video: batch 1; uint8 frames, |diff| in levels)")

    mesh_resolution = 64 if quick else 256
    bench.compare(f"mesh density grid {mesh_resolution}³", path,
                  lambda: density_grid(planes, model.renderer.decoder, mesh_resolution, fused=False),
                  lambda: density_grid(planes, model.renderer.decoder, mesh_resolution), max_abs_diff, runs=1)
    grid = density_grid(planes, model.renderer.decoder, 32)
    level = 10.0 if grid.min() < 10.0 < grid.max() else float(np.quantile(grid, 0.9))
    mesh = bench.compare(f"mesh extraction {mesh_resolution}³ (grid + marching cubes + colours)", path,
                         lambda: extract_mesh(planes, model.renderer.decoder, mesh_resolution, level, fused=False),
                         lambda: extract_mesh(planes, model.renderer.decoder, mesh_resolution, level), runs=1)
    mesh.note = (f"level {level:.3g}" + ("" if level == 10.0 else " (the recipe field never reaches 10)") +
                 "; scikit-image's marching cubes, the same in both, dominates on this noisy random field")

    # Opt-in variants of the optimised path, timed alone; the baseline column and |diff| refer to the baseline above.
    references = {"encode": base(lambda: model.encode(x, ref))(), "view": base(lambda: model.render(planes, front))()}
    for label, dtype, compiled in variants:
        run = options(model, True, dtype, compiled)
        note = "opt-in; not golden-equal: the bound is the measured max |diff|" if dtype else "opt-in"
        if compiled:
            seconds, _ = bench.call(run(lambda: (model.encode(x, ref), model.render(planes, front))))
            note += f"; first call (compilation) {seconds:.0f} s"
        for key, fn in (("encode", lambda: model.encode(x, ref)), ("view", lambda: model.render(planes, front))):
            row = bench.compare(rows[key].stage, f"{path} {label}", None, run(fn), note=note)
            row.baseline_s = rows[key].baseline_s
            row.max_abs_diff = max_abs_diff(references[key], run(fn)())
    model.inference.fast, model.inference.autocast, model.inference.compile = True, None, False
    model.inference.precision = "exact"
    return rows


def generator_stage(bench: Bench, path: str) -> None:
    """An EG3D anchor portrait (the text route's anchors): mapping, synthesis and one 512^2 render; only the volume
    rendering has a fast path here (the super-resolution depends on ws)."""
    from threedpe.models.generator import TriPlaneGenerator

    generator = TriPlaneGenerator()
    state = {name: value if RECIPE_EXCLUDED.search(name) else recipe_tensor(name, tuple(value.shape))
             for name, value in generator.state_dict().items()}
    generator.load_state_dict(state)
    generator = generator.eval().to(bench.device)
    z, c = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 512), dtype=np.float32)).to(bench.device), \
        views([0.0], bench.device)

    def anchor(fast: bool) -> Callable[[], Any]:
        def run() -> dict[str, torch.Tensor]:
            generator.inference.fast = fast
            with torch.inference_mode():
                return generator(z, c)
        return run
    bench.compare("EG3D anchor (mapping + synthesis + 512² render)", path, anchor(False), anchor(True),
                  lambda a, b: max_abs_diff({k: a[k] for k in ("image", "image_raw", "image_depth")},
                                            {k: b[k] for k in ("image", "image_raw", "image_depth")}),
                  runs=1, note="fused volume rendering only")


def ip2p_stages(bench: Bench, quick: bool) -> None:
    """One denoising step (the UNet on the 3 classifier-free-guidance copies) and the VAE encode + decode of one
    edit, at 256^2 and 512^2, on a full-size InstructPix2Pix UNet/VAE with random weights (tiny ones with --quick)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    device = bench.device
    if quick:
        from threedpe.tiny import build_tiny_instruct_pix2pix

        folder = build_tiny_instruct_pix2pix(Path(tempfile.mkdtemp()) / "ip2p")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        label, width = "tiny IP2P (--quick)", unet.config.cross_attention_dim
    else:
        torch.manual_seed(0)
        unet, vae = UNet2DConditionModel(**IP2P_UNET), AutoencoderKL(**IP2P_VAE)
        label, width = "full-size SD-1.5 IP2P, random weights", IP2P_TEXT_WIDTH
    unet, vae = unet.eval().to(device), vae.eval().to(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # InstructPix2PixEditor's default
    unet, vae = unet.to(dtype), vae.to(dtype)
    path = f"{device.type} {'fp16' if dtype == torch.float16 else 'fp32'}"
    text = torch.randn(3, IP2P_TEXT_TOKENS, width, device=device, dtype=dtype)
    times = {}
    for side in (512, 256):
        latent = torch.randn(3, 8, side // 8, side // 8, device=device, dtype=dtype)
        image = torch.rand(1, 3, side, side, device=device, dtype=dtype) * 2 - 1

        def step() -> torch.Tensor:
            with torch.inference_mode():
                return unet(latent, 500, encoder_hidden_states=text).sample

        def autoencode() -> torch.Tensor:
            with torch.inference_mode():
                return vae.decode(vae.encode(image).latent_dist.mode()).sample

        times[side] = (bench.compare(f"IP2P denoising step {side}²", path, None, step, runs=min(bench.runs, 3),
                                     note=f"{label}; UNet on the 3 guidance copies"),
                       bench.compare(f"IP2P VAE encode + decode {side}²", path, None, autoencode, runs=1, note=label))
    for side in (256, 512):
        step_row, vae_row = times[side]
        step_row.baseline_s = times[512][0].optimised_s
        vae_row.baseline_s = times[512][1].optimised_s
        total = IP2P_STEPS * step_row.optimised_s + vae_row.optimised_s
        step_row.note += f"; baseline column = 512²; a {IP2P_STEPS}-step text reference ≈ {total:.1f} s"


def write_references(out: Path, device: torch.device) -> str:
    """The same instruction, anchor and seed at 256^2 and 512^2, side by side in ``out``; returns a note."""
    from threedpe.anchors import shipped_anchors
    from threedpe.diffusion import InstructPix2PixEditor
    from threedpe.edit_settings import EditSettings

    weights = Path(os.environ.get("THREEDPE_WEIGHTS", ROOT / "checkpoints")) / "instruct-pix2pix"
    real = (weights / "model_index.json").is_file()
    if not real:
        from threedpe.tiny import build_tiny_instruct_pix2pix

        weights = build_tiny_instruct_pix2pix(Path(tempfile.mkdtemp()) / "ip2p")
    editor = InstructPix2PixEditor.from_pretrained(weights, device=device)
    anchor = shipped_anchors()[0].image()
    images, seconds = {}, {}
    for preset in ("fast", "quality"):
        settings = EditSettings.preset(preset)
        start = time.perf_counter()
        (images[settings.resolution],) = editor.edit([anchor], "make it a bronze statue", settings, seed=0)
        seconds[settings.resolution] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    pair = Image.new("RGB", (1024, 512))
    pair.paste(images[256].resize((512, 512), Image.Resampling.BICUBIC), (0, 0))
    pair.paste(images[512], (512, 0))
    for side, image in images.items():
        image.save(out / f"reference_{side}.png")
    pair.save(out / "reference_256_vs_512.png")
    if real:
        made = f"with the IP2P weights in {weights.parent}: 256² in {seconds[256]:.1f} s, 512² in {seconds[512]:.1f} s"
    else:
        made = "with the tiny random IP2P of threedpe.tiny (no real weights here: noise, not edits; no timings)"
    return f"text references 256² and 512² (same instruction, anchor, seed) written to {out}, side by side in " \
           f"reference_256_vs_512.png, {made}"


CUSTOMIZATION_NOTE = ("customisation steps (LoRA and full, LPIPS or its substitute): `python "
                      "benchmarks/bench_customize.py`, each mode in its own process so that its peak memory is its own "
                      "(minutes per mode on a CPU)")


# ------------------------------------------------------------------------------------------------------------------
# Roofline: FLOPs per stage, achieved GFLOP/s and the fraction of this machine's measured peak.

ENCODER_BLOCKS = {  # sub-block of Live3DEditingEncoder -> what it is
    "encoder": "ResNet-34 trunk (7x7 stem on the 5-channel input, layer1-2)",
    "decoder": "DeepLabV3 ASPP head",
    "F_encoder": "E_low: 7x7 patch embedding, 2 Mix-Transformer blocks, convs",
    "EHigh_encoder": "E_high: conv stack on the input",
    "Ref_encoder": "reference branch: MAE ViT-B/16 + cross-attention",
    "Final_encoder": "E_t: 7x7 patch embedding, 1 Mix-Transformer block, convs at 128² and 256²",
}


@dataclass
class RooflineRow:
    """One stage of the product path: counted FLOPs (matrix products and convolutions, as
    ``torch.utils.flop_counter`` counts them), median seconds, and the peak of its dtype."""

    stage: str
    precision: str
    gflop: float
    seconds: float
    peak_gflops: float
    note: str = ""

    @property
    def gflops(self) -> float:
        return self.gflop / self.seconds

    @property
    def fraction_of_peak(self) -> float:
        return self.gflops / self.peak_gflops


def measure_peaks(bench: Bench, quick: bool) -> dict[str, dict[str, float]]:
    """This machine's attainable GFLOP/s per dtype (the better of a square matmul and a channels-last 3x3
    convolution, as large as the model's), and its memory copy bandwidth; bf16 where it is native."""
    n, side = (1024, 64) if quick else (2048, 128)
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if native_bf16(bench.device) else {})
    peaks = {}
    for label, dtype in dtypes.items():
        a, b = (torch.randn(n, n, device=bench.device, dtype=dtype) for _ in range(2))
        x = torch.randn(1, 256, side, side, device=bench.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, device=bench.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            seconds, _, _ = bench.alternate({"matmul": lambda: a @ b,
                                             "conv": lambda: torch.nn.functional.conv2d(x, w, padding=1)})
        matmul, conv = 2 * n ** 3 / seconds["matmul"] / 1e9, 2 * 256 * 256 * 9 * side * side / seconds["conv"] / 1e9
        peaks[label] = {"gflops": max(matmul, conv), "matmul_gflops": matmul, "conv_gflops": conv}
    source = torch.empty(2 ** 26, device=bench.device)  # 256 MiB
    target = torch.empty_like(source)
    seconds, _, _ = bench.alternate({"copy": lambda: target.copy_(source)})
    peaks["memory"] = {"copy_gb_per_s": 2 * source.numel() * 4 / seconds["copy"] / 1e9}
    return peaks


def counted_gflop(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` as torch.utils.flop_counter counts them (matmuls and convolutions, here also oneDNN's
    convolutions with a fused activation), in G."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

    def fused_conv(x_shape: list[int], w_shape: list[int], *args: Any, out_shape: list[int], **kwargs: Any) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape)

    fused = {torch.ops.mkldnn._convolution_pointwise: fused_conv} if FUSED_CPU_CONV else {}
    counter = FlopCounterMode(display=False, custom_mapping=fused)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / 1e9


def roofline(bench: Bench, model: EditorModel, quick: bool, peaks: dict[str, dict[str, float]]) -> list[RooflineRow]:
    """The product path (``inference.fast``) stage by stage, in fp32 ("exact") and, where bf16 is native, in
    "fast": the encoder's sub-blocks (each timed on the inputs it got in a full pass), the fused volume rendering,
    the folded super-resolution, and (fp32) the mesh density grid."""
    from threedpe.models.encoder import set_grid_layout
    from threedpe.models.rendering import render_rays_fused, sample_rays

    device = bench.device
    x, ref = portrait_inputs(device)
    front = views([0.0], device)
    renderer, rows = model.renderer, []
    precisions = ["exact"] + (["fast"] if "bf16" in peaks else [])
    for precision in precisions:
        model.inference.fast, model.inference.precision = True, precision
        dtype = model.inference.reduced_dtype(device)
        label, peak = ("bf16", peaks["bf16"]["gflops"]) if dtype else ("fp32", peaks["fp32"]["gflops"])

        def timed(stage: str, fn: Callable[[], Any], note: str = "", runs: int | None = None,
                  autocast: bool = False) -> None:
            """One row; ``autocast``: run ``fn`` in the encoder's autocast region (its sub-blocks, called directly)."""
            def run() -> Any:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                            enabled=autocast and dtype is not None):
                    return fn()
            seconds, _, _ = bench.alternate({stage: run}, runs)
            rows.append(RooflineRow(stage, label, counted_gflop(run), seconds[stage], peak, note))
            print(f"  roofline {stage} [{label}]: {rows[-1].gflop:.1f} GFLOP in {rows[-1].seconds:.3f} s = "
                  f"{rows[-1].gflops:.0f} GFLOP/s ({100 * rows[-1].fraction_of_peak:.0f}% of peak)", flush=True)

        inputs: dict[str, tuple] = {}
        encoder = model.encoder
        hooks = [getattr(encoder, name).register_forward_pre_hook(
            lambda _m, args, name=name: inputs.__setitem__(name, args)) for name in ENCODER_BLOCKS]
        with torch.inference_mode():
            planes = model.encode(x, ref)
        for hook in hooks:
            hook.remove()
        set_grid_layout(encoder, True)
        for name, what in ENCODER_BLOCKS.items():
            timed(f"encoder.{name}", lambda name=name: getattr(encoder, name)(*inputs[name]), what, autocast=True)
        timed("encoder (whole editor pass)", lambda: model.encode(x, ref), "with the pixel-coordinate channels")
        with torch.inference_mode():
            origins, directions = sample_rays(front, renderer.cfg.neural_rendering_resolution)
            tri = planes.reshape(1, 3, -1, *planes.shape[-2:])
            features = render_rays_fused(tri, renderer.decoder, origins, directions, renderer.cfg)[0]
        r = renderer.cfg.neural_rendering_resolution
        timed("volume rendering (fused)", lambda: render_rays_fused(tri, renderer.decoder, origins, directions,
                                                                     renderer.cfg),
              f"{r}² rays x {renderer.cfg.depth_resolution}+{renderer.cfg.depth_resolution_importance} samples; "
              "lookups, softplus and compositing are not counted (memory- and latency-bound)")
        image = features.permute(0, 2, 1).reshape(1, -1, r, r).contiguous()
        folded = renderer.folded_superresolution()
        timed("super-resolution (folded)",
              lambda: folded(image[:, :3], image, dtype=dtype or torch.float32), f"{r}² -> {4 * r}²")
        timed("one 512² view (volume rendering + SR)", lambda: model.render(planes, front))
        if precision == "exact":
            side = 64 if quick else 256
            timed(f"mesh density grid {side}³", lambda: density_grid(planes, renderer.decoder, side), "fp32 always",
                  runs=1)
    model.inference.precision = "exact"
    return rows


def roofline_table(rows: list[RooflineRow]) -> str:
    lines = ["| stage | precision | GFLOP (counted) | time s | GFLOP/s | % of peak | what |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.precision} | {r.gflop:.1f} | {r.seconds:.3f} | {r.gflops:.0f} | "
                     f"{100 * r.fraction_of_peak:.0f}% | {r.note} |")
    return "\n".join(lines)


def peaks_line(peaks: dict[str, dict[str, float]]) -> str:
    parts = [f"{label} {p['gflops']:.0f} GFLOP/s (matmul {p['matmul_gflops']:.0f}, 3x3 conv {p['conv_gflops']:.0f})"
             for label, p in peaks.items() if label != "memory"]
    return f"measured peak: {'; '.join(parts)}; memory copy {peaks['memory']['copy_gb_per_s']:.1f} GB/s"


# ------------------------------------------------------------------------------------------------------------------
# Report.

ISA_FLAGS = (("fma", "FMA"), ("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX512-VNNI"),
             ("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"), ("amx_bf16", "AMX-BF16"),
             ("amx_fp16", "AMX-FP16"), ("asimd", "NEON"), ("sve", "SVE"), ("bf16", "BF16"))


def cpu_name() -> str:
    """The CPU model, its core count and the ISA extensions that matter for these kernels."""
    try:
        name = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        import platform

        name = platform.processor() or "unknown CPU"
    features = [label for flag, label in ISA_FLAGS if flag in cpu_flags()]
    return f"{name} ({os.cpu_count()} cores; ISA: {' '.join(features) or 'unknown'})"


def header(runs: int, warmup: int) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    return (f"threedpe benchmark: torch {torch.__version__}, CPU {cpu_name()}, {torch.get_num_threads()} threads, {gpu}; "
            f"THP_MEM_ALLOC_ENABLE={thp}; median of {runs} run(s) after {warmup} warm-up, baseline and optimised "
            "alternating in one process (a shared CPU makes single numbers noisy: compare within a row)")


def table(rows: list[Row]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    lines = ["| stage | path | baseline s | optimised s | speed-up | max abs diff | peak MiB (base / opt) | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = f"{num(r.peak_baseline_mib, '.0f')} / {num(r.peak_optimised_mib, '.0f')}"
        lines.append(f"| {r.stage} | {r.path} | {num(r.baseline_s, '.3f')} | {r.optimised_s:.3f} | "
                     f"{num(r.speedup, '.2f')}{'×' if r.speedup else ''} | {num(r.max_abs_diff, '.3g')} | {peak} | {r.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run: 1 run, no warm-up, small mesh, tiny IP2P")
    parser.add_argument("--runs", type=int, help="timed runs of the editor pass, the view and the roofline stages "
                        "(default 5; --quick 1); the 3-view batch and the IP2P steps take at most 3, orbit, mesh and "
                        "anchor 1")
    parser.add_argument("--warmup", type=int, help="warm-up calls per path (default 1; --quick 0)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the text references")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile opt-in (minutes)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():  # golden tolerances assume true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(header(runs, warmup), flush=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows: list[Row] = []
    notes = [CUSTOMIZATION_NOTE]
    headline: dict[str, Row] = {}
    for device in devices:
        bench = Bench(device, runs, warmup)
        model = recipe_editor(device)
        if device.type == "cpu":
            peaks = measure_peaks(bench, args.quick)
            print(f"  {peaks_line(peaks)}", flush=True)
            rooflines = roofline(bench, model, args.quick, peaks)
            headline = editor_stages(bench, model, "cpu fp32", args.quick,
                                     [("torch.compile", None, True)] if args.compile else [])
        else:
            editor_stages(bench, model, "cuda fp32", args.quick, [("fp16 autocast", torch.float16, False)])
        del model
        generator_stage(bench, f"{device.type} fp32")
        ip2p_stages(bench, args.quick)
        rows += bench.rows
    notes.append(write_references(args.out, devices[-1]))
    print()
    print(header(runs, warmup))
    print()
    print(table(rows))
    print()
    for note in notes:
        print(f"* {note}")
    print()
    print(f"Roofline of the product path on the CPU: {cpu_name()}; {peaks_line(peaks)}")
    print()
    print(roofline_table(rooflines))
    print()
    result = {"speedup": ratio(headline["encode"], headline["view"]),
              "max_abs_diff": max(headline["encode"].max_abs_diff, headline["view"].max_abs_diff)}
    if headline["encode fast"] is not None:
        result["fast_speedup"] = ratio(headline["encode fast"], headline["view fast"])
        result["fast_max_abs_diff"] = max(headline["encode fast"].max_abs_diff, headline["view fast"].max_abs_diff)
    if args.json:
        args.json.write_text(json.dumps({"header": header(runs, warmup), "cpu": cpu_name(), "peaks": peaks, "rows": [
            {**asdict(r), "speedup": r.speedup} for r in rows], "roofline": [
            {**asdict(r), "gflops": r.gflops, "fraction_of_peak": r.fraction_of_peak} for r in rooflines],
            "notes": notes, **result}, indent=1))
    if "fast_speedup" in result:
        print(f"fast_speedup={result['fast_speedup']:.2f} fast_max_abs_diff={result['fast_max_abs_diff']:.3g}")
    print(f"speedup={result['speedup']:.2f} max_abs_diff={result['max_abs_diff']:.3g}")


def ratio(encode: Row, view: Row) -> float:
    """Baseline / this path, for the editor pass plus one view (the two rows were timed in the same rotation)."""
    return (encode.baseline_s + view.baseline_s) / (encode.optimised_s + view.optimised_s)


if __name__ == "__main__":
    main()
