"""The golden fixtures' weight recipe (../shared/golden/README.md, "Fill recipe").

Every floating-point entry that is not an excluded constant is drawn from
``numpy.random.default_rng(crc32(name)).standard_normal(shape) * std(name, shape)``.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch

EG3D_STYLE = re.compile(r"^(backbone\.|superresolution\.|decoder\.net\.|const$)")


def recipe_std(name: str, shape: tuple[int, ...]) -> float:
    """Standard deviation of the recipe for one state-dict entry (first matching rule wins)."""
    if EG3D_STYLE.search(name):
        if re.search(r"^backbone\.mapping\.fc\d+\.weight$", name):
            return 100.0
        if re.search(r"^decoder\.net\.\d+\.weight$", name):
            return 2.0
        if re.search(r"\.bias$", name) or re.search(r"noise_strength$", name):
            return 0.1
        return 1.0
    if re.search(r"norm\d*\.weight$", name):
        return 1.0
    fan_in = math.prod(shape[1:]) if len(shape) >= 2 else 0
    if re.search(r"^Final_encoder\.output_net\.9\.weight$", name):
        return 2.0 / math.sqrt(fan_in)
    if len(shape) >= 2:
        return 1.0 / math.sqrt(fan_in)
    return 0.02


def recipe_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(recipe_std(name, shape))
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape))


def load_manifest(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "manifest.json").read_text())


def fill_state_dict(entries: list[dict], constants: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict in the manifest's key order; excluded entries are taken from ``constants``
    (the values our own model constructs), everything else from the recipe."""
    filled: dict[str, torch.Tensor] = {}
    for entry in entries:
        name, shape = entry["name"], tuple(entry["shape"])
        if entry["fill"] == "recipe":
            filled[name] = recipe_tensor(name, shape)
        else:
            filled[name] = constants[name].detach().clone().float()
    return filled


def check_sums(entries: list[dict], state: dict[str, torch.Tensor]) -> list[str]:
    """Names whose float64 sum/abs_sum disagree with the manifest (rtol 1e-6)."""
    bad = []
    for entry in entries:
        values = state[entry["name"]].double()
        if not (math.isclose(values.sum().item(), entry["sum"], rel_tol=1e-6, abs_tol=1e-6)
                and math.isclose(values.abs().sum().item(), entry["abs_sum"], rel_tol=1e-6, abs_tol=1e-6)):
            bad.append(entry["name"])
    return bad


def recipe_encoder_renderer(manifest_path: Path, blank: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``encoder_state_dict`` and ``renderer_state_dict`` of a manifest (``manifest.json``, ``live3d_manifest.json``)
    from the recipe; ``blank`` (a model with ``encoder`` and ``renderer``) must have the same keys and shapes and
    gives the excluded constants. Every entry's sums are checked."""
    manifest = json.loads(manifest_path.read_text())
    state = {}
    for part, module in (("encoder_state_dict", blank.encoder), ("renderer_state_dict", blank.renderer)):
        entries = manifest["state_dicts"][part]
        own = module.state_dict()
        assert {e["name"]: tuple(e["shape"]) for e in entries} == {k: tuple(v.shape) for k, v in own.items()}, part
        state[part] = fill_state_dict(entries, own)
        bad = check_sums(entries, state[part])
        assert bad == [], f"{part}: recipe sums differ for {bad[:5]}"
    return state
