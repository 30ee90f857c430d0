"""How deepr draws the next character from a character model's distribution.

The tutorial's reweighting, p_i^(1/T) / sum_j p_j^(1/T) (T -> 0 approaches greedy
decoding), optionally keeping the top k classes, then an inverse CDF on one uniform draw.
The client's step-by-step sampler and the zoo's sampler during training use this, and the
whole-generation ONNX graph implements the same rule, so a seed picks the same text.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reweight", "sample_next"]


def reweight(probabilities: np.ndarray, temperature: float, top_k: int | None = None) -> np.ndarray:
    """softmax(log(p) / T) over the last axis, keeping only the top k classes when k is given."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-300, None)) / temperature
    if top_k is not None:
        if not 1 <= top_k <= logits.shape[-1]:
            raise ValueError(f"top_k must be in 1..{logits.shape[-1]}, got {top_k}")
        kth = np.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = np.where(logits >= kth, logits, -np.inf)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def sample_next(probabilities: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
    """One class index drawn from the reweighted distribution (inverse CDF on one uniform)."""
    cdf = np.cumsum(reweight(probabilities, temperature, top_k))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
