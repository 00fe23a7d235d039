"""Edit strength (issue 20): 1 is the edit bit for bit, 0 the unedited Live3D reconstruction, values between blend, and a
new strength re-renders without encoding again; without the Live3D file the strength says which file enables it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import weights_copy
from threedpe.edit_settings import SettingsError
from threedpe.models.editor import ReconstructionModel
from threedpe.models.encoder import preprocess_input
from threedpe.pipeline import PortraitEditor
from threedpe.weights import RECONSTRUCTION_WEIGHTS, MissingWeightsError
from threedpe.weights.checkpoints import load_3dpe

LIVE3D = Path(RECONSTRUCTION_WEIGHTS[0]).stem


def _perturbed_live3d(tiny_weights: Path, prefix: str, seed: int) -> ReconstructionModel:
    """The tiny Live3D network with every ``prefix`` weight moved: a Final_encoder of its own (as the released
    files, whose Final_encoder 3DPE fine-tuned) or, with another prefix, branches the editor does not share."""
    live3d = ReconstructionModel.from_checkpoint(load_3dpe(tiny_weights / f"{LIVE3D}.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in live3d.encoder.named_parameters():
            if name.startswith(prefix):
                value.add_(torch.randn(value.shape, generator=generator) * 0.5 * value.std().clamp_min(1e-3))
    return live3d


@pytest.fixture(scope="module")
def weights(tiny_weights, tmp_path_factory) -> Path:
    return weights_copy(tiny_weights, tmp_path_factory.mktemp("own-final"),
                         _perturbed_live3d(tiny_weights, "Final_encoder.", 1))


@pytest.fixture(scope="module")
def editor(weights) -> PortraitEditor:
    return PortraitEditor.from_pretrained(weights)


@pytest.fixture(scope="module")
def photo(astronaut_photo) -> Image.Image:
    return Image.open(astronaut_photo).convert("RGB").crop((140, 20, 340, 220))


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    return Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (96, 1)), 255 - np.tile(ramp, (96, 1)).T],
                                    axis=-1).astype(np.uint8))


def _distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_strength_one_is_the_edit_bit_for_bit(editor, photo, reference, one_thread):
    plain = editor(photo, reference=reference, aligned=True)
    strong = editor(photo, reference=reference, aligned=True, strength=1.0)
    assert torch.equal(plain.planes, strong.planes) and strong.strength == 1.0
    assert strong.with_strength(1.0).planes is strong.planes
    assert plain.view(preview=True) == strong.with_strength(0.4).with_strength(1.0).view(preview=True)


def test_strength_zero_is_the_live3d_reconstruction(editor, weights, photo, reference, one_thread):
    result = editor(photo, reference=reference, aligned=True, strength=0.0)
    live3d = ReconstructionModel.from_pretrained(weights)
    with torch.inference_mode():
        expected = live3d.encode(preprocess_input(result.image, editor.model.config.encoder.image_size))
    assert torch.allclose(result.planes, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(result.planes, result.edited_planes, atol=1e-3)  # an edit that changes something


def test_half_strength_lies_between(editor, photo, reference, one_thread):
    result = editor(photo, reference=reference, aligned=True)
    edited, unedited, half = (result.with_strength(s).view(preview=True) for s in (1.0, 0.0, 0.5))
    apart = _distance(edited, unedited)
    assert apart > 1.0
    assert _distance(half, edited) < apart and _distance(half, unedited) < apart
    beyond = result.with_strength(1.5)
    assert torch.allclose(beyond.planes, result.planes + 0.5 * (result.planes - result.unedited_planes), atol=1e-5)


def test_new_strength_does_not_encode_again(editor, photo, reference, one_thread, monkeypatch):
    result = editor(photo, reference=reference, aligned=True)
    live3d, shared = editor.reconstruction()
    assert shared  # the copy's Live3D file shares the editor's branches and renderer
    calls = {"editor": 0, "live3d branches": 0, "live3d final": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(editor.model.encoder, "forward", counted("editor", editor.model.encoder.forward))
    monkeypatch.setattr(live3d.encoder, "branches", counted("live3d branches", live3d.encoder.branches))
    monkeypatch.setattr(live3d.encoder.Final_encoder, "forward",
                        counted("live3d final", live3d.encoder.Final_encoder.forward))
    views = [result.with_strength(s).view(preview=True) for s in (0.0, 0.25, 0.75, 1.5, 0.25)]
    assert calls == {"editor": 0, "live3d branches": 0, "live3d final": 1}  # the unedited planes once, then lerps
    assert _distance(views[1], views[4]) == 0.0 and _distance(views[0], views[3]) > 0


def test_live3d_with_other_branches_encodes_the_crop(tiny_weights, tmp_path, photo, reference, one_thread):
    weights = weights_copy(tiny_weights, tmp_path / "w", _perturbed_live3d(tiny_weights, "EHigh_encoder.", 2))
    editor = PortraitEditor.from_pretrained(weights)
    result = editor(photo, reference=reference, aligned=True, strength=0.0)
    assert not editor.reconstruction()[1]
    with torch.inference_mode():
        expected = ReconstructionModel.from_pretrained(weights).encode(preprocess_input(result.image, 128))
    assert torch.allclose(result.planes, expected, atol=1e-5, rtol=0)


def test_without_live3d_the_strength_names_the_file(tiny_weights, tmp_path, photo, reference, one_thread):
    editor = PortraitEditor.from_pretrained(weights_copy(tiny_weights, tmp_path / "w", None))
    assert "encoder_render_LT_90000.pt" in editor.strength_unavailable
    result = editor(photo, reference=reference, aligned=True)  # strength 1 needs no Live3D
    assert not result.strength_available and result.unedited.branches is None  # nothing kept for nothing
    with pytest.raises(MissingWeightsError, match="encoder_render_LT_90000.pt"):
        editor(photo, reference=reference, aligned=True, strength=0.5)
    with pytest.raises(MissingWeightsError, match="encoder_render_LT_90000.pt"):
        result.with_strength(0.5)
    for bad in (-0.1, 1.6, float("nan")):
        with pytest.raises(SettingsError, match="strength"):
            result.with_strength(bad)


def test_cli_edit_strength(weights, astronaut_photo, reference, tmp_path, capsys, one_thread):
    from threedpe.cli import main

    reference.save(tmp_path / "ref.png")
    common = ["edit", "--weights", str(weights), "--input", str(astronaut_photo), "--aligned",
              "--reference", str(tmp_path / "ref.png"), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "half"), "--strength", "0.5"]) == 0
    assert (tmp_path / "half" / "views.png").is_file()
    assert main([*common, "--out", str(tmp_path / "bad"), "--strength", "3"]) == 2
    assert "strength" in capsys.readouterr().err and not (tmp_path / "bad").exists()
