"""The released weight formats and the project's own, read safely (:mod:`threedpe.weights.unpickler`).

Formats read (never by full unpickling; nothing in a file is imported or executed):

* NVIDIA's EG3D network pickle (``ffhqrebalanced512-128.pkl``): a plain pickle whose networks were
  written by EG3D's ``torch_utils.persistence`` (each module reduced to
  ``_reconstruct_persistent_obj(meta)`` with the module's Python source and ``__dict__`` in ``meta``).
  A restricted unpickler rebuilds tensors and plain data and turns modules into inert records.
* 3DPE's converted EG3D file (``ffhqrebalanced512-128.pth``): ``torch.save`` of ``G_init_args``,
  ``G_init_kwargs``, ``G`` (state dict), ``G_neural_rendering_resolution``, ``G_renderinig_kwargs``
  (sic) and the discriminator's counterparts.
* 3DPE / Live3D checkpoints (``3dpe.pt``, ``encoder_render_*.pt``): ``encoder_state_dict`` and
  ``renderer_state_dict``, and ``config`` (the architecture, as in our JSON) when :mod:`threedpe.training.train`
  wrote one for a model that is not the released one (training-only entries are ignored).
* The project's own format: ``<name>.safetensors`` (tensors) next to ``<name>.json`` (config).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from threedpe.files import atomic_write
from threedpe.weights import CheckpointError, missing_error
from threedpe.weights.unpickler import ModuleRecord, read_file


@dataclass(frozen=True)
class EG3DCheckpoint:
    """EG3D ``TriPlaneGenerator`` weights (``G_ema``) and the JSON-able settings it was built with."""

    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    neural_rendering_resolution: int
    rendering_kwargs: dict[str, Any]


@dataclass(frozen=True)
class ThreeDPECheckpoint:
    """3DPE editor or Live3D reconstruction network: image-to-triplane encoder and triplane renderer weights."""

    encoder_state_dict: dict[str, torch.Tensor]
    renderer_state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None  # architecture (EditorConfig/ReconstructionConfig.to_dict()); None = released


EDITOR_MODEL = "3dpe"  # the 3DPE editor (3dpe.pt): its encoder has the Ref_encoder.* weights
RECONSTRUCTION_MODEL = "live3d"  # Live3D's reconstruction network (encoder_render_LT_*.pt): no Ref_encoder
MODEL_NAMES = {EDITOR_MODEL: "a 3DPE editor (3dpe.pt)",
               RECONSTRUCTION_MODEL: "a Live3D reconstruction network (encoder_render_LT_*.pt, no Ref_encoder weights)"}


def checkpoint_model(checkpoint: ThreeDPECheckpoint) -> str:
    """Which network a 3DPE/Live3D checkpoint holds, :data:`EDITOR_MODEL` or :data:`RECONSTRUCTION_MODEL`.

    Released files are told apart by their keys (only the editor has ``Ref_encoder.*``); our files also
    name the model in their config, which must agree with the keys.
    """
    by_keys = EDITOR_MODEL if any(key.startswith("Ref_encoder.") for key in checkpoint.encoder_state_dict) else RECONSTRUCTION_MODEL
    stated = (checkpoint.config or {}).get("model", by_keys)
    if stated not in MODEL_NAMES:
        raise CheckpointError(f"unknown model {stated!r} in the checkpoint config (expected one of {sorted(MODEL_NAMES)})")
    if stated != by_keys:
        raise CheckpointError(f"the checkpoint config says {MODEL_NAMES[stated]}, but its weights are those of {MODEL_NAMES[by_keys]}")
    return stated


def require_model(checkpoint: ThreeDPECheckpoint, expected: str) -> None:
    """Raise a ``CheckpointError`` unless ``checkpoint`` holds the ``expected`` network."""
    found = checkpoint_model(checkpoint)
    if found != expected:
        raise CheckpointError(f"this checkpoint holds {MODEL_NAMES[found]}, but {MODEL_NAMES[expected]} was expected")


Checkpoint = EG3DCheckpoint | ThreeDPECheckpoint

FORMAT_NAME = "threedpe-checkpoint"
FORMAT_VERSION = 1
_KINDS = {EG3DCheckpoint: "eg3d", ThreeDPECheckpoint: "3dpe"}
_KIND_NAMES = {
    "eg3d": "an EG3D generator checkpoint (ffhqrebalanced512-128.pkl or .pth)",
    "3dpe": "a 3DPE/Live3D encoder+renderer checkpoint (3dpe.pt, encoder_render_*.pt)",
}


# ---------------------------------------------------------------------------------------------
# Interpreting what was read.


def _plain(value: Any, where: str) -> Any:
    """JSON-able copy of config data (EasyDicts -> dicts, tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise CheckpointError(f"config entry '{where}' has non-string keys")
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, np.generic):
        return _plain(value.item(), where)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"config entry '{where}' is a {type(value).__name__}, not JSON data")


def _tensor_dict(value: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise CheckpointError(f"'{where}' is not a state dict (str -> tensor)")
    return dict(value)


def _module_state_dict(record: ModuleRecord, prefix: str = "", out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Flatten a module record like ``nn.Module.state_dict()``: parameters, persistent buffers, children."""
    out = {} if out is None else out
    state = record.state
    skipped = state.get("_non_persistent_buffers_set", set())
    for table in ("_parameters", "_buffers"):
        for name, tensor in state.get(table, {}).items():
            if tensor is None or (table == "_buffers" and name in skipped):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"module entry '{prefix}{name}' is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor
    for name, child in state.get("_modules", {}).items():
        if child is None:
            continue
        if not isinstance(child, ModuleRecord):
            raise CheckpointError(f"submodule '{prefix}{name}' is a {type(child).__name__}, not a module")
        _module_state_dict(child, f"{prefix}{name}.", out)
    return out


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(repr(key) for key in list(obj)[:8])
        return f"a dict with keys [{keys}{', ...' if len(obj) > 8 else ''}]"
    return f"a {type(obj).__name__}"


def _require(obj: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in obj]
    if missing:
        raise CheckpointError(f"{path} looks like a damaged checkpoint: it lacks {', '.join(map(repr, missing))}")


def _interpret(obj: Any, path: Path) -> Checkpoint:
    """Turn what a released file holds into a checkpoint dataclass (kind detected from its keys)."""
    if isinstance(obj, dict) and "G_ema" in obj:  # NVIDIA's network pickle
        record = obj["G_ema"]
        if not isinstance(record, ModuleRecord):
            raise CheckpointError(f"{path}: 'G_ema' is {_describe(record)}, expected a pickled network")
        _require(record.state, ("_init_args", "_init_kwargs", "rendering_kwargs", "neural_rendering_resolution"), path)
        init_args, init_kwargs = record.state["_init_args"], record.state["_init_kwargs"]
        resolution, rendering_kwargs = record.state["neural_rendering_resolution"], record.state["rendering_kwargs"]
        state_dict = _module_state_dict(record)
    elif isinstance(obj, dict) and "G_init_kwargs" in obj:  # 3DPE's torch-saved conversion
        _require(obj, ("G_init_args", "G", "G_neural_rendering_resolution", "G_renderinig_kwargs"), path)
        init_args, init_kwargs = obj["G_init_args"], obj["G_init_kwargs"]
        resolution, rendering_kwargs = obj["G_neural_rendering_resolution"], obj["G_renderinig_kwargs"]
        state_dict = _tensor_dict(obj["G"], "G")
    elif isinstance(obj, dict) and "encoder_state_dict" in obj:
        _require(obj, ("renderer_state_dict",), path)
        config = obj.get("config")  # written by threedpe.training.train: the architecture, when it is not the released one
        return ThreeDPECheckpoint(_tensor_dict(obj["encoder_state_dict"], "encoder_state_dict"),
                                  _tensor_dict(obj["renderer_state_dict"], "renderer_state_dict"),
                                  _plain(config, "config") if isinstance(config, dict) else None)
    else:
        raise CheckpointError(f"{path} is not a known checkpoint: found {_describe(obj)}; expected "
                              f"{_KIND_NAMES['eg3d']} or {_KIND_NAMES['3dpe']}")
    if tuple(init_args) != ():
        raise CheckpointError(f"{path}: the generator was built with positional arguments {init_args!r:.80}, "
                              "only keyword arguments are supported")
    resolution = _plain(resolution, "neural_rendering_resolution")
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise CheckpointError(f"{path}: neural_rendering_resolution is {resolution!r:.40}, expected an int")
    return EG3DCheckpoint(_plain(init_kwargs, "init_kwargs"), state_dict, resolution, _plain(rendering_kwargs, "rendering_kwargs"))


# ---------------------------------------------------------------------------------------------
# The project's own format: <name>.safetensors + <name>.json.


def _pair_paths(path: Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for ``path`` given with either suffix or none."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


def _find_pair(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise CheckpointError(f"{path} should hold exactly one <name>.safetensors + <name>.json pair, found {len(found)} .safetensors files")
        path = found[0]
    weights, config = _pair_paths(path)
    for part in (weights, config):
        if not part.is_file():
            raise missing_error(part.name, part.parent, None)
    return weights, config


def _read_own(path: Path) -> Checkpoint:
    weights_path, config_path = _find_pair(path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path} is truncated or corrupt ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path} is not a threedpe checkpoint config (no \"format\": \"{FORMAT_NAME}\")")
    if config.get("format_version") != FORMAT_VERSION or config.get("kind") not in _KIND_NAMES:
        raise CheckpointError(f"{config_path}: unsupported format_version {config.get('format_version')!r} or kind {config.get('kind')!r}")
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights_path} is truncated or corrupt ({error})") from None
    if config["kind"] == "eg3d":
        settings = config.get("config", {})
        _require(settings, ("init_kwargs", "neural_rendering_resolution", "rendering_kwargs"), config_path)
        return EG3DCheckpoint(settings["init_kwargs"], tensors, settings["neural_rendering_resolution"], settings["rendering_kwargs"])
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "renderer": {}}
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        if part not in parts or not key:
            raise CheckpointError(f"{weights_path}: tensor '{name}' is neither 'encoder.*' nor 'renderer.*'")
        parts[part][key] = tensor
    return ThreeDPECheckpoint(parts["encoder"], parts["renderer"], config.get("config") or None)


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike, source: str | None = None) -> Path:
    """Write ``checkpoint`` as ``<stem>.safetensors`` + ``<stem>.json`` (``path`` with or without suffix).

    ``source`` (e.g. the original file name) is recorded in the JSON for provenance. Returns the
    ``.safetensors`` path.
    """
    weights_path, config_path = _pair_paths(Path(path))
    if isinstance(checkpoint, EG3DCheckpoint):
        tensors = dict(checkpoint.state_dict)
        settings = {"init_kwargs": checkpoint.init_kwargs, "neural_rendering_resolution": checkpoint.neural_rendering_resolution,
                    "rendering_kwargs": checkpoint.rendering_kwargs}
    else:
        tensors = {**{f"encoder.{k}": v for k, v in checkpoint.encoder_state_dict.items()},
                   **{f"renderer.{k}": v for k, v in checkpoint.renderer_state_dict.items()}}
        settings = {**(checkpoint.config or {}), "model": checkpoint_model(checkpoint)}
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": _KINDS[type(checkpoint)], "source": source, "config": settings}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    staged_weights, staged_config = weights_path.with_name(weights_path.name + ".tmp"), config_path.with_name(config_path.name + ".tmp")
    save_file({name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}, staged_weights)
    staged_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(staged_weights, weights_path)
    os.replace(staged_config, config_path)
    return weights_path


def save_official(checkpoint: ThreeDPECheckpoint, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``checkpoint`` in the official layout, ``torch.save({"encoder_state_dict", "renderer_state_dict"})``
    (as ``3dpe.pt``), with its ``config`` and the JSON-able ``extra`` entries beside them (the official code ignores
    them); atomically. Returns ``path``."""
    path = Path(path)
    data = {"encoder_state_dict": {k: v.detach().cpu() for k, v in checkpoint.encoder_state_dict.items()},
            "renderer_state_dict": {k: v.detach().cpu() for k, v in checkpoint.renderer_state_dict.items()},
            "config": {**(checkpoint.config or {}), "model": checkpoint_model(checkpoint)}, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: torch.save(data, file))
    return path


# ---------------------------------------------------------------------------------------------
# Public readers.


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported weight file; the kind (EG3D or 3DPE) is detected from its contents.

    ``path`` is a ``.pkl`` / ``.pth`` / ``.pt`` file, or our ``.safetensors`` / ``.json`` file (or a
    folder holding one such pair). Tensors come back on the CPU in their stored dtype.
    """
    path = Path(path).expanduser()
    if path.suffix in (".safetensors", ".json") or path.is_dir():
        return _read_own(path)
    return _interpret(read_file(path), path)


def _read_kind(path: str | os.PathLike, expected: type) -> Any:
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, expected):
        raise CheckpointError(f"{path} is {_KIND_NAMES[_KINDS[type(checkpoint)]]}, "
                              f"but {_KIND_NAMES[_KINDS[expected]]} was expected")
    return checkpoint


def load_eg3d(path: str | os.PathLike) -> EG3DCheckpoint:
    """EG3D generator weights from NVIDIA's ``.pkl`` (``G_ema``), 3DPE's ``.pth`` (``G``) or our format."""
    return _read_kind(path, EG3DCheckpoint)


def load_3dpe(path: str | os.PathLike) -> ThreeDPECheckpoint:
    """Encoder and renderer weights from ``3dpe.pt`` / Live3D ``encoder_render_*.pt`` or our format."""
    return _read_kind(path, ThreeDPECheckpoint)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``torch.save``-d state dict (e.g. ``alex_lin.pth``, ``model_ir_se50.pth``), read as safely as the
    released checkpoints (weights-only, or the restricted unpickler); tensors on the CPU."""
    path = Path(path).expanduser()
    return _tensor_dict(read_file(path), path.name)


def convert(source: str | os.PathLike, destination: str | os.PathLike | None = None) -> Path:
    """Convert a released weight file to ``<name>.safetensors`` + ``<name>.json``; returns the ``.safetensors`` path.

    ``destination``: an existing folder (the name is the source's stem), a ``<dir>/<name>`` target
    with or without suffix, or ``None`` (next to the source).
    """
    source = Path(source).expanduser()
    checkpoint = read_checkpoint(source)
    if destination is None:
        target = source.parent / source.stem
    else:
        destination = Path(destination).expanduser()
        target = destination / source.stem if destination.is_dir() else destination
    return save_checkpoint(checkpoint, target, source=source.name)


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model", show: int = 8) -> None:
    """Strictly load ``state_dict`` into ``module``; on any mismatch raise one ``CheckpointError`` that
    lists the first ``show`` missing keys, unexpected keys and shape mismatches (with counts)."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [f"{key} (checkpoint {tuple(state_dict[key].shape)} vs model {tuple(tensor.shape)})"
                  for key, tensor in expected.items() if key in state_dict and state_dict[key].shape != tensor.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... and {len(items) - show} more" if len(items) > show else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    if problems:
        raise CheckpointError(f"{what}: the weights do not fit the model; " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)
