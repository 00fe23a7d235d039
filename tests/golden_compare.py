"""Comparisons used by the golden tests (tolerances from ../shared/golden/README.md)."""
from __future__ import annotations

import numpy as np
import torch

RTOL = ATOL = 1e-4


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
