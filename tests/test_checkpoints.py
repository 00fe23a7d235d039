"""threedpe.weights.checkpoints: every released format, our safetensors format, safety, errors, resolution.

The EG3D files are crafted here with a tiny module tree pickled exactly the way EG3D's
``torch_utils.persistence`` and ``dnnlib.util.EasyDict`` pickle (fake modules registered in
``sys.modules`` only while writing), so reading them must not need EG3D's code.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from threedpe.weights import CheckpointError, MissingWeightsError, resolve_weight
from threedpe.weights import checkpoints as ckpt
from threedpe.weights.checkpoints import EG3DCheckpoint, ThreeDPECheckpoint


# --- Stand-ins for EG3D's code, given the module paths EG3D's pickles name -------------------------

class EasyDict(dict):
    """Same shape as dnnlib.util.EasyDict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _reconstruct_persistent_obj(meta):
    raise AssertionError("the loader must never call EG3D's reconstructor")


MODULE_SRC = "import torch\n\nclass TriPlaneGenerator(torch.nn.Module):\n    pass\n"


class Persistent(torch.nn.Module):
    """Pickles like an instance of a class decorated with EG3D's ``persistence.persistent_class``."""

    module_src = MODULE_SRC

    def __init__(self, **kwargs):
        super().__init__()
        self._init_args = ()
        self._init_kwargs = copy.deepcopy(kwargs)

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(self).__name__,
                    state=dict(self.__dict__))
        return (_reconstruct_persistent_obj, (meta,))


class FullyConnectedLayer(Persistent):
    def __init__(self, in_features, out_features, lr_multiplier=1.0):
        super().__init__(in_features=in_features, out_features=out_features, lr_multiplier=lr_multiplier)
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.randn(out_features))
        self.weight_gain = np.float64(lr_multiplier / np.sqrt(in_features))  # a numpy scalar, as in EG3D


class MappingNetwork(Persistent):
    def __init__(self):
        super().__init__(num_layers=2)
        self.fc0 = FullyConnectedLayer(4, 6)
        self.fc1 = FullyConnectedLayer(6, 6)
        self.register_buffer("w_avg", torch.randn(6))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.register_buffer("absent", None)


class MipRayMarcher2(torch.nn.Module):
    pass


class ImportanceRenderer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = torch.eye(3).repeat(3, 1, 1)  # a plain tensor attribute, not in the state dict


class OSGDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(FullyConnectedLayer(6, 8), torch.nn.Softplus(), FullyConnectedLayer(8, 5))


class TriPlaneGenerator(Persistent):
    def __init__(self, rendering_kwargs):
        super().__init__(z_dim=4, c_dim=25, rendering_kwargs=rendering_kwargs, mapping_kwargs=EasyDict(num_layers=2),
                         sr_kwargs=EasyDict(channel_base=32768))
        self.renderer = ImportanceRenderer()
        self.backbone = MappingNetwork()
        self.decoder = OSGDecoder()
        self.const = torch.nn.Parameter(torch.randn(1, 2, 3, dtype=torch.float64).half())
        self.neural_rendering_resolution = 128
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None


FAKE_GLOBALS = {
    "dnnlib.util": {"EasyDict": EasyDict},
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "training.triplane": {"OSGDecoder": OSGDecoder},
    "training.volumetric_rendering.renderer": {"ImportanceRenderer": ImportanceRenderer},
    "training.volumetric_rendering.ray_marcher": {"MipRayMarcher2": MipRayMarcher2},
}


def _fake_eg3d_modules(patch: pytest.MonkeyPatch) -> None:
    """Register EG3D's module paths so pickle writes the same globals EG3D's own pickles hold."""
    for module_name, members in FAKE_GLOBALS.items():
        parts = module_name.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                patch.setitem(sys.modules, name, types.ModuleType(name))
        for attr, obj in members.items():
            patch.setattr(obj, "__module__", module_name)
            patch.setattr(sys.modules[module_name], attr, obj, raising=False)


RENDERING_KWARGS = EasyDict(image_resolution=512, superresolution_module="training.superresolution.SuperresolutionHybrid8XDC",
                            c_gen_conditioning_zero=False, c_scale=1.0, depth_resolution=48, ray_start=2.25,
                            avg_camera_pivot=(0, 0, np.float64(0.2)), box_warp=1, sr_antialias=True)
EXPECTED_RENDERING = {"image_resolution": 512, "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
                      "c_gen_conditioning_zero": False, "c_scale": 1.0, "depth_resolution": 48, "ray_start": 2.25,
                      "avg_camera_pivot": [0, 0, 0.2], "box_warp": 1, "sr_antialias": True}


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)  # int64 num_batches_tracked


class Renderer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.const = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.decoder = torch.nn.Linear(8, 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny networks and every released format written from them."""
    folder = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        _fake_eg3d_modules(patch)
        G_ema = TriPlaneGenerator(EasyDict(RENDERING_KWARGS))
        G = TriPlaneGenerator(EasyDict(RENDERING_KWARGS))  # other random weights: only G_ema may be read
        D = MappingNetwork()
        official = {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": None,
                    "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=512)}
        (folder / "ffhqrebalanced512-128.pkl").write_bytes(pickle.dumps(official))
        torch.save({"G_init_args": (), "G_init_kwargs": EasyDict(G_ema._init_kwargs), "G": G_ema.state_dict(),
                    "G_neural_rendering_resolution": 128, "G_renderinig_kwargs": G_ema.rendering_kwargs,
                    "D_init_args": (), "D_init_kwargs": EasyDict(D._init_kwargs), "D": D.state_dict()},
                   folder / "ffhqrebalanced512-128.pth")
    encoder, renderer = Encoder(), Renderer()
    torch.save({"encoder_state_dict": encoder.state_dict(), "renderer_state_dict": renderer.state_dict(),
                "discriminator_state": D.state_dict(), "opts": {"exp_dir": "x", "lr": 1e-4}, "best_val_loss": None,
                "step": 2000, "encoder_optimizer": torch.optim.Adam(encoder.parameters()).state_dict()},
               folder / "3dpe.pt")
    assert "torch_utils.persistence" not in sys.modules and "dnnlib.util" not in sys.modules
    return types.SimpleNamespace(folder=folder, G_ema=G_ema, encoder=encoder, renderer=renderer,
                                 pkl=folder / "ffhqrebalanced512-128.pkl", pth=folder / "ffhqrebalanced512-128.pth",
                                 pt=folder / "3dpe.pt")


def _assert_same_tensors(got: dict, expected: dict, ordered: bool = True) -> None:
    """Same names, dtypes and values; safetensors files keep no key order, so ``ordered=False`` there."""
    assert list(got) == list(expected) if ordered else sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def _assert_eg3d(got: EG3DCheckpoint, G_ema, ordered: bool = True) -> None:
    _assert_same_tensors(got.state_dict, G_ema.state_dict(), ordered)
    assert got.neural_rendering_resolution == 128
    assert got.rendering_kwargs == EXPECTED_RENDERING
    assert got.init_kwargs == {"z_dim": 4, "c_dim": 25, "rendering_kwargs": EXPECTED_RENDERING,
                               "mapping_kwargs": {"num_layers": 2}, "sr_kwargs": {"channel_base": 32768}}
    json.dumps([got.init_kwargs, got.rendering_kwargs])


# --- Round trips ---------------------------------------------------------------------------------

def test_crafted_pickle_has_eg3d_persistence_layout(files):
    data = files.pkl.read_bytes()
    for name in (b"torch_utils.persistence", b"_reconstruct_persistent_obj", b"module_src", b"dnnlib.util", b"EasyDict",
                 b"training.triplane", b"OSGDecoder", b"torch.storage", b"_load_from_bytes", b"_rebuild_parameter",
                 b"_rebuild_tensor_v2", b"numpy", b"scalar", b"_init_kwargs", b"_modules", b"_parameters", b"_buffers"):
        assert name in data, name


def test_official_pickle_gives_g_ema_state_dict_and_config(files):
    got = ckpt.load_eg3d(files.pkl)
    _assert_eg3d(got, files.G_ema)
    assert "scratch" not in "".join(got.state_dict) and "plane_axes" not in "".join(got.state_dict)
    assert "torch_utils.persistence" not in sys.modules and "training.triplane" not in sys.modules


def test_3dpe_converted_pth_matches_the_pickle(files):
    _assert_eg3d(ckpt.load_eg3d(files.pth), files.G_ema)


@pytest.mark.parametrize("source", ["pkl", "pth"])
def test_convert_eg3d_to_safetensors_round_trip(files, tmp_path, source):
    weights = ckpt.convert(getattr(files, source), tmp_path)
    assert weights == tmp_path / "ffhqrebalanced512-128.safetensors"
    config = json.loads((tmp_path / "ffhqrebalanced512-128.json").read_text())
    assert config["kind"] == "eg3d" and config["source"] == f"ffhqrebalanced512-128.{source}"
    for path in (weights, tmp_path / "ffhqrebalanced512-128.json", tmp_path):
        _assert_eg3d(ckpt.load_eg3d(path), files.G_ema, ordered=False)


def test_3dpe_checkpoint_and_round_trip(files, tmp_path):
    got = ckpt.load_3dpe(files.pt)
    _assert_same_tensors(got.encoder_state_dict, files.encoder.state_dict())
    _assert_same_tensors(got.renderer_state_dict, files.renderer.state_dict())
    weights = ckpt.convert(files.pt, tmp_path / "out" / "mine")
    assert weights == tmp_path / "out" / "mine.safetensors"
    again = ckpt.load_3dpe(weights)
    _assert_same_tensors(again.encoder_state_dict, files.encoder.state_dict(), ordered=False)
    _assert_same_tensors(again.renderer_state_dict, files.renderer.state_dict(), ordered=False)
    assert isinstance(ckpt.read_checkpoint(tmp_path / "out" / "mine.json"), ThreeDPECheckpoint)


def test_pth_with_plain_types_loads_through_weights_only(tmp_path):
    model = Renderer()
    torch.save({"G_init_args": [], "G_init_kwargs": {"z_dim": 4}, "G": model.state_dict(),
                "G_neural_rendering_resolution": 64, "G_renderinig_kwargs": {"box_warp": 1}}, tmp_path / "g.pth")
    got = ckpt.load_eg3d(tmp_path / "g.pth")
    _assert_same_tensors(got.state_dict, model.state_dict())
    assert (got.init_kwargs, got.neural_rendering_resolution, got.rendering_kwargs) == ({"z_dim": 4}, 64, {"box_warp": 1})


@pytest.mark.parametrize("loader, path_name, found, expected", [
    ("load_eg3d", "pt", "3DPE/Live3D", "EG3D generator checkpoint"),
    ("load_3dpe", "pkl", "EG3D generator", "3DPE/Live3D"),
    ("load_3dpe", "pth", "EG3D generator", "3DPE/Live3D"),
])
def test_wrong_checkpoint_kind_says_what_was_found(files, loader, path_name, found, expected):
    with pytest.raises(CheckpointError) as info:
        getattr(ckpt, loader)(getattr(files, path_name))
    message = str(info.value)
    assert found in message.split("but")[0] and expected in message.split("but")[1]


def test_unknown_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a known checkpoint: found a dict with keys \['state_dict', 'epoch'\]"):
        ckpt.read_checkpoint(tmp_path / "other.pt")


# --- Damaged files -------------------------------------------------------------------------------

def _damaged(files, tmp_path, case: str) -> Path:
    if case.startswith("truncated"):
        suffix = case.split("-")[1]
        source = ckpt.convert(files.pt, tmp_path / "ok") if suffix == "safetensors" else getattr(files, suffix)
        path = tmp_path / f"cut.{suffix}"
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        if suffix == "safetensors":
            (tmp_path / "cut.json").write_text((tmp_path / "ok.json").read_text())
        return path
    path = tmp_path / "bad.pth"
    contents = {"random": np.random.default_rng(0).bytes(4096), "empty": b"",
                "text": b"this is not a checkpoint, it is a README\n", "pickle-garbage": b"\x80\x04" + bytes(range(200))}
    if case == "json":
        ckpt.convert(files.pt, tmp_path / "j")
        path = tmp_path / "j.json"
        path.write_text('{"format": "threedpe-checkpoint", ')
        return path
    path.write_bytes(contents[case])
    return path


@pytest.mark.parametrize("case, message", [
    ("truncated-pth", "truncated or corrupt"),
    ("truncated-pkl", "truncated or corrupt"),
    ("truncated-safetensors", "truncated or corrupt"),
    ("random", "not a checkpoint"),
    ("empty", "is empty"),
    ("text", "not a checkpoint"),
    ("pickle-garbage", "truncated or corrupt"),
    ("json", "truncated or corrupt"),
])
def test_damaged_files_raise_checkpoint_error(files, tmp_path, case, message):
    path = _damaged(files, tmp_path, case)
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.read_checkpoint(path)
    assert path.name in str(info.value)
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_missing_file_names_the_file_and_its_source(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"missing weight file 'ffhqrebalanced512-128.pkl'.*NGC"):
        ckpt.load_eg3d(tmp_path / "ffhqrebalanced512-128.pkl")


# --- Malicious pickles ---------------------------------------------------------------------------

class _Payload:
    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path) -> dict[str, tuple[_Payload, str]]:
    return {
        "os.system": (_Payload(os.system, (f"touch {marker}",)), "system"),
        "builtins.eval": (_Payload(eval, (f"open({str(marker)!r}, 'w')",)), "eval"),
        "subprocess.Popen": (_Payload(subprocess.Popen, (["touch", str(marker)],)), "Popen"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("container", ["pickle", "torch-zip", "nested-storage-bytes"])
def test_malicious_pickles_are_refused_without_running(tmp_path, payload, container):
    marker = tmp_path / "pwned"
    evil, global_name = _payloads(marker)[payload]
    path = tmp_path / "evil.pkl"
    if container == "pickle":
        path.write_bytes(pickle.dumps({"G_ema": evil}))
    elif container == "torch-zip":
        torch.save({"encoder_state_dict": evil, "renderer_state_dict": {}}, path)
    else:
        import io
        legacy = io.BytesIO()
        torch.save(evil, legacy, _use_new_zipfile_serialization=False)
        path.write_bytes(pickle.dumps({"G_ema": _Payload(torch.storage._load_from_bytes, (legacy.getvalue(),))}))
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        ckpt.read_checkpoint(path)
    assert global_name in str(info.value)
    assert not marker.exists()


def test_persistent_source_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.MonkeyPatch.context() as patch:
        _fake_eg3d_modules(patch)
        patch.setattr(Persistent, "module_src", f"open({str(marker)!r}, 'w').close()\nclass TriPlaneGenerator: pass\n")
        G_ema = TriPlaneGenerator(EasyDict(RENDERING_KWARGS))
        (tmp_path / "full.pkl").write_bytes(pickle.dumps({"G": G_ema, "D": G_ema, "G_ema": G_ema}))
        (tmp_path / "bare.pkl").write_bytes(pickle.dumps({"G_ema": FullyConnectedLayer(2, 2)}))
    _assert_same_tensors(ckpt.load_eg3d(tmp_path / "full.pkl").state_dict, G_ema.state_dict())
    with pytest.raises(CheckpointError, match="lacks 'rendering_kwargs', 'neural_rendering_resolution'"):
        ckpt.load_eg3d(tmp_path / "bare.pkl")
    assert not marker.exists()


# --- Strict loading ------------------------------------------------------------------------------

def test_load_into_lists_missing_unexpected_and_mismatched_keys():
    module = Renderer()
    state = {"const": torch.zeros(1, 1, 9), "decoder.weight": torch.zeros(4, 8), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        ckpt.load_into(module, state, what="triplane renderer")
    message = str(info.value)
    assert message.startswith("triplane renderer: ")
    assert "1 missing keys: decoder.bias" in message and "1 unexpected keys: extra.weight" in message
    assert "1 shape mismatches: const (checkpoint (1, 1, 9) vs model (1, 1, 8))" in message


def test_load_into_truncates_long_lists_and_loads_matching_weights():
    module = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(CheckpointError, match=r"12 missing keys: 0.weight, 0.bias, 1.weight, 1.bias, \.\.\. and 8 more"):
        ckpt.load_into(module, {}, show=4)
    state = {name: torch.full_like(tensor, 3.0) for name, tensor in module.state_dict().items()}
    ckpt.load_into(module, state)
    assert all(torch.equal(tensor, state[name]) for name, tensor in module.state_dict().items())


# --- Weight resolution ---------------------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Offline Hub whose hf_hub_download records its calls; the project's env vars cleared."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("THREEDPE_WEIGHTS", "THREEDPE_HUB_REPO", "THREEDPE_HUB_REVISION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        path = tmp_path / "hub-cache" / kwargs["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def test_resolve_weight_prefers_the_local_folder(hub, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "3dpe.pt").write_bytes(b"x")
    assert resolve_weight("3dpe.pt", repo_id="me/weights", revision=SHA) == Path("checkpoints") / "3dpe.pt"
    assert resolve_weight("3dpe.pt", local_dir=tmp_path / "checkpoints") == tmp_path / "checkpoints" / "3dpe.pt"
    assert hub == []


def test_resolve_weight_env_var_overrides_the_default_folder(hub, tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "3dpe.pt").write_bytes(b"x")
    monkeypatch.setenv("THREEDPE_WEIGHTS", str(tmp_path / "elsewhere"))
    assert resolve_weight("3dpe.pt") == tmp_path / "elsewhere" / "3dpe.pt"


def test_the_default_folder_and_the_text_model_source(hub, tmp_path, monkeypatch):
    from threedpe.weights import INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION, default_folder, text_model_source

    assert default_folder() == Path("checkpoints")
    monkeypatch.setenv("THREEDPE_WEIGHTS", str(tmp_path / "elsewhere"))
    assert default_folder() == tmp_path / "elsewhere"
    local = tmp_path / "elsewhere" / "instruct-pix2pix"
    local.mkdir(parents=True)
    assert text_model_source(tmp_path / "elsewhere") == (INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION)  # empty
    (local / "model_index.json").write_text("{}")
    assert text_model_source(tmp_path / "elsewhere") == (local, None)
    assert text_model_source(None) == (INSTRUCT_PIX2PIX_REPO, INSTRUCT_PIX2PIX_REVISION)


def test_resolve_weight_downloads_a_pinned_revision(hub, tmp_path):
    path = resolve_weight("3dpe.safetensors", repo_id="me/threedpe-weights", revision=SHA, subfolder="v1")
    assert path == tmp_path / "hub-cache" / "3dpe.safetensors"
    assert hub == [{"repo_id": "me/threedpe-weights", "filename": "3dpe.safetensors", "subfolder": "v1", "revision": SHA}]


def test_resolve_weight_hub_settings_from_env(hub, monkeypatch):
    monkeypatch.setenv("THREEDPE_HUB_REPO", "me/env-repo")
    monkeypatch.setenv("THREEDPE_HUB_REVISION", SHA)
    resolve_weight("3dpe.json")
    assert hub[0]["repo_id"] == "me/env-repo" and hub[0]["revision"] == SHA


def test_resolve_weight_uses_the_known_hub_copy(hub):
    resolve_weight("ffhqrebalanced512-128.pkl", revision=SHA)
    assert hub == [{"repo_id": "gwang-kim/datid3d-finetuned-eg3d-models", "subfolder": None, "revision": SHA,
                    "filename": "finetuned_models/nvidia_ffhqrebalanced512-128.pkl"}]


def test_resolve_weight_refuses_unpinned_revisions(hub):
    with pytest.raises(CheckpointError, match="not pinned"):
        resolve_weight("3dpe.pt", repo_id="me/weights", revision="main")
    with pytest.raises(MissingWeightsError, match="no pinned revision for gwang-kim/datid3d-finetuned-eg3d-models"):
        resolve_weight("ffhqrebalanced512-128.pkl")
    assert hub == []


def test_resolve_weight_missing_names_file_place_and_source(hub, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        resolve_weight("3dpe.pt")
    message = str(info.value)
    assert "'3dpe.pt'" in message and f"not in {tmp_path / 'checkpoints'}." in message
    assert info.value.filename == "3dpe.pt" and info.value.folder.resolve() == (tmp_path / "checkpoints").resolve()
    assert "github.com/EzioBy/3dpe" in message and "non-commercial" in message
    with pytest.raises(MissingWeightsError, match=r"'mystery.bin'.*not one of the known files \(ffhqrebalanced512-128.pkl"):
        resolve_weight("mystery.bin")


def test_resolve_weight_reports_hub_failures(hub, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MissingWeightsError, match=r"'3dpe.pt'.*me/weights@0123456789ab: LocalEntryNotFoundError"):
        resolve_weight("3dpe.pt", repo_id="me/weights", revision=SHA)
