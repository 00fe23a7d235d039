"""Live3D reconstruction network (case C) against the official ``TriEncoder(mode='LT')``, loaded through the
product path from a file laid out like the released ``encoder_render_LT_*.pt``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.golden_compare import assert_close, assert_stats
from tests.golden_recipe import recipe_encoder_renderer
from threedpe.cameras import camera
from threedpe.models.editor import (EditorModel, ReconstructionConfig, ReconstructionModel,
                                    resolve_reconstruction_weights)
from threedpe.models.encoder import preprocess_input
from threedpe.tiny import tiny_editor_config, tiny_reconstruction_model
from threedpe.weights import RECONSTRUCTION_WEIGHTS, CheckpointError, MissingWeightsError
from threedpe.weights.checkpoints import ThreeDPECheckpoint, convert, load_3dpe, save_checkpoint


def live3d_cases(golden_dir: Path) -> list[Path]:
    cases = sorted(golden_dir.glob("live3d_*.npz"))
    assert cases, f"no live3d_*.npz case in {golden_dir}"
    return cases


def case_stats(golden_dir: Path, case: Path) -> dict:
    """Full-tensor statistics of ``case`` in ``live3d_summary.json`` (keyed by case name when it holds several)."""
    summary = json.loads((golden_dir / "live3d_summary.json").read_text())
    return summary[case.stem]["stats"] if case.stem in summary else summary["stats"]


def recipe_live3d_state(golden_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Both state dicts of ``live3d_manifest.json`` from the recipe, checked against the manifest's sums."""
    return recipe_encoder_renderer(golden_dir / "live3d_manifest.json", ReconstructionModel(ReconstructionConfig()))


@pytest.fixture(scope="module")
def live3d_model(golden_dir, tmp_path_factory) -> ReconstructionModel:
    """Recipe weights saved as an official-layout ``encoder_render_LT_90000.pt`` (with training-only extras) and
    loaded by weight-file resolution, as a user's released file would be."""
    folder = tmp_path_factory.mktemp("live3d-weights")
    path = folder / RECONSTRUCTION_WEIGHTS[-1]
    torch.save({**recipe_live3d_state(golden_dir), "step": 90000, "opts": {"mode": "LT"}}, path)
    model = ReconstructionModel.from_pretrained(folder)
    path.unlink()
    return model


@pytest.mark.golden
def test_live3d_golden_views(live3d_model, golden_dir):
    report = {}
    for path in live3d_cases(golden_dir):
        case, stats = dict(np.load(path)), case_stats(golden_dir, path)
        x = preprocess_input(Image.fromarray(case["input_u8"]))
        assert_stats("input_tensor", x, stats["input_tensor"])
        with torch.inference_mode():
            planes = live3d_model.encode(x)
            report["triplanes_sub4"] = assert_close("triplanes_sub4", planes[:, :, ::4, ::4], case["triplanes_sub4"])
            assert_stats("triplanes", planes, stats["triplanes"])
            for i, cam in enumerate(torch.from_numpy(case["cams"])):
                out = live3d_model.render(planes, cam[None], deterministic=True)
                expected = {key: case[key][i:i + 1] for key in ("image", "feature_image", "image_depth", "weight_total")}
                expected["image_raw"] = case["feature_image"][i:i + 1, :3]
                for key, value in expected.items():
                    diff = assert_close(f"{path.stem} view {i} {key}", out[key], value)
                    report[key] = max(report.get(key, 0.0), diff)
                    assert_stats(f"{path.stem} view {i} {key}", out[key], stats["views"][i][key])
    print("live3d max |diff|:", {key: f"{value:.2e}" for key, value in report.items()})


@pytest.mark.golden
def test_live3d_golden_cameras(golden_dir):
    for path in live3d_cases(golden_dir):
        case = np.load(path)
        for params, expected in zip(case["view_params"], case["cams"]):
            pitch, yaw, fov, cx, cy = params.tolist()
            assert_close(f"{path.stem} camera {params}", camera(yaw, pitch, fov, cx, cy), expected[None])


# ------------------------------------------------------------------------------------------------
# Tiny weights: which network a file holds, strict loading, our format, the official editor initialisation.

@pytest.fixture(scope="module")
def tiny_pair() -> tuple[EditorModel, ReconstructionModel]:
    torch.manual_seed(0)
    editor = EditorModel(tiny_editor_config()).eval()
    return editor, tiny_reconstruction_model(editor)


def _checkpoint(model) -> ThreeDPECheckpoint:
    return ThreeDPECheckpoint(model.encoder.state_dict(), model.renderer.state_dict(), model.config.to_dict())


def test_a_file_of_the_other_network_is_refused_clearly(tiny_pair, tmp_path):
    editor, live3d = tiny_pair
    for model, wrong, released in ((live3d, EditorModel, "3dpe.pt"), (editor, ReconstructionModel, RECONSTRUCTION_WEIGHTS[-1])):
        for ckpt in (_checkpoint(model), ThreeDPECheckpoint(model.encoder.state_dict(), model.renderer.state_dict())):
            with pytest.raises(CheckpointError, match=r"^this checkpoint holds .* was expected$"):
                wrong.from_checkpoint(ckpt)
        torch.save({"encoder_state_dict": model.encoder.state_dict(), "renderer_state_dict": model.renderer.state_dict()},
                   tmp_path / released)  # a released-style file under the other network's name
        with pytest.raises(CheckpointError, match="was expected"):
            wrong.from_checkpoint(load_3dpe(tmp_path / released))


def test_config_and_weights_must_agree_on_the_network(tiny_pair):
    editor, live3d = tiny_pair
    lying = ThreeDPECheckpoint(live3d.encoder.state_dict(), live3d.renderer.state_dict(), editor.config.to_dict())
    with pytest.raises(CheckpointError, match="config says a 3DPE editor .* weights are those of a Live3D"):
        EditorModel.from_checkpoint(lying)
    with pytest.raises(ValueError, match="is for model 'live3d', not '3dpe'"):
        ReconstructionConfig.from_dict(editor.config.to_dict())


def test_strict_loading_lists_missing_and_unexpected_keys(tiny_pair):
    _, live3d = tiny_pair
    state = dict(live3d.encoder.state_dict())
    state.pop("Final_encoder.output_net.9.bias")
    state["Final_encoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"Live3D encoder .*1 missing keys: Final_encoder.output_net.9.bias; "
                                              r"1 unexpected keys: Final_encoder.extra"):
        ReconstructionModel.from_checkpoint(ThreeDPECheckpoint(state, live3d.renderer.state_dict(), live3d.config.to_dict()))
    with pytest.raises(CheckpointError, match="shape mismatches"):  # no config: the released widths
        ReconstructionModel.from_checkpoint(ThreeDPECheckpoint(live3d.encoder.state_dict(), live3d.renderer.state_dict()))


def test_safetensors_round_trip_is_bit_identical(tiny_pair, tmp_path):
    _, live3d = tiny_pair
    save_checkpoint(_checkpoint(live3d), tmp_path / "live3d")
    assert json.loads((tmp_path / "live3d.json").read_text())["config"]["model"] == "live3d"
    again = ReconstructionModel.from_checkpoint(load_3dpe(tmp_path / "live3d.safetensors"))
    assert again.config == live3d.config
    for key, value in live3d.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode(x), live3d.encode(x))


def test_converting_a_released_live3d_file_records_the_network(tiny_pair, tmp_path):
    _, live3d = tiny_pair
    torch.save({"encoder_state_dict": live3d.encoder.state_dict(), "renderer_state_dict": live3d.renderer.state_dict(),
                "step": 90000}, tmp_path / "encoder_render_LT_90000.pt")
    convert(tmp_path / "encoder_render_LT_90000.pt")
    assert json.loads((tmp_path / "encoder_render_LT_90000.json").read_text())["config"] == {"model": "live3d"}


def test_editor_from_live3d_loads_everything_but_ref_encoder(tiny_pair):
    editor, live3d = tiny_pair
    torch.manual_seed(7)
    fresh = EditorModel(editor.config).encoder.state_dict()
    torch.manual_seed(7)
    started = EditorModel.from_live3d(_checkpoint(live3d))
    assert started.config == editor.config and not started.training
    live3d_state = live3d.encoder.state_dict()
    for key, value in started.encoder.state_dict().items():
        expected = fresh[key] if key.startswith("Ref_encoder.") else live3d_state[key]
        assert torch.equal(value, expected), key
    assert set(started.encoder.state_dict()) - set(live3d_state) == {k for k in fresh if k.startswith("Ref_encoder.")}
    for key, value in live3d.renderer.state_dict().items():
        assert torch.equal(started.renderer.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="a Live3D reconstruction network .* was expected"):
        EditorModel.from_live3d(_checkpoint(editor))
    extra = {**live3d.encoder.state_dict(), "EHigh_encoder.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="1 unexpected keys: EHigh_encoder.extra"):
        EditorModel.from_live3d(ThreeDPECheckpoint(extra, live3d.renderer.state_dict(), live3d.config.to_dict()))


def test_reconstruction_weights_resolution_prefers_the_converted_file(tiny_pair, tmp_path, monkeypatch):
    _, live3d = tiny_pair
    monkeypatch.delenv("THREEDPE_HUB_REPO", raising=False)
    with pytest.raises(MissingWeightsError, match="encoder_render_LT_90000.pt"):
        resolve_reconstruction_weights(tmp_path)
    torch.save({"encoder_state_dict": live3d.encoder.state_dict(), "renderer_state_dict": live3d.renderer.state_dict()},
               tmp_path / "encoder_render_LT_90000.pt")
    assert resolve_reconstruction_weights(tmp_path).name == "encoder_render_LT_90000.pt"
    save_checkpoint(_checkpoint(live3d), tmp_path / "encoder_render_LT_90000")
    assert resolve_reconstruction_weights(tmp_path).name == "encoder_render_LT_90000.safetensors"
    (tmp_path / "encoder_render_LT_90000.json").unlink()
    with pytest.raises(MissingWeightsError, match="encoder_render_LT_90000.json"):
        resolve_reconstruction_weights(tmp_path)


def test_tiny_weights_hold_a_live3d_network_sharing_the_editors_weights(tiny_weights):
    editor = EditorModel.from_checkpoint(load_3dpe(tiny_weights / "3dpe.safetensors"))
    live3d = ReconstructionModel.from_pretrained(tiny_weights)
    assert live3d.config.untrained and ReconstructionConfig.like(editor.config) == live3d.config
    editor_state = editor.state_dict()
    for key, value in live3d.state_dict().items():
        assert torch.equal(editor_state[key], value), key
