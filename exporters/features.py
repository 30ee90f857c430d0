"""Feature extractors: a convnet's named layers as the outputs of one ONNX graph.

    deepr export vgg16 --features --layers block3_conv1,block5_pool --option include_top=false
    → <repository>/vgg16_features/1/model.onnx with outputs block3_conv1 and block5_pool

torchvision's `create_feature_extractor` traces the model and keeps only the operations the
requested layers need, so a graph for shallow layers stops there. Each output is the layer's
output as its Keras layer gives it (after its activation). The server computes, per request,
only what the requested outputs need (see serving.server.model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import FEATURES_SUFFIX

from .config import ExportConfig
from .errors import quoted
from .gradcam import flat_layers
from .pipeline import ExportResult, GraphExport, export_graph
from .repository import serving_config
from .weights import prepared_model
from .zoo_models import _picture_shape, _preprocessing, picture_format

__all__ = [
    "export_features",
    "feature_layers",
    "prepared_model",
    "LayerObjective",
    "FEATURES_SUFFIX",
]


# Layers whose outputs are only a reshaping or a training-time identity of their input.
_SKIPPED = ("Flatten", "Dropout")


def feature_layers(model: nn.Module) -> list[str]:
    """Every layer whose output is a feature map or vector, in order (Keras names)."""
    return [
        name
        for name, module in flat_layers(model)
        if getattr(module, "keras_type", type(module).__name__) not in _SKIPPED
    ]


class LayerObjective(nn.Module):
    """A model cut down to what `layers` need (torchvision's traced feature extractor), with
    its weights as a dict for graph functions that take them as an argument."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.layers = list(layers)
        self.extractor = create_feature_extractor(model, return_nodes={name: name for name in layers})

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.extractor.state_dict())


class _Features(LayerObjective):
    """The extractor returning its layers as a tuple in the requested order."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.extractor(images)
        return tuple(outputs[name] for name in self.layers)


def export_features(
    name: str,
    repository: str | Path,
    *,
    layers: Sequence[str] | None = None,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    max_batch_size: int = 64,
    version: int | None = None,
) -> ExportResult:
    """Export `name`'s `layers` (default: all of them) as `<name>_features` into `repository`.

    Weights: a training run's `weights`, or for the bases `options={"weights": "imagenet"}`
    (or a file); without either the layers are freshly initialised, with a warning.
    """
    start = time.perf_counter()
    model = prepared_model(name, weights, options, what="features", consequence="they describe nothing")
    available = feature_layers(model)
    chosen = list(layers) if layers else available
    unknown = [layer for layer in chosen if layer not in available]
    if unknown:
        raise ValueError(
            f"{name} has no layer {', '.join(map(quoted, unknown))}; its layers are {', '.join(available)}"
        )
    chosen = [layer for layer in available if layer in chosen]  # in the network's order
    features = _Features(model, chosen).eval()
    shape = _picture_shape(name, model)
    rng = np.random.default_rng(0)
    cases = [(rng.random((batch, *shape), dtype=np.float32),) for batch in (1, 3)]
    example = torch.from_numpy(cases[-1][0][:2])
    with torch.no_grad():
        outputs = features(example)
    config = ExportConfig(output_names=tuple(chosen), max_batch_size=max_batch_size, validation_batch_sizes=(1, 3))
    preprocessing = _preprocessing(name, model)
    features_name = name + FEATURES_SUFFIX
    metadata = {
        "model": name,
        "layers": chosen,
        "weights": str(weights or (options or {}).get("weights") or "untrained"),
        **({"preprocessing": preprocessing.to_json()} if preprocessing else {}),
    }
    model_config = serving_config(features_name, max_batch_size)
    model_config.input.add(name="images", data_type=mc.TYPE_FP32, format=picture_format(model), dims=shape)
    for layer, tensor in zip(chosen, outputs):
        model_config.output.add(name=layer, data_type=mc.TYPE_FP32, dims=tensor.shape[1:])
    graph = GraphExport(model_config, features, (example,), config, cases, metadata)
    return export_graph(graph, repository, version=version, started=start)
