"""Grad-CAM as a graph: images and class indices in; class scores, the layer's activations,
their gradients and the heatmap out. onnxruntime alone computes it.

heatmap = ReLU(sum over channels of w_c * A_c), w_c = spatial mean of d score / d A_c,
where score is the model's own output for the class (a probability where the model ends
in softmax), or its pre-activation value with score="logit".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, cast

import torch
from torch import nn
from torch.func import functional_call

from .errors import quoted

__all__ = [
    "GradCAM",
    "flat_layers",
    "hook_gradcam",
    "last_conv_layer",
    "GRADCAM_INPUTS",
    "GRADCAM_OUTPUTS",
    "TOP_CLASS",
]

GRADCAM_INPUTS = ("images", "class_index")
GRADCAM_OUTPUTS = ("scores", "activations", "gradients", "heatmap")
TOP_CLASS = -1
"""A class_index of -1 asks for each image's top class."""


def flat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in order, looking inside nested bases ("vgg16.block5_conv3")."""

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if getattr(child, "keras_type", None) == "Model":
                yield from walk(child, full + ".")
            else:
                yield full, child

    return list(walk(model, ""))


def last_conv_layer(model: nn.Module) -> str:
    convs = [
        name
        for name, m in flat_layers(model)
        if isinstance(m, nn.Conv2d) or getattr(m, "keras_type", "") == "SeparableConv2D"
    ]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution; Grad-CAM needs a convolutional layer")
    return convs[-1]


@dataclass
class GradCAM:
    """Split a sequential model at `layer` and compute Grad-CAM with autograd.

    `__call__` is the PyTorch reference; `graph_function` is what gets traced and exported.
    """

    model: nn.Module
    layer: str
    score: str = "probability"

    def __post_init__(self) -> None:
        layers = flat_layers(self.model)
        names = [n for n, _ in layers]
        if self.layer not in names:
            convs = [
                n
                for n, m in layers
                if isinstance(m, (nn.Conv2d, nn.MaxPool2d))
                or getattr(m, "keras_type", "") in ("Conv2D", "MaxPooling2D")
            ]
            raise ValueError(f"no layer {quoted(self.layer)}; layers with spatial maps: {convs}")
        if self.score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit', got {self.score!r}")
        if self.score == "logit" and not isinstance(layers[-1][1], nn.Linear):
            raise ValueError("score='logit' needs a model that ends in a Dense layer")
        cut = names.index(self.layer) + 1
        self.head = nn.Sequential(*[m for _, m in layers[:cut]])
        self.tail = nn.Sequential(*[m for _, m in layers[cut:]])
        self.final = layers[-1][1]
        self.model.eval()

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v for k, v in self.head.state_dict().items()} | {
            f"tail.{k}": v for k, v in self.tail.state_dict().items()
        }

    def graph_function(self, weights: dict[str, torch.Tensor], images: torch.Tensor, class_index: torch.Tensor):
        head = {k[5:]: v for k, v in weights.items() if k.startswith("head.")}
        tail = {k[5:]: v for k, v in weights.items() if k.startswith("tail.")}
        activations = functional_call(self.head, head, (images,))  # (B, C, H, W), after the layer's activation
        leaf = activations.detach().requires_grad_(True)  # only the tail's backward is needed
        with torch.enable_grad():
            if self.score == "probability":
                scores = target = functional_call(self.tail, tail, (leaf,))  # (B, classes) as the model outputs them
            else:  # the last Dense layer's value before its softmax / sigmoid
                last = str(len(self.tail) - 1)
                before = {k: v for k, v in tail.items() if not k.startswith(last + ".")}
                hidden = functional_call(self.tail[:-1], before, (leaf,)) if len(self.tail) > 1 else leaf
                target = torch.nn.functional.linear(hidden, tail[f"{last}.weight"], tail[f"{last}.bias"])
                scores = cast(Any, self.final)._act(target)  # the Keras layer's activation
            chosen = torch.where(class_index < 0, scores.argmax(1), class_index)  # (B,)
            picked = target.gather(1, chosen.clamp(0, scores.shape[1] - 1).unsqueeze(1)).sum()
            (gradients,) = torch.autograd.grad(picked, leaf)  # (B, C, H, W)
        channel_weights = gradients.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        heatmap = torch.relu((channel_weights * activations).sum(1))  # (B, H, W)
        return scores, activations, gradients, heatmap

    def __call__(self, images: torch.Tensor, class_index: torch.Tensor):
        return self.graph_function(self.weights(), images, class_index)


def hook_gradcam(model: nn.Module, layer: str, images: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """Heatmaps (B, H, W) the way hook-based libraries (pytorch-grad-cam) compute them: forward
    and backward hooks on the layer and a full backward pass. An independent reference for
    GradCAM, and the baseline of scripts/benchmarks/bench_gradcam.py."""
    module = dict(model.named_modules())[layer]
    store: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, i, out: store.__setitem__("activations", out)),
        module.register_full_backward_hook(lambda m, gi, go: store.__setitem__("gradients", go[0])),
    ]
    try:
        scores = model(images.detach().clone().requires_grad_(True))
        chosen = torch.where(class_index < 0, scores.argmax(1), class_index)
        model.zero_grad(set_to_none=True)
        scores.gather(1, chosen.unsqueeze(1)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()  # released whatever happened, so the model is left as it was
    channel_weights = store["gradients"].mean(dim=(2, 3), keepdim=True)
    return torch.relu((channel_weights * store["activations"]).sum(1)).detach()
