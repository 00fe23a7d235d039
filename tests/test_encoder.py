"""Editing encoder: golden equality with the official 3DPE encoder, key set, tiny-config behaviour."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.golden_recipe import check_sums, fill_state_dict, load_manifest
from threedpe.models.encoder import (EncoderConfig, GridConv, Live3DEditingEncoder, append_pixel_coordinates,
                                     preprocess_input, preprocess_reference)
from threedpe.tiny import tiny_encoder_config

RTOL = ATOL = 1e-4


def _editor_cases(golden_dir: Path) -> list[Path]:
    cases = sorted(p for p in golden_dir.glob("editor_*.npz") if not p.stem.endswith("_intermediates"))
    assert cases, f"no editor_*.npz case in {golden_dir}"
    return cases


def _slice_map(t: torch.Tensor, stride: int) -> np.ndarray:
    return t[:, :8, ::stride, ::stride].numpy()


HOOKED_MODULES = ("encoder", "decoder.0", "decoder", "F_encoder", "EHigh_encoder", "Ref_encoder.pre_conv",
                  "Ref_encoder.patch_emb", "Ref_encoder.mae_encoder", "Ref_encoder", "Final_encoder.net",
                  "Final_encoder.block", "Final_encoder")


def _intermediate_slices(raw: dict) -> dict[str, np.ndarray]:
    """The slices documented in the golden README (section "Intermediate arrays") from hooked outputs."""
    query, mae, block = raw["Ref_encoder.patch_emb"][0], raw["Ref_encoder.mae_encoder"], raw["Final_encoder.block"]
    side = int(block.shape[1] ** 0.5)
    attn = torch.softmax(query @ mae.transpose(1, 2) / mae.shape[-1] ** 0.5, dim=-1)
    stages = raw["encoder"]
    return {
        "resnet.stage1_s8": _slice_map(stages[0], 8),
        "resnet.stage2_s4": _slice_map(stages[1], 4),
        "resnet.stage3_s2": _slice_map(stages[2], 2),
        "deeplab.aspp_s2": _slice_map(raw["decoder.0"], 2),
        "deeplab.decoder_s2": _slice_map(raw["decoder"], 2),
        "F_encoder.out_s4": _slice_map(raw["F_encoder"], 4),
        "EHigh_encoder.out_s4": _slice_map(raw["EHigh_encoder"], 4),
        "Ref_encoder.pre_conv_s4": _slice_map(raw["Ref_encoder.pre_conv"], 4),
        "Ref_encoder.query_tokens": query[:, :64, :32].numpy(),
        "Ref_encoder.mae_tokens": mae[:, :, :32].numpy(),
        "Ref_encoder.attn": attn[:, :16].numpy(),
        "Ref_encoder.out_s4": _slice_map(raw["Ref_encoder"], 4),
        "Final_encoder.conv_s4": _slice_map(raw["Final_encoder.net"], 4),
        "Final_encoder.block_s2": _slice_map(block.transpose(1, 2).reshape(1, -1, side, side), 2),
        "Final_encoder.out_s8": _slice_map(raw["Final_encoder"], 8),
    }


@pytest.fixture(scope="module")
def editor_golden_run(golden_dir: Path) -> dict:
    """Recipe weights into the full-size encoder, one forward per editor case (the only heavy run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        entries = load_manifest(golden_dir)["state_dicts"]["encoder_state_dict"]
        model = Live3DEditingEncoder().eval()
        state = fill_state_dict(entries, constants=model.state_dict())
        bad_sums = check_sums(entries, state)
        model.load_state_dict(state, strict=True)
        del state
        raw: dict = {}
        for name in HOOKED_MODULES:
            model.get_submodule(name).register_forward_hook(
                lambda _module, _inputs, output, name=name: raw.__setitem__(name, output))
        runs = {}
        for case in _editor_cases(golden_dir):
            data = np.load(case)
            with torch.no_grad():
                triplanes = model(torch.from_numpy(data["input_tensor"]), torch.from_numpy(data["ref_tensor_mae"]))
            runs[case.stem] = {"triplanes": triplanes.numpy(), "intermediates": _intermediate_slices(raw)}
            raw.clear()
        del model
    finally:
        torch.set_num_threads(threads)
    return {"bad_sums": bad_sums, "runs": runs}


@pytest.mark.golden
def test_editor_state_dict_matches_manifest(golden_dir: Path) -> None:
    entries = load_manifest(golden_dir)["state_dicts"]["encoder_state_dict"]
    with torch.device("meta"):
        model = Live3DEditingEncoder()
    expected = {e["name"]: tuple(e["shape"]) for e in entries}
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [] and sorted(set(actual) - set(expected)) == []
    assert {n: s for n, s in actual.items() if expected[n] != s} == {}


@pytest.mark.golden
def test_editor_recipe_weights_and_constants_match_manifest(editor_golden_run: dict) -> None:
    assert editor_golden_run["bad_sums"] == []  # includes the MAE pos_embed constant


@pytest.mark.golden
def test_editor_triplanes_match_golden(golden_dir: Path, editor_golden_run: dict) -> None:
    summary = json.loads((golden_dir / "summary.json").read_text())
    for name, run in editor_golden_run["runs"].items():
        triplanes = run["triplanes"]
        expected = np.load(golden_dir / f"{name}.npz")["triplanes_sub4"]
        np.testing.assert_allclose(triplanes[:, :, ::4, ::4], expected, rtol=RTOL, atol=ATOL, err_msg=name)
        stats = summary[name]["stats"]["triplanes"]
        assert list(triplanes.shape) == stats["shape"]
        values = triplanes.astype(np.float64)
        actual = {"mean": values.mean(), "std": values.std(), "sum": values.sum() / values.size,
                  "abs_sum": np.abs(values).sum() / values.size}
        reference = {"mean": stats["mean"], "std": stats["std"], "sum": stats["sum"] / values.size,
                     "abs_sum": stats["abs_sum"] / values.size}
        for key in actual:
            assert actual[key] == pytest.approx(reference[key], rel=0, abs=ATOL), f"{name} {key}"


@pytest.mark.golden
def test_editor_intermediates_match_golden(golden_dir: Path, editor_golden_run: dict) -> None:
    checked = 0
    for name, run in editor_golden_run["runs"].items():
        path = golden_dir / f"{name}_intermediates.npz"
        if not path.is_file():
            continue
        expected = np.load(path)
        for key in expected.files:
            reference = expected[key]
            np.testing.assert_allclose(run["intermediates"][key], reference, rtol=RTOL,
                                       atol=ATOL * max(1.0, float(np.abs(reference).max())), err_msg=key)
        checked += 1
    if not checked:
        pytest.skip("no *_intermediates.npz in the golden folder")


@pytest.mark.golden
def test_editor_preprocessing_matches_golden(golden_dir: Path) -> None:
    for case in _editor_cases(golden_dir):
        data = np.load(case)
        x = preprocess_input(Image.fromarray(data["input_u8"]))
        ref = preprocess_reference(Image.fromarray(data["ref_u8"]))
        np.testing.assert_allclose(x.numpy(), data["input_tensor"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ref.numpy(), data["ref_tensor_mae"], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Tiny configuration (random weights, CPU).

@pytest.fixture(scope="module")
def tiny_model() -> Live3DEditingEncoder:
    torch.manual_seed(0)
    return Live3DEditingEncoder(tiny_encoder_config()).eval()


def _tiny_inputs(batch: int, size: int = 512, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    ref = torch.randn(batch, 3, 224, 224, generator=generator)
    return x, ref


def test_tiny_output_shape_and_determinism(tiny_model: Live3DEditingEncoder) -> None:
    x, ref = _tiny_inputs(1)
    with torch.no_grad():
        first, second = tiny_model(x, ref), tiny_model(x, ref)
    assert first.shape == (1, 96, 256, 256) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and first.std() > 0
    assert torch.equal(first, second)


def test_tiny_batch_and_coordinate_channels() -> None:
    torch.manual_seed(0)
    model = Live3DEditingEncoder(dataclasses.replace(tiny_encoder_config(), image_size=128)).eval()
    x, ref = _tiny_inputs(2, size=128)
    with torch.no_grad():
        batched = model(x, ref)
        single = model(x[1:], ref[1:])
        five_channel = model(append_pixel_coordinates(x), ref)
    assert batched.shape == (2, 96, 64, 64)
    torch.testing.assert_close(batched[1:], single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(five_channel, batched, rtol=0, atol=0)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("batch", [1, 2])
def test_grid_conv_keeps_a_token_grid_channels_last(batch: int) -> None:
    """The fast path's depthwise conv of a token grid returns a channels-last grid (so the tokens after it need no copy),
    also for a batch of one, whose token view carries an arbitrary batch stride; equal to the reference layout."""
    torch.manual_seed(0)
    conv = GridConv(16, 16, 3, 1, 1, groups=16).eval()
    tokens = torch.randn(batch, 6 * 5, 16)
    grid = tokens.transpose(1, 2).reshape(batch, 16, 6, 5)  # as tokens_to_map
    with torch.inference_mode():
        reference = conv(grid)
        conv.channels_last = True
        fast = conv(grid)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert fast.flatten(2).transpose(1, 2).is_contiguous()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_append_pixel_coordinates_are_row_then_column() -> None:
    coords = append_pixel_coordinates(torch.zeros(1, 3, 4, 6))[0, 3:]
    assert coords[0, 2, 5].item() == 2.0 and coords[1, 2, 5].item() == 5.0


def test_tiny_rejects_wrong_input_shapes(tiny_model: Live3DEditingEncoder) -> None:
    x, ref = _tiny_inputs(1)
    with pytest.raises(ValueError, match="x must be"):
        tiny_model(x[:, :, :256, :256], ref)
    with pytest.raises(ValueError, match="ref must be"):
        tiny_model(x, ref[:, :, :112, :112])


def test_config_round_trip_and_validation() -> None:
    for config in (EncoderConfig(), tiny_encoder_config()):
        data = json.loads(json.dumps(config.to_dict()))
        assert EncoderConfig.from_dict(data) == config
    assert EncoderConfig().image_size == 512 and tiny_encoder_config().triplane_channels == 96
    with pytest.raises(ValueError, match="unknown EncoderConfig fields"):
        EncoderConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="image_size"):
        EncoderConfig(image_size=500)


def test_preprocessing_shapes_ranges_and_mode_check() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    x = preprocess_input(image)
    ref = preprocess_reference(image)
    assert x.shape == (1, 3, 512, 512) and x.min() >= -1 and x.max() <= 1
    assert ref.shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="RGB"):
        preprocess_input(image.convert("L"))
