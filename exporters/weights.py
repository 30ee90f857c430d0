"""The weights an export starts from: a training run's file, a base's own (options
weights=imagenet or a file), or fresh ones with a warning that says what that means."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from zoo import get_model, get_model_spec
from zoo.recipes import load_weights

__all__ = ["UntrainedWeightsWarning", "prepared_model"]


class UntrainedWeightsWarning(UserWarning):
    """A model was exported with freshly initialised weights: fine for benchmarks, useless for predictions."""


def prepared_model(
    name: str,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    what: str = "",
    consequence: str = "its outputs mean nothing",
) -> nn.Module:
    """The zoo model `name` (built with `options`) in eval mode, with `weights` loaded when
    given; without weights or a base's own, UntrainedWeightsWarning names `what` is exported
    and the `consequence`."""
    model = get_model(name, **(options or {}))
    if weights is not None:
        load_weights(model, weights)
    elif not (options or {}).get("weights") and not get_model_spec(name).weights_included:
        graph = f"{name}'s {what}" if what else name
        warnings.warn(
            f"exporting {graph} with freshly initialised weights: {consequence}", UntrainedWeightsWarning, stacklevel=3
        )
    return model.eval()
