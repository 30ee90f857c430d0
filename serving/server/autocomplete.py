"""A model's config completed from its ONNX graph, following Triton's rules for ONNX models.

A folder holding only `1/model.onnx`, or a config that gives little more than a name, is
served as Triton serves it: the inputs and outputs, their datatypes and dims come from the
graph; when every input and output has a free first dimension, the model batches, up to a
default max_batch_size, with dynamic batching on; otherwise max_batch_size is 0 and the
graph's shapes are the tensors' whole shapes. What was filled in is written into the
config's parameters under `deepr.config_completed`, so the config endpoint, the page and
`deepr repository` show that it was not the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from serving.protocol.datatypes import ONNX_TO_V2, V2_TO_CONFIG
from serving.protocol.errors import ModelLoadError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import COMPLETED_KEY

__all__ = ["CompletionPolicy", "COMPLETED_KEY", "complete_config", "is_incomplete"]


@dataclass(frozen=True)
class CompletionPolicy:
    """How a server completes configs (ServerSettings' strict_model_config, default_max_batch_size)."""

    strict: bool = False
    """Refuse incomplete configs instead of completing them (Triton's --strict-model-config)."""
    default_max_batch_size: int = 4
    """max_batch_size given to a batching model whose config states none (Triton's default: 4)."""


def is_incomplete(config: mc.ModelConfig) -> bool:
    return not config.input or not config.output


def _free_first(dims: Sequence) -> bool:
    return bool(dims) and not (isinstance(dims[0], int) and dims[0] >= 0)


def _dims(shape: Sequence, batched: bool) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape[1:] if batched else shape)]


def _entry_type(arg, what: str, name: str) -> int:
    v2 = ONNX_TO_V2.get(arg.type)
    if v2 is None:
        raise ModelLoadError(f"{name}: {what} {arg.name!r} has type {arg.type}, which deepr cannot serve")
    return mc.DataType.Value(V2_TO_CONFIG[v2])


def complete_config(config: mc.ModelConfig, inputs: Sequence, outputs: Sequence, policy: CompletionPolicy) -> None:
    """Fill `config`'s missing inputs, outputs and batch size in place from the graph's
    `inputs` and `outputs` (onnxruntime's NodeArgs: name, type, shape); ModelLoadError under
    a strict policy."""
    if not is_incomplete(config):
        return
    if policy.strict:
        missing = " and ".join(
            kind for kind, entries in (("inputs", config.input), ("outputs", config.output)) if not entries
        )
        raise ModelLoadError(
            f"{config.name}: its config gives no {missing}; the server was started with --strict-model-config, "
            "which serves complete configs only"
        )
    filled = []
    if config.max_batch_size <= 0:
        if all(_free_first(a.shape) for a in [*inputs, *outputs]):
            config.max_batch_size = policy.default_max_batch_size
            filled.append("max_batch_size")
            if not config.HasField("dynamic_batching"):
                config.dynamic_batching.SetInParent()
                filled.append("dynamic_batching")
    batched = config.max_batch_size > 0
    for entries, args, kind in ((config.input, inputs, "input"), (config.output, outputs, "output")):
        if entries:
            continue
        for arg in args:
            entries.add(name=arg.name, data_type=_entry_type(arg, kind, config.name), dims=_dims(arg.shape, batched))
        filled.append(kind)
    config.parameters[COMPLETED_KEY].string_value = ", ".join(filled)
