"""Comparisons used by the golden tests (tolerances from ../shared/golden/README.md)."""
from __future__ import annotations

import numpy as np
import torch

RTOL = ATOL = 1e-4

# Reduced-precision inference (``model.inference.autocast``) is not golden-equal; these are its bounds on max |diff|
# against the golden arrays: about 2.5x what the public case measured on the CPU (AMX bf16 / fp16 autocast, torch
# 2.13): bf16 triplanes 0.028, image 0.022, image_raw 0.0044, image_depth 0.0013, weight_total 0.0023; fp16 0.0041,
# 0.0030, 0.00067, 0.00034, 0.00044. tests/test_gpu.py holds CUDA to the same bounds.
REDUCED_PRECISION_BOUNDS = {
    "bf16": {"triplanes": 0.07, "image": 0.06, "image_raw": 0.012, "image_depth": 0.004, "weight_total": 0.006},
    "fp16": {"triplanes": 0.012, "image": 0.008, "image_raw": 0.002, "image_depth": 0.001, "weight_total": 0.0012},
}


def assert_close(name: str, actual: torch.Tensor | np.ndarray, expected: np.ndarray) -> float:
    """``numpy.allclose`` at the README's rtol = atol = 1e-4; returns the max |difference| (for reports)."""
    actual = np.asarray(actual.detach().cpu() if isinstance(actual, torch.Tensor) else actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert np.allclose(actual, expected, rtol=RTOL, atol=ATOL), f"{name}: max |diff| {diff:.3g}"
    return diff


def assert_stats(name: str, actual: torch.Tensor, stats: dict) -> None:
    """Full-tensor statistics (mean, std, sum/numel, abs_sum/numel) within atol 1e-4."""
    x = actual.detach().double()
    assert list(x.shape) == stats["shape"], f"{name}: shape {list(x.shape)} != {stats['shape']}"
    n = x.numel()
    got = {"mean": x.mean().item(), "std": x.std().item(), "sum": x.sum().item() / n, "abs_sum": x.abs().sum().item() / n}
    want = {"mean": stats["mean"], "std": stats["std"], "sum": stats["sum"] / n, "abs_sum": stats["abs_sum"] / n}
    for key in got:
        assert abs(got[key] - want[key]) <= ATOL, f"{name}.{key}: {got[key]} != {want[key]}"


def reduced_precision_errors(model, case: dict, dtype: torch.dtype) -> dict[str, float]:
    """Max |diff| against an editor case of ``model`` (an EditorModel) encoding and rendering its views under
    ``inference.autocast = dtype``; the option is restored afterwards."""
    device = next(model.parameters()).device
    saved, model.inference.autocast = model.inference.autocast, dtype
    try:
        with torch.inference_mode():
            planes = model.encode(torch.from_numpy(case["input_tensor"]).to(device),
                                  torch.from_numpy(case["ref_tensor_mae"]).to(device))
            out = model.render(planes, torch.from_numpy(case["cams"]).to(device))
    finally:
        model.inference.autocast = saved
    errors = {"triplanes": planes[:, :, ::4, ::4].cpu() - torch.from_numpy(case["triplanes_sub4"])}
    errors.update({key: out[key].cpu() - torch.from_numpy(case[key]) for key in REDUCED_PRECISION_BOUNDS["bf16"]
                   if key != "triplanes"})
    return {key: float(error.abs().max()) for key, error in errors.items()}
