"""The default model repository: the tutorial's MNIST models trained on embedded data."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from zoo.datasets import SupervisedData, load_dataset
from zoo.recipes import TrainConfig, train

from .zoo_models import export_model

__all__ = ["DEFAULT_MODELS", "build_default_repository"]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("mnist_dense", "mnist_convnet", "mnist_convnet_nopool")


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
    records = []
    try:
        loaded: dict[str, SupervisedData] = {}  # the default models share their dataset
        for name in DEFAULT_MODELS:
            cfg = TrainConfig.for_model(name, out=runs / name, progress=progress)
            if cfg.data not in loaded:
                loaded[cfg.data] = load_dataset(cfg.data)
            result = train(cfg, data=loaded[cfg.data])
            exported = export_model(name, staging, weights=runs / name / "weights.pt")
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
        os.replace(staging, repository)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records
