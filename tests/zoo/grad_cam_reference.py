"""pytorch-grad-cam as the reference for Grad-CAM graphs built in ONNX."""

from __future__ import annotations

import numpy as np
import torch


def reference_cam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """pytorch-grad-cam's heatmaps at `layer`, before it scales and resizes them."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[layer])
    targets = [ClassifierOutputTarget(c) for c in classes]
    outputs = cam.activations_and_grads(x)
    model.zero_grad()
    sum(t(o) for t, o in zip(targets, outputs)).backward()
    activations = cam.activations_and_grads.activations[0].cpu().numpy()
    gradients = cam.activations_and_grads.gradients[0].cpu().numpy()
    raw = cam.get_cam_image(x, layer, targets, activations, gradients)
    cam.activations_and_grads.release()
    return np.maximum(raw, 0)
