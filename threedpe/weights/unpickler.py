"""The restricted unpickler: reads NVIDIA's network pickles and ``torch.save`` files without importing or running
anything they name. Only tensors, plain data and inert stand-ins come out (:func:`read_file`): a pickled module becomes
a :class:`ModuleRecord` holding its ``__dict__``, any global that is not weights or plain data is refused.

Torch files are read with ``torch.load(weights_only=True)`` first; when that refuses a harmless type (e.g. EG3D's
``EasyDict``), the restricted unpickler reads the zip archive instead.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from threedpe.weights import CheckpointError, missing_error


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (EG3D's dict with attribute access); a plain dict here."""


class ModuleRecord:
    """Stand-in for a pickled ``nn.Module``: the class it named and its ``__dict__`` (``state``)."""

    type_name = "torch.nn.Module"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"pickled module {self.type_name} has a {type(state).__name__} state, expected a dict")
        self.state = state


_RECORD_CLASSES: dict[str, type[ModuleRecord]] = {}


def _record_class(type_name: str) -> type[ModuleRecord]:
    """A ``ModuleRecord`` subclass remembering ``type_name`` (pickle builds it with ``cls.__new__``)."""
    if type_name not in _RECORD_CLASSES:
        _RECORD_CLASSES[type_name] = type("ModuleRecord", (ModuleRecord,), {"type_name": type_name})
    return _RECORD_CLASSES[type_name]


def _reconstruct_persistent_obj(meta: Any) -> ModuleRecord:
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


def read_file(path: Path) -> Any:
    """Deserialize a torch file or a plain pickle safely; every failure becomes a ``CheckpointError``."""
    if not path.is_file():
        raise missing_error(path.name, path.parent, None) if not path.exists() else CheckpointError(f"{path} is not a file")
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
