"""A saved Keras model as a PyTorch module: `from_keras("m.h5")`.

A Sequential model, or a functional one whose layers form a chain, becomes an
nn.Sequential whose children carry the Keras layer names, so everything deepr does
with its own models (summaries, Grad-CAM at a named layer, feature graphs) works on it.
A functional model with branches (Add, Concatenate) becomes a KerasGraph that runs its
layers in the config's order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import KerasImportError
from .files import MAX_UNPACKED_BYTES, KerasFile, layer_configs, read_keras_file
from .layers import Embedding, KerasInput, RankAware, convert_layer

__all__ = ["KerasGraph", "example_input", "from_keras", "INPUT_LAYOUTS"]

INPUT_LAYOUTS = ("nhwc", "nchw")


@dataclass(frozen=True)
class _Node:
    name: str
    class_name: str
    config: dict[str, Any]
    inbound: tuple[str, ...]


class KerasGraph(nn.Module):
    """A functional Keras model with branches: each layer runs on the outputs of its
    inbound layers, in the config's (topological) order."""

    keras_type = "Functional"

    def __init__(self, layers: "OrderedDict[str, nn.Module]", inbound: dict[str, tuple[str, ...]], output: str):
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.inbound = inbound
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for name, module in self.named_children():
            args = [values[source] for source in self.inbound[name]] or [x]
            values[name] = module(*args)
        return values[self.output]


def _history(node: Any) -> Iterator[str]:
    """The layer names a config's inbound node refers to, in either Keras' spelling."""
    if isinstance(node, dict):
        if "keras_history" in node.get("config", {}):  # Keras 3: {"class_name": "__keras_tensor__", ...}
            yield node["config"]["keras_history"][0]
        else:
            for value in node.get("args", []):
                yield from _history(value)
    elif isinstance(node, list):
        if node and isinstance(node[0], str):  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
            yield node[0]
        else:
            for value in node:
                yield from _history(value)


def _nodes(keras: KerasFile) -> tuple[list[_Node], str]:
    """The layers in order with the layers they read from, and the output layer's name."""
    class_name = keras.config.get("class_name")
    layers = layer_configs(keras.config)
    nodes: list[_Node] = []
    if class_name == "Sequential":
        previous: tuple[str, ...] = ()
        for layer in layers:
            name = str(layer.get("config", {}).get("name") or layer.get("name"))
            nodes.append(_Node(name, layer["class_name"], layer.get("config", {}), previous))
            previous = (name,)
        return nodes, nodes[-1].name
    if class_name not in ("Functional", "Model"):
        raise KerasImportError(f"a model of class {class_name!r}: deepr reads Sequential and functional models")
    config = keras.config["config"]
    for key in ("input_layers", "output_layers"):
        if len(_flat_refs(config.get(key, []))) != 1:
            raise KerasImportError(f"{key}: deepr takes models with one input and one output")
    for layer in layers:
        calls = layer.get("inbound_nodes", [])
        if len(calls) > 1:
            raise KerasImportError(
                f"layer {layer['name']} is called {len(calls)} times; shared layers are not supported"
            )
        inbound = tuple(_history(calls[0])) if calls else ()
        nodes.append(_Node(layer["name"], layer["class_name"], layer.get("config", {}), inbound))
    return nodes, _flat_refs(config["output_layers"])[0]


def _flat_refs(refs: Any) -> list[str]:
    """["dense", 0, 0] or [["dense", 0, 0], ...] as layer names."""
    if refs and isinstance(refs[0], str):
        return [refs[0]]
    return [ref[0] for ref in refs]


def _input_spec(nodes: list[_Node]) -> tuple[tuple[int | None, ...], str]:
    """The model's input shape without the batch axis, and its dtype."""
    first = nodes[0]
    shape = first.config.get("batch_shape") or first.config.get("batch_input_shape")
    if shape is None:  # Keras 3 Sequential without an Input: the first layer's build shape
        shape = (first.config.get("build_config") or {}).get("input_shape")
    if shape is None:
        raise KerasImportError("the config gives no input shape; build the model with an Input (or input_shape=)")
    dtype = first.config.get("dtype", "float32")
    dtype = dtype if isinstance(dtype, str) else "float32"
    return tuple(shape[1:]), dtype


MAX_ACTIVATION_ELEMENTS = 1 << 28
"""Largest input or layer output of one example (1 GiB of float32): a config may declare any
size, and the check at import must not allocate it."""


def from_keras(
    path: str | Path, *, input_layout: str = "nhwc", max_unpacked_bytes: int = MAX_UNPACKED_BYTES
) -> nn.Module:
    """The Keras model saved at `path` (.h5 or .keras) as a PyTorch module in eval mode.

    `input_layout`: "nhwc" (default) takes pictures as Keras does, (N, H, W, C); "nchw"
    takes them channels first. Attributes: `input_shape` (one example, in that layout),
    `input_dtype` ("float32" or "int64" for token ids), `input_layout` ("NHWC", "NCHW", or
    None for inputs that are not pictures). `max_unpacked_bytes`: what the file's weights may
    take in all (see read_keras_file).
    """
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    keras = read_keras_file(path, max_unpacked_bytes)
    try:
        with torch.device("cpu"):  # the weights are real: not on the meta device `deepr models` counts on
            model = _build(keras, input_layout)
    except KerasImportError as exc:
        raise KerasImportError(f"{keras.path}: {exc}") from None
    return model


def _build(keras: KerasFile, input_layout: str) -> nn.Module:
    nodes, output = _nodes(keras)
    if not nodes:
        raise KerasImportError("the model has no layers")
    shape, dtype = _input_spec(nodes)
    picture = len(shape) == 3
    channels_last = picture and input_layout == "nhwc"
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    inbound: dict[str, tuple[str, ...]] = {}
    known = {node.name for node in nodes}
    # Keras 2 files list a group for every layer, weightless ones too: only groups with arrays count
    unused = {name for name, arrays in keras.weights.items() if arrays and name not in known}
    if unused:
        raise KerasImportError(f"the weights hold layers the config does not have: {', '.join(sorted(unused))}")
    input_name = nodes[0].name if nodes[0].class_name == "InputLayer" else "input_layer"
    layers[input_name] = KerasInput(channels_last)
    inbound[input_name] = ()
    for node in nodes:
        if node.class_name == "InputLayer":
            continue
        if node.class_name in ("Sequential", "Functional", "Model"):
            raise KerasImportError(
                f"layer {node.name} is a whole model inside the model ({node.class_name}); "
                "deepr imports models made of layers: save the inner model's layers in one model"
            )
        if not node.name.isidentifier():
            raise KerasImportError(f"layer name {node.name!r} is not usable as a module name")
        layers[node.name] = convert_layer(node.name, node.class_name, node.config, keras.weights.get(node.name, []))
        inbound[node.name] = node.inbound or (input_name,)
    for name, sources in inbound.items():
        missing = [s for s in sources if s not in layers]
        if missing:
            raise KerasImportError(f"layer {name} reads from {', '.join(missing)}, which the model does not have")
    names = list(layers)
    chain = all(inbound[name] == (names[i - 1],) for i, name in enumerate(names) if i) and output == names[-1]
    model: nn.Module = nn.Sequential(layers) if chain else KerasGraph(layers, inbound, output)
    takes_tokens = len(names) > 1 and isinstance(layers[names[1]], Embedding)
    model.input_shape = (shape[2], shape[0], shape[1]) if picture and not channels_last else shape  # type: ignore[assignment]
    model.input_dtype = "int64" if takes_tokens or dtype.startswith("int") else "float32"  # type: ignore[assignment]
    model.input_layout = ("NHWC" if channels_last else "NCHW") if picture else None  # type: ignore[assignment]
    model.keras_file = str(keras.path)  # type: ignore[assignment]
    model.eval()
    _check_sizes(model)
    _probe(model)
    return model


def example_input(model: nn.Module) -> torch.Tensor:
    """One example of zeros as a converted model takes it (3 steps of a free length)."""
    shape = tuple(3 if d is None else d for d in getattr(model, "input_shape"))
    return torch.zeros((1, *shape), dtype=torch.int64 if getattr(model, "input_dtype") == "int64" else torch.float32)


def _check_sizes(model: nn.Module) -> None:
    """Refuse an input or a layer output past MAX_ACTIVATION_ELEMENTS, found by running the
    model on PyTorch's meta device (shapes only, nothing allocated) before the real probe."""
    shape = tuple(3 if d is None else d for d in getattr(model, "input_shape"))
    if any(not isinstance(d, int) or d < 1 for d in shape):
        raise KerasImportError(f"the input shape {shape} has a dimension that is not a positive size")
    if math.prod(shape) > MAX_ACTIVATION_ELEMENTS:
        raise KerasImportError(f"the input shape {shape} is past {MAX_ACTIVATION_ELEMENTS:,} values per example")
    too_large: list[str] = []

    def measured(name: str, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.numel() > MAX_ACTIVATION_ELEMENTS and not too_large:
            too_large.append(f"layer {name} makes an output of shape {tuple(output.shape)}")
            raise _TooLarge

    hooks = [
        module.register_forward_hook(lambda m, a, out, name=name: measured(name, out))
        for name, module in model.named_children()
    ]
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (example_input(model).to("meta"),))
    except _TooLarge:
        pass
    except Exception:  # an operation without a meta kernel: the real probe still checks the layers
        pass
    finally:
        for hook in hooks:
            hook.remove()
    if too_large:
        raise KerasImportError(f"{too_large[0]}, past {MAX_ACTIVATION_ELEMENTS:,} values per example")


class _TooLarge(Exception):
    pass


def _probe(model: nn.Module) -> None:
    """Run one example through, so layers that do not fit together fail here, named."""
    current: list[str] = []
    ranks: dict[str, int] = {}

    def entered(name: str, args: tuple) -> None:
        current.append(name)
        ranks[name] = args[0].dim() if args else 0

    hooks = [
        module.register_forward_pre_hook(lambda m, a, name=name: entered(name, a))
        for name, module in model.named_children()
    ]
    try:
        with torch.no_grad():
            model(example_input(model))
    except (RuntimeError, ValueError, IndexError) as exc:
        layer = current[-1] if current else "the first layer"
        message = str(exc).splitlines()[0]
        raise KerasImportError(f"layer {layer} cannot take the previous layer's output: {message}") from None
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in model.named_children():
        if isinstance(module, RankAware):
            module.rank = ranks[name]
        # softmax runs over the last axis, which inside is a picture's width, not its channels
        if getattr(module, "activation", None) == "softmax" and ranks.get(name) == 4:
            raise KerasImportError(f"layer {name}: softmax over a picture's channels is not supported")
