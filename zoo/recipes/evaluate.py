"""Loss and accuracy of a classifier on a dataset split."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["categorical_crossentropy", "evaluate"]


def categorical_crossentropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of softmax outputs, clipped as Keras clips them (1e-7)."""
    picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
    return -torch.log(picked.clamp(1e-7, 1.0 - 1e-7)).mean()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, input_shape: tuple[int, ...], batch_size: int = 256, device: str = "cpu") -> dict[str, float]:
    """{"loss": mean cross-entropy, "accuracy": top-1} of `model` over `data`."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device).reshape(len(x), *input_shape), y.to(device)
        probs = model(x)  # (B, classes)
        total_loss += categorical_crossentropy(probs, y).item() * len(y)
        correct += (probs.argmax(1) == y).sum().item()
        count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return {"loss": total_loss / count, "accuracy": correct / count}
