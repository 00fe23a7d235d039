"""The training objective on tiny models: its terms, trainable set, novel cameras and loss networks."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from threedpe.cameras import camera
from threedpe.models.editor import EditorModel
from threedpe.models.identity import IRSE50, IdentityLoss
from threedpe.models.perceptual import LPIPS, PromptEncoderDistance, load_perceptual
from threedpe.tiny import tiny_editor_config, tiny_reconstruction_model
from threedpe.training.objective import (OFFICIAL_LAUNCHER, TRAIN_OPTIONS_DEFAULTS, EditingObjective, LossWeights,
                                         NovelViewRanges, build_objective, prepare_for_training, random_novel_camera,
                                         trainable_parameters)
from threedpe.weights import IDENTITY_FILE, LPIPS_FILES, CheckpointError


@pytest.fixture()
def tiny_pair():
    torch.manual_seed(0)
    editor = EditorModel(tiny_editor_config()).eval()
    with torch.no_grad():
        editor.renderer.decoder.net[2].bias[0] = 10.0  # some density, so that renders depend on the tri-planes
    return editor, tiny_reconstruction_model(editor)


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1
    ref = torch.randn(1, 3, 224, 224, generator=generator)
    target = torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1
    return x, ref, target


def _random_lpips_files(folder, seed: int = 0) -> None:
    """LPIPS files in the official layouts (torchvision AlexNet incl. a token classifier entry; LPIPS heads)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    alexnet = {}
    for index, shape in shapes.items():
        fan_in = math.prod(shape[1:])
        alexnet[f"features.{index}.weight"] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        alexnet[f"features.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.1
    alexnet["classifier.6.bias"] = torch.zeros(1000)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
             for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(alexnet, folder / LPIPS_FILES[0])
    torch.save(heads, folder / LPIPS_FILES[1])


def _random_irse50_file(path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under IR-SE50's official key names, saved as an old file without BatchNorm counters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in IRSE50().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif value.ndim > 1:
            state[key] = torch.randn(value.shape, generator=generator) / math.sqrt(math.prod(value.shape[1:]))
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.1 + (1.0 if key.endswith("weight") else 0.0)
    torch.save(state, path)
    return state


# --- weights, presets, novel cameras -----------------------------------------------------------------------------

def test_official_weights_and_presets():
    assert LossWeights() == LossWeights(tri=1.0, l1=1.0, depth=0.5, feature=0.0, lpips=0.8, id=0.0, adv=0.025)
    assert TRAIN_OPTIONS_DEFAULTS.learning_rate == 5e-5 and TRAIN_OPTIONS_DEFAULTS.weights == LossWeights()
    assert OFFICIAL_LAUNCHER.learning_rate == 1e-4 and OFFICIAL_LAUNCHER.weights == LossWeights(lpips=2.0)
    options = {"tri_lambda": 2.0, "depth_lambda": 0.1, "l2_lambda": 1.0, "learning_rate_encoder": 1e-4}
    assert LossWeights.from_official(options) == LossWeights(tri=2.0, depth=0.1)


def test_novel_cameras_stay_in_range_and_follow_the_seed():
    ranges = NovelViewRanges()
    poses = []
    for _ in range(300):
        cams, pose = random_novel_camera(3, torch.Generator().manual_seed(len(poses)))
        assert cams.shape == (3, 25) and torch.equal(cams[0], cams[2])  # one camera for the whole batch
        assert torch.equal(cams[:1], camera(pose[1], pose[0], pose[2], pose[3], pose[4]))
        poses.append(pose)
    poses = torch.stack(poses).double()
    centres = torch.tensor([math.pi / 2, math.pi / 2, 18.837, 0.5, 0.5], dtype=torch.float64)
    half = torch.tensor([math.radians(ranges.pitch_degrees), math.radians(ranges.yaw_degrees), ranges.fov_degrees,
                         ranges.principal_point, ranges.principal_point], dtype=torch.float64)
    spread = (poses - centres).abs()
    assert bool((spread <= half + 1e-6).all())
    assert bool((spread.max(0).values > 0.9 * half).all())  # the draws cover the ranges
    again = random_novel_camera(3, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], random_novel_camera(3, torch.Generator().manual_seed(7))[0])
    assert not torch.equal(again[0], random_novel_camera(3, torch.Generator().manual_seed(8))[0])


# --- trainable set and gradients ---------------------------------------------------------------------------------

def test_pos_embed_is_a_frozen_parameter_until_training(tiny_pair):
    editor, _ = tiny_pair
    pos_embed = editor.encoder.Ref_encoder.mae_encoder.pos_embed
    assert isinstance(pos_embed, torch.nn.Parameter) and not pos_embed.requires_grad
    names = [name for name, _ in trainable_parameters(editor)]
    assert "Ref_encoder.mae_encoder.pos_embed" in names
    assert names == [n for n, _ in editor.encoder.named_parameters() if n.startswith("Final_encoder.")] + \
        [n for n, _ in editor.encoder.named_parameters() if n.startswith("Ref_encoder.")]


def test_gradients_reach_exactly_the_trainable_set(tiny_pair):
    editor, live3d = tiny_pair
    editor.train()
    trainable = prepare_for_training(editor)
    assert not any(module.training for module in editor.modules())  # ASPP dropout off
    x, ref, target = _inputs()
    with torch.no_grad():
        target_planes = live3d.encode(target)
    step = EditingObjective()(editor, live3d, x, ref, target_planes, camera(math.pi / 2, math.pi / 2),
                              generator=torch.Generator().manual_seed(0))
    step.total.backward()
    trained = {id(p) for _, p in trainable}
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in trainable)
    assert [n for n, p in editor.named_parameters() if id(p) not in trained and p.grad is not None] == []
    assert all(p.grad is None for p in live3d.parameters())


# --- the objective's value -----------------------------------------------------------------------------------------

def test_objective_is_zero_when_edit_and_target_coincide_and_positive_otherwise(tiny_pair, tmp_path):
    editor, live3d = tiny_pair
    _random_lpips_files(tmp_path)
    objective = EditingObjective(LossWeights(feature=1.0), perceptual=load_perceptual(tmp_path))
    x, ref, target = _inputs()
    cams = camera(math.pi / 2 + 0.3, math.pi / 2)
    with torch.no_grad():
        same = objective(editor, live3d, x, ref, editor.encode(x, ref), cams, generator=torch.Generator().manual_seed(0))
        other = objective(editor, live3d, x, ref, live3d.encode(target), cams, generator=torch.Generator().manual_seed(0))
    expected_terms = {"triloss", "image", "raw", "image_lpips", "raw_lpips", "depth", "feature"}
    assert set(same.terms) == expected_terms | {f"mv_{name}" for name in expected_terms - {"triloss"}}
    assert same.total.item() == 0.0 and all(value.item() == 0.0 for value in same.terms.values())
    assert other.total.item() > 0 and all(value.item() > 0 for value in other.terms.values())
    weights = objective.weights
    recomputed = weights.tri * other.terms["triloss"] + sum(
        weights.l1 * (other.terms[p + "image"] + other.terms[p + "raw"])
        + weights.lpips * (other.terms[p + "image_lpips"] + other.terms[p + "raw_lpips"])
        + weights.depth * other.terms[p + "depth"] + weights.feature * other.terms[p + "feature"] for p in ("", "mv_"))
    torch.testing.assert_close(other.total, recomputed)
    assert len(other.edit_renders) == len(other.target_renders) == 2


def test_given_novel_camera_is_used_and_multiview_can_be_off(tiny_pair):
    editor, live3d = tiny_pair
    x, ref, target = _inputs()
    novel = camera(math.pi / 2 + 0.5, math.pi / 2 - 0.2, 19.8, 0.53, 0.47)
    with torch.no_grad():
        planes = live3d.encode(target)
        step = EditingObjective()(editor, live3d, x, ref, planes, camera(math.pi / 2, math.pi / 2), novel_camera=novel)
        single = EditingObjective(multiview=False)(editor, live3d, x, ref, planes, camera(math.pi / 2, math.pi / 2))
    assert torch.equal(step.novel_camera, novel)
    torch.testing.assert_close(step.target_renders[1]["image"], live3d.render(planes, novel)["image"])
    assert not any(name.startswith("mv_") for name in single.terms) and len(single.edit_renders) == 1
    assert single.novel_camera is None


# --- loss networks ---------------------------------------------------------------------------------------------------

def test_lpips_port_on_random_official_layout_weights(tmp_path):
    _random_lpips_files(tmp_path)
    lpips = load_perceptual(tmp_path)
    assert isinstance(lpips, LPIPS) and "LPIPS v0.1 AlexNet" in lpips.name
    assert not any(p.requires_grad for p in lpips.parameters())
    generator = torch.Generator().manual_seed(3)
    x, y = (torch.rand(2, 3, 128, 128, generator=generator) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        assert lpips(x, x).item() == 0.0
        assert lpips(x, y).item() > 0
        torch.testing.assert_close(lpips(x, y), lpips(y, x))
        torch.testing.assert_close(lpips(x, y), (lpips(x[:1], y[:1]) + lpips(x[1:], y[1:])) / 2)
    heads = torch.load(tmp_path / LPIPS_FILES[1], weights_only=True)
    torch.save({**heads, "lin5.model.1.weight": torch.zeros(1, 8, 1, 1)}, tmp_path / LPIPS_FILES[1])
    with pytest.raises(CheckpointError, match=r"unexpected keys: lin\.5\.weight"):
        load_perceptual(tmp_path)


def test_perceptual_substitute_is_chosen_and_reported_without_lpips_files(tiny_pair, tmp_path, caplog):
    editor, _ = tiny_pair
    with pytest.raises(CheckpointError, match="alexnet-owt-4df8aa71.pth and alex_lin.pth"):
        load_perceptual(tmp_path)
    with caplog.at_level(logging.WARNING):
        substitute = load_perceptual(tmp_path, editor)
    assert isinstance(substitute, PromptEncoderDistance) and "substitute for LPIPS" in substitute.name
    assert "substitute for LPIPS" in caplog.text
    objective = build_objective(LossWeights(), tmp_path, editor)
    assert "substitute for LPIPS" in objective.description["perceptual"]
    generator = torch.Generator().manual_seed(4)
    x, y = (torch.rand(1, 3, 128, 128, generator=generator) * 2 - 1 for _ in range(2))
    before = substitute(x, y)
    with torch.no_grad():
        assert substitute(x, x).item() == 0.0 and before.item() > 0
        editor.encoder.Ref_encoder.mae_encoder.blocks[0].mlp.fc1.weight.mul_(2)  # training moves the editor...
        assert substitute(x, y).item() == before.item()  # ...not the frozen copy


def test_objective_keeps_its_loss_networks_in_eval_mode(tiny_pair, tmp_path):
    editor, _ = tiny_pair
    _random_irse50_file(tmp_path / IDENTITY_FILE)
    objective = build_objective(LossWeights(id=0.5), tmp_path, editor).train()
    assert not any(module.training for module in objective.perceptual.modules())
    assert not any(module.training for module in objective.identity.modules())


def test_identity_network_on_random_official_layout_weights(tmp_path):
    state = _random_irse50_file(tmp_path / IDENTITY_FILE)
    assert len(IRSE50().state_dict()) == 397 and len(state) == 397 - 54  # InsightFace's layout; 54 BatchNorm counters
    for key, shape in {"input_layer.0.weight": (64, 3, 3, 3), "input_layer.2.weight": (64,),
                       "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1), "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
                       "body.23.res_layer.4.running_var": (512,), "output_layer.3.weight": (512, 25088),
                       "output_layer.4.bias": (512,)}.items():
        assert tuple(state[key].shape) == shape, key
    identity = IdentityLoss.from_file(tmp_path / IDENTITY_FILE)
    generator = torch.Generator().manual_seed(5)
    x, y = (torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(identity.embed(x).norm(dim=1), torch.ones(2))
        assert abs(identity(x, x).item()) < 1e-5 and identity(x, y).item() > 0


def test_identity_term_runs_only_with_its_file(tiny_pair, tmp_path):
    editor, live3d = tiny_pair
    off = build_objective(LossWeights(lpips=0.0, id=0.1), tmp_path, editor)
    assert off.identity is None and off.perceptual is None
    assert off.description["identity"].startswith(f"off ({IDENTITY_FILE} is not in")
    assert off.description["perceptual"].startswith("off (its weight is 0")
    assert "off (its weight is 0, as officially" in build_objective(LossWeights(lpips=0.0), tmp_path, editor).description["identity"]
    _random_irse50_file(tmp_path / IDENTITY_FILE)
    on = build_objective(LossWeights(lpips=0.0, id=0.1), tmp_path, editor)
    assert on.description["identity"].startswith("ArcFace IR-SE50")
    x, ref, target = _inputs()
    with torch.no_grad():
        step = on(editor, live3d, x, ref, live3d.encode(target), camera(math.pi / 2, math.pi / 2),
                  generator=torch.Generator().manual_seed(0))
    assert {"id", "mv_id"} <= set(step.terms) and step.terms["id"].item() > 0
