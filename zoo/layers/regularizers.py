"""Weight penalties added to the training loss, as Keras' `kernel_regularizer` does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["L1L2", "regularizer_l1", "regularizer_l2", "regularizer_l1_l2", "regularization_loss"]


@dataclass(frozen=True)
class L1L2:
    """penalty = l1 * sum(|w|) + l2 * sum(w^2) over a layer's kernel (not its bias)."""

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"regularization factors must be >= 0, got l1={self.l1}, l2={self.l2}")

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        penalty = weight.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * weight.abs().sum()
        if self.l2:
            penalty = penalty + self.l2 * weight.square().sum()
        return penalty


def regularizer_l1(l: float = 0.01) -> L1L2:  # noqa: E741 (Keras' own argument name)
    return L1L2(l1=l)


def regularizer_l2(l: float = 0.01) -> L1L2:  # noqa: E741 (Keras' own argument name)
    return L1L2(l2=l)


def regularizer_l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    return L1L2(l1=l1, l2=l2)


def regularization_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of every layer's kernel penalty; 0.0 when no layer has a regularizer."""
    total: torch.Tensor | float = 0.0
    for module in model.modules():
        regularizer = getattr(module, "kernel_regularizer", None)
        if regularizer is not None:
            total = total + regularizer(module.weight)
    return total
