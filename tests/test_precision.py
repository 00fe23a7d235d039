"""Precision modes: ``"exact"`` and ``"fast"`` (bfloat16 where the hardware computes it natively), on tiny models.

The detector is monkeypatched both ways, so that the native and the fallback path are tested on every CPU. The bound of
``"fast"`` on the golden recipe (one golden-size pass) is in test_editor.py.
"""
from __future__ import annotations

import pytest
import torch

from threedpe import cameras, precision
from threedpe.cli import main
from threedpe.models.editor import EditorModel
from threedpe.models.generator import TriPlaneGenerator
from threedpe.models.rendering import InferenceOptions
from threedpe.pipeline import PortraitEditor
from threedpe.tiny import tiny_editor_config, tiny_generator_config

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sve bf16 i8mm
"""


@pytest.fixture
def native(monkeypatch):
    """Set what the detector reports: ``native(True)`` claims AVX512-BF16, ``native(False)`` none."""
    def claim(present: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16_features", lambda: ["AVX512-BF16"] if present else [])
    return claim


@pytest.fixture(scope="module")
def model() -> EditorModel:
    torch.manual_seed(0)
    return EditorModel(tiny_editor_config()).eval()


def _run(model: EditorModel, mode: str) -> tuple[dict[str, torch.Tensor], list[torch.dtype]]:
    """Encode + render one view in ``mode``; the outputs and the input dtypes seen by two encoder convolutions: the
    one on the pixel coordinates and E_t's first."""
    seen: list[torch.dtype] = []
    convs = (model.encoder.encoder.conv1, model.encoder.Final_encoder.net[0])
    hooks = [conv.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].dtype)) for conv in convs]
    torch.manual_seed(1)
    x, ref = torch.rand(1, 3, 512, 512) * 2 - 1, torch.randn(1, 3, 224, 224)
    model.inference.precision = mode
    try:
        with torch.inference_mode():
            planes = model.encode(x, ref)
            out = model.render(planes, cameras.camera(*cameras.from_degrees(20.0, 0.0)))
    finally:
        model.inference.precision = "exact"
        for hook in hooks:
            hook.remove()
    return {"planes": planes, **out}, seen


def test_fast_runs_bfloat16_where_native(model, native):
    native(True)
    exact, seen_exact = _run(model, "exact")
    fast, seen_fast = _run(model, "fast")
    assert seen_exact == [torch.float32, torch.float32]
    assert seen_fast == [torch.float32, torch.bfloat16]  # pixel coordinates stay float32
    for key in ("planes", "image", "image_raw", "image_depth"):
        assert fast[key].dtype == torch.float32, key
        error = (fast[key] - exact[key]).abs().max()
        assert 0 < error < 0.05 * exact[key].abs().max(), (key, error)
    model.inference.precision = "fast"
    assert model.describe_inference().startswith(
        "cpu bf16 (fast precision: native AVX512-BF16; pixel coordinates and volume rendering fp32), ")
    model.inference.precision = "exact"


def test_fast_falls_back_to_fp32_without_native_bf16(model, native):
    native(False)
    exact, _ = _run(model, "exact")
    fast, seen = _run(model, "fast")
    assert seen == [torch.float32, torch.float32]
    for key in exact:
        assert torch.equal(fast[key], exact[key]), key
    model.inference.precision = "fast"
    assert model.describe_inference() == ("cpu fp32 (fast precision: no native bf16 on this CPU), channels-last token "
                                          "grids, fused volume rendering, folded channels-last SR")
    model.inference.precision = "exact"
    assert model.describe_inference().startswith("cpu fp32, ")


def test_detection_reads_the_cpu_flags(monkeypatch):
    assert precision.parse_cpu_flags(X86_CPUINFO) >= {"avx2", "avx512_bf16"}
    assert "bf16" in precision.parse_cpu_flags(ARM_CPUINFO)
    assert precision.parse_cpu_flags("processor\t: 0\n") == frozenset()
    for info, expected in ((X86_CPUINFO, ["AVX512-BF16"]), (ARM_CPUINFO, ["BF16"]),
                           ("flags\t: fpu avx2 avx512f\n", [])):
        monkeypatch.setattr(precision, "cpu_flags", lambda info=info: precision.parse_cpu_flags(info))
        assert precision.native_bf16_features() == expected
        assert precision.native_bf16("cpu") == bool(expected)
        assert precision.recommended_precision("cpu") == ("fast" if expected else "exact")
        assert precision.reduced_dtype("fast", "cpu") == (torch.bfloat16 if expected else None)
        assert precision.reduced_dtype("exact", "cpu") is None
    assert precision.recommended_precision("meta") == "exact"


def test_unknown_precisions_are_refused(tiny_weights, model):
    with pytest.raises(precision.PrecisionError, match="unknown precision 'turbo'.*'exact'.*'fast'"):
        InferenceOptions(precision="turbo")
    with pytest.raises(precision.PrecisionError, match="unknown precision"):
        model.inference.precision = "bf16"
    assert model.inference.precision == "exact"
    with pytest.raises(precision.PrecisionError, match="unknown precision"):
        PortraitEditor.from_pretrained(tiny_weights / "missing-folder", precision="half")  # refused before loading


def test_editor_precision_from_pretrained_and_settable(tiny_weights, astronaut_photo, native):
    native(True)
    editor = PortraitEditor.from_pretrained(tiny_weights, precision="fast")
    assert editor.precision == "fast" and editor.model.inference.precision == "fast"
    result = editor(astronaut_photo, reference=astronaut_photo, aligned=True)
    assert result.execution.startswith("cpu bf16 (fast precision")
    editor.precision = "exact"
    assert result.execution.startswith("cpu fp32, ")
    assert PortraitEditor.from_pretrained(tiny_weights).precision == "exact"  # the Python API's default


def test_generator_fast_precision(native):
    native(True)
    torch.manual_seed(0)
    generator = TriPlaneGenerator(tiny_generator_config()).eval()
    z, c = torch.randn(1, generator.cfg.z_dim), cameras.frontal_camera()
    with torch.inference_mode():
        exact = generator(z, c)
        generator.inference.precision = "fast"
        fast = generator(z, c)
    assert fast["planes"].dtype == fast["image"].dtype == torch.float32
    for key in ("planes", "image"):
        error = (fast[key] - exact[key]).abs().max()
        assert 0 < error < 0.05 * exact[key].abs().max(), (key, error)


def test_cli_precision_flag(tiny_weights, astronaut_photo, tmp_path, capsys, native, monkeypatch):
    native(True)
    assert main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
                 str(astronaut_photo), "--aligned", "--out", str(tmp_path / "edit"), "--precision", "fast"]) == 0
    assert "ran on: cpu bf16 (fast precision: native AVX512-BF16;" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["edit", "--weights", str(tiny_weights), "--input", str(astronaut_photo), "--reference",
              str(astronaut_photo), "--out", str(tmp_path / "bad"), "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err

    loaded = []
    load = TriPlaneGenerator.from_pretrained
    monkeypatch.setattr(TriPlaneGenerator, "from_pretrained", lambda path: loaded.append(load(path)) or loaded[-1])
    assert main(["render", "--weights", str(tiny_weights / "ffhqrebalanced512-128.safetensors"), "--out",
                 str(tmp_path / "render"), "--seeds", "0", "--precision", "fast"]) == 0
    assert [generator.inference.precision for generator in loaded] == ["fast"]
    assert (tmp_path / "render" / "seed0000_views.png").is_file()
