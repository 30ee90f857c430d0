"""Reading a saved Keras model without Keras: its config (JSON) and each layer's weights.

Two containers hold the same two things:

- HDF5 (`save_model_hdf5()` in R, `model.save("m.h5")` in Keras 2 and Keras 3's legacy
  writer): the config is the root attribute `model_config`; the weights of layer L are the
  datasets under `model_weights/L`, in the order its attribute `weight_names` lists.
- `.keras` (Keras 3): a zip holding `config.json` and `model.weights.h5`, where the weights
  of the layers are `layers/<key>/vars/0, 1, ...` followed by those of their parts (an
  LSTM's `cell/vars/...`). The key is not the layer's name but its class in snake case,
  numbered in the model's layer order (dense, dense_1, ...), so names are matched to keys
  by walking the config's layers the same way.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KerasImportError

__all__ = ["KerasFile", "layer_configs", "read_keras_file", "MAX_UNPACKED_BYTES"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"

MAX_UNPACKED_BYTES = 4 * 2**30
"""Default bound on what a file may unpack to: its weights in all, and each member of a
.keras zip. VGG16's weights are 528 MB; a 1 MB zip that inflates to 1 GiB is refused."""

_MAX_CONFIG_BYTES = 64 * 2**20
"""A model config is kilobytes of JSON; metadata.json less."""

_MAX_RATIO = 1000
"""How many times its stored size a compressed weight or zip member may inflate to
(float weights compress to about 0.9 of their size; a layer of zeros far further)."""

_SMALL = 1 << 20
"""Below this, no ratio is asked of a compressed weight or member."""


class _Budget:
    """What the file may still unpack to, in bytes."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit, self.used = path, limit, 0

    def take(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise KerasImportError(
                f"{self.path}: {what} takes the file's weights past {self.limit:,} bytes "
                "(--max-unpacked-bytes raises the bound for a model that large)"
            )


@dataclass(frozen=True)
class KerasFile:
    """A saved model as deepr reads it."""

    path: Path
    config: dict[str, Any]
    """The model's config: {"class_name": "Sequential" | "Functional" | "Model", "config": {...}}."""
    weights: dict[str, list[np.ndarray]]
    """Each layer's weights by layer name, in Keras' order (kernel, recurrent kernel, bias...)."""
    format: str
    """"h5" or "keras"."""
    keras_version: str = ""


def read_keras_file(path: str | Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> KerasFile:
    """The config and weights of the Keras model saved at `path` (.h5 or .keras). Every
    size the file declares is checked against what it holds before anything of that size
    is allocated: weights past `max_unpacked_bytes` in all, a weight larger than its
    stored bytes can hold, a zip member that inflates past the bound."""
    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path}: no such file")
    with open(path, "rb") as file:
        head = file.read(8)
    if head == _HDF5_SIGNATURE:
        return _read_hdf5(path, _Budget(path, max_unpacked_bytes))
    if head[:4] == _ZIP_SIGNATURE:
        return _read_keras_zip(path, _Budget(path, max_unpacked_bytes))
    raise KerasImportError(
        f"{path}: not a saved Keras model (neither HDF5 as save_model_hdf5 writes it nor a .keras zip); "
        f"it starts with {head!r}"
    )


def _h5py():
    try:
        import h5py
    except ModuleNotFoundError as exc:
        raise KerasImportError("reading Keras files needs h5py: pip install h5py") from exc
    return h5py


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse_config(path: Path, text: str) -> dict[str, Any]:
    if len(text) > _MAX_CONFIG_BYTES:
        raise KerasImportError(f"{path}: a model config of {len(text):,} characters; configs are kilobytes")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KerasImportError(f"{path}: the model config is not JSON ({exc})") from None
    except RecursionError:
        raise KerasImportError(f"{path}: the model config is nested too deeply to be a Keras model") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise KerasImportError(f"{path}: the model config has no class_name; it is not a saved Keras model")
    return config


def _read_weight(dataset: Any, budget: _Budget, what: str) -> np.ndarray:
    """A weight dataset's values, once its declared size is known to be held by the file:
    an HDF5 dataset can declare any shape and leave its chunks unwritten, and reading it
    would allocate (and fill) all of it."""
    declared = int(dataset.size) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    compressed = dataset.id.get_create_plist().get_nfilters() > 0
    if (not compressed and stored < declared) or (compressed and declared > max(_SMALL, stored * _MAX_RATIO)):
        raise KerasImportError(
            f"{budget.path}: weight {what} declares shape {tuple(dataset.shape)} ({declared:,} bytes), "
            f"but the file holds {stored:,} bytes of it; the file is damaged or was not written by Keras"
        )
    budget.take(declared, f"weight {what} ({declared:,} bytes)")
    return np.asarray(dataset)


def _read_hdf5(path: Path, budget: _Budget) -> KerasFile:
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as file:
            if "model_config" not in file.attrs:
                raise KerasImportError(
                    f"{path}: an HDF5 file without a model config: it holds weights only "
                    "(save_model_weights_hdf5); save the whole model with save_model_hdf5"
                )
            config = _parse_config(path, _text(file.attrs["model_config"]))
            root = file["model_weights"] if "model_weights" in file else file
            weights: dict[str, list[np.ndarray]] = {}
            for layer in root:
                group = root[layer]
                names = [_text(n) for n in group.attrs.get("weight_names", [])]
                weights[layer] = [_read_weight(group[name], budget, f"{layer}/{name}") for name in names]
            version = _text(file.attrs.get("keras_version", ""))
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:  # h5py's errors for truncated or damaged files
        raise KerasImportError(f"{path}: cannot read this HDF5 file ({exc}); is it complete?") from None
    return KerasFile(path, config, weights, "h5", version)


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path, raised_by: str = "") -> bytes:
    """One zip member's bytes, refused before inflating when it declares more than `limit`
    bytes or more than _MAX_RATIO times its compressed size (zipfile then stops at the
    declared size, whatever the compressed stream holds)."""
    info = archive.getinfo(name)
    if info.file_size > limit or info.file_size > max(_SMALL, info.compress_size * _MAX_RATIO):
        raise KerasImportError(
            f"{path}: {name} inflates from {info.compress_size:,} to {info.file_size:,} bytes, past the bound of "
            f"{min(limit, max(_SMALL, info.compress_size * _MAX_RATIO)):,}: Keras does not write such a member"
            + (f" ({raised_by} raises the absolute bound)" if raised_by else "")
        )
    return archive.read(name)


def _read_keras_zip(path: Path, budget: _Budget) -> KerasFile:
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = {"config.json", "model.weights.h5"} - names
            if missing:
                raise KerasImportError(f"{path}: a zip without {', '.join(sorted(missing))}; it is not a .keras model")
            config = _parse_config(path, _member(archive, "config.json", _MAX_CONFIG_BYTES, path).decode("utf-8"))
            metadata = {}
            if "metadata.json" in names:
                metadata = json.loads(_member(archive, "metadata.json", _MAX_CONFIG_BYTES, path))
            weights_bytes = _member(archive, "model.weights.h5", budget.limit, path, "--max-unpacked-bytes")
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise KerasImportError(f"{path}: cannot read this zip ({type(exc).__name__}: {exc}); is it complete?") from None
    if not isinstance(metadata, dict):
        metadata = {}
    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as file:
            layers = file["layers"] if "layers" in file else {}
            stored = {key: _variables(layers[key], budget, key) for key in layers}
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise KerasImportError(f"{path}: cannot read model.weights.h5 inside it ({exc})") from None
    weights: dict[str, list[np.ndarray]] = {}
    for key, layer in _saving_keys(config):
        weights[layer] = stored.pop(key, [])
    for key, arrays in stored.items():  # weights no layer of the config claims
        weights[key] = arrays
    return KerasFile(path, config, weights, "keras", str(metadata.get("keras_version", "")))


def layer_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of a model config, in order."""
    inner = config.get("config", {})
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 2.0-2.2 kept a bare list
    if not isinstance(layers, list):
        raise KerasImportError("the model config lists no layers")
    return layers


def _snake_case(class_name: str) -> str:
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _saving_keys(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(key in model.weights.h5, layer name) for every layer but the inputs."""
    counts: dict[str, int] = {}
    keys = []
    for layer in layer_configs(config):
        if layer.get("class_name") == "InputLayer":
            continue
        base = _snake_case(layer["class_name"])
        counts[base] = counts.get(base, -1) + 1
        name = str(layer.get("config", {}).get("name") or layer.get("name"))
        keys.append((base if counts[base] == 0 else f"{base}_{counts[base]}", name))
    return keys


def _variables(group: Any, budget: _Budget, where: str, depth: int = 0) -> list[np.ndarray]:
    """A layer's variables, then those of its parts (a recurrent layer's cell), in order."""
    if depth > 16:
        raise KerasImportError(f"{budget.path}: model.weights.h5 nests groups past {where}; Keras nests a few levels")
    arrays: list[np.ndarray] = []
    if "vars" in group:
        keys = sorted(group["vars"], key=lambda k: int(k) if str(k).isdigit() else -1)
        arrays += [_read_weight(group["vars"][key], budget, f"{where}/vars/{key}") for key in keys]
    for key in group:
        if key != "vars" and hasattr(group[key], "keys"):
            arrays += _variables(group[key], budget, f"{where}/{key}", depth + 1)
    return arrays
