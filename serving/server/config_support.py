"""What of Triton's model configuration deepr honours, and what it says about the rest.

A Triton config may set any of Triton's fields. Read leniently, the ones deepr does not
implement would be dropped without a word and the model served as something else (a
sequence model as a stateless one, a decoupled model as one answer per request). Every
field a config sets is therefore judged when the model loads:

- implemented: used;
- not implemented, and serving without it would change what a client gets: the model is
  UNAVAILABLE, with the field's name and the reason;
- not implemented, and safe to go without (an accelerator on a host without a GPU, a
  response cache): served, with one warning in the log at load;
- not a field of Triton's model configuration at all: refused, as Triton refuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from google.protobuf.descriptor import Descriptor

from serving.protocol.errors import ModelLoadError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import CONFIG_FILE, field_paths

__all__ = ["review_config", "REFUSED", "WARNED"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Rule:
    reason: str
    applies: Callable[[str, bool], bool] = lambda value, cuda: True
    """(the field's value as written, whether the host has CUDA) -> whether the rule applies."""


def _set(value: str, cuda: bool) -> bool:
    return value.lower() not in ("false", "0", "")


def _not_default(value: str, cuda: bool) -> bool:
    return value not in ("0", "false", "REJECT", '""', "''")


_PLATFORMS = ('""', '"onnxruntime_onnx"', "''", "'onnxruntime_onnx'", '"ensemble"', "'ensemble'")
_BACKENDS = ('""', '"onnxruntime"', "''", "'onnxruntime'")

REFUSED: dict[str, _Rule] = {
    "platform": _Rule(
        "deepr serves ONNX graphs with onnxruntime (platform onnxruntime_onnx) and ensembles of them (ensemble)",
        lambda v, c: v not in _PLATFORMS,
    ),
    "backend": _Rule(
        "deepr serves ONNX graphs with onnxruntime (backend onnxruntime)", lambda v, c: v not in _BACKENDS
    ),
    "runtime": _Rule("deepr loads no backend libraries", lambda v, c: v not in ('""', "''")),
    "sequence_batching": _Rule(
        "stateful sequences (correlation IDs, state kept between requests) are not implemented: each request "
        "would run on its own"
    ),
    "ensemble_scheduling.step.model_namespace": _Rule("model namespaces are not implemented: one repository"),
    "batch_input": _Rule("batch inputs (values the server computes for a batch) are not implemented"),
    "batch_output": _Rule("batch outputs are not implemented"),
    "model_transaction_policy.decoupled": _Rule(
        "decoupled models (any number of responses per request) are not implemented: deepr answers each request once",
        _set,
    ),
    "model_operations": _Rule("custom operator libraries are not loaded"),
    "model_repository_agents": _Rule("repository agents (checksums, decryption) are not implemented"),
    "input.optional": _Rule("optional inputs are not implemented: every input is required", _set),
    "input.allow_ragged_batch": _Rule(
        "Triton's ragged batching is not implemented (deepr's own is the parameter deepr.ragged_inputs)", _set
    ),
    "input.is_shape_tensor": _Rule("shape tensors are not implemented", _set),
    "output.is_shape_tensor": _Rule("shape tensors are not implemented", _set),
    "input.is_non_linear_format_io": _Rule("non-linear tensor formats (TensorRT's) are not implemented", _set),
    "output.is_non_linear_format_io": _Rule("non-linear tensor formats (TensorRT's) are not implemented", _set),
    "dynamic_batching.priority_levels": _Rule("request priorities are not implemented", _not_default),
    "dynamic_batching.default_priority_level": _Rule("request priorities are not implemented", _not_default),
    "dynamic_batching.priority_queue_policy": _Rule("request priorities are not implemented"),
    "dynamic_batching.default_queue_policy.timeout_action": _Rule(
        "queue timeouts are not implemented (a client's gRPC deadline drops its request unrun)", _not_default
    ),
    "dynamic_batching.default_queue_policy.default_timeout_microseconds": _Rule(
        "queue timeouts are not implemented (a client's gRPC deadline drops its request unrun)", _not_default
    ),
    "dynamic_batching.default_queue_policy.allow_timeout_override": _Rule(
        "queue timeouts are not implemented (a client's gRPC deadline drops its request unrun)", _not_default
    ),
}
"""Fields whose absence would change what clients get: the model does not load."""

WARNED: dict[str, _Rule] = {
    "instance_group.kind": _Rule(
        "KIND_GPU on a host where onnxruntime's CUDA provider cannot run: the model runs on the CPU",
        lambda v, cuda: v == "KIND_GPU" and not cuda,
    ),
    "instance_group.gpus": _Rule("instances are not placed on chosen GPUs: the server's --device runs them all"),
    "instance_group.secondary_devices": _Rule("secondary devices are not used"),
    "instance_group.rate_limiter": _Rule("rate limiting is not implemented; --max-inflight bounds the requests"),
    "instance_group.profile": _Rule("instance profiles are not used"),
    "instance_group.passive": _Rule("passive instances are not implemented: every instance runs requests", _set),
    "instance_group.host_policy": _Rule("host policies are not used"),
    "optimization.execution_accelerators": _Rule(
        "execution accelerators (TensorRT, OpenVINO) are not used: onnxruntime's CUDA or CPU provider runs the model"
    ),
    "optimization.cuda": _Rule("CUDA graph and stream settings are not used"),
    "optimization.priority": _Rule("model priorities are not implemented"),
    "optimization.input_pinned_memory": _Rule("pinned memory settings are not used"),
    "optimization.output_pinned_memory": _Rule("pinned memory settings are not used"),
    "optimization.gather_kernel_buffer_threshold": _Rule("gather kernels are not used"),
    "optimization.eager_batching": _Rule("eager batching is not implemented"),
    "dynamic_batching.preserve_ordering": _Rule(
        "responses are not held back to keep the order of requests across clients", _set
    ),
    "response_cache.enable": _Rule("there is no response cache: every request runs the model", _set),
    "cc_model_filenames": _Rule("files per compute capability are not used: default_model_filename is loaded"),
    "metric_tags": _Rule("metrics carry no tags of the model's"),
    "model_metrics": _Rule("custom metric buckets are not used"),
}
"""Fields deepr can serve without: the model loads, and the log says what is ignored."""

_CONTAINERS = {"model_transaction_policy", "response_cache"}
"""Triton's messages outside deepr's schema whose fields are judged one by one above."""


def _in_schema(path: str, message: Descriptor = mc.ModelConfig.DESCRIPTOR) -> bool:
    for name in path.split("."):
        field = message.fields_by_name.get(name)
        if field is None:
            return False
        message = field.message_type  # None for scalars: a longer path cannot be in the schema
        if message is None and name != path.split(".")[-1]:
            return False
    return True


def _rule(table: dict[str, _Rule], path: str) -> tuple[str, _Rule] | None:
    """The rule for `path` or for a field it sits inside."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in table:
            return key, table[key]
    return None


def review_config(text: str, model_dir: Path, cuda: bool) -> list[str]:
    """Judge every field the config's `text` sets (see the module's doc): ModelLoadError naming
    each refused field with its reason; otherwise the warnings for the ones ignored."""
    where = model_dir / CONFIG_FILE
    try:
        paths = field_paths(text)
    except ValueError as exc:
        raise ModelLoadError(f"{where} is not a valid model configuration: {exc}") from None
    except RecursionError:
        raise ModelLoadError(f"{where} is nested too deeply to be a model configuration") from None
    refused: dict[str, str] = {}
    warned: dict[str, str] = {}
    for path, value in paths:
        if (found := _rule(REFUSED, path)) is not None:
            key, rule = found
            if key == path and not rule.applies(value, cuda):
                continue
            refused.setdefault(key, f"{key}{' ' + value if value and key == path else ''}: {rule.reason}")
        elif (found := _rule(WARNED, path)) is not None:
            key, rule = found
            if key == path and not rule.applies(value, cuda):
                continue
            warned.setdefault(key, f"{key}: {rule.reason}")
        elif path not in _CONTAINERS and not _in_schema(path):
            refused.setdefault(path, f"{path}: not a field of Triton's model configuration")
    if refused:
        raise ModelLoadError(f"{where}: deepr does not serve this configuration: " + "; ".join(refused.values()))
    return list(warned.values())
