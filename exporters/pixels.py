"""Graphs that take pictures as uint8 pixels, or as their encoded files.

The preprocessing's scaling and per-channel normalisation move into the graph, so a
client sends resized pixels as they are: a quarter of the bytes of float32 on the wire
or in shared memory, which is what limits a server at large batches. The encoded form
serves the same graph behind a BYTES input of picture files (JPEG, PNG...), which the
server decodes and resizes with the model's preprocessing before the graph runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.preprocessing import ImagePreprocessing

__all__ = ["PixelInput", "pixel_cases", "pixel_form", "as_pixel_config", "as_encoded_config"]


class PixelInput(nn.Module):
    """`model` behind its own preprocessing: takes (N, H, W, C) uint8 pixels."""

    def __init__(self, model: nn.Module, preprocessing: ImagePreprocessing) -> None:
        super().__init__()
        self.model = model
        channels = preprocessing.channels
        self.scale = preprocessing.scale
        # The same float32 operations, in the same order, as ImagePreprocessing applies on
        # the client, so a uint8 graph's input to `model` equals the float graph's bit for bit.
        self.register_buffer("mean", torch.tensor(preprocessing.mean or (0.0,) * channels, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(preprocessing.std or (1.0,) * channels, dtype=torch.float32))
        self.normalise = preprocessing.mean is not None, preprocessing.std is not None
        self.channels_first = preprocessing.layout == "NCHW"

    mean: torch.Tensor
    std: torch.Tensor

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 pixels as the wrapped model takes them: scaled, normalised, in its layout."""
        x = pixels.to(torch.float32) * self.scale
        subtract, divide = self.normalise
        if subtract:
            x = x - self.mean
        if divide:
            x = x / self.std
        return x.permute(0, 3, 1, 2) if self.channels_first else x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.model_input(pixels))


def pixel_cases(preprocessing: ImagePreprocessing, batch_sizes, seed: int = 0) -> list[tuple[np.ndarray]]:
    """Random uint8 pictures at each validation batch size."""
    rng = np.random.default_rng(seed)
    height, width = preprocessing.size
    return [
        (rng.integers(0, 256, (batch, height, width, preprocessing.channels), dtype=np.uint8),) for batch in batch_sizes
    ]


def pixel_form(preprocessing: ImagePreprocessing, pixels: str = "uint8") -> ImagePreprocessing:
    """What clients of the uint8 graph do: resize, nothing more; of the encoded one: send the file."""
    return dataclasses.replace(preprocessing, pixels=pixels, layout="NHWC")


def as_pixel_config(config: mc.ModelConfig, preprocessing: ImagePreprocessing, parameter: str) -> None:
    """Rewrite a float image model's config for its uint8 graph: the input's type, layout and
    dims, and the preprocessing clients read (`preprocessing` in its pixel form)."""
    height, width = preprocessing.size
    image = config.input[0]
    image.data_type = mc.TYPE_UINT8
    image.format = mc.ModelInput.FORMAT_NHWC
    del image.dims[:]
    image.dims.extend([height, width, preprocessing.channels])
    config.parameters[parameter].string_value = preprocessing.to_json()


def as_encoded_config(config: mc.ModelConfig, preprocessing: ImagePreprocessing, parameter: str) -> None:
    """Rewrite a float image model's config for the encoded form of its uint8 graph: one
    BYTES element (a picture file) per example, and the preprocessing the server decodes with."""
    image = config.input[0]
    image.data_type = mc.TYPE_STRING
    image.format = mc.ModelInput.FORMAT_NONE
    del image.dims[:]
    image.dims.append(1)
    config.parameters[parameter].string_value = preprocessing.to_json()
