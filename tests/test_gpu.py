"""CUDA checks: a tiny end-to-end smoke run, the golden fixtures in fp32 (TF32 off) on both paths, and the stated
bounds of bf16/fp16 autocast. The whole module is skipped where CUDA is absent, so it never fails a CPU-only CI.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.golden_compare import REDUCED_PRECISION_BOUNDS, assert_close, exceeded, reduced_precision_errors
from tests.golden_recipe import recipe_encoder_renderer
from threedpe.models.editor import EditorConfig, EditorModel
from threedpe.pipeline import PortraitEditor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def strict_fp32():
    """True float32 on CUDA (the golden tolerances assume it): TF32 off for matmuls and convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def cuda_editor(golden_dir, strict_fp32) -> EditorModel:
    model = EditorModel(EditorConfig())
    state = recipe_encoder_renderer(golden_dir / "manifest.json", model)
    model.encoder.load_state_dict(state["encoder_state_dict"])
    model.renderer.load_state_dict(state["renderer_state_dict"])
    return model.eval().to("cuda")


def test_tiny_edit_views_video_and_mesh_on_cuda(tiny_weights, astronaut_photo, tmp_path):
    editor = PortraitEditor.from_pretrained(tiny_weights, device="cuda", cache_dir=tmp_path / "cache")
    result = editor(astronaut_photo, reference=astronaut_photo)
    assert result.planes.is_cuda and result.execution.startswith("cuda fp32, channels-last encoder")
    front, draft = result.view(), result.view(preview=True)
    assert front.size == draft.size == (128, 128)
    strip = result.strip()  # three views in one batch on CUDA
    assert np.array_equal(np.asarray(strip)[:, 128:256], np.asarray(front))
    assert result.video(tmp_path / "orbit.mp4", num_frames=4, batch=2).stat().st_size > 0
    [mesh] = result.mesh(tmp_path / "head.glb", resolution=32)
    assert mesh.stat().st_size > 0


@pytest.mark.golden
@pytest.mark.parametrize("fast", [True, False])
def test_golden_editor_in_fp32_on_cuda(cuda_editor, golden_dir, fast):
    cuda_editor.inference.fast = fast
    try:
        for path in sorted(p for p in golden_dir.glob("editor_*.npz") if not p.stem.endswith("_intermediates")):
            case = dict(np.load(path))
            with torch.inference_mode():
                planes = cuda_editor.encode(torch.from_numpy(case["input_tensor"]).cuda(),
                                            torch.from_numpy(case["ref_tensor_mae"]).cuda())
                out = cuda_editor.render(planes, torch.from_numpy(case["cams"]).cuda())
            assert_close("triplanes_sub4", planes[:, :, ::4, ::4], case["triplanes_sub4"])
            for key in ("image", "image_raw", "image_depth", "weight_total"):
                assert_close(key, out[key], case[key])
    finally:
        cuda_editor.inference.fast = True


@pytest.mark.golden
@pytest.mark.parametrize("mode", ["bf16", "fp16", "fast"])
def test_reduced_precision_bound_on_cuda(cuda_editor, golden_dir, mode):
    """bf16 / fp16 autocast, and precision "fast" (bf16 on a GPU that computes it natively), within the CPU's bounds."""
    options = {"bf16": {"autocast": torch.bfloat16}, "fp16": {"autocast": torch.float16}, "fast": {"precision": "fast"}}
    case = dict(np.load(golden_dir / "editor_3dpe.npz"))
    errors = reduced_precision_errors(cuda_editor, case, **options[mode])
    assert exceeded(errors, REDUCED_PRECISION_BOUNDS["fp16" if mode == "fp16" else "bf16"]) == {}, errors
