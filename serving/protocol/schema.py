"""Every key deepr writes into a model, and every name suffix of its graphs, in one place.

Exported graphs carry facts for the code that uses them: in the ONNX file's metadata_props
(read by local onnxruntime sessions) and, under the same key in the same encoding, in
config.pbtxt parameters (read over the V2 protocol by served clients). Values are plain
text or JSON (JSON_KEYS); encode_fact and decode_fact are the one encoding. Repositories
already exported keep these names, so they are never renamed, only added to; the two
config keys of the first served graphs are still read (LEGACY_CONFIG_KEYS).
"""

from __future__ import annotations

import json
from typing import Any, Callable

__all__ = [
    "COMPLETED_KEY",
    "PREPROCESSING_KEY",
    "LABELS_KEY",
    "LAYERS_KEY",
    "FEATURES_LAYERS_KEY",
    "GRADCAM_LAYER_KEY",
    "LAYER_KEY",
    "CHANNELS_KEY",
    "LOSS_WEIGHTS_KEY",
    "CHARSET_KEY",
    "UNITS_KEY",
    "TEXT_ENCODING_KEY",
    "SECTION_KEY",
    "OUTPUTS_KEY",
    "PAD_BATCHES_KEY",
    "WARMUP_BUDGET_KEY",
    "BATCH_PROFILE_KEY",
    "PROFILE_BATCHES_KEY",
    "RAGGED_INPUTS_KEY",
    "TRIM_OUTPUTS_KEY",
    "GRADCAM_SUFFIX",
    "FEATURES_SUFFIX",
    "FILTERS_SUFFIX",
    "DREAM_SUFFIX",
    "STYLE_SUFFIX",
    "STEP_SUFFIX",
    "GENERATE_SUFFIX",
    "JSON_KEYS",
    "LEGACY_CONFIG_KEYS",
    "encode_fact",
    "decode_fact",
]

# What a picture model expects and answers: metadata and config alike.
PREPROCESSING_KEY = "deepr.preprocessing"
"""ImagePreprocessing as JSON: size, colour mode, layout, scale, mean and std."""
LABELS_KEY = "deepr.labels"
"""Class names, a JSON list (classifiers and their Grad-CAM graphs)."""
TEXT_ENCODING_KEY = "deepr.text_encoding"
"""How a text model's words become indices (WordEncoding JSON)."""
SECTION_KEY = "deepr.section"
"""Config: the tutorial section the model comes from, plain text (shown on the zoo page)."""
OUTPUTS_KEY = "deepr.outputs"
"""What a classifier's output holds, plain text: "probabilities" (the default where it is not
said) or "logits" (clients show them through a softmax, and say so)."""

# The layers a multi-output graph exposes.
LAYERS_KEY = "deepr.layers"
"""The Keras layer names of the outputs, a JSON list."""
LAYER_KEY = "deepr.layer"
"""The convolution a Grad-CAM graph explains."""
FEATURES_LAYERS_KEY = "deepr.features.layers"
"""Legacy config key: LAYERS_KEY comma-separated (served graphs exported before the keys were one)."""
GRADCAM_LAYER_KEY = "deepr.gradcam.layer"
"""Legacy config key: LAYER_KEY."""
CHANNELS_KEY = "deepr.channels"
"""Filter graphs: channels per layer, a JSON list beside LAYERS_KEY."""
LOSS_WEIGHTS_KEY = "deepr.loss_weights"
"""Style graphs: content, style and variation weights, JSON."""

# The character model.
CHARSET_KEY = "deepr.charset"
"""The characters, in index order, as one plain string."""
UNITS_KEY = "deepr.units"
"""The LSTM's state width."""

# Serving: how the server batches a model (config only).
PAD_BATCHES_KEY = "deepr.pad_batches"
""""false": merged runs take any size instead of the sizes warmed at load."""
WARMUP_BUDGET_KEY = "deepr.warmup_budget_seconds"
"""Bound on the load-time warm-up of batch sizes (default 10)."""
BATCH_PROFILE_KEY = "deepr.batch_profile"
"""The measured rows/s per batch size (BatchProfile JSON)."""
PROFILE_BATCHES_KEY = "deepr.profile_batches"
""""true": profile the batch sizes when the model loads."""
RAGGED_INPUTS_KEY = "deepr.ragged_inputs"
"""JSON {input: pad value}: inputs whose last axis may differ between requests; a merged run
pads each to the batch's longest with the value (a generation graph's prompts)."""
TRIM_OUTPUTS_KEY = "deepr.trim_outputs"
"""JSON {output: input}: outputs whose axis 1 runs to the batch's largest value of the input;
each request gets it cut to its own largest value (a generation graph's texts)."""
COMPLETED_KEY = "deepr.config_completed"
"""Config, written by the server: the fields it filled in from the graph ("input, output,
max_batch_size, dynamic_batching"), for a model served without a complete config.pbtxt."""

# Graph names: NAME + suffix in the repository.
GRADCAM_SUFFIX = "_gradcam"
FEATURES_SUFFIX = "_features"
FILTERS_SUFFIX = "_filters"
DREAM_SUFFIX = "_dream"
STYLE_SUFFIX = "_style"
STEP_SUFFIX = "_step"
GENERATE_SUFFIX = "_generate"


JSON_KEYS = frozenset(
    {LABELS_KEY, LAYERS_KEY, CHANNELS_KEY, LOSS_WEIGHTS_KEY, UNITS_KEY, RAGGED_INPUTS_KEY, TRIM_OUTPUTS_KEY}
)
"""Facts whose values are JSON; the others are text as written (preprocessing and the text
encoding are JSON documents that their own classes parse)."""

LEGACY_CONFIG_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    LAYERS_KEY: (FEATURES_LAYERS_KEY, lambda text: text.split(",")),
    LAYER_KEY: (GRADCAM_LAYER_KEY, str),
}
"""Fact key -> the config key and decoding of repositories exported before one encoding."""


def encode_fact(value: Any) -> str:
    """A fact as metadata and config store it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def decode_fact(key: str, text: str) -> Any:
    return json.loads(text) if key in JSON_KEYS else text
