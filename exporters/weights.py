"""The weights an export starts from: a training run's file, a base's own (options
weights=imagenet or a file), or fresh ones with a warning that says what that means."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from zoo import get_model, get_model_spec
from zoo.datasets import dataset_info
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
    and the `consequence`. The option `framing` ("mnist" or "none") is not the builder's: it
    replaces how the export's pictures are framed (ImagePreprocessing.framing)."""
    options = dict(options or {})
    framing = options.pop("framing", None)
    model = get_model(name, **options)
    if framing is not None:
        _reframe(model, name, framing)
    if weights is not None:
        load_weights(model, weights)
    elif not (options or {}).get("weights") and not get_model_spec(name).weights_included:
        graph = f"{name}'s {what}" if what else name
        warnings.warn(
            f"exporting {graph} with freshly initialised weights: {consequence}", UntrainedWeightsWarning, stacklevel=3
        )
    return model.eval()


def _reframe(model: nn.Module, name: str, framing: str) -> None:
    dataset = get_model_spec(name).dataset
    preprocessing = getattr(model, "preprocessing", None) or (dataset_info(dataset).preprocessing if dataset else None)
    if preprocessing is None:
        raise ValueError(f"{name} takes no pictures: framing does not apply to it")
    try:
        chosen = dataclasses.replace(preprocessing, framing=None if framing == "none" else framing)
    except ValueError as exc:
        raise ValueError(f"framing {framing!r} for {name}: {exc}") from None
    model.preprocessing = chosen  # type: ignore[assignment]
