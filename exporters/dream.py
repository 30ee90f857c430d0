"""DeepDream as one exported graph: the weighted activation loss of several layers and its
gradient with respect to the picture, for pictures of any size (octaves change it).

    deepr export inception_v3 --dream --option include_top=false --option weights=imagenet
    → <repository>/inception_v3_dream: images (B, 3, H, W), coefficients (B, L) in; loss (B, 1), gradient out

The loss is the tutorial's: for each layer, its coefficient times the sum of its squared
activations away from a 2-pixel border, divided by the activation's size. Coefficients are
an input, so one export serves any mix of the layers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.func import functional_call

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import DREAM_SUFFIX

from .config import ExportConfig
from .errors import quoted
from .features import LayerObjective, feature_layers
from .gradients import GradientObjective, gradient_graph
from .pipeline import ExportResult, export_graph
from .repository import serving_config
from .weights import prepared_model
from .zoo_models import _preprocessing

__all__ = ["DreamObjective", "export_dream", "DREAM_SUFFIX", "DREAM_LAYERS"]

DREAM_LAYERS = ("mixed2", "mixed3", "mixed4", "mixed5")


class DreamObjective(LayerObjective, GradientObjective):
    """Per image: the coefficient-weighted loss of the layers, and its gradient with respect to the picture."""

    def graph_function(self, weights: dict[str, torch.Tensor], images: torch.Tensor, coefficients: torch.Tensor):
        leaf = images.detach().requires_grad_(True)
        with torch.enable_grad():
            activations = functional_call(self.extractor, weights, (leaf,))
            loss = torch.zeros_like(coefficients[:, 0])
            for i, layer in enumerate(self.layers):
                activation = activations[layer]
                inner = activation[:, :, 2:-2, 2:-2]  # borders see padding, not the picture
                size = activation.shape[1] * activation.shape[2] * activation.shape[3]
                loss = loss + coefficients[:, i] * (inner**2).sum(dim=(1, 2, 3)) / size
            (gradient,) = torch.autograd.grad(loss.sum(), leaf)
        return loss.unsqueeze(1), gradient


def export_dream(
    name: str = "inception_v3",
    repository: str | Path = "models",
    *,
    layers: Sequence[str] | None = None,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    max_batch_size: int = 8,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_dream` (height and width free) to `repository`; default layers mixed2..mixed5."""
    start = time.perf_counter()
    model = prepared_model(name, weights, options, what="DeepDream loss", consequence="it dreams nothing")
    chosen = list(layers or DREAM_LAYERS)
    available = feature_layers(model)
    unknown = [layer for layer in chosen if layer not in available]
    if unknown:
        raise ValueError(f"{name} has no layer {', '.join(map(quoted, unknown))}; it has {', '.join(available)}")
    objective = DreamObjective(model, chosen).eval()
    rng = np.random.default_rng(0)
    # Two sizes: the graph must follow the picture's size, as octaves change it.
    cases = [
        (rng.random((batch, 3, h, w), dtype=np.float32), rng.random((batch, len(chosen)), dtype=np.float32))
        for batch, (h, w) in ((1, (96, 96)), (2, (123, 150)))
    ]
    example = [torch.rand(2, 3, 96, 112), torch.rand(2, len(chosen))]
    config = ExportConfig(
        input_names=("images", "coefficients"),
        output_names=("loss", "gradient"),
        dynamic_axes=((0, 2, 3), (0,)),
        max_batch_size=max_batch_size,
        validation_batch_sizes=(1, 2),
        atol=1e-6,
        rtol=1e-3,
    )
    preprocessing = _preprocessing(name, model)
    dream_name = name + DREAM_SUFFIX
    metadata = {
        "model": name,
        "layers": chosen,
        **({"preprocessing": preprocessing.to_json()} if preprocessing else {}),
    }
    model_config = serving_config(dream_name, max_batch_size)
    model_config.input.add(name="images", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW, dims=[3, -1, -1])
    model_config.input.add(name="coefficients", data_type=mc.TYPE_FP32, dims=[len(chosen)])
    model_config.output.add(name="loss", data_type=mc.TYPE_FP32, dims=[1])
    model_config.output.add(name="gradient", data_type=mc.TYPE_FP32, dims=[3, -1, -1])
    return export_graph(
        gradient_graph(model_config, objective, example, config, cases, metadata),
        repository,
        version=version,
        started=start,
    )
