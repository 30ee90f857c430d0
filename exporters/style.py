"""Neural style transfer as one exported graph: the total loss and its gradient with respect
to the generated picture, for an optimizer outside the graph (L-BFGS from scipy).

    deepr export vgg19 --style --option include_top=false --option input_shape=256,384,3 --option weights=imagenet
    → <repository>/vgg19_style: combination, content, style (B, 3, H, W) in; loss (B, 1), gradient out

The loss is the tutorial's: the content loss (squared distance of block5_conv2 features),
the style loss (squared distance of Gram matrices at block1_conv1 ... block5_conv1, each
divided by 4 channels² positions², averaged over the layers) and the total variation loss
of the generated picture, weighted 0.025, 1 and 1e-4.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import STYLE_SUFFIX

from .config import ExportConfig
from .features import LayerObjective
from .gradients import GradientObjective, gradient_graph
from .pipeline import ExportResult, export_graph
from .repository import serving_config
from .weights import prepared_model
from .zoo_models import _picture_shape, _preprocessing, picture_format

__all__ = ["StyleWeights", "StyleObjective", "export_style", "STYLE_SUFFIX", "STYLE_INPUTS"]

STYLE_INPUTS = ("combination", "content", "style")


@dataclass(frozen=True)
class StyleWeights:
    content: float = 0.025
    style: float = 1.0
    total_variation: float = 1e-4
    content_layer: str = "block5_conv2"
    style_layers: tuple[str, ...] = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")


def _gram(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(2)  # (B, C, H*W)
    return flat @ flat.transpose(1, 2)  # (B, C, C)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    down = x[:, :, :-1, :-1] - x[:, :, 1:, :-1]
    right = x[:, :, :-1, :-1] - x[:, :, :-1, 1:]
    return (down**2 + right**2).pow(1.25).sum(dim=(1, 2, 3))


class StyleObjective(LayerObjective, GradientObjective):
    """Per combination picture: the content, style and variation loss against the content
    and style pictures, and its gradient with respect to the combination."""

    def __init__(self, model: nn.Module, weights: StyleWeights = StyleWeights()) -> None:
        super().__init__(model, list(dict.fromkeys([weights.content_layer, *weights.style_layers])))
        self.loss_weights = weights

    def graph_function(
        self, weights: dict[str, torch.Tensor], combination: torch.Tensor, content: torch.Tensor, style: torch.Tensor
    ):
        w = self.loss_weights
        leaf = combination.detach().requires_grad_(True)
        with torch.enable_grad():
            generated = functional_call(self.extractor, weights, (leaf,))
            with torch.no_grad():
                targets_content = functional_call(self.extractor, weights, (content,))
                targets_style = functional_call(self.extractor, weights, (style,))
            loss = w.content * ((generated[w.content_layer] - targets_content[w.content_layer]) ** 2).sum(dim=(1, 2, 3))
            for layer in w.style_layers:
                channels, positions = generated[layer].shape[1], generated[layer].shape[2] * generated[layer].shape[3]
                distance = ((_gram(generated[layer]) - _gram(targets_style[layer])) ** 2).sum(dim=(1, 2))
                loss = loss + w.style / len(w.style_layers) * distance / (4.0 * channels**2 * positions**2)
            loss = loss + w.total_variation * _total_variation(leaf)
            (gradient,) = torch.autograd.grad(loss.sum(), leaf)
        return loss.unsqueeze(1), gradient


def export_style(
    name: str = "vgg19",
    repository: str | Path = "models",
    *,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    loss_weights: StyleWeights = StyleWeights(),
    max_batch_size: int = 8,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_style` to `repository`, for pictures of the base's input_shape."""
    start = time.perf_counter()
    model = prepared_model(name, weights, options, what="style-transfer loss", consequence="it transfers nothing")
    objective = StyleObjective(model, loss_weights).eval()
    shape = _picture_shape(name, model)
    rng = np.random.default_rng(0)
    cases = [tuple(rng.normal(size=(batch, *shape)).astype(np.float32) for _ in STYLE_INPUTS) for batch in (1, 2)]
    example = [torch.from_numpy(a) for a in cases[1]]
    config = ExportConfig(
        input_names=STYLE_INPUTS,
        output_names=("loss", "gradient"),
        dynamic_axes=((0,), (0,), (0,)),
        # Within 1e-3 of the largest gradient: max pooling routes gradients of tied
        # maxima differently in onnxruntime and PyTorch (see exporters.zoo_gradcam).
        max_batch_size=max_batch_size,
        validation_batch_sizes=(1, 2),
        atol=1e-6,
        rtol=1e-3,
    )
    preprocessing = _preprocessing(name, model)
    style_name = name + STYLE_SUFFIX
    metadata = {
        "model": name,
        "loss_weights": loss_weights.__dict__,
        **({"preprocessing": preprocessing.to_json()} if preprocessing else {}),
    }
    model_config = serving_config(style_name, max_batch_size)
    for input_name in STYLE_INPUTS:
        model_config.input.add(name=input_name, data_type=mc.TYPE_FP32, format=picture_format(model), dims=shape)
    model_config.output.add(name="loss", data_type=mc.TYPE_FP32, dims=[1])
    model_config.output.add(name="gradient", data_type=mc.TYPE_FP32, dims=shape)
    return export_graph(
        gradient_graph(model_config, objective, example, config, cases, metadata),
        repository,
        version=version,
        started=start,
    )
