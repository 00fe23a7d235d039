"""The fast inference paths against the reference paths (small random models, CPU, a few seconds in all).

Each fast piece must equal its reference up to float rounding, run only without autograd, and follow weight changes.
The full-size golden comparison of the fast path is in test_editor.py (it renders under ``torch.inference_mode``).
"""
from __future__ import annotations

import pytest
import torch

from threedpe import cameras
from threedpe.edit_settings import EditSettings, SettingsError
from threedpe.mesh import density_grid
from threedpe.models.editor import EditorModel
from threedpe.models.generator import TriPlaneGenerator
from threedpe.models.rendering import (FoldedSuperresolution, OSGDecoder, PlaneField, RenderingConfig,
                                       SuperresolutionHybrid8XDC, TriplaneRenderer, render_rays, render_rays_fused,
                                       sample_from_planes, sample_rays)
from threedpe.models.stylegan2 import FoldedSynthesisBlock, SynthesisBlock
from threedpe.tiny import tiny_editor_config, tiny_generator_config

TOL = {"rtol": 1e-5, "atol": 2e-5}


def _renderer(resolution: int = 16, samples: int = 8) -> TriplaneRenderer:
    torch.manual_seed(0)
    cfg = RenderingConfig(depth_resolution=samples, depth_resolution_importance=samples,
                          neural_rendering_resolution=resolution)
    renderer = TriplaneRenderer(cfg, w_dim=32, sr_widths=(8, 8)).eval()
    with torch.no_grad():  # a density around the surface level, so that importance sampling has structure
        renderer.decoder.net[2].bias[0] = 3.0
    return renderer


def _views(n: int) -> torch.Tensor:
    return torch.cat([cameras.camera(*cameras.from_degrees(yaw, 5.0)) for yaw in torch.linspace(-30, 30, n).tolist()])


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_folded_block_equals_the_modulated_block(clamp):
    torch.manual_seed(0)
    block = SynthesisBlock(6, 10, 16, resolution=16, img_channels=3, conv_clamp=clamp).eval()
    ws = torch.randn(1, 3, 16)
    x, img = torch.randn(2, 6, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = block(x, img, ws.expand(2, -1, -1), noise_mode="none")
        actual = FoldedSynthesisBlock(block, ws)(x, img)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL)


@pytest.mark.parametrize("resize_input", [True, False])
def test_folded_superresolution_equals_the_reference(resize_input):
    torch.manual_seed(0)
    sr = SuperresolutionHybrid8XDC(32, 16, input_resolution=16, widths=(8, 4)).eval()
    w = torch.randn(1, 1, 16)
    rgb, x = torch.randn(2, 3, 12, 12), torch.randn(2, 32, 12, 12)
    with torch.no_grad():
        expected = sr(rgb, x, w.expand(2, -1, -1), resize_input=resize_input)
        actual = FoldedSuperresolution(sr, w)(rgb, x, resize_input=resize_input)
    assert actual.shape == (2, 3, 64, 64) if resize_input else (2, 3, 48, 48)
    torch.testing.assert_close(actual, expected, **TOL)


def test_plane_field_equals_sampling_then_decoding():
    torch.manual_seed(0)
    decoder = OSGDecoder().eval()
    planes = torch.randn(2, 96, 8, 8)
    points = (torch.rand(2, 500, 3) - 0.5) * 1.4  # about a third outside the box: zero padding
    points[0, :3] = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.5], [3.0, -7.0, 0.1]])  # box faces, far outside
    with torch.no_grad():
        sigma, rgb = decoder(sample_from_planes(planes.reshape(2, 3, 32, 8, 8), points, box_warp=1.0))
        field = PlaneField(planes, decoder, box_warp=1.0)
        out = field(points)
        torch.testing.assert_close(out[:, :1], sigma.reshape(-1, 1), **TOL)
        torch.testing.assert_close(out[:, 1:].sigmoid() * 1.002 - 0.001, rgb.reshape(-1, 32), **TOL)
        torch.testing.assert_close(field.density(points), sigma.reshape(-1), **TOL)
        shared = PlaneField(planes[:1], decoder, box_warp=1.0)(points)  # one tri-plane for both point sets
        torch.testing.assert_close(shared[:500], out[:500], rtol=0, atol=0)


@pytest.mark.parametrize("deterministic", [True, False])
def test_fused_rays_equal_the_reference_rays(deterministic):
    renderer = _renderer()
    planes = torch.randn(1, 3, 32, 16, 16)
    origins, directions = sample_rays(_views(3), 16)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = render_rays(planes.expand(3, -1, -1, -1, -1), renderer.decoder, origins, directions, renderer.cfg,
                               deterministic)
        torch.manual_seed(1)
        shared = render_rays_fused(planes, renderer.decoder, origins, directions, renderer.cfg, deterministic, chunk=37)
        torch.manual_seed(1)
        separate = render_rays_fused(planes.expand(3, -1, -1, -1, -1), renderer.decoder, origins, directions,
                                     renderer.cfg, deterministic)
        torch.manual_seed(1)  # a PlaneField kept by the caller (the frames of a video) gives the same rays
        kept = render_rays_fused(planes, renderer.decoder, origins, directions, renderer.cfg, deterministic, chunk=37,
                                 field=PlaneField(planes, renderer.decoder, renderer.cfg.box_warp))
    for name, e, s, p, k in zip(("features", "depth", "opacity"), expected, shared, separate, kept):
        torch.testing.assert_close(s, e, **TOL, msg=name)
        torch.testing.assert_close(p, e, **TOL, msg=name)
        torch.testing.assert_close(k, s, rtol=0, atol=0, msg=name)


def test_renderer_fast_path_only_without_autograd():
    renderer = _renderer()
    planes, cams = torch.randn(1, 96, 16, 16), _views(2)
    with torch.no_grad():
        fast = renderer(planes, cams)
        renderer.inference.fast = False
        reference = renderer(planes, cams)
        renderer.inference.fast = True
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], **TOL, msg=key)
    renderer._folded = None
    trained = planes.clone().requires_grad_()
    out = renderer(trained, cams)
    assert out["image"].requires_grad and renderer._folded is None  # autograd took the reference path
    torch.testing.assert_close(out["image"].detach(), reference["image"], **TOL)


def test_folded_superresolution_follows_weight_changes():
    renderer = _renderer()
    planes, cam = torch.randn(1, 96, 16, 16), _views(1)
    with torch.inference_mode():
        before = renderer(planes, cam)["image"]
    with torch.no_grad():
        renderer.superresolution.block1.conv1.weight.mul_(1.5)  # in place (an optimiser step, a LoRA merge)
    with torch.inference_mode():
        after = renderer(planes, cam)["image"]
        renderer.inference.fast = False
        expected = renderer(planes, cam)["image"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, **TOL)
    renderer.inference.fast = True
    state = {k: v * 0.5 if k == "const" else v for k, v in renderer.state_dict().items()}
    renderer.load_state_dict(state)  # replaced values
    with torch.inference_mode():
        loaded = renderer(planes, cam)["image"]
        renderer.inference.fast = False
        expected = renderer(planes, cam)["image"]
    torch.testing.assert_close(loaded, expected, **TOL)


def test_preview_is_smaller_work_at_the_full_image_size():
    renderer = _renderer(resolution=128, samples=32)
    planes, cam = torch.randn(1, 96, 16, 16), _views(1)
    with torch.inference_mode():
        full = renderer(planes, cam)
        preview = renderer(planes, cam, preview=True)
        renderer.inference.fast = False
        reference = renderer(planes, cam, preview=True)
    assert full["image"].shape == preview["image"].shape == (1, 3, 512, 512)
    assert preview["image_raw"].shape == (1, 3, 64, 64) and full["image_raw"].shape == (1, 3, 128, 128)
    assert renderer.cfg.preview().depth_resolution == 24 and renderer.cfg.preview().depth_resolution_importance == 24
    for key in preview:
        torch.testing.assert_close(preview[key], reference[key], **TOL, msg=key)


def test_generator_fused_rendering_equals_the_reference():
    torch.manual_seed(0)
    generator = TriPlaneGenerator(tiny_generator_config()).eval()
    z, c = torch.randn(2, generator.cfg.z_dim), _views(2)
    with torch.no_grad():
        fast = generator(z, c)
        generator.inference.fast = False
        reference = generator(z, c)
    for key in ("image", "image_raw", "image_depth"):
        torch.testing.assert_close(fast[key], reference[key], **TOL, msg=key)


def test_fast_encoder_equals_the_reference_and_keeps_coordinates_in_float32():
    torch.manual_seed(0)
    model = EditorModel(tiny_editor_config()).eval()
    x, ref = torch.rand(1, 3, 512, 512) * 2 - 1, torch.randn(1, 3, 224, 224)
    layouts = []
    model.encoder.F_encoder.blocks[0].mlp.dwconv.dwconv.register_forward_pre_hook(
        lambda conv, _inputs: layouts.append(conv.channels_last))
    with torch.inference_mode():
        fast = model.encode(x, ref)
        model.inference.fast = False
        reference = model.encode(x, ref)
        model.inference.fast = True
    torch.testing.assert_close(fast, reference, **TOL)
    assert layouts == [True, False]  # the fast path's token grids are channels-last, the reference's are not

    seen = []
    for conv in (model.encoder.encoder.conv1, model.encoder.EHigh_encoder.net[0], model.encoder.Final_encoder.net[0]):
        conv.register_forward_hook(lambda _m, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    model.inference.autocast = torch.bfloat16
    with torch.inference_mode():
        low = model.encode(x, ref)
    assert seen == [(torch.float32, torch.float32)] * 2 + [(torch.bfloat16, torch.bfloat16)]
    assert low.dtype == torch.float32 and (low - reference).abs().max() < 0.1 * reference.abs().max()


def test_the_path_is_described():
    model = EditorModel(tiny_editor_config())
    assert model.describe_inference() == ("cpu fp32, channels-last token grids, fused volume rendering, "
                                          "folded channels-last SR")
    model.inference.autocast = torch.bfloat16
    assert model.describe_inference().startswith("cpu bf16 autocast (pixel coordinates and volume rendering fp32)")
    model.inference.fast = False
    assert model.describe_inference() == ("cpu bf16 autocast (pixel coordinates and volume rendering fp32), "
                                          "reference path")


def test_fused_density_grid_equals_the_reference():
    torch.manual_seed(0)
    decoder, planes = OSGDecoder().eval(), torch.randn(1, 96, 8, 8)
    fused = density_grid(planes, decoder, resolution=12, chunk=300)
    reference = density_grid(planes, decoder, resolution=12, fused=False)
    torch.testing.assert_close(torch.from_numpy(fused), torch.from_numpy(reference), **TOL)


def test_edit_settings_presets():
    assert EditSettings.preset("quality") == EditSettings()
    assert EditSettings.preset("fast").resolution == 256
    with pytest.raises(SettingsError, match="unknown preset"):
        EditSettings.preset("best")
