"""Classify pictures with a served model: preprocessing from its config, top-k from the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from serving.client import DEFAULT_URL, InferenceClient, client_for
from serving.protocol.classification import parse_class_string
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing
from serving.protocol.schema import LABELS_KEY, OUTPUTS_KEY, PREPROCESSING_KEY, TEXT_ENCODING_KEY, decode_fact
from serving.protocol.text_encoding import WordEncoding

__all__ = [
    "Prediction",
    "classify",
    "classify_text",
    "served_preprocessing",
    "answers_logits",
    "softmax_top_k",
    "PREPROCESSING_KEY",
]


_PICTURES = (
    "pictures it knows how to prepare: a bare ONNX file in a repository is served as it is; "
    "`deepr import FILE.onnx --name NAME` keeps it with its labels and picture preprocessing (--mean, --std) "
    "and exports it with them"
)


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def answers_logits(config) -> bool:
    """Whether a served classifier's config says its output is logits (deepr.outputs)."""
    return OUTPUTS_KEY in config.parameters and config.parameters[OUTPUTS_KEY].string_value == "logits"


def softmax_top_k(logits: np.ndarray, top_k: int, labels: Sequence[str] = ()) -> list[list[Prediction]]:
    """Top-k of each row of `logits` (N, classes) as probabilities: the softmax the model leaves out."""
    rows = np.asarray(logits, np.float64).reshape(len(logits), -1)
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    results = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append([Prediction(labels[i] if i < len(labels) else "", int(i), float(row[i])) for i in best])
    return results


def _top_k(client: InferenceClient, model: str, config, inputs: np.ndarray, top_k: int) -> list[list[Prediction]]:
    """Top-k predictions per row of `inputs`, in batches of the model's max_batch_size: from the
    server's classification extension, or, for a model answering logits, through a softmax here."""
    model_input, output = config.input[0], config.output[0]
    chunk = config.max_batch_size or 1
    logits = answers_logits(config)
    labels = (
        decode_fact(LABELS_KEY, config.parameters[LABELS_KEY].string_value) if LABELS_KEY in config.parameters else []
    )
    results: list[list[Prediction]] = []
    for start in range(0, len(inputs), chunk):
        batch = inputs[start : start + chunk]
        batch = batch.reshape(
            len(batch), *[d if d > 0 else -1 for d in model_input.dims]
        )  # e.g. (N, 784) for a dense net
        if logits:
            results += softmax_top_k(client.infer(model, {model_input.name: batch})[output.name], top_k, labels)
            continue
        classes = client.infer(model, {model_input.name: batch}, class_count={output.name: top_k})[output.name]
        for row in np.atleast_2d(classes):
            results.append([Prediction(label, index, score) for score, index, label in map(parse_class_string, row)])
    return results


def _classify(
    model: str,
    url: str,
    client: InferenceClient | None,
    parameter: str,
    encoder: Callable[[str], Callable[[Sequence], np.ndarray]],
    items: Sequence,
    top_k: int,
    what: str,
) -> list[list[Prediction]]:
    """Read the model's input encoding from config parameter `parameter`, encode `items`, ask for the top k."""
    with client_for(url, client) as c:
        config = c.model_config(model)
        if parameter not in config.parameters:
            raise ValueError(f"model {model!r} has no {parameter} parameter: it does not take {what}")
        encode = encoder(config.parameters[parameter].string_value)
        return _top_k(c, model, config, encode(items), top_k)


def classify(
    images: Sequence[ImageInput],
    model: str,
    *,
    url: str = DEFAULT_URL,
    top_k: int = 3,
    client: InferenceClient | None = None,
    invert: str = "auto",
    framing: str = "auto",
) -> list[list[Prediction]]:
    """Top-k predictions, best first, for each image (paths, PIL images or uint8 arrays).

    The model's config.pbtxt carries its preprocessing ("deepr.preprocessing")
    and input shape, so the caller needs nothing but the model's name. `invert`: for models
    trained on light marks on dark (the digit models), `auto` inverts pictures drawn dark on
    light; `yes` / `no` force it (ImagePreprocessing.inverts). `framing`: `auto` frames
    pictures as the model states (the MNIST models cut the ink out and centre it as MNIST's
    digits were), `none` resizes whole pictures.
    """

    def encoder(text: str) -> Callable[[Sequence], np.ndarray]:
        preprocess = ImagePreprocessing.from_json(text)
        return lambda pictures: preprocess(pictures, invert, framing)

    return _classify(model, url, client, PREPROCESSING_KEY, encoder, images, top_k, _PICTURES)


def served_preprocessing(
    model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None
) -> ImagePreprocessing:
    """The picture preprocessing a served model's config carries."""
    with client_for(url, client) as c:
        config = c.model_config(model)
    if PREPROCESSING_KEY not in config.parameters:
        raise ValueError(f"model {model!r} has no {PREPROCESSING_KEY} parameter: it does not take {_PICTURES}")
    return ImagePreprocessing.from_json(config.parameters[PREPROCESSING_KEY].string_value)


def classify_text(
    texts: Sequence[str],
    model: str,
    *,
    url: str = DEFAULT_URL,
    top_k: int = 1,
    client: InferenceClient | None = None,
) -> list[list[Prediction]]:
    """Predictions for each text from a served word model (imdb_*): the vocabulary comes from
    its config ("deepr.text_encoding"). A binary model answers with its positive class and
    that class's probability."""
    return _classify(
        model,
        url,
        client,
        TEXT_ENCODING_KEY,
        WordEncoding.from_json,
        texts,
        top_k,
        "text (export it from a training run's weights)",
    )
