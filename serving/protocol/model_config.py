"""Read and write config.pbtxt, Triton's model configuration in protobuf text format."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from serving.protocol.errors import ModelLoadError
from serving.protocol.generated.model_config_pb2 import ModelConfig

__all__ = ["ModelConfig", "read_config", "write_config", "config_text", "add_zero_samples"]

CONFIG_FILE = "config.pbtxt"

MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Configs are a few KB; a larger file is refused before it is parsed."""


def config_text(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(model_dir: Path) -> ModelConfig:
    """Parse `model_dir/config.pbtxt`; fields deepr does not use are skipped. Whatever is
    wrong with the file (unreadable, not UTF-8, too large, too deeply nested, not a config)
    is a ModelLoadError naming it: one bad folder must not stop a server."""
    path = model_dir / CONFIG_FILE
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; a model configuration is a few KB"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is not UTF-8 text: byte {exc.start} is 0x{data[exc.start]:02x}") from None
    try:
        # Triton configs may carry fields deepr leaves out of its schema: skip them.
        config = text_format.Parse(text, ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{path} is not a valid model configuration: {exc}") from None
    except RecursionError:
        raise ModelLoadError(f"{path} is nested too deeply to be a model configuration") from None
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise ModelLoadError(f"{path} names the model {config.name!r}, but its directory is {model_dir.name!r}")
    return config


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
