"""The default model repository: the tutorial's MNIST models trained on embedded data."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from zoo.datasets import SupervisedData, load_dataset
from zoo.recipes import TrainConfig, train

from .zoo_models import export_model

__all__ = ["DEFAULT_MODELS", "build_default_repository", "build_default_models", "missing_default_models"]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("mnist_dense", "mnist_convnet", "mnist_convnet_nopool")
"""Quickest to train first (about 7, 23 and 108 s on 2 cores): a server building them in the
background answers with the first within seconds."""

_BUILT = ".deepr-defaults-built"
"""Written into the repository once every default model is in it: nothing left to build."""


def missing_default_models(repository: str | Path) -> list[str]:
    """The default models not yet built into `repository` (all of them for a new one, none once
    a build finished, whatever was removed since)."""
    repository = Path(repository)
    if (repository / _BUILT).exists():
        return []
    return [name for name in DEFAULT_MODELS if not (repository / name).is_dir()]


def build_default_models(
    repository: str | Path,
    names: Sequence[str] = DEFAULT_MODELS,
    *,
    runs: Path | None = None,
    progress: bool = True,
    on_built: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Train each of `names` by its recipe and export it into `repository`, one at a time,
    calling `on_built(name)` as each is in place (each version folder appears whole, so a
    server scanning the repository never sees half a model). Training runs are kept in `runs`
    (default `<repository>.runs/`). Returns one record per model: held-out accuracy, training seconds,
    parity error."""
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    runs = runs or repository.with_name(repository.name + ".runs")
    records = []
    loaded: dict[str, SupervisedData] = {}  # the default models share their dataset
    for name in names:
        cfg = TrainConfig.for_model(name, out=runs / name, progress=progress)
        if cfg.data not in loaded:
            loaded[cfg.data] = load_dataset(cfg.data)
        result = train(cfg, data=loaded[cfg.data])
        exported = export_model(name, repository, weights=runs / name / "weights.pt")
        records.append(
            {
                "model": name,
                "test_accuracy": result.test["accuracy"],
                "train_seconds": round(result.seconds, 1),
                "parity_max_abs_diff": exported.validation.max_abs_diff,
            }
        )
        logger.info(
            "%s: held-out accuracy %.4f after %.1fs of training; ONNX parity %.2g",
            name,
            result.test["accuracy"],
            result.seconds,
            exported.validation.max_abs_diff,
        )
        if on_built is not None:
            on_built(name)
    if not missing_default_models(repository):
        (repository / _BUILT).write_text("every default model is built\n")
    return records


def build_default_repository(repository: str | Path, *, progress: bool = True) -> list[dict[str, object]]:
    """Train each default model by its recipe and export it into `repository`.

    Everything is built in a staging directory that is renamed into place at
    the end, so an interrupted build leaves no half-made repository. Training
    runs (weights, curves, metrics) are kept in `<repository>.runs/`. Returns
    one record per model: held-out accuracy, training seconds, parity error.
    """
    repository = Path(repository)
    if repository.exists():
        raise FileExistsError(f"{repository} already exists; remove it to rebuild the default models")
    repository.parent.mkdir(parents=True, exist_ok=True)
    runs = repository.with_name(repository.name + ".runs")
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}-", dir=repository.parent))
    try:
        records = build_default_models(staging, runs=runs, progress=progress)
        os.replace(staging, repository)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records
