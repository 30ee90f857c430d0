"""Read and write config.pbtxt, Triton's model configuration in protobuf text format."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from serving.protocol.errors import ModelLoadError
from serving.protocol.generated.model_config_pb2 import ModelConfig

__all__ = [
    "ModelConfig",
    "read_config",
    "read_config_text",
    "parse_config",
    "write_config",
    "config_text",
    "add_zero_samples",
    "field_paths",
]

CONFIG_FILE = "config.pbtxt"

MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Configs are a few KB; a larger file is refused before it is parsed."""


def config_text(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config_text(model_dir: Path) -> str | None:
    """`model_dir/config.pbtxt` as text; None when there is none. Whatever else is wrong with
    the file (unreadable, not UTF-8, too large) is a ModelLoadError naming it."""
    path = model_dir / CONFIG_FILE
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; a model configuration is a few KB"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is not UTF-8 text: byte {exc.start} is 0x{data[exc.start]:02x}") from None


def parse_config(text: str, model_dir: Path, name: str | None = None) -> ModelConfig:
    """A config's text as a ModelConfig named `name` (default: after its folder); fields
    outside deepr's schema are skipped here (the server judges them with `field_paths`)."""
    path = model_dir / CONFIG_FILE
    name = name or model_dir.name
    try:
        config = text_format.Parse(text, ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{path} is not a valid model configuration: {exc}") from None
    except RecursionError:
        raise ModelLoadError(f"{path} is nested too deeply to be a model configuration") from None
    if not config.name:
        config.name = name
    elif config.name != name:
        raise ModelLoadError(f"{path} names the model {config.name!r}, but it is served as {name!r}")
    return config


def read_config(model_dir: Path) -> ModelConfig:
    """Parse `model_dir/config.pbtxt`; fields deepr does not use are skipped. Whatever is
    wrong with the file (unreadable, not UTF-8, too large, too deeply nested, not a config)
    is a ModelLoadError naming it: one bad folder must not stop a server."""
    text = read_config_text(model_dir)
    if text is None:
        raise ModelLoadError(f"cannot read {model_dir / CONFIG_FILE}: no such file")
    return parse_config(text, model_dir)


def field_paths(text: str) -> list[tuple[str, str]]:
    """Every field a config's text sets, as (dotted path, value): "input.dims" with "[-1, 3]",
    "dynamic_batching" with "" for a message. Map entries give their key's path
    ("parameters.key"). Triton's configs may set fields beyond the ones deepr's schema
    holds; this reads them all, so none is skipped unseen."""
    tokens: list[str] = []
    tokenizer = text_format.Tokenizer(text.splitlines())
    while not tokenizer.AtEnd():
        tokens.append(tokenizer.token)
        tokenizer.NextToken()
    paths: list[tuple[str, str]] = []
    position = _message(tokens, 0, "", paths, end=None)
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r}")
    return paths


_CLOSE = {"{": "}", "<": ">"}


def _message(tokens: list[str], i: int, prefix: str, paths: list[tuple[str, str]], end: str | None) -> int:
    """Read fields from tokens[i] up to `end` (None: the end of the text); the index after."""
    while i < len(tokens) and tokens[i] != end:
        name = tokens[i]
        path = f"{prefix}{name}"
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"{path} has no value")
        if tokens[i] in _CLOSE:
            paths.append((path, ""))
            i = _message(tokens, i + 1, path + ".", paths, _CLOSE[tokens[i]]) + 1
        elif tokens[i] == "[":
            i, values = _list(tokens, i + 1, path, paths)
            paths.append((path, "[" + ", ".join(values) + "]"))
        else:
            i, value = _scalar(tokens, i)
            paths.append((path, value))
    if end is not None and i >= len(tokens):
        raise ValueError(f"{prefix.rstrip('.')} is not closed")
    return i


def _list(tokens: list[str], i: int, path: str, paths: list[tuple[str, str]]) -> tuple[int, list[str]]:
    values: list[str] = []
    while i < len(tokens) and tokens[i] != "]":
        if tokens[i] in _CLOSE:
            i = _message(tokens, i + 1, path + ".", paths, _CLOSE[tokens[i]]) + 1
        else:
            i, value = _scalar(tokens, i)
            values.append(value)
        if i < len(tokens) and tokens[i] == ",":
            i += 1
    if i >= len(tokens):
        raise ValueError(f"the list of {path} is not closed")
    return i + 1, values


def _scalar(tokens: list[str], i: int) -> tuple[int, str]:
    value = tokens[i]
    i += 1
    while value[:1] in "\"'" and i < len(tokens) and tokens[i][:1] in "\"'":  # adjacent strings join
        value += tokens[i]
        i += 1
    return i, value


def write_config(model_dir: Path, config: ModelConfig) -> Path:
    path = model_dir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_text(config))
    tmp.replace(path)  # readers never see a half-written file
    return path


def add_zero_samples(config: ModelConfig, batch_sizes) -> bool:
    """Add a zero-data sample per batch size, covering every input the config lists.
    False (nothing added) when an input has a free dimension no sample can fix."""
    if any(d < 0 for entry in config.input for d in entry.dims):
        return False
    for size in batch_sizes:
        sample = config.model_warmup.add(name=f"zeros-{size}", batch_size=size)
        for entry in config.input:
            warm = sample.inputs[entry.name]
            warm.data_type = entry.data_type
            warm.dims.extend(entry.dims)
            warm.zero_data = True
    return True
