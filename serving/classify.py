"""Classify pictures with a served model: preprocessing from its config, top-k from the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .classification import parse_class_string
from .client import DEFAULT_URL, InferenceClient
from .preprocessing import ImageInput, ImagePreprocessing

__all__ = ["Prediction", "classify", "PREPROCESSING_PARAMETER"]

PREPROCESSING_PARAMETER = "deepr.preprocessing"


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def classify(
    images: Sequence[ImageInput],
    model: str,
    *,
    url: str = DEFAULT_URL,
    top_k: int = 3,
    client: InferenceClient | None = None,
) -> list[list[Prediction]]:
    """Top-k predictions, best first, for each image (paths, PIL images or uint8 arrays).

    The model's config.pbtxt carries its preprocessing ("deepr.preprocessing")
    and input shape, so the caller needs nothing but the model's name.
    """
    own = client is None
    client = client or InferenceClient(url)
    try:
        config = client.model_config(model)
        if PREPROCESSING_PARAMETER not in config.parameters:
            raise ValueError(f"model {model!r} has no {PREPROCESSING_PARAMETER} parameter: it does not take images")
        preprocess = ImagePreprocessing.from_json(config.parameters[PREPROCESSING_PARAMETER].string_value)
        image_input, output = config.input[0], config.output[0]
        chunk = config.max_batch_size or 1
        results: list[list[Prediction]] = []
        for start in range(0, len(images), chunk):
            batch = preprocess(images[start : start + chunk])
            batch = batch.reshape(len(batch), *image_input.dims)  # e.g. (N, 784) for a dense net
            classes = client.infer(model, {image_input.name: batch}, class_count={output.name: top_k})[output.name]
            for row in np.atleast_2d(classes):
                results.append([Prediction(label, index, score) for score, index, label in map(parse_class_string, row)])
        return results
    finally:
        if own:
            client.close()
