"""Losses, accuracy and evaluation for the zoo's two tasks: multiclass and binary."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["categorical_crossentropy", "binary_crossentropy", "task_loss", "count_correct", "fit_input", "evaluate"]

_EPS = 1e-7  # Keras clips probabilities to [eps, 1 - eps] before taking logs


def categorical_crossentropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of softmax outputs (B, C) against integer labels (B,)."""
    picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
    return -torch.log(picked.clamp(_EPS, 1.0 - _EPS)).mean()


def binary_crossentropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of sigmoid outputs (B, 1) against 0/1 labels (B,)."""
    p = probs.reshape(-1).clamp(_EPS, 1.0 - _EPS)
    y = labels.to(p.dtype)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def task_loss(task: str, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return binary_crossentropy(probs, labels) if task == "binary" else categorical_crossentropy(probs, labels)


def count_correct(task: str, probs: torch.Tensor, labels: torch.Tensor) -> int:
    predicted = (probs.reshape(-1) > 0.5).long() if task == "binary" else probs.argmax(1)
    return int((predicted == labels.long()).sum().item())


def fit_input(x: torch.Tensor, input_shape: Sequence[int | None] | None) -> torch.Tensor:
    """Reshape a batch to the model's per-example shape when the data stores it otherwise
    (flattening 1x28x28 digits for a dense net); leave it alone otherwise."""
    if input_shape is None or None in input_shape or tuple(x.shape[1:]) == tuple(input_shape):
        return x
    return x.reshape(len(x), *input_shape)  # type: ignore[arg-type]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    task: str = "multiclass",
    input_shape: Sequence[int | None] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> dict[str, float]:
    """{"loss", "accuracy"} of `model` over `data`."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = fit_input(x.to(device), input_shape), y.to(device)
        probs = model(x)
        total_loss += task_loss(task, probs, y).item() * len(y)
        correct += count_correct(task, probs, y)
        count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return {"loss": total_loss / count, "accuracy": correct / count}
