"""Measure an exported model on this machine and write what was learned into its config."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import read_config, write_config
from serving.protocol.schema import PAD_BATCHES_KEY, PROFILE_BATCHES_KEY
from serving.server.batch_profile import BatchProfile, profile_batches
from serving.server.model import OnnxModel, RuntimeOptions

__all__ = ["profile_batches_into_config"]


def profile_batches_into_config(
    version_dir: Path, *, device: str = "auto", progress: Callable[[str], None] = lambda line: None
) -> BatchProfile:
    """Measure an exported version's rows/s per batch size on this machine
    (serving/server/batch_profile.py) and write preferred_batch_size and the curve into its
    config.pbtxt. Returns the BatchProfile; ValueError when the model
    has no dynamic batching or no fixed-size inputs to profile with."""
    model_dir = Path(version_dir).parent
    config = read_config(model_dir)
    if config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
        raise ValueError(f"{config.name} has no dynamic batching to profile (max_batch_size {config.max_batch_size})")
    measured = mc.ModelConfig()
    measured.CopyFrom(config)
    measured.ClearField("model_warmup")  # the profile warms every size itself
    measured.ClearField("instance_group")  # one session with every core
    measured.parameters[PAD_BATCHES_KEY].string_value = "false"  # no warm-up of run sizes before measuring
    if PROFILE_BATCHES_KEY in measured.parameters:
        del measured.parameters[PROFILE_BATCHES_KEY]  # profiled below, not also at load
    model = OnnxModel(
        config.name,
        Path(version_dir).name,
        Path(version_dir) / (config.default_model_filename or "model.onnx"),
        measured,
        RuntimeOptions(device=device),
    )
    model.load()
    try:
        profile = profile_batches(model, progress=progress)
    finally:
        model.unload()
    profile.write_into(config)
    write_config(model_dir, config)
    return profile
