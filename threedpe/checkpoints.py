"""Reading the released weight files safely, the project's own format, and finding weight files.

Formats read (never by full unpickling; nothing in a file is imported or executed):

* NVIDIA's EG3D network pickle (``ffhqrebalanced512-128.pkl``): a plain pickle whose networks were
  written by EG3D's ``torch_utils.persistence`` (each module reduced to
  ``_reconstruct_persistent_obj(meta)`` with the module's Python source and ``__dict__`` in ``meta``).
  A restricted unpickler rebuilds tensors and plain data and turns modules into inert records.
* 3DPE's converted EG3D file (``ffhqrebalanced512-128.pth``): ``torch.save`` of ``G_init_args``,
  ``G_init_kwargs``, ``G`` (state dict), ``G_neural_rendering_resolution``, ``G_renderinig_kwargs``
  (sic) and the discriminator's counterparts.
* 3DPE / Live3D checkpoints (``3dpe.pt``, ``encoder_render_*.pt``): ``encoder_state_dict`` and
  ``renderer_state_dict``, and ``config`` (the architecture, as in our JSON) when :mod:`threedpe.train` wrote
  one for a model that is not the released one (training-only entries are ignored).
* The project's own format: ``<name>.safetensors`` (tensors) next to ``<name>.json`` (config).

Torch files are read with ``torch.load(weights_only=True)``; when that refuses a harmless type
(e.g. EG3D's ``EasyDict``), the same restricted unpickler reads the zip archive instead.
"""
from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from threedpe.files import atomic_write


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, unsafe, or not the checkpoint that was expected."""


class MissingWeightsError(CheckpointError):
    """A weight file could be found neither locally nor on the Hugging Face Hub; ``filename`` names it and
    ``folder`` is where it was looked for."""

    def __init__(self, message: str, filename: str | None = None, folder: Path | None = None):
        super().__init__(message)
        self.filename, self.folder = filename, folder


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
# Restricted unpickling: only tensors, plain data and inert stand-ins ever come out of a file.


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (EG3D's dict with attribute access); a plain dict here."""


class _ModuleRecord:
    """Stand-in for a pickled ``nn.Module``: the class it named and its ``__dict__`` (``state``)."""

    type_name = "torch.nn.Module"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"pickled module {self.type_name} has a {type(state).__name__} state, expected a dict")
        self.state = state


_RECORD_CLASSES: dict[str, type[_ModuleRecord]] = {}


def _record_class(type_name: str) -> type[_ModuleRecord]:
    """A ``_ModuleRecord`` subclass remembering ``type_name`` (pickle builds it with ``cls.__new__``)."""
    if type_name not in _RECORD_CLASSES:
        _RECORD_CLASSES[type_name] = type("_ModuleRecord", (_ModuleRecord,), {"type_name": type_name})
    return _RECORD_CLASSES[type_name]


def _reconstruct_persistent_obj(meta: Any) -> _ModuleRecord:
    """Stand-in for EG3D's persistence reconstructor: keeps ``meta['state']``, ignores ``module_src``."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)):
        raise CheckpointError("malformed EG3D persistent object (expected type='class' and a class_name)")
    record_class = _record_class(meta["class_name"])
    record = record_class.__new__(record_class)
    record.__setstate__(meta.get("state"))
    return record


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only the element type is kept."""

    dtype: torch.dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _refused_global(qualified: str) -> CheckpointError:
    return CheckpointError(f"refusing to load: the file references the global '{qualified}', which is not weights or plain data")


def _torch_load_weights_only(source: Path | io.BytesIO) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; its refusal of a global becomes a ``CheckpointError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated" for bare storages
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise
        found = re.search(r"GLOBAL (\S+)", str(error))
        raise (_refused_global(found.group(1)) if found else CheckpointError("refusing to load: it holds more than weights and plain data")) from None


def _flat_from_storage_bytes(data: bytes) -> torch.Tensor:
    """Stand-in for ``torch.storage._load_from_bytes``: a legacy ``torch.save`` of one storage -> 1-D tensor."""
    storage = _torch_load_weights_only(io.BytesIO(data))
    if not isinstance(storage, torch.TypedStorage):
        raise CheckpointError(f"a pickled storage holds a {type(storage).__name__}, expected a tensor storage")
    return torch.empty(0, dtype=storage.dtype).set_(storage)


def _rebuild_tensor(flat: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *metadata: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a strided view of a 1-D storage tensor."""
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        raise CheckpointError("a pickled tensor does not refer to a tensor storage")
    if hooks:
        raise CheckpointError("a pickled tensor carries backward hooks")
    return flat.as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, *state: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: the parameter's data tensor."""
    if not isinstance(data, torch.Tensor) or hooks:
        raise CheckpointError("malformed pickled parameter")
    return data


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """Stand-in for ``_codecs.encode``, which pickle protocol 2 uses to write ``bytes``."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise CheckpointError("unexpected use of _codecs.encode in a pickle")
    return text.encode("latin1")


def _numpy_scalar_constructor() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


_SAFE_GLOBALS: dict[str, Any] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent_obj,
    "dnnlib.util.EasyDict": _EasyDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.storage._load_from_bytes": _flat_from_storage_bytes,
    "collections.OrderedDict": OrderedDict,
    "_codecs.encode": _latin1_bytes,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "numpy.core.multiarray.scalar": _numpy_scalar_constructor(),
    "numpy._core.multiarray.scalar": _numpy_scalar_constructor(),
    "numpy.dtype": np.dtype,
}
# Plain (non-persistent) torch.nn.Module classes EG3D's networks hold; pickled by name, rebuilt as records.
_EG3D_PLAIN_MODULES = {
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals, all to data or inert stand-ins.

    ``load_storage(storage_type, key, numel)`` serves torch-zip persistent ids; without it any
    persistent id is refused.
    """

    def __init__(self, file: io.BufferedIOBase, load_storage: Callable[[_StorageType, str, int], torch.Tensor] | None = None):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save) spell globals the Python 2 way, e.g. __builtin__.set.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        qualified = f"{module}.{name}"
        if qualified in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module.startswith("torch.nn.modules.") and name.isidentifier()) or qualified in _EG3D_PLAIN_MODULES:
            return _record_class(qualified)
        raise _refused_global(qualified)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if self._load_storage is None:
            raise CheckpointError("refusing to load: unexpected persistent id in a plain pickle")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"refusing to load: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        return self._load_storage(storage_type, str(key), int(numel))


def _read_torch_zip_restricted(path: Path) -> Any:
    """Read a ``torch.save`` zip archive with ``_RestrictedUnpickler`` (storages become 1-D tensors)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a torch checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
            raise CheckpointError(f"{path} was saved on a big-endian machine, which is not supported")
        storages: dict[str, torch.Tensor] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> torch.Tensor:
            if key not in storages:
                raw = bytearray(archive.read(f"{prefix}data/{key}"))
                flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
                if flat.numel() != numel:
                    raise CheckpointError(f"{path}: storage {key} holds {flat.numel()} elements, expected {numel}")
                storages[key] = flat
            return storages[key]

        return _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


_TORCH_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _read_file(path: Path) -> Any:
    """Deserialize a torch file or a plain pickle safely; every failure becomes a ``CheckpointError``."""
    if not path.is_file():
        raise _missing_error(path.name, path.parent, None) if not path.exists() else CheckpointError(f"{path} is not a file")
    with path.open("rb") as handle:
        head = handle.read(len(_TORCH_LEGACY_MAGIC))
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or copy was probably interrupted")
    is_zip = head.startswith(b"PK\x03\x04")
    if not (is_zip or head.startswith(_TORCH_LEGACY_MAGIC) or re.match(rb"\x80[\x02-\x05]", head)):
        raise CheckpointError(f"{path} is not a checkpoint: it is neither a torch file nor a pickle (starts with {head[:8]!r})")
    try:
        if not (is_zip or head.startswith(_TORCH_LEGACY_MAGIC)):
            with path.open("rb") as handle:
                return _RestrictedUnpickler(handle).load()
        try:
            return _torch_load_weights_only(path)
        except CheckpointError:  # a type torch refuses: zip archives get the restricted unpickler instead
            if not is_zip:
                raise
            return _read_torch_zip_restricted(path)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
    except Exception as error:  # any parse failure of untrusted bytes means the file is damaged
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}: {str(error)[:200]})") from None


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


def _module_state_dict(record: _ModuleRecord, prefix: str = "", out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
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
        if not isinstance(child, _ModuleRecord):
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
        if not isinstance(record, _ModuleRecord):
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
        config = obj.get("config")  # written by threedpe.train: the architecture, when it is not the released one
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
            raise _missing_error(part.name, part.parent, None)
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
    return _interpret(_read_file(path), path)


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
    return _tensor_dict(_read_file(path), path.name)


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


# ---------------------------------------------------------------------------------------------
# Finding weight files: local folder, then the Hugging Face Hub (pinned revision), else a clear error.


@dataclass(frozen=True)
class WeightSource:
    """Where a known weight file comes from, and under which licence."""

    description: str
    source: str
    licence: str
    hub_repo: str | None = None  # a Hub repository that holds the file...
    hub_filename: str | None = None  # ...at this path (None: a whole diffusers repository)
    hub_revision: str | None = None  # pinned commit, when known


_NVIDIA_NC = "NVIDIA Source Code License-NC (non-commercial research use only)"
_3DPE_DRIVE = "3DPE authors' Google Drive 'pretrained_models' folder, linked from the README of https://github.com/EzioBy/3dpe"
_3DPE_LICENCE = "3DPE authors' terms: non-commercial research use (EG3D-derived parts: " + _NVIDIA_NC + ")"
_CONVERTED = "produced locally by `python -m threedpe convert <original file>`; same licence as the original"

KNOWN_WEIGHTS: dict[str, WeightSource] = {
    "ffhqrebalanced512-128.pkl": WeightSource(
        "EG3D FFHQ (rebalanced) 512px generator, NVIDIA's official network pickle",
        "NVIDIA NGC catalog, model 'eg3d' (https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d); "
        "also on the Hugging Face Hub: gwang-kim/datid3d-finetuned-eg3d-models, file finetuned_models/nvidia_ffhqrebalanced512-128.pkl",
        _NVIDIA_NC, hub_repo="gwang-kim/datid3d-finetuned-eg3d-models",
        hub_filename="finetuned_models/nvidia_ffhqrebalanced512-128.pkl"),
    "ffhqrebalanced512-128.pth": WeightSource(
        "EG3D FFHQ 512px generator as converted by 3DPE (torch.save of G_init_kwargs + state dicts)", _3DPE_DRIVE, _NVIDIA_NC),
    "3dpe.pt": WeightSource("3DPE encoder + triplane renderer (the paper's model)", _3DPE_DRIVE, _3DPE_LICENCE),
    "encoder_render_LT_90000.pt": WeightSource(
        "Live3D-LT encoder + renderer (3DPE's training initialisation)", _3DPE_DRIVE, _3DPE_LICENCE),
    "instruct-pix2pix": WeightSource(
        "InstructPix2Pix diffusion model (diffusers layout, a whole repository)",
        "Hugging Face Hub repository timbrooks/instruct-pix2pix (load with diffusers `from_pretrained`)",
        "code MIT; weights CreativeML OpenRAIL-M (derived from Stable Diffusion)", hub_repo="timbrooks/instruct-pix2pix"),
    "ffhqrebalanced512-128.safetensors": WeightSource("EG3D generator in threedpe's format (tensors)", _CONVERTED, _NVIDIA_NC),
    "ffhqrebalanced512-128.json": WeightSource("EG3D generator in threedpe's format (config)", _CONVERTED, _NVIDIA_NC),
    "3dpe.safetensors": WeightSource("3DPE encoder + renderer in threedpe's format (tensors)", _CONVERTED, _3DPE_LICENCE),
    "3dpe.json": WeightSource("3DPE encoder + renderer in threedpe's format (config)", _CONVERTED, _3DPE_LICENCE),
    "encoder_render_LT_90000.safetensors": WeightSource(
        "Live3D-LT encoder + renderer in threedpe's format (tensors)", _CONVERTED, _3DPE_LICENCE),
    "encoder_render_LT_90000.json": WeightSource(
        "Live3D-LT encoder + renderer in threedpe's format (config)", _CONVERTED, _3DPE_LICENCE),
    "alexnet-owt-4df8aa71.pth": WeightSource(
        "torchvision's ImageNet AlexNet (the LPIPS backbone of 3DPE's training)",
        _3DPE_DRIVE + "; originally https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth",
        "torchvision model zoo (BSD-3-Clause code; ImageNet-trained weights)"),
    "alex_lin.pth": WeightSource(
        "LPIPS v0.1 linear heads for AlexNet (3DPE's training)",
        _3DPE_DRIVE + "; originally lpips/weights/v0.1/alex.pth of https://github.com/richzhang/PerceptualSimilarity",
        "BSD-2-Clause (LPIPS)"),
    "model_ir_se50.pth": WeightSource(
        "ArcFace IR-SE50 face-recognition network (3DPE's identity loss)",
        _3DPE_DRIVE + "; originally TreB1eN/InsightFace_Pytorch, as redistributed by pSp/e4e", "MIT (InsightFace_Pytorch)"),
}


def _missing_error(filename: str, folder: Path, hub_problem: str | None) -> MissingWeightsError:
    known = KNOWN_WEIGHTS.get(filename)
    where = (f"Get it from: {known.source}. Licence: {known.licence}." if known
             else f"This is not one of the known files ({', '.join(KNOWN_WEIGHTS)}); see checkpoints/README.md.")
    hub = f" It was not fetched from the Hugging Face Hub: {hub_problem}." if hub_problem else ""
    return MissingWeightsError(f"missing weight file '{filename}': it is not in {folder.resolve()}.{hub} "
                               f"Put it there (or set THREEDPE_WEIGHTS to the folder holding it). {where}",
                               filename=filename, folder=folder)


def resolve_weight(filename: str, local_dir: str | os.PathLike | None = None, repo_id: str | None = None,
                   revision: str | None = None, subfolder: str | None = None) -> Path:
    """Path of a weight file: ``local_dir`` first, then the Hugging Face Hub at a pinned revision.

    ``local_dir`` defaults to ``$THREEDPE_WEIGHTS`` or else ``checkpoints`` (relative to the working
    directory). The Hub repository is ``repo_id``, else ``$THREEDPE_HUB_REPO``, else the known Hub
    copy of ``filename`` (see ``KNOWN_WEIGHTS``); ``revision`` (a 40-hex commit, else
    ``$THREEDPE_HUB_REVISION``) must be pinned or nothing is downloaded. Raises
    ``MissingWeightsError`` naming the file, where to put it and where to get it.
    """
    folder = Path(local_dir if local_dir is not None else os.environ.get("THREEDPE_WEIGHTS", "checkpoints")).expanduser()
    if (folder / filename).exists():
        return folder / filename
    known = KNOWN_WEIGHTS.get(filename)
    repo, hub_filename = repo_id or os.environ.get("THREEDPE_HUB_REPO"), filename
    revision = revision or os.environ.get("THREEDPE_HUB_REVISION")
    if repo is None and known is not None and known.hub_repo is not None:
        repo, hub_filename, revision = known.hub_repo, known.hub_filename, revision or known.hub_revision
    if repo is None:
        hub_problem = "no Hub repository is configured (pass repo_id or set THREEDPE_HUB_REPO)"
    elif hub_filename is None:
        hub_problem = f"{repo} is a whole repository; load it with diffusers from_pretrained({repo!r}, revision=<commit>)"
    elif revision is None:
        hub_problem = f"no pinned revision for {repo} (pass revision or set THREEDPE_HUB_REVISION to a commit sha)"
    elif not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise CheckpointError(f"revision {revision!r} is not pinned: give the full 40-character commit sha")
    else:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=hub_filename, subfolder=subfolder, revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
            hub_problem = f"{repo}@{revision[:12]}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    raise _missing_error(filename, folder, hub_problem)


def resolve_first(filenames: tuple[str, ...], local_dir: str | os.PathLike | None = None, repo_id: str | None = None,
                  revision: str | None = None) -> Path:
    """The first of ``filenames`` that :func:`resolve_weight` finds (e.g. a converted file before the released
    one); when none is found, the ``MissingWeightsError`` of the last (the released file and its source)."""
    missing: MissingWeightsError | None = None
    for filename in filenames:
        try:
            return resolve_weight(filename, local_dir=local_dir, repo_id=repo_id, revision=revision)
        except MissingWeightsError as error:
            missing = error
    raise missing if missing is not None else ValueError("no file names given")
