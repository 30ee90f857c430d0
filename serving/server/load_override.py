"""What a load request may carry besides the model's name (the model repository extension):

    config          a model configuration in JSON that replaces config.pbtxt for this load
    file:<path>     one of the model's files ("file:1/model.onnx"), sent with the request;
                    with files the model is loaded from them alone, and `config` must be given

Files go to a private folder of their own, never outside it; the request's size is bounded
like every other message. The same override reaches every worker of a server of several.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from google.protobuf import json_format, text_format

from serving.protocol.errors import InvalidInput
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import model_config_pb2 as mc

__all__ = ["LoadOverride", "PreparedOverride", "IGNORED_PARAMETERS"]

IGNORED_PARAMETERS = frozenset({"unload_dependents"})
"""Sent by tritonclient on every load and unload; deepr's models have no dependents to act on."""
_FILE = "file:"
_MAX_FILES = 256
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")


@dataclass(frozen=True)
class PreparedOverride:
    """An override ready to load: the config's text, and the folder holding the request's files
    (None: the repository's own folder)."""

    config_text: str
    folder: Path | None = None

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class LoadOverride:
    config_json: str = ""
    files: dict[str, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.config_json or self.files)

    # -- from and to each transport --------------------------------------------------------------------------------

    @classmethod
    def from_grpc(cls, name: str, parameters: Mapping[str, pb.ModelRepositoryParameter]) -> "LoadOverride":
        values: dict[str, Any] = {}
        for key, parameter in parameters.items():
            choice = parameter.WhichOneof("parameter_choice")
            values[key] = getattr(parameter, choice) if choice else None
        return cls._from_values(name, values, files_as_base64=False)

    @classmethod
    def from_json(cls, name: str, parameters: Mapping[str, Any]) -> "LoadOverride":
        """HTTP's parameters: files are base64 strings there."""
        return cls._from_values(name, parameters, files_as_base64=True)

    @classmethod
    def _from_values(cls, name: str, values: Mapping[str, Any], *, files_as_base64: bool) -> "LoadOverride":
        config, files = "", {}
        for key, value in values.items():
            if key in IGNORED_PARAMETERS:
                continue
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidInput(f"failed to load {name!r}: the config parameter must be a string of JSON")
                config = value
            elif key.startswith(_FILE):
                files[_file_path(name, key[len(_FILE) :])] = _file_bytes(name, key, value, files_as_base64)
            else:
                raise InvalidInput(
                    f"failed to load {name!r}: unknown parameter {key[:64]!r}; a load takes 'config' (a model "
                    "configuration in JSON) and 'file:<path>' (the model's files)"
                )
        if files and not config:
            raise InvalidInput(f"failed to load {name!r}: files sent with a load need the 'config' parameter too")
        if len(files) > _MAX_FILES:
            raise InvalidInput(f"failed to load {name!r}: {len(files)} files sent; at most {_MAX_FILES}")
        return cls(config, files)

    def grpc_parameters(self) -> dict[str, pb.ModelRepositoryParameter]:
        parameters = {
            f"{_FILE}{path}": pb.ModelRepositoryParameter(bytes_param=data) for path, data in self.files.items()
        }
        if self.config_json:
            parameters["config"] = pb.ModelRepositoryParameter(string_param=self.config_json)
        return parameters

    def to_json(self) -> dict[str, str]:
        values = {f"{_FILE}{path}": base64.b64encode(data).decode() for path, data in self.files.items()}
        if self.config_json:
            values["config"] = self.config_json
        return values

    # -- loading ---------------------------------------------------------------------------------------------------

    def prepare(self, name: str) -> PreparedOverride:
        """The config as protobuf text (named `name` when it names none; another name is refused),
        and the files written to a new private folder (the config is loaded from the text, not
        written there)."""
        config = self.parse_config(name)
        text = text_format.MessageToString(config)
        if not self.files:
            return PreparedOverride(text)
        folder = Path(tempfile.mkdtemp(prefix=f"deepr-load-{name}-"))
        try:
            for path, data in self.files.items():
                target = folder.joinpath(*PurePosixPath(path).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:  # a path given twice, or through a link, fails
                    out.write(data)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidInput(f"failed to load {name!r}: cannot write the files sent: {exc}") from None
        return PreparedOverride(text, folder)

    def parse_config(self, name: str) -> mc.ModelConfig:
        try:
            config = json_format.Parse(self.config_json, mc.ModelConfig())
        except json_format.ParseError as exc:
            raise InvalidInput(
                f"failed to load {name!r}: the config parameter is not a model configuration in JSON: {str(exc)[:300]}"
            ) from None
        if config.name and config.name != name:
            raise InvalidInput(f"failed to load {name!r}: the config parameter names another model, {config.name!r}")
        config.name = name
        return config


def _file_path(name: str, path: str) -> str:
    """A relative path of plain names below the model's folder: no '..', no leading '/' or '.'."""
    parts = PurePosixPath(path).parts
    if not parts or len(parts) > 8 or path.startswith("/") or not all(_PART.match(p) for p in parts):
        raise InvalidInput(
            f"failed to load {name!r}: file {path[:80]!r} is not a path inside the model's folder (up to 8 names "
            "of letters, digits, '_', '.' and '-', none starting with '.'; e.g. file:1/model.onnx)"
        )
    if parts == ("config.pbtxt",):
        raise InvalidInput(f"failed to load {name!r}: send the configuration in the 'config' parameter, not as a file")
    return "/".join(parts)


def _file_bytes(name: str, key: str, value: Any, base64_text: bool) -> bytes:
    if base64_text:
        if not isinstance(value, str):
            raise InvalidInput(f"failed to load {name!r}: {key[:80]!r} must be the file's bytes in base64")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"failed to load {name!r}: {key[:80]!r} is not valid base64") from None
    if not isinstance(value, bytes):
        raise InvalidInput(f"failed to load {name!r}: {key[:80]!r} must be a bytes parameter (the file's content)")
    return value
