"""Command line: ``python -m threedpe {edit,render,convert,tiny-weights} ...``.

Every user error (missing weights, unreadable photo, no face, bad prompt) ends with a one-line
message and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_WEIGHTS = os.environ.get("THREEDPE_WEIGHTS", "checkpoints")
EG3D_NAMES = ("ffhqrebalanced512-128.safetensors", "ffhqrebalanced512-128.pth", "ffhqrebalanced512-128.pkl")


def _edit(args: argparse.Namespace) -> None:
    from threedpe.diffusion import EditSettings
    from threedpe.pipeline import PortraitEditor

    editor = PortraitEditor.from_pretrained(args.weights, device=args.device)
    settings = EditSettings(steps=args.steps, text_guidance=args.text_guidance, image_guidance=args.image_guidance,
                            resolution=args.resolution)
    result = editor(args.input, reference=args.reference, prompt=args.prompt, aligned=args.aligned,
                    use_own_photo=args.own_photo, settings=settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "input_aligned.png", out / "reference.png", out / "views.png", out / "depth.png"]
    result.image.save(written[0])
    result.reference.save(written[1])
    result.strip().save(written[2])
    result.depth().save(written[3])
    if result.edited_2d is not None:
        written.append(out / "edited_2d.png")
        result.edited_2d.save(written[-1])
    if args.video:
        written.append(result.video(out / "orbit.mp4", num_frames=args.frames, fps=args.fps))
    if args.mesh:
        written += result.mesh(out / "mesh.glb", out / "mesh.ply", resolution=args.mesh_resolution)
    for note in result.warnings:
        print(f"note: {note}", file=sys.stderr)
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    print(f"wrote {len(written)} files to {out} ({timings})")


def _eg3d_weights(path: str) -> Path:
    from threedpe.checkpoints import resolve_first

    candidate = Path(path).expanduser()
    return candidate if candidate.is_file() else resolve_first(EG3D_NAMES, local_dir=candidate)


def _render(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from threedpe import cameras
    from threedpe.generator import TriPlaneGenerator
    from threedpe.video import render_orbit, to_uint8, write_mp4

    generator = TriPlaneGenerator.from_pretrained(_eg3d_weights(args.weights)).to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        z = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, generator.cfg.z_dim), dtype=np.float32))
        c = cameras.frontal_camera().to(args.device)
        with torch.inference_mode():
            ws = generator.mapping(z.to(args.device), c, truncation_psi=args.truncation)
            planes = generator.synthesize_planes(ws)

        def render_view(cams: torch.Tensor) -> np.ndarray:
            n = cams.shape[0]
            with torch.inference_mode():
                image = generator.render(planes.expand(n, -1, -1, -1), ws.expand(n, -1, -1),
                                         cams.to(args.device), deterministic=True)["image"]
            return to_uint8(image)

        views = [render_view(cameras.camera(yaw, pitch))[0] for yaw, pitch in cameras.three_views()]
        Image.fromarray(np.concatenate(views, axis=1)).save(out / f"seed{seed:04d}_views.png")
        written = f"{out / f'seed{seed:04d}_views.png'}"
        if args.video:
            path = write_mp4(render_orbit(render_view, args.frames), out / f"seed{seed:04d}_orbit.mp4", fps=args.fps)
            written += f", {path}"
        print(f"seed {seed}: {written}")


def _convert(args: argparse.Namespace) -> None:
    from threedpe.checkpoints import convert

    print(f"wrote {convert(args.source, args.destination)} (+ .json)")


def _tiny(args: argparse.Namespace) -> None:
    from threedpe.testing import UNTRAINED_NOTE, save_tiny_weights

    folder = save_tiny_weights(args.folder, seed=args.seed)
    print(f"wrote a tiny weight set to {folder}. {UNTRAINED_NOTE}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m threedpe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="edit a portrait with a reference image or a text instruction")
    edit.add_argument("--weights", default=DEFAULT_WEIGHTS, help="weight folder (default: $THREEDPE_WEIGHTS or checkpoints/)")
    edit.add_argument("--input", required=True, help="the portrait photo")
    style = edit.add_mutually_exclusive_group(required=True)
    style.add_argument("--reference", help="reference image whose style is applied")
    style.add_argument("--prompt", help="InstructPix2Pix instruction, e.g. 'make it a bronze statue'")
    edit.add_argument("--out", required=True, help="output folder")
    edit.add_argument("--aligned", action="store_true", help="the input is already an EG3D/FFHQ-style crop")
    edit.add_argument("--own-photo", action="store_true", help="run InstructPix2Pix on the photo itself (slower)")
    edit.add_argument("--video", action="store_true", help="also write an orbit video (orbit.mp4)")
    edit.add_argument("--frames", type=int, default=120, help="orbit video frames (default 120)")
    edit.add_argument("--fps", type=float, default=30, help="orbit video frame rate (default 30)")
    edit.add_argument("--mesh", action="store_true", help="also write mesh.glb and mesh.ply")
    edit.add_argument("--mesh-resolution", type=int, default=256, help="density grid size for the mesh")
    edit.add_argument("--steps", type=int, default=20, help="InstructPix2Pix steps")
    edit.add_argument("--text-guidance", type=float, default=7.5)
    edit.add_argument("--image-guidance", type=float, default=1.5)
    edit.add_argument("--resolution", type=int, default=512, help="InstructPix2Pix resolution")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--device", default="cuda" if _cuda() else "cpu")
    edit.set_defaults(run=_edit)

    render = commands.add_parser("render", help="render random heads of an EG3D generator")
    render.add_argument("--weights", default=DEFAULT_WEIGHTS, help="EG3D file, or a folder holding one")
    render.add_argument("--seeds", type=int, nargs="+", default=[0])
    render.add_argument("--truncation", type=float, default=0.7, help="truncation psi (1 = none)")
    render.add_argument("--out", required=True)
    render.add_argument("--video", action="store_true", help="also write an orbit video per seed")
    render.add_argument("--frames", type=int, default=120)
    render.add_argument("--fps", type=float, default=30)
    render.add_argument("--device", default="cuda" if _cuda() else "cpu")
    render.set_defaults(run=_render)

    conv = commands.add_parser("convert", help="convert a released weight file to safetensors + JSON")
    conv.add_argument("source", help=".pkl / .pth / .pt file")
    conv.add_argument("destination", nargs="?", help="folder or target name (default: next to the source)")
    conv.set_defaults(run=_convert)

    tiny = commands.add_parser("tiny-weights", help="write a small random (untrained) weight set for trying things out")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_tiny)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from threedpe.diffusion import EditCancelled

    try:
        args.run(args)
    except (ValueError, OSError, EditCancelled) as error:  # our errors are ValueError subclasses
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
