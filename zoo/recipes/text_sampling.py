"""The tutorial's way of generating text: re-read the last `maxlen` characters through the
whole model for every new character, and reweight the distribution by temperature."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from serving.protocol.sampling import sample_next

from ..datasets.chars import CHARSET, encode_text

__all__ = ["window_sample"]


@torch.no_grad()
def window_sample(
    model: nn.Module, seed_text: str, length: int, temperature: float, *, maxlen: int = 60, seed: int | None = None
) -> str:
    """`length` characters after `seed_text`, each from the model's distribution given the last
    `maxlen` characters, reweighted as exp(log(p) / T)."""
    model.eval()
    codes = list(encode_text(seed_text))
    if not codes:
        raise ValueError(f"the seed text {seed_text!r} has no character in the model's character set")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(length):
        window = torch.tensor(codes[-maxlen:])
        probs = model(F.one_hot(window, len(CHARSET)).float().unsqueeze(0))[0].numpy()  # (chars,)
        code = sample_next(probs, temperature, None, rng)
        codes.append(code)
        out.append(CHARSET[code])
    return "".join(out)
