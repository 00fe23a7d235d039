"""``python -m threedpe`` commands, run in-process."""
from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from threedpe.cli import build_parser, main
from threedpe.edit_settings import EditSettings, edit_settings
from threedpe.models.generator import TriPlaneGenerator
from threedpe.tiny import TINY_EG3D, tiny_generator_config


@pytest.fixture(scope="module")
def small_eg3d_pth(tmp_path_factory):
    """A small EG3D generator saved the way 3DPE ships ffhqrebalanced512-128.pth."""
    torch.manual_seed(1)
    generator = TriPlaneGenerator(tiny_generator_config())
    path = tmp_path_factory.mktemp("eg3d") / "small-eg3d.pth"
    torch.save({"G_init_args": [], "G_init_kwargs": TINY_EG3D["init_kwargs"], "G": generator.state_dict(),
                "G_neural_rendering_resolution": TINY_EG3D["neural_rendering_resolution"],
                "G_renderinig_kwargs": TINY_EG3D["rendering_kwargs"], "D_init_args": [], "D_init_kwargs": {}, "D": {}},
               path)
    return path


def frame_count(path) -> tuple[dict, int]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, sum(1 for _ in reader)


def test_render_views_and_orbit_video(small_eg3d_pth, tmp_path, capsys):
    assert main(["render", "--weights", str(small_eg3d_pth), "--out", str(tmp_path), "--seeds", "0", "3",
                 "--video", "--frames", "5", "--fps", "10"]) == 0
    for seed in (0, 3):
        views = Image.open(tmp_path / f"seed{seed:04d}_views.png")
        assert views.size == (3 * 128, 128)
        meta, frames = frame_count(tmp_path / f"seed{seed:04d}_orbit.mp4")
        assert frames == 5 and meta["size"] == (128, 128)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "seed0000_views.png")),
                              np.asarray(Image.open(tmp_path / "seed0003_views.png")))


def test_convert_then_render_gives_the_same_images(small_eg3d_pth, tmp_path):
    assert main(["convert", str(small_eg3d_pth), str(tmp_path / "converted")]) == 0
    assert (tmp_path / "converted.safetensors").is_file() and (tmp_path / "converted.json").is_file()
    for name, weights in (("pth", small_eg3d_pth), ("safetensors", tmp_path / "converted.safetensors")):
        assert main(["render", "--weights", str(weights), "--out", str(tmp_path / name), "--seeds", "7"]) == 0
    first, second = (np.asarray(Image.open(tmp_path / n / "seed0007_views.png")) for n in ("pth", "safetensors"))
    assert np.array_equal(first, second)


def test_edit_writes_every_output_and_says_so(tiny_weights, astronaut_photo, tmp_path, capsys):
    """At the CLI's default settings (120 frames, a mesh grid as fine as the tri-planes) on tiny weights."""
    out = tmp_path / "out"
    assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
                 str(astronaut_photo), "--out", str(out), "--video", "--mesh"]) == 0
    names = ("input_aligned.png", "reference.png", "views.png", "depth.png", "orbit.mp4", "mesh.glb", "mesh.ply")
    printed = capsys.readouterr().out
    for name in names:
        assert (out / name).stat().st_size > 0, name
        assert f"wrote {out / name}" in printed
    assert frame_count(out / "orbit.mp4")[1] == 120
    [timings] = [line for line in printed.splitlines() if line.startswith("timings: ")]
    for stage in ("align", "reference", "encode", "render", "video", "mesh"):
        assert f"{stage} " in timings


def test_edit_with_a_prompt_at_default_settings(tiny_weights, astronaut_photo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THREEDPE_CACHE", str(tmp_path / "cache"))
    assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--prompt",
                 "make it a bronze statue", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "edited_2d.png").size == (512, 512)
    assert len(list((tmp_path / "cache").glob("*.png"))) == 1
    assert "anchor portrait: EG3D sample, seed 0" in capsys.readouterr().out


def test_device_cuda_without_cuda_is_a_message(tiny_weights, astronaut_photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
            str(astronaut_photo), "--out", str(tmp_path), "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "use 'cpu' or 'auto'" in err and "Traceback" not in err


def test_an_empty_prompt_is_refused_before_any_model_loads(tiny_weights, astronaut_photo, tmp_path, capsys,
                                                           monkeypatch):
    from threedpe.pipeline import PortraitEditor

    loads = []
    monkeypatch.setattr(PortraitEditor, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--prompt", "  ",
                 "--out", str(tmp_path)]) == 2
    assert "instruction is empty" in capsys.readouterr().err and loads == []


def test_render_names_the_missing_file_it_was_given(tmp_path, capsys):
    missing = tmp_path / "ffhqrebalanced512-128.pkl"
    assert main(["render", "--weights", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "ffhqrebalanced512-128.pkl/ffhqrebalanced512-128.pkl" not in err


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from threedpe.cli import build_parser; build_parser().format_help(); "
            "assert 'torch' not in sys.modules and 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_edit_settings_flags_take_their_defaults_from_edit_settings():
    from threedpe.training.datagen import build_parser as datagen_parser

    edit = ["edit", "--input", "me.jpg", "--prompt", "x", "--out", "out"]
    customize = ["customize", "--instruction", "x", "--steps", "3", "--out", "s.safetensors"]
    datagen = ["--instruction", "x", "--count", "4", "--out", "data"]
    for args in (build_parser().parse_args(edit), build_parser().parse_args(customize),
                 datagen_parser().parse_args(datagen)):
        assert edit_settings(args) == EditSettings()
    assert build_parser().parse_args(customize).steps == 3  # customize's --steps: fine-tuning steps


def test_edit_steps_is_one_flag_and_the_old_steps_a_hidden_alias(capsys):
    edit = ["edit", "--input", "me.jpg", "--prompt", "x", "--out", "out"]
    new, old = (build_parser().parse_args([*edit, flag, "7"]) for flag in ("--edit-steps", "--steps"))
    assert edit_settings(new) == edit_settings(old) == EditSettings(steps=7)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--help"])
    shown = capsys.readouterr().out
    assert "--edit-steps" in shown and "--steps" not in shown.replace("--edit-steps", "")
    customize = ["customize", "--instruction", "x", "--steps", "3", "--out", "s.safetensors"]
    assert build_parser().parse_args(customize).lora_rank == 8  # the name of train's flag too
    assert build_parser().parse_args([*customize, "--rank", "4"]).lora_rank == 4  # the old name, hidden


def test_user_errors_are_one_line_messages(tiny_weights, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(blank)
    cases = [
        (["edit", "--weights", str(tmp_path / "none"), "--input", str(blank), "--reference", str(blank),
          "--out", str(tmp_path)], "3dpe.pt"),
        (["edit", "--weights", str(tiny_weights), "--input", str(blank), "--reference", str(blank),
          "--out", str(tmp_path)], "No face"),
        (["edit", "--weights", str(tiny_weights), "--input", str(tmp_path / "missing.jpg"), "--reference",
          str(blank), "--out", str(tmp_path)], "missing.jpg"),
        (["render", "--weights", str(tiny_weights / "3dpe.safetensors"), "--out", str(tmp_path)], "EG3D"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_training_autocast_is_mixed_precision_not_the_editors_precision(capsys):
    """`--precision` is the editor's exact/fast everywhere; train's autocast flag is `--mixed-precision` (its old
    name `--precision` still parses, hidden)."""
    from threedpe.training.train import build_parser as train_parser

    required = ["--data", "data", "--out", "out", "--steps", "1"]
    assert train_parser().parse_args(required).mixed_precision == "auto"
    assert train_parser().parse_args([*required, "--mixed-precision", "fp32"]).mixed_precision == "fp32"
    assert train_parser().parse_args([*required, "--precision", "bf16"]).mixed_precision == "bf16"
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--mixed-precision" in shown and "--precision" not in shown.replace("--mixed-precision", "")
