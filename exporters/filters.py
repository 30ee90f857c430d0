"""Input-gradient graphs for filter patterns: for each chosen layer, the mean activation of one
of its filters over the picture, and that value's gradient with respect to the input.

    deepr export vgg16 --filters --layers block1_conv1,block3_conv1 --option include_top=false
    → <repository>/vgg16_filters: images (B, 3, H, W) and filter_index (B, 1) in;
      block1_conv1.loss (B, 1), block1_conv1.gradient (B, 3, H, W), ... out

A request for one layer's outputs runs only that layer's forward and backward (the server
prunes the graph per requested outputs). The backward pass is recorded into the graph as in
Grad-CAM (exporters.gradients), with the same convolution_backward translation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.func import functional_call

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import FILTERS_SUFFIX

from .config import ExportConfig
from .features import LayerObjective, feature_layers
from .gradients import GradientObjective, gradient_graph
from .pipeline import ExportResult, export_graph
from .repository import serving_config
from .weights import prepared_model
from .zoo_models import _picture_shape, _preprocessing, picture_format

__all__ = ["export_filters", "FilterObjective", "FILTERS_SUFFIX", "filter_outputs"]


def filter_outputs(layer: str) -> tuple[str, str]:
    return f"{layer}.loss", f"{layer}.gradient"


class FilterObjective(LayerObjective, GradientObjective):
    """For each layer: mean over positions of channel `filter_index` of its output (per image),
    and the gradient of that mean with respect to the images."""

    def graph_function(self, weights: dict[str, torch.Tensor], images: torch.Tensor, filter_index: torch.Tensor):
        results = []
        for layer in self.layers:
            leaf = images.detach().requires_grad_(True)
            with torch.enable_grad():
                activation = functional_call(self.extractor, weights, (leaf,))[layer]  # (B, C, H, W)
                index = filter_index.reshape(-1, 1, 1, 1).expand(-1, 1, *activation.shape[2:])
                loss = activation.gather(1, index).mean(dim=(1, 2, 3))  # (B,)
                (gradient,) = torch.autograd.grad(loss.sum(), leaf)
            results += [loss.unsqueeze(1), gradient]  # (B, 1): a batched output needs a dimension in Triton's config
        return tuple(results)


def export_filters(
    name: str,
    repository: str | Path,
    *,
    layers: Sequence[str] | None = None,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    max_batch_size: int = 64,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_filters` with loss and gradient outputs for each of `layers` (default: the
    first convolution of each block, or every convolution for small nets)."""
    start = time.perf_counter()
    model = prepared_model(
        name, weights, options, what="filter gradients", consequence="the patterns show nothing learnt"
    )
    convolutions = [n for n in feature_layers(model) if "conv" in n.lower()]
    chosen = list(layers) if layers else ([n for n in convolutions if n.endswith("_conv1")] or convolutions)
    unknown = [layer for layer in chosen if layer not in convolutions]
    if unknown:
        raise ValueError(f"{name} has no convolutional layer {', '.join(unknown)}; it has {', '.join(convolutions)}")
    objective = FilterObjective(model, chosen).eval()
    shape = _picture_shape(name, model)
    channels = [objective.extractor(torch.zeros(1, *shape))[layer].shape[1] for layer in chosen]
    rng = np.random.default_rng(0)
    cases = [
        (rng.random((batch, *shape), dtype=np.float32), rng.integers(0, min(channels), (batch, 1))) for batch in (1, 3)
    ]
    example = [torch.from_numpy(a[:2]) for a in cases[1]]
    names = tuple(name_ for layer in chosen for name_ in filter_outputs(layer))
    config = ExportConfig(
        input_names=("images", "filter_index"),
        output_names=names,
        dynamic_axes=((0,), (0,)),
        max_batch_size=max_batch_size,
        validation_batch_sizes=(1, 3),
        atol=1e-7,
        rtol=1e-4,
    )
    preprocessing = _preprocessing(name, model)
    filters_name = name + FILTERS_SUFFIX
    metadata = {
        "model": name,
        "layers": chosen,
        "channels": channels,
        **({"preprocessing": preprocessing.to_json()} if preprocessing else {}),
    }
    model_config = serving_config(filters_name, max_batch_size)
    model_config.input.add(name="images", data_type=mc.TYPE_FP32, format=picture_format(model), dims=shape)
    model_config.input.add(name="filter_index", data_type=mc.TYPE_INT64, dims=[1])
    for layer in chosen:
        loss_name, gradient_name = filter_outputs(layer)
        model_config.output.add(name=loss_name, data_type=mc.TYPE_FP32, dims=[1])
        model_config.output.add(name=gradient_name, data_type=mc.TYPE_FP32, dims=shape)
    return export_graph(
        gradient_graph(model_config, objective, example, config, cases, metadata),
        repository,
        version=version,
        started=start,
    )
