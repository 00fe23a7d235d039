"""EG3D generator: golden comparison with the official code, full-size key layout, tiny configs."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.golden_compare import assert_close, assert_stats
from tests.golden_recipe import check_sums, fill_state_dict, load_manifest
from threedpe.models.generator import GeneratorConfig, TriPlaneGenerator
from threedpe.tiny import TINY_WEIGHTS_EG3D, tiny_generator_config


def official_config(manifest: dict) -> GeneratorConfig:
    return GeneratorConfig.from_official(manifest["G_init_kwargs"], manifest["rendering_kwargs"],
                                         manifest["G_neural_rendering_resolution"])


@pytest.fixture(scope="module")
def eg3d_run(golden_dir, tmp_path_factory):
    """Recipe weights written as 3DPE's ``ffhqrebalanced512-128.pth`` -> the loading path of a user's file."""
    manifest = load_manifest(golden_dir)
    entries = manifest["state_dicts"]["G"]
    constants = TriPlaneGenerator(official_config(manifest)).state_dict()
    state = fill_state_dict(entries, constants)
    assert check_sums(entries, state) == []
    path = tmp_path_factory.mktemp("weights") / "ffhqrebalanced512-128.pth"
    torch.save({"G_init_args": [], "G_init_kwargs": manifest["G_init_kwargs"], "G": state,
                "G_neural_rendering_resolution": manifest["G_neural_rendering_resolution"],
                "G_renderinig_kwargs": manifest["rendering_kwargs"]}, path)
    G = TriPlaneGenerator.from_pretrained(path)
    case = dict(np.load(golden_dir / "eg3d_G.npz"))
    with torch.inference_mode():
        out = G(torch.from_numpy(case["z"]), torch.from_numpy(case["c"]), deterministic=True)
    return out, case, manifest, G


@pytest.mark.golden
def test_eg3d_golden_outputs(eg3d_run, golden_dir):
    import json

    out, case, _, _ = eg3d_run
    assert_close("ws", out["ws"], case["ws"])
    assert_close("planes_sub4", out["planes"][:, :, ::4, ::4], case["planes_sub4"])
    for key in ("image_raw", "image_depth", "image"):
        assert_close(key, out[key], case[key])
    stats = json.loads((golden_dir / "summary.json").read_text())["eg3d_G"]["stats"]
    for key in ("planes", "image", "image_raw", "image_depth", "feature_image"):
        assert_stats(key, out[key], stats[key])


def write_official_pickle(path, G: TriPlaneGenerator, manifest: dict, monkeypatch) -> None:
    """``G`` pickled the way NVIDIA's network pickles are: every module reduced to EG3D's persistence
    reconstructor with its ``__dict__`` (and the source code that a safe loader must ignore)."""
    from tests.test_checkpoints import EasyDict, _fake_eg3d_modules, _reconstruct_persistent_obj

    _fake_eg3d_modules(monkeypatch)

    class PersistencePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, torch.nn.Module):
                return NotImplemented
            state = {"training": False, "_parameters": obj._parameters, "_buffers": obj._buffers,
                     "_non_persistent_buffers_set": obj._non_persistent_buffers_set, "_modules": obj._modules}
            if obj is G:
                state.update(_init_args=(), _init_kwargs=EasyDict(manifest["G_init_kwargs"]),
                             rendering_kwargs=EasyDict(manifest["rendering_kwargs"]),
                             neural_rendering_resolution=manifest["G_neural_rendering_resolution"])
            meta = {"type": "class", "version": 6, "module_src": "raise SystemExit('never run')\n",
                    "class_name": type(obj).__name__, "state": state}
            return _reconstruct_persistent_obj, (meta,)

    with open(path, "wb") as file:
        PersistencePickler(file, protocol=4).dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None,
                                                   "training_set_kwargs": EasyDict(resolution=512)})


@pytest.mark.golden
def test_eg3d_official_pickle_loads_the_same_generator(eg3d_run, tmp_path, monkeypatch):
    _, _, manifest, G = eg3d_run
    path = tmp_path / "ffhqrebalanced512-128.pkl"
    write_official_pickle(path, G, manifest, monkeypatch)
    monkeypatch.undo()  # the loader must not need EG3D's modules
    loaded = TriPlaneGenerator.from_pretrained(path)
    assert loaded.cfg == G.cfg
    expected = G.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.golden
def test_eg3d_golden_camera(golden_dir):
    from threedpe.cameras import camera

    summary = __import__("json").loads((golden_dir / "summary.json").read_text())["eg3d_G"]
    case = np.load(golden_dir / "eg3d_G.npz")
    assert_close("c", camera(summary["yaw"], summary["pitch"]), case["c"])


@pytest.mark.golden
def test_eg3d_official_config_matches_manifest(golden_dir):
    manifest = load_manifest(golden_dir)
    state = TriPlaneGenerator(official_config(manifest)).state_dict()
    expected = {e["name"]: tuple(e["shape"]) for e in manifest["state_dicts"]["G"]}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_tiny_generator_is_deterministic_and_shaped():
    torch.manual_seed(0)
    G = TriPlaneGenerator(tiny_generator_config()).eval()
    from threedpe.cameras import frontal_camera

    z = torch.randn(2, G.cfg.z_dim)
    c = frontal_camera().repeat(2, 1)
    with torch.inference_mode():
        a = G(z, c, deterministic=True)
        b = G(z, c, deterministic=True)
        r = G(z, c, deterministic=False)
    assert a["image"].shape == (2, 3, 128, 128)
    assert a["image_raw"].shape == (2, 3, 32, 32) and a["image_depth"].shape == (2, 1, 32, 32)
    assert a["planes"].shape == (2, 96, 256, 256)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image_depth"], r["image_depth"])
    depth = a["image_depth"]
    assert depth.min() >= G.cfg.rendering.ray_start and depth.max() <= G.cfg.rendering.ray_end


def test_super_resolution_widths_are_eg3d_s_unless_a_small_generator_narrows_them(golden_dir):
    """Released files (whose sr_kwargs hold channel_base/channel_max only) get EG3D's (256, 128); the tiny-weights
    generator's threedpe key ``sr_kwargs.widths`` narrows them, and its checkpoint loads back the same."""
    assert official_config(load_manifest(golden_dir)).sr_widths == (256, 128)
    config = GeneratorConfig.from_official(**TINY_WEIGHTS_EG3D)
    assert config.sr_widths == (32, 16) and config.rendering.neural_rendering_resolution == 16
    G = TriPlaneGenerator(config)
    assert G.superresolution.block0.conv1.weight.shape[0] == 32 and G.superresolution.block1.torgb.weight.shape[1] == 16


def test_truncation_pulls_towards_average():
    torch.manual_seed(0)
    G = TriPlaneGenerator(tiny_generator_config()).eval()
    G.backbone.mapping.w_avg.normal_()
    from threedpe.cameras import frontal_camera

    z, c = torch.randn(1, G.cfg.z_dim), frontal_camera()
    full = G.mapping(z, c)
    half = G.mapping(z, c, truncation_psi=0.5)
    zero = G.mapping(z, c, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(half, G.backbone.mapping.w_avg.lerp(full, 0.5))
    torch.testing.assert_close(zero[:, :3], G.backbone.mapping.w_avg.expand(1, 3, -1))
    torch.testing.assert_close(zero[:, 3:], full[:, 3:])


def test_from_official_rejects_unsupported_options():
    kwargs = {"z_dim": 512, "w_dim": 512, "c_dim": 25, "img_resolution": 512}
    rendering = dict(GeneratorConfig().rendering.to_dict(), clamp_mode="softplus")
    rendering["superresolution_module"] = "training.superresolution.SuperresolutionHybrid2X"
    with pytest.raises(ValueError, match="SuperresolutionHybrid2X"):
        GeneratorConfig.from_official(kwargs, rendering, 128)
    rendering["superresolution_module"] = "training.superresolution.SuperresolutionHybrid8XDC"
    rendering["disparity_space_sampling"] = True
    with pytest.raises(ValueError, match="disparity_space_sampling"):
        GeneratorConfig.from_official(kwargs, rendering, 128)
