"""One official training step (case D): our objective and trainable set against ``Coach.train_ref_encoder``.

Full-size forward and backward on the CPU: the module-scoped ``train_step_runs`` runs each case once.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.golden_compare import assert_close
from tests.golden_recipe import recipe_encoder_renderer
from threedpe.cameras import camera
from threedpe.models.editor import EditorConfig, EditorModel, ReconstructionConfig, ReconstructionModel
from threedpe.models.encoder import preprocess_input, preprocess_reference
from threedpe.training.objective import EditingObjective, LossWeights, prepare_for_training
from threedpe.weights.checkpoints import ThreeDPECheckpoint

pytestmark = pytest.mark.golden
LOSS_NAMES = ("triloss", "image", "raw", "depth", "feature", "mv_image", "mv_raw", "mv_depth", "mv_feature", "total")


def train_step_cases(golden_dir: Path) -> list[Path]:
    cases = sorted(golden_dir.glob("train_step*.npz"))
    assert cases, f"no train_step*.npz case in {golden_dir}"
    return cases


def run_step(edit: EditorModel, rec: ReconstructionModel, case: dict) -> dict:
    """The objective on the stored tensors and cameras, then backward; everything the checks need, as numpy."""
    trainable = prepare_for_training(edit)
    lambdas = {key.split(".", 1)[1]: float(case[key]) for key in case if key.startswith("lambda.")}
    objective = EditingObjective(LossWeights.from_official(lambdas))  # no LPIPS / identity / adversarial terms
    with torch.no_grad():
        target_planes = rec.encode(torch.from_numpy(case["gt_tensor"]))
    step = objective(edit, rec, torch.from_numpy(case["input_tensor"]), torch.from_numpy(case["ref_tensor_mae"]),
                     target_planes, torch.from_numpy(case["camera_param"]),
                     novel_camera=torch.from_numpy(case["mv_camera_param"]))
    step.total.backward()
    trained = {id(parameter) for _, parameter in trainable}
    debug = {"rec_triplanes_sub4": target_planes[:, :, ::4, ::4], "edit_triplanes_sub4": step.planes[:, :, ::4, ::4]}
    for side, renders in (("rec", step.target_renders), ("edit", step.edit_renders)):
        debug[f"{side}_image_raw"] = torch.cat([r["image_raw"] for r in renders])
        debug[f"{side}_image_depth"] = torch.cat([r["image_depth"] for r in renders])
        debug[f"{side}_image_sub4"] = torch.cat([r["image"][:, :, ::4, ::4] for r in renders])
    return {
        "losses": {name: (step.total if name == "total" else step.terms[name]).item() for name in LOSS_NAMES},
        "names": [name for name, _ in trainable],
        "grads": {name: parameter.grad.detach().clone() for name, parameter in trainable},
        "frozen_with_grad": [name for name, parameter in edit.named_parameters()
                             if id(parameter) not in trained and parameter.grad is not None],
        "debug": {key: value.detach().numpy() for key, value in debug.items()},
    }


@pytest.fixture(scope="module")
def train_step_runs(golden_dir) -> dict[str, tuple[dict, dict]]:
    """rec from ``live3d_manifest.json``, edit from ``manifest.json`` (a fresh editor per case: a step leaves gradients)."""
    rec_state = recipe_encoder_renderer(golden_dir / "live3d_manifest.json", ReconstructionModel(ReconstructionConfig()))
    rec = ReconstructionModel.from_checkpoint(ThreeDPECheckpoint(**rec_state))
    del rec_state
    runs = {}
    for path in train_step_cases(golden_dir):
        case = dict(np.load(path))
        edit_state = recipe_encoder_renderer(golden_dir / "manifest.json", EditorModel(EditorConfig()))
        edit = EditorModel.from_checkpoint(ThreeDPECheckpoint(**edit_state))
        del edit_state
        runs[path.stem] = (case, run_step(edit, rec, case))
    return runs


def test_train_step_preprocessing_and_cameras(golden_dir):
    for path in train_step_cases(golden_dir):
        case = np.load(path)
        assert_close("input_tensor", preprocess_input(Image.fromarray(case["input_u8"])), case["input_tensor"])
        assert_close("gt_tensor", preprocess_input(Image.fromarray(case["gt_u8"])), case["gt_tensor"])
        assert_close("ref_tensor_mae", preprocess_reference(Image.fromarray(case["ref_u8"])), case["ref_tensor_mae"])
        pitch, yaw, fov, cx, cy = (torch.tensor([value], dtype=torch.float32) for value in case["mv_pose"])
        assert_close("mv_camera_param", camera(yaw, pitch, fov, cx, cy), case["mv_camera_param"])


def test_train_step_losses_and_forward(train_step_runs):
    for name, (case, run) in train_step_runs.items():
        forward = {key: assert_close(f"{name} {key}", value, case[key]) for key, value in run["debug"].items()}
        for loss, value in run["losses"].items():
            expected = float(case[f"loss.{loss}"])
            assert abs(value - expected) <= 1e-5 * abs(expected) + 1e-6, f"{name} loss.{loss}: {value} != {expected}"
        relative = {loss: abs(value / float(case[f"loss.{loss}"]) - 1) for loss, value in run["losses"].items()}
        print(f"{name} max relative loss error: {max(relative.values()):.2e}; forward max |diff|: "
              f"{ {key: f'{value:.1e}' for key, value in forward.items()} }")


def test_train_step_gradients(train_step_runs):
    for name, (case, run) in train_step_runs.items():
        expected_names = [str(n) for n in case["grad_param_names"]]
        assert run["names"] == expected_names  # the optimiser's list, in its order, pos_embed included
        assert run["frozen_with_grad"] == []
        norms = np.array([run["grads"][n].double().norm().item() for n in expected_names])
        expected = case["grad_norm_per_param"]
        assert np.allclose(norms, expected, rtol=1e-3, atol=1e-4 * expected.max()), \
            f"{name} per-tensor norms: max |diff| {np.abs(norms - expected).max():.3g}"
        group_errors = {}
        for key in (k for k in case if k.startswith("grad_norm.")):
            group = key[len("grad_norm."):]
            members = [n for n in expected_names if group == "all" or n.startswith(group + ".")]
            assert members, f"{key}: no trainable tensor in this group"
            value = math.sqrt(sum(run["grads"][n].double().pow(2).sum().item() for n in members))
            group_errors[group] = abs(value / float(case[key]) - 1)
            assert group_errors[group] <= 5e-4, f"{name} {key}: {value} != {float(case[key])}"
        slice_errors = {}
        for key in (k for k in case if k.startswith("grad_slice.")):
            expected_slice = case[key]
            grad = run["grads"][key[len("grad_slice."):]]
            actual = grad[tuple(slice(0, n) for n in expected_slice.shape)].numpy()
            scale = np.abs(expected_slice).max()
            assert np.allclose(actual, expected_slice, rtol=1e-3, atol=1e-3 * scale), f"{name} {key}"
            slice_errors[key] = np.abs(actual - expected_slice).max() / scale
        per_param = np.abs(norms - expected).max() / expected.max()
        print(f"{name} gradients: group norms max rel err {max(group_errors.values()):.2e}; per-tensor max |diff|/max "
              f"{per_param:.2e}; slices max |diff|/max|g| {max(slice_errors.values()):.2e}")
