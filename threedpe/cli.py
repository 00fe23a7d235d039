"""Command line: ``python -m threedpe {edit,edit-video,batch,customize,render,convert,tiny-weights,download,doctor,
push-weights} ...``.

A user error (missing weights, unreadable photo, no face, bad prompt or argument, an unavailable device) ends with
a one-line message and exit status 2; anything else is a bug and keeps its traceback. Heavy modules (torch,
diffusers) are imported only by the command that needs them, so ``--help`` is instant. The commands meant for
``torchrun``, ``python -m threedpe.training.datagen`` and ``python -m threedpe.training.train``, report errors the
same way (:func:`threedpe.commands.run_command`). Nothing in the package imports this module.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from threedpe.commands import DEVICE_HELP, PRECISION_HELP, STRENGTH_HELP, WEIGHTS_HELP, UsageError, run_command
from threedpe.edit_settings import add_edit_arguments, edit_settings
from threedpe.precision import PRECISIONS
from threedpe.weights import default_folder



def _edit(args: argparse.Namespace) -> None:
    from threedpe.devices import resolve_device
    from threedpe.diffusion import normalise_instruction
    from threedpe.pipeline import PortraitEditor, check_strength

    # Everything that can be checked without loading a model is checked first.
    prompt = normalise_instruction(args.prompt) if args.prompt is not None else None
    check_strength(args.strength)
    settings = edit_settings(args)
    for label, path in (("photo", args.input), ("reference", args.reference), ("style", args.style)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"the {label} {path} does not exist")
    device = resolve_device(args.device)
    anchor = int(args.anchor) if args.anchor.isdigit() else args.anchor

    editor = PortraitEditor.from_pretrained(args.weights, device=device, precision=args.precision)
    style = editor.load_style(args.style) if args.style is not None else None
    result = editor(args.input, reference=args.reference, prompt=prompt, aligned=args.aligned,
                    align_reference=args.align_reference, anchor=anchor, use_own_photo=args.own_photo,
                    settings=settings, seed=args.seed, style=style, strength=args.strength)
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
    if result.anchor:
        print(f"the instruction was applied to the anchor portrait: {result.anchor}")
    if style is not None:
        print(f"applied the style {args.style} ({style.mode}, {style.metadata.get('steps')} fine-tuning steps)")
    for note in result.warnings:
        print(f"note: {note}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    print("timings: " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items()))
    print(f"ran on: {result.execution}")


def _customize(args: argparse.Namespace) -> None:
    from threedpe.cancel import Cancelled, stop_on_signals
    from threedpe.devices import resolve_device
    from threedpe.diffusion import normalise_instruction
    from threedpe.models.editor import resolve_reconstruction_weights
    from threedpe.pipeline import PortraitEditor, default_cache_dir
    from threedpe.training.customize import CustomizeConfig, CustomizeError, Progress, StyleTrainer
    from threedpe.training.samples import DataError, SyntheticSamples, load_generator, photo_pairs, usable

    # Everything that can be checked without loading a model is checked first.
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, got {out}")
    for label, path, exists in (("pairs folder", args.pairs, Path.is_dir), ("resume file", args.resume, Path.is_file)):
        if path is not None and not exists(Path(path)):
            raise UsageError(f"the {label} {path} does not exist")
    if args.steps is not None and args.steps < 1 or args.minutes is not None and args.minutes <= 0:
        raise UsageError("--steps and --minutes must be positive")
    if args.instruction is not None and args.samples < 3:
        raise UsageError("--samples must be at least 3 (two identities to train on, one held out for previews)")
    instruction = normalise_instruction(args.instruction) if args.instruction is not None else None
    settings = edit_settings(args)
    try:
        config = CustomizeConfig(mode=args.mode, rank=args.lora_rank, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate, seed=args.seed)
        device = resolve_device(args.device)

        editor = PortraitEditor.from_pretrained(args.weights, device=device)
        resolve_reconstruction_weights(args.weights)  # Live3D lifts the targets: missing, it fails before any data
        if instruction is not None:
            generator = load_generator(args.weights).to(device)
            data = SyntheticSamples(generator, editor.text_reference.editor, instruction, settings=settings,
                                    truncation_psi=args.truncation, cache_dir=default_cache_dir() / "datagen")
            samples = list(data.samples(range(args.samples)))
            source = {**data.describe(), "seeds": list(range(args.samples))}
        else:
            samples = photo_pairs(args.pairs, aligned=args.aligned)
            source = {"kind": "pairs", "folder": Path(args.pairs).name}
        for sample in samples:
            if sample.failure is not None:
                print(f"left out {sample.name}: {sample.failure}")
        trainer = StyleTrainer.for_editor(editor, samples, args.weights, config, source=source)
        if args.resume is not None:
            trainer.load_state(args.resume)
            print(f"resumed from {args.resume} at step {trainer.step} ({trainer.seconds:.1f} s)")
    except (CustomizeError, DataError) as error:
        raise UsageError(str(error)) from None
    kept = len(usable(samples))
    print(f"fine-tuning {len(trainer.parameters)} tensors ({config.mode}) on {kept} of {len(samples)} "
          f"{'EG3D identities' if instruction is not None else 'before/after photos'}: {kept - 1} to train on, as "
          f"{len(trainer.pairs)} pairs (each with every other one's edit as its reference), 1 held out for the "
          f"previews and the held-out loss; perceptual term: {trainer.objective.description['perceptual']}")

    printed = [0.0]

    def report(progress: Progress) -> None:
        if progress.snapshot is not None and args.previews is not None:
            path = Path(args.previews) / f"preview_step{progress.step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            progress.snapshot.image.save(path)
            print(f"wrote {path} (held-out loss {progress.snapshot.loss:.4f})")
        if time.perf_counter() - printed[0] >= 2.0 or progress.step in (1, args.steps):
            printed[0] = time.perf_counter()
            print(f"step {progress.step}  training loss {progress.loss:.4f}  {progress.seconds:.1f} s", flush=True)

    # Ctrl-C stops between steps; what was learnt so far is still written
    with stop_on_signals(signal.SIGINT) as stop:
        try:
            trainer.train(args.steps, None if args.minutes is None else args.minutes * 60, callback=report,
                          cancel=stop)
        except Cancelled:
            print(f"stopped after step {trainer.step}")
    style = trainer.style()
    out.parent.mkdir(parents=True, exist_ok=True)
    style.save(out)
    state = trainer.save_state(out.with_name(out.stem + ".state.pt"))
    print(f"wrote {state} (continue with --resume {state})")
    losses = style.metadata["losses"]
    print(f"steps={trainer.step} seconds={trainer.seconds:.1f} held_out_loss_start={losses['held_out_start']:.4f} "
          f"held_out_loss_end={losses['held_out_end']:.4f} style={out} bytes={out.stat().st_size}")


def _edit_video(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from threedpe.cancel import stop_on_signals
    from threedpe.devices import resolve_device
    from threedpe.diffusion import normalise_instruction
    from threedpe.pipeline import PortraitEditor
    from threedpe.video import VideoError, probe_video
    from threedpe.frame_editing import VideoSettings
    from threedpe.video_editing import edit_video, seconds_to_edit

    # Everything that can be checked without loading a model is checked first.
    prompt = normalise_instruction(args.prompt) if args.prompt is not None else None
    for label, path in (("reference", args.reference), ("style", args.style)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"the {label} {path} does not exist")
    if Path(args.out).suffix.lower() != ".mp4":
        raise UsageError(f"--out must name an .mp4 file, got {args.out}")
    try:
        settings = VideoSettings(view=args.view, yaw=args.yaw, pitch=args.pitch, side_by_side=args.side_by_side,
                                 smooth=args.smooth, max_seconds=args.max_seconds, trim=args.trim,
                                 batch_size=args.batch_size, preview=args.preview, strength=args.strength)
        info = probe_video(args.input)
        seconds_to_edit(info, settings)  # a clip too long is refused before any model loads
        device = resolve_device(args.device)
        editor = PortraitEditor.from_pretrained(args.weights, device=device, precision=args.precision)
        style = editor.load_style(args.style) if args.style is not None else None
        print(f"{info.path.name}: {info.size[0]}x{info.size[1]}, {info.fps:g} fps, {info.seconds:.1f} s, "
              f"{'audio ' + info.audio if info.audio else 'no audio'}")
        with tqdm(total=info.frames, desc="edit video", unit="frame") as bar, stop_on_signals(signal.SIGINT) as stop:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = edit_video(editor, args.input, args.out, reference=args.reference, prompt=prompt, style=style,
                                settings=settings, align_reference=args.align_reference,
                                anchor=int(args.anchor) if args.anchor.isdigit() else args.anchor,
                                edit_settings=edit_settings(args), seed=args.seed, cancel=stop,
                                progress=progress)
    except VideoError as error:
        raise UsageError(str(error)) from None
    for note in result.warnings:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {result.path}")
    print("per frame: " + ", ".join(f"{stage} {1000 * seconds / max(result.frames, 1):.1f} ms"
                                    for stage, seconds in result.timings.items()))
    print(result.summary())


def _eg3d_weights(path: str) -> Path:
    """An EG3D weight file given directly, or found in a folder (converted first)."""
    from threedpe.weights import EG3D_WEIGHTS, resolve_first

    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    if not candidate.is_dir():
        raise UsageError(f"{candidate} does not exist: give an EG3D weight file ({', '.join(EG3D_WEIGHTS)}) "
                         "or the folder holding one")
    return resolve_first(EG3D_WEIGHTS, local_dir=candidate)


def _render(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from threedpe import cameras
    from threedpe.devices import resolve_device
    from threedpe.models.generator import TriPlaneGenerator
    from threedpe.models.rendering import PlaneField
    from threedpe.video import render_orbit, to_uint8, write_mp4

    device = resolve_device(args.device)
    generator = TriPlaneGenerator.from_pretrained(_eg3d_weights(args.weights)).to(device)
    generator.inference.precision = args.precision
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        with torch.inference_mode():
            planes, ws = generator.sample(seed, args.truncation)
            field = PlaneField(planes, generator.decoder, generator.cfg.rendering.box_warp)  # once for every view

        def render_view(cams: torch.Tensor) -> np.ndarray:
            n = cams.shape[0]
            with torch.inference_mode():
                image = generator.render(planes, ws.expand(n, -1, -1), cams.to(device), deterministic=True,
                                         field=field)["image"]
            return to_uint8(image)

        views = [render_view(cameras.camera(yaw, pitch))[0] for yaw, pitch in cameras.three_views()]
        written = [out / f"seed{seed:04d}_views.png"]
        Image.fromarray(np.concatenate(views, axis=1)).save(written[0])
        if args.video:
            written.append(write_mp4(render_orbit(render_view, args.frames), out / f"seed{seed:04d}_orbit.mp4",
                                     fps=args.fps))
        for path in written:
            print(f"wrote {path}")


def _convert(args: argparse.Namespace) -> None:
    from threedpe.weights.checkpoints import convert

    print(f"wrote {convert(args.source, args.destination)} (+ .json)")


def _tiny(args: argparse.Namespace) -> None:
    from threedpe.tiny import UNTRAINED_NOTE, save_tiny_weights

    folder = save_tiny_weights(args.folder, seed=args.seed)
    print(f"wrote a tiny weight set to {folder}. {UNTRAINED_NOTE}")


def _download(args: argparse.Namespace) -> None:
    from threedpe.fetch.download import download, plan, summary, terminal_prompt
    from threedpe.fetch.sources import selected

    folder = Path(args.to)
    try:
        items = selected(args.only)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.dry_run:
        print(f"would download into {folder.resolve()} (nothing is fetched with --dry-run):")
        for line in plan(items, folder):
            print(line)
        return
    outcomes = download(folder, args.only, accept=args.accept_licences, ask=terminal_prompt())
    print(f"weights in {folder.resolve()}:")
    print(summary(outcomes))
    print("next: `python app.py` (or `python -m threedpe doctor` to check everything)")


def _doctor(args: argparse.Namespace) -> int:
    from threedpe.gallery import default_root
    from threedpe.pipeline import default_cache_dir
    from threedpe.fetch.doctor import report

    lines, can_edit = report(args.weights, {"cache": default_cache_dir(), "gallery": default_root()})
    print("\n".join(lines))
    return 0 if can_edit else 1


def _push_weights(args: argparse.Namespace) -> None:
    from threedpe.fetch.push import plan_push, push

    plan = plan_push(args.weights, args.repo)
    print(f"{'would upload' if args.dry_run else 'uploading'} to {args.repo} ({'private' if args.private else 'public'}):")
    for path in plan.files:
        print(f"  {path.name} ({path.stat().st_size} bytes)")
    print("  README.md (model card: sources and licences)")
    if plan.missing:
        print(f"not converted here, left out: {', '.join(plan.missing)}")
    if args.dry_run:
        return
    commit = push(plan, args.repo, private=args.private)
    print("set these on the Space (Settings > Variables):")
    print(f"THREEDPE_HUB_REPO={args.repo}")
    print(f"THREEDPE_HUB_REVISION={commit}")


def _add_edit_video_command(commands: argparse._SubParsersAction) -> None:
    """The `edit-video` command's parser."""
    video = commands.add_parser(
        "edit-video", help="edit a portrait video frame by frame with a reference image or a text instruction",
        description="Edit every frame of a portrait clip (the face tracked, the edit pasted back or shown at a fixed "
                    "pose) and write an mp4 with the clip's frame rate and audio. Ctrl-C stops and writes nothing. "
                    "The last line printed is `frames=<n> seconds=<s> fps=<processing fps> no_face=<frames left "
                    "unedited> flicker=<output change / input change on the face>`.")
    video.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    video.add_argument("--input", required=True, help="the clip (any container/codec ffmpeg reads)")
    source = video.add_mutually_exclusive_group(required=True)
    source.add_argument("--reference", help="reference image whose style is applied")
    source.add_argument("--prompt", help="InstructPix2Pix instruction, applied to an anchor portrait once for the clip")
    video.add_argument("--style", help="a style file made by `customize`")
    video.add_argument("--out", required=True, help="output .mp4 file")
    video.add_argument("--view", choices=("source", "fixed"), default="source",
                       help="source: each frame's own head pose, pasted into the frame (default); fixed: the head at "
                            "--yaw/--pitch, stabilised")
    video.add_argument("--yaw", type=float, default=0.0, help="--view fixed: degrees from the frontal view")
    video.add_argument("--pitch", type=float, default=0.0, help="--view fixed: degrees from the frontal view")
    video.add_argument("--side-by-side", action="store_true", help="write input | output")
    video.add_argument("--smooth", choices=("off", "low", "high"), default="low",
                       help="tri-plane averaging across frames against flicker (default low)")
    video.add_argument("--max-seconds", type=float, default=None, help="refuse longer clips (default: no limit)")
    video.add_argument("--trim", action="store_true", help="with --max-seconds: edit the beginning of a longer clip")
    video.add_argument("--batch-size", type=int, default=None,
                       help="frames per encode/render batch (default: 8 on a large GPU, 4 on a small one, 1 on a CPU)")
    video.add_argument("--preview", action="store_true", help="draft renders (faster, blurrier)")
    video.add_argument("--strength", type=float, default=1.0, help=STRENGTH_HELP)
    video.add_argument("--align-reference", action="store_true", help="the reference is a raw photo: align its face")
    video.add_argument("--anchor", default="0", help="anchor portrait a --prompt is applied to: index or name")
    add_edit_arguments(video)
    video.add_argument("--seed", type=int, default=0)
    video.add_argument("--device", default="auto", help=DEVICE_HELP)
    video.add_argument("--precision", choices=PRECISIONS, default="exact", help=PRECISION_HELP)
    video.set_defaults(run=_edit_video)


def _add_weight_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of the commands about weight files: convert, tiny-weights, download, doctor, push-weights."""
    conv = commands.add_parser("convert", help="convert a released weight file to safetensors + JSON")
    conv.add_argument("source", help=".pkl / .pth / .pt file")
    conv.add_argument("destination", nargs="?", help="folder or target name (default: next to the source)")
    conv.set_defaults(run=_convert)

    tiny = commands.add_parser("tiny-weights", help="write a small random (untrained) weight set for trying things out")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_tiny)

    fetch = commands.add_parser("download", help="download the real weights from their official sources, verified and "
                                                 "converted to safetensors")
    fetch.add_argument("--to", default=str(default_folder()), help=WEIGHTS_HELP)
    fetch.add_argument("--only", nargs="+", metavar="GROUP",
                       help="only these groups: editor, eg3d, live3d, text, lpips (default: all)")
    fetch.add_argument("--dry-run", action="store_true", help="print every file, its source and licence; fetch nothing")
    fetch.add_argument("--accept-licences", action="store_true",
                       help="accept the weights' licences without the prompt (for scripts; they are non-commercial)")
    fetch.set_defaults(run=_download)

    doctor = commands.add_parser("doctor", help="versions, weights, text model, folders and disk: what to check first")
    doctor.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    doctor.set_defaults(run=_doctor)

    publish = commands.add_parser("push-weights", help="upload the converted weights and a model card to a Hub model "
                                                       "repository, for a Space")
    publish.add_argument("--repo", required=True, help="Hub model repository, <user>/<name> (created if absent)")
    publish.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    publish.add_argument("--private", action="store_true", help="create the repository private")
    publish.add_argument("--dry-run", action="store_true", help="list what would be uploaded and show nothing else")
    publish.set_defaults(run=_push_weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m threedpe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="edit a portrait with a reference image or a text instruction")
    edit.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    edit.add_argument("--input", required=True, help="the portrait photo")
    style = edit.add_mutually_exclusive_group(required=True)
    style.add_argument("--reference", help="reference image whose style is applied (used as given)")
    style.add_argument("--prompt", help="InstructPix2Pix instruction, e.g. 'make it a bronze statue'")
    edit.add_argument("--out", required=True, help="output folder")
    edit.add_argument("--aligned", action="store_true", help="the input is already an EG3D/FFHQ-style crop")
    edit.add_argument("--align-reference", action="store_true",
                      help="the reference is a raw photo: detect and align its face like the input's")
    edit.add_argument("--anchor", default="0", help="anchor portrait a --prompt is applied to: index or name (default 0)")
    edit.add_argument("--own-photo", action="store_true", help="apply the --prompt to the photo itself (slower)")
    edit.add_argument("--video", action="store_true", help="also write an orbit video (orbit.mp4)")
    edit.add_argument("--frames", type=int, default=120, help="orbit video frames (default 120)")
    edit.add_argument("--fps", type=float, default=30, help="orbit video frame rate (default 30)")
    edit.add_argument("--mesh", action="store_true", help="also write mesh.glb and mesh.ply")
    edit.add_argument("--mesh-resolution", type=int, default=None,
                      help="density grid side for the mesh (default: the tri-planes' side, 256 for the released weights)")
    add_edit_arguments(edit)
    # --steps: the old name of --edit-steps (customize's --steps counts fine-tuning steps), hidden, kept a release
    edit.add_argument("--steps", dest="edit_steps", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--style", help="a style file made by `customize`, applied to the editor for this edit")
    edit.add_argument("--strength", type=float, default=1.0, help=STRENGTH_HELP)
    edit.add_argument("--device", default="auto", help=DEVICE_HELP)
    edit.add_argument("--precision", choices=PRECISIONS, default="exact", help=PRECISION_HELP)
    edit.set_defaults(run=_edit)

    from threedpe.batch import add_arguments as batch_arguments, run as batch_run

    batch = commands.add_parser(
        "batch", help="edit every photo of a folder, zip or CSV, with a report",
        description="Edit every photo of a folder (recursively), a zip or a CSV (rows photo,reference|prompt,strength) "
                    "into OUT/photos/<name>/; a re-run skips what is done and retries failures; Ctrl-C stops after the "
                    "current photo. Writes OUT/results.csv and OUT/report.html; the last line printed is "
                    "`edited=<n> skipped=<n> failed=<n> report=<path>`. Under torchrun (`torchrun --nproc_per_node N "
                    "-m threedpe.batch ...`) the photos are shared out over the processes.")
    batch_arguments(batch).set_defaults(run=batch_run)

    custom = commands.add_parser(
        "customize", help="fine-tune the editor to a new edit and write a style file",
        description="Fine-tune the editor to a new edit (from an instruction, or from your own before/after photos) "
                    "and write the result as a style file for `edit --style`. The last line printed is "
                    "`steps=<n> seconds=<s> held_out_loss_start=<a> held_out_loss_end=<b> style=<path> bytes=<size>`: "
                    "the loss of the held-out pair (never trained on) before and after the fine-tune; the lines "
                    "before it show the training loss of each step's batch.")
    custom.add_argument("--weights", default=str(default_folder()), help=WEIGHTS_HELP)
    data = custom.add_mutually_exclusive_group(required=True)
    data.add_argument("--instruction", help="InstructPix2Pix instruction applied to EG3D samples (needs the EG3D file)")
    data.add_argument("--pairs", help="folder with before/ and after/ photos of the same names")
    custom.add_argument("--aligned", action="store_true", help="the --pairs photos are already EG3D/FFHQ-style crops")
    custom.add_argument("--samples", type=int, default=12, help="EG3D identities for --instruction (default 12)")
    budget = custom.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="fine-tuning steps in all (resumed ones included)")
    budget.add_argument("--minutes", type=float, help="fine-tuning minutes in all (resumed ones included)")
    custom.add_argument("--mode", choices=("lora", "full"), default="lora",
                        help="lora: low-rank adapters, a style of a few MB (default); full: the official trainable set")
    custom.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    custom.add_argument("--rank", dest="lora_rank", type=int, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # the old name of --lora-rank, hidden, kept a release
    custom.add_argument("--batch-size", type=int, default=2, help="pairs per step (default 2, as officially per GPU)")
    custom.add_argument("--learning-rate", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    custom.add_argument("--resume", help="state file of an earlier run (written beside --out as <name>.state.pt)")
    custom.add_argument("--out", required=True, help="the style file to write (.safetensors)")
    custom.add_argument("--previews", help="folder for preview images of a held-out pair (10 s, 1, 2, 5 min)")
    custom.add_argument("--truncation", type=float, default=0.7, help="EG3D truncation psi for --instruction")
    add_edit_arguments(custom, guidance=False)
    custom.add_argument("--seed", type=int, default=0, help="seed of the fine-tune (adapters, pair order, cameras)")
    custom.add_argument("--device", default="auto", help=DEVICE_HELP)
    custom.set_defaults(run=_customize)

    _add_edit_video_command(commands)

    render = commands.add_parser("render", help="render random heads of an EG3D generator")
    render.add_argument("--weights", default=str(default_folder()), help="EG3D file, or a folder holding one")
    render.add_argument("--seeds", type=int, nargs="+", default=[0])
    render.add_argument("--truncation", type=float, default=0.7, help="truncation psi (1 = none)")
    render.add_argument("--out", required=True)
    render.add_argument("--video", action="store_true", help="also write an orbit video per seed")
    render.add_argument("--frames", type=int, default=120)
    render.add_argument("--fps", type=float, default=30)
    render.add_argument("--device", default="auto", help=DEVICE_HELP)
    render.add_argument("--precision", choices=PRECISIONS, default="exact", help=PRECISION_HELP)
    render.set_defaults(run=_render)

    _add_weight_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.run(args))
