"""Write exported models into a model repository in Triton's layout."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.labels import write_labels
from serving.protocol.model_config import add_zero_samples, read_config, write_config

__all__ = ["add_to_repository", "next_version", "serving_config", "tune_serving", "LABELS_FILE"]

LABELS_FILE = "labels.txt"


def serving_config(name: str, max_batch_size: int) -> mc.ModelConfig:
    """The config.pbtxt skeleton of an ONNX model: onnxruntime backend, and for batched
    models dynamic batching with no added delay (requests that arrive while the model is
    busy are merged into its next run). Edit max_queue_delay_microseconds,
    preferred_batch_size or default_queue_policy.max_queue_size in the file to tune it."""
    config = mc.ModelConfig(
        name=name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=max_batch_size
    )
    if max_batch_size > 0:
        config.dynamic_batching.SetInParent()
    return config


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def add_to_repository(
    repository: Path,
    config: mc.ModelConfig,
    onnx_file: Path,
    *,
    labels: Sequence[str] | None = None,
    version: int | None = None,
) -> Path:
    """Copy `onnx_file` in as `<repository>/<name>/<version>/model.onnx`, and write
    config.pbtxt and labels beside it; returns the version directory.

    The version directory appears whole (renamed into place), so a server
    scanning the repository never loads a half-copied file.
    """
    model_dir = Path(repository) / config.name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another version or remove it")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        shutil.copyfile(onnx_file, staging / (config.default_model_filename or "model.onnx"))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if labels is not None:
        write_labels(model_dir / LABELS_FILE, labels)
    write_config(model_dir, config)
    return target


def tune_serving(
    model_dir: Path,
    *,
    warmup_batch_sizes: Sequence[int] = (),
    pad_batches: bool = False,
    max_queue_delay_us: int | None = None,
) -> None:
    """Ask, in an exported model's config.pbtxt, for zero-data warm-up samples at
    `warmup_batch_sizes`, for merged runs padded to fixed sizes (deepr.pad_batches) and for
    a queue delay (dynamic_batching.max_queue_delay_microseconds: how long a batch may wait
    for more requests). ValueError, with the config left as it was, when the model cannot
    have them."""
    from serving.protocol.schema import PAD_BATCHES_KEY

    config = read_config(model_dir)
    batched = config.max_batch_size > 0
    if (pad_batches or max_queue_delay_us is not None) and not config.HasField("dynamic_batching"):
        raise ValueError(f"{config.name} has no dynamic batching to tune (max_batch_size {config.max_batch_size})")
    if pad_batches:
        config.parameters[PAD_BATCHES_KEY].string_value = "true"
    if max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    too_big = [s for s in warmup_batch_sizes if s > (config.max_batch_size if batched else 1)]
    if too_big:
        raise ValueError(
            f"{config.name}: warm-up batch sizes {too_big} exceed its max_batch_size {config.max_batch_size}"
        )
    if warmup_batch_sizes and not add_zero_samples(config, warmup_batch_sizes if batched else [0]):
        raise ValueError(
            f"{config.name} has inputs with free dimensions (sequence lengths): write its model_warmup samples by hand"
        )
    write_config(model_dir, config)
